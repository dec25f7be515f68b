//! Synthetic latency probes: what a reader of the tables waits, measured
//! from outside the pipeline, so a queue hidden anywhere on the way (the
//! broker, the poller, a slow commit, a stalled checkpoint) shows up.
//!
//! Every `probes.every`, one record is sent to each partition of the job's
//! topic, marked with [`PROBE_HEADER`]. The source steps over it (it is never
//! decoded, stored or counted as an event; its offset moves the tables'
//! positions like any record's, [`crate::ingest::source::kafka::Polled::strip_probes`]).
//! The probe then reads `raw`'s Delta log as any reader would, until raw's
//! txn for the partition holds the probe's offset: that commit made it
//! visible. Send → visible is `weir_probe_latency_seconds`. A probe not
//! visible within [`DEADLINE`] (or that could not be sent: the job's
//! credentials may not write the topic) counts in `weir_probe_failures_total`.
//!
//! Each `weir run` process of a job probes every partition, so N processes
//! send N probes per partition per round: each measures the same path.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::{debug, warn};

use super::source::PROBE_HEADER;
use super::source::kafka::{client_config, high_watermarks};
use crate::config::{Job, SourcePartition};
use crate::metrics::JobMetrics;
use crate::table::TableId;
use crate::table::delta::{open, txn_version};

/// How long a probe may take to become visible before it counts as failed.
pub const DEADLINE: Duration = Duration::from_secs(300);
/// How often raw's log is read while probes are in flight.
const LOOK_EVERY: Duration = Duration::from_millis(50);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic `{0}`: {1}")]
    Topic(String, rdkafka::error::KafkaError),
    #[error("{0}")]
    Spec(#[from] crate::config::JobError),
    #[error("{0}")]
    Table(#[from] crate::table::TableError),
    #[error("reading raw's log: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
}

/// Sends a round of probes every `every` until the task is dropped. A round
/// that fails is logged and counted; the next one tries again.
pub async fn probe(job: Job, bootstrap: String, metrics: JobMetrics, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut producer = None;
    loop {
        tick.tick().await;
        if let Err(e) = round(&job, &bootstrap, &metrics, &mut producer).await {
            metrics.probe_failures.inc();
            warn!(job = %job.name, error = %e, "latency probe round failed");
        }
    }
}

/// One probe per partition, sent together, each timed until visible.
async fn round(
    job: &Job,
    bootstrap: &str,
    metrics: &JobMetrics,
    producer: &mut Option<FutureProducer>,
) -> Result<(), ProbeError> {
    let properties = job.kafka_properties()?;
    let producer = match producer {
        Some(p) => p,
        None => producer.insert(client_config(bootstrap, &properties).create()?),
    };
    let partitions = {
        let (bootstrap, topics) = (bootstrap.to_owned(), job.source.topics.clone());
        tokio::task::spawn_blocking(move || {
            high_watermarks(&bootstrap, &properties, &topics, None, METADATA_TIMEOUT)
        })
        .await
        .expect("metadata lookups do not panic")
        .map_err(|(topic, e)| ProbeError::Topic(topic, e))?
    };
    let mut pending = BTreeMap::new();
    for &partition in partitions.keys() {
        let label = job.source.topics.label(partition);
        let sent = Instant::now();
        let headers = OwnedHeaders::new().insert(Header {
            key: PROBE_HEADER,
            value: Some(job.name.as_bytes()),
        });
        let record = FutureRecord::<(), [u8]>::to(job.source.topics.name(partition.topic))
            .partition(partition.partition)
            .payload(&[])
            .headers(headers);
        match producer.send(record, METADATA_TIMEOUT).await {
            Ok(delivery) => {
                pending.insert(partition, (delivery.offset, sent));
            }
            Err((e, _)) => {
                metrics.probe_failures.inc();
                warn!(job = %job.name, partition = label, error = %e, "cannot send a latency probe");
            }
        }
    }
    await_visible(job, metrics, pending).await
}

/// Reads raw's log until each pending probe's offset is held, observing
/// each latency as it is seen.
async fn await_visible(
    job: &Job,
    metrics: &JobMetrics,
    mut pending: BTreeMap<SourcePartition, (i64, Instant)>,
) -> Result<(), ProbeError> {
    let raw = TableId::Raw.name(job);
    let mut table = open(raw, &job.storage.hot_table(&job.name, raw)).await?;
    let started = Instant::now();
    while !pending.is_empty() {
        table.update_incremental(None).await?;
        let mut seen = Vec::new();
        for (&partition, &(offset, sent)) in &pending {
            let held = txn_version(&table, &job.app_id(partition)).await?;
            if held.is_some_and(|next| next > offset) {
                let label = job.source.topics.label(partition);
                metrics.probe_seen(&label, sent.elapsed());
                debug!(job = %job.name, partition = label, latency = ?sent.elapsed(), "probe visible");
                seen.push(partition);
            }
        }
        seen.iter().for_each(|p| {
            pending.remove(p);
        });
        if started.elapsed() > DEADLINE {
            metrics.probe_failures.inc_by(pending.len() as u64);
            let labels = job.source.topics.labels(pending.keys());
            warn!(job = %job.name, partitions = ?labels, "latency probes not visible in raw within the deadline");
            return Ok(());
        }
        if !pending.is_empty() {
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }
    Ok(())
}
