//! What `weir run` serves on its metrics address: the status page (`/`), the
//! same data as JSON (`/api/status`, which `weir status --from` reads),
//! `/metrics` for Prometheus and `/healthz` for probes.
//!
//! A page is two halves joined per job:
//!
//! - live ([`live`]): figures from the process's own metric registry,
//!   sampled every few seconds into the last ten minutes (events/s, end-to-end
//!   p50/p99, lag per partition), so a chart shows a trend, not one number;
//! - tables ([`crate::cmd::status`]): what `weir status` reads from the
//!   tables and the broker (committed offsets, the watermark and who holds
//!   it, hot partitions, each table's commits and tiers, the DLQ's reasons,
//!   expectations). Reading it costs Delta log reads, so one reading serves
//!   every request for [`TABLES_FRESH`].
//!
//! The page ([`mod@page`]) is rendered on the server and reads without
//! JavaScript; a small script, served inline, refreshes it and reads out
//! chart values under the pointer. Nothing comes from outside the process.

pub mod live;
mod page;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::info;

use self::live::{Figures, History, Point, SAMPLE_EVERY};
use crate::cmd::status::{Status, status};
use crate::config::Job;
use crate::metrics::Metrics;

/// How long one reading of the tables serves requests.
const TABLES_FRESH: Duration = Duration::from_secs(5);

/// Everything the page shows, as `/api/status` serves it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub at: DateTime<Utc>,
    pub jobs: Vec<JobSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSnapshot {
    pub job: String,
    /// `None` while the job runs; otherwise why not (as `/healthz` says).
    pub unhealthy: Option<String>,
    pub live: Figures,
    /// The last minutes, one point per sample interval, oldest first.
    pub history: Vec<Point>,
    /// From the tables and the broker; `None` when they could not be read
    /// (then `tables_error` says why).
    pub tables: Option<Status>,
    pub tables_error: Option<String>,
}

/// One reading of every job's tables, and when it was taken.
type TablesRead = (Instant, Vec<Result<Status, String>>);

/// The state behind every route.
struct Console {
    metrics: Arc<Metrics>,
    jobs: Vec<Job>,
    history: History,
    tables: tokio::sync::Mutex<Option<TablesRead>>,
}

impl Console {
    async fn snapshot(&self) -> Snapshot {
        let tables = self.tables().await;
        let families = self.metrics.gather();
        let healths = self.metrics.healths();
        let jobs = self
            .jobs
            .iter()
            .zip(tables)
            .map(|(job, read)| JobSnapshot {
                job: job.name.clone(),
                unhealthy: healths.get(&job.name).and_then(|h| h.clone().err()),
                live: Figures::read(&families, &job.name),
                history: self.history.points(&job.name),
                tables_error: read.as_ref().err().cloned(),
                tables: read.ok(),
            })
            .collect();
        Snapshot {
            at: Utc::now(),
            jobs,
        }
    }

    /// Each job's table status, read again once the last reading is older
    /// than [`TABLES_FRESH`] (requests meanwhile wait for that one reading).
    async fn tables(&self) -> Vec<Result<Status, String>> {
        let mut cached = self.tables.lock().await;
        if let Some((at, read)) = cached.as_ref()
            && at.elapsed() < TABLES_FRESH
        {
            return read.clone();
        }
        let mut read = Vec::new();
        for job in &self.jobs {
            read.push(status(job).await.map_err(|e| crate::cmd::run::chain(&e)));
        }
        *cached = Some((Instant::now(), read.clone()));
        read
    }
}

/// Serves the console on `listener` until the process ends, sampling the
/// live figures beside it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    jobs: Vec<Job>,
) -> std::io::Result<()> {
    let console = Arc::new(Console {
        metrics,
        jobs,
        history: History::default(),
        tables: tokio::sync::Mutex::new(None),
    });
    let sampler = console.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            sampler.history.sample(&sampler.metrics);
        }
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/api/status", get(api))
        .route("/metrics", get(render))
        .route("/healthz", get(healthz))
        .with_state(console);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving the status page (/), /api/status, /metrics and /healthz");
    }
    axum::serve(listener, app).await
}

async fn page(State(console): State<Arc<Console>>) -> Html<String> {
    Html(page::render(&console.snapshot().await))
}

async fn api(State(console): State<Arc<Console>>) -> impl IntoResponse {
    let body = serde_json::to_string(&console.snapshot().await).expect("a snapshot serializes");
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn render(State(console): State<Arc<Console>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        console.metrics.render(),
    )
}

async fn healthz(State(console): State<Arc<Console>>) -> impl IntoResponse {
    match console.metrics.health() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("asking {url} for the status: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("reading the status {url} served: {source}")]
    Json {
        url: String,
        source: serde_json::Error,
    },
    #[error("no job named {0} runs there")]
    NoSuchJob(String),
}

/// The snapshot a running `weir run` serves at `base` (its metrics address,
/// as `http://host:port`).
pub async fn fetch(base: &str) -> Result<Snapshot, FetchError> {
    let url = format!("{}/api/status", base.trim_end_matches('/'));
    let fail = |source| FetchError::Http {
        url: url.clone(),
        source,
    };
    let response = reqwest::get(&url).await.map_err(fail)?;
    let body = response
        .error_for_status()
        .map_err(fail)?
        .text()
        .await
        .map_err(fail)?;
    serde_json::from_str(&body).map_err(|source| FetchError::Json { url, source })
}

impl Snapshot {
    /// Only the job named `name`.
    pub fn only(mut self, name: &str) -> Result<Self, FetchError> {
        self.jobs.retain(|j| j.job == name);
        if self.jobs.is_empty() {
            return Err(FetchError::NoSuchJob(name.to_owned()));
        }
        Ok(self)
    }
}

impl fmt::Display for JobSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.tables, &self.tables_error) {
            (Some(tables), _) => writeln!(f, "{tables}")?,
            (None, Some(why)) => writeln!(f, "job {}: tables unreadable: {why}", self.job)?,
            (None, None) => writeln!(f, "job {}", self.job)?,
        }
        let live = &self.live;
        let health = self.unhealthy.as_deref().unwrap_or("running");
        write!(
            f,
            "live: {health}; {} events in, {} duplicates, {} restarts, dedup index {} IDs ({} bytes)",
            live.events_in, live.duplicates, live.restarts, live.dedup_entries, live.dedup_bytes
        )?;
        if !live.probes.is_empty() || live.probe_failures > 0 {
            let each: Vec<String> = live
                .probes
                .iter()
                .map(|(p, s)| format!("{p}: {:.0} ms", s * 1e3))
                .collect();
            write!(
                f,
                "\nprobes (send → visible in raw, newest per partition): {}; {} failed",
                each.join(", "),
                live.probe_failures
            )?;
        }
        if let Some(p) = self.history.last() {
            let ms = |s: Option<f64>| s.map_or("-".into(), |s| format!("{:.0} ms", s * 1e3));
            write!(
                f,
                "\nlive: {:.1} events/s, end-to-end p50 {} p99 {} over the last {}s",
                p.events_per_s,
                ms(p.p50),
                ms(p.p99),
                SAMPLE_EVERY.as_secs()
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, job) in self.jobs.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{job}")?;
        }
        Ok(())
    }
}
