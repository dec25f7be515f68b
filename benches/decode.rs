//! Decode stage throughput: one micro-batch of clickstream JSON to Arrow, clean
//! and with malformed messages mixed in.

mod common;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir::ingest::decode::Decoder;

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

criterion_group!(benches, decode);
criterion_main!(benches);
