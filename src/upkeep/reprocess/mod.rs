//! Reprocessing: an output's rows for a range of event dates, rebuilt from
//! `raw` by the code the live loop runs, and swapped in atomically.
//!
//! The fix for a bug in a job is never to patch rows: fix the job (or weir),
//! then reprocess the dates the bug touched. `raw` holds every accepted event as
//! it was sent (`_payload`), in whichever tier it has aged to. Each event is
//! decoded under the current contract, deduplicated and transformed by the same
//! stages as live ingest ([`crate::ingest::decode`], [`crate::ingest::dedup`],
//! [`crate::ingest::transform`]), and each selected output's rows for the range are
//! replaced with one replace-where commit per table and tier, so a reader sees
//! the old range or the new one, never a mix. Running it again writes the same
//! rows. Output tables are partitioned by date, so no other date's files are
//! touched.
//!
//! Which events count is settled, not judged again: `raw` holds the events that
//! were on time, the outputs aggregate exactly those, and an event that was
//! late stays in `late`. A range can only be reprocessed once it is closed
//! (every window starting in it has ended by the watermark), so live ingest
//! never writes into it again: an event for it that arrives during or after
//! reprocessing is behind the watermark and goes to `late`. Reprocessing and
//! ingest never write the same rows; ingest's blind appends to newer dates
//! never conflict with a reprocess commit, and a commit that loses to upkeep
//! (a fold, a move) is planned again from the new snapshot.
//!
//! Nothing here holds a day, or a range, in memory: see [`stage`] for where
//! the rows go between the read of `raw` and the commits.

mod stage;
mod verify;

pub use stage::DEFAULT_MEMORY_MIB;

pub use verify::{Diff, VerifyReport, verify};

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, ListArray, RecordBatch};
use arrow::compute::{cast, concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimestampMicrosecondType};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{NaiveDate, Utc};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionContext, ident, lit};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::WriteBuilder;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use futures::StreamExt;
use serde_json::json;
use tracing::{info, warn};

use crate::config::{Job, JobError, KeyFormat, SourcePartition, Tier, Topics};
use crate::fault::{FaultError, Faults};
use crate::ingest::decode::framed::WriterSchemas;
use crate::ingest::decode::{
    Decoder, EVENT_DATE, HEADERS, KAFKA_TS, KEY, OFFSET, PARTITION, PAYLOAD, positions, utc_micros,
};
use crate::ingest::dedup::{Dedup, Seed};
use crate::ingest::lookup::{LookupError, Lookups};
use crate::ingest::source::registry::{RegistryError, SchemaRegistry};
use crate::ingest::source::{Headers, Message, MicroBatch};
use crate::ingest::transform::{Transform, WINDOW_START};
use crate::ingest::watermark::Watermark;
use crate::metrics::JobMetrics;
use crate::table::delta::{open_or_create_in, register, stored_schema, txn_version};
use crate::table::schema::{conform, conform_frame};
use crate::table::tier::Tiered;
use crate::table::tier::{self, literal, rfc3339_micros};
use crate::table::{Catalog, RestoreError, TableError, TableId, TableSpec};
use crate::telemetry::Progress;
use stage::{Stage, bounded_session};

const DAY_US: i64 = 86_400_000_000;
/// A replace that keeps losing to upkeep commits gives up after this many plans.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ReprocessError {
    #[error("--from {from} is after --to {to}")]
    Backwards { from: NaiveDate, to: NaiveDate },
    #[error("job {job} has no output `{name}`; its outputs are: {known}")]
    UnknownOutput {
        job: String,
        name: String,
        known: String,
    },
    #[error(
        "output `{output}` cannot be reprocessed: its rows carry no event time `{time}`, so \
         nothing says which date a row belongs to. Select `{time}` in its query, or leave it \
         out with --output"
    )]
    NoEventTime { output: String, time: String },
    #[error(
        "{range} is not closed yet: windows that start in it end as late as {needed}, but the \
         watermark is {watermark}, so live ingest may still add to it. Reprocess earlier dates, \
         or wait"
    )]
    Open {
        range: DateRange,
        needed: String,
        watermark: String,
    },
    #[error(
        "a move of {table} from {from} to {to} is unfinished: run `weir maintain --job … --once` \
         to finish it, then reprocess"
    )]
    MovePending {
        table: String,
        from: &'static str,
        to: &'static str,
    },
    #[error(
        "reprocessing {range} would replace {before} rows of {table} with {after}, losing more \
         than half{refusals}; nothing was changed. See the rows with --dry-run, and pass --force \
         to replace them anyway"
    )]
    Shrinks {
        range: DateRange,
        table: String,
        before: usize,
        after: usize,
        /// Why, when `raw` holds events the contract now refuses.
        refusals: String,
    },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("{step} of {table} ({tier}): {source}")]
    Delta {
        step: &'static str,
        table: String,
        tier: &'static str,
        source: Box<DeltaTableError>,
    },
    #[error("rebuilding the range: {0}{hint}", hint = memory_hint(.0))]
    Transform(#[from] DataFusionError),
    #[error("rebuilding the range: {0}")]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Fault(#[from] FaultError),
    #[error("decoding raw's payloads: {0}")]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

/// What to do when the bound on memory is too tight for even one sort's merge.
fn memory_hint(error: &DataFusionError) -> &'static str {
    match error.find_root() {
        DataFusionError::ResourcesExhausted(_) => " (raise --memory-mib)",
        _ => "",
    }
}

impl ReprocessError {
    /// Whether the request itself is wrong (exit 2), not the tables or the run.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Backwards { .. }
                | Self::UnknownOutput { .. }
                | Self::NoEventTime { .. }
                | Self::Shrinks { .. }
        )
    }
}

/// A range of UTC event dates, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    from: NaiveDate,
    to: NaiveDate,
}

impl DateRange {
    pub fn new(from: NaiveDate, to: NaiveDate) -> Result<Self, ReprocessError> {
        if from > to {
            return Err(ReprocessError::Backwards { from, to });
        }
        Ok(Self { from, to })
    }

    pub fn days(&self) -> impl Iterator<Item = NaiveDate> + use<> {
        self.from.iter_days().take_while({
            let to = self.to;
            move |d| *d <= to
        })
    }

    pub fn start_us(&self) -> i64 {
        day_start_us(self.from)
    }

    /// The first instant after the range.
    pub fn end_us(&self) -> i64 {
        day_start_us(self.to) + DAY_US
    }

    /// SQL that selects a date-partitioned table's rows in the range.
    fn partitions_sql(&self) -> String {
        format!(
            "\"{EVENT_DATE}\" >= '{}' AND \"{EVENT_DATE}\" <= '{}'",
            self.from, self.to
        )
    }
}

impl fmt::Display for DateRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.from, self.to)
    }
}

fn day_start_us(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp_micros()
}

/// One output to rebuild: its compiled transform, its table, and the column its
/// rows are dated (and aged across tiers) by.
#[derive(Debug, Clone)]
pub struct Target {
    transform: Transform,
    spec: TableSpec,
    age: String,
    /// How long after its age a row's window still takes events.
    slack: Duration,
}

impl Target {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// The outputs named in `names` (all, when empty), checked to be reprocessable.
pub async fn targets(job: &Job, names: &[String]) -> Result<Vec<Target>, ReprocessError> {
    let lookups = Lookups::load(job).await?;
    if !job.lookups.is_empty() {
        info!(versions = ?lookups.versions(), "the outputs read these lookup versions (live commits name theirs in weir.lookups)");
    }
    let transforms = Transform::all(job, &lookups).await?;
    let known = || {
        transforms
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(name) = names
        .iter()
        .find(|n| !transforms.iter().any(|t| t.name() == n.as_str()))
    {
        return Err(ReprocessError::UnknownOutput {
            job: job.name.clone(),
            name: name.clone(),
            known: known(),
        });
    }
    let catalog = Catalog::new(job, &transforms);
    let mut out = Vec::new();
    for (transform, spec) in transforms.into_iter().zip(catalog.outputs().cloned()) {
        if !names.is_empty() && !names.iter().any(|n| n == transform.name()) {
            continue;
        }
        let (age, slack) = match &transform {
            Transform::Window(w) => (WINDOW_START.to_owned(), w.slack()),
            Transform::Sql(_) => {
                let time = job.contract.event_time_name().to_owned();
                if spec.partition_columns.is_empty() {
                    return Err(ReprocessError::NoEventTime {
                        output: spec.name.clone(),
                        time,
                    });
                }
                (time, Duration::ZERO)
            }
        };
        out.push(Target {
            transform,
            spec,
            age,
            slack,
        });
    }
    Ok(out)
}

/// Refuses a range that live ingest may still write into.
pub async fn check_closed(
    job: &Job,
    range: DateRange,
    targets: &[Target],
) -> Result<(), ReprocessError> {
    let slack = targets.iter().map(|t| t.slack).max().unwrap_or_default();
    let needed = range.end_us() + slack.as_micros() as i64;
    let (watermark, _) = Watermark::restored(job, &mut Tiered::new(job), &[]).await?;
    let watermark = watermark.current_us();
    if watermark.is_some_and(|w| w >= needed) {
        return Ok(());
    }
    Err(ReprocessError::Open {
        range,
        needed: rfc3339_micros(needed),
        watermark: watermark.map_or("unknown (raw is empty)".into(), rfc3339_micros),
    })
}

/// What rebuilding a range read and decided.
#[derive(Debug, Clone, Default)]
pub struct Rebuild {
    /// Events read from `raw` (each day's range, windows' overlap included).
    pub events: usize,
    /// Events with no payload in `raw`, taken from their columns.
    pub without_payload: usize,
    /// Events in `raw` the current contract refuses; left out of the outputs.
    pub refused: usize,
    /// The first refusal: partition, offset and reason.
    pub first_refusal: Option<String>,
    /// Events dropped by deduplication (non-zero only if the horizon grew).
    pub duplicates: usize,
    /// The most bytes one day's events take as Arrow arrays: what holding a
    /// day in memory would cost, against the bound that is held instead.
    pub largest_day_bytes: usize,
}

impl Rebuild {
    /// "N events read from raw (the largest day X MiB as Arrow)".
    fn read(&self) -> String {
        format!(
            "{} events read from raw (the largest day {} MiB as Arrow)",
            self.events,
            self.largest_day_bytes >> 20
        )
    }

    /// Counts DLQ-shaped rows of `raw` events the contract now refuses.
    fn note_refusals(&mut self, refused: &RecordBatch) {
        if refused.num_rows() == 0 {
            return;
        }
        self.refused += refused.num_rows();
        if self.first_refusal.is_none() {
            let text = |name: &str| {
                refused
                    .column_by_name(name)
                    .and_then(|c| ArrayFormatter::try_new(c, &FormatOptions::default()).ok())
                    .map_or(String::new(), |f| f.value(0).to_string())
            };
            self.first_refusal = Some(format!(
                "partition {} offset {}: {}",
                text(PARTITION),
                text(OFFSET),
                text("error")
            ));
        }
    }
}

/// A range rebuilt onto a [`Stage`]: each target's new rows, read back as a
/// stream, and what rebuilding read and decided.
pub struct Rebuilt {
    stage: Stage,
    ctx: SessionContext,
    pub stats: Rebuild,
}

impl Rebuilt {
    /// The new rows of `targets[index]` for the whole range.
    async fn rows(&self, index: usize, target: &Target) -> Result<DataFrame, DataFusionError> {
        self.stage
            .read(&self.ctx, &rows_folder(index), target.transform.schema())
            .await
    }

    /// A write of `rows` into `table`, cast to `stored` (its schema), streamed
    /// in the bounded session.
    fn write(
        &self,
        table: DeltaTable,
        rows: DataFrame,
        stored: &SchemaRef,
    ) -> Result<WriteBuilder, DataFusionError> {
        Ok(table
            .write(Vec::new())
            .with_input_plan(conform_frame(rows, stored)?.into_unoptimized_plan())
            .with_session_state(Arc::new(self.ctx.state())))
    }
}

fn rows_folder(index: usize) -> String {
    format!("rows-{index}")
}

fn partials_folder(index: usize) -> String {
    format!("partials-{index}")
}

/// Every target's new rows for the range, from `raw` in all tiers, day by day:
/// decoded, deduplicated and transformed by the live loop's stages, a batch at
/// a time, each batch's rows staged on disk. Windows' partials are folded to
/// one row per (window, keys). Sorts and folds hold at most `memory_bytes`.
pub async fn rebuild(
    job: &Job,
    range: DateRange,
    targets: &[Target],
    memory_bytes: usize,
) -> Result<Rebuilt, ReprocessError> {
    let stage = Stage::new().map_err(DataFusionError::from)?;
    let ctx = bounded_session(memory_bytes, &stage)?;
    let mut rebuilt = Rebuilt {
        stage,
        ctx: ctx.clone(),
        stats: Rebuild::default(),
    };
    let mut tables = Tiered::with_context(job, ctx);
    let days: Vec<NaiveDate> = range.days().collect();
    let progress = Progress::new(days.len(), "days");
    for day in days {
        let read = rebuild_day(job, targets, day, &mut tables, &mut rebuilt, &progress).await?;
        info!(%day, events = read, "day rebuilt from raw");
        progress.advance(format!("{day}: {read} events"));
    }
    progress.finish();
    Ok(rebuilt)
}

/// Stages each target's rows for `day`; returns the events read.
async fn rebuild_day(
    job: &Job,
    targets: &[Target],
    day: NaiveDate,
    tables: &mut Tiered<'_>,
    rebuilt: &mut Rebuilt,
    progress: &Progress,
) -> Result<usize, ReprocessError> {
    let decoder = Decoder::new(
        job.contract.clone(),
        job.source.max_message_bytes,
        (&job.source.format).into(),
    );
    let slack = targets.iter().map(|t| t.slack).max().unwrap_or_default();
    let start = day_start_us(day);
    let window = (start, start + DAY_US + slack.as_micros() as i64);
    let mut dedup = seeded_dedup(job, tables, start).await?;
    let mut partials = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            rebuilt
                .stage
                .create(&partials_folder(i), &day.to_string(), t.transform.schema())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut stream = tables
        .context(&[TableId::Raw])
        .await?
        .sql(&events_sql(job, window))
        .await?
        .execute_stream()
        .await?;
    let (mut read, mut bytes) = (0, 0);
    let registry = SchemaRegistry::for_format(&job.source.format)?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let schemas = writer_schemas(registry.as_ref(), &batch, &job.name).await?;
        let events = restore_events(
            &decoder,
            &job.source.topics,
            &batch,
            &schemas,
            &mut rebuilt.stats,
        )?;
        bytes += events.get_array_memory_size();
        let (accepted, duplicates) = dedup.apply(&events)?;
        // Events come oldest first, so the newest so far stands for the watermark.
        if let Some(newest) = newest_us(job, &events)? {
            dedup.evict(newest - job.watermark.allowed_lateness.as_micros() as i64);
        }
        rebuilt.stats.duplicates += duplicates;
        read += events.num_rows();
        for (target, out) in targets.iter().zip(&mut partials) {
            out.push(&target.transform.apply(&accepted).await?)?;
        }
        progress.note(format!("{day}: {read} events"));
    }
    rebuilt.stats.events += read;
    rebuilt.stats.largest_day_bytes = rebuilt.stats.largest_day_bytes.max(bytes);
    for partial in partials {
        partial.close()?;
    }
    for (i, target) in targets.iter().enumerate() {
        stage_day_rows(rebuilt, i, target, day).await?;
    }
    Ok(read)
}

/// The newest event time in `events`.
fn newest_us(job: &Job, events: &RecordBatch) -> Result<Option<i64>, ArrowError> {
    let name = job.contract.event_time_name();
    let times = events
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("no event time column {name}")))?;
    Ok(arrow::compute::max(
        times.as_primitive::<TimestampMicrosecondType>(),
    ))
}

/// The events of `raw` with event time in `[start, end)`, oldest first; the
/// date bounds prune partitions.
fn events_sql(job: &Job, (start, end): (i64, i64)) -> String {
    let ts = format!("\"{}\"", job.contract.event_time_name());
    format!(
        "SELECT * FROM raw WHERE \"{EVENT_DATE}\" >= '{}' AND \"{EVENT_DATE}\" <= '{}' \
         AND {ts} >= {} AND {ts} < {} ORDER BY {ts}, \"{PARTITION}\", \"{OFFSET}\"",
        date_of(start),
        date_of(end - 1),
        literal(start),
        literal(end)
    )
}

fn date_of(us: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .date_naive()
}

/// A dedup index holding the IDs `raw` accepted within the horizon before
/// `start`, as the live loop's would have.
async fn seeded_dedup(
    job: &Job,
    tables: &mut Tiered<'_>,
    start: i64,
) -> Result<Dedup, ReprocessError> {
    let seed = Seed {
        tables: &[TableId::Raw],
        since_us: Some(start - job.dedup_horizon.as_micros() as i64),
        until_us: Some(start),
        partitions: None,
    };
    Ok(Dedup::restored(job, tables, seed).await?)
}

/// The writer schemas that `rows`' payloads name. Reprocessing does not
/// wait out a registry that is down: it fails, naming it, and can be run again.
async fn writer_schemas(
    registry: Option<&SchemaRegistry>,
    rows: &RecordBatch,
    job: &str,
) -> Result<WriterSchemas, ReprocessError> {
    let (Some(registry), Some(payloads)) = (registry, rows.column_by_name(PAYLOAD)) else {
        return Ok(WriterSchemas::default());
    };
    let payloads = cast(payloads, &DataType::Binary)?;
    let payloads = payloads.as_binary::<i32>().iter().flatten();
    let metrics = JobMetrics::detached(job);
    Ok(registry.resolve(payloads, &metrics, &|| true).await?)
}

/// The Kafka keys and headers `raw` kept (`source.columns`), to put back
/// into the messages decoded again: the rebuilt rows keep them. Avro keys
/// are kept decoded, not as bytes: they are put back into the rebuilt rows
/// instead ([`with_stored_keys`]).
struct StoredRecordParts {
    keys: Option<ArrayRef>,
    headers: Option<ListArray>,
}

impl StoredRecordParts {
    fn of(rows: &RecordBatch, avro_keys: bool) -> Result<Self, ArrowError> {
        let keys = rows
            .column_by_name(KEY)
            .filter(|_| !avro_keys)
            .map(|k| cast(k, &DataType::Binary))
            .transpose()?;
        let headers = rows
            .column_by_name(HEADERS)
            .map(|h| h.as_list::<i32>().clone());
        Ok(Self { keys, headers })
    }

    fn key(&self, row: usize) -> Option<Vec<u8>> {
        let keys = self.keys.as_ref()?.as_binary::<i32>();
        keys.is_valid(row).then(|| keys.value(row).to_vec())
    }

    fn headers(&self, row: usize) -> Option<Headers> {
        let lists = self.headers.as_ref()?;
        if lists.is_null(row) {
            return None;
        }
        let entries = lists.value(row);
        let entries = entries.as_struct();
        let names = cast(entries.column(0), &DataType::Utf8).ok()?;
        let values = cast(entries.column(1), &DataType::Binary).ok()?;
        let (names, values) = (names.as_string::<i32>(), values.as_binary::<i32>());
        let value = |i: usize| values.is_valid(i).then(|| values.value(i).to_vec());
        Some(
            (0..names.len())
                .map(|i| (names.value(i).to_owned(), value(i)))
                .collect(),
        )
    }
}

/// `raw` rows as the live loop's decode stage would produce them under the
/// current contract: from the payload where there is one, else (rows stored
/// before payloads were kept, or by a job that keeps none) from the stored
/// columns.
fn restore_events(
    decoder: &Decoder,
    topics: &Topics,
    rows: &RecordBatch,
    schemas: &WriterSchemas,
    stats: &mut Rebuild,
) -> Result<RecordBatch, ReprocessError> {
    // Read back in whatever layout the engine chose (views, for one).
    let column = |name: &str, ty: &DataType| match rows.column_by_name(name) {
        Some(c) => cast(c, ty),
        None => Err(ArrowError::SchemaError(format!("raw has no column {name}"))),
    };
    let payloads = rows
        .column_by_name(PAYLOAD)
        .map(|_| column(PAYLOAD, &DataType::Binary))
        .transpose()?;
    let has_payload: BooleanArray = match &payloads {
        Some(p) => (0..rows.num_rows()).map(|i| Some(p.is_valid(i))).collect(),
        None => vec![Some(false); rows.num_rows()].into(),
    };
    let mut parts = Vec::with_capacity(2);
    if has_payload.true_count() > 0 {
        let payloads = payloads
            .as_ref()
            .expect("some rows have one")
            .as_binary::<i32>();
        let positions = positions(rows, topics)?;
        let kafka_ts = column(KAFKA_TS, &utc_micros())?;
        let kafka_ts = kafka_ts.as_primitive::<TimestampMicrosecondType>();
        let avro_keys = matches!(decoder.contract().kafka.key, Some(KeyFormat::Avro(_)));
        let stored = StoredRecordParts::of(rows, avro_keys)?;
        let messages = (0..rows.num_rows())
            .filter(|&i| has_payload.value(i))
            .map(|i| Message {
                partition: positions[i].0,
                offset: positions[i].1,
                kafka_ts: kafka_ts.is_valid(i).then(|| kafka_ts.value(i) / 1000),
                payload: Some(bytes::Bytes::copy_from_slice(payloads.value(i))),
                key: stored.key(i),
                headers: stored.headers(i),
                probe: false,
            })
            .collect();
        let batch = MicroBatch {
            topics: topics.clone(),
            messages,
        };
        let decoded = decoder.decode_as_ingested(&batch, schemas, Utc::now())?;
        stats.note_refusals(&decoded.rejected);
        parts.push(match avro_keys {
            true => with_stored_keys(decoded.valid, rows, &positions, topics)?,
            false => decoded.valid,
        });
    }
    let without = arrow::compute::not(&has_payload)?;
    if without.true_count() > 0 {
        stats.without_payload += without.true_count();
        let stored = filter_record_batch(rows, &without)?;
        parts.push(conform(vec![stored], decoder.raw_schema())?);
    }
    Ok(concat_batches(decoder.raw_schema(), &parts)?)
}

/// `rebuilt` rows with the `_key` of the `stored` row at the same
/// position (`stored_at` holds the stored rows' positions).
fn with_stored_keys(
    rebuilt: RecordBatch,
    stored: &RecordBatch,
    stored_at: &[(SourcePartition, i64)],
    topics: &Topics,
) -> Result<RecordBatch, ArrowError> {
    let (Some(at), Some(keys)) = (
        rebuilt.schema().index_of(KEY).ok(),
        stored.column_by_name(KEY),
    ) else {
        return Ok(rebuilt);
    };
    let row_of: HashMap<_, _> = stored_at
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, i as u64))
        .collect();
    let rows: arrow::array::UInt64Array = positions(&rebuilt, topics)?
        .iter()
        .map(|p| row_of.get(p).copied())
        .collect();
    let mut columns = rebuilt.columns().to_vec();
    let taken = arrow::compute::take(keys, &rows, None)?;
    columns[at] = cast(&taken, rebuilt.schema().field(at).data_type())?;
    RecordBatch::try_new(rebuilt.schema(), columns)
}

/// Stages a target's rows for `day` from its staged partials: windows
/// starting that day, their partials folded to one row per (window, keys);
/// query rows of that date.
async fn stage_day_rows(
    rebuilt: &Rebuilt,
    index: usize,
    target: &Target,
    day: NaiveDate,
) -> Result<(), ReprocessError> {
    let Rebuilt { stage, ctx, .. } = rebuilt;
    let schema = target.transform.schema();
    let start = day_start_us(day);
    let in_day = format!(
        "\"{}\" >= {} AND \"{}\" < {}",
        target.age,
        literal(start),
        target.age,
        literal(start + DAY_US)
    );
    let parts = partials_folder(index);
    let table = format!("partials_{index}");
    ctx.register_table(&table, stage.read(ctx, &parts, schema).await?.into_view())?;
    let sql = match &target.transform {
        Transform::Window(w) => w.fold_sql(&table, &in_day),
        Transform::Sql(_) => format!("SELECT * FROM {table} WHERE {in_day}"),
    };
    let rows = conform_frame(ctx.sql(&sql).await?, schema)?;
    let written = stage
        .write(&rows_folder(index), &day.to_string(), rows, schema)
        .await;
    ctx.deregister_table(&table)?;
    written?;
    stage.remove(&parts).map_err(DataFusionError::from)?;
    Ok(())
}

/// What replacing one table's range in one tier did (or would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    pub table: String,
    pub tier: Tier,
    pub before: usize,
    pub after: usize,
}

/// How far a reprocess goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Report what would be replaced; change nothing.
    DryRun,
    /// Replace, unless a table would lose more than half of its rows in the
    /// range: a tightened contract or a bug can empty a range, and that
    /// should be a decision ([`ReprocessError::Shrinks`]).
    Replace,
    /// Replace whatever the rebuilt rows are.
    Force,
}

/// Whether replacing `before` rows with `after` loses more than half of them.
fn shrinks(before: usize, after: usize) -> bool {
    after * 2 < before
}

/// A reprocess run.
#[derive(Debug, Clone)]
pub struct Report {
    pub range: DateRange,
    pub dry_run: bool,
    pub rebuild: Rebuild,
    pub replaced: Vec<Replaced>,
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would replace"
        } else {
            "replaced"
        };
        writeln!(
            f,
            "{} {}: {}",
            if self.dry_run {
                "dry run of"
            } else {
                "reprocessed"
            },
            self.range,
            self.rebuild.read()
        )?;
        writeln!(
            f,
            "{:<16} {:<5} {:>14} {:>10}",
            "table", "tier", verb, "with"
        )?;
        for r in &self.replaced {
            writeln!(
                f,
                "{:<16} {:<5} {:>14} {:>10}",
                r.table,
                r.tier.name(),
                format!("{} rows", r.before),
                format!("{} rows", r.after)
            )?;
        }
        for (table, before, after) in self.totals() {
            if shrinks(before, after) {
                writeln!(
                    f,
                    "warning: {table} loses more than half of its rows in the range ({before} → \
                     {after}); a replace without --force is refused"
                )?;
            }
        }
        if self.rebuild.without_payload > 0 {
            writeln!(
                f,
                "{} events have no payload in raw (stored before raw kept payloads, or under \
                 schema.payload = \"none\"): taken from their columns",
                self.rebuild.without_payload
            )?;
        }
        if let Some(first) = &self.rebuild.first_refusal {
            writeln!(
                f,
                "warning: {} events in raw no longer match the contract and are left out of \
                 the outputs (first: {first})",
                self.rebuild.refused
            )?;
        }
        write!(f, "took {:.1} s", self.elapsed.as_secs_f64())
    }
}

impl Report {
    /// Per table, its rows in the range before and after, over all tiers.
    fn totals(&self) -> Vec<(&str, usize, usize)> {
        let mut totals: Vec<(&str, usize, usize)> = Vec::new();
        for r in &self.replaced {
            match totals.iter_mut().find(|(t, ..)| *t == r.table) {
                Some((_, before, after)) => {
                    *before += r.before;
                    *after += r.after;
                }
                None => totals.push((&r.table, r.before, r.after)),
            }
        }
        totals
    }

    /// Refuses a replace that loses more than half of a table's rows.
    fn check_shrinks(&self) -> Result<(), ReprocessError> {
        let Some((table, before, after)) =
            self.totals().into_iter().find(|(_, b, a)| shrinks(*b, *a))
        else {
            return Ok(());
        };
        let refusals = match &self.rebuild.first_refusal {
            Some(first) => format!(
                ": {} events in raw no longer match the contract (first: {first})",
                self.rebuild.refused
            ),
            None => String::new(),
        };
        Err(ReprocessError::Shrinks {
            range: self.range,
            table: table.to_owned(),
            before,
            after,
            refusals,
        })
    }
}

/// Rebuilds `targets` for `range` and replaces their rows as `mode` says.
/// Fault points for crash tests follow each plan and commit:
/// `reprocess.after_plan.<table>` (tier spans read, nothing written) and
/// `reprocess.after_commit.<table>.<tier>`.
pub async fn reprocess(
    job: &Job,
    range: DateRange,
    targets: &[Target],
    mode: Mode,
    memory_bytes: usize,
    faults: &Faults,
) -> Result<Report, ReprocessError> {
    let started = Instant::now();
    check_closed(job, range, targets).await?;
    let rebuilt = rebuild(job, range, targets, memory_bytes).await?;
    let replace_all = |dry_run| {
        let rebuilt = &rebuilt;
        async move {
            let mut replaced = Vec::new();
            for (index, target) in targets.iter().enumerate() {
                let commit = Commit {
                    job,
                    range,
                    target,
                    dry_run,
                    faults,
                };
                replaced.extend(replace(commit, rebuilt, index).await?);
            }
            Ok::<_, ReprocessError>(replaced)
        }
    };
    let mut report = Report {
        range,
        dry_run: mode == Mode::DryRun,
        rebuild: rebuilt.stats.clone(),
        replaced: Vec::new(),
        elapsed: Duration::ZERO,
    };
    if mode != Mode::Force {
        report.replaced = replace_all(true).await?;
    }
    if mode == Mode::Replace {
        report.check_shrinks()?;
    }
    if mode != Mode::DryRun {
        report.replaced = replace_all(false).await?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// What replacing one target's range needs.
struct Commit<'a> {
    job: &'a Job,
    range: DateRange,
    target: &'a Target,
    dry_run: bool,
    faults: &'a Faults,
}

/// Replaces the target's rows for the range in every tier, one commit per
/// tier. Each tier gets the new rows of its own age span (so routing by age
/// still sends each row to exactly one tier); a commit that loses to upkeep
/// plans all tiers again (each replace is idempotent).
async fn replace(
    commit: Commit<'_>,
    rebuilt: &Rebuilt,
    index: usize,
) -> Result<Vec<Replaced>, ReprocessError> {
    let name = commit.target.name();
    for attempt in 1..=ATTEMPTS {
        match replace_tiers(&commit, rebuilt, index).await {
            Ok(done) => return Ok(done),
            Err(ReprocessError::Delta { step, source, .. })
                if attempt < ATTEMPTS && step == "replacing the range" =>
            {
                warn!(table = name, attempt, error = %source, "replace lost to a concurrent commit; planning again");
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

async fn replace_tiers(
    commit: &Commit<'_>,
    rebuilt: &Rebuilt,
    index: usize,
) -> Result<Vec<Replaced>, ReprocessError> {
    let Commit {
        job,
        range,
        target,
        dry_run,
        faults,
    } = *commit;
    let name = target.name();
    let mut tables = Vec::new();
    for &t in tier::tiers_of(job, target.spec.id) {
        tables.push((t, open_or_create_in(job, t, &target.spec).await?));
    }
    let spans = spans(job, name, &tables).await?;
    if !dry_run {
        faults.check(&format!("reprocess.after_plan.{name}"))?;
    }
    let mut done = Vec::new();
    for ((tier, table), (lo, hi)) in tables.into_iter().zip(spans) {
        let (lo, hi) = (lo.max(range.start_us()), hi.min(range.end_us()));
        if lo >= hi {
            continue;
        }
        let predicate = format!(
            "{} AND \"{age}\" >= {} AND \"{age}\" < {}",
            range.partitions_sql(),
            literal(lo),
            literal(hi),
            age = target.age
        );
        let fail = |step: &'static str| {
            move |source| ReprocessError::Delta {
                step,
                table: name.to_owned(),
                tier: tier.name(),
                source: Box::new(source),
            }
        };
        let before = count(&table, &predicate).await?;
        let new = within(rebuilt.rows(index, target).await?, &target.age, lo, hi)?;
        let after = new.clone().count().await?;
        done.push(Replaced {
            table: name.to_owned(),
            tier,
            before,
            after,
        });
        if dry_run {
            continue;
        }
        let properties = commit_properties(job, range);
        if after == 0 {
            table
                .delete()
                .with_predicate(predicate)
                .with_commit_properties(properties)
                .await
                .map_err(fail("replacing the range"))?;
        } else {
            let stored = stored_schema(&table).map_err(fail("reading the schema"))?;
            rebuilt
                .write(table, new, &stored)?
                .with_save_mode(SaveMode::Overwrite)
                .with_replace_where(predicate)
                .with_partition_columns(target.spec.partition_columns.clone())
                .with_commit_properties(properties)
                .await
                .map_err(fail("replacing the range"))?;
        }
        info!(
            table = name,
            tier = tier.name(),
            before,
            after = done.last().map(|d| d.after),
            "range replaced"
        );
        faults.check(&format!("reprocess.after_commit.{name}.{}", tier.name()))?;
    }
    Ok(done)
}

/// Per tier (in `tables`' order), the age span `[lo, hi)` of the rows it holds,
/// from the cutoffs of the moves that completed: hot holds what has not moved
/// to warm, warm what has not moved on to cold. Refuses while a move is
/// unfinished (its copies would be replaced in one tier only).
async fn spans(
    job: &Job,
    name: &str,
    tables: &[(Tier, DeltaTable)],
) -> Result<Vec<(i64, i64)>, ReprocessError> {
    let mut cutoffs = Vec::new();
    for pair in tables.windows(2) {
        let [(from, source), (to, dest)] = pair else {
            unreachable!("windows of two")
        };
        let app_id = tier::move_app_id(job, *from, *to);
        let out = move_txn(source, *from, name, &app_id).await?;
        let moved_in = move_txn(dest, *to, name, &app_id).await?;
        if tier::pending(moved_in, out).is_some() {
            return Err(ReprocessError::MovePending {
                table: name.to_owned(),
                from: from.name(),
                to: to.name(),
            });
        }
        cutoffs.push(out.unwrap_or(i64::MIN));
    }
    // hot: [c0, ∞), warm: [c1, c0), cold: [−∞, c1).
    let mut spans = Vec::with_capacity(tables.len());
    let mut hi = i64::MAX;
    for i in 0..tables.len() {
        let lo = cutoffs.get(i).copied().unwrap_or(i64::MIN);
        spans.push((lo, hi));
        hi = lo;
    }
    Ok(spans)
}

async fn move_txn(
    table: &DeltaTable,
    tier: Tier,
    name: &str,
    app_id: &str,
) -> Result<Option<i64>, ReprocessError> {
    txn_version(table, app_id)
        .await
        .map_err(|source| ReprocessError::Delta {
            step: "reading the move txn",
            table: name.to_owned(),
            tier: tier.name(),
            source: Box::new(source),
        })
}

/// The rows of `rows` whose `column` (UTC µs) is in `[lo, hi)`.
fn within(rows: DataFrame, column: &str, lo: i64, hi: i64) -> Result<DataFrame, DataFusionError> {
    let time = |us| {
        lit(ScalarValue::TimestampMicrosecond(
            Some(us),
            Some("UTC".into()),
        ))
    };
    rows.filter(
        ident(column)
            .gt_eq(time(lo))
            .and(ident(column).lt(time(hi))),
    )
}

async fn count(table: &DeltaTable, predicate: &str) -> Result<usize, ReprocessError> {
    let ctx = SessionContext::new();
    register(&ctx, "t", table).await?;
    let batches = ctx
        .sql(&format!("SELECT count(*) FROM t WHERE {predicate}"))
        .await?
        .collect()
        .await?;
    Ok(batches.first().map_or(0, |b| {
        b.column(0).as_primitive::<Int64Type>().value(0) as usize
    }))
}

/// Every reprocess commit says what produced it: weir's version, the job
/// spec's hash and the range.
fn commit_properties(job: &Job, range: DateRange) -> CommitProperties {
    CommitProperties::default().with_metadata([
        ("weir.operation".to_owned(), json!("reprocess")),
        ("weir.version".to_owned(), json!(env!("CARGO_PKG_VERSION"))),
        ("weir.job".to_owned(), json!(job.name)),
        ("weir.jobSpecHash".to_owned(), json!(job.spec_hash)),
        ("weir.range".to_owned(), json!(range.to_string())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn a_range_is_whole_utc_days() {
        let r = DateRange::new(date("2026-11-19"), date("2026-11-20")).unwrap();
        assert_eq!(r.days().count(), 2);
        assert_eq!(r.end_us() - r.start_us(), 2 * DAY_US);
        assert_eq!(rfc3339_micros(r.start_us()), "2026-11-19T00:00:00.000000Z");
        assert!(DateRange::new(date("2026-11-20"), date("2026-11-19")).is_err());
    }

    #[test]
    fn a_bound_too_tight_to_sort_says_which_option_raises_it() {
        let tight = DataFusionError::Context(
            "sorting".into(),
            Box::new(DataFusionError::ResourcesExhausted("10 MB".into())),
        );
        let shown = ReprocessError::from(tight).to_string();
        assert!(shown.ends_with("(raise --memory-mib)"), "{shown}");
        let other = ReprocessError::from(DataFusionError::Plan("no".into())).to_string();
        assert!(!other.contains("--memory-mib"), "{other}");
    }
}
