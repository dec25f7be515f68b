//! The per-message check before the batch decode: strict JSON syntax, UTF-8,
//! and the JSON kind of each contract field's value.
//!
//! arrow-json reports a value it cannot take only for a whole flush, and
//! finding the message means bisecting the batch: a micro-batch of 10,000
//! with a dozen such messages decoded five times over. The kinds arrow-json
//! can never take (an object where a string belongs, a string where a bool
//! does, any non-UTF-8 byte) are cheap to see while the syntax is checked
//! anyway, so they are refused here, message by message. The check only ever
//! refuses what arrow-json would refuse too; what it lets through (a
//! timestamp string that does not parse, an int32 out of range) is still
//! found by bisecting.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::job::{Contract, FieldType};

/// The contract's fields as the check needs them.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    fields: Vec<(String, FieldType)>,
}

/// What a JSON value is, as far as the contract cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Object,
    Array,
}

impl Kind {
    /// From the value's first byte: serde_json has checked its syntax
    /// while skipping it, and parses nothing (no number, no escape).
    fn of(value: &RawValue) -> Self {
        match value.get().as_bytes().first() {
            Some(b'n') => Kind::Null,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'"') => Kind::String,
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            _ => Kind::Number,
        }
    }

    fn described(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "true or false",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Object => "an object",
            Kind::Array => "an array",
        }
    }

    /// Whether arrow-json may decode this kind into `ty` (without coercing
    /// primitives to strings, which weir never asks for).
    fn fits(self, ty: FieldType) -> bool {
        match (self, ty) {
            (Kind::Null, _) => true,
            (Kind::Object | Kind::Array, _) => false,
            (kind, FieldType::String) => kind == Kind::String,
            (kind, FieldType::Bool) => kind == Kind::Bool,
            (kind, _) => kind != Kind::Bool,
        }
    }
}

impl Shape {
    pub(super) fn new(contract: &Contract) -> Self {
        Self {
            fields: contract
                .fields
                .iter()
                .map(|f| (f.name.clone(), f.ty))
                .collect(),
        }
    }

    /// Why `bytes` (which start with `{`) cannot become a row, if one
    /// message alone says so.
    pub(super) fn check(&self, bytes: &[u8]) -> Result<(), String> {
        let text =
            std::str::from_utf8(bytes).map_err(|e| format!("not valid JSON: not UTF-8 ({e})"))?;
        let mut json = serde_json::Deserializer::from_str(text);
        let misfit = ObjectSeed(self)
            .deserialize(&mut json)
            .and_then(|misfit| json.end().map(|()| misfit))
            .map_err(|e| format!("not valid JSON: {e}"))?;
        match misfit {
            Some((field, kind)) => {
                let (name, ty) = &self.fields[field];
                Err(format!(
                    "does not match the schema: `{name}` is {}, expected {}",
                    kind.described(),
                    ty.name()
                ))
            }
            None => Ok(()),
        }
    }
}

/// The top-level object: the first contract field whose value misfits.
struct ObjectSeed<'a>(&'a Shape);

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Option<(usize, Kind)>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Option<(usize, Kind)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut misfit = None;
        while let Some(field) = map.next_key_seed(FieldSeed(self.0))? {
            let Some(field) = field else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let kind = Kind::of(map.next_value::<&RawValue>()?);
            if misfit.is_none() && !kind.fits(self.0.fields[field].1) {
                misfit = Some((field, kind));
            }
        }
        Ok(misfit)
    }
}

/// A key: the index of the contract field it names, if any.
struct FieldSeed<'a>(&'a Shape);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldSeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.fields.iter().position(|(name, _)| name == key))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Schema};
    use arrow_json::ReaderBuilder;

    use super::*;

    const VALUES: [&str; 13] = [
        "null",
        "true",
        "false",
        "1",
        "-1.5e3",
        "18446744073709551616",
        r#""x""#,
        r#""2026-11-21""#,
        r#""2026-11-21T11:00:00Z""#,
        "{}",
        r#"{"a":[1]}"#,
        "[]",
        "[1,2]",
    ];

    fn arrow_json_takes(ty: FieldType, message: &str) -> bool {
        let schema = Arc::new(Schema::new(vec![Field::new("v", ty.decode_type(), true)]));
        let mut decoder = ReaderBuilder::new(schema).build_decoder().unwrap();
        decoder.decode(message.as_bytes()).is_ok() && decoder.flush().is_ok()
    }

    /// The check's one promise: it never refuses a message arrow-json would
    /// decode, so it changes only how fast a bad message is found.
    #[test]
    fn refuses_only_what_arrow_json_refuses() {
        let mut refused = Vec::new();
        for ty in FieldType::ALL {
            let shape = Shape {
                fields: vec![("v".into(), ty)],
            };
            for value in VALUES {
                let message = format!(r#"{{"other":{{"v":[]}},"v":{value}}}"#);
                if let Err(reason) = shape.check(message.as_bytes()) {
                    assert!(
                        !arrow_json_takes(ty, &message),
                        "{message} refused as {}: {reason}",
                        ty.name()
                    );
                    refused.push((ty, value));
                }
            }
        }
        assert!(refused.contains(&(FieldType::Timestamp, "{}")));
        assert!(refused.contains(&(FieldType::String, "1")));
        assert!(refused.contains(&(FieldType::Bool, r#""x""#)));
        assert!(refused.contains(&(FieldType::Int64, "true")));
        assert!(
            !refused.contains(&(FieldType::Int64, r#""x""#)),
            "left to arrow-json"
        );
    }

    #[test]
    fn names_the_field_and_what_it_got() {
        let shape = Shape {
            fields: vec![
                ("id".into(), FieldType::String),
                ("ts".into(), FieldType::Timestamp),
            ],
        };
        assert_eq!(
            shape.check(br#"{"id":"a","ts":{"no":1}}"#),
            Err("does not match the schema: `ts` is an object, expected timestamp".into())
        );
        assert!(
            shape
                .check(br#"{"id":"a","ts":1} x"#)
                .unwrap_err()
                .contains("trailing characters")
        );
        assert!(
            shape
                .check(b"{\"x\":\"\xff\"}")
                .unwrap_err()
                .starts_with("not valid JSON: not UTF-8")
        );
        assert_eq!(
            shape.check(br#"{"id":"a","extra":{"ts":[]},"ts":null}"#),
            Ok(())
        );
    }
}
