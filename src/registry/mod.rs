//! walcast's embedded schema registry: the Confluent Schema Registry REST API, so any
//! Confluent client (Java, Python, Go, JS) works against it, and a team can later move to
//! Confluent, Karapace or Redpanda without changing anything else.
//!
//! - [`compat`]: Avro schema-resolution compatibility, every incompatibility with its path;
//! - [`store`]: the state (subjects, versions, ids, configs) and the rules of each operation;
//! - [`record`]: the `_schemas` topic's records, in Confluent's format;
//! - [`log`]: that topic as durable storage, and the single-writer rule;
//! - [`api`]: the REST endpoints over the store; [`server`]: HTTP plumbing and basic auth.
//!
//! # Guarantees
//! - **Ids are global and stable.** The same schema (compared in canonical form) registered
//!   under any subject gets the same id, and a restart rebuilds every id from the log.
//! - **A write is durable before it is answered.** Its records are acknowledged by the broker
//!   (acks=all) before the state changes and the client hears back.
//! - **Compatibility** is checked on every registration against the subject's level (or the
//!   global one, BACKWARD by default), following Avro's resolution rules.
//!
//! Runs standalone (`walcast registry --config FILE`) or inside the daemon
//! (`[registry] embedded = true`); both serve at the address of `registry.url`.

pub mod api;
pub mod client;
pub mod compat;
pub mod error;
pub mod log;
pub mod record;
pub mod server;
pub mod store;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use rdkafka::error::KafkaError;
use tokio::net::TcpListener;

pub use error::ApiError;

use crate::config::Config;

/// Why the registry could not start or keep serving. All are permanent: the operator has
/// to fix the address, the broker or the topic.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `registry.url` has no host and port to listen on.
    #[error("registry: registry.url {url} names no address to listen on: {reason}")]
    Address {
        /// The configured `registry.url`.
        url: String,
        /// What is missing or wrong in it.
        reason: String,
    },
    /// The listening socket could not be bound, e.g. the port is in use.
    #[error("registry: cannot listen on {address} (from registry.url): {source}; is another registry already running there?")]
    Bind {
        /// `host:port` bound.
        address: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// Creating, reading or writing the schema topic failed.
    #[error("registry: {what}: {source}")]
    Kafka {
        /// What was being done, naming the topic and brokers.
        what: String,
        /// The Kafka error.
        source: KafkaError,
    },
    /// Reaching the Kafka cluster failed (unreachable, or refused TLS or authentication).
    #[error("registry: {0}")]
    Cluster(crate::kafka::KafkaError),
    /// The schema topic could not be read to its end in time, or holds a record that is not
    /// a schema registry record or does not apply to the state before it.
    #[error("registry: replaying the schema log: {0}")]
    Replay(String),
    /// The server's certificate or key cannot be used.
    #[error("registry: {problem}\n  hint: {hint}")]
    Tls {
        /// What is wrong.
        problem: String,
        /// The key to fix.
        hint: String,
    },
}

/// The `host:port` the registry listens on, from `registry.url`.
pub fn listen_address(url: &str) -> Result<(String, u16), RegistryError> {
    let bad = |reason: &str| RegistryError::Address {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    Ok((
        host.trim_matches(|c| c == '[' || c == ']').to_string(),
        port,
    ))
}

/// Reads the schema log, binds `registry.url`'s address and serves until `shutdown`.
/// `ready` is called once the registry answers requests.
pub async fn run(
    config: &Config,
    ready: impl FnOnce(std::net::SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RegistryError> {
    let registry = &config.registry;
    let (host, port) = listen_address(&registry.url)?;
    let https = registry.url.starts_with("https://");
    let tls = match (&registry.server_tls_cert_file, &registry.server_tls_key_file) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key).map_err(|problem| {
            RegistryError::Tls {
                problem: format!("loading the server certificate: {problem}"),
                hint: "set registry.server_tls_cert_file to a PEM certificate chain and registry.server_tls_key_file to its unencrypted PKCS#8 key".into(),
            }
        })?),
        _ if https => {
            return Err(RegistryError::Tls {
                problem: format!("registry.url {} is https, but this registry has no certificate to serve it with", registry.url),
                hint: "set registry.server_tls_cert_file and registry.server_tls_key_file, or serve http://".into(),
            })
        }
        _ => None,
    };
    let (log, records) = log::SchemaLog::open(&config.kafka, &registry.topic).await?;
    let mut state = store::Store::default();
    for (i, record) in records.iter().enumerate() {
        state.apply(record).map_err(|e| {
            RegistryError::Replay(format!("{} record {i}: {}", registry.topic, e.message))
        })?;
    }
    let listener = TcpListener::bind((host.as_str(), port))
        .await
        .map_err(|source| RegistryError::Bind {
            address: format!("{host}:{port}"),
            source,
        })?;
    let address = listener
        .local_addr()
        .map_err(|source| RegistryError::Bind {
            address: format!("{host}:{port}"),
            source,
        })?;
    let auth = registry
        .credentials
        .as_ref()
        .map(|(user, password)| server::basic_auth_header(user, password.expose()));
    tracing::info!(%address, topic = %registry.topic, subjects = state.subjects(store::Deleted::Include).len(), auth = auth.is_some(), https = tls.is_some(), "schema registry serving");
    ready(address);
    server::serve(
        listener,
        Arc::new(api::Api::new(state, log)),
        auth,
        tls,
        shutdown,
    )
    .await
}
