//! Adaptive batching on the mock cluster: the input rate steps up tenfold
//! and back down; after settling at each rate the p99 of produced → committed
//! (measured per event, independently of the controller's own estimate) is
//! under the target, and the batch cap moved to follow the rate.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use weir::config::{Adaptive, Job};
use weir::fault::Faults;
use weir::ingest::pipeline::Pipeline;
use weir::ingest::source::embedded::EmbeddedBroker;
use weir::ingest::source::generator::{self, Generator, Limits, Mix};
use weir::ingest::stats::Samples;
use weir::metrics::JobMetrics;
use weir::telemetry::quantile;

const TARGET: Duration = Duration::from_millis(4000);

/// Sends at `rate` for `seconds` from a background task.
fn feed(bootstrap: &str, job: &Job, rate: f64, seconds: u64) -> tokio::task::JoinHandle<()> {
    let (bootstrap, topic) = (bootstrap.to_owned(), job.source.topics.first().to_owned());
    let contract = job.contract.clone();
    tokio::spawn(async move {
        let mut g = Generator::new(contract, Mix::default(), rand::random());
        let limits = Limits {
            rate: Some(rate),
            count: None,
            duration: Some(Duration::from_secs(seconds)),
        };
        generator::produce(
            &bootstrap,
            &topic,
            &mut g,
            None,
            limits,
            &AtomicBool::new(false),
            &[],
        )
        .await
        .unwrap();
    })
}

struct Phase {
    p99: Duration,
    mean_batch: f64,
    cap: i64,
}

fn summarise(samples: &Samples, metrics: &JobMetrics) -> Phase {
    let events: usize = samples.triggers.iter().map(|t| t.events).sum();
    Phase {
        p99: quantile(&samples.end_to_end, 0.99).unwrap_or_default(),
        mean_batch: events as f64 / samples.triggers.len().max(1) as f64,
        cap: metrics.batch_cap.get(),
    }
}

/// Runs one rate for `seconds`; the first `settle` seconds are not measured.
async fn phase(run: &Running<'_>, rate: f64, seconds: u64, settle: u64) -> Phase {
    let Running {
        job,
        pipeline,
        metrics,
        bootstrap,
    } = run;
    let sender = feed(bootstrap, job, rate, seconds);
    tokio::time::sleep(Duration::from_secs(settle)).await;
    pipeline.stats().take_samples();
    sender.await.unwrap();
    // Let the tail of this rate commit before reading its latencies.
    tokio::time::sleep(Duration::from_millis(TARGET.as_millis() as u64)).await;
    summarise(&pipeline.stats().take_samples(), metrics)
}

/// What the phases share.
struct Running<'a> {
    job: &'a Job,
    pipeline: &'a Pipeline,
    metrics: &'a JobMetrics,
    bootstrap: &'a str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_cap_follows_rate_steps_and_holds_the_p99_target() {
    if std::env::var_os("RUST_LOG").is_some() {
        weir::telemetry::init_logging(weir::telemetry::LogFormat::Text);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut job = common::job(dir.path(), 20_000);
    job.batching.min_events = 50;
    job.batching.adaptive = Some(Adaptive { target_p99: TARGET });
    let broker = EmbeddedBroker::start(job.source.topics.first(), 3).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let metrics = JobMetrics::detached(&job.name);
    let pipeline = Arc::new(
        Pipeline::start(&job, &bootstrap, Faults::default(), metrics.clone())
            .await
            .unwrap(),
    );
    assert_eq!(metrics.batch_cap.get(), 50, "starts at min_events");
    pipeline.stats().keep_samples();
    let task = {
        let p = pipeline.clone();
        tokio::spawn(async move { p.run().await })
    };
    // The mock cluster's group join takes about 3 s.
    let started = Instant::now();
    while pipeline
        .stats()
        .batches
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        feed(&bootstrap, &job, 100.0, 1).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no trigger committed"
        );
    }

    let run = Running {
        job: &job,
        pipeline: &pipeline,
        metrics: &metrics,
        bootstrap: &bootstrap,
    };
    let low = phase(&run, 150.0, 12, 6).await;
    let high = phase(&run, 1500.0, 24, 12).await;
    let low_again = phase(&run, 150.0, 12, 6).await;
    pipeline.stop();
    task.await.unwrap().unwrap();
    drop(pipeline);
    drop(broker);

    for (name, p) in [
        ("150/s", &low),
        ("1500/s", &high),
        ("150/s again", &low_again),
    ] {
        eprintln!(
            "{name}: p99 {:?}, mean batch {:.0}, cap {}",
            p.p99, p.mean_batch, p.cap
        );
        assert!(
            p.p99 <= TARGET,
            "{name}: p99 {:?} over the {TARGET:?} target",
            p.p99
        );
    }
    assert!(
        high.mean_batch > low.mean_batch * 2.0,
        "batches did not grow with the rate: {:.0} → {:.0}",
        low.mean_batch,
        high.mean_batch
    );
    assert!(high.cap > 50, "the cap never moved from min_events");
}
