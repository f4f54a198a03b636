//! Sink benchmark: each connector's apply rate against the same version-guarded upsert run
//! by the server itself, in the same run (issue #14's target: ≥ 0.7× for inserts and for
//! updates, on PostgreSQL and on MySQL), plus Redis's rate.
//!
//! The rows are user-ish (id, name, email, n, at), applied in batches of
//! `batch_max_records` (default 1000), first as inserts (new keys), then as updates (every key
//! again at a higher version).
//! - **walcast**: the connector's `apply`, each batch one transaction with the version
//!   guard, the tombstone check and the offsets upsert, over the real client protocol. The
//!   batches are built before the clock starts and dropped after it stops (the time it took
//!   is printed): what is timed is `apply`, as the reference's rows are staged untimed.
//! - **the server's own upsert**: the same rows staged beforehand in a table of the same
//!   server (not timed), then, per batch of the same size, the same statement shape the
//!   connector sends (the guarded `INSERT … ON CONFLICT` / `ON DUPLICATE KEY UPDATE`, the
//!   tombstone check, the truncate floor read share-locked, and the offsets upsert) run from
//!   the staging table, one transaction per
//!   batch: everything walcast does except carrying the rows over the wire. That is the limit.
//!   Its tombstone check selects the batch's keys by range, which the consecutive ids allow;
//!   the MySQL connector does the same for runs of consecutive integer keys, and names the
//!   others one by one.
//!
//! The figures, what they mean and what moved them are in `bench/README.md` (issue #14) and in
//! the connectors' module docs.
//!
//! Run: `scripts/stack up && cargo bench --bench sink`. `WALCAST_BENCH_ROWS` sets the rows
//! (default 100000), `WALCAST_BENCH_BATCH` the batch size, `WALCAST_BENCH_STORES` which stores
//! (default `postgres,mysql,redis`).

#[path = "stack.rs"]
mod stack;
use stack::{fresh_database, stack};
use std::time::{Duration, Instant};

use connectors::mysql::MysqlSink;
use connectors::postgres::PostgresSink;
use connectors::redis::{RedisSettings, RedisSink};
use connectors::{Batch, Change, Op, Position, Sink, TableSettings, Value, Version};
use mysql_async::prelude::Queryable;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const EPOCH_AT: i64 = 1_700_000_000_000_000;

fn change(id: i64, round: u64) -> Change {
    Change {
        key: vec![("id".into(), Value::Long(id))],
        op: Op::Upsert(vec![
            ("name".into(), Value::Text(format!("user {id} r{round}"))),
            ("email".into(), Value::Text(format!("user{id}@example.com"))),
            ("n".into(), Value::Long(id * 7 + round as i64)),
            ("at".into(), Value::Timestamp(EPOCH_AT + id * 1_000)),
        ]),
        version: Version {
            lsn: round * 1_000_000_000 + id as u64,
            seq: 0,
        },
    }
}

/// Every row at `round`, in batches of `batch`, each with its position.
fn batches(rows: usize, batch: usize, round: u64) -> Vec<Batch> {
    let mut offset = 0i64;
    (0..rows as i64)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|chunk| {
            offset += chunk.len() as i64;
            Batch {
                changes: chunk.iter().map(|id| change(*id, round)).collect(),
                positions: vec![Position {
                    topic: "users.user".into(),
                    partition: 0,
                    next_offset: offset,
                }],
            }
        })
        .collect()
}

/// walcast's apply of every row at `round`, batch by batch. The batches are built (and
/// dropped) outside the time, as the reference's rows are staged outside its time: what is
/// timed is `apply`.
async fn apply<S: Sink>(lanes: &mut [S], rows: usize, batch: usize, round: u64) -> Duration {
    let built = Instant::now();
    let batches = batches(rows, batch, round);
    let built = built.elapsed();
    let start = Instant::now();
    for b in &batches {
        walcast::sink::apply_over(lanes, b).await.unwrap();
    }
    let elapsed = start.elapsed();
    eprintln!(
        "(building round {round}'s {} batches took {built:.1?}, untimed)",
        batches.len()
    );
    drop(batches);
    elapsed
}

/// Runs `statement(lo, hi)` for every batch `[lo, hi)`: the server's own rate.
async fn per_batch<F, Fut>(rows: usize, batch: usize, mut statement: F) -> Duration
where
    F: FnMut(i64, i64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut lo = 0i64;
    while lo < rows as i64 {
        let hi = (lo + batch as i64).min(rows as i64);
        statement(lo, hi).await;
        lo = hi;
    }
    start.elapsed()
}

fn table_settings(url: String, table: &str) -> TableSettings {
    TableSettings {
        url,
        table: table.into(),
        key: vec!["id".into()],
        columns: Default::default(),
        fields: None,
        consumer: "bench".into(),
        auto_create: false,
        auto_add_columns: false,
        // Plain TCP, as the server-side reference runs without any transport.
        tls_mode: Some(connectors::tls::TlsMode::Disable),
        tls_ca_file: None,
    }
}

fn report(store: &str, what: &str, rows: usize, walcast: Duration, server: Duration) -> f64 {
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    let ratio = server.as_secs_f64() / walcast.as_secs_f64();
    println!(
        "| {store} | {what} | {:.0} | {:.0} | {ratio:.2} |",
        rate(walcast),
        rate(server)
    );
    ratio
}

async fn postgres(rows: usize, batch: usize) {
    let s = stack();
    let db = "walcast_bench_sink";
    let client = fresh_database(&s, db).await;
    client
        .batch_execute(
            "CREATE TABLE replica (id bigint PRIMARY KEY, name text, email text, n bigint, at timestamptz,
               _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL);
             CREATE TABLE server_replica (LIKE replica INCLUDING ALL);
             CREATE TABLE server_replica_walcast_tombstones (id bigint PRIMARY KEY, _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL);
             CREATE TABLE server_offsets (consumer text, topic text, partition int, next_offset bigint, PRIMARY KEY (consumer, topic, partition));
             CREATE TABLE server_truncations (replica text PRIMARY KEY, lsn bigint NOT NULL, seq integer NOT NULL);
             CREATE TABLE stage (round int, id bigint, name text, email text, n bigint, at timestamptz, l bigint, s int, PRIMARY KEY (round, id));",
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO stage SELECT r, g, 'user ' || g || ' r' || r, 'user' || g || '@example.com', g * 7 + r,
               to_timestamp(($1::bigint + g * 1000) / 1e6), r::bigint * 1000000000 + g, 0
             FROM generate_series(0, $2::bigint - 1) g, generate_series(1, 2) r",
            &[&EPOCH_AT, &(rows as i64)],
        )
        .await
        .unwrap();
    client.batch_execute("ANALYZE stage").await.unwrap();
    let server = |round: i32| {
        let client = &client;
        per_batch(rows, batch, move |lo, hi| async move {
            client
                .batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO server_truncations VALUES ('bench', 0, 0) ON CONFLICT (replica) DO NOTHING;
                     INSERT INTO server_replica AS t (id, name, email, n, at, _walcast_lsn, _walcast_seq)
                     SELECT v.id, v.name, v.email, v.n, v.at, v.l, v.s FROM stage v
                     WHERE v.round = {round} AND v.id >= {lo} AND v.id < {hi}
                       AND NOT EXISTS (SELECT 1 FROM server_replica_walcast_tombstones d WHERE d.id = v.id AND (d._walcast_lsn, d._walcast_seq) >= (v.l, v.s))
                       AND (v.l, v.s) > (SELECT f.lsn, f.seq FROM server_truncations f WHERE f.replica = 'bench' FOR SHARE)
                     ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, n = EXCLUDED.n, at = EXCLUDED.at,
                       _walcast_lsn = EXCLUDED._walcast_lsn, _walcast_seq = EXCLUDED._walcast_seq
                     WHERE (t._walcast_lsn, t._walcast_seq) < (EXCLUDED._walcast_lsn, EXCLUDED._walcast_seq);
                     INSERT INTO server_offsets VALUES ('bench', 'users.user', 0, {hi})
                     ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset;
                     COMMIT;"
                ))
                .await
                .unwrap();
        })
    };
    let server_inserts = server(1).await;
    let server_updates = server(2).await;
    let settings = table_settings(format!("{}/{db}", s.pg_url), "replica");
    for parallelism in [1, 2] {
        client
            .batch_execute(
                "TRUNCATE replica; TRUNCATE replica_walcast_tombstones; TRUNCATE walcast_offsets",
            )
            .await
            .unwrap_or(());
        let mut lanes = Vec::new();
        for _ in 0..parallelism {
            lanes.push(PostgresSink::connect(settings.clone()).await.unwrap());
        }
        let inserts = apply(&mut lanes, rows, batch, 1).await;
        let updates = apply(&mut lanes, rows, batch, 2).await;
        let store = format!("PostgreSQL, {parallelism} lane(s)");
        report(&store, "inserts", rows, inserts, server_inserts);
        report(&store, "updates", rows, updates, server_updates);
        let updated: i64 = client
            .query_one("SELECT count(*) FROM replica WHERE name LIKE '% r2'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(updated as usize, rows, "every row was updated");
    }
}

async fn mysql(rows: usize, batch: usize) {
    let s = stack();
    let base = s.mysql_url.clone();
    let mut admin = mysql_async::Conn::new(mysql_async::Opts::from_url(&base).unwrap())
        .await
        .unwrap();
    admin
        .query_drop(
            "DROP DATABASE IF EXISTS walcast_bench_sink; CREATE DATABASE walcast_bench_sink",
        )
        .await
        .unwrap();
    let url = format!("{base}/walcast_bench_sink");
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
        .await
        .unwrap();
    conn.query_drop(
        "CREATE TABLE replica (id BIGINT PRIMARY KEY, name TEXT, email TEXT, n BIGINT, at DATETIME(6),
           _walcast_lsn BIGINT NOT NULL, _walcast_seq INT NOT NULL);
         CREATE TABLE server_replica LIKE replica;
         CREATE TABLE server_replica_walcast_tombstones (id BIGINT PRIMARY KEY, _walcast_lsn BIGINT NOT NULL, _walcast_seq INT NOT NULL);
         CREATE TABLE server_offsets (consumer VARCHAR(255), topic VARCHAR(255), `partition` INT, next_offset BIGINT, PRIMARY KEY (consumer, topic, `partition`));
         CREATE TABLE server_truncations (replica VARCHAR(255) PRIMARY KEY, lsn BIGINT NOT NULL, seq INT NOT NULL);
         INSERT INTO server_truncations VALUES ('bench', 0, 0);
         CREATE TABLE stage (round INT, id BIGINT, name TEXT, email TEXT, n BIGINT, at DATETIME(6), l BIGINT, s INT, PRIMARY KEY (round, id));",
    )
    .await
    .unwrap();
    for round in 1..=2 {
        let mut lo = 0;
        while lo < rows {
            let hi = (lo + 5000).min(rows);
            let values: Vec<String> = (lo..hi)
                .map(|g| {
                    format!(
                        "({round}, {g}, 'user {g} r{round}', 'user{g}@example.com', {}, FROM_UNIXTIME({}), {}, 0)",
                        g * 7 + round,
                        (EPOCH_AT + g as i64 * 1000) as f64 / 1e6,
                        round as u64 * 1_000_000_000 + g as u64
                    )
                })
                .collect();
            conn.query_drop(format!("INSERT INTO stage VALUES {}", values.join(", ")))
                .await
                .unwrap();
            lo = hi;
        }
    }
    // The connector's guard, with the stored columns qualified: INSERT … SELECT from a table
    // with the same column names would make them ambiguous.
    const NEWER: &str = "(server_replica._walcast_lsn, server_replica._walcast_seq) < (VALUES(_walcast_lsn), VALUES(_walcast_seq))";
    let conn = tokio::sync::Mutex::new(conn);
    let server = |round: i32| {
        let conn = &conn;
        per_batch(rows, batch, move |lo, hi| async move {
            let mut c = conn.lock().await;
            c.query_drop(format!(
                "START TRANSACTION;
                 SELECT lsn, seq FROM server_truncations WHERE replica = 'bench' LOCK IN SHARE MODE;
                 INSERT INTO server_replica (id, name, email, n, at, _walcast_lsn, _walcast_seq)
                 SELECT id, name, email, n, at, l, s FROM stage WHERE round = {round} AND id >= {lo} AND id < {hi}
                 ON DUPLICATE KEY UPDATE name = IF({NEWER}, VALUES(name), server_replica.name),
                   email = IF({NEWER}, VALUES(email), server_replica.email),
                   n = IF({NEWER}, VALUES(n), server_replica.n), at = IF({NEWER}, VALUES(at), server_replica.at),
                   _walcast_seq = IF({NEWER}, VALUES(_walcast_seq), server_replica._walcast_seq),
                   _walcast_lsn = GREATEST(server_replica._walcast_lsn, VALUES(_walcast_lsn));
                 DELETE t FROM server_replica AS t JOIN server_replica_walcast_tombstones AS d ON t.id = d.id
                 WHERE t.id >= {lo} AND t.id < {hi} AND (d._walcast_lsn, d._walcast_seq) >= (t._walcast_lsn, t._walcast_seq);
                 INSERT INTO server_offsets VALUES ('bench', 'users.user', 0, {hi})
                 ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset);
                 COMMIT;"
            ))
            .await
            .unwrap();
        })
    };
    let server_inserts = server(1).await;
    let server_updates = server(2).await;
    let mut lanes = vec![MysqlSink::connect(table_settings(url, "replica"))
        .await
        .unwrap()];
    let inserts = apply(&mut lanes, rows, batch, 1).await;
    let updates = apply(&mut lanes, rows, batch, 2).await;
    report(
        "MySQL/MariaDB, 1 lane",
        "inserts",
        rows,
        inserts,
        server_inserts,
    );
    report(
        "MySQL/MariaDB, 1 lane",
        "updates",
        rows,
        updates,
        server_updates,
    );
}

async fn redis(rows: usize, batch: usize) {
    let s = stack();
    let settings = RedisSettings {
        url: s.redis_url.clone(),
        key_template: format!("bench{}:{{id}}", std::process::id()),
        fields: None,
        ttl_secs: 0,
        tombstone_ttl_secs: 3600,
        consumer: format!("bench{}", std::process::id()),
        tls_ca_file: None,
    };
    let mut lanes = vec![RedisSink::connect(settings).await.unwrap()];
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    let inserts = apply(&mut lanes, rows, batch, 1).await;
    let updates = apply(&mut lanes, rows, batch, 2).await;
    println!(
        "Redis, 1 lane: inserts {:.0} rows/s, updates {:.0} rows/s",
        rate(inserts),
        rate(updates)
    );
}

#[tokio::main]
async fn main() {
    let only =
        std::env::var("WALCAST_BENCH_STORES").unwrap_or_else(|_| "postgres,mysql,redis".into());
    let rows = env("WALCAST_BENCH_ROWS", 100_000);
    let batch = env("WALCAST_BENCH_BATCH", 1000);
    println!("{rows} rows in batches of {batch}; the server's own upsert from a staged table, per batch of the same size, is the limit");
    println!("| store | changes | walcast rows/s | server's own rows/s | ratio |");
    println!("|---|---|---:|---:|---:|");
    if only.contains("postgres") {
        postgres(rows, batch).await;
    }
    if only.contains("mysql") {
        mysql(rows, batch).await;
    }
    if only.contains("redis") {
        redis(rows, batch).await;
    }
}
