//! `walcast check --connect`: reach every configured server once, report one line each.
//!
//! Probes run concurrently, each under the same deadline, so one unreachable host does not
//! hide the others. A source probe also checks what logical replication needs from the
//! server (`wal_level`, the REPLICATION attribute), because that is the first thing an
//! operator gets wrong and the cheapest to report before anything starts.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::task::JoinSet;

use crate::config::{Config, RegistryConfig, StoreVisitor};
use crate::redact;
use crate::source::catalog::Catalog;
use crate::source::{SourceError, SourceSettings};

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
    let cc = crate::kafka::client_config(&config.kafka);
    jobs.push((
        "kafka".into(),
        config.kafka.brokers.clone(),
        Box::pin(probe_kafka(cc, timeout)),
    ));
    jobs.push((
        "registry".into(),
        config.registry.url.clone(),
        Box::pin(probe_registry(registry_view(&config.registry))),
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

    fn visit<C: connectors::Connector>(self, _: &C::Config) -> Self::Output {
        Box::pin(async move {
            match C::probe(&self.url).await {
                Ok(version) => Outcome::Ok(version),
                Err(e) => Outcome::Failed(e.to_string()),
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
    match catalog
        .client()
        .query_one("SELECT current_setting('server_version')", &[])
        .await
    {
        Ok(row) => Outcome::Ok(format!(
            "PostgreSQL {}, wal_level=logical",
            row.get::<_, String>(0)
        )),
        Err(e) => Outcome::Failed(walcast_text::describe(&e)),
    }
}

async fn probe_kafka(cc: rdkafka::ClientConfig, timeout: Duration) -> Outcome {
    let result = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = cc.create()?;
        // Answer before the caller's deadline, so librdkafka's own reason is what is shown.
        consumer.fetch_metadata(None, timeout.mul_f32(0.8))
    })
    .await;
    match result {
        Ok(Ok(md)) => Outcome::Ok(format!(
            "{} broker(s), {} topic(s)",
            md.brokers().len(),
            md.topics().len()
        )),
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::Failed(format!("probe panicked: {e}")),
    }
}

struct RegistryView {
    url: String,
    embedded: bool,
    credentials: Option<(String, String)>,
}

fn registry_view(r: &RegistryConfig) -> RegistryView {
    RegistryView {
        url: r.url.trim_end_matches('/').to_string(),
        embedded: r.embedded,
        credentials: r.credentials.clone(),
    }
}

async fn probe_registry(r: RegistryView) -> Outcome {
    use base64::Engine as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let mut request = hyper::Request::get(format!("{}/subjects", r.url))
        .header("accept", "application/vnd.schemaregistry.v1+json");
    if let Some((user, password)) = &r.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request = request.header("authorization", format!("Basic {token}"));
    }
    let request = match request.body(Empty::new()) {
        Ok(req) => req,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(_) if r.embedded => {
            return Outcome::Skipped(
                "not running; registry.embedded = true, so `walcast run` serves it".into(),
            )
        }
        Err(e) => return Outcome::Failed(walcast_text::describe(&e)),
    };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if status.is_success() && body.first() == Some(&b'[') {
        Outcome::Ok("Confluent-compatible registry".into())
    } else {
        Outcome::Failed(format!(
            "GET /subjects answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    }
}
