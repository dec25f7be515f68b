//! Event-ID deduplication.
//!
//! An event is a duplicate when its ID was already accepted, within the dedup
//! horizon, from a *different* Kafka position. Seeing the same ID again from the
//! same (partition, offset) is a replay after a restart: it is kept here, and the
//! sink's txn filter decides per table whether the row is already stored. That
//! split is what keeps dedup deterministic across crashes: the index is rebuilt
//! from `raw`, which records each accepted event's position.
//!
//! IDs are kept as 128-bit hashes (a collision would take ~2^64 IDs), bucketed by
//! event time so memory is bounded by the horizon: buckets older than
//! `watermark − horizon` are dropped whole. They are looked up in [`id_map`]'s
//! table, which, unlike std's map, keeps its size while IDs turn over.

mod id_list;
mod id_map;

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute;
use arrow::datatypes::{DataType, Int64Type, TimestampMicrosecondType};
use arrow::error::ArrowError;
use xxhash_rust::xxh3::xxh3_128;

use crate::config::{Contract, Job, SourcePartition, Topics};
use crate::ingest::decode::{EVENT_DATE, OFFSET, PARTITION, partition_columns, positions};
use crate::table::{RestoreError, TableError, TableId, Tables};
use id_list::IdList;
use id_map::{AHEAD, IdMap};

/// Where an accepted event was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub partition: SourcePartition,
    pub offset: i64,
}

/// One event as dedup sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub id_hash: u128,
    /// Event time, epoch milliseconds.
    pub time_ms: i64,
    pub origin: Origin,
}

/// The accepted IDs of the last `horizon` of event time.
#[derive(Debug)]
pub struct DedupIndex {
    horizon_ms: i64,
    bucket_ms: i64,
    seen: IdMap,
    /// The IDs accepted per slice of event time, to evict a slice at once.
    buckets: BTreeMap<i64, IdList>,
}

/// Buckets per horizon: eviction granularity is horizon / 64.
const BUCKETS_PER_HORIZON: i64 = 64;

impl DedupIndex {
    pub fn new(horizon: Duration) -> Self {
        let horizon_ms = horizon.as_millis().max(1) as i64;
        Self {
            horizon_ms,
            bucket_ms: (horizon_ms / BUCKETS_PER_HORIZON).max(1),
            seen: IdMap::default(),
            buckets: BTreeMap::new(),
        }
    }

    /// Decides, in order, which candidates to keep, and remembers the kept ones.
    /// Returns the keep mask (false = duplicate).
    pub fn apply(&mut self, candidates: &[Candidate]) -> BooleanArray {
        candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if let Some(next) = candidates.get(i + AHEAD) {
                    self.seen.prefetch(next.id_hash);
                }
                Some(self.accept(c))
            })
            .collect()
    }

    fn accept(&mut self, c: &Candidate) -> bool {
        match self.seen.remember(c.id_hash, c.origin) {
            Some(origin) => origin == c.origin,
            None => {
                let bucket = c.time_ms.div_euclid(self.bucket_ms) * self.bucket_ms;
                self.buckets.entry(bucket).or_default().push(c.id_hash);
                true
            }
        }
    }

    /// Forgets IDs whose event time is older than `watermark_ms − horizon`.
    pub fn evict(&mut self, watermark_ms: i64) {
        let cutoff = watermark_ms.saturating_sub(self.horizon_ms);
        while let Some(entry) = self.buckets.first_entry() {
            if entry.key() + self.bucket_ms > cutoff {
                break;
            }
            for ids in entry.remove().chunks() {
                for (i, &id) in ids.iter().enumerate() {
                    if let Some(&next) = ids.get(i + AHEAD) {
                        self.seen.prefetch(next);
                    }
                    self.seen.remove(id);
                }
            }
        }
        self.seen.shrink();
    }

    /// IDs remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.len() == 0
    }

    /// Memory held: the table's and the buckets' allocations (not the
    /// bucket tree's few nodes).
    pub fn bytes(&self) -> usize {
        let listed: usize = self.buckets.values().map(IdList::bytes).sum();
        self.seen.bytes() + listed
    }
}

/// Which accepted events an index is seeded with: those of `tables` with
/// event times in `[since_us, until_us)` (unbounded where `None`), of
/// `partitions` only when given.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seed<'a> {
    /// `raw` and `late` for the live loop (an ID accepted late is still
    /// accepted); `raw` alone to rebuild outputs, which never saw late events.
    pub tables: &'a [TableId],
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub partitions: Option<&'a [SourcePartition]>,
}

/// The dedup stage: drops re-sent events from batches in the `raw` schema.
/// The caller evicts by the job's watermark ([`Dedup::evict`]).
#[derive(Debug)]
pub struct Dedup {
    index: DedupIndex,
    id_column: String,
    time_column: String,
    /// Which partition a row is of: an origin is a partition of a topic.
    topics: Topics,
}

impl Dedup {
    pub fn new(contract: &Contract, horizon: Duration, topics: Topics) -> Self {
        Self {
            index: DedupIndex::new(horizon),
            id_column: contract.event_id_name().to_owned(),
            time_column: contract.event_time_name().to_owned(),
            topics,
        }
    }

    /// `job`'s index, seeded from `tables` (see [`Seed`]).
    pub async fn restored(
        job: &Job,
        tables: &mut impl Tables,
        seed: Seed<'_>,
    ) -> Result<Self, RestoreError> {
        let (contract, topics) = (&job.contract, &job.source.topics);
        let mut dedup = Self::new(contract, job.dedup_horizon, topics.clone());
        for batch in seeds(contract, topics, tables, seed).await? {
            dedup.seed(&batch)?;
        }
        Ok(dedup)
    }

    /// Remembers already-accepted events (rows of `raw` or `late`, or a
    /// projection with the ID, event time, `_partition` and `_offset` columns)
    /// without judging them.
    pub fn seed(&mut self, accepted: &RecordBatch) -> Result<(), ArrowError> {
        self.apply(accepted).map(|_| ())
    }

    /// Returns `batch` without its duplicates, and how many were dropped.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<(RecordBatch, usize), ArrowError> {
        if batch.num_rows() == 0 {
            return Ok((batch.clone(), 0));
        }
        let keep = self.index.apply(&self.candidates(batch)?);
        let duplicates = batch.num_rows() - keep.true_count();
        let kept = if duplicates == 0 {
            batch.clone()
        } else {
            compute::filter_record_batch(batch, &keep)?
        };
        Ok((kept, duplicates))
    }

    /// Forgets IDs older than `watermark_us − horizon`.
    pub fn evict(&mut self, watermark_us: i64) {
        self.index.evict(watermark_us.div_euclid(1000));
    }

    pub fn index(&self) -> &DedupIndex {
        &self.index
    }

    fn candidates(&self, batch: &RecordBatch) -> Result<Vec<Candidate>, ArrowError> {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| ArrowError::SchemaError(format!("dedup needs column `{name}`")))
        };
        let ids = hash_ids(column(&self.id_column)?.as_ref())?;
        let times = column(&self.time_column)?.as_primitive::<TimestampMicrosecondType>();
        let positions = positions(batch, &self.topics)?;
        Ok((0..batch.num_rows())
            .map(|row| Candidate {
                // Decode guarantees the ID is present; hash a null as 0 all the same.
                id_hash: ids[row].unwrap_or(0),
                time_ms: times.value(row).div_euclid(1000),
                origin: Origin {
                    partition: positions[row].0,
                    offset: positions[row].1,
                },
            })
            .collect())
    }
}

/// The accepted events [`Seed`] selects, projected to what
/// [`Dedup::seed`] reads.
pub async fn seeds(
    contract: &Contract,
    topics: &Topics,
    tables: &mut impl Tables,
    seed: Seed<'_>,
) -> Result<Vec<RecordBatch>, TableError> {
    let ts = format!("\"{}\"", contract.event_time_name());
    let id = format!("\"{}\"", contract.event_id_name());
    let day = |us: i64| {
        let time = chrono::DateTime::from_timestamp_micros(us).unwrap_or_default();
        time.format("%Y-%m-%d").to_string()
    };
    // The date bounds prune partitions; the casts compare exactly.
    let mut conditions = Vec::new();
    if let Some(since) = seed.since_us {
        conditions.push(format!(
            "{EVENT_DATE} >= DATE '{}' AND CAST({ts} AS BIGINT) >= {since}",
            day(since)
        ));
    }
    if let Some(until) = seed.until_us {
        conditions.push(format!(
            "{EVENT_DATE} <= DATE '{}' AND CAST({ts} AS BIGINT) < {until}",
            day(until)
        ));
    }
    if let Some(partitions) = seed.partitions {
        let list: Vec<String> = partitions
            .iter()
            .map(|&p| topics.sql_is(p, PARTITION))
            .collect();
        conditions.push(format!("({})", list.join(" OR ")));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let partition = partition_columns(topics);
    let selects: Vec<String> = seed
        .tables
        .iter()
        .filter_map(|t| t.ingest_name())
        .map(|table| format!("SELECT {id}, {ts}, {partition}, {OFFSET} FROM {table}{filter}"))
        .collect();
    tables
        .query(seed.tables, &selects.join(" UNION ALL "))
        .await
}

/// Hashes an ID column (string or int64) to 128 bits per row; `None` for nulls.
/// Strings hash the same whatever their Arrow layout (DataFusion reads views).
pub fn hash_ids(ids: &dyn Array) -> Result<Vec<Option<u128>>, ArrowError> {
    let hash = |v: Option<&[u8]>| v.map(xxh3_128);
    Ok(match ids.data_type() {
        DataType::Int64 => ids
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(|v| xxh3_128(&v.to_le_bytes())))
            .collect(),
        DataType::Utf8 => ids
            .as_string::<i32>()
            .iter()
            .map(|v| hash(v.map(str::as_bytes)))
            .collect(),
        DataType::LargeUtf8 => ids
            .as_string::<i64>()
            .iter()
            .map(|v| hash(v.map(str::as_bytes)))
            .collect(),
        DataType::Utf8View => ids
            .as_string_view()
            .iter()
            .map(|v| hash(v.map(str::as_bytes)))
            .collect(),
        other => {
            return Err(ArrowError::SchemaError(format!(
                "event IDs must be strings or int64, not {other}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, StringViewArray};
    use proptest::prelude::*;

    fn c(id: u128, time_ms: i64, partition: i32, offset: i64) -> Candidate {
        Candidate {
            id_hash: id,
            time_ms,
            origin: Origin {
                partition: SourcePartition::first(partition),
                offset,
            },
        }
    }

    fn keep(index: &mut DedupIndex, cs: &[Candidate]) -> Vec<bool> {
        index.apply(cs).values().iter().collect()
    }

    #[test]
    fn resends_are_duplicates_and_replays_are_not() {
        let mut index = DedupIndex::new(Duration::from_secs(3600));
        assert_eq!(
            keep(&mut index, &[c(1, 0, 0, 10), c(2, 0, 0, 11), c(1, 5, 1, 3)]),
            vec![true, true, false]
        );
        // After a restart the same positions come again: replays, kept.
        assert_eq!(
            keep(&mut index, &[c(1, 0, 0, 10), c(1, 5, 1, 3)]),
            vec![true, false]
        );
    }

    #[test]
    fn ids_older_than_the_horizon_are_forgotten() {
        let hour = 3_600_000;
        let mut index = DedupIndex::new(Duration::from_secs(3600));
        keep(&mut index, &[c(1, 0, 0, 0), c(2, 2 * hour, 0, 1)]);
        index.evict(hour + hour / 2);
        assert_eq!(index.len(), 1, "id 1 is older than watermark − horizon");
        assert_eq!(keep(&mut index, &[c(1, 3 * hour, 0, 2)]), vec![true]);
        assert_eq!(keep(&mut index, &[c(2, 3 * hour, 0, 3)]), vec![false]);
    }

    #[test]
    fn hashes_strings_and_integers_and_keeps_nulls_apart() {
        let s = hash_ids(&StringArray::from(vec![Some("a"), None, Some("a")])).unwrap();
        assert_eq!(s[0], s[2]);
        assert!(s[1].is_none());
        let view = hash_ids(&StringViewArray::from(vec!["a"])).unwrap();
        assert_eq!(view[0], s[0], "a string hashes the same in every layout");
        let i = hash_ids(&Int64Array::from(vec![7, 8, 7])).unwrap();
        assert_eq!(i[0], i[2]);
        assert_ne!(i[0], i[1]);
    }

    /// A stream of events (id, time) each sent once or more at different
    /// positions, then a replay of a random suffix of positions.
    fn stream() -> impl Strategy<Value = (Vec<Candidate>, usize)> {
        prop::collection::vec((0u128..50, 0i64..1000, 1usize..4), 1..80).prop_flat_map(|events| {
            let mut sent = Vec::new();
            for (id, time, copies) in events {
                for _ in 0..copies {
                    let offset = sent.len() as i64;
                    sent.push(c(id, time, (offset % 3) as i32, offset));
                }
            }
            let n = sent.len();
            (Just(sent), 0..=n)
        })
    }

    proptest! {
        /// Every ID is accepted exactly once, from one position, however the
        /// re-sends and replays interleave.
        #[test]
        fn each_id_accepted_once(
            (sent, replay_from) in stream(),
            shuffle_seed in any::<u64>(),
        ) {
            let mut index = DedupIndex::new(Duration::from_secs(3600));
            let mut order = sent.clone();
            // Any arrival order: dedup must not depend on it.
            order.sort_by_key(|c| (c.origin.offset as u64).wrapping_mul(shuffle_seed | 1) % 7);
            let first = keep(&mut index, &order);
            let replayed = keep(&mut index, &order[replay_from.min(order.len())..]);

            let accepted: Vec<&Candidate> =
                order.iter().zip(&first).filter(|(_, k)| **k).map(|(c, _)| c).collect();
            let mut ids: Vec<u128> = accepted.iter().map(|c| c.id_hash).collect();
            ids.sort_unstable();
            let before = ids.len();
            ids.dedup();
            prop_assert_eq!(ids.len(), before, "an ID was accepted twice");
            let distinct: std::collections::HashSet<u128> = sent.iter().map(|c| c.id_hash).collect();
            prop_assert_eq!(ids.len(), distinct.len(), "an ID was lost");
            // A replay keeps exactly what was kept the first time.
            prop_assert_eq!(&replayed[..], &first[replay_from.min(order.len())..]);
        }

        /// Memory follows the horizon, not the stream's length.
        #[test]
        fn eviction_bounds_the_index(n in 1000usize..3000) {
            let mut index = DedupIndex::new(Duration::from_secs(10));
            for i in 0..n {
                let t = i as i64 * 100; // 10 events per second of event time
                index.apply(&[c(i as u128, t, 0, i as i64)]);
                index.evict(t);
            }
            // 10 s horizon at 10 events/s, plus one bucket of slack.
            prop_assert!(index.len() <= 100 + 100 / 64 + 2, "{} ids kept", index.len());
        }
    }
}
