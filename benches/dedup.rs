//! Dedup stage throughput: drop re-sent events from decoded micro-batches of
//! 100, 1,000 and 10,000 events, against an index already holding a horizon's worth.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir::decode::Decoder;
use weir::dedup::Dedup;
use weir::job::{Job, Overrides};
use weir::source::generator::{Generator, Mix};
use weir::source::{Message, MicroBatch};

fn dedup(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/clickstream.toml");
    let job = Job::load(&path, &Overrides::default()).unwrap();
    let decoder = Decoder::new(job.contract.clone(), job.source.max_message_bytes);
    let mix = Mix {
        malformed_ratio: 0.0,
        duplicate_ratio: 0.01,
    };
    let mut generator = Generator::new(job.contract.clone(), mix, 3);
    let mut offset = 0;
    let mut next_batch = |size: usize| {
        let messages = (0..size)
            .map(|_| {
                offset += 1;
                Message {
                    partition: 0,
                    offset,
                    kafka_ts: None,
                    payload: Some(generator.next_message().payload),
                }
            })
            .collect();
        let batch = MicroBatch {
            topic: "clicks".into(),
            messages,
        };
        decoder.decode(&batch, Utc::now()).unwrap().valid
    };

    let mut group = c.benchmark_group("dedup");
    for size in [100, 1000, 10_000] {
        let mut stage = Dedup::new(&job.contract, Duration::from_secs(3600));
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
