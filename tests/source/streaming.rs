//! Spec: large transactions stream while in progress and are emitted on commit only; aborted
//! ones (and aborted savepoints) emit nothing; a restart resumes exactly after what was
//! acknowledged, and nothing unacknowledged is ever confirmed.

use std::time::Duration;

use crate::support::{
    confirmed_flush, source_settings, unique, wait_for, wait_until, RunningSource, Stack,
};
use walcast::source::value::Value;

/// A database, table and replication role whose walsender streams any transaction over
/// 64 kB (`logical_decoding_work_mem`), so streaming is exercised with modest data.
async fn streaming_db(stack: &Stack, prefix: &str) -> (String, String, tokio_postgres::Client) {
    let name = unique(prefix);
    let db = stack.fresh_pg_database(&name).await;
    let role = format!("{name}_r");
    stack
        .pg("postgres")
        .await
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN REPLICATION;
             ALTER ROLE {role} SET logical_decoding_work_mem = '64kB';
             GRANT CREATE ON DATABASE {name} TO {role};"
        ))
        .await
        .unwrap();
    let pg = stack.pg(&db).await;
    pg.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, label text); ALTER TABLE items OWNER TO {role};"
    ))
    .await
    .unwrap();
    (name, role, pg)
}

fn id(change: &walcast::source::Change) -> i32 {
    match change
        .new
        .as_ref()
        .unwrap()
        .get(&change.table, "id")
        .unwrap()
        .unwrap()
    {
        Value::Int4(i) => i,
        other => panic!("id {other:?}"),
    }
}

#[tokio::test]
async fn streamed_transactions_emit_on_commit_and_aborts_emit_nothing() {
    let stack = Stack::get();
    let (name, role, pg) = streaming_db(stack, "stream_abort").await;
    let mut settings = source_settings(stack, &name, &name, &["public.items"]);
    settings.url = stack.pg_url_for(&role, &name);
    settings.spill_threshold_bytes = 32 * 1024; // spill to disk too
    let mut source = RunningSource::start_streaming(stack, &name, settings).await;

    // Aborted whole.
    pg.batch_execute("BEGIN; INSERT INTO items SELECT g, repeat('x', 50) FROM generate_series(100000, 104999) g; ROLLBACK;")
        .await
        .unwrap();
    // Committed, with a rolled-back savepoint in the middle.
    pg.batch_execute(
        "BEGIN;
         INSERT INTO items SELECT g, repeat('a', 50) FROM generate_series(1, 3000) g;
         SAVEPOINT s;
         INSERT INTO items SELECT g, repeat('b', 50) FROM generate_series(200000, 202999) g;
         ROLLBACK TO SAVEPOINT s;
         INSERT INTO items SELECT g, repeat('c', 50) FROM generate_series(3001, 3010) g;
         COMMIT;",
    )
    .await
    .unwrap();
    pg.execute("INSERT INTO items VALUES (9999, 'small')", &[])
        .await
        .unwrap();

    let txns = source.transactions(2, Duration::from_secs(60)).await;
    let big = &txns[0];
    let ids: Vec<i32> = big.changes.iter().map(id).collect();
    assert_eq!(
        ids,
        (1..=3010).collect::<Vec<_>>(),
        "the committed rows, and only those, in order"
    );
    assert!(big
        .changes
        .iter()
        .enumerate()
        .all(|(i, c)| c.seq == i as u32 && c.lsn == big.commit_lsn));
    assert_eq!(txns[1].changes.iter().map(id).collect::<Vec<_>>(), [9999]);
    assert!(txns[0].commit_lsn < txns[1].commit_lsn);

    // PostgreSQL 18 no longer streams a transaction it already knows aborted, so there only
    // the committed one is streamed.
    let streamed = crate::support::streamed_transactions(&pg, &name).await;
    let large = if stack.pg_major >= 18 { 1 } else { 2 };
    assert!(
        streamed >= large,
        "the server streamed the large transactions ({streamed}, expected {large} or more on PostgreSQL {})",
        stack.pg_major
    );
    source.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_resumes_after_the_acknowledged_position_without_gap() {
    let stack = Stack::get();
    let (name, role, pg) = streaming_db(stack, "resume").await;
    let mut settings = source_settings(stack, &name, &name, &["public.items"]);
    settings.url = stack.pg_url_for(&role, &name);
    let mut source = RunningSource::start_streaming(stack, &name, settings.clone()).await;
    for i in 1..=10 {
        pg.execute("INSERT INTO items VALUES ($1, 'row')", &[&i])
            .await
            .unwrap();
    }
    let txns = source.transactions(10, Duration::from_secs(30)).await;

    // Only the first four are acknowledged downstream; the source must not confirm more.
    source.ack(txns[3].end_lsn);
    wait_until(
        "the acknowledged position to be confirmed",
        Duration::from_secs(10),
        || async { confirmed_flush(&pg, &name).await >= txns[3].end_lsn },
    )
    .await;
    // Several status intervals later it still has not gone past it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(confirmed_flush(&pg, &name).await, txns[3].end_lsn);
    source.kill().await;

    // After a crash, a new source gets everything after the acknowledged position, once.
    let mut again = RunningSource::start_streaming(stack, &name, settings).await;
    pg.execute("INSERT INTO items VALUES (11, 'row')", &[])
        .await
        .unwrap();
    let resumed = again.transactions(7, Duration::from_secs(30)).await;
    let ids: Vec<i32> = resumed
        .iter()
        .flat_map(|t| t.changes.iter().map(id))
        .collect();
    assert_eq!(ids, (5..=11).collect::<Vec<_>>());
    assert_eq!(
        resumed
            .iter()
            .map(|t| (t.commit_lsn, t.xid))
            .take(6)
            .collect::<Vec<_>>(),
        txns[4..]
            .iter()
            .map(|t| (t.commit_lsn, t.xid))
            .collect::<Vec<_>>(),
        "redelivered transactions keep their commit LSN and xid, so their (lsn, seq) are stable"
    );
    again.stop().await.unwrap();
}

#[tokio::test]
async fn a_lost_connection_reconnects_and_resumes_without_gap() {
    let stack = Stack::get();
    let (name, role, pg) = streaming_db(stack, "reconnect").await;
    let mut settings = source_settings(stack, &name, &name, &["public.items"]);
    settings.url = stack.pg_url_for(&role, &name);
    settings.reconnect_max_backoff = Duration::from_millis(500);
    let mut source = RunningSource::start_streaming(stack, &name, settings).await;
    for i in 1..=5 {
        pg.execute("INSERT INTO items VALUES ($1, 'before')", &[&i])
            .await
            .unwrap();
    }
    let first = source.transactions(5, Duration::from_secs(30)).await;
    source.ack(first[2].end_lsn);

    // The server ends the walsender, as on a failover or an administrator's kill.
    let killed: bool = pg
        .query_one(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    for i in 6..=8 {
        pg.execute("INSERT INTO items VALUES ($1, 'after')", &[&i])
            .await
            .unwrap();
    }
    // Everything after the confirmed position comes again (at least once), then the new rows.
    let seen = tokio::sync::Mutex::new((source, std::collections::BTreeSet::new()));
    wait_for(
        Duration::from_secs(30),
        || "the source to resume".to_string(),
        || async {
            let (source, ids) = &mut *seen.lock().await;
            for t in source.transactions(1, Duration::from_secs(30)).await {
                ids.extend(t.changes.iter().map(id));
            }
            ids.contains(&8).then_some(())
        },
    )
    .await;
    let (source, ids) = seen.into_inner();
    assert!(
        (4..=8).all(|i| ids.contains(&i)),
        "a gap after reconnecting: {ids:?}"
    );
    assert!(!source.task.is_finished(), "the source kept running");
    source.stop().await.unwrap();
}

#[tokio::test]
async fn the_heartbeat_keeps_an_idle_slot_advancing() {
    let stack = Stack::get();
    let (name, role, pg) = streaming_db(stack, "heartbeat").await;
    pg.batch_execute(&format!(
        "CREATE TABLE walcast_heartbeat (source text PRIMARY KEY, ts timestamptz NOT NULL);
         ALTER TABLE walcast_heartbeat OWNER TO {role};"
    ))
    .await
    .unwrap();
    let mut settings = source_settings(stack, &name, &name, &["public.items"]);
    settings.url = stack.pg_url_for(&role, &name);
    settings.heartbeat_interval = Some(Duration::from_millis(100));
    settings.heartbeat_table = Some("public.walcast_heartbeat".into());
    let source = RunningSource::start_streaming(stack, &name, settings).await;
    let start = confirmed_flush(&pg, &name).await;

    // No change to the published table at all, yet the slot's position moves on, and the
    // heartbeat table says the source is alive.
    wait_until(
        "the idle slot to advance with a fresh heartbeat",
        Duration::from_secs(20),
        || async {
            let beat: Option<bool> = pg
                .query_opt(
                    "SELECT ts > now() - interval '5 seconds' FROM walcast_heartbeat WHERE source = $1",
                    &[&name],
                )
                .await
                .unwrap()
                .map(|r| r.get(0));
            beat == Some(true) && confirmed_flush(&pg, &name).await > start
        },
    )
    .await;
    source.stop().await.unwrap();
}
