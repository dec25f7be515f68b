//! `weir verify`: reprocess a range into a scratch location and compare it
//! with the live outputs, value by value. It is the "run the old and the new
//! definition side by side" check, built in: zero differences on an untouched
//! range says the live tables equal what raw and the current job produce.
//!
//! Outputs are compared as their readers see them: windows by their merged
//! final values per (window, keys), so folding never shows as a difference;
//! query outputs row by row, keyed by the event ID when they carry it. Floats
//! are equal within 1e-9 relative (sums add up in a different order).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use deltalake::protocol::SaveMode;
use url::Url;

use super::{DateRange, Rebuild, ReprocessError, Target, check_closed, rebuild};
use crate::config::{Job, Output};
use crate::ingest::transform::{Dialect, WINDOW_END, WINDOW_START, view_sql};
use crate::table::delta::{open_or_create, register, stored_schema};
use crate::table::schema::conform;
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
            "verify {}: {} events from raw, reprocessed into {}",
            self.range,
            self.rebuild.events,
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
/// verify left there) and compares each target with its live output.
pub async fn verify(
    job: &Job,
    range: DateRange,
    targets: &[Target],
    scratch: &Path,
) -> Result<VerifyReport, ReprocessError> {
    check_closed(job, range, targets).await?;
    let (rows, rebuild) = rebuild(job, range, targets).await?;
    let mut diffs = Vec::new();
    for (target, rows) in targets.iter().zip(rows) {
        let output = job
            .outputs
            .iter()
            .find(|o| o.name() == target.name())
            .expect("targets are the job's outputs");
        let dir = scratch.join(&job.name).join(target.name());
        let _ = std::fs::remove_dir_all(&dir);
        let url = Url::from_directory_path(std::path::absolute(&dir).unwrap_or(dir.clone()))
            .expect("an absolute path");
        let table = open_or_create(url, &target.spec).await?;
        let stored = stored_schema(&table).map_err(|source| ReprocessError::Delta {
            step: "reading the schema",
            table: target.name().to_owned(),
            tier: "scratch",
            source: Box::new(source),
        })?;
        let table = table
            .write(vec![conform(vec![rows], &stored)?])
            .with_save_mode(SaveMode::Append)
            .with_partition_columns(target.spec.partition_columns.clone())
            .await
            .map_err(|source| ReprocessError::Delta {
                step: "writing the reprocessed rows",
                table: target.name().to_owned(),
                tier: "scratch",
                source: Box::new(source),
            })?;

        let ctx = SessionContext::new();
        register_tiers(&ctx, job, target.spec.id, "live_stored").await?;
        register(&ctx, "scratch_stored", &table).await?;
        let in_range = format!(
            "\"{age}\" >= {} AND \"{age}\" < {}",
            literal(range.start_us()),
            literal(range.end_us()),
            age = target.age
        );
        let final_rows = |source: &str| {
            format!(
                "SELECT * FROM ({}) AS v WHERE {in_range}",
                view_sql(output, &job.contract, source, Dialect::DataFusion)
            )
        };
        let live = ctx.sql(&final_rows("live_stored")).await?.collect().await?;
        let new = ctx
            .sql(&final_rows("scratch_stored"))
            .await?
            .collect()
            .await?;
        diffs.push(compare(
            target.name(),
            &key_columns(job, output),
            &live,
            &new,
        )?);
    }
    Ok(VerifyReport {
        range,
        scratch: scratch.to_owned(),
        rebuild,
        diffs,
    })
}

/// What identifies a row: a window and its keys; a query row's event ID (or,
/// without one, the whole row).
fn key_columns(job: &Job, output: &Output) -> Vec<String> {
    match output {
        Output::Window(w) => [WINDOW_START, WINDOW_END]
            .into_iter()
            .map(str::to_owned)
            .chain(w.keys.iter().map(|&k| job.contract.fields[k].name.clone()))
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

/// Rows keyed by their key columns' text, each with its value cells.
struct Keyed {
    names: Vec<String>,
    key_names: Vec<String>,
    rows: HashMap<Vec<String>, Vec<Vec<Cell>>>,
    count: usize,
}

fn keyed(batches: &[RecordBatch], keys: &[String]) -> Result<Keyed, ReprocessError> {
    let mut out = Keyed {
        names: Vec::new(),
        key_names: Vec::new(),
        rows: HashMap::new(),
        count: 0,
    };
    let options = FormatOptions::default().with_null("null");
    for batch in batches {
        let schema = batch.schema();
        let is_key: Vec<bool> = schema
            .fields()
            .iter()
            .map(|f| {
                keys.contains(f.name()) || !schema.fields().iter().any(|g| keys.contains(g.name()))
            })
            .collect();
        out.key_names = schema
            .fields()
            .iter()
            .zip(&is_key)
            .filter(|(_, k)| **k)
            .map(|(f, _)| f.name().clone())
            .collect();
        out.names = schema
            .fields()
            .iter()
            .zip(&is_key)
            .filter(|(_, k)| !**k)
            .map(|(f, _)| f.name().clone())
            .collect();
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            let mut key = Vec::new();
            let mut values = Vec::new();
            for (i, column) in batch.columns().iter().enumerate() {
                if is_key[i] {
                    key.push(formatters[i].value(row).to_string());
                } else if column.data_type() == &DataType::Float64 {
                    let floats = column.as_primitive::<Float64Type>();
                    values.push(Cell::Float(floats.is_valid(row).then(|| floats.value(row))));
                } else {
                    values.push(Cell::Text(formatters[i].value(row).to_string()));
                }
            }
            out.rows.entry(key).or_default().push(values);
            out.count += 1;
        }
    }
    Ok(out)
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

fn compare(
    output: &str,
    keys: &[String],
    live: &[RecordBatch],
    new: &[RecordBatch],
) -> Result<Diff, ReprocessError> {
    let live = keyed(live, keys)?;
    let new = keyed(new, keys)?;
    let names = if live.names.is_empty() {
        &new.names
    } else {
        &live.names
    };
    let key_names = if live.key_names.is_empty() {
        &new.key_names
    } else {
        &live.key_names
    };
    let show_key = |key: &[String]| labelled(key_names, key);
    let show_values = |values: &[Cell]| labelled(names, values);
    let mut diff = Diff {
        output: output.to_owned(),
        live: live.count,
        reprocessed: new.count,
        ..Diff::default()
    };
    let mut samples: [Vec<String>; 3] = Default::default();
    let mut sample = |kind: usize, text: &dyn Fn() -> String| {
        if samples[kind].len() < SAMPLES {
            samples[kind].push(text());
        }
    };
    let mut all_keys: Vec<&Vec<String>> = live.rows.keys().chain(new.rows.keys()).collect();
    all_keys.sort();
    all_keys.dedup();
    for key in all_keys {
        let empty = Vec::new();
        let (a, b) = (
            live.rows.get(key).unwrap_or(&empty),
            new.rows.get(key).unwrap_or(&empty),
        );
        for pair in a.iter().zip(b) {
            if !pair.0.iter().zip(pair.1).all(|(x, y)| x.same(y)) {
                diff.differing += 1;
                sample(2, &|| {
                    format!(
                        "differing: {}: live {} | reprocessed {}",
                        show_key(key),
                        show_values(pair.0),
                        show_values(pair.1)
                    )
                });
            }
        }
        for extra in a.iter().skip(b.len()) {
            diff.only_live += 1;
            sample(0, &|| {
                format!("only live: {} {}", show_key(key), show_values(extra))
            });
        }
        for extra in b.iter().skip(a.len()) {
            diff.only_reprocessed += 1;
            sample(1, &|| {
                format!("only reprocessed: {} {}", show_key(key), show_values(extra))
            });
        }
    }
    diff.samples = samples.into_iter().flatten().collect();
    Ok(diff)
}
