//! The sink's commits against another writer of the same table: ingest writes
//! its log entries itself (put-if-absent) and falls back to delta-rs's
//! conflict checker only when another writer took the version.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Date32Array, Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::protocol::{DeltaOperation, SaveMode};
use weir::config::{Job, Offsets, SourcePartition};
use weir::fault::Faults;
use weir::ingest::sink::Sink;
use weir::metrics::JobMetrics;
use weir::table::{TableId, TableSpec, Tables};

/// The sink's one table.
const NUMBERS: TableId = TableId::Output(0);

fn spec() -> TableSpec {
    TableSpec {
        id: NUMBERS,
        name: "numbers".into(),
        schema: Arc::new(Schema::new(vec![
            Field::new("p", DataType::Int32, false),
            Field::new("o", DataType::Int64, false),
        ])),
        partition_columns: Vec::new(),
        event_id: None,
    }
}

type Trigger = (BTreeMap<TableId, RecordBatch>, Offsets, Offsets);

const fn p(partition: i32) -> SourcePartition {
    SourcePartition::first(partition)
}

/// Rows for offsets `from..to` of partition 0, and the trigger's first/next offsets.
fn trigger(from: i64, to: i64) -> Trigger {
    trigger_of(0, from, to)
}

/// [`trigger`] of `partition`.
fn trigger_of(partition: i32, from: i64, to: i64) -> Trigger {
    let rows = RecordBatch::try_new(
        spec().schema,
        vec![
            Arc::new(Int32Array::from(vec![partition; (to - from) as usize])),
            Arc::new(Int64Array::from((from..to).collect::<Vec<_>>())),
        ],
    )
    .unwrap();
    (
        BTreeMap::from([(NUMBERS, rows)]),
        BTreeMap::from([(p(partition), from)]),
        BTreeMap::from([(p(partition), to)]),
    )
}

async fn open(job: &Job) -> Sink {
    Sink::open(
        job,
        &[spec()],
        Faults::default(),
        JobMetrics::detached(&job.name),
    )
    .await
    .unwrap()
}

/// Another writer's data-less commit carrying a txn for `app_id`.
async fn foreign_commit(job: &Job, app_id: String, version: i64) {
    let table = table(job).await;
    let properties =
        CommitProperties::default().with_application_transaction(Transaction::new(app_id, version));
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    CommitBuilder::from(properties)
        .build(
            Some(table.snapshot().unwrap()),
            table.log_store(),
            operation,
        )
        .await
        .unwrap();
}

/// The rows of the table as the sink's own queries see it.
async fn rows_seen_by(sink: &mut Sink) -> i64 {
    let counted = sink
        .query(&[NUMBERS], "SELECT count(*) AS n FROM numbers")
        .await
        .unwrap();
    let n = counted[0].column(0).as_any().downcast_ref::<Int64Array>();
    n.unwrap().value(0)
}

async fn table(job: &Job) -> DeltaTable {
    deltalake::open_table(common::table_url(job, "numbers"))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_commit_racing_another_writer_lands_after_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::job(dir.path(), 100);
    let mut sink = open(&job).await;
    let (rows, first, next) = trigger(0, 10);
    let report = sink.commit(rows, &first, &next).await.unwrap();
    assert_eq!(
        (report.commits, report.retries),
        (1, 0),
        "one commit: its data and where it starts"
    );

    // Version 2 goes to another writer (another job's partition).
    foreign_commit(&job, "other-job:0".into(), 7).await;
    let (rows, first, next) = trigger(10, 25);
    let report = sink.commit(rows, &first, &next).await.unwrap();
    assert_eq!((report.commits, report.retries), (1, 1), "rebased once");
    let (rows, first, next) = trigger(25, 30);
    let report = sink.commit(rows, &first, &next).await.unwrap();
    assert_eq!((report.commits, report.retries), (1, 0), "direct again");

    let table = table(&job).await;
    assert_eq!(table.version(), Some(4), "create, 10 rows, foreign, 15, 5");
    let rows: usize = common::read_table(&job, "numbers")
        .await
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(rows, 30);
    let versions = common::txn_versions(&job, "numbers", &[0]).await;
    assert_eq!(versions, BTreeMap::from([(0, 30)]));
    // The sink's own queries see its direct commits.
    assert_eq!(rows_seen_by(&mut sink).await, 30);
}

#[tokio::test]
async fn a_large_trigger_on_many_cores_commits_its_slices_as_files_of_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::job(dir.path(), 100);
    let cores = std::num::NonZeroUsize::new(16).unwrap();
    let mut sink = open(&job).await.with_cores(cores);
    let (rows, first, next) = trigger(0, 10_000);
    let report = sink.commit(rows, &first, &next).await.unwrap();
    assert_eq!(report.commits, 1);

    let table = table(&job).await;
    assert_eq!(table.version(), Some(1), "create, then one commit");
    let files = table.snapshot().unwrap().log_data().iter().count();
    assert_eq!(files, 2, "10,000 rows: two slices of 5,000");
    let mut offsets: Vec<i64> = common::read_table(&job, "numbers")
        .await
        .iter()
        .flat_map(|b| {
            let o = b.column_by_name("o").unwrap();
            let o = o.as_any().downcast_ref::<Int64Array>().unwrap();
            o.values().to_vec()
        })
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..10_000).collect::<Vec<_>>(), "each row once");
    let versions = common::txn_versions(&job, "numbers", &[0]).await;
    assert_eq!(versions, BTreeMap::from([(0, 10_000)]));
}

/// `numbers` partitioned by a day column `d`, as `raw` is by event date.
fn dated_spec() -> TableSpec {
    let mut fields = spec().schema.fields().to_vec();
    fields.push(Arc::new(Field::new("d", DataType::Date32, false)));
    TableSpec {
        schema: Arc::new(Schema::new(fields)),
        partition_columns: vec!["d".into()],
        ..spec()
    }
}

/// Each of `table`'s files as its partition value of `d` and its row
/// count, in order.
fn files_by_day(table: &DeltaTable) -> Vec<(String, i64)> {
    let mut files: Vec<(String, i64)> = table
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| {
            let day = f.partition_values_map()["d"].clone().unwrap();
            (day, f.num_records().unwrap() as i64)
        })
        .collect();
    files.sort();
    files
}

/// Rows all of one partition skip delta-rs's split (src/table/files.rs);
/// rows of several still get a file per partition. Either way every row
/// lands once, in the partition of its own day.
#[tokio::test]
async fn rows_of_one_day_or_of_two_land_in_their_days_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::job(dir.path(), 100);
    let mut sink = Sink::open(
        &job,
        &[dated_spec()],
        Faults::default(),
        JobMetrics::detached(&job.name),
    )
    .await
    .unwrap();
    // Offsets 0..10 of day 20,792 (2026-12-05); from 10 on, the odd ones of
    // the day after.
    let day = |o: i64| 20_792 + i32::from(o >= 10 && o % 2 == 1);
    let dated = |from: i64, to: i64| {
        let rows = RecordBatch::try_new(
            dated_spec().schema,
            vec![
                Arc::new(Int32Array::from(vec![0; (to - from) as usize])),
                Arc::new(Int64Array::from((from..to).collect::<Vec<_>>())),
                Arc::new(Date32Array::from((from..to).map(day).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        let (first, next) = (BTreeMap::from([(p(0), from)]), BTreeMap::from([(p(0), to)]));
        (BTreeMap::from([(NUMBERS, rows)]), first, next)
    };
    for (from, to) in [(0, 10), (10, 25)] {
        let (rows, first, next) = dated(from, to);
        sink.commit(rows, &first, &next).await.unwrap();
    }

    let table = table(&job).await;
    let expected = [("2026-12-05", 8), ("2026-12-05", 10), ("2026-12-06", 7)];
    let expected: Vec<(String, i64)> = expected.map(|(d, n)| (d.into(), n)).into();
    assert_eq!(files_by_day(&table), expected);
    let mut rows: Vec<(i64, i32)> = common::read_table(&job, "numbers")
        .await
        .iter()
        .flat_map(|b| {
            let o = b.column_by_name("o").unwrap();
            let o = o.as_any().downcast_ref::<Int64Array>().unwrap();
            let d = b.column_by_name("d").unwrap();
            let d = d.as_any().downcast_ref::<Date32Array>().unwrap();
            o.values()
                .iter()
                .copied()
                .zip(d.values().iter().copied())
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort_unstable();
    assert_eq!(rows, (0..25).map(|o| (o, day(o))).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_writer_whose_partition_another_committed_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::job(dir.path(), 100);
    let mut sink = open(&job).await;
    let (rows, first, next) = trigger(0, 10);
    sink.commit(rows, &first, &next).await.unwrap();

    // The partition moved: its new owner committed offsets up to 20.
    foreign_commit(&job, job.app_id(p(0)), 20).await;
    let (rows, first, next) = trigger(10, 20);
    let err = sink.commit(rows, &first, &next).await.unwrap_err();
    assert!(err.is_conflict(), "expected a conflict, got: {err}");
    assert_eq!(table(&job).await.version(), Some(2), "nothing committed");
}

/// A refresh (a rebalance's assignment) re-reads only the partitions just
/// assigned but moves the sink to the newest log version: a partition that
/// moved to another writer meanwhile must not then be committed from this
/// writer's older view, which no conflict check would catch (the commit is
/// written at the version after the newest).
#[tokio::test]
async fn a_partition_committed_by_another_sink_since_a_refresh_of_others_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::job(dir.path(), 100);
    let mut a = open(&job).await;
    for partition in [0, 1] {
        let (rows, first, next) = trigger_of(partition, 0, 10);
        a.commit(rows, &first, &next).await.unwrap();
    }
    // Partition 1 moves to sink b, which commits 10..20 of it.
    let mut b = open(&job).await;
    assert_eq!(
        b.resume_positions(&[p(1)]).await.unwrap(),
        BTreeMap::from([(p(1), 10)])
    );
    let (rows, first, next) = trigger_of(1, 10, 20);
    b.commit(rows, &first, &next).await.unwrap();
    // a is assigned partition 0 again (only), then commits a stale batch of 1.
    assert_eq!(
        a.resume_positions(&[p(0)]).await.unwrap(),
        BTreeMap::from([(p(0), 10)])
    );
    let (rows, first, next) = trigger_of(1, 10, 15);
    let err = a.commit(rows, &first, &next).await.unwrap_err();
    assert!(err.is_conflict(), "expected a refusal, got: {err}");
    assert!(err.to_string().contains("partition 1"), "{err}");

    assert_eq!(
        common::txn_versions(&job, "numbers", &[0, 1]).await,
        BTreeMap::from([(0, 10), (1, 20)]),
        "partition 1's version is not set back"
    );
    assert_eq!(rows_seen_by(&mut b).await, 30, "no row stored twice");
    // Partition 0, still a's, goes on.
    let (rows, first, next) = trigger_of(0, 10, 12);
    a.commit(rows, &first, &next).await.unwrap();
    assert_eq!(rows_seen_by(&mut a).await, 32);
}

#[tokio::test]
async fn queries_see_every_commit_after_upkeep_cleaned_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::job(dir.path(), 100);
    let mut sink = open(&job).await;
    for (from, to) in [(0, 10), (10, 20), (20, 30)] {
        let (rows, first, next) = trigger(from, to);
        sink.commit(rows, &first, &next).await.unwrap();
    }
    // Upkeep checkpoints version 3 and deletes the entries before it, which
    // the sink's snapshot (version 0, from opening) would have replayed.
    let table = table(&job).await;
    assert_eq!(table.version(), Some(3));
    weir::table::delta::write_checkpoint(&table.log_store(), 3)
        .await
        .unwrap();
    let log = common::table_url(&job, "numbers")
        .to_file_path()
        .unwrap()
        .join("_delta_log");
    for version in 0..3 {
        std::fs::remove_file(log.join(format!("{version:020}.json"))).unwrap();
    }
    assert_eq!(rows_seen_by(&mut sink).await, 30);
}

/// A slow checkpoint leaves no backlog behind it: the checkpoints asked for
/// while it is written coalesce into one, at the newest version, so a stop
/// waits for two checkpoints, not for every one asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_asked_for_during_a_slow_one_coalesce_into_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::job(dir.path(), 100);
    let slow_first = Faults::parse("sink.checkpoint.numbers@1:sleep=15000").unwrap();
    let mut sink = Sink::open(&job, &[spec()], slow_first, JobMetrics::detached(&job.name))
        .await
        .unwrap();
    // Create, base, then one version per trigger: the log ends at version 500,
    // and checkpoints are asked for at 99, 199, 299, 399 and 499.
    for offset in 0..499 {
        let (rows, first, next) = trigger(offset, offset + 1);
        sink.commit(rows, &first, &next).await.unwrap();
    }
    sink.settle().await;
    let log = common::table_url(&job, "numbers")
        .to_file_path()
        .unwrap()
        .join("_delta_log");
    let mut made: Vec<u64> = std::fs::read_dir(log)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let version = name.strip_suffix(".checkpoint.parquet")?;
            Some(version.parse().unwrap())
        })
        .collect();
    made.sort();
    assert_eq!(made, [99, 499]);
}
