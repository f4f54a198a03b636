//! The Kafka side of a sink: its consumer in the sink's group, as the runner's [`Records`].
//!
//! # Guarantees
//! - **Reading starts at the replica's positions.** Every assignment starts each partition
//!   at the position the runner last knew ([`Positions`]), or at the topic's start; the
//!   runner then re-reads the replica's positions and [`Records::seek`]s to them before it
//!   gathers any record of the assignment.
//! - **Rebalances arrive in order with the records.** The consumer is librdkafka's
//!   `BaseConsumer`, polled on the runner's blocking thread; its rebalance callback runs
//!   inside `poll`, on that thread, and queues a [`Rebalance`] that the next [`Records::poll`]
//!   returns before any further record. A poll that served a rebalance returns no record
//!   (rdkafka returns from `poll` after a rebalance event), so no record is ever delivered
//!   ahead of the rebalance that preceded it.
//! - **Only committed transactions** are read (`isolation.level = read_committed`), and
//!   offsets are committed only when the runner says so (no auto-commit).
//! - **No topic is created by subscribing**: the consumer waits for every topic to exist
//!   (asking for the metadata of all topics, never one by name), then subscribes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::ClientContext;

use super::runner::{Polled, Positions, Rebalance, Records, Stop};
use crate::config::{Config, SinkConfig};

/// How often librdkafka reports statistics, the source of `walcast_sink_lag_records`.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// How long to wait before asking the broker again for a topic that does not exist yet.
const TOPIC_WAIT: Duration = Duration::from_millis(200);

/// A sink's consumer: see the module docs.
pub(super) struct Consumer {
    sink: String,
    consumer: BaseConsumer<Rebalances>,
    /// What the rebalance callback queued, oldest first.
    rebalances: Arc<Mutex<VecDeque<Rebalance>>>,
}

impl Consumer {
    /// A consumer in the sink's group, not subscribed yet; its assignments start at
    /// `positions`.
    pub(super) fn new(
        config: &Config,
        sink: &SinkConfig,
        positions: Positions,
    ) -> Result<Self, KafkaError> {
        let rebalances = Arc::new(Mutex::new(VecDeque::new()));
        let context = Rebalances {
            sink: sink.name().to_string(),
            positions,
            queue: rebalances.clone(),
        };
        let mut client_config = crate::kafka::client_config(&config.kafka);
        if !config.kafka.properties.contains_key("session.timeout.ms") {
            // A member that died (kill -9) holds its partitions until this runs out;
            // librdkafka's 45 s default would stall the replica that long after a
            // crash-restart.
            client_config.set("session.timeout.ms", "10000");
        }
        if !config
            .kafka
            .properties
            .contains_key("statistics.interval.ms")
        {
            // librdkafka's statistics carry each partition's lag: walcast_sink_lag_records.
            client_config.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        }
        let consumer = client_config
            .set("group.id", sink.common.group_id())
            .set("enable.auto.commit", "false")
            // Every partition is assigned at an explicit position (the replica's, or the
            // log's start). One that is out of range means records are gone: an error the
            // sink stops on, never a silent jump to the log's start.
            .set("auto.offset.reset", "error")
            // Only what committed Kafka transactions hold (exactly_once sources); records of
            // aborted ones are never applied. librdkafka's default, stated because it matters.
            .set("isolation.level", "read_committed")
            .create_with_context(context)?;
        Ok(Consumer {
            sink: sink.name().to_string(),
            consumer,
            rebalances,
        })
    }

    /// What a consumer error on the queue means. librdkafka puts its client-wide errors
    /// there too: a broker restarting (transport failure, all brokers down) is reported,
    /// then recovered from by librdkafka itself, so the sink goes on. A position no longer
    /// in the topic stops the sink: the records between it and the log's start were
    /// removed (retention) before the replica had them, and reading on would skip them.
    fn consumption_error(&self, code: RDKafkaErrorCode) -> Polled<BorrowedMessage<'_>> {
        use RDKafkaErrorCode as E;
        match code {
            E::UnknownTopicOrPartition => Polled::TopicMissing,
            E::AutoOffsetReset | E::OffsetOutOfRange => {
                Polled::Failed(format!("{code}: a position of {GONE}"))
            }
            code if recovers_by_itself(code) => {
                tracing::warn!(sink = %self.sink, error = %code, "Kafka reported an error; the client recovers from it by itself");
                self.next_rebalance()
                    .map_or(Polled::Idle, Polled::Rebalanced)
            }
            // Anything else (authorization, TLS, a corrupt record the client would step
            // over) stops the sink: going on could skip records.
            _ => Polled::Failed(code.to_string()),
        }
    }

    fn next_rebalance(&self) -> Option<Rebalance> {
        self.rebalances.lock().expect("rebalances lock").pop_front()
    }
}

impl Records for Consumer {
    type Record<'a> = BorrowedMessage<'a>;

    /// Waits until every topic exists (a topic appears when its source first publishes; one
    /// subscribed to before that would only be seen at librdkafka's next metadata refresh),
    /// then subscribes.
    fn subscribe(&self, topics: &[String], stop: &Stop) -> Result<bool, String> {
        let mut waiting_logged = false;
        for topic in topics {
            loop {
                if stop.requested() {
                    return Ok(false);
                }
                // Every topic's metadata, never one topic's: asking for a missing topic by
                // name lets a broker with auto.create.topics.enable create it, with the
                // broker's partition count instead of the one its source configures.
                let metadata = self
                    .consumer
                    .fetch_metadata(None, Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                if metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                {
                    break;
                }
                if !waiting_logged {
                    tracing::info!(sink = %self.sink, %topic, "waiting for the topic to be created by its source");
                    waiting_logged = true;
                }
                if !stop.pause(TOPIC_WAIT) {
                    return Ok(false);
                }
            }
        }
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(|e| e.to_string())?;
        tracing::info!(sink = %self.sink, topics = ?topics, "sink consuming");
        Ok(true)
    }

    fn poll(&self, timeout: Duration) -> Polled<BorrowedMessage<'_>> {
        // Queued by a callback served in an earlier call: before any further record.
        if let Some(rebalance) = self.next_rebalance() {
            return Polled::Rebalanced(rebalance);
        }
        match self.consumer.poll(timeout) {
            Some(Ok(message)) => Polled::Record(message),
            Some(Err(KafkaError::MessageConsumption(code))) => self.consumption_error(code),
            Some(Err(e)) => Polled::Failed(e.to_string()),
            None => self
                .next_rebalance()
                .map_or(Polled::Idle, Polled::Rebalanced),
        }
    }

    fn seek(
        &self,
        positions: &HashMap<(String, i32), i64>,
    ) -> Result<Vec<(String, i32, Offset)>, String> {
        let assignment = self.consumer.assignment().map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for elem in assignment.elements() {
            let offset = start(positions, elem.topic(), elem.partition());
            if let Offset::Offset(at) = offset {
                // Below the log's start, the records in between are gone: say so, rather
                // than let the client fail obscurely. Without a broker to ask, the client's
                // own out-of-range error (auto.offset.reset = error) still stops the sink.
                let low = match self.consumer.fetch_watermarks(
                    elem.topic(),
                    elem.partition(),
                    Duration::from_secs(10),
                ) {
                    Ok((low, _)) => low,
                    Err(e) => {
                        tracing::warn!(sink = %self.sink, topic = elem.topic(), partition = elem.partition(), error = %e, "could not read where the partition starts; seeking anyway");
                        0
                    }
                };
                if at < low {
                    return Err(format!(
                        "{} partition {}: the position {at} of {GONE} (the partition now starts at {low})",
                        elem.topic(),
                        elem.partition()
                    ));
                }
            }
            let _ = tpl.add_partition_offset(elem.topic(), elem.partition(), offset);
        }
        if tpl.count() == 0 {
            return Ok(Vec::new());
        }
        let sought = self
            .consumer
            .seek_partitions(tpl, Duration::from_secs(10))
            .map_err(|e| format!("rewinding: {e}"))?;
        for elem in sought.elements() {
            if let Err(e) = elem.error() {
                return Err(format!(
                    "rewinding {} partition {} to {:?}: {e}",
                    elem.topic(),
                    elem.partition(),
                    elem.offset()
                ));
            }
        }
        Ok(sought
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition(), e.offset()))
            .collect())
    }

    fn commit(&self) -> Result<(), String> {
        self.consumer
            .commit_consumer_state(CommitMode::Sync)
            .map_err(|e| e.to_string())
    }

    fn read_positions(&self) -> Vec<(String, i32, i64)> {
        let Ok(read) = self.consumer.position() else {
            return Vec::new();
        };
        read.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(n) => Some((e.topic().to_string(), e.partition(), n)),
                _ => None,
            })
            .collect()
    }
}

/// The consumer errors librdkafka reports and then recovers from itself, the sink waiting:
/// brokers restarting or moving leadership, the group coordinator moving, and the poll
/// interval exceeded during a long store outage (the member left the group; the revocation
/// that follows drops what was gathered, and it joins again).
fn recovers_by_itself(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as E;
    matches!(
        code,
        E::BrokerTransportFailure
            | E::AllBrokersDown
            | E::Resolve
            | E::OperationTimedOut
            | E::PollExceeded
            | E::RequestTimedOut
            | E::NetworkException
            | E::LeaderNotAvailable
            | E::NotLeaderForPartition
            | E::CoordinatorLoadInProgress
            | E::CoordinatorNotAvailable
            | E::NotCoordinator
    )
}

/// Why a sink stops at a position its topic no longer holds.
const GONE: &str = "this sink's replica is no longer in its topic (retention removed records the replica never applied, or the topic was made again); nothing was skipped. Read the source table again into the replica (walcast snapshot --source S --table T), or set the replica's positions (walcast_offsets in a table store, walcast:offsets:<group> in Redis) to where it should resume";

/// Where a partition starts: its position, or the topic's start when there is none.
fn start(positions: &HashMap<(String, i32), i64>, topic: &str, partition: i32) -> Offset {
    positions
        .get(&(topic.to_string(), partition))
        .map_or(Offset::Beginning, |n| Offset::Offset(*n))
}

/// The consumer's context: on every assignment, starts each partition at the position the
/// runner last knew, and queues [`Rebalance::Assigned`] (the runner then reads the replica's
/// positions again: another member may have moved them); on revocation, queues
/// [`Rebalance::Revoked`] (the runner drops the batch it is gathering).
struct Rebalances {
    /// The sink's name, for `walcast_sink_lag_records`.
    sink: String,
    positions: Positions,
    queue: Arc<Mutex<VecDeque<Rebalance>>>,
}

impl Rebalances {
    fn tell(&self, rebalance: Rebalance) {
        self.queue
            .lock()
            .expect("rebalances lock")
            .push_back(rebalance);
    }
}

impl ClientContext for Rebalances {
    /// Each assigned partition's `consumer_lag`: its end (the last stable offset, as the
    /// consumer reads committed records only) minus the offset committed after each durable
    /// batch. Unknown lags (-1) and librdkafka's internal partition (-1) are left out.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lags = &crate::metrics::get().sink_lag_records;
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                let labels = [
                    ("sink", self.sink.clone()),
                    ("topic", topic.clone()),
                    ("partition", partition.to_string()),
                ];
                lags.get_or_create(&labels).set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for Rebalances {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = self.positions.lock().expect("positions lock").clone();
                for elem in tpl.clone().elements() {
                    let offset = start(&stored, elem.topic(), elem.partition());
                    let _ = tpl.set_partition_offset(elem.topic(), elem.partition(), offset);
                }
                if tpl.count() > 0 {
                    self.tell(Rebalance::Assigned);
                }
                tracing::info!(assigned = ?tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition(), e.offset())).collect::<Vec<_>>(), "partitions assigned");
                consumer.assign(tpl)
            }
            _ => {
                self.tell(Rebalance::Revoked);
                tracing::info!("partitions revoked");
                consumer.unassign()
            }
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, "applying a rebalance failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::recovers_by_itself;
    use rdkafka::types::RDKafkaErrorCode as E;

    #[test]
    fn only_errors_the_client_recovers_from_let_the_sink_wait() {
        for code in [
            E::BrokerTransportFailure,
            E::AllBrokersDown,
            E::PollExceeded,
        ] {
            assert!(recovers_by_itself(code), "{code:?}");
        }
        for code in [
            E::BadMessage,
            E::SSL,
            E::TopicAuthorizationFailed,
            E::ClusterAuthorizationFailed,
            E::InconsistentGroupProtocol,
            E::AutoOffsetReset,
        ] {
            assert!(!recovers_by_itself(code), "{code:?}");
        }
    }
}
