//! Dedup stage throughput: drop re-sent events from decoded micro-batches of
//! 100, 1,000 and 10,000 events, against an index already holding 100,000 IDs;
//! and the index under churn, where each new ID arrives as an old one is evicted.

mod common;

use std::time::Duration;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir::config::SourcePartition;
use weir::ingest::decode::Decoder;
use weir::ingest::dedup::{Candidate, Dedup, DedupIndex, Origin};

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

/// New IDs into an index holding 2 M (a 2-minute horizon at about 17,000
/// events/s), evicting as it goes: the steady state of a long run.
fn churn(c: &mut Criterion) {
    const PER_MS: i64 = 17;
    let horizon = Duration::from_secs(120);
    let mut index = DedupIndex::new(horizon);
    let mut next = 0i64;
    let mut admit = |index: &mut DedupIndex, n: i64| {
        let candidates: Vec<Candidate> = (next..next + n)
            .map(|i| Candidate {
                id_hash: xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()),
                time_ms: i / PER_MS,
                origin: Origin {
                    partition: SourcePartition::first(0),
                    offset: i,
                },
            })
            .collect();
        next += n;
        index.apply(&candidates);
        index.evict(next / PER_MS);
    };
    admit(&mut index, 2 * horizon.as_millis() as i64 * PER_MS);
    let mut group = c.benchmark_group("dedup_churn");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("10000", |b| b.iter(|| admit(&mut index, 10_000)));
    group.finish();
}

criterion_group!(benches, dedup, churn);
criterion_main!(benches);
