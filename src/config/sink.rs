//! `[[sink]]` tables: keys shared by every sink, plus the keys of its `type`.
//!
//! serde's internally tagged enums buffer their input and lose both the key path and
//! `deny_unknown_fields`' list of accepted keys, so sinks are parsed in two passes: the common
//! keys into [`SinkCommon`], then the remaining keys into the variant's struct. Each pass runs
//! under `serde_path_to_error`, prefixed with `sink[i]`.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::{from_serde, ConfigIssue};

/// One sink: what it consumes, how it treats poison messages, and where it writes.
#[derive(Debug)]
pub struct SinkConfig {
    pub common: SinkCommon,
    pub kind: SinkKind,
}

impl SinkConfig {
    pub fn name(&self) -> &str {
        &self.common.name
    }
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            SinkKind::Postgres(_) => "postgres",
            SinkKind::Mysql(_) => "mysql",
            SinkKind::Redis(_) => "redis",
        }
    }
}

/// Keys every sink takes, whatever its type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkCommon {
    pub name: String,
    /// Topics consumed.
    pub topics: Vec<String>,
    /// Consumer group; default `walcast.<name>`.
    pub group: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    /// Dead-letter topic for `on_error = "dead_letter"`; default `<name>.dlq`.
    pub dead_letter_topic: Option<String>,
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    #[serde(default = "default_batch_max_wait_ms")]
    pub batch_max_wait_ms: u64,
    /// Connections a batch is applied over, its keys split among them by hash.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
}

const COMMON_KEYS: &[&str] = &[
    "name",
    "topics",
    "group",
    "on_error",
    "dead_letter_topic",
    "batch_max_records",
    "batch_max_wait_ms",
    "parallelism",
];

fn default_batch_max_records() -> usize {
    1000
}
fn default_parallelism() -> usize {
    2
}
fn default_batch_max_wait_ms() -> u64 {
    100
}

impl SinkCommon {
    pub fn group_id(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("walcast.{}", self.name))
    }
    pub fn dead_letter_topic_name(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.name))
    }
}

/// Poison-message policy: never drop silently.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop, naming topic, partition and offset.
    #[default]
    Stop,
    /// Send to the dead-letter topic with the error in headers, and go on.
    DeadLetter,
}

/// The store a sink writes to.
#[derive(Debug)]
pub enum SinkKind {
    Postgres(PostgresSink),
    Mysql(MysqlSink),
    Redis(RedisSink),
}

impl SinkKind {
    /// The store's connection URL with secrets resolved.
    pub fn resolved_url(&self) -> &str {
        match self {
            SinkKind::Postgres(s) => &s.table.resolved_url,
            SinkKind::Mysql(s) => &s.table.resolved_url,
            SinkKind::Redis(s) => &s.resolved_url,
        }
    }
}

/// Keys of the table-shaped sinks (PostgreSQL and MySQL/MariaDB).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSinkOptions {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub password_env: Option<String>,
    /// Target table, optionally schema-qualified.
    pub table: String,
    /// Event fields forming the replica's primary key.
    pub key: Vec<String>,
    /// Replica column = event field, where the names differ.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Event fields to keep; default all.
    pub fields: Option<Vec<String>>,
    /// Create the table when it is missing.
    #[serde(default)]
    pub auto_create: bool,
    /// Add new nullable columns when a contract gains a field.
    #[serde(default)]
    pub auto_add_columns: bool,
    #[serde(skip)]
    pub resolved_url: String,
}

/// `type = "postgres"`.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct PostgresSink {
    pub table: TableSinkOptions,
}

/// `type = "mysql"` (MySQL and MariaDB).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct MysqlSink {
    pub table: TableSinkOptions,
}

/// `type = "redis"`: one hash per key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSink {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub password_env: Option<String>,
    /// Key template with `{field}` placeholders, e.g. `user:{user_id}`.
    pub key_template: String,
    /// Event fields stored in the hash; default all.
    pub fields: Option<Vec<String>>,
    /// Expiry of each key; 0 keeps keys forever.
    #[serde(default)]
    pub ttl_secs: u64,
    /// How long a deleted key's tombstone version is kept.
    #[serde(default = "default_tombstone_ttl_secs")]
    pub tombstone_ttl_secs: u64,
    #[serde(skip)]
    pub resolved_url: String,
}

fn default_tombstone_ttl_secs() -> u64 {
    86_400
}

/// Parses every `[[sink]]` table, collecting one issue per bad sink.
pub(super) fn parse_all(raw: Vec<toml::Value>) -> Result<Vec<SinkConfig>, Vec<ConfigIssue>> {
    let mut sinks = Vec::new();
    let mut issues = Vec::new();
    for (i, value) in raw.into_iter().enumerate() {
        match parse_one(&format!("sink[{i}]"), value) {
            Ok(sink) => sinks.push(sink),
            Err(issue) => issues.push(issue),
        }
    }
    if issues.is_empty() {
        Ok(sinks)
    } else {
        Err(issues)
    }
}

fn parse_one(prefix: &str, value: toml::Value) -> Result<SinkConfig, ConfigIssue> {
    let toml::Value::Table(mut table) = value else {
        return Err(ConfigIssue::new(
            prefix,
            format!("found {}, expected a table", value.type_str()),
        ));
    };
    let kind = match table.remove("type") {
        None => {
            return Err(ConfigIssue::new(
                format!("{prefix}.type"),
                "required key is missing; expected one of: postgres, mysql, redis",
            ))
        }
        Some(toml::Value::String(s)) => s,
        Some(other) => {
            return Err(ConfigIssue::new(
                format!("{prefix}.type"),
                format!(
                    "found {}, expected one of: postgres, mysql, redis",
                    other.type_str()
                ),
            ))
        }
    };
    let (common_keys, own): (toml::Table, toml::Table) = table
        .into_iter()
        .partition(|(k, _)| COMMON_KEYS.contains(&k.as_str()));
    let kind = match kind.as_str() {
        "postgres" => SinkKind::Postgres(typed(prefix, own)?),
        "mysql" => SinkKind::Mysql(typed(prefix, own)?),
        "redis" => SinkKind::Redis(typed(prefix, own)?),
        other => {
            return Err(ConfigIssue::new(
                format!("{prefix}.type"),
                format!("found \"{other}\", expected one of: postgres, mysql, redis"),
            ))
        }
    };
    let common: SinkCommon = typed(prefix, common_keys)?;
    Ok(SinkConfig { common, kind })
}

fn typed<T: DeserializeOwned>(prefix: &str, table: toml::Table) -> Result<T, ConfigIssue> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            prefix.to_string()
        } else {
            format!("{prefix}.{inner}")
        };
        let mut issue = from_serde(&path, e.inner().message(), None);
        // An unknown key in the type's own keys may still be a common key's typo; say both.
        if issue.message.starts_with("unknown key; expected one of: ") {
            issue.message = format!("{}, {}", issue.message, COMMON_KEYS.join(", "));
        }
        issue
    })
}
