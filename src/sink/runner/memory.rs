//! In-memory stand-ins for the runner's specs: a partitioned log with a group's rebalances
//! ([`Log`]), a trivial decoder ([`Plain`]), a replica honouring the [`Sink`] contract
//! ([`Replica`]) and a dead-letter topic ([`Quarantine`]). All of them write what happens
//! to one [`Journal`], which the specs wait on and read.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use connectors::{Batch, Change, Field, Op, Position, Sink, Value, Version};
use rdkafka::message::{Message, OwnedMessage, Timestamp};
use rdkafka::Offset;

use super::{DeadLetters, Origin, Polled, Rebalance, Records, Stop};
use crate::sink::dead_letter::Raw;
use crate::sink::decode::DecodeError;

/// How long a spec waits for a condition before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// What happened, in order: reads, rebalances, seeks, applies, commits, dead letters.
#[derive(Default)]
pub(super) struct Journal {
    entries: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Journal {
    pub(super) fn note(&self, entry: impl Into<String>) {
        self.entries.lock().unwrap().push(entry.into());
        self.changed.notify_all();
    }

    pub(super) fn entries(&self) -> Vec<String> {
        self.entries.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the entries; fails the spec, showing them, after
    /// [`DEADLINE`].
    pub(super) fn wait_until(&self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        let mut entries = self.entries.lock().unwrap();
        while !done(&entries) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting until {what}; journal: {entries:#?}"
            );
            entries = self.changed.wait_timeout(entries, left).unwrap().0;
        }
    }

    /// The entries after the last one equal to `mark`.
    pub(super) fn after(&self, mark: &str) -> Vec<String> {
        let entries = self.entries();
        let at = entries.iter().rposition(|e| e == mark);
        let at = at.unwrap_or_else(|| panic!("no {mark:?} in {entries:#?}"));
        entries[at + 1..].to_vec()
    }
}

/// A topic log read by one member of a group, which the spec assigns and revokes.
pub(super) struct Log {
    journal: Arc<Journal>,
    state: Mutex<LogState>,
    arrived: Condvar,
}

#[derive(Default)]
struct LogState {
    partitions: BTreeMap<(String, i32), Vec<OwnedMessage>>,
    /// Rebalances not yet delivered, with the partitions assigned.
    pending: VecDeque<(Rebalance, Vec<(String, i32)>)>,
    /// A revocation that becomes pending once this record has been read.
    revoke_after: Option<(String, i32, i64)>,
    assigned: BTreeSet<(String, i32)>,
    next: HashMap<(String, i32), i64>,
}

impl Log {
    pub(super) fn new(journal: Arc<Journal>) -> Self {
        Log {
            journal,
            state: Mutex::default(),
            arrived: Condvar::new(),
        }
    }

    /// Appends a record; `payload` `None` is a compaction tombstone. Its offset.
    pub(super) fn append(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: Option<&str>,
    ) -> i64 {
        let mut state = self.state.lock().unwrap();
        let records = state
            .partitions
            .entry((topic.into(), partition))
            .or_default();
        let offset = records.len() as i64;
        records.push(OwnedMessage::new(
            payload.map(|p| p.as_bytes().to_vec()),
            Some(key.as_bytes().to_vec()),
            topic.into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        ));
        self.arrived.notify_all();
        offset
    }

    /// The group assigns these partitions, which the member then reads from offset 0 until
    /// it seeks (as a Kafka assignment starts at committed or earliest offsets).
    pub(super) fn assign(&self, partitions: &[(&str, i32)]) {
        let partitions = partitions
            .iter()
            .map(|(t, p)| (t.to_string(), *p))
            .collect();
        self.rebalance(Rebalance::Assigned, partitions);
    }

    /// The group revokes every partition.
    pub(super) fn revoke(&self) {
        self.rebalance(Rebalance::Revoked, Vec::new());
    }

    /// The group revokes every partition right after the member read this record.
    pub(super) fn revoke_after(&self, topic: &str, partition: i32, offset: i64) {
        self.state.lock().unwrap().revoke_after = Some((topic.into(), partition, offset));
    }

    fn rebalance(&self, rebalance: Rebalance, partitions: Vec<(String, i32)>) {
        self.state
            .lock()
            .unwrap()
            .pending
            .push_back((rebalance, partitions));
        self.arrived.notify_all();
    }
}

impl Records for Log {
    type Record<'a> = OwnedMessage;

    fn subscribe(&self, topics: &[String], stop: &Stop) -> Result<bool, String> {
        self.journal.note(format!("subscribe {}", topics.join(",")));
        Ok(!stop.requested())
    }

    fn poll(&self, timeout: Duration) -> Polled<OwnedMessage> {
        let until = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some((rebalance, partitions)) = state.pending.pop_front() {
                state.assigned = partitions.into_iter().collect();
                state.next.clear();
                self.journal.note(match rebalance {
                    Rebalance::Assigned => "assigned",
                    Rebalance::Revoked => "revoked",
                });
                return Polled::Rebalanced(rebalance);
            }
            let state_ = &mut *state;
            let readable = state_.assigned.iter().find_map(|tp| {
                let next = state_.next.get(tp).copied().unwrap_or(0);
                state_.partitions.get(tp)?.get(next as usize).cloned()
            });
            if let Some(record) = readable {
                let (topic, partition, offset) =
                    (record.topic(), record.partition(), record.offset());
                state
                    .next
                    .insert((topic.to_string(), partition), offset + 1);
                self.journal
                    .note(format!("read {topic}/{partition}@{offset}"));
                if state.revoke_after == Some((topic.to_string(), partition, offset)) {
                    state.revoke_after = None;
                    state.pending.push_back((Rebalance::Revoked, Vec::new()));
                }
                return Polled::Record(record);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Polled::Idle;
            }
            state = self.arrived.wait_timeout(state, left).unwrap().0;
        }
    }

    fn seek(
        &self,
        positions: &HashMap<(String, i32), i64>,
    ) -> Result<Vec<(String, i32, Offset)>, String> {
        let mut state = self.state.lock().unwrap();
        let mut sought = Vec::new();
        for (topic, partition) in state.assigned.clone() {
            let next = positions.get(&(topic.clone(), partition)).copied();
            state
                .next
                .insert((topic.clone(), partition), next.unwrap_or(0));
            self.journal.note(match next {
                Some(n) => format!("seek {topic}/{partition} to {n}"),
                None => format!("seek {topic}/{partition} to start"),
            });
            sought.push((
                topic,
                partition,
                next.map_or(Offset::Beginning, Offset::Offset),
            ));
        }
        Ok(sought)
    }

    fn commit(&self) -> Result<(), String> {
        self.journal.note("commit");
        Ok(())
    }

    /// The in-memory log has no transaction markers: nothing to step over.
    fn read_positions(&self) -> Vec<(String, i32, i64)> {
        Vec::new()
    }
}

/// Decodes the key as field `id`, the payload as field `v` (`"delete"` a delete,
/// `"truncate"` a truncate, anything starting with `"undecodable"` poison), the offset as
/// the version.
pub(super) struct Plain;

impl super::Decode for Plain {
    fn change<M: Message>(&mut self, m: &M) -> Result<Change, DecodeError> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let key = |m: &M| vec![("id".into(), Value::Text(text(m.key().unwrap_or_default())))];
        let Some(payload) = m.payload().map(text) else {
            return Err(DecodeError::Poison("a tombstone".into()));
        };
        if payload.starts_with("undecodable") {
            return Err(DecodeError::Poison("not a plain record".into()));
        }
        if payload.starts_with("registry-refused") {
            return Err(DecodeError::Refused(
                crate::registry::client::ClientError::Unauthorized {
                    url: "http://registry".into(),
                    status: 401,
                    message: "Unauthorized".into(),
                    hint: "check the registry's credentials",
                },
            ));
        }
        let (key, op) = match payload.as_str() {
            "truncate" => (Vec::new(), Op::Truncate),
            "delete" => (key(m), Op::Delete),
            _ => (key(m), Op::Upsert(vec![("v".into(), Value::Text(payload))])),
        };
        Ok(Change {
            key,
            op,
            version: Version {
                lsn: m.offset() as u64 + 1,
                seq: 0,
            },
        })
    }

    fn take_new_views(&mut self) -> Vec<Vec<Field>> {
        Vec::new()
    }

    fn forget_views(&mut self) {}
}

/// A replica row: its version, and its fields (`None`: a delete's tombstone).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub(super) version: Version,
    pub(super) value: Option<String>,
}

/// The replica's data, shared by its lanes and the spec.
#[derive(Default)]
pub(super) struct Store {
    data: Mutex<Data>,
}

#[derive(Default)]
struct Data {
    rows: BTreeMap<String, Row>,
    /// The newest truncate applied: nothing at or below it is applied any more.
    floor: Option<Version>,
    positions: BTreeMap<(String, i32), i64>,
    /// Applies that fail as if the store were unreachable, before it is back.
    failing_applies: usize,
    /// Every call fails as if the store were unreachable.
    down: bool,
}

impl Store {
    /// The rows, `key → value`, without tombstones.
    pub(super) fn rows(&self) -> BTreeMap<String, String> {
        let data = self.data.lock().unwrap();
        data.rows
            .iter()
            .filter_map(|(k, r)| Some((k.clone(), r.value.clone()?)))
            .collect()
    }

    pub(super) fn row(&self, key: &str) -> Option<Row> {
        self.data.lock().unwrap().rows.get(key).cloned()
    }

    pub(super) fn positions(&self) -> BTreeMap<(String, i32), i64> {
        self.data.lock().unwrap().positions.clone()
    }

    /// The next `n` applies fail with a transient error.
    pub(super) fn fail_applies(&self, n: usize) {
        self.data.lock().unwrap().failing_applies = n;
    }

    /// Every call fails with a transient error from now on.
    pub(super) fn down(&self) {
        self.data.lock().unwrap().down = true;
    }

    /// What another member (or a restore) left: rows and positions written directly.
    pub(super) fn put(
        &self,
        key: &str,
        value: &str,
        version: Version,
        positions: &[(&str, i32, i64)],
    ) {
        let mut data = self.data.lock().unwrap();
        let value = Some(value.to_string());
        data.rows.insert(key.into(), Row { version, value });
        for (topic, partition, next) in positions {
            data.positions
                .insert((topic.to_string(), *partition), *next);
        }
    }

    /// The store restarted empty (a cache without persistence).
    pub(super) fn lose_everything(&self) {
        let mut data = self.data.lock().unwrap();
        data.rows.clear();
        data.positions.clear();
    }
}

/// A store error the runner retries (a deadlock victim, rolled back).
fn transient() -> connectors::Error {
    connectors::Error::Mysql(mysql_async::Error::Server(mysql_async::ServerError {
        code: 1213,
        message: "Deadlock found when trying to get lock".into(),
        state: "40001".into(),
    }))
}

/// A store error of one change's data (a value the column rejects).
fn poison() -> connectors::Error {
    connectors::Error::Mysql(mysql_async::Error::Server(mysql_async::ServerError {
        code: 1366,
        message: "Incorrect integer value: 'reject' for column 'v'".into(),
        state: "22007".into(),
    }))
}

/// One lane (connection) to a [`Store`]: every `apply` is one transaction, rows and
/// positions together; upserts carrying `"reject"` are refused as poison.
pub(super) struct Replica {
    pub(super) store: Arc<Store>,
    pub(super) journal: Arc<Journal>,
}

/// The text of a change's key.
fn key_of(change: &Change) -> String {
    if matches!(change.op, Op::Truncate) {
        return format!("truncate@{}", change.version.lsn);
    }
    match &change.key[..] {
        [(_, Value::Text(k))] => k.clone(),
        other => format!("{other:?}"),
    }
}

/// How the journal shows a batch: `apply [a, b] at [orders/0=2]`.
fn describe(batch: &Batch) -> String {
    let keys: Vec<String> = batch.changes.iter().map(key_of).collect();
    let positions: Vec<String> = batch
        .positions
        .iter()
        .map(|p| format!("{}/{}={}", p.topic, p.partition, p.next_offset))
        .collect();
    format!("apply [{}] at [{}]", keys.join(", "), positions.join(", "))
}

impl Sink for Replica {
    fn apply(
        &mut self,
        batch: &Batch,
    ) -> impl Future<Output = Result<(), connectors::Error>> + Send {
        let outcome = (|| {
            let mut data = self.store.data.lock().unwrap();
            if data.down || data.failing_applies > 0 {
                data.failing_applies = data.failing_applies.saturating_sub(1);
                return Err(("unavailable", transient()));
            }
            let rejects = |c: &Change| matches!(&c.op, Op::Upsert(f) if f.iter().any(|(_, v)| *v == Value::Text("reject".into())));
            if batch.changes.iter().any(rejects) {
                return Err(("rejected", poison()));
            }
            if let Some(floor) = connectors::table::newest_truncate(&batch.changes) {
                data.floor = data.floor.max(Some(floor));
                data.rows.retain(|_, row| row.version > floor);
            }
            for change in &batch.changes {
                let key = key_of(change);
                let floored = data.floor.is_some_and(|f| change.version <= f);
                if floored
                    || matches!(change.op, Op::Truncate)
                    || data
                        .rows
                        .get(&key)
                        .is_some_and(|r| r.version >= change.version)
                {
                    continue;
                }
                let value = match &change.op {
                    Op::Upsert(fields) => Some(match &fields[..] {
                        [(_, Value::Text(v))] => v.clone(),
                        other => format!("{other:?}"),
                    }),
                    Op::Delete | Op::Truncate => None,
                };
                data.rows.insert(
                    key,
                    Row {
                        version: change.version,
                        value,
                    },
                );
            }
            for p in &batch.positions {
                data.positions
                    .insert((p.topic.clone(), p.partition), p.next_offset);
            }
            Ok(())
        })();
        let entry = match &outcome {
            Ok(()) => describe(batch),
            Err((why, _)) => format!("{} {why}", describe(batch)),
        };
        self.journal.note(entry);
        std::future::ready(outcome.map_err(|(_, e)| e))
    }

    fn positions(
        &mut self,
    ) -> impl Future<Output = Result<Vec<Position>, connectors::Error>> + Send {
        let data = self.store.data.lock().unwrap();
        let outcome = if data.down {
            self.journal.note("positions unavailable");
            Err(transient())
        } else {
            self.journal.note("positions");
            Ok(data
                .positions
                .iter()
                .map(|((topic, partition), next)| Position {
                    topic: topic.clone(),
                    partition: *partition,
                    next_offset: *next,
                })
                .collect())
        };
        std::future::ready(outcome)
    }

    fn prepare(
        &mut self,
        _fields: &[Field],
    ) -> impl Future<Output = Result<(), connectors::Error>> + Send {
        std::future::ready(Ok(()))
    }
}

/// A dead-letter topic that keeps where each record it was sent came from, and at which
/// stage it was rejected.
#[derive(Default)]
pub(super) struct Quarantine {
    pub(super) sent: Arc<Mutex<Vec<(Origin, String)>>>,
    pub(super) journal: Arc<Journal>,
}

impl DeadLetters for Quarantine {
    fn topic(&self) -> &str {
        "orders.dead-letter"
    }

    fn send<'a>(
        &'a self,
        _sink: &'a str,
        origin: &'a Origin,
        stage: &'a str,
        _reason: &'a str,
        _raw: &'a Raw,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>> {
        self.sent
            .lock()
            .unwrap()
            .push((origin.clone(), stage.to_string()));
        self.journal.note(format!(
            "dead-letter {}/{}@{} ({stage})",
            origin.topic, origin.partition, origin.offset
        ));
        Box::pin(std::future::ready(Ok(())))
    }
}
