//! `weir bench` and `weir tune`: the batch-size sweep, and a recommendation from it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use weir::config::{Brokers, Job, Overrides};

use super::{Usage, load_job, load_with_registry, positive};

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
pub struct BenchArgs {
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
pub struct TuneArgs {
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

pub async fn bench_command(args: BenchArgs) -> anyhow::Result<()> {
    let job = load_job(args.job.as_deref(), &Overrides::default())?;
    sweep(&job, args.rate, &args.sweep).await.map(drop)
}

pub async fn tune_command(args: TuneArgs) -> anyhow::Result<()> {
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
