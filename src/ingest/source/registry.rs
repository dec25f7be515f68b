//! A Confluent-compatible schema registry client: the writer schemas that
//! framed messages name, fetched once per ID and kept for the life of the
//! process (an ID's schema never changes in a registry).
//!
//! This is I/O at the source end: the pipeline resolves a micro-batch's IDs
//! here and hands the pure decode stage the schemas ([`WriterSchemas`]). A
//! registry that cannot be reached makes the batch wait, retrying with
//! backoff, rather than refuse messages that are fine: waiting loses
//! nothing, a DLQ row per message would bury the data.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tracing::warn;
use url::Url;

use crate::config::{Format, Registry, SubjectSchema, SubjectSchemas};
use crate::ingest::decode::Encoding;
use crate::ingest::decode::framed::{WriterSchema, WriterSchemas, schema_id};
use crate::metrics::JobMetrics;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry: {0}")]
    Config(String),
    #[error("schema registry {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("schema registry {url} refused to register under subject `{subject}`: {reason}")]
    Refused {
        url: String,
        subject: String,
        reason: String,
    },
}

/// The longest pause between two tries while the registry is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct SchemaRegistry {
    http: reqwest::Client,
    /// What the job reads: other schema types are refused.
    encoding: Encoding,
    base: Url,
    auth: Option<(String, String)>,
    known: Mutex<HashMap<u32, WriterSchema>>,
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

#[derive(Deserialize)]
struct SubjectVersion {
    id: u32,
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

/// Reads registry subjects for [`Job::load_with`](crate::config::Job::load_with),
/// which is synchronous: from a thread of a multi-threaded runtime (the CLI's),
/// blocking it while the registry answers.
pub struct Subjects;

impl SubjectSchemas for Subjects {
    fn latest(&self, registry: &Registry) -> Result<SubjectSchema, String> {
        let client = SchemaRegistry::new(registry, Encoding::Avro).map_err(|e| e.to_string())?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "no async runtime to ask the registry from".to_owned())?;
        tokio::task::block_in_place(|| handle.block_on(client.latest(&registry.subject)))
            .map_err(|e| e.to_string())
    }
}

impl SchemaRegistry {
    /// The client a job's source format needs, if it reads through a registry.
    pub fn for_format(format: &Format) -> Result<Option<Self>, RegistryError> {
        format
            .registry()
            .map(|registry| Self::new(registry, format.into()))
            .transpose()
    }

    pub fn new(registry: &Registry, encoding: Encoding) -> Result<Self, RegistryError> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(path) = &registry.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                RegistryError::Config(format!("cannot read ca_file {}: {e}", path.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                RegistryError::Config(format!("ca_file {} is not PEM: {e}", path.display()))
            })?;
            http = http.add_root_certificate(cert);
        }
        let http = http
            .build()
            .map_err(|e| RegistryError::Config(e.to_string()))?;
        let mut base = registry.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            http,
            encoding,
            base,
            auth: registry.credentials().map_err(RegistryError::Config)?,
            known: Mutex::default(),
        })
    }

    /// The writer schemas that framed `payloads` name. IDs not seen before
    /// are fetched; while the registry is unreachable this waits and
    /// retries (counted in `weir_registry_retries_total`, the reason on
    /// `/healthz`) until it answers or `give_up` says so.
    pub async fn resolve<'a>(
        &self,
        payloads: impl Iterator<Item = &'a [u8]>,
        metrics: &JobMetrics,
        give_up: &(dyn Fn() -> bool + Sync),
    ) -> Result<WriterSchemas, RegistryError> {
        let mut ids: Vec<u32> = payloads.filter_map(schema_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut schemas = WriterSchemas::default();
        for id in ids {
            let known = self.known.lock().unwrap().get(&id).cloned();
            let schema = match known {
                Some(schema) => schema,
                None => self.fetch_patiently(id, metrics, give_up).await?,
            };
            schemas.insert(id, schema);
        }
        Ok(schemas)
    }

    async fn fetch_patiently(
        &self,
        id: u32,
        metrics: &JobMetrics,
        give_up: &(dyn Fn() -> bool + Sync),
    ) -> Result<WriterSchema, RegistryError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.fetch(id).await {
                Ok(schema) => {
                    metrics.set_health(Ok(()));
                    self.known.lock().unwrap().insert(id, schema.clone());
                    return Ok(schema);
                }
                Err(e) if give_up() => return Err(e),
                Err(e) => {
                    metrics.registry_retries.inc();
                    metrics.set_health(Err(format!(
                        "waiting for schema ID {id}: {e} (retrying within {MAX_BACKOFF:?})"
                    )));
                    warn!(id, error = %e, "schema registry unreachable; the batch waits");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One try. A registry that answers that the ID does not exist, or
    /// that it is not Avro, gives a refusal (those messages go to the DLQ);
    /// anything else is unreachable and worth another try.
    async fn fetch(&self, id: u32) -> Result<WriterSchema, RegistryError> {
        let (url, status, body) = self.get(&format!("schemas/ids/{id}")).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(WriterSchema::Refused(
                format!("schema ID {id} is not in the registry").into(),
            ));
        }
        let found: SchemaById = self.answer(&url, status, &body)?;
        let found_type = found.schema_type.as_deref().unwrap_or("AVRO");
        let wanted = self.encoding.schema_type();
        Ok(match found_type == wanted {
            false => WriterSchema::Refused(
                format!("schema ID {id} is {found_type}, and the job reads {wanted}").into(),
            ),
            true => WriterSchema::compile(id, self.encoding, &found.schema),
        })
    }

    /// Registers `schema` (of the job's type) under `subject`; returns its ID (the
    /// existing one when the registry already has this schema there).
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let url = self.join(&format!("subjects/{subject}/versions"))?;
        let body =
            serde_json::json!({ "schema": schema, "schemaType": self.encoding.schema_type() });
        let response = self
            .authorized(self.http.post(url))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        let refused = |reason: String| RegistryError::Refused {
            url: self.base.to_string(),
            subject: subject.to_owned(),
            reason,
        };
        if !status.is_success() {
            return Err(refused(format!("{status}: {text}")));
        }
        let registered: Registered =
            serde_json::from_str(&text).map_err(|e| refused(format!("{e}: {text}")))?;
        Ok(registered.id)
    }

    /// The newest version of `subject`'s schema.
    pub async fn latest(&self, subject: &str) -> Result<SubjectSchema, RegistryError> {
        let (url, status, body) = self
            .get(&format!("subjects/{subject}/versions/latest"))
            .await?;
        let found: SubjectVersion = self.answer(&url, status, &body)?;
        Ok(SubjectSchema {
            id: found.id,
            schema_type: found.schema_type.unwrap_or_else(|| "AVRO".into()),
            schema: found.schema,
        })
    }

    /// GETs `path`; the URL asked, the status and the body.
    async fn get(
        &self,
        path: &str,
    ) -> Result<(Url, reqwest::StatusCode, bytes::Bytes), RegistryError> {
        let url = self.join(path)?;
        let response = self
            .authorized(self.http.get(url.clone()))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        Ok((url, status, body))
    }

    /// A successful answer's JSON body; anything else is the registry not
    /// (yet) serving, worth another try.
    fn answer<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
        status: reqwest::StatusCode,
        body: &[u8],
    ) -> Result<T, RegistryError> {
        if !status.is_success() {
            let text = String::from_utf8_lossy(body);
            return Err(self.unreachable(&format!("{status} for {url}: {text}")));
        }
        serde_json::from_slice(body)
            .map_err(|e| self.unreachable(&format!("unreadable answer for {url}: {e}")))
    }

    fn join(&self, path: &str) -> Result<Url, RegistryError> {
        self.base
            .join(path)
            .map_err(|e| RegistryError::Config(format!("{path}: {e}")))
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    fn unreachable(&self, reason: &dyn std::fmt::Display) -> RegistryError {
        RegistryError::Unreachable {
            url: self.base.to_string(),
            reason: reason.to_string(),
        }
    }
}
