//! Domain events: a service publishes contracts, not its tables.
//!
//! - [`contract`]: the Avro records of `schemas/`, compiled into field slots;
//! - [`mapping`]: a table's contracts compiled against its shape, and change → events;
//! - [`avro`]: the pure encoder, and the PostgreSQL → Avro type map;
//!
//! Publishing (registry, topics, the producer, the run loop) is [`crate::pipeline`]'s.
//!
//! # Subjects
//! Value subjects follow TopicRecordNameStrategy, `<topic>-<record full name>`, so all of an
//! aggregate's event types share one topic and stay ordered per key. Key subjects are
//! `<topic>-key`. Every record is Confluent-framed: magic byte 0, the schema id (4 bytes,
//! big-endian), then Avro binary.
//!
//! # Headers
//! Every record carries `event_type` (the record's full name, or `tombstone`), `op`
//! (insert, update, delete), `source`, `lsn` (commit LSN, `X/Y`), `seq` (position in the
//! transaction), `xid`, `commit_ts` (microseconds since the Unix epoch) and `event_id`:
//! `<source>/<lsn>/<seq>/<part>`, the same for the same change every time it is delivered,
//! so consumers can deduplicate (a truncate's copy on partition P adds `/p<P>`: each copy
//! is an event of its own).

pub mod avro;
pub mod contract;
pub mod mapping;

use std::collections::BTreeMap;
use std::sync::Arc;

use contract::Contract;
use mapping::{SchemaIds, TableSpec};

use crate::config::{CleanupPolicy, Config, SourceConfig};
use crate::registry::client::{Client, ClientError};

/// Why events could not be published. Permanent errors stop the source without confirming
/// anything more; the operator fixes the contract, the mapping or the table.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The configured mapping does not fit the tables or contracts (missing column, type that does
    /// not convert, …).
    #[error("source {source_name}: the event mapping does not fit:\n  - {}", .issues.join("\n  - "))]
    Mapping {
        /// Name of the source.
        source_name: String,
        /// Every problem found, each naming the table, column and contract.
        issues: Vec<String>,
    },
    /// The registry refused a contract as incompatible with the subject's previous versions.
    #[error("{path}: the registry refused the contract for subject {subject}:\n  - {}\n  hint: make the change compatible (add fields with defaults, keep types), or publish it as a new event type", .messages.join("\n  - "))]
    Refused {
        /// The subject registered under.
        subject: String,
        /// Contract file, as the configuration names it.
        path: String,
        /// The registry's reasons.
        messages: Vec<String>,
    },
    /// Registering or looking up a contract failed; transient when the registry call is.
    /// `error` is shown in the message, so it is not also the error's `source` (which would
    /// print it twice in a chain).
    #[error("{path} (subject {subject}): {error}")]
    Registry {
        /// The subject registered under.
        subject: String,
        /// Contract file, as the configuration names it.
        path: String,
        /// What the registry client reported.
        error: ClientError,
    },
    /// A change's values do not fit its contract (e.g. a NULL for a non-nullable field).
    #[error("source {source_name}, transaction {xid} at {lsn}: {message}; nothing after it is published or confirmed")]
    Encode {
        /// Name of the source.
        source_name: String,
        /// Transaction id of the change.
        xid: u32,
        /// Commit LSN of the transaction.
        lsn: crate::lsn::Lsn,
        /// What does not fit, naming the table, column and contract.
        message: String,
    },
    /// The source failed while events were being mapped.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
}

impl EventsError {
    /// Whether retrying may help: registry calls that may pass, and transient source errors.
    pub fn is_transient(&self) -> bool {
        match self {
            EventsError::Registry { error, .. } => error.is_transient(),
            EventsError::Source(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// A contract's subject on `topic`.
pub fn value_subject(topic: &str, contract: &Contract) -> String {
    format!("{topic}-{}", contract.full_name)
}

/// The key subject of `topic`: `<topic>-key`.
pub fn key_subject(topic: &str) -> String {
    format!("{topic}-key")
}

/// Loads every contract of `source`'s tables.
pub fn specs(config: &Config, source: &SourceConfig) -> Result<Vec<Arc<TableSpec>>, EventsError> {
    let mut loaded: BTreeMap<std::path::PathBuf, Arc<Contract>> = BTreeMap::new();
    let mut issues = Vec::new();
    let mut load = |path: &std::path::Path| -> Option<Arc<Contract>> {
        if let Some(c) = loaded.get(path) {
            return Some(c.clone());
        }
        match Contract::load(path, &config.resolve(path)) {
            Ok(c) => {
                let c = Arc::new(c);
                loaded.insert(path.to_path_buf(), c.clone());
                Some(c)
            }
            Err(e) => {
                issues.push(e);
                None
            }
        }
    };
    let mut specs = Vec::new();
    let mut unfit = Vec::new();
    for t in &source.tables {
        let (schema, name) = t.qualified_name();
        let key = load(&t.key);
        let insert = t.insert.as_deref().and_then(&mut load);
        let update = t.update.as_deref().and_then(&mut load);
        let delete = t.delete.as_deref().and_then(&mut load);
        let snapshot = t
            .snapshot
            .as_deref()
            .or(t.insert.as_deref())
            .and_then(&mut load);
        let truncate = t.truncate.as_deref().and_then(&mut load);
        if let Some(Err(e)) = truncate.as_ref().map(|c| c.check_truncate()) {
            unfit.push(e);
        }
        if let Some(key) = key {
            specs.push(Arc::new(TableSpec {
                table: crate::source::catalog::TableName {
                    schema: schema.to_string(),
                    name: name.to_string(),
                },
                topic: t.topic.clone(),
                key,
                insert,
                update,
                delete,
                snapshot,
                truncate,
                columns: t.columns.clone(),
                compacted: config.kafka.topic_settings(&t.topic).cleanup_policy
                    != CleanupPolicy::Delete,
                skip_truncate: t.skip_truncate,
            }));
        }
    }
    issues.extend(unfit);
    if issues.is_empty() {
        Ok(specs)
    } else {
        Err(EventsError::Mapping {
            source_name: source.name.clone(),
            issues,
        })
    }
}

/// Every `(subject, contract)` of `specs`, key subjects included, without repeats.
pub fn subjects(specs: &[Arc<TableSpec>]) -> Vec<(String, Arc<Contract>)> {
    let mut out: Vec<(String, Arc<Contract>)> = Vec::new();
    for spec in specs {
        let mut push = |subject: String, c: &Arc<Contract>| {
            if !out.iter().any(|(s, _)| *s == subject) {
                out.push((subject, c.clone()));
            }
        };
        push(key_subject(&spec.topic), &spec.key);
        for c in spec.contracts().skip(1) {
            push(value_subject(&spec.topic, c), c);
        }
        if spec.truncate.is_some() {
            let key = Arc::new(Contract::truncate_key());
            push(value_subject(&spec.topic, &key), &key);
        }
    }
    out
}

/// Registers every contract of `specs`, setting `level` on subjects walcast creates. A
/// contract the registry refuses stops everything before anything is published.
pub async fn register(
    client: &Client,
    specs: &[Arc<TableSpec>],
    level: crate::config::Compatibility,
) -> Result<Vec<SchemaIds>, EventsError> {
    let mut ids_by_subject = BTreeMap::new();
    for (subject, contract) in subjects(specs) {
        let located = |error: ClientError| EventsError::Registry {
            subject: subject.clone(),
            path: contract.path.display().to_string(),
            error,
        };
        if !client.exists(&subject).await.map_err(located)? {
            client
                .set_config(Some(&subject), level)
                .await
                .map_err(located)?;
        }
        let id = match client.register(&subject, &contract.text).await {
            Ok(id) => id,
            Err(e) if e.code() == Some(409) || e.code() == Some(42201) => {
                let verdict = client.check(&subject, &contract.text).await.ok();
                let messages = verdict
                    .filter(|v| !v.messages.is_empty())
                    .map(|v| v.messages)
                    .unwrap_or_else(|| vec![e.to_string()]);
                return Err(EventsError::Refused {
                    subject,
                    path: contract.path.display().to_string(),
                    messages,
                });
            }
            Err(e) => return Err(located(e)),
        };
        ids_by_subject.insert(subject, id);
    }
    Ok(specs
        .iter()
        .map(|spec| {
            let id = |c: &Option<Arc<Contract>>| {
                c.as_ref()
                    .map_or(0, |c| ids_by_subject[&value_subject(&spec.topic, c)])
            };
            let truncate_key = match spec.truncate {
                Some(_) => ids_by_subject[&value_subject(&spec.topic, &Contract::truncate_key())],
                None => 0,
            };
            SchemaIds {
                key: ids_by_subject[&key_subject(&spec.topic)],
                insert: id(&spec.insert),
                update: id(&spec.update),
                delete: id(&spec.delete),
                snapshot: id(&spec.snapshot),
                truncate: id(&spec.truncate),
                truncate_key,
            }
        })
        .collect())
}
