//! Merging small files beside other writers: two processes of a job merge the
//! same hot table at once, and a merge races the other rewrites of upkeep.
//! Of two commits that remove the same files the second is refused, and no
//! row is ever stored twice. And what a merge removed: how long checkpoints
//! keep it, set once for every opener of the table.

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Date32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Field, Int64Type, Schema};
use deltalake::DeltaTable;
use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};
use deltalake::protocol::SaveMode;
use weir::config::{Job, Tier};
use weir::table::delta::{
    is_commit_conflict, keep_removals_for, open_or_create_in, write_checkpoint,
};
use weir::table::{TableId, TableSpec};
use weir::upkeep::merge::{Merged, merge_properties, merge_small_files};

const DAYS: [i32; 2] = [20_000, 20_001];
const FILES_PER_DAY: i64 = 5;
const ROWS_PER_FILE: i64 = 100;
const TARGET: NonZeroU64 = NonZeroU64::new(64 << 20).unwrap();

/// A table partitioned by `day` with FILES_PER_DAY small files per day; `n`
/// is unique over all rows.
async fn small_files(dir: &std::path::Path) -> DeltaTable {
    let url = url::Url::from_directory_path(dir.join("numbers")).unwrap();
    std::fs::create_dir_all(dir.join("numbers")).unwrap();
    let mut table = deltalake::DeltaTable::try_from_url(url)
        .await
        .unwrap()
        .create()
        .with_columns([
            StructField::new("n", DeltaType::Primitive(PrimitiveType::Long), false),
            StructField::new("day", DeltaType::Primitive(PrimitiveType::Date), false),
        ])
        .with_partition_columns(["day"])
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("day", DataType::Date32, false),
    ]));
    let mut n = 0;
    for file in 0..FILES_PER_DAY {
        for day in DAYS {
            let from = n;
            n += ROWS_PER_FILE;
            let rows = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from((from..n).collect::<Vec<_>>())),
                    Arc::new(Date32Array::from(vec![day; ROWS_PER_FILE as usize])),
                ],
            )
            .unwrap();
            table = table
                .write(vec![rows])
                .with_save_mode(SaveMode::Append)
                .await
                .unwrap();
            let version = 1 + 2 * file + i64::from(day - DAYS[0]);
            assert_eq!(table.version(), Some(version as u64));
        }
    }
    table
}

/// Every row's (day, n), sorted, through DataFusion over the Delta log.
async fn rows(table: &DeltaTable) -> Vec<(i32, i64)> {
    let ctx = datafusion::prelude::SessionContext::new();
    weir::table::delta::register(&ctx, "numbers", table)
        .await
        .unwrap();
    let batches = ctx
        .sql("SELECT day, n FROM numbers ORDER BY day, n")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let days = b.column(0).as_primitive::<Date32Type>().clone();
            let ns = b.column(1).as_primitive::<Int64Type>().clone();
            (0..b.num_rows()).map(move |i| (days.value(i), ns.value(i)))
        })
        .collect()
}

fn expected() -> Vec<(i32, i64)> {
    let mut all = Vec::new();
    let mut n = 0;
    for _ in 0..FILES_PER_DAY {
        for day in DAYS {
            all.extend((n..n + ROWS_PER_FILE).map(|n| (day, n)));
            n += ROWS_PER_FILE;
        }
    }
    all.sort();
    all
}

fn files_per_day(table: &DeltaTable) -> BTreeMap<String, usize> {
    let mut days = BTreeMap::new();
    for file in table.snapshot().unwrap().log_data().iter() {
        let day = file.partition_values_map()["day"].clone().unwrap();
        *days.entry(day).or_default() += 1;
    }
    days
}

async fn merge(job: &Job, table: &DeltaTable) -> Merged {
    merge_small_files(job, table, TARGET, merge_properties(Tier::Hot))
        .await
        .unwrap()
}

#[tokio::test]
async fn two_merges_of_the_same_files_land_once() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::job(dir.path(), 100);
    let table = small_files(dir.path()).await;
    let stale = table.clone();

    let Merged::Done {
        table: merged,
        removed,
        added,
    } = merge(&job, &table).await
    else {
        panic!("the first merge lands");
    };
    assert_eq!((removed, added), (10, 2), "five files a day become one");
    assert_eq!(
        files_per_day(&merged),
        BTreeMap::from([("2024-10-04".into(), 1), ("2024-10-05".into(), 1)])
    );
    // Another process planned its merge from the same snapshot.
    assert!(matches!(merge(&job, &stale).await, Merged::Lost));

    let mut latest = merged.clone();
    latest.load().await.unwrap();
    assert_eq!(latest.version(), Some(11), "ten appends and one merge");
    assert_eq!(
        rows(&latest).await,
        expected(),
        "every row once, on its day"
    );
    assert!(matches!(merge(&job, &latest).await, Merged::Nothing));
}

#[tokio::test]
async fn a_delete_planned_before_a_merge_is_refused_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::job(dir.path(), 100);
    let table = small_files(dir.path()).await;
    let stale = table.clone();
    assert!(matches!(merge(&job, &table).await, Merged::Done { .. }));

    // A fold or a move's delete, from before the merge: it would remove files
    // the merge already copied, and the merged file would keep their rows.
    let refused = stale
        .delete()
        .with_predicate("n < 50")
        .await
        .expect_err("a rewrite that overlaps another is refused");
    assert!(is_commit_conflict(&refused), "{refused}");

    let mut latest = table;
    latest.load().await.unwrap();
    assert_eq!(rows(&latest).await, expected());
}

/// How many `remove` actions the checkpoint at `version` carries.
fn removals_in_checkpoint(table: &DeltaTable, version: u64) -> usize {
    let root = table.table_url().to_file_path().unwrap();
    let path = root.join(format!("_delta_log/{version:020}.checkpoint.parquet"));
    let file = std::fs::File::open(&path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
        .unwrap()
        .map(|batch| {
            let batch = batch.unwrap();
            let remove = batch.column_by_name("remove").unwrap();
            remove.len() - remove.null_count()
        })
        .sum()
}

/// A merge's removals stay in checkpoints for the retention the table was
/// given, and no longer: what keeps a hot table's checkpoint from growing
/// with every file its merges removed over a week.
#[tokio::test]
async fn checkpoints_keep_removals_for_the_set_retention() {
    let removals_after = |retention: Duration| async move {
        let dir = tempfile::tempdir().unwrap();
        let job = common::job(dir.path(), 100);
        let table = small_files(dir.path()).await;
        let table = keep_removals_for(table, retention).await.unwrap();
        let version = table.version();
        let table = keep_removals_for(table, retention).await.unwrap();
        assert_eq!(table.version(), version, "the retention is set once");
        let Merged::Done { table, removed, .. } = merge(&job, &table).await else {
            panic!("the merge lands");
        };
        assert_eq!(removed, 10);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let version = table.version().unwrap();
        write_checkpoint(&table.log_store(), version).await.unwrap();
        removals_in_checkpoint(&table, table.version().unwrap())
    };
    assert_eq!(removals_after(Duration::from_secs(1)).await, 0);
    assert_eq!(removals_after(Duration::from_secs(3600)).await, 10);
}

/// Ingest, upkeep and tier moves open a job's tables through one function,
/// which sets the removal retention of the job and the tier: so none of them
/// commits metadata that would refuse another's commit, and opening a table
/// again commits nothing.
#[tokio::test]
async fn opening_a_table_again_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::job(dir.path(), 100);
    let spec = TableSpec {
        id: TableId::Dlq,
        name: "dlq".into(),
        schema: Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)])),
        partition_columns: vec![],
        event_id: None,
    };
    for tier in Tier::ALL {
        let first = open_or_create_in(&job, tier, &spec).await.unwrap();
        let again = open_or_create_in(&job, tier, &spec).await.unwrap();
        assert_eq!(again.version(), first.version(), "{tier:?}");
        let seconds = job.maintenance.removals_kept(tier).as_secs();
        let held = again.snapshot().unwrap().metadata().configuration()
            ["delta.deletedFileRetentionDuration"]
            .clone();
        assert_eq!(held, format!("interval {seconds} seconds"), "{tier:?}");
    }
}
