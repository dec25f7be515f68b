//! The `weir` command line: parses arguments, builds a validated job, and hands
//! over to the library. Exit codes: 0 success, 1 failure, 2 bad usage or bad spec.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use tracing::{info, warn};

use weir::cmd::demo::{self, DemoOptions};
use weir::cmd::query::{self, Format};
use weir::cmd::run::Until;
use weir::cmd::views::{self, Dialect};
use weir::config::{Brokers, Choice, Format as SourceFormat, Job, JobError, KeyFormat, Overrides};
use weir::fault::Faults;
use weir::ingest::source::framing::Framing;
use weir::ingest::source::generator::{self, Generator, Limits, Mix};
use weir::ingest::source::registry::Subjects;
use weir::table::delta::keep_stored_records;
use weir::telemetry::LogFormat;
use weir::upkeep::maintain;
use weir::upkeep::reprocess;

/// Parses one of `T`'s names, and lists them in help.
fn choice<T: Choice>() -> impl TypedValueParser<Value = T> {
    let values = T::ALL.iter().map(|v| {
        let value = PossibleValue::new(v.name());
        match v.help() {
            Some(help) => value.help(help),
            None => value,
        }
    });
    PossibleValuesParser::new(values)
        .map(|name| T::named(&name).expect("clap passes listed names only"))
}

/// The example job `weir demo` and `weir produce` use when given no --job.
const DEFAULT_JOB: &str = include_str!("../jobs/clickstream.toml");

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Kafka topics into Delta Lake tables within seconds, exactly once.",
    long_about = "weir reads a Kafka topic in micro-batches, checks every message against the \
                  job's schema, drops re-sent events by ID, and commits valid events to a Delta \
                  table `raw`, events behind the watermark to `late` and rejected ones (with the \
                  reason) to `dlq`, and each output's rows to its own table, all in one trigger. \
                  Each commit carries the Kafka offsets it covers, so a restart never loses or \
                  duplicates an event."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines (on stderr) for people or as JSON objects.
    #[arg(long, global = true, value_parser = choice::<LogFormat>(), default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job on an embedded, in-process Kafka broker with generated traffic,
    /// then report where every event went. Needs no service.
    Demo(DemoArgs),
    /// Run a job against a real Kafka broker until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Send generated events (with duplicates, late events and malformed messages) to a topic.
    Produce(ProduceArgs),
    /// Run SQL (DataFusion dialect) over a job's tables: `raw`, `dlq`, `late`, and each
    /// output as final values (`<output>__partials` holds the raw partials).
    Query(QueryArgs),
    /// Print SQL views that merge each output's partials into final values, for
    /// DataFusion, DuckDB, Spark SQL or Trino.
    Views(ViewsArgs),
    /// Fold closed windows' partials, merge small files, checkpoint and clean the
    /// Delta log, vacuum: now (--once) or every `maintenance.every` until stopped.
    Maintain(MaintainArgs),
    /// Rebuild outputs for a range of event dates from `raw` (all tiers) with the
    /// job's current definition, replacing their rows in one commit per table and tier.
    Reprocess(ReprocessArgs),
    /// Reprocess a range into a scratch location and compare it with the live
    /// outputs; exits 1 on any difference.
    Verify(VerifyArgs),
    /// Where a job stands, from its tables and its broker (no running process
    /// needed): per partition the committed offset, high watermark, lag and last
    /// commit; hot partitions, the partition holding the watermark, idle ones and a
    /// stalled watermark flagged.
    Status(StatusArgs),
    /// Measure what each batch size costs in latency and buys in throughput,
    /// against the raw consume rate of the same broker; prints a table and
    /// writes a CSV and a PNG of the frontier.
    Bench(BenchArgs),
    /// Run the bench sweep at a job's event shape and input rate and recommend
    /// its batching for a p99 target.
    Tune(TuneArgs),
}

#[derive(Args)]
struct JobArgs {
    /// Override the job's storage root (a path or s3://bucket/prefix); tables go to DIR/hot/<job>/<table>.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Override the job's Kafka bootstrap list (host:port,…).
    #[arg(long, value_name = "BROKERS")]
    brokers: Option<String>,
    /// Override the job's topic.
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
}

impl JobArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            data: self.data.clone(),
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
        }
    }
}

#[derive(Args)]
struct DemoArgs {
    /// Job spec to run [default: the built-in jobs/clickstream.toml].
    #[arg(long, value_name = "PATH")]
    job: Option<PathBuf>,
    /// How long to produce events.
    #[arg(long, default_value_t = 10, value_name = "N")]
    seconds: u64,
    /// Events per second to produce.
    #[arg(long, default_value_t = 2000.0, value_name = "EVENTS_PER_S")]
    rate: f64,
    /// Partitions of the demo topic.
    #[arg(long, default_value_t = 3, value_name = "N")]
    partitions: i32,
    /// Where the tables go [default: ./data]. A directory the demo wrote before is
    /// replaced; one it did not write is refused.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Spread event times evenly over this span before now (e.g. "3days"), oldest
    /// first, instead of following the clock: history to reprocess.
    #[arg(long, value_name = "SPAN", value_parser = humantime::parse_duration)]
    backfill: Option<Duration>,
}

#[derive(Args)]
struct RunArgs {
    /// Job specs (TOML) to run in this process, or directories of them.
    #[arg(value_name = "JOB.toml|DIR", required = true)]
    jobs: Vec<PathBuf>,
    #[command(flatten)]
    job_args: JobArgs,
    /// Where to serve the status page (/), /api/status, /metrics (Prometheus)
    /// and /healthz [default: the jobs' `metrics.addr`, else 127.0.0.1:9898].
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// On SIGTERM/SIGINT, how long to wait for the batches in flight to commit
    /// before abandoning them (nothing is half-committed either way).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// End the run by itself and exit 0, for schedulers: `caught-up` once
    /// the tables hold every message below the high watermarks seen at
    /// start (each job, its assigned partitions), or at a time (RFC 3339,
    /// or a duration from now such as 30m).
    #[arg(long, value_name = "caught-up|TIME", value_parser = Until::parse)]
    until: Option<Until>,
}

#[derive(Args)]
struct QueryArgs {
    /// The job spec whose tables to query.
    #[arg(long, value_name = "PATH")]
    job: PathBuf,
    /// Override the job's storage root (a path or s3://bucket/prefix).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Output format (json: an array of objects).
    #[arg(long, value_parser = choice::<Format>(), default_value = "table")]
    format: Format,
    /// The SQL, e.g. "SELECT _event_date, count(*) FROM raw GROUP BY 1".
    #[arg(value_name = "SQL")]
    sql: String,
}

#[derive(Args)]
struct MaintainArgs {
    /// The job spec whose tables to maintain.
    #[arg(long, value_name = "PATH")]
    job: PathBuf,
    /// Override the job's storage root (a path or s3://bucket/prefix).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// One round, then exit.
    #[arg(long)]
    once: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// The job spec to report on.
    #[arg(long, value_name = "PATH", required_unless_present = "from")]
    job: Option<PathBuf>,
    /// Ask a running `weir run` instead (its metrics address, e.g.
    /// http://127.0.0.1:9898): the tables' view plus its live figures, for
    /// every job it runs, or only `--job`'s.
    #[arg(long, value_name = "URL")]
    from: Option<String>,
    #[command(flatten)]
    job_args: JobArgs,
}

#[derive(Args)]
struct SweepArgs {
    /// Broker to measure (host:port,…) [default: the embedded broker].
    #[arg(long, value_name = "BROKERS")]
    brokers: Option<String>,
    /// Batch sizes (events) to measure, comma-separated.
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_values_t = weir::cmd::bench::DEFAULT_SIZES)]
    batch_sizes: Vec<usize>,
    /// How long each phase of each batch size runs.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    seconds_per_point: f64,
    /// Partitions of the bench topics.
    #[arg(long, default_value_t = 3, value_name = "N")]
    partitions: i32,
    /// Events in the backlog that the raw consumer and each throughput phase read
    /// [default: 100000, or 10 batches of the largest size if more].
    #[arg(long, value_name = "N")]
    backlog: Option<u64>,
    /// Where the CSV goes.
    #[arg(long, value_name = "PATH", default_value = "weir-bench.csv")]
    csv: PathBuf,
    /// Where the PNG of the frontier goes.
    #[arg(long, value_name = "PATH", default_value = "weir-bench.png")]
    png: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// Job whose event shape and outputs to run [default: the built-in jobs/clickstream.toml].
    #[arg(long, value_name = "PATH")]
    job: Option<PathBuf>,
    /// Events per second offered in each latency phase.
    #[arg(long, default_value_t = 50_000.0, value_name = "EVENTS_PER_S")]
    rate: f64,
    #[command(flatten)]
    sweep: SweepArgs,
}

#[derive(Args)]
struct TuneArgs {
    /// The job to tune.
    #[arg(long, value_name = "PATH")]
    job: PathBuf,
    /// The p99 of produced → committed to stay under, in milliseconds.
    #[arg(long, value_name = "MS")]
    target_p99: u64,
    /// The job's input rate, events per second [default: measured on the job's
    /// topic over 10 s; required when the job uses the embedded broker].
    #[arg(long, value_name = "EVENTS_PER_S")]
    rate: Option<f64>,
    #[command(flatten)]
    sweep: SweepArgs,
}

#[derive(Args)]
struct RangeArgs {
    /// The job spec whose outputs to rebuild.
    #[arg(long, value_name = "PATH")]
    job: PathBuf,
    /// Override the job's storage root (a path or s3://bucket/prefix).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// First event date (UTC) of the range, YYYY-MM-DD.
    #[arg(long, value_name = "DATE")]
    from: chrono::NaiveDate,
    /// Last event date (UTC) of the range, included.
    #[arg(long, value_name = "DATE")]
    to: chrono::NaiveDate,
    /// Only this output (repeatable) [default: every output].
    #[arg(long = "output", value_name = "NAME")]
    outputs: Vec<String>,
    /// Memory the sorts and folds over the range may hold; past it they spill
    /// to the system's temporary folder (as do the rebuilt rows, always).
    #[arg(long, value_name = "MIB", default_value_t = reprocess::DEFAULT_MEMORY_MIB,
          value_parser = clap::value_parser!(u32).range(16..).map(|m| m as usize))]
    memory_mib: usize,
}

impl RangeArgs {
    fn memory_bytes(&self) -> usize {
        self.memory_mib << 20
    }
}

#[derive(Args)]
struct ReprocessArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// Print what would be replaced, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace even when a table would lose more than half of its rows in
    /// the range (refused otherwise: a tightened contract or a bug can
    /// empty a range).
    #[arg(long, conflicts_with = "dry_run")]
    force: bool,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// Where to write the reprocessed tables (DIR/<job>/<output>, replaced on
    /// each run) [default: a temporary directory, removed afterwards].
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
}

#[derive(Args)]
struct ViewsArgs {
    /// The job spec whose outputs to describe.
    #[arg(long, value_name = "PATH")]
    job: PathBuf,
    /// Override the job's storage root (table paths in the SQL follow it).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The engine the SQL is for.
    #[arg(long, value_parser = choice::<Dialect>())]
    dialect: Dialect,
}

#[derive(Args)]
struct ProduceArgs {
    /// Kafka bootstrap list (host:port,…).
    #[arg(long, value_name = "BROKERS")]
    brokers: String,
    /// Topic to send to.
    #[arg(long, value_name = "TOPIC")]
    topic: String,
    /// Job spec whose schema shapes the events [default: the built-in clickstream job].
    #[arg(long, value_name = "PATH")]
    job: Option<PathBuf>,
    /// Events per second [default: as fast as the broker takes them].
    #[arg(long, value_name = "EVENTS_PER_S")]
    rate: Option<f64>,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
    /// Share of messages that break the schema contract (0–1).
    #[arg(long, default_value_t = 0.005, value_name = "X")]
    malformed_ratio: f64,
    /// Share of messages that re-send an earlier event (0–1).
    #[arg(long, default_value_t = 0.01, value_name = "Y")]
    duplicate_ratio: f64,
    /// Share of events 10–60 minutes behind the clock, so behind the watermark (0–1).
    #[arg(long, default_value_t = 0.005, value_name = "Z")]
    late_ratio: f64,
    /// Random seed, for a reproducible stream.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Spread event times evenly over this span before now (e.g. "3days"),
    /// oldest first, instead of following the clock; needs --count.
    #[arg(long, value_name = "SPAN", value_parser = humantime::parse_duration, requires = "count")]
    backfill: Option<Duration>,
    /// Write one CSV line per delivered message to FILE: partition, offset,
    /// kind, and the payload (quoted; invalid UTF-8 replaced by U+FFFD).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Extra librdkafka producer property, KEY=VALUE (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    property: Vec<(String, String)>,
    /// How to encode messages [default: the job's source.format]. `avro`,
    /// `protobuf` and `json_schema` register the job's contract in that
    /// format in its source.registry and send the Confluent wire format;
    /// --report still shows each event as JSON.
    #[arg(long, value_parser = ["json", "avro", "protobuf", "json_schema"], value_name = "FORMAT")]
    format: Option<String>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// A finite rate above zero (NaN is not).
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// A failure the user caused by what they asked for (exit 2), not a runtime one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn main() -> ExitCode {
    weir::alloc::set_up_heap();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
        .block_on(cli_main())
}

async fn cli_main() -> ExitCode {
    let cli = Cli::parse();
    weir::telemetry::init_logging(cli.log_format);
    let result = match cli.command {
        Command::Demo(args) => demo_command(args).await,
        Command::Run(args) => run_command(args).await,
        Command::Produce(args) => produce_command(args).await,
        Command::Query(args) => query_command(args).await,
        Command::Views(args) => views_command(args),
        Command::Maintain(args) => maintain_command(args).await,
        Command::Reprocess(args) => reprocess_command(args).await,
        Command::Verify(args) => verify_command(args).await,
        Command::Status(args) => status_command(args).await,
        Command::Bench(args) => bench_command(args).await,
        Command::Tune(args) => tune_command(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: error: {e:#}");
            // A bad spec may surface from inside the pipeline (an output's SQL
            // is only checked by planning it).
            let usage = e.chain().any(|c| {
                c.is::<JobError>() || c.is::<Usage>() || c.is::<weir::table::schema::Incompatible>()
            });
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Loads `path`, or the built-in example job when there is none.
/// Job `path`, its fields from its registry subject where it leaves them
/// out, and the records its `raw` table already stores kept as they are.
fn load_with_registry(path: &Path, overrides: &Overrides) -> anyhow::Result<Job> {
    let mut job = Job::load_with(path, overrides, &Subjects)?;
    if job.contract_from.is_some() {
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| handle.block_on(keep_stored_records(&mut job)))?;
    }
    Ok(job)
}

fn load_job(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Job> {
    match path {
        Some(path) => load_with_registry(path, overrides),
        None => Ok(Job::parse(
            DEFAULT_JOB,
            Path::new("jobs/clickstream.toml (built in)"),
            overrides,
        )?),
    }
}

async fn demo_command(args: DemoArgs) -> anyhow::Result<()> {
    if args.seconds == 0 || !positive(args.rate) || !(1..=64).contains(&args.partitions) {
        bail!(Usage(
            "--seconds must be at least 1, --rate above 0 and --partitions 1–64".into()
        ));
    }
    let overrides = Overrides {
        data: Some(args.data.unwrap_or_else(|| PathBuf::from("data"))),
        ..Overrides::default()
    };
    let job = load_job(args.job.as_deref(), &overrides)?;
    let options = DemoOptions {
        seconds: args.seconds,
        rate: args.rate,
        partitions: args.partitions,
        faults: faults_from_env()?,
        backfill: args.backfill,
        ..DemoOptions::default()
    };
    let summary = demo::run(&job, &options).await?;
    println!("{summary}");
    if !summary.balanced() {
        bail!(
            "the demo's tables do not account for every produced message. The embedded broker \
             keeps about 5 MB per partition and deletes older messages: if weir fell further \
             behind than that, they were deleted unread (lower --rate or use more --partitions)"
        );
    }
    Ok(())
}

async fn run_command(args: RunArgs) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for path in &args.jobs {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading job directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!(Usage(format!(
                    "{}: no *.toml job specs in it",
                    path.display()
                )));
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut jobs: Vec<Job> = Vec::new();
    for file in &files {
        let job = load_with_registry(file, &args.job_args.overrides())?;
        if let Brokers::Embedded = job.source.brokers {
            bail!(Usage(format!(
                "{}: source.brokers is \"embedded\"; `weir run` needs a real broker. \
                 Pass --brokers host:port, or try the job with `weir demo --job {}`",
                job.file.display(),
                job.file.display()
            )));
        }
        if let Some(other) = jobs.iter().find(|j| j.name == job.name) {
            bail!(Usage(format!(
                "{} and {} both name a job `{}`: each job needs its own name (its tables are named by it)",
                other.file.display(),
                job.file.display(),
                job.name
            )));
        }
        jobs.push(job);
    }
    let mut addrs: Vec<_> = jobs.iter().filter_map(|j| j.metrics_addr).collect();
    addrs.sort();
    addrs.dedup();
    let metrics_addr = match (args.metrics_addr, addrs.as_slice()) {
        (Some(addr), _) => addr,
        (None, []) => weir::metrics::DEFAULT_ADDR.parse().expect("a valid address"),
        (None, [addr]) => *addr,
        (None, _) => bail!(Usage(
            "the jobs give different metrics.addr values; one process serves one: pass --metrics-addr".into()
        )),
    };
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(stop_on_signal(stop.clone()));
    let options = weir::cmd::run::RunOptions {
        shutdown_timeout: args.shutdown_timeout,
        metrics_addr,
        until: args.until,
    };
    info!(jobs = jobs.len(), metrics = %metrics_addr, "running; SIGINT or SIGTERM stops after the batches in flight");
    weir::cmd::run::run(jobs, options, faults_from_env()?, stop).await?;
    Ok(())
}

/// The fault plan in `WEIR_FAULTS`; a malformed plan is a usage error.
fn faults_from_env() -> Result<Faults, Usage> {
    Faults::from_env().map_err(|e| Usage(e.to_string()))
}

/// Sets `stop` on the first SIGINT or SIGTERM.
async fn stop_on_signal(stop: Arc<AtomicBool>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("stop requested; committing the batch in flight, then exiting");
    stop.store(true, Ordering::Relaxed);
}

async fn query_command(args: QueryArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data: args.data,
        ..Overrides::default()
    };
    let job = load_with_registry(&args.job, &overrides)?;
    let (schema, batches) = query::run(&job, &args.sql).await.map_err(|e| {
        if let (true, query::QueryError::Sql(sql)) = (e.is_usage(), &e) {
            anyhow::Error::new(Usage(sql.find_root().to_string()))
        } else {
            anyhow::Error::new(e)
        }
    })?;
    print!("{}", query::render(&schema, &batches, args.format)?);
    Ok(())
}

async fn maintain_command(args: MaintainArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data: args.data,
        ..Overrides::default()
    };
    let job = load_with_registry(&args.job, &overrides)?;
    let faults = faults_from_env()?;
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(stop_on_signal(stop.clone()));
    loop {
        println!("{}", maintain::run_once(&job, &faults).await?);
        if args.once {
            return Ok(());
        }
        let next = tokio::time::Instant::now() + job.maintenance.every;
        while tokio::time::Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The job, range and outputs a reprocess or verify works on.
async fn range_request(
    args: &RangeArgs,
) -> anyhow::Result<(Job, reprocess::DateRange, Vec<reprocess::Target>)> {
    let overrides = Overrides {
        data: args.data.clone(),
        ..Overrides::default()
    };
    let job = load_with_registry(&args.job, &overrides)?;
    let range = reprocess::DateRange::new(args.from, args.to).map_err(reprocess_failure)?;
    let targets = reprocess::targets(&job, &args.outputs)
        .await
        .map_err(reprocess_failure)?;
    Ok((job, range, targets))
}

/// A reprocess error, as a usage error (exit 2) where the request is wrong.
fn reprocess_failure(e: reprocess::ReprocessError) -> anyhow::Error {
    if e.is_usage() {
        anyhow::Error::new(Usage(e.to_string()))
    } else {
        e.into()
    }
}

async fn reprocess_command(args: ReprocessArgs) -> anyhow::Result<()> {
    let (job, range, targets) = range_request(&args.range).await?;
    let faults = faults_from_env()?;
    let mode = match (args.dry_run, args.force) {
        (true, _) => reprocess::Mode::DryRun,
        (false, true) => reprocess::Mode::Force,
        (false, false) => reprocess::Mode::Replace,
    };
    let report = reprocess::reprocess(
        &job,
        range,
        &targets,
        mode,
        args.range.memory_bytes(),
        &faults,
    )
    .await
    .map_err(reprocess_failure)?;
    println!("{report}");
    Ok(())
}

async fn verify_command(args: VerifyArgs) -> anyhow::Result<()> {
    let (job, range, targets) = range_request(&args.range).await?;
    let (scratch, temporary) = match args.scratch {
        Some(dir) => (dir, false),
        None => (
            std::env::temp_dir().join(format!("weir-verify-{}-{}", job.name, std::process::id())),
            true,
        ),
    };
    let result =
        reprocess::verify(&job, range, &targets, &scratch, args.range.memory_bytes()).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let report = result?;
    println!("{report}");
    match report.differences() {
        0 => Ok(()),
        n => bail!("{n} differences between the live outputs and {range} reprocessed"),
    }
}

async fn status_command(args: StatusArgs) -> anyhow::Result<()> {
    let job = match &args.job {
        Some(path) => Some(load_with_registry(path, &args.job_args.overrides())?),
        None => None,
    };
    match (args.from, job) {
        (Some(url), job) => {
            let mut snapshot = weir::cmd::console::fetch(&url).await?;
            if let Some(job) = job {
                snapshot = snapshot.only(&job.name)?;
            }
            println!("{snapshot}");
        }
        (None, Some(job)) => println!("{}", weir::cmd::status::status(&job).await?),
        (None, None) => unreachable!("clap requires --job without --from"),
    }
    Ok(())
}

/// Runs the sweep and writes its CSV and PNG.
async fn sweep(
    job: &Job,
    rate: f64,
    args: &SweepArgs,
) -> anyhow::Result<weir::cmd::bench::BenchReport> {
    let sizes_ok = !args.batch_sizes.is_empty()
        && args.batch_sizes.iter().all(|n| (1..=1_000_000).contains(n));
    if !sizes_ok
        || !positive(rate)
        || !positive(args.seconds_per_point)
        || !(1..=64).contains(&args.partitions)
    {
        bail!(Usage(
            "--batch-sizes must list sizes of 1–1000000 events, --rate and --seconds-per-point be above 0, --partitions 1–64".into()
        ));
    }
    let largest = args.batch_sizes.iter().copied().max().unwrap_or(0) as u64;
    let options = weir::cmd::bench::BenchOptions {
        batch_sizes: args.batch_sizes.clone(),
        seconds_per_point: Duration::from_secs_f64(args.seconds_per_point),
        rate,
        partitions: args.partitions,
        backlog: args.backlog.unwrap_or((largest * 10).max(100_000)),
        brokers: args.brokers.clone(),
        work_dir: std::env::temp_dir().join(format!("weir-bench-{}", std::process::id())),
    };
    let progress = weir::telemetry::Progress::new(options.batch_sizes.len(), "batch sizes");
    let report = weir::cmd::bench::run(job, &options, &progress).await;
    progress.finish();
    let report = report?;
    report.write(&args.csv, &args.png)?;
    println!("{report}");
    println!("wrote {} and {}", args.csv.display(), args.png.display());
    Ok(report)
}

async fn bench_command(args: BenchArgs) -> anyhow::Result<()> {
    let job = load_job(args.job.as_deref(), &Overrides::default())?;
    sweep(&job, args.rate, &args.sweep).await.map(drop)
}

async fn tune_command(args: TuneArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        brokers: args.sweep.brokers.clone(),
        ..Overrides::default()
    };
    let job = load_with_registry(&args.job, &overrides)?;
    let rate = match (args.rate, &job.source.brokers) {
        (Some(rate), _) => rate,
        (None, Brokers::Embedded) => bail!(Usage(
            "the job reads the embedded broker, which has no real input rate: pass --rate".into()
        )),
        (None, Brokers::List(list)) => {
            let (bootstrap, probed) = (list.clone(), job.clone());
            eprintln!(
                "measuring the input rate of `{}` over 10 s…",
                job.source.topics
            );
            let rate = tokio::task::spawn_blocking(move || {
                weir::cmd::bench::tune::measure_rate(&probed, &bootstrap, Duration::from_secs(10))
            })
            .await??;
            if !positive(rate) {
                bail!(Usage(format!(
                    "nothing arrived on `{}` in 10 s: pass --rate",
                    job.source.topics
                )));
            }
            rate
        }
    };
    let mut sweep_args = args.sweep;
    if let (None, Brokers::List(list)) = (&sweep_args.brokers, &job.source.brokers) {
        sweep_args.brokers = Some(list.clone());
    }
    let report = sweep(&job, rate, &sweep_args).await?;
    let target = Duration::from_millis(args.target_p99);
    let recommendation = weir::cmd::bench::tune::recommend(&report, target)
        .context("the sweep measured no batch size")?;
    println!(
        "\nrecommended for p99 ≤ {} ms at {rate:.0} events/s:\n{recommendation}",
        args.target_p99
    );
    Ok(())
}

fn views_command(args: ViewsArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data: args.data,
        ..Overrides::default()
    };
    let job = load_with_registry(&args.job, &overrides)?;
    print!("{}", views::render(&job, args.dialect));
    Ok(())
}

async fn produce_command(args: ProduceArgs) -> anyhow::Result<()> {
    let ratios = [args.malformed_ratio, args.duplicate_ratio, args.late_ratio];
    let ratios_ok =
        ratios.iter().all(|r| (0.0..=1.0).contains(r)) && ratios.iter().sum::<f64>() <= 1.0;
    if !ratios_ok || args.rate.is_some_and(|r| !positive(r)) {
        bail!(Usage(
            "--malformed-ratio, --duplicate-ratio and --late-ratio must be in 0–1 (sum at most 1), \
             --rate above 0"
                .into()
        ));
    }
    let job = load_job(args.job.as_deref(), &Overrides::default())?;
    let mix = Mix {
        malformed_ratio: args.malformed_ratio,
        duplicate_ratio: args.duplicate_ratio,
        late_ratio: args.late_ratio,
    };
    let format = match (args.format.as_deref(), job.source.format.registry()) {
        (None, _) => job.source.format.clone(),
        (Some("json"), _) => SourceFormat::Json,
        (Some(format), None) => bail!(Usage(format!(
            "--format {format} needs a job whose source.registry says where to register its \
             schema (pass --job)"
        ))),
        (Some("avro"), Some(registry)) => SourceFormat::Avro(registry.clone()),
        (Some("protobuf"), Some(registry)) => SourceFormat::Protobuf(registry.clone()),
        (Some(_), Some(registry)) => SourceFormat::JsonSchema(registry.clone()),
    };
    if let (Some(from), Some(_)) = (&job.contract_from, format.registry()) {
        bail!(Usage(format!(
            "the job's fields come from subject `{}` (schema ID {}), and weir produce registers              a schema made from a spec's fields, which would replace it: produce with your own              serializer, or pass --format json",
            from.subject, from.schema_id
        )));
    }
    if matches!(job.contract.kafka.key, Some(KeyFormat::Avro(_))) {
        bail!(Usage(
            "the job reads Avro keys (source.key_format = \"avro\"), and weir produce sends \
             text keys, which it would refuse: produce with your own key serializer"
                .into()
        ));
    }
    let mut framing = Framing::for_job(&job.contract, &format).await?;
    let mut generator = Generator::new(job.contract, mix, args.seed.unwrap_or_else(rand::random));
    if let (Some(span), Some(count)) = (args.backfill, args.count) {
        generator = generator.backfill(span, count);
    }
    let limits = Limits {
        rate: args.rate,
        count: args.count,
        duration: args.seconds.map(Duration::from_secs),
    };
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(stop_on_signal(stop.clone()));
    let delivered = generator::produce(
        &args.brokers,
        &args.topic,
        &mut generator,
        framing.as_mut(),
        limits,
        &stop,
        &args.property,
    )
    .await?;
    if let Some(path) = &args.report {
        let mut csv = String::from("partition,offset,kind,payload\n");
        for d in &delivered {
            let payload = String::from_utf8_lossy(&d.payload).replace('"', "\"\"");
            csv.push_str(&format!(
                "{},{},{},\"{payload}\"\n",
                d.partition,
                d.offset,
                d.kind.label()
            ));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    let malformed = delivered.iter().filter(|d| !d.kind.is_valid()).count();
    println!(
        "produced {} messages to {} ({} malformed)",
        delivered.len(),
        args.topic,
        malformed
    );
    Ok(())
}
