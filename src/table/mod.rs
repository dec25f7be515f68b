//! The catalog: which tables a job has, what each holds, where it lives, and
//! how it is opened, created, evolved and read across tiers.
//!
//! A table is meant by its [`TableId`], never by its place in a list; the
//! [`Catalog`] of a job is built once from the job and the stages' own schema
//! functions ([`raw_schema`], [`dlq_schema`], [`late_schema`], each output's
//! planned schema). Nothing here imports a command or upkeep: the ingest path,
//! upkeep and the commands all read and write tables through this layer.
//!
//! - [`delta`]: open, create, evolve, register for DataFusion, txn versions.
//! - [`files`]: rows into a table's data files.
//! - [`schema`]: what a stored table may become (evolution) and rows conformed to it.
//! - [`storage`]: the object stores Delta reads and writes through (file, S3).
//! - [`tier`]: how tables age through hot, warm and cold, and read as one.
//!
//! A stage that keeps state (dedup's index, the watermark's clocks) restores
//! it itself from the tables through [`Tables`]: the sink is one (hot tables
//! as of its own commits, for the trigger loop), [`tier::Tiered`] another
//! (every tier, for upkeep, reprocessing and the commands). State is derived
//! from the data, never kept beside it.

pub mod delta;
pub mod files;
mod id;
pub mod schema;
pub mod storage;
pub mod tier;

pub use id::TableId;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use deltalake::DeltaTableError;
use url::Url;

use crate::config::{Job, JobError};
use crate::ingest::decode::{EVENT_DATE, dlq_schema, raw_schema};
use crate::ingest::lookup::Lookups;
use crate::ingest::quality::quality_schema;
use crate::ingest::transform::Transform;
use crate::ingest::watermark::late_schema;
use schema::Incompatible;

/// What can go wrong opening, creating or reading a table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("table {table} does not exist yet at {url}: run the job first")]
    Missing { table: String, url: Box<Url> },
    #[error("cannot open table {table} at {url}: {source}")]
    Open {
        table: String,
        url: Box<Url>,
        source: Box<DeltaTableError>,
    },
    #[error("Delta table {table} at {url}: {source}")]
    Delta {
        table: String,
        url: Box<Url>,
        source: Box<DeltaTableError>,
    },
    #[error("cannot create the directory for table {table} at {url}: {source}")]
    Directory {
        table: String,
        url: Box<Url>,
        source: std::io::Error,
    },
    #[error("Delta table {table} at {url} cannot take what this job writes: {source}")]
    Incompatible {
        table: String,
        url: Box<Url>,
        /// Not boxed: the CLI finds it in the error's chain (exit 2).
        source: Incompatible,
    },
    #[error("no table {0:?} is open here")]
    NotOpen(TableId),
    #[error("query over table(s) {tables}: {source}")]
    Query {
        tables: String,
        source: Box<DataFusionError>,
    },
}

/// SQL over a job's tables, which a stage restores its state with.
pub trait Tables {
    /// Runs `sql` with the tables `ids` registered under their names.
    fn query(
        &mut self,
        ids: &[TableId],
        sql: &str,
    ) -> impl Future<Output = Result<Vec<RecordBatch>, TableError>> + Send;
}

/// Why a stage could not restore its state from the tables.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("restoring state from the rows read: {0}")]
    Arrow(#[from] ArrowError),
}

impl TableError {
    pub fn delta(table: &str, url: &Url, source: DeltaTableError) -> Self {
        TableError::Delta {
            table: table.to_owned(),
            url: Box::new(url.clone()),
            source: Box::new(source),
        }
    }
}

/// What a table is: its name, its Arrow schema, how it is partitioned, and
/// (for tables of events) which column is the event ID.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub id: TableId,
    pub name: String,
    pub schema: SchemaRef,
    pub partition_columns: Vec<String>,
    pub event_id: Option<String>,
}

/// The tables of a job, in commit order: [`TableId::INGEST`], `quality`
/// (for a job with expectations), then one per output.
#[derive(Debug, Clone)]
pub struct Catalog {
    specs: Vec<TableSpec>,
}

impl Catalog {
    /// The catalog of `job` whose outputs, in order, have `outputs`' schemas.
    pub fn new(job: &Job, outputs: &[Transform]) -> Self {
        let contract = &job.contract;
        let id = contract.event_id_name().to_owned();
        let by_date = || vec![EVENT_DATE.to_owned()];
        let ingest = [
            (
                TableId::Raw,
                raw_schema(contract),
                by_date(),
                Some(id.clone()),
            ),
            (TableId::Dlq, dlq_schema(), vec![], None),
            (TableId::Late, late_schema(contract), by_date(), Some(id)),
        ];
        let quality = job
            .has_quality()
            .then(|| (TableId::Quality, quality_schema(), vec![], None));
        let mut specs: Vec<TableSpec> = ingest
            .into_iter()
            .chain(quality)
            .map(|(id, schema, partition_columns, event_id)| TableSpec {
                id,
                name: id.ingest_name().unwrap_or_default().to_owned(),
                schema,
                partition_columns,
                event_id,
            })
            .collect();
        specs.extend(outputs.iter().enumerate().map(|(i, o)| {
            TableSpec {
                id: TableId::Output(i),
                name: o.name().to_owned(),
                schema: o.schema().clone(),
                partition_columns: o
                    .schema()
                    .column_with_name(EVENT_DATE)
                    .map(|_| by_date())
                    .unwrap_or_default(),
                event_id: None,
            }
        }));
        Self { specs }
    }

    /// The catalog of `job`, planning its outputs over `lookups` to learn
    /// their schemas.
    pub async fn of(job: &Job, lookups: &Lookups) -> Result<Self, JobError> {
        Ok(Self::new(job, &Transform::all(job, lookups).await?))
    }

    /// Every table, in commit order.
    pub fn specs(&self) -> &[TableSpec] {
        &self.specs
    }

    /// Table `id`, which must be one of the job's.
    pub fn spec(&self, id: TableId) -> &TableSpec {
        self.specs
            .iter()
            .find(|s| s.id == id)
            .expect("the catalog holds every table of its job")
    }

    /// The outputs' tables, in the job's order.
    pub fn outputs(&self) -> impl Iterator<Item = &TableSpec> {
        self.specs
            .iter()
            .filter(|s| matches!(s.id, TableId::Output(_)))
    }
}

impl TableId {
    /// Every table of `job`, in commit order.
    pub fn all(job: &Job) -> impl Iterator<Item = TableId> + use<> {
        let quality = job.has_quality().then_some(TableId::Quality);
        Self::INGEST
            .into_iter()
            .chain(quality)
            .chain((0..job.outputs.len()).map(TableId::Output))
    }

    /// The table's name in `job`.
    pub fn name(self, job: &Job) -> &str {
        match self {
            TableId::Output(i) => job.outputs[i].name(),
            ingest => ingest.ingest_name().unwrap_or_default(),
        }
    }

    /// The table of `job` called `name`.
    pub fn of(job: &Job, name: &str) -> Option<TableId> {
        Self::ingest(name).or_else(|| {
            job.outputs
                .iter()
                .position(|o| o.name() == name)
                .map(TableId::Output)
        })
    }
}
