//! The replay filter: after a restart the source re-reads from the lowest
//! offset any table still needs, and each table must drop the rows it already
//! holds. A table's Delta txn versions say exactly which those are.

use std::collections::BTreeMap;

use arrow::array::{Array, BooleanArray, Int32Array, Int64Array, RecordBatch};
use arrow::compute;
use arrow::error::ArrowError;

use crate::ingest::decode::{OFFSET, PARTITION};

/// The rows of `rows` this table does not hold yet: those at or after its txn
/// version for their partition.
pub fn filter_replayed(
    rows: &RecordBatch,
    versions: &BTreeMap<i32, i64>,
) -> Result<RecordBatch, ArrowError> {
    if versions.is_empty() || rows.num_rows() == 0 {
        return Ok(rows.clone());
    }
    let column = |name: &str| {
        rows.column_by_name(name)
            .ok_or_else(|| ArrowError::SchemaError(format!("missing column {name}")))
    };
    let partitions = column(PARTITION)?;
    let partitions = partitions
        .as_any()
        .downcast_ref::<Int32Array>()
        .ok_or_else(|| ArrowError::SchemaError(format!("{PARTITION} is not int32")))?;
    let offsets = column(OFFSET)?;
    let offsets = offsets
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| ArrowError::SchemaError(format!("{OFFSET} is not int64")))?;
    let keep: BooleanArray = partitions
        .values()
        .iter()
        .zip(offsets.values().iter())
        .map(|(p, o)| Some(versions.get(p).is_none_or(|v| o >= v)))
        .collect();
    if keep.true_count() == rows.num_rows() {
        return Ok(rows.clone());
    }
    compute::filter_record_batch(rows, &keep)
}

/// The rows of `rows` not of `partitions`: what is left of a batch when
/// those partitions moved to another process, which holds (or will hold)
/// every offset of them.
pub fn without_partitions(
    rows: &RecordBatch,
    partitions: &[i32],
) -> Result<RecordBatch, ArrowError> {
    let held_elsewhere = partitions.iter().map(|&p| (p, i64::MAX)).collect();
    filter_replayed(rows, &held_elsewhere)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn rows(parts: &[i32], offs: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(PARTITION, DataType::Int32, false),
            Field::new(OFFSET, DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(parts.to_vec())),
                Arc::new(Int64Array::from(offs.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn replayed_rows_are_dropped_per_partition() {
        let batch = rows(&[0, 0, 1, 1, 2], &[5, 6, 5, 6, 0]);
        let versions = BTreeMap::from([(0, 6), (1, 100)]);
        let kept = filter_replayed(&batch, &versions).unwrap();
        let offsets = kept
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let parts = kept
            .column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        assert_eq!(parts.values().to_vec(), vec![0, 2]);
        assert_eq!(offsets.values().to_vec(), vec![6, 0]);
    }

    #[test]
    fn nothing_known_keeps_everything() {
        let batch = rows(&[0, 1], &[1, 2]);
        assert_eq!(
            filter_replayed(&batch, &BTreeMap::new())
                .unwrap()
                .num_rows(),
            2
        );
    }
}
