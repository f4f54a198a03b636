//! The producer of one source, at-least-once or exactly-once.
//!
//! # At-least-once (the default)
//! Idempotent, `acks=all`, partitioned by the key's bytes (murmur2, as Java clients do), so
//! each key's events stay in order on one partition. Every record carries its source
//! transaction's number; delivery reports, on librdkafka's polling thread, update the
//! [`Watermark`], whose acknowledged `end_lsn` is the only position the source confirms.
//! librdkafka retries transient broker errors itself (until `message.timeout.ms`); a
//! delivery that finally fails freezes the watermark, so nothing after it is confirmed, and
//! the pipeline restarts from the slot, which resends it.
//!
//! # Exactly-once (`kafka.exactly_once = true`)
//! The producer is transactional, with the stable id `<client_id>.<source>`: a second
//! instance of the same source fences the first, whose next call fails with
//! [`KafkaError::Fenced`]. A Kafka transaction holds whole source transactions only, a
//! bounded run of consecutive ones (see [`Transactions`]), plus one [`progress`] record
//! naming the `end_lsn` of the last. The acknowledged position moves only when the Kafka
//! transaction commits, so PostgreSQL is confirmed only what Kafka holds, and the progress
//! record lets a restarted pipeline skip what a committed transaction already holds.
//!
//! [`progress`]: super::progress

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError as ClientError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::watch;

use super::progress::Progress;
use super::watermark::{TxNo, Watermark};
use super::KafkaError;
use crate::config::KafkaConfig;
use crate::lsn::Lsn;

/// How long a blocking transaction call (init, commit, abort) may take before it counts as
/// failed. Commit waits for every record of the transaction to be acknowledged.
const TRANSACTION_CALL: Duration = Duration::from_secs(60);

/// How long the source must hand over nothing before an open Kafka transaction commits
/// without waiting for its interval: the commit latency at low load.
pub const QUIET: Duration = Duration::from_millis(5);

/// Delivery reports land here, on librdkafka's polling thread.
#[derive(Debug)]
pub struct Acks {
    watermark: Arc<Mutex<Watermark>>,
    acked: watch::Sender<Lsn>,
    /// With transactions, a delivery is not durable until the commit: only the commit moves
    /// the acknowledged position.
    transactional: bool,
    failure: Mutex<Option<KafkaError>>,
    /// Records handed to librdkafka whose delivery report has not been served yet.
    outstanding: std::sync::atomic::AtomicU64,
    /// Woken when `outstanding` reaches zero.
    drained: tokio::sync::Notify,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<TxNo>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Box<TxNo>) {
        use std::sync::atomic::Ordering;
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
        let error = result.as_ref().err().map(|(e, m)| {
            use rdkafka::Message;
            KafkaError::Delivery {
                topic: m.topic().to_string(),
                source: e.clone(),
            }
        });
        let text = error.as_ref().map(ToString::to_string);
        if let Some(e) = error {
            self.failure.lock().expect("failure lock").get_or_insert(e);
        }
        let moved = self
            .watermark
            .lock()
            .expect("watermark lock")
            .delivered(*tx, text);
        if let (Some(lsn), false) = (moved, self.transactional) {
            self.acked.send_replace(lsn);
        }
    }
}

/// Exactly-once settings of one source's producer.
#[derive(Debug, Clone)]
pub struct Transactions {
    /// The stable transactional id, `<client_id>.<source>`.
    pub id: String,
    /// The source's progress topic.
    pub progress_topic: String,
    /// A Kafka transaction gathers consecutive source transactions for at most this long
    /// before it commits. It commits sooner when the source has nothing more to hand over,
    /// so a quiet database sees one commit per source transaction (lowest latency) and a
    /// busy one a commit per interval (highest throughput).
    pub interval: Duration,
}

/// The open Kafka transaction, when exactly-once.
#[derive(Debug)]
struct Open {
    since: Instant,
}

/// The producer of one source.
pub struct SourceProducer {
    inner: Arc<ThreadedProducer<Acks>>,
    source_name: String,
    transactions: Option<Transactions>,
    open: Option<Open>,
    /// The progress topic and what every progress record carries besides its position
    /// (origin, pending snapshot); `None` until [`Self::set_progress`].
    progress: Option<(String, Progress)>,
}

impl std::fmt::Debug for SourceProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceProducer")
            .field("source_name", &self.source_name)
            .field("transactions", &self.transactions)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl SourceProducer {
    /// Creates the producer; with `transactions`, also registers its transactional id,
    /// which fences any earlier producer with the same id and settles its open transaction.
    pub async fn create(
        kafka: &KafkaConfig,
        source_name: &str,
        watermark: Arc<Mutex<Watermark>>,
        acked: watch::Sender<Lsn>,
        transactions: Option<Transactions>,
    ) -> Result<Self, KafkaError> {
        let mut client = super::client_config(kafka);
        // Bound what waits in librdkafka for a slow broker: its defaults (1 GB, 100k
        // messages) are what a backlog fills, and the byte bound does not count headers, so
        // the message bound is what holds memory (about 1 KB a record with eight headers).
        // More buys no throughput: once the queue is full, the broker is the limit.
        let mut defaults = vec![
            ("queue.buffering.max.kbytes", "16384"),
            ("queue.buffering.max.messages", "20000"),
        ];
        if transactions.is_some() {
            // A Kafka transaction holds whole source transactions, so a large one must be
            // published within this bound; raise it (up to the broker's
            // transaction.max.timeout.ms) for larger ones.
            defaults.push(("transaction.timeout.ms", "300000"));
        }
        for (key, value) in defaults {
            if !kafka.properties.contains_key(key) {
                client.set(key, value);
            }
        }
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random");
        if let Some(t) = &transactions {
            client.set("transactional.id", &t.id);
        }
        let inner: ThreadedProducer<Acks> = client
            .create_with_context(Acks {
                watermark,
                acked,
                transactional: transactions.is_some(),
                failure: Mutex::new(None),
                outstanding: std::sync::atomic::AtomicU64::new(0),
                drained: tokio::sync::Notify::new(),
            })
            .map_err(|source| KafkaError::Client {
                what: "producer",
                source,
            })?;
        let producer = Self {
            inner: Arc::new(inner),
            source_name: source_name.to_string(),
            transactions,
            open: None,
            progress: None,
        };
        if producer.transactions.is_some() {
            producer
                .blocking("initialising", |p| p.init_transactions(TRANSACTION_CALL))
                .await?;
        }
        Ok(producer)
    }

    /// Whether this producer is transactional.
    pub fn is_transactional(&self) -> bool {
        self.transactions.is_some()
    }

    /// The first delivery that failed for good, if any.
    pub fn failure(&self) -> Option<KafkaError> {
        self.inner
            .context()
            .failure
            .lock()
            .expect("failure lock")
            .take()
    }

    /// Sends one record of source transaction `tx`, to `partition` or else the one its key
    /// hashes to; waits while librdkafka's queue is full. With transactions, opens a Kafka
    /// transaction first if none is open.
    pub async fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        value: Option<&[u8]>,
        headers: OwnedHeaders,
        tx: TxNo,
    ) -> Result<(), KafkaError> {
        if self.transactions.is_some() && self.open.is_none() {
            self.inner
                .begin_transaction()
                .map_err(|e| self.transaction_error("beginning", e))?;
            self.open = Some(Open {
                since: Instant::now(),
            });
        }
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(tx))
            .key(key)
            .headers(headers);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let outstanding = &self.inner.context().outstanding;
        loop {
            outstanding.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let sent = self.inner.send(record);
            if sent.is_err() {
                outstanding.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
            match sent {
                Ok(()) => return Ok(()),
                Err((ClientError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // librdkafka's queue is full: wait for deliveries to drain it.
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    if self.transactions.is_some() {
                        return Err(self.transaction_error("producing", e));
                    }
                    return Err(KafkaError::Produce {
                        topic: topic.to_string(),
                        source: e,
                    });
                }
            }
        }
    }

    /// When the open Kafka transaction is due to commit, given when the source last handed
    /// over events: once it has gathered source transactions for the configured interval,
    /// or once the source has been quiet for [`QUIET`]. A momentarily empty channel is not
    /// quiet: under a backlog the source refills it within microseconds, and committing
    /// then would make every Kafka transaction tiny. `None` when no transaction is open.
    pub fn commit_deadline(&self, last_events: Instant) -> Option<Instant> {
        match (&self.open, &self.transactions) {
            (Some(open), Some(t)) => Some((open.since + t.interval).min(last_events + QUIET)),
            _ => None,
        }
    }

    /// Commits the open Kafka transaction with a progress record at `end` (the `end_lsn`
    /// of the last source transaction it holds). On success, `end` is the acknowledged
    /// position. A transaction the coordinator aborted is aborted here too and reported as
    /// a transient error: the pipeline restarts and the slot resends what it held.
    pub async fn commit(&mut self, end: Lsn) -> Result<(), KafkaError> {
        let Some(t) = self.transactions.clone() else {
            return Ok(());
        };
        if self.open.is_none() {
            // Nothing was published since the last commit (every source transaction was
            // skipped or had no mapped change): the position is still safe to confirm.
            self.acknowledge(end);
            return Ok(());
        }
        let (key, value) = self.progress_record(end);
        let record = BaseRecord::with_opaque_to(&t.progress_topic, Box::new(TxNo::MAX))
            .key(&key[..])
            .payload(&value[..]);
        let acks = self.inner.context();
        acks.outstanding
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Err((e, _)) = self.inner.send(record) {
            acks.outstanding
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return Err(self.transaction_error("writing the progress record", e));
        }
        // Wait for every delivery report here, woken by the last one. rust-rdkafka's commit
        // flushes first, and its flush polls in 100 ms steps while the polling thread serves
        // the reports, so every commit with a record in flight would take 100 ms more.
        self.drained(TRANSACTION_CALL).await;
        let started = Instant::now();
        let committed = self
            .blocking("committing", |p| p.commit_transaction(TRANSACTION_CALL))
            .await;
        let open = self.open.take();
        committed?;
        tracing::debug!(
            source = %self.source_name,
            %end,
            open_ms = open.map_or(0, |o| o.since.elapsed().as_millis()),
            commit_ms = started.elapsed().as_millis(),
            "committed the Kafka transaction"
        );
        self.acknowledge(end);
        Ok(())
    }

    /// Sets the progress topic and what every progress record carries besides its position.
    pub fn set_progress(&mut self, topic: String, stamp: Progress) {
        self.progress = Some((topic, stamp));
    }

    /// Whether the next progress records say an operator's snapshot is still pending.
    pub fn set_snapshot_pending(&mut self, pending: bool) {
        if let Some((_, stamp)) = self.progress.as_mut() {
            stamp.snapshot_pending = pending;
        }
    }

    fn progress_record(&self, lsn: Lsn) -> (Vec<u8>, Vec<u8>) {
        let mut progress = self
            .progress
            .as_ref()
            .map(|(_, stamp)| stamp.clone())
            .unwrap_or_default();
        progress.lsn = lsn;
        progress.reset = None;
        super::progress::record(&self.source_name, &progress)
    }

    /// Writes a progress record at `lsn`, a position Kafka holds every event up to. With
    /// transactions, in a Kafka transaction of its own (call it when none is open), waited
    /// for. Otherwise outside transactions, after the events sent before it (idempotent,
    /// one partition, in order); with `wait`, returns once the broker acknowledged it. A
    /// delivery that fails freezes the watermark like any other, and the pipeline restarts.
    pub async fn write_progress(&mut self, lsn: Lsn, wait: bool) -> Result<(), KafkaError> {
        let Some((topic, _)) = self.progress.clone() else {
            return Ok(());
        };
        let (key, value) = self.progress_record(lsn);
        let transactional = self.transactions.is_some();
        if transactional {
            if self.open.is_some() {
                return Err(KafkaError::Task {
                    what: "writing the progress record",
                    message: "a Kafka transaction is open".into(),
                });
            }
            self.inner
                .begin_transaction()
                .map_err(|e| self.transaction_error("beginning", e))?;
        }
        let record = BaseRecord::with_opaque_to(&topic, Box::new(TxNo::MAX))
            .key(&key[..])
            .payload(&value[..]);
        let acks = self.inner.context();
        acks.outstanding
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Err((e, _)) = self.inner.send(record) {
            acks.outstanding
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            if transactional {
                let _ = self
                    .blocking("aborting", |p| p.abort_transaction(TRANSACTION_CALL))
                    .await;
                return Err(self.transaction_error("writing the progress record", e));
            }
            return Err(KafkaError::Produce { topic, source: e });
        }
        if transactional {
            self.drained(TRANSACTION_CALL).await;
            return self
                .blocking("committing", |p| p.commit_transaction(TRANSACTION_CALL))
                .await;
        }
        if wait {
            self.drained(TRANSACTION_CALL).await;
            let failed = acks.failure.lock().expect("failure lock").is_some();
            if failed {
                return Err(self.failure().expect("checked"));
            }
        }
        Ok(())
    }

    /// Aborts the open Kafka transaction, if any: nothing it held becomes visible to
    /// read_committed consumers, and the slot, not confirmed past it, resends it.
    pub async fn abort(&mut self) -> Result<(), KafkaError> {
        if self.open.take().is_none() {
            return Ok(());
        }
        self.blocking("aborting", |p| p.abort_transaction(TRANSACTION_CALL))
            .await
    }

    /// Waits until every record sent is acknowledged (at-least-once), within `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush(timeout))
            .await
            .map_err(|join| KafkaError::Task {
                what: "flushing the producer",
                message: join.to_string(),
            })?
            .map_err(|source| KafkaError::Delivery {
                topic: "(flush)".into(),
                source,
            })
    }

    /// Waits until every record handed to librdkafka has its delivery report, or `timeout`.
    async fn drained(&self, timeout: Duration) {
        let acks = self.inner.context();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let woken = acks.drained.notified();
            if acks.outstanding.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return;
            }
        }
    }

    /// A position Kafka holds for sure: with transactions, only a commit gets here.
    pub fn acknowledge(&self, end: Lsn) {
        let acked = &self.inner.context().acked;
        if end > *acked.borrow() {
            acked.send_replace(end);
        }
    }

    /// How many partitions `topic` has now, from the cluster's metadata.
    pub async fn partitions(&self, topic: &str) -> Result<i32, KafkaError> {
        let inner = self.inner.clone();
        let name = topic.to_string();
        let counted = tokio::task::spawn_blocking(move || {
            let metadata = inner
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(10))?;
            Ok::<_, ClientError>(
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == name)
                    .map_or(0, |t| t.partitions().len() as i32),
            )
        })
        .await
        .map_err(|join| KafkaError::Task {
            what: "reading the topic's partitions",
            message: join.to_string(),
        })?;
        match counted {
            Ok(n) if n > 0 => Ok(n),
            Ok(_) => Err(KafkaError::Topic {
                topic: topic.to_string(),
                source: ClientError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition),
            }),
            Err(source) => Err(KafkaError::Topic {
                topic: topic.to_string(),
                source,
            }),
        }
    }

    /// Runs a blocking transaction call off the async runtime.
    async fn blocking(
        &self,
        operation: &'static str,
        call: impl FnOnce(&ThreadedProducer<Acks>) -> Result<(), ClientError> + Send + 'static,
    ) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || call(&inner)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let error = self.transaction_error(operation, e);
                if let KafkaError::Transaction {
                    source: ClientError::Transaction(t),
                    ..
                } = &error
                {
                    if t.txn_requires_abort() {
                        // Leave the producer usable for the next attempt.
                        let inner = self.inner.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            inner.abort_transaction(TRANSACTION_CALL)
                        })
                        .await;
                    }
                }
                Err(error)
            }
            Err(join) => Err(KafkaError::Task {
                what: operation,
                message: join.to_string(),
            }),
        }
    }

    /// Names a fenced producer as such; everything else keeps librdkafka's classification.
    fn transaction_error(&self, operation: &'static str, source: ClientError) -> KafkaError {
        let fenced = |code: RDKafkaErrorCode| {
            matches!(
                code,
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        };
        let fatal = self.inner.client().fatal_error().map(|(code, _)| code);
        if source.rdkafka_error_code().is_some_and(fenced) || fatal.is_some_and(fenced) {
            return KafkaError::Fenced {
                source_name: self.source_name.clone(),
                transactional_id: self
                    .transactions
                    .as_ref()
                    .map(|t| t.id.clone())
                    .unwrap_or_default(),
            };
        }
        KafkaError::Transaction {
            source_name: self.source_name.clone(),
            operation,
            source,
        }
    }
}
