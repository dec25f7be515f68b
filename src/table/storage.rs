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

use std::sync::{Arc, Once};

use deltalake::logstore::object_store::aws::{
    AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut,
};
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError};
use url::Url;

/// URL schemes a storage root may use.
pub const SCHEMES: [&str; 2] = ["file", "s3"];

/// Makes `s3://` locations openable by deltalake. Idempotent.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let scheme = Url::parse("s3://").expect("a valid URL");
        object_store_factories().insert(scheme.clone(), Arc::new(S3Stores));
        logstore_factories().insert(scheme, Arc::new(DefaultLogStores));
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

struct DefaultLogStores;

impl LogStoreFactory for DefaultLogStores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}
