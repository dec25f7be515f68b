//! `weir bench` and `weir tune`: what each batch size costs in latency and buys
//! in throughput, against the raw consume rate of the same broker in the same
//! run (so a slow broker or a busy machine shows as a low ceiling, not as a
//! slow weir).
//!
//! One run: a backlog topic is filled once; a plain consumer reads it all and
//! discards it, a few times over (the raw consume rate is their median); then
//! for each batch size the real pipeline (decode, dedup, aggregate, Delta
//! commits) drains the same backlog under a fresh consumer group and fresh
//! tables (throughput), and runs against a fresh topic fed at the offered rate
//! (latency: each event from produced to committed, and each trigger's commit).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info};

use crate::cmd::demo::{DriveError, drive_errors, end_offsets};
use crate::config::{Batching, Job, JobError, Offsets, Storage, Topics};
use crate::fault::Faults;
use crate::ingest::pipeline::{Pipeline, PipelineError};
use crate::ingest::source::embedded::EmbeddedBroker;
use crate::ingest::source::framing::Framing;
use crate::ingest::source::generator::{self, Generator, Limits, Mix};
use crate::ingest::source::kafka::{bound_prefetch, client_config};
use crate::ingest::stats::Samples;
use crate::metrics::JobMetrics;
use crate::telemetry::{Progress, ms, quantile};

pub mod plot;
pub mod tune;

/// The embedded broker's backlog topic (it is made with the broker).
const EMBEDDED_BACKLOG: &str = "weir-bench-backlog";

/// The batch sizes a sweep measures unless told otherwise.
pub const DEFAULT_SIZES: [usize; 6] = [100, 250, 500, 1000, 2500, 10_000];

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub batch_sizes: Vec<usize>,
    /// How long each phase of each point runs (the throughput phase stops
    /// earlier when the backlog is drained).
    pub seconds_per_point: Duration,
    /// Events per second offered in the latency phase.
    pub rate: f64,
    pub partitions: i32,
    /// Events in the backlog the raw consumer and the throughput phases read.
    pub backlog: u64,
    /// `None`: the embedded broker.
    pub brokers: Option<String>,
    /// Where each point's tables go (removed afterwards).
    pub work_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("cannot create topic `{topic}` on {brokers}: {reason}")]
    Topic {
        topic: String,
        brokers: String,
        reason: String,
    },
    #[error(transparent)]
    Drive(DriveError),
    #[error(
        "the raw consumer read {read} of {expected} backlog events within {timeout:?} without reaching the end; is the broker healthy?"
    )]
    RawConsume {
        read: u64,
        expected: u64,
        timeout: Duration,
    },
    #[error("batch size {batch}: {what} did not commit within {timeout:?}")]
    Stalled {
        batch: usize,
        what: &'static str,
        timeout: Duration,
    },
    #[error("cannot use the work directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {reason}")]
    Output { path: PathBuf, reason: String },
}

drive_errors!(BenchError);

/// p50, p95 and p99 of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantiles {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
}

impl Quantiles {
    fn of(samples: &[Duration]) -> Self {
        let q = |q| quantile(samples, q).unwrap_or_default();
        Self {
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
        }
    }
}

/// One batch size, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub batch_events: usize,
    /// Events per second the pipeline drained from the backlog.
    pub throughput: f64,
    /// `throughput` over the raw consume rate.
    pub ratio: f64,
    /// Events per second offered in the latency phase, and the share of them
    /// committed by the end of it (a point's time after producing stopped):
    /// below 1, the pipeline fell behind that rate.
    pub offered: f64,
    pub committed_share: f64,
    /// Per event, produced → committed, in the latency phase.
    pub end_to_end: Quantiles,
    /// Per trigger, the Delta commits, in the latency phase.
    pub commit: Quantiles,
    /// Triggers in the latency phase and their mean size.
    pub batches: usize,
    pub mean_batch: f64,
    /// CPU the poll thread used per event while draining: one thread polls
    /// every partition, so this bounds the process however many cores it has.
    pub poll_cpu: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub job: String,
    pub broker: String,
    /// Events per second a consumer that discards everything reads (the
    /// median of [`RAW_CONSUME_PASSES`] passes).
    pub raw_consume: f64,
    /// CPU its polling thread used per event (the median of the passes): the
    /// floor under [`Point::poll_cpu`].
    pub raw_cpu: Duration,
    pub points: Vec<Point>,
}

/// The CSV's header; one row per batch size follows.
pub const CSV_COLUMNS: [&str; 18] = [
    "batch_events",
    "throughput_eps",
    "raw_consume_eps",
    "ratio_to_raw",
    "offered_eps",
    "committed_share",
    "e2e_p50_ms",
    "e2e_p95_ms",
    "e2e_p99_ms",
    "commit_p50_ms",
    "commit_p95_ms",
    "commit_p99_ms",
    "batches",
    "mean_batch_events",
    "job",
    "broker",
    "poll_cpu_ns_per_event",
    "raw_cpu_ns_per_event",
];

impl BenchReport {
    pub fn to_csv(&self) -> String {
        let mut out = CSV_COLUMNS.join(",");
        out.push('\n');
        for p in &self.points {
            let row = [
                p.batch_events.to_string(),
                format!("{:.0}", p.throughput),
                format!("{:.0}", self.raw_consume),
                format!("{:.4}", p.ratio),
                format!("{:.0}", p.offered),
                format!("{:.4}", p.committed_share),
                format!("{:.1}", ms(p.end_to_end.p50)),
                format!("{:.1}", ms(p.end_to_end.p95)),
                format!("{:.1}", ms(p.end_to_end.p99)),
                format!("{:.1}", ms(p.commit.p50)),
                format!("{:.1}", ms(p.commit.p95)),
                format!("{:.1}", ms(p.commit.p99)),
                p.batches.to_string(),
                format!("{:.1}", p.mean_batch),
                self.job.clone(),
                self.broker.clone(),
                p.poll_cpu.as_nanos().to_string(),
                self.raw_cpu.as_nanos().to_string(),
            ];
            out.push_str(&row.join(","));
            out.push('\n');
        }
        out
    }

    /// Writes the CSV and the frontier plot.
    pub fn write(&self, csv: &Path, png: &Path) -> Result<(), BenchError> {
        std::fs::write(csv, self.to_csv()).map_err(|e| BenchError::Output {
            path: csv.to_owned(),
            reason: e.to_string(),
        })?;
        plot::frontier(self, png).map_err(|reason| BenchError::Output {
            path: png.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "weir bench: job `{}` on {}; raw consume {:.0} events/s ({} ns of CPU per event polled)",
            self.job,
            self.broker,
            self.raw_consume,
            self.raw_cpu.as_nanos()
        )?;
        writeln!(
            f,
            "{:>7} {:>10} {:>6} {:>7} {:>9} {:>9} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>6}",
            "batch",
            "events/s",
            "ratio",
            "poll ns",
            "offered",
            "committed",
            "e2e p50",
            "p95",
            "p99",
            "commit",
            "p95",
            "p99",
            "mean"
        )?;
        for p in &self.points {
            let (e, c) = (p.end_to_end, p.commit);
            writeln!(
                f,
                "{:>7} {:>10.0} {:>5.0}% {:>7} {:>9.0} {:>8.0}% | {:>5.0}ms {:>5.0}ms {:>5.0}ms | {:>5.0}ms {:>5.0}ms {:>5.0}ms | {:>6.0}",
                p.batch_events,
                p.throughput,
                p.ratio * 100.0,
                p.poll_cpu.as_nanos(),
                p.offered,
                p.committed_share * 100.0,
                ms(e.p50),
                ms(e.p95),
                ms(e.p99),
                ms(c.p50),
                ms(c.p95),
                ms(c.p99),
                p.mean_batch
            )?;
        }
        write!(
            f,
            "(events/s: draining a backlog; poll ns: CPU of the poll thread per event drained; latencies: at the offered rate, per event produced → committed and per trigger's commits; mean: events per batch)"
        )
    }
}

/// The broker a sweep runs against.
enum Broker {
    Embedded(EmbeddedBroker),
    External(String),
}

impl Broker {
    fn bootstrap(&self) -> String {
        match self {
            Broker::Embedded(b) => b.bootstrap_servers(),
            Broker::External(list) => list.clone(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Broker::Embedded(_) => "the embedded broker".into(),
            Broker::External(list) => list.clone(),
        }
    }

    async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        properties: &[(String, String)],
    ) -> Result<(), BenchError> {
        let failed = |reason: String| BenchError::Topic {
            topic: topic.to_owned(),
            brokers: self.describe(),
            reason,
        };
        match self {
            Broker::Embedded(b) => b.create_topic(topic, partitions).map_err(Into::into),
            Broker::External(list) => {
                let admin: AdminClient<DefaultClientContext> =
                    client_config(list, &connection_only(properties))
                        .create()
                        .map_err(|e| failed(e.to_string()))?;
                let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
                let results = admin
                    .create_topics(&[new], &options)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                for result in results {
                    result.map_err(|(_, code)| failed(code.to_string()))?;
                }
                Ok(())
            }
        }
    }
}

/// Runs the sweep for `job`'s event shape; `progress` is told after each point.
pub async fn run(
    job: &Job,
    options: &BenchOptions,
    progress: &Progress,
) -> Result<BenchReport, BenchError> {
    let broker = match &options.brokers {
        None => Broker::Embedded(EmbeddedBroker::start(EMBEDDED_BACKLOG, options.partitions)?),
        Some(list) => Broker::External(list.clone()),
    };
    let report = sweep(job, options, &broker, progress).await;
    let _ = std::fs::remove_dir_all(&options.work_dir);
    drop(broker); // only after every client of it is gone
    report
}

async fn sweep(
    job: &Job,
    options: &BenchOptions,
    broker: &Broker,
    progress: &Progress,
) -> Result<BenchReport, BenchError> {
    let bootstrap = broker.bootstrap();
    let properties = job.kafka_properties()?;
    let nonce = std::process::id();
    let backlog_topic = match broker {
        Broker::Embedded(_) => EMBEDDED_BACKLOG.to_owned(),
        Broker::External(_) => {
            let topic = format!("weir-bench-backlog-{nonce}");
            broker
                .create_topic(&topic, options.partitions, &properties)
                .await?;
            topic
        }
    };
    info!(events = options.backlog, topic = %backlog_topic, "filling the backlog");
    let limits = Limits {
        rate: None,
        count: Some(options.backlog),
        duration: None,
    };
    let filling = Instant::now();
    let backlog = send(job, &bootstrap, &backlog_topic, limits).await?;
    info!(
        events_per_s = (options.backlog as f64 / filling.elapsed().as_secs_f64()) as u64,
        "backlog filled"
    );

    let raw = {
        let (client, topic) = (
            client_config(&bootstrap, &properties),
            backlog_topic.clone(),
        );
        let backlog = backlog.clone();
        tokio::task::spawn_blocking(move || median_consume_rate(&client, &topic, &backlog))
            .await??
    };
    info!(
        events_per_s = raw.rate as u64,
        cpu_ns_per_event = raw.cpu.as_nanos() as u64,
        "raw consume rate"
    );

    let mut points = Vec::new();
    for &size in &options.batch_sizes {
        let dir = options.work_dir.join(format!("b{size}"));
        let drain = Phase {
            job: point_job(job, &dir.join("throughput"), &backlog_topic, size, options)?,
            bootstrap: &bootstrap,
            size,
        };
        info!(batch = size, "throughput phase: draining the backlog");
        let throughput = drain
            .throughput(&backlog, options.seconds_per_point)
            .await?;

        let topic = format!("weir-bench-b{size}-{nonce}");
        broker
            .create_topic(&topic, options.partitions, &properties)
            .await?;
        let offered = Phase {
            job: point_job(job, &dir.join("latency"), &topic, size, options)?,
            bootstrap: &bootstrap,
            size,
        };
        info!(
            batch = size,
            rate = options.rate,
            "latency phase: a fresh topic at the offered rate"
        );
        let latency = offered.latency(options).await?;
        let point = latency.into_point(size, throughput, raw.rate, options.rate);
        progress.advance(format!(
            "batch {size}: {:.0} events/s, p99 {:.0} ms",
            point.throughput,
            ms(point.end_to_end.p99)
        ));
        points.push(point);
    }
    Ok(BenchReport {
        job: job.name.clone(),
        broker: broker.describe(),
        raw_consume: raw.rate,
        raw_cpu: raw.cpu,
        points,
    })
}

/// What was sent: the events, and each partition's end offset.
#[derive(Debug, Clone)]
struct Sent {
    events: u64,
    ends: Offsets,
}

async fn send(job: &Job, bootstrap: &str, topic: &str, limits: Limits) -> Result<Sent, BenchError> {
    let mut generator = Generator::new(job.contract.clone(), Mix::default(), rand::random());
    let never = AtomicBool::new(false);
    let properties = connection_only(&job.kafka_properties()?);
    let mut framing = Framing::for_job(&job.contract, &job.source.format).await?;
    let delivered = generator::produce(
        bootstrap,
        topic,
        &mut generator,
        framing.as_mut(),
        limits,
        &never,
        &properties,
    )
    .await?;
    Ok(Sent {
        events: delivered.len() as u64,
        ends: end_offsets(&delivered),
    })
}

/// The job for one phase of one point: its own topic, consumer group and
/// tables, and batches of exactly `size` events (cut early only by a
/// `max_wait` long enough to fill them at the offered rate).
fn point_job(
    base: &Job,
    dir: &Path,
    topic: &str,
    size: usize,
    options: &BenchOptions,
) -> Result<Job, BenchError> {
    std::fs::create_dir_all(dir).map_err(|source| BenchError::WorkDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut job = base.clone();
    job.source.topics = Topics::single(topic);
    job.source.group = format!("weir-bench-{}", dir.display()).replace(['/', '\\'], "_");
    let ages = (job.storage.hot_max_age, job.storage.warm_max_age);
    job.storage = Storage::parse(&dir.to_string_lossy()).map_err(|e| BenchError::WorkDir {
        path: dir.to_owned(),
        source: std::io::Error::other(e),
    })?;
    (job.storage.hot_max_age, job.storage.warm_max_age) = ages;
    let fill = Duration::from_secs_f64(size as f64 / options.rate);
    job.batching = Batching {
        min_events: size,
        max_events: size,
        max_wait: fill
            .mul_f64(1.5)
            .clamp(base.batching.max_wait, Duration::from_secs(60)),
        max_bytes: base.batching.max_bytes,
        // Each point is one batch size: cut at it, however often.
        interval: Duration::ZERO,
        adaptive: None,
    };
    Ok(job)
}

/// One pipeline run of a point.
struct Phase<'a> {
    job: Job,
    bootstrap: &'a str,
    size: usize,
}

/// What the throughput phase measured.
struct Drained {
    rate: f64,
    poll_cpu: Duration,
}

/// What the latency phase measured.
struct Latency {
    samples: Samples,
    sent: u64,
}

impl Latency {
    fn into_point(self, size: usize, drain: Drained, raw: f64, rate: f64) -> Point {
        let throughput = drain.rate;
        let committed: usize = self.samples.triggers.iter().map(|t| t.events).sum();
        let commits: Vec<Duration> = self.samples.triggers.iter().map(|t| t.commit).collect();
        let batches = self.samples.triggers.len();
        Point {
            batch_events: size,
            throughput,
            ratio: if raw > 0.0 { throughput / raw } else { 0.0 },
            offered: rate,
            committed_share: committed as f64 / self.sent.max(1) as f64,
            end_to_end: Quantiles::of(&self.samples.end_to_end),
            commit: Quantiles::of(&commits),
            batches,
            mean_batch: committed as f64 / batches.max(1) as f64,
            poll_cpu: drain.poll_cpu,
        }
    }
}

/// How long to wait for a phase's events to commit before calling it stalled.
fn drain_timeout(seconds: Duration) -> Duration {
    seconds * 20 + Duration::from_secs(60)
}

impl Phase<'_> {
    async fn start(&self) -> Result<(Arc<Pipeline>, PipelineTask, JobMetrics), BenchError> {
        let metrics = JobMetrics::detached(&self.job.name);
        let pipeline = Pipeline::start(
            &self.job,
            self.bootstrap,
            Faults::default(),
            metrics.clone(),
        );
        let pipeline = Arc::new(pipeline.await?);
        pipeline.stats().keep_samples();
        let task = {
            let pipeline = pipeline.clone();
            tokio::spawn(async move { pipeline.run().await })
        };
        Ok((pipeline, task, metrics))
    }

    /// Events per second committed while draining the backlog, from the first
    /// trigger's commit (the consumer group has joined) to the last, over at
    /// most `seconds` once the first commit is in.
    async fn throughput(&self, backlog: &Sent, seconds: Duration) -> Result<Drained, BenchError> {
        let (pipeline, task, metrics) = self.start().await?;
        let stats = pipeline.stats();
        let timeout = drain_timeout(seconds);
        let deadline = Instant::now() + timeout;
        let running = || !task.is_finished() && Instant::now() < deadline;
        while stats.batches.load(Ordering::Relaxed) == 0 && running() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first = Instant::now();
        while !stats.reached(&backlog.ends) && first.elapsed() < seconds && running() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let samples = finish(pipeline, task).await?;
        if samples.triggers.len() < 2 {
            return Err(BenchError::Stalled {
                batch: self.size,
                what: "the backlog",
                timeout,
            });
        }
        let events: usize = samples.triggers.iter().map(|t| t.events).sum();
        Ok(Drained {
            rate: drain_rate(&samples, self.size),
            poll_cpu: per_event(Duration::from_secs_f64(metrics.poll_cpu.get()), events),
        })
    }

    /// Feeds the topic at the offered rate after a warm-up (the consumer
    /// group joined and the first commit in), then waits for all of it, up
    /// to `seconds_per_point` more. Events still uncommitted then count with
    /// the time they had waited so far: a lower bound, so a pipeline that
    /// falls behind shows its latency growing instead of hiding it.
    async fn latency(&self, options: &BenchOptions) -> Result<Latency, BenchError> {
        let (pipeline, task, _) = self.start().await?;
        let stats = pipeline.stats();
        let warm = Limits {
            rate: None,
            count: Some(self.size as u64),
            duration: None,
        };
        let warm = send(
            &self.job,
            self.bootstrap,
            self.job.source.topics.first(),
            warm,
        )
        .await?;
        let timeout = drain_timeout(options.seconds_per_point);
        let deadline = Instant::now() + timeout;
        if !stats.wait_until_reached(&warm.ends, &task, deadline).await {
            finish(pipeline, task).await?;
            return Err(BenchError::Stalled {
                batch: self.size,
                what: "the warm-up",
                timeout,
            });
        }
        stats.take_samples();
        let limits = Limits {
            rate: Some(options.rate),
            count: None,
            duration: Some(options.seconds_per_point),
        };
        let sent = send(
            &self.job,
            self.bootstrap,
            self.job.source.topics.first(),
            limits,
        )
        .await?;
        let produced = Instant::now();
        let grace = produced + options.seconds_per_point + Duration::from_secs(2);
        stats.wait_until_reached(&sent.ends, &task, grace).await;
        let mut samples = finish(pipeline, task).await?;
        let committed: usize = samples.triggers.iter().map(|t| t.events).sum();
        let missing = (sent.events as usize).saturating_sub(committed);
        samples
            .end_to_end
            .extend(std::iter::repeat_n(produced.elapsed(), missing));
        Ok(Latency {
            samples,
            sent: sent.events,
        })
    }
}

type PipelineTask = tokio::task::JoinHandle<Result<(), PipelineError>>;

/// Stops the pipeline (committing what is cut) and returns its samples.
async fn finish(pipeline: Arc<Pipeline>, task: PipelineTask) -> Result<Samples, BenchError> {
    pipeline.stop();
    task.await??;
    Ok(pipeline.stats().take_samples())
}

/// Events per second between the first trigger's commit and the last full
/// one: the first trigger waited for the group to join, the rest ran back to
/// back, and a partial one at the end waited for the backlog's tail.
fn drain_rate(samples: &Samples, size: usize) -> f64 {
    let full = samples.triggers.iter().rposition(|t| t.events >= size);
    let triggers = match full {
        Some(last) if last > 0 => &samples.triggers[..=last],
        _ => &samples.triggers[..],
    };
    let [first, .., last] = triggers else {
        return 0.0;
    };
    let events: usize = triggers[1..].iter().map(|t| t.events).sum();
    events as f64 / (last.committed - first.committed).as_secs_f64().max(1e-9)
}

/// How librdkafka properties that reach and authenticate with a cluster
/// begin. The job's other properties tune its consumer; given to the bench's
/// producer and admin client, librdkafka would warn about each.
const CONNECTION_PREFIXES: [&str; 7] = [
    "security.",
    "sasl.",
    "ssl.",
    "enable.ssl.",
    "socket.",
    "broker.",
    "client.",
];

/// The job's properties that a producer or an admin client needs too.
fn connection_only(properties: &[(String, String)]) -> Vec<(String, String)> {
    properties
        .iter()
        .filter(|(key, _)| CONNECTION_PREFIXES.iter().any(|p| key.starts_with(p)))
        .cloned()
        .collect()
}

/// Passes of the raw consumer over the backlog. One pass is over in a tenth
/// of a second, and on a small shared machine a single one ranged from 1.0 to
/// 2.4 M events/s: the median of a few keeps the ratio's denominator from
/// being whichever pass the machine was busy during.
const RAW_CONSUME_PASSES: usize = 5;

/// What a consumer that discards everything reads, and what its thread costs.
struct RawConsume {
    rate: f64,
    cpu: Duration,
}

/// The rate and the CPU per event, each the median of [`RAW_CONSUME_PASSES`]
/// passes of [`consume_rate`].
fn median_consume_rate(
    client: &ClientConfig,
    topic: &str,
    sent: &Sent,
) -> Result<RawConsume, BenchError> {
    let passes = (0..RAW_CONSUME_PASSES)
        .map(|_| consume_rate(client, topic, sent))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rates: Vec<f64> = passes.iter().map(|p| p.rate).collect();
    let mut cpus: Vec<Duration> = passes.iter().map(|p| p.cpu).collect();
    rates.sort_by(f64::total_cmp);
    cpus.sort();
    debug!(?rates, ?cpus, "raw consume passes");
    Ok(RawConsume {
        rate: rates[rates.len() / 2],
        cpu: cpus[cpus.len() / 2],
    })
}

/// `cpu` over `events`, zero for none.
fn per_event(cpu: Duration, events: usize) -> Duration {
    cpu.checked_div(u32::try_from(events).unwrap_or(u32::MAX))
        .unwrap_or_default()
}

/// Events per second a consumer reads from `topic` and throws away, from its
/// first message to the last one sent (no consumer group: no join to wait
/// for). Counts what it reads: the embedded broker keeps only the newest few
/// MiB of each partition, so the oldest part of a large backlog may be gone.
fn consume_rate(client: &ClientConfig, topic: &str, sent: &Sent) -> Result<RawConsume, BenchError> {
    let mut config = client.clone();
    config
        .set("group.id", "weir-bench-raw")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    // Prefetching as the pipeline's consumer does, so the two compare.
    bound_prefetch(&mut config);
    let consumer: BaseConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for &p in sent.ends.keys() {
        assignment.add_partition_offset(topic, p.partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let timeout = Duration::from_secs(120);
    let deadline = Instant::now() + timeout;
    let mut read = 0u64;
    let mut first: Option<Instant> = None;
    let cpu = crate::task::thread_cpu();
    // Bench jobs read one topic: a partition's number names it.
    let mut behind: std::collections::BTreeMap<i32, i64> = sent
        .ends
        .iter()
        .map(|(p, &end)| (p.partition, end))
        .collect();
    while !behind.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                read += 1;
                if behind
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    behind.remove(&m.partition());
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "raw consumer"),
            None => {}
        }
    }
    match first {
        Some(first) if behind.is_empty() && read > 1 => Ok(RawConsume {
            rate: (read - 1) as f64 / first.elapsed().as_secs_f64().max(1e-9),
            cpu: per_event(crate::task::thread_cpu() - cpu, read as usize),
        }),
        _ => Err(BenchError::RawConsume {
            read,
            expected: sent.events,
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::stats::TriggerSample;

    #[test]
    fn producers_and_admins_get_only_the_properties_that_reach_the_cluster() {
        let property = |k: &str| (k.to_owned(), "v".to_owned());
        let job = [
            property("security.protocol"),
            property("sasl.mechanisms"),
            property("ssl.ca.location"),
            property("client.id"),
            property("session.timeout.ms"),
            property("fetch.wait.max.ms"),
            property("queued.max.messages.kbytes"),
        ];
        assert_eq!(connection_only(&job), job[..4]);
    }

    #[test]
    fn drain_rate_skips_the_join_and_the_partial_tail() {
        let t0 = Instant::now();
        let trigger = |secs: u64, events: usize| TriggerSample {
            committed: t0 + Duration::from_secs(secs),
            events,
            commit: Duration::from_millis(10),
        };
        let samples = Samples {
            triggers: vec![
                trigger(0, 1000),
                trigger(1, 1000),
                trigger(2, 1000),
                trigger(7, 300),
            ],
            end_to_end: Vec::new(),
        };
        assert_eq!(drain_rate(&samples, 1000), 1000.0);
        // Nothing full after the first: the whole run counts.
        let partial = Samples {
            triggers: vec![trigger(0, 1000), trigger(4, 400)],
            end_to_end: Vec::new(),
        };
        assert_eq!(drain_rate(&partial, 1000), 100.0);
    }
}
