//! The expectation stage: the job's data-quality rules held against every
//! event the contract accepted, before dedup and the watermark.
//!
//! Before dedup, so that an event a `drop` rule refuses is never accepted:
//! a re-sent copy is refused again (another DLQ row, as for a malformed
//! message), whether or not the process restarted in between. Dedup's
//! index is restored from `raw` and `late` only, so remembering refused IDs
//! in the running process would make that depend on when it last started.
//! A `warn` breach is counted only for the events dedup then lets through
//! ([`Judged::counted`]): a re-sent copy is not a second breach.
//!
//! Each rule is a SQL predicate over `raw`'s columns, planned once when the
//! job starts (a rule that does not plan, or is not a condition, stops the
//! job with exit 2 naming it) and then evaluated as a vectorized expression
//! over each micro-batch. What a breach does is the rule's `on_fail`:
//!
//! - `warn`: the event lands; the breach is a row of [`Breaches`].
//! - `drop`: the event goes to the DLQ with the rule's name in the reason;
//!   the breach is a row of [`Breaches`] too.
//! - `fail`: the batch is refused whole, naming the first breaking event.
//!
//! Breaches are per event (its partition and offset), so the `quality`
//! table's rows can be made from the ones it does not hold yet after a
//! replay, as every other table's are: counts stay exact across crashes.

use std::sync::Arc;

use std::collections::{BTreeMap, HashSet};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    UInt32Array,
};
use arrow::compute;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use arrow::error::ArrowError;
use datafusion::common::DFSchema;
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use crate::config::{Expectation, Job, JobError, OnFail, SourcePartition, Topics};
use crate::ingest::decode::{OFFSET, PARTITION, TOPIC, positions, raw_schema};
use crate::ingest::quality::QualityRow;

/// A rule, planned.
struct Rule {
    spec: Expectation,
    predicate: Arc<dyn PhysicalExpr>,
}

impl Rule {
    /// The rows of `events` for which the rule is false (NULL holds).
    fn broken(&self, events: &RecordBatch) -> Result<Vec<usize>, ExpectError> {
        let evaluated = self
            .predicate
            .evaluate(events)
            .and_then(|v| v.into_array(events.num_rows()))
            .map_err(|source| ExpectError::Evaluate {
                rule: self.spec.name.clone(),
                source,
            })?;
        let holds = evaluated.as_boolean();
        Ok((0..holds.len())
            .filter(|&row| holds.is_valid(row) && !holds.value(row))
            .collect())
    }
}

/// The job's expectations, ready to judge micro-batches.
pub struct Expectations {
    rules: Vec<Rule>,
    topics: Topics,
}

/// Why a batch could not be judged.
#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    #[error(
        "expectation `{rule}` (on_fail = \"fail\") does not hold for the event at partition \
         {partition}, offset {offset}: {text}"
    )]
    Failed {
        rule: String,
        text: String,
        /// As [`Topics::label`] names it.
        partition: String,
        offset: i64,
    },
    #[error("evaluating expectation `{rule}`: {source}")]
    Evaluate {
        rule: String,
        source: DataFusionError,
    },
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// What the rules made of a micro-batch's events.
#[derive(Debug)]
pub struct Judged {
    topics: Topics,
    /// The events that go on: all but those a `drop` rule refused.
    pub kept: RecordBatch,
    /// The events a `drop` rule refused: (partition, offset, reason).
    pub dropped: Vec<(SourcePartition, i64, String)>,
    /// Each breach of a `warn` or `drop` rule.
    breaches: Breaches,
}

impl Judged {
    /// The breaches to count once dedup kept `accepted` of [`Self::kept`]:
    /// every one of a refused event (each is a DLQ row), and of the others
    /// only those of events dedup let through.
    pub fn counted(&self, accepted: &RecordBatch) -> Result<Breaches, ArrowError> {
        let rows = &self.breaches.0;
        if rows.num_rows() == 0 {
            return Ok(self.breaches.clone());
        }
        let counted: HashSet<(SourcePartition, i64)> = positions(accepted, &self.topics)?
            .into_iter()
            .chain(self.dropped.iter().map(|(p, o, _)| (*p, *o)))
            .collect();
        let keep: BooleanArray = positions(rows, &self.topics)?
            .into_iter()
            .map(|position| Some(counted.contains(&position)))
            .collect();
        Ok(Breaches(compute::filter_record_batch(rows, &keep)?))
    }
}

/// One row per event and rule it broke: `_partition`, `_offset`, `_topic`
/// and the rule's index, in the replay filter's terms.
#[derive(Debug, Clone)]
pub struct Breaches(pub RecordBatch);

/// The breaches' rule column.
const RULE: &str = "rule";

impl Breaches {
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(PARTITION, DataType::Int32, false),
            Field::new(OFFSET, DataType::Int64, false),
            Field::new(TOPIC, DataType::Utf8, false),
            Field::new(RULE, DataType::UInt32, false),
        ]))
    }

    pub fn empty() -> Self {
        Self(RecordBatch::new_empty(Self::schema()))
    }

    fn new(rows: Vec<(SourcePartition, i64, u32)>, topics: &Topics) -> Result<Self, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.0.partition),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| topics.name(r.0.topic)),
            )),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.2))),
        ];
        Ok(Self(RecordBatch::try_new(Self::schema(), columns)?))
    }
}

impl Expectations {
    /// Plans the job's rules over `raw`'s columns.
    pub fn new(job: &Job) -> Result<Self, JobError> {
        let schema = raw_schema(&job.contract);
        let df_schema = DFSchema::try_from(schema.as_ref().clone())
            .expect("raw's schema has unique column names");
        let ctx = SessionContext::new();
        let rules = job
            .expectations
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let refused = |why: String| JobError::Invalid {
                    file: job.file.clone(),
                    key: format!("expectations[{i}].rule"),
                    expected: "a SQL condition over the event's fields".into(),
                    found: format!("`{}` ({why})", spec.rule),
                };
                let expr = ctx
                    .parse_sql_expr(&spec.rule, &df_schema)
                    .map_err(|e| refused(e.to_string()))?;
                let predicate = ctx
                    .create_physical_expr(expr, &df_schema)
                    .map_err(|e| refused(e.to_string()))?;
                match predicate.data_type(&schema) {
                    Ok(DataType::Boolean) => Ok(Rule {
                        spec: spec.clone(),
                        predicate,
                    }),
                    Ok(other) => Err(refused(format!("it is {other}, not true or false"))),
                    Err(e) => Err(refused(e.to_string())),
                }
            })
            .collect::<Result<_, _>>()?;
        let topics = job.source.topics.clone();
        Ok(Self { rules, topics })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Holds `events` (rows of `raw`) to every rule.
    pub fn apply(&self, events: RecordBatch) -> Result<Judged, ExpectError> {
        if self.rules.is_empty() || events.num_rows() == 0 {
            return Ok(Judged {
                topics: self.topics.clone(),
                kept: events,
                dropped: Vec::new(),
                breaches: Breaches::empty(),
            });
        }
        let positions = positions(&events, &self.topics)?;
        let position = |row: usize| positions[row];
        let mut dropped: Vec<Option<String>> = vec![None; events.num_rows()];
        let mut breaches = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let broken = rule.broken(&events)?;
            for row in broken {
                let (partition, offset) = position(row);
                match rule.spec.on_fail {
                    OnFail::Fail => {
                        return Err(ExpectError::Failed {
                            rule: rule.spec.name.clone(),
                            text: rule.spec.rule.clone(),
                            partition: self.topics.label(partition),
                            offset,
                        });
                    }
                    OnFail::Drop if dropped[row].is_none() => {
                        dropped[row] = Some(format!(
                            "expectation `{}` failed: {}",
                            rule.spec.name, rule.spec.rule
                        ));
                    }
                    OnFail::Drop | OnFail::Warn => {}
                }
                breaches.push((partition, offset, index as u32));
            }
        }
        let keep: BooleanArray = dropped.iter().map(|d| Some(d.is_none())).collect();
        let kept = match keep.false_count() {
            0 => events,
            _ => compute::filter_record_batch(&events, &keep)?,
        };
        let dropped = dropped
            .into_iter()
            .enumerate()
            .filter_map(|(row, reason)| {
                let (partition, offset) = position(row);
                reason.map(|r| (partition, offset, r))
            })
            .collect();
        Ok(Judged {
            topics: self.topics.clone(),
            kept,
            dropped,
            breaches: Breaches::new(breaches, &self.topics)?,
        })
    }

    /// The `quality` table's rows for `breaches` (those the table does not
    /// hold yet), judged at `now_us`: one per rule and partition.
    pub fn quality_rows(&self, breaches: &Breaches, now_us: i64) -> Vec<QualityRow> {
        let rows = &breaches.0;
        let positions = positions(rows, &self.topics).expect("breaches have their positions");
        let rules = rows
            .column_by_name(RULE)
            .expect("breaches name their rule")
            .as_primitive::<UInt32Type>();
        // (rule, partition) → (count, first offset), in a stable order.
        let mut groups = BTreeMap::<(u32, SourcePartition), (i64, i64)>::new();
        for (row, (partition, offset)) in positions.into_iter().enumerate() {
            let group = groups
                .entry((rules.value(row), partition))
                .or_insert((0, i64::MAX));
            group.0 += 1;
            group.1 = group.1.min(offset);
        }
        groups
            .into_iter()
            .map(|((rule, partition), (count, offset))| {
                let spec = &self.rules[rule as usize].spec;
                QualityRow {
                    time_us: now_us,
                    rule: spec.name.clone(),
                    action: spec.on_fail.name(),
                    observed: count as f64,
                    expected: spec.rule.clone(),
                    partition: partition.partition,
                    offset,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixture::Spec;
    use crate::ingest::decode::accepted;
    use crate::ingest::source::Message;
    use chrono::Utc;

    fn job(expectations: &str) -> Job {
        Spec {
            fields: &[
                r#"{ name = "price", type = "float64" }"#,
                r#"{ name = "country", type = "string" }"#,
            ],
            rest: expectations,
            ..Spec::default()
        }
        .job()
    }

    /// Events with these (price, country), at offsets 0.. of partition 3.
    fn events(job: &Job, rows: &[(&str, &str)]) -> RecordBatch {
        let ts = Utc::now().timestamp_millis();
        let messages = rows
            .iter()
            .enumerate()
            .map(|(i, (price, country))| Message {
                partition: SourcePartition::first(3),
                offset: i as i64,
                payload: Some(
                    format!(r#"{{"id":"e{i}","ts":{ts},"price":{price},"country":{country}}}"#)
                        .into(),
                ),
                ..Message::default()
            })
            .collect();
        accepted(&job.contract, messages, Utc::now())
    }

    const RULES: &str = r#"
[[expectations]]
name = "cheap"
rule = "price < 100"
[[expectations]]
name = "no_pl"
rule = "country <> 'PL'"
on_fail = "drop"
"#;

    /// [`RULES`] judged over five events at offsets 0–4: cheap and German,
    /// dear and Polish, unpriced and Polish, dear and French, and `last`
    /// (a price) of no country.
    fn judged(last: &str) -> (Expectations, Judged) {
        let job = job(RULES);
        let expectations = Expectations::new(&job).unwrap();
        let rows = [
            ("5", r#""DE""#),
            ("500", r#""PL""#),
            ("null", r#""PL""#),
            ("700", r#""FR""#),
            (last, "null"),
        ];
        let judged = expectations.apply(events(&job, &rows)).unwrap();
        (expectations, judged)
    }

    #[test]
    fn warn_counts_drop_refuses_and_null_holds() {
        let (expectations, judged) = judged("1");
        let offsets = judged.kept.column_by_name(OFFSET).unwrap();
        assert_eq!(
            offsets
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values(),
            &[0, 3, 4]
        );
        let reason = "expectation `no_pl` failed: country <> 'PL'".to_owned();
        let p3 = SourcePartition::first(3);
        assert_eq!(
            judged.dropped,
            vec![(p3, 1, reason.clone()), (p3, 2, reason)]
        );
        let got: Vec<_> = expectations
            .quality_rows(&judged.breaches, 7)
            .into_iter()
            .map(|r| (r.rule, r.action, r.observed, r.offset))
            .collect();
        let row = |rule: &str, action, observed| (rule.to_owned(), action, observed, 1);
        assert_eq!(
            got,
            vec![row("cheap", "warn", 2.0), row("no_pl", "drop", 2.0)]
        );
    }

    /// Dedup then lets through only the events at offsets 0 and 4: the warn
    /// breach at offset 3 (a re-sent copy) is not counted, the refused
    /// events' breaches all are.
    #[test]
    fn breaches_count_refused_events_and_the_ones_dedup_let_through() {
        let (expectations, judged) = judged("900");
        let keep = BooleanArray::from(vec![true, false, true]);
        let accepted = compute::filter_record_batch(&judged.kept, &keep).unwrap();
        let counted = judged.counted(&accepted).unwrap();
        let got: Vec<_> = expectations
            .quality_rows(&counted, 7)
            .into_iter()
            .map(|r| (r.rule, r.observed, r.offset))
            .collect();
        let row = |rule: &str, observed, offset| (rule.to_owned(), observed, offset);
        assert_eq!(got, vec![row("cheap", 2.0, 1), row("no_pl", 2.0, 1)]);
    }

    #[test]
    fn fail_names_the_first_breaking_event() {
        let job =
            job("[[expectations]]\nname = \"cheap\"\nrule = \"price < 100\"\non_fail = \"fail\"\n");
        let expectations = Expectations::new(&job).unwrap();
        let err = expectations
            .apply(events(
                &job,
                &[("5", "null"), ("150", "null"), ("200", "null")],
            ))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "expectation `cheap` (on_fail = \"fail\") does not hold for the event at \
             partition 3, offset 1: price < 100"
        );
    }

    #[test]
    fn a_rule_that_is_not_a_condition_over_the_fields_is_refused_naming_it() {
        for (rule, why) in [
            ("price +", "SQL"),
            ("nope > 1", "nope"),
            ("price * 2", "Float64, not true or false"),
        ] {
            let job = job(&format!(
                "[[expectations]]\nname = \"a\"\nrule = \"price > 0\"\n\
                 [[expectations]]\nname = \"b\"\nrule = \"{rule}\"\n"
            ));
            let err = Expectations::new(&job).err().unwrap().to_string();
            assert!(
                err.contains("expectations[1].rule") && err.contains(why),
                "{rule}: {err}"
            );
        }
    }
}
