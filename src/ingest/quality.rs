//! The `quality` table, which the two data-quality stages write: breaches
//! of expectations ([`crate::ingest::expect`]) and of monitors
//! ([`crate::ingest::monitor`]). One schema, so a dashboard or an alert
//! reads both with one query.

use std::sync::Arc;

use arrow::array::TimestampMicrosecondArray;
use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;

use crate::ingest::decode::{INGEST_TS, OFFSET, PARTITION, utc_micros};

/// The `quality` table's columns: when, which rule or monitor, what it did
/// (`warn`, `drop`, `monitor`), what was observed (events that broke a
/// rule; a monitor's figure), what was expected, and for an expectation's
/// rows the partition and first offset of its events (what lets a replay
/// tell which rows the table already holds; −1 for a monitor's).
pub fn quality_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(INGEST_TS, utc_micros(), false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("observed", DataType::Float64, false),
        Field::new("expected", DataType::Utf8, false),
        Field::new(PARTITION, DataType::Int32, false),
        Field::new(OFFSET, DataType::Int64, false),
    ]))
}

/// One row of the `quality` table.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityRow {
    pub time_us: i64,
    pub rule: String,
    pub action: &'static str,
    pub observed: f64,
    pub expected: String,
    pub partition: i32,
    pub offset: i64,
}

/// `rows` as a batch of the `quality` table.
pub fn quality_batch(rows: &[QualityRow]) -> Result<RecordBatch, ArrowError> {
    let text =
        |f: fn(&QualityRow) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(f)));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.time_us))
                .with_timezone("UTC"),
        ),
        text(|r| &r.rule),
        text(|r| r.action),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.observed),
        )),
        text(|r| &r.expected),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.partition),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
    ];
    RecordBatch::try_new(quality_schema(), columns)
}
