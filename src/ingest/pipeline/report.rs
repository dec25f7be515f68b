//! What a committed trigger tells the rest of the process: the stats a
//! bounded run and the bench read, the metrics, adaptive batching's
//! observation and the quality rows as log lines.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use tracing::{debug, warn};

use crate::config::Offsets;
use crate::ingest::adaptive::Observation;
use crate::ingest::monitor::MONITOR;
use crate::ingest::quality::QualityRow;
use crate::ingest::sink::CommitReport;
use crate::ingest::source::MicroBatch;
use crate::ingest::stats::TriggerSample;
use crate::table::TableId;
use crate::telemetry::quantile;

use super::Pipeline;

/// What one committed trigger did, for the stats and the metrics.
pub(super) struct Outcome<'a> {
    pub(super) report: &'a CommitReport,
    pub(super) on_time: &'a RecordBatch,
    pub(super) duplicates: usize,
    pub(super) replayed: usize,
    pub(super) next: &'a Offsets,
    pub(super) committed_us: i64,
    /// Per message, produced → committed.
    pub(super) produced: Vec<Duration>,
}

impl Pipeline {
    /// Counts one committed trigger in the stats and the metrics.
    pub(super) fn record(&self, batch: &MicroBatch, outcome: Outcome<'_>) {
        let Outcome {
            report,
            on_time,
            duplicates,
            replayed,
            next,
            committed_us,
            produced,
        } = outcome;
        debug!(
            events = batch.len(),
            raw = report.written(TableId::Raw),
            dlq = report.written(TableId::Dlq),
            late = report.written(TableId::Late),
            duplicates,
            ms = report.elapsed.as_millis() as u64,
            "trigger"
        );
        let s = &self.stats;
        if batch.is_empty() {
            // Only progress past records never delivered (commit markers).
            return self.note_positions(next);
        }
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.consumed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        s.raw_rows
            .fetch_add(report.written(TableId::Raw) as u64, Ordering::Relaxed);
        s.dlq_rows
            .fetch_add(report.written(TableId::Dlq) as u64, Ordering::Relaxed);
        s.late_rows
            .fetch_add(report.written(TableId::Late) as u64, Ordering::Relaxed);
        s.duplicates.fetch_add(duplicates as u64, Ordering::Relaxed);
        s.replayed.fetch_add(replayed as u64, Ordering::Relaxed);
        if let Some(samples) = s.samples.lock().unwrap().as_mut() {
            samples.triggers.push(TriggerSample {
                committed: Instant::now(),
                events: batch.len(),
                commit: report.elapsed,
            });
            samples.end_to_end.extend(produced.iter().copied());
        }
        // Last: whoever waits for a position finds its trigger counted and sampled.
        self.note_positions(next);

        let m = &self.metrics;
        m.events_in.inc_by(batch.len() as u64);
        m.batch_events.observe(batch.len() as f64);
        m.duplicates.inc_by(duplicates as u64);
        m.replayed.inc_by(replayed as u64);
        let since = |us: i64| (committed_us - us).max(0) as f64 / 1e6;
        // Two observations per event: counted locally and added to the shared
        // histograms once each (when dropped), not with atomics per event.
        let event = m.end_to_end("event").local();
        if let Some(times) = on_time
            .column_by_name(self.decoder.contract().event_time_name())
            .map(|c| c.as_primitive::<TimestampMicrosecondType>())
        {
            times.values().iter().for_each(|t| event.observe(since(*t)));
        }
        let kafka = m.end_to_end("kafka").local();
        produced.iter().for_each(|d| kafka.observe(d.as_secs_f64()));
        let dedup = self.dedup.lock().unwrap();
        m.dedup_entries.set(dedup.index().len() as i64);
        m.dedup_bytes.set(dedup.index().bytes() as i64);
        drop(dedup);
        if let Some(w) = self.watermark.lock().unwrap().current_us() {
            m.watermark.set(w as f64 / 1e6);
        }
    }

    /// Publishes the partitions' committed positions (stats and metrics).
    fn note_positions(&self, next: &Offsets) {
        for (&p, &offset) in next {
            let label = self.job.source.topics.label(p);
            self.metrics.partition(&label, None, Some(offset));
        }
        self.stats.positions.lock().unwrap().extend(next);
    }

    /// Feeds adaptive batching one trigger: its events and the p99 of their
    /// produced → committed.
    pub(super) fn adapt(&self, events: usize, produced: &[Duration]) {
        let Some(controller) = &self.adaptive else {
            return;
        };
        let observation = Observation {
            events,
            p99: quantile(produced, 0.99).unwrap_or_default(),
        };
        if let Some(cap) = controller.lock().unwrap().observe(observation) {
            debug!(
                cap,
                p99_ms = observation.p99.as_millis() as u64,
                "adaptive batching moved the batch cap"
            );
            self.metrics.batch_cap.set(cap as i64);
        }
    }

    /// The committed `quality` rows of a trigger, as metrics and log lines.
    pub(super) fn report_breaches(&self, rows: &[QualityRow]) {
        for row in rows {
            let (rule, observed) = (row.rule.as_str(), row.observed);
            if row.action == MONITOR {
                self.metrics.monitor_breach(rule, observed);
                warn!(
                    monitor = rule,
                    observed,
                    expected = row.expected,
                    "monitor out of bounds"
                );
            } else {
                let action = row.action;
                self.metrics
                    .expectation_breaches(rule, action, observed as u64);
                warn!(rule, action, events = observed, "expectation broken");
            }
        }
    }
}
