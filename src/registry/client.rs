//! A client of any Confluent-compatible registry (Confluent, Karapace, Redpanda, walcast's
//! own): register, lookup, get by id, compatibility checks, and config.
//!
//! Transient failures (unreachable, timeouts, 5xx, 429) are retried with capped exponential
//! backoff; anything else is the registry's definite answer and is returned as it is, with
//! Confluent's error code. Registered ids are cached per `(subject, schema)`, and schemas
//! per id, so the hot path never waits on HTTP.
//!
//! `https://` registries are reached through [`super::tls`]. A failed TLS handshake and a
//! refused login (401, 403) are definite: they come back at once, never retried, with the
//! key to fix, so a wrong CA or password stops a part instead of hammering the registry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use serde_json::{json, Value};

use super::tls;
use crate::config::{Compatibility, RegistryConfig, Secret};

const ATTEMPTS: u32 = 6;

/// Why a registry request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The registry did not answer (connection refused, timed out): transient.
    #[error("schema registry {url}: {reason}")]
    Unreachable {
        /// The registry's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The registry answered with a Confluent error.
    #[error("schema registry {url}: {message} (HTTP {status}, error code {code})")]
    Api {
        /// The registry's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Confluent's error code, e.g. 40401 (subject not found), 409 (incompatible).
        code: i64,
        /// The registry's message.
        message: String,
    },
    /// The answer is not what the Confluent API promises.
    #[error("schema registry {url}: unexpected answer: {detail}")]
    Protocol {
        /// The registry's URL.
        url: String,
        /// What was wrong with it.
        detail: String,
    },
    /// TLS failed (certificate not trusted, client certificate refused): permanent.
    #[error("schema registry {url}: {problem}\n  hint: {hint}")]
    Tls {
        /// The registry's URL.
        url: String,
        /// What failed.
        problem: String,
        /// The key to fix.
        hint: &'static str,
    },
    /// The registry refused the credentials (HTTP 401 or 403): permanent.
    #[error("schema registry {url}: {message} (HTTP {status})\n  hint: {hint}")]
    Unauthorized {
        /// The registry's URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// The registry's message.
        message: String,
        /// The keys to check.
        hint: &'static str,
    },
}

impl ClientError {
    /// Worth retrying: the registry may answer differently later.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            ClientError::Protocol { .. }
            | ClientError::Tls { .. }
            | ClientError::Unauthorized { .. } => false,
        }
    }

    /// Confluent's error code, when the registry gave one.
    pub fn code(&self) -> Option<i64> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            ClientError::Unauthorized { status, .. } => Some(i64::from(*status)),
            _ => None,
        }
    }
}

/// The result of a compatibility check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the registry accepts the schema under the subject's compatibility level.
    pub compatible: bool,
    /// What breaks, as the registry words it (verbose mode).
    pub messages: Vec<String>,
}

/// A registry client; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Client {
    base: String,
    host: String,
    /// The `Authorization` header: the password, base64-encoded, so a [`Secret`].
    auth: Option<Secret>,
    timeout: Duration,
    http: HttpClient<tls::Connector, Full<Bytes>>,
    /// Why the TLS settings could not be loaded (validation read them once already): every
    /// call fails with it.
    tls_setup: Option<String>,
    has_ca_file: bool,
    has_client_cert: bool,
    ids: Mutex<HashMap<(String, String), u32>>,
    schemas: Mutex<HashMap<u32, String>>,
}

impl Client {
    /// A client of the registry `config` names, with its TLS and credentials.
    pub fn new(config: &RegistryConfig) -> Client {
        let identity = config
            .tls_client_cert_file
            .as_deref()
            .zip(config.tls_client_key_file.as_deref());
        let (connector, tls_setup) =
            match tls::client_connector(config.tls_ca_file.as_deref(), identity) {
                Ok(c) => (c, None),
                Err(e) => (
                    native_tls::TlsConnector::new().expect("default TLS settings"),
                    Some(e),
                ),
            };
        let base = config.url.trim_end_matches('/').to_string();
        let host = base
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .unwrap_or_default();
        Client {
            base,
            host,
            auth: config
                .credentials
                .as_ref()
                .map(|(u, p)| Secret::new(super::server::basic_auth_header(u, p.expose()))),
            timeout: Duration::from_millis(config.timeout_ms),
            http: HttpClient::builder(hyper_util::rt::TokioExecutor::new())
                .build(tls::Connector::new(connector)),
            tls_setup,
            has_ca_file: config.tls_ca_file.is_some(),
            has_client_cert: identity.is_some(),
            ids: Mutex::default(),
            schemas: Mutex::default(),
        }
    }

    /// One `GET /subjects`, not retried: what `check --connect` asks.
    pub async fn probe(&self) -> Result<usize, ClientError> {
        let body = self.once("GET", "/subjects", None).await?;
        body.as_array()
            .map(Vec::len)
            .ok_or_else(|| self.protocol(format!("GET /subjects answered {body}, not a list")))
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Registers `schema` under `subject`; the id, from cache when known.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, ClientError> {
        let cache_key = (subject.to_string(), schema.to_string());
        if let Some(id) = self.ids.lock().expect("cache lock").get(&cache_key) {
            return Ok(*id);
        }
        let body = self
            .call(
                "POST",
                &format!("/subjects/{}/versions", segment(subject)),
                Some(json!({ "schema": schema })),
            )
            .await?;
        let id = self.id_of(&body)?;
        self.ids.lock().expect("cache lock").insert(cache_key, id);
        Ok(id)
    }

    /// The id and version of `schema` under `subject`, if registered there.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Option<(u32, u32)>, ClientError> {
        match self
            .call(
                "POST",
                &format!("/subjects/{}", segment(subject)),
                Some(json!({ "schema": schema })),
            )
            .await
        {
            Ok(body) => Ok(Some((
                self.id_of(&body)?,
                body["version"].as_u64().unwrap_or(0) as u32,
            ))),
            Err(e) if matches!(e.code(), Some(40401 | 40403)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `schema` is a version of `subject`, soft-deleted versions included (records
    /// written before a version was deleted are still the subject's).
    pub async fn is_version_of(&self, subject: &str, schema: &str) -> Result<bool, ClientError> {
        match self
            .call(
                "POST",
                &format!("/subjects/{}?deleted=true", segment(subject)),
                Some(json!({ "schema": schema })),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.code(), Some(40401 | 40403)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The schema text of `id`, from cache when known.
    pub async fn schema(&self, id: u32) -> Result<String, ClientError> {
        if let Some(s) = self.schemas.lock().expect("cache lock").get(&id) {
            return Ok(s.clone());
        }
        let body = self
            .call("GET", &format!("/schemas/ids/{id}"), None)
            .await?;
        let schema = body["schema"]
            .as_str()
            .ok_or_else(|| self.protocol(format!("schema {id} came without a schema: {body}")))?
            .to_string();
        self.schemas
            .lock()
            .expect("cache lock")
            .insert(id, schema.clone());
        Ok(schema)
    }

    /// The latest schema registered under `subject`; `None` when the subject does not exist.
    pub async fn latest(&self, subject: &str) -> Result<Option<String>, ClientError> {
        match self
            .call(
                "GET",
                &format!("/subjects/{}/versions/latest", segment(subject)),
                None,
            )
            .await
        {
            Ok(body) => Ok(body["schema"].as_str().map(str::to_string)),
            Err(e) if matches!(e.code(), Some(40401 | 40402)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Would registering `schema` under `subject` pass the subject's compatibility level?
    /// A subject that does not exist yet accepts anything.
    pub async fn check(&self, subject: &str, schema: &str) -> Result<Verdict, ClientError> {
        let path = format!(
            "/compatibility/subjects/{}/versions?verbose=true",
            segment(subject)
        );
        let body = match self
            .call("POST", &path, Some(json!({ "schema": schema })))
            .await
        {
            Ok(body) => body,
            Err(e) if e.code() == Some(40401) => {
                return Ok(Verdict {
                    compatible: true,
                    messages: vec![],
                })
            }
            Err(e) => return Err(e),
        };
        let compatible = body["is_compatible"]
            .as_bool()
            .ok_or_else(|| self.protocol(format!("no is_compatible in {body}")))?;
        let messages = body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Verdict {
            compatible,
            messages,
        })
    }

    /// The subject's own level (`None` when it has none), or the global one.
    pub async fn config(
        &self,
        subject: Option<&str>,
    ) -> Result<Option<Compatibility>, ClientError> {
        let path = match subject {
            Some(s) => format!("/config/{}", segment(s)),
            None => "/config".to_string(),
        };
        let body = match self.call("GET", &path, None).await {
            Ok(body) => body,
            Err(e) if matches!(e.code(), Some(40401 | 40408)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let name = body["compatibilityLevel"].as_str().unwrap_or_default();
        Compatibility::parse(name)
            .map(Some)
            .ok_or_else(|| self.protocol(format!("unknown compatibility level in {body}")))
    }

    /// Sets `subject`'s compatibility level (`PUT /config/{subject}`).
    pub async fn set_config(
        &self,
        subject: Option<&str>,
        level: Compatibility,
    ) -> Result<(), ClientError> {
        let path = match subject {
            Some(s) => format!("/config/{}", segment(s)),
            None => "/config".to_string(),
        };
        self.call(
            "PUT",
            &path,
            Some(json!({ "compatibility": level.as_str() })),
        )
        .await?;
        Ok(())
    }

    /// Every subject the registry holds (deleted ones left out).
    pub async fn subjects(&self) -> Result<Vec<String>, ClientError> {
        let body = self.call("GET", "/subjects", None).await?;
        let subjects = body
            .as_array()
            .ok_or_else(|| self.protocol(format!("subjects came as {body}, not a list")))?;
        Ok(subjects
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect())
    }

    /// Whether `subject` has any version.
    pub async fn exists(&self, subject: &str) -> Result<bool, ClientError> {
        match self
            .call(
                "GET",
                &format!("/subjects/{}/versions", segment(subject)),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(40401) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn id_of(&self, body: &Value) -> Result<u32, ClientError> {
        body["id"]
            .as_u64()
            .map(|id| id as u32)
            .ok_or_else(|| self.protocol(format!("no id in {body}")))
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            url: self.base.clone(),
            detail,
        }
    }

    /// One request, retried while the failure is transient.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 1;
        loop {
            match self.once(method, path, body.as_ref()).await {
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, "registry request failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn once(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        if let Some(problem) = &self.tls_setup {
            return Err(ClientError::Tls {
                url: self.base.clone(),
                problem: format!("loading the TLS settings: {problem}"),
                hint: "check registry.tls_ca_file, registry.tls_client_cert_file and registry.tls_client_key_file",
            });
        }
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(
                "accept",
                "application/vnd.schemaregistry.v1+json, application/json",
            )
            .header("content-type", "application/vnd.schemaregistry.v1+json");
        if let Some(auth) = &self.auth {
            request = request.header("authorization", auth.expose());
        }
        let request = request
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| self.protocol(e.to_string()))?;
        let response = tokio::time::timeout(self.timeout, async {
            let response = self.http.request(request).await.map_err(|e| {
                match tls::classify(&e, &self.host, self.has_ca_file, self.has_client_cert) {
                    Some(failure) => ClientError::Tls {
                        url: self.base.clone(),
                        problem: failure.problem,
                        hint: failure.hint,
                    },
                    None => unreachable(walcast_text::describe(&e)),
                }
            })?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        })
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))??;
        let (status, bytes) = response;
        if status == 401 || status == 403 {
            let hint = match (&self.auth, status) {
                (None, _) => "the registry requires credentials: set registry.username_env and registry.password_env to the names of the variables holding them",
                (Some(_), 401) => "the registry refused the user name and password: check the values of the variables registry.username_env and registry.password_env name",
                (Some(_), _) => "the registry knows the user but does not let it do this: grant it access to the subjects walcast registers",
            };
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| {
                    if status == 401 {
                        "Unauthorized".into()
                    } else {
                        "Forbidden".into()
                    }
                });
            return Err(ClientError::Unauthorized {
                url: self.base.clone(),
                status,
                message,
                hint,
            });
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|_| ClientError::Api {
            url: self.base.clone(),
            status,
            code: -1,
            message: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
        })?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(ClientError::Api {
            url: self.base.clone(),
            status,
            code: value["error_code"].as_i64().unwrap_or(i64::from(status)),
            message: value["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string(),
        })
    }
}

/// Percent-encodes a path segment (subjects may hold any character).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
