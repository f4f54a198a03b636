//! Semantic checks that serde cannot express: uniqueness, exclusive keys, secrets present in
//! the environment, files that exist, names PostgreSQL and Kafka accept.
//!
//! Each check pushes an issue and goes on, so one run reports every problem in the file.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

mod services;

use super::error::ConfigIssue;
use super::sink::StoreVisitorMut;
use super::Config;
use connectors::table::check_table_name;

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(super) fn validate(config: &mut Config, base: &Path, env: Env<'_>) -> Vec<ConfigIssue> {
    let mut v = Validator {
        issues: Vec::new(),
        env,
    };
    v.kafka(config, base);
    v.registry(config, base);
    v.sources(config, base);
    v.sinks(config, base);
    v.issues
}

struct Validator<'a> {
    issues: Vec<ConfigIssue>,
    env: Env<'a>,
}

impl Validator<'_> {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue::new(key, message));
    }

    /// The value of the environment variable named at `key`, or an issue.
    fn secret(&mut self, key: &str, var: &str, holds: &str) -> Option<String> {
        if var.is_empty() {
            self.push(
                key,
                "found an empty string, expected the name of an environment variable",
            );
            return None;
        }
        match (self.env)(var) {
            Some(value) => Some(value),
            None => {
                self.push(
                    key,
                    format!("environment variable {var} is not set; expected it to hold {holds} (export {var}=…)"),
                );
                None
            }
        }
    }

    /// Resolves `url` / `url_env` (exactly one) and an optional `password_env`.
    fn connection_url(
        &mut self,
        prefix: &str,
        url: &Option<String>,
        url_env: &Option<String>,
        password_env: &Option<String>,
        schemes: &[&str],
    ) -> String {
        let url = match (url, url_env) {
            (Some(url), None) => Some(url.clone()),
            (None, Some(var)) => {
                self.secret(&format!("{prefix}.url_env"), var, "the connection URL")
            }
            (Some(_), Some(_)) => {
                self.push(
                    format!("{prefix}.url"),
                    "found both url and url_env, expected exactly one of them",
                );
                None
            }
            (None, None) => {
                self.push(
                    format!("{prefix}.url"),
                    "required key is missing; expected url or url_env",
                );
                None
            }
        };
        let Some(mut url) = url else {
            return String::new();
        };
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        if !schemes.contains(&scheme) {
            self.push(
                format!("{prefix}.url"),
                format!(
                    "found a URL with scheme \"{scheme}\", expected one of: {}",
                    schemes
                        .iter()
                        .map(|s| format!("{s}://"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return String::new();
        }
        if let Some(var) = password_env {
            if let Some(password) =
                self.secret(&format!("{prefix}.password_env"), var, "the password")
            {
                url = with_password(&url, &password);
            }
        }
        url
    }

    fn sources(&mut self, config: &mut Config, base: &Path) {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut slots: HashMap<(String, String), usize> = HashMap::new();
        for (i, source) in config.sources.iter_mut().enumerate() {
            let prefix = format!("source[{i}]");
            self.unique_name(&mut names, &source.name, i, "source");
            source.resolved_url = self.connection_url(
                &prefix,
                &source.url,
                &source.url_env,
                &source.password_env,
                &["postgres", "postgresql"],
            );
            if !source.resolved_url.is_empty() {
                if let Some(why) = unsupported_session_attrs(&source.resolved_url) {
                    self.push(format!("{prefix}.url"), why);
                } else if let Err(e) = tokio_postgres::Config::from_str(&source.resolved_url) {
                    self.push(
                        format!("{prefix}.url"),
                        format!("not a valid PostgreSQL URL ({e})"),
                    );
                }
            }
            let slot = source.slot_name();
            if let Err(why) = check_pg_slot_name(&slot) {
                let key = if source.slot.is_some() {
                    "slot"
                } else {
                    "name"
                };
                self.push(format!("{prefix}.{key}"), why);
            }
            if let Some(other) = slots.insert((source.resolved_url.clone(), slot.clone()), i) {
                self.push(format!("{prefix}.slot"), format!("found \"{slot}\", which source[{other}] already uses on the same database; expected a slot per source"));
            }
            if let Some(publication) = &source.publication {
                if let Err(why) = check_pg_identifier(publication) {
                    self.push(format!("{prefix}.publication"), why);
                }
            }
            if let Some(ca) = &source.tls_ca_file {
                let resolved = base.join(ca);
                if !resolved.is_file() {
                    self.push(
                        format!("{prefix}.tls_ca_file"),
                        format!(
                            "file {} does not exist (looked for {}); expected a PEM certificate",
                            ca.display(),
                            resolved.display()
                        ),
                    );
                } else if source.tls_mode != Some(super::TlsMode::VerifyFull) {
                    self.push(format!("{prefix}.tls_ca_file"), "is only used with tls_mode = \"verify-full\"; set that too, or remove tls_ca_file");
                } else {
                    source.tls_ca_file = Some(resolved);
                }
            }
            if source.status_interval_ms == 0 {
                self.push(
                    format!("{prefix}.status_interval_ms"),
                    "found 0, expected an interval of at least 1 ms",
                );
            }
            if source.reconnect_max_backoff_ms == 0 {
                self.push(
                    format!("{prefix}.reconnect_max_backoff_ms"),
                    "found 0, expected a backoff cap of at least 1 ms",
                );
            }
            if let Some(t) = &source.heartbeat_table {
                if let Err(why) = check_table_name(t) {
                    self.push(format!("{prefix}.heartbeat_table"), why);
                }
            }
            if !(1..=1_000_000).contains(&source.snapshot_chunk_rows) {
                self.push(
                    format!("{prefix}.snapshot_chunk_rows"),
                    format!(
                        "found {}, expected 1 to 1000000 rows per chunk",
                        source.snapshot_chunk_rows
                    ),
                );
            }
            if !(1..=64).contains(&source.snapshot_parallel_tables) {
                self.push(
                    format!("{prefix}.snapshot_parallel_tables"),
                    format!(
                        "found {}, expected 1 to 64 tables at once",
                        source.snapshot_parallel_tables
                    ),
                );
            }
            if let Some(t) = &source.signal_table {
                if let Err(why) = check_table_name(t) {
                    self.push(format!("{prefix}.signal_table"), why);
                }
            }
            if source.tables.is_empty() {
                self.push(
                    format!("{prefix}.table"),
                    "no [[source.table]] given; expected at least one table to replicate",
                );
            }
            let mut tables: HashMap<(String, String), usize> = HashMap::new();
            for (j, table) in source.tables.iter().enumerate() {
                let prefix = format!("{prefix}.table[{j}]");
                if let Err(why) = check_table_name(&table.table) {
                    self.push(format!("{prefix}.table"), why);
                }
                let (schema, name) = table.qualified_name();
                if let Some(other) = tables.insert((schema.into(), name.into()), j) {
                    self.push(format!("{prefix}.table"), format!("found \"{}\", which table[{other}] of this source already maps; expected each table once", table.table));
                }
                if let Err(why) = check_topic_name(&table.topic) {
                    self.push(format!("{prefix}.topic"), why);
                }
                if table.insert.is_none() && table.update.is_none() && table.delete.is_none() {
                    self.push(
                        format!("{prefix}.insert"),
                        "no event contract given; expected at least one of insert, update, delete",
                    );
                }
                let files = [
                    ("key", Some(&table.key)),
                    ("insert", table.insert.as_ref()),
                    ("update", table.update.as_ref()),
                    ("delete", table.delete.as_ref()),
                    ("snapshot", table.snapshot.as_ref()),
                    ("truncate", table.truncate.as_ref()),
                ];
                if table.truncate.is_some() && table.skip_truncate {
                    self.push(
                        format!("{prefix}.skip_truncate"),
                        "is true, and a truncate contract is given too: publish truncates (keep truncate) or skip them (keep skip_truncate = true), not both",
                    );
                }
                for (key, file) in files {
                    let Some(file) = file else { continue };
                    let resolved = base.join(file);
                    if !resolved.is_file() {
                        self.push(
                            format!("{prefix}.{key}"),
                            format!("file {} does not exist (looked for {}); expected the path of an Avro schema (.avsc), relative to the configuration file's directory", file.display(), resolved.display()),
                        );
                    }
                }
                for (field, column) in &table.columns {
                    if column.is_empty() {
                        self.push(
                            format!("{prefix}.columns.{field}"),
                            "found an empty string, expected a column name",
                        );
                    }
                }
            }
        }
    }

    fn sinks(&mut self, config: &mut Config, base: &Path) {
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, sink) in config.sinks.iter_mut().enumerate() {
            let prefix = format!("sink[{i}]");
            self.unique_name(&mut names, &sink.common.name, i, "sink");
            let common = &sink.common;
            if common.topics.is_empty() {
                self.push(
                    format!("{prefix}.topics"),
                    "found an empty array, expected at least one topic",
                );
            }
            for (j, topic) in common.topics.iter().enumerate() {
                if let Err(why) = check_topic_name(topic) {
                    self.push(format!("{prefix}.topics[{j}]"), why);
                }
            }
            if let Some(t) = &common.dead_letter_topic {
                if let Err(why) = check_topic_name(t) {
                    self.push(format!("{prefix}.dead_letter_topic"), why);
                }
            }
            if common.batch_max_records == 0 {
                self.push(
                    format!("{prefix}.batch_max_records"),
                    "found 0, expected at least 1",
                );
            }
            if !(1..=64).contains(&common.parallelism) {
                self.push(
                    format!("{prefix}.parallelism"),
                    format!(
                        "found {}, expected 1 to 64 (connections to the store)",
                        common.parallelism
                    ),
                );
            }
            sink.resolved_url = sink.kind.visit_mut(CheckStore {
                validator: self,
                prefix: &prefix,
                base,
            });
        }
    }

    fn unique_name(&mut self, seen: &mut HashMap<String, usize>, name: &str, i: usize, what: &str) {
        let key = format!("{what}[{i}].name");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.push(
                key.clone(),
                format!(
                    "found \"{name}\", expected a non-empty name of letters, digits, '-' and '_'"
                ),
            );
        }
        if let Some(first) = seen.insert(name.to_string(), i) {
            self.push(key, format!("found \"{name}\", which {what}[{first}] already uses; expected a name unique among {what}s"));
        }
    }
}

fn is_host_port(s: &str) -> bool {
    matches!(s.rsplit_once(':'), Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Kafka's own rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub(crate) fn check_topic_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("found \"{name}\", expected a Kafka topic name: 1 to 249 of letters, digits, '.', '_' and '-'"))
    }
}

/// librdkafka properties holding secrets: only ever through `[kafka.properties_env]`.
const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "ssl_key.pem",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
];

/// PostgreSQL's slot rule: 1 to 63 of lower-case letters, digits and underscores.
fn check_pg_slot_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        Ok(())
    } else {
        Err(format!("slot name \"{name}\" is not valid; expected 1 to 63 of lower-case letters, digits and '_'"))
    }
}

fn check_pg_identifier(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.len() <= 63 && !name.contains('"') && !name.contains('\0') {
        Ok(())
    } else {
        Err(format!(
            "found \"{name}\", expected an identifier of 1 to 63 characters without '\"'"
        ))
    }
}

/// A `target_session_attrs` the source's connections cannot honour. libpq's `primary`,
/// `standby` and `prefer-standby` ask whether the server is in recovery; tokio-postgres and
/// the replication connection check `transaction_read_only` (read-write, read-only, any).
/// `load_balance_hosts=random` is refused too: the catalog connection would shuffle the
/// hosts and the replication connection would not, so the two could reach different servers.
fn unsupported_session_attrs(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    if param("load_balance_hosts") == Some("random") {
        return Some("found load_balance_hosts=random, expected the hosts tried in the order written (remove it): both of the source's connections must reach the same server".into());
    }
    let value = param("target_session_attrs")?;
    let hint = match value {
        "any" | "read-write" | "read-only" => return None,
        "primary" => " (read-write finds the primary)",
        "standby" | "prefer-standby" => " (read-only finds a standby)",
        _ => "",
    };
    Some(format!(
        "found target_session_attrs={value}, expected one of: read-write, read-only, any{hint}"
    ))
}

/// `scheme://user:password@host…` with `password` set, percent-encoding what URLs reserve.
fn with_password(url: &str, password: &str) -> String {
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (u, h),
        None => ("", authority),
    };
    let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or(userinfo);
    format!("{scheme}://{user}:{encoded}@{host}{tail}")
}

/// Resolves a sink's URL and collects what its connector refuses in its settings.
struct CheckStore<'v, 'e, 'p> {
    validator: &'v mut Validator<'e>,
    prefix: &'p str,
    /// The configuration file's directory, which relative file paths start from.
    base: &'p Path,
}

impl StoreVisitorMut for CheckStore<'_, '_, '_> {
    type Output = String;

    fn visit<C: connectors::Connector>(self, config: &mut C::Config) -> String {
        let endpoint = C::endpoint(config);
        let owned = |v: Option<&str>| v.map(str::to_string);
        let url = self.validator.connection_url(
            self.prefix,
            &owned(endpoint.url),
            &owned(endpoint.url_env),
            &owned(endpoint.password_env),
            C::SCHEMES,
        );
        for issue in C::check(config, self.base) {
            self.validator
                .push(format!("{}.{}", self.prefix, issue.key), issue.message);
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_replaces_and_is_encoded() {
        assert_eq!(
            with_password("postgres://walcast@h:5432/db", "p@ss/w"),
            "postgres://walcast:p%40ss%2Fw@h:5432/db"
        );
        assert_eq!(
            with_password("postgres://u:old@h/db?x=1", "new"),
            "postgres://u:new@h/db?x=1"
        );
    }

    #[test]
    fn topic_names_follow_kafka() {
        assert!(check_topic_name("users.user").is_ok());
        assert!(check_topic_name("users user").is_err());
        assert!(check_topic_name("..").is_err());
    }
}
