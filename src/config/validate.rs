//! From the raw spec to the validated job: everything TOML cannot express
//! (cross-field rules, ranges, names), each refusal naming the file and the key.

use arrow::datatypes::DataType;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;
use url::Url;

use crate::table::TableId;

use super::spec::*;
use super::*;

impl Job {
    /// Reads, parses and validates a job spec file, then applies the overrides.
    pub fn load(file: &Path, overrides: &Overrides) -> Result<Job, JobError> {
        Self::load_with(file, overrides, &NoRegistry)
    }

    /// [`Job::load`] of a spec that may take its fields from a registry
    /// subject, read through `subjects`.
    pub fn load_with(
        file: &Path,
        overrides: &Overrides,
        subjects: &dyn SubjectSchemas,
    ) -> Result<Job, JobError> {
        let text = std::fs::read_to_string(file).map_err(|source| JobError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse_with(&text, file, overrides, subjects)
    }

    /// Parses and validates spec text; `file` is only used to name errors.
    pub fn parse(text: &str, file: &Path, overrides: &Overrides) -> Result<Job, JobError> {
        Self::parse_with(text, file, overrides, &NoRegistry)
    }

    /// [`Job::parse`], reading a registry subject through `subjects` when
    /// the spec leaves `schema.fields` out.
    pub fn parse_with(
        text: &str,
        file: &Path,
        overrides: &Overrides,
        subjects: &dyn SubjectSchemas,
    ) -> Result<Job, JobError> {
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
            spec.source.topic = Some(topic.clone());
            spec.source.topics = None;
        }
        let spec_hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()));
        Self::from_spec(spec, file, spec_hash, subjects)
    }

    fn from_spec(
        mut spec: JobSpec,
        file: &Path,
        spec_hash: String,
        subjects: &dyn SubjectSchemas,
    ) -> Result<Job, JobError> {
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
        let (columns, key_format) = (spec.source.columns.clone(), spec.source.key_format.clone());
        let source = validate_source(spec.source, &spec.name, &invalid)?;
        let avro_key = || key_from_registry(&source, subjects, &invalid);
        let mut kafka = validate_columns(&columns, &key_format, &avro_key, &invalid)?;
        // Rows say their partition only with their topic once there are several.
        kafka.topic |= source.topics.several();
        let (contract_from, structured) = match spec.schema.fields.is_empty() {
            true => fields_from_registry(&mut spec.schema, &source, subjects, &invalid)?,
            false => (None, Vec::new()),
        };
        let contract = Contract {
            kafka,
            ..validate_schema(spec.schema, structured, &invalid)?
        };
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

        let expectations = validate_expectations(spec.expectations, &invalid)?;
        let monitors = validate_monitors(spec.monitors, &contract, &expectations, &invalid)?;
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
        let probe_every = spec
            .probes
            .every
            .map(|every| {
                duration_key(
                    &invalid,
                    "probes.every",
                    &every,
                    (1, DAY),
                    "a duration between 1s and 1day, like \"30s\"",
                )
            })
            .transpose()?;
        let lookups = validate_lookups(spec.lookups, &invalid)?;
        Ok(Job {
            name: spec.name,
            file: file.to_owned(),
            spec_hash,
            metrics_addr,
            probe_every,
            lookups,
            source,
            contract,
            batching,
            dedup_horizon,
            watermark,
            maintenance,
            storage,
            outputs,
            expectations,
            monitors,
            contract_from,
        })
    }
}

/// Fills `schema.fields` from the registry subject of a job that reads
/// through a registry and left them out, and gives the structured columns
/// beside them; `None` (and nothing filled) for a JSON job.
fn fields_from_registry(
    schema: &mut SchemaSpec,
    source: &Source,
    subjects: &dyn SubjectSchemas,
    invalid: &Invalid,
) -> Result<(Option<FromRegistry>, Vec<Structured>), JobError> {
    let (registry, schema_type) = match &source.format {
        Format::Json => return Ok((None, Vec::new())),
        Format::Avro(r) => (r, "AVRO"),
        Format::Protobuf(r) => (r, "PROTOBUF"),
        Format::JsonSchema(r) => (r, "JSON"),
    };
    let subject = &registry.subject;
    let refused = |why: String| {
        invalid(
            "schema.fields",
            "fields, or a schema in the registry subject to take them from",
            format!("none, and subject `{subject}`: {why}"),
        )
    };
    let found = subjects.latest(registry).map_err(refused)?;
    if found.schema_type != schema_type {
        return Err(refused(format!(
            "schema ID {} is {}, and the job reads {schema_type}",
            found.id, found.schema_type
        )));
    }
    let columns = registry_fields::subject_columns(&found, &schema.event_id, &schema.event_time)
        .map_err(|why| refused(format!("schema ID {}: {why}", found.id)))?;
    schema.fields = columns.fields;
    let from = FromRegistry {
        subject: subject.clone(),
        schema_id: found.id,
        left_out: columns.left_out,
    };
    Ok((Some(from), columns.structured))
}

pub(super) fn validate_monitors(
    specs: Vec<MonitorSpec>,
    contract: &Contract,
    expectations: &[Expectation],
    invalid: &Invalid,
) -> Result<Vec<Monitor>, JobError> {
    let mut monitors: Vec<Monitor> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let key = |k: &str| format!("monitors[{i}].{k}");
        let taken = monitors.iter().any(|m| m.name == spec.name)
            || expectations.iter().any(|e| e.name == spec.name);
        if !is_identifier(&spec.name) || taken {
            return Err(invalid(
                &key("name"),
                "a name of letters, digits, `_` or `-` that no other monitor or expectation uses",
                format!("`{}`", spec.name),
            ));
        }
        let field = |numeric: bool| {
            let name = spec.field.as_deref().unwrap_or_default();
            contract
                .fields
                .iter()
                .position(|f| f.name == name && (!numeric || f.ty.is_numeric()))
                .ok_or_else(|| {
                    let what = if numeric {
                        "a numeric field"
                    } else {
                        "a field"
                    };
                    invalid(
                        &key("field"),
                        &format!("{what} of the schema"),
                        format!("`{name}`"),
                    )
                })
        };
        let check = match spec.check.as_str() {
            "volume" if spec.field.is_none() => Check::Volume,
            "null_rate" => Check::NullRate(field(false)?),
            "min" => Check::Min(field(true)?),
            "max" => Check::Max(field(true)?),
            "volume" => {
                return Err(invalid(
                    &key("field"),
                    "no field for `volume`",
                    "a field".into(),
                ));
            }
            other => {
                return Err(invalid(
                    &key("check"),
                    "`volume`, `null_rate`, `min` or `max`",
                    format!("`{other}`"),
                ));
            }
        };
        let bounded = spec.min.is_some() || spec.max.is_some();
        let ordered = matches!((spec.min, spec.max), (Some(a), Some(b)) if a > b);
        let finite = [spec.min, spec.max]
            .into_iter()
            .flatten()
            .all(f64::is_finite);
        if !bounded || ordered || !finite {
            return Err(invalid(
                &key("min"),
                "a `min`, a `max` or both (finite, `min` ≤ `max`)",
                format!("min {:?}, max {:?}", spec.min, spec.max),
            ));
        }
        let window = duration_key(
            invalid,
            &key("window"),
            &spec.window,
            (1, 86_400),
            "a duration between 1s and 1day, like \"1m\"",
        )?;
        monitors.push(Monitor {
            name: spec.name,
            check,
            min: spec.min,
            max: spec.max,
            window,
        });
    }
    Ok(monitors)
}

/// Names and actions checked here; whether each rule plans over the
/// event's fields is checked when the job starts (the expectation stage).
pub(super) fn validate_expectations(
    specs: Vec<ExpectationSpec>,
    invalid: &Invalid,
) -> Result<Vec<Expectation>, JobError> {
    let mut expectations: Vec<Expectation> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let key = |k: &str| format!("expectations[{i}].{k}");
        let taken = expectations.iter().any(|e| e.name == spec.name);
        if !is_identifier(&spec.name) || taken {
            return Err(invalid(
                &key("name"),
                "a name of letters, digits, `_` or `-` that no other expectation uses",
                format!("`{}`", spec.name),
            ));
        }
        if spec.rule.trim().is_empty() {
            return Err(invalid(
                &key("rule"),
                "a SQL condition over the event's fields",
                "an empty string".into(),
            ));
        }
        let on_fail = OnFail::parse(&spec.on_fail).ok_or_else(|| {
            invalid(
                &key("on_fail"),
                "`warn`, `drop` or `fail`",
                format!("`{}`", spec.on_fail),
            )
        })?;
        expectations.push(Expectation {
            name: spec.name,
            rule: spec.rule,
            on_fail,
        });
    }
    Ok(expectations)
}

/// Names, sources and refresh intervals checked here; whether the source
/// reads and its key is unique, when a command loads it.
fn validate_lookups(specs: Vec<LookupSpec>, invalid: &Invalid) -> Result<Vec<Lookup>, JobError> {
    let mut lookups: Vec<Lookup> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let key = |k: &str| format!("lookups[{i}].{k}");
        let sql_name = spec.name.starts_with(|c: char| c.is_ascii_lowercase())
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let taken = lookups.iter().any(|l| l.name == spec.name);
        if !sql_name || taken || spec.name == "batch" {
            return Err(invalid(
                &key("name"),
                "a table name of lowercase letters, digits and `_`, starting with a letter, not `batch`, that no other lookup uses",
                format!("`{}`", spec.name),
            ));
        }
        for (k, value) in [("source", &spec.source), ("key", &spec.key)] {
            if value.trim().is_empty() {
                return Err(invalid(&key(k), "a value", "an empty string".into()));
            }
        }
        let refresh = duration_key(
            invalid,
            &key("refresh"),
            &spec.refresh,
            (1, DAY),
            "a duration between 1s and 1day, like \"5m\"",
        )?;
        let source = LookupSource::parse(&spec.source).map_err(|found| {
            invalid(
                &key("source"),
                "a .parquet or .csv file, or a Delta table (a folder, file:// or s3://)",
                found,
            )
        })?;
        lookups.push(Lookup {
            name: spec.name,
            source,
            key: spec.key,
            refresh,
        });
    }
    Ok(lookups)
}

/// The type of SQL expression `sql` over the event's fields and derived
/// columns, planned (not run) by DataFusion; why not, when it does not plan
/// or is of no type weir aggregates.
fn expression_type(sql: &str, contract: &Contract) -> Result<FieldType, String> {
    use datafusion::common::DFSchema;
    use datafusion::logical_expr::ExprSchemable;

    let derived = contract.derived.iter().map(|d| &d.field);
    let derived = derived.map(|f| arrow::datatypes::Field::new(&f.name, f.ty.stored_type(), true));
    let fields: Vec<_> = contract
        .stored_fields()
        .into_iter()
        .chain(derived)
        .collect();
    let schema =
        DFSchema::try_from(arrow::datatypes::Schema::new(fields)).map_err(|e| e.to_string())?;
    let state = datafusion::prelude::SessionContext::new().state();
    let expr = state
        .create_logical_expr(sql, &schema)
        .and_then(|e| e.get_type(&schema).map(|ty| (e, ty)));
    match expr {
        Ok((_, ty)) => FieldType::of(&ty).ok_or_else(|| format!("`{sql}`, which is {ty}")),
        Err(e) => Err(format!("`{sql}` ({})", e.find_root())),
    }
}

pub(super) type Invalid<'a> = dyn Fn(&str, &str, String) -> JobError + 'a;

pub(super) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) fn validate_source(
    spec: SourceSpec,
    job: &str,
    invalid: &Invalid,
) -> Result<Source, JobError> {
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
    let topics = validate_topics(spec.topic, spec.topics, invalid)?;
    let group = spec.group.unwrap_or_else(|| format!("weir-{job}"));
    if group.trim().is_empty() {
        return Err(invalid(
            "source.group",
            "a consumer group name",
            "an empty string".into(),
        ));
    }
    let start_from = StartFrom::parse(&spec.start_from).ok_or_else(|| {
        invalid(
            "source.start_from",
            StartFrom::EXPECTED,
            format!("`{}`", spec.start_from),
        )
    })?;
    if topics.several() && matches!(start_from, StartFrom::Offsets(_)) {
        return Err(invalid(
            "source.start_from",
            "`earliest`, `latest` or `timestamp:…` for a job of several topics (offsets name partitions of one topic)",
            format!("`{}`", spec.start_from),
        ));
    }
    let format = validate_format(&spec.format, spec.registry, topics.first(), invalid)?;
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
        topics,
        group,
        start_from,
        on_data_loss: spec.on_data_loss,
        max_message_bytes: spec.max_message_bytes as usize,
        properties,
        format,
    })
}

/// `source.topic` or `source.topics` (exactly one), each name by Kafka's own
/// rule, none twice.
fn validate_topics(
    topic: Option<String>,
    topics: Option<Vec<String>>,
    invalid: &Invalid,
) -> Result<Topics, JobError> {
    let (key, names) = match (topic, topics) {
        (Some(topic), None) => ("source.topic", vec![topic]),
        (None, Some(topics)) => ("source.topics", topics),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "source.topics",
                "either `source.topic` or `source.topics`, not both",
                "both".into(),
            ));
        }
        (None, None) => {
            return Err(invalid(
                "source.topic",
                "the topic to read (or `source.topics`, a list)",
                "neither".into(),
            ));
        }
    };
    for (i, name) in names.iter().enumerate() {
        let legal = !name.is_empty()
            && name.len() <= 249
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !legal {
            return Err(invalid(
                key,
                "Kafka topic names (1–249 of a-z A-Z 0-9 . _ -)",
                format!("`{name}`"),
            ));
        }
        if names[..i].contains(name) {
            return Err(invalid(key, "each topic once", format!("`{name}` twice")));
        }
    }
    let count = names.len();
    Topics::new(names).ok_or_else(|| {
        invalid(
            key,
            &format!("between 1 and {MAX_TOPICS} topics"),
            count.to_string(),
        )
    })
}

fn validate_format(
    format: &str,
    registry: Option<RegistrySpec>,
    topic: &str,
    invalid: &Invalid,
) -> Result<Format, JobError> {
    match (format, registry) {
        ("json", None) => Ok(Format::Json),
        ("json", Some(_)) => Err(invalid(
            "source.registry",
            "no registry for `source.format = \"json\"` (a registry is read for `avro`, `protobuf` and `json_schema`)",
            "a registry".into(),
        )),
        ("avro", Some(r)) => Ok(Format::Avro(validate_registry(r, topic, invalid)?)),
        ("json_schema", Some(r)) => Ok(Format::JsonSchema(validate_registry(r, topic, invalid)?)),
        ("protobuf", Some(r)) => Ok(Format::Protobuf(validate_registry(r, topic, invalid)?)),
        (framed @ ("avro" | "json_schema" | "protobuf"), None) => Err(invalid(
            "source.registry",
            &format!(
                "a registry (`registry = {{ url = \"http://host:8081\" }}`) for `source.format = \"{framed}\"`"
            ),
            "none".into(),
        )),
        (other, _) => Err(invalid(
            "source.format",
            "`json`, `avro`, `protobuf` or `json_schema`",
            format!("`{other}`"),
        )),
    }
}

fn validate_registry(
    spec: RegistrySpec,
    topic: &str,
    invalid: &Invalid,
) -> Result<Registry, JobError> {
    let url = Url::parse(&spec.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        .ok_or_else(|| {
            invalid(
                "source.registry.url",
                "an http:// or https:// URL",
                format!("`{}`", spec.url),
            )
        })?;
    let subject = spec.subject.unwrap_or_else(|| format!("{topic}-value"));
    if subject.trim().is_empty() {
        return Err(invalid(
            "source.registry.subject",
            "a subject name",
            "an empty string".into(),
        ));
    }
    if spec.password.is_some() && spec.username.is_none() {
        return Err(invalid(
            "source.registry.password",
            "a password only beside `username`",
            "a password alone".into(),
        ));
    }
    let secret = |value| Property {
        value,
        secret: true,
    };
    Ok(Registry {
        url,
        subject,
        username: spec.username.map(|value| Property {
            value,
            secret: false,
        }),
        password: spec.password.map(secret),
        ca_file: spec.ca_file,
    })
}

pub(super) fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// The contract of `spec`'s fields, with the `structured` columns a
/// registry subject gave beside them.
pub(super) fn validate_schema(
    spec: SchemaSpec,
    structured: Vec<Structured>,
    invalid: &Invalid,
) -> Result<Contract, JobError> {
    if spec.fields.is_empty() {
        return Err(invalid(
            "schema.fields",
            "at least one field (a job reading through a registry may leave them to its subject)",
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
    let columns: Vec<&str> = fields
        .iter()
        .map(|f| f.name.as_str())
        .chain(structured.iter().map(|s| s.name.as_str()))
        .collect();
    let derived = validate_derived(spec.derived, &columns, invalid)?;
    Ok(Contract {
        fields,
        derived,
        event_id,
        event_time,
        event_time_range,
        payload: spec.payload,
        kafka: KafkaColumns::default(),
        structured,
    })
}

/// Names and types checked here; whether each expression plans, and as
/// its type, is checked when the outputs are planned.
fn validate_derived(
    specs: Vec<DerivedSpec>,
    columns: &[&str],
    invalid: &Invalid,
) -> Result<Vec<Derived>, JobError> {
    let mut derived: Vec<Derived> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let key = |k: &str| format!("schema.derived[{i}].{k}");
        let taken = columns.contains(&spec.name.as_str())
            || derived.iter().any(|d| d.field.name == spec.name);
        if !is_identifier(&spec.name) || spec.name.starts_with('_') || taken {
            return Err(invalid(
                &key("name"),
                "a name of letters, digits, `_` or `-`, not starting with `_`, that no field or other derived column uses",
                format!("`{}`", spec.name),
            ));
        }
        let ty = FieldType::parse(&spec.ty).ok_or_else(|| {
            invalid(
                &key("type"),
                &FieldType::choices(),
                format!("`{}`", spec.ty),
            )
        })?;
        if spec.expr.trim().is_empty() {
            return Err(invalid(
                &key("expr"),
                "a SQL expression over the event's fields",
                "an empty string".into(),
            ));
        }
        derived.push(Derived {
            field: FieldDef {
                name: spec.name,
                ty,
                nullable: true,
            },
            expr: spec.expr,
        });
    }
    Ok(derived)
}

/// The stored type of an Avro key: the newest schema of the first topic's
/// `<topic>-key` subject (Confluent's TopicNameStrategy for keys).
fn key_from_registry(
    source: &Source,
    subjects: &dyn SubjectSchemas,
    invalid: &Invalid,
) -> Result<DataType, JobError> {
    let Format::Avro(registry) = &source.format else {
        return Err(invalid(
            "source.key_format",
            "`bytes` or `string` (`avro` keys need `source.format = \"avro\"`)",
            "`avro`".into(),
        ));
    };
    let registry = Registry {
        subject: format!("{}-key", source.topics.first()),
        ..registry.clone()
    };
    let refused = |why: String| {
        let found = format!("`avro`, and subject `{}`: {why}", registry.subject);
        invalid(
            "source.key_format",
            "an Avro schema in the key subject",
            found,
        )
    };
    let found = subjects.latest(&registry).map_err(refused)?;
    if found.schema_type != "AVRO" {
        let why = format!("schema ID {} is {}", found.id, found.schema_type);
        return Err(refused(why));
    }
    registry_fields::avro_key_type(&found.schema)
        .map_err(|why| refused(format!("schema ID {}: {why}", found.id)))
}

fn validate_columns(
    columns: &[String],
    key_format: &str,
    avro_key: &dyn Fn() -> Result<DataType, JobError>,
    invalid: &Invalid,
) -> Result<KafkaColumns, JobError> {
    let mut kafka = KafkaColumns::default();
    let keys_stored = columns.iter().any(|c| c == "key");
    let format = match key_format {
        "bytes" => KeyFormat::Bytes,
        "string" => KeyFormat::String,
        "avro" if keys_stored => KeyFormat::Avro(avro_key()?),
        // Refused below: a key format without the key column.
        "avro" => KeyFormat::Bytes,
        other => {
            return Err(invalid(
                "source.key_format",
                "`bytes`, `string` or `avro`",
                format!("`{other}`"),
            ));
        }
    };
    for (i, column) in columns.iter().enumerate() {
        if columns[..i].contains(column) {
            return Err(invalid(
                "source.columns",
                "each column once",
                format!("`{column}` twice"),
            ));
        }
        match column.as_str() {
            "key" => kafka.key = Some(format.clone()),
            "headers" => kafka.headers = true,
            "topic" => kafka.topic = true,
            // Always stored, as `_kafka_ts`; naming it is allowed.
            "timestamp" => {}
            other => {
                return Err(invalid(
                    "source.columns",
                    "a list of `key`, `headers`, `timestamp`, `topic`",
                    format!("`{other}`"),
                ));
            }
        }
    }
    if kafka.key.is_none() && key_format != "bytes" {
        return Err(invalid(
            "source.key_format",
            "a key format only beside `source.columns = [\"key\", …]`",
            format!("`{key_format}`"),
        ));
    }
    Ok(kafka)
}

pub(super) fn validate_watermark(
    spec: WatermarkSpec,
    invalid: &Invalid,
) -> Result<WatermarkPolicy, JobError> {
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

pub(super) const ROOT_EXPECTED: &str = "a local path, a file:// URL or an s3://bucket/prefix URL";

pub(super) fn validate_storage(
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

pub(super) fn validate_maintenance(
    spec: MaintenanceSpec,
    invalid: &Invalid,
) -> Result<Maintenance, JobError> {
    let every = duration_key(
        invalid,
        "maintenance.every",
        &spec.every,
        (1, 7 * DAY),
        "a duration between 1s and 7days, like \"10m\"",
    )?;
    let retention = |key: &str, text: &str, like: &str| {
        duration_key(
            invalid,
            &format!("maintenance.{key}"),
            text,
            (0, 3650 * DAY),
            &format!("a duration between 0s and 3650days, like \"{like}\""),
        )
    };
    let vacuum_retention = retention("vacuum_retention", &spec.vacuum_retention, "7days")?;
    let hot_vacuum_retention = retention("hot_vacuum_retention", &spec.hot_vacuum_retention, "1h")?;
    let log_retention = retention("log_retention", &spec.log_retention, "30days")?;
    if !(1..=4096).contains(&spec.target_file_mib) {
        return Err(invalid(
            "maintenance.target_file_mib",
            "a size in MiB between 1 and 4096",
            spec.target_file_mib.to_string(),
        ));
    }
    if spec.compact_after_files > 1_000_000 {
        return Err(invalid(
            "maintenance.compact_after_files",
            "a number of files between 0 (off) and 1000000",
            spec.compact_after_files.to_string(),
        ));
    }
    Ok(Maintenance {
        every,
        target_file_bytes: spec.target_file_mib * 1024 * 1024,
        vacuum_retention,
        hot_vacuum_retention,
        log_retention,
        compact_after_files: NonZeroUsize::new(spec.compact_after_files as usize),
    })
}

pub(super) const DAY: u64 = 86400;

/// Parses duration key `key` within `bounds` (seconds, inclusive); otherwise
/// the error says what was `expected` and what was found.
pub(super) fn duration_key(
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
pub(super) fn parse_duration(text: &str, min_secs: u64, max_secs: u64) -> Option<Duration> {
    humantime::parse_duration(text)
        .ok()
        .filter(|d| (Duration::from_secs(min_secs)..=Duration::from_secs(max_secs)).contains(d))
}

pub(super) fn validate_output(
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
        || TableId::ingest(&lower).is_some()
    {
        return Err(invalid(
            &key("name"),
            "a name of letters, digits, `_` or `-`, not starting with `_`, without `__` (weir's own table names use it), and not raw, dlq, late or quality in any case",
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
    let windowing = validate_windowing(window, spec.hop.as_deref(), &key, invalid)?;
    let field = |k: &str, name: &str| {
        contract.input_index(name).ok_or_else(|| {
            invalid(
                k,
                "the name of a field in schema.fields or schema.derived",
                format!("`{name}`"),
            )
        })
    };
    let mut keys: Vec<Key> = Vec::with_capacity(spec.keys.len());
    for (k, spec) in spec.keys.into_iter().enumerate() {
        let kkey = |part: &str| key(&format!("keys[{k}]{part}"));
        keys.push(match spec {
            KeySpec::Field(name) => Key::Field(field(&kkey(""), &name)?),
            KeySpec::Expr(KeyExprSpec { name, expr }) => {
                let taken = contract.input_index(&name).is_some()
                    || ["window_start", "window_end"].contains(&name.as_str())
                    || keys.iter().any(|earlier| earlier.name(contract) == name);
                if !is_identifier(&name) || name.contains("__") || taken {
                    return Err(invalid(
                        &kkey(".name"),
                        "a new column name (letters, digits, `_`; no `__`; not a field, derived column, other key or window column)",
                        format!("`{name}`"),
                    ));
                }
                let ty = expression_type(&expr, contract).map_err(|found| {
                    invalid(
                        &kkey(".expr"),
                        "a SQL expression over the event's fields (and derived columns)",
                        found,
                    )
                })?;
                Key::Expr {
                    name,
                    sql: expr,
                    ty,
                }
            }
        });
    }
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
            || keys.iter().any(|k| k.name(contract) == agg.name)
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
        let input = match (agg.field, agg.expr, func) {
            (None, None, AggregateFn::Count) => None,
            (None, None, _) => {
                return Err(invalid(
                    &akey("field"),
                    "the field to aggregate (or `expr`, an expression to)",
                    "nothing".into(),
                ));
            }
            (Some(_), Some(_), _) => {
                return Err(invalid(
                    &akey("expr"),
                    "either `field` or `expr`",
                    "both".into(),
                ));
            }
            (Some(name), None, _) => Some(Input::Field(field(&akey("field"), &name)?)),
            (None, Some(sql), _) => {
                let ty = expression_type(&sql, contract).map_err(|found| {
                    invalid(
                        &akey("expr"),
                        "a SQL expression over the event's fields (and derived columns) of a type weir aggregates",
                        found,
                    )
                })?;
                Some(Input::Expr { sql, ty })
            }
        };
        let (ty, named) = match &input {
            Some(Input::Field(f)) => (contract.input(*f).ty, "field"),
            Some(Input::Expr { ty, .. }) => (*ty, "expr"),
            None => (FieldType::Int64, "field"),
        };
        if matches!(func, AggregateFn::Sum | AggregateFn::Avg) && !ty.is_numeric() {
            return Err(invalid(
                &akey(named),
                "a number (int32, int64, float32, float64)",
                format!("a {}", ty.name()),
            ));
        }
        aggregates.push(Aggregate {
            name: agg.name,
            func,
            input,
        });
    }
    Ok(Output::Window(WindowOutput {
        name: spec.name,
        windowing,
        keys,
        filter: spec.filter,
        aggregates,
    }))
}

/// A window's timing: a duration (and `hop`), or a session's gap and cap.
fn validate_windowing(
    window: WindowSpec,
    hop: Option<&str>,
    key: &dyn Fn(&str) -> String,
    invalid: &Invalid,
) -> Result<Windowing, JobError> {
    let whole = |d: Duration, k: &str, text: &str| {
        if d.subsec_millis() == 0 {
            Ok(d)
        } else {
            Err(invalid(&key(k), "whole seconds", format!("`{text}`")))
        }
    };
    let window = match window {
        WindowSpec::Fixed(window) => window,
        WindowSpec::Session(session) => {
            if let Some(hop) = hop {
                return Err(invalid(
                    &key("hop"),
                    "no hop beside a session window",
                    format!("`{hop}`"),
                ));
            }
            let gap = duration_key(
                invalid,
                &key("window.session_gap"),
                &session.session_gap,
                (1, DAY),
                "a duration between 1s and 1day, like \"30m\"",
            )?;
            let gap = whole(gap, "window.session_gap", &session.session_gap)?;
            let max_length = match &session.max_length {
                None => Windowing::SESSION_MAX,
                Some(text) => parse_duration(text, 1, DAY)
                    .filter(|m| {
                        m.subsec_millis() == 0 && DAY.is_multiple_of(m.as_secs()) && *m >= gap
                    })
                    .ok_or_else(|| {
                        invalid(
                            &key("window.max_length"),
                            "whole seconds that divide a day and are at least the gap, like \"6h\"",
                            format!("`{text}`"),
                        )
                    })?,
            };
            return Ok(Windowing::Session { gap, max_length });
        }
    };
    let size = duration_key(
        invalid,
        &key("window"),
        &window,
        (1, DAY),
        "a duration between 1s and 1day, like \"1m\", or { session_gap = \"30m\" }",
    )?;
    let size = whole(size, "window", &window)?;
    let hop = match hop {
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
    let hop = whole(hop, "window", &window)?;
    Ok(Windowing::Fixed { size, hop })
}

pub(super) fn validate_batching(
    spec: BatchingSpec,
    invalid: &Invalid,
) -> Result<Batching, JobError> {
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
    let default_interval = if spec.adaptive.is_some() {
        0
    } else {
        default_interval_ms()
    };
    let interval_ms = spec.interval_ms.unwrap_or(default_interval);
    if interval_ms > 3_600_000 {
        return Err(invalid(
            "batching.interval_ms",
            "milliseconds between 0 and 3600000",
            interval_ms.to_string(),
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
        interval: Duration::from_millis(interval_ms),
        adaptive,
    })
}
