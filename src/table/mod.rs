//! The catalog of a job's tables.

pub mod schema;
pub mod storage;
pub mod tier;
