//! The runner's specs, against an in-memory log and replica (see `memory`). Dead-lettering
//! to a real Kafka topic is covered by the integration spec in `tests/replica.rs`; here the
//! dead-letter topic is in memory too.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connectors::Version;

use super::memory::{Journal, Log, Plain, Quarantine, Replica, Store};
use super::{DeadLetters, Origin, Positions, Runner, Settings, Stop};
use crate::retry::Backoff;
use crate::shutdown::{self, Trigger};
use crate::sink::SinkError;

/// How a spec's runner is set up.
struct Setup {
    lanes: usize,
    max_records: usize,
    max_wait: Duration,
    idle_check: Duration,
    backoff: fn() -> Backoff,
    dead_letter: bool,
    /// Topics besides `orders` that the sink writes into the same replica.
    more_topics: &'static [&'static str],
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            lanes: 1,
            max_records: 100,
            max_wait: Duration::from_secs(5),
            idle_check: Duration::from_secs(3600),
            backoff: || Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
            dead_letter: false,
            more_topics: &[],
        }
    }
}

/// A runner on its blocking thread, with the log it reads and the store it writes.
struct Running {
    log: Arc<Log>,
    store: Arc<Store>,
    journal: Arc<Journal>,
    dead_letters: Arc<Mutex<Vec<(Origin, String)>>>,
    trigger: Trigger,
    task: Option<tokio::task::JoinHandle<Result<(), SinkError>>>,
    runtime: tokio::runtime::Runtime,
}

/// The topic every spec reads, with one partition.
const TOPIC: &str = "orders";

impl Setup {
    /// Starts a runner; `prepare` fills the log (assigned `orders/0` first) and the store
    /// before it runs.
    fn start(self, prepare: impl FnOnce(&Log, &Store)) -> Running {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let journal = Arc::new(Journal::default());
        let log = Arc::new(Log::new(journal.clone()));
        let store = Arc::new(Store::default());
        log.assign(&[(TOPIC, 0)]);
        prepare(&log, &store);
        let quarantine = Quarantine {
            journal: journal.clone(),
            ..Quarantine::default()
        };
        let dead_letters = quarantine.sent.clone();
        let (trigger, shutdown) = shutdown::channel();
        let runner = Runner {
            settings: Settings {
                name: "replica".into(),
                topics: std::iter::once(TOPIC)
                    .chain(self.more_topics.iter().copied())
                    .map(String::from)
                    .collect(),
                max_records: self.max_records,
                max_wait: self.max_wait,
                idle_check: self.idle_check,
                backoff: self.backoff,
                part: Default::default(),
            },
            records: log.clone(),
            decoder: Plain,
            lanes: (0..self.lanes)
                .map(|_| Replica {
                    store: store.clone(),
                    journal: journal.clone(),
                })
                .collect(),
            dead_letter: self
                .dead_letter
                .then(|| Box::new(quarantine) as Box<dyn DeadLetters>),
            positions: Positions::default(),
            stop: Stop::new(shutdown, runtime.handle().clone()),
            runtime: runtime.handle().clone(),
        };
        let task = Some(runtime.spawn_blocking(move || runner.run()));
        Running {
            log,
            store,
            journal,
            dead_letters,
            trigger,
            task,
            runtime,
        }
    }
}

impl Running {
    /// How the runner ended, without being asked to stop.
    fn outcome(&mut self) -> Result<(), SinkError> {
        let task = self.task.take().expect("not joined yet");
        self.runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await })
            .expect("the runner ends")
            .expect("the runner does not panic")
    }

    /// Asks the runner to stop, and how it ended.
    fn stop(&mut self) -> Result<(), SinkError> {
        self.trigger.fire();
        self.outcome()
    }

    /// Waits until the journal shows `entry`.
    fn wait_for(&self, entry: &str) {
        self.journal
            .wait_until(entry, |entries| entries.iter().any(|e| e == entry));
    }

    /// Waits until `entry` appears `n` times in the journal.
    fn wait_for_nth(&self, entry: &str, n: usize) {
        self.journal
            .wait_until(&format!("{entry} #{n}"), |entries| {
                entries.iter().filter(|e| *e == entry).count() >= n
            });
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.trigger.fire();
    }
}

fn rows(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn positions(next: i64) -> std::collections::BTreeMap<(String, i32), i64> {
    [((TOPIC.to_string(), 0), next)].into()
}

fn index_of(entries: &[String], entry: &str) -> usize {
    entries
        .iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("no {entry:?} in {entries:#?}"))
}

#[test]
fn a_batch_is_applied_with_its_positions_and_committed_only_once_apply_returned_ok() {
    let mut sink = Setup {
        lanes: 2,
        max_records: 3,
        ..Setup::default()
    }
    .start(|log, _| {
        for (key, value) in [("a", "1"), ("b", "2"), ("c", "3")] {
            log.append(TOPIC, 0, key, Some(value));
        }
    });
    sink.wait_for("commit");

    assert_eq!(
        sink.store.rows(),
        rows(&[("a", "1"), ("b", "2"), ("c", "3")])
    );
    assert_eq!(sink.store.positions(), positions(3));
    let entries = sink.journal.entries();
    let positions_written = index_of(&entries, "apply [] at [orders/0=3]");
    let committed = index_of(&entries, "commit");
    assert!(positions_written < committed, "{entries:#?}");
    // The lanes wrote the rows before the positions were written, through the first lane.
    let rows_written: Vec<usize> = (0..entries.len())
        .filter(|i| entries[*i].starts_with("apply [") && entries[*i].ends_with("at []"))
        .collect();
    assert!(!rows_written.is_empty(), "{entries:#?}");
    assert!(
        rows_written.iter().all(|i| *i < positions_written),
        "{entries:#?}"
    );
    assert_eq!(sink.stop().ok(), Some(()));
}

#[test]
fn a_transient_store_error_rewinds_to_the_stored_positions_and_skips_nothing() {
    let mut sink = Setup {
        max_records: 2,
        ..Setup::default()
    }
    .start(|log, _| {
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "b", Some("2"));
    });
    sink.wait_for("commit");
    sink.store.fail_applies(1);
    sink.log.append(TOPIC, 0, "c", Some("3"));
    sink.log.append(TOPIC, 0, "d", Some("4"));
    sink.wait_for("apply [c, d] at [orders/0=4]");

    let after = sink
        .journal
        .after("apply [c, d] at [orders/0=4] unavailable");
    assert_eq!(
        after[..4],
        [
            "positions",
            "seek orders/0 to 2",
            "read orders/0@2",
            "read orders/0@3"
        ],
        "after the outage, the records since the stored positions are read again"
    );
    assert_eq!(
        sink.store.rows(),
        rows(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")])
    );
    sink.wait_for_nth("commit", 2);
    assert_eq!(sink.store.positions(), positions(4));
    assert_eq!(sink.stop().ok(), Some(()));
}

#[test]
fn a_poison_change_is_isolated_and_stops_the_sink_naming_its_record() {
    let mut sink = Setup {
        max_records: 3,
        ..Setup::default()
    }
    .start(|log, _| {
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "b", Some("reject"));
        log.append(TOPIC, 0, "c", Some("3"));
    });

    let error = sink.outcome().expect_err("the sink stops");
    assert!(
        matches!(&error, SinkError::Poison { topic, partition: 0, offset: 1, .. } if topic == TOPIC),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("orders partition 0 offset 1"),
        "{error}"
    );
    let entries = sink.journal.entries();
    assert!(entries.contains(&"apply [a, b, c] at [orders/0=3] rejected".to_string()));
    assert!(entries.contains(&"apply [b] at [] rejected".to_string()));
    assert!(!entries.contains(&"commit".to_string()), "{entries:#?}");
    assert!(
        sink.store.positions().is_empty(),
        "no position moves past it"
    );
    assert_eq!(sink.store.row("c"), None, "nothing after it is applied");
}

#[test]
fn an_undecodable_record_stops_the_sink_before_its_batch_is_applied() {
    let mut sink = Setup::default().start(|log, _| {
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "b", Some("undecodable"));
    });

    let error = sink.outcome().expect_err("the sink stops");
    assert!(
        error.to_string().starts_with(
            "sink replica: orders partition 0 offset 1: not a plain record; the record was not applied"
        ),
        "{error}"
    );
    assert!(sink.store.rows().is_empty());
    assert!(sink.store.positions().is_empty());
}

/// A registry that refuses the sink (credentials, TLS) says nothing about the record: even
/// with a dead-letter topic, the record is not rejected; the sink stops before it.
#[test]
fn a_registry_that_refuses_the_sink_stops_it_without_rejecting_a_record() {
    let mut sink = Setup {
        dead_letter: true,
        ..Setup::default()
    }
    .start(|log, _| {
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "b", Some("registry-refused"));
    });

    let error = sink.outcome().expect_err("the sink stops");
    assert!(
        error.to_string().contains(
            "reading orders partition 0 offset 1: schema registry http://registry: Unauthorized (HTTP 401)"
        ),
        "{error}"
    );
    assert!(
        sink.dead_letters.lock().unwrap().is_empty(),
        "nothing dead-lettered"
    );
    assert!(sink.store.positions().is_empty(), "no position past it");
}

#[test]
fn with_a_dead_letter_topic_poison_is_sent_there_and_the_rest_applied() {
    let mut sink = Setup {
        dead_letter: true,
        max_records: 3,
        ..Setup::default()
    }
    .start(|log, _| {
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "b", Some("reject"));
        log.append(TOPIC, 0, "c", Some("undecodable"));
        log.append(TOPIC, 0, "d", Some("4"));
    });
    sink.wait_for("commit");

    let at = |offset| Origin {
        topic: TOPIC.into(),
        partition: 0,
        offset,
    };
    assert_eq!(
        *sink.dead_letters.lock().unwrap(),
        [(at(2), "decode".to_string()), (at(1), "apply".to_string())]
    );
    assert_eq!(sink.store.rows(), rows(&[("a", "1"), ("d", "4")]));
    assert_eq!(
        sink.store.positions(),
        positions(4),
        "past the rejected records"
    );
    assert_eq!(sink.stop().ok(), Some(()));
}

/// No record is skipped unseen: one the decoder finds no change in (here a tombstone)
/// takes the poison path like any other, and the records around it are applied.
#[test]
fn a_record_without_a_change_is_dead_lettered_not_skipped() {
    let mut sink = Setup {
        dead_letter: true,
        ..Setup::default()
    }
    .start(|log, _| {
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "b", None);
        log.append(TOPIC, 0, "c", Some("3"));
    });
    sink.wait_for("commit");
    let at = Origin {
        topic: TOPIC.into(),
        partition: 0,
        offset: 1,
    };
    sink.journal.wait_until("the tombstone dead-lettered", |_| {
        !sink.dead_letters.lock().unwrap().is_empty()
    });
    assert_eq!(
        *sink.dead_letters.lock().unwrap(),
        [(at, "decode".to_string())]
    );
    assert_eq!(sink.store.rows(), rows(&[("a", "1"), ("c", "3")]));
    assert_eq!(sink.stop().ok(), Some(()));
}

#[test]
fn a_revocation_drops_the_batch_being_gathered() {
    let mut sink = Setup {
        max_wait: Duration::from_millis(300),
        idle_check: Duration::ZERO,
        ..Setup::default()
    }
    .start(|log, _| {
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "b", Some("2"));
        log.revoke_after(TOPIC, 0, 1);
    });
    // Idle again (it checks its store's positions) after the revocation, having applied
    // nothing.
    sink.journal
        .wait_until("idle after the revocation", |entries| {
            entries
                .iter()
                .skip_while(|e| *e != "revoked")
                .any(|e| e == "positions")
        });
    let entries = sink.journal.entries();
    assert!(
        entries.iter().all(|e| !e.starts_with("apply")),
        "{entries:#?}"
    );

    // Whoever is assigned the partition next reads it again from the replica's positions.
    sink.log.assign(&[(TOPIC, 0)]);
    sink.wait_for("commit");
    assert_eq!(sink.store.rows(), rows(&[("a", "1"), ("b", "2")]));
    assert_eq!(sink.stop().ok(), Some(()));
}

#[test]
fn an_assignment_rewinds_to_the_positions_another_member_left_in_the_replica() {
    let mut sink = Setup {
        max_records: 2,
        max_wait: Duration::from_millis(300),
        ..Setup::default()
    }
    .start(|log, _| {
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "b", Some("2"));
    });
    sink.wait_for("commit");
    sink.log.revoke();
    sink.wait_for("revoked");
    // Meanwhile another member applied c and d.
    sink.log.append(TOPIC, 0, "c", Some("3"));
    sink.log.append(TOPIC, 0, "d", Some("4"));
    let version = |lsn| Version { lsn, seq: 0 };
    sink.store.put("c", "3", version(3), &[]);
    sink.store.put("d", "4", version(4), &[(TOPIC, 0, 4)]);

    sink.log.assign(&[(TOPIC, 0)]);
    sink.log.append(TOPIC, 0, "e", Some("5"));
    sink.wait_for("apply [e] at [orders/0=5]");

    let after = sink.journal.after("assigned");
    assert_eq!(after[..2], ["positions", "seek orders/0 to 4"]);
    assert!(
        after
            .iter()
            .all(|e| !e.starts_with("read orders/0@2") && !e.starts_with("read orders/0@3")),
        "what the other member applied is not read again: {after:#?}"
    );
    assert_eq!(sink.store.positions(), positions(5));
    assert_eq!(sink.stop().ok(), Some(()));
}

#[test]
fn a_store_that_lost_its_positions_while_idle_is_rewound_and_caught_up() {
    let mut sink = Setup {
        idle_check: Duration::ZERO,
        max_records: 2,
        max_wait: Duration::from_millis(50),
        ..Setup::default()
    }
    .start(|log, _| {
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "b", Some("2"));
    });
    sink.wait_for("commit");
    sink.store.lose_everything();

    // Once at the assignment, once when the loss was found.
    sink.wait_for_nth("seek orders/0 to start", 2);
    sink.wait_for_nth("commit", 2);
    assert_eq!(sink.store.rows(), rows(&[("a", "1"), ("b", "2")]));
    assert_eq!(sink.store.positions(), positions(2));
    assert_eq!(sink.stop().ok(), Some(()));
}

#[test]
fn a_stop_wakes_a_runner_waiting_out_a_store_outage_at_once() {
    let mut sink = Setup {
        backoff: || Backoff::new(Duration::from_secs(60), Duration::from_secs(60)),
        ..Setup::default()
    }
    .start(|_, store| store.down());
    sink.wait_for("positions unavailable");

    let asked = Instant::now();
    assert_eq!(sink.stop().ok(), Some(()));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "stopped after {:?} of a 30 to 60 s backoff",
        asked.elapsed()
    );
}

#[test]
fn a_stop_ends_an_idle_runner_without_waiting_for_its_batch_time() {
    let mut sink = Setup {
        max_wait: Duration::from_secs(60),
        ..Setup::default()
    }
    .start(|_, _| {});
    sink.wait_for("assigned");

    let asked = Instant::now();
    assert_eq!(sink.stop().ok(), Some(()));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

#[test]
fn a_truncate_clears_older_rows_and_no_older_change_comes_back_from_another_partition() {
    // Versions are offsets + 1: the truncate at orders/0 offset 2 is version 3, and
    // orders/1's record (version 1) is older than it, read after it or in its batch.
    let mut sink = Setup {
        lanes: 2,
        max_records: 2,
        ..Setup::default()
    }
    .start(|log, _| {
        log.assign(&[(TOPIC, 0), (TOPIC, 1)]);
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "b", Some("2"));
        log.append(TOPIC, 0, "", Some("truncate"));
        log.append(TOPIC, 0, "c", Some("3"));
        log.append(TOPIC, 1, "d", Some("older"));
    });
    let store = sink.store.clone();
    let every_record: std::collections::BTreeMap<(String, i32), i64> =
        [((TOPIC.to_string(), 0), 4), ((TOPIC.to_string(), 1), 1)].into();
    sink.journal.wait_until("every record applied", move |_| {
        store.positions() == every_record
    });

    assert_eq!(sink.store.rows(), rows(&[("c", "3")]));
    let entries = sink.journal.entries();
    // The truncate went through the first lane before the lanes wrote the changes beside it.
    let truncated = entries
        .iter()
        .position(|e| e.starts_with("apply [truncate@3]"))
        .unwrap_or_else(|| panic!("no truncate applied alone: {entries:#?}"));
    assert!(entries[truncated].ends_with("at []"), "{entries:#?}");
    assert_eq!(sink.stop().ok(), Some(()));
}

#[test]
fn a_truncate_into_a_replica_of_several_topics_stops_the_sink_naming_the_fix() {
    let mut sink = Setup {
        more_topics: &["payments"],
        ..Setup::default()
    }
    .start(|log, _| {
        log.append(TOPIC, 0, "a", Some("1"));
        log.append(TOPIC, 0, "", Some("truncate"));
    });
    let error = sink.outcome().unwrap_err().to_string();
    assert_eq!(
        error,
        "sink replica: a truncate event arrived on orders partition 0 offset 1, and this sink writes topics orders, payments into one replica: the truncate would clear the rows of every topic; give topic orders a sink (table or key_template) of its own, then restart"
    );
    assert!(
        sink.store.rows().is_empty(),
        "nothing of the batch was applied"
    );
}

#[test]
fn the_in_memory_replica_honours_the_sink_contract() {
    use connectors::{Batch, Change, Op, Sink, Value};
    let store = Arc::new(Store::default());
    let mut replica = Replica {
        store: store.clone(),
        journal: Arc::new(Journal::default()),
    };
    let change = |op, lsn| Change {
        key: vec![("id".into(), Value::Text("a".into()))],
        op,
        version: Version { lsn, seq: 0 },
    };
    let upsert = |v: &str| Op::Upsert(vec![("v".into(), Value::Text(v.into()))]);
    let apply = |replica: &mut Replica, changes| {
        let batch = Batch {
            changes,
            positions: vec![],
        };
        futures_ready(replica.apply(&batch)).unwrap();
    };
    apply(&mut replica, vec![change(upsert("new"), 5)]);
    apply(&mut replica, vec![change(upsert("stale"), 4)]);
    assert_eq!(
        store.rows(),
        rows(&[("a", "new")]),
        "a stale change never overwrites"
    );
    apply(&mut replica, vec![change(Op::Delete, 6)]);
    apply(&mut replica, vec![change(upsert("late"), 5)]);
    assert!(store.rows().is_empty(), "a delete leaves a tombstone");
    assert_eq!(store.row("a").unwrap().version, Version { lsn: 6, seq: 0 });
}

/// The output of a future that is ready at once (the in-memory replica's are).
fn futures_ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the in-memory replica never waits"),
    }
}
