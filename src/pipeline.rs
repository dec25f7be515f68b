//! The trigger loop: source → decode → dedup → transform → sink, one micro-batch
//! at a time.
//!
//! One task owns the whole loop, so the consumer's rebalance callback (which
//! runs inside `poll`) can consult the sink without racing a commit. The poll
//! blocks inside `block_in_place`; the callback uses the runtime handle to read
//! the Delta tables. A stop request is honoured between batches: the open batch
//! is committed first, so a stop never leaves a half-committed trigger.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use chrono::Utc;
use datafusion::error::DataFusionError;
use tokio::runtime::Handle;
use tracing::{debug, info};

use crate::decode::{Decoder, EVENT_DATE, OFFSET, PARTITION};
use crate::dedup::Dedup;
use crate::fault::Faults;
use crate::job::Job;
use crate::replay::filter_replayed;
use crate::sink::{SharedSink, Sink, SinkError, TableSpec};
use crate::source::kafka::{KafkaSource, ResumePositions, SourceError};
use crate::transform::Transform;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("an Arrow operation on a micro-batch failed: {0}")]
    Arrow(#[from] ArrowError),
    #[error("computing an output failed: {0}")]
    Transform(#[from] DataFusionError),
    /// Kept as the source (not transparent) so the CLI finds it and exits 2.
    #[error("the job cannot run as specified")]
    Job(#[from] crate::job::JobError),
}

/// Counters of a running pipeline, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub consumed: AtomicU64,
    pub raw_rows: AtomicU64,
    pub dlq_rows: AtomicU64,
    /// Re-sent events dropped by dedup.
    pub duplicates: AtomicU64,
    /// Rows re-read after a restart that the tables already held.
    pub replayed: AtomicU64,
    pub commit_latencies: Mutex<Vec<Duration>>,
    /// Per partition, the next offset every table holds.
    pub positions: Mutex<BTreeMap<i32, i64>>,
}

impl Stats {
    /// Whether every partition in `targets` has been committed up to its offset.
    pub fn reached(&self, targets: &BTreeMap<i32, i64>) -> bool {
        let positions = self.positions.lock().unwrap();
        targets
            .iter()
            .all(|(p, end)| positions.get(p).is_some_and(|pos| pos >= end))
    }
}

/// The tables a job writes, in commit order: `raw` first (it is what dedup and
/// reprocessing derive from), then `dlq`, then one table per output.
pub fn table_specs(decoder: &Decoder, outputs: &[Transform]) -> Vec<TableSpec> {
    let mut specs = vec![
        TableSpec {
            name: "raw".into(),
            schema: decoder.raw_schema().clone(),
            partition_columns: vec![EVENT_DATE.into()],
        },
        TableSpec {
            name: "dlq".into(),
            schema: decoder.dlq_schema().clone(),
            partition_columns: vec![],
        },
    ];
    specs.extend(outputs.iter().map(|o| TableSpec {
        name: o.name().to_owned(),
        schema: o.schema().clone(),
        partition_columns: vec![],
    }));
    specs
}

/// Each table's input without the rows that table already holds, and how many
/// rows of `raw` and `dlq` were dropped as replays.
fn fresh_inputs(
    versions: &[&BTreeMap<i32, i64>],
    inputs: Vec<&RecordBatch>,
) -> Result<(Vec<RecordBatch>, usize), ArrowError> {
    let mut replayed = 0;
    let mut fresh = Vec::with_capacity(inputs.len());
    for (i, (rows, versions)) in inputs.into_iter().zip(versions).enumerate() {
        let kept = filter_replayed(rows, versions)?;
        if i < 2 {
            replayed += rows.num_rows() - kept.num_rows();
        }
        fresh.push(kept);
    }
    Ok((fresh, replayed))
}

/// Rebuilds the dedup index from `raw`: the IDs accepted within the horizon of
/// its newest event. State is derived from the data, never kept beside it.
async fn rebuild_dedup(job: &Job, sink: &Sink) -> Result<Dedup, PipelineError> {
    let mut dedup = Dedup::new(&job.contract, job.dedup_horizon);
    let id = format!("\"{}\"", job.contract.event_id_name());
    let ts = format!("\"{}\"", job.contract.event_time_name());
    let sql = format!(
        "SELECT {id}, {ts}, {PARTITION}, {OFFSET} FROM raw \
         WHERE {ts} >= (SELECT max({ts}) FROM raw) - INTERVAL '{} seconds'",
        job.dedup_horizon.as_secs()
    );
    for batch in sink.query("raw", &sql).await? {
        dedup.seed(&batch)?;
    }
    info!(ids = dedup.index().len(), "dedup index rebuilt from raw");
    Ok(dedup)
}

/// A job's running trigger loop.
pub struct Pipeline {
    decoder: Decoder,
    dedup: Mutex<Dedup>,
    outputs: Vec<Transform>,
    source: KafkaSource,
    sink: SharedSink,
    stats: Arc<Stats>,
}

/// Lets the rebalance callback ask the sink for resume positions.
struct SinkPositions {
    sink: SharedSink,
    runtime: Handle,
}

impl ResumePositions for SinkPositions {
    fn resume_positions(&self, partitions: &[i32]) -> Result<BTreeMap<i32, i64>, String> {
        self.runtime
            .block_on(async { self.sink.lock().await.resume_positions(partitions).await })
            .map_err(|e| e.to_string())
    }
}

impl Pipeline {
    /// Opens the tables and connects the consumer. Must run on a multi-threaded
    /// tokio runtime (the poll blocks in `block_in_place`).
    pub async fn start(job: &Job, bootstrap: &str, faults: Faults) -> Result<Self, PipelineError> {
        let decoder = Decoder::new(job.contract.clone(), job.source.max_message_bytes);
        let outputs = Transform::all(job).await?;
        let sink = Sink::open(job, table_specs(&decoder, &outputs), faults).await?;
        for (name, url) in sink.table_urls() {
            info!(table = name, %url, "table ready");
        }
        let dedup = rebuild_dedup(job, &sink).await?;
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let resolver = Arc::new(SinkPositions {
            sink: sink.clone(),
            runtime: Handle::current(),
        });
        let source = KafkaSource::connect(job, bootstrap, resolver)?;
        Ok(Self {
            decoder,
            dedup: Mutex::new(dedup),
            outputs,
            source,
            sink,
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub fn sink(&self) -> SharedSink {
        self.sink.clone()
    }

    /// Runs triggers until `stop` is set (the open batch is committed first) or
    /// an error occurs.
    pub async fn run(&self, stop: &AtomicBool) -> Result<(), PipelineError> {
        while let Some(batch) = tokio::task::block_in_place(|| self.source.next_batch(stop))? {
            let first = batch.first_offsets();
            let next = batch.next_offsets();
            let decoded = self.decoder.decode(&batch, Utc::now())?;
            let (valid, duplicates) = self.dedup.lock().unwrap().apply(&decoded.valid)?;
            let mut sink = self.sink.lock().await;
            let mut inputs = vec![&valid, &decoded.rejected];
            inputs.extend(self.outputs.iter().map(|_| &valid));
            let (mut rows, replayed) = fresh_inputs(&sink.versions(), inputs)?;
            for (output, rows) in self.outputs.iter().zip(&mut rows[2..]) {
                *rows = output.apply(rows).await?;
            }
            let report = sink.commit(rows, &first, &next).await?;
            drop(sink);
            self.source.commit_offsets(&next);
            debug!(
                events = batch.len(),
                raw = report.written[0],
                dlq = report.written[1],
                duplicates,
                ms = report.elapsed.as_millis() as u64,
                "trigger"
            );

            let s = &self.stats;
            s.batches.fetch_add(1, Ordering::Relaxed);
            s.consumed.fetch_add(batch.len() as u64, Ordering::Relaxed);
            s.raw_rows
                .fetch_add(report.written[0] as u64, Ordering::Relaxed);
            s.dlq_rows
                .fetch_add(report.written[1] as u64, Ordering::Relaxed);
            s.duplicates.fetch_add(duplicates as u64, Ordering::Relaxed);
            s.replayed.fetch_add(replayed as u64, Ordering::Relaxed);
            s.commit_latencies.lock().unwrap().push(report.elapsed);
            s.positions.lock().unwrap().extend(next);
        }
        Ok(())
    }
}
