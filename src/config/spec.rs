//! The raw job spec, exactly as written in TOML: what serde reads before
//! anything is checked (unknown keys and wrong TOML types fail here, with
//! toml's own line/column report). [`super::validate`] turns it into a
//! [`super::Job`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobSpec {
    pub(super) name: String,
    pub(super) source: SourceSpec,
    pub(super) schema: SchemaSpec,
    #[serde(default, alias = "batch")]
    pub(super) batching: BatchingSpec,
    #[serde(default)]
    pub(super) dedup: DedupSpec,
    #[serde(default)]
    pub(super) watermark: WatermarkSpec,
    #[serde(default)]
    pub(super) maintenance: MaintenanceSpec,
    pub(super) storage: StorageSpec,
    #[serde(default)]
    pub(super) tiers: TiersSpec,
    #[serde(default)]
    pub(super) outputs: Vec<OutputSpec>,
    #[serde(default)]
    pub(super) expectations: Vec<ExpectationSpec>,
    #[serde(default)]
    pub(super) monitors: Vec<MonitorSpec>,
    #[serde(default)]
    pub(super) metrics: MetricsSpec,
    #[serde(default)]
    pub(super) probes: ProbesSpec,
    #[serde(default)]
    pub(super) lookups: Vec<LookupSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LookupSpec {
    pub(super) name: String,
    pub(super) source: String,
    pub(super) key: String,
    #[serde(default = "default_lookup_refresh")]
    pub(super) refresh: String,
}

pub(super) fn default_lookup_refresh() -> String {
    "5m".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MonitorSpec {
    pub(super) name: String,
    pub(super) check: String,
    pub(super) field: Option<String>,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
    #[serde(default = "default_monitor_window")]
    pub(super) window: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExpectationSpec {
    pub(super) name: String,
    pub(super) rule: String,
    #[serde(default = "default_on_fail")]
    pub(super) on_fail: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProbesSpec {
    pub(super) every: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsSpec {
    pub(super) addr: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutputSpec {
    pub(super) name: String,
    pub(super) window: Option<WindowSpec>,
    pub(super) hop: Option<String>,
    #[serde(default)]
    pub(super) keys: Vec<KeySpec>,
    pub(super) filter: Option<String>,
    #[serde(default)]
    pub(super) aggregates: Vec<AggregateSpec>,
    pub(super) sql: Option<String>,
}

/// A window: a duration (tumbling, or hopping with `hop`), or a session.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum WindowSpec {
    Fixed(String),
    Session(SessionSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionSpec {
    pub(super) session_gap: String,
    pub(super) max_length: Option<String>,
}

/// A window key: a field's name, or a named expression.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum KeySpec {
    Field(String),
    Expr(KeyExprSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyExprSpec {
    pub(super) name: String,
    pub(super) expr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AggregateSpec {
    pub(super) name: String,
    #[serde(rename = "fn")]
    pub(super) func: String,
    pub(super) field: Option<String>,
    pub(super) expr: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DedupSpec {
    #[serde(default = "default_horizon")]
    pub(super) horizon: String,
}

impl Default for DedupSpec {
    fn default() -> Self {
        Self {
            horizon: default_horizon(),
        }
    }
}

pub(super) fn default_horizon() -> String {
    "1h".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WatermarkSpec {
    #[serde(default = "default_allowed_lateness")]
    pub(super) allowed_lateness: String,
    #[serde(default = "default_idle_timeout")]
    pub(super) idle_timeout: String,
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
pub(super) struct MaintenanceSpec {
    #[serde(default = "default_maintenance_every")]
    pub(super) every: String,
    #[serde(default = "default_target_file_mib")]
    pub(super) target_file_mib: u64,
    #[serde(default = "default_vacuum_retention")]
    pub(super) vacuum_retention: String,
    #[serde(default = "default_hot_vacuum_retention")]
    pub(super) hot_vacuum_retention: String,
    #[serde(default = "default_log_retention")]
    pub(super) log_retention: String,
    #[serde(default = "default_compact_after_files")]
    pub(super) compact_after_files: u64,
}

impl Default for MaintenanceSpec {
    fn default() -> Self {
        Self {
            every: default_maintenance_every(),
            target_file_mib: default_target_file_mib(),
            vacuum_retention: default_vacuum_retention(),
            hot_vacuum_retention: default_hot_vacuum_retention(),
            log_retention: default_log_retention(),
            compact_after_files: default_compact_after_files(),
        }
    }
}

pub(super) fn default_maintenance_every() -> String {
    "10m".into()
}
pub(super) fn default_target_file_mib() -> u64 {
    128
}
pub(super) fn default_vacuum_retention() -> String {
    "7days".into()
}
pub(super) fn default_hot_vacuum_retention() -> String {
    "1h".into()
}
pub(super) fn default_log_retention() -> String {
    "30days".into()
}

pub(super) fn default_allowed_lateness() -> String {
    "1m".into()
}
pub(super) fn default_idle_timeout() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceSpec {
    pub(super) brokers: String,
    pub(super) topic: Option<String>,
    pub(super) topics: Option<Vec<String>>,
    pub(super) group: Option<String>,
    #[serde(default = "default_start_from")]
    pub(super) start_from: String,
    #[serde(default)]
    pub(super) on_data_loss: OnDataLoss,
    #[serde(default = "default_format")]
    pub(super) format: String,
    #[serde(default = "default_max_message_bytes")]
    pub(super) max_message_bytes: u64,
    #[serde(default)]
    pub(super) properties: BTreeMap<String, String>,
    pub(super) registry: Option<RegistrySpec>,
    #[serde(default)]
    pub(super) columns: Vec<String>,
    #[serde(default = "default_key_format")]
    pub(super) key_format: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistrySpec {
    pub(super) url: String,
    pub(super) subject: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SchemaSpec {
    pub(super) event_id: String,
    pub(super) event_time: String,
    #[serde(default = "default_event_time_range")]
    pub(super) event_time_range: String,
    #[serde(default)]
    pub(super) payload: Payload,
    /// Empty: taken from the registry subject (Avro only).
    #[serde(default)]
    pub(super) fields: Vec<FieldSpec>,
    #[serde(default)]
    pub(super) derived: Vec<DerivedSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DerivedSpec {
    pub(super) name: String,
    pub(super) expr: String,
    #[serde(rename = "type")]
    pub(super) ty: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FieldSpec {
    pub(super) name: String,
    #[serde(rename = "type")]
    pub(super) ty: String,
    #[serde(default = "default_true")]
    pub(super) nullable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchingSpec {
    #[serde(default = "default_min_events")]
    pub(super) min_events: u64,
    #[serde(default = "default_max_events")]
    pub(super) max_events: u64,
    #[serde(default = "default_max_wait_ms")]
    pub(super) max_wait_ms: u64,
    #[serde(default = "default_max_bytes")]
    pub(super) max_bytes: u64,
    /// Default: [`default_interval_ms`], or none under adaptive batching.
    #[serde(default)]
    pub(super) interval_ms: Option<u64>,
    #[serde(default)]
    pub(super) adaptive: Option<AdaptiveSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdaptiveSpec {
    pub(super) target_p99_ms: u64,
}

impl Default for BatchingSpec {
    fn default() -> Self {
        Self {
            min_events: default_min_events(),
            max_events: default_max_events(),
            max_wait_ms: default_max_wait_ms(),
            max_bytes: default_max_bytes(),
            interval_ms: None,
            adaptive: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StorageSpec {
    pub(super) root: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TiersSpec {
    #[serde(default)]
    pub(super) hot: TierSpec,
    #[serde(default)]
    pub(super) warm: TierSpec,
    #[serde(default)]
    pub(super) cold: ColdTierSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TierSpec {
    pub(super) root: Option<String>,
    pub(super) max_age: Option<String>,
}

/// Cold keeps everything older than warm's age: it has no age of its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ColdTierSpec {
    pub(super) root: Option<String>,
}

pub(super) fn default_key_format() -> String {
    "bytes".into()
}

pub(super) fn default_monitor_window() -> String {
    "1m".into()
}
pub(super) fn default_on_fail() -> String {
    "warn".into()
}
pub(super) fn default_start_from() -> String {
    "earliest".into()
}
pub(super) fn default_format() -> String {
    "json".into()
}
pub(super) fn default_max_message_bytes() -> u64 {
    1024 * 1024
}
pub(super) fn default_event_time_range() -> String {
    "10years".into()
}
pub(super) fn default_true() -> bool {
    true
}
/// About a minute of triggers at the default interval.
pub(super) fn default_compact_after_files() -> u64 {
    64
}
pub(super) fn default_min_events() -> u64 {
    100
}
/// A cap for memory's sake: at the default interval, a batch is cut by
/// time (or by `max_bytes`) long before it holds this many.
pub(super) fn default_max_events() -> u64 {
    100_000
}
/// One trigger a second: each table commits at most once a second whatever
/// the input rate, which keeps its log and file count small.
pub(super) fn default_interval_ms() -> u64 {
    1000
}
pub(super) fn default_max_wait_ms() -> u64 {
    250
}
/// 16 MiB: a second of 10,000 typical events is well under it, while
/// the few batches the queues hold stay small however large messages are.
pub(super) fn default_max_bytes() -> u64 {
    16 << 20
}
