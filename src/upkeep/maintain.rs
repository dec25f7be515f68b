//! Table upkeep: what keeps a streaming job's tables cheap to read after
//! months of one small commit per trigger.
//!
//! Per table, in order: fold the partials of closed windows into one row per
//! (window, keys); merge small files into large ones; write a checkpoint and
//! delete log entries older than the log retention; vacuum files removed
//! longer ago than the vacuum retention, found through the removals the log
//! keeps (for [`crate::config::Maintenance::removals_kept`], set when
//! the table is opened). The vacuum reads them from the snapshot taken before
//! that checkpoint, so a retention just shortened drops none it has not seen;
//! then it sweeps the folder for files no commit holds, a day old ([`ORPHAN_AGE`]).
//! None of it changes what a reader sees: a fold replaces the closed windows'
//! partials with their merge in one commit, and file merges rewrite rows
//! unchanged.
//!
//! Ingest is never blocked or failed by upkeep. Ingest commits are blind appends
//! carrying txn actions, which never conflict with a file merge; a fold replaces
//! rows by predicate, and if an append added rows matching it meanwhile, the
//! fold's commit is the one refused (and retried on the new snapshot).

use std::fmt;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use chrono::Utc;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use deltalake::checkpoints::cleanup_expired_logs_for;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use tracing::{info, warn};

use crate::config::{Job, JobError, Output, Tier};
use crate::fault::{FaultError, Faults};
use crate::ingest::lookup::{LookupError, Lookups};
use crate::ingest::transform::{WINDOW_END, WindowAggregate};
use crate::ingest::watermark::Watermark;
use crate::table::delta::{
    is_lost_race, open_or_create_in, register, stored_schema, write_checkpoint,
};
use crate::table::schema::conform;
use crate::table::tier::{self, Tiered};
use crate::table::{Catalog, TableError};
use crate::telemetry::Progress;
use crate::upkeep::compact::file_count;
use crate::upkeep::merge::{Merged, merge_properties, merge_small_files};
use crate::upkeep::moves::{Moved, Route, move_rows};

#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{step} of table {table}: {source}")]
    Delta {
        step: &'static str,
        table: String,
        source: Box<DeltaTableError>,
    },
    #[error(transparent)]
    Fault(#[from] FaultError),
    #[error(transparent)]
    Job(Box<JobError>),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("reading the rows of {table} to move: {source}")]
    Move {
        table: String,
        source: DataFusionError,
    },
    #[error(
        "{table}: the {to} table took its last rows from another {from} table than the one at \
         {from} now (it was recreated or replaced since); moving now could delete rows of this \
         one that were never copied, so nothing is moved. Put back the {from} table the {to} \
         one came from, or move the {to} (and later) tiers' tables aside too"
    )]
    SourceReplaced {
        table: String,
        from: &'static str,
        to: &'static str,
    },
    #[error("folding the partials of {table}: {source}")]
    Fold {
        table: String,
        source: DataFusionError,
    },
}

/// What one round did to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    pub tier: Tier,
    /// Rows this round moved out of this tier to the next.
    pub moved: Option<Moved>,
    pub files_before: usize,
    pub files_after: usize,
    /// Partial rows of closed windows before and after folding.
    pub folded: Option<(usize, usize)>,
    pub logs_removed: usize,
    pub files_vacuumed: usize,
}

/// A round over all of a job's tables.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub tables: Vec<TableReport>,
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<16} {:<5} {:>10} {:>7} {:>7} {:>16} {:>12} {:>9}",
            "table",
            "tier",
            "moved on",
            "files",
            "→ now",
            "closed partials",
            "logs removed",
            "vacuumed"
        )?;
        for t in &self.tables {
            let folded = t
                .folded
                .map_or("-".into(), |(before, after)| format!("{before} → {after}"));
            let moved = t.moved.map_or("-".into(), |m| {
                if m.resumed {
                    "resumed".to_owned()
                } else {
                    m.rows.to_string()
                }
            });
            writeln!(
                f,
                "{:<16} {:<5} {:>10} {:>7} {:>7} {:>16} {:>12} {:>9}",
                t.table,
                t.tier.name(),
                moved,
                t.files_before,
                t.files_after,
                folded,
                t.logs_removed,
                t.files_vacuumed
            )?;
        }
        write!(f, "maintenance took {:.1} s", self.elapsed.as_secs_f64())
    }
}

const STEPS_PER_TABLE: usize = 4;
/// A fold that keeps losing to concurrent appends gives up for this round.
const FOLD_ATTEMPTS: usize = 5;

/// Runs one round of upkeep over every table of `job`: first the tier moves
/// (hot → warm → cold, by age), then per tier table the fold, merge, log and
/// vacuum steps. Fault points (for crash tests) follow each step:
/// `maintain.after_<move_write|move_delete|fold|merge|checkpoint|vacuum>.<table>`.
pub async fn run_once(job: &Job, faults: &Faults) -> Result<Report, MaintainError> {
    let started = Instant::now();
    let (watermark, _) = Watermark::restored(job, &mut Tiered::new(job), &[]).await?;
    let watermark = watermark.current_us();
    let lookups = Lookups::load(job).await?;
    let catalog = Catalog::of(job, &lookups)
        .await
        .map_err(|e| MaintainError::Job(Box::new(e)))?;
    let specs = catalog.specs();
    let progress = Progress::new(specs.len() * Tier::ALL.len() * STEPS_PER_TABLE, "steps");
    let mut tables = Vec::new();
    for spec in specs {
        let name = spec.name.as_str();
        let fold = job.outputs.iter().find_map(|o| match o {
            Output::Window(w) if w.name == name => Some(WindowAggregate::new(w, &job.contract)),
            _ => None,
        });
        let mut moved = [None, None];
        if let Some(age) = tier::age_of(job, spec.id) {
            for (i, (from, to)) in [(Tier::Hot, Tier::Warm), (Tier::Warm, Tier::Cold)]
                .into_iter()
                .enumerate()
            {
                let Some(cutoff) = tier::cutoff_us(job, &age, from, watermark) else {
                    continue;
                };
                let source = open_or_create_in(job, from, spec).await?;
                let route = Route {
                    job,
                    spec,
                    age: &age,
                    from,
                    to,
                };
                moved[i] = move_rows(route, source, cutoff, faults).await?;
            }
        }
        for &tier in tier::tiers_of(job, spec.id) {
            let table = open_or_create_in(job, tier, spec).await?;
            let step = Step {
                name,
                progress: &progress,
                faults,
            };
            let mut report =
                maintain_table(job, tier, table, fold.as_ref(), watermark, &step).await?;
            report.moved = moved.get(tier as usize).copied().flatten();
            info!(
                table = name,
                tier = tier.name(),
                files = report.files_before,
                now = report.files_after,
                folded = ?report.folded,
                moved = ?report.moved,
                "table maintained"
            );
            tables.push(report);
        }
    }
    progress.finish();
    Ok(Report {
        tables,
        elapsed: started.elapsed(),
    })
}

/// Where a table's upkeep reports each step done.
struct Step<'a> {
    name: &'a str,
    progress: &'a Progress,
    faults: &'a Faults,
}

impl Step<'_> {
    fn done(&self, step: &str, point: &str) -> Result<(), FaultError> {
        self.progress.advance(format!("{}: {step}", self.name));
        self.faults
            .check(&format!("maintain.after_{point}.{}", self.name))
    }
}

async fn maintain_table(
    job: &Job,
    tier: Tier,
    mut table: DeltaTable,
    fold: Option<&WindowAggregate>,
    watermark: Option<i64>,
    step: &Step<'_>,
) -> Result<TableReport, MaintainError> {
    let name = step.name;
    let delta = |step: &'static str| {
        move |source| MaintainError::Delta {
            step,
            table: name.to_owned(),
            source: Box::new(source),
        }
    };
    let mut report = TableReport {
        table: name.to_owned(),
        tier,
        moved: None,
        files_before: file_count(&table),
        files_after: 0,
        folded: None,
        logs_removed: 0,
        files_vacuumed: 0,
    };

    if let (Some(agg), Some(w)) = (fold, watermark) {
        let (folded, counts) = fold_closed_windows(name, table, agg, w).await?;
        table = folded;
        report.folded = counts;
    }
    step.done("fold closed windows", "fold")?;

    let target = NonZeroU64::new(job.maintenance.target_file_bytes).expect("validated: above 0");
    match merge_small_files(job, &table, target, merge_properties(tier))
        .await
        .map_err(delta("merging small files"))?
    {
        Merged::Done { table: merged, .. } => table = merged,
        Merged::Nothing => {}
        Merged::Lost => {
            warn!(
                table = name,
                "merge lost to a concurrent commit; the next round merges"
            );
            table
                .update_incremental(None)
                .await
                .map_err(delta("reading the log"))?;
        }
    }
    step.done("merge small files", "merge")?;

    let version = table.version().unwrap_or(0);
    write_checkpoint(&table.log_store(), version)
        .await
        .map_err(delta("checkpointing"))?;
    let cutoff = Utc::now().timestamp_millis() - job.maintenance.log_retention.as_millis() as i64;
    report.logs_removed =
        cleanup_expired_logs_for(version, table.log_store().as_ref(), cutoff, None)
            .await
            .map_err(delta("cleaning up the log"))?;
    step.done("checkpoint and log cleanup", "checkpoint")?;

    let (vacuumed, deleted) = vacuum(table, job.maintenance.vacuum_retention(tier))
        .await
        .map_err(|(step, e)| delta(step)(e))?;
    report.files_vacuumed = deleted;
    report.files_after = file_count(&vacuumed);
    step.done("vacuum", "vacuum")?;
    Ok(report)
}

/// How old a data file no commit of the table holds must be before the
/// vacuum deletes it. Such a file is left by a writer killed between writing
/// it and committing it (a trigger, a merge, a fold, a move, a reprocess), or
/// was removed by a commit whose removal a checkpoint dropped before any
/// round saw it; but a file younger than a writer's longest stretch from
/// write to commit may be one that is about to be committed.
const ORPHAN_AGE: Duration = Duration::from_secs(24 * 3600);

/// Deletes the files removed longer than `retention` ago, through the
/// removals the log keeps; then every data file in the table's folder that
/// no commit holds, once it is [`ORPHAN_AGE`] old (or `retention`, if
/// longer), which takes a listing of the folder. Returns the table and the
/// files deleted, or the failed step.
async fn vacuum(
    table: DeltaTable,
    retention: Duration,
) -> Result<(DeltaTable, usize), (&'static str, DeltaTableError)> {
    let age = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let (table, removed) = table
        .vacuum()
        .with_retention_period(age(retention))
        .with_enforce_retention_duration(false)
        .await
        .map_err(|e| ("vacuuming", e))?;
    let (table, orphans) = table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(age(retention.max(ORPHAN_AGE)))
        .with_enforce_retention_duration(false)
        .await
        .map_err(|e| ("vacuuming files no commit holds", e))?;
    if !orphans.files_deleted.is_empty() {
        info!(
            files = orphans.files_deleted.len(),
            "deleted data files no commit holds (left by a writer stopped before its commit)"
        );
    }
    Ok((
        table,
        removed.files_deleted.len() + orphans.files_deleted.len(),
    ))
}

/// Replaces the partials of windows that ended at or before the watermark with
/// one partial row per (window, keys), in one commit. Returns the table and
/// the closed windows' row counts before and after (`None` when none are closed
/// or all are folded already).
async fn fold_closed_windows(
    name: &str,
    mut table: DeltaTable,
    agg: &WindowAggregate,
    watermark_us: i64,
) -> Result<(DeltaTable, Option<(usize, usize)>), MaintainError> {
    let cutoff = tier::rfc3339_micros(watermark_us);
    let closed = format!("\"{WINDOW_END}\" <= {}", tier::literal(watermark_us));
    let fold_error = |source| MaintainError::Fold {
        table: name.to_owned(),
        source,
    };
    for attempt in 1..=FOLD_ATTEMPTS {
        let ctx = SessionContext::new();
        register(&ctx, "partials", &table)
            .await
            .map_err(fold_error)?;
        let count = format!("SELECT count(*) FROM partials WHERE {closed}");
        let before = count_value(&ctx, &count).await.map_err(fold_error)?;
        let rows = ctx
            .sql(&agg.fold_sql("partials", &closed))
            .await
            .map_err(fold_error)?
            .collect()
            .await
            .map_err(fold_error)?;
        let stored = stored_schema(&table).map_err(|e| fold_error(e.into()))?;
        let folded = conform(rows, &stored).map_err(fold_error)?;
        let after = folded.num_rows();
        if after == 0 || after == before {
            return Ok((table, None));
        }
        let commit = CommitProperties::default().with_metadata([
            ("weir.operation".to_owned(), serde_json::json!("fold")),
            ("weir.watermark".to_owned(), serde_json::json!(cutoff)),
        ]);
        match table
            .clone()
            .write(vec![folded])
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(closed.clone())
            .with_commit_properties(commit)
            .await
        {
            Ok(written) => return Ok((written, Some((before, after)))),
            Err(e) if attempt < FOLD_ATTEMPTS && is_lost_race(&e) => {
                warn!(table = name, attempt, error = %e, "fold lost to concurrent commits; retrying");
                table.load().await.map_err(|source| MaintainError::Delta {
                    step: "reloading",
                    table: name.to_owned(),
                    source: Box::new(source),
                })?;
            }
            Err(source) => {
                return Err(MaintainError::Delta {
                    step: "folding closed windows",
                    table: name.to_owned(),
                    source: Box::new(source),
                });
            }
        }
    }
    unreachable!("the last attempt returns")
}

async fn count_value(ctx: &SessionContext, sql: &str) -> Result<usize, DataFusionError> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches.first().map_or(0, |b| {
        b.column(0).as_primitive::<Int64Type>().value(0) as usize
    }))
}
