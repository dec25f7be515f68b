use super::*;
use crate::config::{Job, Overrides, SourcePartition, Topics};

const fn p(partition: i32) -> SourcePartition {
    SourcePartition::first(partition)
}
use arrow::array::{
    Array, ArrayRef, BinaryArray, Date32Array, Float64Array, Int32Array, Int64Array,
};
use std::path::Path;

fn job() -> Job {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/clickstream.toml");
    Job::load(&path, &Overrides::default()).unwrap()
}

const SECOND: i64 = 1_000_000;

/// Accepted events in `raw`'s schema: (partition, offset, event time in seconds).
fn events(rows: &[(i32, i64, i64)]) -> RecordBatch {
    let schema = raw_schema(&job().contract);
    let n = rows.len();
    let text = |prefix: &str| -> ArrayRef {
        Arc::new(StringArray::from(
            (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>(),
        ))
    };
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "ts" => Arc::new(
                    TimestampMicrosecondArray::from(
                        rows.iter().map(|r| r.2 * SECOND).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                "price" => Arc::new(Float64Array::from(vec![1.0; n])),
                "_event_date" => Arc::new(Date32Array::from(vec![0; n])),
                "_partition" => Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                "_offset" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                "_payload" => Arc::new(BinaryArray::from(vec![None; n])),
                "_kafka_ts" => {
                    Arc::new(TimestampMicrosecondArray::from(vec![None; n]).with_timezone("UTC"))
                }
                name => text(name),
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

fn policy(lateness_s: u64, idle_s: u64) -> WatermarkPolicy {
    WatermarkPolicy {
        allowed_lateness: Duration::from_secs(lateness_s),
        idle_timeout: Duration::from_secs(idle_s),
    }
}

fn offsets(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column_by_name(OFFSET)
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>()
        .values()
        .to_vec()
}

#[test]
fn follows_the_slowest_active_partition_minus_the_lateness() {
    let mut w = Watermark::new(&job().contract, policy(10, 30), Topics::single("t"));
    let now = Instant::now();
    assert_eq!(w.current_us(), None);
    w.advance(&events(&[(0, 0, 100), (1, 0, 50), (0, 1, 120)]), now)
        .unwrap();
    assert_eq!(w.current_us(), Some(40 * SECOND), "min(120, 50) − 10");
    w.advance(&events(&[(1, 1, 200)]), now).unwrap();
    assert_eq!(w.current_us(), Some(110 * SECOND), "min(120, 200) − 10");
    // An out-of-order event does not move a clock back.
    w.advance(&events(&[(0, 2, 5)]), now).unwrap();
    assert_eq!(w.current_us(), Some(110 * SECOND));
}

#[test]
fn an_idle_partition_stops_holding_the_watermark_back() {
    let mut w = Watermark::new(&job().contract, policy(0, 30), Topics::single("t"));
    let start = Instant::now();
    w.advance(&events(&[(0, 0, 100), (1, 0, 10)]), start)
        .unwrap();
    assert_eq!(w.current_us(), Some(10 * SECOND));
    // Partition 1 falls silent; after the idle timeout only 0 counts.
    let later = start + Duration::from_secs(31);
    w.advance(&events(&[(0, 1, 300)]), later).unwrap();
    assert_eq!(w.current_us(), Some(300 * SECOND));
    // When 1 returns with old events, the watermark does not move back.
    w.advance(&events(&[(1, 1, 20)]), later).unwrap();
    assert_eq!(w.current_us(), Some(300 * SECOND));
}

#[test]
fn an_assigned_partition_holds_the_watermark_until_it_delivers_or_idles() {
    let mut w = Watermark::new(&job().contract, policy(0, 30), Topics::single("t"));
    let start = Instant::now();
    w.assign(&[p(0), p(1)], start);
    // A backlog: partition 0 delivers days of events first.
    w.advance(&events(&[(0, 0, 100), (0, 1, 5000)]), start)
        .unwrap();
    assert_eq!(w.current_us(), None, "partition 1 has not delivered yet");
    w.advance(&events(&[(1, 0, 50)]), start).unwrap();
    assert_eq!(w.current_us(), Some(50 * SECOND));
    // A partition that stays empty stops holding once the idle timeout passes.
    let mut w = Watermark::new(&job().contract, policy(0, 30), Topics::single("t"));
    w.assign(&[p(0), p(1)], start);
    w.advance(&events(&[(0, 0, 100)]), start + Duration::from_secs(31))
        .unwrap();
    assert_eq!(w.current_us(), Some(100 * SECOND));
    // Revoked partitions stop counting.
    w.assign(&[p(1)], start + Duration::from_secs(31));
    assert_eq!(w.current_us(), Some(100 * SECOND), "never moves back");
}

#[test]
fn events_behind_the_watermark_are_late_with_a_reason() {
    let mut w = Watermark::new(&job().contract, policy(10, 30), Topics::single("t"));
    let first = w
        .split(
            &events(&[(0, 0, 100), (0, 1, 1)]),
            &Settled::default(),
            chrono::Utc::now(),
        )
        .unwrap();
    assert_eq!(first.late.num_rows(), 0, "no watermark before any event");
    w.advance(&first.on_time, Instant::now()).unwrap();

    let split = w
        .split(
            &events(&[(0, 2, 95), (0, 3, 89), (0, 4, 90), (0, 5, 200)]),
            &Settled::default(),
            chrono::Utc::now(),
        )
        .unwrap();
    assert_eq!(
        offsets(&split.on_time),
        vec![2, 4, 5],
        "90 is the watermark itself: on time"
    );
    assert_eq!(offsets(&split.late), vec![3]);
    assert_eq!(split.late.schema(), *w.late_schema());
    let reason = split
        .late
        .column_by_name(REASON)
        .unwrap()
        .as_string::<i32>()
        .value(0)
        .to_owned();
    assert!(
        reason.contains("is 1s behind the watermark 1970-01-01T00:01:30.000Z"),
        "{reason}"
    );
    let watermark = split.late.column_by_name(WATERMARK).unwrap();
    assert_eq!(
        watermark
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        90 * SECOND
    );
}

#[test]
fn settled_events_keep_their_stored_fate_whatever_the_watermark() {
    let mut w = Watermark::new(&job().contract, policy(0, 30), Topics::single("t"));
    w.advance(&events(&[(0, 0, 100)]), Instant::now()).unwrap();
    // Offsets below 10 on partition 0 are settled: 3 is in raw, 4 is not.
    let settled = Settled {
        below: BTreeMap::from([(p(0), 10)]),
        on_time: HashSet::from([(p(0), 3)]),
    };
    let split = w
        .split(
            &events(&[(0, 3, 1), (0, 4, 500), (0, 10, 1), (1, 4, 500)]),
            &settled,
            chrono::Utc::now(),
        )
        .unwrap();
    assert_eq!(
        offsets(&split.on_time),
        vec![3, 4],
        "(0,3) stored on time; (1,4) is new"
    );
    assert_eq!(
        offsets(&split.late),
        vec![4, 10],
        "(0,4) stored late; (0,10) is new and old"
    );
    let watermarks = split.late.column_by_name(WATERMARK).unwrap();
    assert!(
        watermarks.is_null(0),
        "a reused decision names no watermark"
    );
    assert!(!watermarks.is_null(1));
}

fn newest(partition: i32, event_s: i64, sent_s: Option<i64>) -> Newest {
    Newest {
        partition: p(partition),
        event_us: event_s * SECOND,
        sent_us: sent_s.map(|s| s * SECOND),
    }
}

#[test]
fn restore_counts_every_partition_that_was_active_as_active() {
    let mut w = Watermark::new(&job().contract, policy(5, 30), Topics::single("t"));
    // Partition 1 sent its newest 20 s before partition 0: within the idle timeout.
    let idle = w.restore(
        &[newest(0, 100, Some(1000)), newest(1, 40, Some(980))],
        Instant::now(),
        &[],
    );
    assert!(idle.is_empty());
    assert_eq!(w.current_us(), Some(35 * SECOND));
    assert_eq!(w.holder(), Some(p(1)));
}

/// A partition that had stopped receiving events long before the job
/// stopped does not pin the restored watermark (it did, before: hot never
/// aged, windows never folded, reprocess refused recent days).
#[test]
fn restore_leaves_out_a_partition_that_was_idle_when_the_job_stopped() {
    let mut w = Watermark::new(&job().contract, policy(5, 30), Topics::single("t"));
    let rows = [
        newest(0, 100, Some(1000)),
        newest(1, 40, Some(500)),
        newest(2, 90, None),
    ];
    let idle = w.restore(&rows, Instant::now(), &[]);
    assert_eq!(idle, vec![p(1)]);
    assert_eq!(
        w.current_us(),
        Some(85 * SECOND),
        "partition 2 (no Kafka time) counts"
    );
    assert_eq!(w.holder(), Some(p(2)));
}

/// A partition whose newest stored message is old because it fell behind
/// (its messages wait unread), not because it went silent, holds the
/// restored watermark: its backlog is on time when it is read.
#[test]
fn restore_keeps_a_partition_with_unread_messages_although_its_stored_ones_are_old() {
    let mut w = Watermark::new(&job().contract, policy(5, 30), Topics::single("t"));
    let rows = [newest(0, 100, Some(1000)), newest(1, 40, Some(500))];
    let idle = w.restore(&rows, Instant::now(), &[p(1)]);
    assert!(idle.is_empty());
    assert_eq!(w.current_us(), Some(35 * SECOND));
    assert_eq!(w.holder(), Some(p(1)));
}
