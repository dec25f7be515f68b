//! What `weir status` shows of each table: its newest commits, the rows each
//! tier holds and when each tier last changed (a colder tier changes only
//! when maintenance moves rows into it), and the DLQ's commonest reasons.
//! All of it is read from the tables, so a stopped job shows it too.

use std::fmt;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use serde::{Deserialize, Serialize};

use super::StatusError;
use crate::config::Job;
use crate::table::delta::{open, register};
use crate::table::tier::{Tiered, tiers_of};
use crate::table::{TableError, TableId, Tables};

/// How many of a table's newest commits are shown.
const COMMITS_SHOWN: usize = 3;
/// How many of the DLQ's reasons are shown.
const REASONS_SHOWN: usize = 10;

/// One table: its newest commits (hot) and each tier's rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableStatus {
    pub name: String,
    /// Newest first.
    pub commits: Vec<Commit>,
    pub tiers: Vec<TierStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub version: u64,
    pub at: Option<DateTime<Utc>>,
    /// The Delta operation (`WRITE` for a trigger, `DELETE` for a tier move…).
    pub operation: String,
    /// Rows the commit's add actions hold, by their statistics.
    pub rows_added: i64,
}

/// A tier's table: how many rows it holds and its newest version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierStatus {
    pub tier: String,
    pub rows: i64,
    pub version: u64,
    pub last_commit: Option<DateTime<Utc>>,
}

/// A DLQ reason and how many messages were refused for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub reason: String,
    pub messages: i64,
}

/// One entry of a Delta log, with what status needs of its actions.
pub(super) struct Entry {
    pub at_ms: Option<i64>,
    pub operation: String,
    pub rows_added: i64,
    /// `(appId, version)` of each txn action.
    pub txns: Vec<(String, i64)>,
}

impl Entry {
    fn parse(bytes: &[u8]) -> Self {
        let mut entry = Entry {
            at_ms: None,
            operation: String::new(),
            rows_added: 0,
            txns: Vec::new(),
        };
        for line in String::from_utf8_lossy(bytes).lines() {
            let Ok(action) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(info) = action.get("commitInfo") {
                entry.at_ms = info.get("timestamp").and_then(|t| t.as_i64());
                entry.operation = info["operation"].as_str().unwrap_or_default().to_owned();
            }
            if let Some(stats) = action.pointer("/add/stats").and_then(|s| s.as_str()) {
                let stats: serde_json::Value = serde_json::from_str(stats).unwrap_or_default();
                entry.rows_added += stats["numRecords"].as_i64().unwrap_or(0);
            }
            let app = action.pointer("/txn/appId").and_then(|a| a.as_str());
            let version = action.pointer("/txn/version").and_then(|v| v.as_i64());
            if let (Some(app), Some(version)) = (app, version) {
                entry.txns.push((app.to_owned(), version));
            }
        }
        entry
    }

    pub fn at(&self) -> Option<DateTime<Utc>> {
        self.at_ms.and_then(DateTime::from_timestamp_millis)
    }
}

/// The log entry of `version` of `table` (named `name` in errors); `None`
/// once the log no longer holds it.
pub(super) async fn read_entry(
    table: &DeltaTable,
    name: &str,
    version: u64,
) -> Result<Option<Entry>, StatusError> {
    let bytes = table
        .log_store()
        .read_commit_entry(version)
        .await
        .map_err(|source| StatusError::Log {
            table: name.to_owned(),
            source: Box::new(source),
        })?;
    Ok(bytes.map(|b| Entry::parse(&b)))
}

/// Every table of the job, in the catalog's order.
pub(super) async fn tables(job: &Job) -> Result<Vec<TableStatus>, StatusError> {
    let mut found = Vec::new();
    for id in TableId::all(job) {
        let name = id.name(job);
        let mut tiers = Vec::new();
        let mut commits = Vec::new();
        for &tier in tiers_of(job, id) {
            let table = match open(name, &job.storage.table(tier, &job.name, name)).await {
                Ok(table) => table,
                Err(TableError::Missing { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let version = table.version().unwrap_or(0);
            if tier == crate::config::Tier::Hot {
                commits = newest_commits(&table, name, version).await?;
            }
            tiers.push(TierStatus {
                tier: tier.name().to_owned(),
                rows: rows(&table, name).await?,
                version,
                last_commit: read_entry(&table, name, version)
                    .await?
                    .and_then(|e| e.at()),
            });
        }
        found.push(TableStatus {
            name: name.to_owned(),
            commits,
            tiers,
        });
    }
    Ok(found)
}

async fn newest_commits(
    table: &DeltaTable,
    name: &str,
    latest: u64,
) -> Result<Vec<Commit>, StatusError> {
    let mut commits = Vec::new();
    for version in (0..=latest).rev().take(COMMITS_SHOWN) {
        let Some(entry) = read_entry(table, name, version).await? else {
            break;
        };
        commits.push(Commit {
            version,
            at: entry.at(),
            operation: entry.operation,
            rows_added: entry.rows_added,
        });
    }
    Ok(commits)
}

/// The rows one tier's table holds.
async fn rows(table: &DeltaTable, name: &str) -> Result<i64, StatusError> {
    let ctx = SessionContext::new();
    let fail = |source| TableError::Query {
        tables: name.to_owned(),
        source: Box::new(source),
    };
    register(&ctx, "t", table).await.map_err(fail)?;
    let frame = ctx.sql("SELECT count(*) FROM t").await.map_err(fail)?;
    Ok(first_count(&frame.collect().await.map_err(fail)?)?)
}

fn first_count(batches: &[RecordBatch]) -> Result<i64, arrow::error::ArrowError> {
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(0);
    };
    let count = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
    Ok(count.as_primitive::<Int64Type>().value(0))
}

/// The DLQ's commonest reasons, most first, across its tiers.
pub(super) async fn dlq_reasons(job: &Job) -> Result<Vec<Reason>, StatusError> {
    let sql = format!(
        "SELECT error, count(*), error AS example FROM dlq GROUP BY error ORDER BY 2 DESC, 1 LIMIT {REASONS_SHOWN}"
    );
    let groups = dlq_groups(job, &sql).await?;
    Ok(groups
        .into_iter()
        .map(|(reason, messages, _)| Reason { reason, messages })
        .collect())
}

/// The rows of a grouping query over the DLQ: `(key, messages, example)`.
pub(super) async fn dlq_groups(
    job: &Job,
    sql: &str,
) -> Result<Vec<(String, i64, String)>, StatusError> {
    let mut groups = Vec::new();
    for batch in Tiered::new(job).query(&[TableId::Dlq], sql).await? {
        // Strings may come back as views: cast them all to plain UTF-8.
        let text = |i: usize| arrow::compute::cast(batch.column(i), &DataType::Utf8);
        let (keys, examples) = (text(0)?, text(2)?);
        let counts = arrow::compute::cast(batch.column(1), &DataType::Int64)?;
        let counts = counts.as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            groups.push((
                keys.as_string::<i32>().value(row).to_owned(),
                counts.value(row),
                examples.as_string::<i32>().value(row).to_owned(),
            ));
        }
    }
    Ok(groups)
}

impl TableStatus {
    /// The rows of every tier: what a reader of the table sees once no move
    /// is pending.
    pub fn rows(&self) -> i64 {
        self.tiers.iter().map(|t| t.rows).sum()
    }
}

impl fmt::Display for TableStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table {}: {} rows (", self.name, self.rows())?;
        for (i, t) in self.tiers.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {} at v{}", t.tier, t.rows, t.version)?;
        }
        write!(f, ")")?;
        if let Some(c) = self.commits.first() {
            let at = c.at.map_or("-".into(), |t| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            });
            write!(
                f,
                "; last commit v{} {} of {} rows at {at}",
                c.version, c.operation, c.rows_added
            )?;
        }
        Ok(())
    }
}
