use super::*;
use crate::config::fixture::Spec;
use crate::config::{Job, Overrides};
use arrow::array::AsArray;
use arrow::datatypes::{Date32Type, Int64Type, TimestampMicrosecondType};
use std::path::Path;

/// Events with a required `n`, an optional `x` and `s`, and messages of at
/// most 200 bytes.
pub(super) fn spec() -> Spec<'static> {
    Spec {
        source: "max_message_bytes = 200",
        fields: &[
            r#"{ name = "n",  type = "int64", nullable = false }"#,
            r#"{ name = "x",  type = "float64" }"#,
            r#"{ name = "s",  type = "string" }"#,
        ],
        ..Spec::default()
    }
}

/// The test contract with a record `addr` (city, zip, seen, country) and
/// a list of strings `tags` beside its fields.
pub(super) fn structured_contract() -> Contract {
    use arrow::datatypes::Field;
    let mut contract = spec().job().contract;
    let address = vec![
        Field::new("city", DataType::Utf8, true),
        Field::new("zip", DataType::Int64, true),
        Field::new("seen", utc_micros(), true),
        Field::new("country", DataType::Utf8, true),
    ];
    let tags = Field::new("element", DataType::Utf8, true);
    contract.structured = vec![
        crate::config::Structured {
            name: "addr".into(),
            ty: DataType::Struct(address.into()),
        },
        crate::config::Structured {
            name: "tags".into(),
            ty: DataType::List(Arc::new(tags)),
        },
    ];
    contract
}

#[test]
fn json_objects_and_arrays_fill_structured_columns_and_misfits_are_refused() {
    let decoder = Decoder::new(structured_contract(), 1 << 10, Encoding::Json);
    let head = r#"{"ts":"2026-11-21T11:59:00Z","n":1,"id":"#;
    let message = |rest: &str| format!("{head}{rest}}}").into_bytes();
    let payloads = [
        message(r#""a","addr":{"city":"Oslo","zip":150,"extra":[1]},"tags":["x","y"]"#),
        message(r#""b""#),
        message(r#""c","addr":"Rome""#),
        message(r#""d","tags":[1,2]"#),
        message(r#""e","addr":{"seen":"2026-11-21T11:00:00Z"},"tags":[],"addr2":{}"#),
        // arrow-json would store 1 here.
        message(r#""f","addr":{"zip":1.9}"#),
    ];
    let refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
    let d = decoder
        .decode(&batch(&refs), &Default::default(), now())
        .unwrap();

    assert_eq!(offsets(&d.valid), vec![100, 101, 104]);
    let why = errors(&d);
    assert!(
        why[0].contains("`addr`") && why[1].contains("`tags`"),
        "{why:?}"
    );
    assert!(why[2].contains("`addr`: `zip` is 1.9"), "{why:?}");
    let addr = d.valid.column_by_name("addr").unwrap().as_struct();
    assert_eq!(
        (addr.is_valid(0), addr.is_null(1), addr.is_valid(2)),
        (true, true, true)
    );
    let city = addr.column_by_name("city").unwrap().as_string::<i32>();
    assert_eq!((city.value(0), city.is_null(2)), ("Oslo", true));
    let zip = addr
        .column_by_name("zip")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(zip.value(0), 150);
    let seen = addr.column_by_name("seen").unwrap();
    let seen = seen.as_primitive::<TimestampMicrosecondType>();
    assert_eq!(seen.value(2), 1_795_258_800_000_000);
    let tags = d.valid.column_by_name("tags").unwrap().as_list::<i32>();
    assert_eq!(
        (tags.value(0).len(), tags.is_null(1), tags.value(2).len()),
        (2, true, 0)
    );
}

fn decoder() -> Decoder {
    let job = spec().job();
    Decoder::new(job.contract, job.source.max_message_bytes, Encoding::Json)
}

pub(super) fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
}

pub(super) fn batch(payloads: &[Option<&[u8]>]) -> MicroBatch {
    MicroBatch {
        topics: Topics::single("t"),
        messages: payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Message {
                partition: SourcePartition::first((i % 3) as i32),
                offset: 100 + i as i64,
                kafka_ts: Some(1_700_000_000_000 + i as i64),
                payload: p.map(bytes::Bytes::copy_from_slice),
                ..Message::default()
            })
            .collect(),
    }
}

const GOOD: &[u8] = br#"{"id":"a","ts":"2026-11-21T11:59:00.250Z","n":1,"x":2.5,"s":"p"}"#;

pub(super) fn errors(d: &Decoded) -> Vec<String> {
    d.rejected
        .column_by_name("error")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap().to_owned())
        .collect()
}

pub(super) fn offsets(b: &RecordBatch) -> Vec<i64> {
    b.column_by_name(OFFSET)
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

#[test]
fn valid_messages_become_raw_rows_with_weir_columns() {
    let epoch_ms = br#"{"id":"b","ts":1795262400000,"n":2,"extra":"ignored"}"#;
    let d = decoder()
        .decode(
            &batch(&[Some(GOOD), Some(epoch_ms)]),
            &WriterSchemas::default(),
            now(),
        )
        .unwrap();
    assert_eq!(d.rejected.num_rows(), 0, "{:?}", errors(&d));
    assert_eq!(d.valid.num_rows(), 2);
    let ts = d.valid.column_by_name("ts").unwrap();
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 1_795_262_340_250_000);
    assert_eq!(ts.value(1), 1_795_262_400_000_000);
    let dates = d.valid.column_by_name(EVENT_DATE).unwrap();
    assert_eq!(dates.as_primitive::<Date32Type>().value(0), 20778); // 2026-11-21
    assert_eq!(offsets(&d.valid), vec![100, 101]);
    let kafka = d.valid.column_by_name(KAFKA_TS).unwrap();
    assert_eq!(
        kafka.as_primitive::<TimestampMicrosecondType>().value(1),
        1_700_000_000_001_000
    );
    assert_eq!(d.valid.schema(), *decoder().raw_schema());
    // A missing nullable field is a null, not an error.
    assert!(d.valid.column_by_name("x").unwrap().is_null(1));
}

/// `_payload` holds each message's bytes as they came, in `raw` and in the
/// DLQ, and null for a message that had none.
#[test]
fn payloads_are_stored_as_they_came() {
    let second = br#"{"id":"b","ts":1795262400000,"n":2}"#;
    let input = batch(&[Some(GOOD), None, Some(b"{"), Some(second)]);
    let d = decoder()
        .decode(&input, &WriterSchemas::default(), now())
        .unwrap();
    let stored = |b: &RecordBatch, column: &str| -> Vec<Option<Vec<u8>>> {
        let bytes = b.column_by_name(column).unwrap().as_binary::<i32>();
        bytes.iter().map(|p| p.map(<[u8]>::to_vec)).collect()
    };
    let (good, second) = (GOOD.to_vec(), second.to_vec());
    assert_eq!(stored(&d.valid, PAYLOAD), vec![Some(good), Some(second)]);
    assert_eq!(
        stored(&d.rejected, "payload"),
        vec![None, Some(b"{".to_vec())]
    );
}

/// A job that keeps no payloads stores the same rows with `_payload` null;
/// the DLQ still keeps the bytes of what it refused.
#[test]
fn a_job_without_payloads_stores_them_null() {
    let mut job = spec().job();
    job.contract.payload = Payload::None;
    let without = Decoder::new(job.contract, job.source.max_message_bytes, Encoding::Json);
    let input = batch(&[Some(GOOD), Some(b"{")]);
    let d = without
        .decode(&input, &WriterSchemas::default(), now())
        .unwrap();
    let kept = decoder()
        .decode(&input, &WriterSchemas::default(), now())
        .unwrap();
    let payload = d.valid.column_by_name(PAYLOAD).unwrap();
    assert_eq!((d.valid.num_rows(), payload.null_count()), (1, 1));
    let all_but_payload: Vec<usize> = (0..9).collect();
    assert_eq!(
        d.valid.project(&all_but_payload).unwrap(),
        kept.valid.project(&all_but_payload).unwrap()
    );
    assert_eq!(d.rejected, kept.rejected);
}

/// Each kind of broken message, alone in a batch between two good ones.
#[test]
fn every_kind_of_bad_message_goes_to_the_dlq_with_its_reason() {
    let big = format!(r#"{{"id":"a","ts":1,"n":1,"s":"{}"}}"#, "x".repeat(300));
    let cases: Vec<(Option<&[u8]>, &str)> = vec![
        (Some(br#"{"id":"a","ts":"#), "not valid JSON"),
        (Some(b"not json at all"), "not a JSON object"),
        (Some(br#"{"id":"a"]"#), "not valid JSON"),
        (Some(br#"{"id" "a"}"#), "not valid JSON"),
        (Some(br#"{"id":tru}"#), "not valid JSON"),
        (Some(br#"{"id":"a" "ts":1}"#), "not valid JSON"),
        (Some(b"[1,2,3]"), "not a JSON object"),
        (Some(b"42"), "not a JSON object"),
        (Some(br#""a string""#), "not a JSON object"),
        (
            Some(br#"{"ts":"2026-11-21T11:00:00Z","n":1}"#),
            "missing event ID `id`",
        ),
        (
            Some(br#"{"id":null,"ts":"2026-11-21T11:00:00Z","n":1}"#),
            "missing event ID `id`",
        ),
        (Some(br#"{"id":"a","n":1}"#), "missing event time `ts`"),
        (
            Some(br#"{"id":"a","ts":"2026-11-21T11:00:00Z"}"#),
            "missing required field `n`",
        ),
        (
            Some(br#"{"id":"a","ts":{"no":1},"n":1}"#),
            "does not match the schema: `ts` is an object, expected timestamp",
        ),
        (
            Some(br#"{"id":"a","ts":"yesterday","n":1}"#),
            "does not match the schema",
        ),
        (
            Some(br#"{"id":"a","ts":"2026-11-21T11:00:00Z","n":"many"}"#),
            "does not match the schema",
        ),
        (
            Some(br#"{"id":7,"ts":"2026-11-21T11:00:00Z","n":1}"#),
            "does not match the schema: `id` is a number, expected string",
        ),
        (
            Some(br#"{"id":"a","ts":1,"n":true}"#),
            "does not match the schema: `n` is true or false, expected int64",
        ),
        (
            Some(br#"{"id":"a","ts":"2999-01-01T00:00:00Z","n":1}"#),
            "outside the accepted range",
        ),
        (
            Some(br#"{"id":"a","ts":1700000000,"n":1}"#),
            "outside the accepted range",
        ),
        (
            Some(b"{\"id\":\"\xff\xfe\",\"ts\":1,\"n\":1}"),
            "not valid JSON: not UTF-8",
        ),
        (
            Some(br#"{"id":"a","ts":1,"n":1} {"id":"b","ts":1,"n":1}"#),
            "not valid JSON: trailing characters",
        ),
        (Some(br#"{"id":"a",,"ts":1,"n":1}"#), "not valid JSON"),
        (Some(b""), "empty message"),
        (Some(b"   \n"), "empty message"),
        (None, "no value (a tombstone)"),
        (
            Some(big.as_bytes()),
            "exceeds source.max_message_bytes (200)",
        ),
    ];
    for (payload, expected) in cases {
        let d = decoder()
            .decode(
                &batch(&[Some(GOOD), payload, Some(GOOD)]),
                &WriterSchemas::default(),
                now(),
            )
            .unwrap();
        let shown = payload.map(String::from_utf8_lossy);
        assert_eq!(offsets(&d.valid), vec![100, 102], "{shown:?}");
        assert_eq!(offsets(&d.rejected), vec![101], "{shown:?}");
        let error = &errors(&d)[0];
        assert!(error.contains(expected), "{shown:?}: got `{error}`");
        let bytes = d.rejected.column_by_name("payload").unwrap();
        match payload {
            Some(p) => assert_eq!(bytes.as_binary::<i32>().value(0), p),
            None => assert!(bytes.is_null(0)),
        }
    }
}

/// Two broken messages next to each other must not merge into something that
/// parses (`{"a":` + `1}` is one valid object).
#[test]
fn adjacent_fragments_are_not_glued_together() {
    let d = decoder()
        .decode(
            &batch(&[
                Some(br#"{"id":"a","ts":"#),
                Some(br#""2026-11-21T11:00:00Z","n":1}"#),
            ]),
            &WriterSchemas::default(),
            now(),
        )
        .unwrap();
    assert_eq!(d.valid.num_rows(), 0);
    assert_eq!(d.rejected.num_rows(), 2, "{:?}", errors(&d));
}

#[test]
fn a_large_mixed_batch_splits_exactly() {
    let bad: [&[u8]; 4] = [
        b"{oops",
        br#"{"id":"a","ts":"2026-11-21T11:00:00Z","n":"x"}"#,
        br#"{"id":"a","ts":"2999-11-21T11:00:00Z","n":1}"#,
        br#"{"ts":"2026-11-21T11:00:00Z","n":1}"#,
    ];
    let payloads: Vec<Option<&[u8]>> = (0..1000)
        .map(|i| Some(if i % 37 == 5 { bad[i % 4] } else { GOOD }))
        .collect();
    let d = decoder()
        .decode(&batch(&payloads), &WriterSchemas::default(), now())
        .unwrap();
    let expected_bad: Vec<i64> = (0..1000).filter(|i| i % 37 == 5).map(|i| 100 + i).collect();
    let expected_good: Vec<i64> = (0..1000).filter(|i| i % 37 != 5).map(|i| 100 + i).collect();
    assert_eq!(offsets(&d.rejected), expected_bad);
    assert_eq!(offsets(&d.valid), expected_good);
}

/// A batch read in slices on several threads decodes to exactly what one
/// thread reads: the same rows in message order, the same refusals.
#[test]
fn a_batch_read_on_several_threads_decodes_as_on_one() {
    let payloads: Vec<Vec<u8>> = (0..3 * MESSAGES_PER_SLICE + 17)
        .map(|i| match i % 29 {
            3 => b"{oops".to_vec(),
            7 => format!(r#"{{"id":"e{i}","ts":"2026-11-21T11:00:00Z","n":"x"}}"#).into_bytes(),
            _ => format!(r#"{{"id":"e{i}","ts":"2026-11-21T11:59:00Z","n":{i},"s":"v{i}"}}"#)
                .into_bytes(),
        })
        .collect();
    let refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
    let batch = batch(&refs);
    let on = |threads: usize| {
        let threads = NonZeroUsize::new(threads).unwrap();
        let decoder = decoder().with_threads(threads);
        decoder
            .decode(&batch, &WriterSchemas::default(), now())
            .unwrap()
    };
    let (one, four) = (on(1), on(4));
    assert_eq!(one.valid, four.valid);
    assert_eq!(one.rejected, four.rejected);
    let bad = (0..refs.len())
        .filter(|i| [3, 7].contains(&(i % 29)))
        .count();
    assert_eq!(one.rejected.num_rows(), bad);
    assert_eq!(one.valid.num_rows(), refs.len() - bad);
}

#[test]
fn an_empty_batch_decodes_to_empty_tables() {
    let d = decoder()
        .decode(&batch(&[]), &WriterSchemas::default(), now())
        .unwrap();
    assert_eq!(d.valid.num_rows(), 0);
    assert_eq!(d.rejected.num_rows(), 0);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Messages that are mostly valid events with random damage: truncation,
    /// random bytes, wrong types, missing fields.
    fn message() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            4 => Just(Some(GOOD.to_vec())),
            1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
            1 => (0..GOOD.len()).prop_map(|n| Some(GOOD[..n].to_vec())),
            1 => (any::<i64>(), "[a-z]{0,8}").prop_map(|(n, s)| Some(
                format!(r#"{{"id":"{s}","ts":{n},"n":{n},"x":"{s}"}}"#).into_bytes())),
            1 => Just(None),
        ]
    }

    proptest! {
        /// Whatever arrives, decode never panics or errors, and every message
        /// lands in exactly one of the two outputs.
        #[test]
        fn every_message_lands_exactly_once(payloads in prop::collection::vec(message(), 0..60)) {
            let refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| p.as_deref()).collect();
            let d = decoder().decode(&batch(&refs), &WriterSchemas::default(), now()).unwrap();
            let mut all = offsets(&d.valid);
            all.extend(offsets(&d.rejected));
            all.sort_unstable();
            let expected: Vec<i64> = (0..payloads.len() as i64).map(|i| 100 + i).collect();
            prop_assert_eq!(all, expected);
        }
    }
}

/// Values a column cannot hold go to the DLQ naming the field: never stored
/// changed (±inf, truncated, null) and never a panic.
#[test]
fn numbers_and_times_a_column_cannot_hold_go_to_the_dlq() {
    let deep = format!(
        r#"{{"id":"deep","ts":"2026-11-21T11:59:00Z","n":1,"nest":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let cases: Vec<(String, &str)> = vec![
        (r#""x":1e400"#.into(), "`x`"),
        (r#""x":-1e400"#.into(), "`x`"),
        (r#""n":1.9"#.into(), "`n`"),
        (r#""n":9223372036854775808"#.into(), "`n`"),
        (r#""n":-9223372036854775809"#.into(), "`n`"),
        (r#""n":1e3"#.into(), ""),
        (r#""ts":1e16"#.into(), "`ts`"),
        (r#""ts":1e400"#.into(), "`ts`"),
        (r#""ts":-1e400"#.into(), "`ts`"),
        (format!(r#""ts":{}"#, i64::MAX), "`ts`"),
        (format!(r#""ts":{}"#, i64::MIN), "`ts`"),
        (r#""ts":"+275760-09-13T00:00:00Z""#.into(), "`ts`"),
    ];
    let messages: Vec<Vec<u8>> = cases
        .iter()
        .enumerate()
        .map(|(i, (field, _))| {
            let base = format!(r#""id":"e{i}","ts":"2026-11-21T11:59:00Z","n":1,"x":1.5"#);
            format!("{{{base},{field}}}").into_bytes()
        })
        .chain([deep.into_bytes()])
        .collect();
    let mut decoder = decoder();
    decoder.max_message_bytes = 1 << 20;
    let mut b = batch(
        &messages
            .iter()
            .map(|m| Some(m.as_slice()))
            .collect::<Vec<_>>(),
    );
    // A Kafka timestamp no timestamp column can hold, on a valid message.
    b.messages.push(Message {
        kafka_ts: Some(i64::MAX - 1),
        ..batch(&[Some(GOOD)]).messages[0].clone()
    });
    b.messages.last_mut().unwrap().offset = 999;
    let d = decoder
        .decode(&b, &WriterSchemas::default(), now())
        .unwrap();
    let reasons = errors(&d);
    let rejected = offsets(&d.rejected);
    // `1e3` is the integer 1000: kept.
    assert_eq!(offsets(&d.valid), vec![105], "{reasons:?}");
    let mut expected: Vec<i64> = (100..100 + messages.len() as i64)
        .filter(|&o| o != 105)
        .collect();
    expected.push(999);
    assert_eq!(rejected, expected, "{reasons:?}");
    for ((field, name), reason) in cases.iter().filter(|(_, n)| !n.is_empty()).zip(&reasons) {
        assert!(reason.contains(name), "{field}: {reason}");
    }
    assert!(reasons[reasons.len() - 2].contains("nested"), "{reasons:?}");
    assert!(
        reasons[reasons.len() - 1].contains("Kafka timestamp"),
        "{reasons:?}"
    );
}

/// Reprocessing reads `raw` long after ingest: the event-time range is judged
/// against when each message was sent (its Kafka timestamp), not today.
#[test]
fn reprocessing_judges_the_event_time_range_against_ingest_time() {
    const DAY_MS: i64 = 86_400_000;
    let four_days_ago = now().timestamp_millis() - 4 * DAY_MS;
    let payload = |id: &str| format!(r#"{{"id":"{id}","ts":{four_days_ago},"n":1}}"#).into_bytes();
    let (sent_then, sent_now, unknown) = (payload("then"), payload("now"), payload("unknown"));
    let mut b = batch(&[Some(&sent_then), Some(&sent_now), Some(&unknown)]);
    b.messages[0].kafka_ts = Some(four_days_ago + 60_000);
    b.messages[1].kafka_ts = Some(now().timestamp_millis());
    b.messages[2].kafka_ts = None;
    let text = spec().toml().replace(
        "event_time = \"ts\"",
        "event_time = \"ts\"\nevent_time_range = \"2days\"",
    );
    let job = Job::parse(&text, Path::new("t.toml"), &Overrides::default()).unwrap();
    let decoder = Decoder::new(job.contract, job.source.max_message_bytes, Encoding::Json);

    let again = decoder
        .decode_as_ingested(&b, &WriterSchemas::default(), now())
        .unwrap();
    assert_eq!(
        offsets(&again.valid),
        vec![100, 102],
        "{:?}",
        errors(&again)
    );
    assert_eq!(offsets(&again.rejected), vec![101]);
    assert!(errors(&again)[0].contains("outside the accepted range"));
    let live = decoder
        .decode(&b, &WriterSchemas::default(), now())
        .unwrap();
    assert_eq!(live.valid.num_rows(), 0, "live, all three are 4 days old");
}

#[test]
fn kafka_keys_headers_and_topic_become_columns_when_asked() {
    let job = Spec {
        source: "columns = [\"key\", \"headers\", \"timestamp\", \"topic\"]\nkey_format = \"string\"",
        ..spec()
    }
    .job();
    let decoder = Decoder::new(job.contract, 1 << 20, Encoding::Json);
    let mut b = batch(&[Some(GOOD), Some(GOOD), Some(GOOD)]);
    let headers = vec![
        ("h".to_owned(), Some(vec![0, 0xff])),
        ("h".to_owned(), None),
    ];
    b.messages[0].key = Some(b"k1".to_vec());
    b.messages[0].headers = Some(headers.clone());
    b.messages[1].key = Some(vec![0xff]);
    b.messages[2].headers = Some(vec![]);
    let d = decoder
        .decode(&b, &WriterSchemas::default(), now())
        .unwrap();
    assert_eq!(offsets(&d.valid), vec![100, 102]);
    assert_eq!(
        errors(&d),
        ["the Kafka key is not UTF-8 (source.key_format = \"string\")"]
    );
    let keys = d.valid.column_by_name(KEY).unwrap().as_string::<i32>();
    assert_eq!((keys.value(0), keys.is_null(1)), ("k1", true));
    let lists = d.valid.column_by_name(HEADERS).unwrap().as_list::<i32>();
    let first = lists.value(0);
    let first = first.as_struct();
    let names = first.column(0).as_string::<i32>();
    let values = first.column(1).as_binary::<i32>();
    assert_eq!((names.value(0), values.value(0)), ("h", &[0u8, 0xff][..]));
    assert_eq!((names.value(1), values.is_null(1)), ("h", true));
    assert_eq!(lists.value(1).len(), 0);
    let topics = d.valid.column_by_name(TOPIC).unwrap().as_string::<i32>();
    assert_eq!(topics.value(1), "t");
}
