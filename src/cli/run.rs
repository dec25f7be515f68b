//! `weir run`: the jobs of the given specs (or folders of them) against their brokers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tracing::info;

use weir::cmd::run::Until;
use weir::config::{Brokers, Job};

use super::{JobArgs, Usage, faults_from_env, load_with_registry, stop_on_signal};

#[derive(Args)]
pub struct RunArgs {
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

pub async fn run_command(args: RunArgs) -> anyhow::Result<()> {
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
