//! The output end of the data path: Delta tables, committed exactly once.
//!
//! Every commit of a table carries, per Kafka partition it covers, a Delta `txn`
//! action `weir:<job>:<topic>:<partition>` whose version is the next offset to
//! read. Data and progress land in one atomic commit or not at all, so a table's
//! txn versions say exactly which offsets it holds. After a crash the source
//! re-reads from the lowest version over all tables, and each table drops the
//! replayed rows its own versions say it already has: every
//! table converges to exactly-once, even after a crash between two tables'
//! commits. (The filtering itself is the pure [`crate::ingest::replay`] stage; the
//! sink only stores what it is given and reports its versions.)
//!
//! # Tables with nothing to write commit nothing
//!
//! `raw` commits first in every trigger, and its commit *vouches* for the
//! others: for a table with no rows in the trigger, a txn
//! `weir:<job>:<topic>:<partition>:<table>` at the trigger's next offset
//! ([`Job::vouch_app_id`]); for a table with rows that has never seen a
//! partition, one at the batch's first offset of it. A table holds every row
//! below the higher of its own version and raw's vouch, and only tables with
//! rows commit. Why that stays exact:
//!
//! - *A vouch is never ahead of what the table holds.* It is written in the
//!   same atomic commit as raw's own progress, only for a table whose rows
//!   for the trigger are none (so it holds everything below `next` once raw
//!   lands), or at `first` for a table that holds nothing of the partition.
//!   A crash after raw and before a table with rows leaves that table at its
//!   own older version (or the vouch at `first`), and the restart re-reads
//!   from there.
//! - *Replays decide the same.* A re-read range below raw's version has its
//!   fates settled by raw ([`crate::ingest::watermark::Settled`]), and every
//!   other table's rows are derived from the events and those fates; so a
//!   table that had no rows for a range has none on its re-read either, and a
//!   vouch and a later data commit never disagree.
//! - *Fencing still holds.* Every trigger's first commit is raw's, with a txn
//!   per partition in the batch; a writer that lost a partition is refused at
//!   raw before it writes any other table. A table with rows carries its own
//!   txns, as before, so two writers of the same rows still collide there.
//!
//! The same vouch replaces the data-less "base" commit each table needed for
//! a partition it had never seen, so a trigger makes one commit for `raw` plus
//! one per table with rows, and an idle job's progress past records never
//! delivered (transaction markers) is one commit of raw.
//!
//! # One trigger's commits
//!
//! ```text
//!  stage (per table, a task each)        commit (raw first, vouching for the tables
//!  ─────────────────────────────        with no rows; then those with rows at once)
//!  rows ─► conform to the stored  ─►  ────────────────────────────────────────────
//!          schema ─► parquet files         │
//!          (Add actions)                   ▼
//!                                      sync: another writer committed since? re-read
//!                                      the txn versions; a partition being committed
//!                                      that moved ─► Fenced (the job restarts)
//!                                          │
//!                                          ▼
//!                                      commit directly: log entry head+1, put-if-absent
//!                                          │ taken by another writer
//!                                          ▼
//!                                      rebase: delta-rs's conflict checker from the
//!                                      snapshot at head; a conflict ─► the job restarts
//!                                          │
//!                                          ▼
//!                                      versions += the txns; every 100th version a
//!                                      checkpoint beside the ingest path
//! ```
//!
//! Tables are opened and created by the catalog ([`crate::table::delta`]);
//! the sink also serves the trigger loop's state reads ([`Tables`]) from its
//! own newest commits.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitData, CommitProperties, PROTOCOL, TransactionError,
};
use deltalake::kernel::{Action, Transaction, Version};
use deltalake::logstore::CommitOrBytes;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use serde_json::json;
use tokio::task::JoinHandle;
use tracing::debug;
use url::Url;
use uuid::Uuid;

mod checkpoint;
mod shared;

use checkpoint::Checkpointer;
pub use shared::SharedSink;

use crate::config::{Job, Offsets, SourcePartition, Tier};
use crate::fault::{FaultError, Faults};
use crate::metrics::JobMetrics;
use crate::table::delta::{
    is_binary, is_commit_conflict, open_or_create_in, register, stored_schema,
};
use crate::table::files::write_rows;
use crate::table::{TableError, TableId, TableSpec, Tables};
use crate::telemetry::ms;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(
        "Delta table {table}: another writer moved partition {partition}'s committed position from {} to {} since this one read it; this writer no longer owns the partition and commits nothing of it",
        offset_or_none(*.known),
        offset_or_none(*.found)
    )]
    Fenced {
        table: String,
        /// As [`crate::config::Topics::label`] names it.
        partition: String,
        known: Option<i64>,
        found: Option<i64>,
    },
    #[error(transparent)]
    Fault(#[from] FaultError),
}

fn offset_or_none(offset: Option<i64>) -> String {
    offset.map_or_else(|| "none".to_owned(), |o| format!("offset {o}"))
}

impl SinkError {
    /// Whether a concurrent commit refused this one: another writer committed
    /// the same partition's txn (this writer lost the partition and is fenced)
    /// or removed what this one read.
    pub fn is_conflict(&self) -> bool {
        match self {
            SinkError::Fenced { .. } => true,
            SinkError::Table(TableError::Delta { source, .. }) => is_commit_conflict(source),
            _ => false,
        }
    }
}

/// One table of a job and the txn versions it is known to hold.
pub struct TableSink {
    spec: TableSpec,
    url: Url,
    table: DeltaTable,
    /// The table's own schema, which rows are conformed to before writing.
    stored: SchemaRef,
    /// How its data files are encoded (see [`writer_properties`]).
    properties: WriterProperties,
    /// Its own txn versions: the fence against another writer of a partition.
    versions: Offsets,
    /// What `raw`'s commits vouch for this table (none for `raw` itself): see
    /// the module doc. What it holds is the higher of the two ([`Self::held_at`]).
    vouched: Offsets,
    /// The newest log version this sink knows of (its own commits included);
    /// `table`'s snapshot may be older (see [`Self::commit_directly`]).
    head: Version,
    /// The log version up to which `versions` are known exact. Behind `head`
    /// when another writer committed since (seen by a refresh or a rebase):
    /// it may have moved a partition this process no longer owns, and
    /// [`Self::commit`] checks before writing any version of its own.
    synced: Version,
    /// Commits rebased on concurrent ones since the sink last reported.
    retries: usize,
    /// Checkpoints written beside the ingest path.
    checkpoints: Checkpointer,
    /// The cores this process may run on: how many files a large trigger
    /// is written as at most ([`file_slices`]).
    cores: NonZeroUsize,
    /// The lookup versions the rows being committed were derived with,
    /// stamped into each commit's info as `weir.lookups`.
    lookups: BTreeMap<String, String>,
}

impl TableSink {
    async fn open(
        job: &Job,
        spec: TableSpec,
        faults: &Faults,
        metrics: &JobMetrics,
    ) -> Result<Self, SinkError> {
        let url = job.storage.hot_table(&job.name, &spec.name);
        let table = open_or_create_in(job, Tier::Hot, &spec).await?;
        let fail = |e| delta_error(&spec, &url, e);
        let stored = stored_schema(&table).map_err(fail)?;
        let head = table.snapshot().map_err(fail)?.version();
        let properties = writer_properties(&stored, spec.event_id.as_deref());
        let lag = metrics.checkpoint_lag(&spec.name);
        let checkpoints = Checkpointer::new(&spec.name, &url, faults.clone(), head, lag);
        Ok(Self {
            spec,
            url,
            table,
            stored,
            properties,
            versions: BTreeMap::new(),
            vouched: BTreeMap::new(),
            head,
            synced: head,
            retries: 0,
            checkpoints,
            cores: crate::task::cores(),
            lookups: BTreeMap::new(),
        })
    }

    fn fail(&self, source: DeltaTableError) -> SinkError {
        delta_error(&self.spec, &self.url, source)
    }

    /// Re-reads the log and the txn versions of `partitions` (the others
    /// are checked when next committed: [`Self::sync`]).
    async fn refresh(
        &mut self,
        job: &Job,
        partitions: &[SourcePartition],
    ) -> Result<(), SinkError> {
        self.table.update_state().await.map_err(|e| self.fail(e))?;
        self.head = self.table.snapshot().map_err(|e| self.fail(e))?.version();
        for (p, version) in self.read_versions(job, partitions).await? {
            match version {
                Some(v) => self.versions.insert(p, v),
                None => self.versions.remove(&p),
            };
        }
        Ok(())
    }

    /// The txn versions of `partitions` in the snapshot (which must be at `head`).
    async fn read_versions(
        &self,
        job: &Job,
        partitions: &[SourcePartition],
    ) -> Result<Vec<(SourcePartition, Option<i64>)>, SinkError> {
        let ids: Vec<String> = partitions.iter().map(|&p| job.app_id(p)).collect();
        let versions = self.read_txns(&ids).await?;
        Ok(partitions.iter().copied().zip(versions).collect())
    }

    /// The versions of the txns `app_ids` in the snapshot.
    async fn read_txns(&self, app_ids: &[String]) -> Result<Vec<Option<i64>>, SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| self.fail(e))?;
        let mut read = Vec::with_capacity(app_ids.len());
        for id in app_ids {
            let version = snapshot
                .transaction_version(self.table.log_store().as_ref(), id.clone())
                .await
                .map_err(|e| self.fail(e))?;
            read.push(version);
        }
        Ok(read)
    }

    /// Brings `versions` up to `head` after another writer committed, and
    /// refuses (fenced) when one of the partitions about to be committed
    /// (`committing`) is not where this writer last saw it: its rows were
    /// filtered against a version that is no longer the table's, and writing
    /// them would store another writer's rows twice and set its version back.
    async fn sync(&mut self, job: &Job, committing: &[SourcePartition]) -> Result<(), SinkError> {
        if self.synced == self.head {
            return Ok(());
        }
        self.catch_up().await?;
        let known: Vec<SourcePartition> = self.versions.keys().copied().collect();
        for (p, found) in self.read_versions(job, &known).await? {
            let known = self.versions.get(&p).copied();
            if found == known {
                continue;
            }
            if committing.contains(&p) {
                return Err(SinkError::Fenced {
                    table: self.spec.name.clone(),
                    partition: job.source.topics.label(p),
                    known,
                    found,
                });
            }
            match found {
                Some(v) => self.versions.insert(p, v),
                None => self.versions.remove(&p),
            };
        }
        self.synced = self.head;
        Ok(())
    }

    /// The next offset of `partition` this table holds, if it knows the partition.
    fn held_at(&self, partition: SourcePartition) -> Option<i64> {
        let own = self.versions.get(&partition).copied();
        own.max(self.vouched.get(&partition).copied())
    }

    /// Per partition it knows, the next offset this table holds.
    fn held(&self) -> Offsets {
        let mut held = self.versions.clone();
        for (&p, &v) in &self.vouched {
            let e = held.entry(p).or_insert(v);
            *e = (*e).max(v);
        }
        held
    }

    /// What `raw`'s commit of this trigger vouches for this table: with no
    /// rows to write, it holds everything below `next`; with rows, a
    /// partition it has never seen starts at `first` (so that a crash
    /// before its own commit leaves it a position to resume from).
    fn to_vouch(
        &self,
        rows: usize,
        first: &Offsets,
        next: &Offsets,
    ) -> Vec<(SourcePartition, i64)> {
        let (offsets, unseen_only) = if rows == 0 {
            (next, false)
        } else {
            (first, true)
        };
        offsets
            .iter()
            .filter(|&(&p, &v)| match self.held_at(p) {
                None => true,
                Some(held) => !unseen_only && v > held,
            })
            .map(|(&p, &v)| (p, v))
            .collect()
    }

    /// Commits `actions` plus the txn versions that advance and the `vouches`
    /// for other tables; returns `false` when there was nothing to commit (no
    /// data, no progress).
    async fn commit(
        &mut self,
        job: &Job,
        actions: Vec<Action>,
        next: &Offsets,
        vouches: Vec<Transaction>,
    ) -> Result<bool, SinkError> {
        self.sync(job, &next.keys().copied().collect::<Vec<_>>())
            .await?;
        let advancing: Vec<(SourcePartition, i64)> = next
            .iter()
            .filter(|(p, v)| self.versions.get(p).is_none_or(|known| *v > known))
            .map(|(p, v)| (*p, *v))
            .collect();
        if actions.is_empty() && advancing.is_empty() && vouches.is_empty() {
            return Ok(false);
        }
        let txns = advancing
            .iter()
            .map(|(p, v)| Transaction::new(job.app_id(*p), *v))
            .chain(vouches)
            .collect();
        let mut metadata: std::collections::HashMap<String, serde_json::Value> = [
            ("weir.version".to_owned(), json!(env!("CARGO_PKG_VERSION"))),
            ("weir.job".to_owned(), json!(job.name)),
        ]
        .into();
        if !self.lookups.is_empty() {
            metadata.insert("weir.lookups".to_owned(), json!(self.lookups));
        }
        let data = CommitData::new(actions, self.operation(), metadata, txns);
        if !self.commit_directly(&data).await? {
            self.commit_rebased(data).await?;
        }
        self.versions.extend(advancing);
        Ok(true)
    }

    /// A blind append reads no rows. Saying so (a read predicate that matches
    /// nothing) keeps the conflict checker from failing ingest when upkeep
    /// (a fold, a file merge) removed files since this table's snapshot.
    fn operation(&self) -> DeltaOperation {
        let partition_by =
            (!self.spec.partition_columns.is_empty()).then(|| self.spec.partition_columns.clone());
        DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by,
            predicate: Some("false".into()),
        }
    }

    /// Writes the commit as log version `head + 1` with put-if-absent, without
    /// delta-rs's commit loop: after every commit that loop rebuilds the
    /// snapshot's whole list of active files (re-parsing their stats), the
    /// largest single cost of a trigger, and a blind append needs none of it.
    /// The snapshot goes stale instead and is brought up to `head` only where
    /// it is read ([`Self::catch_up`]). Returns `false` when another writer
    /// took that version: the commit must then be checked against theirs.
    async fn commit_directly(&mut self, data: &CommitData) -> Result<bool, SinkError> {
        let snapshot = self.table.snapshot().map_err(|e| self.fail(e))?;
        // The protocol is the snapshot's as of `head`: a commit that changed it
        // would have taken the version this one is written at.
        let checkpoint_interval = snapshot.table_config().checkpoint_interval().get();
        let bytes = PROTOCOL
            .can_commit(snapshot, &data.actions, &data.operation)
            .and_then(|()| data.get_bytes())
            .map_err(|e| self.fail(e.into()))?;
        let version = self.head + 1;
        let written = self
            .table
            .log_store()
            .write_commit_entry(version, CommitOrBytes::LogBytes(bytes), Uuid::new_v4())
            .await;
        match written {
            Ok(()) => {}
            Err(TransactionError::VersionAlreadyExists(_)) => return Ok(false),
            Err(e) => return Err(self.fail(e.into())),
        }
        if self.synced == self.head {
            self.synced = version;
        }
        self.head = version;
        // Where delta-rs's own commit would checkpoint, so readers replay little.
        if (version + 1).is_multiple_of(checkpoint_interval) {
            self.checkpoints.request(self.table.log_store(), version);
        }
        Ok(true)
    }

    /// Commits through delta-rs from the snapshot at `head`, so its conflict
    /// checker sees every commit other writers made since: a txn of the same
    /// partition (this writer is fenced) or a change of metadata refuses it.
    async fn commit_rebased(&mut self, data: CommitData) -> Result<(), SinkError> {
        self.catch_up().await?;
        let properties = CommitProperties::default().with_cleanup_expired_logs(Some(false));
        let snapshot = self.table.snapshot().map_err(|e| self.fail(e))?;
        let finalized = CommitBuilder::from(properties)
            .with_actions(data.actions)
            .build(Some(snapshot), self.table.log_store(), data.operation)
            .await
            .map_err(|e| self.fail(e))?;
        self.retries += 1 + finalized.metrics.num_retries as usize;
        self.head = finalized.version();
        self.table.state = Some(finalized.snapshot());
        Ok(())
    }

    /// Brings the snapshot up to `head`, the newest version this sink knows.
    /// (delta-kernel rolls forward from the newest checkpoint when upkeep has
    /// deleted the entries a long-stale snapshot would replay: tests/sink.rs.)
    async fn catch_up(&mut self) -> Result<(), TableError> {
        if self.table.version() != Some(self.head) {
            let head = self.head;
            self.table
                .update_incremental(Some(head))
                .await
                .map_err(|e| TableError::delta(&self.spec.name, &self.url, e))?;
        }
        Ok(())
    }

    /// Starts encoding and uploading `rows` as data files in tasks of their
    /// own, so a trigger's tables (and its outputs' queries) share the cores,
    /// and a large batch's slices ([`file_slices`]) are encoded side by side;
    /// nothing is visible until [`Self::append`] commits them.
    fn stage(&self, rows: RecordBatch) -> Staged {
        let count = rows.num_rows();
        let slices = file_slices(count, self.cores.get());
        let per_slice = count.div_ceil(slices.max(1));
        let files = (0..slices)
            .map(|i| {
                let offset = i * per_slice;
                self.write(rows.slice(offset, per_slice.min(count - offset)))
            })
            .collect();
        Staged {
            rows: count,
            started: Instant::now(),
            files,
        }
    }

    /// Encodes and uploads `rows` as a data file, in a task of its own.
    fn write(&self, rows: RecordBatch) -> JoinHandle<Result<Vec<Action>, DeltaTableError>> {
        let writer = RecordBatchWriter::for_table(&self.table)
            .map(|w| w.with_writer_properties(self.properties.clone()));
        let stored = self.stored.clone();
        let partition_columns = self.spec.partition_columns.clone();
        tokio::spawn(async move {
            let mut writer = writer?;
            write_rows(&mut writer, rows, &stored, &partition_columns).await?;
            let adds = writer.flush().await?;
            Ok(adds.into_iter().map(Action::Add).collect())
        })
    }

    /// Commits the `staged` files with the txn versions `next` (and, for
    /// `raw`, the `vouches` for the others); returns the rows written and
    /// whether a commit was made.
    async fn append(
        &mut self,
        job: &Job,
        staged: Staged,
        next: &Offsets,
        vouches: Vec<Transaction>,
        faults: &Faults,
        metrics: &JobMetrics,
    ) -> Result<(usize, bool), SinkError> {
        let mut actions = Vec::new();
        for files in staged.files {
            let written = files.await.expect("writing data files does not panic");
            actions.extend(written.map_err(|e| self.fail(e))?);
        }
        let written = staged.started.elapsed();
        let committed = self.commit(job, actions, next, vouches).await?;
        debug!(
            table = self.spec.name,
            rows = staged.rows,
            write_ms = ms(written),
            commit_ms = ms(staged.started.elapsed() - written),
            "table appended"
        );
        metrics.rows_out(&self.spec.name).inc_by(staged.rows as u64);
        if committed {
            faults.check(&format!("sink.after_commit.{}", self.spec.name))?;
        }
        Ok((staged.rows, committed))
    }
}

/// One table's rows being written as data files ([`Sink::stage`]).
pub struct Staged {
    rows: usize,
    started: Instant,
    /// Per slice of the rows, its files' `add` actions.
    files: Vec<JoinHandle<Result<Vec<Action>, DeltaTableError>>>,
}

/// The fewest rows a data file written beside others of the same trigger
/// holds: a trigger under twice this writes one file per table.
const ROWS_PER_FILE: usize = 4096;

/// Into how many slices, each a file encoded on a core of its own, a table's
/// `rows` of one trigger are cut, the process running on `cores`: one per
/// [`ROWS_PER_FILE`], and one per two cores at most, since the other tables'
/// files, the outputs' queries and the next batch's decoding run meanwhile.
/// On 16 cores with every batch in one file, `raw`'s file was most of a
/// 10,000-event trigger (benches/README.md, "Cores"); on two cores nothing is
/// cut (cutting was measured there and bought nothing), so a small machine
/// writes as few files as ever. No rows, no file.
fn file_slices(rows: usize, cores: usize) -> usize {
    if rows == 0 {
        return 0;
    }
    (rows / ROWS_PER_FILE).clamp(1, (cores / 2).max(1))
}

/// delta-rs's defaults (snappy, a dictionary and page statistics for every
/// column), except where they cost a trigger's write time for nothing: the
/// event ID is unique and a payload nearly so, so their dictionaries overflow
/// and are thrown away after every value was hashed into them; and min/max of
/// binary columns is never read (see [`crate::table::delta::stats_columns`]).
fn writer_properties(schema: &SchemaRef, event_id: Option<&str>) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY);
    for field in schema.fields() {
        let path = ColumnPath::from(field.name().as_str());
        let binary = is_binary(field);
        if binary || event_id == Some(field.name().as_str()) {
            builder = builder.set_column_dictionary_enabled(path.clone(), false);
        }
        if binary {
            builder = builder.set_column_statistics_enabled(path, EnabledStatistics::None);
        }
    }
    builder.build()
}

/// What one trigger's commits did.
#[derive(Debug, Clone, Default)]
pub struct CommitReport {
    /// Per table: rows written.
    pub written: BTreeMap<TableId, usize>,
    /// Times a commit was rebased on a concurrent writer's commit.
    pub retries: usize,
    /// Commits made (data-less base and progress commits included).
    pub commits: usize,
    pub elapsed: Duration,
}

impl CommitReport {
    /// Rows written to table `id`.
    pub fn written(&self, id: TableId) -> usize {
        self.written.get(&id).copied().unwrap_or_default()
    }
}

fn query_error(tables: &str, source: datafusion::error::DataFusionError) -> TableError {
    TableError::Query {
        tables: tables.to_owned(),
        source: Box::new(source),
    }
}

fn delta_error(spec: &TableSpec, url: &Url, source: DeltaTableError) -> SinkError {
    TableError::delta(&spec.name, url, source).into()
}

/// The table that commits first and vouches for the others (`raw`, which the
/// catalog lists first), and the others.
fn raw_and_others(tables: &mut [TableSink]) -> (&mut TableSink, &mut [TableSink]) {
    tables.split_first_mut().expect("a sink has tables")
}

/// All the tables of a job, committed together once per trigger.
pub struct Sink {
    job: Job,
    tables: Vec<TableSink>,
    faults: Faults,
    metrics: JobMetrics,
}

impl Sink {
    /// Opens (creating where needed) the job's tables in the hot tier.
    /// Rows are counted in `metrics` as each table commits them, so the
    /// counts agree with the tables even when a trigger fails half way.
    pub async fn open(
        job: &Job,
        specs: &[TableSpec],
        faults: Faults,
        metrics: JobMetrics,
    ) -> Result<Self, SinkError> {
        let mut tables = Vec::with_capacity(specs.len());
        for spec in specs.iter().cloned() {
            tables.push(TableSink::open(job, spec, &faults, &metrics).await?);
        }
        Ok(Self {
            job: job.clone(),
            tables,
            faults,
            metrics,
        })
    }

    /// Writes a large trigger's files as if the process ran on `cores` (by
    /// default it asks the OS): for a test or a bench that fixes them.
    pub fn with_cores(mut self, cores: NonZeroUsize) -> Self {
        for table in &mut self.tables {
            table.cores = cores;
        }
        self
    }

    /// Stamps the commits that follow with the lookup versions their rows
    /// were derived with (until stamped again).
    pub fn derived_with(&mut self, lookups: &BTreeMap<String, String>) {
        for table in &mut self.tables {
            table.lookups.clone_from(lookups);
        }
    }

    /// Per table, where it is stored.
    pub fn table_urls(&self) -> Vec<(&str, &Url)> {
        self.tables
            .iter()
            .map(|t| (t.spec.name.as_str(), &t.url))
            .collect()
    }

    /// The sink's table `id`.
    fn table(&mut self, id: TableId) -> Result<&mut TableSink, TableError> {
        self.tables
            .iter_mut()
            .find(|t| t.spec.id == id)
            .ok_or(TableError::NotOpen(id))
    }

    /// Reloads the tables' progress for `partitions` and returns, per partition
    /// any table knows, the lowest next offset the tables hold.
    pub async fn resume_positions(
        &mut self,
        partitions: &[SourcePartition],
    ) -> Result<Offsets, SinkError> {
        for table in &mut self.tables {
            table.refresh(&self.job, partitions).await?;
        }
        let (raw, others) = raw_and_others(&mut self.tables);
        for table in others {
            let ids: Vec<String> = partitions
                .iter()
                .map(|&p| self.job.vouch_app_id(&table.spec.name, p))
                .collect();
            for (&p, version) in partitions.iter().zip(raw.read_txns(&ids).await?) {
                match version {
                    Some(v) => table.vouched.insert(p, v),
                    None => table.vouched.remove(&p),
                };
            }
        }
        Ok(self.positions(partitions))
    }

    /// Per partition of `partitions` any table knows, the lowest next offset
    /// the tables hold as of this sink's last commit or reload: where a
    /// restart would resume.
    pub fn positions(&self, partitions: &[SourcePartition]) -> Offsets {
        let mut positions = BTreeMap::new();
        for table in &self.tables {
            for (p, v) in table.held() {
                if partitions.contains(&p) {
                    let e = positions.entry(p).or_insert(v);
                    *e = (*e).min(v);
                }
            }
        }
        positions
    }

    /// The topics whose partitions the tables' txn versions follow.
    pub fn topics(&self) -> &crate::config::Topics {
        &self.job.source.topics
    }

    /// The next offset table `id` holds for each partition it knows: what
    /// the trigger loop filters replayed rows with.
    pub fn held(&self, id: TableId) -> Offsets {
        self.tables
            .iter()
            .find(|t| t.spec.id == id)
            .map(TableSink::held)
            .unwrap_or_default()
    }

    /// Starts writing `rows` as data files of table `id` (see
    /// [`Sink::commit_staged`]).
    pub fn stage(&mut self, id: TableId, rows: RecordBatch) -> Result<Staged, SinkError> {
        Ok(self.table(id)?.stage(rows))
    }

    /// Commits one trigger: `rows` (already free of rows the tables hold),
    /// one batch for each of the sink's tables. `first` and `next` are the
    /// batch's first and next offsets per partition.
    pub async fn commit(
        &mut self,
        rows: BTreeMap<TableId, RecordBatch>,
        first: &Offsets,
        next: &Offsets,
    ) -> Result<CommitReport, SinkError> {
        let mut staged = BTreeMap::new();
        for (id, rows) in rows {
            staged.insert(id, self.stage(id, rows)?);
        }
        self.commit_staged(staged, first, next).await
    }

    /// [`Sink::commit`] of files already being written by [`Sink::stage`],
    /// one for each of the sink's tables.
    pub async fn commit_staged(
        &mut self,
        mut staged: BTreeMap<TableId, Staged>,
        first: &Offsets,
        next: &Offsets,
    ) -> Result<CommitReport, SinkError> {
        let ids: Vec<TableId> = self.tables.iter().map(|t| t.spec.id).collect();
        assert!(
            staged.keys().eq(ids.iter()),
            "one batch per table: {:?} for {ids:?}",
            staged.keys()
        );
        // From the first file write: what the trigger waits for is the sink's whole work.
        let started = staged
            .values()
            .map(|s| s.started)
            .min()
            .unwrap_or_else(Instant::now);
        let mut report = CommitReport::default();
        let Self {
            job,
            tables,
            faults,
            metrics,
        } = self;
        let (raw, others) = raw_and_others(tables);
        let mut vouched = Vec::new();
        for (i, table) in others.iter().enumerate() {
            let rows = staged[&table.spec.id].rows;
            vouched.extend(
                table
                    .to_vouch(rows, first, next)
                    .into_iter()
                    .map(|pv| (i, pv)),
            );
        }
        let vouches = vouched
            .iter()
            .map(|&(i, (p, v))| Transaction::new(job.vouch_app_id(&others[i].spec.name, p), v))
            .collect();
        // `raw` first: which re-read events were late is settled by raw's txn
        // versions, so no other table may hold a trigger raw does not; and
        // its commit vouches for the tables with nothing to write.
        let files = staged.remove(&raw.spec.id).expect("checked above");
        let (count, committed) = raw
            .append(job, files, next, vouches, faults, metrics)
            .await?;
        report.written.insert(raw.spec.id, count);
        report.commits += usize::from(committed);
        for (i, (p, v)) in vouched {
            others[i].vouched.insert(p, v);
        }
        // The others converge each by its own txn versions: commit them at once.
        let appends = others.iter_mut().filter_map(|table| {
            let files = staged.remove(&table.spec.id).expect("checked above");
            let id = table.spec.id;
            (files.rows > 0).then(|| {
                let append = table.append(job, files, next, Vec::new(), faults, metrics);
                async move { append.await.map(|done| (id, done)) }
            })
        });
        for (id, (count, committed)) in futures::future::try_join_all(appends).await? {
            report.written.insert(id, count);
            report.commits += usize::from(committed);
        }
        report.retries = tables
            .iter_mut()
            .map(|t| std::mem::take(&mut t.retries))
            .sum();
        report.elapsed = started.elapsed();
        debug!(?report, "trigger committed");
        Ok(report)
    }

    /// Waits for the checkpoints still being written (per table, at most the
    /// one in progress and one more: [`checkpoint`]).
    pub async fn settle(&mut self) {
        for table in &mut self.tables {
            table.checkpoints.settle().await;
        }
    }
}

impl Tables for Sink {
    /// The hot tables as of the sink's own newest commits.
    async fn query(&mut self, ids: &[TableId], sql: &str) -> Result<Vec<RecordBatch>, TableError> {
        let ctx = SessionContext::new();
        let mut names = Vec::with_capacity(ids.len());
        for &id in ids {
            let table = self.table(id)?;
            table.catch_up().await?;
            names.push(table.spec.name.clone());
            let fail = |source| query_error(&table.spec.name, source);
            register(&ctx, &table.spec.name, &table.table)
                .await
                .map_err(fail)?;
        }
        let fail = |source| query_error(&names.join(", "), source);
        let frame = ctx.sql(sql).await.map_err(fail)?;
        frame.collect().await.map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn a_large_trigger_is_cut_into_files_by_half_the_cores() {
        assert_eq!(file_slices(0, 16), 0, "no rows, no file");
        assert_eq!(file_slices(1, 16), 1);
        assert_eq!(file_slices(2 * ROWS_PER_FILE - 1, 16), 1);
        assert_eq!(file_slices(10_000, 16), 2);
        assert_eq!(file_slices(100_000, 16), 8);
        for cores in [1, 2, 3] {
            assert_eq!(file_slices(100_000, cores), 1, "{cores} cores: one file");
        }
    }

    #[test]
    fn unique_and_binary_columns_are_written_without_dictionaries() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("page", DataType::Utf8, true),
            Field::new("_payload", DataType::Binary, true),
        ]));
        let properties = writer_properties(&schema, Some("event_id"));
        let column = |name: &str| ColumnPath::from(name);
        assert!(!properties.dictionary_enabled(&column("event_id")));
        assert!(!properties.dictionary_enabled(&column("_payload")));
        assert!(properties.dictionary_enabled(&column("page")));
        assert_eq!(
            properties.statistics_enabled(&column("_payload")),
            EnabledStatistics::None
        );
        assert_eq!(
            properties.statistics_enabled(&column("event_id")),
            EnabledStatistics::Page
        );
        assert_eq!(properties.compression(&column("page")), Compression::SNAPPY);
    }
}
