//! `weir tune`: the bench sweep at a job's own event shape and input rate,
//! turned into the batching to configure for a p99 target.

use std::fmt;
use std::time::{Duration, Instant};

use super::{BenchError, BenchReport, Point, ms};
use crate::config::Job;
use crate::ingest::source::kafka::high_watermarks;

/// A point keeps up when it committed at least this share of what was offered
/// by the end of its latency phase.
const KEEPS_UP: f64 = 0.99;

/// What to put under `[batching]`, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub min_events: usize,
    pub max_events: usize,
    pub max_wait_ms: u64,
    /// Whether a measured batch size kept the p99 under the target.
    pub meets_target: bool,
    pub why: [String; 2],
}

impl fmt::Display for Recommendation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[batching]")?;
        writeln!(f, "min_events = {}", self.min_events)?;
        writeln!(f, "max_events = {}", self.max_events)?;
        writeln!(f, "max_wait_ms = {}", self.max_wait_ms)?;
        // As measured: cut at the size, not held back to the default interval.
        writeln!(f, "interval_ms = 0")?;
        write!(f, "# {}\n# {}", self.why[0], self.why[1])
    }
}

fn keeps_up(p: &Point) -> bool {
    p.committed_share >= KEEPS_UP
}

/// The batch size with the most throughput whose p99 stays under `target` at
/// the offered rate (batches are cut at exactly that size, as measured; the
/// wait bound keeps quiet periods under the target too). Without one, the
/// lowest-latency point, flagged.
pub fn recommend(report: &BenchReport, target: Duration) -> Option<Recommendation> {
    let within = |p: &&Point| keeps_up(p) && p.end_to_end.p99 <= target;
    let best = report
        .points
        .iter()
        .filter(within)
        .max_by(|a, b| a.throughput.total_cmp(&b.throughput));
    let meets_target = best.is_some();
    let chosen = best.or_else(|| {
        report
            .points
            .iter()
            .min_by_key(|p| (!keeps_up(p), p.end_to_end.p99))
    })?;
    let wait = target
        .saturating_sub(chosen.commit.p99)
        .max(Duration::from_millis(10));
    let first = format!(
        "{} events per batch drain {:.0} events/s ({:.0}% of the broker's raw consume rate) and hold p99 produced → committed at {:.0} ms at {:.0} events/s{}.",
        chosen.batch_events,
        chosen.throughput,
        chosen.ratio * 100.0,
        ms(chosen.end_to_end.p99),
        chosen.offered,
        if meets_target {
            format!(", within the {} ms target", target.as_millis())
        } else {
            format!(
                "; no measured size met the {} ms target (consider fewer outputs, more partitions, or adaptive batching)",
                target.as_millis()
            )
        }
    );
    let second = trade_off(report, chosen, target);
    Some(Recommendation {
        min_events: chosen.batch_events,
        max_events: chosen.batch_events,
        max_wait_ms: wait.as_millis() as u64,
        meets_target,
        why: [first, second],
    })
}

/// The neighbours' side of the choice: what the next size up would cost in
/// latency, and what the next size down would cost in commits.
fn trade_off(report: &BenchReport, chosen: &Point, target: Duration) -> String {
    let larger = report
        .points
        .iter()
        .filter(|p| p.batch_events > chosen.batch_events)
        .min_by_key(|p| p.batch_events);
    let smaller = report
        .points
        .iter()
        .filter(|p| p.batch_events < chosen.batch_events)
        .max_by_key(|p| p.batch_events);
    let up = larger.map(|p| {
        let verdict = if p.end_to_end.p99 > target || !keeps_up(p) {
            "over the target"
        } else {
            "less throughput here"
        };
        format!(
            "{} events would give {:.0} events/s at p99 {:.0} ms ({verdict})",
            p.batch_events,
            p.throughput,
            ms(p.end_to_end.p99)
        )
    });
    let down = smaller.map(|p| {
        format!(
            "{} events would commit {:.1}× as often for p99 {:.0} ms",
            p.batch_events,
            chosen.batch_events as f64 / p.batch_events as f64,
            ms(p.end_to_end.p99)
        )
    });
    match (up, down) {
        (Some(up), Some(down)) => {
            format!("Bigger batches trade latency for throughput: {up}; {down}.")
        }
        (Some(one), None) | (None, Some(one)) => {
            format!("Bigger batches trade latency for throughput: {one}.")
        }
        (None, None) => "Only one batch size was measured; pass more with --batch-sizes.".into(),
    }
}

/// Events per second arriving on the job's topics: the growth of their
/// partitions' high watermarks over `window`.
pub fn measure_rate(job: &Job, bootstrap: &str, window: Duration) -> Result<f64, BenchError> {
    let properties = job.kafka_properties()?;
    let timeout = Duration::from_secs(10);
    let total = || {
        high_watermarks(bootstrap, &properties, &job.source.topics, None, timeout)
            .map(|high| high.values().sum::<i64>())
            .map_err(|(_, e)| e)
    };
    let before = total()?;
    let started = Instant::now();
    std::thread::sleep(window);
    let after = total()?;
    Ok((after - before).max(0) as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::bench::Quantiles;

    fn point(batch: usize, throughput: f64, p99_ms: u64, committed_share: f64) -> Point {
        let q = |ms| Quantiles {
            p50: Duration::from_millis(ms / 2),
            p95: Duration::from_millis(ms),
            p99: Duration::from_millis(ms),
        };
        Point {
            batch_events: batch,
            throughput,
            ratio: throughput / 100_000.0,
            offered: 10_000.0,
            committed_share,
            end_to_end: q(p99_ms),
            commit: q(20),
            batches: 10,
            mean_batch: batch as f64,
            poll_cpu: Duration::from_nanos(300),
        }
    }

    fn report(points: Vec<Point>) -> BenchReport {
        BenchReport {
            job: "j".into(),
            broker: "b".into(),
            raw_consume: 100_000.0,
            raw_cpu: Duration::from_nanos(200),
            points,
        }
    }

    #[test]
    fn picks_the_fastest_size_within_the_target() {
        let r = report(vec![
            point(100, 5_000.0, 900, 0.5), // falls behind
            point(500, 20_000.0, 80, 1.0),
            point(1000, 40_000.0, 120, 1.0),
            point(5000, 60_000.0, 400, 1.0), // over the target
        ]);
        let rec = recommend(&r, Duration::from_millis(150)).unwrap();
        assert!(rec.meets_target);
        assert_eq!((rec.min_events, rec.max_events), (1000, 1000));
        assert_eq!(rec.max_wait_ms, 130);
        assert!(rec.why[1].contains("5000 events"), "{}", rec.why[1]);
        assert!(rec.why[1].contains("over the target"), "{}", rec.why[1]);
        assert!(
            rec.why[1].contains("500 events would commit 2.0×"),
            "{}",
            rec.why[1]
        );
    }

    #[test]
    fn says_so_when_nothing_meets_the_target() {
        let r = report(vec![
            point(100, 5_000.0, 900, 0.5),
            point(1000, 40_000.0, 300, 1.0),
        ]);
        let rec = recommend(&r, Duration::from_millis(100)).unwrap();
        assert!(!rec.meets_target);
        assert_eq!(rec.max_events, 1000);
        assert!(
            rec.why[0].contains("no measured size met"),
            "{}",
            rec.why[0]
        );
        assert!(recommend(&report(vec![]), Duration::from_millis(100)).is_none());
    }
}
