//! `weir demo`: the whole spine on the embedded broker, with nothing installed.
//!
//! It starts librdkafka's in-process mock cluster, produces a realistic stream
//! into it, runs the job against it until everything produced is committed, and
//! reports where every event went. The embedded broker forgets everything when
//! the demo ends, so the demo's tables are throwaway too: a demo run replaces
//! the tables of an earlier demo run (recognised by a marker file) and refuses
//! to touch tables it did not create.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::info;

use crate::config::{Job, Offsets, SourcePartition};
use crate::fault::Faults;
use crate::ingest::pipeline::{Pipeline, PipelineError};
use crate::ingest::source::embedded::EmbeddedBroker;
use crate::ingest::source::framing::Framing;
use crate::ingest::source::generator::{self, Delivered, Generator, Kind, Limits, Mix};
use crate::ingest::source::registry::RegistryError;
use crate::ingest::stats::Stats;
use crate::telemetry::quantile;

const MARKER: &str = ".weir-demo";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seconds: u64,
    pub rate: f64,
    pub partitions: i32,
    pub mix: Mix,
    /// How long to wait, after producing stops, for the last events to commit.
    pub drain_timeout: Duration,
    /// Fault points for crash tests (none by default).
    pub faults: Faults,
    /// Spread event times over this span before now instead of following the
    /// clock (history to reprocess).
    pub backfill: Option<Duration>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            seconds: 10,
            rate: 2000.0,
            partitions: 3,
            mix: Mix::default(),
            drain_timeout: Duration::from_secs(60),
            faults: Faults::default(),
            backfill: None,
        }
    }
}

/// What driving a pipeline with generated traffic can fail with, in the
/// demo and the bench alike.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// A Kafka client (or the embedded broker) failed.
    #[error("Kafka: {0}")]
    Broker(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Produce(#[from] generator::ProduceError),
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
    #[error("the pipeline task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<PipelineError> for DriveError {
    fn from(e: PipelineError) -> Self {
        Self::Pipeline(Box::new(e))
    }
}

/// `?` on each of [`DriveError`]'s sources in a function returning `$error`,
/// which wraps it as `$error::Drive`.
macro_rules! drive_errors {
    ($error:ty) => {
        impl<E> From<E> for $error
        where
            E: crate::cmd::demo::DrivenBy,
        {
            fn from(e: E) -> Self {
                Self::Drive(e.into())
            }
        }
    };
}
pub(crate) use drive_errors;

/// The errors a [`DriveError`] is made from.
pub trait DrivenBy: Into<DriveError> {}
impl DrivenBy for rdkafka::error::KafkaError {}
impl DrivenBy for generator::ProduceError {}
impl DrivenBy for PipelineError {}
impl DrivenBy for tokio::task::JoinError {}
impl DrivenBy for DriveError {}
impl DrivenBy for RegistryError {}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "{0} holds tables that `weir demo` did not create; the demo only replaces its own. \
         Pass another --data directory."
    )]
    ForeignTables(PathBuf),
    #[error("cannot prepare the demo directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Drive(DriveError),
    #[error("not everything produced was committed within {0:?} after producing stopped")]
    Drain(Duration),
}

drive_errors!(DemoError);

/// Where the demo's events went.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub job: String,
    pub partitions: i32,
    pub produced: usize,
    pub valid: usize,
    pub duplicates: usize,
    /// Events the generator sent far behind the clock.
    pub sent_late: usize,
    pub malformed: usize,
    pub raw: u64,
    pub dlq: u64,
    /// Events behind the watermark, in `late`.
    pub late: u64,
    /// Re-sent events dedup dropped.
    pub dropped: u64,
    pub batches: u64,
    pub commit_p50: Option<Duration>,
    pub commit_p99: Option<Duration>,
    pub elapsed: Duration,
    pub tables: Vec<(String, String)>,
}

impl DemoSummary {
    /// Every produced message is accounted for exactly once, in the right place:
    /// originals in `raw` or `late`, re-sends dropped as duplicates, malformed
    /// ones in `dlq`. (Which originals are late depends on the job's allowed
    /// lateness, and nothing is late before the job has a watermark; a re-send
    /// of an event older than the dedup horizon is an event again.)
    pub fn balanced(&self) -> bool {
        self.raw + self.late + self.dropped == self.valid as u64
            && self.dropped <= self.duplicates as u64
            && self.dlq == self.malformed as u64
    }
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{} ms", d.as_millis()));
        writeln!(
            f,
            "weir demo: job `{}` on the embedded broker ({} partitions), {:.1} s",
            self.job,
            self.partitions,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  produced   {:>9}  ({} valid, of which {} re-sent duplicates and {} sent late; {} malformed)",
            self.produced, self.valid, self.duplicates, self.sent_late, self.malformed
        )?;
        writeln!(
            f,
            "  raw        {:>9}  valid events committed and aggregated",
            self.raw
        )?;
        writeln!(
            f,
            "  late       {:>9}  events behind the watermark, kept in `late` with the reason",
            self.late
        )?;
        writeln!(
            f,
            "  duplicates {:>9}  re-sent events dropped by event ID",
            self.dropped
        )?;
        writeln!(
            f,
            "  dlq        {:>9}  rejected messages committed, with the reason",
            self.dlq
        )?;
        let mean = (self.raw + self.late + self.dropped + self.dlq)
            .checked_div(self.batches)
            .unwrap_or(0);
        writeln!(
            f,
            "  batches    {:>9}  (mean {} events)",
            self.batches, mean
        )?;
        writeln!(
            f,
            "  commit latency per batch: p50 {}, p99 {}",
            ms(self.commit_p50),
            ms(self.commit_p99)
        )?;
        let width = self.tables.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, url) in &self.tables {
            writeln!(f, "  table {name:<width$}  {url}")?;
        }
        let verdict = if self.balanced() {
            "ok: every message accounted for once, in the right place"
        } else {
            "MISMATCH: the tables do not account for every produced message"
        };
        write!(
            f,
            "  check: produced {} = raw {} + late {} + duplicates {} + dlq {}: {verdict}",
            self.produced, self.raw, self.late, self.dropped, self.dlq
        )
    }
}

/// Runs the demo for `job` (its brokers setting is ignored: the demo always uses
/// the embedded broker).
pub async fn run(job: &Job, options: &DemoOptions) -> Result<DemoSummary, DemoError> {
    prepare_directory(job)?;
    let started = Instant::now();
    let broker = EmbeddedBroker::start(job.source.topics.first(), options.partitions)?;
    let bootstrap = broker.bootstrap_servers();
    let summary = run_against(job, options, &bootstrap, started).await;
    drop(broker); // only after every client of it is gone
    summary
}

async fn run_against(
    job: &Job,
    options: &DemoOptions,
    bootstrap: &str,
    started: Instant,
) -> Result<DemoSummary, DemoError> {
    let metrics = crate::metrics::JobMetrics::detached(&job.name);
    let pipeline =
        Arc::new(Pipeline::start(job, bootstrap, options.faults.clone(), metrics).await?);
    let stats = pipeline.stats();
    stats.keep_samples();
    let task = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { pipeline.run().await })
    };

    // The embedded broker keeps about 5 MB per partition: at a high rate,
    // messages produced while the consumer is still joining its group could
    // be gone before it reads them.
    let joined = Instant::now() + options.drain_timeout;
    while !pipeline.has_partitions() && !task.is_finished() && Instant::now() < joined {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut framing = Framing::for_job(&job.contract, &job.source.format).await?;
    let progress = tokio::spawn(report_progress(stats.clone()));
    let mut generator = Generator::new(job.contract.clone(), options.mix, rand::random());
    if let Some(span) = options.backfill {
        generator = generator.backfill(span, (options.seconds as f64 * options.rate) as u64);
    }
    let limits = Limits {
        rate: Some(options.rate),
        count: None,
        duration: Some(Duration::from_secs(options.seconds)),
    };
    let never = AtomicBool::new(false);
    info!(seconds = options.seconds, rate = options.rate, "producing");
    let produced = generator::produce(
        bootstrap,
        job.source.topics.first(),
        &mut generator,
        framing.as_mut(),
        limits,
        &never,
        &[],
    )
    .await;
    let drained = match &produced {
        Ok(delivered) => {
            let deadline = Instant::now() + options.drain_timeout;
            stats
                .wait_until_reached(&end_offsets(delivered), &task, deadline)
                .await
        }
        Err(_) => false,
    };
    pipeline.stop();
    progress.abort();
    task.await??;
    let delivered = produced?;
    if !drained {
        return Err(DemoError::Drain(options.drain_timeout));
    }

    let latencies: Vec<Duration> = stats
        .take_samples()
        .triggers
        .iter()
        .map(|t| t.commit)
        .collect();
    let tables = pipeline
        .sink()
        .lock()
        .await
        .table_urls()
        .into_iter()
        .map(|(n, u)| (n.to_owned(), u.to_string()))
        .collect();
    drop(pipeline);
    let count = |f: fn(Kind) -> bool| delivered.iter().filter(|d| f(d.kind)).count();
    Ok(DemoSummary {
        job: job.name.clone(),
        partitions: options.partitions,
        produced: delivered.len(),
        valid: count(Kind::is_valid),
        duplicates: count(|k| k == Kind::Duplicate),
        sent_late: count(|k| k == Kind::Late),
        malformed: count(|k| !k.is_valid()),
        raw: stats.raw_rows.load(Ordering::Relaxed),
        dlq: stats.dlq_rows.load(Ordering::Relaxed),
        late: stats.late_rows.load(Ordering::Relaxed),
        dropped: stats.duplicates.load(Ordering::Relaxed),
        batches: stats.batches.load(Ordering::Relaxed),
        commit_p50: quantile(&latencies, 0.5),
        commit_p99: quantile(&latencies, 0.99),
        elapsed: started.elapsed(),
        tables,
    })
}

/// Logs what has been committed so far, every two seconds, until aborted.
async fn report_progress(stats: Arc<Stats>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        tick.tick().await;
        info!(
            batches = stats.batches.load(Ordering::Relaxed),
            raw = stats.raw_rows.load(Ordering::Relaxed),
            dlq = stats.dlq_rows.load(Ordering::Relaxed),
            late = stats.late_rows.load(Ordering::Relaxed),
            "committed so far"
        );
    }
}

/// Per partition of the job's first topic (the one demo and bench produce
/// to), the offset after the last delivered message.
pub fn end_offsets(delivered: &[Delivered]) -> Offsets {
    let mut ends = BTreeMap::new();
    for d in delivered {
        let e = ends
            .entry(SourcePartition::first(d.partition))
            .or_insert(d.offset + 1);
        *e = (*e).max(d.offset + 1);
    }
    ends
}

/// Clears the tables of an earlier demo run of this job; refuses foreign ones.
fn prepare_directory(job: &Job) -> Result<(), DemoError> {
    let Ok(root) = job.storage.root.to_file_path() else {
        return Ok(());
    };
    let dir = root.join("hot").join(&job.name);
    let io = |source| DemoError::Directory {
        path: dir.clone(),
        source,
    };
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            return Err(DemoError::ForeignTables(dir));
        }
        info!(dir = %dir.display(), "replacing the tables of an earlier demo run");
        std::fs::remove_dir_all(&dir).map_err(io)?;
    }
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::write(
        dir.join(MARKER),
        "tables written by `weir demo`; a later demo run replaces them\n",
    )
    .map_err(io)
}
