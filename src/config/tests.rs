use arrow::datatypes::DataType;
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use super::fixture::Spec;
use super::job::*;
use super::*;

/// A valid spec the tests below change one key of.
static GOOD: LazyLock<String> = LazyLock::new(|| {
    Spec {
        name: "clicks",
        brokers: "localhost:9092",
        fields: &[r#"{ name = "n",  type = "int64", nullable = false }"#],
        root: "/tmp/weir-test",
        ..Spec::default()
    }
    .toml()
});

#[test]
fn the_metrics_address_is_a_socket_address() {
    let job = parse(&format!("{}[metrics]\naddr = \"0.0.0.0:9100\"\n", *GOOD)).unwrap();
    assert_eq!(job.metrics_addr, Some("0.0.0.0:9100".parse().unwrap()));
    let err = parse(&format!("{}[metrics]\naddr = \"nope\"\n", *GOOD)).unwrap_err();
    assert!(err.to_string().contains("metrics.addr"), "{err}");
}

#[test]
fn probes_are_off_unless_asked_and_their_interval_is_bounded() {
    assert_eq!(parse(&GOOD).unwrap().probe_every, None);
    let job = parse(&format!("{}[probes]\nevery = \"30s\"\n", *GOOD)).unwrap();
    assert_eq!(job.probe_every, Some(Duration::from_secs(30)));
    for bad in ["0s", "2days", "often"] {
        let err = parse(&format!("{}[probes]\nevery = \"{bad}\"\n", *GOOD)).unwrap_err();
        assert!(err.to_string().contains("probes.every"), "{err}");
    }
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
    let job = parse(&GOOD).unwrap();
    assert_eq!(job.source.group, "weir-clicks");
    assert_eq!(job.source.start_from, StartFrom::Earliest);
    assert_eq!(job.contract.payload, Payload::Kept);
    assert_eq!(job.batching.min_events, 100);
    assert_eq!(job.batching.max_events, 100_000);
    assert_eq!(job.batching.max_wait, Duration::from_millis(250));
    assert_eq!(job.batching.interval, Duration::from_secs(1));
    assert_eq!(job.dedup_horizon, Duration::from_secs(3600));
    assert_eq!(job.contract.event_id_name(), "id");
    assert!(!job.contract.fields[2].nullable);
    assert_eq!(
        job.app_id(SourcePartition::first(3)),
        "weir:clicks:clicks:3"
    );
    assert_eq!(
        job.storage.hot_table("clicks", "raw").as_str(),
        "file:///tmp/weir-test/hot/clicks/raw/"
    );
}

/// Hot tables keep removed files an hour, the others a week; their logs keep
/// the removals two rounds and ten minutes longer, for the vacuum to find them.
#[test]
fn removed_files_are_kept_by_tier() {
    let minutes = |n: u64| Duration::from_secs(60 * n);
    let m = parse(&GOOD).unwrap().maintenance;
    assert_eq!(m.vacuum_retention(Tier::Hot), minutes(60));
    assert_eq!(m.vacuum_retention(Tier::Cold), minutes(7 * 24 * 60));
    assert_eq!(m.removals_kept(Tier::Hot), minutes(60 + 20 + 10));
    let spec = GOOD.replace(
        "[storage]",
        "[maintenance]\nhot_vacuum_retention = \"0s\"\nevery = \"1m\"\n[storage]",
    );
    let m = parse(&spec).unwrap().maintenance;
    assert_eq!(m.removals_kept(Tier::Hot), minutes(12));
    assert_eq!(m.removals_kept(Tier::Warm), minutes(7 * 24 * 60 + 12));
}

#[test]
fn overrides_replace_spec_values() {
    let overrides = Overrides {
        data: Some("/tmp/elsewhere".into()),
        brokers: Some("embedded".into()),
        topic: Some("other".into()),
    };
    let job = Job::parse(&GOOD, Path::new("t.toml"), &overrides).unwrap();
    assert_eq!(job.storage.root.as_str(), "file:///tmp/elsewhere/");
    assert_eq!(job.source.brokers, Brokers::Embedded);
    assert_eq!(job.source.topics.names(), ["other"]);
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
        // The controller picks the batch size for latency: no interval holds it back.
        assert_eq!(job.batching.interval, Duration::ZERO);
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
    assert!(err.contains("key `source.topic`"), "{err}");
    assert!(err.contains("found neither"), "{err}");
}

#[test]
fn several_topics_are_one_job_whose_rows_say_their_topic() {
    let job =
        parse(&GOOD.replace("topic = \"clicks\"", "topics = [\"clicks\", \"clicks.eu\"]")).unwrap();
    assert_eq!(job.source.topics.names(), ["clicks", "clicks.eu"]);
    assert!(job.contract.kafka.topic, "raw stores _topic");
    let eu = job.source.topics.partition("clicks.eu", 2).unwrap();
    assert_eq!(job.app_id(eu), "weir:clicks:clicks.eu:2");
    let refused = [
        ("topics = []", "between 1 and 1024 topics"),
        ("topics = [\"a\", \"a\"]", "`a` twice"),
        ("topics = [\"a\", \"b c\"]", "`b c`"),
        ("topic = \"a\"\ntopics = [\"b\"]", "not both"),
        (
            "topics = [\"a\", \"b\"]\nstart_from = \"offsets:0=5\"",
            "source.start_from",
        ),
    ];
    for (source, expected) in refused {
        let err = error_of(&GOOD.replace("topic = \"clicks\"", source));
        assert!(err.contains(expected), "{source}: {err}");
    }
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
            GOOD.replace("[storage]", "[batching]\ninterval_ms = 3600001\n[storage]"),
            "batching.interval_ms",
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
        (
            GOOD.replace(
                "[storage]",
                "[maintenance]\nhot_vacuum_retention = \"-1h\"\n[storage]",
            ),
            "maintenance.hot_vacuum_retention",
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
    format!("{}\n[[outputs]]\n{lines}\n", *GOOD)
}

const OUTPUT: &str = "name = \"o\"\nwindow = \"1m\"\nkeys = [\"n\"]\n\
                      aggregates = [{ name = \"c\", fn = \"count\" }]";

#[test]
fn session_windows_take_a_gap_and_a_cap_that_divides_a_day() {
    let session = |window: &str| with_output(&OUTPUT.replace("window = \"1m\"", window));
    let job = parse(&session("window = { session_gap = \"30m\" }")).unwrap();
    let Output::Window(window) = &job.outputs[0] else {
        panic!("a windowed output");
    };
    assert_eq!(
        window.windowing,
        Windowing::Session {
            gap: Duration::from_secs(1800),
            max_length: Windowing::SESSION_MAX
        }
    );
    for (window, key) in [
        (
            "window = { session_gap = \"often\" }",
            "outputs[0].window.session_gap",
        ),
        (
            "window = { session_gap = \"1m\", max_length = \"7h\" }",
            "outputs[0].window.max_length",
        ),
        (
            "window = { session_gap = \"2h\", max_length = \"1h\" }",
            "outputs[0].window.max_length",
        ),
        (
            "window = { session_gap = \"1m\" }\nhop = \"30s\"",
            "outputs[0].hop",
        ),
    ] {
        let err = parse(&session(window)).unwrap_err().to_string();
        assert!(err.contains(key), "{window}: {err}");
    }
}

#[test]
fn outputs_are_validated_with_named_keys() {
    let job = parse(&with_output(OUTPUT)).unwrap();
    let Output::Window(window) = &job.outputs[0] else {
        panic!("a windowed output: {:?}", job.outputs[0]);
    };
    let minute = Duration::from_secs(60);
    assert_eq!(
        window.windowing,
        Windowing::Fixed {
            size: minute,
            hop: minute
        },
        "tumbling by default"
    );
    assert_eq!(window.keys, vec![Key::Field(2)]);
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
            OUTPUT.replace("fn = \"count\"", "fn = \"sum\", expr = \"upper(id)\""),
            "outputs[0].aggregates[0].expr",
        ),
        (
            OUTPUT.replace("fn = \"count\"", "fn = \"sum\", expr = \"n * nope\""),
            "outputs[0].aggregates[0].expr",
        ),
        (
            OUTPUT.replace("fn = \"count\"", "fn = \"max\", expr = \"make_array(n)\""),
            "outputs[0].aggregates[0].expr",
        ),
        (
            OUTPUT.replace(
                "fn = \"count\"",
                "fn = \"sum\", field = \"n\", expr = \"n\"",
            ),
            "outputs[0].aggregates[0].expr",
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

#[test]
fn avro_needs_a_registry_and_other_formats_are_named() {
    let with = |source: &str| {
        GOOD.replace(
            "topic = \"clicks\"",
            &format!("topic = \"clicks\"\n{source}"),
        )
    };
    // SAFETY: the variable name is unique to this test.
    unsafe {
        std::env::set_var("WEIR_REGISTRY_TEST_PASSWORD", "s3cret");
    }
    let job = parse(&with(
        "format = \"avro\"\nregistry = { url = \"https://sr:8081/api\", username = \"u\", password = \"${WEIR_REGISTRY_TEST_PASSWORD}\" }",
    ))
    .unwrap();
    let Format::Avro(registry) = &job.source.format else {
        panic!("{:?}", job.source.format)
    };
    assert_eq!(registry.subject, "clicks-value");
    assert_eq!(
        registry.credentials().unwrap(),
        Some(("u".into(), "s3cret".into()))
    );
    assert!(!format!("{job:?}").contains("s3cret"));
    for (source, key, says) in [
        ("format = \"avro\"", "source.registry", "a registry"),
        ("format = \"protobuf\"", "source.registry", "a registry"),
        (
            "format = \"xml\"",
            "source.format",
            "`protobuf` or `json_schema`",
        ),
        (
            "registry = { url = \"http://sr:8081\" }",
            "source.registry",
            "no registry for",
        ),
        (
            "format = \"avro\"\nregistry = { url = \"sr:8081\" }",
            "source.registry.url",
            "an http:// or https:// URL",
        ),
    ] {
        let err = error_of(&with(source));
        assert!(err.contains(key) && err.contains(says), "{source}: {err}");
    }
}

#[test]
fn kafka_columns_are_named_once_and_a_key_format_needs_the_key() {
    let with = |source: &str| {
        GOOD.replace(
            "topic = \"clicks\"",
            &format!("topic = \"clicks\"\n{source}"),
        )
    };
    let job = parse(&with("columns = [\"key\", \"headers\", \"topic\"]")).unwrap();
    assert_eq!(
        job.contract.kafka,
        KafkaColumns {
            key: Some(KeyFormat::Bytes),
            headers: true,
            topic: true
        }
    );
    for (source, says) in [
        ("columns = [\"key\", \"key\"]", "`key` twice"),
        ("columns = [\"partition\"]", "`partition`"),
        ("key_format = \"string\"", "a key format only beside"),
        (
            "columns = [\"key\"]\nkey_format = \"protobuf\"",
            "`bytes`, `string` or `avro`",
        ),
        (
            "columns = [\"key\"]\nkey_format = \"avro\"",
            "`avro` keys need `source.format = \"avro\"`",
        ),
        ("key_format = \"avro\"", "a key format only beside"),
    ] {
        let err = error_of(&with(source));
        assert!(err.contains(says), "{source}: {err}");
    }
}

#[test]
fn start_from_takes_a_time_or_offsets_and_refuses_anything_else() {
    let with =
        |value: &str| GOOD.replace("[schema]", &format!("start_from = \"{value}\"\n[schema]"));
    let at = |value: &str| parse(&with(value)).unwrap().source.start_from;
    assert_eq!(at("latest"), StartFrom::Latest);
    assert_eq!(
        at("timestamp:2026-11-01T00:00:00Z"),
        StartFrom::Timestamp(1_793_491_200_000)
    );
    assert_eq!(
        at("offsets:0=120, 3=7"),
        StartFrom::Offsets([(0, 120), (3, 7)].into())
    );
    for bad in [
        "newest",
        "timestamp:yesterday",
        "offsets:0=-1",
        "offsets:x=1",
        "offsets:",
    ] {
        let err = parse(&with(bad)).unwrap_err().to_string();
        assert!(
            err.contains("source.start_from") && err.contains(&format!("`{bad}`")),
            "{bad}: {err}"
        );
    }
}

#[test]
fn expectations_need_unique_names_a_rule_and_a_known_action() {
    let with = |text: &str| format!("{}{text}", *GOOD);
    let job = parse(&with("[[expectations]]\nname = \"e\"\nrule = \"n > 0\"\n")).unwrap();
    assert_eq!(job.expectations[0].on_fail, OnFail::Warn);
    for (text, key) in [
        (
            "[[expectations]]\nname = \"e\"\nrule = \"n > 0\"\non_fail = \"skip\"\n",
            "expectations[0].on_fail",
        ),
        (
            "[[expectations]]\nname = \"e\"\nrule = \" \"\n",
            "expectations[0].rule",
        ),
        (
            "[[expectations]]\nname = \"e\"\nrule = \"n > 0\"\n\
             [[expectations]]\nname = \"e\"\nrule = \"n > 1\"\n",
            "expectations[1].name",
        ),
    ] {
        let err = parse(&with(text)).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn monitors_need_a_known_check_a_fitting_field_and_bounds() {
    let with = |text: &str| format!("{}[[monitors]]\nname = \"m\"\n{text}", *GOOD);
    let job = parse(&with("check = \"max\"\nfield = \"n\"\nmax = 5")).unwrap();
    assert_eq!(job.monitors[0].check, Check::Max(2));
    assert_eq!(job.monitors[0].window, Duration::from_secs(60));
    assert_eq!(job.monitors[0].expected(), "at most 5");
    for (text, key) in [
        ("check = \"median\"\nmin = 1", "monitors[0].check"),
        (
            "check = \"volume\"\nfield = \"n\"\nmin = 1",
            "monitors[0].field",
        ),
        (
            "check = \"max\"\nfield = \"id\"\nmax = 1",
            "monitors[0].field",
        ),
        (
            "check = \"null_rate\"\nfield = \"nope\"\nmax = 1",
            "monitors[0].field",
        ),
        ("check = \"volume\"", "monitors[0].min"),
        ("check = \"volume\"\nmin = 5\nmax = 1", "monitors[0].min"),
        (
            "check = \"volume\"\nmin = 5\nwindow = \"0s\"",
            "monitors[0].window",
        ),
    ] {
        let err = parse(&with(text)).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn derived_columns_take_new_names_and_a_type_and_serve_outputs() {
    let derived = |name: &str, ty: &str| {
        GOOD.replace(
            "[storage]",
            &format!(
                "[[schema.derived]]\nname = \"{name}\"\nexpr = \"n * 2\"\ntype = \"{ty}\"\n[storage]"
            ),
        )
    };
    let job = parse(&derived("twice", "int64")).unwrap();
    assert_eq!(job.contract.input_index("twice"), Some(3));
    assert_eq!(job.contract.input(3).ty, FieldType::Int64);
    for (name, ty, key) in [
        ("n", "int64", "schema.derived[0].name"),
        ("_x", "int64", "schema.derived[0].name"),
        ("x", "decimal", "schema.derived[0].type"),
    ] {
        let err = parse(&derived(name, ty)).unwrap_err().to_string();
        assert!(err.contains(key), "{name} {ty}: {err}");
    }
}

/// A registry answering one subject with `found`.
struct Answers(Result<SubjectSchema, String>);

impl SubjectSchemas for Answers {
    fn latest(&self, _: &Registry) -> Result<SubjectSchema, String> {
        self.0.clone()
    }
}

#[test]
fn an_avro_job_without_fields_takes_them_from_its_subject_or_names_why_not() {
    let text = "name = \"clicks\"\n[source]\nbrokers = \"localhost:9092\"\ntopic = \"clicks\"\n\
                format = \"avro\"\nregistry = { url = \"http://sr:8081\" }\n\
                [schema]\nevent_id = \"id\"\nevent_time = \"ts\"\n\
                [storage]\nroot = \"/tmp/weir-test\"\n";
    let with = |answer| {
        Job::parse_with(
            text,
            Path::new("jobs/t.toml"),
            &Overrides::default(),
            &answer,
        )
    };
    let avro = |schema: &str, ty: &str| SubjectSchema {
        id: 7,
        schema_type: ty.into(),
        schema: schema.into(),
    };
    let record = r#"{"type": "record", "name": "C", "fields": [
        {"name": "id", "type": "string"}, {"name": "ts", "type": "long"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "geo", "type": {"type": "map", "values": "double"}}]}"#;
    let job = with(Answers(Ok(avro(record, "AVRO")))).unwrap();
    let names: Vec<&str> = job
        .contract
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, ["id", "ts"]);
    assert_eq!(job.contract.fields[1].ty, FieldType::Timestamp);
    let stored: Vec<String> = job
        .contract
        .stored_fields()
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(
        stored[2].contains("\"tags\"") && stored[2].contains("List"),
        "{stored:?}"
    );
    assert_eq!(
        job.contract_from,
        Some(FromRegistry {
            subject: "clicks-value".into(),
            schema_id: 7,
            left_out: vec!["geo (map)".into()],
        })
    );
    let keyed = text.replace(
        "format = \"avro\"\n",
        "format = \"avro\"\ncolumns = [\"key\"]\nkey_format = \"avro\"\n",
    );
    let keyed =
        |answer| Job::parse_with(&keyed, Path::new("t.toml"), &Overrides::default(), &answer);
    let job = keyed(Answers(Ok(avro(record, "AVRO")))).unwrap();
    let Some(KeyFormat::Avro(DataType::Struct(key))) = &job.contract.kafka.key else {
        panic!("{:?}", job.contract.kafka);
    };
    assert_eq!(key.len(), 3, "the record the key subject holds: {key:?}");
    let err = keyed(Answers(Ok(avro("syntax = \"proto3\";", "PROTOBUF")))).unwrap_err();
    assert!(err.to_string().contains("clicks-key"), "{err}");
    let refusals = [
        (
            Answers(Err("connection refused".into())),
            "connection refused",
        ),
        (
            Answers(Ok(avro("syntax = \"proto3\";", "PROTOBUF"))),
            "schema ID 7 is PROTOBUF",
        ),
        (
            Answers(Ok(avro(r#""string""#, "AVRO"))),
            "not an Avro record",
        ),
    ];
    for (answer, says) in refusals {
        let err = with(answer).unwrap_err().to_string();
        assert!(
            err.contains("schema.fields") && err.contains("subject `clicks-value`"),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
    }
    // Without a registry to ask, a missing field list is the usual error.
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("this command reads no registry"), "{err}");
}
