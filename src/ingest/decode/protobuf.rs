//! Protobuf in the Confluent wire format → the contract's values.
//!
//! After the schema ID, Confluent's framing names the message type by its
//! indexes in the schema's file (a zigzag varint count, then that many
//! indexes; a lone 0 byte for the first type). Each (schema ID, type) gets a
//! plan once per batch: which field each contract field reads and whether
//! its kind can become the contract's type (a kind that cannot refuses the
//! messages of that type, naming the schema ID). Each message is then read
//! as a dynamic message and its values converted: no generated code, any
//! schema the registry holds.

use std::borrow::Cow;
use std::collections::HashMap;

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value as Proto,
};

use super::columns::Value;
use super::framed::{WriterSchema, WriterSchemas, unframe};
pub use crate::config::ProtoSchema;
use crate::config::{Contract, FieldType};

/// Reads one zigzag varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// The message indexes after the schema ID, and the body after them.
fn message_indexes(mut body: &[u8]) -> Option<(Vec<i32>, &[u8])> {
    let count = varint(&mut body)?;
    if count == 0 {
        return Some((vec![0], body));
    }
    if !(1..=100).contains(&count) {
        return None;
    }
    let indexes = (0..count)
        .map(|_| varint(&mut body).and_then(|i| i32::try_from(i).ok()))
        .collect::<Option<_>>()?;
    Some((indexes, body))
}

/// How one message type's fields become the contract's: for each contract
/// field, the field it reads (none: the type lacks it, so it is null).
struct Plan {
    message: MessageDescriptor,
    fields: Vec<Option<FieldDescriptor>>,
    /// For each structured column, the field it reads (none: null).
    structured: Vec<Option<FieldDescriptor>>,
}

impl Plan {
    fn new(contract: &Contract, message: MessageDescriptor) -> Result<Self, String> {
        let fields = contract
            .fields
            .iter()
            .map(|f| match message.get_field_by_name(&f.name) {
                None if f.nullable => Ok(None),
                None => Err(format!(
                    "{} has no field `{}`, which the contract requires",
                    message.full_name(),
                    f.name
                )),
                Some(field)
                    if !field.is_list() && !field.is_map() && takes(f.ty, &field.kind()) =>
                {
                    Ok(Some(field))
                }
                Some(field) => Err(format!(
                    "field `{}` of {} is {}{:?}, which the contract's {} cannot take",
                    f.name,
                    message.full_name(),
                    if field.is_list() { "repeated " } else { "" },
                    field.kind(),
                    f.ty.name()
                )),
            })
            .collect::<Result<_, _>>()?;
        let structured = contract.structured.iter();
        let structured = structured
            .map(|s| message.get_field_by_name(&s.name))
            .collect();
        Ok(Self {
            message,
            fields,
            structured,
        })
    }
}

/// Whether a Protobuf kind becomes a contract type as Avro's promotions would.
fn takes(ty: FieldType, kind: &Kind) -> bool {
    use Kind::*;
    let int32 = matches!(kind, Int32 | Sint32 | Sfixed32);
    let int64 = matches!(kind, Int64 | Sint64 | Sfixed64 | Uint32 | Fixed32);
    match ty {
        FieldType::String => matches!(kind, String | Bytes | Enum(_)),
        FieldType::Bool => matches!(kind, Bool),
        FieldType::Int32 | FieldType::Date => int32,
        FieldType::Int64 => int32 || int64 || matches!(kind, Uint64 | Fixed64),
        FieldType::Float32 => matches!(kind, Float),
        FieldType::Float64 => int32 || int64 || matches!(kind, Float | Double),
        FieldType::Timestamp => match kind {
            Message(m) => m.full_name() == "google.protobuf.Timestamp",
            _ => matches!(kind, Int64 | Sint64 | Sfixed64),
        },
    }
}

/// Reads a batch's Protobuf messages, planning each message type once.
pub(super) struct Reader<'c> {
    contract: &'c Contract,
    plans: HashMap<(u32, Vec<i32>), Result<Plan, String>>,
}

impl<'c> Reader<'c> {
    pub(super) fn new(contract: &'c Contract) -> Self {
        Self {
            contract,
            plans: HashMap::new(),
        }
    }

    /// One framed message's contract values, or why it is refused.
    pub(super) fn read(
        &mut self,
        bytes: &[u8],
        schemas: &WriterSchemas,
    ) -> Result<Vec<Value<'static>>, String> {
        let (id, schema, body) = unframe(bytes, schemas)?;
        let WriterSchema::Protobuf(schema) = schema else {
            return Err(format!("schema ID {id} is not Protobuf"));
        };
        let (indexes, body) = message_indexes(body)
            .ok_or_else(|| format!("schema ID {id}: unreadable message indexes"))?;
        let contract = self.contract;
        let plan = self
            .plans
            .entry((id, indexes))
            .or_insert_with_key(|(_, indexes)| {
                let message = schema.message(indexes).ok_or_else(|| {
                    format!("schema ID {id} has no message type at indexes {indexes:?}")
                })?;
                Plan::new(contract, message)
            })
            .as_ref()
            .map_err(|why| format!("schema ID {id}: {why}"))?;
        let message = DynamicMessage::decode(plan.message.clone(), body)
            .map_err(|e| format!("schema ID {id}: malformed Protobuf body: {e}"))?;
        let present = |field: &FieldDescriptor| {
            let set = !field.supports_presence() || message.has_field(field);
            set.then(|| message.get_field(field))
        };
        let fields = contract.fields.iter().zip(&plan.fields).map(|(f, field)| {
            match field
                .as_ref()
                .and_then(|field| Some((field, present(field)?)))
            {
                Some((field, value)) => {
                    convert(f.ty, &value, field).map_err(|why| format!("field `{}`: {why}", f.name))
                }
                None => Ok(Value::Null),
            }
        });
        let structured = contract
            .structured
            .iter()
            .zip(&plan.structured)
            .map(|(s, field)| {
                match field
                    .as_ref()
                    .and_then(|field| Some((field, present(field)?)))
                {
                    Some((field, value)) => {
                        let json = as_json(&value, &field.kind());
                        let row = super::columns::structured(&json, &s.ty)
                            .map_err(|why| format!("field `{}`: {why}", s.name))?;
                        Ok(Value::Structured(row))
                    }
                    None => Ok(Value::Null),
                }
            });
        fields.chain(structured).collect()
    }
}

/// A field's value in Protobuf's JSON mapping (field names as declared,
/// enums by name, timestamps in RFC 3339, 64-bit integers as numbers):
/// what a structured column's value is read from.
fn as_json(value: &Proto, kind: &Kind) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        Proto::Bool(b) => Json::from(*b),
        Proto::I32(n) => Json::from(*n),
        Proto::I64(n) => Json::from(*n),
        Proto::U32(n) => Json::from(*n),
        Proto::U64(n) => Json::from(*n),
        Proto::F32(x) => Json::from(*x),
        Proto::F64(x) => Json::from(*x),
        Proto::String(s) => Json::from(s.as_str()),
        Proto::Bytes(b) => Json::from(String::from_utf8_lossy(b)),
        Proto::EnumNumber(n) => match kind.as_enum().and_then(|e| e.get_value(*n)) {
            Some(v) => Json::from(v.name()),
            None => Json::from(*n),
        },
        Proto::Message(m) if m.descriptor().full_name() == "google.protobuf.Timestamp" => {
            let us = timestamp_us(m).and_then(chrono::DateTime::from_timestamp_micros);
            us.map_or(Json::Null, |t| Json::from(t.to_rfc3339()))
        }
        Proto::Message(m) => {
            // As at the top level, a field without presence reads as its default.
            let descriptor = m.descriptor();
            let set = descriptor.fields();
            let set = set.filter(|f| !f.supports_presence() || m.has_field(f));
            let fields = set.map(|f| (f.name().to_owned(), as_json(&m.get_field(&f), &f.kind())));
            Json::Object(fields.collect())
        }
        Proto::List(items) => Json::Array(items.iter().map(|i| as_json(i, kind)).collect()),
        Proto::Map(entries) => {
            let value_kind = kind.as_message().map(|m| m.map_entry_value_field().kind());
            let value_kind = value_kind.unwrap_or_else(|| kind.clone());
            let entries = entries
                .iter()
                .map(|(k, v)| (map_key(k), as_json(v, &value_kind)));
            Json::Object(entries.collect())
        }
    }
}

fn map_key(key: &prost_reflect::MapKey) -> String {
    use prost_reflect::MapKey;
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// A field's value as the contract's type ([`takes`] allowed the pair).
fn convert(
    ty: FieldType,
    value: &Proto,
    field: &FieldDescriptor,
) -> Result<Value<'static>, String> {
    let out_of_range = || format!("{value:?} is out of range for {}", ty.name());
    Ok(match (ty, value) {
        (FieldType::String, Proto::String(s)) => Value::Str(Cow::Owned(s.clone())),
        (FieldType::String, Proto::Bytes(b)) => Value::Str(Cow::Owned(
            String::from_utf8(b.to_vec()).map_err(|_| "bytes that are not UTF-8".to_owned())?,
        )),
        (FieldType::String, Proto::EnumNumber(n)) => {
            let name = field
                .kind()
                .as_enum()
                .and_then(|e| e.get_value(*n))
                .map_or_else(|| n.to_string(), |v| v.name().to_owned());
            Value::Str(Cow::Owned(name))
        }
        (FieldType::Bool, Proto::Bool(b)) => Value::Bool(*b),
        (FieldType::Int32, Proto::I32(n)) => Value::Int32(*n),
        (FieldType::Date, Proto::I32(n)) => Value::Date(*n),
        (FieldType::Int64, Proto::U64(n)) => {
            Value::Int64(i64::try_from(*n).map_err(|_| out_of_range())?)
        }
        (FieldType::Int64, v) => Value::Int64(integer(v).ok_or_else(out_of_range)?),
        (FieldType::Float32, Proto::F32(x)) => Value::Float32(*x),
        (FieldType::Float64, Proto::F64(x)) => Value::Float64(*x),
        (FieldType::Float64, Proto::F32(x)) => Value::Float64(f64::from(*x)),
        (FieldType::Float64, v) => Value::Float64(integer(v).ok_or_else(out_of_range)? as f64),
        (FieldType::Timestamp, Proto::Message(m)) => {
            Value::TimestampUs(timestamp_us(m).ok_or_else(out_of_range)?)
        }
        // A plain integer in a timestamp field is epoch milliseconds, as in JSON.
        (FieldType::Timestamp, Proto::I64(ms)) => Value::TimestampMs(
            Some(*ms)
                .filter(|ms| ms.unsigned_abs() <= super::shape::MAX_TIMESTAMP_MS as u64)
                .ok_or_else(out_of_range)?,
        ),
        _ => return Err(out_of_range()),
    })
}

fn integer(value: &Proto) -> Option<i64> {
    match value {
        Proto::I32(n) => Some(i64::from(*n)),
        Proto::U32(n) => Some(i64::from(*n)),
        Proto::I64(n) => Some(*n),
        _ => None,
    }
}

/// A `google.protobuf.Timestamp` in epoch microseconds.
fn timestamp_us(message: &DynamicMessage) -> Option<i64> {
    let seconds = message.get_field_by_name("seconds")?.as_i64()?;
    let nanos = message.get_field_by_name("nanos")?.as_i32()?;
    if !(0..1_000_000_000).contains(&nanos) {
        return None;
    }
    seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(nanos / 1000))
}
