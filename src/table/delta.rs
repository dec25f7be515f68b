//! Delta tables as the catalog opens them: created from a [`TableSpec`] (or
//! evolved to it), opened read-only, registered for DataFusion, and their
//! txn versions read. The sink commits to what [`open_or_create`] returns;
//! queries and upkeep read through [`open`] and [`register`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use delta_kernel::snapshot::Snapshot;
use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};
use deltalake::kernel::transaction::{CommitProperties, TransactionError};
use deltalake::kernel::{StructType, Version};
use deltalake::logstore::LogStoreRef;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError, TableProperty};
use serde_json::json;
use tracing::info;
use url::Url;

use super::schema::{EVENT_ID_PROPERTY, Shape, within};
use super::{TableError, TableId, TableSpec};
use crate::config::{Job, Offsets, SourcePartition, Tier};

/// Commits between Delta checkpoints, so the log stays cheap to read.
pub const CHECKPOINT_INTERVAL: u64 = 100;

/// Writes a checkpoint of the log at `version`. delta-rs's `create_checkpoint`
/// wants a loaded [`DeltaTable`] only for its version, and loading one
/// replays every add action and parses its statistics; it then writes the
/// checkpoint on the calling runtime worker, which a trigger's file writes
/// and queries wait behind. The kernel builds its own snapshot here, once,
/// on a blocking thread: half the CPU of the first checkpoint over 100
/// ingest commits (11 against 23 ms), and at 50 triggers a second the six
/// tables' checkpoints ran 0.13–0.17 s apart instead of 0.4–0.9 s
/// (benches/README.md, "The 1,000-event latency tail").
pub async fn write_checkpoint(
    log_store: &LogStoreRef,
    version: Version,
) -> Result<(), DeltaTableError> {
    let engine = log_store.engine(None);
    let root = log_store.transaction_url(None)?;
    tokio::task::spawn_blocking(move || {
        let snapshot = Snapshot::builder_for(root)
            .at_version(version)
            .build(engine.as_ref())?;
        snapshot.checkpoint(engine.as_ref(), None)?;
        Ok(())
    })
    .await
    .map_err(|e| DeltaTableError::Generic(format!("the checkpoint's thread: {e}")))?
}

/// Whether delta-rs refused a commit because a concurrent one conflicts with it.
pub fn is_commit_conflict(error: &DeltaTableError) -> bool {
    matches!(
        error,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(_)
        }
    )
}

/// Whether a commit lost to other writers and may be tried again from a
/// fresh snapshot: a conflict, or delta-rs's retries spent with every next
/// version taken by another writer (ingest committing faster than a slow
/// store lets a large commit check for conflicts and land).
pub fn is_lost_race(error: &DeltaTableError) -> bool {
    is_commit_conflict(error)
        || matches!(
            error,
            DeltaTableError::Transaction {
                source: TransactionError::MaxCommitAttempts(_)
            }
        )
}

/// Opens a job table read from its Delta log; a location without a log is `Missing`.
pub async fn open(name: &str, url: &Url) -> Result<DeltaTable, TableError> {
    let missing = || TableError::Missing {
        table: name.to_owned(),
        url: Box::new(url.clone()),
    };
    if url.scheme() == "file"
        && url
            .to_file_path()
            .is_ok_and(|p| !p.join("_delta_log").exists())
    {
        return Err(missing());
    }
    super::storage::register();
    deltalake::open_table(url.clone())
        .await
        .map_err(|source| match source {
            DeltaTableError::NotATable(_) => missing(),
            source => TableError::Open {
                table: name.to_owned(),
                url: Box::new(url.clone()),
                source: Box::new(source),
            },
        })
}

/// Registers `table` in `ctx` under `name`, reading through its Delta log.
pub async fn register(
    ctx: &SessionContext,
    name: &str,
    table: &DeltaTable,
) -> Result<(), DataFusionError> {
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    register_as(ctx, name, table.table_provider().await?)
}

/// Registers `provider` under `name` exactly as written, so weir's own SQL
/// (which quotes every name) finds `"PageViews"`; and, when `name` has
/// capitals, under its lower case too, which is what SQL makes of an
/// unquoted `PageViews`. (Job names that differ only by case are refused.)
pub fn register_as(
    ctx: &SessionContext,
    name: &str,
    provider: Arc<dyn TableProvider>,
) -> Result<(), DataFusionError> {
    let lower = name.to_lowercase();
    if lower != name {
        ctx.register_table(TableReference::bare(lower), provider.clone())?;
    }
    ctx.register_table(TableReference::bare(name), provider)?;
    Ok(())
}

/// A table's own schema in Arrow, the one every write must match.
pub fn stored_schema(table: &DeltaTable) -> Result<SchemaRef, DeltaTableError> {
    let schema = table.snapshot()?.schema();
    Ok(Arc::new(schema.as_ref().try_into_arrow()?))
}

/// Keeps the stored type of each structured column of `job` (taken from a
/// registry subject) whose record gained fields since its `raw` table was
/// made: the job then writes what the table holds, and the added fields
/// are named in the job's `left_out`. Without a `raw` table, nothing.
pub async fn keep_stored_records(job: &mut Job) -> Result<(), TableError> {
    if job.contract_from.is_none() || job.contract.structured.is_empty() {
        return Ok(());
    }
    let name = TableId::Raw.name(job).to_owned();
    let url = job.storage.hot_table(&job.name, &name);
    let name = name.as_str();
    let table = match open(name, &url).await {
        Ok(table) => table,
        Err(TableError::Missing { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let stored = stored_schema(&table).map_err(|source| TableError::delta(name, &url, source))?;
    let from = job.contract_from.as_mut().expect("checked above");
    for column in &mut job.contract.structured {
        let Ok(kept) = stored.field_with_name(&column.name) else {
            continue;
        };
        let mut added = Vec::new();
        if within(kept.data_type(), &column.ty, &column.name, &mut added) {
            column.ty = kept.data_type().clone();
            let why = "(added inside a record the table already stores)";
            from.left_out
                .extend(added.into_iter().map(|a| format!("{a} {why}")));
        }
    }
    Ok(())
}

/// Opens (creating where needed) `spec`'s table of `tier` where `job` keeps
/// it, its log keeping removals for as long as the job's upkeep needs them.
pub async fn open_or_create_in(
    job: &Job,
    tier: Tier,
    spec: &TableSpec,
) -> Result<DeltaTable, TableError> {
    let url = job.storage.table(tier, &job.name, &spec.name);
    open_or_create(url, spec, job.maintenance.removals_kept(tier)).await
}

/// Opens the Delta table at `url`, creating it from `spec` if there is none,
/// and evolving it if the job's contract gained fields ([`super::schema`]),
/// with its log keeping removals for `removals_kept` (see
/// [`keep_removals_for`]). Setting that here, before any trigger commits,
/// spares ingest the metadata commit that upkeep would otherwise race.
pub async fn open_or_create(
    url: Url,
    spec: &TableSpec,
    removals_kept: Duration,
) -> Result<DeltaTable, TableError> {
    super::storage::register();
    let fail = |source| TableError::delta(&spec.name, &url, source);
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        std::fs::create_dir_all(&path).map_err(|source| TableError::Directory {
            table: spec.name.clone(),
            url: Box::new(url.clone()),
            source,
        })?;
    }
    let table = DeltaTable::try_from_url(url.clone()).await.map_err(fail)?;
    let columns: StructType = spec
        .schema
        .as_ref()
        .try_into_kernel()
        .map_err(|e| fail(DeltaTableError::from(e)))?;
    if table.version().is_some() {
        return evolve(table, spec, &url, &columns, removals_kept).await;
    }
    let mut configuration = vec![
        (
            TableProperty::CheckpointInterval.as_ref().to_owned(),
            Some(CHECKPOINT_INTERVAL.to_string()),
        ),
        (
            TableProperty::DeletedFileRetentionDuration
                .as_ref()
                .to_owned(),
            Some(interval(removals_kept)),
        ),
        (
            TableProperty::DataSkippingStatsColumns.as_ref().to_owned(),
            Some(stats_columns(&spec.schema)),
        ),
    ];
    if let Some(id) = &spec.event_id {
        configuration.push((EVENT_ID_PROPERTY.to_owned(), Some(id.clone())));
    }
    let created = table
        .create()
        .with_table_name(&spec.name)
        .with_columns(columns.fields().cloned())
        .with_partition_columns(spec.partition_columns.clone())
        .with_configuration(configuration)
        // weir.eventId is weir's own property, unknown to Delta.
        .with_raise_if_key_not_exists(false)
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(t) => {
            info!(table = %spec.name, %url, "created Delta table");
            Ok(t)
        }
        Err(e) => {
            // Another writer may have created it first: then use theirs.
            let table = DeltaTable::try_from_url(url.clone()).await.map_err(fail)?;
            if table.version().is_none() {
                return Err(fail(e));
            }
            evolve(table, spec, &url, &columns, removals_kept).await
        }
    }
}

/// Adds the columns the job's contract gained to an existing table (or
/// refuses a change the table cannot take), and sets how long its log keeps
/// removals if that changed.
async fn evolve(
    table: DeltaTable,
    spec: &TableSpec,
    url: &Url,
    columns: &StructType,
    removals_kept: Duration,
) -> Result<DeltaTable, TableError> {
    let fail = |source| TableError::delta(&spec.name, url, source);
    let table = add_columns(table, spec, url, columns).await?;
    keep_removals_for(table, removals_kept).await.map_err(fail)
}

/// Adds the columns the job's contract gained to an existing table, or
/// refuses a change the table cannot take.
async fn add_columns(
    table: DeltaTable,
    spec: &TableSpec,
    url: &Url,
    columns: &StructType,
) -> Result<DeltaTable, TableError> {
    let fail = |source| TableError::delta(&spec.name, url, source);
    let snapshot = table.snapshot().map_err(fail)?;
    let stored_columns = snapshot.schema();
    let metadata = snapshot.metadata();
    let added = super::schema::evolve(
        Shape {
            schema: &stored_columns,
            partition_columns: metadata.partition_columns(),
            event_id: metadata
                .configuration()
                .get(EVENT_ID_PROPERTY)
                .map(String::as_str),
        },
        Shape {
            schema: columns,
            partition_columns: &spec.partition_columns,
            event_id: spec.event_id.as_deref(),
        },
    )
    .map_err(|source| TableError::Incompatible {
        table: spec.name.clone(),
        url: Box::new(url.clone()),
        source,
    })?;
    if added.is_empty() {
        return Ok(table);
    }
    let names: Vec<&str> = added.iter().map(|f| f.name().as_str()).collect();
    info!(table = %spec.name, %url, columns = ?names, "adding the job's new fields as nullable columns");
    table
        .add_columns()
        .with_fields(added)
        .with_commit_properties(metadata_commit("evolve"))
        .await
        .map_err(fail)
}

/// Sets how long `table`'s checkpoints keep the removal of a file
/// (`delta.deletedFileRetentionDuration`) to `retention`, unless it holds it
/// already: a metadata commit only when the job's retention changed.
pub async fn keep_removals_for(
    table: DeltaTable,
    retention: Duration,
) -> Result<DeltaTable, DeltaTableError> {
    let key = TableProperty::DeletedFileRetentionDuration.as_ref();
    let wanted = interval(retention);
    let metadata = table.snapshot()?.metadata();
    let held = metadata.configuration().get(key).cloned();
    if held.as_ref() == Some(&wanted) {
        return Ok(table);
    }
    let name = metadata.name().unwrap_or_default().to_owned();
    info!(table = name, ?held, %wanted, "setting how long the log keeps removed files for the vacuum");
    table
        .set_tbl_properties()
        .with_properties([(key.to_owned(), wanted)].into())
        .with_commit_properties(metadata_commit("retention"))
        .await
}

/// `duration` as a Delta table property's interval, which Spark reads too.
fn interval(duration: Duration) -> String {
    format!("interval {} seconds", duration.as_secs())
}

/// What a commit that changes only a table's metadata says of itself.
fn metadata_commit(operation: &str) -> CommitProperties {
    CommitProperties::default().with_metadata([
        ("weir.operation".to_owned(), json!(operation)),
        ("weir.version".to_owned(), json!(env!("CARGO_PKG_VERSION"))),
    ])
}

/// Binary columns (payloads) have no useful order: neither the log nor the
/// data files keep min/max statistics of them.
pub(crate) fn is_binary(field: &Field) -> bool {
    matches!(field.data_type(), DataType::Binary | DataType::LargeBinary)
}

/// Min/max statistics are kept for every column but binary ones (see
/// [`is_binary`]; delta-rs warns on every file it would skip them in).
pub(crate) fn stats_columns(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .filter(|f| !is_binary(f))
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The version of `app_id`'s txn in `table`'s snapshot (none when it never committed one).
pub async fn txn_version(table: &DeltaTable, app_id: &str) -> Result<Option<i64>, DeltaTableError> {
    table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), app_id.to_owned())
        .await
}

/// Per partition of `partitions`, the next offset table `table` holds: the
/// higher of its own txn version and the one `raw`'s commits vouch for it
/// ([`Job::vouch_app_id`]). `raw` is `None` when `table` is `raw`.
pub async fn held_versions(
    job: &Job,
    table: (&str, &DeltaTable),
    raw: Option<&DeltaTable>,
    partitions: &[SourcePartition],
) -> Result<Offsets, DeltaTableError> {
    let (name, table) = table;
    let mut held = BTreeMap::new();
    for &p in partitions {
        let own = txn_version(table, &job.app_id(p)).await?;
        let vouched = match raw {
            Some(raw) => txn_version(raw, &job.vouch_app_id(name, p)).await?,
            None => None,
        };
        if let Some(v) = own.max(vouched) {
            held.insert(p, v);
        }
    }
    Ok(held)
}
