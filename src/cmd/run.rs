//! `weir run`: the supervisor of long-running jobs.
//!
//! Several jobs share one process, one metrics endpoint and one shutdown. Each
//! job runs its trigger loop and, beside it, table upkeep every
//! `maintenance.every`. A job that fails is restarted with exponential backoff
//! (1 s doubling to 60 s, back to 1 s after a minute of health), counted in
//! `weir_restarts_total` and logged with the cause: a restart re-reads from
//! the tables' positions, so it loses and duplicates nothing. Only a job that
//! cannot run as specified (a bad spec, tables it cannot write) stops the
//! process. On SIGTERM/SIGINT every job commits the batches it has cut and
//! stops; whatever is still in flight after the deadline is abandoned (a
//! trigger's commits are per table and atomic, so nothing is half-written,
//! and the next start re-reads it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::{debug, error, info, warn};

use crate::config::{Brokers, Job, Offsets};
use crate::fault::Faults;
use crate::ingest::expect::ExpectError;
use crate::ingest::pipeline::{Pipeline, PipelineError, broker_high_watermarks};
use crate::ingest::probe::probe;
use crate::ingest::sink::SinkError;
use crate::ingest::source::kafka::SourceError;
use crate::metrics::{JobMetrics, Metrics};
use crate::table::TableError;
use crate::task::AbortOnDrop;
use crate::upkeep::compact::Compactor;
use crate::upkeep::maintain;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run this long counts as healthy: the next failure starts the backoff over.
const HEALTHY: Duration = Duration::from_secs(60);

/// The cause is the error's source, not part of its message: `weir: error:`
/// prints the whole chain, and a message that repeated it printed it twice.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("job {job}")]
    Job { job: String, source: PipelineError },
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long a stop waits for in-flight batches before abandoning them.
    pub shutdown_timeout: Duration,
    /// Where the status page, `/api/status`, `/metrics` and `/healthz` are served.
    pub metrics_addr: SocketAddr,
    /// When the run ends by itself, for schedulers (none: at a signal).
    pub until: Option<Until>,
}

/// When a bounded run ends by itself and exits 0, as a scheduler's batch
/// job (Spark's `Trigger.AvailableNow`, kafka-delta-ingest's `-e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Once each job's tables hold, for every partition assigned to it,
    /// every message below the high watermark the broker gave for that
    /// partition when the job first started in this run.
    CaughtUp,
    /// At this time: the batches already cut are committed, then it stops.
    Time(DateTime<Utc>),
}

impl Until {
    /// `caught-up`, an RFC 3339 time, or a duration from now (`90s`, `2h`).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "caught-up" {
            return Ok(Self::CaughtUp);
        }
        let time = match DateTime::parse_from_rfc3339(text) {
            Ok(time) => time.with_timezone(&Utc),
            Err(_) => {
                let span = humantime::parse_duration(text).map_err(|_| {
                    format!(
                        "`{text}` is neither `caught-up`, an RFC 3339 time nor a duration such as 30m"
                    )
                })?;
                Utc::now() + span
            }
        };
        if time <= Utc::now() {
            return Err(format!("`{text}` is in the past"));
        }
        Ok(Self::Time(time))
    }
}

/// Whether restarting cannot help: the spec's failures, and a broker that no
/// longer holds a partition's position (a restart would find the same gap).
fn is_fatal(e: &PipelineError) -> bool {
    matches!(
        e,
        PipelineError::Job(_)
            | PipelineError::Sink(SinkError::Table(TableError::Incompatible { .. }))
            | PipelineError::Table(TableError::Incompatible { .. })
            | PipelineError::Expectation(ExpectError::Failed { .. })
            | PipelineError::Source(
                SourceError::Create { .. }
                    | SourceError::Subscribe { .. }
                    | SourceError::Spec(_)
                    | SourceError::PositionGone { .. }
            )
    )
}

/// An error and its causes, on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs `jobs` until `stop` is set (then within the shutdown deadline) or a
/// job fails in a way no restart can fix.
pub async fn run(
    jobs: Vec<Job>,
    options: RunOptions,
    faults: Faults,
    stop: Arc<AtomicBool>,
) -> Result<(), RunError> {
    let metrics = Metrics::new();
    // Every job's series exist before the console's first sample, so its
    // history starts from zero rather than from wherever a fast job got.
    let job_metrics: Vec<JobMetrics> = jobs.iter().map(|j| metrics.job(&j.name)).collect();
    let listener = tokio::net::TcpListener::bind(options.metrics_addr)
        .await
        .map_err(|source| RunError::Metrics {
            addr: options.metrics_addr,
            source,
        })?;
    tokio::spawn(crate::cmd::console::serve(
        listener,
        metrics.clone(),
        jobs.clone(),
    ));

    if let Some(Until::Time(time)) = options.until {
        let stop = stop.clone();
        tokio::spawn(async move {
            let left = (time - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(left).await;
            info!(%time, "--until time reached: stopping after the batches in flight");
            stop.store(true, Ordering::Relaxed);
        });
    }
    let caught_up = options.until == Some(Until::CaughtUp);
    let mut supervised = tokio::task::JoinSet::new();
    let mut upkeep = Vec::new();
    for (job, job_metrics) in jobs.into_iter().zip(job_metrics) {
        upkeep.push(tokio::spawn(keep_up(
            job.clone(),
            faults.clone(),
            job_metrics.clone(),
        )));
        if let (Some(every), Brokers::List(bootstrap)) = (job.probe_every, &job.source.brokers) {
            let probes = probe(job.clone(), bootstrap.clone(), job_metrics.clone(), every);
            upkeep.push(tokio::spawn(probes));
        }
        let (faults, stop) = (faults.clone(), stop.clone());
        let bound = caught_up.then(Arc::default);
        supervised.spawn(async move {
            let name = job.name.clone();
            supervise(job, job_metrics, faults, stop, bound)
                .await
                .map_err(|source| RunError::Job { job: name, source })
        });
    }

    let result = loop {
        tokio::select! {
            done = supervised.join_next() => match done {
                None => break Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(fatal))) => {
                    stop.store(true, Ordering::Relaxed);
                    break Err(fatal);
                }
                Some(Err(panicked)) => error!(error = %panicked, "a job's supervisor panicked"),
            },
            () = wait_for(&stop) => break Ok(()),
        }
    };
    for task in &upkeep {
        task.abort();
    }
    if result.is_ok() && !supervised.is_empty() {
        info!(deadline = ?options.shutdown_timeout, "stopping: committing the batches in flight");
        let drained = tokio::time::timeout(options.shutdown_timeout, async {
            while supervised.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                "shutdown deadline passed: abandoning the batches still in flight (none is half-committed; the next start re-reads them)"
            );
            supervised.abort_all();
        }
    }
    result
}

async fn wait_for(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `--until caught-up`, the offsets a job's run ends at: the broker's
/// high watermarks when its first life started, kept across restarts.
type Bound = Arc<tokio::sync::OnceCell<Offsets>>;

/// Runs one job, restarting it after errors, until `stop`, a fatal error,
/// or (with `bound`) once it caught up.
async fn supervise(
    job: Job,
    metrics: JobMetrics,
    faults: Faults,
    stop: Arc<AtomicBool>,
    bound: Option<Bound>,
) -> Result<(), PipelineError> {
    let Brokers::List(bootstrap) = &job.source.brokers else {
        unreachable!("the CLI refuses embedded brokers for `weir run`")
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        // Each life in a task of its own: a panic ends that life, not the
        // supervisor (which would leave the job dropped, the process exiting
        // 0 or `/healthz` answering 200). The life ends with the supervisor:
        // one aborted at the shutdown deadline takes its pipeline down too.
        let mut life = AbortOnDrop::spawn(run_once(
            job.clone(),
            bootstrap.clone(),
            metrics.clone(),
            faults.clone(),
            stop.clone(),
            bound.clone(),
        ));
        let result = match life.join().await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(PipelineError::Panicked(panic_message(e.into_panic()))),
            Err(e) => Err(PipelineError::Panicked(e.to_string())),
        };
        let e = match result {
            Ok(()) => {
                info!(job = %job.name, "stopped cleanly");
                return Ok(());
            }
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => e,
        };
        if started.elapsed() >= HEALTHY {
            backoff = FIRST_BACKOFF;
        }
        metrics.restarts.inc();
        let cause = chain(&e);
        error!(
            job = %job.name,
            error = %cause,
            restarts = metrics.restarts.get(),
            retry_in = ?backoff,
            "job failed; restarting"
        );
        metrics.set_health(Err(format!("restarting after: {cause}")));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = wait_for(&stop) => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(
            || "a panic without a message".to_owned(),
            |s| (*s).to_owned(),
        ),
    }
}

/// One life of a job's pipeline: start, run until stopped, failed or (with
/// `bound`) caught up.
async fn run_once(
    job: Job,
    bootstrap: String,
    metrics: JobMetrics,
    faults: Faults,
    stop: Arc<AtomicBool>,
    bound: Option<Bound>,
) -> Result<(), PipelineError> {
    if stop.load(Ordering::Relaxed) {
        return Ok(());
    }
    let pipeline = Arc::new(Pipeline::start(&job, &bootstrap, faults, metrics.clone()).await?);
    metrics.set_health(Ok(()));
    info!(job = %job.name, brokers = %bootstrap, topics = %job.source.topics, "running");
    if let Some(from) = &job.contract_from {
        info!(
            job = %job.name,
            subject = %from.subject,
            schema_id = from.schema_id,
            left_out = ?from.left_out,
            "the contract's fields come from the registry subject's latest schema; fields left out have no column type yet and stay in _payload"
        );
    }
    let _relay = {
        let (pipeline, stop) = (pipeline.clone(), stop.clone());
        AbortOnDrop::spawn(async move {
            wait_for(&stop).await;
            pipeline.stop();
        })
    };
    let _bound = match bound {
        Some(bound) => {
            let targets = bound
                .get_or_try_init(|| broker_high_watermarks(&job, &bootstrap, None))
                .await?
                .clone();
            let labelled = job.source.topics.labelled(&targets);
            info!(job = %job.name, targets = ?labelled, "--until caught-up: stopping once the tables hold every message below these offsets");
            Some(AbortOnDrop::spawn(stop_when_caught_up(
                pipeline.clone(),
                targets,
            )))
        }
        None => None,
    };
    pipeline.run().await
}

/// How often a bounded run looks whether its job caught up.
const CAUGHT_UP_CHECK: Duration = Duration::from_millis(250);

/// Stops `pipeline` once it holds every message below `targets`.
async fn stop_when_caught_up(pipeline: Arc<Pipeline>, targets: Offsets) {
    while !pipeline.caught_up(&targets).await {
        tokio::time::sleep(CAUGHT_UP_CHECK).await;
    }
    info!(
        "caught up: every assigned partition's messages below its target are in the tables; stopping"
    );
    pipeline.stop();
}

/// How often the hot tables are looked at for small files to merge.
const COMPACT_CHECK: Duration = Duration::from_secs(10);

/// Runs table upkeep beside ingest: a round every `maintenance.every`, and
/// between rounds the hot tables' small files merged as they accumulate
/// ([`Compactor`]). One task, so two merges of a table never race. A failed
/// step is logged and retried next time; it never stops ingest.
pub async fn keep_up(job: Job, faults: Faults, metrics: JobMetrics) {
    let every = job.maintenance.every;
    let mut compactor = Compactor::new(&job);
    let check = match compactor {
        Some(_) => COMPACT_CHECK.min(every),
        None => every,
    };
    let mut tick = tokio::time::interval(check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut next_round = tokio::time::Instant::now() + every;
    loop {
        let now = tick.tick().await;
        if now < next_round {
            if let Some(compactor) = compactor.as_mut()
                && let Err(e) = compactor.round().await
            {
                warn!(job = %job.name, error = %e, "merging hot tables' small files failed; ingest goes on");
            }
            continue;
        }
        next_round = now + every;
        match maintain::run_once(&job, &faults).await {
            Ok(report) => {
                metrics.last_maintenance.set(Utc::now().timestamp() as f64);
                info!(
                    job = %job.name,
                    seconds = report.elapsed.as_secs_f64(),
                    "maintenance round done"
                )
            }
            // The job has not created its tables yet (a first start on slow
            // storage): nothing to keep up.
            Err(maintain::MaintainError::Table(TableError::Missing { table, .. })) => {
                debug!(job = %job.name, %table, "maintenance skipped: the job's tables are not made yet")
            }
            Err(e) => {
                warn!(job = %job.name, error = %e, "maintenance round failed; ingest goes on")
            }
        }
    }
}
