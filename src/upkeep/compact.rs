//! Continuous compaction of the hot tier: a table's small files are merged as
//! they accumulate, beside ingest, not only at the next round of upkeep.
//!
//! Ingest adds a file per table with rows per trigger (one a second at the
//! default interval; a large trigger on many cores adds a few: see
//! `file_slices` in the sink): 86,400 a day, which every reader and every checkpoint
//! would pay for. Once a hot table has gained `maintenance.compact_after_files`
//! files since it was last merged, its files under `maintenance.target_file_mib`
//! are merged into files of about that size ([`super::merge`], which skips
//! files already at the size, so a merge rewrites only what was added since
//! plus at most one partly filled file). A merge's commit removes and adds
//! files without changing rows: ingest's blind appends never conflict with
//! it, and a merge that loses to another commit that removed files
//! (another process's merge, a fold, a move) is tried again on the next
//! round.

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};

use deltalake::DeltaTable;
use tracing::{debug, info};

use crate::config::Job;
use crate::config::Tier;
use crate::table::delta::open;
use crate::table::{TableError, TableId};
use crate::upkeep::maintain::MaintainError;
use crate::upkeep::merge::{Merged, merge_properties, merge_small_files};

/// A hot table's files before and after one merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub before: usize,
    pub after: usize,
}

/// The hot tables of one job, and how many files each had after its last merge.
pub struct Compactor {
    job: Job,
    threshold: NonZeroUsize,
    tables: BTreeMap<TableId, (DeltaTable, usize)>,
}

impl Compactor {
    /// `None` when the job's `maintenance.compact_after_files` is off.
    pub fn new(job: &Job) -> Option<Self> {
        Some(Self {
            job: job.clone(),
            threshold: job.maintenance.compact_after_files?,
            tables: BTreeMap::new(),
        })
    }

    /// Merges the small files of every hot table that gained the threshold's
    /// worth since its last merge; returns what each merge did.
    pub async fn round(&mut self) -> Result<Vec<(TableId, Compacted)>, MaintainError> {
        let mut done = Vec::new();
        for id in TableId::all(&self.job) {
            if let Some(compacted) = self.compact(id).await? {
                done.push((id, compacted));
            }
        }
        Ok(done)
    }

    async fn compact(&mut self, id: TableId) -> Result<Option<Compacted>, MaintainError> {
        let name = id.name(&self.job).to_owned();
        let delta = |step: &'static str| {
            let table = name.clone();
            move |source| MaintainError::Delta {
                step,
                table,
                source: Box::new(source),
            }
        };
        let (table, merged) = match self.tables.get_mut(&id) {
            Some((table, merged)) => {
                table
                    .update_incremental(None)
                    .await
                    .map_err(delta("reading the log"))?;
                (table, merged)
            }
            None => {
                let url = self.job.storage.hot_table(&self.job.name, &name);
                let table = match open(&name, &url).await {
                    Ok(table) => table,
                    // Not created yet: nothing to merge.
                    Err(TableError::Missing { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let (table, merged) = self.tables.entry(id).or_insert((table, 0));
                (table, merged)
            }
        };
        let before = file_count(table);
        if before < *merged + self.threshold.get() {
            return Ok(None);
        }
        let target =
            NonZeroU64::new(self.job.maintenance.target_file_bytes).expect("validated: above 0");
        let merged_now = merge_small_files(&self.job, table, target, merge_properties(Tier::Hot))
            .await
            .map_err(delta("merging small files"))?;
        let (compacted, removed, added) = match merged_now {
            Merged::Done {
                table,
                removed,
                added,
            } => (table, removed, added),
            Merged::Nothing => {
                *merged = before;
                return Ok(None);
            }
            Merged::Lost => {
                debug!(
                    table = name,
                    "merge lost to a concurrent commit; next round"
                );
                return Ok(None);
            }
        };
        let after = file_count(&compacted);
        info!(
            table = name,
            files = before,
            now = after,
            removed,
            added,
            "small files merged"
        );
        *table = compacted;
        *merged = after;
        Ok(Some(Compacted { before, after }))
    }
}

/// The files in the table's snapshot.
pub fn file_count(table: &DeltaTable) -> usize {
    table.get_file_uris().map_or(0, |files| files.count())
}
