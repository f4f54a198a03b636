//! Sink benchmark: the PostgreSQL connector's apply rate against binary COPY of the same
//! rows into an unindexed table, as a ratio (the target: ≥ 0.5×).
//!
//! Both sides write the same rows (id, name, email, n, at: five columns of user-ish data)
//! into the stack's PostgreSQL over one connection each:
//! - COPY: `COPY … FROM STDIN (FORMAT binary)` into a table with no index and no key: the
//!   fastest way PostgreSQL takes rows;
//! - walcast: `PostgresSink::apply` in batches of `batch_max_records` (default 1000), each
//!   one transaction with the version guard, the tombstone check and the offsets upsert,
//!   into a table keyed by id. First as inserts (new keys), then as updates (every key again
//!   at a higher version).
//!
//! Run: `scripts/stack up && cargo bench --bench sink`. `WALCAST_BENCH_ROWS` sets the rows
//! (default 200000), `WALCAST_BENCH_BATCH` the batch size.

#[path = "stack.rs"]
mod stack;
use stack::{connect, fresh_database, stack};
use std::time::{Duration, Instant};

use connectors::postgres::PostgresSink;
use connectors::{Batch, Change, Op, Position, TableSettings, Value, Version};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn change(id: i64, round: u64) -> Change {
    let at = 1_700_000_000_000_000 + id * 1_000;
    Change {
        key: vec![("id".into(), Value::Long(id))],
        op: Op::Upsert(vec![
            ("name".into(), Value::Text(format!("user {id} r{round}"))),
            ("email".into(), Value::Text(format!("user{id}@example.com"))),
            ("n".into(), Value::Long(id * 7 + round as i64)),
            ("at".into(), Value::Timestamp(at)),
        ]),
        version: Version {
            lsn: round * 1_000_000_000 + id as u64,
            seq: 0,
        },
    }
}

async fn copy(client: &tokio_postgres::Client, rows: usize) -> Duration {
    let start = Instant::now();
    let sink = client
        .copy_in("COPY copy_target (id, name, email, n, at) FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::TIMESTAMPTZ,
        ],
    );
    tokio::pin!(writer);
    let epoch = std::time::SystemTime::UNIX_EPOCH;
    for id in 0..rows as i64 {
        let name = format!("user {id} r1");
        let email = format!("user{id}@example.com");
        let n = id * 7 + 1;
        let at = epoch + Duration::from_micros((1_700_000_000_000_000 + id * 1_000) as u64);
        let values: [&(dyn ToSql + Sync); 5] = [&id, &name, &email, &n, &at];
        writer.as_mut().write(&values).await.unwrap();
    }
    writer.finish().await.unwrap();
    start.elapsed()
}

async fn apply(lanes: &mut [PostgresSink], rows: usize, batch: usize, round: u64) -> Duration {
    let start = Instant::now();
    let mut offset = 0i64;
    for chunk in (0..rows as i64).collect::<Vec<_>>().chunks(batch) {
        offset += chunk.len() as i64;
        let b = Batch {
            changes: chunk.iter().map(|id| change(*id, round)).collect(),
            positions: vec![Position {
                topic: "users.user".into(),
                partition: 0,
                next_offset: offset,
            }],
        };
        walcast::sink::apply_over(lanes, &b).await.unwrap();
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let rows = env("WALCAST_BENCH_ROWS", 200_000);
    let batch = env("WALCAST_BENCH_BATCH", 1000);
    let stack = stack();
    let db = "walcast_bench_sink";
    let client = fresh_database(&stack, db).await;
    client
        .batch_execute(
            "CREATE TABLE copy_target (id bigint, name text, email text, n bigint, at timestamptz);
             CREATE TABLE replica (id bigint PRIMARY KEY, name text, email text, n bigint, at timestamptz,
               _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL);",
        )
        .await
        .unwrap();
    let settings = TableSettings {
        url: format!("{}/{db}", stack.pg_url),
        table: "replica".into(),
        key: vec!["id".into()],
        columns: Default::default(),
        fields: None,
        consumer: "bench".into(),
        auto_create: false,
        auto_add_columns: false,
        // The COPY baseline's transport: plain TCP (the connector's default, prefer, would
        // take TLS from the stack's PostgreSQL).
        tls_mode: Some(connectors::tls::TlsMode::Disable),
        tls_ca_file: None,
    };
    let copy_client = connect(&format!("{}/{db}", stack.pg_url)).await;
    let copied = copy(&copy_client, rows).await;
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!("{rows} rows, batches of {batch}");
    println!(
        "binary COPY, unindexed:            {:>9.0} rows/s",
        rate(copied)
    );
    for parallelism in [1, 2, 4] {
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
        let inserted = apply(&mut lanes, rows, batch, 1).await;
        let updated = apply(&mut lanes, rows, batch, 2).await;
        for (what, took) in [("inserts", inserted), ("updates", updated)] {
            println!(
                "walcast apply, {what}, parallelism {parallelism}: {:>9.0} rows/s  ratio {:.2}",
                rate(took),
                copied.as_secs_f64() / took.as_secs_f64()
            );
        }
        let count: i64 = client
            .query_one("SELECT count(*) FROM replica WHERE name LIKE '% r2'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(count as usize, rows, "every row was updated");
    }
}
