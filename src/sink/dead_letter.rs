//! The dead-letter topic of `on_error = "dead_letter"`: a rejected record is copied there as
//! it was read (key, value, headers), with why and where in `__walcast.errors.*` headers,
//! and the sink goes on only once the broker has acknowledged the copy.

use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::runner::{DeadLetters, Origin};
use crate::config::{Config, SinkConfig};

/// A record as it was read, kept for its dead-letter copy.
#[derive(Debug, Clone, Default)]
pub(super) struct Raw {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Raw {
    pub(super) fn of<M: Message>(m: &M) -> Raw {
        Raw {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A sink's dead-letter topic and the producer that writes it.
pub(super) struct DeadLetter {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetter {
    /// Creates the topic when missing (with the config's settings for it) and the producer.
    pub(super) async fn new(
        config: &Config,
        sink: &SinkConfig,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let topic = sink.common.dead_letter_topic_name();
        crate::kafka::ensure_topic(&config.kafka, &topic, &config.kafka.topic_settings(&topic))
            .await?;
        let producer = crate::kafka::client_config(&config.kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(DeadLetter { producer, topic })
    }

    /// Writes `raw` with the error headers and waits for the acknowledgement.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        sink: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        stage: &str,
        reason: &str,
        raw: &Raw,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(raw.headers.len() + 6);
        for (key, value) in &raw.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let (partition, offset) = (partition.to_string(), offset.to_string());
        for (key, value) in [
            ("__walcast.errors.sink", sink),
            ("__walcast.errors.topic", topic),
            ("__walcast.errors.partition", &partition),
            ("__walcast.errors.offset", &offset),
            ("__walcast.errors.stage", stage),
            ("__walcast.errors.message", reason),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &raw.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &raw.payload {
            record = record.payload(payload.as_slice());
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

impl DeadLetters for DeadLetter {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn send<'a>(
        &'a self,
        sink: &'a str,
        origin: &'a Origin,
        stage: &'a str,
        reason: &'a str,
        raw: &'a Raw,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>> {
        Box::pin(async move {
            self.write(
                sink,
                &origin.topic,
                origin.partition,
                origin.offset,
                stage,
                reason,
                raw,
            )
            .await
            .map_err(|e| e.to_string())
        })
    }
}
