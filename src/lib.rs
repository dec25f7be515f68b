//! weir: a micro-batch columnar processor. Kafka topics become Delta tables
//! within seconds, exactly once.
//!
//! The data path runs one way: [`source`] (Kafka micro-batches) → [`decode`]
//! (bytes to Arrow under the job's contract; rejects to the DLQ) → [`dedup`]
//! (re-sent events dropped by event ID) → [`sink`]
//! (Delta commits carrying the Kafka offsets). [`pipeline`] is the trigger loop
//! that drives it; [`job`] is the validated job spec everything runs on.

pub mod cmd;
pub mod config;
pub mod fault;
pub mod ingest;
pub mod metrics;
pub mod table;
pub mod task;
pub mod telemetry;
pub mod upkeep;
