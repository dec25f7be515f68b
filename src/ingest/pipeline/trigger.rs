//! The second stage: a prepared batch judged against the watermark and what
//! the tables hold, its outputs queried, every table's files written and
//! then committed in order, all under the sink's lock; the next trigger may
//! be judged before this one commits (the pipeline's module doc draws it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use chrono::Utc;
use datafusion::error::DataFusionError;
use tracing::{debug, info, warn};

use crate::config::{Offsets, SourcePartition};
use crate::ingest::expect::Breaches;
use crate::ingest::quality::{QualityRow, quality_batch};
use crate::ingest::replay::{filter_replayed, may_replay, may_stage_ahead, without_partitions};
use crate::ingest::sink::{CommitReport, Sink, Staged};
use crate::ingest::transform::Transform;
use crate::ingest::watermark::Settled;
use crate::table::TableId;
use crate::telemetry::ms;

use super::report::Outcome;
use super::{Pipeline, PipelineError, Prepared, produced_ago};

/// `rows` without those table `id` already holds; `lowest` bounds each
/// partition's offsets in `rows` from below (see [`may_replay`]).
fn fresh(
    sink: &Sink,
    id: TableId,
    rows: &RecordBatch,
    lowest: &Offsets,
) -> Result<RecordBatch, ArrowError> {
    let held = sink.held(id);
    if !may_replay(&held, lowest) {
        return Ok(rows.clone());
    }
    filter_replayed(rows, &held, sink.topics())
}

/// A trigger's rows judged and being written as files: what its commit
/// takes, and what the trigger reports once it is made.
struct Staging {
    /// Per table (every one of the sink's), its files being written.
    staged: BTreeMap<TableId, Staged>,
    /// The events stored in `raw`: the accepted ones the watermark let in.
    on_time: RecordBatch,
    /// The quality rows being written: breaches and monitors.
    quality: Vec<QualityRow>,
    /// Rows dropped because their table already held them.
    replayed: usize,
    /// The lookup versions the outputs were derived with.
    lookups: BTreeMap<String, String>,
    /// From the start of staging to the ingest tables' rows staged.
    judging: Duration,
    /// From the start of staging to the outputs' rows staged too.
    transforming: Duration,
}

/// A trigger judged and its files being written, not yet committed: held
/// only under the sink's lock, since its rows were judged against the
/// assignment and the tables as that lock saw them.
struct Pending {
    prepared: Prepared,
    staging: Staging,
    /// Its batch's first and next offsets per partition.
    first: Offsets,
    next: Offsets,
    /// How long the trigger loop waited for its batch.
    waited: Duration,
    /// Whether it was staged before the trigger ahead of it committed.
    ahead: bool,
}

impl Pipeline {
    /// Triggers from `prepared` (`waited` for after the last) on, under one
    /// hold of the sink's lock (which a revocation takes too, so what
    /// [`Self::still_assigned`] passes is this process's to commit). While
    /// the next batch is prepared already and no one waits for the sink, it
    /// is judged and its files started before the trigger ahead of it
    /// commits, when [`may_stage_ahead`] says the commit cannot change what
    /// it reads; otherwise after that commit.
    pub(super) async fn triggers(
        &self,
        prepared: Prepared,
        waited: Duration,
        rx: &mut tokio::sync::mpsc::Receiver<Prepared>,
    ) -> Result<(), PipelineError> {
        let mut sink = self.sink.lock().await;
        let mut pending = self.stage(&mut sink, prepared, waited).await?;
        while let Some(current) = pending.take() {
            let next = if self.sink.wanted() {
                None
            } else {
                rx.try_recv().ok()
            };
            let Some(next) = next else {
                return self.finish(&mut sink, current).await;
            };
            if may_stage_ahead(&current.next, &next.polled.batch.first_offsets()) {
                pending = self.stage(&mut sink, next, Duration::ZERO).await?;
                pending.iter_mut().for_each(|p| p.ahead = true);
                self.finish(&mut sink, current).await?;
            } else {
                self.finish(&mut sink, current).await?;
                pending = self.stage(&mut sink, next, Duration::ZERO).await?;
            }
        }
        Ok(())
    }

    /// Judges `prepared` and starts writing its files (`None` when none of
    /// its partitions is still assigned).
    async fn stage(
        &self,
        sink: &mut Sink,
        prepared: Prepared,
        waited: Duration,
    ) -> Result<Option<Pending>, PipelineError> {
        let Some(prepared) = self.still_assigned(prepared)? else {
            return Ok(None);
        };
        let staging = self.stage_tables(sink, &prepared).await?;
        Ok(Some(Pending {
            first: prepared.polled.first_offsets(),
            next: prepared.polled.next_offsets(),
            prepared,
            staging,
            waited,
            ahead: false,
        }))
    }

    /// Commits a staged trigger, then the offsets to Kafka and the counts.
    async fn finish(&self, sink: &mut Sink, pending: Pending) -> Result<(), PipelineError> {
        let Pending {
            prepared,
            staging,
            first,
            next,
            waited,
            ahead,
        } = pending;
        let report = self
            .commit(sink, staging.staged, &staging.lookups, &first, &next)
            .await?;
        let batch = &prepared.polled.batch;
        debug!(
            events = batch.len(),
            prepared_wait_ms = ms(waited),
            judge_ms = ms(staging.judging),
            queries_ms = ms(staging.transforming - staging.judging),
            commit_ms = ms(report.elapsed),
            staged_ahead = ahead,
            "trigger timed"
        );
        self.report_breaches(&staging.quality);
        if ahead {
            self.stats.staged_ahead.fetch_add(1, Ordering::Relaxed);
        }
        self.source.commit_offsets(&next);
        let committed_us = Utc::now().timestamp_micros();
        let produced = produced_ago(batch, committed_us);
        if !batch.is_empty() {
            self.adapt(batch.len(), &produced);
        }
        self.record(
            batch,
            Outcome {
                report: &report,
                on_time: &staging.on_time,
                duplicates: prepared.duplicates,
                replayed: staging.replayed,
                next: &next,
                committed_us,
                produced,
            },
        );
        Ok(())
    }

    /// Judges a prepared batch's events by the watermark and the fates raw
    /// settled, and starts writing every table's rows of it, each free of
    /// what its table already holds: the ingest tables', the quality rows'
    /// and, from queries that run meanwhile, the outputs'.
    async fn stage_tables(
        &self,
        sink: &mut Sink,
        prepared: &Prepared,
    ) -> Result<Staging, PipelineError> {
        let Prepared {
            polled,
            decoded,
            breaches,
            now,
            ..
        } = prepared;
        let (accepted, now) = (&decoded.valid, *now);
        let clock = Instant::now();
        // Every row below is of one of the batch's messages.
        let lowest = polled.batch.first_offsets();
        let below = sink.held(TableId::Raw);
        let topics = &self.job.source.topics;
        let settled = Settled::read(&mut *sink, below, accepted, &lowest, topics).await?;
        let split = self.judge(accepted, &settled, now)?;
        let derivation = self.outputs.lock().unwrap().clone();
        let inputs = (0..derivation.transforms.len())
            .map(|i| fresh(sink, TableId::Output(i), &split.on_time, &lowest))
            .collect::<Result<_, _>>()?;
        let outputs = apply_outputs(&derivation.transforms, inputs);
        let ingest = [
            (TableId::Raw, &split.on_time),
            (TableId::Dlq, &decoded.rejected),
            (TableId::Late, &split.late),
        ];
        let mut staged = BTreeMap::new();
        let mut replayed = 0;
        for (id, rows) in ingest {
            let kept = fresh(sink, id, rows, &lowest)?;
            replayed += rows.num_rows() - kept.num_rows();
            staged.insert(id, sink.stage(id, kept)?);
        }
        let mut quality = Vec::new();
        if self.job.has_quality() {
            let breaches = Breaches(fresh(sink, TableId::Quality, &breaches.0, &lowest)?);
            quality = self
                .expectations
                .quality_rows(&breaches, now.timestamp_micros());
            quality.extend(self.monitors.lock().unwrap().observe(accepted, now));
            let rows = quality_batch(&quality)?;
            staged.insert(TableId::Quality, sink.stage(TableId::Quality, rows)?);
        }
        let judging = clock.elapsed();
        for (i, rows) in outputs.await?.into_iter().enumerate() {
            let id = TableId::Output(i);
            staged.insert(id, sink.stage(id, rows)?);
        }
        let transforming = clock.elapsed();
        self.metrics.stage("transform", transforming);
        Ok(Staging {
            staged,
            on_time: split.on_time,
            quality,
            replayed,
            lookups: derivation.lookups.versions(),
            judging,
            transforming,
        })
    }

    /// Commits a trigger's `staged` files with its batch's `first` and `next`
    /// offsets, stamped with the `lookups` its outputs were derived with.
    async fn commit(
        &self,
        sink: &mut Sink,
        staged: BTreeMap<TableId, Staged>,
        lookups: &BTreeMap<String, String>,
        first: &Offsets,
        next: &Offsets,
    ) -> Result<CommitReport, PipelineError> {
        let m = &self.metrics;
        sink.derived_with(lookups);
        let report = sink.commit_staged(staged, first, next).await;
        let report = report.inspect_err(|e| {
            if e.is_conflict() {
                m.commit_conflicts.inc();
                warn!(
                    error = %e,
                    "a concurrent commit refused this one: the partition moved to another process (this one is fenced) or upkeep raced it; the batch is dropped and re-read from the tables' positions"
                );
            }
        })?;
        m.stage("commit", report.elapsed);
        m.commit_retries.inc_by(report.retries as u64);
        Ok(report)
    }

    /// `prepared` without the messages and rows of partitions revoked since
    /// it was polled (`None` when nothing is left). Called under the sink's
    /// lock, which a revocation takes too: what passes is still this
    /// process's to commit. (Dedup may keep the IDs of what is dropped: it
    /// remembers where each was read, so their re-read is accepted again.)
    fn still_assigned(&self, prepared: Prepared) -> Result<Option<Prepared>, ArrowError> {
        let Prepared {
            mut polled,
            mut decoded,
            mut breaches,
            duplicates,
            now,
        } = prepared;
        let before = polled.batch.len();
        let moved = polled.drop_moved(&self.source.generations());
        if !moved.is_empty() {
            let topics = &self.job.source.topics;
            decoded.valid = without_partitions(&decoded.valid, &moved, topics)?;
            decoded.rejected = without_partitions(&decoded.rejected, &moved, topics)?;
            breaches = Breaches(without_partitions(&breaches.0, &moved, topics)?);
            info!(
                dropped = before - polled.batch.len(),
                moved = ?self.job.source.topics.labels(&moved),
                "dropped decoded messages of partitions revoked since they were polled; their owner re-reads them"
            );
        }
        Ok((!polled.is_empty()).then_some(Prepared {
            polled,
            decoded,
            breaches,
            duplicates,
            now,
        }))
    }

    /// Splits accepted events by the watermark, then moves the watermark on
    /// and lets dedup forget what fell behind it.
    fn judge(
        &self,
        accepted: &RecordBatch,
        settled: &Settled,
        now: chrono::DateTime<Utc>,
    ) -> Result<crate::ingest::watermark::Split, ArrowError> {
        let mut watermark = self.watermark.lock().unwrap();
        let assigned: Vec<SourcePartition> = self.source.generations().into_keys().collect();
        if !assigned.is_empty() {
            watermark.assign(&assigned, Instant::now());
        }
        let split = watermark.split(accepted, settled, now)?;
        watermark.advance(&split.on_time, Instant::now())?;
        if let Some(w) = watermark.current_us() {
            self.dedup.lock().unwrap().evict(w);
        }
        Ok(split)
    }
}

/// Each output's rows from its input (`inputs[i]` for the i-th output),
/// each query in a task of its own: they share nothing, and the cores are
/// otherwise left to the ingest tables' file writes.
fn apply_outputs(
    transforms: &Arc<[Transform]>,
    inputs: Vec<RecordBatch>,
) -> impl Future<Output = Result<Vec<RecordBatch>, DataFusionError>> + use<> {
    let queries: Vec<_> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, rows)| {
            let transforms = transforms.clone();
            tokio::spawn(async move { transforms[i].apply(&rows).await })
        })
        .collect();
    async move {
        let mut computed = Vec::with_capacity(queries.len());
        for query in queries {
            computed.push(query.await.expect("an output's query does not panic")?);
        }
        Ok(computed)
    }
}
