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
//!
//! - this module: the consumer as the pipeline sees it ([`KafkaSource`],
//!   [`Batches`]), the batch as polled ([`Polled`]) and the consumer's
//!   configuration;
//! - `rebalance`: the consumer's context, which positions every assignment
//!   where the tables say and makes a revocation wait for the trigger in
//!   flight ([`Rebalance`], [`Gap`]);
//! - `poller`: the poll thread, which cuts batches by the job's batching,
//!   grows a batch that waits for room and pauses the partitions when it
//!   waits too long.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{MicroBatch, Offsets};
use crate::config::{Job, SourcePartition, Topics};
use crate::ingest::adaptive::BatchCap;
use crate::metrics::JobMetrics;
mod poller;
mod rebalance;

use poller::Poller;
use rebalance::WeirContext;
pub use rebalance::{Gap, Rebalance};

/// Micro-batches the poll thread may hold ready before it pauses its partitions.
pub const QUEUE_BATCHES: usize = 2;

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
        let context = WeirContext::new(job, resolver, metrics.clone());
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
        let poller = Poller::new(consumer.clone(), job, cap, metrics.clone());
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{MicroBatch, Polled};
    use crate::config::{SourcePartition, Topics};
    use crate::ingest::source::Message;

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
}
