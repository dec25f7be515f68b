//! The input end of the data path: Kafka micro-batches (and the things that feed
//! a Kafka topic in demos and tests).

pub mod embedded;
pub mod framing;
pub mod generator;
pub mod kafka;
pub mod registry;

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

pub use crate::config::Offsets;
use crate::config::{SourcePartition, Topics};

/// One Kafka record as weir keeps it: enough to decode it, to locate it again,
/// and to put it in the DLQ untouched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub partition: SourcePartition,
    pub offset: i64,
    /// The record's Kafka timestamp in epoch milliseconds, when the broker gave one.
    pub kafka_ts: Option<i64>,
    /// `None` for a record with no value (a tombstone). A slice of a chunk
    /// shared with the messages polled around it ([`Payloads`]).
    pub payload: Option<Bytes>,
    /// The record's key, read only for a job that stores it (`source.columns`).
    pub key: Option<Vec<u8>>,
    /// The record's headers in order, read only for a job that stores them.
    pub headers: Option<Headers>,
    /// A latency probe ([`PROBE_HEADER`]): it moves the tables' positions
    /// past itself and is never decoded.
    pub probe: bool,
}

/// The header that marks a record with an empty value as a latency probe of
/// `weir run` (`probes.every`), whatever job sent it: every weir job reading
/// the topic steps over it, so probes never reach `raw`, the DLQ or an output.
pub const PROBE_HEADER: &str = "weir-probe";

/// Kafka record headers: names with optional values, repeats allowed.
pub type Headers = Vec<(String, Option<Vec<u8>>)>;

impl Message {
    pub fn payload_len(&self) -> usize {
        self.payload.as_ref().map_or(0, Bytes::len)
    }
}

/// Where the poll thread copies payloads out of librdkafka: into chunks that
/// the messages share, so polling costs an allocation per chunk, not one per
/// message, and dropping a batch frees a few chunks. On 4 to 16 cores, where
/// every thread shares glibc's two arenas, the part of a trigger that drops
/// the last batch took 12–14 ms against 2–3 on one or two (`benches/README.md`,
/// "Cores"); on two it fell to 1 ms with chunks. A chunk lives until its last
/// message is dropped: at most one chunk more than the queued batches' payloads.
#[derive(Debug, Default)]
pub struct Payloads {
    chunk: BytesMut,
}

impl Payloads {
    /// Below glibc's mmap threshold (`alloc.rs`), so chunks are reused heap.
    const CHUNK: usize = 256 * 1024;

    pub fn copy(&mut self, payload: &[u8]) -> Bytes {
        if self.chunk.capacity() < payload.len() {
            self.chunk = BytesMut::with_capacity(Self::CHUNK.max(payload.len()));
        }
        self.chunk.extend_from_slice(payload);
        self.chunk.split().freeze()
    }
}

/// The unit of work of one trigger: messages of the job's topics, in offset
/// order within each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MicroBatch {
    /// What the messages' [`SourcePartition`]s index.
    pub topics: Topics,
    pub messages: Vec<Message>,
}

impl MicroBatch {
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            messages: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Per partition, the offset to read next once this batch is committed: the
    /// `version` of the Delta `txn` action for that partition.
    pub fn next_offsets(&self) -> Offsets {
        let mut next = BTreeMap::new();
        for run in self.runs() {
            let after = run[run.len() - 1].offset + 1;
            let e = next.entry(run[0].partition).or_insert(after);
            *e = (*e).max(after);
        }
        next
    }

    /// Per partition, the lowest offset in this batch.
    pub fn first_offsets(&self) -> Offsets {
        let mut first = BTreeMap::new();
        for run in self.runs() {
            let e = first.entry(run[0].partition).or_insert(run[0].offset);
            *e = (*e).min(run[0].offset);
        }
        first
    }

    /// The batch as runs of consecutive messages of one partition, each in
    /// offset order. librdkafka delivers a partition's messages a fetched
    /// set at a time: 10,000-message batches of a drain over 16 partitions
    /// were 150 to 380 runs. Looking a partition up once per run, not per
    /// message, takes a pass over a batch's offsets (several per trigger, in
    /// its serial stage) from about 70 to 10 µs per 10,000 messages.
    fn runs(&self) -> impl Iterator<Item = &[Message]> {
        self.messages.chunk_by(|a, b| a.partition == b.partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(partition: i32, offset: i64) -> Message {
        Message {
            partition: SourcePartition::first(partition),
            offset,
            ..Message::default()
        }
    }

    #[test]
    fn offsets_per_partition() {
        let batch = MicroBatch {
            topics: Topics::single("t"),
            messages: vec![msg(0, 5), msg(1, 9), msg(0, 6), msg(1, 10), msg(0, 7)],
        };
        let p = SourcePartition::first;
        assert_eq!(
            batch.next_offsets(),
            BTreeMap::from([(p(0), 8), (p(1), 11)])
        );
        assert_eq!(
            batch.first_offsets(),
            BTreeMap::from([(p(0), 5), (p(1), 9)])
        );
        let runs = MicroBatch {
            topics: Topics::single("t"),
            messages: vec![
                msg(0, 5),
                msg(0, 6),
                msg(1, 9),
                msg(1, 10),
                msg(0, 7),
                msg(0, 8),
            ],
        };
        assert_eq!(runs.next_offsets(), BTreeMap::from([(p(0), 9), (p(1), 11)]));
        assert_eq!(runs.first_offsets(), BTreeMap::from([(p(0), 5), (p(1), 9)]));
        let empty = MicroBatch::new(Topics::single("t"));
        assert!(empty.next_offsets().is_empty() && empty.first_offsets().is_empty());
    }

    #[test]
    fn payloads_share_a_chunk_and_keep_their_bytes() {
        let mut payloads = Payloads::default();
        let first = payloads.copy(b"first");
        let second = payloads.copy(b"second");
        assert_eq!(first.as_ptr().wrapping_add(first.len()), second.as_ptr());
        let large = vec![7; Payloads::CHUNK + 1];
        assert_eq!(payloads.copy(&large), large);
        let third = payloads.copy(b"third");
        drop(first);
        assert_eq!((&second[..], &third[..]), (&b"second"[..], &b"third"[..]));
        assert_eq!(payloads.copy(b""), &b""[..]);
    }
}
