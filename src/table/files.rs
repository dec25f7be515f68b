//! Rows handed to a table's data-file writer, without the copy delta-rs
//! makes of rows that are all of one partition.
//!
//! delta-rs's `RecordBatchWriter::write` groups a partitioned table's rows by
//! their partition values and copies every column of every group (`take`),
//! also when there is one group, the whole batch. An ingest trigger's rows
//! are nearly always of one event date and a merged file's row groups always
//! are: for `raw` that was a copy of every value and payload in the trigger's
//! serial part (benches/README.md, "Rows of one partition"). Rows that share
//! their partition values go to `write_partition` as they are; others, and
//! unpartitioned tables, to `write`, which splits them as before.

use arrow::array::{Array, RecordBatch};
use arrow::compute::kernels::cmp::not_distinct;
use arrow::datatypes::SchemaRef;
use delta_kernel::expressions::Scalar;
use deltalake::DeltaTableError;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use indexmap::IndexMap;

use super::schema::conform;

/// Writes `rows`, conformed to the table's `stored` schema (which has the
/// `partition_columns`), to `writer`'s files.
pub async fn write_rows(
    writer: &mut RecordBatchWriter,
    rows: RecordBatch,
    stored: &SchemaRef,
    partition_columns: &[String],
) -> Result<(), DeltaTableError> {
    let rows = conform(vec![rows], stored)?;
    match shared_partition(&rows, partition_columns)? {
        Some(values) => writer
            .write_partition(rows, &values, WriteMode::Default)
            .await
            .map(drop),
        None => writer.write(rows).await,
    }
}

/// The partition values every row of `rows` has, `None` when rows differ or
/// the table is not partitioned (a null is one value, as in delta-rs's split).
fn shared_partition(
    rows: &RecordBatch,
    partition_columns: &[String],
) -> Result<Option<IndexMap<String, Scalar>>, DeltaTableError> {
    if partition_columns.is_empty() || rows.num_rows() == 0 {
        return Ok(None);
    }
    let mut values = IndexMap::with_capacity(partition_columns.len());
    for name in partition_columns {
        let column = rows.column_by_name(name).ok_or_else(|| {
            DeltaTableError::generic(format!("partition column `{name}` missing from the rows"))
        })?;
        let first = arrow::array::Scalar::new(column.slice(0, 1));
        if not_distinct(column, &first)?.true_count() != column.len() {
            return Ok(None);
        }
        let Some(value) = Scalar::from_array(column.as_ref(), 0) else {
            return Ok(None);
        };
        values.insert(name.clone(), value);
    }
    Ok(Some(values))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn rows(dates: Vec<Option<i32>>) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("event_date", DataType::Date32, true),
        ]);
        let n = Int64Array::from_iter_values(0..dates.len() as i64);
        let columns: Vec<Arc<dyn Array>> = vec![Arc::new(n), Arc::new(Date32Array::from(dates))];
        RecordBatch::try_new(Arc::new(schema), columns).unwrap()
    }

    fn by_date() -> Vec<String> {
        vec!["event_date".to_owned()]
    }

    #[test]
    fn rows_of_one_date_share_its_value() {
        let values = shared_partition(&rows(vec![Some(20_000); 3]), &by_date()).unwrap();
        let values = values.expect("one date");
        assert_eq!(values.len(), 1);
        assert_eq!(values["event_date"], Scalar::Date(20_000));
    }

    #[test]
    fn rows_of_two_dates_or_a_date_and_null_go_to_the_split() {
        for dates in [
            vec![Some(20_000), Some(20_001)],
            vec![Some(20_000), None],
            vec![None, Some(20_000)],
        ] {
            assert!(
                shared_partition(&rows(dates), &by_date())
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn all_null_is_one_partition_and_unpartitioned_tables_are_left_to_delta_rs() {
        let values = shared_partition(&rows(vec![None, None]), &by_date()).unwrap();
        let date = delta_kernel::schema::DataType::DATE;
        assert_eq!(values.unwrap()["event_date"], Scalar::Null(date));
        assert!(
            shared_partition(&rows(vec![Some(1)]), &[])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_missing_partition_column_is_named() {
        let error = shared_partition(&rows(vec![Some(1)]), &["day".to_owned()]).unwrap_err();
        assert!(error.to_string().contains("`day`"), "{error}");
    }
}
