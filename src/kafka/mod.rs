//! Kafka: the client settings every walcast client shares, topic creation, the producer of
//! each source ([`producer`]), its acknowledged-LSN [`watermark`], and the per-source
//! [`progress`] record that makes exactly-once delivery survive a crash and keeps a lost slot
//! or a moved database from being resumed silently.
//!
//! Users pass any librdkafka property through `[kafka.properties]`; the settings walcast's
//! guarantees rest on (bootstrap list, idempotence, acks, transactional id) are owned by
//! walcast, and the configuration refuses properties that would weaken them.

pub mod producer;
pub mod progress;
pub mod security;
pub mod watermark;

use rdkafka::error::{KafkaError as ClientError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// What went wrong talking to Kafka. Transient errors (the broker unreachable, a leader
/// moving, a transaction the coordinator aborted) are retried by restarting the part with
/// backoff; permanent ones (a refused setting, a missing permission, a fenced producer) stop
/// it with the reason.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused to create a client: a property it does not accept.
    #[error("creating the Kafka {what}: {source}")]
    Client {
        /// Which client: producer, consumer, admin client…
        what: &'static str,
        /// librdkafka's reason.
        source: ClientError,
    },
    /// The brokers refused TLS or authentication: permanent, with the key to fix.
    #[error("kafka {brokers}: {problem} ({detail})\n  hint: {hint}")]
    Security {
        /// The bootstrap list.
        brokers: String,
        /// What failed, in walcast's words.
        problem: String,
        /// librdkafka's reason, without the parts that change between attempts.
        detail: String,
        /// The setting to fix.
        hint: String,
    },
    /// No broker answered in time: transient.
    #[error("kafka {brokers}: not reached: {reason}")]
    Connect {
        /// The bootstrap list.
        brokers: String,
        /// librdkafka's last reason.
        reason: String,
    },
    /// Creating (or looking up) a topic failed.
    #[error("creating topic {topic}: {source}")]
    Topic {
        /// The topic.
        topic: String,
        /// librdkafka's reason.
        source: ClientError,
    },
    /// librdkafka refused a record before sending it.
    #[error("producing to topic {topic}: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// librdkafka's reason.
        source: ClientError,
    },
    /// The broker did not acknowledge a record, after librdkafka's own retries.
    #[error("delivery to topic {topic} failed: {source}")]
    Delivery {
        /// The topic.
        topic: String,
        /// librdkafka's reason.
        source: ClientError,
    },
    /// A newer producer with the same transactional id took over: permanent.
    #[error("source {source_name}: another walcast instance took over its Kafka transactions (transactional.id {transactional_id}); this one stops publishing. hint: only one instance per source is active at a time; this is expected when a standby took over")]
    Fenced {
        /// The source.
        source_name: String,
        /// Its transactional id, `<client_id>.<source>`.
        transactional_id: String,
    },
    /// Initialising, beginning, committing or aborting a Kafka transaction failed; transient
    /// unless librdkafka calls it fatal.
    #[error("source {source_name}: {operation} of the Kafka transaction failed: {source}")]
    Transaction {
        /// The source.
        source_name: String,
        /// What was being done: initialising, committing…
        operation: &'static str,
        /// librdkafka's reason.
        source: ClientError,
    },
    /// A blocking Kafka call's task panicked or was cancelled.
    #[error("{what}: the task stopped abnormally: {message}")]
    Task {
        /// What the task was doing.
        what: &'static str,
        /// The join error.
        message: String,
    },
    /// The source's progress topic could not be read to its end: transient.
    #[error("source {source_name}: reading its position from progress topic {topic}: {message}")]
    Progress {
        /// The source.
        source_name: String,
        /// Its progress topic.
        topic: String,
        /// What went wrong.
        message: String,
    },
}

impl KafkaError {
    /// Whether restarting the part (after backoff) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            KafkaError::Fenced { .. } | KafkaError::Security { .. } => false,
            KafkaError::Connect { .. } => true,
            KafkaError::Client { .. } | KafkaError::Task { .. } => false,
            KafkaError::Progress { .. } => true,
            KafkaError::Transaction { source, .. } => match source {
                ClientError::Transaction(e) => !e.is_fatal(),
                other => code_is_transient(other.rdkafka_error_code()),
            },
            KafkaError::Topic { source, .. }
            | KafkaError::Produce { source, .. }
            | KafkaError::Delivery { source, .. } => code_is_transient(source.rdkafka_error_code()),
        }
    }
}

/// Errors that say "not now" rather than "never": the cluster is unreachable or busy, a
/// leader or coordinator moved, a request timed out. Authorization, invalid configuration
/// and oversized records are permanent.
fn code_is_transient(code: Option<RDKafkaErrorCode>) -> bool {
    use RDKafkaErrorCode as C;
    match code {
        None => true,
        Some(
            C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::InvalidConfig
            | C::InvalidReplicationFactor
            | C::InvalidPartitions
            | C::PolicyViolation
            | C::MessageSizeTooLarge
            | C::InvalidRecord
            | C::InvalidTopic
            | C::ProducerFenced
            | C::Fatal
            | C::UnsupportedVersion
            | C::UnsupportedFeature
            | C::Fenced,
        ) => false,
        Some(_) => true,
    }
}

/// A client configuration with the brokers, client id and pass-through properties applied.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", &kafka.client_id);
    for (name, value) in &kafka.properties {
        cc.set(name, value.to_string());
    }
    for (name, value) in &kafka.resolved_properties_env {
        cc.set(name, value.expose());
    }
    cc
}

/// Creates `topic` with `settings` unless it exists (checked in the cluster's metadata
/// first). walcast creates its own topics: it never relies on broker auto-creation, which
/// would pick partitions and cleanup policy for it. An existing topic is used as it is, so
/// clusters where topics are provisioned ahead (and walcast's principal may not create
/// them) work.
pub async fn ensure_topic(
    kafka: &KafkaConfig,
    topic: &str,
    settings: &crate::config::TopicSettings,
) -> Result<(), ClientError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let inner = admin.inner();
    // Every topic's metadata, never the one topic's: a metadata request naming a missing
    // topic lets a broker with auto.create.topics.enable create it, with the broker's
    // partition count and cleanup policy instead of these settings.
    let metadata = tokio::task::block_in_place(|| {
        inner.fetch_metadata(None, std::time::Duration::from_secs(10))
    })?;
    if metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    {
        return Ok(());
    }
    let policy = match settings.cleanup_policy {
        crate::config::CleanupPolicy::Delete => "delete",
        crate::config::CleanupPolicy::Compact => "compact",
        crate::config::CleanupPolicy::CompactDelete => "compact,delete",
    };
    let new = NewTopic::new(
        topic,
        settings.partitions,
        TopicReplication::Fixed(settings.replication_factor),
    )
    .set("cleanup.policy", policy);
    let results = admin
        .create_topics(
            &[new],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(ClientError::AdminOp(code)),
        }
    }
    Ok(())
}
