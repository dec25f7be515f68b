//! `weir status`: where a job stands, read from the tables and the broker, with
//! no weir process running.
//!
//! Per partition: the offset every table holds (the lowest txn version over
//! the job's tables: where a restart resumes), the broker's high watermark,
//! the lag between them, and when `raw` last committed that partition (from
//! the txn actions in its recent log entries). Partitions whose lag or rate is
//! far above the median are flagged hot, the partition that holds the
//! watermark and those idle are noted; a watermark far behind the wall
//! clock is flagged stalled. Per table, its newest commits and the rows of
//! each tier ([`tables`]); the DLQ's commonest reasons; for a job that reads
//! through a schema registry, the schema IDs whose messages the DLQ holds.
//! `weir run` serves the same [`Status`] as JSON (`/api/status`).

mod tables;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};

use crate::config::{Brokers, Job, Offsets, SourcePartition, TopicIndex};
use crate::ingest::decode::INGEST_TS;
use crate::ingest::monitor::MONITOR;
use crate::ingest::source::kafka;
use crate::ingest::watermark::Watermark;
use crate::table::delta::{held_versions, open};
use crate::table::tier::Tiered;
use crate::table::{TableError, TableId, Tables};
pub use tables::{Commit, Reason, TableStatus, TierStatus};

/// How far back in `raw`'s log the last commit per partition is looked for.
const LOG_LOOKBACK: u64 = 500;
/// A partition is hot when its lag or rate exceeds the median this many times.
const HOT_FACTOR: f64 = 3.0;
/// Lags below this are never called hot (a few batches of difference is noise).
const MIN_HOT_LAG: i64 = 1000;
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("asking the broker {} about topic `{}`: {}", .0.0, .0.1, .0.2)]
    Broker(Box<(String, String, KafkaError)>),
    #[error(transparent)]
    Spec(#[from] Box<crate::config::JobError>),
    #[error("job {0} uses the embedded broker, which only exists while `weir demo` runs")]
    Embedded(String),
    #[error("reading the DLQ: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("reading the Delta log of {table}: {source}")]
    Log {
        table: String,
        source: Box<deltalake::DeltaTableError>,
    },
}

/// One partition's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// How metrics and logs name it: the number for a job of one topic,
    /// `topic:number` otherwise.
    pub label: String,
    /// The next offset every table holds; `None` before any commit.
    pub committed: Option<i64>,
    pub high_watermark: i64,
    pub lag: i64,
    pub last_commit: Option<DateTime<Utc>>,
    /// Events per second committed over `raw`'s recent log.
    pub rate: Option<f64>,
    /// Why it needs a look (hot), and its part in the watermark.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub job: String,
    /// The job's topics, comma-separated.
    pub topic: String,
    pub partitions: Vec<PartitionStatus>,
    pub watermark: Option<DateTime<Utc>>,
    pub stalled: Option<String>,
    /// Schema IDs whose messages went to the DLQ, most first.
    pub refused: Vec<RefusedSchema>,
    /// Each expectation of the job and how often it was broken.
    pub expectations: Vec<ExpectationStatus>,
    /// Every table of the job, `raw` first.
    pub tables: Vec<TableStatus>,
    /// The DLQ's commonest reasons, most first.
    pub dlq_reasons: Vec<Reason>,
}

/// An expectation or a monitor and the breaches the `quality` table holds
/// of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpectationStatus {
    pub name: String,
    /// `warn`, `drop` (expectations) or `monitor`.
    pub action: String,
    /// What holds: a monitor's bounds (an expectation's rule is in the spec).
    pub expected: Option<String>,
    /// Events that broke an expectation; windows out of a monitor's bounds.
    pub breaches: i64,
    pub last: Option<DateTime<Utc>>,
    /// A monitor's figure in its last window out of bounds.
    pub last_observed: Option<f64>,
}

impl fmt::Display for ExpectationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expected {
            None => write!(
                f,
                "expectation {} ({}): {} events broke it",
                self.name, self.action, self.breaches
            )?,
            Some(bounds) => write!(
                f,
                "monitor {} ({bounds}): {} windows out of bounds",
                self.name, self.breaches
            )?,
        }
        if let Some(last) = self.last {
            let at = last.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            write!(f, ", last at {at}")?;
        }
        match self.last_observed {
            Some(observed) => write!(f, " (observed {observed})"),
            None => Ok(()),
        }
    }
}

/// A writer schema whose messages the DLQ holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedSchema {
    pub id: String,
    pub messages: i64,
    /// One of the reasons given (the first in sort order).
    pub example: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let several = self.topic.contains(',');
        let topics = if several { "topics" } else { "topic" };
        writeln!(f, "job {} on {topics} {}", self.job, self.topic)?;
        let width = self
            .partitions
            .iter()
            .map(|p| p.label.len())
            .max()
            .unwrap_or(0)
            .max(9);
        writeln!(
            f,
            "{:>width$} {:>12} {:>14} {:>10} {:>10} {:<24} note",
            "partition", "committed", "high watermark", "lag", "events/s", "last commit"
        )?;
        for p in &self.partitions {
            writeln!(
                f,
                "{:>width$} {:>12} {:>14} {:>10} {:>10} {:<24} {}",
                p.label,
                p.committed.map_or("-".into(), |c| c.to_string()),
                p.high_watermark,
                p.lag,
                p.rate.map_or("-".into(), |r| format!("{r:.1}")),
                p.last_commit.map_or("-".into(), |t| t
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                p.note.as_deref().unwrap_or("")
            )?;
        }
        if several {
            let mut per_topic: BTreeMap<&str, i64> = BTreeMap::new();
            for p in &self.partitions {
                *per_topic.entry(p.topic.as_str()).or_default() += p.lag;
            }
            for (topic, lag) in per_topic {
                writeln!(f, "topic {topic}: lag {lag}")?;
            }
        }
        let total: i64 = self.partitions.iter().map(|p| p.lag).sum();
        writeln!(f, "total lag {total}")?;
        match (&self.watermark, &self.stalled) {
            (None, _) => write!(f, "watermark: none yet (raw is empty)")?,
            (Some(w), None) => write!(f, "watermark: {}", w.to_rfc3339())?,
            (Some(w), Some(why)) => write!(f, "watermark: {} — STALLED: {why}", w.to_rfc3339())?,
        }
        for r in &self.refused {
            write!(
                f,
                "\nschema ID {} refused: {} messages in the DLQ, e.g. {}",
                r.id, r.messages, r.example
            )?;
        }
        for e in &self.expectations {
            write!(f, "\n{e}")?;
        }
        for t in &self.tables {
            write!(f, "\n{t}")?;
        }
        for r in &self.dlq_reasons {
            write!(f, "\ndlq: {} messages: {}", r.messages, r.reason)?;
        }
        Ok(())
    }
}

/// Reads the job's state from its tables and its broker.
pub async fn status(job: &Job) -> Result<Status, StatusError> {
    let Brokers::List(brokers) = &job.source.brokers else {
        return Err(StatusError::Embedded(job.name.clone()));
    };
    let high = high_watermarks(job, brokers)?;
    let partitions: Vec<SourcePartition> = high.keys().copied().collect();
    let committed = committed_offsets(job, &partitions).await?;
    let (last_commit, rate) = recent_commits(job).await?;
    let topics = &job.source.topics;
    let mut rows: Vec<PartitionStatus> = high
        .iter()
        .map(|(&p, &hw)| {
            let committed = committed.get(&p).copied();
            PartitionStatus {
                topic: topics.name(p.topic).to_owned(),
                partition: p.partition,
                label: topics.label(p),
                committed,
                high_watermark: hw,
                lag: (hw - committed.unwrap_or(0)).max(0),
                last_commit: last_commit.get(&p).copied(),
                rate: rate.get(&p).copied(),
                note: None,
            }
        })
        .collect();
    flag_hot(&mut rows);
    // As a restart restores it: a partition with lag is behind, never idle.
    let unread: Vec<SourcePartition> = high
        .keys()
        .zip(&rows)
        .filter(|(_, r)| r.lag > 0)
        .map(|(&p, _)| p)
        .collect();
    let (clocks, idle) = Watermark::restored(job, &mut Tiered::new(job), &unread).await?;
    let holder = clocks.holder().map(|p| topics.label(p));
    flag_clocks(&mut rows, holder, &topics.labels(&idle));
    let watermark = clocks
        .current_us()
        .and_then(DateTime::from_timestamp_micros);
    let stalled = watermark.and_then(|w| {
        let behind = Utc::now() - w;
        let limit =
            chrono::Duration::from_std(job.watermark.allowed_lateness + job.watermark.idle_timeout)
                .unwrap_or(chrono::Duration::MAX)
                + chrono::Duration::minutes(5);
        let lagging = rows.iter().any(|p| p.lag > 0);
        (behind > limit && lagging).then(|| {
            format!(
                "{} behind the wall clock while partitions still have lag",
                humantime::format_duration(behind.to_std().unwrap_or_default())
            )
        })
    });
    Ok(Status {
        job: job.name.clone(),
        topic: job.source.topics.to_string(),
        partitions: rows,
        watermark,
        stalled,
        refused: refused_schemas(job).await?,
        expectations: expectations(job).await?,
        tables: tables::tables(job).await?,
        dlq_reasons: tables::dlq_reasons(job).await?,
    })
}

/// Each of the job's expectations and monitors with the breaches
/// `quality` holds of it.
async fn expectations(job: &Job) -> Result<Vec<ExpectationStatus>, StatusError> {
    if !job.has_quality() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT rule, CAST(sum(observed) AS BIGINT), count(*), max({INGEST_TS}), \
         last_value(observed ORDER BY {INGEST_TS}) FROM quality GROUP BY rule"
    );
    let mut found = BTreeMap::new();
    for batch in Tiered::new(job).query(&[TableId::Quality], &sql).await? {
        // Strings may come back as views: cast, as for the DLQ's reasons.
        let rules = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
        let rules = rules.as_string::<i32>();
        let sums = batch.column(1).as_primitive::<Int64Type>();
        let rows = batch.column(2).as_primitive::<Int64Type>();
        let last = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        let observed = batch.column(4).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            let at = DateTime::from_timestamp_micros(last.value(row));
            let figures = (sums.value(row), rows.value(row), at, observed.value(row));
            found.insert(rules.value(row).to_owned(), figures);
        }
    }
    let get = |name: &str| found.get(name).copied();
    let expectations = job.expectations.iter().map(|e| {
        let figures = get(&e.name);
        ExpectationStatus {
            name: e.name.clone(),
            action: e.on_fail.name().to_owned(),
            expected: None,
            breaches: figures.map_or(0, |f| f.0),
            last: figures.and_then(|f| f.2),
            last_observed: None,
        }
    });
    let monitors = job.monitors.iter().map(|m| {
        let figures = get(&m.name);
        ExpectationStatus {
            name: m.name.clone(),
            action: MONITOR.to_owned(),
            expected: Some(m.expected()),
            breaches: figures.map_or(0, |f| f.1),
            last: figures.and_then(|f| f.2),
            last_observed: figures.map(|f| f.3),
        }
    });
    Ok(expectations.chain(monitors).collect())
}

/// The schema IDs the DLQ's reasons name (every refusal of a framed message
/// names its ID first), for a job that reads through a registry.
async fn refused_schemas(job: &Job) -> Result<Vec<RefusedSchema>, StatusError> {
    if job.source.format.registry().is_none() {
        return Ok(Vec::new());
    }
    let sql = "SELECT regexp_replace(error, '^schema ID ([0-9]+).*$', '${1}') AS id, \
               count(*) AS messages, min(error) AS example FROM dlq \
               WHERE error LIKE 'schema ID %' GROUP BY 1 ORDER BY 2 DESC, 1";
    let groups = tables::dlq_groups(job, sql).await?;
    Ok(groups
        .into_iter()
        .map(|(id, messages, example)| RefusedSchema {
            id,
            messages,
            example,
        })
        .collect())
}

/// Notes the partition whose clock sets the watermark, and those left out
/// of it as idle (they had sent nothing for the idle timeout when the
/// others last did), beside any hot flag.
fn flag_clocks(rows: &mut [PartitionStatus], holder: Option<String>, idle: &[String]) {
    for p in rows {
        let note = if holder.as_ref() == Some(&p.label) {
            "holds the watermark"
        } else if idle.contains(&p.label) {
            "idle: not counted in the watermark"
        } else {
            continue;
        };
        p.note = Some(match p.note.take() {
            Some(hot) => format!("{hot}; {note}"),
            None => note.to_owned(),
        });
    }
}

/// Flags partitions whose lag or rate is far above the median.
fn flag_hot(rows: &mut [PartitionStatus]) {
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let lag_median = median(rows.iter().map(|p| p.lag as f64).collect());
    let rate_median = median(rows.iter().filter_map(|p| p.rate).collect());
    for p in rows.iter_mut() {
        let mut why = Vec::new();
        if let Some(m) = lag_median
            && p.lag >= MIN_HOT_LAG
            && p.lag as f64 > HOT_FACTOR * m.max(1.0)
        {
            why.push(format!(
                "hot: lag {}× the median",
                (p.lag as f64 / m.max(1.0)).round()
            ));
        }
        if let (Some(m), Some(r)) = (rate_median, p.rate)
            && m > 0.0
            && r > HOT_FACTOR * m
        {
            why.push(format!("hot: rate {:.1}× the median", r / m));
        }
        p.note = (!why.is_empty()).then(|| why.join("; "));
    }
}

/// The broker's high watermark per partition of the job's topics.
fn high_watermarks(job: &Job, brokers: &str) -> Result<Offsets, StatusError> {
    let properties = job.kafka_properties().map_err(Box::new)?;
    let topics = &job.source.topics;
    kafka::high_watermarks(brokers, &properties, topics, None, BROKER_TIMEOUT).map_err(
        |(topic, source)| StatusError::Broker(Box::new((brokers.to_owned(), topic, source))),
    )
}

/// Per partition, the lowest next offset the job's hot tables hold.
async fn committed_offsets(
    job: &Job,
    partitions: &[SourcePartition],
) -> Result<Offsets, StatusError> {
    let hot = |id: TableId| async move {
        let name = id.name(job);
        let table = open(name, &job.storage.hot_table(&job.name, name)).await?;
        Ok::<_, StatusError>((name, table))
    };
    let (_, raw) = hot(TableId::Raw).await?;
    let mut lowest = Offsets::new();
    for id in TableId::all(job) {
        let (name, table) = hot(id).await?;
        let vouching = (id != TableId::Raw).then_some(&raw);
        let held = held_versions(job, (name, &table), vouching, partitions)
            .await
            .map_err(|source| StatusError::Log {
                table: name.to_owned(),
                source: Box::new(source),
            })?;
        for (p, v) in held {
            let e = lowest.entry(p).or_insert(v);
            *e = (*e).min(v);
        }
    }
    Ok(lowest)
}

/// Per partition, when it was last committed.
type LastCommits = BTreeMap<SourcePartition, DateTime<Utc>>;
/// Per partition, events per second.
type Rates = BTreeMap<SourcePartition, f64>;

/// From `raw`'s recent log entries: per partition, when it was last committed
/// and how many offsets per second it advanced over that span.
async fn recent_commits(job: &Job) -> Result<(LastCommits, Rates), StatusError> {
    let raw = TableId::Raw.name(job);
    let table = open(raw, &job.storage.hot_table(&job.name, raw)).await?;
    let latest = table.version().unwrap_or(0);
    let prefixes: Vec<(TopicIndex, String)> = job
        .source
        .topics
        .iter()
        .map(|(topic, name)| (topic, job.app_id_prefix(name)))
        .collect();
    // The partition a txn appId of raw's own records (not a vouch).
    let partition_of = |app: &str| {
        prefixes.iter().find_map(|(topic, prefix)| {
            let partition = app.strip_prefix(prefix)?.parse::<i32>().ok()?;
            Some(SourcePartition {
                topic: *topic,
                partition,
            })
        })
    };
    // Per partition: the (time ms, version) of its newest and oldest commit seen.
    type Span = ((i64, i64), (i64, i64));
    let mut seen: BTreeMap<SourcePartition, Span> = BTreeMap::new();
    for version in (latest.saturating_sub(LOG_LOOKBACK)..=latest).rev() {
        let Some(entry) = tables::read_entry(&table, raw, version).await? else {
            break;
        };
        let txns = entry
            .txns
            .iter()
            .filter_map(|(app, v)| Some((partition_of(app)?, *v)));
        let Some(time) = entry.at_ms else { continue };
        for (p, v) in txns {
            let e = seen.entry(p).or_insert(((time, v), (time, v)));
            e.1 = (time, v);
        }
    }
    let mut last = BTreeMap::new();
    let mut rate = BTreeMap::new();
    for (p, ((t1, v1), (t0, v0))) in seen {
        last.extend(DateTime::from_timestamp_millis(t1).map(|t| (p, t)));
        if t1 > t0 {
            rate.insert(p, (v1 - v0) as f64 / ((t1 - t0) as f64 / 1000.0));
        }
    }
    Ok((last, rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(partition: i32, lag: i64, rate: f64) -> PartitionStatus {
        PartitionStatus {
            topic: "t".into(),
            partition,
            label: partition.to_string(),
            committed: Some(0),
            high_watermark: lag,
            lag,
            last_commit: None,
            rate: Some(rate),
            note: None,
        }
    }

    #[test]
    fn a_partition_far_above_the_median_is_hot() {
        let mut rows = vec![
            row(0, 1200, 10.0),
            row(1, 1000, 11.0),
            row(2, 9000, 12.0),
            row(3, 100, 80.0),
        ];
        flag_hot(&mut rows);
        assert!(rows[2].note.as_deref().unwrap().contains("lag"), "{rows:?}");
        assert!(
            rows[3].note.as_deref().unwrap().contains("rate"),
            "{rows:?}"
        );
        assert_eq!(rows[0].note, None);
        assert_eq!(rows[1].note, None);
    }

    #[test]
    fn the_partition_holding_the_watermark_and_idle_ones_are_noted() {
        let mut rows = vec![row(0, 9000, 10.0), row(1, 10, 10.0), row(2, 10, 10.0)];
        rows[0].note = Some("hot: lag 900× the median".into());
        flag_clocks(&mut rows, Some("0".into()), &["2".into()]);
        assert_eq!(
            rows[0].note.as_deref(),
            Some("hot: lag 900× the median; holds the watermark")
        );
        assert_eq!(rows[1].note, None);
        assert_eq!(
            rows[2].note.as_deref(),
            Some("idle: not counted in the watermark")
        );
    }
}
