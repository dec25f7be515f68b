//! Decode stage throughput: one micro-batch of clickstream JSON to Arrow, clean
//! and with malformed messages mixed in; and the same events as Avro,
//! Protobuf and JSON Schema in the Confluent wire format.

mod common;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir::ingest::decode::framed::{WriterSchema, WriterSchemas};
use weir::ingest::decode::{Decoder, Encoding};
use weir::ingest::source::framing::Framing;

fn decode(c: &mut Criterion) {
    let job = common::clickstream(None);
    let decoder = Decoder::new(
        job.contract.clone(),
        job.source.max_message_bytes,
        (&job.source.format).into(),
    );
    let mut group = c.benchmark_group("decode");
    for (size, malformed) in [
        (100, 0.0),
        (1000, 0.0),
        (10_000, 0.0),
        (1000, 0.005),
        (1000, 0.05),
    ] {
        let input = common::micro_batch(&mut common::generator(&job, malformed, 0.0, 11), size, 0);
        group.throughput(Throughput::Elements(size as u64));
        let id = BenchmarkId::new(format!("malformed_{malformed}"), size);
        group.bench_with_input(id, &input, |b, input| {
            b.iter(|| {
                decoder
                    .decode(input, &Default::default(), Utc::now())
                    .unwrap()
            })
        });
    }
    group.finish();
}

/// The same clean events as `decode`'s, framed as `weir produce --format
/// avro|protobuf|json_schema` sends them, one writer schema ID.
fn decode_framed(c: &mut Criterion) {
    let job = common::clickstream(None);
    let formats = [
        ("decode_avro", Encoding::Avro),
        ("decode_protobuf", Encoding::Protobuf),
        ("decode_json_schema", Encoding::JsonSchema),
    ];
    for (name, encoding) in formats {
        let decoder = Decoder::new(job.contract.clone(), job.source.max_message_bytes, encoding);
        let mut framing = Framing::new(&job.contract, encoding, 1).unwrap();
        let schema = Framing::schema(&job.contract, encoding).unwrap();
        let mut schemas = WriterSchemas::default();
        schemas.insert(1, WriterSchema::compile(1, encoding, &schema));
        let mut group = c.benchmark_group(name);
        for size in [1000, 10_000] {
            let mut input =
                common::micro_batch(&mut common::generator(&job, 0.0, 0.0, 11), size, 0);
            for m in &mut input.messages {
                m.payload = m.payload.as_deref().map(|json| framing.frame(json).into());
            }
            group.throughput(Throughput::Elements(size as u64));
            group.bench_with_input(BenchmarkId::new("clean", size), &input, |b, input| {
                b.iter(|| {
                    let decoded = decoder.decode(input, &schemas, Utc::now()).unwrap();
                    assert_eq!(decoded.valid.num_rows(), size);
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, decode, decode_framed);
criterion_main!(benches);
