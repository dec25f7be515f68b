//! Decode stage throughput: one micro-batch of clickstream JSON to Arrow, clean
//! and with malformed messages mixed in (which cost re-decodes).

use std::path::Path;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir::decode::Decoder;
use weir::job::{Job, Overrides};
use weir::source::generator::{Generator, Mix};
use weir::source::{Message, MicroBatch};

fn batch(job: &Job, size: usize, malformed_ratio: f64) -> MicroBatch {
    let mix = Mix {
        malformed_ratio,
        duplicate_ratio: 0.0,
    };
    let mut generator = Generator::new(job.contract.clone(), mix, 11);
    MicroBatch {
        topic: "clicks".into(),
        messages: (0..size)
            .map(|i| Message {
                partition: (i % 3) as i32,
                offset: i as i64,
                kafka_ts: Some(0),
                payload: Some(generator.next_message().payload),
            })
            .collect(),
    }
}

fn decode(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/clickstream.toml");
    let job = Job::load(&path, &Overrides::default()).unwrap();
    let decoder = Decoder::new(job.contract.clone(), job.source.max_message_bytes);
    let mut group = c.benchmark_group("decode");
    for (size, malformed) in [
        (100, 0.0),
        (1000, 0.0),
        (10_000, 0.0),
        (1000, 0.005),
        (1000, 0.05),
    ] {
        let input = batch(&job, size, malformed);
        group.throughput(Throughput::Elements(size as u64));
        let id = BenchmarkId::new(format!("malformed_{malformed}"), size);
        group.bench_with_input(id, &input, |b, input| {
            b.iter(|| decoder.decode(input, Utc::now()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
