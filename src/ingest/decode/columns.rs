//! The decoded columns of a micro-batch, built row by row from the values
//! [`super::shape`] read out of each message: no second parse of the JSON.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};

use crate::config::FieldType;

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
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Str(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::TimestampUs(b) => Arc::new(b.finish()),
        }
    }
}

/// The contract's columns of the rows decoded so far.
pub(super) struct Columns {
    builders: Vec<Builder>,
}

impl Columns {
    pub(super) fn new(types: impl IntoIterator<Item = FieldType>, rows: usize) -> Self {
        Self {
            builders: types.into_iter().map(|ty| Builder::new(ty, rows)).collect(),
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
    pub(super) fn finish(mut self) -> Vec<ArrayRef> {
        self.builders.iter_mut().map(Builder::finish).collect()
    }
}
