//! A contract taken from the schema registry: a job that reads through a
//! registry may omit `schema.fields`, and its fields are those of the
//! subject's latest schema (an Avro record, a Protobuf file's first message
//! type, a JSON Schema object), read when the job is loaded.
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
//! Scalars become fields of weir's column types. Records (Avro), nested
//! messages (Protobuf) and objects (JSON Schema) become [`Structured`]
//! struct columns (of nullable fields, matched by name, so a writer may add
//! or drop one inside), arrays and repeated fields lists, Avro decimals
//! decimal128. Maps, bytes, fixed, times of day, unions of several types and
//! recursive records have no column: they are left out (named in
//! [`FromRegistry::left_out`] and logged), the framed bytes stay in
//! `_payload`, so a reprocess can add them once weir stores them.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use prost_reflect::FieldDescriptor;
use serde_json::Value;

use super::spec::FieldSpec;
use super::{FieldType, ProtoSchema, Structured};

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

/// What the fields of a subject's schema become.
#[derive(Debug)]
pub(super) struct SubjectColumns<'k> {
    /// Fields of weir's column types, as a spec would declare them.
    pub(super) fields: Vec<FieldSpec>,
    /// Records, arrays and decimals, as their stored types.
    pub(super) structured: Vec<Structured>,
    /// Fields (dotted paths inside records) that have no column, with why.
    pub(super) left_out: Vec<String>,
    /// The spec's event ID and event time field names.
    keys: (&'k str, &'k str),
}

impl<'k> SubjectColumns<'k> {
    fn new(event_id: &'k str, event_time: &'k str) -> Self {
        Self {
            fields: Vec::new(),
            structured: Vec::new(),
            left_out: Vec::new(),
            keys: (event_id, event_time),
        }
    }

    /// Adds field `name` as a column of `stored` type; `None`: it has no
    /// column type, and `described` names the type it has. The event-time
    /// field, when an integer, holds epoch milliseconds (as a JSON number
    /// does) and becomes the timestamp it stands for.
    fn add(&mut self, name: &str, stored: Option<DataType>, described: impl FnOnce() -> String) {
        if name.starts_with('_') {
            let why = "names starting with `_` are weir's";
            self.left_out.push(format!("{name} ({why})"));
            return;
        }
        let Some(stored) = stored else {
            self.left_out.push(format!("{name} ({})", described()));
            return;
        };
        let (event_id, event_time) = self.keys;
        match scalar_name(&stored) {
            Some(weir_type) => self.fields.push(FieldSpec {
                name: name.to_owned(),
                ty: match weir_type {
                    "int64" if name == event_time => "timestamp",
                    other => other,
                }
                .to_owned(),
                nullable: name != event_id && name != event_time,
            }),
            None => self.structured.push(Structured {
                name: name.to_owned(),
                ty: stored,
            }),
        }
    }
}

/// The columns of a subject's latest schema, read as its type says.
pub(super) fn subject_columns<'k>(
    found: &SubjectSchema,
    event_id: &'k str,
    event_time: &'k str,
) -> Result<SubjectColumns<'k>, String> {
    let mut columns = SubjectColumns::new(event_id, event_time);
    match found.schema_type.as_str() {
        "AVRO" => avro_fields(&found.schema, &mut columns)?,
        "PROTOBUF" => proto_fields(&found.schema, &mut columns)?,
        "JSON" => json_schema_fields(&found.schema, &mut columns)?,
        other => return Err(format!("a schema of type {other}")),
    }
    Ok(columns)
}

/// The columns of an Avro record schema, and the fields left out.
fn avro_fields(schema: &str, columns: &mut SubjectColumns) -> Result<(), String> {
    let schema: Value =
        serde_json::from_str(schema).map_err(|e| format!("not an Avro schema (JSON): {e}"))?;
    if schema.get("type").and_then(Value::as_str) != Some("record") {
        return Err("the subject's schema is not an Avro record".into());
    }
    let fields = record_fields(&schema)?;
    let mut types = AvroTypes::default();
    types.enter(&schema);
    for field in fields {
        let (name, ty) = name_and_type(field)?;
        let stored = types.stored(ty, name, &mut columns.left_out);
        columns.add(name, stored, || avro_type_name(ty));
    }
    Ok(())
}

/// The columns of a Protobuf schema's first message type (Confluent's
/// default): scalars and `google.protobuf.Timestamp` fields widened as
/// Avro's are, nested messages as structs and repeated fields as lists of
/// the same; maps, bytes and messages that contain themselves are left out.
fn proto_fields(schema: &str, columns: &mut SubjectColumns) -> Result<(), String> {
    let compiled = ProtoSchema::compile(schema).map_err(|e| format!("not a .proto: {e}"))?;
    let message = compiled
        .message(&[0])
        .ok_or("the subject's schema has no message type")?;
    let mut open = vec![message.full_name().to_owned()];
    for field in message.fields() {
        let stored = proto_type(&field, field.name(), &mut open, &mut columns.left_out);
        columns.add(field.name(), stored, || proto_type_name(&field));
    }
    Ok(())
}

/// The stored type of a Protobuf field at `path`; `None` where no column
/// type holds it. Fields of messages that have none go to `left_out`.
fn proto_type(
    field: &FieldDescriptor,
    path: &str,
    open: &mut Vec<String>,
    left_out: &mut Vec<String>,
) -> Option<DataType> {
    use prost_reflect::Kind;
    let item = match field.kind() {
        _ if field.is_map() => return None,
        Kind::String | Kind::Enum(_) => FieldType::String.stored_type(),
        Kind::Bool => FieldType::Bool.stored_type(),
        Kind::Float | Kind::Double => FieldType::Float64.stored_type(),
        Kind::Bytes => return None,
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            FieldType::Timestamp.stored_type()
        }
        Kind::Message(m) if open.iter().any(|o| o == m.full_name()) => return None,
        Kind::Message(m) => {
            open.push(m.full_name().to_owned());
            let mut members = Members::new(path);
            for child in m.fields() {
                let at = members.at(child.name());
                let stored = proto_type(&child, &at, open, left_out);
                members.add(child.name(), stored, left_out, || proto_type_name(&child));
            }
            open.pop();
            members.finish()?
        }
        _ => FieldType::Int64.stored_type(),
    };
    Some(match field.is_list() {
        true => list_of(item),
        false => item,
    })
}

fn proto_type_name(field: &FieldDescriptor) -> String {
    let kind = match field.kind() {
        prost_reflect::Kind::Message(m) => m.full_name().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    };
    match (field.is_map(), field.is_list()) {
        (true, _) => "map".into(),
        (false, true) => format!("repeated {kind}"),
        (false, false) => kind,
    }
}

/// A list of nullable items, named `element` as Delta names them.
fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("element", item, true)))
}

/// The columns of a JSON Schema object's `properties`: `string` (a
/// `date-time` format a timestamp, `date` a date), `integer` int64,
/// `number` float64, `boolean` bool, an `enum` of strings a string, an
/// `object` with `properties` a struct of them and an `array` with `items`
/// a list, each alone or with `null`; a string or integer event time is a
/// timestamp (RFC 3339 or epoch milliseconds, as JSON jobs read it). The
/// rest (`$ref`s, mixed types) is left out.
fn json_schema_fields(schema: &str, columns: &mut SubjectColumns) -> Result<(), String> {
    let schema: Value =
        serde_json::from_str(schema).map_err(|e| format!("not a JSON Schema (JSON): {e}"))?;
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .ok_or("the subject's JSON Schema has no `properties`")?;
    let event_time = columns.keys.1;
    for (name, property) in properties {
        let types = json_types(property);
        let stored = match types.as_slice() {
            ["string" | "integer"] | ["string", "integer"] | ["integer", "string"]
                if name == event_time =>
            {
                Some(FieldType::Timestamp.stored_type())
            }
            _ => json_type(property, name, &mut columns.left_out),
        };
        columns.add(name, stored, || json_type_name(&types));
    }
    Ok(())
}

/// A property's types, `null` left out; an `enum` of strings is a string.
fn json_types(property: &Value) -> Vec<&str> {
    let mut types: Vec<&str> = match property.get("type") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    types.retain(|t| *t != "null");
    let words = |values: &Vec<Value>| values.iter().all(Value::is_string);
    if types.is_empty()
        && property
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(words)
    {
        types.push("string");
    }
    types
}

fn json_type_name(types: &[&str]) -> String {
    match types {
        [] => "no type".to_owned(),
        named => named.join(" or "),
    }
}

/// The stored type of a JSON Schema property at `path`; `None` where no
/// column type holds it. Properties of objects that have none go to `left_out`.
fn json_type(property: &Value, path: &str, left_out: &mut Vec<String>) -> Option<DataType> {
    let format = property.get("format").and_then(Value::as_str);
    let weir = match (json_types(property).as_slice(), format) {
        (["string"], Some("date-time")) => FieldType::Timestamp,
        (["string"], Some("date")) => FieldType::Date,
        (["string"], _) => FieldType::String,
        (["integer"], _) => FieldType::Int64,
        (["number"] | ["integer", "number"] | ["number", "integer"], _) => FieldType::Float64,
        (["boolean"], _) => FieldType::Bool,
        (["array"], _) => return Some(list_of(json_type(property.get("items")?, path, left_out)?)),
        (["object"], _) => {
            let mut members = Members::new(path);
            for (name, child) in property.get("properties")?.as_object()? {
                let stored = json_type(child, &members.at(name), left_out);
                members.add(name, stored, left_out, || {
                    json_type_name(&json_types(child))
                });
            }
            return members.finish();
        }
        _ => return None,
    };
    Some(weir.stored_type())
}

/// The stored type of a key subject's Avro schema: a primitive, a record,
/// any type a column holds.
pub(super) fn avro_key_type(schema: &str) -> Result<DataType, String> {
    let schema: Value =
        serde_json::from_str(schema).map_err(|e| format!("not an Avro schema (JSON): {e}"))?;
    let mut types = AvroTypes::default();
    types.enter(&schema);
    let stored = types.stored(&schema, "key", &mut Vec::new());
    stored.ok_or_else(|| {
        format!(
            "a key of type {}, which no column holds",
            avro_type_name(&schema)
        )
    })
}

fn record_fields(record: &Value) -> Result<&Vec<Value>, String> {
    record
        .get("fields")
        .and_then(Value::as_array)
        .ok_or_else(|| "a record has no `fields`".into())
}

fn name_and_type(field: &Value) -> Result<(&str, &Value), String> {
    let name = field
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a field without a name")?;
    Ok((name, field.get("type").unwrap_or(&Value::Null)))
}

/// The weir type a stored scalar is declared as; `None` for structured ones.
fn scalar_name(stored: &DataType) -> Option<&'static str> {
    FieldType::ALL
        .into_iter()
        .filter(|t| !matches!(t, FieldType::Int32 | FieldType::Float32))
        .find(|t| &t.stored_type() == stored)
        .map(FieldType::name)
}

/// The named types (records, enums, fixed) a schema defined so far, which
/// later fields may name instead of spelling out.
#[derive(Default)]
struct AvroTypes<'s> {
    named: HashMap<String, &'s Value>,
    /// Records being mapped: one naming itself is recursive, which no
    /// column type holds.
    open: Vec<String>,
    namespace: Option<&'s str>,
}

impl<'s> AvroTypes<'s> {
    /// Defines `ty`'s name, if it has one, both short and full (a type
    /// without a namespace of its own is in the top record's).
    fn define(&mut self, ty: &'s Value) -> Option<String> {
        let name = ty.get("name").and_then(Value::as_str)?;
        let namespace = ty.get("namespace").and_then(Value::as_str);
        let short = short_name(name);
        if let Some(namespace) = namespace.or(self.namespace) {
            self.named.insert(format!("{namespace}.{short}"), ty);
        }
        self.named.insert(name.to_owned(), ty);
        self.named.insert(short.to_owned(), ty);
        Some(short.to_owned())
    }

    /// Defines the top record and marks it open.
    fn enter(&mut self, record: &'s Value) {
        self.namespace = record.get("namespace").and_then(Value::as_str);
        if let Some(name) = self.define(record) {
            self.open.push(name);
        }
    }

    /// The stored type of Avro type `ty` at `path` (a union with null: of
    /// its other branch); `None` where no column type holds it. Fields of
    /// records that have none are added to `left_out`.
    fn stored(
        &mut self,
        ty: &'s Value,
        path: &str,
        left_out: &mut Vec<String>,
    ) -> Option<DataType> {
        match ty {
            Value::Array(branches) => {
                let others: Vec<&Value> = branches.iter().filter(|b| *b != "null").collect();
                match others.as_slice() {
                    [one] => self.stored(one, path, left_out),
                    _ => None,
                }
            }
            Value::String(name) => match primitive_type(name, None) {
                Some(stored) => Some(stored),
                None if self.open.iter().any(|open| open == short_name(name)) => None,
                None => {
                    let defined = *self.named.get(name.as_str())?;
                    self.stored(defined, path, left_out)
                }
            },
            Value::Object(complex) => {
                let base = complex.get("type").and_then(Value::as_str)?;
                self.define(ty);
                match base {
                    "record" => self.record(ty, path, left_out),
                    "array" => Some(list_of(self.stored(
                        complex.get("items")?,
                        path,
                        left_out,
                    )?)),
                    "enum" => Some(DataType::Utf8),
                    _ => decimal_type(complex).or_else(|| {
                        let logical = complex.get("logicalType").and_then(Value::as_str);
                        primitive_type(base, logical)
                    }),
                }
            }
            _ => None,
        }
    }

    /// A record as a struct of its fields that have a column type (all
    /// nullable); `None` when none has.
    fn record(
        &mut self,
        record: &'s Value,
        path: &str,
        left_out: &mut Vec<String>,
    ) -> Option<DataType> {
        let name = record.get("name").and_then(Value::as_str).unwrap_or(path);
        self.open.push(short_name(name).to_owned());
        let mut members = Members::new(path);
        for field in record_fields(record).ok()? {
            let Ok((child, ty)) = name_and_type(field) else {
                continue;
            };
            let stored = self.stored(ty, &members.at(child), left_out);
            members.add(child, stored, left_out, || avro_type_name(ty));
        }
        self.open.pop();
        members.finish()
    }
}

/// A struct being built from the members of an Avro record, a Protobuf
/// message or a JSON Schema object at `path`: each with a column type
/// becomes a nullable field, each without is named in `left_out`.
struct Members<'p> {
    path: &'p str,
    fields: Vec<Field>,
}

impl<'p> Members<'p> {
    fn new(path: &'p str) -> Self {
        Self {
            path,
            fields: Vec::new(),
        }
    }

    /// Where member `name` is: the path its own members are named by.
    fn at(&self, name: &str) -> String {
        format!("{}.{name}", self.path)
    }

    /// Adds member `name` of `stored` type; `None`: it has no column type,
    /// and `described` names the type it has.
    fn add(
        &mut self,
        name: &str,
        stored: Option<DataType>,
        left_out: &mut Vec<String>,
        described: impl FnOnce() -> String,
    ) {
        match stored {
            Some(stored) => self.fields.push(Field::new(name, stored, true)),
            None => left_out.push(format!("{} ({})", self.at(name), described())),
        }
    }

    /// The struct; `None` when no member had a column type.
    fn finish(self) -> Option<DataType> {
        (!self.fields.is_empty()).then(|| DataType::Struct(self.fields.into()))
    }
}

/// A full name's last part: `Click` of `shop.Click`.
fn short_name(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// A decimal's stored type (up to 38 digits, as Delta holds them).
fn decimal_type(complex: &serde_json::Map<String, Value>) -> Option<DataType> {
    if complex.get("logicalType")?.as_str()? != "decimal" {
        return None;
    }
    let precision = complex.get("precision")?.as_u64()?;
    let scale = complex.get("scale").map_or(Some(0), Value::as_u64)?;
    let fits = (1..=38).contains(&precision) && scale <= precision;
    fits.then_some(DataType::Decimal128(precision as u8, scale as i8))
}

/// The stored type of an Avro primitive, widened so that Avro's
/// promotions (int → long, float → double) never change a column's type.
fn primitive_type(base: &str, logical: Option<&str>) -> Option<DataType> {
    let weir = match (base, logical) {
        ("long", Some(l)) if l.contains("timestamp") => FieldType::Timestamp,
        ("int", Some("date")) => FieldType::Date,
        // Times of day have no column type yet.
        (_, Some("decimal" | "time-millis" | "time-micros")) => return None,
        ("string", _) => FieldType::String,
        ("boolean", _) => FieldType::Bool,
        ("int" | "long", _) => FieldType::Int64,
        ("float" | "double", _) => FieldType::Float64,
        _ => return None,
    };
    Some(weir.stored_type())
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
        let schema = r#"{"type": "record", "name": "Click", "namespace": "shop", "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "ts", "type": "long"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "page", "type": ["null", "string"], "default": null},
            {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["a", "b"]}},
            {"name": "n", "type": "int"},
            {"name": "price", "type": ["double", "null"]},
            {"name": "ok", "type": "boolean"},
            {"name": "again", "type": "shop.K"},
            {"name": "address", "type": {"type": "record", "name": "A", "fields": [
                {"name": "city", "type": "string"},
                {"name": "geo", "type": {"type": "map", "values": "double"}},
                {"name": "next", "type": ["null", "A"]}]}},
            {"name": "tags", "type": {"type": "array", "items": ["null", "int"]}},
            {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
            {"name": "huge", "type": {"type": "bytes", "logicalType": "decimal", "precision": 60}},
            {"name": "home", "type": "A"},
            {"name": "empty", "type": {"type": "record", "name": "Z", "fields": []}},
            {"name": "loop", "type": ["null", "shop.Click"]},
            {"name": "either", "type": ["null", "string", "long"]},
            {"name": "_x", "type": "string"}
        ]}"#;
        let columns = columns("AVRO", schema).unwrap();
        let got: Vec<(&str, &str, bool)> = columns
            .fields
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
                ("again", "string", true),
            ]
        );
        let address = DataType::Struct(vec![Field::new("city", DataType::Utf8, true)].into());
        let tags = DataType::List(Arc::new(Field::new("element", DataType::Int64, true)));
        let structured = structured_of(&columns);
        assert_eq!(
            structured,
            [
                ("address", &address),
                ("tags", &tags),
                ("amount", &DataType::Decimal128(9, 2)),
                ("home", &address),
            ]
        );
        assert_eq!(
            columns.left_out,
            [
                "address.geo (map)",
                "address.next (union of null, A)",
                "huge (bytes decimal)",
                "home.geo (map)",
                "home.next (union of null, A)",
                "empty (record)",
                "loop (union of null, shop.Click)",
                "either (union of null, string, long)",
                "_x (names starting with `_` are weir's)",
            ]
        );
    }

    fn structured_of<'c>(columns: &'c SubjectColumns) -> Vec<(&'c str, &'c DataType)> {
        let structured = columns.structured.iter();
        structured.map(|s| (s.name.as_str(), &s.ty)).collect()
    }

    fn record(fields: &[(&str, DataType)]) -> DataType {
        let fields = fields.iter();
        let fields: Vec<Field> = fields
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect();
        DataType::Struct(fields.into())
    }

    fn columns(schema_type: &str, schema: &str) -> Result<SubjectColumns<'static>, String> {
        let found = SubjectSchema {
            id: 1,
            schema_type: schema_type.into(),
            schema: schema.into(),
        };
        subject_columns(&found, "event_id", "ts")
    }

    fn declared(columns: &SubjectColumns) -> Vec<(String, String, bool)> {
        let fields = columns.fields.iter();
        fields
            .map(|f| (f.name.clone(), f.ty.clone(), f.nullable))
            .collect()
    }

    fn owned(fields: &[(&str, &str, bool)]) -> Vec<(String, String, bool)> {
        let fields = fields.iter();
        fields
            .map(|(n, t, null)| (n.to_string(), t.to_string(), *null))
            .collect()
    }

    #[test]
    fn a_protobuf_message_becomes_columns_its_messages_structs() {
        let proto = r#"syntax = "proto3";
            package shop;
            import "google/protobuf/timestamp.proto";
            message Click {
              string event_id = 1;
              google.protobuf.Timestamp ts = 2;
              optional string page = 3;
              int32 n = 4;
              uint64 big = 5;
              float price = 6;
              bool ok = 7;
              enum Kind { A = 0; B = 1; }
              Kind kind = 8;
              message Device { string os = 1; repeated int32 dims = 2; Device parent = 3; }
              Device device = 9;
              repeated string tags = 10;
              map<string, string> attributes = 11;
              bytes blob = 12;
            }
            message Other { int64 id = 1; }"#;
        let got = columns("PROTOBUF", proto).unwrap();
        assert_eq!(
            declared(&got),
            owned(&[
                ("event_id", "string", false),
                ("ts", "timestamp", false),
                ("page", "string", true),
                ("n", "int64", true),
                ("big", "int64", true),
                ("price", "float64", true),
                ("ok", "bool", true),
                ("kind", "string", true),
            ])
        );
        assert_eq!(
            got.left_out,
            [
                "device.parent (shop.Click.Device)",
                "attributes (map)",
                "blob (bytes)"
            ]
        );
        let device = record(&[("os", DataType::Utf8), ("dims", list_of(DataType::Int64))]);
        let structured = structured_of(&got);
        assert_eq!(
            structured,
            [("device", &device), ("tags", &list_of(DataType::Utf8))]
        );
        assert!(
            columns("PROTOBUF", "message {")
                .unwrap_err()
                .contains(".proto")
        );
    }

    #[test]
    fn a_json_schema_object_becomes_columns_its_objects_structs() {
        let schema = r#"{"type": "object", "properties": {
            "event_id": {"type": "string"},
            "ts": {"type": ["string", "integer"]},
            "at": {"type": "string", "format": "date-time"},
            "day": {"type": ["null", "string"], "format": "date"},
            "n": {"type": "integer"},
            "price": {"type": ["number", "null"]},
            "ok": {"type": "boolean"},
            "kind": {"enum": ["a", "b"]},
            "device": {"type": "object", "properties": {
                "os": {"type": "string"}, "size": {"type": ["integer", "null"]},
                "any": {"type": "object"}}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "loose": {"type": "array"},
            "either": {"type": ["string", "boolean"]},
            "anything": {}
        }}"#;
        let got = columns("JSON", schema).unwrap();
        let mut fields = declared(&got);
        fields.sort();
        assert_eq!(
            fields,
            owned(&[
                ("at", "timestamp", true),
                ("day", "date", true),
                ("event_id", "string", false),
                ("kind", "string", true),
                ("n", "int64", true),
                ("ok", "bool", true),
                ("price", "float64", true),
                ("ts", "timestamp", false),
            ])
        );
        let mut left_out = got.left_out.clone();
        left_out.sort();
        assert_eq!(
            left_out,
            [
                "anything (no type)",
                "device.any (object)",
                "either (string or boolean)",
                "loose (array)",
            ]
        );
        let device = record(&[("os", DataType::Utf8), ("size", DataType::Int64)]);
        let mut structured = structured_of(&got);
        structured.sort_by_key(|(name, _)| *name);
        assert_eq!(
            structured,
            [("device", &device), ("tags", &list_of(DataType::Utf8))]
        );
        assert!(columns("JSON", "[]").unwrap_err().contains("properties"));
    }

    #[test]
    fn what_is_not_a_record_is_refused() {
        let refusal = |schema| columns("AVRO", schema).unwrap_err();
        assert!(refusal(r#""string""#).contains("record"));
        assert!(refusal("{").contains("JSON"));
    }
}
