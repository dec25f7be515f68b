//! `weir query`: DataFusion SQL over a job's tables, printed for people or scripts.
//!
//! Tables are opened read-only straight from their Delta logs, so a query sees
//! exactly the committed state and never creates or changes anything.

use std::fmt::Write as _;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::config::{Choice, Job};
use crate::ingest::transform::{Dialect, stored_table, view_sql};
use crate::table::delta::register_as;
use crate::table::tier::register_tiers;
use crate::table::{TableError, TableId};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Table(#[from] TableError),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

impl Choice for Format {
    const ALL: &'static [Self] = &[Format::Table, Format::Csv, Format::Json];

    fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

/// Runs `sql` with the job's tables registered by name: `raw`, `dlq`, `late`, and per
/// output a view of final values under the output's name (windowed outputs'
/// partials merged; their stored tables as `<output>__partials`, query
/// outputs' as `<output>__rows`). Returns the result's schema and rows.
pub async fn run(job: &Job, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let ctx = SessionContext::new();
    for id in TableId::all(job) {
        let TableId::Output(i) = id else {
            register_tiers(&ctx, job, id, id.name(job)).await?;
            continue;
        };
        let output = &job.outputs[i];
        let stored = stored_table(output);
        register_tiers(&ctx, job, id, &stored).await?;
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
