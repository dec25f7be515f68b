//! Rebuilt rows on local disk, so a reprocess or verify holds a few batches
//! in memory however many events its range has.
//!
//! A range is rebuilt one stream of `raw` batches at a time; what the stages
//! make of each batch is written at once to a Parquet file in a temporary
//! folder (a [`Stage`]), not gathered in memory. Everything that has to see a
//! whole day or range at once (the sort of `raw` by event time, the fold of
//! window partials, the comparison of verify) runs in a DataFusion session
//! whose memory pool is bounded ([`bounded_session`]): past the bound its
//! sorts and aggregations spill to the system's temporary folder instead of
//! growing. The stage's folder is removed when the stage is dropped, on
//! success and on error alike.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigNonZeroUsize;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use deltalake::delta_datafusion::DeltaSessionContext;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use tempfile::TempDir;

/// The memory a reprocess's sorts and folds hold before they spill, unless
/// `--memory-mib` says otherwise.
pub const DEFAULT_MEMORY_MIB: usize = 1024;

/// Rows per batch in the bounded session.
const BATCH_ROWS: usize = 512;

/// Rows per Parquet row group in a staged file: the writer holds one row
/// group in memory until it is flushed.
const ROW_GROUP_ROWS: usize = 16 * 1024;

/// A session whose sorts, joins and aggregations hold at most `memory_bytes`
/// between them (shared fairly), spilling to the system's temporary folder
/// beyond. Delta's own session, so delta-rs can run writes planned in it.
pub fn bounded_session(memory_bytes: usize) -> Result<SessionContext, DataFusionError> {
    // No cache of folder listings: a stage's folders change between reads.
    let listings = CacheManagerConfig::default().with_list_files_cache_limit(0);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(memory_bytes)))
        .with_cache_manager(listings)
        .build_arc()?;
    let ctx = DeltaSessionContext::with_runtime_env(runtime).into_inner();
    let state = ctx.state_ref();
    let mut state = state.write();
    let execution = &mut state.config_mut().options_mut().execution;
    // One sort at a time (raw's rows are consumed in one stream anyway), of
    // batches small enough that a small bound holds several (a batch of raw,
    // payloads and all, is about 1 KB a row), keeping back for the merge of
    // its spilled runs (10 MB by default) a share of the bound.
    execution.target_partitions = 1;
    execution.batch_size = ConfigNonZeroUsize::try_new(BATCH_ROWS)?;
    execution.sort_spill_reservation_bytes =
        (memory_bytes / 16).min(execution.sort_spill_reservation_bytes);
    // One sort over the tiers' union, not one per tier merged after: a merge
    // of sorted inputs cannot spill, so beside sorts that fill the pool it
    // would find no room.
    state.config_mut().options_mut().optimizer.repartition_sorts = false;
    drop(state);
    Ok(ctx)
}

/// A temporary folder of Parquet files, each named by a folder (one per kind
/// of rows and target) and a file name, read back as one table per folder.
pub struct Stage {
    dir: TempDir,
}

impl Stage {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new().prefix("weir-stage-").tempdir()?,
        })
    }

    fn folder(&self, folder: &str) -> PathBuf {
        self.dir.path().join(folder)
    }

    /// A new file in `folder` for rows of `schema`.
    pub fn create(
        &self,
        folder: &str,
        name: &str,
        schema: &SchemaRef,
    ) -> Result<StagedFile, DataFusionError> {
        let dir = self.folder(folder);
        std::fs::create_dir_all(&dir)?;
        let file = File::create(dir.join(format!("{name}.parquet")))?;
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(properties))?;
        Ok(StagedFile { writer })
    }

    /// Writes everything `frame` yields into a new file, a batch at a time.
    pub async fn write(
        &self,
        folder: &str,
        name: &str,
        frame: DataFrame,
        schema: &SchemaRef,
    ) -> Result<(), DataFusionError> {
        let mut file = self.create(folder, name, schema)?;
        let mut stream = frame.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            file.push(&batch?)?;
        }
        file.close()
    }

    /// Every file of `folder` as one table of `schema` in `ctx` (none yet: no
    /// rows).
    pub async fn read(
        &self,
        ctx: &SessionContext,
        folder: &str,
        schema: &SchemaRef,
    ) -> Result<DataFrame, DataFusionError> {
        let dir = self.folder(folder);
        std::fs::create_dir_all(&dir)?;
        let options = ParquetReadOptions::default().schema(schema);
        let path = format!("{}/", dir.display());
        ctx.read_parquet(path, options).await
    }

    /// Drops `folder`'s files once they have been read for good.
    pub fn remove(&self, folder: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.folder(folder)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// One staged Parquet file being written; [`StagedFile::close`] finishes it.
pub struct StagedFile {
    writer: ArrowWriter<File>,
}

impl StagedFile {
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), DataFusionError> {
        if batch.num_rows() > 0 {
            self.writer.write(batch)?;
        }
        Ok(())
    }

    pub fn close(self) -> Result<(), DataFusionError> {
        self.writer.close()?;
        Ok(())
    }
}
