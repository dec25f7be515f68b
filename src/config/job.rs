//! The validated job: types that cannot hold an invalid value, which the
//! rest of weir runs on.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, TimeUnit};
use serde::Deserialize;
use url::Url;

use super::*;

/// Where a consumer starts on a partition the Delta tables know nothing of.
/// Only there: a position the tables recorded is never replaced by any of
/// these, so a first run's choice does not move a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
    /// The first message whose Kafka timestamp is at or after this (epoch
    /// ms); the end of a partition that has none.
    Timestamp(i64),
    /// These offsets for the partitions named; the earliest for the others.
    Offsets(BTreeMap<i32, i64>),
}

impl StartFrom {
    /// What the spec's `start_from` string should look like, for errors.
    pub const EXPECTED: &str = "`earliest`, `latest`, `timestamp:<RFC 3339 time>` or \
         `offsets:<partition>=<offset>,…`";

    /// `earliest`, `latest`, `timestamp:2026-11-01T00:00:00Z` or
    /// `offsets:0=120,3=7`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "earliest" => return Some(Self::Earliest),
            "latest" => return Some(Self::Latest),
            _ => {}
        }
        if let Some(time) = text.strip_prefix("timestamp:") {
            let time = chrono::DateTime::parse_from_rfc3339(time).ok()?;
            return Some(Self::Timestamp(time.timestamp_millis()));
        }
        let offsets = text.strip_prefix("offsets:")?;
        let parsed = offsets
            .split(',')
            .map(|pair| {
                let (partition, offset) = pair.trim().split_once('=')?;
                let partition = partition.trim().parse().ok().filter(|p| *p >= 0)?;
                let offset = offset.trim().parse().ok().filter(|o| *o >= 0)?;
                Some((partition, offset))
            })
            .collect::<Option<BTreeMap<_, _>>>()?;
        Some(Self::Offsets(parsed))
    }
}

/// A data-quality rule: a SQL predicate over an event's fields that every
/// accepted event should satisfy, and what a breach does. A rule that is
/// NULL for an event (a comparison with a missing field) holds, as in a
/// SQL `CHECK` constraint: write `price IS NOT NULL AND …` to require one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub name: String,
    pub rule: String,
    pub on_fail: OnFail,
}

/// A batch-level data-quality check: a figure over each window of ingest
/// time that must stay within bounds (either may be open).
#[derive(Debug, Clone, PartialEq)]
pub struct Monitor {
    pub name: String,
    pub check: Check,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub window: Duration,
}

/// The figure a monitor watches; fields by their index in the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Events accepted in the window.
    Volume,
    /// The share of events (0–1) whose field is null.
    NullRate(usize),
    /// The least value of a numeric field.
    Min(usize),
    /// The greatest value of a numeric field.
    Max(usize),
}

impl Monitor {
    /// The bounds as words, for the `quality` table's `expected`.
    pub fn expected(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("between {min} and {max}"),
            (Some(min), None) => format!("at least {min}"),
            (None, Some(max)) => format!("at most {max}"),
            (None, None) => "anything".into(),
        }
    }

    /// Whether `observed` is within the bounds.
    pub fn holds(&self, observed: f64) -> bool {
        self.min.is_none_or(|min| observed >= min) && self.max.is_none_or(|max| observed <= max)
    }
}

impl Job {
    /// Whether the job writes a `quality` table: it has expectations or
    /// monitors.
    pub fn has_quality(&self) -> bool {
        !self.expectations.is_empty() || !self.monitors.is_empty()
    }
}

/// What an event that breaks an expectation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFail {
    /// It lands as usual; the breach is counted (metric, `quality` table,
    /// `weir status`).
    Warn,
    /// It goes to the DLQ, the rule's name in the reason, and is counted.
    Drop,
    /// The job stops, naming the event's partition and offset; nothing of
    /// its batch is committed.
    Fail,
}

impl OnFail {
    pub const NAMES: [&str; 3] = ["warn", "drop", "fail"];

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "warn" => Some(Self::Warn),
            "drop" => Some(Self::Drop),
            "fail" => Some(Self::Fail),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Whether `raw` keeps each message's bytes (`_payload`) beside its
/// decoded columns. Kept, `weir reprocess` decodes what was sent under the
/// current contract (a field added later is filled in); not kept, raw is
/// smaller and cheaper to write, and reprocess rebuilds from the columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    #[default]
    Kept,
    None,
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
    /// `source.topic`, or `source.topics` when the job reads several.
    pub topics: Topics,
    pub group: String,
    pub start_from: StartFrom,
    pub on_data_loss: OnDataLoss,
    pub max_message_bytes: usize,
    /// Extra librdkafka properties (security among them); they override
    /// weir's defaults.
    pub properties: BTreeMap<String, Property>,
    pub format: Format,
}

/// How message values are encoded.
#[derive(Debug, Clone)]
pub enum Format {
    /// One JSON object per message.
    Json,
    /// Avro in the Confluent wire format (magic byte 0, a 4-byte big-endian
    /// schema ID, the body), each writer schema fetched from the registry.
    Avro(Registry),
    /// JSON in the same wire format, each message validated against the
    /// JSON Schema its ID names, then read as [`Format::Json`].
    JsonSchema(Registry),
    /// Protobuf in the same wire format, read as dynamic messages of the
    /// type the frame's message indexes name.
    Protobuf(Registry),
}

impl Format {
    pub fn registry(&self) -> Option<&Registry> {
        match self {
            Self::Json => None,
            Self::Avro(r) | Self::JsonSchema(r) | Self::Protobuf(r) => Some(r),
        }
    }
}

/// A Confluent-compatible schema registry (Confluent's own, Apicurio's
/// `/apis/ccompat/v7`, Karapace, Redpanda's).
#[derive(Debug, Clone)]
pub struct Registry {
    /// The API root; `schemas/ids/{id}` and `subjects/…` are joined onto it.
    pub url: Url,
    /// Where `weir produce` registers the job's schema: `<topic>-value` by
    /// default, Confluent's TopicNameStrategy.
    pub subject: String,
    /// HTTP basic auth, as Confluent's `basic.auth.user.info`.
    pub username: Option<Property>,
    pub password: Option<Property>,
    /// A PEM bundle of extra CA certificates for an `https` registry.
    pub ca_file: Option<PathBuf>,
}

impl Registry {
    /// The basic-auth pair with `${VAR}`s resolved, if the job sets one;
    /// names the key whose variable is not set.
    pub fn credentials(&self) -> Result<Option<(String, String)>, String> {
        let resolve = |key: &str, p: &Option<Property>| {
            p.as_ref()
                .map(|p| expand_env(&p.value).map_err(|e| format!("source.registry.{key}: {e}")))
                .transpose()
        };
        let user = resolve("username", &self.username)?;
        let password = resolve("password", &self.password)?;
        Ok(user.map(|u| (u, password.unwrap_or_default())))
    }
}

/// A librdkafka property value as written, where `${VAR}` references an
/// environment variable so secrets stay out of job files. References are
/// resolved only when a Kafka client is made ([`Job::kafka_properties`]), so
/// commands that never connect (query, views, reprocess) do not need the
/// secrets. Its `Debug` never shows a value that looks secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Property {
    pub(super) value: String,
    pub(super) secret: bool,
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
pub(super) fn is_secret(key: &str) -> bool {
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
pub(super) fn expand_env(text: &str) -> Result<String, String> {
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

    pub(super) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The type an expression's Arrow values are aggregated as: integers
    /// widen to int64, decimals become float64; `None` for values no
    /// aggregate of weir's takes (lists, structs, a bare NULL).
    pub(super) fn of(ty: &DataType) -> Option<Self> {
        Some(match ty {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => Self::Int64,
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => Self::Int64,
            DataType::Float16 | DataType::Float32 => Self::Float32,
            DataType::Float64 | DataType::Decimal128(..) | DataType::Decimal256(..) => {
                Self::Float64
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Self::String,
            DataType::Boolean => Self::Bool,
            DataType::Timestamp(..) => Self::Timestamp,
            DataType::Date32 | DataType::Date64 => Self::Date,
            _ => return None,
        })
    }

    /// What a spec's `type` may be, for the error that refuses another.
    pub(super) fn choices() -> String {
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

    /// Whether it holds numbers a monitor can bound.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Self::Int32 | Self::Int64 | Self::Float32 | Self::Float64
        )
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
    /// Columns computed from the fields for the outputs (`[[schema.derived]]`),
    /// numbered after the fields: an output's field index past
    /// `fields.len()` is one of these.
    pub derived: Vec<Derived>,
    pub event_id: usize,
    pub event_time: usize,
    /// Event times further than this from now (either way) are refused.
    pub event_time_range: Duration,
    pub payload: Payload,
    /// What of each Kafka record besides its value `raw` keeps (`source.columns`).
    pub kafka: KafkaColumns,
    /// Columns after the fields, of types only a registry subject gives them.
    pub structured: Vec<Structured>,
}

/// A column of a type a registry subject gives and a spec cannot declare
/// (a record, an array, a decimal), taken from the subject with the
/// fields. It is always nullable (a writer may drop it), its value is
/// matched to its type by field name, and no aggregate takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structured {
    pub name: String,
    /// Its stored type: structs of nullable fields, lists of nullable items
    /// named `element` (as Delta names them), decimals, and scalars within.
    pub ty: DataType,
}

/// The Kafka record's own parts a job stores as columns of `raw`
/// (`_key`, `_headers`, `_topic`); its timestamp is always kept (`_kafka_ts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaColumns {
    pub key: Option<KeyFormat>,
    pub headers: bool,
    pub topic: bool,
}

/// How a stored Kafka key reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFormat {
    /// The key's bytes as sent.
    Bytes,
    /// UTF-8 text; a key that is not UTF-8 sends its message to the DLQ.
    String,
    /// Avro in the Confluent wire format, stored as this type (that of the
    /// key subject's newest schema, matched as values are); a key that
    /// cannot be read as it sends its message to the DLQ.
    Avro(DataType),
}

impl KeyFormat {
    /// The `_key` column's type.
    pub fn stored_type(&self) -> DataType {
        match self {
            Self::Bytes => DataType::Binary,
            Self::String => DataType::Utf8,
            Self::Avro(ty) => ty.clone(),
        }
    }
}

/// A column computed from an event's fields by a SQL expression, as the
/// declared type; outputs use it as they use a field. Never stored in `raw`.
#[derive(Debug, Clone)]
pub struct Derived {
    pub field: FieldDef,
    pub expr: String,
}

impl Contract {
    /// Field `i` of the outputs' inputs: the fields, then the derived columns.
    pub fn input(&self, i: usize) -> &FieldDef {
        match i.checked_sub(self.fields.len()) {
            None => &self.fields[i],
            Some(d) => &self.derived[d].field,
        }
    }

    /// The index of the field or derived column `name`.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.fields
            .iter()
            .chain(self.derived.iter().map(|d| &d.field))
            .position(|f| f.name == name)
    }

    pub fn event_id_name(&self) -> &str {
        &self.fields[self.event_id].name
    }

    pub fn event_time_name(&self) -> &str {
        &self.fields[self.event_time].name
    }

    /// The user fields as stored in Delta, then the structured columns.
    pub fn stored_fields(&self) -> Vec<Field> {
        let fields = self
            .fields
            .iter()
            .map(|f| Field::new(&f.name, f.ty.stored_type(), f.nullable));
        let structured = self
            .structured
            .iter()
            .map(|s| Field::new(&s.name, s.ty.clone(), true));
        fields.chain(structured).collect()
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
    /// Files a commit removed from a warm or cold table are deleted once
    /// they are this old.
    pub vacuum_retention: Duration,
    /// The same for hot tables, whose triggers and merges remove a file
    /// every second or so: each removal stays in every checkpoint until it
    /// is vacuumed (see [`Self::removals_kept`]), so a week of them
    /// would make every reader of the table replay megabytes of them.
    pub hot_vacuum_retention: Duration,
    /// Log entries older than this (and older than a checkpoint) are deleted.
    pub log_retention: Duration,
    /// A hot table's small files are merged once it gained this many since
    /// its last merge (see [`crate::upkeep::compact`]); `None`: only by
    /// the rounds every `every`.
    pub compact_after_files: Option<NonZeroUsize>,
}

impl Maintenance {
    /// How long files removed from a `tier` table are kept for readers of
    /// older versions before the vacuum deletes them.
    pub fn vacuum_retention(&self, tier: Tier) -> Duration {
        match tier {
            Tier::Hot => self.hot_vacuum_retention,
            Tier::Warm | Tier::Cold => self.vacuum_retention,
        }
    }

    /// How long a `tier` table's checkpoints keep the removal of a file
    /// (its `delta.deletedFileRetentionDuration`). The vacuum finds the files
    /// it deletes through those removals, so one must outlast the retention
    /// until the next round has seen it: rounds start `every` after the last
    /// one ended, and the other `every` and ten minutes cover that round's
    /// own length. Kept longer, every checkpoint grows with them; dropped
    /// sooner, the file is never deleted.
    pub fn removals_kept(&self, tier: Tier) -> Duration {
        self.vacuum_retention(tier) + 2 * self.every + Duration::from_secs(600)
    }
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
    /// The least time between two batches' cuts, unless a batch reaches
    /// `max_events` or `max_bytes` first: what bounds the commits per table
    /// per second at any input rate (as Spark's `processingTime` trigger).
    pub interval: Duration,
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
pub(super) fn parse_root(root: &str) -> Result<Url, String> {
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

pub(super) fn join(base: &Url, path: &str) -> Url {
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
    /// Data-quality rules every accepted event is held to, in order.
    pub expectations: Vec<Expectation>,
    /// Batch-level data-quality checks over windows of ingest time.
    pub monitors: Vec<Monitor>,
    /// Where `weir run` serves `/metrics` and `/healthz`, if the spec says.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How often `weir run` sends a latency probe to each partition of the
    /// topic (`probes.every`); `None`: never.
    pub probe_every: Option<Duration>,
    /// Dimension tables the outputs may join (`[[lookups]]`).
    pub lookups: Vec<Lookup>,
    /// The registry subject `schema.fields` were taken from, when the spec
    /// left them out.
    pub contract_from: Option<FromRegistry>,
}

/// A dimension table read beside each trigger's events: `sql` outputs,
/// window filters and derived columns may name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Its table name in SQL.
    pub name: String,
    pub source: LookupSource,
    /// The column that names a row: unique and never null.
    pub key: String,
    /// How often `weir run` reads the source again.
    pub refresh: Duration,
}

/// Where a lookup's rows come from, by the source's form: a `.parquet` or
/// `.csv` file (CSV with a header row), otherwise a Delta table (a folder
/// or a URL). Relative paths are made absolute when the spec is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupSource {
    Parquet(PathBuf),
    Csv(PathBuf),
    Delta(Url),
}

impl LookupSource {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        let file = || std::path::absolute(text).map_err(|e| format!("`{text}` ({e})"));
        Ok(if lower.ends_with(".parquet") {
            Self::Parquet(file()?)
        } else if lower.ends_with(".csv") {
            Self::Csv(file()?)
        } else {
            Self::Delta(parse_root(text)?)
        })
    }
}

impl std::fmt::Display for LookupSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Parquet(path) | Self::Csv(path) => write!(f, "{}", path.display()),
            Self::Delta(location) => write!(f, "{location}"),
        }
    }
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
    pub windowing: Windowing,
    /// What each window's rows are grouped by, besides the window.
    pub keys: Vec<Key>,
    /// A SQL predicate over the event's fields; only matching events count.
    pub filter: Option<String>,
    pub aggregates: Vec<Aggregate>,
}

/// How a window output groups events in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windowing {
    /// Windows of `size` starting every `hop` (tumbling when equal).
    Fixed { size: Duration, hop: Duration },
    /// Per key, events less than `gap` apart (and within one `max_length`
    /// bucket, which divides a day: a session never spans UTC midnight).
    Session { gap: Duration, max_length: Duration },
}

impl Windowing {
    /// The default cap on a session's length, as Arroyo's: a day.
    pub const SESSION_MAX: Duration = Duration::from_secs(86_400);

    /// How long before its events a row's `window_start` may be: a window's
    /// size; nothing for a session fragment, which starts at its first event.
    pub fn slack(&self) -> Duration {
        match self {
            Windowing::Fixed { size, .. } => *size,
            Windowing::Session { .. } => Duration::ZERO,
        }
    }
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
    /// What it aggregates; `None` only for `count` (all events).
    pub input: Option<Input>,
}

/// A window key: a field or derived column, or a named expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// An index into the contract's inputs.
    Field(usize),
    /// `{ name, expr }`, with the type the expression was found to have.
    Expr {
        name: String,
        sql: String,
        ty: FieldType,
    },
}

impl Key {
    /// The key's column in the output's table.
    pub fn name<'a>(&'a self, contract: &'a Contract) -> &'a str {
        match self {
            Key::Field(i) => &contract.input(*i).name,
            Key::Expr { name, .. } => name,
        }
    }
}

/// What an aggregate reads from each event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A field or derived column: an index into the contract's inputs.
    Field(usize),
    /// A SQL expression over them (`expr`), with the type it was found to
    /// have when the spec was read.
    Expr { sql: String, ty: FieldType },
}

/// Command-line values that replace what the spec says (`--data`, `--brokers`, `--topic`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data: Option<PathBuf>,
    pub brokers: Option<String>,
    pub topic: Option<String>,
}

impl Job {
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
    pub fn app_id(&self, partition: SourcePartition) -> String {
        let topic = self.source.topics.name(partition.topic);
        format!("{}{}", self.app_id_prefix(topic), partition.partition)
    }

    /// What the txn appIds of `topic`'s partitions start with.
    pub fn app_id_prefix(&self, topic: &str) -> String {
        format!("weir:{}:{topic}:", self.name)
    }

    /// The txn application ID under which `raw`'s commits vouch that table
    /// `table` holds every row of `partition` below its version: how a table
    /// with nothing to write in a trigger records its progress without a
    /// commit of its own (see [`crate::ingest::sink`]).
    pub fn vouch_app_id(&self, table: &str, partition: SourcePartition) -> String {
        format!("{}:{table}", self.app_id(partition))
    }
}
