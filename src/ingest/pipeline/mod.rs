//! The pipeline: source → decode → dedup → watermark → transform → sink.
//!
//! Polling runs on the source's own thread, which queues micro-batches (and
//! pauses the partitions when the queue is full). Two stages take them from
//! there, with a bounded queue between them: `prepare` decodes and
//! deduplicates each batch ahead of `trigger`, which judges it by the
//! watermark, queries the outputs and commits every table's files; `report`
//! counts what a trigger committed, and `restore` rebuilds the watermark and
//! dedup from the tables when the pipeline starts. The consumer's rebalance
//! callback (which runs inside `poll`) reads the Delta tables through the
//! shared sink's lock, so it never races a commit. A stop request is
//! honoured between batches: the batches already cut are committed first, so
//! a stop never leaves a half-committed trigger.
//!
//! # Triggers that overlap
//!
//! While batches arrive faster than triggers commit (a backlog, a burst),
//! each trigger is judged and its files started before the trigger ahead of
//! it makes its log commits, so that on many cores the files of two triggers
//! are encoded at once while the commits stay in order, per table and across
//! tables:
//!
//! ```text
//!  lock ──────────────────────────────────────────────────────────────────►
//!  N      judge, start files ··· files encoding ··· ─► commits of N
//!  N+1                           judge, start files ··· files encoding ··· ─► commits of N+1
//! ```
//!
//! What judging reads from the tables (the replay filters, the fates raw
//! settled) is the same before and after the commit ahead, except for rows
//! that re-read offsets that commit holds: a batch with such rows waits for
//! it ([`may_stage_ahead`](crate::ingest::replay::may_stage_ahead)). The
//! watermark and dedup are the loop's own and have already moved past the
//! trigger ahead; the vouches for tables without rows are worked out as each
//! trigger commits. A staged trigger never
//! outlives the lock it was judged under (a revocation waits for it), and a
//! failed commit ends the pipeline with the staged files uncommitted, as a
//! crash would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::error::ArrowError;
use chrono::Utc;
use datafusion::error::DataFusionError;
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::config::{Job, Offsets, SourcePartition};
use crate::fault::Faults;
use crate::ingest::adaptive::{BatchCap, Controller};
use crate::ingest::decode::{Decoded, Decoder};
use crate::ingest::dedup::Dedup;
use crate::ingest::expect::{Breaches, ExpectError, Expectations};
use crate::ingest::lookup::{LookupError, Lookups};
use crate::ingest::monitor::Monitors;
use crate::ingest::sink::{SharedSink, Sink, SinkError};
use crate::ingest::source::MicroBatch;
use crate::ingest::source::kafka::{Batches, KafkaSource, Polled, Rebalance, SourceError};
use crate::ingest::source::registry::{RegistryError, SchemaRegistry};
use crate::ingest::stats::Stats;
use crate::ingest::transform::Transform;
use crate::ingest::watermark::Watermark;
use crate::metrics::JobMetrics;
use crate::table::tier::create_colder_tiers;
use crate::table::{Catalog, RestoreError, TableError};
use crate::task::AbortOnDrop;

mod prepare;
mod report;
mod restore;
mod trigger;

pub use restore::broker_high_watermarks;
use restore::restore;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Expectation(#[from] ExpectError),
    #[error("restoring the job's state from its tables: {0}")]
    Restore(#[from] RestoreError),
    #[error("an Arrow operation on a micro-batch failed: {0}")]
    Arrow(#[from] ArrowError),
    #[error("computing an output failed: {0}")]
    Transform(#[from] DataFusionError),
    /// Kept as the source (not transparent) so the CLI finds it and exits 2.
    #[error("the job cannot run as specified")]
    Job(#[from] crate::config::JobError),
    /// A bug, not a condition: the supervisor restarts the job like after any
    /// other failure (nothing committed is lost; the restart re-reads).
    #[error("the job panicked: {0}")]
    Panicked(String),
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

/// Decoded micro-batches that may wait for the commit stage.
const DECODED_BATCHES: usize = 2;

/// A micro-batch as the first stage leaves it: decoded, its valid events
/// without duplicates.
struct Prepared {
    /// The micro-batch, with the assignment it was polled under.
    polled: Polled,
    /// `valid` holds the accepted events only.
    decoded: Decoded,
    /// The breaches of `warn` and `drop` expectations.
    breaches: Breaches,
    duplicates: usize,
    /// When it was decoded: the ingest time of its DLQ and late rows.
    now: chrono::DateTime<Utc>,
}

/// Per message with a Kafka timestamp, how long before `at_us` it was
/// produced: at the commit, its end-to-end latency.
fn produced_ago(batch: &MicroBatch, at_us: i64) -> Vec<Duration> {
    batch
        .messages
        .iter()
        .filter_map(|m| m.kafka_ts)
        .map(|ms| {
            let produced_us = ms.saturating_mul(1000);
            Duration::from_micros(at_us.saturating_sub(produced_us).max(0) as u64)
        })
        .collect()
}

/// A job's running trigger loop.
pub struct Pipeline {
    job: Job,
    decoder: Decoder,
    expectations: Expectations,
    monitors: Mutex<Monitors>,
    /// Where Avro messages' writer schemas come from (none for JSON).
    registry: Option<SchemaRegistry>,
    dedup: Mutex<Dedup>,
    watermark: Mutex<Watermark>,
    outputs: Mutex<Derivation>,
    source: KafkaSource,
    batches: tokio::sync::Mutex<Batches>,
    sink: Arc<SharedSink>,
    stats: Arc<Stats>,
    metrics: JobMetrics,
    stop: Arc<AtomicBool>,
    /// With adaptive batching, what sets the poller's batch cap.
    adaptive: Option<Mutex<Controller>>,
    /// Per partition, the assignment whose accepted IDs dedup holds: a
    /// partition assigned anew (after a rebalance) is seeded again from the
    /// tables, since its previous owner accepted IDs this process never saw.
    seeded: tokio::sync::Mutex<BTreeMap<SourcePartition, u64>>,
}

/// The outputs as planned over one snapshot of the job's lookups: replaced
/// whole when a lookup refreshes, and taken whole by each trigger, so every
/// output of a trigger reads the same versions.
#[derive(Clone)]
struct Derivation {
    transforms: Arc<[Transform]>,
    lookups: Lookups,
}

/// The rebalance callback's view of the tables, through the shared sink.
struct SinkPositions {
    sink: Arc<SharedSink>,
    runtime: Handle,
}

impl Rebalance for SinkPositions {
    fn resume_positions(&self, partitions: &[SourcePartition]) -> Result<Offsets, String> {
        self.runtime
            .block_on(async { self.sink.lock().await.resume_positions(partitions).await })
            .map_err(|e| e.to_string())
    }

    fn between_commits(&self, revoke: &mut dyn FnMut()) {
        if let Ok(_no_commit) = self.sink.try_lock() {
            return revoke();
        }
        if Handle::try_current().is_ok() {
            // The consumer closing on a runtime thread, as the pipeline is
            // dropped: no trigger of it can run any more, and waiting here
            // could block the very thread that holds the lock.
            return revoke();
        }
        let _no_commit = self.runtime.block_on(self.sink.lock());
        revoke();
    }
}

impl Pipeline {
    /// Opens the tables and connects the consumer, reporting to `metrics`.
    pub async fn start(
        job: &Job,
        bootstrap: &str,
        faults: Faults,
        metrics: JobMetrics,
    ) -> Result<Self, PipelineError> {
        let decoder = Decoder::new(
            job.contract.clone(),
            job.source.max_message_bytes,
            (&job.source.format).into(),
        );
        let registry = SchemaRegistry::for_format(&job.source.format)?;
        let expectations = Expectations::new(job)?;
        let lookups = Lookups::load(job).await?;
        let outputs = Transform::all(job, &lookups).await?;
        let catalog = Catalog::new(job, &outputs);
        create_colder_tiers(job, &catalog).await?;
        let mut sink = Sink::open(job, catalog.specs(), faults, metrics.clone()).await?;
        for (name, url) in sink.table_urls() {
            info!(table = name, %url, "table ready");
        }
        let (watermark, dedup) = restore(job, bootstrap, &mut sink).await?;
        let sink = Arc::new(SharedSink::new(sink));
        let resolver = Arc::new(SinkPositions {
            sink: sink.clone(),
            runtime: Handle::current(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let adaptive = job
            .batching
            .adaptive
            .map(|a| Controller::new(a.target_p99, &job.batching));
        let cap = adaptive
            .as_ref()
            .map_or_else(|| BatchCap::new(job.batching.max_events), Controller::cap);
        metrics.batch_cap.set(cap.get() as i64);
        let (source, batches) =
            KafkaSource::connect(job, bootstrap, resolver, metrics.clone(), stop.clone(), cap)?;
        Ok(Self {
            job: job.clone(),
            decoder,
            expectations,
            monitors: Mutex::new(Monitors::new(&job.monitors, Utc::now())),
            registry,
            dedup: Mutex::new(dedup),
            watermark: Mutex::new(watermark),
            outputs: Mutex::new(Derivation {
                transforms: outputs.into(),
                lookups,
            }),
            source,
            batches: tokio::sync::Mutex::new(batches),
            sink,
            stats: Arc::default(),
            metrics,
            stop,
            adaptive: adaptive.map(Mutex::new),
            seeded: tokio::sync::Mutex::default(),
        })
    }

    /// Asks the loop to stop after the batch in flight (and any batch already
    /// cut) is committed.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub fn sink(&self) -> Arc<SharedSink> {
        self.sink.clone()
    }

    /// Whether the consumer group has assigned this process any partition.
    pub fn has_partitions(&self) -> bool {
        !self.source.generations().is_empty()
    }

    /// Whether the tables hold, for every partition assigned to this
    /// process (at least one), each message below its offset in `targets`
    /// (a partition without one has nothing to wait for): a bounded run's
    /// end (`weir run --until caught-up`).
    pub async fn caught_up(&self, targets: &Offsets) -> bool {
        let assigned: Vec<SourcePartition> = self.source.generations().into_keys().collect();
        if assigned.is_empty() {
            return false;
        }
        let held = self.sink.lock().await.positions(&assigned);
        assigned.iter().all(|p| {
            let target = targets.get(p).copied().unwrap_or(0);
            target == 0 || held.get(p).is_some_and(|&h| h >= target)
        })
    }

    /// Runs triggers until [`Pipeline::stop`] (the batches already cut are
    /// committed first) or an error.
    ///
    /// Two stages with a bounded queue between them: decoding, the
    /// expectations and dedup (on a blocking thread) run ahead of the stage that
    /// judges, transforms and commits, so the next batch is prepared while
    /// this one commits. Dedup belongs to the first stage because it needs
    /// nothing a commit leaves (a failed commit ends the pipeline, and the
    /// next one rebuilds the index from `raw`); judging and transforming
    /// stay with the commits:
    /// the watermark's settled fates and the replay filter read the versions
    /// the previous commit left (or, when they cannot matter, run before it:
    /// the module doc). Within a trigger, the outputs' queries and every
    /// table's file writes run as tasks of their own; only the log commits
    /// are in order.
    pub async fn run(self: &Arc<Self>) -> Result<(), PipelineError> {
        let _refresh = (!self.job.lookups.is_empty())
            .then(|| AbortOnDrop::spawn(Arc::clone(self).refresh_lookups()));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Prepared>(DECODED_BATCHES);
        // A task of its own: in the trigger's task, the next batch would be
        // handed over only when the trigger yields.
        let mut preparing = AbortOnDrop::spawn(Arc::clone(self).prepare_into(tx));
        let committed = async {
            let mut idle = Instant::now();
            while let Some(prepared) = rx.recv().await {
                let waited = idle.elapsed();
                self.triggers(prepared, waited, &mut rx).await?;
                idle = Instant::now();
            }
            Ok(())
        }
        .await;
        if committed.is_err() {
            preparing.abort();
        }
        let prepared = match preparing.join().await {
            Ok(result) => result,
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        self.sink.lock().await.settle().await;
        committed.and(prepared)
    }

    /// Reads the lookups again at the shortest of their `refresh`
    /// intervals; a new version replans the outputs and takes effect from
    /// the next trigger. A lookup that fails keeps its last good version.
    async fn refresh_lookups(self: Arc<Self>) {
        let every = self.job.lookups.iter().map(|l| l.refresh).min();
        let every = every.expect("only jobs with lookups refresh them");
        for lookup in self.outputs.lock().unwrap().lookups.tables() {
            self.metrics.lookup_loaded(&lookup.name, lookup.rows());
        }
        loop {
            tokio::time::sleep(every).await;
            let current = self.outputs.lock().unwrap().lookups.clone();
            let (fresh, failed) = current.refreshed(&self.job).await;
            for e in failed {
                self.metrics.lookup_failed(&e.name);
                warn!(job = %self.job.name, error = %e, "lookup not refreshed; keeping its last good version");
            }
            let Some(fresh) = fresh else { continue };
            match Transform::all(&self.job, &fresh).await {
                Ok(transforms) => {
                    for lookup in fresh.tables() {
                        self.metrics.lookup_loaded(&lookup.name, lookup.rows());
                    }
                    info!(job = %self.job.name, versions = ?fresh.versions(), "lookups refreshed");
                    *self.outputs.lock().unwrap() = Derivation {
                        transforms: transforms.into(),
                        lookups: fresh,
                    };
                }
                Err(e) => {
                    warn!(job = %self.job.name, error = %e, "outputs do not plan over the refreshed lookups; keeping the last good versions")
                }
            }
        }
    }
}
