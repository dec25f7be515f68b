//! Merging a table's small files, with a commit that loses to another merge.
//!
//! delta-rs's optimize would do the rewriting, but its commit drops the txn
//! it is given, and its conflict checker does not compare a commit's removes
//! with a concurrent commit's removes that changed no data (a merge's). Two
//! `weir run` processes of a job each merge the hot tables: both merges of
//! the same files would land, every merged row twice (the scale-out and
//! chaos tests found it). So the merge is weir's own: optimize's plan (per
//! partition, the files under the target size packed into bins of about that
//! size, a bin of one file left alone), the rows copied file by file, and one
//! commit that removes and adds with `dataChange = false` and carries the
//! txn `weir:<job>:merge`. delta-rs refuses a commit when a commit that
//! landed after its snapshot wrote a txn of the same app ID: of two merges
//! that overlap in time the second is refused, and tried again on a later
//! round. (Folds, moves and reprocessing, whose removes change data, already
//! conflict with a merge either way: tests/merge.rs.)
//!
//! ```text
//!   snapshot ──plan──> bins ──copy rows──> new files ──commit(removes, adds, txn)
//!                                                        │
//!               another merge landed since the snapshot ─┴──> Merged::Lost
//! ```

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{Field, SchemaRef};
use deltalake::DeltaTable;
use deltalake::datafile::DataFileReader;
use deltalake::datafile::reader::ParquetFileReader;
use deltalake::errors::DeltaTableError;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, LogicalFileView, Transaction};
use deltalake::logstore::ObjectStoreRef;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::TryStreamExt;

use crate::config::{Job, Tier};
use crate::table::delta::{is_lost_race, stored_schema};
use crate::table::files::write_rows;

/// What one merge of a table's small files did.
pub enum Merged {
    /// No partition had two files under the target size.
    Nothing,
    /// A concurrent commit that removed files (another process's merge, a
    /// fold, a move, a reprocess) landed first, or other commits took every
    /// next version while this one retried; the files are left for a later
    /// round.
    Lost,
    /// `removed` files became `added`; the table is at the merge's commit.
    Done {
        table: DeltaTable,
        removed: usize,
        added: usize,
    },
}

/// Merges `table`'s files under `target` bytes into files of about that
/// size, written with `properties`, in one commit.
pub async fn merge_small_files(
    job: &Job,
    table: &DeltaTable,
    target: NonZeroU64,
    properties: WriterProperties,
) -> Result<Merged, DeltaTableError> {
    let bins = plan(table, target.get())?;
    if bins.is_empty() {
        return Ok(Merged::Nothing);
    }
    let stored = stored_schema(table)?;
    let partition_columns = table.snapshot()?.metadata().partition_columns();
    let store = table.log_store().object_store(None);
    let mut actions = Vec::new();
    let removed = bins.iter().map(Vec::len).sum();
    for bin in &bins {
        let mut writer =
            RecordBatchWriter::for_table(table)?.with_writer_properties(properties.clone());
        for file in bin {
            copy_rows(&store, file, &stored, partition_columns, &mut writer).await?;
            actions.push(Action::Remove(file.remove_action(false)));
        }
        actions.extend(writer.flush().await?.into_iter().map(|mut add| {
            add.data_change = false;
            Action::Add(add)
        }));
    }
    let added = actions.len() - removed;
    let commit = CommitProperties::default()
        .with_application_transaction(merge_txn(job))
        .with_cleanup_expired_logs(Some(false));
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: i64::try_from(target.get()).unwrap_or(i64::MAX),
    };
    let committed = CommitBuilder::from(commit)
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await;
    match committed {
        Ok(finalized) => {
            let mut merged = table.clone();
            merged.state = Some(finalized.snapshot());
            Ok(Merged::Done {
                table: merged,
                removed,
                added,
            })
        }
        Err(e) if is_lost_race(&e) => Ok(Merged::Lost),
        Err(e) => Err(e),
    }
}

/// The txn of every merge of `job`'s tables; its version is the time, which
/// nothing reads.
pub fn merge_txn(job: &Job) -> Transaction {
    let app_id = format!("weir:{}:merge", job.name);
    Transaction::new(app_id, chrono::Utc::now().timestamp_millis())
}

/// The bins to merge: per partition, the files under `target` bytes in the
/// order they were written, packed greedily into bins of at most `target`
/// bytes; bins of a single file are dropped (nothing to merge).
fn plan(table: &DeltaTable, target: u64) -> Result<Vec<Vec<LogicalFileView>>, DeltaTableError> {
    let mut partitions: BTreeMap<Vec<(String, Option<String>)>, Vec<LogicalFileView>> =
        BTreeMap::new();
    for file in table.snapshot()?.log_data().iter() {
        if file_bytes(&file) < target {
            let mut key: Vec<_> = file.partition_values_map().into_iter().collect();
            key.sort();
            partitions.entry(key).or_default().push(file);
        }
    }
    let mut bins = Vec::new();
    for mut files in partitions.into_values() {
        files.sort_by_key(|f| (f.modification_time(), f.path().into_owned()));
        let mut bin: Vec<LogicalFileView> = Vec::new();
        let mut bytes = 0;
        for file in files {
            if !bin.is_empty() && bytes + file_bytes(&file) > target {
                bins.push(std::mem::take(&mut bin));
                bytes = 0;
            }
            bytes += file_bytes(&file);
            bin.push(file);
        }
        bins.push(bin);
    }
    bins.retain(|bin| bin.len() > 1);
    Ok(bins)
}

fn file_bytes(file: &LogicalFileView) -> u64 {
    u64::try_from(file.size()).unwrap_or(0)
}

/// Streams `file`'s rows, a row group at a time, to `writer`, with its
/// partition values (which live in the log, not in the file) as columns
/// again. Streamed, not read whole: a partly filled merged file may be near
/// the target size, and a merge runs beside ingest.
async fn copy_rows(
    store: &ObjectStoreRef,
    file: &LogicalFileView,
    stored: &SchemaRef,
    partition_columns: &[String],
    writer: &mut RecordBatchWriter,
) -> Result<(), DeltaTableError> {
    let mut batches = ParquetFileReader::new(store.clone())
        .read_file(file.object_store_path())
        .await?;
    let partition = file.partition_values_map();
    while let Some(batch) = batches.try_next().await? {
        let batch = with_partition_values(batch, &partition, stored)?;
        write_rows(writer, batch, stored, partition_columns).await?;
    }
    Ok(())
}

/// `batch` with a column per partition value, typed as the table stores it.
fn with_partition_values(
    batch: RecordBatch,
    partition: &HashMap<String, Option<String>>,
    stored: &SchemaRef,
) -> Result<RecordBatch, DeltaTableError> {
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for (name, value) in partition {
        let field = stored.field_with_name(name)?;
        let text = StringArray::from(vec![value.as_deref(); batch.num_rows()]);
        columns.push(cast(&text, field.data_type())?);
        fields.push(Arc::new(field.clone()));
    }
    let schema = Arc::new(arrow::datatypes::Schema::new(fields));
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The most a merge holds of the row group it is writing. parquet keeps a
/// row group's encoded pages in memory until the group is closed, and its
/// default closes one at a million rows: a merge of a minute of ingest at
/// 12,000 events/s (770,000 rows of `raw`, with their payloads) held the
/// whole file it wrote, a peak beside ingest that the soak bench saw as RSS.
/// Groups of 16 MiB keep that peak bounded and are still large enough for
/// readers' column scans.
const MERGE_ROW_GROUP_BYTES: usize = 16 << 20;

/// How merged files are written: zstd, level 4 (delta-rs's optimize's
/// default) while rows are still read often, level 19 for the archive (cold),
/// slowest to write and read rarely; row groups of at most
/// [`MERGE_ROW_GROUP_BYTES`].
pub fn merge_properties(tier: Tier) -> WriterProperties {
    let level = if tier == Tier::Cold { 19 } else { 4 };
    let zstd = ZstdLevel::try_new(level).expect("4 and 19 are valid zstd levels");
    WriterProperties::builder()
        .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::ZSTD(zstd))
        .set_max_row_group_bytes(Some(MERGE_ROW_GROUP_BYTES))
        .build()
}
