//! What `weir produce --format avro` sends: the generator's events as Avro
//! in the Confluent wire format, under the job's contract registered in
//! its schema registry, so demos and tests go through the path users'
//! producers take.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use arrow_avro::schema::{AvroSchema, FingerprintStrategy};
use arrow_avro::writer::format::AvroSoeFormat;
use arrow_avro::writer::{Encoder, WriterBuilder};
use chrono::Utc;

use super::registry::{RegistryError, SchemaRegistry};
use super::{Message, MicroBatch};
use crate::config::{Contract, Format, Registry};
use crate::ingest::decode::framed::WriterSchemas;
use crate::ingest::decode::{Decoder, Encoding};

/// Turns generated JSON events into framed Avro.
pub struct AvroFraming {
    /// Reads the generated JSON as the job would.
    json: Decoder,
    /// The contract's columns, in the registered schema.
    schema: Arc<Schema>,
    encoder: Encoder,
    pub schema_id: u32,
}

impl AvroFraming {
    /// The framing a job's producer needs: Avro jobs get one, others none
    /// (they are sent plain JSON).
    pub async fn for_job(
        contract: &Contract,
        format: &Format,
    ) -> Result<Option<Self>, RegistryError> {
        match format {
            Format::Avro(registry) => Ok(Some(Self::register(contract, registry).await?)),
            Format::Json | Format::JsonSchema(_) | Format::Protobuf(_) => Ok(None),
        }
    }

    /// Registers the contract's Avro schema under the registry's subject.
    pub async fn register(contract: &Contract, registry: &Registry) -> Result<Self, RegistryError> {
        let schema_id = SchemaRegistry::new(registry, Encoding::Avro)?
            .register(&registry.subject, &Self::schema(contract)?)
            .await?;
        Self::new(contract, schema_id)
    }

    /// The contract's columns as an Avro schema (JSON): what is registered.
    pub fn schema(contract: &Contract) -> Result<String, RegistryError> {
        AvroSchema::try_from(&Schema::new(contract.stored_fields()))
            .map(|avro| avro.json_string)
            .map_err(|e| RegistryError::Config(format!("the contract as Avro: {e}")))
    }

    /// Framing under [`Self::schema`] registered as `schema_id`.
    pub fn new(contract: &Contract, schema_id: u32) -> Result<Self, RegistryError> {
        let schema = Arc::new(Schema::new(contract.stored_fields()));
        let encoder = WriterBuilder::new(schema.as_ref().clone())
            .with_fingerprint_strategy(FingerprintStrategy::Id(schema_id))
            .build_encoder::<AvroSoeFormat>()
            .map_err(|e| RegistryError::Config(format!("an Avro encoder: {e}")))?;
        Ok(Self {
            json: Decoder::new(contract.clone(), usize::MAX, Encoding::Json),
            schema,
            encoder,
            schema_id,
        })
    }

    /// A generated JSON message in Avro. One the contract refuses (the
    /// generator's malformed kinds) is left as it is: not in the wire
    /// format, an Avro job refuses it too.
    pub fn frame(&mut self, json: &[u8]) -> Vec<u8> {
        let batch = MicroBatch {
            topic: String::new(),
            messages: vec![Message {
                partition: 0,
                offset: 0,
                kafka_ts: None,
                payload: Some(json.to_vec()),
                ..Message::default()
            }],
        };
        let decoded = self
            .json
            .decode(&batch, &WriterSchemas::default(), Utc::now())
            .expect("decoding one message fails only on an Arrow bug");
        if decoded.valid.num_rows() == 1 {
            let columns = decoded.valid.columns()[..self.schema.fields().len()].to_vec();
            let row = RecordBatch::try_new(self.schema.clone(), columns)
                .expect("raw's first columns are the contract's");
            self.encoder
                .encode(&row)
                .expect("a row the contract accepts encodes under the contract's schema");
            let rows = self.encoder.flush();
            return rows.row(0).expect("one row was encoded").to_vec();
        }
        json.to_vec()
    }
}
