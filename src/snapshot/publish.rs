//! The snapshot's own producer: chunks to Kafka, each followed by its progress record.
//!
//! - At-least-once: idempotent, `acks=all`, partitioned by key like the source's producer.
//!   A chunk's records are sent, then every one of them must be acknowledged before its
//!   progress record is sent, and that one must be acknowledged before the next chunk's
//!   records are sent. So a crash republishes at most the one chunk in flight.
//! - Exactly-once: transactional, with the id `<client_id>.<source>.snapshot`, so it never
//!   interleaves with (nor fences) the stream's transactions. A chunk and its progress
//!   record are one Kafka transaction: a read_committed consumer sees each chunk once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError as ClientError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::Notify;

use super::SnapshotError;
use crate::config::KafkaConfig;
use crate::kafka::KafkaError;

const TRANSACTION_CALL: Duration = Duration::from_secs(60);

/// The records of one batch still unacknowledged, and the first failure.
#[derive(Debug, Default)]
pub struct Batch {
    outstanding: AtomicUsize,
    failure: Mutex<Option<String>>,
    done: Notify,
}

impl Batch {
    /// Waits until every record sent in the batch is acknowledged.
    async fn acknowledged(&self, topic: &str) -> Result<(), SnapshotError> {
        loop {
            let done = self.done.notified();
            if let Some(e) = self.failure.lock().expect("failure lock").take() {
                return Err(SnapshotError::Delivery {
                    topic: topic.to_string(),
                    message: e,
                });
            }
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            done.await;
        }
    }
}

#[derive(Debug)]
/// Delivery reports of snapshot records: each counts down its chunk's outstanding records.
pub struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Arc<Batch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Batch>) {
        if let Err((e, _)) = result {
            batch
                .failure
                .lock()
                .expect("failure lock")
                .get_or_insert_with(|| e.to_string());
        }
        if batch.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 || result.is_err() {
            batch.done.notify_waiters();
        }
    }
}

/// One record of a chunk.
#[derive(Debug)]
pub struct Record {
    /// The topic.
    pub topic: Arc<str>,
    /// The Confluent-framed key.
    pub key: Vec<u8>,
    /// The Confluent-framed value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// The event headers (`op = snapshot`, version…).
    pub headers: OwnedHeaders,
}

/// See the module doc.
pub struct Publisher {
    inner: Arc<ThreadedProducer<Acks>>,
    transactional: bool,
    progress_topic: String,
    source_name: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("transactional", &self.transactional)
            .field("progress_topic", &self.progress_topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// The snapshot producer of `source_name` (transactional with exactly-once), and its progress topic.
    pub async fn create(
        kafka: &KafkaConfig,
        source_name: &str,
        progress_topic: &str,
    ) -> Result<Self, SnapshotError> {
        let mut client = crate::kafka::client_config(kafka);
        for (key, value) in [
            ("queue.buffering.max.kbytes", "16384"),
            ("queue.buffering.max.messages", "20000"),
            ("transaction.timeout.ms", "300000"),
        ] {
            if !kafka.properties.contains_key(key)
                && (kafka.exactly_once || !key.starts_with("transaction"))
            {
                client.set(key, value);
            }
        }
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random");
        if kafka.exactly_once {
            client.set(
                "transactional.id",
                format!("{}.{source_name}.snapshot", kafka.client_id),
            );
        }
        let inner: ThreadedProducer<Acks> =
            client
                .create_with_context(Acks)
                .map_err(|source| KafkaError::Client {
                    what: "snapshot producer",
                    source,
                })?;
        let publisher = Self {
            inner: Arc::new(inner),
            transactional: kafka.exactly_once,
            progress_topic: progress_topic.to_string(),
            source_name: source_name.to_string(),
        };
        if publisher.transactional {
            publisher
                .blocking("initialising", |p| p.init_transactions(TRANSACTION_CALL))
                .await?;
        }
        Ok(publisher)
    }

    /// Publishes `records`, then the progress record `(key, value)`; returns once both are
    /// durable in Kafka (acknowledged, or committed in one transaction).
    pub async fn publish(
        &self,
        records: Vec<Record>,
        progress: (Vec<u8>, Vec<u8>),
    ) -> Result<(), SnapshotError> {
        if self.transactional {
            self.inner
                .begin_transaction()
                .map_err(|e| self.transaction_error("beginning", e))?;
            let batch = Arc::new(Batch::default());
            let sent = async {
                for r in records {
                    self.send(
                        &r.topic,
                        &r.key,
                        r.value.as_deref(),
                        Some(r.headers),
                        &batch,
                    )
                    .await?;
                }
                self.send(
                    &self.progress_topic,
                    &progress.0,
                    Some(&progress.1),
                    None,
                    &batch,
                )
                .await
            }
            .await;
            if let Err(e) = sent {
                let _ = self
                    .blocking("aborting", |p| p.abort_transaction(TRANSACTION_CALL))
                    .await;
                return Err(e);
            }
            return self
                .blocking("committing", |p| p.commit_transaction(TRANSACTION_CALL))
                .await;
        }
        let batch = Arc::new(Batch::default());
        let topic = records.first().map(|r| r.topic.clone());
        for r in records {
            self.send(
                &r.topic,
                &r.key,
                r.value.as_deref(),
                Some(r.headers),
                &batch,
            )
            .await?;
        }
        if let Some(topic) = topic {
            batch.acknowledged(&topic).await?;
        }
        let batch = Arc::new(Batch::default());
        self.send(
            &self.progress_topic,
            &progress.0,
            Some(&progress.1),
            None,
            &batch,
        )
        .await?;
        // Do not wait out linger.ms for the one record the next chunk waits on.
        self.inner.poll(Duration::ZERO);
        batch.acknowledged(&self.progress_topic).await
    }

    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        batch: &Arc<Batch>,
    ) -> Result<(), SnapshotError> {
        batch.outstanding.fetch_add(1, Ordering::AcqRel);
        let mut record = BaseRecord::with_opaque_to(topic, batch.clone()).key(key);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((ClientError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    batch.outstanding.fetch_sub(1, Ordering::AcqRel);
                    return Err(if self.transactional {
                        self.transaction_error("producing", e)
                    } else {
                        KafkaError::Produce {
                            topic: topic.to_string(),
                            source: e,
                        }
                        .into()
                    });
                }
            }
        }
    }

    async fn blocking(
        &self,
        operation: &'static str,
        call: impl FnOnce(&ThreadedProducer<Acks>) -> Result<(), ClientError> + Send + 'static,
    ) -> Result<(), SnapshotError> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || call(&inner)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.transaction_error(operation, e)),
            Err(join) => Err(KafkaError::Task {
                what: operation,
                message: join.to_string(),
            }
            .into()),
        }
    }

    fn transaction_error(&self, operation: &'static str, source: ClientError) -> SnapshotError {
        KafkaError::Transaction {
            source_name: format!("{} (snapshot)", self.source_name),
            operation,
            source,
        }
        .into()
    }
}
