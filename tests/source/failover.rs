//! Spec: on PostgreSQL 17 (or the run's major, when newer), a source with `slot_failover = true` and a URL listing the
//! primary and its standby (`target_session_attrs=read-write`) follows a failover: the
//! primary dies by kill -9 while writes run, the standby is promoted, and walcast resumes
//! from the slot the standby synchronised. With exactly-once, a read_committed consumer
//! sees every committed change exactly once; without it, every committed change arrives.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::daemon::{decode_from, Daemon, Setup, USERS_DDL};
use crate::support::targets::OwnPostgres;
use crate::support::{source_settings, unique, wait_for, wait_until, RunningSource, Stack};
use walcast::source::prepare;

/// What the writer did, by xid: rows of transactions whose commit was acknowledged, and of
/// those whose commit was sent when the primary died (in doubt: either way is right).
#[derive(Default)]
struct Written {
    committed: BTreeMap<u32, usize>,
    in_doubt: BTreeMap<u32, usize>,
}

/// Writes two-row transactions through `url` (read-write) until `stop`, reconnecting
/// after the primary dies: a failed connection is retried until the standby takes writes.
fn writer(
    url: String,
    stop: Arc<AtomicBool>,
) -> (
    Arc<Mutex<Written>>,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let written: Arc<Mutex<Written>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let (record, counter) = (written.clone(), count.clone());
    let task = tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut pg, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let Ok(tx) = pg.transaction().await else {
                    break;
                };
                let mut rows = 0;
                for i in 0..2 {
                    match tx
                        .execute(
                            "INSERT INTO users (full_name, email, password_hash) VALUES ($1, $2, 'x')",
                            &[&format!("user {n}-{i}"), &format!("u{n}.{i}@example.com")],
                        )
                        .await
                    {
                        Ok(r) => rows += r as usize,
                        Err(_) => break,
                    }
                }
                let Ok(xid) = tx
                    .query_one("SELECT txid_current() % 4294967296", &[])
                    .await
                else {
                    break;
                };
                let xid = xid.get::<_, i64>(0) as u32;
                if rows != 2 {
                    break;
                }
                record.lock().unwrap().in_doubt.insert(xid, rows);
                if tx.commit().await.is_err() {
                    break;
                }
                {
                    let mut w = record.lock().unwrap();
                    w.in_doubt.remove(&xid);
                    w.committed.insert(xid, rows);
                }
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    (written, count, task)
}

/// Whether the walsender of `slot` on `pg` streams (the source is connected there).
async fn streams(pg: &tokio_postgres::Client, slot: &str) -> bool {
    pg.query_opt(
        "SELECT 1 FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid \
         WHERE s.slot_name = $1 AND r.state = 'streaming'",
        &[&slot],
    )
    .await
    .is_ok_and(|r| r.is_some())
}

/// The major these specs run on: the run's (`WALCAST_TEST_PG`), at least 17.
fn major() -> u32 {
    Stack::get().pg_major.max(17)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_standby_resumes_from_the_synchronised_slot_with_every_change_exactly_once() {
    follows_a_failover(true).await;
}

/// At least once: every committed change arrives, duplicates allowed.
#[tokio::test(flavor = "multi_thread")]
async fn without_exactly_once_a_promoted_standby_loses_no_committed_change() {
    follows_a_failover(false).await;
}

/// kill -9 of the primary while writes run, promotion of the standby, and walcast
/// following through the multi-host URL; with `exactly_once`, nothing twice either.
async fn follows_a_failover(exactly_once: bool) {
    // Names of their own: both variants run side by side.
    let tag = if exactly_once { "eos" } else { "alo" };
    let primary = OwnPostgres::start_logical(&unique(&format!("fo_primary_{tag}")), major()).await;
    let standby_name = unique(&format!("fo_standby_{tag}"));
    let standby = OwnPostgres::standby_of(&primary, &standby_name).await;
    // Commits wait for the standby, so a commit the writer saw acknowledged survives the
    // primary's death: "every committed change" is then exactly what must arrive.
    let admin = primary.client("postgres").await;
    for sql in [
        format!("ALTER SYSTEM SET synchronous_standby_names = '{standby_name}'"),
        "SELECT pg_reload_conf()".into(),
        "CREATE DATABASE users".into(),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    primary
        .client("users")
        .await
        .batch_execute(USERS_DDL)
        .await
        .unwrap();
    standby.replayed(&primary).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/users?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let mut daemon = Daemon::prepare(
        &format!("failover_{tag}"),
        Setup {
            exactly_once,
            source_url: Some(url.clone()),
            source_keys: "slot_failover = true\nreconnect_max_backoff_ms = 1000\n".into(),
            ..Setup::default()
        },
    )
    .await;
    let slot = daemon.name.clone();
    daemon.spawn();
    let on_primary = primary.client("users").await;
    wait_until(
        "walcast to stream from the primary",
        Duration::from_secs(60),
        || streams(&on_primary, &slot),
    )
    .await;
    let failover: bool = on_primary
        .query_one(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(failover, "the slot was created without failover");

    let stop = Arc::new(AtomicBool::new(false));
    let (written, count, task) = writer(url, stop.clone());
    // The standby keeps a copy of the slot once it caught up with the slot's position.
    let on_standby = standby.client("users").await;
    wait_until("the standby to synchronise the slot", Duration::from_secs(60), || {
        let (on_primary, on_standby, slot) = (&on_primary, &on_standby, &slot);
        async move {
            // The copy is kept once the primary's slot moved past where the copy started,
            // which takes a running-transactions record (the bgwriter logs one every 15 s):
            // log one now. And the slotsync worker naps while nothing changes: sync now
            // (this fails harmlessly while the worker is at it).
            on_primary.batch_execute("SELECT pg_log_standby_snapshot()").await.unwrap();
            let _ = on_standby.batch_execute("SELECT pg_sync_replication_slots()").await;
            on_standby
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND synced AND NOT temporary",
                    &[slot],
                )
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    wait_until(
        "20 transactions before the failover",
        Duration::from_secs(30),
        || {
            let n = count.load(Ordering::Relaxed);
            async move { n >= 20 }
        },
    )
    .await;

    primary.kill9();
    standby.promote().await;
    let before = count.load(Ordering::Relaxed);
    wait_until(
        "20 transactions on the promoted standby",
        Duration::from_secs(30),
        || {
            let n = count.load(Ordering::Relaxed);
            async move { n >= before + 20 }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let on_new_primary = standby.client("users").await;
    wait_for(
        Duration::from_secs(60),
        || {
            format!(
                "walcast to stream from the promoted standby:\n{}",
                daemon.log_text()
            )
        },
        || {
            let (pg, slot) = (&on_new_primary, &slot);
            async move { streams(pg, slot).await.then_some(()) }
        },
    )
    .await;

    // The pipeline's own catalog connection (slot lag for /metrics) follows too.
    wait_for(
        Duration::from_secs(30),
        || {
            format!(
                "the pipeline's catalog connection to follow:\n{}",
                daemon.log_text()
            )
        },
        || {
            let log = daemon.log_text();
            async move {
                log.contains("catalog connection opened again")
                    .then_some(())
            }
        },
    )
    .await;

    let (committed, in_doubt) = {
        let w = written.lock().unwrap();
        (w.committed.clone(), w.in_doubt.clone())
    };
    let total: usize = committed.values().sum();
    let events = decode_from(&daemon.registry_url, &daemon.brokers, &daemon.topic, total).await;
    let mut by_event_id: HashMap<&str, usize> = HashMap::new();
    let mut ids_by_xid: BTreeMap<u32, HashSet<&str>> = BTreeMap::new();
    for e in &events {
        *by_event_id.entry(&e.headers["event_id"]).or_default() += 1;
        ids_by_xid
            .entry(e.headers["xid"].parse().unwrap())
            .or_default()
            .insert(&e.headers["event_id"]);
    }
    // Distinct events per transaction: redeliveries (at least once) count once here.
    let by_xid: BTreeMap<u32, usize> = ids_by_xid.iter().map(|(x, ids)| (*x, ids.len())).collect();
    let twice: Vec<_> = by_event_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        !exactly_once || twice.is_empty(),
        "events delivered more than once: {twice:?}"
    );
    let lost: Vec<_> = committed
        .iter()
        .filter(|(xid, rows)| by_xid.get(xid) != Some(rows))
        .map(|(xid, rows)| (xid, rows, by_xid.get(xid)))
        .collect();
    assert!(
        lost.is_empty(),
        "committed transactions not delivered whole (xid, rows, events seen): {lost:?}"
    );
    let unknown: Vec<_> = by_xid
        .iter()
        .filter(|(xid, n)| !committed.contains_key(xid) && in_doubt.get(xid) != Some(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "events of transactions never written, or partly: {unknown:?}"
    );
    eprintln!(
        "{} committed transactions ({} in doubt at the kill), {} events, {} delivered again",
        committed.len(),
        in_doubt.len(),
        events.len(),
        twice.len()
    );
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert_eq!(
        log.matches("created replication slot").count(),
        1,
        "the slot was created anew on the promoted standby instead of resumed:\n{log}"
    );
}

/// The most common silent loss of change data capture, refused: the standby is promoted
/// without the slot (not a failover slot, so never synchronised). walcast follows the URL to
/// the new primary, finds no slot there, and stops naming it, instead of making a new slot
/// that would start after the changes committed meanwhile. Nothing written on the promoted
/// standby is published, and no slot is created there.
#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_without_the_slot_stops_the_source_and_publishes_nothing_past_the_gap() {
    let primary = OwnPostgres::start_logical(&unique("fo_nosync_p"), major()).await;
    let standby = OwnPostgres::standby_of(&primary, &unique("fo_nosync_s")).await;
    primary
        .client("postgres")
        .await
        .batch_execute("CREATE DATABASE users")
        .await
        .unwrap();
    let on_primary = primary.client("users").await;
    on_primary.batch_execute(USERS_DDL).await.unwrap();
    standby.replayed(&primary).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/users?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let mut daemon = Daemon::prepare(
        "failover_nosync",
        Setup {
            source_url: Some(url),
            source_keys: "reconnect_max_backoff_ms = 1000\n".into(),
            ..Setup::default()
        },
    )
    .await;
    let slot = daemon.name.clone();
    daemon.spawn();
    wait_until(
        "walcast to stream from the primary",
        Duration::from_secs(60),
        || streams(&on_primary, &slot),
    )
    .await;
    on_primary
        .batch_execute(
            "INSERT INTO users (full_name, email, password_hash) VALUES ('Before', 'before@example.com', 'x')",
        )
        .await
        .unwrap();
    crate::support::wait_confirmed_to_now(&on_primary, &slot).await;
    standby.replayed(&primary).await;

    primary.kill9();
    standby.promote().await;
    let on_new_primary = standby.client("users").await;
    wait_until("the standby to take writes", Duration::from_secs(30), || {
        let pg = &on_new_primary;
        async move {
            pg.batch_execute(
                "INSERT INTO users (full_name, email, password_hash) VALUES ('In the gap', 'gap@example.com', 'x')",
            )
            .await
            .is_ok()
        }
    })
    .await;

    let status = daemon.stops("after the promotion without the slot").await;
    assert!(!status.success(), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("replication slot {slot}")) && log.contains("slot recreate"),
        "the error names the slot and the way on:\n{log}"
    );
    let made: i64 = on_new_primary
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        made, 0,
        "a slot was created on the promoted standby:\n{log}"
    );
    let events = decode_from(&daemon.registry_url, &daemon.brokers, &daemon.topic, 1).await;
    let names: Vec<_> = events
        .iter()
        .filter_map(|e| e.value.as_ref().map(|v| v["name"].clone()))
        .collect();
    assert_eq!(names, [serde_json::json!("Before")], "{log}");
}

/// Whether `slot` is a failover slot.
async fn failover(pg: &tokio_postgres::Client, slot: &str) -> bool {
    pg.query_one(
        "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

/// A fresh database on the stack's cluster of `major`, with the users table; a superuser
/// connection to it.
async fn fresh_database(major: u32, name: &str) -> (String, tokio_postgres::Client) {
    let base = &Stack::get().pg_of(major).url;
    let connect = |db: String| async move {
        let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    };
    let admin = connect(format!("{base}/postgres")).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{base}/{name}");
    let client = connect(url.clone()).await;
    client.batch_execute(USERS_DDL).await.unwrap();
    (url, client)
}

#[tokio::test]
async fn slot_failover_is_refused_before_postgresql_17() {
    for major in [15, 16] {
        let mut settings = source_settings(Stack::get(), "old", "postgres", &["public.users"]);
        settings.url = format!("{}/postgres", Stack::get().pg_of(major).url);
        settings.slot_failover = true;
        let e = prepare(&settings).await.expect_err("accepted");
        assert!(!e.is_transient(), "{e} must be permanent");
        assert_eq!(
            e.to_string(),
            format!("source old: slot_failover = true, but PostgreSQL {major} has no failover slots (they came with 17)\n  hint: set slot_failover = false, or upgrade the server to PostgreSQL 17 or later")
        );
    }
}

#[tokio::test]
async fn an_existing_slot_is_made_a_failover_slot_and_never_unmade() {
    let name = unique("fo_alter");
    let (url, pg) = fresh_database(major(), &name).await;
    // Made by hand, as before slot_failover existed: the publication, then a slot.
    pg.batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE users"))
        .await
        .unwrap();
    pg.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&name],
    )
    .await
    .unwrap();
    assert!(!failover(&pg, &name).await);
    for (asked, expected) in [(true, true), (false, true)] {
        let mut settings = source_settings(Stack::get(), &name, &name, &["public.users"]);
        settings.url = url.clone();
        settings.slot_failover = asked;
        let mut source = RunningSource::start(settings);
        pg.execute(
            "INSERT INTO users (full_name, email, password_hash) VALUES ('a', 'a@example.com', 'x')",
            &[],
        )
        .await
        .unwrap();
        // Streaming: the flag was settled before START_REPLICATION.
        source.changes(1, Duration::from_secs(30)).await;
        assert_eq!(
            failover(&pg, &name).await,
            expected,
            "slot_failover = {asked}"
        );
        source.stop().await.unwrap();
    }
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await
        .unwrap();
    drop(pg);
    // On the stack's 17, which a run's leftover clean-up may not cover.
    let (admin, conn) = tokio_postgres::connect(
        &format!("{}/postgres", Stack::get().pg_of(major()).url),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}

/// `walcast check --connect` on `config`: its exit code and the source's line.
pub(super) fn check_connect(config: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["check", "--connect", "--timeout-ms", "8000", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("source "))
        .unwrap_or_else(|| panic!("no source line in:\n{stdout}"))
        .to_string();
    (out.status.code(), line)
}

#[tokio::test(flavor = "multi_thread")]
async fn check_connect_says_what_slot_synchronisation_lacks_on_each_server() {
    let primary = OwnPostgres::start_logical(&unique("fo_check_p"), major()).await;
    let standby_name = unique("fo_check_s");
    let standby = OwnPostgres::standby_of(&primary, &standby_name).await;
    let admin = primary.client("postgres").await;
    admin.batch_execute("CREATE DATABASE users").await.unwrap();
    primary
        .client("users")
        .await
        .batch_execute(USERS_DDL)
        .await
        .unwrap();
    standby.replayed(&primary).await;
    let daemon = Daemon::prepare(
        "fo_check",
        Setup {
            source_url: Some(format!(
                "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/users?target_session_attrs=read-write",
                primary.port, standby.port
            )),
            source_keys: "slot_failover = true\n".into(),
            ..Setup::default()
        },
    )
    .await;
    let version: String = admin
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    let (code, line) = check_connect(&daemon.config);
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.ends_with(&format!(
            " OK   PostgreSQL {version}, wal_level=logical, failover slot; standby 127.0.0.1:{} synchronises slots",
            standby.port
        )),
        "{line}"
    );

    for sql in [
        "ALTER SYSTEM RESET synchronized_standby_slots",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let (code, line) = check_connect(&daemon.config);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.ends_with(&format!(
            " FAIL slot_failover = true, but slot synchronisation lacks: on the primary 127.0.0.1:{0}, synchronized_standby_slots is empty, so walcast may receive changes a standby lacks (fix: ALTER SYSTEM SET synchronized_standby_slots = '{1}'; SELECT pg_reload_conf())",
            primary.port, standby_name
        )),
        "{line}"
    );
}
