//! Adaptive batch sizing: the trigger loop picks its own batch cap within
//! `[min_events, max_events]` to keep the p99 of produced → committed under a
//! target while taking as many events per commit as that allows.
//!
//! Why these rules: a trigger costs a fixed part (one Delta commit per table)
//! plus a part per event, so bigger batches buy throughput and cost latency.
//! The cap only matters when batches hit it (below it the poller cuts a batch
//! as soon as the broker has nothing more ready). So, once per window of
//! triggers:
//!
//! - **over the target and behind** (the poller found the stages after it
//!   still busy with earlier batches, so batches grow to the cap while they
//!   wait): the input outruns what this cap can commit, and latency only
//!   grows; raise the cap multiplicatively, since capacity grows with the
//!   batch.
//! - **over the target** otherwise: cut the cap multiplicatively (the batch's
//!   own fill and commit time is what is too long).
//! - **under the target with headroom and hitting the cap**: raise it
//!   additively, probing for throughput.
//!
//! After each change the next window starts afresh, so batches cut under the
//! old cap (still queued) do not count against the new one. The controller is
//! a pure state machine; the pipeline feeds it one [`Observation`] per trigger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::Batching;

/// The batch cap the poll thread reads and the controller sets, and the
/// poll thread's word that its queue was full (the stages after it are the
/// bottleneck).
#[derive(Debug, Clone, Default)]
pub struct BatchCap {
    events: Arc<AtomicUsize>,
    queue_was_full: Arc<AtomicBool>,
}

impl BatchCap {
    pub fn new(events: usize) -> Self {
        let cap = Self::default();
        cap.set(events);
        cap
    }

    pub fn get(&self) -> usize {
        self.events.load(Ordering::Relaxed)
    }

    fn set(&self, events: usize) {
        self.events.store(events, Ordering::Relaxed);
    }

    /// Called by the poller when a cut batch found no room in the queue.
    pub fn queue_full(&self) {
        self.queue_was_full.store(true, Ordering::Relaxed);
    }

    /// Whether the queue was full since the last call.
    fn take_queue_full(&self) -> bool {
        self.queue_was_full.swap(false, Ordering::Relaxed)
    }
}

/// What one committed trigger showed.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub events: usize,
    /// The p99 over the trigger's events of produced → committed.
    pub p99: Duration,
}

/// Triggers per decision window.
const WINDOW: usize = 5;
/// Below this fraction of the target there is room to grow.
const HEADROOM: f64 = 0.7;

#[derive(Debug)]
pub struct Controller {
    target: Duration,
    min: usize,
    max: usize,
    step: usize,
    cap: BatchCap,
    window: Vec<Observation>,
}

impl Controller {
    /// Starts at `min_events`: latency first, throughput as the window proves
    /// there is room.
    pub fn new(target: Duration, batching: &Batching) -> Self {
        let (min, max) = (batching.min_events, batching.max_events);
        Self {
            target,
            min,
            max,
            step: ((max - min) / 20).max(min / 2).max(1),
            cap: BatchCap::new(min),
            window: Vec::with_capacity(WINDOW),
        }
    }

    pub fn cap(&self) -> BatchCap {
        self.cap.clone()
    }

    /// Takes one trigger into account; returns the new cap when it changed.
    pub fn observe(&mut self, observation: Observation) -> Option<usize> {
        self.window.push(observation);
        if self.window.len() < WINDOW {
            return None;
        }
        let current = self.cap.get();
        let next = self.decide(current, self.cap.take_queue_full());
        self.window.clear();
        (next != current).then(|| {
            self.cap.set(next);
            next
        })
    }

    fn decide(&self, current: usize, queue_was_full: bool) -> usize {
        let p99 = self.window.iter().map(|o| o.p99).max().unwrap_or_default();
        let at_cap = self.window.iter().filter(|o| o.events >= current).count();
        let hitting_cap = at_cap * 5 >= self.window.len() * 4;
        let grown = |n: usize| n.clamp(self.min, self.max);
        if p99 > self.target {
            if queue_was_full {
                grown(current + current / 2)
            } else {
                grown(current * 7 / 10)
            }
        } else if hitting_cap && p99.as_secs_f64() < self.target.as_secs_f64() * HEADROOM {
            grown(current + self.step)
        } else {
            current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batching(min: usize, max: usize) -> Batching {
        Batching {
            min_events: min,
            max_events: max,
            max_wait: Duration::from_millis(250),
            max_bytes: 16 << 20,
            interval: Duration::ZERO,
            adaptive: None,
        }
    }

    /// A simulated loop: events arrive at `rate`, a trigger of `n` events costs
    /// `fixed + n * per_event`, and the poller cuts up to the cap from what is
    /// waiting (at least `min`), reporting a full queue when more than a batch
    /// is left waiting. A batch's p99 is how long its oldest event waited plus
    /// the trigger.
    struct Sim {
        backlog: f64,
        fixed: Duration,
        per_event: Duration,
    }

    impl Sim {
        fn trigger(&mut self, controller: &mut Controller, rate: f64) -> Duration {
            let cap = controller.cap().get() as f64;
            self.backlog = self.backlog.max(controller.min as f64);
            let n = self.backlog.min(cap);
            let busy = self.fixed + self.per_event.mul_f64(n);
            let waited = Duration::from_secs_f64(self.backlog / rate);
            self.backlog = self.backlog - n + rate * busy.as_secs_f64();
            if self.backlog > cap {
                controller.cap().queue_full();
            }
            let p99 = waited + busy;
            controller.observe(Observation {
                events: n as usize,
                p99,
            });
            p99
        }
    }

    #[test]
    fn holds_the_target_through_rate_steps_and_moves_the_cap() {
        let target = Duration::from_millis(500);
        let mut c = Controller::new(target, &batching(100, 20_000));
        let mut sim = Sim {
            backlog: 0.0,
            fixed: Duration::from_millis(40),
            per_event: Duration::from_micros(20),
        };
        let mut settled = |c: &mut Controller, rate: f64| {
            for _ in 0..400 {
                sim.trigger(c, rate);
            }
            let tail: Vec<Duration> = (0..50).map(|_| sim.trigger(c, rate)).collect();
            let worst = tail.iter().max().unwrap();
            assert!(
                *worst <= target,
                "rate {rate}: p99 {worst:?} after settling"
            );
            c.cap().get()
        };
        let low = settled(&mut c, 1_000.0);
        let high = settled(&mut c, 20_000.0);
        let low_again = settled(&mut c, 1_000.0);
        // At the start cap (100 events per 42 ms) the loop commits far less
        // than 20k/s: the cap had to grow to keep up.
        assert!(high >= 1_333, "cap at 20k/s: {high}");
        assert!(high > low, "{low} → {high}");
        assert!(low_again <= 20_000);
    }

    /// One window of triggers at the cap with the given p99.
    fn window(c: &mut Controller, p99_ms: u64, queue_full: bool) -> usize {
        if queue_full {
            c.cap().queue_full();
        }
        for _ in 0..WINDOW {
            c.observe(Observation {
                events: c.cap().get(),
                p99: Duration::from_millis(p99_ms),
            });
        }
        c.cap().get()
    }

    #[test]
    fn each_rule_moves_the_cap_its_way() {
        let mut c = Controller::new(Duration::from_millis(200), &batching(100, 10_000));
        c.cap.set(1000);
        // Over the target with room downstream: the batch itself is too slow.
        assert_eq!(window(&mut c, 400, false), 700);
        // Over the target with the queue full: behind, so grow.
        assert_eq!(window(&mut c, 400, true), 1050);
        // Well under the target at the cap: probe upwards by one step.
        assert_eq!(window(&mut c, 50, false), 1050 + 495);
        // Under the target but not far enough: hold.
        assert_eq!(window(&mut c, 180, false), 1545);
    }

    #[test]
    fn stays_within_bounds() {
        let mut c = Controller::new(Duration::from_millis(100), &batching(50, 500));
        for i in 0..200 {
            let slow = i % 2 == 0;
            window(&mut c, if slow { 900 } else { 10 }, slow);
            assert!((50..=500).contains(&c.cap().get()));
        }
    }
}
