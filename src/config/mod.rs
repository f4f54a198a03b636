//! Typed configuration: one TOML file describes the whole deployment.
//!
//! [`load`] parses and validates, and nothing connects to anything until it has returned
//! `Ok`. Sources own their tables and each table's mapping onto event contracts in
//! `schemas/`; sinks consume topics into read replicas. Naming follows vector's spec: unit
//! suffixes (`_ms`, `_bytes`, `_secs`), a `type` tag for variants, secrets only through
//! `*_env` keys that name an environment variable.
//!
//! Every key is documented in `config.example.toml`, which a test loads.

mod error;
pub mod pem;
mod sink;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use error::{ConfigError, ConfigIssue};
pub use sink::{
    OnError, SinkCommon, SinkConfig, SinkKind, StoreVisitor, StoreVisitorMut, SINK_TYPES,
};

/// The whole deployment: admin endpoint, Kafka, registry, sources and sinks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    /// `[admin]`: the admin endpoint.
    pub admin: AdminConfig,
    /// `[kafka]`: brokers, delivery and topics.
    pub kafka: KafkaConfig,
    /// `[registry]`: the schema registry.
    pub registry: RegistryConfig,
    #[serde(default, rename = "source")]
    /// `[[source]]`: the databases whose changes are published.
    pub sources: Vec<SourceConfig>,
    /// Parsed in a second pass: a sink's keys depend on its `type`.
    #[serde(default, rename = "sink")]
    raw_sinks: Vec<toml::Value>,
    #[serde(skip)]
    /// `[[sink]]`: the replicas kept from topics.
    pub sinks: Vec<SinkConfig>,
    /// The file this configuration came from.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[admin]`: operations: the HTTP endpoint serving `/healthz`, `/readyz` and `/metrics`,
/// and the format of the logs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    /// Address of `/healthz`, `/readyz` and `/metrics`; default `127.0.0.1:9187`.
    pub listen: SocketAddr,
    /// How `walcast run` and `walcast registry` write their logs (to stderr).
    #[serde(default)]
    pub log_format: LogFormat,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            log_format: LogFormat::default(),
        }
    }
}

/// `admin.log_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers: `timestamp`, `level`, `target`, `fields`
    /// (with `message` and the event's fields) and, inside a span, `span` and `spans`.
    Json,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}

/// How a connection to PostgreSQL uses TLS (`tls_mode`), as libpq's `sslmode` does; the
/// sinks' `tls_mode` is the same.
pub use connectors::tls::TlsMode;

/// `[kafka]`: brokers, delivery semantics and topic settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap list.
    pub brokers: String,
    #[serde(default = "default_client_id")]
    /// `client.id` of every Kafka client; also the prefix of transactional ids and progress topics.
    pub client_id: String,
    /// Kafka transactions that hold whole source transactions, with the source's position
    /// committed in them (see `kafka::producer` and `kafka::progress`).
    #[serde(default)]
    pub exactly_once: bool,
    /// With `exactly_once`: how long one Kafka transaction may gather consecutive source
    /// transactions before it commits. It commits sooner when the source is idle.
    #[serde(default = "default_transaction_interval_ms")]
    pub transaction_interval_ms: u64,
    /// librdkafka properties passed through as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
    /// librdkafka properties whose value is read from the named environment variable.
    #[serde(default)]
    pub properties_env: BTreeMap<String, String>,
    #[serde(default)]
    /// How walcast creates topics that do not exist yet.
    pub topic_defaults: TopicSettings,
    /// Per-topic overrides of `topic_defaults`, keyed by topic name.
    #[serde(default)]
    pub topic: BTreeMap<String, TopicOverride>,
    /// Resolved `properties_env` values.
    #[serde(skip)]
    pub resolved_properties_env: BTreeMap<String, Secret>,
}

fn default_transaction_interval_ms() -> u64 {
    100
}

fn default_client_id() -> String {
    "walcast".into()
}

/// A librdkafka property value as TOML allows it to be written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PropertyValue {
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean, written `true` or `false`.
    Bool(bool),
}

impl std::fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PropertyValue::String(s) => f.write_str(s),
            PropertyValue::Integer(i) => write!(f, "{i}"),
            PropertyValue::Float(x) => write!(f, "{x}"),
            PropertyValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// How walcast creates a topic that does not exist yet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    #[serde(default = "default_partitions")]
    /// Partitions of a new topic; default 3.
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    /// Replication factor of a new topic; default 1 (use 3 in production).
    pub replication_factor: i32,
    #[serde(default)]
    /// `cleanup.policy` of a new topic; default delete.
    pub cleanup_policy: CleanupPolicy,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            cleanup_policy: CleanupPolicy::default(),
        }
    }
}

fn default_partitions() -> i32 {
    3
}
fn default_replication_factor() -> i32 {
    1
}

/// `[kafka.topic."name"]`: any subset of [`TopicSettings`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicOverride {
    /// Overrides `partitions`.
    pub partitions: Option<i32>,
    /// Overrides `replication_factor`.
    pub replication_factor: Option<i32>,
    /// Overrides `cleanup_policy`.
    pub cleanup_policy: Option<CleanupPolicy>,
}

/// Kafka's `cleanup.policy`. With `compact`, a delete event is followed by a tombstone.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    #[default]
    /// Records expire with retention (`delete`).
    Delete,
    /// Only each key's latest record is kept (`compact`); deletes are followed by a tombstone.
    Compact,
    #[serde(rename = "compact,delete")]
    /// Both (`compact,delete`).
    CompactDelete,
}

impl KafkaConfig {
    /// The settings a topic is created with: its override on top of the defaults.
    pub fn topic_settings(&self, topic: &str) -> TopicSettings {
        let mut settings = self.topic_defaults.clone();
        if let Some(o) = self.topic.get(topic) {
            settings.partitions = o.partitions.unwrap_or(settings.partitions);
            settings.replication_factor =
                o.replication_factor.unwrap_or(settings.replication_factor);
            settings.cleanup_policy = o.cleanup_policy.unwrap_or(settings.cleanup_policy);
        }
        settings
    }
}

/// `[registry]`: any Confluent-compatible schema registry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry's base URL, `http://` or `https://`.
    pub url: String,
    /// Compatibility level set on subjects walcast creates.
    #[serde(default)]
    pub compatibility: Compatibility,
    /// Environment variable holding the basic-auth user name.
    pub username_env: Option<String>,
    /// Environment variable holding the basic-auth password.
    pub password_env: Option<String>,
    /// Serve walcast's own registry at `url`'s address from the daemon.
    #[serde(default)]
    pub embedded: bool,
    #[serde(default = "default_registry_timeout_ms")]
    /// Timeout of one registry request.
    pub timeout_ms: u64,
    /// Kafka topic the embedded registry stores schemas in (Confluent's `kafkastore.topic`).
    #[serde(default = "default_registry_topic")]
    pub topic: String,
    /// CA (PEM) that signed an `https://` registry's certificate; replaces the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain) for registries that require one (mutual TLS).
    pub tls_client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (unencrypted PKCS#8 PEM).
    pub tls_client_key_file: Option<PathBuf>,
    /// The certificate (PEM chain) walcast's own registry serves HTTPS with.
    pub server_tls_cert_file: Option<PathBuf>,
    /// That certificate's private key (unencrypted PKCS#8 PEM).
    pub server_tls_key_file: Option<PathBuf>,
    /// Resolved basic-auth credentials.
    #[serde(skip)]
    pub credentials: Option<(String, Secret)>,
}

/// A secret resolved from the environment. Its `Debug` never shows it, so no log line, error
/// or `{:?}` of a configuration can leak it; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn default_registry_topic() -> String {
    "_schemas".into()
}

fn default_registry_timeout_ms() -> u64 {
    10_000
}

/// Confluent compatibility levels.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    #[default]
    /// A new schema can read data written with the last one (Confluent's default).
    Backward,
    /// …with every earlier one.
    BackwardTransitive,
    /// The last schema can read data written with the new one.
    Forward,
    /// …every earlier one can.
    ForwardTransitive,
    /// Both backward and forward with the last one.
    Full,
    /// Both, with every earlier one.
    FullTransitive,
    /// No check.
    None,
}

impl Compatibility {
    /// Every level, in the order the registry lists them.
    pub const ALL: [Compatibility; 7] = [
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
        Self::None,
    ];

    /// The name Confluent's API uses, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    /// Parses a level name, in any case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(name))
    }
}

/// `[[source]]`: one service database whose logical replication stream walcast tails.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The source's name: in logs, metrics, slot and publication names, and event headers.
    pub name: String,
    /// Connection URL; exactly one of `url` and `url_env`.
    pub url: Option<String>,
    /// Environment variable holding the connection URL, instead of `url`.
    pub url_env: Option<String>,
    /// Overrides the password in the URL.
    pub password_env: Option<String>,
    /// Replication slot; default `walcast_<name>` with `-` as `_`.
    pub slot: Option<String>,
    /// Publication; default the slot's name.
    pub publication: Option<String>,
    /// Create the slot as a failover slot (PostgreSQL 17+), which standbys with
    /// `sync_replication_slots = on` keep a copy of; an existing slot is made one.
    #[serde(default)]
    pub slot_failover: bool,
    #[serde(default)]
    /// Whether a new slot starts with a snapshot of the tables.
    pub snapshot: SnapshotMode,
    /// Rows per snapshot chunk (keyset pagination by primary key).
    #[serde(default = "default_snapshot_chunk_rows")]
    pub snapshot_chunk_rows: u64,
    /// Tables snapshotted at once.
    #[serde(default = "default_snapshot_parallel_tables")]
    pub snapshot_parallel_tables: u32,
    /// Upper bound of snapshot rows read per second, over all tables; 0: no bound.
    #[serde(default)]
    pub snapshot_max_rows_per_sec: u64,
    /// Table through which `walcast snapshot` asks the running daemon to re-read a table;
    /// without it, on-demand snapshots are off.
    pub signal_table: Option<String>,
    /// Interval of the heartbeat that keeps an idle database's slot advancing; 0 turns it off.
    #[serde(default)]
    pub heartbeat_interval_ms: u64,
    /// Table the heartbeat upserts into; without it, `pg_logical_emit_message` is used.
    pub heartbeat_table: Option<String>,
    /// How often the confirmed position is reported to PostgreSQL.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// Streamed (in-progress) transactions are buffered in memory up to this size, then spilled.
    #[serde(default = "default_spill_threshold_bytes")]
    pub spill_threshold_bytes: u64,
    /// Where streamed transactions spill; default the system temporary directory.
    pub spill_dir: Option<PathBuf>,
    /// Cap of the reconnect backoff.
    #[serde(default = "default_reconnect_max_backoff_ms")]
    pub reconnect_max_backoff_ms: u64,
    /// disable | prefer | require | verify-full; default the URL's sslmode, else prefer.
    pub tls_mode: Option<TlsMode>,
    /// Certificate authority (PEM) for verify-full; default the system roots.
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default, rename = "table")]
    /// `[[source.table]]`: the tables published and their contracts.
    pub tables: Vec<TableConfig>,
    /// The connection URL with its secret resolved.
    #[serde(skip)]
    pub resolved_url: String,
}

fn default_snapshot_chunk_rows() -> u64 {
    10_000
}
fn default_snapshot_parallel_tables() -> u32 {
    2
}
fn default_status_interval_ms() -> u64 {
    10_000
}
fn default_spill_threshold_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_reconnect_max_backoff_ms() -> u64 {
    30_000
}

impl SourceConfig {
    /// The replication slot: `slot`, or `walcast_<name>`.
    pub fn slot_name(&self) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("walcast_{}", self.name.replace('-', "_")))
    }
    /// The publication: `publication`, or `walcast_<name>`.
    pub fn publication_name(&self) -> String {
        self.publication.clone().unwrap_or_else(|| self.slot_name())
    }
}

/// Whether a new slot starts with a consistent snapshot of the configured tables.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    #[default]
    /// A new slot starts with a consistent snapshot of the configured tables.
    Initial,
    /// Changes after the slot's creation only.
    Never,
}

/// `[[source.table]]`: one table, its topic and the contracts its changes become.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table`; `public` when no schema is given.
    pub table: String,
    /// The topic the table's events are published on.
    pub topic: String,
    /// Key record contract (`.avsc`), relative to the configuration file's directory.
    pub key: PathBuf,
    /// Contract of inserts.
    pub insert: Option<PathBuf>,
    /// Contract of updates.
    pub update: Option<PathBuf>,
    /// Contract of deletes.
    pub delete: Option<PathBuf>,
    /// Contract of snapshot reads; default the insert contract.
    pub snapshot: Option<PathBuf>,
    /// Event field = column, where the names differ.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Contract of truncate events: an Avro record without fields. A TRUNCATE of the table
    /// publishes one such event on every partition of the topic, and sinks clear their
    /// replica of it.
    pub truncate: Option<PathBuf>,
    /// A TRUNCATE of the table publishes nothing (replicas keep the rows). With neither
    /// this nor `truncate`, a TRUNCATE stops the source: it is never ignored silently.
    #[serde(default)]
    pub skip_truncate: bool,
}

impl TableConfig {
    /// `(schema, table)`.
    pub fn qualified_name(&self) -> (&str, &str) {
        self.table
            .split_once('.')
            .unwrap_or(("public", &self.table))
    }
}

/// Loads, parses and validates a configuration file. Env-var secrets are resolved here.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, &|name| std::env::var(name).ok())
}

/// Parses and validates `text` as if read from `path`; `env` looks up secrets.
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let invalid = |issues: Vec<ConfigIssue>| ConfigError::Invalid {
        path: path.to_path_buf(),
        issues,
    };
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        invalid(vec![ConfigIssue {
            key: String::new(),
            line: line_of(e.span()),
            message: format!("not valid TOML: {}", e.message().trim()),
        }])
    })?;
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        // A missing key's span is its whole table, which would point at the wrong line.
        let line = if e.inner().message().starts_with("missing field") {
            None
        } else {
            line_of(e.inner().span())
        };
        invalid(vec![error::from_serde(
            &e.path().to_string(),
            e.inner().message(),
            line,
        )])
    })?;
    config.path = path.to_path_buf();
    config.sinks = sink::parse_all(std::mem::take(&mut config.raw_sinks)).map_err(invalid)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let issues = validate::validate(&mut config, base, env);
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(invalid(issues))
    }
}

impl Config {
    /// Directory that relative paths (schema files) are resolved against.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Resolves a path from the file against [`Config::base_dir`].
    pub fn resolve(&self, relative: &Path) -> PathBuf {
        self.base_dir().join(relative)
    }
}
