//! Aggregation stage throughput: the clickstream job's windowed outputs over
//! decoded micro-batches of 100, 1,000 and 10,000 events.

mod common;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir::ingest::decode::Decoder;
use weir::ingest::transform::Transform;

fn aggregate(c: &mut Criterion) {
    let job = common::clickstream(None);
    let decoder = Decoder::new(
        job.contract.clone(),
        job.source.max_message_bytes,
        (&job.source.format).into(),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outputs = runtime
        .block_on(Transform::all(&job, &Default::default()))
        .unwrap();
    let mut generator = common::generator(&job, 0.0, 0.0, 5);

    let mut group = c.benchmark_group("aggregate");
    for size in [100, 1000, 10_000] {
        let batch = common::micro_batch(&mut generator, size, 0);
        let events = decoder
            .decode(&batch, &Default::default(), Utc::now())
            .unwrap()
            .valid;
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &events, |b, events| {
            b.iter(|| {
                runtime.block_on(async {
                    for output in &outputs {
                        output.apply(events).await.unwrap();
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, aggregate);
criterion_main!(benches);
