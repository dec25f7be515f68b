//! The replay filter: after a restart the source re-reads from the lowest
//! offset any table still needs, and each table must drop the rows it already
//! holds. A table's Delta txn versions say exactly which those are.

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute;
use arrow::error::ArrowError;

use crate::config::{Offsets, SourcePartition, Topics};
use crate::ingest::decode::positions;

/// The rows of `rows` this table does not hold yet: those at or after its txn
/// version for their partition (`topics` says which partition a row is of).
pub fn filter_replayed(
    rows: &RecordBatch,
    versions: &Offsets,
    topics: &Topics,
) -> Result<RecordBatch, ArrowError> {
    if versions.is_empty() || rows.num_rows() == 0 {
        return Ok(rows.clone());
    }
    let keep: BooleanArray = positions(rows, topics)?
        .into_iter()
        .map(|(p, o)| Some(versions.get(&p).is_none_or(|v| o >= *v)))
        .collect();
    if keep.true_count() == rows.num_rows() {
        return Ok(rows.clone());
    }
    compute::filter_record_batch(rows, &keep)
}

/// Whether rows whose offsets are at least `lowest` (per partition; every
/// row's partition is in it) may include some that a table holding `held`
/// already has. A trigger's rows start at its batch's first offsets, which
/// are nearly always at or past what every table holds: then no row's
/// position needs a look.
pub fn may_replay(held: &Offsets, lowest: &Offsets) -> bool {
    lowest
        .iter()
        .any(|(p, first)| held.get(p).is_some_and(|h| first < h))
}

/// Whether a batch whose offsets start at `lowest` may be judged and staged
/// before the trigger ahead of it, which ends at `next`, has committed.
///
/// That commit changes, for each partition of it, only what the tables hold
/// below `next`: rows there, and each table's held offset raised to `next`
/// at most. A row at or past `next` is a replay for a table before that
/// commit exactly when it is after it, and the rows raw holds that could
/// settle its fate are not among those the commit adds. So a batch whose
/// every row is at or past `next` reads the same from the tables either way
/// (the replay filters, the settled fates), and only a batch that re-reads
/// offsets of the trigger ahead of it must wait for its commit.
pub fn may_stage_ahead(next: &Offsets, lowest: &Offsets) -> bool {
    !may_replay(next, lowest)
}

/// The rows of `rows` not of `partitions`: what is left of a batch when
/// those partitions moved to another process, which holds (or will hold)
/// every offset of them.
pub fn without_partitions(
    rows: &RecordBatch,
    partitions: &[SourcePartition],
    topics: &Topics,
) -> Result<RecordBatch, ArrowError> {
    let held_elsewhere = partitions.iter().map(|&p| (p, i64::MAX)).collect();
    filter_replayed(rows, &held_elsewhere, topics)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema};

    use super::*;
    use crate::ingest::decode::{OFFSET, PARTITION, TOPIC};

    fn rows(topics: &[&str], parts: &[i32], offs: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(PARTITION, DataType::Int32, false),
            Field::new(OFFSET, DataType::Int64, false),
            Field::new(TOPIC, DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(parts.to_vec())),
                Arc::new(Int64Array::from(offs.to_vec())),
                Arc::new(StringArray::from(topics.to_vec())),
            ],
        )
        .unwrap()
    }

    fn kept(batch: &RecordBatch) -> Vec<(i32, i64)> {
        let parts = batch.column(0).as_primitive::<Int32Type>();
        let offsets = batch.column(1).as_primitive::<Int64Type>();
        parts
            .values()
            .iter()
            .copied()
            .zip(offsets.values().iter().copied())
            .collect()
    }

    #[test]
    fn replayed_rows_are_dropped_per_partition() {
        let p = SourcePartition::first;
        let batch = rows(&["t"; 5], &[0, 0, 1, 1, 2], &[5, 6, 5, 6, 0]);
        let versions = BTreeMap::from([(p(0), 6), (p(1), 100)]);
        let topics = Topics::single("t");
        let kept_rows = filter_replayed(&batch, &versions, &topics).unwrap();
        assert_eq!(kept(&kept_rows), vec![(0, 6), (2, 0)]);
    }

    #[test]
    fn partitions_of_two_topics_are_told_apart() {
        let topics = Topics::new(vec!["a".into(), "b".into()]).unwrap();
        let batch = rows(&["a", "a", "b", "b"], &[0, 0, 0, 0], &[5, 6, 5, 6]);
        let versions = BTreeMap::from([(topics.partition("b", 0).unwrap(), 6)]);
        let kept_rows = filter_replayed(&batch, &versions, &topics).unwrap();
        assert_eq!(kept(&kept_rows), vec![(0, 5), (0, 6), (0, 6)]);
        let moved = [topics.partition("a", 0).unwrap()];
        let left = without_partitions(&batch, &moved, &topics).unwrap();
        assert_eq!(left.column(2).as_string::<i32>().value(0), "b");
        assert_eq!(left.num_rows(), 2);
    }

    #[test]
    fn rows_from_where_every_table_is_or_past_it_are_not_replays() {
        let p = SourcePartition::first;
        let held = BTreeMap::from([(p(0), 6), (p(1), 100)]);
        let lowest = |firsts: &[(i32, i64)]| firsts.iter().map(|&(q, o)| (p(q), o)).collect();
        assert!(!may_replay(&held, &lowest(&[(0, 6), (1, 100)])));
        assert!(!may_replay(&held, &lowest(&[(0, 7), (2, 0)])));
        assert!(may_replay(&held, &lowest(&[(0, 6), (1, 99)])));
        assert!(may_replay(&held, &lowest(&[(0, 5)])));
        assert!(!may_replay(&BTreeMap::new(), &lowest(&[(0, 0)])));
    }

    #[test]
    fn a_batch_is_staged_ahead_only_past_what_the_trigger_before_commits() {
        let p = SourcePartition::first;
        let offsets = |o: &[(i32, i64)]| -> Offsets { o.iter().map(|&(q, v)| (p(q), v)).collect() };
        let next = offsets(&[(0, 20), (1, 10)]);
        // It continues where the trigger before ends, or on another partition.
        assert!(may_stage_ahead(&next, &offsets(&[(0, 20), (1, 10)])));
        assert!(may_stage_ahead(&next, &offsets(&[(0, 25), (2, 0)])));
        // It re-reads what the trigger before is committing.
        assert!(!may_stage_ahead(&next, &offsets(&[(0, 15)])));
        assert!(!may_stage_ahead(&next, &offsets(&[(0, 20), (1, 9)])));
    }

    #[test]
    fn nothing_known_keeps_everything() {
        let batch = rows(&["t", "t"], &[0, 1], &[1, 2]);
        let topics = Topics::single("t");
        let all = filter_replayed(&batch, &BTreeMap::new(), &topics).unwrap();
        assert_eq!(all.num_rows(), 2);
        assert!(all.column(0).is_valid(1));
    }
}
