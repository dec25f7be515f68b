//! Rebuilt rows on local disk, so a reprocess or verify holds a few batches
//! in memory however many events its range has.
//!
//! A range is rebuilt one stream of `raw` batches at a time; what the stages
//! make of each batch is written at once to a Parquet file in a temporary
//! folder (a [`Stage`]), not gathered in memory. Everything that has to see a
//! whole day or range at once (the sort of `raw` by event time, the fold of
//! window partials, the comparison of verify) runs in a DataFusion session
//! whose memory pool is bounded ([`bounded_session`]): past the bound its
//! sorts and aggregations spill into the stage's folder instead of growing.
//! The stage's folder is removed when the stage is dropped, on success and on
//! error alike; a process killed before that leaves it behind, and the next
//! stage made on the machine removes it ([`Stage::new`]).

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigNonZeroUsize;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use deltalake::delta_datafusion::DeltaSessionContext;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use tracing::{info, warn};

/// The memory a reprocess's sorts and folds hold before they spill, unless
/// `--memory-mib` says otherwise.
pub const DEFAULT_MEMORY_MIB: usize = 1024;

/// Rows per batch in the bounded session.
const BATCH_ROWS: usize = 512;

/// Rows per Parquet row group in a staged file: the writer holds one row
/// group in memory until it is flushed.
const ROW_GROUP_ROWS: usize = 16 * 1024;

/// A session whose sorts, joins and aggregations hold at most `memory_bytes`
/// between them (shared fairly), spilling into `stage`'s folder beyond. Delta's
/// own session, so delta-rs can run writes planned in it.
pub fn bounded_session(
    memory_bytes: usize,
    stage: &Stage,
) -> Result<SessionContext, DataFusionError> {
    // No cache of folder listings: a stage's folders change between reads.
    let listings = CacheManagerConfig::default().with_list_files_cache_limit(0);
    let spills = DiskManagerMode::Directories(vec![stage.dir.clone()]);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(memory_bytes)))
        .with_cache_manager(listings)
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(spills))
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

/// What every stage's folder in the system's temporary folder is named from.
const PREFIX: &str = "weir-stage-";

/// A stage's folder until it is locked, so that no sweep takes it for one
/// left behind ([`Stage::new`]).
const UNLOCKED_PREFIX: &str = "weir-new-stage-";

/// The file in a stage's folder its process holds locked while it runs.
const LOCK: &str = ".lock";

/// A temporary folder of Parquet files, each named by a folder (one per kind
/// of rows and target) and a file name, read back as one table per folder.
/// Removed when dropped.
pub struct Stage {
    dir: PathBuf,
    /// Locked for the stage's life: the OS releases it when the process
    /// ends however it ends, so an unlocked stage is one left behind.
    _lock: File,
}

impl Stage {
    /// A new stage in the system's temporary folder, after removing those
    /// that processes killed before they could remove them left there (a
    /// day's staged rows and spills can be large). A stage is made under
    /// another name and locked before it takes its own, so a sweep never
    /// sees one that is not locked yet.
    pub fn new() -> std::io::Result<Self> {
        let tmp = std::env::temp_dir();
        sweep_abandoned(&tmp);
        let unlocked = tempfile::Builder::new()
            .prefix(UNLOCKED_PREFIX)
            .tempdir_in(&tmp)?;
        let lock = File::create(unlocked.path().join(LOCK))?;
        lock.try_lock()?;
        let name = unlocked.path().file_name().unwrap_or_default();
        let suffix = name.to_string_lossy().replacen(UNLOCKED_PREFIX, "", 1);
        let dir = tmp.join(format!("{PREFIX}{suffix}"));
        // Released only once moved: if the rename fails, the folder goes.
        std::fs::rename(unlocked.path(), &dir)?;
        let _moved = unlocked.keep();
        Ok(Self { dir, _lock: lock })
    }

    fn folder(&self, folder: &str) -> PathBuf {
        self.dir.join(folder)
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

impl Drop for Stage {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            warn!(folder = %self.dir.display(), error = %e, "cannot remove a reprocess stage");
        }
    }
}

/// Removes the stages in `tmp` whose process has ended: their lock is free.
/// Stages made before stages were locked have no lock file and are left
/// alone, since one of them may still be in use.
fn sweep_abandoned(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Ok(lock) = File::open(dir.join(LOCK)) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                info!(folder = %dir.display(), "removed a reprocess stage its killed process left behind")
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                warn!(folder = %dir.display(), error = %e, "cannot remove a reprocess stage left behind")
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder named as a stage in `tmp`, with a lock file unless
    /// `lock_file` is false.
    fn fake_stage(tmp: &Path, name: &str, lock_file: bool) -> PathBuf {
        let dir = tmp.join(format!("{PREFIX}{name}"));
        std::fs::create_dir_all(dir.join("rows-0")).unwrap();
        if lock_file {
            File::create(dir.join(LOCK)).unwrap();
        }
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn only_stages_whose_process_ended_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        fake_stage(tmp.path(), "killed", true);
        let live = fake_stage(tmp.path(), "live", true);
        let held = File::open(live.join(LOCK)).unwrap();
        held.try_lock().unwrap();
        fake_stage(tmp.path(), "from-before-locks", false);
        std::fs::create_dir_all(tmp.path().join("weir-other")).unwrap();
        sweep_abandoned(tmp.path());
        let left = [
            "weir-other",
            "weir-stage-from-before-locks",
            "weir-stage-live",
        ];
        assert_eq!(names(tmp.path()), left);
    }

    #[test]
    fn a_stage_is_locked_while_held_and_gone_when_dropped() {
        let stage = Stage::new().unwrap();
        let dir = stage.dir.clone();
        assert!(
            dir.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(PREFIX)
        );
        let lock = File::open(dir.join(LOCK)).unwrap();
        assert!(lock.try_lock().is_err(), "a live stage's lock is held");
        sweep_abandoned(dir.parent().unwrap());
        assert!(dir.exists(), "a sweep leaves a live stage alone");
        drop(stage);
        assert!(!dir.exists());
    }
}
