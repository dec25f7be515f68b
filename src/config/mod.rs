//! The job spec: what a user writes in `jobs/*.toml`, and the validated [`Job`]
//! the rest of weir runs on.
//!
//! Parsing happens in two steps on purpose. `serde` turns the TOML into a raw
//! `*Spec` mirror (unknown keys and wrong TOML types fail here, with toml's own
//! line/column report), then [`validate`] checks everything TOML cannot
//! express (cross-field rules, ranges, names) and builds types that cannot hold
//! an invalid value. Both kinds of error name the file and the key, and both
//! happen before anything connects anywhere.
//!
//! The split follows it: [`spec`] holds the raw mirror, [`validate`] the
//! checks, [`job`] the validated types (re-exported here).

use std::path::PathBuf;

mod choice;
#[cfg(test)]
pub(crate) mod fixture;
mod job;
mod proto_schema;
mod registry_fields;
mod spec;
#[cfg(test)]
mod tests;
mod topics;
mod validate;

pub use choice::Choice;
pub use job::*;
pub use proto_schema::ProtoSchema;
pub use registry_fields::{FromRegistry, NoRegistry, SubjectSchema, SubjectSchemas};
pub use topics::{MAX_TOPICS, Offsets, SourcePartition, TopicIndex, Topics};

/// Why a job spec was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read job spec {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid job spec {file}: {source}")]
    Parse {
        file: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid job spec {file}: key `{key}`: expected {expected}, found {found}")]
    Invalid {
        file: PathBuf,
        key: String,
        expected: String,
        found: String,
    },
}
