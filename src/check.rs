//! `walcast check --connect`: reach every configured server once, report one line each.
//!
//! Probes run concurrently, each under the same deadline, so one unreachable host does not
//! hide the others. A source probe also checks what logical replication needs from the
//! server (`wal_level`, the REPLICATION attribute), because that is the first thing an
//! operator gets wrong and the cheapest to report before anything starts. It names the
//! server's version (walcast supports the majors of [`SUPPORTED_MAJORS`]), whether it is a
//! standby, and with `slot_failover` what slot synchronisation still needs on each server
//! of the URL ([`crate::source::slot_sync`]).

use std::time::Duration;

use tokio::task::JoinSet;

use crate::config::{Config, StoreVisitor};
use crate::redact;
use crate::source::catalog::Catalog;
use crate::source::slot::{self, ServerRole};
use crate::source::{slot_sync, SourceError, SourceSettings};

/// The result of reaching one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Reached; what the server said about itself.
    Ok(String),
    /// Deliberately not probed, and why.
    Skipped(String),
    /// Not reached or not usable, and what to do about it.
    Failed(String),
}

/// One configured server and what probing it found.
#[derive(Debug, Clone)]
pub struct Probe {
    /// What the configuration calls it, e.g. `source users`.
    pub target: String,
    /// Where it is, with any password redacted.
    pub address: String,
    /// What the probe found.
    pub outcome: Outcome,
}

impl Probe {
    fn status(&self) -> (&'static str, &str) {
        match &self.outcome {
            Outcome::Ok(d) => ("OK", d),
            Outcome::Skipped(d) => ("SKIP", d),
            Outcome::Failed(d) => ("FAIL", d),
        }
    }
}

/// One aligned line per probe: target, address, OK/SKIP/FAIL, detail.
pub fn render(probes: &[Probe]) -> String {
    let target_width = probes.iter().map(|p| p.target.len()).max().unwrap_or(0);
    let address_width = probes.iter().map(|p| p.address.len()).max().unwrap_or(0);
    let mut out = String::new();
    for probe in probes {
        let (status, detail) = probe.status();
        out.push_str(&format!(
            "{:<target_width$}  {:<address_width$}  {status:<4} {detail}\n",
            probe.target, probe.address
        ));
    }
    out
}

/// Probes every source database, the brokers, the registry and every sink store.
/// The result is in configuration order.
pub async fn probe_all(config: &Config, timeout: Duration) -> Vec<Probe> {
    type Job = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;
    let mut jobs: Vec<(String, String, Job)> = Vec::new();
    for source in &config.sources {
        jobs.push((
            format!("source {}", source.name),
            redact::url(&source.resolved_url),
            Box::pin(probe_source(SourceSettings::from_config(source))),
        ));
    }
    jobs.push((
        "kafka".into(),
        config.kafka.brokers.clone(),
        Box::pin(probe_kafka(config.kafka.clone(), timeout)),
    ));
    jobs.push((
        "registry".into(),
        config.registry.url.clone(),
        Box::pin(probe_registry(
            crate::registry::client::Client::new(&config.registry),
            config.registry.embedded,
        )),
    ));
    for sink in &config.sinks {
        let target = format!("sink {} ({})", sink.name(), sink.type_name());
        let address = redact::url(&sink.resolved_url);
        let job = sink.kind.visit(ProbeStore {
            url: sink.resolved_url.clone(),
        });
        jobs.push((target, address, job));
    }

    let mut set = JoinSet::new();
    let mut probes = Vec::with_capacity(jobs.len());
    for (i, (target, address, job)) in jobs.into_iter().enumerate() {
        probes.push(Probe {
            target,
            address,
            outcome: Outcome::Failed("did not finish".into()),
        });
        set.spawn(async move {
            let outcome = match tokio::time::timeout(timeout, job).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Failed(format!("no answer within {} ms", timeout.as_millis())),
            };
            (i, outcome)
        });
    }
    while let Some(joined) = set.join_next().await {
        if let Ok((i, outcome)) = joined {
            probes[i].outcome = outcome;
        }
    }
    probes
}

/// A sink store's probe, whichever connector it is.
struct ProbeStore {
    url: String,
}

impl StoreVisitor for ProbeStore {
    type Output = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

    fn visit<C: connectors::Connector>(self, config: &C::Config) -> Self::Output {
        let config = config.clone();
        Box::pin(async move {
            match C::probe(&config, &self.url).await {
                Ok(version) => Outcome::Ok(version),
                Err(e) => Outcome::Failed(one_line(e)),
            }
        })
    }
}

/// Connects as the source will (same TLS settings) and runs the same server checks, so
/// `check --connect` and `run` agree on what is wrong and how to fix it.
async fn probe_source(settings: SourceSettings) -> Outcome {
    let one_line =
        |e: SourceError| Outcome::Failed(e.to_string().replace("\n  hint: ", "; hint: "));
    let mut catalog = match Catalog::connect(&settings.url, &settings.name, &settings.tls).await {
        Ok(c) => c,
        Err(e) => return one_line(e),
    };
    if let Err(e) = catalog.check_server().await {
        return one_line(e);
    }
    // The same read-only table checks the source runs before it creates anything.
    if let Err(e) = catalog.check_tables(&settings.tables).await {
        return one_line(e);
    }
    if let Err(e) = catalog.check_nested_partitions(&settings.tables).await {
        return one_line(e);
    }
    match catalog.unsupported_columns(&settings.tables).await {
        Ok(found) => {
            if let Some((table, column, ty)) = found.into_iter().next() {
                return Outcome::Failed(format!(
                    "column {table}.{column} has type {ty}, which walcast does not support; leave it out of the mapping or change its type"
                ));
            }
        }
        Err(e) => return one_line(e),
    }
    // An existing publication that would drop changes (read-only: nothing is altered).
    if let Err(e) = catalog
        .check_partition_root(&settings.publication, &settings.tables)
        .await
    {
        return one_line(e);
    }
    if let Err(e) = catalog
        .check_publication_contents(&settings.publication, &settings.tables, None)
        .await
    {
        return one_line(e);
    }
    let version: String = match catalog
        .client()
        .query_one("SELECT current_setting('server_version')", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(e) => return Outcome::Failed(walcast_text::describe(&e)),
    };
    let role = match ServerRole::read(&catalog).await {
        Ok(role) => role,
        Err(e) => return one_line(e),
    };
    if role.major < SUPPORTED_MAJORS.0 {
        return Outcome::Failed(format!(
            "PostgreSQL {version}: walcast supports PostgreSQL {} to {}; hint: upgrade the server",
            SUPPORTED_MAJORS.0, SUPPORTED_MAJORS.1
        ));
    }
    // What `run` refuses on this server (failover slots before 17, a standby before 16…).
    if let Err(e) = slot::check_server(
        &settings.name,
        &settings.slot,
        &role,
        settings.slot_wishes(),
    ) {
        return one_line(e);
    }
    let mut detail = format!("PostgreSQL {version}, wal_level=logical");
    if role.major > SUPPORTED_MAJORS.1 {
        detail.push_str(&format!(
            " (newer than PostgreSQL {}, the last major walcast is tested on)",
            SUPPORTED_MAJORS.1
        ));
    }
    if role.standby {
        detail.push_str(", a standby: decoding there");
    }
    if settings.slot_failover {
        let found = slot_sync::check(&settings).await;
        if !found.problems.is_empty() {
            return Outcome::Failed(format!(
                "slot_failover = true, but slot synchronisation lacks: {}",
                found.problems.join("; ")
            ));
        }
        detail.push_str(", failover slot");
        for note in found.notes {
            detail.push_str("; ");
            detail.push_str(&note);
        }
    }
    Outcome::Ok(detail)
}

/// The PostgreSQL majors walcast supports and is tested on (the stack runs each).
pub const SUPPORTED_MAJORS: (u32, u32) = (15, 18);

/// An error's text on one line: hints follow a `; `.
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().replace("\n  hint: ", "; hint: ")
}

/// The same start-up check every part makes: TLS and SASL failures come back named, with
/// the key that fixes them.
async fn probe_kafka(kafka: crate::config::KafkaConfig, timeout: Duration) -> Outcome {
    // Answer before the caller's deadline, so librdkafka's own reason is what is shown.
    match crate::kafka::security::connect_async(&kafka, timeout.mul_f32(0.8)).await {
        Ok(cluster) => Outcome::Ok(format!(
            "{} broker(s), {} topic(s)",
            cluster.brokers, cluster.topics
        )),
        // The brokers are the line's address already.
        Err(e) => Outcome::Failed(without_address(one_line(e))),
    }
}

/// `kafka host:port: problem` → `problem`.
fn without_address(text: String) -> String {
    text.split_once(": ")
        .map(|(_, rest)| rest.to_string())
        .unwrap_or(text)
}

async fn probe_registry(client: crate::registry::client::Client, embedded: bool) -> Outcome {
    use crate::registry::client::ClientError;
    match client.probe().await {
        Ok(_) => Outcome::Ok("Confluent-compatible registry".into()),
        Err(ClientError::Unreachable { .. }) if embedded => Outcome::Skipped(
            "not running; registry.embedded = true, so `walcast run` serves it".into(),
        ),
        Err(ClientError::Unreachable { url, reason }) => {
            // What a TLS server does to a plain-HTTP request: drop the connection.
            let dropped = reason.contains("reset by peer")
                || reason.contains("closed before message completed");
            if url.starts_with("http://") && dropped {
                Outcome::Failed(format!("{reason}; hint: if the registry serves HTTPS on this port, use an https:// registry.url"))
            } else {
                Outcome::Failed(reason)
            }
        }
        Err(ClientError::Api {
            status, message, ..
        }) => Outcome::Failed(format!("GET /subjects answered {status}: {message}")),
        Err(e @ (ClientError::Tls { .. } | ClientError::Unauthorized { .. })) => {
            // The URL is the line's address already.
            Outcome::Failed(without_address(one_line(e)))
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}
