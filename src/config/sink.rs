//! `[[sink]]` tables: keys shared by every sink, plus the keys of its `type`.
//!
//! serde's internally tagged enums buffer their input and lose both the key path and
//! `deny_unknown_fields`' list of accepted keys, so sinks are parsed in two passes: the common
//! keys into [`SinkCommon`], then the remaining keys into the variant's struct. Each pass runs
//! under `serde_path_to_error`, prefixed with `sink[i]`.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use connectors::Connector;

use super::error::{from_serde, ConfigIssue};

/// One sink: what it consumes, how it treats poison messages, and where it writes.
#[derive(Debug)]
pub struct SinkConfig {
    /// The keys every sink takes.
    pub common: SinkCommon,
    /// The store and its own keys.
    pub kind: SinkKind,
    /// The store's connection URL with secrets resolved (by validation).
    pub resolved_url: String,
}

impl SinkConfig {
    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.common.name
    }
    /// The sink's `type`.
    pub fn type_name(&self) -> &'static str {
        self.kind.visit(TypeName)
    }
}

/// Keys every sink takes, whatever its type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkCommon {
    /// The sink's name: in logs, metrics and the default group.
    pub name: String,
    /// Topics consumed.
    pub topics: Vec<String>,
    /// Consumer group; default `walcast.<name>`.
    pub group: Option<String>,
    #[serde(default)]
    /// What a record that cannot be applied does: stop the sink, or go to the dead-letter topic.
    pub on_error: OnError,
    /// Dead-letter topic for `on_error = "dead_letter"`; default `<name>.dlq`.
    pub dead_letter_topic: Option<String>,
    #[serde(default = "default_batch_max_records")]
    /// Most changes applied per batch; default 1000.
    pub batch_max_records: usize,
    #[serde(default = "default_batch_max_wait_ms")]
    /// Longest wait for a batch to fill; default 100 ms.
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
    /// The consumer group: `group`, or `walcast.<name>`.
    pub fn group_id(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("walcast.{}", self.name))
    }
    /// The dead-letter topic: `dead_letter_topic`, or `<name>.dlq`.
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

/// Declares the stores: the [`SinkKind`] enum (one variant per connector, holding the
/// connector's own configuration), the `type` names, and the dispatch from a sink's
/// configuration to its connector type. Adding a store is one line here.
macro_rules! stores {
    ($($variant:ident => $connector:ty),+ $(,)?) => {
        /// The store a sink writes to, with the store's own keys.
        #[derive(Debug)]
        pub enum SinkKind {
            $(
                #[doc = concat!("`type = \"", stringify!($variant), "\"`, see [`", stringify!($connector), "`].")]
                $variant(<$connector as Connector>::Config)
            ),+
        }

        /// Every sink `type`, in the order they are listed to users.
        pub const SINK_TYPES: &[&str] = &[$(<$connector as Connector>::TYPE),+];

        impl SinkKind {
            /// The store's keys of a `[[sink]]` table of type `type_name`, or `None` when
            /// no store has that type.
            fn parse(prefix: &str, type_name: &str, own: toml::Table) -> Option<Result<Self, ConfigIssue>> {
                $(
                    if type_name == <$connector as Connector>::TYPE {
                        return Some(typed(prefix, own).map(SinkKind::$variant));
                    }
                )+
                None
            }

            /// Calls `visitor` with this sink's connector type and its configuration.
            pub fn visit<V: StoreVisitor>(&self, visitor: V) -> V::Output {
                match self {
                    $(SinkKind::$variant(config) => visitor.visit::<$connector>(config)),+
                }
            }

            /// Calls `visitor` with this sink's connector type and its configuration, which
            /// it may change (validation resolves file paths).
            pub fn visit_mut<V: StoreVisitorMut>(&mut self, visitor: V) -> V::Output {
                match self {
                    $(SinkKind::$variant(config) => visitor.visit::<$connector>(config)),+
                }
            }
        }
    };
}

stores! {
    Postgres => connectors::postgres::PostgresSink,
    Mysql => connectors::mysql::MysqlSink,
    Redis => connectors::redis::RedisSink,
}

/// Something done with a sink's connector, whichever store it is (see [`SinkKind::visit`]).
pub trait StoreVisitor {
    /// What the visit returns.
    type Output;
    /// Does it for connector `C`, configured by `config`.
    fn visit<C: Connector>(self, config: &C::Config) -> Self::Output;
}

/// Something done with a sink's connector that may change its configuration.
pub trait StoreVisitorMut {
    /// What the visit returns.
    type Output;
    /// Does it for connector `C`, configured by `config`.
    fn visit<C: Connector>(self, config: &mut C::Config) -> Self::Output;
}

/// The `type` of a sink.
struct TypeName;

impl StoreVisitor for TypeName {
    type Output = &'static str;
    fn visit<C: Connector>(self, _: &C::Config) -> &'static str {
        C::TYPE
    }
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
    let types = SINK_TYPES.join(", ");
    let kind = match table.remove("type") {
        None => {
            return Err(ConfigIssue::new(
                format!("{prefix}.type"),
                format!("required key is missing; expected one of: {types}"),
            ))
        }
        Some(toml::Value::String(s)) => s,
        Some(other) => {
            return Err(ConfigIssue::new(
                format!("{prefix}.type"),
                format!("found {}, expected one of: {types}", other.type_str()),
            ))
        }
    };
    let (common_keys, own): (toml::Table, toml::Table) = table
        .into_iter()
        .partition(|(k, _)| COMMON_KEYS.contains(&k.as_str()));
    let kind = SinkKind::parse(prefix, &kind, own).unwrap_or_else(|| {
        Err(ConfigIssue::new(
            format!("{prefix}.type"),
            format!("found \"{kind}\", expected one of: {types}"),
        ))
    })?;
    let common: SinkCommon = typed(prefix, common_keys)?;
    Ok(SinkConfig {
        common,
        kind,
        resolved_url: String::new(),
    })
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
