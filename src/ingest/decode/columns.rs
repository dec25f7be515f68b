//! The decoded columns of a micro-batch, built row by row from the values
//! [`super::shape`] read out of each message: no second parse of the JSON.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMicrosecondBuilder, new_empty_array, new_null_array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;

use crate::config::{Contract, FieldType};

/// One contract field's value in one message, already of its column's type.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value<'a> {
    /// The key is absent or its value is `null`.
    Null,
    Str(Cow<'a, str>),
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    /// Days since the epoch.
    Date(i32),
    /// Epoch milliseconds (a JSON number in a timestamp field means those),
    /// within what a microsecond column holds.
    TimestampMs(i64),
    /// Epoch microseconds (a Protobuf `Timestamp`), within the column's range.
    TimestampUs(i64),
    /// A structured column's value: one row of its stored type.
    Structured(ArrayRef),
}

/// A structured column's value as JSON (a JSON message's, or a Protobuf
/// message's in its JSON mapping), as one row of stored type `ty`: a field
/// the type lacks is skipped, one the value lacks is null, and a value its
/// type cannot hold as written is refused ([`fits`]) before arrow-json
/// reads it (which would truncate `1.9` in an integer).
pub(super) fn structured(value: &serde_json::Value, ty: &DataType) -> Result<ArrayRef, String> {
    /// The one-column row arrow-json reads the value from.
    #[derive(serde::Serialize)]
    struct Row<'v> {
        v: &'v serde_json::Value,
    }
    fits(value, ty, "")?;
    let schema = Arc::new(Schema::new(vec![Field::new("v", ty.clone(), true)]));
    let mut decoder = arrow::json::ReaderBuilder::new(schema)
        .with_batch_size(1)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decoder
        .serialize(&[Row { v: value }])
        .map_err(|e| e.to_string())?;
    match decoder.flush().map_err(|e| e.to_string())? {
        Some(batch) if batch.num_rows() == 1 => Ok(batch.column(0).clone()),
        _ => Err("not one value".into()),
    }
}

impl Value<'_> {
    /// The event time this value holds, in epoch milliseconds.
    pub(super) fn as_ms(&self) -> Option<i64> {
        match self {
            Self::TimestampMs(ms) => Some(*ms),
            Self::TimestampUs(us) => Some(us.div_euclid(1000)),
            _ => None,
        }
    }
}

/// Whether `value` (at `path` inside a structured value) is one that
/// `ty` holds exactly: the right kind, integers whole and in range, floats
/// finite, timestamps and dates that parse.
fn fits(value: &serde_json::Value, ty: &DataType, path: &str) -> Result<(), String> {
    use serde_json::Value as Json;
    let fits = match (value, ty) {
        (Json::Null, _) => true,
        (Json::Object(fields), DataType::Struct(types)) => {
            for field in types {
                if let Some(child) = fields.get(field.name()) {
                    fits(
                        child,
                        field.data_type(),
                        &format!("{path}.{}", field.name()),
                    )?;
                }
            }
            true
        }
        (Json::Array(items), DataType::List(item)) => {
            for (i, child) in items.iter().enumerate() {
                fits(child, item.data_type(), &format!("{path}[{i}]"))?;
            }
            true
        }
        (Json::String(_), DataType::Utf8) | (Json::Bool(_), DataType::Boolean) => true,
        (Json::Number(n), DataType::Int64) => n.as_i64().is_some(),
        (Json::Number(n), DataType::Float64) => n.as_f64().is_some_and(f64::is_finite),
        (Json::Number(n), DataType::Timestamp(..)) => n
            .as_i64()
            .is_some_and(|ms| ms.unsigned_abs() <= super::shape::MAX_TIMESTAMP_MS as u64),
        (Json::String(s), DataType::Timestamp(..)) => {
            arrow::compute::kernels::cast_utils::string_to_datetime(&chrono::Utc, s).is_ok()
        }
        (Json::String(s), DataType::Date32) => chrono::NaiveDate::from_str(s).is_ok(),
        _ => false,
    };
    match fits {
        true => Ok(()),
        false => Err(format!("{} is {value}, which {ty} cannot hold", at(path))),
    }
}

fn at(path: &str) -> String {
    match path {
        "" => "the value".to_owned(),
        path => format!("`{}`", path.trim_start_matches('.')),
    }
}

/// A column being built, of one [`FieldType`]'s stored type.
enum Builder {
    Str(StringBuilder),
    Bool(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Date(Date32Builder),
    TimestampUs(TimestampMicrosecondBuilder),
    /// A structured column: its rows, one array each, joined at the end.
    Structured(DataType, Vec<ArrayRef>),
}

impl Builder {
    fn new(ty: FieldType, rows: usize) -> Self {
        match ty {
            FieldType::String => Self::Str(StringBuilder::with_capacity(rows, rows * 16)),
            FieldType::Bool => Self::Bool(BooleanBuilder::with_capacity(rows)),
            FieldType::Int32 => Self::Int32(Int32Builder::with_capacity(rows)),
            FieldType::Int64 => Self::Int64(Int64Builder::with_capacity(rows)),
            FieldType::Float32 => Self::Float32(Float32Builder::with_capacity(rows)),
            FieldType::Float64 => Self::Float64(Float64Builder::with_capacity(rows)),
            FieldType::Date => Self::Date(Date32Builder::with_capacity(rows)),
            FieldType::Timestamp => Self::TimestampUs(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
        }
    }

    /// Appends `value`, which [`super::shape`] made of this column's type.
    fn append(&mut self, value: Value) {
        match (self, value) {
            (Self::Str(b), Value::Str(v)) => b.append_value(v),
            (Self::Bool(b), Value::Bool(v)) => b.append_value(v),
            (Self::Int32(b), Value::Int32(v)) => b.append_value(v),
            (Self::Int64(b), Value::Int64(v)) => b.append_value(v),
            (Self::Float32(b), Value::Float32(v)) => b.append_value(v),
            (Self::Float64(b), Value::Float64(v)) => b.append_value(v),
            (Self::Date(b), Value::Date(v)) => b.append_value(v),
            (Self::TimestampUs(b), Value::TimestampMs(v)) => b.append_value(v * 1000),
            (Self::TimestampUs(b), Value::TimestampUs(v)) => b.append_value(v),
            (Self::Structured(_, rows), Value::Structured(row)) => rows.push(row),
            (builder, Value::Null) => builder.append_null(),
            (_, value) => unreachable!("{value:?} read for a column of another type"),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Str(b) => b.append_null(),
            Self::Bool(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::TimestampUs(b) => b.append_null(),
            Self::Structured(ty, rows) => rows.push(new_null_array(ty, 1)),
        }
    }

    fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Self::Str(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::TimestampUs(b) => Arc::new(b.finish()),
            Self::Structured(ty, rows) => {
                let parts: Vec<&dyn Array> = rows.iter().map(|r| r.as_ref()).collect();
                let joined = match parts.is_empty() {
                    true => new_empty_array(ty),
                    false => arrow::compute::concat(&parts)?,
                };
                rows.clear();
                joined
            }
        })
    }
}

/// The contract's columns of the rows decoded so far.
pub(super) struct Columns {
    builders: Vec<Builder>,
}

impl Columns {
    /// Builders for the contract's fields, then its structured columns.
    pub(super) fn new(contract: &Contract, rows: usize) -> Self {
        let fields = contract.fields.iter().map(|f| f.ty);
        Self::of(fields, contract.structured.iter().map(|s| &s.ty), rows)
    }

    pub(super) fn of<'t>(
        fields: impl IntoIterator<Item = FieldType>,
        structured: impl IntoIterator<Item = &'t DataType>,
        rows: usize,
    ) -> Self {
        let fields = fields.into_iter().map(|ty| Builder::new(ty, rows));
        let structured = structured
            .into_iter()
            .map(|ty| Builder::Structured(ty.clone(), Vec::with_capacity(rows)));
        Self {
            builders: fields.chain(structured).collect(),
        }
    }

    /// Appends one message's values, one per contract field in order.
    pub(super) fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.builders.len());
        for (builder, value) in self.builders.iter_mut().zip(row) {
            builder.append(value);
        }
    }

    /// The contract's columns, in its order and of its stored types.
    pub(super) fn finish(mut self) -> Result<Vec<ArrayRef>, ArrowError> {
        self.builders.iter_mut().map(Builder::finish).collect()
    }
}
