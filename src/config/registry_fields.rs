//! A contract taken from the schema registry: a job that reads Avro through
//! a registry may omit `schema.fields`, and its fields are those of the
//! subject's latest record schema, read when the job is loaded.
//!
//! Only the registry's answer is I/O, and the caller supplies it
//! ([`SubjectSchemas`]): the config layer never connects anywhere itself.
//! The columns are chosen to survive the changes Avro calls compatible, since
//! a restart reads the subject's newest version and a stored column's type
//! never changes: `int` and `long` are both int64 and `float` and `double`
//! both float64 (Avro's promotions widen within them), and every column but
//! the event ID and time is nullable (a writer may make a field optional or
//! drop one that has a default).
//!
//! What is mapped is what weir's column types hold; nested records, arrays,
//! maps, bytes, fixed and decimals are left out of the columns (named in
//! [`FromRegistry::left_out`] and logged), as the JSON reader reads past
//! them: the framed bytes stay in `_payload`, so a reprocess can add them
//! once weir stores them.

use serde_json::Value;

use super::spec::FieldSpec;

/// The registry's latest schema of a subject.
#[derive(Debug, Clone)]
pub struct SubjectSchema {
    pub id: u32,
    /// `AVRO`, `PROTOBUF` or `JSON`.
    pub schema_type: String,
    pub schema: String,
}

/// Reads a subject's latest schema from a registry: what loading a job whose
/// contract comes from the registry asks of its caller.
pub trait SubjectSchemas {
    fn latest(&self, registry: &super::Registry) -> Result<SubjectSchema, String>;
}

/// For callers that read no registry (tests, tools on jobs with fields).
pub struct NoRegistry;

impl SubjectSchemas for NoRegistry {
    fn latest(&self, _: &super::Registry) -> Result<SubjectSchema, String> {
        Err("this command reads no registry".into())
    }
}

/// Where a job's contract came from, when not from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromRegistry {
    pub subject: String,
    pub schema_id: u32,
    /// Fields of the record that are not columns, with their Avro types.
    pub left_out: Vec<String>,
}

/// The columns of an Avro record schema, and the fields left out. The
/// field named `event_time`, when a plain `long`, holds epoch milliseconds
/// (as a JSON number does) and becomes the timestamp it stands for.
pub(super) fn avro_fields(
    schema: &str,
    event_id: &str,
    event_time: &str,
) -> Result<(Vec<FieldSpec>, Vec<String>), String> {
    let schema: Value =
        serde_json::from_str(schema).map_err(|e| format!("not an Avro schema (JSON): {e}"))?;
    if schema.get("type").and_then(Value::as_str) != Some("record") {
        return Err("the subject's schema is not an Avro record".into());
    }
    let fields = schema
        .get("fields")
        .and_then(Value::as_array)
        .ok_or("the record has no `fields`")?;
    let (mut columns, mut left_out) = (Vec::new(), Vec::new());
    for field in fields {
        let name = field
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a field without a name")?;
        let ty = field.get("type").unwrap_or(&Value::Null);
        match column_type(ty) {
            Some(_) if name.starts_with('_') => {
                left_out.push(format!("{name} (names starting with `_` are weir's)"));
            }
            Some(mut weir_type) => {
                if name == event_time && weir_type == "int64" {
                    weir_type = "timestamp";
                }
                columns.push(FieldSpec {
                    name: name.to_owned(),
                    ty: weir_type.to_owned(),
                    nullable: name != event_id && name != event_time,
                });
            }
            None => left_out.push(format!("{name} ({})", avro_type_name(ty))),
        }
    }
    Ok((columns, left_out))
}

/// The weir type of an Avro field type (a union with null: of its other
/// branch); `None` for types weir has no column for.
fn column_type(ty: &Value) -> Option<&'static str> {
    match ty {
        Value::Array(branches) => {
            let others: Vec<&Value> = branches.iter().filter(|b| *b != "null").collect();
            match others.as_slice() {
                [one] => column_type(one),
                _ => None,
            }
        }
        Value::String(primitive) => primitive_type(primitive, None),
        Value::Object(complex) => {
            let base = complex.get("type").and_then(Value::as_str)?;
            let logical = complex.get("logicalType").and_then(Value::as_str);
            match base {
                "enum" => Some("string"),
                _ => primitive_type(base, logical),
            }
        }
        _ => None,
    }
}

fn primitive_type(base: &str, logical: Option<&str>) -> Option<&'static str> {
    Some(match (base, logical) {
        ("long", Some(l)) if l.contains("timestamp") => "timestamp",
        ("int", Some("date")) => "date",
        // Decimals and times of day have no column type yet.
        (_, Some("decimal" | "time-millis" | "time-micros")) => return None,
        ("string", _) => "string",
        ("boolean", _) => "bool",
        ("int" | "long", _) => "int64",
        ("float" | "double", _) => "float64",
        _ => return None,
    })
}

/// How a left-out field's type is named.
fn avro_type_name(ty: &Value) -> String {
    match ty {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let base = o.get("type").and_then(Value::as_str).unwrap_or("?");
            match o.get("logicalType").and_then(Value::as_str) {
                Some(logical) => format!("{base} {logical}"),
                None => base.to_owned(),
            }
        }
        Value::Array(branches) => {
            let names: Vec<String> = branches.iter().map(avro_type_name).collect();
            format!("union of {}", names.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_columns_and_what_has_none_is_named() {
        let schema = r#"{"type": "record", "name": "Click", "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "ts", "type": "long"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "page", "type": ["null", "string"], "default": null},
            {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["a", "b"]}},
            {"name": "n", "type": "int"},
            {"name": "price", "type": ["double", "null"]},
            {"name": "ok", "type": "boolean"},
            {"name": "address", "type": {"type": "record", "name": "A", "fields": []}},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9}},
            {"name": "either", "type": ["null", "string", "long"]},
            {"name": "_x", "type": "string"}
        ]}"#;
        let (columns, left_out) = avro_fields(schema, "event_id", "ts").unwrap();
        let got: Vec<(&str, &str, bool)> = columns
            .iter()
            .map(|f| (f.name.as_str(), f.ty.as_str(), f.nullable))
            .collect();
        assert_eq!(
            got,
            [
                ("event_id", "string", false),
                ("ts", "timestamp", false),
                ("at", "timestamp", true),
                ("day", "date", true),
                ("page", "string", true),
                ("kind", "string", true),
                ("n", "int64", true),
                ("price", "float64", true),
                ("ok", "bool", true),
            ]
        );
        assert_eq!(
            left_out,
            [
                "address (record)",
                "tags (array)",
                "amount (bytes decimal)",
                "either (union of null, string, long)",
                "_x (names starting with `_` are weir's)",
            ]
        );
    }

    #[test]
    fn what_is_not_a_record_is_refused() {
        let refusal = |schema| avro_fields(schema, "event_id", "ts").unwrap_err();
        assert!(refusal(r#""string""#).contains("record"));
        assert!(refusal("{").contains("JSON"));
    }
}
