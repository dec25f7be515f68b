//! The commands' arguments as clap parses them, and what turns them into the
//! library's validated options (a bad value is a [`Usage`] error, exit 2):
//! one module per command or family of commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use tracing::{info, warn};

use weir::config::{Choice, Job, Overrides};
use weir::fault::Faults;
use weir::ingest::source::registry::Subjects;
use weir::table::delta::keep_stored_records;

pub mod bench;
pub mod demo;
pub mod produce;
pub mod reprocess;
pub mod run;
pub mod tables;

/// Parses one of `T`'s names, and lists them in help.
pub fn choice<T: Choice>() -> impl TypedValueParser<Value = T> {
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
const DEFAULT_JOB: &str = include_str!("../../jobs/clickstream.toml");

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
pub struct Usage(String);

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

/// Loads `path`, or the built-in example job when there is none.
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
