//! The Kafka micro-batch poller.
//!
//! The consumer is a librdkafka `BaseConsumer` in the job's consumer group, polled
//! by a thread of its own that assembles micro-batches into a bounded queue.
//! When the queue is full (the sink is slower than the input) the thread pauses
//! the partitions and keeps polling: the group keeps its heartbeat and sees
//! rebalances, nothing more is fetched, and memory stays bounded whatever the
//! input rate; it resumes them once there is room. A batch whose partition
//! was revoked (or revoked and assigned again) while it waited is dropped when
//! it leaves the queue: the partition's owner re-reads it from the tables'
//! positions. Its rebalance callback is where
//! exactly-once starts: on every assignment it asks the sink (through
//! [`Rebalance`]) for the lowest offset any Delta table still needs, and
//! assigns the partitions *at* those offsets, so nothing is ever consumed from a
//! position the tables did not choose. Consumer-group offsets are committed only
//! for lag visibility and never position anything. When idle, the thread also
//! reports positions the consumer moved to past records it never delivers
//! (transaction markers), so the tables' positions reach the high watermark.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers as _, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Message, MicroBatch, Offsets, PROBE_HEADER, Payloads};
use crate::config::{
    Batching, Job, JobError, KafkaColumns, OnDataLoss, SourcePartition, StartFrom, Topics,
};
use crate::ingest::adaptive::BatchCap;
use crate::metrics::JobMetrics;

/// Micro-batches the poll thread may hold ready before it pauses its partitions.
pub const QUEUE_BATCHES: usize = 2;

/// How long an assignment waits for a partition's offsets from the broker.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one poll blocks while no batch is open, so a stop request is seen promptly.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Room made for a batch's messages up front: a batch cut by time at a low
/// rate should not allocate for the cap.
const RESERVE: usize = 10_000;
/// How long one poll blocks while a cut batch grows waiting for queue room, so
/// room is noticed promptly.
const GROW_POLL: Duration = Duration::from_millis(2);
/// How long a full batch waits for queue room before the partitions are paused.
const PAUSE_AFTER: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot create the Kafka consumer for {brokers}: {source}")]
    Create { brokers: String, source: KafkaError },
    #[error("cannot subscribe to topics `{topics}`: {source}")]
    Subscribe { topics: Topics, source: KafkaError },
    #[error("cannot decide where to resume partitions {partitions:?}: {reason}")]
    Resume {
        /// As [`Topics::label`] names them.
        partitions: Vec<String>,
        reason: String,
    },
    #[error(
        "topic `{topic}` partition {partition}: the job's tables hold every offset below {recorded}, but {gap}; the job stops rather than go on past the gap silently"
    )]
    PositionGone {
        topic: String,
        partition: i32,
        recorded: i64,
        gap: Gap,
    },
    #[error("cannot ask the broker for the high watermarks of topic `{topic}`: {error}")]
    Watermarks { topic: String, error: KafkaError },
    #[error("fatal Kafka consumer error: {0}")]
    Fatal(KafkaError),
    #[error("the consumer cannot be configured as specified")]
    Spec(#[from] crate::config::JobError),
}

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
    revoked: Mutex<Vec<SourcePartition>>,
    /// A resume failure seen in the callback, surfaced by the next poll.
    failure: Mutex<Option<SourceError>>,
    /// Per assigned partition, the number of the assignment it belongs to: a
    /// queued batch is only good while its partitions' numbers are unchanged.
    generations: Mutex<Generations>,
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
    fn out_of_range(&self, consumer: &BaseConsumer<Self>) -> Result<(), SourceError> {
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

/// Per assigned partition, the number of the assignment it belongs to.
pub type Generations = BTreeMap<SourcePartition, u64>;

/// A micro-batch with the assignment numbers of its partitions when it was cut.
#[derive(Debug)]
pub struct Polled {
    pub batch: MicroBatch,
    pub generations: Generations,
    /// Per partition, the consumer's position where it moved past records it
    /// never delivers (the markers that end transactions, aborted records)
    /// with nothing after them: the tables' positions must move there too,
    /// or they stay short of the high watermark and show lag for good.
    pub progress: Offsets,
}

impl Polled {
    /// Per partition, the next offset once this is committed.
    pub fn next_offsets(&self) -> Offsets {
        let mut next = self.batch.next_offsets();
        for (&p, &position) in &self.progress {
            let e = next.entry(p).or_insert(position);
            *e = (*e).max(position);
        }
        next
    }

    /// Per partition, the first offset this covers.
    pub fn first_offsets(&self) -> Offsets {
        let mut first = self.progress.clone();
        first.extend(self.batch.first_offsets());
        first
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.progress.is_empty()
    }

    /// Takes the latency probes out of the batch; the positions after them
    /// become progress, so the commit moves the tables past them as past
    /// any record (the probe sees its offset held, however quiet the
    /// partition). Returns how many there were.
    pub fn strip_probes(&mut self) -> usize {
        let before = self.batch.messages.len();
        let progress = &mut self.progress;
        self.batch.messages.retain(|m| {
            if m.probe {
                let e = progress.entry(m.partition).or_insert(m.offset + 1);
                *e = (*e).max(m.offset + 1);
            }
            !m.probe
        });
        before - self.batch.messages.len()
    }

    /// Drops the messages and progress of its partitions that were revoked
    /// (or revoked and assigned again) since it was polled, going by the
    /// assignment now (`current`); returns those partitions.
    pub fn drop_moved(&mut self, current: &Generations) -> Vec<SourcePartition> {
        let moved: Vec<SourcePartition> = self
            .next_offsets()
            .into_keys()
            .filter(|p| current.get(p) != self.generations.get(p))
            .collect();
        self.batch
            .messages
            .retain(|m| !moved.contains(&m.partition));
        self.progress.retain(|p, _| !moved.contains(p));
        moved
    }
}

type Queued = Result<Polled, SourceError>;

/// A job's Kafka consumer, for what the trigger loop asks of it besides
/// batches: its assignment and the group offset commits.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<WeirContext>>,
    topics: Topics,
}

/// The micro-batches the poll thread cuts, from its bounded queue.
pub struct Batches {
    consumer: Arc<BaseConsumer<WeirContext>>,
    queue: mpsc::Receiver<Queued>,
    metrics: JobMetrics,
}

impl KafkaSource {
    /// Creates the consumer, subscribes, and starts the poll thread, which
    /// runs until `stop` is set (its last batch is still delivered) or the
    /// source is dropped. `bootstrap` is the resolved broker list; batches
    /// are cut at `cap` events at most.
    pub fn connect(
        job: &Job,
        bootstrap: &str,
        resolver: Arc<dyn Rebalance>,
        metrics: JobMetrics,
        stop: Arc<AtomicBool>,
        cap: BatchCap,
    ) -> Result<(Self, Batches), SourceError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", &job.source.group)
            .set("client.id", format!("weir-{}", job.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Every assignment is positioned explicitly (`position_assignment`),
            // so librdkafka resets only when the broker lost a position mid-run:
            // it must say so (`on_error`), never jump silently.
            .set("auto.offset.reset", "error")
            .set("statistics.interval.ms", "5000")
            // librdkafka's 500 ms is how long a broker may hold a fetch open when
            // it has nothing. Brokers that hold it for the whole wait even as
            // data arrives (librdkafka's mock cluster, tansu) would then deliver
            // in half-second bursts; Apache Kafka answers early and only sees
            // more fetches while the topic is idle.
            .set("fetch.wait.max.ms", "10");
        bound_prefetch(&mut config);
        for (key, value) in job.kafka_properties()? {
            config.set(key, value);
        }
        let context = WeirContext {
            topics: job.source.topics.clone(),
            resolver,
            revoked: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            generations: Mutex::new(BTreeMap::new()),
            assignments: AtomicU64::new(0),
            start_from: job.source.start_from.clone(),
            job_file: job.file.clone(),
            on_data_loss: job.source.on_data_loss,
            metrics: metrics.clone(),
        };
        let consumer: BaseConsumer<WeirContext> =
            config
                .create_with_context(context)
                .map_err(|source| SourceError::Create {
                    brokers: bootstrap.to_owned(),
                    source,
                })?;
        let topics: Vec<&str> = job
            .source
            .topics
            .names()
            .iter()
            .map(String::as_str)
            .collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| SourceError::Subscribe {
                topics: job.source.topics.clone(),
                source,
            })?;
        let consumer = Arc::new(consumer);
        let (tx, queue) = mpsc::channel(QUEUE_BATCHES);
        let poller = Poller {
            consumer: consumer.clone(),
            topics: job.source.topics.clone(),
            kept: job.contract.kafka.clone(),
            payloads: Payloads::default(),
            batching: job.batching,
            cap: cap.clone(),
            metrics: metrics.clone(),
            paused: false,
            delivered: BTreeMap::new(),
            reported: BTreeMap::new(),
            last_cut: None,
        };
        std::thread::Builder::new()
            .name(format!("weir-poll-{}", job.name))
            .spawn(move || poller.run(&tx, &stop))
            .expect("the OS starts a thread");
        let batches = Batches {
            consumer: consumer.clone(),
            queue,
            metrics,
        };
        let source = Self {
            consumer,
            topics: job.source.topics.clone(),
        };
        Ok((source, batches))
    }

    /// Per assigned partition (the keys: the assignment), the number of its
    /// current assignment.
    pub fn generations(&self) -> Generations {
        self.consumer.context().generations.lock().unwrap().clone()
    }

    /// Records progress in the consumer group, for lag monitoring only:
    /// correctness never depends on it (the Delta txn versions do).
    pub fn commit_offsets(&self, next_offsets: &Offsets) {
        let mut tpl = TopicPartitionList::new();
        for (&p, &offset) in next_offsets {
            let topic = self.topics.name(p.topic);
            if let Err(e) = tpl.add_partition_offset(topic, p.partition, Offset::Offset(offset)) {
                warn!(partition = self.topics.label(p), error = %e, "cannot build the offset commit");
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            debug!(error = %e, "consumer-group offset commit failed (lag display only)");
        }
    }
}

impl Batches {
    /// The next micro-batch, without messages of partitions this consumer has
    /// lost since it was cut. `None` once the poll thread has stopped.
    pub async fn next_batch(&mut self) -> Result<Option<Polled>, SourceError> {
        loop {
            self.metrics
                .queue("poll", self.queue.len(), self.queue.max_capacity());
            let Some(polled) = self.queue.recv().await else {
                return Ok(None);
            };
            let mut polled = polled?;
            let current = self.consumer.context().generations.lock().unwrap().clone();
            let before = polled.batch.len();
            let moved = polled.drop_moved(&current);
            if !moved.is_empty() {
                info!(
                    dropped = before - polled.batch.len(),
                    moved = ?polled.batch.topics.labels(&moved),
                    "dropped queued messages of partitions reassigned since; their owner re-reads them"
                );
            }
            if !polled.is_empty() {
                return Ok(Some(polled));
            }
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Closing the queue ends the poll thread at its next look; the
        // consumer leaves the group when the thread lets go of it. Not joined:
        // the thread may be inside a rebalance callback that waits on this
        // runtime, and blocking here could starve it.
        self.queue.close();
    }
}

/// What librdkafka may prefetch: with the queue's batches, the bound on
/// buffered input whatever the input rate. Once the prefetch queue is over
/// that bound librdkafka postpones each partition's next fetch by
/// `fetch.queue.backoff.ms`, 1 s by default: a consumer that drains its queue
/// faster than that (any backlog, on a machine with cores to spare) then
/// stalls up to a second every few MiB. Measured on a 16-core machine
/// (`benches/README.md`, "Cores"): 0.8-s gaps every 180,000 events, more than
/// half of a backlog drain's time.
pub fn bound_prefetch(config: &mut ClientConfig) {
    config
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.queue.backoff.ms", "10");
}

/// A client of `bootstrap` with a job's `[source.properties]` (security,
/// timeouts) on top: every client weir makes of a job's cluster besides its
/// consumer (status's watermark reads, a bench sweep's clients) must reach it
/// as that consumer does.
pub fn client_config(bootstrap: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// Per partition of `topics` (those in `partitions`, or all the broker
/// lists), the offset after its newest message (its high watermark), asked
/// of `bootstrap` as the job's consumer would (with its `properties`).
pub fn high_watermarks(
    bootstrap: &str,
    properties: &[(String, String)],
    topics: &Topics,
    partitions: Option<&[SourcePartition]>,
    timeout: Duration,
) -> Result<Offsets, (String, KafkaError)> {
    let consumer: BaseConsumer = client_config(bootstrap, properties)
        .create()
        .map_err(|e| (topics.to_string(), e))?;
    let mut listed = Vec::new();
    let partitions = match partitions {
        Some(partitions) => partitions,
        None => {
            for (topic, name) in topics.iter() {
                let metadata = consumer
                    .fetch_metadata(Some(name), timeout)
                    .map_err(|e| (name.to_owned(), e))?;
                let ids = metadata.topics().iter().flat_map(|t| t.partitions());
                listed.extend(ids.map(|p| SourcePartition {
                    topic,
                    partition: p.id(),
                }));
            }
            &listed
        }
    };
    let mut out = BTreeMap::new();
    for &p in partitions {
        let name = topics.name(p.topic);
        let (_, high) = consumer
            .fetch_watermarks(name, p.partition, timeout)
            .map_err(|e| (name.to_owned(), e))?;
        out.insert(p, high);
    }
    Ok(out)
}

/// The poll thread: assembles micro-batches and queues them, pausing the
/// partitions while the queue is full.
struct Poller {
    consumer: Arc<BaseConsumer<WeirContext>>,
    topics: Topics,
    /// What of each record besides its value the job stores.
    kept: KafkaColumns,
    payloads: Payloads,
    batching: Batching,
    /// The batch cap in force: `max_events`, or the adaptive controller's.
    cap: BatchCap,
    metrics: JobMetrics,
    paused: bool,
    /// Per partition, the offset after the newest message polled.
    delivered: Offsets,
    /// Per partition, the position last reported as progress.
    reported: Offsets,
    /// When the last batch was cut: the next is cut `batching.interval`
    /// later at the earliest, unless it fills first.
    last_cut: Option<Instant>,
}

impl Poller {
    fn run(mut self, queue: &mpsc::Sender<Queued>, stop: &AtomicBool) {
        let mut carried = Vec::new();
        let mut cpu = crate::task::thread_cpu();
        loop {
            if queue.is_closed() {
                return;
            }
            let started = Instant::now();
            let polled = self
                .fill(std::mem::take(&mut carried), stop, queue)
                .map(|messages| {
                    let generations = self.consumer.context().generations.lock().unwrap().clone();
                    let progress = if messages.is_empty() {
                        self.stepped_over()
                    } else {
                        BTreeMap::new()
                    };
                    Polled {
                        batch: MicroBatch {
                            topics: self.topics.clone(),
                            messages,
                        },
                        generations,
                        progress,
                    }
                });
            let failed = polled.is_err();
            if let Ok(p) = &polled {
                if p.is_empty() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
                self.metrics.stage("poll", started.elapsed());
                let used = crate::task::thread_cpu();
                self.metrics
                    .poll_cpu
                    .inc_by(used.saturating_sub(cpu).as_secs_f64());
                cpu = used;
            }
            if !self.enqueue(queue, polled, &mut carried) || failed {
                return;
            }
        }
    }

    /// Queues `item`. While the queue is full the stages after this one are
    /// busy, so the waiting batch keeps growing up to the cap (a batch that
    /// waits anyway may as well carry more: that is what lets a loop that
    /// fell behind catch up). At the cap it waits; past [`PAUSE_AFTER`] the
    /// partitions are paused (pausing drops librdkafka's prefetched messages,
    /// so short waits do without) and polling goes on (rebalances); a message
    /// that still arrives (from a partition assigned meanwhile) is carried
    /// into the next batch. Returns `false` when the queue is closed.
    fn enqueue(
        &mut self,
        queue: &mpsc::Sender<Queued>,
        item: Queued,
        carried: &mut Vec<Message>,
    ) -> bool {
        let mut item = item;
        let waiting = Instant::now();
        let mut grown = false;
        // Of the waiting batch; only ever too high (revoked messages dropped).
        let mut bytes = item
            .as_ref()
            .map_or(0, |p| payload_bytes(&p.batch.messages));
        loop {
            // Only the poller sends, so room now means the send below succeeds.
            if grown && queue.capacity() > 0 {
                if let Ok(polled) = &mut item {
                    self.refresh(polled);
                }
                grown = false;
            }
            match queue.try_send(item) {
                Ok(()) => {
                    self.set_paused(false);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    item = back;
                    self.cap.queue_full();
                    let growing = matches!(&item, Ok(p) if !self.is_full(p.batch.len(), bytes));
                    if !growing && waiting.elapsed() < PAUSE_AFTER {
                        std::thread::sleep(GROW_POLL);
                        continue;
                    }
                    self.set_paused(!growing);
                    let timeout = if growing { GROW_POLL } else { IDLE_POLL };
                    let waiting_batch = item.as_mut().ok().map(|p| &mut p.batch.messages);
                    let held = waiting_batch.into_iter().chain([&mut *carried]);
                    match (self.poll(timeout, held), &mut item) {
                        (Ok(Some(m)), Ok(polled)) if growing => {
                            bytes += m.payload_len();
                            polled.batch.messages.push(m);
                            grown = true;
                        }
                        (Ok(Some(m)), _) => carried.push(m),
                        (Ok(None), _) => {}
                        (Err(fatal), _) => {
                            let _ = queue.blocking_send(Err(fatal));
                            return false;
                        }
                    }
                }
            }
        }
    }

    /// Makes a batch that grew while it waited for room stand for the
    /// assignment as it is now (once, when it is about to be queued, not per
    /// message added).
    fn refresh(&self, polled: &mut Polled) {
        polled.generations = self.consumer.context().generations.lock().unwrap().clone();
    }

    /// Pauses (or resumes) every assigned partition. Pausing again after a
    /// rebalance covers partitions assigned meanwhile.
    fn set_paused(&mut self, paused: bool) {
        if !paused && !self.paused {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        if let Err(e) = result {
            warn!(error = %e, paused, "cannot pause or resume the partitions");
        }
        if paused != self.paused {
            debug!(
                paused,
                "queue full: partitions paused until the sink catches up"
            );
            self.metrics.paused.set(i64::from(paused));
            if paused {
                self.metrics.pauses.inc();
            }
        }
        self.paused = paused;
    }

    /// Blocks until a micro-batch is ready: full (the batch cap or
    /// `max_bytes`); or, once `interval` has passed since the last cut, at
    /// least `min_events` and nothing more ready right now, or `max_wait`
    /// since the batch's first event. Returns what it has (maybe nothing) once `stop` is
    /// set or nobody takes batches any more (a pipeline that ended without
    /// setting `stop`, by a panic: an idle poll thread would otherwise stay in
    /// the group for good, holding partitions no one reads).
    fn fill(
        &mut self,
        carried: Vec<Message>,
        stop: &AtomicBool,
        queue: &mpsc::Sender<Queued>,
    ) -> Result<Vec<Message>, SourceError> {
        let Batching {
            min_events,
            max_wait,
            interval,
            ..
        } = self.batching;
        let not_before = self.last_cut.map(|cut| cut + interval);
        let mut messages: Vec<Message> = carried;
        messages.reserve(self.cap.get().min(RESERVE));
        let mut bytes = payload_bytes(&messages);
        let mut deadline: Option<Instant> =
            (!messages.is_empty()).then(|| Instant::now() + max_wait);
        loop {
            self.surface_failure()?;
            if messages.is_empty() {
                deadline = None;
            }
            let now = Instant::now();
            let held_back = not_before.filter(|t| now < *t);
            let expired = held_back.is_none() && deadline.is_some_and(|d| now >= d);
            if self.is_full(messages.len(), bytes)
                || expired
                || stop.load(Ordering::Relaxed)
                || queue.is_closed()
            {
                break;
            }
            let timeout = match (deadline, held_back) {
                (None, _) => IDLE_POLL,
                (Some(_), Some(t)) => (t - now).min(IDLE_POLL),
                (Some(_), None) if messages.len() >= min_events => Duration::ZERO,
                (Some(d), None) => (d - now).min(IDLE_POLL),
            };
            let held = messages.len();
            let polled = self.poll(timeout, [&mut messages])?;
            if messages.len() != held {
                bytes = payload_bytes(&messages);
            }
            match polled {
                Some(m) => {
                    deadline.get_or_insert(now + max_wait);
                    bytes += m.payload_len();
                    messages.push(m);
                }
                None if held_back.is_none() && messages.len() >= min_events => break,
                // Idle: back to the caller, which reports what the consumer
                // stepped over (commit markers), so lag closes while idle.
                None if messages.is_empty() => break,
                None => {}
            }
        }
        if !messages.is_empty() {
            self.last_cut = Some(Instant::now());
        }
        Ok(messages)
    }

    /// While idle: each assigned partition whose position is past the newest
    /// message polled from it, once per position. Everything below a
    /// position was delivered (and queued ahead of this report) or stepped
    /// over by librdkafka; the commit moves only tables that are behind it.
    fn stepped_over(&mut self) -> Offsets {
        let Ok(positions) = self.consumer.position() else {
            return BTreeMap::new();
        };
        let mut progress = BTreeMap::new();
        for element in positions.elements() {
            let partition = self.topics.partition(element.topic(), element.partition());
            let (Some(partition), Offset::Offset(position)) = (partition, element.offset()) else {
                continue;
            };
            let past = self.delivered.get(&partition) != Some(&position);
            if past && self.reported.insert(partition, position) != Some(position) {
                progress.insert(partition, position);
            }
        }
        progress
    }

    /// Whether a batch is cut: at the batch cap in events, or at
    /// `batching.max_bytes` of payload, which keeps the queues' memory
    /// bounded when messages are large.
    fn is_full(&self, events: usize, bytes: usize) -> bool {
        events >= self.cap.get() || bytes >= self.batching.max_bytes
    }

    fn surface_failure(&self) -> Result<(), SourceError> {
        match self.consumer.context().failure.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Polls once. A rebalance callback runs inside the poll: the messages
    /// `held` of partitions it revoked are dropped before the message the
    /// poll returns (which belongs to the assignment as it is now) joins
    /// them. Dropping later would also drop what was fetched after the
    /// partition was assigned again, and its next commit would skip it.
    fn poll<'a>(
        &mut self,
        timeout: Duration,
        held: impl IntoIterator<Item = &'a mut Vec<Message>>,
    ) -> Result<Option<Message>, SourceError> {
        let polled = match self.consumer.poll(timeout) {
            Some(Ok(m)) => match self.partition_of(&m) {
                Some(partition) => {
                    self.delivered.insert(partition, m.offset() + 1);
                    Some(to_message(partition, &m, &self.kept, &mut self.payloads))
                }
                // The consumer subscribes to the job's topics only.
                None => None,
            },
            Some(Err(e)) => {
                self.on_error(e)?;
                None
            }
            None => None,
        };
        let revoked = std::mem::take(&mut *self.consumer.context().revoked.lock().unwrap());
        if !revoked.is_empty() {
            for messages in held {
                let before = messages.len();
                messages.retain(|m| !revoked.contains(&m.partition));
                if before != messages.len() {
                    info!(
                        dropped = before - messages.len(),
                        revoked = ?self.topics.labels(&revoked),
                        "dropped uncommitted messages of revoked partitions; their new owner re-reads them"
                    );
                }
            }
        }
        Ok(polled)
    }

    /// The job's partition `m` is of. A job of one topic subscribes to that
    /// topic alone, so its name is not read: rdkafka checks a topic name is
    /// UTF-8 each time it is asked, and that was a sixth of the poll thread's
    /// time.
    fn partition_of(&self, m: &BorrowedMessage<'_>) -> Option<SourcePartition> {
        if self.topics.several() {
            return self.topics.partition(m.topic(), m.partition());
        }
        Some(SourcePartition::first(m.partition()))
    }

    fn on_error(&self, error: KafkaError) -> Result<(), SourceError> {
        match error {
            KafkaError::PartitionEOF(_) => Ok(()),
            KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset) => {
                self.consumer.context().out_of_range(&self.consumer)
            }
            KafkaError::MessageConsumptionFatal(_) => Err(SourceError::Fatal(error)),
            other => {
                warn!(error = %other, "Kafka consumer error (librdkafka retries by itself)");
                Ok(())
            }
        }
    }
}

fn payload_bytes(messages: &[Message]) -> usize {
    messages.iter().map(Message::payload_len).sum()
}

/// The record as weir keeps it; its key and headers only when the job stores them.
fn to_message(
    partition: SourcePartition,
    m: &BorrowedMessage<'_>,
    kept: &KafkaColumns,
    payloads: &mut Payloads,
) -> Message {
    let headers = |h: &BorrowedHeaders| {
        h.iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect()
    };
    let payload = m.payload();
    Message {
        partition,
        offset: m.offset(),
        kafka_ts: m.timestamp().to_millis(),
        payload: payload.map(|p| payloads.copy(p)),
        key: m.key().filter(|_| kept.key.is_some()).map(<[u8]>::to_vec),
        headers: kept
            .headers
            .then(|| m.headers().map(headers).unwrap_or_default()),
        probe: payload.is_none_or(<[u8]>::is_empty) && is_probe(m),
    }
}

/// Whether `m` carries [`PROBE_HEADER`]. Asked only of records with an empty
/// value, as every probe is: librdkafka parses a record's headers into a
/// list of their own allocations when first asked, even when there are
/// none, and asking every record was the largest cost of the poll thread
/// after copying the values. A record with a value is an event whatever its
/// headers, so none is stepped over unseen.
fn is_probe(m: &BorrowedMessage<'_>) -> bool {
    m.headers()
        .is_some_and(|h| h.iter().any(|h| h.key == PROBE_HEADER))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{Gap, Message, MicroBatch, Polled};
    use crate::config::{SourcePartition, Topics};

    #[test]
    fn a_bounded_prefetch_refills_without_a_second_long_pause() {
        let mut config = rdkafka::ClientConfig::new();
        super::bound_prefetch(&mut config);
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("16384"));
        let backoff: u64 = config
            .get("fetch.queue.backoff.ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            backoff <= 10,
            "librdkafka's default of 1000 ms stalls a drain"
        );
    }

    #[test]
    fn probes_leave_the_batch_and_move_its_positions_past_them() {
        let p = SourcePartition::first;
        let msg = |partition, offset, probe| Message {
            partition: p(partition),
            offset,
            probe,
            ..Message::default()
        };
        let mut polled = Polled {
            batch: MicroBatch {
                topics: Topics::single("t"),
                messages: vec![msg(0, 4, false), msg(0, 5, true), msg(1, 8, true)],
            },
            generations: BTreeMap::new(),
            progress: BTreeMap::new(),
        };
        assert_eq!(polled.strip_probes(), 2);
        assert_eq!(polled.batch.messages, vec![msg(0, 4, false)]);
        // Partition 1 had only a probe: the commit still moves it past it.
        assert_eq!(
            polled.next_offsets(),
            BTreeMap::from([(p(0), 6), (p(1), 9)])
        );
        assert_eq!(
            polled.first_offsets(),
            BTreeMap::from([(p(0), 4), (p(1), 9)])
        );
    }

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
