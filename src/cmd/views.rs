//! `weir views`: the SQL that gives users of other engines the same final
//! numbers `weir query` shows, without knowing about partials.
//!
//! Every output is a view that merges its partials table with `GROUP BY window,
//! keys` and each state's merge function. The merge SQL uses what all four
//! engines share (SUM, MIN, MAX, CASE, CAST) except for the list functions of
//! `count_distinct`; what differs besides is how an identifier is quoted and
//! how a Delta table is named.

use url::Url;

use crate::config::Job;
pub use crate::ingest::transform::Dialect;
use crate::ingest::transform::{stored_table, view_sql};
use crate::table::{TableId, tier};

/// Where a table's files are, as the engine wants to see it: a local table as
/// its path, except for Trino, whose file systems are all named by URL scheme
/// (a plain path finds "no factory for location").
fn location(url: &Url, dialect: Dialect) -> String {
    match url.to_file_path() {
        Ok(path) if dialect != Dialect::Trino => {
            path.to_string_lossy().trim_end_matches('/').to_owned()
        }
        _ => url.as_str().trim_end_matches('/').to_owned(),
    }
}

/// A string literal: any path is valid SQL once its quotes are doubled.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// How the engine reads one job table across its tiers (a table expression),
/// with the statements that must run first (Trino registers each tier table).
fn tiered_source(job: &Job, id: TableId, registered: &str, dialect: Dialect) -> (String, String) {
    let table = id.name(job);
    let mut setup = String::new();
    let mut sources = Vec::new();
    for t in tier::tiers_of(job, id) {
        let path = location(&job.storage.table(*t, &job.name, table), dialect);
        let trino_name = format!("{}_{registered}_{}", job.name, t.name());
        sources.push(match dialect {
            Dialect::DataFusion => format!("\"{registered}__{}\"", t.name()),
            Dialect::DuckDb => format!("delta_scan({})", literal(&path)),
            Dialect::Spark => format!("delta.`{}`", path.replace('`', "``")),
            Dialect::Trino => format!("delta.weir.\"{trino_name}\""),
        });
        match dialect {
            Dialect::DataFusion => setup.push_str(&format!(
                "-- register the Delta table at {} as \"{registered}__{}\" first\n",
                path.replace(['\n', '\r'], " "),
                t.name()
            )),
            Dialect::Trino => setup.push_str(&format!(
                "CALL delta.system.register_table(schema_name => 'weir', \
                 table_name => '{trino_name}', table_location => {});\n",
                literal(&path)
            )),
            Dialect::DuckDb | Dialect::Spark => {}
        }
    }
    let source = match tier::age_of(job, id) {
        Some(age) if sources.len() > 1 => {
            format!("({}) AS tiers", tier::union_sql(&sources, &age.column))
        }
        _ => sources.remove(0),
    };
    (setup, source)
}

/// One `CREATE VIEW` per table: `raw`, `dlq` and `late` across their tiers, and
/// each output merged into final values (plus, for Trino, the calls that
/// register the tier tables), ready to paste into the engine.
pub fn render(job: &Job, dialect: Dialect) -> String {
    let mut out = format!(
        "-- weir views for job `{}`: every table across its tiers, each output merged \
         into final values.\n",
        job.name
    );
    if dialect == Dialect::Trino {
        out.push_str("CREATE SCHEMA IF NOT EXISTS delta.weir;\n");
    }
    let mut views: Vec<(String, String, String)> = Vec::new();
    for id in TableId::all(job) {
        let name = id.name(job);
        let TableId::Output(i) = id else {
            let (setup, source) = tiered_source(job, id, name, dialect);
            views.push((name.to_owned(), setup, format!("SELECT * FROM {source}")));
            continue;
        };
        let output = &job.outputs[i];
        let (setup, source) = tiered_source(job, id, &stored_table(output), dialect);
        let merge = view_sql(output, &job.contract, &source, dialect);
        views.push((name.to_owned(), setup, merge));
    }
    for (name, setup, body) in views {
        out.push_str(&setup);
        let (view, body) = match dialect {
            // Spark quotes identifiers with backticks; names are plain identifiers,
            // and the SQL holds no string literals with double quotes.
            Dialect::Spark => (format!("`{name}`"), body.replace('"', "`")),
            _ => (format!("\"{name}\""), body),
        };
        let create = match dialect {
            Dialect::Spark => "CREATE OR REPLACE TEMPORARY VIEW",
            _ => "CREATE OR REPLACE VIEW",
        };
        out.push_str(&format!("{create} {view} AS {body};\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;
    use std::path::Path;

    /// The example job with its tables under `data`.
    fn job_under(data: &str) -> Job {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/clickstream.toml");
        let overrides = Overrides {
            data: Some(data.into()),
            ..Overrides::default()
        };
        Job::load(&path, &overrides).unwrap()
    }

    #[test]
    fn every_dialect_names_the_tables_its_own_way() {
        let job = job_under("/data");
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
            trino.contains("table_location => 'file:///data/hot/clickstream/revenue'"),
            "{trino}"
        );
        assert!(
            trino.contains("FROM (SELECT * FROM delta.weir.\"clickstream_revenue__partials_hot\" UNION ALL SELECT * FROM delta.weir.\"clickstream_revenue__partials_warm\""),
            "{trino}"
        );
        assert!(
            render(&job, Dialect::DataFusion)
                .contains("FROM (SELECT * FROM \"page_views__partials__hot\" UNION ALL")
        );
        // Each tier serves only rows older than every row of the tier before it.
        assert!(duck.contains("UNION ALL SELECT * FROM delta_scan('/data/warm/clickstream/page_views') WHERE \"window_start\" < (SELECT min(\"window_start\") FROM delta_scan('/data/hot/clickstream/page_views')) OR (SELECT count(*) FROM delta_scan('/data/hot/clickstream/page_views')) = 0 UNION ALL SELECT * FROM delta_scan('/data/cold/clickstream/page_views') WHERE"), "{duck}");
        // count_distinct merges with each engine's list functions.
        assert!(duck.contains("CAST(coalesce(array_length(array_distinct(flatten(array_agg(\"visitors__distinct\") FILTER (WHERE \"visitors__distinct\" IS NOT NULL)))), 0) AS BIGINT) AS \"visitors\" FROM (SELECT * FROM delta_scan('/data/hot/clickstream/page_views') UNION ALL"), "{duck}");
        assert!(spark.contains("CAST(coalesce(size(array_distinct(flatten(collect_list(`visitors__distinct`)))), 0) AS BIGINT) AS `visitors`"), "{spark}");
        assert!(trino.contains("CAST(coalesce(cardinality(array_distinct(flatten(array_agg(\"visitors__distinct\") FILTER"), "{trino}");
        assert!(duck.contains(
            "CREATE OR REPLACE VIEW \"purchases\" AS SELECT * FROM delta_scan('/data/hot/clickstream/purchases')"
        ), "{duck}");
    }

    #[test]
    fn quotes_in_paths_stay_inside_their_literals() {
        let job = job_under("/it's `here`\n-- x");
        let duck = render(&job, Dialect::DuckDb);
        assert!(
            duck.contains("delta_scan('/it''s `here`\n-- x/hot/clickstream/raw')"),
            "{duck}"
        );
        let spark = render(&job, Dialect::Spark);
        assert!(
            spark.contains("delta.`/it's ``here``\n-- x/hot/clickstream/raw`"),
            "{spark}"
        );
        let trino = render(&job, Dialect::Trino);
        assert!(
            trino.contains(
                "table_location => 'file:///it''s%20%60here%60%0A--%20x/hot/clickstream/raw'"
            ),
            "{trino}"
        );
        let datafusion = render(&job, Dialect::DataFusion);
        assert!(
            datafusion.contains(
                "-- register the Delta table at /it's `here` -- x/hot/clickstream/raw as"
            ),
            "{datafusion}"
        );
    }
}
