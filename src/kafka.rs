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
