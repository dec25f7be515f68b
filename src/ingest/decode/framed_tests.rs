//! Messages in the Confluent wire format decoded under the test contract:
//! `id` string, `ts` timestamp, `n` required int64, `x` float64, `s` string.
//! Avro bodies are written here by hand from the spec's binary encoding (an
//! oracle independent of arrow-avro).

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

use super::framed::{WriterSchema, WriterSchemas};
use super::tests::{batch, errors, now, offsets, spec, structured_contract};
use super::*;

/// `n` an int (promoted to long), `x` a nullable float, no `s`, millisecond times.
const V1: &str = r#"{"type":"record","name":"E","fields":[
    {"name":"id","type":"string"},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"n","type":"int"},
    {"name":"x","type":["null","float"],"default":null}]}"#;
/// Everything the contract has, microsecond times, and a field it lacks.
const V2: &str = r#"{"type":"record","name":"E","fields":[
    {"name":"id","type":"string"},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}},
    {"name":"n","type":"long"},
    {"name":"x","type":["null","double"],"default":null},
    {"name":"s","type":"string"},
    {"name":"extra","type":"string"}]}"#;
/// The event ID became a number.
const V3: &str = r#"{"type":"record","name":"E","fields":[
    {"name":"id","type":"long"},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"n","type":"long"}]}"#;

/// 2026-11-21T11:59:00Z in epoch ms: a minute before the tests' now.
const TS_MS: i64 = 1_795_262_340_000;

fn long(v: i64) -> Vec<u8> {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn string(s: &str) -> Vec<u8> {
    [long(s.len() as i64), s.as_bytes().to_vec()].concat()
}

fn framed(id: u32, body: &[Vec<u8>]) -> Vec<u8> {
    [vec![0], id.to_be_bytes().to_vec(), body.concat()].concat()
}

fn v1(id: &str, n: i64, x: Option<f32>) -> Vec<u8> {
    let x = match x {
        None => long(0),
        Some(x) => [long(1), x.to_le_bytes().to_vec()].concat(),
    };
    framed(1, &[string(id), long(TS_MS), long(n), x])
}

fn v2(id: &str, n: i64, s: &str) -> Vec<u8> {
    let x = [long(1), 0.5f64.to_le_bytes().to_vec()].concat();
    let body = [
        string(id),
        long(TS_MS * 1000 + 7),
        long(n),
        x,
        string(s),
        string("e"),
    ];
    framed(2, &body)
}

fn schemas() -> WriterSchemas {
    let mut schemas = WriterSchemas::default();
    schemas.insert(1, WriterSchema::Avro(V1.into()));
    schemas.insert(2, WriterSchema::Avro(V2.into()));
    schemas.insert(3, WriterSchema::Avro(V3.into()));
    schemas.insert(
        9,
        WriterSchema::Refused("schema ID 9 is not in the registry".into()),
    );
    schemas
}

fn decode(payloads: &[Vec<u8>]) -> Decoded {
    let job = spec().job();
    let decoder = Decoder::new(job.contract, 1 << 20, Encoding::Avro);
    let refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
    decoder.decode(&batch(&refs), &schemas(), now()).unwrap()
}

#[test]
fn two_writer_schemas_interleaved_become_contract_rows_in_message_order() {
    let d = decode(&[v1("a", 1, Some(1.5)), v2("b", 2, "s2"), v1("c", 3, None)]);
    assert_eq!(d.rejected.num_rows(), 0, "{:?}", errors(&d));
    assert_eq!(offsets(&d.valid), vec![100, 101, 102]);
    let column = |name: &str| d.valid.column_by_name(name).unwrap().clone();
    let ids: Vec<_> = column("id")
        .as_string::<i32>()
        .iter()
        .flatten()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let n = column("n");
    assert_eq!(
        n.as_primitive::<Int64Type>().values().to_vec(),
        vec![1, 2, 3]
    );
    let x = column("x");
    let x = x.as_primitive::<Float64Type>();
    assert_eq!((x.value(0), x.value(1), x.is_null(2)), (1.5, 0.5, true));
    let s = column("s");
    assert_eq!((s.is_null(0), s.as_string::<i32>().value(1)), (true, "s2"));
    let ts = column("ts");
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    assert_eq!((ts.value(0), ts.value(1)), (TS_MS * 1000, TS_MS * 1000 + 7));
}

#[test]
fn a_broken_body_is_refused_alone_and_its_neighbours_survive() {
    let whole = v1("b", 2, Some(2.0));
    let truncated = whole[..whole.len() - 3].to_vec();
    let trailing = [v1("d", 4, None), vec![1, 2]].concat();
    let d = decode(&[
        v1("a", 1, None),
        truncated,
        v1("c", 3, None),
        trailing,
        v1("e", 5, None),
    ]);
    assert_eq!(offsets(&d.valid), vec![100, 102, 104]);
    assert_eq!(offsets(&d.rejected), vec![101, 103]);
    let e = errors(&d);
    assert!(e[0].contains("schema ID 1:"), "{e:?}");
    assert!(e[1].ends_with("bytes follow the Avro record"), "{e:?}");
    let n = d.valid.column_by_name("n").unwrap();
    assert_eq!(
        n.as_primitive::<Int64Type>().values().to_vec(),
        vec![1, 3, 5]
    );
}

#[test]
fn refusals_name_the_schema_id_and_keep_the_bytes() {
    let incompatible = framed(3, &[long(7), long(TS_MS), long(1)]);
    let unknown = framed(9, &[string("a")]);
    let unframed = br#"{"id":"a"}"#.to_vec();
    let d = decode(&[
        v2("ok", 1, "s"),
        incompatible.clone(),
        unknown,
        unframed,
        vec![],
    ]);
    assert_eq!(offsets(&d.valid), vec![100]);
    assert_eq!(offsets(&d.rejected), vec![101, 102, 103, 104]);
    let e = errors(&d);
    assert!(
        e[0].starts_with("schema ID 3: field `id` is Int64 in the writer schema"),
        "{e:?}"
    );
    assert_eq!(e[1], "schema ID 9 is not in the registry");
    assert!(e[2].contains("Confluent wire format") && e[3].contains("Confluent wire format"));
    let kept = d.rejected.column_by_name("payload").unwrap();
    assert_eq!(kept.as_binary::<i32>().value(0), incompatible.as_slice());
}

#[test]
fn row_rules_and_values_out_of_range_are_refused_not_nulled() {
    // Milliseconds no microsecond column holds.
    let far = framed(1, &[string("far"), long(i64::MAX / 10), long(1), long(0)]);
    let old = framed(
        1,
        &[
            string("old"),
            long(TS_MS - 400 * 86_400_000 * 11),
            long(1),
            long(0),
        ],
    );
    let d = decode(&[far, old, v1("ok", 1, None)]);
    assert_eq!(offsets(&d.valid), vec![102]);
    let e = errors(&d);
    assert_eq!(
        e[0], "field `ts`: a value out of range for timestamp",
        "{e:?}"
    );
    assert!(e[1].contains("outside the accepted range"), "{e:?}");
}

#[test]
fn json_schema_messages_are_validated_before_the_contract_reads_them() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": { "s": { "type": "string", "maxLength": 2 } },
        "required": ["id"]
    });
    let mut schemas = WriterSchemas::default();
    let validator = jsonschema::validator_for(&schema).unwrap();
    schemas.insert(4, WriterSchema::JsonSchema(std::sync::Arc::new(validator)));
    schemas.insert(1, WriterSchema::Avro(V1.into()));
    let json = |text: &str| [vec![0, 0, 0, 0, 4], text.as_bytes().to_vec()].concat();
    let payloads = [
        json(r#"{"id":"a","ts":1795262340000,"n":1,"s":"ok"}"#),
        json(r#"{"id":"b","ts":1795262340000,"n":1,"s":"too long"}"#),
        json(r#"{"id":"c","ts":1795262340000,"n":"#),
        v1("d", 1, None),
        br#"{"id":"e","ts":1795262340000,"n":1}"#.to_vec(),
    ];
    let job = spec().job();
    let decoder = Decoder::new(job.contract, 1 << 20, Encoding::JsonSchema);
    let refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
    let d = decoder.decode(&batch(&refs), &schemas, now()).unwrap();
    assert_eq!(offsets(&d.valid), vec![100]);
    let e = errors(&d);
    assert!(
        e[0].starts_with("schema ID 4: ") && e[0].contains("at `/s`"),
        "{e:?}"
    );
    assert!(e[1].contains("JSON"), "{e:?}");
    assert_eq!(e[2], "schema ID 1 is not a JSON Schema");
    assert!(e[3].contains("Confluent wire format"), "{e:?}");
}

const PROTO: &str = r#"
syntax = "proto3";
import "google/protobuf/timestamp.proto";
message E {
  string id = 1;
  google.protobuf.Timestamp ts = 2;
  int32 n = 3;
  optional double x = 4;
  Kind s = 5;
  enum Kind { A = 0; B = 1; }
}
message F { string id = 1; google.protobuf.Timestamp ts = 2; repeated int64 n = 3; }
"#;

/// A protobuf field: its tag, then a varint or length-delimited bytes.
fn tag(field: u64, wire: u64) -> Vec<u8> {
    long_unsigned((field << 3) | wire)
}

fn long_unsigned(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn delimited(field: u64, bytes: &[u8]) -> Vec<u8> {
    [
        tag(field, 2),
        long_unsigned(bytes.len() as u64),
        bytes.to_vec(),
    ]
    .concat()
}

fn proto_e(id: &str, n: Option<u64>, kind: u64) -> Vec<u8> {
    let ts = [
        tag(1, 0),
        long_unsigned(TS_MS as u64 / 1000),
        tag(2, 0),
        long_unsigned(5000),
    ]
    .concat();
    let mut body = [delimited(1, id.as_bytes()), delimited(2, &ts)].concat();
    if let Some(n) = n {
        body.extend([tag(3, 0), long_unsigned(n)].concat());
    }
    body.extend([tag(5, 0), long_unsigned(kind)].concat());
    [vec![0, 0, 0, 0, 5, 0], body].concat()
}

#[test]
fn protobuf_messages_are_read_by_the_type_their_indexes_name() {
    let schema = super::protobuf::ProtoSchema::compile(PROTO).unwrap();
    let mut schemas = WriterSchemas::default();
    schemas.insert(5, WriterSchema::Protobuf(std::sync::Arc::new(schema)));
    let f = [vec![0, 0, 0, 0, 5, 2, 2], delimited(1, b"f")].concat();
    let whole = proto_e("c", Some(1), 0);
    let payloads = [
        proto_e("a", Some(7), 1),
        proto_e("b", None, 0),
        f,
        whole[..whole.len() - 3].to_vec(),
    ];
    let job = spec().job();
    let decoder = Decoder::new(job.contract, 1 << 20, Encoding::Protobuf);
    let refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
    let d = decoder.decode(&batch(&refs), &schemas, now()).unwrap();
    assert_eq!(offsets(&d.valid), vec![100, 101], "{:?}", errors(&d));
    let column = |name: &str| d.valid.column_by_name(name).unwrap().clone();
    let n = column("n");
    assert_eq!(n.as_primitive::<Int64Type>().values().to_vec(), vec![7, 0]);
    let ts = column("ts");
    assert_eq!(
        ts.as_primitive::<TimestampMicrosecondType>().value(0),
        TS_MS * 1000 + 5
    );
    let s = column("s");
    let s = s.as_string::<i32>();
    assert_eq!((s.value(0), s.value(1)), ("B", "A"));
    assert!(column("x").is_null(0));
    let e = errors(&d);
    assert_eq!(
        e[0],
        "schema ID 5: field `n` of F is repeated int64, which the contract's int64 cannot take"
    );
    assert!(
        e[1].starts_with("schema ID 5: malformed Protobuf body"),
        "{e:?}"
    );
}

/// A record and an array beside the contract's fields: `addr` has a field
/// the structured column lacks (`extra`) and lacks one it has (`country`).
const V4: &str = r#"{"type":"record","name":"E","fields":[
    {"name":"id","type":"string"},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"n","type":"int"},
    {"name":"addr","type":["null",{"type":"record","name":"A","fields":[
        {"name":"city","type":"string"},
        {"name":"zip","type":"int"},
        {"name":"seen","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"extra","type":"string"}]}],"default":null},
    {"name":"tags","type":{"type":"array","items":"string"}}]}"#;
/// `tags` became an array of longs, which the column of strings cannot take.
const V5: &str = r#"{"type":"record","name":"E","fields":[
    {"name":"id","type":"string"},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"n","type":"int"},
    {"name":"tags","type":{"type":"array","items":"long"}}]}"#;

fn v4(id: &str, address: Option<(&str, i64, i64)>, tags: &[&str]) -> Vec<u8> {
    let address = match address {
        None => long(0),
        Some((city, zip, seen)) => {
            [long(1), string(city), long(zip), long(seen), string("x")].concat()
        }
    };
    let mut items = vec![];
    if !tags.is_empty() {
        items.push(long(tags.len() as i64));
        items.extend(tags.iter().map(|t| string(t)));
    }
    items.push(long(0));
    framed(
        4,
        &[string(id), long(TS_MS), long(1), address, items.concat()],
    )
}

#[test]
fn records_and_arrays_become_struct_and_list_columns_by_field_name() {
    use arrow::array::StructArray;
    let mut schemas = schemas();
    schemas.insert(4, WriterSchema::Avro(V4.into()));
    schemas.insert(5, WriterSchema::Avro(V5.into()));
    let decoder = Decoder::new(structured_contract(), 1 << 20, Encoding::Avro);
    let payloads = [
        v4("a", Some(("Oslo", 150, TS_MS)), &["x", "y"]),
        v4("b", None, &[]),
        // Epoch milliseconds no microsecond column holds.
        v4("c", Some(("Rome", 1, i64::MAX / 10)), &["z"]),
        framed(
            5,
            &[string("d"), long(TS_MS), long(1), long(1), long(7), long(0)],
        ),
        v4("e", Some(("Lima", 2, TS_MS + 1)), &["w"]),
    ];
    let refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
    let d = decoder.decode(&batch(&refs), &schemas, now()).unwrap();

    assert_eq!(offsets(&d.valid), vec![100, 101, 104]);
    let why = errors(&d);
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(
        why[0].contains("field `addr`") && why[0].contains("`seen`"),
        "{why:?}"
    );
    assert!(
        why[1].contains("schema ID 5") && why[1].contains("field `tags`"),
        "{why:?}"
    );

    let addr = d.valid.column_by_name("addr").unwrap();
    let addr: &StructArray = addr.as_struct();
    assert_eq!(addr.nulls().map(|n| n.null_count()), Some(1));
    let city = addr.column_by_name("city").unwrap().as_string::<i32>();
    assert_eq!((city.value(0), city.value(2)), ("Oslo", "Lima"));
    let zip = addr
        .column_by_name("zip")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!((zip.value(0), zip.value(2)), (150, 2));
    let seen = addr.column_by_name("seen").unwrap();
    let seen = seen.as_primitive::<TimestampMicrosecondType>();
    assert_eq!(seen.value(2), (TS_MS + 1) * 1000);
    assert_eq!(addr.column_by_name("country").unwrap().null_count(), 3);
    assert!(addr.column_by_name("extra").is_none());

    let tags = d.valid.column_by_name("tags").unwrap().as_list::<i32>();
    let row = |r: usize| -> Vec<String> {
        let items = tags.value(r);
        items
            .as_string::<i32>()
            .iter()
            .flatten()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        (row(0), row(1), row(2)),
        (vec!["x".into(), "y".into()], vec![], vec!["w".into()])
    );
}

#[test]
fn avro_keys_of_any_writer_schema_become_the_key_column_or_refuse_their_message() {
    use arrow::datatypes::Field;
    let mut contract = spec().job().contract;
    let key = vec![
        Field::new("user", DataType::Utf8, true),
        Field::new("region", DataType::Int64, true),
    ];
    contract.kafka.key = Some(KeyFormat::Avro(DataType::Struct(key.into())));
    let decoder = Decoder::new(contract, 1 << 20, Encoding::Avro);
    let mut schemas = schemas();
    let record = r#"{"type":"record","name":"K","fields":[
        {"name":"user","type":"string"},{"name":"region","type":"int"}]}"#;
    schemas.insert(6, WriterSchema::Avro(record.into()));
    schemas.insert(7, WriterSchema::Avro(r#""string""#.into()));
    let payloads = [
        v1("a", 1, None),
        v1("b", 2, None),
        v1("c", 3, None),
        v1("d", 4, None),
    ];
    let refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
    let mut input = batch(&refs);
    let keys = [
        Some(framed(6, &[string("ann"), long(3)])),
        None,
        // A string where the key column is a record: refused, with the message.
        Some(framed(7, &[string("bob")])),
        Some(framed(6, &[string("cy")])),
    ];
    for (m, k) in input.messages.iter_mut().zip(keys) {
        m.key = k;
    }
    let d = decoder.decode(&input, &schemas, now()).unwrap();

    assert_eq!(offsets(&d.valid), vec![100, 101]);
    let why = errors(&d);
    assert!(
        why[0].starts_with("the Kafka key: ") && why[0].contains("schema ID 7"),
        "{why:?}"
    );
    assert!(
        why[1].starts_with("the Kafka key: ") && why[1].contains("malformed"),
        "{why:?}"
    );
    let key = d.valid.column_by_name(KEY).unwrap().as_struct();
    let user = key.column_by_name("user").unwrap().as_string::<i32>();
    let region = key.column_by_name("region").unwrap();
    let region = region.as_primitive::<Int64Type>();
    assert_eq!(
        (user.value(0), region.value(0), key.is_null(1)),
        ("ann", 3, true)
    );
}
