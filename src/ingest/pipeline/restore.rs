//! Where a starting pipeline's own state comes from: the watermark and the
//! dedup index, derived from the tables (never kept beside them), with the
//! broker's high watermarks to tell a partition that is behind from one that
//! was idle.

use std::time::Duration;

use tracing::{info, warn};

use crate::config::{Job, Offsets, SourcePartition};
use crate::ingest::dedup::{Dedup, Seed};
use crate::ingest::sink::Sink;
use crate::ingest::source::kafka::{SourceError, high_watermarks};
use crate::ingest::watermark::Watermark;
use crate::table::TableId;

use super::PipelineError;

/// Restores the watermark and the dedup index from the tables: each
/// partition's clock from its newest event in `raw`, then the IDs accepted
/// (into `raw` or `late`) within the horizon of that watermark. State is
/// derived from the data, never kept beside it.
pub(super) async fn restore(
    job: &Job,
    bootstrap: &str,
    sink: &mut Sink,
) -> Result<(Watermark, Dedup), PipelineError> {
    let (mut watermark, mut idle) = Watermark::restored(job, sink, &[]).await?;
    if !idle.is_empty() {
        let unread = unread(job, bootstrap, sink, &idle).await?;
        if !unread.is_empty() {
            info!(
                partitions = ?job.source.topics.labels(&unread),
                "partitions whose stored messages are old but which have messages left to read hold the restored watermark"
            );
            (watermark, idle) = Watermark::restored(job, sink, &unread).await?;
        }
    }
    if !idle.is_empty() {
        info!(
            partitions = ?job.source.topics.labels(&idle),
            "partitions idle when the job stopped do not hold the restored watermark"
        );
    }
    let seed = accepted_within_horizon(job, watermark.current_us(), None);
    let mut dedup = Dedup::restored(job, sink, seed)
        .await
        .map_err(PipelineError::from)?;
    if let Some(w) = watermark.current_us() {
        dedup.evict(w);
    }
    info!(
        ids = dedup.index().len(),
        watermark = watermark.current_us(),
        "dedup index and watermark restored from the tables"
    );
    Ok((watermark, dedup))
}

/// Of `partitions`, those with messages after the position the tables
/// resume them from: behind, not idle. When the broker cannot say, all of
/// them (holding the watermark back only delays it; leaving a partition out
/// would send its backlog to `late`).
async fn unread(
    job: &Job,
    bootstrap: &str,
    sink: &mut Sink,
    partitions: &[SourcePartition],
) -> Result<Vec<SourcePartition>, PipelineError> {
    let resume = sink.resume_positions(partitions).await?;
    let high = match broker_high_watermarks(job, bootstrap, Some(partitions.to_vec())).await {
        Ok(high) => high,
        Err(error) => {
            warn!(%error, "cannot ask the broker which partitions have messages left; none is taken as idle");
            return Ok(partitions.to_vec());
        }
    };
    Ok(partitions
        .iter()
        .copied()
        .filter(|p| high.get(p).copied().unwrap_or(0) > resume.get(p).copied().unwrap_or(0))
        .collect())
}

/// The broker's high watermark of each partition of the job's topics (of
/// `partitions` when given), asked off the runtime's threads.
pub async fn broker_high_watermarks(
    job: &Job,
    bootstrap: &str,
    partitions: Option<Vec<SourcePartition>>,
) -> Result<Offsets, PipelineError> {
    let properties = job.kafka_properties()?;
    let (topics, bootstrap) = (job.source.topics.clone(), bootstrap.to_owned());
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        high_watermarks(
            &bootstrap,
            &properties,
            &topics,
            partitions.as_deref(),
            timeout,
        )
        .map_err(|(topic, error)| SourceError::Watermarks { topic, error }.into())
    })
    .await
    .expect("asking the broker does not panic")
}

/// The IDs accepted (into `raw` or `late`) within the dedup horizon of
/// `watermark_us`, for `partitions` (all when `None`).
pub(super) fn accepted_within_horizon<'a>(
    job: &Job,
    watermark_us: Option<i64>,
    partitions: Option<&'a [SourcePartition]>,
) -> Seed<'a> {
    Seed {
        tables: &[TableId::Raw, TableId::Late],
        since_us: watermark_us.map(|w| w.saturating_sub(job.dedup_horizon.as_micros() as i64)),
        until_us: None,
        partitions,
    }
}
