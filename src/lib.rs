//! weir: a micro-batch columnar processor. Kafka topics become Delta tables
//! within seconds, exactly once.
//!
//! # The data path
//!
//! One trigger, in order ([`ingest::pipeline`] sequences it):
//!
//! 1. [`ingest::source`]: a micro-batch of Kafka messages, with the
//!    assignment it was polled under, and for registry-backed formats the
//!    writer schemas its messages name ([`ingest::source::registry`]).
//! 2. [`ingest::decode`]: bytes (JSON, or Avro, Protobuf or JSON Schema in
//!    the Confluent wire format) to Arrow under the job's contract; what
//!    does not fit becomes a DLQ row with the reason.
//! 3. [`ingest::expect`]: the job's data-quality rules; breaches counted
//!    (the [`ingest::quality`] table), dropped to the DLQ, or the job
//!    stopped; [`ingest::monitor`] watches figures per window beside them.
//! 4. [`ingest::dedup`]: re-sent events dropped by event ID.
//! 5. [`ingest::watermark`]: fates of re-read events settled from `raw`;
//!    the rest judged on time or late.
//! 6. [`ingest::replay`]: each table's rows without those it already holds.
//! 7. [`ingest::transform`]: each output's rows (windowed partials or SQL).
//! 8. [`ingest::sink`]: data files staged per table, then committed with the
//!    Kafka offsets, `raw` first.
//!
//! # The layers
//!
//! Each folder imports only from those listed before it (`tests/layers.rs`).
//!
//! - [`config`]: the job spec, raw and validated.
//! - [`table`]: the catalog: which tables a job has ([`table::TableId`]),
//!   how each is created, opened, read across tiers, and how stages restore
//!   their state from them ([`table::Tables`]).
//! - [`ingest`]: the data path above; the stages are pure functions over
//!   Arrow batches, I/O stays at the ends (source, sink).
//! - [`upkeep`]: maintenance, tier moves, reprocessing.
//! - [`cmd`]: one module per command, each a thin layer over the above.
//!
//! Beside them: [`metrics`] (Prometheus), [`telemetry`] (logs, progress),
//! [`fault`] (fault points for crash tests), [`task`] (tasks aborted on drop, the
//! process's cores, a thread's CPU clock), [`alloc`] (the heap, set up
//! before any thread starts).
//!
//! These docs are for whoever works on weir, not an API for other crates:
//! a module's doc links to its private parts, which render with
//! `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod alloc;
pub mod cmd;
pub mod config;
pub mod fault;
pub mod ingest;
pub mod metrics;
pub mod table;
pub mod task;
pub mod telemetry;
pub mod upkeep;
