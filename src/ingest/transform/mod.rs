//! Transforms: deduplicated events in, output rows out, with DataFusion.
//!
//! Windowed aggregations are written as append-only *partials*: each trigger
//! appends, per (window, keys), mergeable states (counts, sums, mins, maxes, and
//! sum + count for averages). No state is carried between triggers, so a late
//! event simply adds a partial row, a replayed trigger adds nothing (its input
//! rows were filtered by the output table's txn versions), and any reader gets
//! the exact answer by merging with `GROUP BY` ([`WindowAggregate::merge_sql`]).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use tokio::sync::OnceCell;

use crate::config::{
    AggregateFn, Choice, Contract, Derived, FieldType, Input, Job, JobError, Key, Output,
    SqlOutput, WindowOutput, Windowing,
};
use crate::ingest::decode::{EVENT_DATE, raw_schema, utc_micros};
use crate::ingest::lookup::Lookups;
use crate::table::schema::conform;

mod planned;
mod session;
pub use planned::PlannedQuery;
pub use session::SESSION_BUCKET;

pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// The SQL engines whose merge views weir writes. They share SUM, MIN, MAX,
/// CASE and CAST; they differ in list functions (for `count_distinct`),
/// identifier quoting and how a Delta table is named ([`crate::cmd::views`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    DataFusion,
    DuckDb,
    Spark,
    Trino,
}

impl Choice for Dialect {
    const ALL: &'static [Self] = &[
        Dialect::DataFusion,
        Dialect::DuckDb,
        Dialect::Spark,
        Dialect::Trino,
    ];

    fn name(self) -> &'static str {
        match self {
            Dialect::DataFusion => "datafusion",
            Dialect::DuckDb => "duckdb",
            Dialect::Spark => "spark",
            Dialect::Trino => "trino",
        }
    }
}

/// How one aggregate's partial states merge into its final value.
#[derive(Debug, Clone)]
enum Merge {
    /// SUM of partial counts or sums.
    Sum(String),
    Min(String),
    Max(String),
    /// SUM(sum) / SUM(count).
    Avg {
        sum: String,
        count: String,
    },
    /// The size of the union of the partials' distinct-value lists.
    Distinct(String),
}

impl Merge {
    /// The merge expression, aliased to the aggregate's name `alias` (quoted).
    fn sql(&self, alias: &str, dialect: Dialect) -> String {
        let expr = match self {
            Merge::Sum(c) => format!("sum({c})"),
            Merge::Min(c) => format!("min({c})"),
            Merge::Max(c) => format!("max({c})"),
            Merge::Avg { sum, count } => format!(
                "CASE WHEN sum({count}) = 0 THEN NULL \
                 ELSE sum({sum}) / CAST(sum({count}) AS DOUBLE) END"
            ),
            Merge::Distinct(c) => {
                let lists = format!("array_agg({c}) FILTER (WHERE {c} IS NOT NULL)");
                let size = match dialect {
                    Dialect::DataFusion | Dialect::DuckDb => {
                        format!("array_length(array_distinct(flatten({lists})))")
                    }
                    Dialect::Trino => format!("cardinality(array_distinct(flatten({lists})))"),
                    Dialect::Spark => format!("size(array_distinct(flatten(collect_list({c}))))"),
                };
                format!("CAST(coalesce({size}, 0) AS BIGINT)")
            }
        };
        format!("{expr} AS {alias}")
    }

    /// The expressions that fold many partial states into one, in the partial
    /// table's column order (the states stay states).
    fn fold(&self) -> Vec<String> {
        let folded = |f: &str, c: &String| format!("{f}({c}) AS {c}");
        match self {
            Merge::Sum(c) => vec![folded("sum", c)],
            Merge::Min(c) => vec![folded("min", c)],
            Merge::Max(c) => vec![folded("max", c)],
            Merge::Avg { sum, count } => vec![folded("sum", sum), folded("sum", count)],
            Merge::Distinct(c) => vec![format!(
                "array_sort(array_distinct(flatten(array_agg({c}) FILTER (WHERE {c} IS NOT NULL)))) AS {c}"
            )],
        }
    }
}

/// A compiled windowed aggregation: the SQL that turns a batch of events into
/// partial rows, and the partial table's schema.
#[derive(Debug, Clone)]
pub struct WindowAggregate {
    output: WindowOutput,
    partial_schema: SchemaRef,
    partial_sql: String,
    /// Per aggregate: its quoted name and how its states merge.
    merges: Vec<(String, Merge)>,
    group_columns: Vec<String>,
    /// What `batch` is over the events ([`batch_view`]).
    view: Option<String>,
    /// The lookups its filter and derived columns may read.
    lookups: Lookups,
    /// Planned before the first batch ([`Self::planned`]) or at it.
    plan: Arc<OnceCell<PlannedQuery>>,
}

fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

/// What outputs read as `batch` when the contract derives columns: the
/// events with each derived column added, cast to its declared type (so a
/// window's partial table's schema is known before any event arrives).
fn batch_view(contract: &Contract) -> Option<String> {
    if contract.derived.is_empty() {
        return None;
    }
    let derived: String = contract
        .derived
        .iter()
        .map(|d| format!(", {} AS {}", derived_sql(d), quote(&d.field.name)))
        .collect();
    Some(format!(
        "SELECT *{derived} FROM {} AS batch",
        planned::EVENTS
    ))
}

/// `sql` over `batch` (the events in `raw`'s columns, and the contract's
/// derived columns), planned.
async fn plan(
    sql: &str,
    contract: &Contract,
    lookups: &Lookups,
) -> Result<PlannedQuery, DataFusionError> {
    let view = batch_view(contract);
    PlannedQuery::over(sql, raw_schema(contract), view.as_deref(), lookups).await
}

/// A derived column's expression as its declared type.
fn derived_sql(derived: &Derived) -> String {
    typed(&derived.expr, derived.field.ty)
}

/// SQL expression `sql` as type `ty`; a value that cannot be one (a number
/// out of an int32's range) is null.
fn typed(sql: &str, ty: FieldType) -> String {
    format!("arrow_try_cast(({sql}), '{}')", ty.stored_type())
}

/// Plans each derived column over `raw`'s columns: one that does not plan,
/// or whose type is of another kind than the declared one (text declared a
/// number), is a bad job spec, named by its key.
async fn check_derived(job: &Job, lookups: &Lookups) -> Result<(), JobError> {
    for (i, derived) in job.contract.derived.iter().enumerate() {
        let sql = format!("SELECT ({}) FROM batch", derived.expr);
        let input = raw_schema(&job.contract);
        let found = match PlannedQuery::over(&sql, input, None, lookups).await {
            Ok(plan) => match plan.schema().field(0).data_type() {
                ty if same_kind(ty, derived.field.ty) => continue,
                ty => format!("`{}`, which is {ty}", derived.expr),
            },
            Err(e) => format!("`{}` ({})", derived.expr, e.find_root()),
        };
        return Err(JobError::Invalid {
            file: job.file.clone(),
            key: format!("schema.derived[{i}].expr"),
            expected: format!(
                "a SQL expression over the event's fields that is a {}",
                derived.field.ty.name()
            ),
            found,
        });
    }
    Ok(())
}

/// Whether values of `ty` become `declared` by a cast that keeps their
/// meaning: numbers to a number type, text to text, and so on.
fn same_kind(ty: &DataType, declared: FieldType) -> bool {
    match declared {
        _ if ty.is_null() => true,
        FieldType::Int32 | FieldType::Int64 | FieldType::Float32 | FieldType::Float64 => {
            ty.is_numeric()
        }
        FieldType::String => matches!(
            ty,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ),
        FieldType::Bool => ty == &DataType::Boolean,
        FieldType::Timestamp => matches!(ty, DataType::Timestamp(..)),
        FieldType::Date => matches!(ty, DataType::Date32 | DataType::Date64),
    }
}

/// The partition column of a window table: the UTC date its window starts.
fn window_date() -> String {
    format!(
        "CAST({} AS DATE) AS {}",
        quote(WINDOW_START),
        quote(EVENT_DATE)
    )
}

impl WindowAggregate {
    pub fn new(output: &WindowOutput, contract: &Contract) -> Self {
        let field = |i: usize| contract.input(i);
        let time = quote(contract.event_time_name());

        let mut fields = vec![
            Field::new(WINDOW_START, utc_micros(), false),
            Field::new(WINDOW_END, utc_micros(), false),
        ];
        // A session's fragments also keep their bucket.
        if let Windowing::Session { .. } = output.windowing {
            fields.push(Field::new(SESSION_BUCKET, utc_micros(), false));
        }
        let windows = window_columns(&output.windowing);
        let mut group_columns: Vec<String> = windows.iter().map(|c| quote(c)).collect();
        let windows = windows.len();
        // Expression keys are computed beside each event's window.
        let mut computed_keys = String::new();
        for k in &output.keys {
            let (name, ty) = match k {
                Key::Field(i) => (&field(*i).name, field(*i).ty),
                Key::Expr { name, sql, ty } => {
                    computed_keys.push_str(&format!(", {} AS {}", typed(sql, *ty), quote(name)));
                    (name, *ty)
                }
            };
            fields.push(Field::new(name, ty.stored_type(), true));
            group_columns.push(quote(name));
        }

        let mut states = Vec::new();
        let mut merges = Vec::new();
        for agg in &output.aggregates {
            let name = &agg.name;
            let input = agg.input.as_ref().map(|i| match i {
                Input::Field(f) => quote(&field(*f).name),
                Input::Expr { sql, ty } => typed(sql, *ty),
            });
            let input_ty = agg.input.as_ref().map(|i| match i {
                Input::Field(f) => field(*f).ty,
                Input::Expr { ty, .. } => *ty,
            });
            let sum_ty = match input_ty {
                Some(FieldType::Int32 | FieldType::Int64) => DataType::Int64,
                _ => DataType::Float64,
            };
            match agg.func {
                AggregateFn::Count => {
                    let counted = input.unwrap_or_else(|| "*".into());
                    states.push((format!("count({counted})"), quote(name)));
                    fields.push(Field::new(name, DataType::Int64, false));
                    merges.push((quote(name), Merge::Sum(quote(name))));
                }
                AggregateFn::Sum => {
                    let input = input.expect("validated: sum has a field");
                    states.push((format!("sum({input})"), quote(name)));
                    fields.push(Field::new(name, sum_ty, true));
                    merges.push((quote(name), Merge::Sum(quote(name))));
                }
                AggregateFn::Min | AggregateFn::Max => {
                    let input = input.expect("validated: min/max have a field");
                    let (f, merge) = if agg.func == AggregateFn::Min {
                        ("min", Merge::Min(quote(name)))
                    } else {
                        ("max", Merge::Max(quote(name)))
                    };
                    states.push((format!("{f}({input})"), quote(name)));
                    let ty = input_ty.expect("validated").stored_type();
                    fields.push(Field::new(name, ty, true));
                    merges.push((quote(name), merge));
                }
                AggregateFn::Avg => {
                    let input = input.expect("validated: avg has a field");
                    let (sum, count) = (
                        quote(&format!("{name}__sum")),
                        quote(&format!("{name}__count")),
                    );
                    // A float64 field's is written exactly as a `sum` of it would
                    // be, so the two share one aggregate; any other's must read
                    // differently from that `sum`, since DataFusion names both
                    // `sum(price)` (casts leave names alone) and refuses the
                    // duplicate.
                    let summed = match input_ty {
                        Some(FieldType::Float64) => input.clone(),
                        _ => format!("{input} * 1.0"),
                    };
                    states.push((format!("sum({summed})"), sum.clone()));
                    states.push((format!("count({input})"), count.clone()));
                    fields.push(Field::new(format!("{name}__sum"), DataType::Float64, true));
                    fields.push(Field::new(format!("{name}__count"), DataType::Int64, false));
                    merges.push((quote(name), Merge::Avg { sum, count }));
                }
                AggregateFn::CountDistinct => {
                    // Exact: each partial keeps its distinct values; the merge
                    // counts their union. `array_distinct` over a plain
                    // `array_agg`, not `array_agg(DISTINCT …)`: DataFusion has a
                    // vectorized accumulator only for the plain one, and the
                    // per-group accumulators of the other made the three
                    // clickstream queries four times as slow.
                    let input = input.expect("validated: count_distinct has a field");
                    let column = quote(&format!("{name}__distinct"));
                    states.push((
                        format!(
                            "array_sort(array_distinct(array_agg({input}) FILTER (WHERE {input} IS NOT NULL)))"
                        ),
                        column.clone(),
                    ));
                    let ty = input_ty.expect("validated").stored_type();
                    let element = Field::new("element", ty, true);
                    fields.push(Field::new(
                        format!("{name}__distinct"),
                        DataType::List(Arc::new(element)),
                        true,
                    ));
                    merges.push((quote(name), Merge::Distinct(column)));
                }
            }
        }

        // Windows are stored partitioned by their start's date, so reprocessing
        // a day replaces that day's files and no other.
        fields.push(Field::new(EVENT_DATE, DataType::Date32, false));

        let filter = output
            .filter
            .as_ref()
            .map_or(String::new(), |f| format!(" WHERE ({f})"));
        // Each distinct aggregate is computed once, then projected under every
        // column name that wants it.
        let mut distinct: Vec<&str> = Vec::new();
        let projected: Vec<String> = states
            .iter()
            .map(|(expr, column)| {
                let i = distinct.iter().position(|d| d == expr).unwrap_or_else(|| {
                    distinct.push(expr);
                    distinct.len() - 1
                });
                format!("__s{i} AS {column}")
            })
            .collect();
        let computed: Vec<String> = distinct
            .iter()
            .enumerate()
            .map(|(i, expr)| format!("{expr} AS __s{i}"))
            .collect();
        let keys_list = after_commas(&group_columns[windows..]);
        let (projected, computed) = (projected.join(", "), computed.join(", "));
        let partial_sql = match output.windowing {
            Windowing::Fixed { size, hop } => {
                let (size_ms, hop_ms) = (size.as_millis(), hop.as_millis());
                // One event belongs to size/hop windows: the one its
                // hop-aligned bucket starts, and those starting up to
                // size − hop earlier. No interval arithmetic for the bucket's
                // own window: on a UTC-zoned timestamp it goes through the
                // time-zone database row by row.
                let assignments: Vec<String> = (0..size_ms / hop_ms)
                    .map(|k| {
                        let earlier = match k {
                            0 => String::new(),
                            k => format!(" - INTERVAL '{} milliseconds'", k * hop_ms),
                        };
                        format!(
                            "SELECT date_bin(INTERVAL '{hop_ms} milliseconds', {time}){earlier} \
                             AS {ws}, *{computed_keys} FROM batch{filter}",
                            ws = quote(WINDOW_START),
                        )
                    })
                    .collect();
                format!(
                    "SELECT {ws}, {ws} + INTERVAL '{size_ms} milliseconds' AS {we}{keys_list}, {projected}, \
                     {date} FROM (SELECT {ws}{keys_list}, {computed} FROM ({windows}) AS assigned \
                     GROUP BY {ws}{keys_list}) AS aggregated",
                    ws = quote(WINDOW_START),
                    we = quote(WINDOW_END),
                    windows = assignments.join(" UNION ALL "),
                    date = window_date(),
                )
            }
            Windowing::Session { gap, max_length } => session::Fragments {
                time: &time,
                gap_ms: gap.as_millis(),
                max_ms: max_length.as_millis(),
                partition: &group_columns.join(", "),
                keys_list: &keys_list,
                computed_keys: &computed_keys,
                filter: &filter,
                computed: &computed,
                projected: &projected,
            }
            .sql(),
        };
        Self {
            output: output.clone(),
            partial_schema: Arc::new(Schema::new(fields)),
            partial_sql,
            merges,
            group_columns,
            view: batch_view(contract),
            lookups: Lookups::default(),
            plan: Arc::default(),
        }
    }

    /// [`Self::new`], planned before any event arrives: a `filter` that does
    /// not plan is a bad job spec, not a failure at the first batch.
    pub async fn planned(
        index: usize,
        output: &WindowOutput,
        job: &Job,
        lookups: &Lookups,
    ) -> Result<Self, JobError> {
        let window = Self {
            lookups: lookups.clone(),
            ..Self::new(output, &job.contract)
        };
        let error = match plan(&window.partial_sql, &job.contract, lookups).await {
            Ok(plan) => {
                window
                    .plan
                    .set(plan)
                    .expect("a window just made has no plan yet");
                return Ok(window);
            }
            Err(e) => e.find_root().to_string(),
        };
        // Whether the filter is to blame: the same window without it plans.
        let unfiltered = WindowOutput {
            filter: None,
            ..output.clone()
        };
        let unfiltered = Self::new(&unfiltered, &job.contract);
        let (key, expected) = match plan(&unfiltered.partial_sql, &job.contract, lookups).await {
            Ok(_) => ("filter", "a DataFusion condition over the event's fields"),
            Err(_) => ("aggregates", "aggregates DataFusion can compute"),
        };
        Err(JobError::Invalid {
            file: job.file.clone(),
            key: format!("outputs[{index}].{key}"),
            expected: expected.into(),
            found: error,
        })
    }

    pub fn name(&self) -> &str {
        &self.output.name
    }

    /// How long before its events a row's `window_start` may be.
    pub fn slack(&self) -> std::time::Duration {
        self.output.windowing.slack()
    }

    pub fn partial_schema(&self) -> &SchemaRef {
        &self.partial_schema
    }

    /// The partial rows for one batch of events (rows in the `raw` schema).
    pub async fn apply(&self, events: &RecordBatch) -> Result<RecordBatch, DataFusionError> {
        let plan = self
            .plan
            .get_or_try_init(|| {
                let view = self.view.as_deref();
                PlannedQuery::over(&self.partial_sql, events.schema(), view, &self.lookups)
            })
            .await?;
        run_over_batch(plan, events, &self.partial_schema).await
    }

    /// DataFusion SQL that folds the partials in `table` matching `filter` into
    /// one partial row per (window, keys): what compaction writes back.
    pub fn fold_sql(&self, table: &str, filter: &str) -> String {
        let groups = self.group_columns.join(", ");
        let folded: Vec<String> = self.merges.iter().flat_map(|(_, m)| m.fold()).collect();
        if let Windowing::Session { .. } = self.output.windowing {
            let keys = self.keys_list();
            return session::fold_sql(table, filter, &groups, &keys, &folded.join(", "));
        }
        format!(
            "SELECT {groups}, {}, {} FROM {table} WHERE {filter} GROUP BY {groups}",
            folded.join(", "),
            window_date()
        )
    }

    /// SQL that merges the partials in `table` into one final row per (window,
    /// keys), in `dialect` (identifiers double-quoted).
    pub fn merge_sql(&self, table: &str, dialect: Dialect) -> String {
        let groups = self.group_columns.join(", ");
        let merged: Vec<String> = self
            .merges
            .iter()
            .map(|(alias, merge)| merge.sql(alias, dialect))
            .collect();
        if let Windowing::Session { .. } = self.output.windowing {
            let keys = self.keys_list();
            return session::merge_sql(table, &groups, &keys, &merged.join(", "));
        }
        format!(
            "SELECT {groups}, {} FROM {table} GROUP BY {groups}",
            merged.join(", ")
        )
    }

    /// The keys' quoted columns, each after a comma.
    fn keys_list(&self) -> String {
        after_commas(&self.group_columns[window_columns(&self.output.windowing).len()..])
    }
}

/// What a window output's rows are grouped by besides the keys: the window,
/// or a session's bucket (its sessions are found among its fragments).
fn window_columns(windowing: &Windowing) -> &'static [&'static str] {
    match windowing {
        Windowing::Fixed { .. } => &[WINDOW_START, WINDOW_END],
        Windowing::Session { .. } => &[SESSION_BUCKET],
    }
}

/// Each of `columns` after a comma: to follow other columns in a list.
fn after_commas(columns: &[String]) -> String {
    columns.iter().map(|c| format!(", {c}")).collect()
}

/// Runs `plan` over `events` (none: no rows, without running it), and conforms the result to
/// `schema` (the output table's), column by column.
async fn run_over_batch(
    plan: &PlannedQuery,
    events: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, DataFusionError> {
    if events.num_rows() == 0 {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    conform(plan.run(events).await?, schema)
}

/// A stateless output: a DataFusion query over each trigger's events. Its
/// table's schema is what the query returns over the `raw` schema, in types
/// every Delta reader shares.
#[derive(Debug, Clone)]
pub struct SqlTransform {
    name: String,
    plan: PlannedQuery,
    schema: SchemaRef,
}

impl SqlTransform {
    /// Plans the query once over an empty `batch`; a query that does not plan,
    /// or returns a type Delta cannot store, is a bad job spec.
    pub async fn new(
        index: usize,
        output: &SqlOutput,
        job: &Job,
        lookups: &Lookups,
    ) -> Result<Self, JobError> {
        let invalid = |found: String| {
            JobError::Invalid {
            file: job.file.clone(),
            key: format!("outputs[{index}].sql"),
            expected: "a DataFusion query over `batch` (the trigger's events, in raw's columns and the derived ones)"
                .into(),
            found,
        }
        };
        let invalid = &invalid;
        let plan_sql = |sql: String| async move {
            plan(&sql, &job.contract, lookups)
                .await
                .map_err(|e| invalid(e.find_root().to_string()))
        };
        let mut plan = plan_sql(output.sql.clone()).await?;
        // Rows that carry their event time are stored by its date, which is
        // also what lets `weir reprocess` replace a date range of them.
        let columns = plan.schema();
        let time = job.contract.event_time_name();
        if columns.column_with_name(EVENT_DATE).is_none()
            && columns
                .column_with_name(time)
                .is_some_and(|(_, f)| matches!(f.data_type(), DataType::Timestamp(..)))
        {
            plan = plan_sql(format!(
                "SELECT *, CAST({} AS DATE) AS {} FROM ({}) AS q",
                quote(time),
                quote(EVENT_DATE),
                output.sql
            ))
            .await?;
        }
        let fields = plan
            .schema()
            .fields()
            .iter()
            .map(|f| {
                delta_type(f.data_type())
                    .map(|ty| Field::new(f.name(), ty, true))
                    .ok_or_else(|| {
                        invalid(format!(
                            "column `{}` of type {}, which Delta tables cannot hold",
                            f.name(),
                            f.data_type()
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: output.name.clone(),
            plan,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    pub async fn apply(&self, events: &RecordBatch) -> Result<RecordBatch, DataFusionError> {
        run_over_batch(&self.plan, events, &self.schema).await
    }
}

/// The Delta type a query result column is stored as; `None` when there is none.
fn delta_type(ty: &DataType) -> Option<DataType> {
    Some(match ty {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::Timestamp(_, _) => utc_micros(),
        DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Float32
        | DataType::Float64
        | DataType::Date32
        | DataType::Decimal128(_, _) => ty.clone(),
        DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        // Kafka headers (`_headers`) among them.
        DataType::List(item) | DataType::LargeList(item) => {
            DataType::List(Arc::new(nullable_delta_field(item)?))
        }
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| nullable_delta_field(f))
                .collect::<Option<Fields>>()?,
        ),
        _ => return None,
    })
}

fn nullable_delta_field(field: &Field) -> Option<Field> {
    delta_type(field.data_type()).map(|ty| Field::new(field.name(), ty, true))
}

/// A job's output, compiled.
#[derive(Debug, Clone)]
pub enum Transform {
    Window(WindowAggregate),
    Sql(SqlTransform),
}

impl Transform {
    /// Compiles a job's outputs, in spec order, over one snapshot of its
    /// lookups.
    pub async fn all(job: &Job, lookups: &Lookups) -> Result<Vec<Self>, JobError> {
        check_derived(job, lookups).await?;
        let mut out = Vec::with_capacity(job.outputs.len());
        for (i, output) in job.outputs.iter().enumerate() {
            out.push(match output {
                Output::Window(w) => {
                    Self::Window(WindowAggregate::planned(i, w, job, lookups).await?)
                }
                Output::Sql(q) => Self::Sql(SqlTransform::new(i, q, job, lookups).await?),
            });
        }
        Ok(out)
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Window(w) => w.name(),
            Self::Sql(q) => &q.name,
        }
    }

    /// The schema of the output's Delta table.
    pub fn schema(&self) -> &SchemaRef {
        match self {
            Self::Window(w) => w.partial_schema(),
            Self::Sql(q) => &q.schema,
        }
    }

    /// The rows this output appends for a batch of events.
    pub async fn apply(&self, events: &RecordBatch) -> Result<RecordBatch, DataFusionError> {
        match self {
            Self::Window(w) => w.apply(events).await,
            Self::Sql(q) => q.apply(events).await,
        }
    }
}

/// The name under which `weir query` registers an output's Delta table; the
/// output's own name is the view of final values ([`view_sql`]).
pub fn stored_table(output: &Output) -> String {
    match output {
        Output::Window(w) => format!("{}__partials", w.name),
        Output::Sql(q) => format!("{}__rows", q.name),
    }
}

/// The SQL of an output's view of final values over its stored table `source`:
/// windows merge their partials; query outputs are their rows.
pub fn view_sql(output: &Output, contract: &Contract, source: &str, dialect: Dialect) -> String {
    match output {
        Output::Window(w) => WindowAggregate::new(w, contract).merge_sql(source, dialect),
        Output::Sql(_) => format!("SELECT * FROM {source}"),
    }
}

#[cfg(test)]
mod tests;
