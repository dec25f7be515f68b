//! The tier catalog: which tiers a table spans, how its rows are aged, and
//! how its tier tables read as one.
//!
//! Readers need no boundary metadata: a tier serves only rows older than the
//! youngest row still in the tier before it ([`union_sql`]). While a move is
//! pending the copied rows are also in the source, so none of them is older
//! than the source's youngest row and the destination hides them; once the
//! delete commits they show in the destination. That works in any engine, and
//! it holds because ingest never writes a row older than hot's cutoff (see
//! [`age_of`]).

use std::time::Duration;

use std::collections::HashSet;

use arrow::array::RecordBatch;
use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::prelude::SessionContext;

use super::delta::{open, open_or_create_in, register, register_as};
use super::{Catalog, TableError, TableId, Tables};
use crate::config::{Job, Output, Tier};
use crate::ingest::decode::INGEST_TS;
use crate::ingest::transform::WINDOW_START;

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
pub fn age_of(job: &Job, table: TableId) -> Option<Age> {
    let ingest = |column: &str| Age {
        column: column.to_owned(),
        event_time: false,
        slack: Duration::ZERO,
        sort: vec![column.to_owned()],
    };
    match table {
        TableId::Raw => Some(Age {
            column: job.contract.event_time_name().to_owned(),
            event_time: true,
            slack: Duration::ZERO,
            sort: vec![job.contract.event_time_name().to_owned()],
        }),
        TableId::Dlq | TableId::Late | TableId::Quality => Some(ingest(INGEST_TS)),
        TableId::Output(i) => match job.outputs.get(i)? {
            Output::Window(w) => Some(Age {
                column: WINDOW_START.to_owned(),
                event_time: true,
                slack: w.windowing.slack(),
                sort: w
                    .keys
                    .iter()
                    .map(|k| k.name(&job.contract).to_owned())
                    .chain([WINDOW_START.to_owned()])
                    .collect(),
            }),
            Output::Sql(_) => None,
        },
    }
}

/// The tiers a job table spans: all three, unless it has no age (query
/// outputs), which keeps it hot.
pub fn tiers_of(job: &Job, table: TableId) -> &'static [Tier] {
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
pub fn rfc3339_micros(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A timestamp (µs) as a SQL literal that compares with a UTC timestamp column.
pub fn literal(us: i64) -> String {
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

/// The txn app ID of a job's moves from one tier to the next; its version on
/// each table is the cutoff (µs) of the last move it took part in.
pub fn move_app_id(job: &Job, from: Tier, to: Tier) -> String {
    format!("weir:{}:move:{}->{}", job.name, from.name(), to.name())
}

/// The cutoff of a move whose rows are copied to the next tier but not yet
/// deleted from the source: the destination's move txn is ahead of the source's.
pub fn pending(moved_in: Option<i64>, moved_out: Option<i64>) -> Option<i64> {
    moved_in.filter(|v| *v > moved_out.unwrap_or(i64::MIN))
}

/// Registers job table `table` under `name`: each tier's table as
/// `<name>__<tier>`, and `name` as their union routed by age
/// ([`union_sql`]). Tiers are opened hot first, so a move that commits
/// meanwhile is seen either not at all or whole. Tables that never move (query
/// outputs) are hot only.
pub async fn register_tiers(
    ctx: &SessionContext,
    job: &Job,
    table: TableId,
    name: &str,
) -> Result<(), TableError> {
    let table_name = table.name(job);
    let fail = |source| TableError::Query {
        tables: table_name.to_owned(),
        source: Box::new(source),
    };
    let hot = open(table_name, &job.storage.hot_table(&job.name, table_name)).await?;
    let Some(age) = age_of(job, table) else {
        return register(ctx, name, &hot).await.map_err(fail);
    };
    let mut names = Vec::new();
    for t in Tier::ALL {
        let opened = match t {
            Tier::Hot => hot.clone(),
            _ => match open(table_name, &job.storage.table(t, &job.name, table_name)).await {
                Ok(opened) => opened,
                // Tables written before tiers existed have no warm or cold yet.
                Err(TableError::Missing { .. }) => continue,
                Err(e) => return Err(e),
            },
        };
        let tier_name = format!("{name}__{}", t.name());
        register(ctx, &tier_name, &opened).await.map_err(fail)?;
        names.push(format!("\"{tier_name}\""));
    }
    let union = union_sql(&names, &age.column);
    let view = ctx.sql(&union).await.map_err(fail)?.into_view();
    register_as(ctx, name, view).map_err(fail)
}

/// Creates every colder tier's table of `catalog` that does not exist yet,
/// so readers and views can name them all before the first move.
pub async fn create_colder_tiers(job: &Job, catalog: &Catalog) -> Result<(), TableError> {
    for spec in catalog.specs() {
        for &tier in tiers_of(job, spec.id) {
            if tier != Tier::Hot {
                open_or_create_in(job, tier, spec).await?;
            }
        }
    }
    Ok(())
}

/// A job's tables read across tiers, each registered under its name (and its
/// tiers as `<name>__<tier>`) the first time it is queried.
pub struct Tiered<'a> {
    job: &'a Job,
    ctx: SessionContext,
    registered: HashSet<TableId>,
}

impl<'a> Tiered<'a> {
    pub fn new(job: &'a Job) -> Self {
        Self::with_context(job, SessionContext::new())
    }

    /// Reads in `ctx` (one with a bounded memory pool, say).
    pub fn with_context(job: &'a Job, ctx: SessionContext) -> Self {
        Self {
            job,
            ctx,
            registered: HashSet::new(),
        }
    }

    /// The session with `ids` registered, for SQL of the caller's own.
    pub async fn context(&mut self, ids: &[TableId]) -> Result<&SessionContext, TableError> {
        for &id in ids {
            if self.registered.insert(id) {
                register_tiers(&self.ctx, self.job, id, id.name(self.job)).await?;
            }
        }
        Ok(&self.ctx)
    }
}

impl Tables for Tiered<'_> {
    async fn query(&mut self, ids: &[TableId], sql: &str) -> Result<Vec<RecordBatch>, TableError> {
        let tables = || {
            let names: Vec<&str> = ids.iter().map(|id| id.name(self.job)).collect();
            names.join(", ")
        };
        let ctx = self.context(ids).await?;
        let fail = |source| TableError::Query {
            tables: tables(),
            source: Box::new(source),
        };
        let frame = ctx.sql(sql).await.map_err(fail)?;
        frame.collect().await.map_err(fail)
    }
}
