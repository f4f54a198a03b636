//! The sink runner: a consumer group → decode by registry id → batch → connector → commit.
//!
//! # Guarantees
//! - **Offsets follow durability.** A batch's positions are written by the connector with
//!   its rows (same transaction, or same script), and committed to Kafka only after `apply`
//!   returned `Ok`. A crash in between redelivers the batch, which the connector absorbs:
//!   every change carries its source `(lsn, seq)` from the record's headers, and replicas
//!   apply a change only over an older version.
//! - **The replica's positions decide where reading resumes.** On every assignment each
//!   partition is read from the position stored in the replica, or from the topic's start
//!   when the replica holds none (a new replica, or a cache that lost its data). Kafka's
//!   committed offsets are kept for lag monitoring.
//! - **Rebalances.** Every applied batch is committed at once, so a revocation finds nothing
//!   done and uncommitted; the batch being gathered is dropped, and whoever is assigned the
//!   partitions next reads them again from the replica's positions. A batch is never
//!   applied by two members at once, because a member applies only between polls.
//! - **Order per key, keys in parallel.** A key's events share a partition and are read in
//!   order; a batch keeps each key's latest version, and is split by key hash over
//!   `parallelism` connections (lanes) that write concurrently. The positions are written
//!   once every lane's write is durable.
//! - **Store outages.** A transient store error is retried with backoff, after re-reading
//!   the replica's positions and rewinding to them; nothing is skipped.
//! - **Nothing is skipped silently.** A record that cannot be decoded, or that the store
//!   rejects on its own, follows `on_error`: `stop` names its topic, partition and offset;
//!   `dead_letter` sends it to the dead-letter topic with the error in its headers, waits
//!   for the broker's acknowledgement, and goes on.
//!
//! Records are decoded with the writer's schema (by the id in their framing) resolved to the
//! latest registered version of the same subject, so every registered version of a contract
//! decodes into one view, with defaults for fields the writer did not have.
//!
//! The consumer is librdkafka's `BaseConsumer`, polled on a blocking thread of its own. Its
//! rebalance callback runs inside `poll`, on that thread, so the runner sees assignments
//! and revocations in order with the records around them: positions are re-read from the
//! replica and the partitions rewound before any record of a new assignment is gathered,
//! and a revocation drops the batch being gathered before the next poll. Connector calls
//! are run on the async runtime from that thread.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connectors::{Batch, Connector, Position, Sink};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

use crate::config::{Config, OnError, SinkConfig, StoreVisitor};
use crate::registry::client::Client;
use crate::retry::Backoff;

mod dead_letter;
mod decode;

use dead_letter::DeadLetter;
use decode::{DecodeError, Decoder};

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {topic} partition {partition} offset {offset}: {reason}; the record was not applied and its offset not committed (on_error = \"dead_letter\" sends such records to a dead-letter topic instead)")]
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
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SinkError> {
    let kind = &config.sinks[index].kind;
    kind.visit(RunStore {
        config: config.clone(),
        index,
        registry,
        shutdown: Box::pin(shutdown),
    })
    .await
}

/// Runs a sink with its connector type.
struct RunStore {
    config: Arc<Config>,
    index: usize,
    registry: Arc<Client>,
    shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl StoreVisitor for RunStore {
    type Output = std::pin::Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

    fn visit<C: Connector>(self, store: &C::Config) -> Self::Output {
        let store = store.clone();
        Box::pin(async move {
            let sink = &self.config.sinks[self.index];
            let (url, consumer) = (sink.resolved_url.clone(), sink.common.group_id());
            let lanes = C::lanes(sink.common.parallelism);
            drive(
                &self.config,
                self.index,
                self.registry,
                self.shutdown,
                lanes,
                move || {
                    let (store, url, consumer) = (store.clone(), url.clone(), consumer.clone());
                    async move { C::connect(&store, &url, &consumer).await }
                },
            )
            .await
        })
    }
}

/// Connects the store (retrying while it is unreachable), then runs the consumer loop on a
/// blocking thread until `shutdown`.
async fn drive<S, F, Fut>(
    config: &Arc<Config>,
    index: usize,
    registry: Arc<Client>,
    shutdown: impl Future<Output = ()> + Send,
    parallelism: usize,
    connect: F,
) -> Result<(), SinkError>
where
    S: Sink + Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, connectors::Error>>,
{
    let sink_config: &SinkConfig = &config.sinks[index];
    let name = sink_config.name().to_string();
    let kafka_error = |message: String| SinkError::Kafka {
        sink: name.clone(),
        message,
    };
    tokio::pin!(shutdown);
    let mut backoff = backoff();
    let mut lanes = Vec::with_capacity(parallelism);
    while lanes.len() < parallelism {
        match connect().await {
            Ok(sink) => lanes.push(sink),
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(sink = %name, error = %e, "store unreachable; retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut shutdown => return Ok(()),
                }
            }
            Err(source) => {
                return Err(SinkError::Store {
                    sink: name.clone(),
                    source,
                })
            }
        }
    }
    let dead_letter = match sink_config.common.on_error {
        OnError::Stop => None,
        OnError::DeadLetter => Some(
            DeadLetter::new(config, sink_config)
                .await
                .map_err(|e| kafka_error(format!("dead-letter topic: {e}")))?,
        ),
    };
    let context = Assignments::default();
    let positions = context.positions.clone();
    let revoked = context.revoked.clone();
    let assigned = context.assigned.clone();
    let mut client_config = crate::kafka::client_config(&config.kafka);
    if !config.kafka.properties.contains_key("session.timeout.ms") {
        // A member that died (kill -9) holds its partitions until this runs out; librdkafka's
        // 45 s default would stall the replica that long after a crash-restart.
        client_config.set("session.timeout.ms", "10000");
    }
    let consumer: BaseConsumer<Assignments> = client_config
        .set("group.id", sink_config.common.group_id())
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Only what committed Kafka transactions hold (exactly_once sources); records of
        // aborted ones are never applied. librdkafka's default, stated because it matters.
        .set("isolation.level", "read_committed")
        .create_with_context(context)
        .map_err(|e| kafka_error(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Handle::current();
    let runner = Runner {
        name: name.clone(),
        consumer,
        lanes,
        decoder: Decoder::new(registry, runtime.clone()),
        dead_letter,
        topics: sink_config.common.topics.clone(),
        max_records: sink_config.common.batch_max_records,
        max_wait: Duration::from_millis(sink_config.common.batch_max_wait_ms),
        positions,
        revoked,
        assigned,
        stop: stop.clone(),
        runtime,
    };
    let mut task = tokio::task::spawn_blocking(move || runner.run());
    tokio::select! {
        result = &mut task => return result.map_err(|e| kafka_error(e.to_string()))?,
        _ = &mut shutdown => stop.store(true, Ordering::Relaxed),
    }
    task.await.map_err(|e| kafka_error(e.to_string()))?
}

type PositionMap = Arc<Mutex<HashMap<(String, i32), i64>>>;

/// The consumer's context: on every assignment, starts each partition at the replica's
/// stored position as last read (or the topic's start), and tells the runner to read the
/// positions again (another member may have moved them since); on revocation, tells the
/// runner to drop the batch it is gathering.
#[derive(Default)]
struct Assignments {
    positions: PositionMap,
    revoked: Arc<AtomicBool>,
    assigned: Arc<AtomicBool>,
}

impl ClientContext for Assignments {}

impl ConsumerContext for Assignments {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        let outcome = match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = self.positions.lock().expect("positions lock");
                for elem in tpl.clone().elements() {
                    let offset = stored
                        .get(&(elem.topic().to_string(), elem.partition()))
                        .map_or(Offset::Beginning, |n| Offset::Offset(*n));
                    let _ = tpl.set_partition_offset(elem.topic(), elem.partition(), offset);
                }
                drop(stored);
                if tpl.count() > 0 {
                    self.assigned.store(true, Ordering::SeqCst);
                }
                tracing::info!(assigned = ?tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition(), e.offset())).collect::<Vec<_>>(), "partitions assigned");
                consumer.assign(tpl)
            }
            _ => {
                self.revoked.store(true, Ordering::SeqCst);
                tracing::info!("partitions revoked");
                consumer.unassign()
            }
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, "applying a rebalance failed");
        }
    }
}

/// How often an idle sink checks that its store still holds what was applied.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// The sink's backoff: from 100 ms to 10 s, per [`crate::retry`].
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
}

/// What became of a batch.
enum Applied {
    Durable,
    /// The store failed; reading goes on from the replica's positions.
    Rewound,
    Stopped,
}

/// Where one change of the batch came from.
struct Origin {
    topic: String,
    partition: i32,
    offset: i64,
}

/// The batch being gathered.
#[derive(Default)]
struct Gathering {
    batch: Batch,
    origins: Vec<Origin>,
    /// The record of each change, kept for the dead-letter topic.
    raws: Vec<dead_letter::Raw>,
    next: HashMap<(String, i32), i64>,
}

struct Runner<S> {
    name: String,
    consumer: BaseConsumer<Assignments>,
    /// One connection per lane; the first also writes the positions.
    lanes: Vec<S>,
    decoder: Decoder,
    dead_letter: Option<DeadLetter>,
    topics: Vec<String>,
    max_records: usize,
    max_wait: Duration,
    positions: PositionMap,
    revoked: Arc<AtomicBool>,
    assigned: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
}

impl<S: Sink> Runner<S> {
    fn store_error(&self, source: connectors::Error) -> SinkError {
        SinkError::Store {
            sink: self.name.clone(),
            source,
        }
    }

    fn kafka_error(&self, message: String) -> SinkError {
        SinkError::Kafka {
            sink: self.name.clone(),
            message,
        }
    }

    /// Reads the replica's positions into the map assignments start from, retrying while
    /// the store is unreachable. `false` if stopped meanwhile.
    async fn load_positions(&mut self) -> Result<bool, SinkError> {
        let mut backoff = backoff();
        loop {
            match self.lanes[0].positions().await {
                Ok(stored) => {
                    let mut map = self.positions.lock().expect("positions lock");
                    map.clear();
                    map.extend(
                        stored
                            .into_iter()
                            .map(|p| ((p.topic, p.partition), p.next_offset)),
                    );
                    return Ok(true);
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = %self.name, error = %e, "reading the replica's positions failed; retrying in {delay:?}");
                    if !self.pause(delay) {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(self.store_error(e)),
            }
        }
    }

    /// Sleeps `wait` unless stopped; `false` if stopped.
    fn pause(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50).min(wait));
        }
        !self.stop.load(Ordering::Relaxed)
    }

    /// Waits until every topic exists (a topic appears when its source first publishes; one
    /// subscribed to before that would only be seen at librdkafka's next metadata refresh),
    /// then subscribes. `false` if stopped meanwhile.
    fn subscribe(&self) -> Result<bool, SinkError> {
        let mut waiting_logged = false;
        for topic in &self.topics {
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                // Every topic's metadata, never one topic's: asking for a missing topic by
                // name lets a broker with auto.create.topics.enable create it, with the
                // broker's partition count instead of the one its source configures.
                let metadata = self
                    .consumer
                    .fetch_metadata(None, Duration::from_secs(10))
                    .map_err(|e| self.kafka_error(e.to_string()))?;
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
        self.consumer
            .subscribe(&topics)
            .map_err(|e| self.kafka_error(e.to_string()))?;
        tracing::info!(sink = %self.name, topics = ?topics, "sink consuming");
        Ok(true)
    }

    fn run(mut self) -> Result<(), SinkError> {
        let runtime = self.runtime.clone();
        if !runtime.block_on(self.load_positions())? || !self.subscribe()? {
            return Ok(());
        }
        let mut last_check = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let Some(gathered) = self.gather()? else {
                if last_check.elapsed() >= IDLE_CHECK {
                    last_check = Instant::now();
                    if !self.verify()? {
                        return Ok(());
                    }
                }
                continue;
            };
            match self.apply(gathered)? {
                Applied::Durable => {}
                Applied::Rewound => continue,
                Applied::Stopped => return Ok(()),
            }
            // Durable: now the Kafka offsets may move too.
            if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
                // The replica holds the positions; a failed commit only delays lag metrics.
                tracing::warn!(sink = %self.name, error = %e, "committing offsets to Kafka failed; the replica's positions stay authoritative");
            }
        }
        Ok(())
    }

    /// Polls until the batch is full or its time is up. `None` if nothing arrived, or a
    /// revocation dropped what had.
    fn gather(&mut self) -> Result<Option<Gathering>, SinkError> {
        let mut g = Gathering::default();
        let deadline = Instant::now() + self.max_wait;
        while g.batch.changes.len() < self.max_records && Instant::now() < deadline {
            let polled = self.consumer.poll(Duration::from_millis(20));
            if self.revoked.swap(false, Ordering::SeqCst) {
                // Not applied, not committed: the next owner reads it again.
                g = Gathering::default();
            }
            if self.assigned.swap(false, Ordering::SeqCst) {
                // Start where the replica stands now, not where it stood when last read.
                g = Gathering::default();
                if !self.rewind()? {
                    return Ok(None);
                }
                continue;
            }
            let Some(message) = polled else {
                if g.next.is_empty() && self.stop.load(Ordering::Relaxed) {
                    return Ok(None);
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
                Err(e) => return Err(self.kafka_error(e.to_string())),
            };
            g.next.insert(
                (message.topic().to_string(), message.partition()),
                message.offset() + 1,
            );
            let mut backoff = backoff();
            let decoded = loop {
                match self.decoder.change(&message) {
                    Err(DecodeError::Unavailable(e)) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(sink = %self.name, error = %e, "schema registry unavailable; retrying in {delay:?}");
                        if !self.pause(delay) {
                            return Ok(None);
                        }
                    }
                    other => break other,
                }
            };
            match decoded {
                Ok(None) => {}
                Ok(Some(change)) => {
                    g.batch.changes.push(change);
                    g.origins.push(Origin {
                        topic: message.topic().to_string(),
                        partition: message.partition(),
                        offset: message.offset(),
                    });
                    if self.dead_letter.is_some() {
                        g.raws.push(dead_letter::Raw::of(&message));
                    }
                }
                Err(DecodeError::Poison(reason)) => self.poison(&message, "decode", reason)?,
                Err(DecodeError::Unavailable(_)) => unreachable!("retried above"),
            }
        }
        if g.next.is_empty() {
            return Ok(None);
        }
        g.batch.positions = g
            .next
            .iter()
            .map(|((topic, partition), offset)| Position {
                topic: topic.clone(),
                partition: *partition,
                next_offset: *offset,
            })
            .collect();
        Ok(Some(g))
    }

    /// A record that cannot be decoded: stop, or dead-letter it and go on.
    fn poison(
        &self,
        message: &BorrowedMessage<'_>,
        stage: &str,
        reason: String,
    ) -> Result<(), SinkError> {
        let raw = dead_letter::Raw::of(message);
        let origin = Origin {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
        };
        self.reject(&origin, &raw, stage, reason)
    }

    fn reject(
        &self,
        origin: &Origin,
        raw: &dead_letter::Raw,
        stage: &str,
        reason: String,
    ) -> Result<(), SinkError> {
        let Some(dlq) = &self.dead_letter else {
            return Err(SinkError::Poison {
                sink: self.name.clone(),
                topic: origin.topic.clone(),
                partition: origin.partition,
                offset: origin.offset,
                reason,
            });
        };
        tracing::warn!(sink = %self.name, topic = %origin.topic, partition = origin.partition, offset = origin.offset, %reason, "sending the record to the dead-letter topic {}", dlq.topic());
        let sent = self.runtime.block_on(dlq.send(
            &self.name,
            &origin.topic,
            origin.partition,
            origin.offset,
            stage,
            &reason,
            raw,
        ));
        sent.map_err(|e| {
            self.kafka_error(format!(
                "sending {} partition {} offset {} to the dead-letter topic {} failed: {e}; nothing was skipped",
                origin.topic,
                origin.partition,
                origin.offset,
                dlq.topic()
            ))
        })
    }

    /// Applies a gathered batch until it is durable, or rewinds after a store outage.
    fn apply(&mut self, mut g: Gathering) -> Result<Applied, SinkError> {
        let mut backoff = backoff();
        let views = self.decoder.take_new_views();
        for fields in &views {
            for lane in 0..self.lanes.len() {
                let prepared = self.runtime.block_on(self.lanes[lane].prepare(fields));
                match prepared {
                    Ok(()) => {}
                    Err(e) if e.is_transient() => {
                        tracing::warn!(sink = %self.name, error = %e, "store unavailable while preparing the replica table; rewinding");
                        // The views are seen again when their records are read again.
                        self.decoder.forget_views();
                        return self.back_off_and_rewind(&mut backoff);
                    }
                    Err(e) => return Err(self.store_error(e)),
                }
            }
        }
        loop {
            let result = self.runtime.block_on(apply_over(&mut self.lanes, &g.batch));
            match result {
                Ok(()) => {
                    let mut map = self.positions.lock().expect("positions lock");
                    for p in &g.batch.positions {
                        map.insert((p.topic.clone(), p.partition), p.next_offset);
                    }
                    return Ok(Applied::Durable);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(sink = %self.name, error = %e, "store unavailable; rewinding to the replica's positions and retrying");
                    return self.back_off_and_rewind(&mut backoff);
                }
                Err(e) if e.is_poison() => {
                    g = self.isolate(g)?;
                }
                Err(e) => return Err(self.store_error(e)),
            }
        }
    }

    /// Waits the backoff, then rewinds: what the store holds decides where to read again
    /// (a store restarted without its data, a cache, replays from the start).
    fn back_off_and_rewind(&mut self, backoff: &mut Backoff) -> Result<Applied, SinkError> {
        if !self.pause(backoff.next_delay()) {
            return Ok(Applied::Stopped);
        }
        Ok(if self.rewind()? {
            Applied::Rewound
        } else {
            Applied::Stopped
        })
    }

    /// Finds the changes of a failed batch the store rejects on their own, by applying the
    /// changes one at a time; rejects those and returns the rest, with the positions.
    fn isolate(&mut self, g: Gathering) -> Result<Gathering, SinkError> {
        let Gathering {
            batch,
            origins,
            raws,
            next,
        } = g;
        let mut kept = Gathering {
            next,
            ..Gathering::default()
        };
        let raws: Vec<Option<dead_letter::Raw>> = if raws.is_empty() {
            origins.iter().map(|_| None).collect()
        } else {
            raws.into_iter().map(Some).collect()
        };
        for ((change, origin), raw) in batch.changes.into_iter().zip(origins).zip(raws) {
            let alone = Batch {
                changes: vec![change.clone()],
                positions: vec![],
            };
            match self.runtime.block_on(self.lanes[0].apply(&alone)) {
                Err(e) if e.is_poison() => {
                    let raw = raw.unwrap_or_default();
                    self.reject(&origin, &raw, "apply", walcast_text::describe(&e))?;
                }
                // Transient or setup errors surface again when the rest is applied.
                _ => {
                    kept.batch.changes.push(change);
                    kept.origins.push(origin);
                    if let Some(raw) = raw {
                        kept.raws.push(raw);
                    }
                }
            }
        }
        kept.batch.positions = batch.positions;
        Ok(kept)
    }

    /// While idle, checks that the store still holds the positions applied: a cache that
    /// restarted empty, or a database restored from an older backup, is caught up again
    /// from where it now stands. `false` if stopped meanwhile.
    fn verify(&mut self) -> Result<bool, SinkError> {
        let runtime = self.runtime.clone();
        match runtime.block_on(self.lanes[0].positions()) {
            Ok(stored) => {
                let stored: HashMap<(String, i32), i64> = stored
                    .into_iter()
                    .map(|p| ((p.topic, p.partition), p.next_offset))
                    .collect();
                let behind = {
                    let applied = self.positions.lock().expect("positions lock");
                    applied
                        .iter()
                        .any(|(k, v)| stored.get(k).is_none_or(|s| s < v))
                };
                if !behind {
                    return Ok(true);
                }
                tracing::warn!(sink = %self.name, "the store holds older positions than were applied (it lost data, or was restored); rewinding to them");
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(sink = %self.name, error = %e, "store unavailable; rewinding to the replica's positions");
            }
            Err(e) => return Err(self.store_error(e)),
        }
        self.rewind()
    }

    /// Re-reads the replica's positions and seeks every assigned partition to them.
    fn rewind(&mut self) -> Result<bool, SinkError> {
        let runtime = self.runtime.clone();
        if !runtime.block_on(self.load_positions())? {
            return Ok(false);
        }
        let assignment = self
            .consumer
            .assignment()
            .map_err(|e| self.kafka_error(e.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        {
            let stored = self.positions.lock().expect("positions lock");
            for elem in assignment.elements() {
                let offset = stored
                    .get(&(elem.topic().to_string(), elem.partition()))
                    .map_or(Offset::Beginning, |n| Offset::Offset(*n));
                let _ = tpl.add_partition_offset(elem.topic(), elem.partition(), offset);
            }
        }
        if tpl.count() > 0 {
            let sought = self
                .consumer
                .seek_partitions(tpl, Duration::from_secs(10))
                .map_err(|e| self.kafka_error(format!("rewinding: {e}")))?;
            for elem in sought.elements() {
                if let Err(e) = elem.error() {
                    return Err(self.kafka_error(format!(
                        "rewinding {} partition {} to {:?}: {e}",
                        elem.topic(),
                        elem.partition(),
                        elem.offset()
                    )));
                }
            }
            tracing::info!(sink = %self.name, positions = ?sought.elements().iter().map(|e| (e.topic().to_string(), e.partition(), e.offset())).collect::<Vec<_>>(), "rewound");
        }
        Ok(true)
    }
}

/// Applies `batch` over the lanes: each key's changes go to the lane its hash picks, so they
/// stay in order on one connection; lanes write concurrently; the positions are written
/// last, through the first lane, once every lane's write is durable. A crash in between
/// leaves older positions beside newer rows: the redelivery that follows is absorbed by the
/// versions. With one lane, rows and positions share one transaction.
pub async fn apply_over<S: Sink>(lanes: &mut [S], batch: &Batch) -> Result<(), connectors::Error> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    if lanes.len() == 1 {
        return lanes[0].apply(batch).await;
    }
    let mut parts: Vec<Batch> = lanes.iter().map(|_| Batch::default()).collect();
    for change in &batch.changes {
        let mut hasher = DefaultHasher::new();
        format!("{:?}", change.key).hash(&mut hasher);
        let lane = (hasher.finish() % lanes.len() as u64) as usize;
        parts[lane].changes.push(change.clone());
    }
    let writes = lanes
        .iter_mut()
        .zip(&parts)
        .filter(|(_, part)| !part.changes.is_empty())
        .map(|(lane, part)| lane.apply(part))
        .collect();
    for result in join_all(writes).await {
        result?;
    }
    if batch.positions.is_empty() {
        return Ok(());
    }
    let positions = Batch {
        changes: Vec::new(),
        positions: batch.positions.clone(),
    };
    lanes[0].apply(&positions).await
}

/// Runs `futures` concurrently on the current task; their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
