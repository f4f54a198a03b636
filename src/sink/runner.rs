//! The runner: gather → decode → apply over the lanes → positions, on one blocking thread.
//!
//! # Guarantees
//! - **Positions follow durability.** A batch's positions reach the store with its rows (in
//!   the same `apply`), and the runner records them as applied, and commits the records'
//!   offsets, only after `apply` returned `Ok`.
//! - **Rewind on store outages.** A transient store error drops the batch, waits out the
//!   backoff, re-reads the replica's positions and seeks every assigned partition to them:
//!   the records are read again, nothing is skipped.
//! - **Poison is isolated.** A batch the store rejects is applied one change at a time to
//!   find the changes it rejects on their own; those, and records that do not decode,
//!   follow `on_error`: without a dead-letter topic the sink stops naming the record's
//!   topic, partition and offset; with one, the record is sent there (and acknowledged)
//!   before the rest of the batch is applied.
//! - **Rebalances are events, in order with the records.** A revocation drops the batch
//!   being gathered (not applied, not committed: the next owner reads it again); an
//!   assignment drops it too, re-reads the replica's positions (another member may have
//!   moved them) and seeks to them before any record of the new assignment is gathered.
//! - **An idle sink verifies its store.** Every `idle_check` without records, the runner
//!   compares the store's positions with what it applied; a store that lost them (a cache
//!   restarted empty, a database restored from backup) is rewound to where it now stands.
//! - **Stop is prompt.** Every wait (backoff, a missing topic) is a wait on the shutdown,
//!   which wakes it at once; a stop met while gathering ends the batch if it is empty.
//!
//! The runner sees its record source, its decoder and its dead-letter topic only through
//! [`Records`], [`Decode`] and [`DeadLetters`], so its specs run in memory (see `tests`);
//! `mod.rs` wires in the Kafka consumer, the registry decoder and the dead-letter producer.
//! Records are borrowed from the source (librdkafka's messages), never copied on the way.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connectors::{Batch, Change, Field, Op, Position, Sink};
use rdkafka::message::{Headers, Message};
use rdkafka::Offset;

use super::dead_letter::Raw;
use super::decode::DecodeError;
use super::lanes::apply_over;
use super::SinkError;
use crate::parts::PartState;
use crate::retry::Backoff;
use crate::shutdown::Shutdown;

#[cfg(test)]
mod memory;
#[cfg(test)]
mod tests;

/// The positions applied (as the replica last reported them, then as batches were
/// applied): where each partition is read from, `(topic, partition) → next offset`. Shared
/// with the consumer, whose assignments start there.
pub(super) type Positions = Arc<Mutex<HashMap<(String, i32), i64>>>;

/// How long one poll waits for a record.
const POLL: Duration = Duration::from_millis(20);

/// How long to wait before polling again for a topic the broker does not know yet.
const TOPIC_MISSING: Duration = Duration::from_millis(100);

/// A change of the group's assignment, delivered in order with the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rebalance {
    /// Partitions were assigned (none of the previous ones are kept).
    Assigned,
    /// Every partition was revoked.
    Revoked,
}

/// What one poll of a [`Records`] source brought.
pub(super) enum Polled<M> {
    Record(M),
    Rebalanced(Rebalance),
    /// Nothing within the poll's timeout.
    Idle,
    /// A subscribed topic is unknown to the broker (yet): poll again a little later.
    TopicMissing,
    Failed(String),
}

/// Where records come from: the Kafka consumer, or a test's log.
///
/// Records are borrowed from the source (`Record<'_>`), so the hot path does not copy them.
/// Errors are messages for [`SinkError::Kafka`].
pub(super) trait Records: Send + Sync {
    type Record<'a>: Message
    where
        Self: 'a;

    /// Waits until every topic exists, then subscribes; `false` if stopped meanwhile.
    fn subscribe(&self, topics: &[String], stop: &Stop) -> Result<bool, String>;

    /// The next record or rebalance, waiting at most `timeout`.
    fn poll(&self, timeout: Duration) -> Polled<Self::Record<'_>>;

    /// Seeks every assigned partition to its entry in `positions`, or to its topic's start;
    /// what it sought (empty when nothing is assigned).
    fn seek(
        &self,
        positions: &HashMap<(String, i32), i64>,
    ) -> Result<Vec<(String, i32, Offset)>, String>;

    /// Commits the offsets of what was read (for lag monitoring: the replica's positions
    /// decide where reading resumes).
    fn commit(&self) -> Result<(), String>;

    /// Where the client stands in each assigned partition: past the markers of Kafka
    /// transactions, which it steps over without handing them over.
    fn read_positions(&self) -> Vec<(String, i32, i64)>;
}

/// Records → changes.
pub(super) trait Decode {
    /// The change a record carries. Every record carries one or is poison: none is
    /// skipped unseen (a tombstone walcast did not write included).
    fn change<M: Message>(&mut self, record: &M) -> Result<Change, DecodeError>;

    /// The fields of contract versions first seen since the last call; the store prepares
    /// for them before their changes are applied.
    fn take_new_views(&mut self) -> Vec<Vec<Field>>;

    /// Forgets the versions seen, so they are prepared again when next seen.
    fn forget_views(&mut self);
}

/// Where a rejected record goes under `on_error = "dead_letter"`.
pub(super) trait DeadLetters: Send {
    fn topic(&self) -> &str;

    /// Sends `raw` with why it was rejected, and waits for the acknowledgement.
    fn send<'a>(
        &'a self,
        sink: &'a str,
        origin: &'a Origin,
        stage: &'a str,
        reason: &'a str,
        raw: &'a Raw,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;
}

/// The shutdown as the blocking thread sees it: asked or not, and waits it cuts short.
pub(super) struct Stop {
    shutdown: Shutdown,
    runtime: tokio::runtime::Handle,
}

impl Stop {
    pub(super) fn new(shutdown: Shutdown, runtime: tokio::runtime::Handle) -> Self {
        Stop { shutdown, runtime }
    }

    /// Whether a stop was asked for.
    pub(super) fn requested(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Waits `wait`, or less if a stop comes (it wakes the wait at once); `false` if
    /// stopped. Called only from the runner's blocking thread, never from async code.
    pub(super) fn pause(&self, wait: Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        !self.runtime.block_on(shutdown.wait_timeout(wait))
    }
}

/// Where one change of the batch came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
}

impl Origin {
    fn of<M: Message>(m: &M) -> Origin {
        Origin {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
        }
    }
}

/// What became of a batch.
enum Applied {
    Durable,
    /// The store failed; reading goes on from the replica's positions.
    Rewound,
    Stopped,
}

/// The batch being gathered.
#[derive(Default)]
struct Gathering {
    batch: Batch,
    origins: Vec<Origin>,
    /// The record of each change, kept for the dead-letter topic (only when there is one).
    raws: Vec<Raw>,
    next: HashMap<(String, i32), i64>,
    /// The newest source commit time (Unix microseconds, the `commit_ts` header) among the
    /// batch's changes, for `walcast_sink_freshness_seconds`.
    newest_commit: Option<i64>,
}

/// A record's `commit_ts` header: its source transaction's commit time, Unix microseconds.
fn commit_time<M: Message>(m: &M) -> Option<i64> {
    let headers = m.headers()?;
    let header = headers.iter().find(|h| h.key == "commit_ts")?;
    std::str::from_utf8(header.value?).ok()?.parse().ok()
}

/// How a runner batches, waits and retries.
pub(super) struct Settings {
    /// The sink's name, for errors and logs.
    pub(super) name: String,
    pub(super) topics: Vec<String>,
    pub(super) max_records: usize,
    pub(super) max_wait: Duration,
    /// How often an idle runner checks that its store still holds what was applied.
    pub(super) idle_check: Duration,
    /// The backoff for store and registry outages.
    pub(super) backoff: fn() -> Backoff,
    /// Where the runner reports its state: running once it holds its partitions, waiting
    /// while it rides out an outage.
    pub(super) part: crate::parts::PartHandle,
}

/// One sink's runner: see the module docs.
pub(super) struct Runner<R, D, S> {
    pub(super) settings: Settings,
    /// Shared so that a record borrowed from the source does not borrow the runner.
    pub(super) records: Arc<R>,
    pub(super) decoder: D,
    /// One connection per lane; the first also writes the positions.
    pub(super) lanes: Vec<S>,
    pub(super) dead_letter: Option<Box<dyn DeadLetters>>,
    pub(super) positions: Positions,
    pub(super) stop: Stop,
    pub(super) runtime: tokio::runtime::Handle,
}

impl<R: Records, D: Decode, S: Sink> Runner<R, D, S> {
    /// Runs until stopped (`Ok`) or a permanent error. Call it on a blocking thread.
    pub(super) fn run(mut self) -> Result<(), SinkError> {
        if !self.load_positions()? {
            return Ok(());
        }
        let subscribed = self
            .records
            .subscribe(&self.settings.topics, &self.stop)
            .map_err(|e| self.kafka_error(e))?;
        if !subscribed {
            return Ok(());
        }
        let mut last_check = Instant::now();
        while !self.stop.requested() {
            let Some(gathered) = self.gather()? else {
                if last_check.elapsed() >= self.settings.idle_check {
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
            if let Err(e) = self.records.commit() {
                // The replica holds the positions; a failed commit only delays lag metrics.
                tracing::warn!(sink = %self.settings.name, error = %e, "committing offsets to Kafka failed; the replica's positions stay authoritative");
            }
        }
        Ok(())
    }

    /// After an outage: the store answered again, so the part runs again.
    fn recovered(&self) {
        if matches!(self.settings.part.state(), PartState::Waiting(_)) {
            self.settings.part.set(PartState::Running);
        }
    }

    fn store_error(&self, source: connectors::Error) -> SinkError {
        SinkError::Store {
            sink: self.settings.name.clone(),
            source,
        }
    }

    fn kafka_error(&self, message: String) -> SinkError {
        SinkError::Kafka {
            sink: self.settings.name.clone(),
            message,
        }
    }

    /// Reads the replica's positions into [`Positions`], retrying while the store is
    /// unreachable. `false` if stopped meanwhile.
    fn load_positions(&mut self) -> Result<bool, SinkError> {
        let mut backoff = (self.settings.backoff)();
        loop {
            match self.runtime.block_on(self.lanes[0].positions()) {
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
                    tracing::warn!(sink = %self.settings.name, error = %e, "reading the replica's positions failed; retrying in {delay:?}");
                    self.settings.part.waiting(format_args!(
                        "reading the replica's positions failed: {e}; retrying in {delay:?}"
                    ));
                    if !self.stop.pause(delay) {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(self.store_error(e)),
            }
        }
    }

    /// Polls until the batch is full or its time is up. `None` if nothing arrived, a
    /// rebalance dropped what had, or a stop came.
    fn gather(&mut self) -> Result<Option<Gathering>, SinkError> {
        let mut g = Gathering::default();
        let deadline = Instant::now() + self.settings.max_wait;
        let records = Arc::clone(&self.records);
        while g.batch.changes.len() < self.settings.max_records && Instant::now() < deadline {
            // A record is handled in its arm, while it borrows the source (not the runner);
            // a rebalance leaves the match, and is handled below.
            let rebalance = match records.poll(POLL) {
                Polled::Record(message) => {
                    if !self.take(&mut g, &message)? {
                        return Ok(None);
                    }
                    continue;
                }
                Polled::Idle => {
                    if g.next.is_empty() && self.stop.requested() {
                        return Ok(None);
                    }
                    continue;
                }
                // A topic appears when its source first publishes: wait for it.
                Polled::TopicMissing => {
                    if !self.stop.pause(TOPIC_MISSING) {
                        return Ok(None);
                    }
                    continue;
                }
                Polled::Failed(e) => return Err(self.kafka_error(e)),
                Polled::Rebalanced(rebalance) => rebalance,
            };
            // Not applied, not committed: whoever owns the partitions now reads it again.
            g = Gathering::default();
            if rebalance == Rebalance::Assigned {
                self.settings.part.set(PartState::Running);
                // Start where the replica stands now, not where it stood when last read.
                if !self.rewind()? {
                    return Ok(None);
                }
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

    /// Decodes one record into the batch (retrying while the registry is unavailable), or
    /// rejects it. `false` if stopped meanwhile.
    fn take<M: Message>(&mut self, g: &mut Gathering, message: &M) -> Result<bool, SinkError> {
        g.next.insert(
            (message.topic().to_string(), message.partition()),
            message.offset() + 1,
        );
        let mut backoff = (self.settings.backoff)();
        let decoded = loop {
            match self.decoder.change(message) {
                Err(DecodeError::Unavailable(e)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = %self.settings.name, error = %e, "schema registry unavailable; retrying in {delay:?}");
                    self.settings.part.waiting(format_args!(
                        "schema registry unavailable: {e}; retrying in {delay:?}"
                    ));
                    if !self.stop.pause(delay) {
                        return Ok(false);
                    }
                }
                other => break other,
            }
        };
        match decoded {
            Ok(change) if matches!(change.op, Op::Truncate) && self.settings.topics.len() > 1 => {
                // One replica keeps one floor: a truncate of one topic would clear the rows
                // of the others, and hold back their changes (versions of other sources do
                // not compare). Refused, never half-applied.
                return Err(SinkError::Setup {
                    sink: self.settings.name.clone(),
                    message: format!(
                        "a truncate event arrived on {} partition {} offset {}, and this sink writes topics {} into one replica: the truncate would clear the rows of every topic; give topic {} a sink (table or key_template) of its own, then restart",
                        message.topic(),
                        message.partition(),
                        message.offset(),
                        self.settings.topics.join(", "),
                        message.topic()
                    ),
                });
            }
            Ok(change) => {
                if let Some(at) = commit_time(message) {
                    g.newest_commit = Some(g.newest_commit.map_or(at, |n| n.max(at)));
                }
                g.batch.changes.push(change);
                g.origins.push(Origin::of(message));
                if self.dead_letter.is_some() {
                    g.raws.push(Raw::of(message));
                }
            }
            Err(DecodeError::Poison(reason)) => {
                self.reject(&Origin::of(message), &Raw::of(message), "decode", reason)?;
            }
            Err(DecodeError::Refused(e)) => {
                return Err(SinkError::Setup {
                    sink: self.settings.name.clone(),
                    message: format!(
                        "reading {} partition {} offset {}: {e}",
                        message.topic(),
                        message.partition(),
                        message.offset()
                    ),
                });
            }
            Err(DecodeError::Setup(message)) => {
                return Err(SinkError::Setup {
                    sink: self.settings.name.clone(),
                    message,
                });
            }
            Err(DecodeError::Unavailable(_)) => unreachable!("retried above"),
        }
        Ok(true)
    }

    /// A record that cannot be decoded or stored: stop naming it, or dead-letter it and go on.
    fn reject(
        &self,
        origin: &Origin,
        raw: &Raw,
        stage: &str,
        reason: String,
    ) -> Result<(), SinkError> {
        let name = &self.settings.name;
        crate::metrics::get()
            .sink_poison
            .get_or_create(&crate::metrics::sink(name))
            .inc();
        let Some(dlq) = &self.dead_letter else {
            return Err(SinkError::Poison {
                sink: name.clone(),
                topic: origin.topic.clone(),
                partition: origin.partition,
                offset: origin.offset,
                reason,
            });
        };
        tracing::warn!(sink = %name, topic = %origin.topic, partition = origin.partition, offset = origin.offset, %reason, "sending the record to the dead-letter topic {}", dlq.topic());
        let sent = self
            .runtime
            .block_on(dlq.send(name, origin, stage, &reason, raw));
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
        let mut backoff = (self.settings.backoff)();
        let views = self.decoder.take_new_views();
        for fields in &views {
            for lane in 0..self.lanes.len() {
                let prepared = self.runtime.block_on(self.lanes[lane].prepare(fields));
                match prepared {
                    Ok(()) => {}
                    Err(e) if e.is_transient() => {
                        tracing::warn!(sink = %self.settings.name, error = %e, "store unavailable while preparing the replica table; rewinding");
                        self.settings
                            .part
                            .waiting(format_args!("store unavailable: {e}"));
                        // The views are seen again when their records are read again.
                        self.decoder.forget_views();
                        return self.back_off_and_rewind(&mut backoff);
                    }
                    Err(e) => return Err(self.store_error(e)),
                }
            }
        }
        let metrics = crate::metrics::get();
        let labels = crate::metrics::sink(&self.settings.name);
        loop {
            let started = Instant::now();
            let result = self.runtime.block_on(apply_over(&mut self.lanes, &g.batch));
            match result {
                Ok(()) => {
                    metrics
                        .sink_apply_seconds
                        .get_or_create(&labels)
                        .observe(started.elapsed().as_secs_f64());
                    metrics
                        .sink_applied
                        .get_or_create(&labels)
                        .inc_by(g.batch.changes.len() as u64);
                    if let Some(at) = g.newest_commit {
                        metrics.sink_applied_commit(&self.settings.name, at);
                    }
                    self.recovered();
                    let mut map = self.positions.lock().expect("positions lock");
                    for p in &g.batch.positions {
                        map.insert((p.topic.clone(), p.partition), p.next_offset);
                    }
                    return Ok(Applied::Durable);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(sink = %self.settings.name, error = %e, "store unavailable; rewinding to the replica's positions and retrying");
                    self.settings
                        .part
                        .waiting(format_args!("store unavailable: {e}"));
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
        if !self.stop.pause(backoff.next_delay()) {
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
            newest_commit,
        } = g;
        let mut kept = Gathering {
            next,
            newest_commit,
            ..Gathering::default()
        };
        let raws: Vec<Option<Raw>> = if raws.is_empty() {
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
        match self.runtime.block_on(self.lanes[0].positions()) {
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
                    self.store_read_positions();
                    return Ok(true);
                }
                tracing::warn!(sink = %self.settings.name, "the store holds older positions than were applied (it lost data, or was restored); rewinding to them");
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(sink = %self.settings.name, error = %e, "store unavailable; rewinding to the replica's positions");
                self.settings
                    .part
                    .waiting(format_args!("store unavailable: {e}"));
            }
            Err(e) => return Err(self.store_error(e)),
        }
        self.rewind()
    }

    /// librdkafka steps over the markers of Kafka transactions (exactly-once topics)
    /// without handing them over, so a replica's position stays on its partition's last
    /// marker. While idle, a partition the client has read past what the replica holds
    /// (nothing but markers can lie between) has its position stored: once retention
    /// removes the marker, a rewind still finds the position in the topic. A failure is
    /// left to the next idle check.
    fn store_read_positions(&mut self) {
        let advanced: Vec<Position> = {
            let applied = self.positions.lock().expect("positions lock");
            self.records
                .read_positions()
                .into_iter()
                .filter(|(t, p, n)| applied.get(&(t.clone(), *p)).is_some_and(|a| n > a))
                .map(|(topic, partition, next_offset)| Position {
                    topic,
                    partition,
                    next_offset,
                })
                .collect()
        };
        if advanced.is_empty() {
            return;
        }
        let batch = Batch {
            changes: Vec::new(),
            positions: advanced.clone(),
        };
        match self.runtime.block_on(self.lanes[0].apply(&batch)) {
            Ok(()) => {
                let mut applied = self.positions.lock().expect("positions lock");
                for p in advanced {
                    applied.insert((p.topic, p.partition), p.next_offset);
                }
            }
            Err(e) => {
                tracing::debug!(sink = %self.settings.name, error = %e, "storing the positions past transaction markers; tried again when next idle");
            }
        }
    }

    /// Re-reads the replica's positions and seeks every assigned partition to them.
    /// `false` if stopped meanwhile.
    fn rewind(&mut self) -> Result<bool, SinkError> {
        if !self.load_positions()? {
            return Ok(false);
        }
        let positions = self.positions.lock().expect("positions lock").clone();
        let sought = self
            .records
            .seek(&positions)
            .map_err(|e| self.kafka_error(e))?;
        if !sought.is_empty() {
            tracing::info!(sink = %self.settings.name, positions = ?sought, "rewound");
        }
        Ok(true)
    }
}
