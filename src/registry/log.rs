//! The registry's durable storage: the Kafka topic `_schemas` (configurable), one partition,
//! compacted, in Confluent's record format (see [`super::record`]).
//!
//! # Why a Kafka topic
//! It is what Confluent Schema Registry and Karapace use, so a team can later point either at
//! the same topic and keep every id; it needs nothing beyond the broker walcast already
//! requires; and a log replayed in order is exactly the state machine [`super::store`] is.
//!
//! # The single-writer rule
//! Ids and versions are allocated from the state the writer has read. Two registries
//! writing to one topic could both hand out the same id to different schemas. So exactly
//! one walcast registry (standalone, or embedded in one daemon) may serve a given topic;
//! every other process is a client of it over HTTP. Confluent enforces the same rule by
//! electing a primary; walcast leaves it to the deployment (one `registry` service in
//! `docker/compose.yaml`).
//!
//! # Reading to the end
//! On start-up the registry appends a `NOOP` marker and reads from the beginning until it has
//! seen the marker's offset. That proves it has read everything written before it started,
//! without trusting the broker's high watermark (tansu 0.6.0's can be wrong).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::error::ApiError;
use super::record::Record;
use super::RegistryError;
use crate::config::KafkaConfig;

/// How long start-up waits for the topic to be read to the marker.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);
/// Delivery deadline of one append.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The open log: a producer that appends, acknowledged by every in-sync replica.
pub struct SchemaLog {
    topic: String,
    producer: FutureProducer,
}

impl std::fmt::Debug for SchemaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaLog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl SchemaLog {
    /// Creates the topic when missing, then reads every record in it, in order.
    pub async fn open(
        kafka: &KafkaConfig,
        topic: &str,
    ) -> Result<(Self, Vec<Record>), RegistryError> {
        let kafka_error = |what: &str| {
            let what = format!("{what} (topic {topic}, brokers {})", kafka.brokers);
            move |source: KafkaError| RegistryError::Kafka { what, source }
        };
        crate::kafka::security::connect_async(kafka, crate::kafka::security::CONNECT_TIMEOUT)
            .await
            .map_err(RegistryError::Cluster)?;
        let settings = crate::config::TopicSettings {
            partitions: 1,
            replication_factor: kafka.topic_settings(topic).replication_factor,
            cleanup_policy: crate::config::CleanupPolicy::Compact,
        };
        crate::kafka::ensure_topic(kafka, topic, &settings)
            .await
            .map_err(kafka_error("creating the schema topic"))?;
        let producer: FutureProducer = crate::kafka::client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()
            .map_err(kafka_error("creating the schema topic's producer"))?;
        let log = Self {
            topic: topic.to_string(),
            producer,
        };
        let (key, _) = Record::Ignored.encode();
        let marker = log
            .producer
            .send(
                FutureRecord::<[u8], [u8]>::to(topic).key(&key[..]),
                APPEND_TIMEOUT,
            )
            .await
            .map_err(|(e, _)| kafka_error("appending the start-up marker")(e))?;
        let consumer: BaseConsumer = crate::kafka::client_config(kafka)
            .set("group.id", "walcast-registry")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(kafka_error("creating the schema topic's reader"))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, marker.partition, Offset::Beginning)
            .map_err(kafka_error("assigning the schema topic"))?;
        consumer
            .assign(&assignment)
            .map_err(kafka_error("assigning the schema topic"))?;
        let topic_name = topic.to_string();
        let records =
            tokio::task::spawn_blocking(move || read_until(&consumer, &topic_name, marker.offset))
                .await
                .map_err(|e| RegistryError::Replay(format!("the reader thread failed: {e}")))??;
        tracing::info!(topic, records = records.len(), "read the schema log");
        Ok((log, records))
    }

    /// Appends `records` in order; `Ok` once the broker has acknowledged all of them.
    pub async fn append(&self, records: &[Record]) -> Result<(), ApiError> {
        let encoded: Vec<_> = records.iter().map(Record::encode).collect();
        let deliveries: Vec<_> = encoded
            .iter()
            .map(|(key, value)| {
                let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).key(&key[..]);
                if let Some(v) = value {
                    record = record.payload(&v[..]);
                }
                self.producer.send(record, APPEND_TIMEOUT)
            })
            .collect();
        for delivery in deliveries {
            delivery.await.map_err(|(e, _)| {
                ApiError::store(format!("appending to the schema topic {}: {e}", self.topic))
            })?;
        }
        Ok(())
    }
}

/// Reads the assigned partition until the record at `last` has been read.
fn read_until(
    consumer: &BaseConsumer,
    topic: &str,
    last: i64,
) -> Result<Vec<Record>, RegistryError> {
    let deadline = Instant::now() + REPLAY_TIMEOUT;
    let mut records = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(RegistryError::Replay(format!(
                "reading {topic} did not reach offset {last} within {REPLAY_TIMEOUT:?}"
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(|source| RegistryError::Kafka {
            what: format!("reading the schema topic {topic}"),
            source,
        })?;
        let offset = message.offset();
        let record = Record::decode(message.key().unwrap_or_default(), message.payload())
            .map_err(|e| {
                RegistryError::Replay(format!(
                    "{topic} offset {offset}: {e}; only schema registry records belong in this topic"
                ))
            })?;
        records.push(record);
        if offset >= last {
            return Ok(records);
        }
    }
}
