//! Lookup tables (`[[lookups]]`): dimension tables read whole into memory
//! and registered beside `batch` in every output's query, so a `sql` output
//! can join one, a window's `filter` or a derived column can look a value up
//! (a derived `segment` is then a window key like any field).
//!
//! A [`Lookups`] is one consistent snapshot: every trigger runs all its
//! outputs over the same one, and commits its rows with the snapshot's
//! versions in the commit info (`weir.lookups`), so a reprocess of that
//! range can say whether it used the same ones. `weir run` reads each source
//! again every `refresh`; a source that cannot be read, whose key is no
//! longer unique, or whose columns changed keeps the last good version
//! (counted in `weir_lookup_refresh_failures_total`), so a bad upload never
//! stops ingest.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{Job, Lookup, LookupSource};
use crate::table::delta::{open, register};

/// One lookup's rows as read once.
#[derive(Debug, Clone)]
pub struct LookupTable {
    pub name: String,
    /// `delta:v<N>` for a Delta table, `xxh3:<hash of the file>` otherwise.
    pub version: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl LookupTable {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The rows as a table a query can scan.
    pub fn table(&self) -> Arc<MemTable> {
        let table = MemTable::try_new(self.schema.clone(), vec![self.batches.clone()])
            .expect("a lookup's batches have its schema");
        Arc::new(table)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("lookup `{name}` ({source_text}): {reason}")]
pub struct LookupError {
    pub name: String,
    source_text: String,
    reason: String,
}

/// Every lookup of a job, as one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Lookups(Arc<Vec<LookupTable>>);

impl Lookups {
    /// Reads every lookup of `job`: what a command needs before it plans the
    /// outputs. A lookup that cannot be read is an error (there is no last
    /// good version to keep).
    pub async fn load(job: &Job) -> Result<Self, LookupError> {
        let mut tables = Vec::with_capacity(job.lookups.len());
        for lookup in &job.lookups {
            tables.push(load(lookup).await?);
        }
        Ok(Self(Arc::new(tables)))
    }

    pub fn tables(&self) -> &[LookupTable] {
        &self.0
    }

    /// Each lookup's version, by name.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|t| (t.name.clone(), t.version.clone()))
            .collect()
    }

    /// Reads every lookup again; a lookup that fails, or whose columns
    /// changed, keeps its version in this snapshot and is returned with why.
    /// `None` as the snapshot when nothing changed.
    pub async fn refreshed(&self, job: &Job) -> (Option<Self>, Vec<LookupError>) {
        let mut tables = Vec::with_capacity(self.0.len());
        let mut failed = Vec::new();
        for (lookup, current) in job.lookups.iter().zip(self.0.iter()) {
            match load(lookup).await {
                Ok(fresh) if fresh.schema.fields() != current.schema.fields() => {
                    failed.push(error(
                        lookup,
                        format!(
                            "its columns changed from {:?} to {:?}; the outputs were planned over the old ones (restart the job to take the new)",
                            current.schema.fields(),
                            fresh.schema.fields()
                        ),
                    ));
                    tables.push(current.clone());
                }
                Ok(fresh) => tables.push(fresh),
                Err(e) => {
                    failed.push(e);
                    tables.push(current.clone());
                }
            }
        }
        let changed = tables
            .iter()
            .zip(self.0.iter())
            .any(|(new, old)| new.version != old.version);
        (changed.then(|| Self(Arc::new(tables))), failed)
    }
}

fn error(lookup: &Lookup, reason: impl ToString) -> LookupError {
    LookupError {
        name: lookup.name.clone(),
        source_text: lookup.source.to_string(),
        reason: reason.to_string(),
    }
}

/// Reads one lookup whole and checks its key.
async fn load(lookup: &Lookup) -> Result<LookupTable, LookupError> {
    let fail = |reason: String| error(lookup, reason);
    let ctx = SessionContext::new();
    let (frame, version) = match &lookup.source {
        LookupSource::Parquet(path) | LookupSource::Csv(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let text = path.to_string_lossy();
            let frame = match &lookup.source {
                LookupSource::Csv(_) => ctx.read_csv(&*text, CsvReadOptions::new()).await,
                _ => ctx.read_parquet(&*text, ParquetReadOptions::new()).await,
            };
            let frame = frame.map_err(|e| fail(e.to_string()))?;
            (frame, format!("xxh3:{:016x}", xxh3_64(&bytes)))
        }
        LookupSource::Delta(url) => {
            let table = open(&lookup.name, url)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let version = format!("delta:v{}", table.version().unwrap_or(0));
            register(&ctx, "source", &table)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let frame = ctx.table("source").await.map_err(|e| fail(e.to_string()))?;
            (frame, version)
        }
    };
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(|e| fail(e.to_string()))?;
    let table = LookupTable {
        name: lookup.name.clone(),
        version,
        schema,
        batches,
    };
    check_key(&table, &lookup.key).await.map_err(fail)?;
    Ok(table)
}

/// A lookup's key names each row once: present, never null, never repeated.
async fn check_key(table: &LookupTable, key: &str) -> Result<(), String> {
    if table.schema.column_with_name(key).is_none() {
        let columns: Vec<&str> = table
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        return Err(format!(
            "its key `{key}` is not one of its columns: {}",
            columns.join(", ")
        ));
    }
    let ctx = SessionContext::new();
    ctx.register_table("t", table.table())
        .map_err(|e| e.to_string())?;
    let sql = format!(
        "SELECT count(*) - count(\"{key}\"), CAST(count(\"{key}\") - count(DISTINCT \"{key}\") AS BIGINT), \
         CAST(min(CASE WHEN n > 1 THEN k END) AS VARCHAR) FROM \
         (SELECT \"{key}\", \"{key}\" AS k, count(*) OVER (PARTITION BY \"{key}\") AS n FROM t)"
    );
    let found = ctx
        .sql(&sql)
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let row = &found[0];
    let count = |i: usize| {
        arrow::compute::cast(row.column(i), &DataType::Int64)
            .map(|c| c.as_primitive::<Int64Type>().value(0))
            .unwrap_or_default()
    };
    let (nulls, repeats) = (count(0), count(1));
    if nulls > 0 {
        return Err(format!("its key `{key}` is null in {nulls} rows"));
    }
    if repeats > 0 {
        let example =
            arrow::compute::cast(row.column(2), &DataType::Utf8).map_err(|e| e.to_string())?;
        let example = example.as_string::<i32>().value(0);
        return Err(format!(
            "its key `{key}` repeats ({repeats} extra rows; `{example}` among them)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lookup(path: &std::path::Path) -> Lookup {
        Lookup {
            name: "users".into(),
            source: LookupSource::Csv(path.to_owned()),
            key: "user_id".into(),
            refresh: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_csv_lookup_loads_with_a_version_of_its_bytes_and_a_unique_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.csv");
        std::fs::write(&path, "user_id,segment\nu1,gold\nu2,silver\n").unwrap();
        let table = load(&lookup(&path)).await.unwrap();
        assert_eq!(table.rows(), 2);
        assert!(table.version.starts_with("xxh3:"), "{}", table.version);
        let again = load(&lookup(&path)).await.unwrap();
        assert_eq!(table.version, again.version);

        std::fs::write(&path, "user_id,segment\nu1,gold\nu2,silver\nu1,bronze\n").unwrap();
        let err = load(&lookup(&path)).await.unwrap_err().to_string();
        assert!(
            err.contains("lookup `users`") && err.contains("repeats (1 extra rows; `u1`"),
            "{err}"
        );
        std::fs::write(&path, "id,segment\nu1,gold\n").unwrap();
        let err = load(&lookup(&path)).await.unwrap_err().to_string();
        assert!(
            err.contains("`user_id` is not one of its columns: id, segment"),
            "{err}"
        );
        let err = load(&lookup(&dir.path().join("nope.csv")))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.csv"), "{err}");
    }
}
