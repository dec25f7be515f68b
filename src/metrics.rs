//! Metrics and health: what an operator watches a long-running job by.
//!
//! One Prometheus registry per process; every series carries the job's name, so
//! several jobs under one supervisor share it. `/metrics` serves the text
//! format and `/healthz` says whether every job is running (not waiting to
//! restart). Nothing secret is ever a label: only job names, table names,
//! stages and partition numbers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The default address of `/metrics` and `/healthz`: loopback only, unless
/// the operator says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9898";

/// Latency buckets (seconds): 1 ms to 10 min.
const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];
/// Batch size buckets (events).
const SIZES: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// The process's registry and every metric family weir reports.
pub struct Metrics {
    registry: Registry,
    events_in: IntCounterVec,
    rows_out: IntCounterVec,
    duplicates: IntCounterVec,
    replayed: IntCounterVec,
    batch_events: HistogramVec,
    batch_cap: IntGaugeVec,
    stage_seconds: HistogramVec,
    poll_cpu: CounterVec,
    end_to_end_seconds: HistogramVec,
    lag: IntGaugeVec,
    high_watermark: IntGaugeVec,
    next_offset: IntGaugeVec,
    watermark: GaugeVec,
    dedup_entries: IntGaugeVec,
    dedup_bytes: IntGaugeVec,
    commit_retries: IntCounterVec,
    commit_conflicts: IntCounterVec,
    restarts: IntCounterVec,
    skipped_offsets: IntCounterVec,
    expectation_breaches: IntCounterVec,
    monitor_breaches: IntCounterVec,
    monitor_observed: GaugeVec,
    checkpoint_lag: IntGaugeVec,
    queue_fill: IntGaugeVec,
    queue_capacity: IntGaugeVec,
    paused: IntGaugeVec,
    pauses: IntCounterVec,
    registry_retries: IntCounterVec,
    last_maintenance: GaugeVec,
    probe_latency: HistogramVec,
    probe_last: GaugeVec,
    probe_failures: IntCounterVec,
    lookup_rows: IntGaugeVec,
    lookup_loads: IntCounterVec,
    lookup_failures: IntCounterVec,
    health: Mutex<BTreeMap<String, Result<(), String>>>,
}

/// Registers `metric`, made from names and help texts fixed in this file.
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn counter_f64(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    register(registry, CounterVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn gauge_f64(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(registry, GaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        let watermark = gauge_f64(
            &r,
            "weir_watermark_seconds",
            "The job's watermark, in seconds since the epoch",
            &["job"],
        );
        Arc::new(Self {
            events_in: counter(
                &r,
                "weir_events_in_total",
                "Kafka messages consumed",
                &["job"],
            ),
            rows_out: counter(
                &r,
                "weir_rows_out_total",
                "Rows committed, per table (raw, dlq, late and each output)",
                &["job", "table"],
            ),
            duplicates: counter(
                &r,
                "weir_duplicates_total",
                "Re-sent events dropped by event ID",
                &["job"],
            ),
            replayed: counter(
                &r,
                "weir_replayed_total",
                "Re-read rows the tables already held (after a restart or rebalance)",
                &["job"],
            ),
            batch_events: histogram(
                &r,
                "weir_batch_events",
                "Messages per micro-batch",
                &["job"],
                SIZES,
            ),
            batch_cap: gauge(
                &r,
                "weir_batch_cap_events",
                "The most events a micro-batch may take now: batching.max_events, or what adaptive batching chose",
                &["job"],
            ),
            stage_seconds: histogram(
                &r,
                "weir_stage_seconds",
                "Time per micro-batch in each stage (poll, decode, dedup, transform, commit)",
                &["job", "stage"],
                LATENCY,
            ),
            poll_cpu: counter_f64(
                &r,
                "weir_poll_cpu_seconds_total",
                "CPU time of the poll thread, which reads every partition of the process: near one second per second, the consumer bounds the process whatever its cores",
                &["job"],
            ),
            end_to_end_seconds: histogram(
                &r,
                "weir_end_to_end_seconds",
                "Per event, from its event time (clock=event) or Kafka timestamp (clock=kafka) to the commit of its trigger",
                &["job", "clock"],
                LATENCY,
            ),
            lag: gauge(
                &r,
                "weir_consumer_lag",
                "Per partition: the broker's high watermark minus the next offset to read",
                &["job", "partition"],
            ),
            high_watermark: gauge(
                &r,
                "weir_partition_high_watermark",
                "Per partition: the broker's high watermark",
                &["job", "partition"],
            ),
            next_offset: gauge(
                &r,
                "weir_partition_next_offset",
                "Per partition: the next offset every table holds",
                &["job", "partition"],
            ),
            watermark,
            dedup_entries: gauge(
                &r,
                "weir_dedup_index_entries",
                "Event IDs the dedup index remembers",
                &["job"],
            ),
            dedup_bytes: gauge(
                &r,
                "weir_dedup_index_bytes",
                "Approximate memory the dedup index holds",
                &["job"],
            ),
            commit_retries: counter(
                &r,
                "weir_commit_retries_total",
                "Delta commits that had to be rebased on a concurrent writer's commit",
                &["job"],
            ),
            skipped_offsets: counter(
                &r,
                "weir_skipped_offsets_total",
                "Per partition: offsets the broker deleted before weir read them, gone past with source.on_data_loss = skip",
                &["job", "partition"],
            ),
            expectation_breaches: counter(
                &r,
                "weir_expectation_breaches_total",
                "Per expectation: committed events that broke it (action: warn, they landed; drop, they went to the DLQ)",
                &["job", "rule", "action"],
            ),
            monitor_breaches: counter(
                &r,
                "weir_monitor_breaches_total",
                "Per monitor: windows whose figure fell outside its bounds",
                &["job", "monitor"],
            ),
            monitor_observed: gauge_f64(
                &r,
                "weir_monitor_observed",
                "Per monitor: the figure of the last window that broke its bounds",
                &["job", "monitor"],
            ),
            checkpoint_lag: gauge(
                &r,
                "weir_checkpoint_lag_versions",
                "Per table: log versions asked to be checkpointed past the newest checkpoint written (about the checkpoint interval while checkpoints keep up)",
                &["job", "table"],
            ),
            commit_conflicts: counter(
                &r,
                "weir_commit_conflicts_total",
                "Delta commits refused by a conflicting concurrent commit (e.g. a fenced writer)",
                &["job"],
            ),
            restarts: counter(
                &r,
                "weir_restarts_total",
                "Times the supervisor restarted the job after an error",
                &["job"],
            ),
            queue_fill: gauge(
                &r,
                "weir_queue_batches",
                "Micro-batches waiting between two stages",
                &["job", "queue"],
            ),
            queue_capacity: gauge(
                &r,
                "weir_queue_capacity",
                "Micro-batches a queue holds before the stage before it waits (the poller pauses its partitions)",
                &["job", "queue"],
            ),
            paused: gauge(
                &r,
                "weir_partitions_paused",
                "1 while the poller holds its partitions paused because the queue is full",
                &["job"],
            ),
            pauses: counter(
                &r,
                "weir_pauses_total",
                "Times the poller paused its partitions because the queue stayed full (a pause shorter than a scrape interval shows here, not in weir_partitions_paused)",
                &["job"],
            ),
            registry_retries: counter(
                &r,
                "weir_registry_retries_total",
                "Tries of the schema registry that failed while a micro-batch waited for a writer schema",
                &["job"],
            ),
            last_maintenance: gauge_f64(
                &r,
                "weir_last_maintenance_timestamp_seconds",
                "When the job's last maintenance round (tier moves, merges, vacuum) finished, in seconds since the epoch",
                &["job"],
            ),
            probe_latency: histogram(
                &r,
                "weir_probe_latency_seconds",
                "Per latency probe (probes.every): from its send to its offset held by raw's committed Delta log, read back as a reader would",
                &["job"],
                LATENCY,
            ),
            probe_last: gauge_f64(
                &r,
                "weir_probe_last_latency_seconds",
                "Per partition: the latency of its newest probe that became visible",
                &["job", "partition"],
            ),
            probe_failures: counter(
                &r,
                "weir_probe_failures_total",
                "Latency probes that could not be sent, or were not visible in raw within their deadline",
                &["job"],
            ),
            lookup_rows: gauge(
                &r,
                "weir_lookup_rows",
                "Per lookup: the rows of the version the outputs read",
                &["job", "lookup"],
            ),
            lookup_loads: counter(
                &r,
                "weir_lookup_loads_total",
                "Per lookup: versions taken into the outputs (at start and at each refresh that found a new one)",
                &["job", "lookup"],
            ),
            lookup_failures: counter(
                &r,
                "weir_lookup_refresh_failures_total",
                "Per lookup: refreshes that kept the last good version (the source unreadable, its key repeated or null, its columns changed)",
                &["job", "lookup"],
            ),
            registry: r,
            health: Mutex::new(BTreeMap::new()),
        })
    }

    /// The handles of one job's series.
    pub fn job(self: &Arc<Self>, job: &str) -> JobMetrics {
        self.health
            .lock()
            .unwrap()
            .insert(job.to_owned(), Err("starting".into()));
        JobMetrics {
            job: job.to_owned(),
            metrics: self.clone(),
            events_in: self.events_in.with_label_values(&[job]),
            duplicates: self.duplicates.with_label_values(&[job]),
            replayed: self.replayed.with_label_values(&[job]),
            batch_events: self.batch_events.with_label_values(&[job]),
            batch_cap: self.batch_cap.with_label_values(&[job]),
            watermark: self.watermark.with_label_values(&[job]),
            dedup_entries: self.dedup_entries.with_label_values(&[job]),
            dedup_bytes: self.dedup_bytes.with_label_values(&[job]),
            commit_retries: self.commit_retries.with_label_values(&[job]),
            commit_conflicts: self.commit_conflicts.with_label_values(&[job]),
            restarts: self.restarts.with_label_values(&[job]),
            paused: self.paused.with_label_values(&[job]),
            pauses: self.pauses.with_label_values(&[job]),
            registry_retries: self.registry_retries.with_label_values(&[job]),
            last_maintenance: self.last_maintenance.with_label_values(&[job]),
            probe_latency: self.probe_latency.with_label_values(&[job]),
            probe_failures: self.probe_failures.with_label_values(&[job]),
            poll_cpu: self.poll_cpu.with_label_values(&[job]),
        }
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Every series, as a scrape would read them.
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }

    /// Per job: running, or why not.
    pub fn healths(&self) -> BTreeMap<String, Result<(), String>> {
        self.health.lock().unwrap().clone()
    }

    /// `Ok` when every job runs; otherwise which do not, and why.
    pub fn health(&self) -> Result<(), String> {
        let problems: Vec<String> = self
            .healths()
            .iter()
            .filter_map(|(job, h)| h.as_ref().err().map(|why| format!("{job}: {why}")))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// One job's series, with its label applied.
#[derive(Clone)]
pub struct JobMetrics {
    job: String,
    metrics: Arc<Metrics>,
    pub events_in: IntCounter,
    pub duplicates: IntCounter,
    pub replayed: IntCounter,
    pub batch_events: Histogram,
    pub batch_cap: IntGauge,
    pub watermark: Gauge,
    pub dedup_entries: IntGauge,
    pub dedup_bytes: IntGauge,
    pub commit_retries: IntCounter,
    pub commit_conflicts: IntCounter,
    pub restarts: IntCounter,
    pub paused: IntGauge,
    pub pauses: IntCounter,
    pub registry_retries: IntCounter,
    pub last_maintenance: Gauge,
    pub probe_latency: Histogram,
    pub probe_failures: IntCounter,
    /// Seconds of CPU the poll thread used (`weir_poll_cpu_seconds_total`).
    pub poll_cpu: Counter,
}

impl JobMetrics {
    /// Metrics that nobody serves (`weir demo`, tests).
    pub fn detached(job: &str) -> Self {
        Metrics::new().job(job)
    }

    pub fn rows_out(&self, table: &str) -> IntCounter {
        self.metrics.rows_out.with_label_values(&[&self.job, table])
    }

    pub fn stage(&self, stage: &str, took: Duration) {
        self.metrics
            .stage_seconds
            .with_label_values(&[&self.job, stage])
            .observe(took.as_secs_f64());
    }

    /// The end-to-end histogram of one clock (`event` or `kafka`).
    pub fn end_to_end(&self, clock: &str) -> Histogram {
        self.metrics
            .end_to_end_seconds
            .with_label_values(&[&self.job, clock])
    }

    /// `partition` as [`crate::config::Topics::label`] names it.
    pub fn partition(&self, partition: &str, high_watermark: Option<i64>, next: Option<i64>) {
        let labels = [self.job.as_str(), partition];
        if let Some(high) = high_watermark {
            self.metrics
                .high_watermark
                .with_label_values(&labels)
                .set(high);
        }
        if let Some(next) = next {
            self.metrics
                .next_offset
                .with_label_values(&labels)
                .set(next);
        }
        let high = self.metrics.high_watermark.with_label_values(&labels).get();
        let next = self.metrics.next_offset.with_label_values(&labels).get();
        self.metrics
            .lag
            .with_label_values(&labels)
            .set((high - next).max(0));
    }

    /// A probe of `partition` became visible `latency` after it was sent.
    pub fn probe_seen(&self, partition: &str, latency: Duration) {
        self.probe_latency.observe(latency.as_secs_f64());
        self.metrics
            .probe_last
            .with_label_values(&[&self.job, partition])
            .set(latency.as_secs_f64());
    }

    /// The outputs read a new version of `lookup`, of `rows` rows.
    pub fn lookup_loaded(&self, lookup: &str, rows: usize) {
        let labels = [self.job.as_str(), lookup];
        self.metrics
            .lookup_rows
            .with_label_values(&labels)
            .set(rows as i64);
        self.metrics.lookup_loads.with_label_values(&labels).inc();
    }

    pub fn lookup_failed(&self, lookup: &str) {
        let labels = [self.job.as_str(), lookup];
        self.metrics
            .lookup_failures
            .with_label_values(&labels)
            .inc();
    }

    pub fn skipped_offsets(&self, partition: &str, count: u64) {
        self.metrics
            .skipped_offsets
            .with_label_values(&[&self.job, partition])
            .inc_by(count);
    }

    pub fn expectation_breaches(&self, rule: &str, action: &str, count: u64) {
        self.metrics
            .expectation_breaches
            .with_label_values(&[&self.job, rule, action])
            .inc_by(count);
    }

    pub fn checkpoint_lag(&self, table: &str) -> IntGauge {
        self.metrics
            .checkpoint_lag
            .with_label_values(&[&self.job, table])
    }

    pub fn monitor_breach(&self, monitor: &str, observed: f64) {
        let labels = [self.job.as_str(), monitor];
        self.metrics
            .monitor_breaches
            .with_label_values(&labels)
            .inc();
        self.metrics
            .monitor_observed
            .with_label_values(&labels)
            .set(observed);
    }

    pub fn queue(&self, queue: &str, fill: usize, capacity: usize) {
        let labels = [self.job.as_str(), queue];
        self.metrics
            .queue_fill
            .with_label_values(&labels)
            .set(fill as i64);
        self.metrics
            .queue_capacity
            .with_label_values(&labels)
            .set(capacity as i64);
    }

    /// Marks the job running, or not running and why (shown by `/healthz`).
    pub fn set_health(&self, health: Result<(), String>) {
        self.metrics
            .health
            .lock()
            .unwrap()
            .insert(self.job.clone(), health);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_the_job_and_health_names_who_is_down() {
        let metrics = Metrics::new();
        let job = metrics.job("clicks");
        job.events_in.inc_by(3);
        job.rows_out("raw").inc_by(2);
        job.partition("0", Some(10), Some(4));
        let text = metrics.render();
        assert!(
            text.contains("weir_events_in_total{job=\"clicks\"} 3"),
            "{text}"
        );
        assert!(text.contains("weir_rows_out_total{job=\"clicks\",table=\"raw\"} 2"));
        assert!(text.contains("weir_consumer_lag{job=\"clicks\",partition=\"0\"} 6"));
        assert_eq!(metrics.health(), Err("clicks: starting".into()));
        job.set_health(Ok(()));
        assert_eq!(metrics.health(), Ok(()));
    }
}
