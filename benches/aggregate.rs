//! Aggregation stage throughput: the clickstream job's windowed outputs over
//! decoded micro-batches of 100, 1,000 and 10,000 events.

use std::path::Path;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir::decode::Decoder;
use weir::job::{Job, Overrides};
use weir::source::generator::{Generator, Mix};
use weir::source::{Message, MicroBatch};
use weir::transform::WindowAggregate;

fn aggregate(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/clickstream.toml");
    let job = Job::load(&path, &Overrides::default()).unwrap();
    let decoder = Decoder::new(job.contract.clone(), job.source.max_message_bytes);
    let outputs: Vec<WindowAggregate> = job
        .outputs
        .iter()
        .map(|o| WindowAggregate::new(o, &job.contract))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut generator = Generator::new(
        job.contract.clone(),
        Mix {
            malformed_ratio: 0.0,
            duplicate_ratio: 0.0,
        },
        5,
    );

    let mut group = c.benchmark_group("aggregate");
    for size in [100, 1000, 10_000] {
        let batch = MicroBatch {
            topic: "clicks".into(),
            messages: (0..size)
                .map(|i| Message {
                    partition: 0,
                    offset: i as i64,
                    kafka_ts: None,
                    payload: Some(generator.next_message().payload),
                })
                .collect(),
        };
        let events = decoder.decode(&batch, Utc::now()).unwrap().valid;
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
