//! The spine end to end on librdkafka's in-process mock cluster: a known set of
//! messages in, and exactly the right rows out, including across a crash
//! between two tables' commits.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use common::*;
use weir::cmd::demo::end_offsets;
use weir::fault::Faults;
use weir::ingest::pipeline::PipelineError;
use weir::ingest::sink::SinkError;
use weir::ingest::source::embedded::EmbeddedBroker;
use weir::ingest::source::generator::{Delivered, Kind, Mix};
use weir::ingest::stats::Stats;
use weir::table::delta::CHECKPOINT_INTERVAL;

const DRAIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_set_lands_exactly_once_and_offsets_match() {
    let dir = tempfile::tempdir().unwrap();
    // Small batches: many commits, so the checkpoint interval is crossed too.
    let job = job(dir.path(), 20);
    let broker = EmbeddedBroker::start(job.source.topics.first(), 3).unwrap();
    let mix = Mix {
        malformed_ratio: 0.03,
        duplicate_ratio: 0.03,
        late_ratio: 0.0,
    };
    let delivered = produce(&broker.bootstrap_servers(), &job, 3000, mix, 42).await;
    let ends = end_offsets(&delivered);
    assert_eq!(ends.values().sum::<i64>(), 3000);

    let pipeline = start(&job, &broker.bootstrap_servers(), Faults::default()).await;
    run_until(pipeline.clone(), &ends, DRAIN).await.unwrap();
    drop(pipeline);

    let raw = offsets(&job, "raw").await;
    let dlq = offsets(&job, "dlq").await;
    assert_unique(&raw, "raw");
    assert_unique(&dlq, "dlq");
    let originals = expected(&delivered, |d| d.kind == Kind::Valid);
    let malformed = expected(&delivered, |d| !d.kind.is_valid());
    assert!(delivered.iter().any(|d| d.kind == Kind::Duplicate));
    assert!(
        malformed.len() > 30,
        "the mix must include malformed messages"
    );
    assert_eq!(
        raw, originals,
        "raw holds exactly the valid messages, re-sends dropped"
    );
    assert_eq!(dlq, malformed, "dlq holds exactly the malformed messages");

    let numbered_ends = numbered(&ends);
    let partitions: Vec<i32> = numbered_ends.keys().copied().collect();
    assert_eq!(txn_versions(&job, "raw", &partitions).await, numbered_ends);
    assert_eq!(txn_versions(&job, "dlq", &partitions).await, numbered_ends);
    // Nothing was late: `late` never committed, and holds every offset
    // through what raw's commits vouch for it.
    assert_eq!(txn_versions(&job, "late", &partitions).await, numbered_ends);
    let late = deltalake::open_table(table_url(&job, "late"))
        .await
        .unwrap();
    assert_eq!(late.version(), Some(0), "late has only its creation");

    // The consumer group shows the same progress (for lag tools).
    assert_eq!(
        group_offsets(&job, &broker.bootstrap_servers(), &partitions),
        numbered_ends
    );

    // ~150 triggers × 2 tables: a checkpoint exists at the interval.
    let log = table_url(&job, "raw")
        .to_file_path()
        .unwrap()
        .join("_delta_log");
    let checkpoint = log.join(format!(
        "{:020}.checkpoint.parquet",
        CHECKPOINT_INTERVAL - 1
    ));
    assert!(
        checkpoint.exists(),
        "no checkpoint at {}",
        checkpoint.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_raw_and_dlq_commits_converges_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 50);
    let broker = EmbeddedBroker::start(job.source.topics.first(), 2).unwrap();
    let mix = Mix {
        malformed_ratio: 0.1,
        duplicate_ratio: 0.02,
        late_ratio: 0.0,
    };
    let delivered = produce(&broker.bootstrap_servers(), &job, 1000, mix, 7).await;
    let ends = end_offsets(&delivered);
    let numbered_ends = numbered(&ends);
    let partitions: Vec<i32> = numbered_ends.keys().copied().collect();

    // First run: the 3rd trigger fails after `raw` committed and before `dlq` did.
    let faults = Faults::parse("sink.after_commit.raw@3:error").unwrap();
    let pipeline = start(&job, &broker.bootstrap_servers(), faults).await;
    let crashed = run_until(pipeline.clone(), &ends, DRAIN).await;
    assert!(
        matches!(crashed, Err(PipelineError::Sink(SinkError::Fault(_)))),
        "{crashed:?}"
    );
    drop(pipeline);
    let raw_versions = txn_versions(&job, "raw", &partitions).await;
    let dlq_versions = txn_versions(&job, "dlq", &partitions).await;
    assert_ne!(
        raw_versions, dlq_versions,
        "the crash left raw ahead of dlq"
    );
    let raw_before = offsets(&job, "raw").await.len();

    // Restart: replays from the lowest version; raw drops what it has.
    let pipeline = start(&job, &broker.bootstrap_servers(), Faults::default()).await;
    run_until(pipeline.clone(), &ends, DRAIN).await.unwrap();
    let stats = pipeline.stats();
    drop(pipeline);
    assert!(
        stats.replayed.load(Relaxed) > 0,
        "the restart re-read rows raw already held"
    );

    let raw = offsets(&job, "raw").await;
    let dlq = offsets(&job, "dlq").await;
    assert!(raw.len() > raw_before);
    assert_unique(&raw, "raw");
    assert_unique(&dlq, "dlq");
    assert_eq!(raw, expected(&delivered, |d| d.kind == Kind::Valid));
    assert_eq!(dlq, expected(&delivered, |d| !d.kind.is_valid()));
    assert_eq!(txn_versions(&job, "raw", &partitions).await, numbered_ends);
    assert_eq!(txn_versions(&job, "dlq", &partitions).await, numbered_ends);
}

/// Two runs of the job: the first over `first_seed`'s messages, then a restart
/// over `second_seed`'s, produced while it was down. Returns both deliveries
/// and the second run's stats.
async fn restart_over(
    dir: &std::path::Path,
    first_seed: u64,
    second_seed: u64,
) -> (
    weir::config::Job,
    Vec<Delivered>,
    Vec<Delivered>,
    Arc<Stats>,
) {
    let job = job(dir, 100);
    let broker = EmbeddedBroker::start(job.source.topics.first(), 2).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let mix = Mix {
        late_ratio: 0.0,
        ..Mix::default()
    };
    let first = produce(&bootstrap, &job, 400, mix, first_seed).await;
    let pipeline = start(&job, &bootstrap, Faults::default()).await;
    run_until(pipeline.clone(), &end_offsets(&first), DRAIN)
        .await
        .unwrap();
    drop(pipeline);

    let second = produce(&bootstrap, &job, 400, mix, second_seed).await;
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    let pipeline = start(&job, &bootstrap, Faults::default()).await;
    run_until(pipeline.clone(), &end_offsets(&all), DRAIN)
        .await
        .unwrap();
    let stats = pipeline.stats();
    (job, first, second, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_resumes_where_the_tables_end() {
    let dir = tempfile::tempdir().unwrap();
    let (job, first, second, stats) = restart_over(dir.path(), 1, 2).await;
    assert_eq!(stats.replayed.load(Relaxed), 0);
    assert_eq!(
        stats.consumed.load(Relaxed),
        second.len() as u64,
        "the second run read only the new messages"
    );
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    assert_eq!(
        offsets(&job, "raw").await,
        expected(&all, |d| d.kind == Kind::Valid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_after_a_restart_are_still_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    // The same seed generates the same event IDs: every valid event is re-sent.
    let (job, first, again, stats) = restart_over(dir.path(), 5, 5).await;
    let resent = again.iter().filter(|d| d.kind.is_valid()).count();
    assert_eq!(stats.duplicates.load(Relaxed) as usize, resent);
    assert_eq!(
        offsets(&job, "raw").await,
        expected(&first, |d| d.kind == Kind::Valid)
    );
}

/// Per (minute, page, country): views, distinct viewers, purchases, revenue
/// (cents) — computed here from the generator's own messages, not by weir's code.
type Oracle = BTreeMap<(i64, String, String), (i64, i64, i64, i64)>;

fn oracle(delivered: &[Delivered]) -> Oracle {
    let mut figures: BTreeMap<_, (i64, HashSet<String>, i64, i64)> = BTreeMap::new();
    for d in delivered.iter().filter(|d| d.kind == Kind::Valid) {
        let event: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
        let ms = match &event["ts"] {
            serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis(),
            other => other.as_i64().unwrap(),
        };
        let text = |k: &str| event[k].as_str().unwrap_or("").to_owned();
        let key = (
            ms.div_euclid(60_000) * 60_000,
            text("page"),
            text("country"),
        );
        let entry = figures.entry(key).or_default();
        match text("action").as_str() {
            "view" => {
                entry.0 += 1;
                if let Some(user) = event["user_id"].as_str() {
                    entry.1.insert(user.to_owned());
                }
            }
            "purchase" => {
                entry.2 += 1;
                entry.3 += event["price"]
                    .as_f64()
                    .map_or(0, |p| (p * 100.0).round() as i64);
            }
            _ => {}
        }
    }
    figures
        .into_iter()
        .map(|(k, (v, users, p, c))| (k, (v, users.len() as i64, p, c)))
        .filter(|(_, v)| *v != (0, 0, 0, 0))
        .collect()
}

/// The same figures, from the outputs' merged views via `weir query`.
async fn merged_outputs(job: &weir::config::Job) -> Oracle {
    let sql = "SELECT CAST(to_unixtime(w) * 1000 AS BIGINT), page, country, \
               sum(v), sum(u), sum(p), sum(c) FROM ( \
                 SELECT window_start AS w, page, country, views AS v, visitors AS u, \
                        0 AS p, 0 AS c FROM page_views \
                 UNION ALL \
                 SELECT window_start, page, country, 0, 0, purchases, \
                        CAST(round(coalesce(revenue, 0) * 100) AS BIGINT) FROM revenue) \
               GROUP BY 1, 2, 3";
    let (_, batches) = weir::cmd::query::run(job, sql).await.unwrap();
    let mut out = Oracle::new();
    for b in batches {
        let ints = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
        let strs = |i: usize| b.column(i).as_string_view().clone();
        let (w, page, country) = (ints(0), strs(1), strs(2));
        let (v, u, p, c) = (ints(3), ints(4), ints(5), ints(6));
        for r in 0..b.num_rows() {
            let text = |a: &arrow::array::StringViewArray| {
                if a.is_null(r) {
                    String::new()
                } else {
                    a.value(r).to_owned()
                }
            };
            out.insert(
                (w.value(r), text(&page), text(&country)),
                (v.value(r), u.value(r), p.value(r), c.value(r)),
            );
        }
    }
    out
}

/// Drains everything delivered so far, crashing once on `fault` and restarting.
async fn drain_across_crash(
    job: &weir::config::Job,
    bootstrap: &str,
    ends: &weir::config::Offsets,
    fault: &str,
) {
    let faults = Faults::parse(fault).unwrap();
    let crashed = run_until(start(job, bootstrap, faults).await, ends, DRAIN).await;
    assert!(crashed.is_err(), "{fault} did not fire");
    run_until(start(job, bootstrap, Faults::default()).await, ends, DRAIN)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_equal_an_independent_computation_across_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 60);
    assert_eq!(
        job.outputs.len(),
        3,
        "the example job declares page_views, revenue and purchases"
    );
    let broker = EmbeddedBroker::start(job.source.topics.first(), 3).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let mut mix = Mix {
        malformed_ratio: 0.02,
        duplicate_ratio: 0.05,
        late_ratio: 0.0,
    };
    // A first stream sets every partition's clock, so the job has a watermark
    // before any late event arrives (before it, nothing can be late).
    let mut delivered = produce(&bootstrap, &job, 600, mix, 11).await;
    run_until(
        start(&job, &bootstrap, Faults::default()).await,
        &end_offsets(&delivered),
        DRAIN,
    )
    .await
    .unwrap();

    // Then out-of-order, late and re-sent events, with a crash after each
    // table's commit: after raw's (which vouched for the tables with no rows,
    // before those with rows committed), and after each of the others (the
    // rest committing at once, landed or not): the replays must neither count
    // twice nor judge an event differently than the first time.
    mix.late_ratio = 0.04;
    for (seed, fault) in [
        (12, "sink.after_commit.raw@3:error"),
        (13, "sink.after_commit.page_views@2:error"),
        (14, "sink.after_commit.dlq@2:error"),
        (15, "sink.after_commit.late@2:error"),
        (16, "sink.after_commit.revenue@3:error"),
        (17, "sink.after_commit.purchases@1:error"),
        (18, "sink.after_commit.raw@1:error"),
    ] {
        delivered.extend(produce(&bootstrap, &job, 800, mix, seed).await);
        drain_across_crash(&job, &bootstrap, &end_offsets(&delivered), fault).await;
    }

    let late = expected(&delivered, |d| d.kind == Kind::Late);
    assert!(late.len() > 30, "the stream has late events");
    assert_eq!(
        offsets(&job, "late").await,
        late,
        "late holds exactly the late events"
    );
    assert_eq!(
        offsets(&job, "raw").await,
        expected(&delivered, |d| d.kind == Kind::Valid),
        "raw holds exactly the on-time originals"
    );

    let expected = oracle(&delivered);
    assert!(
        expected.values().map(|v| v.2).sum::<i64>() > 20,
        "the stream has purchases"
    );
    let actual = merged_outputs(&job).await;
    assert_eq!(actual.len(), expected.len());
    for (key, want) in &expected {
        let got = actual
            .get(key)
            .unwrap_or_else(|| panic!("no output row for {key:?}"));
        assert_eq!((got.0, got.1, got.2), (want.0, want.1, want.2), "{key:?}");
        assert!(
            (got.3 - want.3).abs() <= 1,
            "{key:?}: revenue {got:?} vs {want:?}"
        );
    }

    // The stateless output holds exactly the on-time purchases, once each.
    let mut want: Vec<String> = delivered
        .iter()
        .filter(|d| d.kind == Kind::Valid)
        .map(|d| serde_json::from_slice::<serde_json::Value>(&d.payload).unwrap())
        .filter(|e| e["action"] == "purchase")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    want.sort();
    let (_, batches) = weir::cmd::query::run(&job, "SELECT event_id FROM purchases ORDER BY 1")
        .await
        .unwrap();
    let got: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let ids = b.column(0).as_string_view().clone();
            (0..ids.len()).map(move |i| ids.value(i).to_owned())
        })
        .collect();
    assert_eq!(got, want);
}
