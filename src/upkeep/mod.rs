//! What keeps a job's tables cheap to read and right after months of
//! triggers, beside ingest and never blocking it: [`compact`] (hot tables'
//! small files merged as they accumulate), [`maintain`] (folds, file
//! merges, checkpoints, vacuum), [`merge`] (the file merge both use),
//! [`moves`] (rows to colder tiers by age) and [`reprocess`] (a date range
//! rebuilt from `raw`, and verified).

pub mod compact;
pub mod maintain;
pub mod merge;
pub mod moves;
pub mod reprocess;
