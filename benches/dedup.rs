//! Dedup stage throughput: drop re-sent events from decoded micro-batches of
//! 100, 1,000 and 10,000 events, against an index already holding 100,000 IDs.

mod common;

use std::time::Duration;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir::ingest::decode::Decoder;
use weir::ingest::dedup::Dedup;

fn dedup(c: &mut Criterion) {
    let job = common::clickstream(None);
    let decoder = Decoder::new(
        job.contract.clone(),
        job.source.max_message_bytes,
        (&job.source.format).into(),
    );
    let mut generator = common::generator(&job, 0.0, 0.01, 3);
    let mut offset = 0;
    let mut next_batch = |size: usize| {
        let batch = common::micro_batch(&mut generator, size, offset);
        offset += size as i64;
        decoder
            .decode(&batch, &Default::default(), Utc::now())
            .unwrap()
            .valid
    };

    let mut group = c.benchmark_group("dedup");
    for size in [100, 1000, 10_000] {
        let mut stage = Dedup::new(
            &job.contract,
            Duration::from_secs(3600),
            job.source.topics.clone(),
        );
        for _ in 0..10 {
            stage.apply(&next_batch(10_000)).unwrap();
        }
        let input = next_batch(size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &input, |b, input| {
            // Applying the same batch again is the replay path: every ID is looked up.
            b.iter(|| stage.apply(input).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, dedup);
criterion_main!(benches);
