//! The per-message check before the batch decode: strict JSON syntax, UTF-8,
//! the JSON kind of each contract field's value, whether a number fits its
//! column, and how deep ignored values nest.
//!
//! arrow-json reports a value it cannot take only for a whole flush, and
//! finding the message means bisecting the batch: a micro-batch of 10,000
//! with a dozen such messages decoded five times over. The kinds arrow-json
//! can never take (an object where a string belongs, a string where a bool
//! does, any non-UTF-8 byte) are cheap to see while the syntax is checked
//! anyway, so they are refused here, message by message. So are the numbers
//! arrow-json would store *changed* rather than refuse: `1.9` truncated to 1
//! in an integer column, `1e400` stored as infinity, epoch milliseconds no
//! microsecond timestamp can hold. Otherwise the check only ever refuses
//! what arrow-json would refuse too; what it lets through (a timestamp
//! string that does not parse) is still found by bisecting.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::{Contract, FieldType};

/// How deep objects and arrays may nest in a message. Contract fields are
/// scalars, so nesting only ever sits in fields weir ignores; a bound keeps
/// hostile input (100,000 levels) from costing the decoders anything.
pub(super) const MAX_DEPTH: usize = 64;

/// The largest epoch milliseconds a timestamp column (microseconds in an i64) holds.
pub(super) const MAX_TIMESTAMP_MS: i64 = i64::MAX / 1000;

/// Integers above this cannot all be told apart as floats: `1e3` is taken
/// as the integer 1000, `1e17` is refused rather than rounded.
const EXACT_FLOAT_INTEGER: f64 = (1u64 << 53) as f64;

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
            Some(Misfit::Kind(field, kind)) => {
                let (name, ty) = &self.fields[field];
                Err(format!(
                    "does not match the schema: `{name}` is {}, expected {}",
                    kind.described(),
                    ty.name()
                ))
            }
            Some(Misfit::Number(field, number, why)) => {
                let (name, ty) = &self.fields[field];
                Err(format!(
                    "does not fit the schema: `{name}` is {number}, {why} ({} field)",
                    ty.name()
                ))
            }
            Some(Misfit::Nested(name)) => Err(format!(
                "{name} is nested more than {MAX_DEPTH} levels deep"
            )),
            None => Ok(()),
        }
    }
}

/// Why a message cannot become a row, as the check sees it.
#[derive(Debug)]
enum Misfit {
    /// A contract field's value of a kind its type never takes.
    Kind(usize, Kind),
    /// A contract field's number that its column cannot hold as written.
    Number(usize, String, &'static str),
    /// A value nested past [`MAX_DEPTH`], and its key as the message says it.
    Nested(String),
}

/// Why the JSON number `text` cannot be stored in a column of `ty` unchanged.
fn number_misfit(text: &str, ty: FieldType) -> Option<&'static str> {
    match ty {
        FieldType::Int32 => integer_misfit(text, i32::MIN.into(), i32::MAX.into()),
        FieldType::Int64 => integer_misfit(text, i64::MIN, i64::MAX),
        FieldType::Date => integer_misfit(text, i32::MIN.into(), i32::MAX.into()),
        FieldType::Timestamp => {
            integer_misfit(text, -MAX_TIMESTAMP_MS, MAX_TIMESTAMP_MS).map(|why| match why {
                OUT_OF_RANGE => "beyond the epoch milliseconds a timestamp holds",
                other => other,
            })
        }
        FieldType::Float32 | FieldType::Float64 => {
            let max = if ty == FieldType::Float32 {
                f32::MAX.into()
            } else {
                f64::MAX
            };
            let overflows = may_overflow(text) && text.parse::<f64>().is_ok_and(|v| v.abs() > max);
            overflows.then_some(OUT_OF_RANGE)
        }
        FieldType::String | FieldType::Bool => None,
    }
}

const OUT_OF_RANGE: &str = "outside the column's range";

/// Whether a float literal could be too large for a float32 (≈3.4e38) at all:
/// most are short and exponent-free, and need no second parse.
fn may_overflow(text: &str) -> bool {
    text.len() > 38 || text.contains(['e', 'E'])
}

fn integer_misfit(text: &str, min: i64, max: i64) -> Option<&'static str> {
    if !text.contains(['.', 'e', 'E']) {
        return match text.parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => None,
            _ => Some(OUT_OF_RANGE),
        };
    }
    let v: f64 = text.parse().ok()?;
    if v.fract() != 0.0 {
        Some("not a whole number")
    } else if v.abs() > EXACT_FLOAT_INTEGER || v < min as f64 || v > max as f64 {
        Some(OUT_OF_RANGE)
    } else {
        None
    }
}

/// How deep objects and arrays nest in `json` (valid JSON).
fn depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in json.bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b'}' | b']') => depth = depth.saturating_sub(1),
            (false, _, _) => {}
        }
    }
    deepest
}

/// The top-level object: the first contract field whose value misfits.
struct ObjectSeed<'a>(&'a Shape);

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Option<Misfit>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Option<Misfit>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut misfit = None;
        while let Some(field) = map.next_key_seed(FieldSeed(self.0))? {
            let value = map.next_value::<&RawValue>()?;
            if misfit.is_none() {
                misfit = self.misfit(field, value);
            }
        }
        Ok(misfit)
    }
}

impl ObjectSeed<'_> {
    /// Why the value of key `field` (its contract index, or its name when
    /// the contract has none) cannot be taken.
    fn misfit(&self, field: Result<usize, Option<&str>>, value: &RawValue) -> Option<Misfit> {
        let kind = Kind::of(value);
        match field {
            Ok(field) => {
                let ty = self.0.fields[field].1;
                if !kind.fits(ty) {
                    Some(Misfit::Kind(field, kind))
                } else if kind == Kind::Number {
                    number_misfit(value.get(), ty)
                        .map(|why| Misfit::Number(field, value.get().to_owned(), why))
                } else {
                    None
                }
            }
            Err(name) if matches!(kind, Kind::Object | Kind::Array) => {
                let name = name.map_or_else(|| "a field".to_owned(), |n| format!("`{n}`"));
                (depth(value.get()) > MAX_DEPTH).then_some(Misfit::Nested(name))
            }
            Err(_) => None,
        }
    }
}

/// A key: the index of the contract field it names, if any.
struct FieldSeed<'a>(&'a Shape);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    /// The contract index, or else the key itself (when the JSON holds it
    /// unescaped: borrowing it costs nothing per ignored field).
    type Value = Result<usize, Option<&'de str>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Result<usize, Option<&'de str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(self.index(key).ok_or(Some(key)))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.index(key).ok_or(None))
    }
}

impl FieldSeed<'_> {
    fn index(&self, key: &str) -> Option<usize> {
        self.0.fields.iter().position(|(name, _)| name == key)
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

    /// The check's promise: it refuses a message arrow-json would decode
    /// only when arrow-json would store a number changed, so otherwise it
    /// changes only how fast a bad message is found.
    #[test]
    fn refuses_only_what_arrow_json_refuses_or_would_change() {
        let mut refused = Vec::new();
        for ty in FieldType::ALL {
            let shape = shape_of(ty);
            for value in VALUES {
                let message = format!(r#"{{"other":{{"v":[]}},"v":{value}}}"#);
                if let Err(reason) = shape.check(message.as_bytes()) {
                    assert!(
                        !arrow_json_takes(ty, &message) || reason.starts_with("does not fit"),
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
        assert!(!refused.contains(&(FieldType::Int64, "-1.5e3")), "-1500");
        // What arrow-json takes but would store changed.
        for (ty, value) in [
            (FieldType::Int64, "1.9"),
            (FieldType::Float64, "1e400"),
            (FieldType::Timestamp, "18446744073709551616"),
        ] {
            let message = format!(r#"{{"v":{value}}}"#);
            assert!(arrow_json_takes(ty, &message), "{message}");
            assert!(shape_of(ty).check(message.as_bytes()).is_err(), "{message}");
        }
    }

    fn shape_of(ty: FieldType) -> Shape {
        Shape {
            fields: vec![("v".into(), ty)],
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert_eq!(depth(r#"{"a":[1,{"b":"[[[{"}]}"#), 3);
        assert_eq!(depth(r#"["\"[", "\\", []]"#), 2);
        assert_eq!(depth("1"), 0);
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
