//! Where exactly-once starts: the consumer's rebalance callback. On every
//! assignment it asks the tables (through [`Rebalance`]) where each partition
//! must be re-read and assigns it there, once the broker is known to still
//! hold that offset ([`Gap`] names how it does not). On a revocation it waits
//! until no trigger is committing, so the partition's new owner starts from
//! all this process will ever commit of it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::{Generations, SourceError};
use crate::config::{Job, JobError, OnDataLoss, SourcePartition, StartFrom, Topics};
use crate::ingest::source::Offsets;
use crate::metrics::JobMetrics;

/// How long an assignment waits for a partition's offsets from the broker.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(10);

/// How a partition's offsets on the broker no longer continue the tables' position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// The partition now starts above the position: messages never read were
    /// deleted (retention, or records deleted by hand).
    Deleted { log_start: i64 },
    /// The partition now ends below the position: the topic was recreated or
    /// the partition reset, and its offsets started over.
    Reset { high_watermark: i64 },
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gap::Deleted { log_start } => write!(
                f,
                "the broker's partition now starts at offset {log_start}: the messages before \
                 it were deleted (retention or DeleteRecords) before weir read them"
            ),
            Gap::Reset { high_watermark } => write!(
                f,
                "the broker's partition now ends at offset {high_watermark}: the topic was \
                 recreated or the partition reset, and its offsets started over"
            ),
        }
    }
}

impl Gap {
    /// Where the broker's partition (`log_start`..`high_watermark`) leaves a
    /// position the tables recorded, if it does not hold it.
    pub fn between(recorded: i64, log_start: i64, high_watermark: i64) -> Option<Gap> {
        if recorded < log_start {
            Some(Gap::Deleted { log_start })
        } else if recorded > high_watermark {
            Some(Gap::Reset { high_watermark })
        } else {
            None
        }
    }
}

/// What the rebalance callback needs of the tables. It is called from inside
/// the consumer's poll, so it blocks; the pipeline implements it over the
/// shared sink.
pub trait Rebalance: Send + Sync + 'static {
    /// On an assignment: from which offset each partition must be re-read.
    /// Offsets for the partitions the tables know; partitions left out start
    /// at the job's `start_from`.
    fn resume_positions(&self, partitions: &[SourcePartition]) -> Result<Offsets, String>;

    /// On a revocation: runs `revoke` while no trigger commits. A trigger
    /// checks its batch's assignment under the same lock, so once a
    /// partition's revocation returns (and its new owner may start), this
    /// process commits nothing more of it.
    fn between_commits(&self, revoke: &mut dyn FnMut());
}

/// The consumer context: rebalance handling with Delta-chosen positions.
pub struct WeirContext {
    topics: Topics,
    resolver: Arc<dyn Rebalance>,
    /// Partitions taken away since the trigger loop last looked: their messages
    /// in the open batch must not be committed by this process.
    pub(super) revoked: Mutex<Vec<SourcePartition>>,
    /// A resume failure seen in the callback, surfaced by the next poll.
    pub(super) failure: Mutex<Option<SourceError>>,
    /// Per assigned partition, the number of the assignment it belongs to: a
    /// queued batch is only good while its partitions' numbers are unchanged.
    pub(super) generations: Mutex<Generations>,
    assignments: AtomicU64,
    start_from: StartFrom,
    /// The spec `start_from` came from, for an error naming it.
    job_file: PathBuf,
    on_data_loss: OnDataLoss,
    metrics: JobMetrics,
}

impl ClientContext for WeirContext {
    /// librdkafka's periodic statistics carry each partition's high watermark:
    /// the lag metric's upper end.
    fn stats(&self, statistics: Statistics) {
        for (name, topic) in &statistics.topics {
            for (&partition, p) in &topic.partitions {
                let Some(p_id) = self.topics.partition(name, partition) else {
                    continue;
                };
                if partition >= 0 && p.hi_offset >= 0 {
                    let label = self.topics.label(p_id);
                    self.metrics.partition(&label, Some(p.hi_offset), None);
                }
            }
        }
    }
}

impl ConsumerContext for WeirContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions = partitions_of(&self.topics, tpl);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = self.position_assignment(consumer, &partitions, tpl) {
                    // Nothing of this assignment is fetched: the next poll
                    // fails the job before any of it could be committed.
                    *self.failure.lock().unwrap() = Some(e);
                    return;
                }
                let mut generations = self.generations.lock().unwrap();
                for &p in &partitions {
                    generations.insert(p, self.assignments.fetch_add(1, Ordering::Relaxed));
                }
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                // librdkafka keeps a partition paused across a revoke and a
                // new assignment, but the poller may have resumed "all"
                // while nothing was assigned: start each assignment resumed
                // (the poller pauses it again while its queue is full).
                assigned.and_then(|()| consumer.resume(tpl))
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(partitions = ?self.topics.labels(&partitions), "partitions revoked");
                self.revoke(&partitions);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                warn!(error = ?other, "rebalance error; dropping the assignment");
                self.revoke(&partitions);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "applying the rebalance failed");
        }
    }
}

impl WeirContext {
    pub fn new(job: &Job, resolver: Arc<dyn Rebalance>, metrics: JobMetrics) -> Self {
        Self {
            topics: job.source.topics.clone(),
            resolver,
            revoked: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            generations: Mutex::new(BTreeMap::new()),
            assignments: AtomicU64::new(0),
            start_from: job.source.start_from.clone(),
            job_file: job.file.clone(),
            on_data_loss: job.source.on_data_loss,
            metrics,
        }
    }

    fn revoke(&self, partitions: &[SourcePartition]) {
        self.resolver.between_commits(&mut || {
            self.revoked.lock().unwrap().extend(partitions);
            let mut generations = self.generations.lock().unwrap();
            for p in partitions {
                generations.remove(p);
            }
        });
    }

    /// Sets each assigned partition's offset: where the tables say it must be
    /// re-read, once the broker is known to still hold it; `start_from` where
    /// the tables know nothing of the partition.
    fn position_assignment(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[SourcePartition],
        tpl: &mut TopicPartitionList,
    ) -> Result<(), SourceError> {
        let positions = self
            .resolver
            .resume_positions(partitions)
            .map_err(|reason| SourceError::Resume {
                partitions: self.topics.labels(partitions),
                reason,
            })?;
        let unknown: Vec<SourcePartition> = partitions
            .iter()
            .copied()
            .filter(|p| !positions.contains_key(p))
            .collect();
        let mut starts = self.starts(consumer, &unknown)?;
        for &partition in partitions {
            let offset = match positions.get(&partition) {
                Some(&recorded) => Offset::Offset(self.held(consumer, partition, recorded)?),
                None => starts.remove(&partition).unwrap_or(Offset::Beginning),
            };
            let topic = self.topics.name(partition.topic);
            if let Err(e) = tpl.set_partition_offset(topic, partition.partition, offset) {
                warn!(partition = self.topics.label(partition), error = %e, "cannot set the resume offset");
            }
        }
        let resume = self.topics.labelled(&positions);
        info!(partitions = ?self.topics.labels(partitions), ?resume, "partitions assigned");
        Ok(())
    }

    /// Where `start_from` begins each of `partitions` (which no table knows).
    fn starts(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[SourcePartition],
    ) -> Result<BTreeMap<SourcePartition, Offset>, SourceError> {
        let every = |offset: Offset| partitions.iter().map(|&p| (p, offset)).collect();
        Ok(match &self.start_from {
            StartFrom::Earliest => every(Offset::Beginning),
            StartFrom::Latest => every(Offset::End),
            StartFrom::Offsets(offsets) => partitions
                .iter()
                .map(|&p| match offsets.get(&p.partition) {
                    Some(&offset) => Ok((p, Offset::Offset(self.held_start(consumer, p, offset)?))),
                    None => Ok((p, Offset::Beginning)),
                })
                .collect::<Result<_, SourceError>>()?,
            StartFrom::Timestamp(_) if partitions.is_empty() => BTreeMap::new(),
            StartFrom::Timestamp(ms) => {
                let mut asked = TopicPartitionList::new();
                for &p in partitions {
                    let topic = self.topics.name(p.topic);
                    let added = asked.add_partition_offset(topic, p.partition, Offset::Offset(*ms));
                    added.map_err(SourceError::Fatal)?;
                }
                let found = consumer
                    .offsets_for_times(asked, WATERMARKS_TIMEOUT)
                    .map_err(|e| SourceError::Resume {
                        partitions: self.topics.labels(partitions),
                        reason: format!(
                            "asking the broker for the offsets at start_from's time: {e}"
                        ),
                    })?;
                let starts: BTreeMap<SourcePartition, Offset> = found
                    .elements()
                    .iter()
                    .filter_map(|e| {
                        Some((self.topics.partition(e.topic(), e.partition())?, e.offset()))
                    })
                    .collect();
                info!(
                    starts = ?self.topics.labelled(&starts),
                    "partitions no table knows start at start_from's time"
                );
                starts
            }
        })
    }

    /// The broker's first offset and high watermark of `partition`.
    fn watermarks(
        &self,
        consumer: &BaseConsumer<Self>,
        partition: SourcePartition,
    ) -> Result<(i64, i64), SourceError> {
        let topic = self.topics.name(partition.topic);
        consumer
            .fetch_watermarks(topic, partition.partition, WATERMARKS_TIMEOUT)
            .map_err(|e| SourceError::Resume {
                partitions: self.topics.labels(&[partition]),
                reason: format!("asking the broker for the partition's offsets: {e}"),
            })
    }

    /// `offset`, which `start_from` gives for `partition`, once the broker is
    /// known to hold it: one outside the partition is a mistake in the spec.
    fn held_start(
        &self,
        consumer: &BaseConsumer<Self>,
        partition: SourcePartition,
        offset: i64,
    ) -> Result<i64, SourceError> {
        let (log_start, high_watermark) = self.watermarks(consumer, partition)?;
        match Gap::between(offset, log_start, high_watermark) {
            None => Ok(offset),
            Some(_) => Err(SourceError::Spec(JobError::Invalid {
                file: self.job_file.clone(),
                key: "source.start_from".into(),
                expected: format!(
                    "an offset the broker holds for partition {} \
                     ({log_start} to {high_watermark})",
                    partition.partition
                ),
                found: format!("{offset}"),
            })),
        }
    }

    /// Where to read `partition` from, `recorded` being where this process
    /// must go on: `recorded` itself while the broker holds it. Otherwise
    /// resuming would make librdkafka reset, and the job would skip deleted
    /// messages or, after a reset, drop every new message below `recorded`
    /// as already stored: the job fails, or with `on_data_loss = skip` goes
    /// on after messages deleted unread, saying how many.
    fn held(
        &self,
        consumer: &BaseConsumer<Self>,
        partition: SourcePartition,
        recorded: i64,
    ) -> Result<i64, SourceError> {
        let (log_start, high_watermark) = self.watermarks(consumer, partition)?;
        match Gap::between(recorded, log_start, high_watermark) {
            None => Ok(recorded),
            Some(Gap::Deleted { log_start }) if self.on_data_loss == OnDataLoss::Skip => {
                let skipped = log_start - recorded;
                warn!(
                    topic = self.topics.name(partition.topic),
                    partition = partition.partition,
                    recorded,
                    log_start,
                    skipped,
                    "the broker deleted messages before weir read them; going on from the oldest left (source.on_data_loss = skip)"
                );
                self.metrics
                    .skipped_offsets(&self.topics.label(partition), skipped as u64);
                Ok(log_start)
            }
            Some(gap) => Err(SourceError::PositionGone {
                topic: self.topics.name(partition.topic).to_owned(),
                partition: partition.partition,
                recorded,
                gap,
            }),
        }
    }

    /// After librdkafka found a fetch position out of range mid-run (its
    /// `auto.offset.reset` is `error`): each assigned partition whose
    /// position the broker no longer holds goes where [`Self::held`] says.
    pub(super) fn out_of_range(&self, consumer: &BaseConsumer<Self>) -> Result<(), SourceError> {
        let positions = consumer.position().map_err(SourceError::Fatal)?;
        for element in positions.elements() {
            let Offset::Offset(position) = element.offset() else {
                continue;
            };
            let Some(partition) = self.topics.partition(element.topic(), element.partition())
            else {
                continue;
            };
            let resumed = self.held(consumer, partition, position)?;
            if resumed != position {
                let seek = consumer.seek(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(resumed),
                    WATERMARKS_TIMEOUT,
                );
                seek.map_err(SourceError::Fatal)?;
            }
        }
        Ok(())
    }
}

/// The partitions of the job's topics in `tpl`.
fn partitions_of(topics: &Topics, tpl: &TopicPartitionList) -> Vec<SourcePartition> {
    tpl.elements()
        .iter()
        .filter_map(|e| topics.partition(e.topic(), e.partition()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Gap;

    #[test]
    fn a_position_is_held_from_the_log_start_up_to_the_high_watermark() {
        assert_eq!(Gap::between(100, 0, 200), None);
        assert_eq!(Gap::between(100, 0, 100), None, "caught up");
        assert_eq!(
            Gap::between(100, 150, 200),
            Some(Gap::Deleted { log_start: 150 })
        );
        assert_eq!(
            Gap::between(100, 0, 40),
            Some(Gap::Reset { high_watermark: 40 })
        );
        // Retention that deleted only what the tables hold leaves no gap.
        assert_eq!(Gap::between(100, 100, 100), None);
    }
}
