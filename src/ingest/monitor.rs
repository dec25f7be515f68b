//! Batch-level data-quality monitors: a figure per window of ingest time
//! (events accepted, a field's null rate, its least or greatest value) held
//! to bounds, as practitioners watch a feed for drift that no single event
//! shows (a field that starts arriving null, volume that drops to a tenth).
//!
//! Windows are aligned to the clock (every minute on the minute, for a 1m
//! window) and judged at the first trigger after they end, so a breach
//! shows within a window and a trigger. The first window after a start is
//! partial and not judged, and a window no trigger saw at all is judged as
//! empty (a volume of 0). This is observability, not data: the windows are
//! not restored after a restart, and a crash may lose the breach rows of
//! the trigger it interrupts.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute;
use arrow::datatypes::{DataType, Float64Type};
use chrono::{DateTime, Utc};

use crate::config::{Check, Monitor};
use crate::ingest::quality::QualityRow;

/// What one window has seen so far.
#[derive(Debug, Clone, Copy)]
struct Window {
    start_us: i64,
    /// Started before the monitor did: not judged.
    partial: bool,
    events: u64,
    nulls: u64,
    /// The least value (a `min` check) or the greatest (`max`).
    extreme: Option<f64>,
}

impl Window {
    fn new(start_us: i64, partial: bool) -> Self {
        Self {
            start_us,
            partial,
            events: 0,
            nulls: 0,
            extreme: None,
        }
    }
}

/// The monitor stage: each monitor and its open window.
pub struct Monitors {
    monitors: Vec<(Monitor, Window)>,
}

/// The action a monitor's rows carry in the `quality` table.
pub const MONITOR: &str = "monitor";

impl Monitors {
    /// Starts watching at `now`.
    pub fn new(monitors: &[Monitor], now: DateTime<Utc>) -> Self {
        let now_us = now.timestamp_micros();
        Self {
            monitors: monitors
                .iter()
                .map(|m| (m.clone(), Window::new(align(now_us, m), true)))
                .collect(),
        }
    }

    /// Adds a trigger's accepted `events` (rows of `raw`, the contract's
    /// fields first) at `now`, after judging the windows that ended before
    /// it; returns their breaches.
    pub fn observe(&mut self, events: &RecordBatch, now: DateTime<Utc>) -> Vec<QualityRow> {
        let now_us = now.timestamp_micros();
        let mut breaches = Vec::new();
        for (monitor, window) in &mut self.monitors {
            let size = monitor.window.as_micros() as i64;
            if now_us >= window.start_us + size {
                breaches.extend(judge(monitor, window, size));
                if now_us >= window.start_us + 2 * size {
                    // Whole windows passed without a trigger: one of them, empty.
                    let empty = Window::new(window.start_us + size, false);
                    breaches.extend(judge(monitor, &empty, size));
                }
                *window = Window::new(align(now_us, monitor), false);
            }
            add(monitor.check, window, events);
        }
        breaches
    }
}

/// The start of the window of `monitor` that holds `us`.
fn align(us: i64, monitor: &Monitor) -> i64 {
    let size = monitor.window.as_micros() as i64;
    us.div_euclid(size) * size
}

/// The window's figure, and a row when it breaks the bounds.
fn judge(monitor: &Monitor, window: &Window, size: i64) -> Option<QualityRow> {
    if window.partial {
        return None;
    }
    let observed = match monitor.check {
        Check::Volume => Some(window.events as f64),
        Check::NullRate(_) => {
            (window.events > 0).then(|| window.nulls as f64 / window.events as f64)
        }
        Check::Min(_) | Check::Max(_) => window.extreme,
    }?;
    (!monitor.holds(observed)).then(|| QualityRow {
        time_us: window.start_us + size,
        rule: monitor.name.clone(),
        action: MONITOR,
        observed,
        expected: monitor.expected(),
        partition: -1,
        offset: -1,
    })
}

/// `events` counted into `window` for `check`.
fn add(check: Check, window: &mut Window, events: &RecordBatch) {
    window.events += events.num_rows() as u64;
    let (field, keep): (usize, fn(f64, f64) -> f64) = match check {
        Check::Volume => return,
        Check::NullRate(field) => {
            window.nulls += events.column(field).null_count() as u64;
            return;
        }
        Check::Min(field) => (field, f64::min),
        Check::Max(field) => (field, f64::max),
    };
    // Validated numeric: the cast to float64 does not fail.
    let Ok(values) = compute::cast(events.column(field), &DataType::Float64) else {
        return;
    };
    let values = values.as_primitive::<Float64Type>();
    let found = match check {
        Check::Min(_) => compute::min(values),
        _ => compute::max(values),
    };
    if let Some(found) = found {
        window.extreme = Some(window.extreme.map_or(found, |e| keep(e, found)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixture::Spec;
    use crate::ingest::decode::accepted;
    use crate::ingest::source::Message;
    use chrono::TimeZone;

    fn monitors() -> Vec<Monitor> {
        Spec {
            fields: &[r#"{ name = "price", type = "float64" }"#],
            rest: r#"
[[monitors]]
name = "volume"
check = "volume"
min = 3
[[monitors]]
name = "nulls"
check = "null_rate"
field = "price"
max = 0.5
[[monitors]]
name = "top"
check = "max"
field = "price"
max = 100
window = "2m"
"#,
            ..Spec::default()
        }
        .job()
        .monitors
    }

    fn events(prices: &[&str]) -> RecordBatch {
        let job = Spec {
            fields: &[r#"{ name = "price", type = "float64" }"#],
            ..Spec::default()
        }
        .job();
        let ts = at(0).timestamp_millis();
        let messages = prices
            .iter()
            .enumerate()
            .map(|(i, price)| Message {
                offset: i as i64,
                payload: Some(format!(r#"{{"id":"e{i}","ts":{ts},"price":{price}}}"#).into()),
                ..Message::default()
            })
            .collect();
        accepted(&job.contract, messages, at(0))
    }

    /// `seconds` past 12:00 on a fixed day.
    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
    }

    fn breaches(rows: Vec<QualityRow>) -> Vec<(String, f64, i64)> {
        let minute = at(0).timestamp_micros();
        rows.into_iter()
            .map(|r| (r.rule, r.observed, (r.time_us - minute) / 1_000_000))
            .collect()
    }

    #[test]
    fn closed_windows_are_judged_at_the_next_trigger_and_the_first_is_not() {
        let mut m = Monitors::new(&monitors(), at(30));
        // The first, partial windows (12:00 for 1m, 12:00 for 2m) see a breach but stay silent.
        assert!(
            m.observe(&events(&["null", "null", "500"]), at(30))
                .is_empty()
        );
        assert!(m.observe(&events(&["1", "2"]), at(70)).is_empty());
        assert!(m.observe(&events(&["3", "null"]), at(100)).is_empty());
        // 12:01 closed with 4 events, 1 null: within bounds; the 2m window
        // holds 12:00–12:02 and is partial.
        assert!(m.observe(&events(&["200"]), at(125)).is_empty());
        // 12:02 closed with 1 event (volume < 3); then nothing until 12:05:
        // 12:03 is judged empty; the 2m window 12:02–12:04 saw 200.
        let got = breaches(m.observe(&events(&["null"]), at(300)));
        assert_eq!(
            got,
            vec![
                ("volume".to_owned(), 1.0, 180),
                ("volume".to_owned(), 0.0, 240),
                ("top".to_owned(), 200.0, 240),
            ]
        );
        // 12:05 held one event, null: rate 1.0 and volume 1.
        let got = breaches(m.observe(&events(&[]), at(360)));
        assert_eq!(
            got,
            vec![
                ("volume".to_owned(), 1.0, 360),
                ("nulls".to_owned(), 1.0, 360)
            ]
        );
    }
}
