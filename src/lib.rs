//! weir: a micro-batch columnar processor. Kafka topics become Delta tables
//! within seconds, exactly once.
//!
//! The data path runs one way: [`source`] (Kafka micro-batches) → [`decode`]
//! (bytes to Arrow under the job's contract; rejects to the DLQ) → [`dedup`]
//! (re-sent events dropped by event ID) → [`sink`]
//! (Delta commits carrying the Kafka offsets). [`pipeline`] is the trigger loop
//! that drives it; [`job`] is the validated job spec everything runs on.

pub mod adaptive;
pub mod bench;
pub mod decode;
pub mod dedup;
pub mod demo;
pub mod fault;
pub mod job;
pub mod maintain;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod replay;
pub mod reprocess;
pub mod run;
pub mod schema;
pub mod sink;
pub mod source;
pub mod status;
pub mod storage;
pub mod task;
pub mod telemetry;
pub mod tier;
pub mod transform;
pub mod views;
pub mod watermark;
