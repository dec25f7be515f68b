//! The Confluent wire format that registry-backed topics share (magic byte
//! 0, a 4-byte big-endian schema ID, the body), and the writer schemas the
//! source end resolved for a micro-batch's IDs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::Encoding;
use super::protobuf::ProtoSchema;

/// The frame's length: the magic byte and the schema ID.
pub(super) const FRAME: usize = 5;

/// The writer schema a registry gave for one ID, ready to use.
#[derive(Clone)]
pub enum WriterSchema {
    /// Avro schema JSON.
    Avro(Arc<str>),
    /// A compiled JSON Schema.
    JsonSchema(Arc<jsonschema::Validator>),
    /// A compiled Protobuf schema.
    Protobuf(Arc<ProtoSchema>),
    /// Why messages naming this ID cannot be read (DLQ reason).
    Refused(Arc<str>),
}

impl fmt::Debug for WriterSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Avro(text) => f.debug_tuple("Avro").field(text).finish(),
            Self::JsonSchema(_) => f.write_str("JsonSchema"),
            Self::Protobuf(_) => f.write_str("Protobuf"),
            Self::Refused(why) => f.debug_tuple("Refused").field(why).finish(),
        }
    }
}

impl WriterSchema {
    /// Schema `id`'s `text` (a registry's schema of the job's `encoding`)
    /// ready to read messages, or why its messages are refused.
    pub fn compile(id: u32, encoding: Encoding, text: &str) -> Self {
        let refused = |what: &str, e: String| {
            Self::Refused(format!("schema ID {id} is not a {what} weir can use: {e}").into())
        };
        match encoding {
            Encoding::Json | Encoding::Avro => Self::Avro(text.into()),
            Encoding::JsonSchema => match serde_json::from_str(text)
                .map_err(|e| e.to_string())
                .and_then(|schema| jsonschema::validator_for(&schema).map_err(|e| e.to_string()))
            {
                Ok(validator) => Self::JsonSchema(Arc::new(validator)),
                Err(e) => refused("JSON Schema", e),
            },
            Encoding::Protobuf => match ProtoSchema::compile(text) {
                Ok(schema) => Self::Protobuf(Arc::new(schema)),
                Err(e) => refused("Protobuf schema", e),
            },
        }
    }
}

/// The writer schemas a micro-batch's messages name, resolved at the source end.
#[derive(Debug, Clone, Default)]
pub struct WriterSchemas(HashMap<u32, WriterSchema>);

impl WriterSchemas {
    pub fn insert(&mut self, id: u32, schema: WriterSchema) {
        self.0.insert(id, schema);
    }
}

/// The schema ID of a message in the Confluent wire format.
pub fn schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// A framed message's schema ID, its writer schema and its body; the DLQ
/// reason when it is not framed or its ID cannot be read.
pub(super) fn unframe<'m, 's>(
    bytes: &'m [u8],
    schemas: &'s WriterSchemas,
) -> Result<(u32, &'s WriterSchema, &'m [u8]), String> {
    let Some(id) = schema_id(bytes).filter(|_| bytes.len() > FRAME) else {
        return Err(
            "not in the Confluent wire format (magic byte 0, a 4-byte schema ID, then the body)"
                .into(),
        );
    };
    match schemas.0.get(&id) {
        Some(WriterSchema::Refused(why)) => Err(why.to_string()),
        Some(schema) => Ok((id, schema, &bytes[FRAME..])),
        None => Err(format!("schema ID {id} was not resolved")),
    }
}

/// The JSON body of a framed message that its writer's JSON Schema accepts.
pub(super) fn validated_json<'m>(
    bytes: &'m [u8],
    schemas: &WriterSchemas,
) -> Result<&'m [u8], String> {
    let (id, schema, body) = unframe(bytes, schemas)?;
    let WriterSchema::JsonSchema(validator) = schema else {
        return Err(format!("schema ID {id} is not a JSON Schema"));
    };
    // Syntax errors are left to the strict reader, which names them better.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(body);
    };
    match validator.validate(&value) {
        Ok(()) => Ok(body),
        Err(e) => Err(format!("schema ID {id}: {e} (at `{}`)", e.instance_path())),
    }
}
