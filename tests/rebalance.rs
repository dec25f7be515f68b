//! Partitions moving between live pipelines of one job, on librdkafka's mock
//! cluster, while decoded batches wait behind a slowed sink. That is the
//! window in which a batch polled before a rebalance reaches its commit after
//! it, and in which a partition revoked and assigned again to the same
//! process gets new messages into a batch that still holds its old ones.
//! (The Kafka chaos test moves partitions between processes at random; this
//! one aims at the window.)

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use weir::cmd::demo::end_offsets;
use weir::fault::Faults;
use weir::ingest::pipeline::{Pipeline, PipelineError};
use weir::ingest::source::embedded::EmbeddedBroker;
use weir::ingest::source::generator::{Kind, Mix};

type Running = tokio::task::JoinHandle<Result<(), PipelineError>>;

fn run(pipeline: &Arc<Pipeline>) -> Running {
    let p = pipeline.clone();
    tokio::spawn(async move { p.run().await })
}

async fn stop(pipeline: Arc<Pipeline>, running: Running) {
    pipeline.stop();
    running.await.unwrap().unwrap();
}

/// Waits until `raw` holds every offset below `ends`.
async fn wait_for_raw(job: &weir::config::Job, ends: &BTreeMap<i32, i64>) {
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while txn_versions(job, "raw", &partitions).await != *ends {
        assert!(Instant::now() < deadline, "raw never reached {ends:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_moving_between_live_pipelines_land_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 40);
    let broker = EmbeddedBroker::start(job.source.topics.first(), 4).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let mix = Mix {
        malformed_ratio: 0.05,
        duplicate_ratio: 0.05,
        late_ratio: 0.0,
    };
    let delivered = produce(&bootstrap, &job, 4000, mix, 11).await;
    let ends = numbered(&end_offsets(&delivered));

    // `a`'s commits are slow, so its queues stay full of decoded batches.
    let slow = Faults::parse("sink.after_commit.raw@*:sleep=150").unwrap();
    let a = start(&job, &bootstrap, slow).await;
    let stats = a.stats();
    let running_a = run(&a);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        // `b` joins (the group moves partitions away from `a`, and under the
        // eager protocol revokes and gives `a` back the ones it keeps), then
        // leaves (they all come back to `a`).
        let b = start(&job, &bootstrap, Faults::default()).await;
        let running_b = run(&b);
        tokio::time::sleep(Duration::from_secs(6)).await;
        stop(b, running_b).await;
    }
    wait_for_raw(&job, &ends).await;
    stop(a, running_a).await;
    // The window held triggers judged while the one ahead still committed.
    assert!(stats.staged_ahead.load(Ordering::Relaxed) > 0);

    let raw = offsets(&job, "raw").await;
    let dlq = offsets(&job, "dlq").await;
    assert_unique(&raw, "raw");
    assert_unique(&dlq, "dlq");
    assert_eq!(raw, expected(&delivered, |d| d.kind == Kind::Valid));
    assert_eq!(dlq, expected(&delivered, |d| !d.kind.is_valid()));
    let partitions: Vec<i32> = ends.keys().copied().collect();
    assert_eq!(txn_versions(&job, "dlq", &partitions).await, ends);
}
