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
//! Readers need no boundary metadata: a tier serves only rows older than the
//! youngest row still in the tier before it ([`union_sql`]). While a move is
//! pending the copied rows are also in the source, so none of them is older
//! than the source's youngest row and the destination hides them; once the
//! delete commits they show in the destination. That works in any engine, and
//! it holds because ingest never writes a row older than hot's cutoff (see
//! [`age_of`]).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use tracing::warn;

use crate::cmd::query::register;
use crate::config::{Job, Output, Tier};
use crate::fault::Faults;
use crate::ingest::sink::{TableSpec, open_or_create, stored_schema};
use crate::ingest::transform::WINDOW_START;
use crate::upkeep::maintain::MaintainError;

/// How a table's rows are aged, and from when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Age {
    /// The timestamp column rows are aged by.
    pub column: String,
    /// Whether the column follows event time (aged against the watermark)
    /// rather than ingest time (aged against the wall clock).
    pub event_time: bool,
    /// How far behind the watermark the column may be for rows still arriving
    /// (a window starts up to its size before its events).
    pub slack: Duration,
    /// Moved rows are written in this order (a window's keys, then time), so
    /// warm and cold files cluster what readers filter on.
    pub sort: Vec<String>,
}

/// The age column of a job table; `None` for query outputs, which have no
/// column weir can age by and stay hot.
///
/// Each choice keeps ingest from ever writing a row older than hot's cutoff:
/// `raw` rows are at or after the watermark; a window's start is at most its
/// size before that; `dlq` and `late` rows carry their ingest time.
pub fn age_of(job: &Job, table: &str) -> Option<Age> {
    let ingest = |column: &str| Age {
        column: column.to_owned(),
        event_time: false,
        slack: Duration::ZERO,
        sort: vec![column.to_owned()],
    };
    match table {
        "raw" => Some(Age {
            column: job.contract.event_time_name().to_owned(),
            event_time: true,
            slack: Duration::ZERO,
            sort: vec![job.contract.event_time_name().to_owned()],
        }),
        "dlq" | "late" => Some(ingest(crate::ingest::decode::INGEST_TS)),
        name => match job.outputs.iter().find(|o| o.name() == name)? {
            Output::Window(w) => Some(Age {
                column: WINDOW_START.to_owned(),
                event_time: true,
                slack: w.size,
                sort: w
                    .keys
                    .iter()
                    .map(|&k| job.contract.fields[k].name.clone())
                    .chain([WINDOW_START.to_owned()])
                    .collect(),
            }),
            Output::Sql(_) => None,
        },
    }
}

/// The tiers a job table spans: all three, unless it has no age (query
/// outputs), which keeps it hot.
pub fn tiers_of(job: &Job, table: &str) -> &'static [Tier] {
    match age_of(job, table) {
        Some(_) => &Tier::ALL,
        None => &[Tier::Hot],
    }
}

/// The cutoff (µs) below which rows leave `tier`: now (or the watermark, for
/// event-time ages) minus the tier's age and the column's slack.
pub fn cutoff_us(job: &Job, age: &Age, tier: Tier, watermark_us: Option<i64>) -> Option<i64> {
    let max_age = job.storage.max_age(tier)?;
    let reference = if age.event_time {
        watermark_us?
    } else {
        Utc::now().timestamp_micros()
    };
    Some(reference - (max_age + age.slack).as_micros() as i64)
}

/// A timestamp (µs) as RFC 3339 to the microsecond, exact in any predicate.
pub(crate) fn rfc3339_micros(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A timestamp (µs) as a SQL literal that compares with a UTC timestamp column.
pub(crate) fn literal(us: i64) -> String {
    format!("'{}'", rfc3339_micros(us))
}

/// The SQL that reads one table across tiers: `tables` are the tier tables'
/// names in the engine, hot first; each later tier serves only rows older than
/// every row of the tier before it (all its rows when that tier is empty).
/// Plain SQL that DataFusion, DuckDB, Spark and Trino all run (identifiers
/// double-quoted, as everywhere in weir's SQL).
pub fn union_sql(tables: &[String], age_column: &str) -> String {
    let age = format!("\"{age_column}\"");
    let mut parts = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        parts.push(match i {
            0 => format!("SELECT * FROM {table}"),
            _ => {
                let prev = &tables[i - 1];
                format!(
                    "SELECT * FROM {table} WHERE {age} < (SELECT min({age}) FROM {prev}) \
                     OR (SELECT count(*) FROM {prev}) = 0"
                )
            }
        });
    }
    parts.join(" UNION ALL ")
}

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
    let dest_url = job.storage.table(to, &job.name, name);
    let dest = open_or_create(dest_url, spec).await?;
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

/// The txn app ID of a job's moves from one tier to the next; its version on
/// each table is the cutoff (µs) of the last move it took part in.
pub(crate) fn move_app_id(job: &Job, from: Tier, to: Tier) -> String {
    format!("weir:{}:move:{}->{}", job.name, from.name(), to.name())
}

/// The cutoff of a move whose rows are copied to the next tier but not yet
/// deleted from the source: the destination's move txn is ahead of the source's.
pub(crate) fn pending(moved_in: Option<i64>, moved_out: Option<i64>) -> Option<i64> {
    moved_in.filter(|v| *v > moved_out.unwrap_or(i64::MIN))
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

pub(crate) async fn txn_version(
    table: &DeltaTable,
    app_id: &str,
) -> Result<Option<i64>, DeltaTableError> {
    table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), app_id.to_owned())
        .await
}
