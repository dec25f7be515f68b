//! Upkeep.

pub mod maintain;
pub mod reprocess;
