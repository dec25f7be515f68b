//! Helpers for the tests that run the spine against librdkafka's mock cluster.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use futures::TryStreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use url::Url;

use weir::config::{Job, Offsets, Overrides, SourcePartition};
use weir::fault::Faults;
use weir::ingest::pipeline::{Pipeline, PipelineError};
use weir::ingest::source::generator::{self, Delivered, Generator, Limits, Mix};

/// The clickstream job with its storage under `dir` and the given batching.
pub fn job(dir: &Path, max_events: usize) -> Job {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/clickstream.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("min_events = 100", "min_events = 1")
        .replace("max_events = 100000", &format!("max_events = {max_events}"))
        .replace("interval_ms = 1000", "interval_ms = 0")
        .replace("max_wait_ms = 250", "max_wait_ms = 50");
    let overrides = Overrides {
        data: Some(dir.to_owned()),
        ..Overrides::default()
    };
    Job::parse(&text, &path, &overrides).unwrap()
}

pub async fn produce(
    bootstrap: &str,
    job: &Job,
    count: u64,
    mix: Mix,
    seed: u64,
) -> Vec<Delivered> {
    let mut g = Generator::new(job.contract.clone(), mix, seed);
    let limits = Limits {
        rate: None,
        count: Some(count),
        duration: None,
    };
    generator::produce(
        bootstrap,
        job.source.topics.first(),
        &mut g,
        None,
        limits,
        &AtomicBool::new(false),
        &[],
    )
    .await
    .unwrap()
}

/// Starts a pipeline; with `RUST_LOG` set, its logs go to stderr.
pub async fn start(job: &Job, bootstrap: &str, faults: Faults) -> Arc<Pipeline> {
    if std::env::var_os("RUST_LOG").is_some() {
        weir::telemetry::init_logging(weir::telemetry::LogFormat::Text);
    }
    let metrics = weir::metrics::JobMetrics::detached(&job.name);
    Arc::new(
        Pipeline::start(job, bootstrap, faults, metrics)
            .await
            .unwrap(),
    )
}

/// Runs the pipeline until it has committed `targets` (or fails), then stops it.
pub async fn run_until(
    pipeline: Arc<Pipeline>,
    targets: &Offsets,
    timeout: Duration,
) -> Result<(), PipelineError> {
    let task = {
        let p = pipeline.clone();
        tokio::spawn(async move { p.run().await })
    };
    let stats = pipeline.stats();
    let deadline = Instant::now() + timeout;
    while !stats.reached(targets) && !task.is_finished() {
        assert!(Instant::now() < deadline, "not drained within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pipeline.stop();
    task.await.unwrap()
}

pub fn table_url(job: &Job, table: &str) -> Url {
    job.storage.hot_table(&job.name, table)
}

pub async fn read_table(job: &Job, table: &str) -> Vec<RecordBatch> {
    let table = deltalake::open_table(table_url(job, table)).await.unwrap();
    let (_, stream) = table.scan_table().await.unwrap();
    stream.try_collect().await.unwrap()
}

/// Every (partition, offset) in a table, in any order, duplicates kept.
pub async fn offsets(job: &Job, table: &str) -> Vec<(i32, i64)> {
    let mut out = Vec::new();
    for b in read_table(job, table).await {
        let p = b
            .column_by_name("_partition")
            .unwrap()
            .as_primitive::<Int32Type>();
        let o = b
            .column_by_name("_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        out.extend(p.values().iter().copied().zip(o.values().iter().copied()));
    }
    out.sort_unstable();
    out
}

/// The (partition, offset) of delivered messages that pass `keep`, sorted.
pub fn expected(delivered: &[Delivered], keep: impl Fn(&Delivered) -> bool) -> Vec<(i32, i64)> {
    let mut out: Vec<_> = delivered
        .iter()
        .filter(|d| keep(d))
        .map(|d| (d.partition, d.offset))
        .collect();
    out.sort_unstable();
    out
}

/// Asserts a sorted list has no repeated element.
pub fn assert_unique(rows: &[(i32, i64)], what: &str) {
    let set: HashSet<_> = rows.iter().collect();
    assert_eq!(set.len(), rows.len(), "{what} holds duplicates");
}

/// The next offsets a table holds for `partitions` of the job's (first)
/// topic (its own txn versions or what raw vouches for it), read straight
/// from the logs.
pub async fn txn_versions(job: &Job, table: &str, partitions: &[i32]) -> BTreeMap<i32, i64> {
    let open = |name: &str| deltalake::open_table(table_url(job, name));
    // A sink of other tables than a job's has no raw (tests/sink.rs).
    let (own, raw) = (open(table).await.unwrap(), open("raw").await.ok());
    let vouching = raw.as_ref().filter(|_| table != "raw");
    let partitions: Vec<SourcePartition> = partitions
        .iter()
        .map(|&p| SourcePartition::first(p))
        .collect();
    weir::table::delta::held_versions(job, (table, &own), vouching, &partitions)
        .await
        .unwrap()
        .into_iter()
        .map(|(p, v)| (p.partition, v))
        .collect()
}

/// `offsets` of the job's first topic, keyed by partition number.
pub fn numbered(offsets: &Offsets) -> BTreeMap<i32, i64> {
    offsets.iter().map(|(p, &v)| (p.partition, v)).collect()
}

/// The offsets the job's consumer group has committed.
pub fn group_offsets(job: &Job, bootstrap: &str, partitions: &[i32]) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &job.source.group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(job.source.topics.first(), p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}
