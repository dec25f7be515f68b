//! The poll thread: one per process, it polls every assigned partition,
//! cuts micro-batches by the job's batching and queues them, pausing the
//! partitions while the queue is full.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Headers as _, Message as _};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Polled, Queued, SourceError, WeirContext};
use crate::config::{Batching, Job, KafkaColumns, SourcePartition, Topics};
use crate::ingest::adaptive::BatchCap;
use crate::ingest::source::{Message, MicroBatch, Offsets, PROBE_HEADER, Payloads};
use crate::metrics::JobMetrics;

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

/// The poll thread: assembles micro-batches and queues them, pausing the
/// partitions while the queue is full.
pub(super) struct Poller {
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
    pub(super) fn new(
        consumer: Arc<BaseConsumer<WeirContext>>,
        job: &Job,
        cap: BatchCap,
        metrics: JobMetrics,
    ) -> Self {
        Self {
            consumer,
            topics: job.source.topics.clone(),
            kept: job.contract.kafka.clone(),
            payloads: Payloads::default(),
            batching: job.batching,
            cap,
            metrics,
            paused: false,
            delivered: BTreeMap::new(),
            reported: BTreeMap::new(),
            last_cut: None,
        }
    }

    pub(super) fn run(mut self, queue: &mpsc::Sender<Queued>, stop: &AtomicBool) {
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
