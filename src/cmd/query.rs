//! `weir query`: DataFusion SQL over a job's tables, printed for people or scripts.
//!
//! Tables are opened read-only straight from their Delta logs, so a query sees
//! exactly the committed state and never creates or changes anything.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use deltalake::{DeltaTable, DeltaTableError};
use url::Url;

use crate::config::{Job, Tier};
use crate::ingest::pipeline::INGEST_TABLES;
use crate::ingest::transform::{Dialect, stored_table, view_sql};
use crate::ingest::watermark::{Watermark, newest_rows, newest_sql};
use crate::table::tier;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("table {table} does not exist yet at {url}: run the job first")]
    Missing { table: String, url: Url },
    #[error("cannot open table {table} at {url}: {source}")]
    Open {
        table: String,
        url: Url,
        source: Box<DeltaTableError>,
    },
    #[error(transparent)]
    Sql(#[from] DataFusionError),
    #[error("cannot format the result: {0}")]
    Format(#[from] ArrowError),
}

impl QueryError {
    /// Whether the SQL itself is wrong (a usage error), not the tables or the run.
    /// DataFusion wraps such errors in context; the root says what is wrong.
    pub fn is_usage(&self) -> bool {
        match self {
            QueryError::Sql(e) => matches!(
                e.find_root(),
                DataFusionError::SQL(..)
                    | DataFusionError::Plan(_)
                    | DataFusionError::SchemaError(..)
            ),
            _ => false,
        }
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Registers `table` in `ctx` under `name`, reading through its Delta log.
pub async fn register(
    ctx: &SessionContext,
    name: &str,
    table: &DeltaTable,
) -> Result<(), DataFusionError> {
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    register_as(ctx, name, table.table_provider().await?)
}

/// Registers `provider` under `name` exactly as written, so weir's own SQL
/// (which quotes every name) finds `"PageViews"`; and, when `name` has
/// capitals, under its lower case too, which is what SQL makes of an
/// unquoted `PageViews`. (Job names that differ only by case are refused.)
pub fn register_as(
    ctx: &SessionContext,
    name: &str,
    provider: Arc<dyn TableProvider>,
) -> Result<(), DataFusionError> {
    let lower = name.to_lowercase();
    if lower != name {
        ctx.register_table(TableReference::bare(lower), provider.clone())?;
    }
    ctx.register_table(TableReference::bare(name), provider)?;
    Ok(())
}

/// Runs `sql` with the job's tables registered by name: `raw`, `dlq`, `late`, and per
/// output a view of final values under the output's name (windowed outputs'
/// partials merged; their stored tables as `<output>__partials`, query
/// outputs' as `<output>__rows`). Returns the result's schema and rows.
pub async fn run(job: &Job, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let ctx = SessionContext::new();
    for name in INGEST_TABLES {
        register_tiers(&ctx, job, name, name).await?;
    }
    for output in &job.outputs {
        let stored = stored_table(output);
        register_tiers(&ctx, job, output.name(), &stored).await?;
        let view = view_sql(
            output,
            &job.contract,
            &format!("\"{stored}\""),
            Dialect::DataFusion,
        );
        register_as(&ctx, output.name(), ctx.sql(&view).await?.into_view())?;
    }
    let frame = ctx.sql(sql).await?;
    let schema = SchemaRef::new(frame.schema().as_arrow().clone());
    Ok((schema, frame.collect().await?))
}

/// The job's watermark (µs) as restored from `raw`: never ahead of the live
/// one, so every window or range it calls closed is closed for ingest too.
pub async fn restored_watermark(job: &Job) -> Result<Option<i64>, QueryError> {
    Ok(restored_clocks(job).await?.0.current_us())
}

/// The job's watermark as a restart restores it from `raw`, and the
/// partitions left out of it as idle.
pub async fn restored_clocks(job: &Job) -> Result<(Watermark, Vec<i32>), QueryError> {
    let ctx = SessionContext::new();
    register_tiers(&ctx, job, "raw", "raw").await?;
    let batches = ctx.sql(&newest_sql(&job.contract)).await?.collect().await?;
    let mut watermark = Watermark::new(&job.contract, job.watermark);
    let idle = watermark.restore(&newest_rows(&batches), std::time::Instant::now());
    Ok((watermark, idle))
}

/// Registers job table `table` under `name`: each tier's table as
/// `<name>__<tier>`, and `name` as their union routed by age
/// ([`tier::union_sql`]). Tiers are opened hot first, so a move that commits
/// meanwhile is seen either not at all or whole. Tables that never move (query
/// outputs) are hot only.
pub async fn register_tiers(
    ctx: &SessionContext,
    job: &Job,
    table: &str,
    name: &str,
) -> Result<(), QueryError> {
    let hot = open(table, &job.storage.hot_table(&job.name, table)).await?;
    let Some(age) = tier::age_of(job, table) else {
        return Ok(register(ctx, name, &hot).await?);
    };
    let mut names = Vec::new();
    for t in Tier::ALL {
        let opened = match t {
            Tier::Hot => hot.clone(),
            _ => match open(table, &job.storage.table(t, &job.name, table)).await {
                Ok(opened) => opened,
                // Tables written before tiers existed have no warm or cold yet.
                Err(QueryError::Missing { .. }) => continue,
                Err(e) => return Err(e),
            },
        };
        let tier_name = format!("{name}__{}", t.name());
        register(ctx, &tier_name, &opened).await?;
        names.push(format!("\"{tier_name}\""));
    }
    let union = tier::union_sql(&names, &age.column);
    register_as(ctx, name, ctx.sql(&union).await?.into_view())?;
    Ok(())
}

/// Opens a job table read from its Delta log; a location without a log is `Missing`.
pub async fn open(name: &str, url: &Url) -> Result<DeltaTable, QueryError> {
    let missing = || QueryError::Missing {
        table: name.to_owned(),
        url: url.clone(),
    };
    if url.scheme() == "file"
        && url
            .to_file_path()
            .is_ok_and(|p| !p.join("_delta_log").exists())
    {
        return Err(missing());
    }
    crate::table::storage::register();
    deltalake::open_table(url.clone())
        .await
        .map_err(|source| match source {
            DeltaTableError::NotATable(_) => missing(),
            source => QueryError::Open {
                table: name.to_owned(),
                url: url.clone(),
                source: Box::new(source),
            },
        })
}

/// Renders rows as an aligned table, CSV with a header, or a JSON array of objects.
pub fn render(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Format,
) -> Result<String, QueryError> {
    Ok(match format {
        Format::Table => {
            let mut out = String::new();
            let table =
                arrow::util::pretty::pretty_format_batches_with_schema(schema.clone(), batches)?;
            let _ = writeln!(out, "{table}");
            out
        }
        Format::Csv => {
            let mut out = Vec::new();
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for batch in batches {
                writer.write(batch)?;
            }
            drop(writer);
            String::from_utf8_lossy(&out).into_owned()
        }
        Format::Json => {
            // Every object names every column, null or not: readers match
            // columns by key, and a missing key reads as a missing column.
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(Vec::new());
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            let mut out = String::from_utf8_lossy(&writer.into_inner()).into_owned();
            if out.is_empty() {
                out.push_str("[]");
            }
            out.push('\n');
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn rows() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("page", DataType::Utf8, false),
            Field::new("views", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["/a", "/b"])),
                Arc::new(Int64Array::from(vec![Some(3), None])),
            ],
        )
        .unwrap();
        (schema, vec![batch])
    }

    #[test]
    fn renders_every_format() {
        let (schema, batches) = rows();
        let table = render(&schema, &batches, Format::Table).unwrap();
        assert!(table.contains("| page | views |"), "{table}");
        assert_eq!(
            render(&schema, &batches, Format::Csv).unwrap(),
            "page,views\n/a,3\n/b,\n"
        );
        assert_eq!(
            render(&schema, &batches, Format::Json).unwrap(),
            "[{\"page\":\"/a\",\"views\":3},{\"page\":\"/b\",\"views\":null}]\n"
        );
    }

    #[test]
    fn empty_results_still_show_their_shape() {
        let (schema, _) = rows();
        assert!(
            render(&schema, &[], Format::Table)
                .unwrap()
                .contains("page")
        );
        assert_eq!(render(&schema, &[], Format::Csv).unwrap(), "page,views\n");
        assert_eq!(render(&schema, &[], Format::Json).unwrap(), "[]\n");
    }
}
