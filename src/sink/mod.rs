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
//! Records are decoded in the writer's schema (by the id in their framing), which must be a
//! registered version of the topic's subject, and projected onto the latest version of that
//! subject: every registered version of a contract decodes into one view, with the values
//! as written and defaults for fields the writer did not have.
//!
//! # Layout
//! - `mod.rs`: [`run`], [`SinkError`], and the wiring: the store's lanes connected (retrying
//!   while unreachable), the dead-letter topic, the consumer, the runner on a blocking
//!   thread under the daemon's [`Shutdown`].
//! - `consumer`: the Kafka consumer, its rebalance context, waiting for topics, seeking and
//!   committing.
//! - `runner`: gather → decode → apply → positions, poison isolation, rewinds after store
//!   outages, verification while idle. It reads records, decodes them and dead-letters
//!   them through small traits, so its specs run against an in-memory replica.
//! - `lanes`: one batch over `parallelism` connections ([`apply_over`]).
//! - `decode`: records → changes (registry, Avro, walcast's headers).
//! - `dead_letter`: the dead-letter topic of `on_error = "dead_letter"`.
//!
//! The consumer is librdkafka's `BaseConsumer`, polled on a blocking thread of its own. Its
//! rebalance callback runs inside `poll`, on that thread, so the runner sees assignments
//! and revocations as events in order with the records around them: positions are re-read
//! from the replica and the partitions rewound before any record of a new assignment is
//! gathered, and a revocation drops the batch being gathered before the next record.
//! Connector calls are run on the async runtime from that thread, and every wait on that
//! thread is a wait on the [`Shutdown`], so a stop wakes it at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use connectors::{Connector, Sink};

use crate::config::{Config, OnError, SinkConfig, StoreVisitor};
use crate::parts::PartHandle;
use crate::registry::client::Client;
use crate::retry::Backoff;
use crate::shutdown::Shutdown;

mod consumer;
pub mod contracts;
mod dead_letter;
mod decode;
mod fields;
mod lanes;
mod runner;

pub use lanes::apply_over;

use consumer::Consumer;
use dead_letter::DeadLetter;
use decode::Decoder;
use runner::{DeadLetters, Positions, Runner, Settings, Stop};

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A record that cannot be decoded or that the store rejects, under `on_error = "stop"`.
    #[error("sink {sink}: {topic} partition {partition} offset {offset}: {reason}; the record was not applied and its offset not committed (on_error = \"dead_letter\" sends such records to a dead-letter topic instead)")]
    Poison {
        /// The sink.
        sink: String,
        /// The record's topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Why it was refused.
        reason: String,
    },
    /// The store failed for good (a missing table, a refused login).
    #[error("sink {sink}: {source}")]
    Store {
        /// The sink.
        sink: String,
        /// The connector's error.
        source: connectors::Error,
    },
    /// The sink's settings do not fit its topics or store.
    #[error("sink {sink}: {message}")]
    Setup {
        /// The sink.
        sink: String,
        /// What does not fit, and how to fix it.
        message: String,
    },
    /// Kafka refused the sink's connection for good (a wrong CA or password): the error
    /// names the brokers and the key to fix.
    #[error("sink {sink}: {source}")]
    Connect {
        /// The sink.
        sink: String,
        /// Why the connection was refused.
        source: Box<crate::kafka::KafkaError>,
    },
    /// Consuming, committing or dead-lettering failed for good.
    #[error("sink {sink}: kafka: {message}")]
    Kafka {
        /// The sink.
        sink: String,
        /// What failed.
        message: String,
    },
}

/// Runs the config's `sinks[index]` until `shutdown` or a permanent error.
pub async fn run(
    config: Arc<Config>,
    index: usize,
    registry: Arc<Client>,
    shutdown: Shutdown,
    part: PartHandle,
) -> Result<(), SinkError> {
    let kind = &config.sinks[index].kind;
    kind.visit(RunStore {
        config: config.clone(),
        index,
        registry,
        shutdown,
        part,
    })
    .await
}

/// Runs a sink with its connector type.
struct RunStore {
    config: Arc<Config>,
    index: usize,
    registry: Arc<Client>,
    shutdown: Shutdown,
    part: PartHandle,
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
                self.part,
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

/// Connects the store (retrying while it is unreachable), then runs the runner on a
/// blocking thread until `shutdown`.
async fn drive<S, F, Fut>(
    config: &Arc<Config>,
    index: usize,
    registry: Arc<Client>,
    mut shutdown: Shutdown,
    part: PartHandle,
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
    let mut backoff = backoff();
    // A wrong CA or password stops the sink here, with the key to fix, instead of librdkafka
    // reconnecting forever; a cluster that is only unreachable is waited for.
    loop {
        use crate::kafka::security::{connect_async, CONNECT_TIMEOUT};
        match connect_async(&config.kafka, CONNECT_TIMEOUT).await {
            Ok(_) => break,
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(sink = %name, error = %e, "Kafka unreachable; retrying in {delay:?}");
                part.waiting(format_args!(
                    "Kafka unreachable: {e}; retrying in {delay:?}"
                ));
                if shutdown.wait_timeout(delay).await {
                    return Ok(());
                }
            }
            Err(source) => {
                return Err(SinkError::Connect {
                    sink: name.clone(),
                    source: Box::new(source),
                })
            }
        }
    }
    backoff.reset();
    // The fields the sink names, against the contracts registered for its topics; topics
    // with none yet are checked at their first record.
    let mut unchecked = Vec::new();
    for topic in &sink_config.common.topics {
        loop {
            match fields::check(&registry, sink_config, topic).await {
                Ok(true) => break,
                Ok(false) => {
                    unchecked.push(topic.clone());
                    break;
                }
                Err(fields::CheckError::Unknown(message)) => {
                    return Err(SinkError::Setup {
                        sink: name.clone(),
                        message,
                    })
                }
                Err(fields::CheckError::Registry(e)) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = %name, error = %e, "schema registry unavailable; retrying in {delay:?}");
                    if shutdown.wait_timeout(delay).await {
                        return Ok(());
                    }
                }
                Err(fields::CheckError::Registry(e)) => {
                    return Err(SinkError::Setup {
                        sink: name.clone(),
                        message: format!("reading the contracts of topic {topic}: {e}"),
                    })
                }
            }
        }
    }
    backoff.reset();
    let mut lanes = Vec::with_capacity(parallelism);
    while lanes.len() < parallelism {
        match connect().await {
            Ok(sink) => lanes.push(sink),
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(sink = %name, error = %e, "store unreachable; retrying in {delay:?}");
                part.waiting(format_args!(
                    "store unreachable: {e}; retrying in {delay:?}"
                ));
                if shutdown.wait_timeout(delay).await {
                    return Ok(());
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
    let dead_letter: Option<Box<dyn DeadLetters>> = match sink_config.common.on_error {
        OnError::Stop => None,
        OnError::DeadLetter => Some(Box::new(
            DeadLetter::new(config, sink_config)
                .await
                .map_err(|e| kafka_error(format!("dead-letter topic: {e}")))?,
        )),
    };
    let positions = Positions::default();
    let consumer = Consumer::new(config, sink_config, positions.clone())
        .map_err(|e| kafka_error(e.to_string()))?;
    let runtime = tokio::runtime::Handle::current();
    let runner = Runner {
        settings: Settings {
            name: name.clone(),
            topics: sink_config.common.topics.clone(),
            max_records: sink_config.common.batch_max_records,
            max_wait: Duration::from_millis(sink_config.common.batch_max_wait_ms),
            idle_check: IDLE_CHECK,
            backoff: self::backoff,
            part,
        },
        records: Arc::new(consumer),
        decoder: {
            let mut decoder = Decoder::new(registry, runtime.clone());
            decoder.check_later(decode::Unchecked {
                config: config.clone(),
                index,
                topics: unchecked,
            });
            decoder
        },
        lanes,
        dead_letter,
        positions,
        stop: Stop::new(shutdown, runtime.clone()),
        runtime,
    };
    tokio::task::spawn_blocking(move || runner.run())
        .await
        .map_err(|e| kafka_error(e.to_string()))?
}

/// How often an idle sink checks that its store still holds what was applied.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// The sink's backoff: from 100 ms to 10 s, per [`crate::retry`].
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
}
