//! `weir reprocess` and `weir verify`: a range of event dates rebuilt from `raw`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use clap::builder::TypedValueParser;

use weir::config::{Job, Overrides};
use weir::upkeep::reprocess;

use super::{Usage, faults_from_env, load_with_registry};

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
pub struct ReprocessArgs {
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
pub struct VerifyArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// Where to write the reprocessed tables (DIR/<job>/<output>, replaced on
    /// each run) [default: a temporary directory, removed afterwards].
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
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

pub async fn reprocess_command(args: ReprocessArgs) -> anyhow::Result<()> {
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

pub async fn verify_command(args: VerifyArgs) -> anyhow::Result<()> {
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
