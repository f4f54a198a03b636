//! Snapshot progress in a compacted Kafka topic, `<client_id>.snapshot.<source>`: one
//! record per table (key `<source>/<schema.table>`, value a JSON [`TableProgress`]). Why
//! Kafka and not the source database: see the module doc of [`super`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as ClientError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::plan::TableProgress;
use super::SnapshotError;
use crate::config::{CleanupPolicy, KafkaConfig, TopicSettings};

/// The snapshot progress topic of `source`.
pub fn topic(kafka: &KafkaConfig, source: &str) -> String {
    format!("{}.snapshot.{source}", kafka.client_id)
}

/// Creates the topic when missing: compacted, one partition.
pub async fn ensure(kafka: &KafkaConfig, topic: &str) -> Result<(), SnapshotError> {
    let settings = TopicSettings {
        partitions: 1,
        replication_factor: kafka.topic_settings(topic).replication_factor,
        cleanup_policy: CleanupPolicy::Compact,
    };
    crate::kafka::ensure_topic(kafka, topic, &settings)
        .await
        .map_err(|source| crate::kafka::KafkaError::Topic {
            topic: topic.to_string(),
            source,
        })?;
    Ok(())
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// The latest committed progress of each table of `source`, by `schema.table`.
pub async fn read(
    kafka: &KafkaConfig,
    topic: &str,
    source: &str,
) -> Result<HashMap<String, TableProgress>, SnapshotError> {
    let consumer: BaseConsumer = crate::kafka::client_config(kafka)
        .set(
            "group.id",
            format!("{}-snapshot-progress-reader", kafka.client_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| failed(topic, format!("creating its reader: {e}")))?;
    let (t, s) = (topic.to_string(), source.to_string());
    tokio::task::spawn_blocking(move || read_blocking(&consumer, &t, &s))
        .await
        .map_err(|join| failed(topic, format!("the reader task failed: {join}")))?
}

fn failed(topic: &str, message: String) -> SnapshotError {
    SnapshotError::Progress {
        topic: topic.to_string(),
        message,
    }
}

fn read_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    source: &str,
) -> Result<HashMap<String, TableProgress>, SnapshotError> {
    let client = |what: &str, e: ClientError| failed(topic, format!("{what}: {e}"));
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, TIMEOUT)
        .map_err(|e| client("fetching its offsets", e))?;
    let mut found = HashMap::new();
    if low >= high {
        return Ok(found);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))
        .map_err(|e| client("positioning", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| client("assigning its partition", e))?;
    let prefix = format!("{source}/");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if Instant::now() > deadline {
            return Err(failed(
                topic,
                format!("no end of partition 0 within {TIMEOUT:?} (offsets {low}..{high})"),
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(ClientError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(client("reading", e)),
            Some(Ok(m)) => {
                let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                if let Some(table) = key.strip_prefix(&prefix) {
                    match m.payload() {
                        // A tombstone forgets the table.
                        None => {
                            found.remove(table);
                        }
                        Some(value) => {
                            let progress = TableProgress::decode(value).ok_or_else(|| {
                                failed(topic, format!("the record at offset {} is not walcast snapshot progress; hint: the topic belongs to walcast", m.offset()))
                            })?;
                            found.insert(table.to_string(), progress);
                        }
                    }
                }
                if m.offset() + 1 >= high {
                    break;
                }
            }
        }
    }
    Ok(found)
}
