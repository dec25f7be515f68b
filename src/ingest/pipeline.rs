//! The trigger loop: source → decode → dedup → transform → sink, one micro-batch
//! at a time.
//!
//! Polling runs on the source's own thread, which queues micro-batches (and
//! pauses the partitions when the queue is full); one task owns the rest of
//! the loop. The consumer's rebalance callback (which runs inside `poll`)
//! reads the Delta tables through the shared sink's lock, so it never races a
//! commit. A stop request is honoured between batches: the open batch is
//! committed first, so a stop never leaves a half-committed trigger.
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
//! it ([`may_stage_ahead`]). The watermark and dedup are the loop's own and
//! have already moved past the trigger ahead; the vouches for tables without
//! rows are worked out as each trigger commits. A staged trigger never
//! outlives the lock it was judged under (a revocation waits for it), and a
//! failed commit ends the pipeline with the staged files uncommitted, as a
//! crash would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::TimestampMicrosecondType;
use arrow::error::ArrowError;
use chrono::Utc;
use datafusion::error::DataFusionError;
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use crate::config::{Job, KeyFormat, Offsets, SourcePartition};
use crate::fault::Faults;
use crate::ingest::adaptive::{BatchCap, Controller, Observation};
use crate::ingest::decode::framed::WriterSchemas;
use crate::ingest::decode::{Decoded, Decoder};
use crate::ingest::dedup::{Dedup, Seed, seeds};
use crate::ingest::expect::{Breaches, ExpectError, Expectations};
use crate::ingest::lookup::{LookupError, Lookups};
use crate::ingest::monitor::{MONITOR, Monitors};
use crate::ingest::quality::{QualityRow, quality_batch};
use crate::ingest::replay::{filter_replayed, may_replay, may_stage_ahead, without_partitions};
use crate::ingest::sink::{CommitReport, SharedSink, Sink, SinkError, Staged};
use crate::ingest::source::MicroBatch;
use crate::ingest::source::kafka::{
    Batches, KafkaSource, Polled, Rebalance, SourceError, high_watermarks,
};
use crate::ingest::source::registry::{RegistryError, SchemaRegistry};
use crate::ingest::stats::{Stats, TriggerSample};
use crate::ingest::transform::Transform;
use crate::ingest::watermark::{Settled, Watermark};
use crate::metrics::JobMetrics;
use crate::table::tier::create_colder_tiers;
use crate::table::{Catalog, RestoreError, TableError, TableId};
use crate::task::AbortOnDrop;
use crate::telemetry::{ms, quantile};

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

/// `rows` without those table `id` already holds; `lowest` bounds each
/// partition's offsets in `rows` from below (see [`may_replay`]).
fn fresh(
    sink: &Sink,
    id: TableId,
    rows: &RecordBatch,
    lowest: &Offsets,
) -> Result<RecordBatch, ArrowError> {
    let held = sink.held(id);
    if !may_replay(&held, lowest) {
        return Ok(rows.clone());
    }
    filter_replayed(rows, &held, sink.topics())
}

/// Restores the watermark and the dedup index from the tables: each
/// partition's clock from its newest event in `raw`, then the IDs accepted
/// (into `raw` or `late`) within the horizon of that watermark. State is
/// derived from the data, never kept beside it.
async fn restore(
    job: &Job,
    bootstrap: &str,
    sink: &mut Sink,
) -> Result<(Watermark, Dedup), PipelineError> {
    let (mut watermark, mut idle) = Watermark::restored(job, sink, &[]).await?;
    if !idle.is_empty() {
        let unread = unread(job, bootstrap, sink, &idle).await?;
        if !unread.is_empty() {
            info!(
                partitions = ?job.source.topics.labels(&unread),
                "partitions whose stored messages are old but which have messages left to read hold the restored watermark"
            );
            (watermark, idle) = Watermark::restored(job, sink, &unread).await?;
        }
    }
    if !idle.is_empty() {
        info!(
            partitions = ?job.source.topics.labels(&idle),
            "partitions idle when the job stopped do not hold the restored watermark"
        );
    }
    let seed = accepted_within_horizon(job, watermark.current_us(), None);
    let mut dedup = Dedup::restored(job, sink, seed)
        .await
        .map_err(PipelineError::from)?;
    if let Some(w) = watermark.current_us() {
        dedup.evict(w);
    }
    info!(
        ids = dedup.index().len(),
        watermark = watermark.current_us(),
        "dedup index and watermark restored from the tables"
    );
    Ok((watermark, dedup))
}

/// Of `partitions`, those with messages after the position the tables
/// resume them from: behind, not idle. When the broker cannot say, all of
/// them (holding the watermark back only delays it; leaving a partition out
/// would send its backlog to `late`).
async fn unread(
    job: &Job,
    bootstrap: &str,
    sink: &mut Sink,
    partitions: &[SourcePartition],
) -> Result<Vec<SourcePartition>, PipelineError> {
    let resume = sink.resume_positions(partitions).await?;
    let high = match broker_high_watermarks(job, bootstrap, Some(partitions.to_vec())).await {
        Ok(high) => high,
        Err(error) => {
            warn!(%error, "cannot ask the broker which partitions have messages left; none is taken as idle");
            return Ok(partitions.to_vec());
        }
    };
    Ok(partitions
        .iter()
        .copied()
        .filter(|p| high.get(p).copied().unwrap_or(0) > resume.get(p).copied().unwrap_or(0))
        .collect())
}

/// The broker's high watermark of each partition of the job's topics (of
/// `partitions` when given), asked off the runtime's threads.
pub async fn broker_high_watermarks(
    job: &Job,
    bootstrap: &str,
    partitions: Option<Vec<SourcePartition>>,
) -> Result<Offsets, PipelineError> {
    let properties = job.kafka_properties()?;
    let (topics, bootstrap) = (job.source.topics.clone(), bootstrap.to_owned());
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        high_watermarks(
            &bootstrap,
            &properties,
            &topics,
            partitions.as_deref(),
            timeout,
        )
        .map_err(|(topic, error)| SourceError::Watermarks { topic, error }.into())
    })
    .await
    .expect("asking the broker does not panic")
}

/// The IDs accepted (into `raw` or `late`) within the dedup horizon of
/// `watermark_us`, for `partitions` (all when `None`).
fn accepted_within_horizon<'a>(
    job: &Job,
    watermark_us: Option<i64>,
    partitions: Option<&'a [SourcePartition]>,
) -> Seed<'a> {
    Seed {
        tables: &[TableId::Raw, TableId::Late],
        since_us: watermark_us.map(|w| w.saturating_sub(job.dedup_horizon.as_micros() as i64)),
        until_us: None,
        partitions,
    }
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

/// What one committed trigger did, for the stats and the metrics.
struct Outcome<'a> {
    report: &'a CommitReport,
    on_time: &'a RecordBatch,
    duplicates: usize,
    replayed: usize,
    next: &'a Offsets,
    committed_us: i64,
    /// Per message, produced → committed.
    produced: Vec<Duration>,
}

/// A trigger's rows judged and being written as files: what its commit
/// takes, and what the trigger reports once it is made.
struct Staging {
    /// Per table (every one of the sink's), its files being written.
    staged: BTreeMap<TableId, Staged>,
    /// The events stored in `raw`: the accepted ones the watermark let in.
    on_time: RecordBatch,
    /// The quality rows being written: breaches and monitors.
    quality: Vec<QualityRow>,
    /// Rows dropped because their table already held them.
    replayed: usize,
    /// The lookup versions the outputs were derived with.
    lookups: BTreeMap<String, String>,
    /// From the start of staging to the ingest tables' rows staged.
    judging: Duration,
    /// From the start of staging to the outputs' rows staged too.
    transforming: Duration,
}

/// A trigger judged and its files being written, not yet committed: held
/// only under the sink's lock, since its rows were judged against the
/// assignment and the tables as that lock saw them.
struct Pending {
    prepared: Prepared,
    staging: Staging,
    /// Its batch's first and next offsets per partition.
    first: Offsets,
    next: Offsets,
    /// How long the trigger loop waited for its batch.
    waited: Duration,
    /// Whether it was staged before the trigger ahead of it committed.
    ahead: bool,
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

    /// The first stage: each micro-batch decoded and deduplicated on a
    /// blocking thread, into `prepared` (which bounds how far it runs ahead),
    /// until the source ends.
    async fn prepare_into(
        self: Arc<Self>,
        prepared: tokio::sync::mpsc::Sender<Prepared>,
    ) -> Result<(), PipelineError> {
        loop {
            let clock = Instant::now();
            let Some(mut polled) = self.batches.lock().await.next_batch().await? else {
                return Ok(());
            };
            let waited = clock.elapsed();
            polled.strip_probes();
            self.seed_reassigned().await?;
            let schemas = self.writer_schemas(&polled.batch).await?;
            let stage = Arc::clone(&self);
            let next = tokio::task::spawn_blocking(move || stage.prepare(polled, &schemas, waited))
                .await
                .expect("decoding and dedup do not panic")?;
            self.metrics.queue(
                "decoded",
                DECODED_BATCHES - prepared.capacity(),
                DECODED_BATCHES,
            );
            if prepared.send(next).await.is_err() {
                return Ok(());
            }
        }
    }

    /// The writer schemas `batch`'s messages name, waiting while the
    /// registry is down (a stop request ends the wait; the batch is not
    /// committed, so it is read again after the restart).
    async fn writer_schemas(&self, batch: &MicroBatch) -> Result<WriterSchemas, RegistryError> {
        let Some(registry) = &self.registry else {
            return Ok(WriterSchemas::default());
        };
        let avro_keys = matches!(self.job.contract.kafka.key, Some(KeyFormat::Avro(_)));
        let keys = batch.messages.iter().filter(|_| avro_keys);
        let framed = batch.messages.iter().filter_map(|m| m.payload.as_deref());
        let framed = framed.chain(keys.filter_map(|m| m.key.as_deref()));
        let stopping = || self.stop.load(Ordering::Relaxed);
        registry.resolve(framed, &self.metrics, &stopping).await
    }

    /// Decodes and deduplicates one micro-batch, `waited` after the last
    /// (the times go to the metrics and, at debug level, to the log: what
    /// shows which stage a machine's cores leave serial).
    fn prepare(
        &self,
        polled: Polled,
        schemas: &WriterSchemas,
        waited: Duration,
    ) -> Result<Prepared, PipelineError> {
        let clock = Instant::now();
        let now = Utc::now();
        let mut decoded = self.decoder.decode(&polled.batch, schemas, now)?;
        let decoding = clock.elapsed();
        self.metrics.stage("decode", decoding);
        let judged = self.expectations.apply(decoded.valid)?;
        if !judged.dropped.is_empty() {
            let refused = self.decoder.refuse(&polled.batch, &judged.dropped, now)?;
            decoded.rejected = concat_batches(&refused.schema(), [&decoded.rejected, &refused])?;
        }
        let clock = Instant::now();
        let (accepted, duplicates) = self.dedup.lock().unwrap().apply(&judged.kept)?;
        let deduplicating = clock.elapsed();
        self.metrics.stage("dedup", deduplicating);
        // How old the batch's oldest and newest events are as it is decoded:
        // the newest's age is the way in (producer, broker, poll), the
        // oldest's that plus the batch filling; what the latency tail is
        // made of before a trigger starts (benches/stages.py).
        let ages = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| produced_ago(&polled.batch, now.timestamp_micros()))
            .unwrap_or_default();
        debug!(
            events = polled.batch.len(),
            source_wait_ms = ms(waited),
            oldest_age_ms = ages.iter().max().copied().map(ms),
            newest_age_ms = ages.iter().min().copied().map(ms),
            decode_ms = ms(decoding),
            dedup_ms = ms(deduplicating),
            "batch prepared"
        );
        let breaches = judged.counted(&accepted)?;
        decoded.valid = accepted;
        Ok(Prepared {
            polled,
            decoded,
            breaches,
            duplicates,
            now,
        })
    }

    /// Triggers from `prepared` (`waited` for after the last) on, under one
    /// hold of the sink's lock (which a revocation takes too, so what
    /// [`Self::still_assigned`] passes is this process's to commit). While
    /// the next batch is prepared already and no one waits for the sink, it
    /// is judged and its files started before the trigger ahead of it
    /// commits, when [`may_stage_ahead`] says the commit cannot change what
    /// it reads; otherwise after that commit.
    async fn triggers(
        &self,
        prepared: Prepared,
        waited: Duration,
        rx: &mut tokio::sync::mpsc::Receiver<Prepared>,
    ) -> Result<(), PipelineError> {
        let mut sink = self.sink.lock().await;
        let mut pending = self.stage(&mut sink, prepared, waited).await?;
        while let Some(current) = pending.take() {
            let next = if self.sink.wanted() {
                None
            } else {
                rx.try_recv().ok()
            };
            let Some(next) = next else {
                return self.finish(&mut sink, current).await;
            };
            if may_stage_ahead(&current.next, &next.polled.batch.first_offsets()) {
                pending = self.stage(&mut sink, next, Duration::ZERO).await?;
                pending.iter_mut().for_each(|p| p.ahead = true);
                self.finish(&mut sink, current).await?;
            } else {
                self.finish(&mut sink, current).await?;
                pending = self.stage(&mut sink, next, Duration::ZERO).await?;
            }
        }
        Ok(())
    }

    /// Judges `prepared` and starts writing its files (`None` when none of
    /// its partitions is still assigned).
    async fn stage(
        &self,
        sink: &mut Sink,
        prepared: Prepared,
        waited: Duration,
    ) -> Result<Option<Pending>, PipelineError> {
        let Some(prepared) = self.still_assigned(prepared)? else {
            return Ok(None);
        };
        let staging = self.stage_tables(sink, &prepared).await?;
        Ok(Some(Pending {
            first: prepared.polled.first_offsets(),
            next: prepared.polled.next_offsets(),
            prepared,
            staging,
            waited,
            ahead: false,
        }))
    }

    /// Commits a staged trigger, then the offsets to Kafka and the counts.
    async fn finish(&self, sink: &mut Sink, pending: Pending) -> Result<(), PipelineError> {
        let Pending {
            prepared,
            staging,
            first,
            next,
            waited,
            ahead,
        } = pending;
        let report = self
            .commit(sink, staging.staged, &staging.lookups, &first, &next)
            .await?;
        let batch = &prepared.polled.batch;
        debug!(
            events = batch.len(),
            prepared_wait_ms = ms(waited),
            judge_ms = ms(staging.judging),
            queries_ms = ms(staging.transforming - staging.judging),
            commit_ms = ms(report.elapsed),
            staged_ahead = ahead,
            "trigger timed"
        );
        self.report_breaches(&staging.quality);
        if ahead {
            self.stats.staged_ahead.fetch_add(1, Ordering::Relaxed);
        }
        self.source.commit_offsets(&next);
        let committed_us = Utc::now().timestamp_micros();
        let produced = produced_ago(batch, committed_us);
        if !batch.is_empty() {
            self.adapt(batch.len(), &produced);
        }
        self.record(
            batch,
            Outcome {
                report: &report,
                on_time: &staging.on_time,
                duplicates: prepared.duplicates,
                replayed: staging.replayed,
                next: &next,
                committed_us,
                produced,
            },
        );
        Ok(())
    }

    /// Judges a prepared batch's events by the watermark and the fates raw
    /// settled, and starts writing every table's rows of it, each free of
    /// what its table already holds: the ingest tables', the quality rows'
    /// and, from queries that run meanwhile, the outputs'.
    async fn stage_tables(
        &self,
        sink: &mut Sink,
        prepared: &Prepared,
    ) -> Result<Staging, PipelineError> {
        let Prepared {
            polled,
            decoded,
            breaches,
            now,
            ..
        } = prepared;
        let (accepted, now) = (&decoded.valid, *now);
        let clock = Instant::now();
        // Every row below is of one of the batch's messages.
        let lowest = polled.batch.first_offsets();
        let below = sink.held(TableId::Raw);
        let topics = &self.job.source.topics;
        let settled = Settled::read(&mut *sink, below, accepted, &lowest, topics).await?;
        let split = self.judge(accepted, &settled, now)?;
        let derivation = self.outputs.lock().unwrap().clone();
        let inputs = (0..derivation.transforms.len())
            .map(|i| fresh(sink, TableId::Output(i), &split.on_time, &lowest))
            .collect::<Result<_, _>>()?;
        let outputs = apply_outputs(&derivation.transforms, inputs);
        let ingest = [
            (TableId::Raw, &split.on_time),
            (TableId::Dlq, &decoded.rejected),
            (TableId::Late, &split.late),
        ];
        let mut staged = BTreeMap::new();
        let mut replayed = 0;
        for (id, rows) in ingest {
            let kept = fresh(sink, id, rows, &lowest)?;
            replayed += rows.num_rows() - kept.num_rows();
            staged.insert(id, sink.stage(id, kept)?);
        }
        let mut quality = Vec::new();
        if self.job.has_quality() {
            let breaches = Breaches(fresh(sink, TableId::Quality, &breaches.0, &lowest)?);
            quality = self
                .expectations
                .quality_rows(&breaches, now.timestamp_micros());
            quality.extend(self.monitors.lock().unwrap().observe(accepted, now));
            let rows = quality_batch(&quality)?;
            staged.insert(TableId::Quality, sink.stage(TableId::Quality, rows)?);
        }
        let judging = clock.elapsed();
        for (i, rows) in outputs.await?.into_iter().enumerate() {
            let id = TableId::Output(i);
            staged.insert(id, sink.stage(id, rows)?);
        }
        let transforming = clock.elapsed();
        self.metrics.stage("transform", transforming);
        Ok(Staging {
            staged,
            on_time: split.on_time,
            quality,
            replayed,
            lookups: derivation.lookups.versions(),
            judging,
            transforming,
        })
    }

    /// Commits a trigger's `staged` files with its batch's `first` and `next`
    /// offsets, stamped with the `lookups` its outputs were derived with.
    async fn commit(
        &self,
        sink: &mut Sink,
        staged: BTreeMap<TableId, Staged>,
        lookups: &BTreeMap<String, String>,
        first: &Offsets,
        next: &Offsets,
    ) -> Result<CommitReport, PipelineError> {
        let m = &self.metrics;
        sink.derived_with(lookups);
        let report = sink.commit_staged(staged, first, next).await;
        let report = report.inspect_err(|e| {
            if e.is_conflict() {
                m.commit_conflicts.inc();
                warn!(
                    error = %e,
                    "a concurrent commit refused this one: the partition moved to another process (this one is fenced) or upkeep raced it; the batch is dropped and re-read from the tables' positions"
                );
            }
        })?;
        m.stage("commit", report.elapsed);
        m.commit_retries.inc_by(report.retries as u64);
        Ok(report)
    }

    /// The committed `quality` rows of a trigger, as metrics and log lines.
    fn report_breaches(&self, rows: &[QualityRow]) {
        for row in rows {
            let (rule, observed) = (row.rule.as_str(), row.observed);
            if row.action == MONITOR {
                self.metrics.monitor_breach(rule, observed);
                warn!(
                    monitor = rule,
                    observed,
                    expected = row.expected,
                    "monitor out of bounds"
                );
            } else {
                let action = row.action;
                self.metrics
                    .expectation_breaches(rule, action, observed as u64);
                warn!(rule, action, events = observed, "expectation broken");
            }
        }
    }

    /// `prepared` without the messages and rows of partitions revoked since
    /// it was polled (`None` when nothing is left). Called under the sink's
    /// lock, which a revocation takes too: what passes is still this
    /// process's to commit. (Dedup may keep the IDs of what is dropped: it
    /// remembers where each was read, so their re-read is accepted again.)
    fn still_assigned(&self, prepared: Prepared) -> Result<Option<Prepared>, ArrowError> {
        let Prepared {
            mut polled,
            mut decoded,
            mut breaches,
            duplicates,
            now,
        } = prepared;
        let before = polled.batch.len();
        let moved = polled.drop_moved(&self.source.generations());
        if !moved.is_empty() {
            let topics = &self.job.source.topics;
            decoded.valid = without_partitions(&decoded.valid, &moved, topics)?;
            decoded.rejected = without_partitions(&decoded.rejected, &moved, topics)?;
            breaches = Breaches(without_partitions(&breaches.0, &moved, topics)?);
            info!(
                dropped = before - polled.batch.len(),
                moved = ?self.job.source.topics.labels(&moved),
                "dropped decoded messages of partitions revoked since they were polled; their owner re-reads them"
            );
        }
        Ok((!polled.is_empty()).then_some(Prepared {
            polled,
            decoded,
            breaches,
            duplicates,
            now,
        }))
    }

    /// Seeds dedup for partitions assigned since the last trigger (see `seeded`).
    async fn seed_reassigned(&self) -> Result<(), PipelineError> {
        let current = self.source.generations();
        let mut seeded = self.seeded.lock().await;
        let fresh: Vec<SourcePartition> = current
            .iter()
            .filter(|(p, g)| seeded.get(p) != Some(g))
            .map(|(p, _)| *p)
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let watermark = self.watermark.lock().unwrap().current_us();
        let seed = accepted_within_horizon(&self.job, watermark, Some(&fresh));
        let mut sink = self.sink.lock().await;
        let (contract, topics) = (&self.job.contract, &self.job.source.topics);
        let batches = seeds(contract, topics, &mut *sink, seed).await?;
        drop(sink);
        let mut dedup = self.dedup.lock().unwrap();
        for batch in &batches {
            dedup.seed(batch)?;
        }
        debug!(partitions = ?self.job.source.topics.labels(&fresh), ids = dedup.index().len(), "dedup seeded for newly assigned partitions");
        seeded.clear();
        seeded.extend(current);
        Ok(())
    }

    /// Counts one committed trigger in the stats and the metrics.
    fn record(&self, batch: &MicroBatch, outcome: Outcome<'_>) {
        let Outcome {
            report,
            on_time,
            duplicates,
            replayed,
            next,
            committed_us,
            produced,
        } = outcome;
        debug!(
            events = batch.len(),
            raw = report.written(TableId::Raw),
            dlq = report.written(TableId::Dlq),
            late = report.written(TableId::Late),
            duplicates,
            ms = report.elapsed.as_millis() as u64,
            "trigger"
        );
        let s = &self.stats;
        if batch.is_empty() {
            // Only progress past records never delivered (commit markers).
            return self.note_positions(next);
        }
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.consumed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        s.raw_rows
            .fetch_add(report.written(TableId::Raw) as u64, Ordering::Relaxed);
        s.dlq_rows
            .fetch_add(report.written(TableId::Dlq) as u64, Ordering::Relaxed);
        s.late_rows
            .fetch_add(report.written(TableId::Late) as u64, Ordering::Relaxed);
        s.duplicates.fetch_add(duplicates as u64, Ordering::Relaxed);
        s.replayed.fetch_add(replayed as u64, Ordering::Relaxed);
        if let Some(samples) = s.samples.lock().unwrap().as_mut() {
            samples.triggers.push(TriggerSample {
                committed: Instant::now(),
                events: batch.len(),
                commit: report.elapsed,
            });
            samples.end_to_end.extend(produced.iter().copied());
        }
        // Last: whoever waits for a position finds its trigger counted and sampled.
        self.note_positions(next);

        let m = &self.metrics;
        m.events_in.inc_by(batch.len() as u64);
        m.batch_events.observe(batch.len() as f64);
        m.duplicates.inc_by(duplicates as u64);
        m.replayed.inc_by(replayed as u64);
        let since = |us: i64| (committed_us - us).max(0) as f64 / 1e6;
        // Two observations per event: counted locally and added to the shared
        // histograms once each (when dropped), not with atomics per event.
        let event = m.end_to_end("event").local();
        if let Some(times) = on_time
            .column_by_name(self.decoder.contract().event_time_name())
            .map(|c| c.as_primitive::<TimestampMicrosecondType>())
        {
            times.values().iter().for_each(|t| event.observe(since(*t)));
        }
        let kafka = m.end_to_end("kafka").local();
        produced.iter().for_each(|d| kafka.observe(d.as_secs_f64()));
        let dedup = self.dedup.lock().unwrap();
        m.dedup_entries.set(dedup.index().len() as i64);
        m.dedup_bytes.set(dedup.index().bytes() as i64);
        drop(dedup);
        if let Some(w) = self.watermark.lock().unwrap().current_us() {
            m.watermark.set(w as f64 / 1e6);
        }
    }

    /// Publishes the partitions' committed positions (stats and metrics).
    fn note_positions(&self, next: &Offsets) {
        for (&p, &offset) in next {
            let label = self.job.source.topics.label(p);
            self.metrics.partition(&label, None, Some(offset));
        }
        self.stats.positions.lock().unwrap().extend(next);
    }

    /// Feeds adaptive batching one trigger: its events and the p99 of their
    /// produced → committed.
    fn adapt(&self, events: usize, produced: &[Duration]) {
        let Some(controller) = &self.adaptive else {
            return;
        };
        let observation = Observation {
            events,
            p99: quantile(produced, 0.99).unwrap_or_default(),
        };
        if let Some(cap) = controller.lock().unwrap().observe(observation) {
            debug!(
                cap,
                p99_ms = observation.p99.as_millis() as u64,
                "adaptive batching moved the batch cap"
            );
            self.metrics.batch_cap.set(cap as i64);
        }
    }

    /// Splits accepted events by the watermark, then moves the watermark on
    /// and lets dedup forget what fell behind it.
    fn judge(
        &self,
        accepted: &RecordBatch,
        settled: &Settled,
        now: chrono::DateTime<Utc>,
    ) -> Result<crate::ingest::watermark::Split, ArrowError> {
        let mut watermark = self.watermark.lock().unwrap();
        let assigned: Vec<SourcePartition> = self.source.generations().into_keys().collect();
        if !assigned.is_empty() {
            watermark.assign(&assigned, Instant::now());
        }
        let split = watermark.split(accepted, settled, now)?;
        watermark.advance(&split.on_time, Instant::now())?;
        if let Some(w) = watermark.current_us() {
            self.dedup.lock().unwrap().evict(w);
        }
        Ok(split)
    }
}

/// Each output's rows from its input (`inputs[i]` for the i-th output),
/// each query in a task of its own: they share nothing, and the cores are
/// otherwise left to the ingest tables' file writes.
fn apply_outputs(
    transforms: &Arc<[Transform]>,
    inputs: Vec<RecordBatch>,
) -> impl Future<Output = Result<Vec<RecordBatch>, DataFusionError>> + use<> {
    let queries: Vec<_> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, rows)| {
            let transforms = transforms.clone();
            tokio::spawn(async move { transforms[i].apply(&rows).await })
        })
        .collect();
    async move {
        let mut computed = Vec::with_capacity(queries.len());
        for query in queries {
            computed.push(query.await.expect("an output's query does not panic")?);
        }
        Ok(computed)
    }
}
