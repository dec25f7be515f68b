//! `weir views`: the SQL that gives users of other engines the same final
//! numbers `weir query` shows, without knowing about partials.
//!
//! Every output is a view that merges its partials table with `GROUP BY window,
//! keys` and each state's merge function. The merge SQL uses what all four
//! engines share (SUM, MIN, MAX, CASE, CAST) except for the list functions of
//! `count_distinct`; what differs besides is how an identifier is quoted and
//! how a Delta table is named.

use url::Url;

use crate::job::Job;
pub use crate::transform::Dialect;
use crate::transform::{stored_table, view_sql};

/// Where a table's files are, as the engine wants to see it.
fn location(url: &Url) -> String {
    match url.to_file_path() {
        Ok(path) => path.to_string_lossy().trim_end_matches('/').to_owned(),
        Err(()) => url.as_str().trim_end_matches('/').to_owned(),
    }
}

/// One `CREATE VIEW` per output (plus, for Trino, the call that registers the
/// partials table), ready to paste into the engine.
pub fn render(job: &Job, dialect: Dialect) -> String {
    let mut out = format!(
        "-- weir views for job `{}`: each output merged into final values.\n",
        job.name
    );
    for output in &job.outputs {
        let url = job.storage.hot_table(&job.name, output.name());
        let path = location(&url);
        let partials = stored_table(output);
        let source = match dialect {
            Dialect::DataFusion => format!("\"{partials}\""),
            Dialect::DuckDb => format!("delta_scan('{path}')"),
            Dialect::Spark => format!("delta.`{path}`"),
            Dialect::Trino => format!("delta.weir.\"{}_{partials}\"", job.name),
        };
        let merge = view_sql(output, &job.contract, &source, dialect);
        match dialect {
            Dialect::DataFusion => out.push_str(&format!(
                "-- register the Delta table at {path} as \"{partials}\" first\n"
            )),
            Dialect::Trino => out.push_str(&format!(
                "CALL delta.system.register_table(schema_name => 'weir', \
                 table_name => '{}_{partials}', table_location => '{path}');\n",
                job.name
            )),
            Dialect::DuckDb | Dialect::Spark => {}
        }
        let (view, merge) = match dialect {
            // Spark quotes identifiers with backticks; names are plain identifiers,
            // and the merge SQL holds no string literals.
            Dialect::Spark => (format!("`{}`", output.name()), merge.replace('"', "`")),
            _ => (format!("\"{}\"", output.name()), merge),
        };
        let create = match dialect {
            Dialect::Spark => "CREATE OR REPLACE TEMPORARY VIEW",
            _ => "CREATE OR REPLACE VIEW",
        };
        out.push_str(&format!("{create} {view} AS {merge};\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Overrides;
    use std::path::Path;

    fn job() -> Job {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/clickstream.toml");
        let overrides = Overrides {
            data: Some("/data".into()),
            ..Overrides::default()
        };
        Job::load(&path, &overrides).unwrap()
    }

    #[test]
    fn every_dialect_names_the_tables_its_own_way() {
        let job = job();
        let duck = render(&job, Dialect::DuckDb);
        assert!(duck.contains(
            "CREATE OR REPLACE VIEW \"page_views\" AS SELECT \"window_start\", \"window_end\", \"page\", \"country\", sum(\"views\") AS \"views\", CAST("
        ), "{duck}");
        let spark = render(&job, Dialect::Spark);
        assert!(
            spark.contains("CREATE OR REPLACE TEMPORARY VIEW `revenue` AS SELECT `window_start`"),
            "{spark}"
        );
        assert!(
            spark.contains("FROM delta.`/data/hot/clickstream/revenue`"),
            "{spark}"
        );
        let trino = render(&job, Dialect::Trino);
        assert!(
            trino.contains("table_location => '/data/hot/clickstream/revenue'"),
            "{trino}"
        );
        assert!(
            trino.contains("FROM delta.weir.\"clickstream_revenue__partials\""),
            "{trino}"
        );
        assert!(render(&job, Dialect::DataFusion).contains("FROM \"page_views__partials\""));
        // count_distinct merges with each engine's list functions.
        assert!(duck.contains("CAST(coalesce(array_length(array_distinct(flatten(array_agg(\"visitors__distinct\") FILTER (WHERE \"visitors__distinct\" IS NOT NULL)))), 0) AS BIGINT) AS \"visitors\" FROM delta_scan('/data/hot/clickstream/page_views') GROUP BY"), "{duck}");
        assert!(spark.contains("CAST(coalesce(size(array_distinct(flatten(collect_list(`visitors__distinct`)))), 0) AS BIGINT) AS `visitors`"), "{spark}");
        assert!(trino.contains("CAST(coalesce(cardinality(array_distinct(flatten(array_agg(\"visitors__distinct\") FILTER"), "{trino}");
        assert!(duck.contains(
            "CREATE OR REPLACE VIEW \"purchases\" AS SELECT * FROM delta_scan('/data/hot/clickstream/purchases')"
        ), "{duck}");
    }
}
