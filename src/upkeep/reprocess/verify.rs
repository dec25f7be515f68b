//! `weir verify`: reprocess a range into a scratch location and compare it
//! with the live outputs, value by value. It is the "run the old and the new
//! definition side by side" check, built in: zero differences on an untouched
//! range says the live tables equal what raw and the current job produce.
//!
//! Outputs are compared as their readers see them: windows by their merged
//! final values per (window, keys), so folding never shows as a difference;
//! query outputs row by row, keyed by the event ID when they carry it. Floats
//! are equal within 1e-9 relative (sums add up in a different order).

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Schema};
use arrow::error::ArrowError;
use arrow::row::{OwnedRow, RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::ident;
use deltalake::DeltaTable;
use deltalake::protocol::SaveMode;
use futures::StreamExt;
use url::Url;

use super::{DateRange, Rebuild, Rebuilt, ReprocessError, Target, check_closed, rebuild};
use crate::config::{Job, Output};
use crate::ingest::transform::{Dialect, WINDOW_END, WINDOW_START, view_sql};
use crate::table::delta::{open_or_create, register, stored_schema};
use crate::table::tier::literal;
use crate::table::tier::register_tiers;

/// Samples of each kind of difference printed per output.
const SAMPLES: usize = 3;

/// How one output's live rows compare with the reprocessed ones.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    pub output: String,
    pub live: usize,
    pub reprocessed: usize,
    pub only_live: usize,
    pub only_reprocessed: usize,
    pub differing: usize,
    pub samples: Vec<String>,
}

impl Diff {
    pub fn differences(&self) -> usize {
        self.only_live + self.only_reprocessed + self.differing
    }
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub range: DateRange,
    pub scratch: PathBuf,
    pub rebuild: Rebuild,
    pub diffs: Vec<Diff>,
}

impl VerifyReport {
    pub fn differences(&self) -> usize {
        self.diffs.iter().map(Diff::differences).sum()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "verify {}: {}, reprocessed into {}",
            self.range,
            self.rebuild.read(),
            self.scratch.display()
        )?;
        writeln!(
            f,
            "{:<16} {:>9} {:>12} {:>10} {:>17} {:>10}",
            "output", "live", "reprocessed", "only live", "only reprocessed", "differing"
        )?;
        for d in &self.diffs {
            writeln!(
                f,
                "{:<16} {:>9} {:>12} {:>10} {:>17} {:>10}",
                d.output, d.live, d.reprocessed, d.only_live, d.only_reprocessed, d.differing
            )?;
            for s in &d.samples {
                writeln!(f, "  {s}")?;
            }
        }
        match self.differences() {
            0 => write!(f, "no differences"),
            n => write!(f, "{n} differences"),
        }
    }
}

/// Reprocesses `range` into tables under `scratch` (replacing what an earlier
/// verify left there) and compares each target with its live output, both
/// read in key order, so only rows of one key are held at a time.
pub async fn verify(
    job: &Job,
    range: DateRange,
    targets: &[Target],
    scratch: &Path,
    memory_bytes: usize,
) -> Result<VerifyReport, ReprocessError> {
    check_closed(job, range, targets).await?;
    let rebuilt = rebuild(job, range, targets, memory_bytes).await?;
    let mut diffs = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        let output = job
            .outputs
            .iter()
            .find(|o| o.name() == target.name())
            .expect("targets are the job's outputs");
        let table = write_scratch(job, scratch, &rebuilt, index, target).await?;
        let ctx = &rebuilt.ctx;
        let (live, new) = (format!("live_{index}"), format!("scratch_{index}"));
        register_tiers(ctx, job, target.spec.id, &live).await?;
        register(ctx, &new, &table).await?;
        let in_range = format!(
            "\"{age}\" >= {} AND \"{age}\" < {}",
            literal(range.start_us()),
            literal(range.end_us()),
            age = target.age
        );
        let keys = key_columns(job, output);
        let final_rows = async |source: &str| {
            let sql = format!(
                "SELECT * FROM ({}) AS v WHERE {in_range}",
                view_sql(output, &job.contract, source, Dialect::DataFusion)
            );
            in_key_order(ctx.sql(&sql).await?, &keys)
                .await
                .map_err(ReprocessError::from)
        };
        let live = final_rows(&live).await?;
        let new = final_rows(&new).await?;
        diffs.push(compare(target.name(), &keys, live, new).await?);
    }
    Ok(VerifyReport {
        range,
        scratch: scratch.to_owned(),
        rebuild: rebuilt.stats,
        diffs,
    })
}

/// Writes a target's rebuilt rows into a fresh table under `scratch`.
async fn write_scratch(
    job: &Job,
    scratch: &Path,
    rebuilt: &Rebuilt,
    index: usize,
    target: &Target,
) -> Result<DeltaTable, ReprocessError> {
    let fail = |step: &'static str| {
        move |source| ReprocessError::Delta {
            step,
            table: target.name().to_owned(),
            tier: "scratch",
            source: Box::new(source),
        }
    };
    let dir = scratch.join(&job.name).join(target.name());
    let _ = std::fs::remove_dir_all(&dir);
    let url = Url::from_directory_path(std::path::absolute(&dir).unwrap_or(dir.clone()))
        .expect("an absolute path");
    // A scratch table is read once and deleted: removals need no keeping.
    let table = open_or_create(url, &target.spec, Duration::ZERO).await?;
    let stored = stored_schema(&table).map_err(fail("reading the schema"))?;
    let rows = rebuilt.rows(index, target).await?;
    rebuilt
        .write(table, rows, &stored)?
        .with_save_mode(SaveMode::Append)
        .with_partition_columns(target.spec.partition_columns.clone())
        .await
        .map_err(fail("writing the reprocessed rows"))
}

/// `rows` as a stream sorted by `keys` (then by every other column, so rows
/// of one key pair up the same way on both sides).
async fn in_key_order(
    rows: DataFrame,
    keys: &[String],
) -> Result<SendableRecordBatchStream, DataFusionError> {
    let names: Vec<String> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let order = keys
        .iter()
        .chain(names.iter().filter(|n| !keys.contains(n)))
        .map(|name| ident(name).sort(true, true))
        .collect();
    rows.sort(order)?.execute_stream().await
}

/// What identifies a row: a window and its keys; a query row's event ID (or,
/// without one, the whole row).
fn key_columns(job: &Job, output: &Output) -> Vec<String> {
    match output {
        Output::Window(w) => [WINDOW_START, WINDOW_END]
            .into_iter()
            .map(str::to_owned)
            .chain(w.keys.iter().map(|k| k.name(&job.contract).to_owned()))
            .collect(),
        Output::Sql(_) => vec![job.contract.event_id_name().to_owned()],
    }
}

/// A cell as compared: floats numerically, everything else by its text.
#[derive(Debug, Clone)]
enum Cell {
    Float(Option<f64>),
    Text(String),
}

impl Cell {
    fn same(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Float(Some(a)), Cell::Float(Some(b))) => {
                (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
            }
            (Cell::Float(a), Cell::Float(b)) => a.is_none() && b.is_none(),
            (Cell::Text(a), Cell::Text(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Float(Some(x)) => write!(f, "{x}"),
            Cell::Float(None) => write!(f, "null"),
            Cell::Text(s) => write!(f, "{s}"),
        }
    }
}

/// Which of a side's columns make its key: the key columns, or every column
/// when it has none of them.
#[derive(Clone)]
struct Layout {
    is_key: Vec<bool>,
    key_names: Vec<String>,
    names: Vec<String>,
}

impl Layout {
    fn new(schema: &Schema, keys: &[String]) -> Self {
        let has_keys = schema.fields().iter().any(|f| keys.contains(f.name()));
        let is_key: Vec<bool> = schema
            .fields()
            .iter()
            .map(|f| keys.contains(f.name()) || !has_keys)
            .collect();
        let named = |key: bool| {
            schema
                .fields()
                .iter()
                .zip(&is_key)
                .filter(|(_, k)| **k == key)
                .map(|(f, _)| f.name().clone())
                .collect()
        };
        Self {
            key_names: named(true),
            names: named(false),
            is_key,
        }
    }
}

/// The order of key columns, as comparable bytes; the other side's keys are
/// cast to this side's types first.
struct Order {
    converter: RowConverter,
    types: Vec<DataType>,
}

/// A row as compared: where its key sorts, its key's text, its value cells.
struct Keyed {
    order: OwnedRow,
    key: Vec<String>,
    values: Vec<Cell>,
}

/// One side of the comparison, a row at a time in key order.
struct Side {
    stream: SendableRecordBatchStream,
    layout: Layout,
    /// The rest of the batch read last, keyed.
    rows: VecDeque<Keyed>,
    count: usize,
}

impl Side {
    fn new(stream: SendableRecordBatchStream, keys: &[String]) -> Self {
        Self {
            layout: Layout::new(&stream.schema(), keys),
            stream,
            rows: VecDeque::new(),
            count: 0,
        }
    }

    /// How this side's keys sort: both sides' rows are ordered by it.
    fn order(&self) -> Result<Order, ArrowError> {
        let schema = self.stream.schema();
        let types: Vec<DataType> = schema
            .fields()
            .iter()
            .zip(&self.layout.is_key)
            .filter(|(_, k)| **k)
            .map(|(f, _)| f.data_type().clone())
            .collect();
        let fields = types.iter().cloned().map(SortField::new).collect();
        Ok(Order {
            converter: RowConverter::new(fields)?,
            types,
        })
    }

    async fn next(&mut self, order: &Order) -> Result<Option<Keyed>, ReprocessError> {
        loop {
            if let Some(row) = self.rows.pop_front() {
                self.count += 1;
                return Ok(Some(row));
            }
            let Some(batch) = self.stream.next().await.transpose()? else {
                return Ok(None);
            };
            self.rows = self.keyed(&batch, order)?;
        }
    }

    /// Every row of `batch` as compared.
    fn keyed(&self, batch: &RecordBatch, order: &Order) -> Result<VecDeque<Keyed>, ArrowError> {
        let keys = batch
            .columns()
            .iter()
            .zip(&self.layout.is_key)
            .filter(|(_, k)| **k)
            .zip(&order.types)
            .map(|((c, _), t)| cast(c, t))
            .collect::<Result<Vec<_>, _>>()?;
        let sorted = order.converter.convert_columns(&keys)?;
        let options = FormatOptions::default().with_null("null");
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        let cells = batch
            .columns()
            .iter()
            .zip(&formatters)
            .zip(&self.layout.is_key);
        Ok((0..batch.num_rows())
            .map(|row| {
                let mut keyed = Keyed {
                    order: sorted.row(row).owned(),
                    key: Vec::new(),
                    values: Vec::new(),
                };
                for ((column, text), is_key) in cells.clone() {
                    if *is_key {
                        keyed.key.push(text.value(row).to_string());
                    } else if column.data_type() == &DataType::Float64 {
                        let floats = column.as_primitive::<Float64Type>();
                        let value = floats.is_valid(row).then(|| floats.value(row));
                        keyed.values.push(Cell::Float(value));
                    } else {
                        keyed.values.push(Cell::Text(text.value(row).to_string()));
                    }
                }
                keyed
            })
            .collect())
    }

    /// `head` and the rows after it with the same key; leaves the first row
    /// of the next key in `head`.
    async fn group(
        &mut self,
        head: &mut Option<Keyed>,
        order: &Order,
    ) -> Result<Vec<Keyed>, ReprocessError> {
        let Some(first) = head.take() else {
            return Ok(Vec::new());
        };
        let mut group = vec![first];
        while let Some(row) = self.next(order).await? {
            if row.order != group[0].order {
                *head = Some(row);
                break;
            }
            group.push(row);
        }
        Ok(group)
    }
}

/// `name=value` pairs, space-separated.
fn labelled(names: &[String], values: &[impl fmt::Display]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Walks both sides in key order: rows of one key pair up in order, and
/// what one side has more of is only on that side.
async fn compare(
    output: &str,
    keys: &[String],
    live: SendableRecordBatchStream,
    new: SendableRecordBatchStream,
) -> Result<Diff, ReprocessError> {
    let (mut live, mut new) = (Side::new(live, keys), Side::new(new, keys));
    let order = live.order()?;
    let mut tally = Tally::new(output, live.layout.clone());
    let (mut a, mut b) = (live.next(&order).await?, new.next(&order).await?);
    loop {
        let side = match (&a, &b) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.order.cmp(&y.order),
        };
        let from_live = match side {
            Ordering::Greater => Vec::new(),
            _ => live.group(&mut a, &order).await?,
        };
        let from_new = match side {
            Ordering::Less => Vec::new(),
            _ => new.group(&mut b, &order).await?,
        };
        tally.add(&from_live, &from_new);
    }
    tally.diff.live = live.count;
    tally.diff.reprocessed = new.count;
    Ok(tally.finish())
}

/// The differences found so far, with a few samples of each kind.
struct Tally {
    diff: Diff,
    layout: Layout,
    samples: [Vec<String>; 3],
}

impl Tally {
    fn new(output: &str, layout: Layout) -> Self {
        Self {
            diff: Diff {
                output: output.to_owned(),
                ..Diff::default()
            },
            layout,
            samples: Default::default(),
        }
    }

    /// One key's rows on each side.
    fn add(&mut self, live: &[Keyed], new: &[Keyed]) {
        let Tally {
            diff,
            layout: Layout {
                key_names, names, ..
            },
            samples,
        } = self;
        let mut sample = |kind: usize, text: &dyn Fn() -> String| {
            if samples[kind].len() < SAMPLES {
                samples[kind].push(text());
            }
        };
        let show = |row: &Keyed| labelled(key_names, &row.key);
        for (a, b) in live.iter().zip(new) {
            if !a.values.iter().zip(&b.values).all(|(x, y)| x.same(y)) {
                diff.differing += 1;
                sample(2, &|| {
                    format!(
                        "differing: {}: live {} | reprocessed {}",
                        show(a),
                        labelled(names, &a.values),
                        labelled(names, &b.values)
                    )
                });
            }
        }
        for extra in live.iter().skip(new.len()) {
            diff.only_live += 1;
            sample(0, &|| {
                format!(
                    "only live: {} {}",
                    show(extra),
                    labelled(names, &extra.values)
                )
            });
        }
        for extra in new.iter().skip(live.len()) {
            diff.only_reprocessed += 1;
            sample(1, &|| {
                format!(
                    "only reprocessed: {} {}",
                    show(extra),
                    labelled(names, &extra.values)
                )
            });
        }
    }

    fn finish(self) -> Diff {
        Diff {
            samples: self.samples.into_iter().flatten().collect(),
            ..self.diff
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::Field;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    use super::*;

    /// Rows of (id, value), in the order given, as one side's stream.
    fn side(rows: &[(i64, f64)]) -> SendableRecordBatchStream {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("value", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(rows.iter().map(|r| r.0).collect::<Int64Array>()),
                Arc::new(rows.iter().map(|r| Some(r.1)).collect::<Float64Array>()),
            ],
        )
        .unwrap();
        Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter([Ok(batch)]),
        ))
    }

    #[tokio::test]
    async fn the_walk_in_key_order_pairs_rows_of_a_key_and_counts_the_rest() {
        let live = side(&[(1, 1.0), (2, 2.0), (2, 2.5), (4, 4.0), (5, 5.0)]);
        let new = side(&[(2, 2.0), (2, 2.5), (3, 3.0), (4, 4.5), (5, 5.0), (5, 5.0)]);
        let diff = compare("t", &["id".to_owned()], live, new).await.unwrap();
        assert_eq!((diff.live, diff.reprocessed), (5, 6));
        assert_eq!(diff.only_live, 1, "id 1");
        assert_eq!(diff.only_reprocessed, 2, "id 3 and the second id 5");
        assert_eq!(diff.differing, 1, "id 4");
        assert!(
            diff.samples
                .contains(&"differing: id=4: live value=4 | reprocessed value=4.5".to_owned()),
            "{:?}",
            diff.samples
        );
    }
}
