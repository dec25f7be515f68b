use super::*;
use crate::config::fixture::Spec;
use crate::config::{FieldType, Input, Job, Output, Overrides};
use crate::ingest::decode::accepted;
use crate::ingest::lookup::Lookups;
use crate::ingest::source::Message;
use arrow::array::AsArray;
use arrow::compute::concat_batches;
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use chrono::{TimeZone, Utc};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const OUTPUTS: &str = r#"
[[outputs]]
name = "per_minute"
window = "1m"
keys = ["page"]
filter = "kind = 'view'"
aggregates = [
  { name = "views", fn = "count" },
  { name = "revenue", fn = "sum", field = "price" },
  { name = "cheapest", fn = "min", field = "price" },
  { name = "dearest", fn = "max", field = "price" },
  { name = "avg_price", fn = "avg", field = "price" },
  { name = "prices", fn = "count_distinct", field = "price" },
]
[[outputs]]
name = "hopping"
window = "1m"
hop = "30s"
aggregates = [{ name = "events", fn = "count" }]
"#;

fn window(job: &Job, i: usize) -> &crate::config::WindowOutput {
    match &job.outputs[i] {
        crate::config::Output::Window(w) => w,
        other => panic!("output {i} is not windowed: {other:?}"),
    }
}

/// Events with a page, a kind and a price, and the outputs above.
fn spec() -> Spec<'static> {
    Spec {
        fields: &[
            r#"{ name = "page", type = "string" }"#,
            r#"{ name = "kind", type = "string" }"#,
            r#"{ name = "price", type = "float64" }"#,
        ],
        rest: OUTPUTS,
        ..Spec::default()
    }
}

fn job() -> Job {
    spec().job()
}

/// Events as (seconds after 12:00, page, kind, price), decoded like the live loop does.
fn events(job: &Job, rows: &[(i64, &str, &str, Option<f64>)]) -> RecordBatch {
    let base = Utc
        .with_ymd_and_hms(2026, 11, 21, 12, 0, 0)
        .unwrap()
        .timestamp_millis();
    let messages = rows
        .iter()
        .enumerate()
        .map(|(i, (s, page, kind, price))| {
            let price = price.map_or("null".to_string(), |p| p.to_string());
            let json = format!(
                r#"{{"id":"e{i}","ts":{},"page":"{page}","kind":"{kind}","price":{price}}}"#,
                base + s * 1000
            );
            Message {
                partition: crate::config::SourcePartition::first(0),
                offset: i as i64,
                kafka_ts: None,
                payload: Some(json.into()),
                ..Message::default()
            }
        })
        .collect();
    let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 30, 0).unwrap();
    accepted(&job.contract, messages, now)
}

async fn merged(agg: &WindowAggregate, partials: Vec<RecordBatch>) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    let table = MemTable::try_new(agg.partial_schema().clone(), vec![partials]).unwrap();
    ctx.register_table("p", Arc::new(table)).unwrap();
    let sql = format!("{} ORDER BY 1, 3", agg.merge_sql("p", Dialect::DataFusion));
    ctx.sql(&sql).await.unwrap().collect().await.unwrap()
}

#[tokio::test]
async fn partials_of_two_batches_merge_to_the_exact_answer() {
    let job = job();
    let agg = WindowAggregate::new(window(&job, 0), &job.contract);
    // Minute 0: /a views 10.0, 20.0 (split over two batches), /b one view; a
    // click that the filter drops; minute 1: /a view with no price.
    let first = events(
        &job,
        &[
            (5, "/a", "view", Some(10.0)),
            (7, "/b", "view", Some(1.5)),
            (9, "/a", "click", Some(99.0)),
        ],
    );
    let second = events(
        &job,
        &[(50, "/a", "view", Some(20.0)), (61, "/a", "view", None)],
    );
    let partials = vec![
        agg.apply(&first).await.unwrap(),
        agg.apply(&second).await.unwrap(),
    ];
    assert_eq!(
        partials[0].num_rows(),
        2,
        "one partial row per (window, page)"
    );
    assert_eq!(partials[0].schema(), *agg.partial_schema());

    let out = merged(&agg, partials).await;
    let out = concat_batches(&out[0].schema(), &out).unwrap();
    assert_eq!(out.num_rows(), 3);
    let start = out.column(0).as_primitive::<TimestampMicrosecondType>();
    let noon = Utc
        .with_ymd_and_hms(2026, 11, 21, 12, 0, 0)
        .unwrap()
        .timestamp_micros();
    assert_eq!(start.values().to_vec(), vec![noon, noon, noon + 60_000_000]);
    let page = out.column(2).as_string::<i32>();
    assert_eq!(
        page.iter().flatten().collect::<Vec<_>>(),
        vec!["/a", "/b", "/a"]
    );
    let views = out
        .column_by_name("views")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(views.values().to_vec(), vec![2, 1, 1]);
    let f64s = |name: &str| -> Vec<Option<f64>> {
        out.column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
            .iter()
            .collect()
    };
    assert_eq!(f64s("revenue"), vec![Some(30.0), Some(1.5), None]);
    assert_eq!(f64s("cheapest"), vec![Some(10.0), Some(1.5), None]);
    assert_eq!(f64s("dearest"), vec![Some(20.0), Some(1.5), None]);
    assert_eq!(f64s("avg_price"), vec![Some(15.0), Some(1.5), None]);
    let prices = out.column_by_name("prices").unwrap();
    assert_eq!(
        prices.as_primitive::<Int64Type>().values().to_vec(),
        vec![2, 1, 0],
        "nulls are not a value"
    );
}

#[tokio::test]
async fn a_distinct_partial_keeps_each_value_once_sorted_and_no_nulls() {
    let job = job();
    let agg = WindowAggregate::new(window(&job, 0), &job.contract);
    let rows: Vec<_> = [Some(7.0), None, Some(5.0), Some(7.0), Some(5.0), None]
        .into_iter()
        .enumerate()
        .map(|(s, p)| (s as i64, "/a", "view", p))
        .collect();
    let partial = agg.apply(&events(&job, &rows)).await.unwrap();
    let lists = partial
        .column_by_name("prices__distinct")
        .unwrap()
        .as_list::<i32>();
    let values = lists.value(0);
    let values: Vec<_> = values.as_primitive::<Float64Type>().iter().collect();
    assert_eq!(values, vec![Some(5.0), Some(7.0)]);
}

#[tokio::test]
async fn distinct_counts_merge_across_partials_without_double_counting() {
    let job = job();
    let agg = WindowAggregate::new(window(&job, 0), &job.contract);
    let batch = |rows: &[(i64, Option<f64>)]| {
        let rows: Vec<_> = rows.iter().map(|(s, p)| (*s, "/a", "view", *p)).collect();
        events(&job, &rows)
    };
    let partials = vec![
        agg.apply(&batch(&[(1, Some(5.0)), (2, Some(5.0)), (3, Some(7.0))]))
            .await
            .unwrap(),
        agg.apply(&batch(&[(4, Some(7.0)), (5, Some(9.0)), (6, None)]))
            .await
            .unwrap(),
    ];
    let out = merged(&agg, partials).await;
    let column = |name: &str| {
        out[0]
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0)
    };
    assert_eq!((column("views"), column("prices")), (6, 3));
}

#[tokio::test]
async fn folding_partials_keeps_the_merged_answer_and_leaves_one_row_per_window() {
    let job = job();
    let agg = WindowAggregate::new(window(&job, 0), &job.contract);
    let batches = [
        events(
            &job,
            &[(5, "/a", "view", Some(10.0)), (7, "/b", "view", Some(1.5))],
        ),
        events(
            &job,
            &[(50, "/a", "view", Some(20.0)), (61, "/a", "view", None)],
        ),
        events(
            &job,
            &[
                (52, "/a", "view", Some(10.0)),
                (65, "/b", "view", Some(3.0)),
            ],
        ),
    ];
    let mut partials = Vec::new();
    for b in &batches {
        partials.push(agg.apply(b).await.unwrap());
    }
    let folded = folded(&agg, partials.clone()).await;
    assert_eq!(folded.num_rows(), 4, "one row per (minute, page)");
    let before = merged(&agg, partials).await;
    let after = merged(&agg, vec![folded]).await;
    assert_eq!(
        concat_batches(&before[0].schema(), &before).unwrap(),
        concat_batches(&after[0].schema(), &after).unwrap()
    );
}

#[tokio::test]
async fn hopping_windows_count_an_event_in_each_window_that_covers_it() {
    let job = job();
    let agg = WindowAggregate::new(window(&job, 1), &job.contract);
    let batch = events(&job, &[(45, "/a", "view", None), (10, "/a", "view", None)]);
    let partials = agg.apply(&batch).await.unwrap();
    let out = merged(&agg, vec![partials]).await;
    let out = concat_batches(&out[0].schema(), &out).unwrap();
    let noon = Utc
        .with_ymd_and_hms(2026, 11, 21, 12, 0, 0)
        .unwrap()
        .timestamp_micros();
    let half = 30_000_000;
    let start = out.column(0).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(
        start.values().to_vec(),
        vec![noon - half, noon, noon + half]
    );
    let events = out
        .column_by_name("events")
        .unwrap()
        .as_primitive::<Int64Type>();
    // 12:00:10 is in [11:59:30, 12:00:30) and [12:00:00, 12:01:00); 12:00:45 in the last two.
    assert_eq!(events.values().to_vec(), vec![1, 2, 1]);
}

#[tokio::test]
async fn no_events_no_partials() {
    let job = job();
    let agg = WindowAggregate::new(window(&job, 0), &job.contract);
    let empty = RecordBatch::new_empty(crate::ingest::decode::raw_schema(&job.contract));
    assert_eq!(agg.apply(&empty).await.unwrap().num_rows(), 0);
}

#[tokio::test]
async fn query_outputs_keep_their_rows_in_delta_types() {
    let text = format!(
        "{}\n[[outputs]]\nname = \"views\"\nsql = \"SELECT id, ts, upper(page) AS page, price * 2 AS doubled FROM batch WHERE kind = 'view'\"\n",
        spec().toml()
    );
    let job = Job::parse(&text, Path::new("t.toml"), &Overrides::default()).unwrap();
    let transforms = Transform::all(&job, &Lookups::default()).await.unwrap();
    let query = &transforms[2];
    assert_eq!(query.name(), "views");
    let types: Vec<_> = query
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(
        types,
        vec![
            DataType::Utf8,
            utc_micros(),
            DataType::Utf8,
            DataType::Float64,
            // The event time's date, added because the rows carry `ts`.
            DataType::Date32
        ]
    );
    let rows = query
        .apply(&events(
            &job,
            &[(1, "/a", "view", Some(2.5)), (2, "/b", "click", None)],
        ))
        .await
        .unwrap();
    assert_eq!(rows.num_rows(), 1);
    assert_eq!(rows.column(2).as_string::<i32>().value(0), "/A");
    assert_eq!(rows.column(3).as_primitive::<Float64Type>().value(0), 5.0);
}

#[tokio::test]
async fn a_query_that_does_not_plan_is_a_bad_spec_naming_its_key() {
    let text = format!(
        "{}\n[[outputs]]\nname = \"q\"\nsql = \"SELECT nope FROM batch\"\n",
        spec().toml()
    );
    let job = Job::parse(&text, Path::new("t.toml"), &Overrides::default()).unwrap();
    let err = Transform::all(&job, &Lookups::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t.toml") && err.contains("key `outputs[2].sql`"),
        "{err}"
    );
    assert!(err.contains("nope"), "{err}");
}

/// Every window plans before the first event; over an int64 field, `sum` and
/// `avg` are two aggregates DataFusion would name alike (casts leave names
/// alone), which used to fail the plan at the first batch.
#[tokio::test]
async fn windows_plan_before_any_event_and_blame_the_right_key() {
    let int_price = spec().toml().replace(
        r#"{ name = "price", type = "float64" }"#,
        r#"{ name = "price", type = "int64" }"#,
    );
    let job = Job::parse(&int_price, Path::new("t.toml"), &Overrides::default()).unwrap();
    assert_eq!(
        Transform::all(&job, &Lookups::default())
            .await
            .unwrap()
            .len(),
        2
    );

    let bad_filter = spec()
        .toml()
        .replace("filter = \"kind = 'view'\"", "filter = \"nope = 1\"");
    let job = Job::parse(&bad_filter, Path::new("t.toml"), &Overrides::default()).unwrap();
    let err = Transform::all(&job, &Lookups::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key `outputs[0].filter`") && err.contains("nope"),
        "{err}"
    );
}

/// Derived columns are computed per event before the window: as a key, in
/// the filter and as an aggregate's field.
#[tokio::test]
async fn derived_columns_feed_keys_filters_and_aggregates() {
    let derived = r#"
[[schema.derived]]
name = "net"
expr = "price * 0.9"
type = "float64"
[[schema.derived]]
name = "tier"
expr = "CASE WHEN price >= 10 THEN 'high' ELSE 'low' END"
type = "string"
[[outputs]]
name = "by_tier"
window = "1m"
keys = ["tier"]
filter = "net > 0"
aggregates = [{ name = "net_sum", fn = "sum", field = "net" }, { name = "n", fn = "count" }]
"#;
    let job = Spec {
        rest: derived,
        ..spec()
    }
    .job();
    let transforms = Transform::all(&job, &Lookups::default()).await.unwrap();
    let rows = events(
        &job,
        &[
            (5, "/a", "view", Some(10.0)),
            (6, "/a", "view", Some(20.0)),
            (7, "/b", "view", Some(1.5)),
            (8, "/b", "view", None),
        ],
    );
    let out = transforms[0].apply(&rows).await.unwrap();
    let tiers = out.column_by_name("tier").unwrap().as_string::<i32>();
    let sums = out.column_by_name("net_sum").unwrap();
    let counts = out.column_by_name("n").unwrap();
    let got: Vec<_> = (0..out.num_rows())
        .map(|r| {
            (
                tiers.value(r),
                sums.as_primitive::<Float64Type>().value(r),
                counts.as_primitive::<Int64Type>().value(r),
            )
        })
        .collect();
    assert_eq!(got, vec![("high", 27.0, 2), ("low", 1.35, 1)]);

    // A query output reads the same derived columns in `batch`.
    let query = Spec {
        rest: &format!(
            "{derived}[[outputs]]\nname = \"tiers\"\nsql = \"SELECT tier, sum(net) AS net FROM batch GROUP BY tier ORDER BY tier\"\n"
        ),
        ..spec()
    }
    .job();
    let transforms = Transform::all(&query, &Lookups::default()).await.unwrap();
    let out = transforms[1].apply(&rows).await.unwrap();
    let tiers = out.column(0).as_string::<i32>();
    let nets = out.column(1).as_primitive::<Float64Type>();
    let got: Vec<_> = (0..out.num_rows())
        .map(|r| (tiers.value(r), nets.value(r)))
        .collect();
    assert_eq!(got, vec![("high", 27.0), ("low", 1.35)]);
}

#[tokio::test]
async fn a_derived_column_that_does_not_plan_is_a_bad_spec_naming_its_key() {
    for (expr, ty) in [("nope * 2", "float64"), ("page", "int64")] {
        let rest =
            format!("[[schema.derived]]\nname = \"d\"\nexpr = \"{expr}\"\ntype = \"{ty}\"\n");
        let job = Spec {
            rest: &rest,
            ..spec()
        }
        .job();
        let err = Transform::all(&job, &Lookups::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key `schema.derived[0].expr`") && err.contains(expr),
            "{err}"
        );
    }
}

#[tokio::test]
async fn lookups_serve_joins_filters_and_derived_keys() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("pages.csv");
    std::fs::write(&pages, "page,section\n/a,news\n/b,sport\n").unwrap();
    let rest = format!(
        r#"
[[lookups]]
name = "pages"
source = "{}"
key = "page"
[[schema.derived]]
name = "section"
expr = "(SELECT max(section) FROM pages WHERE pages.page = batch.page)"
type = "string"
[[outputs]]
name = "by_section"
window = "1m"
keys = ["section"]
filter = "page IN (SELECT page FROM pages)"
aggregates = [{{ name = "n", fn = "count" }}]
[[outputs]]
name = "joined"
sql = "SELECT p.section, sum(b.price) AS revenue FROM batch b JOIN pages p ON b.page = p.page GROUP BY p.section ORDER BY p.section"
"#,
        pages.display()
    );
    let job = Spec {
        rest: &rest,
        ..spec()
    }
    .job();
    let lookups = Lookups::load(&job).await.unwrap();
    let transforms = Transform::all(&job, &lookups).await.unwrap();
    let rows = events(
        &job,
        &[
            (5, "/a", "view", Some(10.0)),
            (6, "/b", "view", Some(20.0)),
            (7, "/b", "view", Some(1.5)),
            (8, "/c", "view", Some(4.0)),
        ],
    );
    let windowed = transforms[0].apply(&rows).await.unwrap();
    let sections = windowed
        .column_by_name("section")
        .unwrap()
        .as_string::<i32>();
    let counts = windowed
        .column_by_name("n")
        .unwrap()
        .as_primitive::<Int64Type>();
    let mut got: Vec<_> = (0..windowed.num_rows())
        .map(|r| (sections.value(r).to_owned(), counts.value(r)))
        .collect();
    got.sort();
    // `/c` is not in the lookup: filtered out of the window.
    assert_eq!(got, vec![("news".to_owned(), 1), ("sport".to_owned(), 2)]);

    let joined = transforms[1].apply(&rows).await.unwrap();
    let sections = joined.column(0).as_string::<i32>();
    let revenue = joined.column(1).as_primitive::<Float64Type>();
    let got: Vec<_> = (0..joined.num_rows())
        .map(|r| (sections.value(r), revenue.value(r)))
        .collect();
    assert_eq!(got, vec![("news", 10.0), ("sport", 21.5)]);

    // Without the lookup the same job does not plan, naming what is missing.
    let err = Transform::all(&job, &Lookups::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("pages"), "{err}");
}

#[tokio::test]
async fn an_aggregate_of_an_expression_is_typed_when_the_spec_is_read() {
    let rest = r#"
[[outputs]]
name = "discounted"
window = "1m"
keys = ["kind"]
aggregates = [
  { name = "net", fn = "sum", expr = "price * (1 - 0.25)" },
  { name = "longest", fn = "max", expr = "length(page)" },
  { name = "pages", fn = "count_distinct", expr = "upper(page)" },
  { name = "avg_net", fn = "avg", expr = "price * 0.5" },
]
"#;
    let job = Spec { rest, ..spec() }.job();
    let Output::Window(w) = &job.outputs[0] else {
        panic!("a window")
    };
    let types: Vec<_> = w
        .aggregates
        .iter()
        .map(|a| match &a.input {
            Some(Input::Expr { ty, .. }) => *ty,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        types,
        [
            FieldType::Float64,
            FieldType::Int64,
            FieldType::String,
            FieldType::Float64
        ]
    );
    let transforms = Transform::all(&job, &Lookups::default()).await.unwrap();
    let rows = events(
        &job,
        &[
            (5, "/a", "view", Some(10.0)),
            (6, "/bb", "view", Some(20.0)),
            (7, "/A", "view", None),
        ],
    );
    let out = transforms[0].apply(&rows).await.unwrap();
    assert_eq!(out.num_rows(), 1);
    let net = out
        .column_by_name("net")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(net.value(0), 22.5);
    let longest = out
        .column_by_name("longest")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(longest.value(0), 3);
    // `/a` and `/A` are one page once upper-cased.
    let distinct = out
        .column_by_name("pages__distinct")
        .unwrap()
        .as_list::<i32>();
    assert_eq!(distinct.value(0).len(), 2);
    let sum = out
        .column_by_name("avg_net__sum")
        .unwrap()
        .as_primitive::<Float64Type>();
    let count = out
        .column_by_name("avg_net__count")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!((sum.value(0), count.value(0)), (15.0, 2));
}

#[tokio::test]
async fn a_window_key_may_be_a_named_expression() {
    let rest = r#"
[[outputs]]
name = "by_initial"
window = "1m"
keys = ["kind", { name = "initial", expr = "upper(substr(page, 2, 1))" }]
aggregates = [{ name = "n", fn = "count" }]
"#;
    let job = Spec { rest, ..spec() }.job();
    let transforms = Transform::all(&job, &Lookups::default()).await.unwrap();
    assert_eq!(
        transforms[0]
            .schema()
            .field_with_name("initial")
            .unwrap()
            .data_type(),
        &DataType::Utf8
    );
    let rows = events(
        &job,
        &[
            (5, "/a", "view", None),
            (6, "/A", "view", None),
            (7, "/b", "view", None),
        ],
    );
    let out = transforms[0].apply(&rows).await.unwrap();
    let initials = out.column_by_name("initial").unwrap().as_string::<i32>();
    let counts = out.column_by_name("n").unwrap().as_primitive::<Int64Type>();
    let mut got: Vec<_> = (0..out.num_rows())
        .map(|r| (initials.value(r), counts.value(r)))
        .collect();
    got.sort();
    assert_eq!(got, vec![("A", 2), ("B", 1)]);
    for (keys, key) in [
        (r#"[{ name = "page", expr = "page" }]"#, "keys[0].name"),
        (r#"[{ name = "x", expr = "nope(page)" }]"#, "keys[0].expr"),
    ] {
        let rest = rest.replace(
            r#"["kind", { name = "initial", expr = "upper(substr(page, 2, 1))" }]"#,
            keys,
        );
        let text = format!(
            "{}{rest}",
            spec().toml().split("[[outputs]]").next().unwrap()
        );
        let err = Job::parse(&text, Path::new("t.toml"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("outputs[0].{key}")), "{err}");
    }
}

const SESSIONS: &str = r#"
[[outputs]]
name = "visits"
window = { session_gap = "30s" }
keys = ["page"]
aggregates = [
  { name = "n", fn = "count" },
  { name = "spent", fn = "sum", field = "price" },
  { name = "kinds", fn = "count_distinct", field = "kind" },
]
"#;

/// A session as (page, start s, end s = last event + gap, events, spent, kinds).
type Session = (String, i64, i64, i64, f64, i64);

/// The sessions of all events at once, computed here: per page, sorted
/// times, a new session after a gap over 30 s.
fn oracle_sessions(rows: &[(i64, &str, &str, Option<f64>)]) -> Vec<Session> {
    let mut by_page: BTreeMap<&str, Vec<(i64, &str, f64)>> = BTreeMap::new();
    for &(t, page, kind, price) in rows {
        by_page
            .entry(page)
            .or_default()
            .push((t, kind, price.unwrap_or(0.0)));
    }
    let mut sessions = Vec::new();
    for (page, mut events) in by_page {
        events.sort_by_key(|e| e.0);
        let mut current: Option<(i64, i64, i64, f64, BTreeSet<&str>)> = None;
        for (t, kind, price) in events {
            match &mut current {
                Some((_, last, n, spent, kinds)) if t <= *last + 30 => {
                    (*last, *n, *spent) = (t, *n + 1, *spent + price);
                    kinds.insert(kind);
                }
                _ => {
                    if let Some((start, last, n, spent, kinds)) = current.take() {
                        let kinds = kinds.len() as i64;
                        sessions.push((page.to_owned(), start, last + 30, n, spent, kinds));
                    }
                    current = Some((t, t, 1, price, BTreeSet::from([kind])));
                }
            }
        }
        if let Some((start, last, n, spent, kinds)) = current {
            let kinds = kinds.len() as i64;
            sessions.push((page.to_owned(), start, last + 30, n, spent, kinds));
        }
    }
    sessions.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    sessions
}

/// The sessions the merged view gives over `partials`.
async fn merged_sessions(agg: &WindowAggregate, partials: Vec<RecordBatch>) -> Vec<Session> {
    let base = Utc
        .with_ymd_and_hms(2026, 11, 21, 12, 0, 0)
        .unwrap()
        .timestamp_micros();
    let secs = |us: i64| (us - base) / 1_000_000;
    let mut sessions = Vec::new();
    for b in merged(agg, partials).await {
        let starts = b.column(0).as_primitive::<TimestampMicrosecondType>();
        let ends = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let pages = arrow::compute::cast(b.column(2), &DataType::Utf8).unwrap();
        let pages = pages.as_string::<i32>();
        let n = b.column(3).as_primitive::<Int64Type>();
        let spent = b.column(4).as_primitive::<Float64Type>();
        let kinds = b.column(5).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            sessions.push((
                pages.value(r).to_owned(),
                secs(starts.value(r)),
                secs(ends.value(r)),
                n.value(r),
                if arrow::array::Array::is_null(spent, r) {
                    0.0
                } else {
                    spent.value(r)
                },
                kinds.value(r),
            ));
        }
    }
    sessions.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    sessions
}

/// Partial rows folded as upkeep folds them (every window closed).
async fn folded(agg: &WindowAggregate, partials: Vec<RecordBatch>) -> RecordBatch {
    let ctx = SessionContext::new();
    let table = MemTable::try_new(agg.partial_schema().clone(), vec![partials]).unwrap();
    ctx.register_table("p", Arc::new(table)).unwrap();
    let rows = ctx
        .sql(&agg.fold_sql("p", "true"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    crate::table::schema::conform(rows, agg.partial_schema()).unwrap()
}

#[tokio::test]
async fn sessions_join_fragments_across_triggers_and_a_late_bridge_merges_two() {
    let job = Spec {
        rest: SESSIONS,
        ..spec()
    }
    .job();
    let agg = WindowAggregate::new(window(&job, 0), &job.contract);
    // /a: 0, 10 | 50, 60 in one trigger: two fragments 40 s apart. A later
    // trigger brings 30 (within 30 s of 10 and of 50): one session.
    let first = events(
        &job,
        &[
            (0, "/a", "view", Some(1.0)),
            (10, "/a", "click", None),
            (50, "/a", "view", Some(2.0)),
            (60, "/a", "view", None),
            (200, "/b", "view", Some(5.0)),
        ],
    );
    let late = events(&job, &[(30, "/a", "buy", Some(4.0))]);
    let partials = vec![
        agg.apply(&first).await.unwrap(),
        agg.apply(&late).await.unwrap(),
    ];
    assert_eq!(partials[0].num_rows(), 3, "two fragments of /a, one of /b");
    let got = merged_sessions(&agg, partials.clone()).await;
    assert_eq!(
        got,
        vec![
            ("/a".into(), 0, 90, 5, 7.0, 3),
            ("/b".into(), 200, 230, 1, 5.0, 1)
        ]
    );
    // Without the bridge, /a is two sessions.
    let alone = merged_sessions(&agg, vec![partials[0].clone()]).await;
    assert_eq!(alone[0], ("/a".into(), 0, 40, 2, 1.0, 2));
    assert_eq!(alone[1], ("/a".into(), 50, 90, 2, 2.0, 1));
    // Folded, the fragments are one row per session, and merge the same.
    let folded = folded(&agg, partials).await;
    assert_eq!(folded.num_rows(), 2);
    assert_eq!(merged_sessions(&agg, vec![folded]).await, got);
}

mod session_split {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Any split of a keyed event sequence into triggers, committed in
        /// any order, folded or not, gives the sessions of the whole.
        #[test]
        fn any_split_gives_the_sessions_of_the_whole(
            events_in in prop::collection::vec((0usize..2, 0i64..400, 0u8..3, 0u8..5), 1..40),
            triggers in prop::collection::vec(0usize..4, 40),
            reversed in any::<bool>(),
            fold in any::<bool>(),
        ) {
            let pages = ["/a", "/b"];
            let kinds = ["view", "click", "buy"];
            let rows: Vec<(i64, &str, &str, Option<f64>)> = events_in
                .iter()
                .map(|&(p, t, k, price)| (t, pages[p], kinds[k as usize], Some(f64::from(price))))
                .collect();
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let got = runtime.block_on(async {
                let job = Spec { rest: SESSIONS, ..spec() }.job();
                let agg = WindowAggregate::new(window(&job, 0), &job.contract);
                let mut split: Vec<Vec<_>> = vec![Vec::new(); 4];
                for (i, row) in rows.iter().enumerate() {
                    split[triggers[i]].push(*row);
                }
                if reversed {
                    split.reverse();
                }
                let mut partials = Vec::new();
                for part in split.iter().filter(|p| !p.is_empty()) {
                    partials.push(agg.apply(&events(&job, part)).await.unwrap());
                }
                if fold {
                    partials = vec![folded(&agg, partials).await];
                }
                merged_sessions(&agg, partials).await
            });
            prop_assert_eq!(got, oracle_sessions(&rows));
        }
    }
}
