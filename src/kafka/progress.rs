//! The progress record: where a source's events stand in Kafka, and which PostgreSQL
//! cluster (system identifier and timeline) they came from. With exactly-once delivery it is
//! written inside each Kafka transaction; at-least-once, the pipeline writes it outside
//! transactions once Kafka acknowledged every event up to it (at most about once a second,
//! and at a clean stop). Either way it answers "has this source published before, up to
//! where, and from which cluster", which is what keeps a lost slot or a restored database
//! from being resumed silently (see [`crate::source::slot`]).
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

/// Where a source's events stand in Kafka, and which PostgreSQL cluster they came from.
///
/// Records written before walcast kept the origin have only `lsn`: they read with `origin`
/// `None`, and the next record written fills it in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// Kafka holds every change of the source up to here (the `end_lsn` of a source
    /// transaction, or the slot's consistent point when nothing was published yet).
    pub lsn: Lsn,
    /// The cluster and timeline `lsn` belongs to, from `IDENTIFY_SYSTEM`.
    pub origin: Option<Origin>,
    /// Set by `walcast slot drop` / `walcast slot recreate`: the operator let the slot go,
    /// so the next start begins anew (and `lsn` is only what Kafka held then).
    pub reset: Option<Reset>,
    /// A snapshot the operator asked for with `walcast slot recreate --snapshot` has not
    /// finished: starts keep reading it, whatever the source's `snapshot` says.
    pub snapshot_pending: bool,
}

/// The PostgreSQL cluster a position belongs to: positions are comparable only within one
/// system identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `IDENTIFY_SYSTEM`'s system identifier (a 64-bit number, kept as text).
    pub system_id: String,
    /// `IDENTIFY_SYSTEM`'s timeline: a promotion moves it on.
    pub timeline: u32,
}

/// What the operator asked for when letting the slot go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// `walcast slot drop`: a new slot on the next start, snapshot as `snapshot` says.
    Dropped,
    /// `walcast slot recreate --snapshot`: a new slot with a snapshot of every table.
    Snapshot,
}

impl Reset {
    fn as_str(self) -> &'static str {
        match self {
            Reset::Dropped => "dropped",
            Reset::Snapshot => "snapshot",
        }
    }
}

/// The progress record's key and value for `source`.
pub fn record(source: &str, progress: &Progress) -> (Vec<u8>, Vec<u8>) {
    let mut value = serde_json::json!({ "source": source, "lsn": progress.lsn.to_string() });
    if let Some(origin) = &progress.origin {
        value["system_id"] = origin.system_id.clone().into();
        value["timeline"] = origin.timeline.into();
    }
    if let Some(reset) = progress.reset {
        value["reset"] = reset.as_str().into();
    }
    if progress.snapshot_pending {
        value["snapshot_pending"] = true.into();
    }
    (source.as_bytes().to_vec(), value.to_string().into_bytes())
}

/// A progress record's value, if it is one (old records, with only `lsn`, included).
pub fn parse(value: &[u8]) -> Option<Progress> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let lsn = v.get("lsn")?.as_str()?.parse().ok()?;
    let origin = match (v.get("system_id"), v.get("timeline")) {
        (None, None) => None,
        (Some(id), Some(tl)) => Some(Origin {
            system_id: id.as_str()?.to_string(),
            timeline: u32::try_from(tl.as_u64()?).ok()?,
        }),
        _ => return None,
    };
    let reset = match v.get("reset") {
        None => None,
        Some(r) => Some(match r.as_str()? {
            "dropped" => Reset::Dropped,
            "snapshot" => Reset::Snapshot,
            _ => return None,
        }),
    };
    let snapshot_pending = match v.get("snapshot_pending") {
        None => false,
        Some(b) => b.as_bool()?,
    };
    Some(Progress {
        lsn,
        origin,
        reset,
        snapshot_pending,
    })
}

/// The progress topic of `source`: `<client_id>.progress.<source>`, in both delivery modes.
pub fn topic(kafka: &KafkaConfig, source: &str) -> String {
    format!("{}.progress.{source}", kafka.client_id)
}

/// Creates the progress topic of `source` when missing: one partition, compacted.
pub async fn ensure(kafka: &KafkaConfig, topic: &str) -> Result<(), KafkaError> {
    let settings = crate::config::TopicSettings {
        partitions: 1,
        replication_factor: kafka.topic_settings(topic).replication_factor,
        cleanup_policy: crate::config::CleanupPolicy::Compact,
    };
    super::ensure_topic(kafka, topic, &settings)
        .await
        .map_err(|source| KafkaError::Topic {
            topic: topic.to_string(),
            source,
        })
}

/// Writes `progress` to `topic` outside any transaction (idempotent producer, `acks=all`),
/// and returns once the broker acknowledged it: `walcast slot drop` and `recreate` use it.
pub async fn write(
    kafka: &KafkaConfig,
    topic: &str,
    source: &str,
    progress: &Progress,
) -> Result<(), KafkaError> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = super::client_config(kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(|source| KafkaError::Client {
            what: "progress writer",
            source,
        })?;
    let (key, value) = record(source, progress);
    producer
        .send(
            FutureRecord::to(topic).key(&key[..]).payload(&value[..]),
            TIMEOUT,
        )
        .await
        .map(|_| ())
        .map_err(|(source, _)| KafkaError::Delivery {
            topic: topic.to_string(),
            source,
        })
}

/// The last committed position of `source` in `topic`, or `None` when it has none.
pub async fn read(
    kafka: &KafkaConfig,
    topic: &str,
    source: &str,
) -> Result<Option<Progress>, KafkaError> {
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
) -> Result<Option<Progress>, KafkaError> {
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
                        let progress = m.payload().and_then(parse).ok_or_else(|| {
                            failed(format!(
                                "the record at offset {} is not a walcast progress record; \
                                 hint: the topic belongs to walcast, set another kafka progress topic if it is used for something else",
                                m.offset()
                            ))
                        })?;
                        found = Some(progress);
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
    fn a_record_round_trips_its_lsn_origin_and_reset() {
        let lsn: Lsn = "1/2A3B4C".parse().unwrap();
        let progress = Progress {
            lsn,
            origin: Some(Origin {
                system_id: "7451234567890123456".into(),
                timeline: 3,
            }),
            reset: Some(Reset::Snapshot),
            snapshot_pending: true,
        };
        let (key, value) = record("users", &progress);
        assert_eq!(key, b"users");
        assert_eq!(parse(&value), Some(progress));
        let plain = Progress {
            lsn,
            ..Progress::default()
        };
        assert_eq!(parse(&record("users", &plain).1), Some(plain));
    }

    #[test]
    fn a_record_written_before_origins_were_kept_still_reads() {
        assert_eq!(
            parse(br#"{"source":"users","lsn":"0/16B3748"}"#),
            Some(Progress {
                lsn: "0/16B3748".parse().unwrap(),
                ..Progress::default()
            })
        );
    }

    #[test]
    fn other_records_are_not_progress() {
        assert_eq!(parse(b"hello"), None);
        assert_eq!(parse(br#"{"lsn": 5}"#), None);
        assert_eq!(parse(br#"{"lsn": "0/1", "system_id": "1"}"#), None);
        assert_eq!(parse(br#"{"lsn": "0/1", "reset": "maybe"}"#), None);
    }
}
