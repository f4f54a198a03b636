//! Spec: from PostgreSQL 16 on, a source can decode on a physical standby, so the primary
//! carries no decoding load: a multi-host URL with `target_session_attrs=read-only` picks
//! the standby, the slot lives there, the initial snapshot is read there, and events
//! arrive while the primary takes writes. The publication, which a
//! standby cannot create, is refused with the SQL to run on the primary.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::daemon::{decode_from, Daemon, Setup, USERS_DDL};
use crate::support::targets::OwnPostgres;
use crate::support::{source_settings, unique, wait_for, Stack};

/// The major these specs run on: the run's (`WALCAST_TEST_PG`), at least 16.
fn major() -> u32 {
    Stack::get().pg_major.max(16)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_on_a_standby_streams_while_the_primary_takes_writes() {
    let primary = OwnPostgres::start_logical(&unique("sb_primary"), major()).await;
    let standby = OwnPostgres::standby_of(&primary, &unique("sb_standby")).await;
    primary
        .client("postgres")
        .await
        .batch_execute("CREATE DATABASE users")
        .await
        .unwrap();
    let on_primary = primary.client("users").await;
    on_primary.batch_execute(USERS_DDL).await.unwrap();
    on_primary
        .batch_execute(
            "INSERT INTO users (full_name, email, password_hash) \
             SELECT 'before ' || i, 'b' || i || '@example.com', 'x' FROM generate_series(1, 10) i",
        )
        .await
        .unwrap();
    standby.replayed(&primary).await;
    // The primary first: read-only makes both connections pass it by for the standby.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/users?target_session_attrs=read-only",
        primary.port, standby.port
    );
    let mut daemon = Daemon::prepare(
        "standby",
        Setup {
            source_url: Some(url.clone()),
            ..Setup::default()
        },
    )
    .await;

    // No server fits read-write while the standby is not promoted: retried, not fatal,
    // and the message says what each server was.
    let read_write = format!(
        "postgres://postgres@127.0.0.1:{}/users?target_session_attrs=read-write",
        standby.port
    );
    let e = walcast::source::protocol::ReplicationConn::connect(
        &read_write,
        "walcast:test",
        &Default::default(),
    )
    .await
    .expect_err("a standby was taken for read-write");
    assert!(e.is_transient(), "{e} must be retried");
    assert_eq!(
        e.to_string(),
        format!("no server of the source's URL is read-write (target_session_attrs): 127.0.0.1:{} is read-only\n  hint: during a failover this passes once the standby is promoted; otherwise list the primary in the source's url", standby.port)
    );

    // The publication first: a standby cannot create it, and says what to run where.
    let mut settings = source_settings(Stack::get(), &daemon.name, "users", &["public.users"]);
    settings.url = url;
    let refusal = match walcast::source::prepare(&settings).await {
        Ok(_) => panic!("a standby without the publication was accepted"),
        Err(e) => {
            assert!(!e.is_transient(), "{e} must be permanent");
            e.to_string()
        }
    };
    assert_eq!(
        refusal,
        format!(
            "source {0}: publication {0} does not exist, and the source's url reaches a standby, which cannot create it\n  hint: on the primary run CREATE PUBLICATION \"{0}\" FOR TABLE \"public\".\"users\"",
            daemon.name
        )
    );
    on_primary
        .batch_execute(&format!(
            "CREATE PUBLICATION \"{}\" FOR TABLE users",
            daemon.name
        ))
        .await
        .unwrap();

    let (code, line) = crate::failover::check_connect(&daemon.config);
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.ends_with(&format!(
            " OK   PostgreSQL {}, wal_level=logical, a standby: decoding there",
            standby
                .client("users")
                .await
                .query_one("SHOW server_version", &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        )),
        "{line}"
    );

    // The rows already there come from the initial snapshot, read on the standby.
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(
        &daemon.config,
        config.replace("snapshot = \"never\"", "snapshot = \"initial\""),
    )
    .unwrap();
    daemon.spawn();
    let on_standby = standby.client("users").await;
    let slot = daemon.name.clone();
    wait_for(
        Duration::from_secs(60),
        || format!("walcast to stream from the standby:\n{}", daemon.log_text()),
        || {
            let (on_primary, on_standby, slot) = (&on_primary, &on_standby, &slot);
            async move {
                // Creating a slot on a standby waits for a running-transactions record
                // from the primary; log one rather than wait for the bgwriter's.
                on_primary
                    .batch_execute("SELECT pg_log_standby_snapshot()")
                    .await
                    .unwrap();
                on_standby
                    .query_opt(
                        "SELECT 1 FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid \
                         WHERE s.slot_name = $1 AND r.state = 'streaming'",
                        &[slot],
                    )
                    .await
                    .unwrap()
                    .map(|_| ())
            }
        },
    )
    .await;
    for i in 1..=40 {
        on_primary
            .execute(
                "INSERT INTO users (full_name, email, password_hash) VALUES ($1, $2, 'x')",
                &[&format!("after {i}"), &format!("a{i}@example.com")],
            )
            .await
            .unwrap();
    }
    on_primary
        .batch_execute("UPDATE users SET full_name = full_name || '!' WHERE id % 2 = 0")
        .await
        .unwrap();

    let events = decode_from(&daemon.registry_url, &daemon.brokers, &daemon.topic, 75).await;
    let seen: HashSet<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e.headers["op"].clone(),
                e.key["user_id"].to_string(),
                e.value
                    .as_ref()
                    .map(|v| v["name"].to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    for i in 1..=10 {
        assert!(
            seen.contains(&("snapshot".into(), i.to_string(), format!("\"before {i}\""))),
            "row {i} was not read by the snapshot: {seen:?}"
        );
    }
    for i in 1..=40 {
        assert!(
            seen.contains(&(
                "insert".into(),
                (10 + i).to_string(),
                format!("\"after {i}\"")
            )),
            "insert {i} did not arrive: {seen:?}"
        );
    }
    let updates = seen.iter().filter(|(op, _, _)| op == "update").count();
    assert_eq!(updates, 25, "one update per even id: {seen:?}");
    // walcast status reads the slot on the standby, where pg_current_wal_lsn() fails.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["status", "--config"])
        .arg(&daemon.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("source "))
        .unwrap_or_else(|| panic!("no source line in:\n{stdout}"));
    assert!(
        line.contains(" active ") && line.contains(" lag ") && line.contains(" retained WAL "),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    // The primary decodes nothing: its only slot is the standby's physical one.
    let logical: i64 = on_primary
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logical, 0, "the primary holds a logical slot");
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());

    // Without hot_standby_feedback the primary's vacuum could take rows the slot needs.
    let on_standby_admin = standby.client("postgres").await;
    for sql in [
        "ALTER SYSTEM SET hot_standby_feedback = off",
        "SELECT pg_reload_conf()",
    ] {
        on_standby_admin.batch_execute(sql).await.unwrap();
    }
    let refusal = wait_for(
        Duration::from_secs(10),
        || "the standby to reload hot_standby_feedback = off".into(),
        || {
            let settings = &settings;
            async move { walcast::source::prepare(settings).await.err() }
        },
    )
    .await;
    assert!(!refusal.is_transient(), "{refusal} must be permanent");
    assert_eq!(
        refusal.to_string(),
        format!(
            "source {0}: the source's url reaches a standby whose hot_standby_feedback is off, so the primary may remove catalog rows slot {0} needs, and the standby would invalidate the slot\n  hint: on the standby run ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf(); and give it a physical slot on the primary (primary_slot_name)",
            daemon.name
        )
    );
}
