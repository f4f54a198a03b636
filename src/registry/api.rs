//! The Confluent Schema Registry REST API over the [`Store`], independent of HTTP plumbing:
//! a request comes in as method, path segments, query and body; a status and a JSON body go
//! out.
//!
//! Reads take the state lock briefly. Writes are serialised by the log lock: plan against
//! the current state, append the planned records to the log (awaiting the broker's
//! acknowledgement), then apply them. The state lock is never held across an `.await`, so a
//! slow broker delays writes, never reads.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{verbose_messages, ApiError};
use super::log::SchemaLog;
use super::record::Record;
use super::store::{self, Deleted, Registered, Store};
use crate::config::Compatibility;

/// A parsed request.
#[derive(Debug)]
pub struct Request<'a> {
    /// HTTP method, e.g. `GET`.
    pub method: &'a str,
    /// Percent-decoded path segments, without empty ones.
    pub path: Vec<String>,
    /// Query parameters, percent-decoded; a repeated one keeps its last value.
    pub query: HashMap<String, String>,
    /// The request body, JSON when present.
    pub body: &'a [u8],
}

impl Request<'_> {
    fn flag(&self, name: &str) -> bool {
        self.query
            .get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    fn deleted(&self) -> Deleted {
        if self.flag("deleted") {
            Deleted::Include
        } else {
            Deleted::Hide
        }
    }

    fn json<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(self.body).map_err(|e| {
            ApiError::bad_request(format!(
                "The request body is not valid JSON for this request: {e}"
            ))
        })
    }
}

/// The body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: Option<String>,
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

impl SchemaBody {
    /// The schema text, refusing what this registry does not store.
    fn avro(self) -> Result<String, ApiError> {
        if let Some(t) = self.schema_type.as_deref() {
            if !t.eq_ignore_ascii_case("AVRO") {
                return Err(ApiError::invalid_schema(format!(
                    "Invalid schema type {t}: walcast's registry stores AVRO schemas only"
                )));
            }
        }
        if !self.references.is_empty() {
            return Err(ApiError::invalid_schema(
                "Schema references are not supported by walcast's registry; inline the referenced types",
            ));
        }
        match self.schema {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(ApiError::invalid_schema("Empty schema")),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ConfigBody {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

/// The registry service: its state and its log.
#[derive(Debug)]
pub struct Api {
    store: Mutex<Store>,
    log: tokio::sync::Mutex<SchemaLog>,
}

impl Api {
    /// The API over `store` (already replayed from `log`), writing every change to `log` first.
    pub fn new(store: Store, log: SchemaLog) -> Self {
        Self {
            store: Mutex::new(store),
            log: tokio::sync::Mutex::new(log),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self
            .store
            .lock()
            .expect("the registry state lock is never poisoned"))
    }

    /// Plans a change, makes it durable in the log, then applies it.
    async fn write<T>(
        &self,
        plan: impl FnOnce(&Store) -> Result<(T, Vec<Record>), ApiError>,
    ) -> Result<T, ApiError> {
        let log = self.log.lock().await;
        let (out, records) = self.read(plan)?;
        if !records.is_empty() {
            log.append(&records).await?;
            let mut store = self
                .store
                .lock()
                .expect("the registry state lock is never poisoned");
            for r in &records {
                store.apply(r)?;
            }
        }
        Ok(out)
    }

    /// Serves one request.
    pub async fn handle(&self, req: &Request<'_>) -> Result<Value, ApiError> {
        let path: Vec<&str> = req.path.iter().map(String::as_str).collect();
        match (req.method, path.as_slice()) {
            ("GET", []) => Ok(json!({})),
            ("GET", ["schemas", "types"]) => Ok(json!(["AVRO"])),
            ("GET", ["subjects"]) => Ok(json!(self.read(|s| s.subjects(req.deleted())))),
            ("POST", ["subjects", subject]) => {
                let text = req.json::<SchemaBody>()?.avro()?;
                let found = self.read(|s| s.lookup(subject, &text, req.deleted()))?;
                Ok(registered_json(&found))
            }
            ("DELETE", ["subjects", subject]) => {
                let permanent = req.flag("permanent");
                let versions = self
                    .write(|s| s.plan_delete_subject(subject, permanent))
                    .await?;
                Ok(json!(versions))
            }
            ("GET", ["subjects", subject, "versions"]) => {
                Ok(json!(self.read(|s| s.versions(subject, req.deleted()))?))
            }
            ("POST", ["subjects", subject, "versions"]) => {
                let text = req.json::<SchemaBody>()?.avro()?;
                let id = self.write(|s| s.plan_register(subject, &text)).await?;
                Ok(json!({ "id": id }))
            }
            ("GET", ["subjects", subject, "versions", version]) => {
                let found = self.read(|s| s.version(subject, version, req.deleted()))?;
                Ok(registered_json(&found))
            }
            ("GET", ["subjects", subject, "versions", version, "schema"]) => {
                let found = self.read(|s| s.version(subject, version, req.deleted()))?;
                raw_schema(&found.schema)
            }
            ("DELETE", ["subjects", subject, "versions", version]) => {
                let permanent = req.flag("permanent");
                let deleted = self
                    .write(|s| s.plan_delete_version(subject, version, permanent))
                    .await?;
                Ok(json!(deleted))
            }
            ("GET", ["schemas", "ids", id, rest @ ..]) => self.by_id(req, id, rest),
            ("GET", ["config"]) => {
                Ok(json!({ "compatibilityLevel": self.read(|s| s.global_level()).as_str() }))
            }
            ("PUT", ["config"]) => self.put_config(req, None).await,
            ("GET", ["config", subject]) => {
                let level = match self.read(|s| s.subject_level(subject)) {
                    Some(level) => level,
                    None if req.flag("defaultToGlobal") => self.read(|s| s.global_level()),
                    None => return Err(ApiError::subject_level_not_configured(subject)),
                };
                Ok(json!({ "compatibilityLevel": level.as_str() }))
            }
            ("PUT", ["config", subject]) => self.put_config(req, Some(subject)).await,
            ("DELETE", ["config", subject]) => {
                let subject = subject.to_string();
                let previous = self
                    .write(|s| match s.subject_level(&subject) {
                        None => Err(ApiError::subject_level_not_configured(&subject)),
                        Some(level) => Ok((
                            level,
                            vec![Record::ConfigTombstone {
                                subject: Some(subject.clone()),
                            }],
                        )),
                    })
                    .await?;
                Ok(json!({ "compatibilityLevel": previous.as_str() }))
            }
            ("POST", ["compatibility", "subjects", subject, "versions", rest @ ..]) => {
                self.compatibility(req, subject, rest.first().copied())
            }
            ("GET", ["mode"] | ["mode", _]) => Ok(json!({ "mode": "READWRITE" })),
            (_, [] | ["schemas" | "subjects" | "config" | "compatibility" | "mode", ..]) => {
                if known_path(&path) {
                    Err(ApiError::method_not_allowed())
                } else {
                    Err(ApiError::not_found())
                }
            }
            _ => Err(ApiError::not_found()),
        }
    }

    fn by_id(&self, req: &Request<'_>, id: &str, rest: &[&str]) -> Result<Value, ApiError> {
        let id: u32 = id.parse().map_err(|_| ApiError::schema_not_found())?;
        match rest {
            [] => self.read(|s| Ok(json!({ "schema": s.schema_by_id(id)?.canonical }))),
            ["schema"] => {
                let text = self.read(|s| s.schema_by_id(id).map(|p| p.canonical.clone()))?;
                raw_schema(&text)
            }
            ["subjects"] => {
                let usages = self.read(|s| s.usages(id, req.deleted()))?;
                let mut subjects: Vec<String> = usages.into_iter().map(|(s, _)| s).collect();
                subjects.dedup();
                Ok(json!(subjects))
            }
            ["versions"] => {
                let usages = self.read(|s| s.usages(id, req.deleted()))?;
                Ok(Value::Array(
                    usages
                        .into_iter()
                        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
                        .collect(),
                ))
            }
            _ => Err(ApiError::not_found()),
        }
    }

    async fn put_config(
        &self,
        req: &Request<'_>,
        subject: Option<&str>,
    ) -> Result<Value, ApiError> {
        let body: ConfigBody = req.json()?;
        let name = body
            .compatibility
            .or(body.compatibility_level)
            .ok_or_else(|| ApiError::invalid_compatibility("(none given)"))?;
        let level =
            Compatibility::parse(&name).ok_or_else(|| ApiError::invalid_compatibility(&name))?;
        let subject = subject.map(str::to_string);
        self.write(|_| Ok(((), vec![Record::Config { subject, level }])))
            .await?;
        Ok(json!({ "compatibility": level.as_str() }))
    }

    /// `POST /compatibility/subjects/{s}/versions[/{v}]`: against one version, or against
    /// the versions the subject's level compares a new schema to.
    fn compatibility(
        &self,
        req: &Request<'_>,
        subject: &str,
        version: Option<&str>,
    ) -> Result<Value, ApiError> {
        let text = req.json::<SchemaBody>()?.avro()?;
        let candidate = store::parse(&text)?;
        let broken = self.read(|s| {
            let level = s.level(subject);
            let against = match version {
                None => None,
                Some(v) => Some(s.version(subject, v, Deleted::Hide)?.version),
            };
            Ok::<_, ApiError>((
                level,
                s.incompatibilities(subject, &candidate, level, against),
            ))
        })?;
        let (level, broken) = broken;
        let mut body = json!({ "is_compatible": broken.is_empty() });
        if req.flag("verbose") {
            body["messages"] = json!(verbose_messages(level, &broken));
        }
        Ok(body)
    }
}

fn registered_json(r: &Registered) -> Value {
    json!({ "subject": r.subject, "version": r.version, "id": r.id, "schema": r.schema })
}

/// The `/schema` endpoints answer with the schema itself, not a string holding it.
fn raw_schema(text: &str) -> Result<Value, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::store(format!("stored schema is not JSON: {e}")))
}

/// Whether some method serves `path`, to tell 405 from 404.
fn known_path(path: &[&str]) -> bool {
    matches!(
        path,
        [] | ["subjects"]
            | ["subjects", _]
            | ["subjects", _, "versions"]
            | ["subjects", _, "versions", _]
            | ["subjects", _, "versions", _, "schema"]
            | ["schemas", "ids", _, ..]
            | ["schemas", "types"]
            | ["config"]
            | ["config", _]
            | ["compatibility", "subjects", _, "versions", ..]
            | ["mode"]
            | ["mode", _]
    )
}
