//! One pass over each message: strict JSON syntax, UTF-8, and each contract
//! field's value read straight into its column's type, ignored fields only
//! skipped. What cannot become a row is refused here, message by message,
//! with the field and the value named.
//!
//! The rules are arrow-json's, which weir used to decode with (a test holds
//! this reader to them value by value), stricter in three ways: JSON syntax
//! (arrow-json's tape reader tolerates missing or doubled commas, and a
//! contract that lets `{"a":1 "b":2}` through is no contract), numbers
//! arrow-json would store *changed* rather than refuse (`1.9` truncated to 1
//! in an integer column, `1e400` stored as infinity, epoch milliseconds no
//! microsecond timestamp can hold), and how deep ignored values nest.

use std::borrow::Cow;
use std::fmt;

use arrow::compute::kernels::cast_utils::{Parser, string_to_datetime};
use arrow::datatypes::{DataType, Date32Type, Float32Type, Float64Type, Int32Type, Int64Type};
use chrono::Utc;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::columns::{self, Value};
use crate::config::{Contract, FieldType};

/// How deep objects and arrays may nest in a field weir ignores: a bound
/// keeps hostile input (100,000 levels) from costing the decoders anything.
/// (A structured column's value is bounded by serde_json's own limit.)
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
    /// The structured columns, numbered after the fields.
    structured: Vec<(String, DataType)>,
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
            structured: contract
                .structured
                .iter()
                .map(|s| (s.name.clone(), s.ty.clone()))
                .collect(),
        }
    }

    /// The value of column `column` (a field or a structured column).
    fn value<'a>(&self, column: usize, raw: &'a RawValue) -> Result<Value<'a>, Misfit> {
        match column.checked_sub(self.fields.len()) {
            None => value(column, raw, self.fields[column].1),
            Some(_) if Kind::of(raw) == Kind::Null => Ok(Value::Null),
            Some(s) => serde_json::from_str(raw.get())
                .map_err(|e| e.to_string())
                .and_then(|json| columns::structured(&json, &self.structured[s].1))
                .map(Value::Structured)
                .map_err(|why| Misfit::Structured(column, why)),
        }
    }

    /// The contract's values in `bytes` (which start with `{`), one per
    /// field in contract order, or why the message cannot become a row.
    pub(super) fn read<'a>(&self, bytes: &'a [u8]) -> Result<Vec<Value<'a>>, String> {
        let text =
            std::str::from_utf8(bytes).map_err(|e| format!("not valid JSON: not UTF-8 ({e})"))?;
        let mut json = serde_json::Deserializer::from_str(text);
        let read = ObjectSeed(self)
            .deserialize(&mut json)
            .and_then(|read| json.end().map(|()| read))
            .map_err(|e| format!("not valid JSON: {e}"))?;
        read.map_err(|misfit| self.describe(misfit))
    }

    fn describe(&self, misfit: Misfit) -> String {
        let named = |field: usize| {
            let (name, ty) = &self.fields[field];
            (name, ty.name())
        };
        match misfit {
            Misfit::Kind(field, kind) => {
                let (name, ty) = named(field);
                format!(
                    "does not match the schema: `{name}` is {}, expected {ty}",
                    kind.described()
                )
            }
            Misfit::Unparsed(field, text) => {
                let (name, ty) = named(field);
                format!("does not match the schema: `{name}` is {text}, which is not a {ty}")
            }
            Misfit::Number(field, number, why) => {
                let (name, ty) = named(field);
                format!("does not fit the schema: `{name}` is {number}, {why} ({ty} field)")
            }
            Misfit::Nested(name) => format!("{name} is nested more than {MAX_DEPTH} levels deep"),
            Misfit::Structured(column, why) => {
                let (name, _) = &self.structured[column - self.fields.len()];
                format!("does not match the schema: `{name}`: {why}")
            }
        }
    }
}

/// Why a message cannot become a row, as the reader sees it.
#[derive(Debug)]
enum Misfit {
    /// A contract field's value of a kind its type never takes.
    Kind(usize, Kind),
    /// A contract field's string that does not parse as its type, as the
    /// message has it (quoted, cut short when long).
    Unparsed(usize, String),
    /// A contract field's number that its column cannot hold as written.
    Number(usize, String, &'static str),
    /// A value nested past [`MAX_DEPTH`], and its key as the message says it.
    Nested(String),
    /// A structured column's value that its type cannot take, and why.
    Structured(usize, String),
}

/// The value of contract field `field`, of type `ty`, as its column holds it.
fn value(field: usize, raw: &RawValue, ty: FieldType) -> Result<Value<'_>, Misfit> {
    let kind = Kind::of(raw);
    if !kind.fits(ty) {
        return Err(Misfit::Kind(field, kind));
    }
    let text = raw.get();
    match kind {
        Kind::Null => Ok(Value::Null),
        Kind::Bool => Ok(Value::Bool(text == "true")),
        Kind::Number => number(text, ty).map_err(|why| Misfit::Number(field, text.to_owned(), why)),
        Kind::String => {
            let s = unquoted(text);
            parsed(&s, ty).ok_or_else(|| Misfit::Unparsed(field, quoted_short(text)))
        }
        Kind::Object | Kind::Array => unreachable!("no field type takes {kind:?}"),
    }
}

/// A JSON string in `ty`'s column, parsed as arrow-json parses it; `None`
/// when it does not parse.
fn parsed<'a>(s: &Cow<'a, str>, ty: FieldType) -> Option<Value<'a>> {
    Some(match ty {
        FieldType::String => Value::Str(s.clone()),
        FieldType::Int32 => Value::Int32(Int32Type::parse(s)?),
        FieldType::Int64 => Value::Int64(Int64Type::parse(s)?),
        FieldType::Float32 => Value::Float32(Float32Type::parse(s)?),
        FieldType::Float64 => Value::Float64(Float64Type::parse(s)?),
        FieldType::Date => Value::Date(Date32Type::parse(s)?),
        FieldType::Timestamp => {
            Value::TimestampMs(string_to_datetime(&Utc, s).ok()?.timestamp_millis())
        }
        FieldType::Bool => unreachable!("a bool takes no string"),
    })
}

/// The text of a JSON string (valid: serde_json checked it), unescaped
/// only when it has escapes.
fn unquoted(json: &str) -> Cow<'_, str> {
    let inner = &json[1..json.len() - 1];
    if inner.contains('\\') {
        Cow::Owned(serde_json::from_str(json).expect("a string serde_json has checked"))
    } else {
        Cow::Borrowed(inner)
    }
}

/// A JSON string as a reason quotes it: at most 64 characters of it.
fn quoted_short(json: &str) -> String {
    const MAX: usize = 64;
    match json.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &json[..cut]),
        None => json.to_owned(),
    }
}

/// The JSON number `text` (serde_json checked its syntax) in `ty`'s column,
/// parsed once, or why the column cannot hold it unchanged.
fn number(text: &str, ty: FieldType) -> Result<Value<'static>, &'static str> {
    let int32 = (i32::MIN.into(), i32::MAX.into());
    Ok(match ty {
        FieldType::Int32 => Value::Int32(integer(text, int32)? as i32),
        FieldType::Int64 => Value::Int64(integer(text, (i64::MIN, i64::MAX))?),
        FieldType::Date => Value::Date(integer(text, int32)? as i32),
        FieldType::Timestamp => Value::TimestampMs(
            integer(text, (-MAX_TIMESTAMP_MS, MAX_TIMESTAMP_MS)).map_err(|why| match why {
                OUT_OF_RANGE => "beyond the epoch milliseconds a timestamp holds",
                other => other,
            })?,
        ),
        FieldType::Float32 => {
            // Judged in f64: a float32 parse would round a literal just above
            // its range down to the largest float32.
            if may_overflow(text) && text.parse::<f64>().is_ok_and(|v| v.abs() > f32::MAX.into()) {
                return Err(OUT_OF_RANGE);
            }
            Value::Float32(text.parse().map_err(|_| OUT_OF_RANGE)?)
        }
        FieldType::Float64 => match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Value::Float64(v),
            _ => return Err(OUT_OF_RANGE),
        },
        FieldType::String | FieldType::Bool => unreachable!("{ty:?} takes no number"),
    })
}

const OUT_OF_RANGE: &str = "outside the column's range";

/// Whether a float literal could be too large for a float32 (≈3.4e38) at all:
/// most are short and exponent-free, and need no second parse.
fn may_overflow(text: &str) -> bool {
    text.len() > 38 || text.contains(['e', 'E'])
}

/// The integer `text` within `min..=max`: written as an integer, or as a
/// whole number (`1e3`, `1000.0`) that a float holds exactly.
fn integer(text: &str, (min, max): (i64, i64)) -> Result<i64, &'static str> {
    if !text.contains(['.', 'e', 'E']) {
        return text
            .parse::<i64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or(OUT_OF_RANGE);
    }
    let v: f64 = text.parse().map_err(|_| OUT_OF_RANGE)?;
    if v.fract() != 0.0 {
        Err("not a whole number")
    } else if v.abs() > EXACT_FLOAT_INTEGER || v < min as f64 || v > max as f64 {
        Err(OUT_OF_RANGE)
    } else {
        Ok(v as i64)
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

/// The top-level object: its contract values, or the first contract field
/// whose value misfits. The walk goes on past a misfit so that a syntax
/// error anywhere is what the message is refused for.
struct ObjectSeed<'a>(&'a Shape);

type Read<'de> = Result<Vec<Value<'de>>, Misfit>;

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Read<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Read<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let columns = self.0.fields.len() + self.0.structured.len();
        let mut read: Read<'de> = Ok(vec![Value::Null; columns]);
        while let Some(field) = map.next_key_seed(FieldSeed(self.0))? {
            let raw = map.next_value::<&'de RawValue>()?;
            let Ok(values) = &mut read else { continue };
            match field {
                // A key given twice: the last value counts, as in arrow-json.
                Ok(field) => match self.0.value(field, raw) {
                    Ok(v) => values[field] = v,
                    Err(misfit) => read = Err(misfit),
                },
                Err(name) => {
                    if let Some(misfit) = nested_too_deep(name, raw) {
                        read = Err(misfit);
                    }
                }
            }
        }
        Ok(read)
    }
}

/// An ignored field's value, refused when it nests past [`MAX_DEPTH`]; `name`
/// is its key when the message has it unescaped.
fn nested_too_deep(name: Option<&str>, raw: &RawValue) -> Option<Misfit> {
    if !matches!(Kind::of(raw), Kind::Object | Kind::Array) || depth(raw.get()) <= MAX_DEPTH {
        return None;
    }
    let name = name.map_or_else(|| "a field".to_owned(), |n| format!("`{n}`"));
    Some(Misfit::Nested(name))
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
        let field = self.0.fields.iter().position(|(name, _)| name == key);
        let structured = || {
            let at = self.0.structured.iter().position(|(name, _)| name == key);
            at.map(|s| self.0.fields.len() + s)
        };
        field.or_else(structured)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::ArrayRef;
    use arrow::compute::cast;
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use arrow_json::ReaderBuilder;
    use proptest::prelude::*;

    use super::super::columns::Columns;
    use super::*;

    const VALUES: [&str; 34] = [
        "null",
        "true",
        "false",
        "0",
        "-0",
        "1",
        "-1.5e3",
        "1e3",
        "1000.0",
        "0.1",
        "1.5e-3",
        "3.4e38",
        "2147483648",
        "18446744073709551616",
        r#""x""#,
        r#""""#,
        r#""12""#,
        r#""-7""#,
        r#"" 12""#,
        r#""1.5""#,
        r#""1e3""#,
        r#""2026-11-21""#,
        r#""2026-11-21T11:00:00Z""#,
        r#""2026-11-21T11:00:00.123+01:00""#,
        r#""2026-11-21 11:00:00""#,
        r#""yesterday""#,
        r#""a\"b\u00e9\n""#,
        r#""\u0031\u0032""#,
        r#""é ✓""#,
        "{}",
        r#"{"a":[1]}"#,
        "[]",
        "[1,2]",
        r#""true""#,
    ];

    fn shape_of(ty: FieldType) -> Shape {
        Shape {
            fields: vec![("v".into(), ty)],
            structured: vec![],
        }
    }

    /// What arrow-json decodes, in the type weir stores: arrow-json reads a
    /// JSON number in a timestamp field as milliseconds only when the
    /// column's unit is milliseconds.
    fn arrow_json_reads(ty: FieldType, message: &str) -> Option<ArrayRef> {
        let read_type = match ty {
            FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            other => other.stored_type(),
        };
        let schema = Arc::new(Schema::new(vec![Field::new("v", read_type, true)]));
        let mut decoder = ReaderBuilder::new(schema).build_decoder().unwrap();
        decoder.decode(message.as_bytes()).ok()?;
        let column = decoder.flush().ok()??.column(0).clone();
        Some(cast(&column, &ty.stored_type()).unwrap())
    }

    fn reads(ty: FieldType, message: &str) -> Result<ArrayRef, String> {
        let values = shape_of(ty).read(message.as_bytes())?;
        let mut columns = Columns::of([ty], [], 1);
        columns.push(values);
        Ok(columns.finish().unwrap().remove(0))
    }

    /// The reader's promise: what it takes, arrow-json takes as the same
    /// value; what it refuses, arrow-json refuses too or would store changed.
    fn agrees_with_arrow_json(ty: FieldType, message: &str) -> Result<(), String> {
        match (reads(ty, message), arrow_json_reads(ty, message)) {
            (Ok(ours), Some(theirs)) if format!("{ours:?}") == format!("{theirs:?}") => Ok(()),
            (Ok(ours), theirs) => Err(format!("read {ours:?}, arrow-json {theirs:?}")),
            (Err(_), None) => Ok(()),
            (Err(reason), Some(_)) if reason.starts_with("does not fit") => Ok(()),
            (Err(reason), Some(theirs)) => {
                Err(format!("refused ({reason}), arrow-json {theirs:?}"))
            }
        }
    }

    #[test]
    fn reads_what_arrow_json_reads_and_refuses_only_what_it_refuses_or_would_change() {
        let mut refused = Vec::new();
        for ty in FieldType::ALL {
            for value in VALUES {
                let message = format!(r#"{{"other":{{"v":[]}},"v":{value}}}"#);
                if let Err(why) = agrees_with_arrow_json(ty, &message) {
                    panic!("{message} as {}: {why}", ty.name());
                }
                if reads(ty, &message).is_err() {
                    refused.push((ty, value));
                }
            }
        }
        assert!(refused.contains(&(FieldType::Timestamp, "{}")));
        assert!(refused.contains(&(FieldType::String, "1")));
        assert!(refused.contains(&(FieldType::Bool, r#""x""#)));
        assert!(refused.contains(&(FieldType::Int64, "true")));
        assert!(refused.contains(&(FieldType::Int64, r#""x""#)));
        assert!(refused.contains(&(FieldType::Timestamp, r#""yesterday""#)));
        assert!(!refused.contains(&(FieldType::Int64, "-1.5e3")), "-1500");
        assert!(!refused.contains(&(FieldType::Int64, r#""12""#)));
        // What arrow-json takes but would store changed.
        for (ty, value) in [
            (FieldType::Int64, "1.9"),
            (FieldType::Float64, "1e400"),
            (FieldType::Timestamp, "18446744073709551616"),
        ] {
            let message = format!(r#"{{"v":{value}}}"#);
            assert!(arrow_json_reads(ty, &message).is_some(), "{message}");
            assert!(reads(ty, &message).is_err(), "{message}");
        }
    }

    /// A JSON scalar of any kind a contract field might be sent.
    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<i32>().prop_map(|v| v.to_string()),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |v| v.is_finite())
                .prop_map(|v| v.to_string()),
            any::<f32>()
                .prop_filter("JSON has no NaN or infinity", |v| v.is_finite())
                .prop_map(|v| format!("{v:e}")),
            (-99i64..99, -5i32..20).prop_map(|(m, e)| format!("{m}e{e}")),
            any::<i64>().prop_map(|v| format!(r#""{v}""#)),
            (0i64..4_000_000_000_000).prop_map(|ms| {
                let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
                format!(r#""{}""#, t.to_rfc3339())
            }),
            "[ -~]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            any::<bool>().prop_map(|b| b.to_string()),
            Just("null".to_owned()),
        ]
    }

    proptest! {
        #[test]
        fn any_scalar_is_read_as_arrow_json_reads_it(value in scalar(), ty in 0..FieldType::ALL.len()) {
            let ty = FieldType::ALL[ty];
            let message = format!(r#"{{"v":{value},"w":[{value}]}}"#);
            prop_assert_eq!(agrees_with_arrow_json(ty, &message), Ok(()), "{} as {}", message, ty.name());
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
            structured: vec![],
        };
        assert_eq!(
            shape.read(br#"{"id":"a","ts":{"no":1}}"#),
            Err("does not match the schema: `ts` is an object, expected timestamp".into())
        );
        assert_eq!(
            shape.read(br#"{"id":"a","ts":"soon"}"#),
            Err(r#"does not match the schema: `ts` is "soon", which is not a timestamp"#.into())
        );
        let long = format!(r#"{{"id":"a","ts":"{}"}}"#, "9".repeat(500));
        assert!(
            shape
                .read(long.as_bytes())
                .unwrap_err()
                .ends_with("999…, which is not a timestamp")
        );
        assert!(
            shape
                .read(br#"{"id":"a","ts":1} x"#)
                .unwrap_err()
                .contains("trailing characters")
        );
        assert!(
            shape
                .read(b"{\"x\":\"\xff\"}")
                .unwrap_err()
                .starts_with("not valid JSON: not UTF-8")
        );
        assert_eq!(
            shape.read(br#"{"id":"a","extra":{"ts":[]},"ts":null,"id":"b"}"#),
            Ok(vec![Value::Str("b".into()), Value::Null])
        );
    }
}
