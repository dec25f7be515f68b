//! Object storage for Delta tables beyond the local disk: `s3://` roots, on AWS
//! or any S3-compatible server.
//!
//! deltalake ships without S3 here (its `s3` feature pulls the whole AWS SDK);
//! object_store's own S3 client is already in the tree, so weir registers it
//! for the `s3` scheme with deltalake's default log store.
//!
//! Commits are safe with concurrent writers through conditional put: a log
//! entry is written with `If-None-Match: *`, so of two writers racing for the
//! same version exactly one wins and the other sees the conflict and retries on
//! the new version. The store must honour that header (AWS S3, MinIO, R2 and
//! moto do).
//!
//! Endpoint, region and credentials come from the standard `AWS_*`
//! environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, …), so no
//! secret is ever written in a job spec or printed.
//!
//! Every scheme's log store is deltalake's default one wrapped in
//! [`BoundedReads`], which only changes how the Delta kernel reads the log:
//! deltalake builds the kernel's engine with its defaults, which read up to
//! 1,000 commit files at once, each through a JSON decoder sized for 1,000
//! rows of the whole action schema (about 1.1 MB). A table opened from a
//! checkpoint plus 100 commits then held ~110 MB for a moment, many times a
//! minute in a long run, and the allocator kept much of what those peaks
//! touched (benches/README.md, "Under heaptrack").

use std::num::NonZero;
use std::sync::{Arc, Once};

use bytes::Bytes;
use datafusion::datasource::object_store::ObjectStoreUrl;
use delta_kernel::Engine;
use delta_kernel_default_engine::DefaultEngineBuilder;
use delta_kernel_default_engine::executor::tokio::{
    TokioBackgroundExecutor, TokioMultiThreadExecutor,
};
use deltalake::kernel::Version;
use deltalake::kernel::transaction::TransactionError;
use deltalake::logstore::object_store::ObjectStore;
use deltalake::logstore::object_store::aws::{
    AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut,
};
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::{
    CommitOrBytes, LogStore, LogStoreConfig, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef,
    StorageConfig, default_logstore, logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError};
use tokio::runtime::{Handle, RuntimeFlavor};
use url::Url;
use uuid::Uuid;

/// URL schemes a storage root may use.
pub const SCHEMES: [&str; 2] = ["file", "s3"];

/// Log files the kernel reads at once: enough to overlap an object store's
/// latency, few enough that a log replay's decoders stay a few MB.
const LOG_READS_IN_FLIGHT: NonZero<usize> = NonZero::new(16).expect("not zero");

/// Makes `s3://` locations openable by deltalake, and every scheme's log
/// reads bounded. Idempotent.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let s3 = Url::parse("s3://").expect("a valid URL");
        object_store_factories().insert(s3.clone(), Arc::new(S3Stores));
        for scheme in SCHEMES {
            let scheme = Url::parse(&format!("{scheme}://")).expect("a valid URL");
            logstore_factories().insert(scheme, Arc::new(BoundedLogStores));
        }
    });
}

struct S3Stores;

impl ObjectStoreFactory for S3Stores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut builder = AmazonS3Builder::from_env()
            .with_url(url.as_str())
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        for (key, value) in &config.raw {
            if let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, value);
            }
        }
        let store = builder
            .build()
            .map_err(|e| DeltaTableError::generic(format!("S3 store for {url}: {e}")))?;
        let path = Path::from_url_path(url.path())
            .map_err(|e| DeltaTableError::generic(format!("S3 path in {url}: {e}")))?;
        Ok((Arc::new(store), path))
    }
}

struct BoundedLogStores;

impl LogStoreFactory for BoundedLogStores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        let inner = default_logstore(prefixed_store, root_store, location, options);
        Ok(Arc::new(BoundedReads { inner }))
    }
}

/// deltalake's default log store, whose kernel engine reads at most
/// [`LOG_READS_IN_FLIGHT`] log files at once. Everything else is delegated.
struct BoundedReads {
    inner: Arc<dyn LogStore>,
}

#[async_trait::async_trait]
impl LogStore for BoundedReads {
    /// As deltalake's own, but for the bound on reads in flight.
    fn engine(&self, operation_id: Option<Uuid>) -> Arc<dyn Engine> {
        let engine = DefaultEngineBuilder::new(self.root_object_store(operation_id))
            .with_buffer_size(LOG_READS_IN_FLIGHT);
        let handle = Handle::current();
        match handle.runtime_flavor() {
            RuntimeFlavor::CurrentThread => Arc::new(
                engine
                    .with_task_executor(Arc::new(TokioBackgroundExecutor::new()))
                    .build(),
            ),
            _ => Arc::new(
                engine
                    .with_task_executor(Arc::new(TokioMultiThreadExecutor::new(handle)))
                    .build(),
            ),
        }
    }

    fn name(&self) -> String {
        self.inner.name()
    }

    async fn refresh(&self) -> DeltaResult<()> {
        self.inner.refresh().await
    }

    async fn read_commit_entry(&self, version: Version) -> DeltaResult<Option<Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        (self.inner)
            .write_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn abort_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        (self.inner)
            .abort_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn get_latest_version(&self, start_version: Version) -> DeltaResult<Version> {
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn to_uri(&self, location: &Path) -> String {
        self.inner.to_uri(location)
    }

    fn root_url(&self) -> &Url {
        self.inner.root_url()
    }

    fn log_path(&self) -> &Path {
        self.inner.log_path()
    }

    fn transaction_url(&self, operation_id: Option<Uuid>) -> DeltaResult<Url> {
        self.inner.transaction_url(operation_id)
    }

    async fn is_delta_table_location(&self) -> DeltaResult<bool> {
        self.inner.is_delta_table_location().await
    }

    fn config(&self) -> &LogStoreConfig {
        self.inner.config()
    }

    fn object_store_url(&self) -> ObjectStoreUrl {
        self.inner.object_store_url()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{TableId, TableSpec};
    use arrow::datatypes::{DataType, Field, Schema};

    /// Tables weir creates and opens on local disk read their log through
    /// [`BoundedReads`], not deltalake's default log store.
    #[tokio::test(flavor = "multi_thread")]
    async fn local_tables_read_their_log_through_bounded_reads() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path()).unwrap();
        let spec = TableSpec {
            id: TableId::Dlq,
            name: "t".into(),
            schema: Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)])),
            partition_columns: vec![],
            event_id: None,
        };
        let created =
            crate::table::delta::open_or_create(url.clone(), &spec, std::time::Duration::ZERO)
                .await
                .unwrap();
        let opened = crate::table::delta::open("t", &url).await.unwrap();
        for table in [created, opened] {
            let store = table.log_store();
            let name = store.name();
            assert!(store.as_any().is::<BoundedReads>(), "{name}");
            assert!(table.snapshot().is_ok());
        }
    }
}
