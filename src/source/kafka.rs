//! The Kafka micro-batch poller.
//!
//! The consumer is a librdkafka `BaseConsumer` in the job's consumer group, polled
//! from the trigger loop's own thread. Its rebalance callback is where
//! exactly-once starts: on every assignment it asks the sink (through
//! [`ResumePositions`]) for the lowest offset any Delta table still needs, and
//! assigns the partitions *at* those offsets, so nothing is ever consumed from a
//! position the tables did not choose. Consumer-group offsets are committed only
//! for lag visibility and are used only where the tables know nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::{Message, MicroBatch};
use crate::job::{Batching, Job};

/// How long one poll blocks while no batch is open, so a stop request is seen promptly.
const IDLE_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot create the Kafka consumer for {brokers}: {source}")]
    Create { brokers: String, source: KafkaError },
    #[error("cannot subscribe to topic `{topic}`: {source}")]
    Subscribe { topic: String, source: KafkaError },
    #[error("cannot decide where to resume partitions {partitions:?}: {reason}")]
    Resume {
        partitions: Vec<i32>,
        reason: String,
    },
    #[error("fatal Kafka consumer error: {0}")]
    Fatal(KafkaError),
}

/// Answers "from which offset must each of these partitions be re-read?" on a
/// partition assignment. It is called from inside the consumer's poll, so it
/// blocks; the sink implements it by reading the Delta `txn` versions.
pub trait ResumePositions: Send + Sync + 'static {
    /// Offsets for the partitions the tables know; partitions left out fall back
    /// to the consumer group's committed offset, then to the job's `start_from`.
    fn resume_positions(&self, partitions: &[i32]) -> Result<BTreeMap<i32, i64>, String>;
}

/// The consumer context: rebalance handling with Delta-chosen positions.
pub struct WeirContext {
    topic: String,
    resolver: Arc<dyn ResumePositions>,
    /// Partitions taken away since the trigger loop last looked: their messages
    /// in the open batch must not be committed by this process.
    revoked: Mutex<Vec<i32>>,
    /// A resume failure seen in the callback, surfaced by the next poll.
    failure: Mutex<Option<SourceError>>,
}

impl ClientContext for WeirContext {}

impl ConsumerContext for WeirContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.position_assignment(&partitions, tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(?partitions, "partitions revoked");
                self.revoked.lock().unwrap().extend(&partitions);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                warn!(error = ?other, "rebalance error; dropping the assignment");
                self.revoked.lock().unwrap().extend(&partitions);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "applying the rebalance failed");
        }
    }
}

impl WeirContext {
    fn position_assignment(&self, partitions: &[i32], tpl: &mut TopicPartitionList) {
        match self.resolver.resume_positions(partitions) {
            Ok(positions) => {
                for (&partition, &offset) in &positions {
                    if let Err(e) =
                        tpl.set_partition_offset(&self.topic, partition, Offset::Offset(offset))
                    {
                        warn!(partition, error = %e, "cannot set the resume offset");
                    }
                }
                info!(?partitions, resume = ?positions, "partitions assigned");
            }
            Err(reason) => {
                *self.failure.lock().unwrap() = Some(SourceError::Resume {
                    partitions: partitions.to_vec(),
                    reason,
                });
            }
        }
    }
}

/// A job's Kafka input: turns the consumer's message stream into micro-batches.
pub struct KafkaSource {
    consumer: BaseConsumer<WeirContext>,
    topic: String,
    batching: Batching,
}

impl KafkaSource {
    /// Creates the consumer and subscribes. `bootstrap` is the resolved broker
    /// list (the job's, or the embedded cluster's).
    pub fn connect(
        job: &Job,
        bootstrap: &str,
        resolver: Arc<dyn ResumePositions>,
    ) -> Result<Self, SourceError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", &job.source.group)
            .set("client.id", format!("weir-{}", job.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", job.source.start_from.as_offset_reset());
        for (key, value) in &job.source.properties {
            config.set(key, value);
        }
        let context = WeirContext {
            topic: job.source.topic.clone(),
            resolver,
            revoked: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
        };
        let consumer: BaseConsumer<WeirContext> =
            config
                .create_with_context(context)
                .map_err(|source| SourceError::Create {
                    brokers: bootstrap.to_owned(),
                    source,
                })?;
        consumer
            .subscribe(&[&job.source.topic])
            .map_err(|source| SourceError::Subscribe {
                topic: job.source.topic.clone(),
                source,
            })?;
        Ok(Self {
            consumer,
            topic: job.source.topic.clone(),
            batching: job.batching,
        })
    }

    /// Blocks until a micro-batch is ready: `max_events` buffered; or at least
    /// `min_events` and nothing more ready right now; or `max_wait` since the
    /// batch's first event. Returns `None` when `stop` is set and no batch is open;
    /// an open batch is returned (to be committed) when `stop` is set.
    pub fn next_batch(&self, stop: &AtomicBool) -> Result<Option<MicroBatch>, SourceError> {
        loop {
            let messages = self.fill(stop)?;
            if !messages.is_empty() {
                return Ok(Some(MicroBatch {
                    topic: self.topic.clone(),
                    messages,
                }));
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
        }
    }

    fn fill(&self, stop: &AtomicBool) -> Result<Vec<Message>, SourceError> {
        let Batching {
            min_events,
            max_events,
            max_wait,
        } = self.batching;
        let mut messages: Vec<Message> = Vec::with_capacity(max_events);
        let mut deadline: Option<Instant> = None;
        loop {
            self.surface_failure()?;
            self.drop_revoked(&mut messages);
            if messages.is_empty() {
                deadline = None;
            }
            let now = Instant::now();
            let expired = deadline.is_some_and(|d| now >= d);
            if messages.len() >= max_events || expired || stop.load(Ordering::Relaxed) {
                break;
            }
            let timeout = match deadline {
                None => IDLE_POLL,
                Some(_) if messages.len() >= min_events => Duration::ZERO,
                Some(d) => (d - now).min(IDLE_POLL),
            };
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => {
                    deadline.get_or_insert(now + max_wait);
                    messages.push(to_message(&m));
                }
                Some(Err(e)) => self.on_error(e)?,
                None if messages.len() >= min_events => break,
                None => {}
            }
        }
        // A revocation seen during the last poll.
        self.drop_revoked(&mut messages);
        Ok(messages)
    }

    /// Records progress in the consumer group, for lag monitoring only:
    /// correctness never depends on it (the Delta txn versions do).
    /// The partitions of the topic this consumer is assigned now.
    pub fn assigned(&self) -> Vec<i32> {
        self.consumer.assignment().map_or_else(
            |_| Vec::new(),
            |tpl| {
                tpl.elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            },
        )
    }

    pub fn commit_offsets(&self, next_offsets: &BTreeMap<i32, i64>) {
        let mut tpl = TopicPartitionList::new();
        for (&partition, &offset) in next_offsets {
            if let Err(e) = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
            {
                warn!(partition, error = %e, "cannot build the offset commit");
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            debug!(error = %e, "consumer-group offset commit failed (lag display only)");
        }
    }

    fn surface_failure(&self) -> Result<(), SourceError> {
        match self.consumer.context().failure.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn drop_revoked(&self, messages: &mut Vec<Message>) {
        let revoked = std::mem::take(&mut *self.consumer.context().revoked.lock().unwrap());
        if !revoked.is_empty() {
            let before = messages.len();
            messages.retain(|m| !revoked.contains(&m.partition));
            if before != messages.len() {
                info!(
                    dropped = before - messages.len(),
                    ?revoked,
                    "dropped uncommitted messages of revoked partitions; their new owner re-reads them"
                );
            }
        }
    }

    fn on_error(&self, error: KafkaError) -> Result<(), SourceError> {
        match error {
            KafkaError::PartitionEOF(_) => Ok(()),
            KafkaError::MessageConsumptionFatal(_) => Err(SourceError::Fatal(error)),
            other => {
                warn!(error = %other, "Kafka consumer error (librdkafka retries by itself)");
                Ok(())
            }
        }
    }
}

fn to_message(m: &BorrowedMessage<'_>) -> Message {
    Message {
        partition: m.partition(),
        offset: m.offset(),
        kafka_ts: m.timestamp().to_millis(),
        payload: m.payload().map(<[u8]>::to_vec),
    }
}
