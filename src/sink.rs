//! The sink runner: a consumer group → decode by registry id → batch → connector → commit.
//!
//! # Guarantees
//! - **Offsets follow durability.** A batch's offsets are committed to Kafka only after the
//!   connector's `apply` returned `Ok` (durable). A crash in between redelivers the batch,
//!   which the connector absorbs: every change carries its source `(lsn, seq)` from the
//!   record's headers, and replicas apply a change only over an older version.
//! - **Order per key.** A key's events share a partition and are read in order; a batch
//!   keeps each key's latest version.
//! - **Nothing is skipped silently.** A record that cannot be decoded or applied stops the
//!   sink with its topic, partition and offset (`on_error = "stop"`).
//!
//! The consumer is librdkafka's `BaseConsumer` on a blocking thread: rust-rdkafka's
//! `StreamConsumer` hangs in its destructor against tansu 0.6.0.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use connectors::postgres::{PostgresSettings, PostgresSink};
use connectors::{Batch, Change, Op, Position, Sink, Value, Version};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;

use crate::config::{Config, OnError, SinkKind};
use crate::lsn::Lsn;
use crate::registry::client::{Client, ClientError};

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {topic} partition {partition} offset {offset}: {reason}; the record was not applied and its offset not committed")]
    Poison {
        sink: String,
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error("sink {sink}: {source}")]
    Store {
        sink: String,
        source: connectors::Error,
    },
    #[error("sink {sink}: {message}")]
    Setup { sink: String, message: String },
    #[error("sink {sink}: kafka: {message}")]
    Kafka { sink: String, message: String },
}

/// Runs the config's `sinks[index]` until `shutdown` or a permanent error.
pub async fn run(
    config: Arc<Config>,
    index: usize,
    registry: Arc<Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SinkError> {
    let sink_config = &config.sinks[index];
    let name = sink_config.name().to_string();
    let setup = |message: String| SinkError::Setup {
        sink: name.clone(),
        message,
    };
    let SinkKind::Postgres(pg) = &sink_config.kind else {
        return Err(setup(format!(
            "{} sinks are not available in this build",
            sink_config.type_name()
        )));
    };
    if sink_config.common.on_error == OnError::DeadLetter {
        return Err(setup(
            "on_error = \"dead_letter\" is not available in this build; use \"stop\"".into(),
        ));
    }
    let settings = PostgresSettings {
        url: pg.table.resolved_url.clone(),
        table: pg.table.table.clone(),
        key: pg.table.key.clone(),
        columns: pg.table.columns.clone(),
        fields: pg.table.fields.clone(),
        consumer: sink_config.common.group_id(),
    };
    let sink = PostgresSink::connect(settings)
        .await
        .map_err(|source| SinkError::Store {
            sink: name.clone(),
            source,
        })?;
    let consumer: BaseConsumer = crate::kafka::client_config(&config.kafka)
        .set("group.id", sink_config.common.group_id())
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| SinkError::Kafka {
            sink: name.clone(),
            message: e.to_string(),
        })?;

    let stop = Arc::new(AtomicBool::new(false));
    let runner = Runner {
        name: name.clone(),
        consumer,
        sink,
        decoder: Decoder {
            sink: name.clone(),
            registry,
            schemas: HashMap::new(),
            runtime: tokio::runtime::Handle::current(),
        },
        max_records: sink_config.common.batch_max_records,
        max_wait: Duration::from_millis(sink_config.common.batch_max_wait_ms),
        topics: sink_config.common.topics.clone(),
        stop: stop.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let mut task = tokio::task::spawn_blocking(move || runner.run());
    tokio::pin!(shutdown);
    tokio::select! {
        result = &mut task => return result.map_err(|e| SinkError::Kafka { sink: name, message: e.to_string() })?,
        _ = &mut shutdown => stop.store(true, Ordering::Relaxed),
    }
    task.await.map_err(|e| SinkError::Kafka {
        sink: name,
        message: e.to_string(),
    })?
}

struct Runner {
    name: String,
    consumer: BaseConsumer,
    sink: PostgresSink,
    decoder: Decoder,
    topics: Vec<String>,
    max_records: usize,
    max_wait: Duration,
    stop: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
}

impl Runner {
    /// Waits until every topic exists (a topic appears when its source first publishes; one
    /// subscribed to before that would only be seen at librdkafka's next metadata refresh),
    /// then subscribes. `false` if stopped meanwhile.
    fn subscribe(&self) -> Result<bool, SinkError> {
        let kafka = |e: rdkafka::error::KafkaError| SinkError::Kafka {
            sink: self.name.clone(),
            message: e.to_string(),
        };
        let mut waiting_logged = false;
        for topic in &self.topics {
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                let metadata = self
                    .consumer
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .map_err(kafka)?;
                if metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                {
                    break;
                }
                if !waiting_logged {
                    tracing::info!(sink = %self.name, %topic, "waiting for the topic to be created by its source");
                    waiting_logged = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics).map_err(kafka)?;
        tracing::info!(sink = %self.name, topics = ?topics, "sink consuming");
        Ok(true)
    }

    fn run(mut self) -> Result<(), SinkError> {
        if !self.subscribe()? {
            return Ok(());
        }
        while !self.stop.load(Ordering::Relaxed) {
            let mut batch = Batch::default();
            let mut next: HashMap<(String, i32), i64> = HashMap::new();
            let deadline = Instant::now() + self.max_wait;
            while batch.changes.len() < self.max_records && Instant::now() < deadline {
                let Some(message) = self.consumer.poll(Duration::from_millis(20)) else {
                    if next.is_empty() && self.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    continue;
                };
                let message = match message {
                    Ok(m) => m,
                    // A topic appears when its source first publishes: wait for it.
                    Err(rdkafka::error::KafkaError::MessageConsumption(
                        rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
                    )) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    Err(e) => {
                        return Err(SinkError::Kafka {
                            sink: self.name.clone(),
                            message: e.to_string(),
                        })
                    }
                };
                next.insert(
                    (message.topic().to_string(), message.partition()),
                    message.offset() + 1,
                );
                if let Some(change) = self.decoder.change(&message)? {
                    batch.changes.push(change);
                }
            }
            if next.is_empty() {
                continue;
            }
            batch.positions = next
                .iter()
                .map(|((topic, partition), offset)| Position {
                    topic: topic.clone(),
                    partition: *partition,
                    next_offset: *offset,
                })
                .collect();
            let applied = self.runtime.block_on(self.sink.apply(&batch));
            applied.map_err(|source| SinkError::Store {
                sink: self.name.clone(),
                source,
            })?;
            // Durable: now the offsets may move.
            self.consumer
                .commit_consumer_state(CommitMode::Sync)
                .map_err(|e| SinkError::Kafka {
                    sink: self.name.clone(),
                    message: format!("committing offsets: {e}"),
                })?;
        }
        Ok(())
    }
}

/// Records → changes: Confluent framing, Avro by the writer's schema, headers.
struct Decoder {
    sink: String,
    registry: Arc<Client>,
    schemas: HashMap<u32, Schema>,
    runtime: tokio::runtime::Handle,
}

impl Decoder {
    /// The change a record carries; `None` for a compaction tombstone, whose delete event
    /// came before it.
    fn change(&mut self, m: &BorrowedMessage<'_>) -> Result<Option<Change>, SinkError> {
        let sink = self.sink.clone();
        let poison = |reason: String| SinkError::Poison {
            sink: sink.clone(),
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            reason,
        };
        let header = |name: &str| -> Option<String> {
            m.headers()?
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let Some(payload) = m.payload() else {
            return Ok(None);
        };
        let lsn: Lsn = header("lsn")
            .ok_or_else(|| poison("no lsn header; only walcast's events can be applied".into()))?
            .parse()
            .map_err(|e| poison(format!("lsn header: {e}")))?;
        let seq: u32 = header("seq")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| poison("no valid seq header".into()))?;
        let key = self.record(m.key().unwrap_or_default()).map_err(&poison)?;
        let op = match header("op").as_deref() {
            Some("delete") => Op::Delete,
            Some("insert" | "update" | "snapshot") => {
                Op::Upsert(self.record(payload).map_err(&poison)?)
            }
            other => {
                return Err(poison(format!(
                    "op header {other:?} is not insert, update or delete"
                )))
            }
        };
        Ok(Some(Change {
            key,
            op,
            version: Version { lsn: lsn.0, seq },
        }))
    }

    /// A Confluent-framed Avro record, decoded with its writer's schema from the registry.
    fn record(&mut self, bytes: &[u8]) -> Result<Vec<(String, Value)>, String> {
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err("not Confluent-framed Avro (magic byte 0, schema id)".into());
        }
        let id = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
        if !self.schemas.contains_key(&id) {
            let text = self
                .runtime
                .block_on(self.registry.schema(id))
                .map_err(|e: ClientError| format!("schema id {id}: {e}"))?;
            let schema = Schema::parse_str(&text).map_err(|e| format!("schema id {id}: {e}"))?;
            self.schemas.insert(id, schema);
        }
        let schema = &self.schemas[&id];
        let value = apache_avro::from_avro_datum(schema, &mut &bytes[5..], None)
            .map_err(|e| format!("undecodable with schema id {id}: {e}"))?;
        let Avro::Record(fields) = value else {
            return Err(format!("schema id {id} is not a record"));
        };
        fields
            .into_iter()
            .map(|(name, v)| {
                convert(v)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| format!("field {name}: {e}"))
            })
            .collect()
    }
}

fn convert(v: Avro) -> Result<Value, String> {
    Ok(match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(n) => Value::Long(n.into()),
        Avro::Long(n) => Value::Long(n),
        Avro::Float(x) => Value::Double(x.into()),
        Avro::Double(x) => Value::Double(x),
        Avro::String(s) | Avro::Enum(_, s) => Value::Text(s),
        Avro::Uuid(u) => Value::Text(u.to_string()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Value::Bytes(b),
        Avro::Date(d) => Value::Date(d),
        Avro::TimeMillis(ms) => Value::Time(i64::from(ms) * 1000),
        Avro::TimeMicros(us) => Value::Time(us),
        Avro::TimestampMillis(ms) => Value::Timestamp(ms * 1000),
        Avro::TimestampMicros(us) => Value::Timestamp(us),
        Avro::LocalTimestampMillis(ms) => Value::LocalTimestamp(ms * 1000),
        Avro::LocalTimestampMicros(us) => Value::LocalTimestamp(us),
        Avro::Union(_, inner) => convert(*inner)?,
        other => {
            return Err(format!(
                "{other:?} has no replica column type in this build"
            ))
        }
    })
}
