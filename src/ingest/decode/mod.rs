//! Decode: message bytes → Arrow, under the job's schema contract.
//!
//! Each message is read once ([`shape`]): its JSON syntax checked strictly
//! and each contract field's value parsed straight into its column
//! ([`columns`]), while every other field is only skipped. A message that
//! breaks the contract is refused alone, with the field and value named, and
//! costs the batch nothing. The row rules (event ID, event time and required
//! fields present, event time in range) are checked on the same values
//! before the row is appended. Every rejected message becomes a DLQ row with
//! its bytes and the reason; none is dropped and none stops the job.
//!
//! This stage is a pure function: the caller passes the ingest time in.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BinaryArray, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use arrow::error::ArrowError;
use chrono::{DateTime, TimeZone, Utc};

use crate::config::{Contract, Payload};
use crate::ingest::source::{Message, MicroBatch};
use columns::{Columns, Value};
use shape::{MAX_TIMESTAMP_MS, Shape};

mod columns;
mod shape;

pub const EVENT_DATE: &str = "_event_date";
pub const PARTITION: &str = "_partition";
pub const OFFSET: &str = "_offset";
pub const KAFKA_TS: &str = "_kafka_ts";
/// When weir read the message (UTC): what `dlq` and `late` rows are aged by.
pub const INGEST_TS: &str = "_ingest_ts";
/// The message exactly as the producer sent it. `raw` keeps it (unless the
/// job says `schema.payload = "none"`) so that reprocessing under a changed
/// contract (a field added, a decoding bug fixed) sees what was sent, not
/// only what the old contract kept.
pub const PAYLOAD: &str = "_payload";

const US_PER_DAY: i64 = 86_400_000_000;

/// A micro-batch split by the contract.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Valid events in the `raw` table's schema, in message order.
    pub valid: RecordBatch,
    /// Rejected messages in the `dlq` table's schema, in message order.
    pub rejected: RecordBatch,
}

/// The compiled contract: schemas derived once, reused for every batch.
#[derive(Debug, Clone)]
pub struct Decoder {
    contract: Contract,
    shape: Shape,
    max_message_bytes: usize,
    raw_schema: SchemaRef,
    dlq_schema: SchemaRef,
}

/// The one timestamp type weir stores: UTC microseconds, which every reader shares.
pub fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The `raw` table: the contract's fields, then weir's own columns. The
/// payload is null in tables written before weir kept it and by jobs that
/// do not keep it.
pub fn raw_schema(contract: &Contract) -> SchemaRef {
    let mut fields = contract.stored_fields();
    fields.extend([
        Field::new(EVENT_DATE, DataType::Date32, false),
        Field::new(PARTITION, DataType::Int32, false),
        Field::new(OFFSET, DataType::Int64, false),
        Field::new(KAFKA_TS, utc_micros(), true),
        Field::new(PAYLOAD, DataType::Binary, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// The `dlq` table: where a message came from, why it was refused, and its bytes.
pub fn dlq_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("_topic", DataType::Utf8, false),
        Field::new(PARTITION, DataType::Int32, false),
        Field::new(OFFSET, DataType::Int64, false),
        Field::new(KAFKA_TS, utc_micros(), true),
        Field::new(INGEST_TS, utc_micros(), false),
        Field::new("error", DataType::Utf8, false),
        Field::new("payload", DataType::Binary, true),
    ]))
}

/// A message refused by the contract: its index in the micro-batch and why.
type Rejection = (usize, String);

impl Decoder {
    pub fn new(contract: Contract, max_message_bytes: usize) -> Self {
        Self {
            raw_schema: raw_schema(&contract),
            dlq_schema: dlq_schema(),
            shape: Shape::new(&contract),
            contract,
            max_message_bytes,
        }
    }

    pub fn raw_schema(&self) -> &SchemaRef {
        &self.raw_schema
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    pub fn dlq_schema(&self) -> &SchemaRef {
        &self.dlq_schema
    }

    /// Splits a micro-batch into valid rows and DLQ rows. Errors only on an
    /// internal Arrow failure, never because of message content.
    pub fn decode(&self, batch: &MicroBatch, now: DateTime<Utc>) -> Result<Decoded, ArrowError> {
        let now_ms = now.timestamp_millis();
        self.decode_judged(batch, now, &|_| Some(now_ms))
    }

    /// [`Self::decode`] of messages read again long after they were ingested
    /// (reprocessing `raw`): an event time is judged against the message's
    /// Kafka timestamp, when it was sent, not against today, which would
    /// refuse every event older than the range. A message without one is
    /// not judged: it was in range when it was ingested.
    pub fn decode_as_ingested(
        &self,
        batch: &MicroBatch,
        now: DateTime<Utc>,
    ) -> Result<Decoded, ArrowError> {
        self.decode_judged(batch, now, &|m| m.kafka_ts)
    }

    /// [`Self::decode`], the event-time range judged against `reference`
    /// (epoch ms) of each message.
    fn decode_judged(
        &self,
        batch: &MicroBatch,
        now: DateTime<Utc>,
        reference: &dyn Fn(&Message) -> Option<i64>,
    ) -> Result<Decoded, ArrowError> {
        let mut rejected: Vec<Rejection> = Vec::new();
        let mut rows = Vec::with_capacity(batch.len());
        let types = self.contract.fields.iter().map(|f| f.ty);
        let mut columns = Columns::new(types, batch.len());
        for (i, m) in batch.messages.iter().enumerate() {
            let read = self.precheck(m).and_then(|bytes| self.shape.read(bytes));
            match read.and_then(|values| self.check_row(&values, reference(m)).map(|()| values)) {
                Ok(values) => {
                    columns.push(values);
                    rows.push(i);
                }
                Err(reason) => rejected.push((i, reason)),
            }
        }
        Ok(Decoded {
            valid: self.to_raw(columns.finish(), &rows, &batch.messages)?,
            rejected: self.to_dlq(&rejected, batch, now)?,
        })
    }

    /// Rules that need no parsing.
    fn precheck<'m>(&self, m: &'m Message) -> Result<&'m [u8], String> {
        let Some(bytes) = m.payload.as_deref() else {
            return Err("message has no value (a tombstone)".into());
        };
        if bytes.len() > self.max_message_bytes {
            return Err(format!(
                "message of {} bytes exceeds source.max_message_bytes ({})",
                bytes.len(),
                self.max_message_bytes
            ));
        }
        if let Some(ms) = m
            .kafka_ts
            .filter(|ms| ms.unsigned_abs() > MAX_TIMESTAMP_MS as u64)
        {
            return Err(format!(
                "Kafka timestamp {ms} ms is beyond what a timestamp column holds"
            ));
        }
        match bytes.trim_ascii_start().first() {
            None => return Err("empty message".into()),
            Some(b'{') => {}
            Some(_) => return Err("not a JSON object".into()),
        }
        Ok(bytes)
    }

    /// The row rules on one message's values: required fields present and
    /// the event time in range of `reference` (epoch ms; none: not judged).
    /// A message is refused for the first rule it breaks.
    fn check_row(&self, values: &[Value], reference: Option<i64>) -> Result<(), String> {
        let c = &self.contract;
        if values[c.event_id] == Value::Null {
            return Err(format!("missing event ID `{}`", c.event_id_name()));
        }
        let Value::TimestampMs(time) = values[c.event_time] else {
            return Err(format!("missing event time `{}`", c.event_time_name()));
        };
        let missing = c
            .fields
            .iter()
            .zip(values)
            .find(|(f, v)| !f.nullable && **v == Value::Null);
        if let Some((f, _)) = missing {
            return Err(format!("missing required field `{}`", f.name));
        }
        match reference {
            Some(r) if time.abs_diff(r) > c.event_time_range.as_millis() as u64 => Err(format!(
                "event time {} is outside the accepted range ({} ± {})",
                format_ms(time),
                format_ms(r),
                humantime::format_duration(c.event_time_range)
            )),
            _ => Ok(()),
        }
    }

    /// The contract's columns of the rows decoded from `messages[rows]`,
    /// with weir's columns added: the `raw` table's rows.
    fn to_raw(
        &self,
        mut columns: Vec<ArrayRef>,
        rows: &[usize],
        messages: &[Message],
    ) -> Result<RecordBatch, ArrowError> {
        let times = columns[self.contract.event_time].as_primitive::<TimestampMicrosecondType>();
        let dates: Date32Array =
            compute::kernels::arity::unary(times, |us: i64| us.div_euclid(US_PER_DAY) as i32);
        let picked = || rows.iter().map(|&i| &messages[i]);
        columns.push(Arc::new(dates));
        columns.push(Arc::new(Int32Array::from_iter_values(
            picked().map(|m| m.partition),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            picked().map(|m| m.offset),
        )));
        columns.push(Arc::new(kafka_ts(picked())));
        columns.push(match self.contract.payload {
            Payload::Kept => Arc::new(payloads(picked())),
            Payload::None => arrow::array::new_null_array(&DataType::Binary, rows.len()),
        });
        RecordBatch::try_new(self.raw_schema.clone(), columns)
    }

    fn to_dlq(
        &self,
        rejected: &[Rejection],
        batch: &MicroBatch,
        now: DateTime<Utc>,
    ) -> Result<RecordBatch, ArrowError> {
        let picked = || rejected.iter().map(|(i, _)| &batch.messages[*i]);
        let now_us = now.timestamp_micros();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                picked().map(|_| batch.topic.as_str()),
            )),
            Arc::new(Int32Array::from_iter_values(picked().map(|m| m.partition))),
            Arc::new(Int64Array::from_iter_values(picked().map(|m| m.offset))),
            Arc::new(kafka_ts(picked())),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(picked().map(|_| now_us))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                rejected.iter().map(|(_, r)| r.as_str()),
            )),
            Arc::new(payloads(picked())),
        ];
        RecordBatch::try_new(self.dlq_schema.clone(), columns)
    }
}

fn kafka_ts<'a>(messages: impl Iterator<Item = &'a Message>) -> TimestampMicrosecondArray {
    // An absurd one's message is in the DLQ (`precheck`), its time left null.
    let micros = |ms: i64| ms.checked_mul(1000);
    TimestampMicrosecondArray::from_iter(messages.map(|m| m.kafka_ts.and_then(micros)))
        .with_timezone("UTC")
}

fn payloads<'a>(messages: impl Iterator<Item = &'a Message>) -> BinaryArray {
    BinaryArray::from_iter(messages.map(|m| m.payload.as_deref()))
}

fn format_ms(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{ms} ms since the epoch"),
    }
}

#[cfg(test)]
mod tests;
