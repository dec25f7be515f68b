//! What a running pipeline counts, readable while it runs: totals, the
//! committed position per partition, and (for the demo and the bench only)
//! exact per-trigger and per-event samples.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crate::config::Offsets;
use crate::ingest::pipeline::PipelineError;

/// Counters of a running pipeline, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub consumed: AtomicU64,
    pub raw_rows: AtomicU64,
    pub dlq_rows: AtomicU64,
    /// Events behind the watermark, written to `late`.
    pub late_rows: AtomicU64,
    /// Re-sent events dropped by dedup.
    pub duplicates: AtomicU64,
    /// Rows re-read after a restart that the tables already held.
    pub replayed: AtomicU64,
    /// Triggers judged before the trigger ahead of them committed (the
    /// pipeline's module doc): how often batches waited for the commits.
    pub staged_ahead: AtomicU64,
    /// Per partition, the next offset every table holds.
    pub positions: Mutex<Offsets>,
    /// Exact per-trigger and per-event samples, kept only when asked for (the
    /// demo and the bench): a long-running job would grow them without bound.
    pub(super) samples: Mutex<Option<Samples>>,
}

/// What one committed trigger took.
#[derive(Debug, Clone, Copy)]
pub struct TriggerSample {
    pub committed: Instant,
    pub events: usize,
    pub commit: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub triggers: Vec<TriggerSample>,
    /// Per message with a Kafka timestamp: produced → committed.
    pub end_to_end: Vec<Duration>,
}

impl Stats {
    /// Starts keeping [`Samples`] (from now on).
    pub fn keep_samples(&self) {
        *self.samples.lock().unwrap() = Some(Samples::default());
    }

    /// The samples kept since [`Stats::keep_samples`] or the last take.
    pub fn take_samples(&self) -> Samples {
        self.samples
            .lock()
            .unwrap()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Waits until [`Stats::reached`] `targets`; `false` when `task` (the
    /// pipeline's) ended or `deadline` passed first.
    pub async fn wait_until_reached(
        &self,
        targets: &Offsets,
        task: &tokio::task::JoinHandle<Result<(), PipelineError>>,
        deadline: Instant,
    ) -> bool {
        while !self.reached(targets) {
            if task.is_finished() || Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Whether every partition in `targets` has been committed up to its offset.
    pub fn reached(&self, targets: &Offsets) -> bool {
        let positions = self.positions.lock().unwrap();
        targets
            .iter()
            .all(|(p, end)| positions.get(p).is_some_and(|pos| pos >= end))
    }
}
