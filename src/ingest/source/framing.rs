//! What `weir produce --format avro|protobuf|json_schema` sends: the
//! generator's events in the Confluent wire format, under a schema made from
//! the job's contract and registered in its schema registry, so demos and
//! tests go through the path users' producers take.
//!
//! Each generated JSON event is first read as the job would read JSON; an
//! event the contract accepts is then written in the format, one it refuses
//! (the generator's malformed kinds) is sent as it is: not in the wire
//! format, a framed job refuses it too.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, Schema,
    TimestampMicrosecondType,
};
use arrow_avro::schema::{AvroSchema, FingerprintStrategy};
use arrow_avro::writer::format::AvroSoeFormat;
use arrow_avro::writer::{Encoder, WriterBuilder};
use chrono::Utc;
use prost_reflect::prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value as Proto};

use super::registry::{RegistryError, SchemaRegistry};
use super::{Message, MicroBatch};
use crate::config::{Contract, FieldType, Format, Registry, Topics};
use crate::ingest::decode::framed::WriterSchemas;
use crate::ingest::decode::protobuf::ProtoSchema;
use crate::ingest::decode::{Decoder, Encoding};

/// Turns generated JSON events into one framed format.
pub struct Framing {
    /// Reads the generated JSON as the job would.
    json: Decoder,
    /// The contract's columns: what the registered schema describes.
    schema: Arc<Schema>,
    writer: Writer,
    pub schema_id: u32,
}

/// How an accepted event's row becomes a message body.
enum Writer {
    Avro(Box<Encoder>),
    /// The first message type of the registered `.proto`, written after
    /// Confluent's message index for it (a lone 0).
    Protobuf(MessageDescriptor),
    /// The generated JSON itself, which the registered schema describes.
    JsonSchema,
}

/// The name of the message type a contract becomes in Protobuf.
const MESSAGE: &str = "Event";

impl Framing {
    /// The framing a job's producer needs for `format`: framed formats get
    /// one, JSON none (it is sent as generated).
    pub async fn for_job(
        contract: &Contract,
        format: &Format,
    ) -> Result<Option<Self>, RegistryError> {
        let Some(registry) = format.registry() else {
            return Ok(None);
        };
        let encoding = Encoding::from(format);
        Ok(Some(Self::register(contract, registry, encoding).await?))
    }

    /// Registers the contract's schema in `encoding` under the registry's
    /// subject.
    pub async fn register(
        contract: &Contract,
        registry: &Registry,
        encoding: Encoding,
    ) -> Result<Self, RegistryError> {
        let schema = Self::schema(contract, encoding)?;
        let schema_id = SchemaRegistry::new(registry, encoding)?
            .register(&registry.subject, &schema)
            .await?;
        Self::new(contract, encoding, schema_id)
    }

    /// The contract's columns as a schema of `encoding`: what is registered.
    pub fn schema(contract: &Contract, encoding: Encoding) -> Result<String, RegistryError> {
        match encoding {
            Encoding::Avro => AvroSchema::try_from(&Schema::new(contract.stored_fields()))
                .map(|avro| avro.json_string)
                .map_err(|e| RegistryError::Config(format!("the contract as Avro: {e}"))),
            Encoding::Protobuf => proto_text(contract),
            Encoding::JsonSchema => Ok(json_schema(contract).to_string()),
            Encoding::Json => Err(RegistryError::Config(
                "plain JSON has no registered schema".into(),
            )),
        }
    }

    /// Framing under [`Self::schema`] registered as `schema_id`.
    pub fn new(
        contract: &Contract,
        encoding: Encoding,
        schema_id: u32,
    ) -> Result<Self, RegistryError> {
        let schema = Arc::new(Schema::new(contract.stored_fields()));
        let writer = match encoding {
            Encoding::Avro => Writer::Avro(Box::new(
                WriterBuilder::new(schema.as_ref().clone())
                    .with_fingerprint_strategy(FingerprintStrategy::Id(schema_id))
                    .build_encoder::<AvroSoeFormat>()
                    .map_err(|e| RegistryError::Config(format!("an Avro encoder: {e}")))?,
            )),
            Encoding::Protobuf => {
                let compiled = ProtoSchema::compile(&proto_text(contract)?)
                    .map_err(|e| RegistryError::Config(format!("the contract as Protobuf: {e}")))?;
                Writer::Protobuf(compiled.message(&[0]).expect("the .proto has one message"))
            }
            Encoding::JsonSchema => Writer::JsonSchema,
            Encoding::Json => return Err(Self::schema(contract, encoding).unwrap_err()),
        };
        Ok(Self {
            json: Decoder::new(contract.clone(), usize::MAX, Encoding::Json),
            schema,
            writer,
            schema_id,
        })
    }

    /// A generated JSON message in the wire format, or as it is when the
    /// contract refuses it.
    pub fn frame(&mut self, json: &[u8]) -> Vec<u8> {
        let Some(row) = self.accepted(json) else {
            return json.to_vec();
        };
        match &mut self.writer {
            // arrow-avro writes the frame itself (the fingerprint is the ID).
            Writer::Avro(encoder) => {
                encoder
                    .encode(&row)
                    .expect("a row the contract accepts encodes under the contract's schema");
                let rows = encoder.flush();
                rows.row(0).expect("one row was encoded").to_vec()
            }
            Writer::Protobuf(descriptor) => {
                let body = proto_message(descriptor, &row).encode_to_vec();
                [&header(self.schema_id)[..], &[0], &body].concat()
            }
            Writer::JsonSchema => [&header(self.schema_id)[..], json].concat(),
        }
    }

    /// The contract's columns of `json` read as the job reads JSON, when it
    /// accepts the event.
    fn accepted(&self, json: &[u8]) -> Option<RecordBatch> {
        let batch = MicroBatch {
            topics: Topics::single("t"),
            messages: vec![Message {
                payload: Some(bytes::Bytes::copy_from_slice(json)),
                ..Message::default()
            }],
        };
        let decoded = self
            .json
            .decode(&batch, &WriterSchemas::default(), Utc::now())
            .expect("decoding one message fails only on an Arrow bug");
        (decoded.valid.num_rows() == 1).then(|| {
            let columns = decoded.valid.columns()[..self.schema.fields().len()].to_vec();
            RecordBatch::try_new(self.schema.clone(), columns)
                .expect("raw's first columns are the contract's")
        })
    }
}

/// The magic byte and the schema ID.
fn header(schema_id: u32) -> [u8; 5] {
    let id = schema_id.to_be_bytes();
    [0, id[0], id[1], id[2], id[3]]
}

/// The contract as a `.proto` file with one message type. Every field has
/// presence (`optional`, or a message type), so a null stays null.
fn proto_text(contract: &Contract) -> Result<String, RegistryError> {
    let mut text = String::from(
        "syntax = \"proto3\";\npackage weir;\nimport \"google/protobuf/timestamp.proto\";\n",
    );
    text.push_str(&format!("message {MESSAGE} {{\n"));
    for (number, field) in contract.fields.iter().enumerate() {
        if field.name.contains('-') {
            return Err(RegistryError::Config(format!(
                "field `{}` is not a Protobuf field name",
                field.name
            )));
        }
        let ty = match field.ty {
            FieldType::String => "optional string",
            FieldType::Bool => "optional bool",
            FieldType::Int32 => "optional int32",
            FieldType::Int64 => "optional int64",
            FieldType::Float32 => "optional float",
            FieldType::Float64 => "optional double",
            FieldType::Timestamp => "google.protobuf.Timestamp",
            // Days since the epoch, as Protobuf jobs read an int32 date.
            FieldType::Date => "optional int32",
        };
        text.push_str(&format!("  {ty} {} = {};\n", field.name, number + 1));
    }
    text.push_str("}\n");
    Ok(text)
}

/// Row 0 of `row` (the contract's columns) as a message of `descriptor`.
fn proto_message(descriptor: &MessageDescriptor, row: &RecordBatch) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    for (field, column) in row.schema().fields().iter().zip(row.columns()) {
        if column.is_null(0) {
            continue;
        }
        let value = match column.data_type() {
            DataType::Utf8 => Proto::String(column.as_string::<i32>().value(0).into()),
            DataType::Boolean => Proto::Bool(column.as_boolean().value(0)),
            DataType::Int32 => Proto::I32(column.as_primitive::<Int32Type>().value(0)),
            DataType::Int64 => Proto::I64(column.as_primitive::<Int64Type>().value(0)),
            DataType::Float32 => Proto::F32(column.as_primitive::<Float32Type>().value(0)),
            DataType::Float64 => Proto::F64(column.as_primitive::<Float64Type>().value(0)),
            DataType::Date32 => Proto::I32(column.as_primitive::<Date32Type>().value(0)),
            DataType::Timestamp(..) => {
                let us = column.as_primitive::<TimestampMicrosecondType>().value(0);
                timestamp(descriptor, field.name(), us)
            }
            other => unreachable!("a contract column is never {other}"),
        };
        message.set_field_by_name(field.name(), value);
    }
    message
}

/// `us` as the `google.protobuf.Timestamp` of field `name`.
fn timestamp(descriptor: &MessageDescriptor, name: &str, us: i64) -> Proto {
    let kind = descriptor
        .get_field_by_name(name)
        .and_then(|f| f.kind().as_message().cloned())
        .expect("the contract's timestamps are google.protobuf.Timestamp");
    let mut timestamp = DynamicMessage::new(kind);
    timestamp.set_field_by_name("seconds", Proto::I64(us.div_euclid(1_000_000)));
    timestamp.set_field_by_name(
        "nanos",
        Proto::I32((us.rem_euclid(1_000_000) * 1000) as i32),
    );
    Proto::Message(timestamp)
}

/// The contract as a JSON Schema: an object whose fields have the types JSON
/// jobs accept for them (timestamps as RFC 3339 strings or epoch millis).
fn json_schema(contract: &Contract) -> serde_json::Value {
    let properties: serde_json::Map<_, _> = contract
        .fields
        .iter()
        .map(|f| {
            let mut ty = match f.ty {
                FieldType::String | FieldType::Date => vec!["string"],
                FieldType::Bool => vec!["boolean"],
                FieldType::Int32 | FieldType::Int64 => vec!["integer"],
                FieldType::Float32 | FieldType::Float64 => vec!["number"],
                FieldType::Timestamp => vec!["string", "integer"],
            };
            if f.nullable {
                ty.push("null");
            }
            (f.name.clone(), serde_json::json!({ "type": ty }))
        })
        .collect();
    let required: Vec<_> = contract
        .fields
        .iter()
        .filter(|f| !f.nullable)
        .map(|f| f.name.clone())
        .collect();
    serde_json::json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": MESSAGE,
        "type": "object",
        "properties": properties,
        "required": required,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixture::Spec;
    use crate::ingest::decode::framed::{WriterSchema, WriterSchemas};
    use crate::ingest::source::generator::{Generator, Mix};

    /// Generated events (a fifth malformed) through `encoding`'s framing and
    /// its decoder give exactly what the JSON decoder gives for the events
    /// as generated: the same rows, the same refusals.
    fn round_trip(encoding: Encoding) {
        let job = Spec {
            fields: &[
                r#"{ name = "b", type = "bool" }"#,
                r#"{ name = "i", type = "int32" }"#,
                r#"{ name = "n", type = "int64", nullable = false }"#,
                r#"{ name = "f", type = "float32" }"#,
                r#"{ name = "x", type = "float64" }"#,
                r#"{ name = "d", type = "date" }"#,
                r#"{ name = "s", type = "string" }"#,
            ],
            ..Spec::default()
        }
        .job();
        let contract = job.contract;
        let mix = Mix {
            malformed_ratio: 0.2,
            ..Mix::default()
        };
        let mut generator = Generator::new(contract.clone(), mix, 3);
        let mut framing = Framing::new(&contract, encoding, 9).unwrap();
        let (mut plain, mut framed) = (Vec::new(), Vec::new());
        for offset in 0..400 {
            let json = generator.next_message().payload;
            let message = |payload| Message {
                offset,
                kafka_ts: Some(Utc::now().timestamp_millis()),
                payload: Some(bytes::Bytes::from(payload)),
                ..Message::default()
            };
            framed.push(message(framing.frame(&json)));
            plain.push(message(json));
        }
        let mut schemas = WriterSchemas::default();
        let text = Framing::schema(&contract, encoding).unwrap();
        schemas.insert(9, WriterSchema::compile(9, encoding, &text));
        let now = Utc::now();
        let decode = |encoding, messages, schemas: &WriterSchemas| {
            let batch = MicroBatch {
                topics: Topics::single("t"),
                messages,
            };
            Decoder::new(contract.clone(), usize::MAX, encoding)
                .decode(&batch, schemas, now)
                .unwrap()
        };
        let expected = decode(Encoding::Json, plain, &WriterSchemas::default());
        let got = decode(encoding, framed, &schemas);
        let fields = contract.fields.len();
        assert!(
            expected.valid.num_rows() > 250,
            "{}",
            expected.valid.num_rows()
        );
        assert_eq!(
            got.valid.columns()[..fields],
            expected.valid.columns()[..fields],
            "{encoding:?}: {:?}",
            got.rejected.column_by_name("error")
        );
        assert_eq!(got.rejected.num_rows(), expected.rejected.num_rows());
    }

    #[test]
    fn avro_framing_reads_back_as_the_json_it_came_from() {
        round_trip(Encoding::Avro);
    }

    #[test]
    fn protobuf_framing_reads_back_as_the_json_it_came_from() {
        round_trip(Encoding::Protobuf);
    }

    #[test]
    fn json_schema_framing_reads_back_as_the_json_it_came_from() {
        round_trip(Encoding::JsonSchema);
    }
}
