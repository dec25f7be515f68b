//! Decode: message bytes → Arrow, under the job's schema contract.
//!
//! The happy path is one vectorized arrow-json decode for the whole micro-batch.
//! A message that breaks the contract must cost the batch only a few re-decodes,
//! never the batch itself. Syntax is checked per message first with a strict
//! parser (arrow-json's tape reader tolerates missing or doubled commas, and a
//! contract that lets `{"a":1 "b":2}` through is no contract); value faults
//! (wrong types, bad UTF-8), which arrow-json reports only for a whole flush, are
//! found by bisecting the failing range. Row rules that are easier to check on
//! columns (required fields present, event time in range) run vectorized
//! afterwards. Every rejected message becomes a DLQ row with its bytes and the
//! reason; none is dropped and none stops the job.
//!
//! This stage is a pure function: the caller passes the ingest time in.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow::compute::{self, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow_json::ReaderBuilder;
use chrono::{DateTime, TimeZone, Utc};

use crate::config::{Contract, FieldType};
use crate::ingest::source::{Message, MicroBatch};
use shape::{MAX_TIMESTAMP_MS, Shape};

mod shape;

pub const EVENT_DATE: &str = "_event_date";
pub const PARTITION: &str = "_partition";
pub const OFFSET: &str = "_offset";
pub const KAFKA_TS: &str = "_kafka_ts";
/// When weir read the message (UTC): what `dlq` and `late` rows are aged by.
pub const INGEST_TS: &str = "_ingest_ts";
/// The message exactly as the producer sent it. `raw` keeps it so that
/// reprocessing under a changed contract (a field added, a decoding bug fixed)
/// sees what was sent, not only what the old contract kept.
pub const PAYLOAD: &str = "_payload";

const MS_PER_DAY: i64 = 86_400_000;

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
    decode_schema: SchemaRef,
    raw_schema: SchemaRef,
    dlq_schema: SchemaRef,
}

/// The one timestamp type weir stores: UTC microseconds, which every reader shares.
pub fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The `raw` table: the contract's fields, then weir's own columns. The
/// payload is nullable only because tables written before weir kept it have
/// none.
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
            decode_schema: contract.decode_schema(),
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
        let mut candidates: Vec<(usize, &[u8])> = Vec::with_capacity(batch.len());
        for (i, m) in batch.messages.iter().enumerate() {
            match self.precheck(m) {
                Ok(bytes) => candidates.push((i, bytes)),
                Err(reason) => rejected.push((i, reason)),
            }
        }

        let (rows, decoded) = self.decode_isolating(&candidates, &mut rejected)?;
        let references: Vec<Option<i64>> = rows
            .iter()
            .map(|&i| reference(&batch.messages[i]))
            .collect();
        let keep = self.check_rows(&decoded, &rows, &references, &mut rejected)?;
        let decoded = compute::filter_record_batch(&decoded, &keep)?;
        let kept: Vec<usize> = rows
            .iter()
            .zip(keep.values().iter())
            .filter_map(|(&r, k)| k.then_some(r))
            .collect();

        rejected.sort_by_key(|(i, _)| *i);
        Ok(Decoded {
            valid: self.to_raw(&decoded, &kept, &batch.messages)?,
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
        self.shape.check(bytes)?;
        Ok(bytes)
    }

    /// Decodes the candidates, moving each message that breaks the contract to
    /// `rejected`. Returns the decoded rows and, per row, its message index.
    fn decode_isolating(
        &self,
        candidates: &[(usize, &[u8])],
        rejected: &mut Vec<Rejection>,
    ) -> Result<(Vec<usize>, RecordBatch), ArrowError> {
        let mut rows = Vec::with_capacity(candidates.len());
        let mut parts = Vec::new();
        // Ranges still to decode, left-most on top so rows stay in message order.
        let mut work = vec![candidates];
        while let Some(range) = work.pop() {
            if range.is_empty() {
                continue;
            }
            match self.decode_range(range) {
                Ok(part) => {
                    rows.extend(range.iter().map(|(i, _)| *i));
                    parts.push(part);
                }
                Err(reason) if range.len() == 1 => {
                    rejected.push((range[0].0, format!("does not match the schema: {reason}")));
                }
                Err(_) => {
                    let (left, right) = range.split_at(range.len() / 2);
                    work.push(right);
                    work.push(left);
                }
            }
        }
        Ok((rows, concat_batches(&self.decode_schema, &parts)?))
    }

    /// One decode attempt over syntactically valid messages. Each must become
    /// exactly one row: the row → message mapping is what ties a row to its offset.
    fn decode_range(&self, range: &[(usize, &[u8])]) -> Result<RecordBatch, String> {
        let mut decoder = ReaderBuilder::new(self.decode_schema.clone())
            .with_batch_size(range.len() + 1)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        for (_, bytes) in range {
            decoder.decode(bytes).map_err(|e| e.to_string())?;
        }
        if decoder.has_partial_record() || decoder.len() != range.len() {
            return Err("the messages did not decode to one row each".into());
        }
        match decoder.flush() {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) => Ok(RecordBatch::new_empty(self.decode_schema.clone())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The column rules, vectorized: required fields present and the event time
    /// in range of its row's `references` time (epoch ms; none: not judged).
    /// Returns the mask of rows to keep; each other row is rejected once, with
    /// the first rule it broke.
    fn check_rows(
        &self,
        decoded: &RecordBatch,
        rows: &[usize],
        references: &[Option<i64>],
        rejected: &mut Vec<Rejection>,
    ) -> Result<BooleanArray, ArrowError> {
        let mut reasons: Vec<Option<String>> = vec![None; decoded.num_rows()];
        let mut note = |mask: &BooleanArray, reason: &dyn Fn(usize) -> String| {
            if mask.true_count() == 0 {
                return;
            }
            for (row, slot) in reasons.iter_mut().enumerate() {
                if slot.is_none() && mask.value(row) {
                    *slot = Some(reason(row));
                }
            }
        };

        let c = &self.contract;
        let id = c.event_id_name();
        note(&compute::is_null(decoded.column(c.event_id))?, &|_| {
            format!("missing event ID `{id}`")
        });
        let time = c.event_time_name();
        let times = decoded.column(c.event_time);
        note(&compute::is_null(times)?, &|_| {
            format!("missing event time `{time}`")
        });
        for (i, f) in c.fields.iter().enumerate() {
            if !f.nullable {
                note(&compute::is_null(decoded.column(i))?, &|_| {
                    format!("missing required field `{}`", f.name)
                });
            }
        }

        let range_ms = c.event_time_range.as_millis() as u64;
        let times = times
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("event time decodes as millisecond timestamps");
        let outside: BooleanArray = times
            .iter()
            .zip(references)
            .map(|(t, reference)| match (t, reference) {
                (Some(t), Some(r)) => Some(t.abs_diff(*r) > range_ms),
                _ => Some(false),
            })
            .collect();
        note(&outside, &|row| {
            format!(
                "event time {} is outside the accepted range ({} ± {})",
                format_ms(times.value(row)),
                references[row].map_or_else(String::new, format_ms),
                humantime::format_duration(c.event_time_range)
            )
        });

        let keep: BooleanArray = reasons.iter().map(|r| Some(r.is_none())).collect();
        rejected.extend(
            rows.iter()
                .zip(reasons)
                .filter_map(|(&i, reason)| reason.map(|r| (i, r))),
        );
        Ok(keep)
    }

    /// Converts decoded rows to the `raw` table's schema and adds weir's columns.
    fn to_raw(
        &self,
        decoded: &RecordBatch,
        rows: &[usize],
        messages: &[Message],
    ) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.raw_schema.fields().len());
        for (i, f) in self.contract.fields.iter().enumerate() {
            let column = decoded.column(i);
            columns.push(if f.ty == FieldType::Timestamp {
                compute::cast(column, &f.ty.stored_type())?
            } else {
                column.clone()
            });
        }
        let times = decoded
            .column(self.contract.event_time)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("event time decodes as millisecond timestamps");
        let dates: Date32Array =
            compute::kernels::arity::unary(times, |ms: i64| ms.div_euclid(MS_PER_DAY) as i32);
        let picked = || rows.iter().map(|&i| &messages[i]);
        columns.push(Arc::new(dates));
        columns.push(Arc::new(Int32Array::from_iter_values(
            picked().map(|m| m.partition),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            picked().map(|m| m.offset),
        )));
        columns.push(Arc::new(kafka_ts(picked())));
        columns.push(Arc::new(payloads(picked())));
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
