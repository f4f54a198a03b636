//! librdkafka client settings shared by every Kafka client walcast creates.
//!
//! Users pass any librdkafka property through `[kafka.properties]`; the settings walcast's
//! guarantees rest on (bootstrap list, idempotence, acks) are owned by walcast, and the
//! configuration refuses properties that would weaken them.

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// A client configuration with the brokers, client id and pass-through properties applied.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &kafka.brokers)
        .set("client.id", &kafka.client_id);
    for (name, value) in &kafka.properties {
        cc.set(name, value.to_string());
    }
    for (name, value) in &kafka.resolved_properties_env {
        cc.set(name, value);
    }
    cc
}

/// Creates `topic` with `settings` unless it exists (checked in the cluster's metadata first). walcast creates its own topics: it never
/// relies on broker auto-creation, which would pick partitions and cleanup policy for it.
pub async fn ensure_topic(
    kafka: &KafkaConfig,
    topic: &str,
    settings: &crate::config::TopicSettings,
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    // An existing topic is used as it is: clusters where topics are provisioned ahead (and
    // walcast's principal may not create them) work, and nothing is asked of the admin API.
    let inner = admin.inner();
    let metadata = tokio::task::block_in_place(|| {
        inner.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
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
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}
