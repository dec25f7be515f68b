//! The first stage: each micro-batch decoded, held to the contract's
//! expectations and deduplicated on a blocking thread, ahead of the trigger
//! stage. Dedup belongs here because it needs nothing a commit leaves (a
//! failed commit ends the pipeline, and the next one rebuilds the index from
//! `raw`); it seeds a partition assigned anew from the tables first.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::compute::concat_batches;
use chrono::Utc;
use tracing::debug;

use crate::config::{KeyFormat, SourcePartition};
use crate::ingest::decode::framed::WriterSchemas;
use crate::ingest::dedup::seeds;
use crate::ingest::source::MicroBatch;
use crate::ingest::source::kafka::Polled;
use crate::ingest::source::registry::RegistryError;
use crate::telemetry::ms;

use super::restore::accepted_within_horizon;
use super::{DECODED_BATCHES, Pipeline, PipelineError, Prepared, produced_ago};

impl Pipeline {
    /// The first stage: each micro-batch decoded and deduplicated on a
    /// blocking thread, into `prepared` (which bounds how far it runs ahead),
    /// until the source ends.
    pub(super) async fn prepare_into(
        self: Arc<Self>,
        prepared: tokio::sync::mpsc::Sender<Prepared>,
    ) -> Result<(), PipelineError> {
        loop {
            let clock = Instant::now();
            let Some(mut polled) = self.batches.lock().await.next_batch().await? else {
                return Ok(());
            };
            let waited = clock.elapsed();
            polled.strip_probes();
            self.seed_reassigned().await?;
            let schemas = self.writer_schemas(&polled.batch).await?;
            let stage = Arc::clone(&self);
            let next = tokio::task::spawn_blocking(move || stage.prepare(polled, &schemas, waited))
                .await
                .expect("decoding and dedup do not panic")?;
            self.metrics.queue(
                "decoded",
                DECODED_BATCHES - prepared.capacity(),
                DECODED_BATCHES,
            );
            if prepared.send(next).await.is_err() {
                return Ok(());
            }
        }
    }

    /// The writer schemas `batch`'s messages name, waiting while the
    /// registry is down (a stop request ends the wait; the batch is not
    /// committed, so it is read again after the restart).
    async fn writer_schemas(&self, batch: &MicroBatch) -> Result<WriterSchemas, RegistryError> {
        let Some(registry) = &self.registry else {
            return Ok(WriterSchemas::default());
        };
        let avro_keys = matches!(self.job.contract.kafka.key, Some(KeyFormat::Avro(_)));
        let keys = batch.messages.iter().filter(|_| avro_keys);
        let framed = batch.messages.iter().filter_map(|m| m.payload.as_deref());
        let framed = framed.chain(keys.filter_map(|m| m.key.as_deref()));
        let stopping = || self.stop.load(Ordering::Relaxed);
        registry.resolve(framed, &self.metrics, &stopping).await
    }

    /// Decodes and deduplicates one micro-batch, `waited` after the last
    /// (the times go to the metrics and, at debug level, to the log: what
    /// shows which stage a machine's cores leave serial).
    fn prepare(
        &self,
        polled: Polled,
        schemas: &WriterSchemas,
        waited: Duration,
    ) -> Result<Prepared, PipelineError> {
        let clock = Instant::now();
        let now = Utc::now();
        let mut decoded = self.decoder.decode(&polled.batch, schemas, now)?;
        let decoding = clock.elapsed();
        self.metrics.stage("decode", decoding);
        let judged = self.expectations.apply(decoded.valid)?;
        if !judged.dropped.is_empty() {
            let refused = self.decoder.refuse(&polled.batch, &judged.dropped, now)?;
            decoded.rejected = concat_batches(&refused.schema(), [&decoded.rejected, &refused])?;
        }
        let clock = Instant::now();
        let (accepted, duplicates) = self.dedup.lock().unwrap().apply(&judged.kept)?;
        let deduplicating = clock.elapsed();
        self.metrics.stage("dedup", deduplicating);
        // How old the batch's oldest and newest events are as it is decoded:
        // the newest's age is the way in (producer, broker, poll), the
        // oldest's that plus the batch filling; what the latency tail is
        // made of before a trigger starts (benches/stages.py).
        let ages = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| produced_ago(&polled.batch, now.timestamp_micros()))
            .unwrap_or_default();
        debug!(
            events = polled.batch.len(),
            source_wait_ms = ms(waited),
            oldest_age_ms = ages.iter().max().copied().map(ms),
            newest_age_ms = ages.iter().min().copied().map(ms),
            decode_ms = ms(decoding),
            dedup_ms = ms(deduplicating),
            "batch prepared"
        );
        let breaches = judged.counted(&accepted)?;
        decoded.valid = accepted;
        Ok(Prepared {
            polled,
            decoded,
            breaches,
            duplicates,
            now,
        })
    }

    /// Seeds dedup for partitions assigned since the last trigger (see `seeded`).
    async fn seed_reassigned(&self) -> Result<(), PipelineError> {
        let current = self.source.generations();
        let mut seeded = self.seeded.lock().await;
        let fresh: Vec<SourcePartition> = current
            .iter()
            .filter(|(p, g)| seeded.get(p) != Some(g))
            .map(|(p, _)| *p)
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let watermark = self.watermark.lock().unwrap().current_us();
        let seed = accepted_within_horizon(&self.job, watermark, Some(&fresh));
        let mut sink = self.sink.lock().await;
        let (contract, topics) = (&self.job.contract, &self.job.source.topics);
        let batches = seeds(contract, topics, &mut *sink, seed).await?;
        drop(sink);
        let mut dedup = self.dedup.lock().unwrap();
        for batch in &batches {
            dedup.seed(batch)?;
        }
        debug!(partitions = ?self.job.source.topics.labels(&fresh), ids = dedup.index().len(), "dedup seeded for newly assigned partitions");
        seeded.clear();
        seeded.extend(current);
        Ok(())
    }
}
