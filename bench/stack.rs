//! The local stack the benchmarks run against, as `scripts/stack up` left it.
// Each benchmark uses its own subset.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use walcast::lsn::Lsn;

/// Addresses of the stack's servers, from `$WALCAST_STACK_DIR/stack.env`.
pub struct Stack {
    pub pg_url: String,
    pub pg_bin: String,
    pub host: String,
    pub port: String,
    pub brokers: String,
    pub registry: String,
}

pub fn stack() -> Stack {
    let dir =
        std::env::var("WALCAST_STACK_DIR").unwrap_or_else(|_| "/var/tmp/walcast-stack".into());
    let text =
        std::fs::read_to_string(format!("{dir}/stack.env")).expect("run scripts/stack up first");
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    Stack {
        pg_url: vars["WALCAST_PG_URL"].into(),
        pg_bin: vars["WALCAST_PG_BIN"].into(),
        host: vars["WALCAST_PG_HOST"].into(),
        port: vars["WALCAST_PG_PORT"].into(),
        brokers: vars["WALCAST_KAFKA_BROKERS"].into(),
        registry: vars["WALCAST_REGISTRY_URL"].into(),
    }
}

/// A connection to the stack's PostgreSQL.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("stack PostgreSQL");
    tokio::spawn(conn);
    client
}

/// Drains `slot` up to `end` with pg_recvlogical, as the reference for walcast: pgoutput v2,
/// streaming, binary, TLS as `WALCAST_BENCH_TLS` says (default `prefer`). The wall time.
pub fn recvlogical(stack: &Stack, db: &str, slot: &str, publication: &str, end: Lsn) -> Duration {
    let started = Instant::now();
    let sslmode = std::env::var("WALCAST_BENCH_TLS").unwrap_or_else(|_| "prefer".into());
    let status = Command::new(format!("{}/pg_recvlogical", stack.pg_bin))
        .env("PGSSLMODE", sslmode)
        .args([
            "-h",
            &stack.host,
            "-p",
            &stack.port,
            "-U",
            "postgres",
            "-d",
            db,
            "-S",
            slot,
        ])
        .args([
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
            "-E",
            &end.to_string(),
        ])
        .args([
            "-o",
            "proto_version=2",
            "-o",
            "streaming=on",
            "-o",
            "binary=true",
        ])
        .args(["-o", &format!("publication_names={publication}")])
        .status()
        .expect("pg_recvlogical runs");
    assert!(status.success(), "pg_recvlogical failed: {status}");
    started.elapsed()
}

/// `db` created anew, with the replication slots a previous run left on it dropped first;
/// a connection to it.
pub async fn fresh_database(stack: &Stack, db: &str) -> tokio_postgres::Client {
    let admin = connect(&format!("{}/postgres", stack.pg_url)).await;
    // One statement each: a multi-statement string runs as one transaction.
    admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1",
            &[&db],
        )
        .await
        .unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    connect(&format!("{}/{db}", stack.pg_url)).await
}

/// `CALL load_small(n)` writes n transactions of 100 rows into `small (id, n, s)`, the
/// small-rows backlog both benchmarks drain.
pub const LOAD_SMALL: &str = "
CREATE PROCEDURE load_small(txns int) LANGUAGE plpgsql AS $$
DECLARE base bigint := 0;
BEGIN
  FOR t IN 1..txns LOOP
    INSERT INTO small SELECT base + g, g, 'row ' || (base + g) FROM generate_series(1, 100) g;
    base := base + 100;
    COMMIT;
  END LOOP;
END $$;
";
