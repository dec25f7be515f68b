//! Tier moves: rows older than a tier's age move to the next tier, crash-safe.
//!
//! A move is two commits. First the rows older than the cutoff are appended to
//! the destination with a txn action `weir:<job>:move:<from>-><to>` whose
//! version is the cutoff (µs); then one commit on the source deletes them,
//! carrying the same txn. A destination whose move txn is ahead of the
//! source's has a move pending: re-running finishes it (the delete, with the
//! recorded cutoff) and never writes the rows again.
//!
//! The destination's txn `…:source` records which source table the copies
//! came from (a hash of its Delta metadata ID): a source table recreated
//! beside an older destination looks like a move whose delete is pending,
//! and finishing it would delete rows that were never copied. Such a move is
//! refused instead ([`MaintainError::SourceReplaced`]).
//!
//!
//! Readers see a pending move's rows once, in the source: see
//! [`crate::table::tier`].

use datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use tracing::warn;

use crate::config::{Job, Tier};
use crate::fault::Faults;
use crate::table::TableSpec;
use crate::table::delta::{open_or_create_in, register, stored_schema, txn_version};
use crate::table::tier::{Age, literal, move_app_id, pending};
use crate::upkeep::maintain::MaintainError;

/// What one move did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub rows: usize,
    /// The move had been interrupted after its first commit and was finished.
    pub resumed: bool,
}

/// One table's way from a tier to the next.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub job: &'a Job,
    pub spec: &'a TableSpec,
    pub age: &'a Age,
    pub from: Tier,
    pub to: Tier,
}

/// Moves the rows of `source` (the table in `route.from`) older than the
/// cutoff to `route.to`. Returns `None` when there was nothing to move.
pub async fn move_rows(
    route: Route<'_>,
    source: DeltaTable,
    cutoff_us: i64,
    faults: &Faults,
) -> Result<Option<Moved>, MaintainError> {
    let Route {
        job,
        spec,
        age,
        from,
        to,
    } = route;
    let name = spec.name.as_str();
    let app_id = move_app_id(job, from, to);
    let delta = |step: &'static str| {
        move |source| MaintainError::Delta {
            step,
            table: format!("{name} ({})", from.name()),
            source: Box::new(source),
        }
    };
    let dest = open_or_create_in(job, to, spec).await?;
    let moved_in = txn_version(&dest, &app_id)
        .await
        .map_err(delta("reading txn"))?;
    let moved_out = txn_version(&source, &app_id)
        .await
        .map_err(delta("reading txn"))?;
    let age_col = format!("\"{}\"", age.column);
    let basis_app = format!("{app_id}:basis");
    let source_app = format!("{app_id}:source");
    let source_id = identity(&source).map_err(delta("reading the metadata"))?;
    let mut dest = dest;
    let mut pending = pending(moved_in, moved_out);
    if pending.is_some() {
        let copied_from = txn_version(&dest, &source_app)
            .await
            .map_err(delta("reading txn"))?;
        // Destinations moved into before weir recorded the source have none.
        if copied_from.is_some_and(|id| id != source_id) {
            return Err(MaintainError::SourceReplaced {
                table: name.to_owned(),
                from: from.name(),
                to: to.name(),
            });
        }
    }
    if let Some(cutoff) = pending {
        let basis = txn_version(&dest, &basis_app)
            .await
            .map_err(delta("reading txn"))?;
        if reprocessed_since(&source, basis.unwrap_or(-1))
            .await
            .map_err(delta("reading the history"))?
        {
            // The copies predate a reprocess of the source: drop them and
            // move the reprocessed rows instead.
            let from_us = moved_out.unwrap_or(i64::MIN);
            let mut stale = format!("{age_col} < {}", literal(cutoff));
            if let Some(out) = moved_out {
                stale = format!("{age_col} >= {} AND {stale}", literal(out));
            }
            warn!(
                table = name,
                from = from.name(),
                to = to.name(),
                "a pending move's copies predate a reprocess; moving again"
            );
            (dest, _) = dest
                .delete()
                .with_predicate(stale)
                .with_commit_properties(move_txn(&app_id, from_us))
                .await
                .map_err(delta("dropping stale moved rows"))?;
            pending = None;
        }
    }

    let (cutoff, resumed, rows) = match pending {
        Some(pending) => (pending, true, 0),
        None => {
            if moved_out.is_some_and(|out| cutoff_us <= out) {
                return Ok(None);
            }
            let read = |source| MaintainError::Move {
                table: name.to_owned(),
                source,
            };
            let ctx = SessionContext::new();
            register(&ctx, "source", &source).await.map_err(read)?;
            let order: Vec<String> = age.sort.iter().map(|c| format!("\"{c}\"")).collect();
            let sql = format!(
                "SELECT * FROM source WHERE {age_col} < {} ORDER BY {}",
                literal(cutoff_us),
                order.join(", ")
            );
            let rows = ctx
                .sql(&sql)
                .await
                .map_err(read)?
                .collect()
                .await
                .map_err(read)?;
            let stored = stored_schema(&dest).map_err(delta("reading the schema"))?;
            let rows = crate::table::schema::conform(rows, &stored).map_err(read)?;
            if rows.num_rows() == 0 {
                return Ok(None);
            }
            let count = rows.num_rows();
            // The source version the copies were read at, so that finishing
            // the move later can tell whether the source was reprocessed since.
            let basis = Transaction::new(&basis_app, source.version().unwrap_or(0) as i64);
            let copied_from = Transaction::new(&source_app, source_id);
            dest.write(vec![rows])
                .with_save_mode(SaveMode::Append)
                .with_partition_columns(spec.partition_columns.clone())
                .with_commit_properties(
                    move_txn(&app_id, cutoff_us)
                        .with_application_transaction(basis)
                        .with_application_transaction(copied_from),
                )
                .await
                .map_err(delta("writing moved rows"))?;
            faults.check(&format!("maintain.after_move_write.{name}"))?;
            (cutoff_us, false, count)
        }
    };
    source
        .delete()
        .with_predicate(format!("{age_col} < {}", literal(cutoff)))
        .with_commit_properties(move_txn(&app_id, cutoff))
        .await
        .map_err(delta("deleting moved rows"))?;
    faults.check(&format!("maintain.after_move_delete.{name}"))?;
    Ok(Some(Moved { rows, resumed }))
}

/// Whether a reprocess committed to `table` after `version`.
async fn reprocessed_since(table: &DeltaTable, version: i64) -> Result<bool, DeltaTableError> {
    let current = table.version().unwrap_or(0) as i64;
    if current <= version {
        return Ok(false);
    }
    let infos: Vec<_> = table
        .history(Some((current - version) as usize))
        .try_collect()
        .await?;
    Ok(infos
        .iter()
        .any(|i| i.info.get("weir.operation").and_then(|v| v.as_str()) == Some("reprocess")))
}

/// A table's identity as a txn version: a hash of its Delta metadata ID,
/// which a table keeps for life and a recreated one does not share.
fn identity(table: &DeltaTable) -> Result<i64, DeltaTableError> {
    let id = table.snapshot()?.metadata().id().to_owned();
    let hash = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
    Ok((hash >> 1) as i64)
}

/// Both commits of a move carry its txn, versioned by the cutoff.
fn move_txn(app_id: &str, cutoff_us: i64) -> CommitProperties {
    CommitProperties::default().with_application_transaction(Transaction::new(app_id, cutoff_us))
}
