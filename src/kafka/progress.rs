//! The progress record: where a source's events stand in Kafka, written inside each Kafka
//! transaction (exactly-once delivery only).
//!
//! # Why a record in Kafka, not the slot
//! PostgreSQL's slot can only be confirmed *after* a Kafka transaction commits, so a crash
//! between the two leaves the slot behind what Kafka already holds, and PostgreSQL resends
//! those transactions. Were they published again, read_committed consumers would see them
//! twice. So every Kafka transaction also writes the `end_lsn` of the last source
//! transaction it holds to this source's progress topic, and commits with it, atomically.
//! On start-up the pipeline reads the latest committed progress record and skips every
//! source transaction that ends at or before it (as Materialize's Kafka sink does with its
//! progress topic).
//!
//! # One topic per source
//! The topic is compacted and has one partition. A read_committed reader sees only records
//! below the partition's last stable offset, which another producer's open transaction holds
//! back until it ends (at worst `transaction.timeout.ms` after that producer died). Each
//! source has a topic of its own, written by its own transactional id only, whose previous
//! transactions `init_transactions` has already settled, so reading it never waits on
//! anyone else.
//!
//! # Reading backwards
//! The latest record is near the end: each transaction adds one record and one commit
//! marker. The reader starts a small window before the end and widens it only when the
//! window holds no record, so start-up costs the same however long the topic is.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as ClientError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::KafkaError;
use crate::config::KafkaConfig;
use crate::lsn::Lsn;

/// The progress record's key and value for `source` at `lsn`.
pub fn record(source: &str, lsn: Lsn) -> (Vec<u8>, Vec<u8>) {
    let value = serde_json::json!({ "source": source, "lsn": lsn.to_string() });
    (source.as_bytes().to_vec(), value.to_string().into_bytes())
}

/// The LSN of a progress record's value, if it is one.
pub fn parse(value: &[u8]) -> Option<Lsn> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    v.get("lsn")?.as_str()?.parse().ok()
}

/// The last committed position of `source` in `topic`, or `None` when it has none.
pub async fn read(
    kafka: &KafkaConfig,
    topic: &str,
    source: &str,
) -> Result<Option<Lsn>, KafkaError> {
    let consumer: BaseConsumer = super::client_config(kafka)
        .set("group.id", format!("{}-progress-reader", kafka.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|source| KafkaError::Client {
            what: "progress reader",
            source,
        })?;
    let (topic, source) = (topic.to_string(), source.to_string());
    let (t, s) = (topic.clone(), source.clone());
    tokio::task::spawn_blocking(move || read_blocking(&consumer, &t, &s))
        .await
        .unwrap_or_else(|join| {
            Err(KafkaError::Progress {
                source_name: source,
                topic,
                message: format!("the reader task failed: {join}"),
            })
        })
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn read_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    source: &str,
) -> Result<Option<Lsn>, KafkaError> {
    let failed = |message: String| KafkaError::Progress {
        source_name: source.to_string(),
        topic: topic.to_string(),
        message,
    };
    let client_failed = |what: &str, e: ClientError| failed(format!("{what}: {e}"));
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, TIMEOUT)
        .map_err(|e| client_failed("fetching its offsets", e))?;
    let mut window = 64;
    loop {
        let start = (high - window).max(low);
        if start >= high {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(start))
            .map_err(|e| client_failed("positioning", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| client_failed("assigning its partition", e))?;
        let deadline = Instant::now() + TIMEOUT;
        let mut found = None;
        loop {
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "no end of partition 0 within {TIMEOUT:?} (offsets {start}..{high})"
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(ClientError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(client_failed("reading", e)),
                Some(Ok(m)) => {
                    if m.key() == Some(source.as_bytes()) {
                        let lsn = m.payload().and_then(parse).ok_or_else(|| {
                            failed(format!(
                                "the record at offset {} is not a walcast progress record; \
                                 hint: the topic belongs to walcast, set another kafka progress topic if it is used for something else",
                                m.offset()
                            ))
                        })?;
                        found = Some(lsn);
                    }
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
            }
        }
        if found.is_some() || start == low {
            return Ok(found);
        }
        window *= 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_its_lsn() {
        let lsn: Lsn = "1/2A3B4C".parse().unwrap();
        let (key, value) = record("users", lsn);
        assert_eq!(key, b"users");
        assert_eq!(parse(&value), Some(lsn));
    }

    #[test]
    fn other_records_are_not_progress() {
        assert_eq!(parse(b"hello"), None);
        assert_eq!(parse(br#"{"lsn": 5}"#), None);
    }
}
