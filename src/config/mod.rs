//! The job spec: what a user writes in `jobs/*.toml`, and the validated [`Job`]
//! the rest of weir runs on.
//!
//! Parsing happens in two steps on purpose. `serde` turns the TOML into a raw
//! `*Spec` mirror (unknown keys and wrong TOML types fail here, with toml's own
//! line/column report), then [`Job::from_spec`] checks everything TOML cannot
//! express (cross-field rules, ranges, names) and builds types that cannot hold
//! an invalid value. Both kinds of error name the file and the key, and both
//! happen before anything connects anywhere.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;
use url::Url;

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

// ---------------------------------------------------------------------------
// Raw spec, exactly as written in TOML.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSpec {
    name: String,
    source: SourceSpec,
    schema: SchemaSpec,
    #[serde(default, alias = "batch")]
    batching: BatchingSpec,
    #[serde(default)]
    dedup: DedupSpec,
    #[serde(default)]
    watermark: WatermarkSpec,
    #[serde(default)]
    maintenance: MaintenanceSpec,
    storage: StorageSpec,
    #[serde(default)]
    tiers: TiersSpec,
    #[serde(default)]
    outputs: Vec<OutputSpec>,
    #[serde(default)]
    metrics: MetricsSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSpec {
    addr: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputSpec {
    name: String,
    window: Option<String>,
    hop: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    filter: Option<String>,
    #[serde(default)]
    aggregates: Vec<AggregateSpec>,
    sql: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregateSpec {
    name: String,
    #[serde(rename = "fn")]
    func: String,
    field: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupSpec {
    #[serde(default = "default_horizon")]
    horizon: String,
}

impl Default for DedupSpec {
    fn default() -> Self {
        Self {
            horizon: default_horizon(),
        }
    }
}

fn default_horizon() -> String {
    "1h".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatermarkSpec {
    #[serde(default = "default_allowed_lateness")]
    allowed_lateness: String,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: String,
}

impl Default for WatermarkSpec {
    fn default() -> Self {
        Self {
            allowed_lateness: default_allowed_lateness(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceSpec {
    #[serde(default = "default_maintenance_every")]
    every: String,
    #[serde(default = "default_target_file_mib")]
    target_file_mib: u64,
    #[serde(default = "default_vacuum_retention")]
    vacuum_retention: String,
    #[serde(default = "default_log_retention")]
    log_retention: String,
}

impl Default for MaintenanceSpec {
    fn default() -> Self {
        Self {
            every: default_maintenance_every(),
            target_file_mib: default_target_file_mib(),
            vacuum_retention: default_vacuum_retention(),
            log_retention: default_log_retention(),
        }
    }
}

fn default_maintenance_every() -> String {
    "10m".into()
}
fn default_target_file_mib() -> u64 {
    128
}
fn default_vacuum_retention() -> String {
    "7days".into()
}
fn default_log_retention() -> String {
    "30days".into()
}

fn default_allowed_lateness() -> String {
    "1m".into()
}
fn default_idle_timeout() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSpec {
    brokers: String,
    topic: String,
    group: Option<String>,
    #[serde(default)]
    start_from: StartFrom,
    #[serde(default)]
    on_data_loss: OnDataLoss,
    #[serde(default = "default_format")]
    format: String,
    #[serde(default = "default_max_message_bytes")]
    max_message_bytes: u64,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaSpec {
    event_id: String,
    event_time: String,
    #[serde(default = "default_event_time_range")]
    event_time_range: String,
    fields: Vec<FieldSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSpec {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default = "default_true")]
    nullable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchingSpec {
    #[serde(default = "default_min_events")]
    min_events: u64,
    #[serde(default = "default_max_events")]
    max_events: u64,
    #[serde(default = "default_max_wait_ms")]
    max_wait_ms: u64,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default)]
    adaptive: Option<AdaptiveSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdaptiveSpec {
    target_p99_ms: u64,
}

impl Default for BatchingSpec {
    fn default() -> Self {
        Self {
            min_events: default_min_events(),
            max_events: default_max_events(),
            max_wait_ms: default_max_wait_ms(),
            max_bytes: default_max_bytes(),
            adaptive: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSpec {
    root: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TiersSpec {
    #[serde(default)]
    hot: TierSpec,
    #[serde(default)]
    warm: TierSpec,
    #[serde(default)]
    cold: ColdTierSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierSpec {
    root: Option<String>,
    max_age: Option<String>,
}

/// Cold keeps everything older than warm's age: it has no age of its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColdTierSpec {
    root: Option<String>,
}

fn default_format() -> String {
    "json".into()
}
fn default_max_message_bytes() -> u64 {
    1024 * 1024
}
fn default_event_time_range() -> String {
    "10years".into()
}
fn default_true() -> bool {
    true
}
fn default_min_events() -> u64 {
    100
}
fn default_max_events() -> u64 {
    1000
}
fn default_max_wait_ms() -> u64 {
    250
}
/// 16 MiB: a micro-batch of 1,000 typical events is well under it, while
/// the few batches the queues hold stay small however large messages are.
fn default_max_bytes() -> u64 {
    16 << 20
}

// ---------------------------------------------------------------------------
// The validated job.

/// Where a consumer starts on a partition the Delta tables know nothing of.
/// Only there: a position the tables recorded is never replaced by either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

/// What a job does when the broker deleted messages it never read
/// (retention, DeleteRecords), like Spark's `failOnDataLoss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDataLoss {
    /// Stop the job, naming topic, partition and both offsets.
    #[default]
    Fail,
    /// Go on from the oldest message left, logging the gap and counting its
    /// offsets in `weir_skipped_offsets_total`.
    Skip,
}

/// Which brokers a job reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Brokers {
    /// librdkafka's in-process mock cluster, started by `weir demo`.
    Embedded,
    /// A `host:port,…` bootstrap list.
    List(String),
}

#[derive(Debug, Clone)]
pub struct Source {
    pub brokers: Brokers,
    pub topic: String,
    pub group: String,
    pub start_from: StartFrom,
    pub on_data_loss: OnDataLoss,
    pub max_message_bytes: usize,
    /// Extra librdkafka properties (security among them); they override
    /// weir's defaults.
    pub properties: BTreeMap<String, Property>,
}

/// A librdkafka property value as written, where `${VAR}` references an
/// environment variable so secrets stay out of job files. References are
/// resolved only when a Kafka client is made ([`Job::kafka_properties`]), so
/// commands that never connect (query, views, reprocess) do not need the
/// secrets. Its `Debug` never shows a value that looks secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Property {
    value: String,
    secret: bool,
}

impl fmt::Debug for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            f.write_str("\"<redacted>\"")
        } else {
            write!(f, "{:?}", self.value)
        }
    }
}

/// Whether a librdkafka property holds a credential.
fn is_secret(key: &str) -> bool {
    [
        "password",
        "secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "token",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// `text` with every `${VAR}` replaced by the variable's value; names the
/// first variable that is not set.
fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "an unclosed `${`".to_owned())?;
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| {
            format!("`${{{name}}}`, but the environment variable {name} is not set")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The type a user may declare for a field. Kept deliberately small: every one
/// maps to a Delta type that Spark, Trino, DuckDB and polars all read the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Bool,
    Int32,
    Int64,
    Float32,
    Float64,
    /// RFC 3339 strings or epoch milliseconds in JSON; stored as UTC microseconds.
    Timestamp,
    /// `YYYY-MM-DD` strings in JSON.
    Date,
}

impl FieldType {
    pub const ALL: [Self; 8] = [
        Self::String,
        Self::Bool,
        Self::Int32,
        Self::Int64,
        Self::Float32,
        Self::Float64,
        Self::Timestamp,
        Self::Date,
    ];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// What a spec's `type` may be, for the error that refuses another.
    fn choices() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
        format!("one of {}", names.join(", "))
    }

    /// As a job spec names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Bool => "bool",
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
            Self::Timestamp => "timestamp",
            Self::Date => "date",
        }
    }

    /// The type the JSON decoder produces. Timestamps decode as milliseconds so
    /// that a JSON number means epoch millis; see [`FieldType::stored_type`].
    pub fn decode_type(self) -> DataType {
        match self {
            Self::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            other => other.stored_type(),
        }
    }

    /// The type written to Delta (Delta timestamps are microseconds, UTC).
    pub fn stored_type(self) -> DataType {
        match self {
            Self::String => DataType::Utf8,
            Self::Bool => DataType::Boolean,
            Self::Int32 => DataType::Int32,
            Self::Int64 => DataType::Int64,
            Self::Float32 => DataType::Float32,
            Self::Float64 => DataType::Float64,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Self::Date => DataType::Date32,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FieldDef {
    pub name: String,
    pub ty: FieldType,
    pub nullable: bool,
}

/// The schema contract of a job's messages. The event ID and event time fields
/// are always required (never nullable), whatever the spec says.
#[derive(Debug, Clone)]
pub struct Contract {
    pub fields: Vec<FieldDef>,
    pub event_id: usize,
    pub event_time: usize,
    /// Event times further than this from now (either way) are refused.
    pub event_time_range: Duration,
}

impl Contract {
    pub fn event_id_name(&self) -> &str {
        &self.fields[self.event_id].name
    }

    pub fn event_time_name(&self) -> &str {
        &self.fields[self.event_time].name
    }

    /// The Arrow schema the JSON decoder targets: all fields nullable, so that a
    /// missing required field becomes a DLQ row with a precise reason instead of
    /// a decoder error for the whole batch.
    pub fn decode_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .map(|f| Field::new(&f.name, f.ty.decode_type(), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// The user fields as stored in Delta.
    pub fn stored_fields(&self) -> Vec<Field> {
        self.fields
            .iter()
            .map(|f| Field::new(&f.name, f.ty.stored_type(), f.nullable))
            .collect()
    }
}

/// How the job's watermark follows event time. The watermark is the minimum,
/// over partitions that delivered data within `idle_timeout`, of each
/// partition's newest event time minus `allowed_lateness`; events older than it
/// go to the `late` table instead of the outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkPolicy {
    pub allowed_lateness: Duration,
    pub idle_timeout: Duration,
}

/// Table upkeep: how often `weir run` runs it, and what it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maintenance {
    pub every: Duration,
    pub target_file_bytes: u64,
    /// Files a commit removed are deleted once they are this old.
    pub vacuum_retention: Duration,
    /// Log entries older than this (and older than a checkpoint) are deleted.
    pub log_retention: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub min_events: usize,
    pub max_events: usize,
    pub max_wait: Duration,
    /// Payload bytes at which a micro-batch is cut whatever its event count:
    /// what bounds the queues' memory when messages are large (a batch takes
    /// at least one message, so the bound is this plus one message).
    pub max_bytes: usize,
    /// With a target, the loop picks its batch cap within
    /// `[min_events, max_events]` itself (see [`crate::ingest::adaptive`]).
    pub adaptive: Option<Adaptive>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adaptive {
    /// The p99 of produced → committed to stay under.
    pub target_p99: Duration,
}

/// A storage tier. Ingest writes to hot; `weir maintain` moves rows to warm
/// and then cold as they age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Hot,
    Warm,
    Cold,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Hot, Tier::Warm, Tier::Cold];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }
}

/// Where a job's tables live: one root per tier (by default `<root>/hot`,
/// `<root>/warm`, `<root>/cold`), and how old rows get before they move on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    pub root: Url,
    /// Hot, warm and cold roots, in that order.
    pub tiers: [Url; 3],
    /// Rows older than this leave hot for warm.
    pub hot_max_age: Duration,
    /// Rows older than this leave warm for cold.
    pub warm_max_age: Duration,
}

/// Parses one storage root: a local path (made absolute) or a URL whose scheme
/// weir can write to.
fn parse_root(root: &str) -> Result<Url, String> {
    if root.trim().is_empty() {
        return Err("an empty string".into());
    }
    let url = if root.contains("://") {
        Url::parse(root).map_err(|e| format!("`{root}` ({e})"))?
    } else {
        let path = std::path::absolute(root).map_err(|e| format!("`{root}` ({e})"))?;
        Url::from_directory_path(&path).map_err(|()| format!("`{root}`"))?
    };
    if !crate::table::storage::SCHEMES.contains(&url.scheme()) {
        return Err(format!(
            "`{root}` (scheme `{}` is not supported; use a local path, file:// or s3://)",
            url.scheme()
        ));
    }
    Ok(url)
}

fn join(base: &Url, path: &str) -> Url {
    let base = base.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/{path}/")).expect("joined URL stays valid")
}

impl Storage {
    /// Parses a local path (relative paths are made absolute) or a URL; the
    /// tiers get their default roots and ages.
    pub fn parse(root: &str) -> Result<Self, String> {
        let root = parse_root(root)?;
        Ok(Self {
            tiers: Tier::ALL.map(|t| join(&root, t.name())),
            root,
            hot_max_age: Duration::from_secs(86400),
            warm_max_age: Duration::from_secs(30 * 86400),
        })
    }

    /// The location of one table in one tier.
    pub fn table(&self, tier: Tier, job: &str, table: &str) -> Url {
        join(&self.tiers[tier as usize], &format!("{job}/{table}"))
    }

    /// The location of one table in the hot tier, where ingest writes.
    pub fn hot_table(&self, job: &str, table: &str) -> Url {
        self.table(Tier::Hot, job, table)
    }

    /// The age after which rows leave `tier` (`None` for cold, which keeps them).
    pub fn max_age(&self, tier: Tier) -> Option<Duration> {
        match tier {
            Tier::Hot => Some(self.hot_max_age),
            Tier::Warm => Some(self.warm_max_age),
            Tier::Cold => None,
        }
    }
}

/// A validated job: everything weir needs to run it, with no way to hold an
/// impossible value.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub file: PathBuf,
    /// A hash of the spec's text (xxh3, hex), stamped into the commits of
    /// reprocessing so a table records which definition produced its rows.
    pub spec_hash: String,
    pub source: Source,
    pub contract: Contract,
    pub batching: Batching,
    /// How long an accepted event ID is remembered (in event time).
    pub dedup_horizon: Duration,
    pub watermark: WatermarkPolicy,
    pub maintenance: Maintenance,
    pub storage: Storage,
    /// Each written to its own table, in the same trigger as `raw`.
    pub outputs: Vec<Output>,
    /// Where `weir run` serves `/metrics` and `/healthz`, if the spec says.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// What a job derives from its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A windowed aggregation, stored as mergeable partials.
    Window(WindowOutput),
    /// A stateless DataFusion query over each trigger's events (`batch`).
    Sql(SqlOutput),
}

impl Output {
    pub fn name(&self) -> &str {
        match self {
            Output::Window(w) => &w.name,
            Output::Sql(q) => &q.name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlOutput {
    pub name: String,
    pub sql: String,
}

/// A windowed aggregation over event time: tumbling when `hop == size`,
/// hopping (overlapping windows of `size` starting every `hop`) otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowOutput {
    pub name: String,
    pub size: Duration,
    pub hop: Duration,
    /// Indices into the contract's fields.
    pub keys: Vec<usize>,
    /// A SQL predicate over the event's fields; only matching events count.
    pub filter: Option<String>,
    pub aggregates: Vec<Aggregate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateFn {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    /// Exact distinct count of a field's non-null values within a window.
    CountDistinct,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    pub name: String,
    pub func: AggregateFn,
    /// Index into the contract's fields; `None` only for `count` (all events).
    pub field: Option<usize>,
}

/// Table names weir uses itself; outputs may not take them.
pub const RESERVED_TABLES: [&str; 3] = ["raw", "dlq", "late"];

/// Command-line values that replace what the spec says (`--data`, `--brokers`, `--topic`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data: Option<PathBuf>,
    pub brokers: Option<String>,
    pub topic: Option<String>,
}

impl Job {
    /// Reads, parses and validates a job spec file, then applies the overrides.
    pub fn load(file: &Path, overrides: &Overrides) -> Result<Job, JobError> {
        let text = std::fs::read_to_string(file).map_err(|source| JobError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(&text, file, overrides)
    }

    /// Parses and validates spec text; `file` is only used to name errors.
    pub fn parse(text: &str, file: &Path, overrides: &Overrides) -> Result<Job, JobError> {
        let mut spec: JobSpec = toml::from_str(text).map_err(|e| JobError::Parse {
            file: file.to_owned(),
            source: Box::new(e),
        })?;
        if let Some(data) = &overrides.data {
            spec.storage.root = data.to_string_lossy().into_owned();
        }
        if let Some(brokers) = &overrides.brokers {
            spec.source.brokers = brokers.clone();
        }
        if let Some(topic) = &overrides.topic {
            spec.source.topic = topic.clone();
        }
        let spec_hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()));
        Self::from_spec(spec, file, spec_hash)
    }

    fn from_spec(spec: JobSpec, file: &Path, spec_hash: String) -> Result<Job, JobError> {
        let invalid = |key: &str, expected: &str, found: String| JobError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            expected: expected.to_owned(),
            found,
        };

        if !is_identifier(&spec.name) {
            return Err(invalid(
                "name",
                "a name of letters, digits, `_` or `-` (it is used in paths and Delta txn app IDs)",
                format!("`{}`", spec.name),
            ));
        }
        let source = validate_source(spec.source, &spec.name, &invalid)?;
        let contract = validate_schema(spec.schema, &invalid)?;
        let batching = validate_batching(spec.batching, &invalid)?;
        let dedup_horizon = duration_key(
            &invalid,
            "dedup.horizon",
            &spec.dedup.horizon,
            (1, 30 * DAY),
            "a duration between 1s and 30days, like \"1h\"",
        )?;
        let watermark = validate_watermark(spec.watermark, &invalid)?;
        let maintenance = validate_maintenance(spec.maintenance, &invalid)?;
        let storage = validate_storage(spec.storage, spec.tiers, &invalid)?;
        if storage.hot_max_age < dedup_horizon + watermark.allowed_lateness {
            return Err(invalid(
                "tiers.hot.max_age",
                "at least dedup.horizon + watermark.allowed_lateness (dedup and the watermark are restored from hot)",
                humantime::format_duration(storage.hot_max_age).to_string(),
            ));
        }

        let outputs = spec
            .outputs
            .into_iter()
            .enumerate()
            .map(|(i, o)| validate_output(o, i, &contract, &invalid))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, o) in outputs.iter().enumerate() {
            if let Some(earlier) = outputs[..i]
                .iter()
                .find(|earlier| earlier.name().eq_ignore_ascii_case(o.name()))
            {
                return Err(invalid(
                    &format!("outputs[{i}].name"),
                    "a name no other output uses, in any case",
                    format!("`{}` beside `{}`", o.name(), earlier.name()),
                ));
            }
        }

        let metrics_addr = spec
            .metrics
            .addr
            .map(|a| {
                a.parse().map_err(|_| {
                    invalid(
                        "metrics.addr",
                        "a socket address like \"127.0.0.1:9898\"",
                        format!("`{a}`"),
                    )
                })
            })
            .transpose()?;
        Ok(Job {
            name: spec.name,
            file: file.to_owned(),
            spec_hash,
            metrics_addr,
            source,
            contract,
            batching,
            dedup_horizon,
            watermark,
            maintenance,
            storage,
            outputs,
        })
    }

    /// `source.properties` with `${VAR}` references resolved, for a Kafka
    /// client; a variable that is not set is a spec error naming it (never the
    /// value of one that is).
    pub fn kafka_properties(&self) -> Result<Vec<(String, String)>, JobError> {
        self.source
            .properties
            .iter()
            .map(|(key, p)| {
                let value = expand_env(&p.value).map_err(|found| JobError::Invalid {
                    file: self.file.clone(),
                    key: format!("source.properties.\"{key}\""),
                    expected: "a value, or ${VAR} naming a set environment variable".into(),
                    found,
                })?;
                Ok((key.clone(), value))
            })
            .collect()
    }

    /// The Delta `txn` application ID that records this job's progress on one partition.
    pub fn app_id(&self, partition: i32) -> String {
        format!("weir:{}:{}:{}", self.name, self.source.topic, partition)
    }
}

type Invalid<'a> = dyn Fn(&str, &str, String) -> JobError + 'a;

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn validate_source(spec: SourceSpec, job: &str, invalid: &Invalid) -> Result<Source, JobError> {
    let brokers = match spec.brokers.trim() {
        "embedded" => Brokers::Embedded,
        "" => {
            return Err(invalid(
                "source.brokers",
                "`embedded` or a `host:port,…` list",
                "an empty string".into(),
            ));
        }
        list => {
            if let Some(bad) = list.split(',').find(|b| !is_host_port(b.trim())) {
                return Err(invalid(
                    "source.brokers",
                    "`embedded` or a `host:port,…` list",
                    format!("`{bad}`"),
                ));
            }
            Brokers::List(list.to_owned())
        }
    };
    // Kafka's own topic-name rule.
    if spec.topic.is_empty()
        || spec.topic.len() > 249
        || !spec
            .topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "source.topic",
            "a Kafka topic name (1–249 of a-z A-Z 0-9 . _ -)",
            format!("`{}`", spec.topic),
        ));
    }
    let group = spec.group.unwrap_or_else(|| format!("weir-{job}"));
    if group.trim().is_empty() {
        return Err(invalid(
            "source.group",
            "a consumer group name",
            "an empty string".into(),
        ));
    }
    if spec.format != "json" {
        return Err(invalid(
            "source.format",
            "`json`",
            format!("`{}`", spec.format),
        ));
    }
    if !(1..=256 * 1024 * 1024).contains(&spec.max_message_bytes) {
        return Err(invalid(
            "source.max_message_bytes",
            "a size between 1 byte and 256 MiB",
            spec.max_message_bytes.to_string(),
        ));
    }
    for reserved in [
        "group.id",
        "bootstrap.servers",
        "enable.auto.commit",
        "auto.offset.reset",
    ] {
        if spec.properties.contains_key(reserved) {
            return Err(invalid(
                &format!("source.properties.\"{reserved}\""),
                "no such property here (weir sets it from source.brokers, source.group, source.start_from and source.on_data_loss, and commits offsets itself)",
                "it".into(),
            ));
        }
    }
    let properties = spec
        .properties
        .into_iter()
        .map(|(key, value)| {
            let secret = is_secret(&key);
            (key, Property { value, secret })
        })
        .collect();
    Ok(Source {
        brokers,
        topic: spec.topic,
        group,
        start_from: spec.start_from,
        on_data_loss: spec.on_data_loss,
        max_message_bytes: spec.max_message_bytes as usize,
        properties,
    })
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn validate_schema(spec: SchemaSpec, invalid: &Invalid) -> Result<Contract, JobError> {
    if spec.fields.is_empty() {
        return Err(invalid(
            "schema.fields",
            "at least one field",
            "none".into(),
        ));
    }
    let mut fields = Vec::with_capacity(spec.fields.len());
    for (i, f) in spec.fields.into_iter().enumerate() {
        let key = format!("schema.fields[{i}]");
        if !is_identifier(&f.name) || f.name.starts_with('_') {
            return Err(invalid(
                &format!("{key}.name"),
                "a name of letters, digits, `_` or `-`, not starting with `_` (reserved for weir's columns)",
                format!("`{}`", f.name),
            ));
        }
        if fields.iter().any(|d: &FieldDef| d.name == f.name) {
            return Err(invalid(
                &format!("{key}.name"),
                "a name not used by another field",
                format!("`{}` twice", f.name),
            ));
        }
        let ty = FieldType::parse(&f.ty).ok_or_else(|| {
            invalid(
                &format!("{key}.type"),
                &FieldType::choices(),
                format!("`{}`", f.ty),
            )
        })?;
        fields.push(FieldDef {
            name: f.name,
            ty,
            nullable: f.nullable,
        });
    }
    let position = |key: &str, name: &str| {
        fields.iter().position(|f| f.name == name).ok_or_else(|| {
            invalid(
                key,
                "the name of a field in schema.fields",
                format!("`{name}`"),
            )
        })
    };
    let event_id = position("schema.event_id", &spec.event_id)?;
    let event_time = position("schema.event_time", &spec.event_time)?;
    if !matches!(fields[event_id].ty, FieldType::String | FieldType::Int64) {
        return Err(invalid(
            "schema.event_id",
            "a field of type string or int64",
            format!("`{}` of another type", spec.event_id),
        ));
    }
    if fields[event_time].ty != FieldType::Timestamp {
        return Err(invalid(
            "schema.event_time",
            "a field of type timestamp",
            format!("`{}` of another type", spec.event_time),
        ));
    }
    if event_id == event_time {
        return Err(invalid(
            "schema.event_time",
            "a field other than the event ID",
            format!("`{}`", spec.event_time),
        ));
    }
    fields[event_id].nullable = false;
    fields[event_time].nullable = false;
    let event_time_range = duration_key(
        invalid,
        "schema.event_time_range",
        &spec.event_time_range,
        (60, 100 * 366 * DAY),
        "a duration between 1min and 100years, like \"10years\" or \"30days\"",
    )?;
    Ok(Contract {
        fields,
        event_id,
        event_time,
        event_time_range,
    })
}

fn validate_watermark(spec: WatermarkSpec, invalid: &Invalid) -> Result<WatermarkPolicy, JobError> {
    let allowed_lateness = duration_key(
        invalid,
        "watermark.allowed_lateness",
        &spec.allowed_lateness,
        (0, 7 * DAY),
        "a duration between 0s and 7days, like \"1m\"",
    )?;
    let idle_timeout = duration_key(
        invalid,
        "watermark.idle_timeout",
        &spec.idle_timeout,
        (1, DAY),
        "a duration between 1s and 1day, like \"30s\"",
    )?;
    Ok(WatermarkPolicy {
        allowed_lateness,
        idle_timeout,
    })
}

const ROOT_EXPECTED: &str = "a local path, a file:// URL or an s3://bucket/prefix URL";

fn validate_storage(
    spec: StorageSpec,
    tiers: TiersSpec,
    invalid: &Invalid,
) -> Result<Storage, JobError> {
    let mut storage = Storage::parse(&spec.root)
        .map_err(|found| invalid("storage.root", ROOT_EXPECTED, found))?;
    let roots = [&tiers.hot.root, &tiers.warm.root, &tiers.cold.root];
    for (tier, root) in Tier::ALL.into_iter().zip(roots) {
        if let Some(root) = root {
            let key = format!("tiers.{}.root", tier.name());
            storage.tiers[tier as usize] =
                parse_root(root).map_err(|found| invalid(&key, ROOT_EXPECTED, found))?;
        }
    }
    let age = |tier: &TierSpec, name: &str, default: Duration| match &tier.max_age {
        None => Ok(default),
        Some(text) => duration_key(
            invalid,
            &format!("tiers.{name}.max_age"),
            text,
            (1, 100 * 366 * DAY),
            "a duration between 1s and 100years, like \"24h\"",
        ),
    };
    storage.hot_max_age = age(&tiers.hot, "hot", storage.hot_max_age)?;
    storage.warm_max_age = age(&tiers.warm, "warm", storage.warm_max_age)?;
    if storage.warm_max_age <= storage.hot_max_age {
        return Err(invalid(
            "tiers.warm.max_age",
            "an age above tiers.hot.max_age (rows reach warm at hot's age)",
            humantime::format_duration(storage.warm_max_age).to_string(),
        ));
    }
    Ok(storage)
}

fn validate_maintenance(spec: MaintenanceSpec, invalid: &Invalid) -> Result<Maintenance, JobError> {
    let every = duration_key(
        invalid,
        "maintenance.every",
        &spec.every,
        (1, 7 * DAY),
        "a duration between 1s and 7days, like \"10m\"",
    )?;
    let vacuum_retention = duration_key(
        invalid,
        "maintenance.vacuum_retention",
        &spec.vacuum_retention,
        (0, 3650 * DAY),
        "a duration between 0s and 3650days, like \"7days\"",
    )?;
    let log_retention = duration_key(
        invalid,
        "maintenance.log_retention",
        &spec.log_retention,
        (0, 3650 * DAY),
        "a duration between 0s and 3650days, like \"30days\"",
    )?;
    if !(1..=4096).contains(&spec.target_file_mib) {
        return Err(invalid(
            "maintenance.target_file_mib",
            "a size in MiB between 1 and 4096",
            spec.target_file_mib.to_string(),
        ));
    }
    Ok(Maintenance {
        every,
        target_file_bytes: spec.target_file_mib * 1024 * 1024,
        vacuum_retention,
        log_retention,
    })
}

const DAY: u64 = 86400;

/// Parses duration key `key` within `bounds` (seconds, inclusive); otherwise
/// the error says what was `expected` and what was found.
fn duration_key(
    invalid: &Invalid,
    key: &str,
    text: &str,
    (min_secs, max_secs): (u64, u64),
    expected: &str,
) -> Result<Duration, JobError> {
    parse_duration(text, min_secs, max_secs)
        .ok_or_else(|| invalid(key, expected, format!("`{text}`")))
}

/// A humantime duration (`"90s"`, `"1h"`, `"10years"`) within `min..=max` seconds.
fn parse_duration(text: &str, min_secs: u64, max_secs: u64) -> Option<Duration> {
    humantime::parse_duration(text)
        .ok()
        .filter(|d| (Duration::from_secs(min_secs)..=Duration::from_secs(max_secs)).contains(d))
}

fn validate_output(
    spec: OutputSpec,
    i: usize,
    contract: &Contract,
    invalid: &Invalid,
) -> Result<Output, JobError> {
    let key = |k: &str| format!("outputs[{i}].{k}");
    // Tables weir names after an output (`<name>__partials`, `<name>__hot`)
    // must not collide with another's; SQL engines fold unquoted names to
    // one case, so neither may names that differ only by case.
    let lower = spec.name.to_lowercase();
    if !is_identifier(&spec.name)
        || spec.name.starts_with('_')
        || spec.name.contains("__")
        || RESERVED_TABLES.contains(&lower.as_str())
    {
        return Err(invalid(
            &key("name"),
            "a name of letters, digits, `_` or `-`, not starting with `_`, without `__` (weir's own table names use it), and not raw, dlq or late in any case",
            format!("`{}`", spec.name),
        ));
    }
    let window = match (spec.window, spec.sql) {
        (None, Some(sql)) => {
            let windowed = spec.hop.is_some()
                || !spec.keys.is_empty()
                || spec.filter.is_some()
                || !spec.aggregates.is_empty();
            if windowed || sql.trim().is_empty() {
                return Err(invalid(
                    &key("sql"),
                    "a query over `batch`, alone (hop, keys, filter and aggregates belong to windowed outputs)",
                    if windowed {
                        "window settings beside it".into()
                    } else {
                        "an empty query".into()
                    },
                ));
            }
            return Ok(Output::Sql(SqlOutput {
                name: spec.name,
                sql,
            }));
        }
        (Some(window), None) => window,
        (window, _) => {
            return Err(invalid(
                &key("window"),
                "either `window` (with aggregates) or `sql`",
                if window.is_some() {
                    "both".into()
                } else {
                    "neither".into()
                },
            ));
        }
    };
    let size = duration_key(
        invalid,
        &key("window"),
        &window,
        (1, DAY),
        "a duration between 1s and 1day, like \"1m\"",
    )?;
    let hop = match &spec.hop {
        None => size,
        Some(text) => parse_duration(text, 1, 86400)
            .filter(|hop| *hop <= size && size.as_millis() % hop.as_millis() == 0)
            .ok_or_else(|| {
                invalid(
                    &key("hop"),
                    "a duration that divides the window, like \"30s\" for a 1m window",
                    format!("`{text}`"),
                )
            })?,
    };
    if size.subsec_millis() != 0 || hop.subsec_millis() != 0 {
        return Err(invalid(
            &key("window"),
            "whole seconds",
            format!("`{window}`"),
        ));
    }
    let field = |k: &str, name: &str| {
        contract
            .fields
            .iter()
            .position(|f| f.name == name)
            .ok_or_else(|| {
                invalid(
                    k,
                    "the name of a field in schema.fields",
                    format!("`{name}`"),
                )
            })
    };
    let keys = spec
        .keys
        .iter()
        .enumerate()
        .map(|(k, name)| field(&key(&format!("keys[{k}]")), name))
        .collect::<Result<Vec<_>, _>>()?;
    if spec.aggregates.is_empty() {
        return Err(invalid(
            &key("aggregates"),
            "at least one aggregate",
            "none".into(),
        ));
    }
    let mut aggregates: Vec<Aggregate> = Vec::new();
    for (a, agg) in spec.aggregates.into_iter().enumerate() {
        let akey = |k: &str| key(&format!("aggregates[{a}].{k}"));
        let taken = ["window_start", "window_end"].contains(&agg.name.as_str())
            || keys.iter().any(|&k| contract.fields[k].name == agg.name)
            || aggregates.iter().any(|earlier| earlier.name == agg.name);
        if !is_identifier(&agg.name) || agg.name.contains("__") || taken {
            return Err(invalid(
                &akey("name"),
                "a new column name (letters, digits, `_`; no `__`; not a key or window column)",
                format!("`{}`", agg.name),
            ));
        }
        let func = match agg.func.as_str() {
            "count" => AggregateFn::Count,
            "sum" => AggregateFn::Sum,
            "min" => AggregateFn::Min,
            "max" => AggregateFn::Max,
            "avg" => AggregateFn::Avg,
            "count_distinct" => AggregateFn::CountDistinct,
            other => {
                return Err(invalid(
                    &akey("fn"),
                    "one of count, sum, min, max, avg, count_distinct",
                    format!("`{other}`"),
                ));
            }
        };
        let field = match (&agg.field, func) {
            (None, AggregateFn::Count) => None,
            (None, _) => {
                return Err(invalid(
                    &akey("field"),
                    "the field to aggregate",
                    "nothing".into(),
                ));
            }
            (Some(name), _) => Some(field(&akey("field"), name)?),
        };
        let numeric = |f: usize| {
            matches!(
                contract.fields[f].ty,
                FieldType::Int32 | FieldType::Int64 | FieldType::Float32 | FieldType::Float64
            )
        };
        if let Some(f) = field
            && matches!(func, AggregateFn::Sum | AggregateFn::Avg)
            && !numeric(f)
        {
            return Err(invalid(
                &akey("field"),
                "a numeric field (int32, int64, float32, float64)",
                format!("`{}`", contract.fields[f].name),
            ));
        }
        aggregates.push(Aggregate {
            name: agg.name,
            func,
            field,
        });
    }
    Ok(Output::Window(WindowOutput {
        name: spec.name,
        size,
        hop,
        keys,
        filter: spec.filter,
        aggregates,
    }))
}

fn validate_batching(spec: BatchingSpec, invalid: &Invalid) -> Result<Batching, JobError> {
    const MAX_EVENTS: u64 = 1_000_000;
    if !(1..=MAX_EVENTS).contains(&spec.max_events) {
        return Err(invalid(
            "batching.max_events",
            "a number of events between 1 and 1000000",
            spec.max_events.to_string(),
        ));
    }
    if !(1..=spec.max_events).contains(&spec.min_events) {
        return Err(invalid(
            "batching.min_events",
            "a number of events between 1 and batching.max_events",
            spec.min_events.to_string(),
        ));
    }
    if !(1..=3_600_000).contains(&spec.max_wait_ms) {
        return Err(invalid(
            "batching.max_wait_ms",
            "milliseconds between 1 and 3600000",
            spec.max_wait_ms.to_string(),
        ));
    }
    if !((1 << 20)..=(1 << 30)).contains(&spec.max_bytes) {
        return Err(invalid(
            "batching.max_bytes",
            "bytes between 1048576 (1 MiB) and 1073741824 (1 GiB)",
            spec.max_bytes.to_string(),
        ));
    }
    let adaptive = match spec.adaptive {
        None => None,
        Some(a) if (10..=3_600_000).contains(&a.target_p99_ms) => Some(Adaptive {
            target_p99: Duration::from_millis(a.target_p99_ms),
        }),
        Some(a) => {
            return Err(invalid(
                "batching.adaptive.target_p99_ms",
                "milliseconds between 10 and 3600000",
                a.target_p99_ms.to_string(),
            ));
        }
    };
    Ok(Batching {
        min_events: spec.min_events as usize,
        max_events: spec.max_events as usize,
        max_wait: Duration::from_millis(spec.max_wait_ms),
        max_bytes: spec.max_bytes as usize,
        adaptive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "clicks"
[source]
brokers = "localhost:9092"
topic = "clicks"
[schema]
event_id = "id"
event_time = "ts"
fields = [
  { name = "id", type = "string" },
  { name = "ts", type = "timestamp" },
  { name = "n",  type = "int64", nullable = false },
]
[storage]
root = "/tmp/weir-test"
"#;

    #[test]
    fn the_metrics_address_is_a_socket_address() {
        let job = parse(&format!("{GOOD}[metrics]\naddr = \"0.0.0.0:9100\"\n")).unwrap();
        assert_eq!(job.metrics_addr, Some("0.0.0.0:9100".parse().unwrap()));
        let err = parse(&format!("{GOOD}[metrics]\naddr = \"nope\"\n")).unwrap_err();
        assert!(err.to_string().contains("metrics.addr"), "{err}");
    }

    #[test]
    fn properties_resolve_env_references_when_connecting_and_hide_secrets() {
        // SAFETY: the variable names are unique to this test.
        unsafe {
            std::env::set_var("WEIR_JOB_TEST_SECRET", "hunter2");
        }
        let text = GOOD.replace(
            "topic = \"clicks\"",
            "topic = \"clicks\"\n[source.properties]\n\"sasl.password\" = \"${WEIR_JOB_TEST_SECRET}\"\n\"client.rack\" = \"r-${WEIR_JOB_TEST_SECRET}-x\"\n\"ssl.key.password\" = \"${WEIR_JOB_TEST_UNSET}\"",
        );
        let job = parse(&text).unwrap();
        let debug = format!("{job:?}");
        assert!(
            debug.contains("<redacted>") && !debug.contains("hunter2"),
            "{debug}"
        );
        let err = job.kafka_properties().unwrap_err().to_string();
        assert!(
            err.contains("WEIR_JOB_TEST_UNSET is not set") && !err.contains("hunter2"),
            "{err}"
        );
        let mut job = job;
        job.source.properties.remove("ssl.key.password");
        let resolved = job.kafka_properties().unwrap();
        assert!(resolved.contains(&("sasl.password".into(), "hunter2".into())));
        assert!(resolved.contains(&("client.rack".into(), "r-hunter2-x".into())));
    }

    fn parse(text: &str) -> Result<Job, JobError> {
        Job::parse(text, Path::new("jobs/t.toml"), &Overrides::default())
    }

    fn error_of(text: &str) -> String {
        parse(text).expect_err("spec should be refused").to_string()
    }

    #[test]
    fn storage_roots_are_paths_file_or_s3_urls() {
        let s3 = Storage::parse("s3://bucket/weir").unwrap();
        assert_eq!(
            s3.hot_table("j", "raw").as_str(),
            "s3://bucket/weir/hot/j/raw/"
        );
        let local = Storage::parse("relative/dir").unwrap();
        assert_eq!(local.root.scheme(), "file");
        assert!(local.root.path().ends_with("/relative/dir/"));
        let err = Storage::parse("gs://bucket/x").unwrap_err();
        assert!(err.contains("scheme `gs` is not supported"), "{err}");
    }

    #[test]
    fn good_spec_gets_defaults() {
        let job = parse(GOOD).unwrap();
        assert_eq!(job.source.group, "weir-clicks");
        assert_eq!(job.source.start_from, StartFrom::Earliest);
        assert_eq!(job.batching.min_events, 100);
        assert_eq!(job.batching.max_events, 1000);
        assert_eq!(job.batching.max_wait, Duration::from_millis(250));
        assert_eq!(job.dedup_horizon, Duration::from_secs(3600));
        assert_eq!(job.contract.event_id_name(), "id");
        assert!(!job.contract.fields[2].nullable);
        assert_eq!(job.app_id(3), "weir:clicks:clicks:3");
        assert_eq!(
            job.storage.hot_table("clicks", "raw").as_str(),
            "file:///tmp/weir-test/hot/clicks/raw/"
        );
    }

    #[test]
    fn overrides_replace_spec_values() {
        let overrides = Overrides {
            data: Some("/tmp/elsewhere".into()),
            brokers: Some("embedded".into()),
            topic: Some("other".into()),
        };
        let job = Job::parse(GOOD, Path::new("t.toml"), &overrides).unwrap();
        assert_eq!(job.storage.root.as_str(), "file:///tmp/elsewhere/");
        assert_eq!(job.source.brokers, Brokers::Embedded);
        assert_eq!(job.source.topic, "other");
    }

    #[test]
    fn adaptive_batching_is_read_under_batch_or_batching() {
        for section in ["batch", "batching"] {
            let text = GOOD.replace(
                "[storage]",
                &format!("[{section}]\nadaptive = {{ target_p99_ms = 150 }}\n[storage]"),
            );
            let job = Job::parse(&text, Path::new("t.toml"), &Overrides::default()).unwrap();
            assert_eq!(
                job.batching.adaptive,
                Some(Adaptive {
                    target_p99: Duration::from_millis(150)
                })
            );
        }
        let err = error_of(&GOOD.replace(
            "[storage]",
            "[batching]\nadaptive = { target_p99_ms = 1 }\n[storage]",
        ));
        assert!(err.contains("batching.adaptive.target_p99_ms"), "{err}");
    }

    #[test]
    fn unknown_key_names_the_key_and_file() {
        let err = error_of(&GOOD.replace("[storage]", "[storage]\nrot = 1"));
        assert!(err.contains("jobs/t.toml"), "{err}");
        assert!(err.contains("unknown field `rot`"), "{err}");
    }

    #[test]
    fn missing_key_is_named() {
        let err = error_of(&GOOD.replace("topic = \"clicks\"", ""));
        assert!(err.contains("missing field `topic`"), "{err}");
    }

    #[test]
    fn impossible_values_are_named() {
        let cases = [
            (
                GOOD.replace("[storage]", "[batching]\nmax_events = 0\n[storage]"),
                "batching.max_events",
            ),
            (
                GOOD.replace(
                    "[storage]",
                    "[batching]\nmin_events = 50\nmax_events = 10\n[storage]",
                ),
                "batching.min_events",
            ),
            (
                GOOD.replace("[storage]", "[batching]\nmax_wait_ms = 0\n[storage]"),
                "batching.max_wait_ms",
            ),
            (
                GOOD.replace("localhost:9092", "localhost"),
                "source.brokers",
            ),
            (
                GOOD.replace("topic = \"clicks\"", "topic = \"a b\""),
                "source.topic",
            ),
            (
                GOOD.replace("event_id = \"id\"", "event_id = \"nope\""),
                "schema.event_id",
            ),
            (
                GOOD.replace("event_time = \"ts\"", "event_time = \"n\""),
                "schema.event_time",
            ),
            (
                GOOD.replace("type = \"int64\"", "type = \"decimal\""),
                "schema.fields[2].type",
            ),
            (
                GOOD.replace("name = \"n\"", "name = \"_n\""),
                "schema.fields[2].name",
            ),
            (
                GOOD.replace("name = \"n\"", "name = \"id\""),
                "schema.fields[2].name",
            ),
            (
                GOOD.replace(
                    "event_time = \"ts\"",
                    "event_time = \"ts\"\nevent_time_range = \"forever\"",
                ),
                "schema.event_time_range",
            ),
            (
                GOOD.replace("/tmp/weir-test", "gs://bucket/x"),
                "storage.root",
            ),
            (
                GOOD.replace("[storage]", "[dedup]\nhorizon = \"0s\"\n[storage]"),
                "dedup.horizon",
            ),
            (
                GOOD.replace(
                    "[storage]",
                    "[watermark]\nallowed_lateness = \"-1m\"\n[storage]",
                ),
                "watermark.allowed_lateness",
            ),
            (
                GOOD.replace("[storage]", "[watermark]\nidle_timeout = \"0s\"\n[storage]"),
                "watermark.idle_timeout",
            ),
            (
                GOOD.replace("[storage]", "[maintenance]\nevery = \"soon\"\n[storage]"),
                "maintenance.every",
            ),
            (
                GOOD.replace("[storage]", "[maintenance]\ntarget_file_mib = 0\n[storage]"),
                "maintenance.target_file_mib",
            ),
            (GOOD.replace("name = \"clicks\"", "name = \"a/b\""), "name"),
            (
                GOOD.replace(
                    "[schema]",
                    "properties = { \"group.id\" = \"x\" }\n[schema]",
                ),
                "source.properties.\"group.id\"",
            ),
        ];
        for (text, key) in cases {
            let err = error_of(&text);
            assert!(
                err.contains(&format!("key `{key}`")),
                "expected key {key} in: {err}"
            );
            assert!(err.contains("jobs/t.toml"), "{err}");
        }
    }

    /// GOOD plus one output with these lines.
    fn with_output(lines: &str) -> String {
        format!("{GOOD}\n[[outputs]]\n{lines}\n")
    }

    const OUTPUT: &str = "name = \"o\"\nwindow = \"1m\"\nkeys = [\"n\"]\n\
                          aggregates = [{ name = \"c\", fn = \"count\" }]";

    #[test]
    fn outputs_are_validated_with_named_keys() {
        let job = parse(&with_output(OUTPUT)).unwrap();
        let Output::Window(window) = &job.outputs[0] else {
            panic!("a windowed output: {:?}", job.outputs[0]);
        };
        assert_eq!(window.size, Duration::from_secs(60));
        assert_eq!(window.hop, window.size, "tumbling by default");
        assert_eq!(window.keys, vec![2]);
        let sql = parse(&with_output("name = \"q\"\nsql = \"SELECT id FROM batch\"")).unwrap();
        assert_eq!(
            sql.outputs[0],
            Output::Sql(SqlOutput {
                name: "q".into(),
                sql: "SELECT id FROM batch".into()
            })
        );

        let cases = [
            (OUTPUT.replace("\"1m\"", "\"0s\""), "outputs[0].window"),
            (OUTPUT.replace("\"1m\"", "\"1500ms\""), "outputs[0].window"),
            (format!("{OUTPUT}\nhop = \"25s\""), "outputs[0].hop"),
            (
                OUTPUT.replace("[\"n\"]", "[\"nope\"]"),
                "outputs[0].keys[0]",
            ),
            (OUTPUT.replace("\"o\"", "\"raw\""), "outputs[0].name"),
            (OUTPUT.replace("\"o\"", "\"Late\""), "outputs[0].name"),
            (
                OUTPUT.replace("\"o\"", "\"x__partials\""),
                "outputs[0].name",
            ),
            (
                OUTPUT.replace("fn = \"count\"", "fn = \"median\""),
                "outputs[0].aggregates[0].fn",
            ),
            (
                OUTPUT.replace("fn = \"count\"", "fn = \"sum\""),
                "outputs[0].aggregates[0].field",
            ),
            (
                OUTPUT.replace("fn = \"count\"", "fn = \"sum\", field = \"id\""),
                "outputs[0].aggregates[0].field",
            ),
            (
                OUTPUT.replace("name = \"c\"", "name = \"n\""),
                "outputs[0].aggregates[0].name",
            ),
            (
                OUTPUT.replace("name = \"c\"", "name = \"a__b\""),
                "outputs[0].aggregates[0].name",
            ),
            (
                OUTPUT.replace(
                    "aggregates = [{ name = \"c\", fn = \"count\" }]",
                    "aggregates = []",
                ),
                "outputs[0].aggregates",
            ),
        ];
        for (lines, key) in cases {
            let err = error_of(&with_output(&lines));
            assert!(
                err.contains(&format!("key `{key}`")),
                "expected key {key} in: {err}"
            );
        }
        for lines in [
            format!("{OUTPUT}\nsql = \"SELECT 1\""),
            "name = \"q\"\nsql = \" \"".to_string(),
            "name = \"q\"\nsql = \"SELECT 1\"\nkeys = [\"n\"]".to_string(),
        ] {
            let err = error_of(&with_output(&lines));
            assert!(
                err.contains("key `outputs[0].window`") || err.contains("key `outputs[0].sql`"),
                "{err}"
            );
        }
        let neither = error_of(&with_output("name = \"q\""));
        assert!(
            neither.contains("key `outputs[0].window`") && neither.contains("neither"),
            "{neither}"
        );
        let twice = format!("{}\n[[outputs]]\n{OUTPUT}\n", with_output(OUTPUT));
        assert!(error_of(&twice).contains("key `outputs[1].name`"));
        let by_case = twice.replacen("name = \"o\"", "name = \"O\"", 1);
        let err = error_of(&by_case);
        assert!(
            err.contains("key `outputs[1].name`") && err.contains("`O`"),
            "{err}"
        );
    }

    #[test]
    fn shipped_example_jobs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Job::load(&path, &Overrides::default()).unwrap();
                seen += 1;
            }
        }
        assert!(seen >= 1);
    }
}
