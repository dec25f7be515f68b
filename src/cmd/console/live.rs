//! The live half of the status page: a job's figures read from the
//! process's metric registry (the very series `/metrics` serves, so the page
//! and a Prometheus scrape never disagree), sampled every few seconds into a
//! short history from which rates and latency percentiles over each interval
//! are derived, as `rate()` and `histogram_quantile()` would.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::proto::{Metric, MetricFamily};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// How often the history takes a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: ten minutes at [`SAMPLE_EVERY`].
const KEPT: usize = 120;
/// The end-to-end clock the page charts: Kafka's timestamp to commit, what
/// a reader of the tables waits.
const CLOCK: &str = "kafka";

/// A job's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub events_in: u64,
    pub duplicates: u64,
    pub restarts: u64,
    /// Times the poller paused its partitions on a full queue.
    pub pauses: u64,
    /// Whether the partitions are paused now.
    pub paused: bool,
    pub dedup_entries: i64,
    pub dedup_bytes: i64,
    /// Seconds since the epoch; `None` before the first event.
    pub watermark: Option<f64>,
    /// Seconds since the epoch; `None` before the first round finished.
    pub last_maintenance: Option<f64>,
    /// Per queue between stages: (batches waiting, capacity).
    pub queues: BTreeMap<String, (i64, i64)>,
    /// Rows committed since the process started, per table.
    pub rows_out: BTreeMap<String, u64>,
    /// Per partition (as metrics label it): high watermark minus the next
    /// offset every table holds.
    pub lag: BTreeMap<String, i64>,
    /// Per table: log versions not yet covered by a checkpoint.
    pub checkpoint_lag: BTreeMap<String, i64>,
    /// Per partition: seconds from its newest visible latency probe's send
    /// to its commit in raw (only with `probes.every`).
    pub probes: BTreeMap<String, f64>,
    pub probe_failures: u64,
    /// The end-to-end histogram: (upper bound in seconds, cumulative count),
    /// and the count of every observation.
    pub latency: Vec<(f64, u64)>,
    pub latency_count: u64,
}

impl Figures {
    /// `job`'s figures from a gather of the registry.
    pub fn read(families: &[MetricFamily], job: &str) -> Self {
        let mut f = Figures::default();
        for family in families {
            for m in family.get_metric() {
                if label(m, "job") == Some(job) {
                    f.take(family.name(), m);
                }
            }
        }
        f
    }

    fn take(&mut self, name: &str, m: &Metric) {
        let counter = || m.get_counter().get_value() as u64;
        let gauge = || m.get_gauge().get_value();
        let partition = || label(m, "partition").map(str::to_owned);
        let named = |key: &str| label(m, key).unwrap_or_default().to_owned();
        match name {
            "weir_events_in_total" => self.events_in = counter(),
            "weir_duplicates_total" => self.duplicates = counter(),
            "weir_restarts_total" => self.restarts = counter(),
            "weir_pauses_total" => self.pauses = counter(),
            "weir_partitions_paused" => self.paused = gauge() > 0.0,
            "weir_dedup_index_entries" => self.dedup_entries = gauge() as i64,
            "weir_dedup_index_bytes" => self.dedup_bytes = gauge() as i64,
            "weir_watermark_seconds" => self.watermark = Some(gauge()).filter(|w| *w > 0.0),
            "weir_last_maintenance_timestamp_seconds" => {
                self.last_maintenance = Some(gauge()).filter(|t| *t > 0.0)
            }
            "weir_queue_batches" => {
                self.queues.entry(named("queue")).or_default().0 = gauge() as i64
            }
            "weir_queue_capacity" => {
                self.queues.entry(named("queue")).or_default().1 = gauge() as i64
            }
            "weir_rows_out_total" => {
                self.rows_out.insert(named("table"), counter());
            }
            "weir_checkpoint_lag_versions" => {
                self.checkpoint_lag.insert(named("table"), gauge() as i64);
            }
            "weir_consumer_lag" => {
                if let Some(p) = partition() {
                    self.lag.insert(p, gauge() as i64);
                }
            }
            "weir_probe_last_latency_seconds" => {
                if let Some(p) = partition() {
                    self.probes.insert(p, gauge());
                }
            }
            "weir_probe_failures_total" => self.probe_failures = counter(),
            "weir_end_to_end_seconds" if label(m, "clock") == Some(CLOCK) => {
                let h = m.get_histogram();
                self.latency = h
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect();
                self.latency_count = h.get_sample_count();
            }
            _ => {}
        }
    }

    pub fn total_lag(&self) -> i64 {
        self.lag.values().sum()
    }

    /// The slowest partition's newest probe latency, in seconds.
    pub fn slowest_probe(&self) -> Option<f64> {
        self.probes.values().copied().reduce(f64::max)
    }
}

fn label<'a>(m: &'a Metric, name: &str) -> Option<&'a str> {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
}

/// What happened between two samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The end of the interval.
    pub at: DateTime<Utc>,
    pub events_per_s: f64,
    /// End-to-end latency percentiles (seconds) of the events committed in
    /// the interval; `None` when none was.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Per partition lag at the end of the interval.
    pub lag: BTreeMap<String, i64>,
}

impl Point {
    fn between(before: &Sample, after: &Sample) -> Self {
        let seconds = (after.0 - before.0).as_seconds_f64().max(1e-3);
        let events = after.1.events_in.saturating_sub(before.1.events_in);
        let delta = histogram_delta(&before.1, &after.1);
        Point {
            at: after.0,
            events_per_s: events as f64 / seconds,
            p50: quantile(&delta, 0.5),
            p99: quantile(&delta, 0.99),
            lag: after.1.lag.clone(),
        }
    }
}

/// The observations between two samples, per bucket (cumulative), with the
/// count of all of them last (`+Inf`).
fn histogram_delta(before: &Figures, after: &Figures) -> Vec<(f64, u64)> {
    let earlier = |i: usize| before.latency.get(i).map_or(0, |b| b.1);
    let mut delta: Vec<(f64, u64)> = after
        .latency
        .iter()
        .enumerate()
        .map(|(i, &(bound, count))| (bound, count.saturating_sub(earlier(i))))
        .collect();
    let all = after.latency_count.saturating_sub(before.latency_count);
    delta.push((f64::INFINITY, all));
    delta
}

/// The `q` quantile of a cumulative histogram, interpolated linearly inside
/// its bucket as Prometheus's `histogram_quantile` does; in the `+Inf`
/// bucket, the highest finite bound.
fn quantile(cumulative: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = (0.0, 0u64);
    for &(bound, count) in cumulative {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return Some(below.0);
            }
            let inside = (count - below.1) as f64;
            let share = if inside > 0.0 {
                (rank - below.1 as f64) / inside
            } else {
                1.0
            };
            return Some(below.0 + (bound - below.0) * share);
        }
        below = (bound, count);
    }
    Some(below.0)
}

/// Figures and when they were read.
type Sample = (DateTime<Utc>, Figures);

/// The last minutes of every job's figures.
#[derive(Default)]
pub struct History {
    samples: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl History {
    /// Takes a sample of every job `metrics` knows.
    pub fn sample(&self, metrics: &Metrics) {
        let families = metrics.gather();
        let now = Utc::now();
        let mut samples = self.samples.lock().unwrap();
        for job in metrics.healths().into_keys() {
            let kept = samples.entry(job.clone()).or_default();
            if kept.len() == KEPT {
                kept.pop_front();
            }
            kept.push_back((now, Figures::read(&families, &job)));
        }
    }

    /// `job`'s intervals, oldest first.
    pub fn points(&self, job: &str) -> Vec<Point> {
        let samples = self.samples.lock().unwrap();
        let Some(kept) = samples.get(job) else {
            return Vec::new();
        };
        kept.iter()
            .zip(kept.iter().skip(1))
            .map(|(before, after)| Point::between(before, after))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket_as_prometheus_does() {
        // 100 observations: 50 up to 0.1 s, 40 more up to 0.5 s, 10 beyond.
        let h = [(0.1, 50), (0.5, 90), (1.0, 90), (f64::INFINITY, 100)];
        assert_eq!(quantile(&h, 0.5), Some(0.1));
        let p70 = quantile(&h, 0.7).unwrap();
        assert!((p70 - 0.3).abs() < 1e-9, "{p70}");
        // The p99 is in +Inf: the highest finite bound, as Prometheus says.
        assert_eq!(quantile(&h, 0.99), Some(1.0));
        assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 0)], 0.5), None);
    }

    #[test]
    fn figures_and_intervals_come_from_the_registry() {
        let metrics = Metrics::new();
        let job = metrics.job("clicks");
        let _other = metrics.job("other");
        let history = History::default();
        history.sample(&metrics);
        job.events_in.inc_by(500);
        job.partition("2", Some(40), Some(10));
        let latency = job.end_to_end(CLOCK);
        (0..99).for_each(|_| latency.observe(0.02));
        latency.observe(20.0);
        history.sample(&metrics);

        let now = Figures::read(&metrics.gather(), "clicks");
        assert_eq!(now.events_in, 500);
        assert_eq!(now.lag, BTreeMap::from([("2".to_owned(), 30)]));
        assert_eq!(Figures::read(&metrics.gather(), "other").events_in, 0);
        let points = history.points("clicks");
        assert_eq!(points.len(), 1);
        assert!(points[0].events_per_s > 0.0);
        let p50 = points[0].p50.unwrap();
        assert!(p50 > 0.01 && p50 <= 0.025, "{p50}");
        let p99 = points[0].p99.unwrap();
        assert!(p99 <= 0.025, "{p99}");
        assert_eq!(points[0].lag, BTreeMap::from([("2".to_owned(), 30)]));
        assert!(history.points("nobody").is_empty());
    }
}
