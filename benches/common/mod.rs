//! What every stage bench starts from: the example job and generated batches.

use std::path::Path;

use weir::config::{Job, Overrides, SourcePartition, Topics};
use weir::ingest::source::generator::{Generator, Mix};
use weir::ingest::source::{Message, MicroBatch};

/// The example job; with `data`, its tables go there.
pub fn clickstream(data: Option<&Path>) -> Job {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/clickstream.toml");
    let overrides = Overrides {
        data: data.map(Path::to_owned),
        ..Overrides::default()
    };
    Job::load(&path, &overrides).unwrap()
}

pub fn generator(job: &Job, malformed_ratio: f64, duplicate_ratio: f64, seed: u64) -> Generator {
    let mix = Mix {
        malformed_ratio,
        duplicate_ratio,
        late_ratio: 0.0,
    };
    Generator::new(job.contract.clone(), mix, seed)
}

/// `size` generated messages on partition 0, from `first_offset` on.
pub fn micro_batch(generator: &mut Generator, size: usize, first_offset: i64) -> MicroBatch {
    MicroBatch {
        topics: Topics::single("clicks"),
        messages: (0..size)
            .map(|i| Message {
                partition: SourcePartition::first(0),
                offset: first_offset + i as i64,
                kafka_ts: Some(0),
                payload: Some(generator.next_message().payload.into()),
                ..Message::default()
            })
            .collect(),
    }
}
