//! The watermark, and the split of accepted events into on-time and late.
//!
//! Each partition's clock is the newest event time it has delivered; the job's
//! watermark is the slowest clock among partitions that delivered within the
//! idle timeout, minus the allowed lateness, and never moves back. An assigned
//! partition that has not delivered yet holds the watermark where it is until
//! it does or the idle timeout passes: when a backlog is read, one partition's
//! burst must not make another's older events late. An event
//! older than the watermark at the start of its trigger is late: it goes to the
//! `late` table with the reason and is never aggregated (so `raw` holds exactly
//! what the outputs counted).
//!
//! The watermark depends on batch boundaries and the wall clock, so after a
//! crash a re-read event could be judged differently than the first time. The
//! tables settle that: below `raw`'s txn version an event's fate is already
//! stored (it is in `raw` or it was late), and [`Settled`] carries it in; only
//! events no table has seen are judged afresh.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType};
use arrow::error::ArrowError;
use chrono::{DateTime, SecondsFormat, Utc};

use tracing::debug;

use crate::config::{Contract, Job, WatermarkPolicy};
use crate::config::{Offsets, SourcePartition, Topics};
use crate::ingest::decode::{
    INGEST_TS, KAFKA_TS, OFFSET, PARTITION, partition_columns, partitions, positions, raw_schema,
    utc_micros,
};
use crate::ingest::replay::may_replay;
use crate::table::{TableError, TableId, Tables};

/// The watermark an event was judged against (null when a stored decision was reused).
pub const WATERMARK: &str = "_watermark";
pub const REASON: &str = "_reason";

/// The `late` table: `raw`'s columns, the watermark that refused the event,
/// why, and when it was read.
pub fn late_schema(contract: &Contract) -> SchemaRef {
    let mut fields: Vec<Field> = raw_schema(contract)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend([
        Field::new(WATERMARK, utc_micros(), true),
        Field::new(REASON, DataType::Utf8, false),
        Field::new(INGEST_TS, utc_micros(), false),
    ]);
    Arc::new(Schema::new(fields))
}

/// SQL over `raw` giving each partition's newest event time and when its
/// newest message was sent, the input of [`Watermark::restore`] (via
/// [`newest_rows`]).
fn newest_sql(contract: &Contract, topics: &Topics) -> String {
    let ts = format!("\"{}\"", contract.event_time_name());
    let by = partition_columns(topics);
    format!("SELECT max({ts}), max({KAFKA_TS}), {by} FROM raw GROUP BY {by}")
}

/// What `raw` says of one partition's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Newest {
    pub partition: SourcePartition,
    /// Its newest event time, epoch µs.
    pub event_us: i64,
    /// When its newest message was sent (Kafka timestamp), epoch µs.
    pub sent_us: Option<i64>,
}

/// The rows of [`newest_sql`]'s result, one per partition (rows stored
/// without a topic and rows of the first topic are one partition's).
fn newest_rows(batches: &[RecordBatch], topics: &Topics) -> Result<Vec<Newest>, ArrowError> {
    let mut newest: BTreeMap<SourcePartition, Newest> = BTreeMap::new();
    for batch in batches {
        let times = batch.column(0).as_primitive::<TimestampMicrosecondType>();
        let sent = batch.column(1).as_primitive::<TimestampMicrosecondType>();
        for (i, partition) in partitions(batch, topics)?.into_iter().enumerate() {
            if !times.is_valid(i) {
                continue;
            }
            let row = Newest {
                partition,
                event_us: times.value(i),
                sent_us: sent.is_valid(i).then(|| sent.value(i)),
            };
            let kept = newest.entry(partition).or_insert(row);
            kept.event_us = kept.event_us.max(row.event_us);
            kept.sent_us = kept.sent_us.max(row.sent_us);
        }
    }
    Ok(newest.into_values().collect())
}

/// Fates the tables already hold for re-read events: an event at an offset
/// below `below[partition]` is on time exactly when `on_time` holds it.
#[derive(Debug, Clone, Default)]
pub struct Settled {
    pub below: Offsets,
    pub on_time: HashSet<(SourcePartition, i64)>,
}

impl Settled {
    /// The stored fate of the `accepted` events that `raw` has already
    /// settled (offsets below `below`, raw's txn versions): those in `raw`
    /// were on time, the others late. `lowest` bounds each partition's
    /// offsets in `accepted` from below; when no partition starts below
    /// `below`, nothing is settled and no event's position is read. Only
    /// re-reads after a restart or rebalance hit the table.
    pub async fn read(
        tables: &mut impl Tables,
        below: Offsets,
        accepted: &RecordBatch,
        lowest: &Offsets,
        topics: &Topics,
    ) -> Result<Settled, TableError> {
        if !may_replay(&below, lowest) {
            return Ok(Settled::default());
        }
        let Ok(accepted) = positions(accepted, topics) else {
            return Ok(Settled::default());
        };
        let mut ranges: BTreeMap<SourcePartition, (i64, i64)> = BTreeMap::new();
        for (p, o) in accepted {
            if let Some(&v) = below.get(&p).filter(|v| o < **v) {
                let range = ranges.entry(p).or_insert((o, v));
                range.0 = range.0.min(o);
            }
        }
        let mut on_time = HashSet::new();
        if !ranges.is_empty() {
            let conditions: Vec<String> = ranges
                .iter()
                .map(|(&p, (lo, hi))| {
                    let partition = topics.sql_is(p, PARTITION);
                    format!("({partition} AND {OFFSET} >= {lo} AND {OFFSET} < {hi})")
                })
                .collect();
            let sql = format!(
                "SELECT {}, {OFFSET} FROM raw WHERE {}",
                partition_columns(topics),
                conditions.join(" OR ")
            );
            for batch in tables.query(&[TableId::Raw], &sql).await? {
                on_time.extend(positions(&batch, topics).map_err(raw_result)?);
            }
            debug!(
                ranges = ranges.len(),
                on_time = on_time.len(),
                "re-read events settled from raw"
            );
        }
        Ok(Settled { below, on_time })
    }

    fn fate(&self, partition: SourcePartition, offset: i64) -> Option<bool> {
        let settled = self.below.get(&partition).is_some_and(|v| offset < *v);
        settled.then(|| self.on_time.contains(&(partition, offset)))
    }
}

/// Accepted events split by the watermark.
#[derive(Debug)]
pub struct Split {
    /// In `raw`'s schema: what is stored in `raw` and fed to the outputs.
    pub on_time: RecordBatch,
    /// In the `late` table's schema.
    pub late: RecordBatch,
}

#[derive(Debug, Clone, Copy)]
struct Clock {
    /// `None` for an assigned partition that has delivered nothing yet.
    newest_us: Option<i64>,
    seen: Instant,
}

/// A job's event-time progress.
#[derive(Debug)]
pub struct Watermark {
    lateness_us: i64,
    policy: WatermarkPolicy,
    time_column: String,
    late_schema: SchemaRef,
    topics: Topics,
    clocks: BTreeMap<SourcePartition, Clock>,
    current_us: Option<i64>,
}

impl Watermark {
    pub fn new(contract: &Contract, policy: WatermarkPolicy, topics: Topics) -> Self {
        Self {
            lateness_us: policy.allowed_lateness.as_micros() as i64,
            policy,
            time_column: contract.event_time_name().to_owned(),
            late_schema: late_schema(contract),
            topics,
            clocks: BTreeMap::new(),
            current_us: None,
        }
    }

    /// The watermark a restart restores from `raw` in `tables` (see
    /// [`Watermark::restore`]), and the partitions left out of it as idle.
    pub async fn restored(
        job: &Job,
        tables: &mut impl Tables,
        unread: &[SourcePartition],
    ) -> Result<(Self, Vec<SourcePartition>), TableError> {
        let (contract, policy, topics) = (&job.contract, job.watermark, job.source.topics.clone());
        let sql = newest_sql(contract, &topics);
        let newest = tables.query(&[TableId::Raw], &sql).await?;
        let newest = newest_rows(&newest, &topics).map_err(raw_result)?;
        let mut watermark = Self::new(contract, policy, topics);
        let idle = watermark.restore(&newest, Instant::now(), unread);
        Ok((watermark, idle))
    }

    /// Restarts the clocks from each partition's newest stored event. The
    /// idle rule applies as it did when the job stopped, by when each
    /// partition's newest message was sent: one that had sent nothing for
    /// the idle timeout before the others' last messages is idle and does
    /// not count (it would pin the watermark for good); every other counts
    /// as active now, so a restart does not let the watermark run ahead of a
    /// partition merely slow to return. A partition in `unread` has messages
    /// after what `raw` holds: it was behind, not silent, and is never idle
    /// (its backlog would otherwise be judged against the others' clocks and
    /// go to `late`). Returns the idle ones.
    pub fn restore(
        &mut self,
        newest: &[Newest],
        now: Instant,
        unread: &[SourcePartition],
    ) -> Vec<SourcePartition> {
        let last_sent = newest.iter().filter_map(|n| n.sent_us).max();
        let idle_us = self.policy.idle_timeout.as_micros() as i64;
        let mut idle = Vec::new();
        for n in newest {
            let silent = last_sent
                .zip(n.sent_us)
                .is_some_and(|(last, sent)| last.saturating_sub(sent) > idle_us);
            if silent && !unread.contains(&n.partition) {
                idle.push(n.partition);
                continue;
            }
            let clock = Clock {
                newest_us: Some(n.event_us),
                seen: now,
            };
            self.clocks.insert(n.partition, clock);
        }
        self.recompute(now);
        idle
    }

    /// The partition whose clock sets the watermark: the slowest that counts.
    pub fn holder(&self) -> Option<SourcePartition> {
        self.clocks
            .iter()
            .filter_map(|(p, c)| c.newest_us.map(|t| (t, *p)))
            .min()
            .map(|(_, p)| p)
    }

    /// Follows the consumer's assignment: partitions no longer assigned stop
    /// counting; newly assigned ones count from `now`, holding the watermark
    /// until they deliver or go idle.
    pub fn assign(&mut self, partitions: &[SourcePartition], now: Instant) {
        self.clocks.retain(|p, _| partitions.contains(p));
        for &p in partitions {
            self.clocks.entry(p).or_insert(Clock {
                newest_us: None,
                seen: now,
            });
        }
    }

    /// The watermark in epoch µs; `None` until some partition has delivered.
    pub fn current_us(&self) -> Option<i64> {
        self.current_us
    }

    pub fn late_schema(&self) -> &SchemaRef {
        &self.late_schema
    }

    /// Splits accepted events (in `raw`'s schema) by the current watermark,
    /// reusing the stored fate of events the tables have already settled.
    pub fn split(
        &self,
        events: &RecordBatch,
        settled: &Settled,
        ingest: DateTime<Utc>,
    ) -> Result<Split, ArrowError> {
        let times = self.times(events)?;
        // Settling nothing (nearly every trigger), no event's position is read.
        let positions = if settled.below.is_empty() {
            Vec::new()
        } else {
            positions(events, &self.topics)?
        };
        let mut reused = Vec::new();
        let late: BooleanArray = (0..events.num_rows())
            .map(|i| {
                let fate = positions.get(i).and_then(|&(p, o)| settled.fate(p, o));
                reused.push(fate.is_some());
                Some(match fate {
                    Some(on_time) => !on_time,
                    None => self.current_us.is_some_and(|w| times.value(i) < w),
                })
            })
            .collect();
        if late.true_count() == 0 {
            return Ok(Split {
                on_time: events.clone(),
                late: RecordBatch::new_empty(self.late_schema.clone()),
            });
        }
        let on_time = compute::filter_record_batch(events, &compute::not(&late)?)?;
        let late_events = compute::filter_record_batch(events, &late)?;
        let reused = compute::filter(&BooleanArray::from(reused), &late)?;
        let late_rows = self.annotate(&late_events, reused.as_boolean(), ingest)?;
        Ok(Split {
            on_time,
            late: late_rows,
        })
    }

    /// Moves partition clocks forward with the events just accepted as on time
    /// (their partitions count as active from `now`) and recomputes the watermark.
    pub fn advance(&mut self, on_time: &RecordBatch, now: Instant) -> Result<(), ArrowError> {
        let times = self.times(on_time)?;
        let partitions = partitions(on_time, &self.topics)?;
        for (p, t) in partitions.into_iter().zip(times.values()) {
            let clock = self.clocks.entry(p).or_insert(Clock {
                newest_us: None,
                seen: now,
            });
            clock.newest_us = Some(clock.newest_us.map_or(*t, |n| n.max(*t)));
            clock.seen = now;
        }
        self.recompute(now);
        Ok(())
    }

    fn recompute(&mut self, now: Instant) {
        let active: Vec<Option<i64>> = self
            .clocks
            .values()
            .filter(|c| now.saturating_duration_since(c.seen) <= self.policy.idle_timeout)
            .map(|c| c.newest_us)
            .collect();
        if active.contains(&None) {
            return;
        }
        if let Some(slowest) = active.into_iter().flatten().min() {
            let candidate = slowest.saturating_sub(self.lateness_us);
            self.current_us = Some(self.current_us.map_or(candidate, |w| w.max(candidate)));
        }
    }

    fn times<'a>(
        &self,
        events: &'a RecordBatch,
    ) -> Result<&'a TimestampMicrosecondArray, ArrowError> {
        let column = events.column_by_name(&self.time_column).ok_or_else(|| {
            ArrowError::SchemaError(format!("missing event time `{}`", self.time_column))
        })?;
        Ok(column.as_primitive::<TimestampMicrosecondType>())
    }

    /// Adds the watermark, the reason and the ingest time to late events.
    fn annotate(
        &self,
        late: &RecordBatch,
        reused: &BooleanArray,
        ingest: DateTime<Utc>,
    ) -> Result<RecordBatch, ArrowError> {
        let times = self.times(late)?;
        let lateness = humantime::format_duration(self.policy.allowed_lateness);
        let mut watermarks = Vec::with_capacity(late.num_rows());
        let mut reasons = Vec::with_capacity(late.num_rows());
        for (i, t) in times.values().iter().enumerate() {
            match self.current_us.filter(|_| !reused.value(i)) {
                Some(w) => {
                    watermarks.push(Some(w));
                    reasons.push(format!(
                        "event time {} is {} behind the watermark {} (allowed lateness {lateness})",
                        rfc3339(*t),
                        humantime::format_duration(behind(*t, w)),
                        rfc3339(w),
                    ));
                }
                None => {
                    watermarks.push(None);
                    reasons.push(
                        "behind the watermark when first read; re-read after a restart".to_owned(),
                    );
                }
            }
        }
        let mut columns = late.columns().to_vec();
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(watermarks).with_timezone("UTC"),
        ));
        columns.push(Arc::new(StringArray::from(reasons)));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(vec![ingest.timestamp_micros(); late.num_rows()])
                .with_timezone("UTC"),
        ));
        RecordBatch::try_new(self.late_schema.clone(), columns)
    }
}

/// How far `t` is behind `w`, to the millisecond.
fn behind(t: i64, w: i64) -> Duration {
    Duration::from_millis(((w - t).max(0) / 1000) as u64)
}

/// A query over `raw` whose result did not have the columns asked for.
fn raw_result(e: ArrowError) -> TableError {
    TableError::Query {
        tables: "raw".into(),
        source: Box::new(e.into()),
    }
}

fn rfc3339(us: i64) -> String {
    DateTime::from_timestamp_micros(us).map_or_else(
        || us.to_string(),
        |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

#[cfg(test)]
mod tests;
