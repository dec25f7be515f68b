//! Commit stage throughput: one trigger's Delta commits (raw, dlq, late and
//! every output, each with its txn offsets) for micro-batches of 100, 1,000 and
//! 10,000 events, on local disk. The events are decoded and the outputs
//! computed once, outside the measurement. Then the first checkpoint of a fresh
//! `raw` after 100 triggers of 1,000 events, as the sink writes it beside
//! ingest and as delta-rs's `create_checkpoint` would from a loaded table.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::RecordBatch;

use chrono::Utc;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use deltalake::DeltaTable;
use deltalake::checkpoints::create_checkpoint;
use weir::config::{Job, SourcePartition};
use weir::fault::Faults;
use weir::ingest::decode::Decoder;
use weir::ingest::sink::{CommitReport, Sink};
use weir::ingest::transform::Transform;
use weir::ingest::watermark::late_schema;
use weir::metrics::JobMetrics;
use weir::table::delta::{self, CHECKPOINT_INTERVAL};
use weir::table::{Catalog, TableId};

fn commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (job, outputs, mut sink) = open(&runtime, dir.path());
    let decoder = Decoder::new(
        job.contract.clone(),
        job.source.max_message_bytes,
        (&job.source.format).into(),
    );
    let mut generator = common::generator(&job, 0.0, 0.0, 5);

    let mut group = c.benchmark_group("commit");
    group.sample_size(10);
    let mut next_offset = 0i64;
    let mut thousand = BTreeMap::new();
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
            b.iter(|| trigger(&runtime, &mut sink, rows, &mut next_offset))
        });
        if size == 1000 {
            thousand = rows;
        }
    }
    group.finish();
    runtime.block_on(sink.settle());
    checkpoint(c, &runtime, &thousand);
}

/// The example job with its tables in `data`, its outputs and a sink over them.
fn open(runtime: &tokio::runtime::Runtime, data: &Path) -> (Job, Vec<Transform>, Sink) {
    let job = common::clickstream(Some(data));
    let outputs = runtime
        .block_on(Transform::all(&job, &Default::default()))
        .unwrap();
    let catalog = Catalog::new(&job, &outputs);
    let metrics = JobMetrics::detached(&job.name);
    let sink = runtime
        .block_on(Sink::open(
            &job,
            catalog.specs(),
            Faults::default(),
            metrics,
        ))
        .unwrap();
    (job, outputs, sink)
}

/// Commits `rows` as one trigger over the next offsets, as a live one would.
fn trigger(
    runtime: &tokio::runtime::Runtime,
    sink: &mut Sink,
    rows: &BTreeMap<TableId, RecordBatch>,
    next_offset: &mut i64,
) -> CommitReport {
    let events = rows[&TableId::Raw].num_rows() + rows[&TableId::Dlq].num_rows();
    let first = BTreeMap::from([(SourcePartition::first(0), *next_offset)]);
    *next_offset += events as i64;
    let next = BTreeMap::from([(SourcePartition::first(0), *next_offset)]);
    runtime
        .block_on(sink.commit(rows.clone(), &first, &next))
        .unwrap()
}

/// The first checkpoint of a fresh `raw` after [`CHECKPOINT_INTERVAL`]
/// triggers of 1,000 events, made again and again with that checkpoint
/// removed before each run (the kernel skips one that exists).
fn checkpoint(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    rows: &BTreeMap<TableId, RecordBatch>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, mut sink) = open(runtime, dir.path());
    let mut next_offset = 0;
    for _ in 0..CHECKPOINT_INTERVAL {
        trigger(runtime, &mut sink, rows, &mut next_offset);
    }
    runtime.block_on(sink.settle());
    let raw = sink.table_urls()[0].1.clone();
    let table = runtime.block_on(delta::open("raw", &raw)).unwrap();
    let head = table.version().unwrap();
    let version = head - head % CHECKPOINT_INTERVAL;
    let log = raw.to_file_path().unwrap().join("_delta_log");
    let remove = || {
        let _ = std::fs::remove_file(log.join(format!("{version:020}.checkpoint.parquet")));
        let _ = std::fs::remove_file(log.join("_last_checkpoint"));
    };
    let mut group = c.benchmark_group("checkpoint");
    group.sample_size(10);
    group.bench_function("kernel", |b| {
        b.iter_batched(
            remove,
            |()| runtime.block_on(delta::write_checkpoint(&table.log_store(), version)),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("delta-rs_loaded_table", |b| {
        b.iter_batched(
            remove,
            |()| {
                runtime.block_on(async {
                    let mut loaded = DeltaTable::new(table.log_store());
                    loaded.load_version(version).await.unwrap();
                    create_checkpoint(&loaded, None).await
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
