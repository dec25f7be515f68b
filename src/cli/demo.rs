//! `weir demo`: a job on the embedded broker with generated traffic.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use weir::cmd::demo::{self, DemoOptions};
use weir::config::Overrides;

use super::{Usage, faults_from_env, load_job, positive};

#[derive(Args)]
pub struct DemoArgs {
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

pub async fn demo_command(args: DemoArgs) -> anyhow::Result<()> {
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
