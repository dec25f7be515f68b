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

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, Date32Array, Int32Array, Int64Array,
    ListArray, ListBuilder, RecordBatch, StringArray, StringBuilder, StructBuilder,
    TimestampMicrosecondArray,
};
use arrow::compute;
use arrow::datatypes::{
    DataType, Field, Fields, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use arrow::error::ArrowError;
use chrono::{DateTime, TimeZone, Utc};

use crate::config::{Contract, Format, KeyFormat, Payload, SourcePartition, Topics};
use crate::ingest::source::{Message, MicroBatch};
use columns::{Columns, Value};
use framed::WriterSchemas;
use shape::{MAX_TIMESTAMP_MS, Shape};

mod avro;
mod columns;
pub mod framed;
pub mod protobuf;
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
/// The Kafka record's key, for a job that stores it (`source.columns`).
pub const KEY: &str = "_key";
/// The Kafka record's headers, (key, value) in order, for a job that stores them.
pub const HEADERS: &str = "_headers";
/// The topic a row was read from (`raw`: for a job that stores it; `dlq`: always).
pub const TOPIC: &str = "_topic";

const US_PER_DAY: i64 = 86_400_000_000;

/// A micro-batch split by the contract.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Valid events in the `raw` table's schema, in message order.
    pub valid: RecordBatch,
    /// Rejected messages in the `dlq` table's schema, in message order.
    pub rejected: RecordBatch,
}

/// How message values are encoded, as the decode stage needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    /// Confluent-framed Avro; the writer schemas come with each batch.
    Avro,
    /// Confluent-framed JSON, validated against the writer's JSON Schema.
    JsonSchema,
    /// Confluent-framed Protobuf.
    Protobuf,
}

impl From<&Format> for Encoding {
    fn from(format: &Format) -> Self {
        match format {
            Format::Json => Self::Json,
            Format::Avro(_) => Self::Avro,
            Format::JsonSchema(_) => Self::JsonSchema,
            Format::Protobuf(_) => Self::Protobuf,
        }
    }
}

impl Encoding {
    /// The registry's `schemaType` this encoding reads.
    pub fn schema_type(self) -> &'static str {
        match self {
            Self::Json | Self::JsonSchema => "JSON",
            Self::Avro => "AVRO",
            Self::Protobuf => "PROTOBUF",
        }
    }
}

/// Each row's partition, of rows with `raw`'s `_partition` and (for a job
/// of several topics) `_topic` columns: `raw`, `late`, a decoded batch, a
/// projection of them, a query's result.
pub fn partitions(rows: &RecordBatch, topics: &Topics) -> Result<Vec<SourcePartition>, ArrowError> {
    let numbers = rows
        .column_by_name(PARTITION)
        .ok_or_else(|| ArrowError::SchemaError(format!("missing column {PARTITION}")))?;
    let numbers = compute::cast(numbers, &DataType::Int32)?;
    let numbers = numbers.as_primitive::<arrow::datatypes::Int32Type>();
    let names = match rows.column_by_name(TOPIC).filter(|_| topics.several()) {
        Some(column) => Some(compute::cast(column, &DataType::Utf8)?),
        None => None,
    };
    let names = names.as_ref().map(|n| n.as_string::<i32>());
    Ok((0..rows.num_rows())
        .map(|row| SourcePartition {
            topic: topics.of_row(names.filter(|n| n.is_valid(row)).map(|n| n.value(row))),
            partition: numbers.value(row),
        })
        .collect())
}

/// The SQL columns [`partitions`] reads a row's partition from: `_partition`,
/// and `_topic` before it for a job of several topics.
pub fn partition_columns(topics: &Topics) -> String {
    if topics.several() {
        format!("{TOPIC}, {PARTITION}")
    } else {
        PARTITION.to_owned()
    }
}

/// Each row's partition and offset (see [`partitions`]).
pub fn positions(
    rows: &RecordBatch,
    topics: &Topics,
) -> Result<Vec<(SourcePartition, i64)>, ArrowError> {
    let offsets = rows
        .column_by_name(OFFSET)
        .ok_or_else(|| ArrowError::SchemaError(format!("missing column {OFFSET}")))?;
    let offsets = compute::cast(offsets, &DataType::Int64)?;
    let offsets = offsets.as_primitive::<arrow::datatypes::Int64Type>();
    let partitions = partitions(rows, topics)?;
    Ok(partitions
        .into_iter()
        .zip(offsets.values().iter().copied())
        .collect())
}

/// The compiled contract: schemas derived once, reused for every batch.
#[derive(Debug, Clone)]
pub struct Decoder {
    contract: Contract,
    encoding: Encoding,
    shape: Shape,
    max_message_bytes: usize,
    raw_schema: SchemaRef,
    dlq_schema: SchemaRef,
    /// How many threads may read one micro-batch's messages.
    threads: NonZeroUsize,
}

/// The fewest messages a slice read on a thread of its own holds: a batch
/// under twice this (the latency path) is read where it is, and a slice is
/// large beside the cost of starting its thread and concatenating its
/// columns. A choice, not a measured optimum: on two busy cores slices
/// changed nothing measurable either way (benches/README.md).
const MESSAGES_PER_SLICE: usize = 4096;

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
    let kafka = &contract.kafka;
    if let Some(format) = &kafka.key {
        fields.push(Field::new(KEY, format.stored_type(), true));
    }
    if kafka.headers {
        fields.push(Field::new(HEADERS, headers_type(), true));
    }
    if kafka.topic {
        fields.push(Field::new(TOPIC, DataType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

/// One header: a name and an optional value.
fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// Headers as a list of (key, value) in the record's order: not a map,
/// because Kafka allows a name twice and readers (DuckDB) refuse maps with
/// a repeated key.
fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new_struct("item", header_fields(), false)))
}

/// The `dlq` table: where a message came from, why it was refused, and its bytes.
pub fn dlq_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(TOPIC, DataType::Utf8, false),
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

/// One message's bytes to its contract values, or why it is refused.
type ReadMessage<'r> = dyn for<'m> FnMut(&'m [u8]) -> Result<Vec<Value<'m>>, String> + 'r;

/// What reading a micro-batch's messages gave: the contract's columns of
/// the rows that passed the row rules, those rows' indices, and refusals.
struct Read {
    columns: Vec<ArrayRef>,
    rows: Vec<usize>,
    rejected: Vec<Rejection>,
}

impl Read {
    /// The reads of consecutive slices of `per_slice` messages as one read
    /// of them all: columns concatenated, indices shifted by each slice's start.
    fn joined(reads: Vec<Read>, per_slice: usize) -> Result<Read, ArrowError> {
        let width = reads.first().map_or(0, |read| read.columns.len());
        let columns = (0..width)
            .map(|c| {
                let parts: Vec<&dyn Array> = reads.iter().map(|r| r.columns[c].as_ref()).collect();
                compute::concat(&parts)
            })
            .collect::<Result<_, _>>()?;
        let mut rows = Vec::new();
        let mut rejected = Vec::new();
        for (n, read) in reads.into_iter().enumerate() {
            let start = n * per_slice;
            rows.extend(read.rows.into_iter().map(|i| i + start));
            rejected.extend(read.rejected.into_iter().map(|(i, why)| (i + start, why)));
        }
        Ok(Read {
            columns,
            rows,
            rejected,
        })
    }
}

/// What an event time is judged against, per message (epoch ms), if anything.
type Reference = dyn Fn(&Message) -> Option<i64> + Sync;

impl Decoder {
    pub fn new(contract: Contract, max_message_bytes: usize, encoding: Encoding) -> Self {
        Self {
            encoding,
            raw_schema: raw_schema(&contract),
            dlq_schema: dlq_schema(),
            shape: Shape::new(&contract),
            contract,
            max_message_bytes,
            threads: crate::task::cores(),
        }
    }

    /// The same decoder reading a micro-batch on at most `threads` threads
    /// (by default, as many as the process may run on).
    pub fn with_threads(mut self, threads: NonZeroUsize) -> Self {
        self.threads = threads;
        self
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
    /// `schemas` holds the writer schemas that framed messages (Avro,
    /// Protobuf, JSON Schema) name; empty for JSON.
    pub fn decode(
        &self,
        batch: &MicroBatch,
        schemas: &WriterSchemas,
        now: DateTime<Utc>,
    ) -> Result<Decoded, ArrowError> {
        let now_ms = now.timestamp_millis();
        self.decode_judged(batch, schemas, now, &move |_| Some(now_ms))
    }

    /// [`Self::decode`] of messages read again long after they were ingested
    /// (reprocessing `raw`): an event time is judged against the message's
    /// Kafka timestamp, when it was sent, not against today, which would
    /// refuse every event older than the range. A message without one is
    /// not judged: it was in range when it was ingested.
    pub fn decode_as_ingested(
        &self,
        batch: &MicroBatch,
        schemas: &WriterSchemas,
        now: DateTime<Utc>,
    ) -> Result<Decoded, ArrowError> {
        self.decode_judged(batch, schemas, now, &|m| m.kafka_ts)
    }

    /// [`Self::decode`], the event-time range judged against `reference`
    /// (epoch ms) of each message.
    fn decode_judged(
        &self,
        batch: &MicroBatch,
        schemas: &WriterSchemas,
        now: DateTime<Utc>,
        reference: &Reference,
    ) -> Result<Decoded, ArrowError> {
        let read = self.read_in_slices(&batch.messages, schemas, reference)?;
        let (read, key) = self.with_keys(read, &batch.messages, schemas)?;
        Ok(Decoded {
            valid: self.to_raw(read.columns, &read.rows, key, batch)?,
            rejected: self.to_dlq(&read.rejected, batch, now)?,
        })
    }

    /// Reads a large micro-batch in consecutive slices on threads of their
    /// own, one per core at most, and joins what they read in message
    /// order: decoding is the stage whose cost grows with every byte, and
    /// messages are read independently of each other.
    fn read_in_slices(
        &self,
        messages: &[Message],
        schemas: &WriterSchemas,
        reference: &Reference,
    ) -> Result<Read, ArrowError> {
        let slices = (messages.len() / MESSAGES_PER_SLICE).clamp(1, self.threads.get());
        if slices == 1 {
            return self.read(messages, schemas, reference);
        }
        let per_slice = messages.len().div_ceil(slices);
        let reads = std::thread::scope(|scope| {
            let threads: Vec<_> = messages
                .chunks(per_slice)
                .map(|slice| scope.spawn(|| self.read(slice, schemas, reference)))
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        Read::joined(reads, per_slice)
    }

    /// Reads `messages` on this thread.
    fn read(
        &self,
        messages: &[Message],
        schemas: &WriterSchemas,
        reference: &Reference,
    ) -> Result<Read, ArrowError> {
        Ok(match self.encoding {
            Encoding::Json => self.read_rows(messages, reference, &mut |bytes| {
                json_object(bytes).and_then(|b| self.shape.read(b))
            })?,
            Encoding::JsonSchema => self.read_rows(messages, reference, &mut |bytes| {
                framed::validated_json(bytes, schemas)
                    .and_then(json_object)
                    .and_then(|b| self.shape.read(b))
            })?,
            Encoding::Protobuf => {
                let mut reader = protobuf::Reader::new(&self.contract);
                self.read_rows(messages, reference, &mut |bytes| {
                    reader.read(bytes, schemas)
                })?
            }
            Encoding::Avro => self.read_avro(messages, schemas, reference)?,
        })
    }

    /// Messages read one at a time by `read` (each message's bytes to its
    /// contract values), the row rules checked on the values.
    fn read_rows(
        &self,
        messages: &[Message],
        reference: &Reference,
        read: &mut ReadMessage,
    ) -> Result<Read, ArrowError> {
        let mut rejected: Vec<Rejection> = Vec::new();
        let mut rows = Vec::with_capacity(messages.len());
        let mut columns = Columns::new(&self.contract, messages.len());
        let event_time = self.contract.event_time;
        for (i, m) in messages.iter().enumerate() {
            let read = self.precheck(m).and_then(&mut *read);
            let checked = read.and_then(|values| {
                let time = values[event_time].as_ms();
                let present = |f: usize| values[f] != Value::Null;
                self.check_row(present, time, reference(m)).map(|()| values)
            });
            match checked {
                Ok(values) => {
                    columns.push(values);
                    rows.push(i);
                }
                Err(reason) => rejected.push((i, reason)),
            }
        }
        Ok(Read {
            columns: columns.finish()?,
            rows,
            rejected,
        })
    }

    /// Avro messages decoded group by group ([`avro`]), the row rules
    /// checked on the columns, and the rows put back in message order.
    fn read_avro(
        &self,
        messages: &[Message],
        schemas: &WriterSchemas,
        reference: &Reference,
    ) -> Result<Read, ArrowError> {
        let mut rejected = Vec::new();
        let mut passed = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            match self.precheck(m) {
                Ok(bytes) => passed.push((i, bytes)),
                Err(reason) => rejected.push((i, reason)),
            }
        }
        let (groups, refused) = avro::decode(&self.contract, passed, schemas)?;
        rejected.extend(refused);
        let mut kept: Vec<Vec<ArrayRef>> = Vec::with_capacity(groups.len());
        let mut rows = Vec::new();
        for group in groups {
            let times =
                group.columns[self.contract.event_time].as_primitive::<TimestampMicrosecondType>();
            let mut keep = Vec::with_capacity(group.rows.len());
            for (r, &i) in group.rows.iter().enumerate() {
                let time = times.is_valid(r).then(|| times.value(r).div_euclid(1000));
                let present = |f: usize| group.columns[f].is_valid(r);
                let checked = match &group.unfit[r] {
                    Some(why) => Err(why.clone()),
                    None => self.check_row(present, time, reference(&messages[i])),
                };
                keep.push(checked.is_ok());
                match checked {
                    Ok(()) => rows.push(i),
                    Err(reason) => rejected.push((i, reason)),
                }
            }
            let keep = arrow::array::BooleanArray::from(keep);
            let columns = group.columns.iter().map(|c| compute::filter(c, &keep));
            kept.push(columns.collect::<Result<_, _>>()?);
        }
        rejected.sort_unstable_by_key(|(i, _)| *i);
        let columns = self.in_message_order(kept, &rows)?;
        rows.sort_unstable();
        Ok(Read {
            columns,
            rows,
            rejected,
        })
    }

    /// The groups' columns concatenated, then reordered so that rows
    /// (their message indices, group by group) ascend.
    fn in_message_order(
        &self,
        groups: Vec<Vec<ArrayRef>>,
        rows: &[usize],
    ) -> Result<Vec<ArrayRef>, ArrowError> {
        let order = compute::sort_to_indices(
            &arrow::array::UInt64Array::from_iter_values(rows.iter().map(|&i| i as u64)),
            None,
            None,
        )?;
        self.contract
            .stored_fields()
            .iter()
            .enumerate()
            .map(|(f, field)| {
                let parts: Vec<&dyn arrow::array::Array> =
                    groups.iter().map(|g| g[f].as_ref()).collect();
                let all = match parts.is_empty() {
                    true => arrow::array::new_empty_array(field.data_type()),
                    false => compute::concat(&parts)?,
                };
                compute::take(&all, &order, None)
            })
            .collect()
    }

    /// `read` and the `_key` column of its rows, for a job that keeps keys:
    /// Avro keys decoded (their writer schemas in `schemas`), the messages
    /// whose key cannot be read moved to the refused.
    fn with_keys(
        &self,
        mut read: Read,
        messages: &[Message],
        schemas: &WriterSchemas,
    ) -> Result<(Read, Option<ArrayRef>), ArrowError> {
        let picked = read.rows.iter().map(|&i| messages[i].key.as_deref());
        let ty = match &self.contract.kafka.key {
            None => return Ok((read, None)),
            Some(KeyFormat::Bytes) => {
                let bytes: ArrayRef = Arc::new(BinaryArray::from_iter(picked));
                return Ok((read, Some(bytes)));
            }
            // `precheck` refused the keys that are not UTF-8.
            Some(KeyFormat::String) => {
                let text = picked.map(|k| k.and_then(|k| std::str::from_utf8(k).ok()));
                let text: ArrayRef = Arc::new(StringArray::from_iter(text));
                return Ok((read, Some(text)));
            }
            Some(KeyFormat::Avro(ty)) => ty,
        };
        let framed = read
            .rows
            .iter()
            .filter_map(|&i| Some((i, messages[i].key.as_deref()?)));
        let (decoded, refused) = avro::keys(framed.collect(), ty, schemas);
        if !refused.is_empty() {
            let gone: std::collections::HashSet<usize> = refused.iter().map(|(i, _)| *i).collect();
            let keep: arrow::array::BooleanArray =
                read.rows.iter().map(|i| Some(!gone.contains(i))).collect();
            read.columns = read
                .columns
                .iter()
                .map(|c| compute::filter(c, &keep))
                .collect::<Result<_, _>>()?;
            read.rows.retain(|i| !gone.contains(i));
            read.rejected.extend(refused);
            read.rejected.sort_unstable_by_key(|(i, _)| *i);
        }
        let null = arrow::array::new_null_array(ty, 1);
        let rows: Vec<&dyn Array> = read
            .rows
            .iter()
            .map(|i| decoded.get(i).unwrap_or(&null).as_ref())
            .collect();
        let key = match rows.is_empty() {
            true => arrow::array::new_empty_array(ty),
            false => compute::concat(&rows)?,
        };
        Ok((read, Some(key)))
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
        let not_utf8 = |key: &[u8]| std::str::from_utf8(key).is_err();
        if self.contract.kafka.key == Some(KeyFormat::String)
            && m.key.as_deref().is_some_and(not_utf8)
        {
            return Err("the Kafka key is not UTF-8 (source.key_format = \"string\")".into());
        }
        if let Some(ms) = m
            .kafka_ts
            .filter(|ms| ms.unsigned_abs() > MAX_TIMESTAMP_MS as u64)
        {
            return Err(format!(
                "Kafka timestamp {ms} ms is beyond what a timestamp column holds"
            ));
        }
        Ok(bytes)
    }

    /// The row rules on one message: required fields `present` (by
    /// contract index) and the event time (epoch ms) in range of
    /// `reference` (epoch ms; none: not judged). A message is refused for
    /// the first rule it breaks.
    fn check_row(
        &self,
        present: impl Fn(usize) -> bool,
        time: Option<i64>,
        reference: Option<i64>,
    ) -> Result<(), String> {
        let c = &self.contract;
        if !present(c.event_id) {
            return Err(format!("missing event ID `{}`", c.event_id_name()));
        }
        let Some(time) = time else {
            return Err(format!("missing event time `{}`", c.event_time_name()));
        };
        let missing = c
            .fields
            .iter()
            .enumerate()
            .find(|(i, f)| !f.nullable && !present(*i));
        if let Some((_, f)) = missing {
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
        key: Option<ArrayRef>,
        batch: &MicroBatch,
    ) -> Result<RecordBatch, ArrowError> {
        let messages = &batch.messages;
        let times = columns[self.contract.event_time].as_primitive::<TimestampMicrosecondType>();
        let dates: Date32Array =
            compute::kernels::arity::unary(times, |us: i64| us.div_euclid(US_PER_DAY) as i32);
        let picked = || rows.iter().map(|&i| &messages[i]);
        columns.push(Arc::new(dates));
        columns.push(Arc::new(Int32Array::from_iter_values(
            picked().map(|m| m.partition.partition),
        )));
        columns.push(Arc::new(Int64Array::from_iter_values(
            picked().map(|m| m.offset),
        )));
        columns.push(Arc::new(kafka_ts(picked())));
        columns.push(match self.contract.payload {
            Payload::Kept => Arc::new(payloads(picked())),
            Payload::None => arrow::array::new_null_array(&DataType::Binary, rows.len()),
        });
        let kafka = &self.contract.kafka;
        columns.extend(key);
        if kafka.headers {
            columns.push(Arc::new(headers(picked())));
        }
        if kafka.topic {
            columns.push(Arc::new(topic_names(batch, picked())));
        }
        RecordBatch::try_new(self.raw_schema.clone(), columns)
    }

    /// DLQ rows for messages of `batch` a later stage refused, each named
    /// by its (partition, offset) with the reason: the bytes as they were
    /// sent, as for every other refusal.
    pub fn refuse(
        &self,
        batch: &MicroBatch,
        refused: &[(SourcePartition, i64, String)],
        now: DateTime<Utc>,
    ) -> Result<RecordBatch, ArrowError> {
        let index: HashMap<(SourcePartition, i64), usize> = batch
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| ((m.partition, m.offset), i))
            .collect();
        let rejected: Vec<Rejection> = refused
            .iter()
            .map(|(p, o, reason)| {
                let i = index.get(&(*p, *o)).ok_or_else(|| {
                    ArrowError::InvalidArgumentError(format!(
                        "no message at partition {}, offset {o} in the batch",
                        batch.topics.label(*p)
                    ))
                })?;
                Ok((*i, reason.clone()))
            })
            .collect::<Result<_, ArrowError>>()?;
        self.to_dlq(&rejected, batch, now)
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
            Arc::new(topic_names(batch, picked())),
            Arc::new(Int32Array::from_iter_values(
                picked().map(|m| m.partition.partition),
            )),
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

/// A JSON message's first rule: it is an object.
fn json_object(bytes: &[u8]) -> Result<&[u8], String> {
    match bytes.trim_ascii_start().first() {
        None => Err("empty message".into()),
        Some(b'{') => Ok(bytes),
        Some(_) => Err("not a JSON object".into()),
    }
}

fn kafka_ts<'a>(messages: impl Iterator<Item = &'a Message>) -> TimestampMicrosecondArray {
    // An absurd one's message is in the DLQ (`precheck`), its time left null.
    let micros = |ms: i64| ms.checked_mul(1000);
    TimestampMicrosecondArray::from_iter(messages.map(|m| m.kafka_ts.and_then(micros)))
        .with_timezone("UTC")
}

fn headers<'a>(messages: impl Iterator<Item = &'a Message>) -> ListArray {
    let entry = StructBuilder::from_fields(header_fields(), 0);
    let mut builder = ListBuilder::new(entry).with_field(Arc::new(Field::new_struct(
        "item",
        header_fields(),
        false,
    )));
    for m in messages {
        for (name, value) in m.headers.iter().flatten() {
            let entry = builder.values();
            entry
                .field_builder::<StringBuilder>(0)
                .expect("a key column")
                .append_value(name);
            entry
                .field_builder::<BinaryBuilder>(1)
                .expect("a value column")
                .append_option(value.as_deref());
            entry.append(true);
        }
        builder.append(true);
    }
    builder.finish()
}

/// The messages' payloads as they came, in one buffer sized for all of
/// them up front, not grown by doubling through a batch's megabytes.
fn payloads<'a>(messages: impl Iterator<Item = &'a Message> + Clone) -> BinaryArray {
    let bytes = messages
        .clone()
        .filter_map(|m| m.payload.as_ref())
        .map(|p| p.len())
        .sum();
    let mut builder = BinaryBuilder::with_capacity(messages.size_hint().0, bytes);
    for m in messages {
        builder.append_option(m.payload.as_deref());
    }
    builder.finish()
}

fn format_ms(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{ms} ms since the epoch"),
    }
}

#[cfg(test)]
mod framed_tests;

/// Each message's topic, by name.
fn topic_names<'m>(batch: &MicroBatch, messages: impl Iterator<Item = &'m Message>) -> StringArray {
    StringArray::from_iter_values(messages.map(|m| batch.topics.name(m.partition.topic)))
}

/// For other stages' tests: `messages` of JSON events, every one of which
/// the contract accepts, as `raw` rows.
#[cfg(test)]
pub(crate) fn accepted(
    contract: &Contract,
    messages: Vec<Message>,
    now: DateTime<Utc>,
) -> RecordBatch {
    let batch = MicroBatch {
        topics: Topics::single("t"),
        messages,
    };
    let decoder = Decoder::new(contract.clone(), 1 << 20, Encoding::Json);
    let decoded = decoder
        .decode(&batch, &WriterSchemas::default(), now)
        .unwrap();
    assert_eq!(decoded.rejected.num_rows(), 0, "{:?}", decoded.rejected);
    decoded.valid
}
#[cfg(test)]
mod tests;
