//! Spec: a slot that is gone is never recreated silently, and a source never resumes in
//! another cluster's LSN space. A source that has published before (its progress record in
//! Kafka says so, in both delivery modes) and finds no slot, or finds another system
//! identifier, stops naming the slot, the position Kafka holds and the fix, publishing
//! nothing and creating nothing; `walcast slot recreate --snapshot` is the way on, and
//! re-reads every table.

use std::process::Command;

use crate::support::daemon::{decode, Daemon, Decoded, Setup, USERS_DDL};
use crate::support::targets::OwnPostgres;
use crate::support::Stack;
use walcast::lsn::Lsn;

async fn insert(pg: &tokio_postgres::Client, names: &[&str]) {
    for name in names {
        pg.execute(
            "INSERT INTO users (full_name, email, password_hash) VALUES ($1, $1 || '@example.com', 'x')",
            &[name],
        )
        .await
        .unwrap();
    }
}

async fn wal_end(pg: &tokio_postgres::Client) -> Lsn {
    let text: String = pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    text.parse().unwrap()
}

async fn slots(pg: &tokio_postgres::Client, slot: &str) -> i64 {
    pg.query_one(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

/// `walcast slot recreate` with `args`: exit code, stdout, stderr.
fn recreate(daemon: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["slot", "recreate", "--source", &daemon.name, "--config"])
        .arg(&daemon.config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How many distinct events (by `event_id`): at-least-once may deliver one twice.
fn distinct(events: &[Decoded]) -> usize {
    let ids: std::collections::HashSet<&String> =
        events.iter().map(|e| &e.headers["event_id"]).collect();
    ids.len()
}

fn names(events: &[Decoded], op: &str) -> Vec<String> {
    let mut names: Vec<String> = events
        .iter()
        .filter(|e| e.headers.get("op").map(String::as_str) == Some(op))
        .map(|e| {
            e.value.as_ref().unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

/// The LSN after `prefix` in `text`, up to the next space.
fn lsn_after(text: &str, prefix: &str) -> Lsn {
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} in {text}"))
        + prefix.len();
    text[at..].split(' ').next().unwrap().parse().unwrap()
}

/// The daemon stopped; the slot is dropped (what a promotion without it does), an insert and
/// a delete are committed in the gap. The next start stops with the named error, publishes
/// nothing and creates no slot; `walcast slot recreate --snapshot` then re-reads every table
/// (even with `snapshot = "never"`, as the test daemon has), and streaming goes on.
async fn a_slot_dropped_while_stopped_is_never_recreated_silently(
    prefix: &str,
    exactly_once: bool,
) {
    let mut daemon = Daemon::prepare(
        prefix,
        Setup {
            exactly_once,
            ..Setup::default()
        },
    )
    .await;
    daemon.start().await;
    let pg = daemon.pg().await;
    let before = wal_end(&pg).await;
    insert(&pg, &["Ada", "Grace"]).await;
    assert_eq!(decode(&daemon.topic, 2).await.len(), 2);
    crate::support::wait_confirmed_to_now(&pg, &daemon.name).await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    let confirmed = crate::support::confirmed_flush(&pg, &daemon.name).await;

    pg.execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
    insert(&pg, &["Linus"]).await;
    pg.execute("DELETE FROM users WHERE full_name = 'Ada'", &[])
        .await
        .unwrap();

    daemon.spawn();
    let status = daemon.stops("on the missing slot").await;
    assert_eq!(status.code(), Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    let name = &daemon.name;
    let expected = format!(
        "source {name}: replication slot {name} does not exist, but this source has published before: Kafka holds its changes up to "
    );
    assert!(log.contains(&expected), "{log}");
    let held = lsn_after(&log, &expected);
    assert!(
        before < held && held <= confirmed,
        "Kafka holds up to {held}: after {before}, at most the slot's last confirmed {confirmed}"
    );
    assert!(
        log.contains(&format!("{held} (progress topic walcast.progress.{name}). The changes committed since then went with the slot")),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "run walcast slot recreate --source {name} --snapshot and start again"
        )),
        "{log}"
    );
    assert_eq!(slots(&pg, name).await, 0, "no slot was created");
    assert_eq!(
        decode(&daemon.topic, 2).await.len(),
        2,
        "nothing was published"
    );

    // The way on is explicit, and snapshots.
    let (code, _, stderr) = recreate(&daemon, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("walcast: walcast slot recreate needs --snapshot"),
        "{stderr}"
    );
    let (code, stdout, stderr) = recreate(&daemon, &["--snapshot"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        format!("source {name}: there is no replication slot {name}; the next run creates it and reads every table in a snapshot\n")
    );
    daemon.start().await;
    let events = decode(&daemon.topic, 4).await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(names(&events, "insert"), ["Ada", "Grace"]);
    // Every row the table holds comes back; Ada, deleted in the gap, does not (her delete
    // is lost with the slot: README, Slot safety, says how to rebuild replicas).
    assert_eq!(names(&events, "snapshot"), ["Grace", "Linus"]);
    insert(&pg, &["Margaret"]).await;
    let events = decode(&daemon.topic, 5).await;
    assert_eq!(names(&events, "insert"), ["Ada", "Grace", "Margaret"]);

    // Once recreated, the source restarts as any other: no snapshot again, no refusal.
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    daemon.start().await;
    insert(&pg, &["Barbara"]).await;
    let events = decode(&daemon.topic, 6).await;
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(names(&events, "snapshot"), ["Grace", "Linus"]);
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn at_least_once_a_slot_dropped_while_stopped_is_never_recreated_silently() {
    a_slot_dropped_while_stopped_is_never_recreated_silently("slot_gone", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_a_slot_dropped_while_stopped_is_never_recreated_silently() {
    a_slot_dropped_while_stopped_is_never_recreated_silently("slot_gone_eos", true).await;
}

async fn system_identifier(pg: &tokio_postgres::Client) -> String {
    let id: i64 = pg
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .unwrap()
        .get(0);
    id.to_string()
}

/// The source's database is dumped and reloaded into another cluster, slot and publication
/// made again there, and the same source is pointed at it: its positions are another LSN
/// space. The source stops naming both system identifiers and the fix, and publishes
/// nothing; `walcast slot recreate --snapshot` moves it on purpose.
async fn a_database_moved_to_another_cluster_is_refused(prefix: &str, exactly_once: bool) {
    let mut daemon = Daemon::prepare(
        prefix,
        Setup {
            exactly_once,
            ..Setup::default()
        },
    )
    .await;
    daemon.start().await;
    let pg = daemon.pg().await;
    insert(&pg, &["Ada"]).await;
    assert_eq!(decode(&daemon.topic, 1).await.len(), 1);
    crate::support::wait_confirmed_to_now(&pg, &daemon.name).await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    let old_id = system_identifier(&pg).await;

    let moved = logical_cluster(&daemon.name).await;
    let admin = moved.client("postgres").await;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", daemon.db))
        .await
        .unwrap();
    let target = moved.client(&daemon.db).await;
    target.batch_execute(USERS_DDL).await.unwrap();
    insert(&target, &["Ada", "Grace"]).await;
    for sql in [
        format!("CREATE PUBLICATION {0} FOR TABLE users", daemon.name),
        format!(
            "SELECT pg_create_logical_replication_slot('{0}', 'pgoutput')",
            daemon.name
        ),
    ] {
        target.batch_execute(&sql).await.unwrap();
    }
    let new_id = system_identifier(&target).await;
    assert_ne!(old_id, new_id);
    point_at(&daemon, &moved.url(&daemon.db));

    daemon.spawn();
    let status = daemon.stops("on another cluster").await;
    assert_eq!(status.code(), Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    let name = &daemon.name;
    assert!(
        log.contains(&format!(
            "source {name}: the database is another PostgreSQL cluster (system identifier {new_id}) than the one this source published from (system identifier {old_id}, up to "
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "if it moved on purpose, run walcast slot recreate --source {name} --snapshot and start again"
        )),
        "{log}"
    );
    insert(&target, &["Linus"]).await;
    assert_eq!(
        decode(&daemon.topic, 1).await.len(),
        1,
        "nothing was published"
    );

    // Moved on purpose: the new cluster's rows are read through a new slot.
    let (code, stdout, stderr) = recreate(&daemon, &["--snapshot"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with(&format!("dropped replication slot {name} of source {name}")),
        "{stdout}"
    );
    daemon.spawn();
    let events = decode(&daemon.topic, 4).await;
    assert_eq!(names(&events, "snapshot"), ["Ada", "Grace", "Linus"]);
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn at_least_once_a_database_moved_to_another_cluster_is_refused() {
    a_database_moved_to_another_cluster_is_refused("slot_moved", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_a_database_moved_to_another_cluster_is_refused() {
    a_database_moved_to_another_cluster_is_refused("slot_moved_eos", true).await;
}

/// A slot dropped while walcast streams from it (its walsender ended first, as a failover
/// or an operator does): the reconnect never creates a new one, and the source stops
/// naming the slot and the fix; nothing committed after the drop is published.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_dropped_while_streaming_is_never_recreated() {
    let mut daemon = Daemon::prepare("slot_vanished", Setup::default()).await;
    daemon.start().await;
    let pg = daemon.pg().await;
    insert(&pg, &["Ada"]).await;
    assert_eq!(decode(&daemon.topic, 1).await.len(), 1);
    crate::support::wait_confirmed_to_now(&pg, &daemon.name).await;
    // End the walsender and drop the slot before walcast reconnects (50 ms at the
    // earliest); when it wins the race, end the new walsender again.
    crate::support::wait_until(
        "the slot to be dropped between two connections",
        std::time::Duration::from_secs(60),
        || {
            let (pg, slot) = (&pg, &daemon.name);
            async move {
                pg.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                    &[slot],
                )
                .await
                .unwrap();
                for _ in 0..20 {
                    // Fails when the slot became active again in between: try again.
                    let _ = pg
                        .execute(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                            &[slot],
                        )
                        .await;
                    if slots(pg, slot).await == 0 {
                        return true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                false
            }
        },
    )
    .await;
    insert(&pg, &["Grace"]).await;
    let status = daemon.stops("on the slot gone").await;
    assert_eq!(status.code(), Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    let name = &daemon.name;
    // The source's reconnect sees it first; a restart of the whole pipeline would say it
    // from the progress record.
    assert!(
        log.contains(&format!(
            "source {name}: replication slot {name} disappeared while walcast streamed from it"
        )) || log.contains(&format!(
            "source {name}: replication slot {name} does not exist, but this source has published before"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "run walcast slot recreate --source {name} --snapshot"
        )),
        "{log}"
    );
    assert_eq!(slots(&pg, name).await, 0, "no slot was created");
    assert_eq!(
        decode(&daemon.topic, 1).await.len(),
        1,
        "nothing was published"
    );
}

/// A cluster of the test's own, of the major under test, that can be a source.
async fn logical_cluster(name: &str) -> OwnPostgres {
    OwnPostgres::start_major_settings(name, Stack::get().pg_major, &[("wal_level", "logical")])
        .await
}

/// Replaces the URL line of the daemon's configuration with `url`.
fn point_at(daemon: &Daemon, url: &str) {
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let line = config
        .lines()
        .find(|l| l.starts_with("url = \"postgres://"))
        .unwrap()
        .to_string();
    std::fs::write(
        &daemon.config,
        config.replace(&line, &format!("url = \"{url}\"")),
    )
    .unwrap();
}

/// The source's database is restored from a backup taken before its last changes were
/// published (same cluster, same system identifier, the slot in the backup): its WAL ends
/// before what Kafka holds, and its next changes would reuse positions the replicas hold.
/// The source stops naming both positions and the fix, publishing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_restored_from_an_earlier_backup_is_refused() {
    let mut daemon = Daemon::prepare("slot_restored", Setup::default()).await;
    let own = logical_cluster(&daemon.name).await;
    own.client("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {}", daemon.db))
        .await
        .unwrap();
    let pg = own.client(&daemon.db).await;
    pg.batch_execute(USERS_DDL).await.unwrap();
    point_at(&daemon, &own.url(&daemon.db));
    daemon.spawn();
    // The new source's slot decodes what is committed once it exists.
    crate::support::wait_until(
        "the slot to stream",
        std::time::Duration::from_secs(60),
        || {
            let (pg, slot) = (&pg, &daemon.name);
            async move {
                pg.query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                    &[slot],
                )
                .await
                .unwrap()
                .is_some()
            }
        },
    )
    .await;
    insert(&pg, &["Ada"]).await;
    assert_eq!(decode(&daemon.topic, 1).await.len(), 1);
    crate::support::wait_confirmed_to_now(&pg, &daemon.name).await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());

    // The backup: a copy of the stopped cluster, slot included.
    drop(pg);
    own.stop();
    let backup = own.data.with_extension("backup");
    let _ = std::fs::remove_dir_all(&backup);
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        assert!(Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap()
            .success());
    };
    copy(&own.data, &backup);
    own.start_again().await;
    daemon.spawn();
    let pg = own.client(&daemon.db).await;
    // Enough WAL that the restored cluster's end stays behind what Kafka holds.
    insert(&pg, &["Grace", "Linus"]).await;
    pg.batch_execute("SELECT pg_switch_wal()").await.unwrap();
    insert(&pg, &["Margaret"]).await;
    assert_eq!(distinct(&decode(&daemon.topic, 4).await), 4);
    crate::support::wait_confirmed_to_now(&pg, &daemon.name).await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());

    // The restore.
    drop(pg);
    own.stop();
    std::fs::remove_dir_all(&own.data).unwrap();
    copy(&backup, &own.data);
    std::fs::remove_dir_all(&backup).unwrap();
    own.start_again().await;

    daemon.spawn();
    let status = daemon.stops("on the restored database").await;
    assert_eq!(status.code(), Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    let name = &daemon.name;
    assert!(
        log.contains(&format!("source {name}: the database's WAL ends at ")),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "up to where Kafka holds this source's changes (progress topic walcast.progress.{name}): it was restored from an earlier backup"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "if the restore is meant to stay, run walcast slot recreate --source {name} --snapshot and start again"
        )),
        "{log}"
    );
    let pg = own.client(&daemon.db).await;
    insert(&pg, &["Barbara"]).await;
    let events = decode(&daemon.topic, 4).await;
    assert_eq!(distinct(&events), 4, "nothing was published: {events:?}");
}

/// `walcast slot drop` is the operator saying the slot may go: the next start is a new
/// source's (a new slot; with `snapshot = "never"`, as here, no snapshot), not a refusal.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_walcast_slot_drop_dropped_starts_anew() {
    let mut daemon = Daemon::prepare("slot_drop_anew", Setup::default()).await;
    daemon.start().await;
    let pg = daemon.pg().await;
    insert(&pg, &["Ada"]).await;
    assert_eq!(decode(&daemon.topic, 1).await.len(), 1);
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    let out = Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["slot", "drop", "--source", &daemon.name, "--config"])
        .arg(&daemon.config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(
        "; the next run starts with a new slot (and a new snapshot unless snapshot = \"never\")\n"
    ));
    daemon.start().await;
    insert(&pg, &["Grace"]).await;
    let events = decode(&daemon.topic, 2).await;
    assert_eq!(names(&events, "insert"), ["Ada", "Grace"]);
    assert!(names(&events, "snapshot").is_empty());
    assert!(
        daemon.log_text().contains("this source starts anew"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// The snapshot `walcast slot recreate --snapshot` asks for survives a kill -9 even with
/// `snapshot = "never"`: the progress record says it is pending, so the next start reads on
/// until every row arrived.
#[tokio::test(flavor = "multi_thread")]
async fn the_snapshot_of_a_recreated_slot_resumes_after_a_kill_9() {
    let mut daemon = Daemon::prepare("slot_resume", Setup::default()).await;
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(
        &daemon.config,
        config.replace(
            "snapshot = \"never\"\n",
            "snapshot = \"never\"\nsnapshot_chunk_rows = 100\nsnapshot_max_rows_per_sec = 300\n",
        ),
    )
    .unwrap();
    daemon.start().await;
    let pg = daemon.pg().await;
    insert(&pg, &["Ada"]).await;
    assert_eq!(decode(&daemon.topic, 1).await.len(), 1);
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
    pg.batch_execute("INSERT INTO users (full_name, email, password_hash) SELECT 'u' || g, 'u' || g || '@example.com', 'x' FROM generate_series(1, 3000) g")
        .await
        .unwrap();

    let (code, _, stderr) = recreate(&daemon, &["--snapshot"]);
    assert_eq!(code, Some(0), "{stderr}");
    daemon.start().await;
    crate::support::wait_until(
        "the snapshot to start",
        std::time::Duration::from_secs(60),
        || async { daemon.log_text().contains("snapshot of table started") },
    )
    .await;
    daemon.kill9();
    daemon.start().await;
    let events = decode(&daemon.topic, 3001).await;
    let read: std::collections::HashSet<i64> = events
        .iter()
        .filter(|e| e.headers["op"] == "snapshot")
        .map(|e| e.value.as_ref().unwrap()["user_id"].as_i64().unwrap())
        .collect();
    assert_eq!(read.len(), 3001, "every row, Ada's included, is read");
    let log = daemon.log_text();
    assert_eq!(
        log.matches("snapshot of table started").count(),
        2,
        "read again after the kill: {log}"
    );
    assert!(
        log.contains("the snapshot walcast slot recreate asked for is complete"),
        "{log}"
    );
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}
