//! Commit stage throughput: one trigger's Delta commits (raw, dlq, late and
//! every output, each with its txn offsets) for micro-batches of 100, 1,000 and
//! 10,000 events, on local disk. The events are decoded and the outputs
//! computed once, outside the measurement.

mod common;

use std::collections::BTreeMap;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir::config::SourcePartition;
use weir::fault::Faults;
use weir::ingest::decode::Decoder;
use weir::ingest::sink::Sink;
use weir::ingest::transform::Transform;
use weir::ingest::watermark::late_schema;
use weir::metrics::JobMetrics;
use weir::table::{Catalog, TableId};

fn commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = common::clickstream(Some(dir.path()));
    let decoder = Decoder::new(
        job.contract.clone(),
        job.source.max_message_bytes,
        (&job.source.format).into(),
    );
    let outputs = runtime
        .block_on(Transform::all(&job, &Default::default()))
        .unwrap();
    let catalog = Catalog::new(&job, &outputs);
    let metrics = JobMetrics::detached(&job.name);
    let mut sink = runtime
        .block_on(Sink::open(
            &job,
            catalog.specs(),
            Faults::default(),
            metrics,
        ))
        .unwrap();
    let mut generator = common::generator(&job, 0.0, 0.0, 5);

    let mut group = c.benchmark_group("commit");
    group.sample_size(10);
    let mut next_offset = 0i64;
    for size in [100, 1000, 10_000] {
        let batch = common::micro_batch(&mut generator, size, 0);
        let decoded = decoder
            .decode(&batch, &Default::default(), Utc::now())
            .unwrap();
        let empty_late = arrow::array::RecordBatch::new_empty(late_schema(&job.contract));
        let mut rows = BTreeMap::from([
            (TableId::Raw, decoded.valid.clone()),
            (TableId::Dlq, decoded.rejected.clone()),
            (TableId::Late, empty_late),
        ]);
        for (i, output) in outputs.iter().enumerate() {
            let computed = runtime.block_on(output.apply(&decoded.valid)).unwrap();
            rows.insert(TableId::Output(i), computed);
        }
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &rows, |b, rows| {
            b.iter(|| {
                // Each trigger covers the next offsets, as a live one would.
                let first = BTreeMap::from([(SourcePartition::first(0), next_offset)]);
                next_offset += size as i64;
                let next = BTreeMap::from([(SourcePartition::first(0), next_offset)]);
                runtime
                    .block_on(sink.commit(rows.clone(), &first, &next))
                    .unwrap()
            })
        });
    }
    group.finish();
    runtime.block_on(sink.settle());
}

criterion_group!(benches, commit);
criterion_main!(benches);
