//! The local stack the benchmarks run against, as `scripts/stack up` left it.
// Each benchmark uses its own subset.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use walcast::lsn::Lsn;

/// Addresses of the stack's servers, from `$WALCAST_STACK_DIR/stack.env`.
pub struct Stack {
    /// The cluster the benchmark drains: PostgreSQL 15, or the major `WALCAST_BENCH_PG`
    /// names (16, 17 or 18), as `postgres://postgres@host:port`.
    pub pg_url: String,
    /// The major of `pg_url`.
    pub pg_major: u32,
    pub pg_bin: String,
    pub host: String,
    pub port: String,
    pub brokers: String,
    pub registry: String,
    pub mysql_url: String,
    pub redis_url: String,
}

pub fn stack() -> Stack {
    let dir =
        std::env::var("WALCAST_STACK_DIR").unwrap_or_else(|_| "/var/tmp/walcast-stack".into());
    let text =
        std::fs::read_to_string(format!("{dir}/stack.env")).expect("run scripts/stack up first");
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let pg_major: u32 = std::env::var("WALCAST_BENCH_PG")
        .ok()
        .filter(|m| !m.is_empty())
        .map_or(15, |m| {
            m.parse().expect("WALCAST_BENCH_PG is 15, 16, 17 or 18")
        });
    let pg_url: String = if pg_major == 15 {
        vars["WALCAST_PG_URL"].into()
    } else {
        vars.get(format!("WALCAST_PG{pg_major}_URL").as_str())
            .unwrap_or_else(|| {
                panic!("the stack runs no PostgreSQL {pg_major}; run scripts/stack up")
            })
            .to_string()
    };
    // pg_recvlogical (PostgreSQL 15's) speaks to every newer server.
    let (host, port) = pg_url
        .rsplit_once('@')
        .and_then(|(_, hp)| hp.split_once(':'))
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .expect("the stack's URL is postgres://user@host:port");
    eprintln!("bench: PostgreSQL {pg_major} at {host}:{port}");
    Stack {
        pg_url,
        pg_major,
        pg_bin: vars["WALCAST_PG_BIN"].into(),
        host,
        port,
        brokers: vars["WALCAST_KAFKA_BROKERS"].into(),
        registry: vars["WALCAST_REGISTRY_URL"].into(),
        mysql_url: vars["WALCAST_MYSQL_URL"].into(),
        redis_url: vars["WALCAST_REDIS_URL"].into(),
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

/// What the broker acknowledges per second of records shaped like walcast's (small key and
/// value, eight headers), from an idempotent acks=all producer with the same settings.
pub async fn broker_ceiling(brokers: &str, topic: &str, n: usize) -> f64 {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .unwrap();
        admin
            .create_topics(
                &[NewTopic::new(topic, 3, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let key = format!("key-{i}");
        let mut headers = OwnedHeaders::new_with_capacity(8);
        for name in [
            "event_type",
            "op",
            "source",
            "lsn",
            "seq",
            "xid",
            "commit_ts",
            "event_id",
        ] {
            headers = headers.insert(Header {
                key: name,
                value: Some("value-123456"),
            });
        }
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload("a row payload of about forty bytes......")
            .headers(headers);
        // send_result's future does not borrow the record, so thousands can be in flight.
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("queued");
        pending.push_back(delivery);
        if pending.len() > 20_000 {
            pending
                .pop_front()
                .unwrap()
                .await
                .unwrap()
                .expect("delivered");
        }
    }
    for p in pending {
        p.await.unwrap().expect("delivered");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The contracts of the `small` table the benchmarks load (`Key.avsc`, `Row.avsc`), written
/// into `dir`.
pub fn write_small_contracts(dir: &std::path::Path) {
    std::fs::write(
        dir.join("Key.avsc"),
        r#"{"type":"record","name":"SmallKey","namespace":"bench","fields":[{"name":"id","type":"long"}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("Row.avsc"),
        r#"{"type":"record","name":"SmallRow","namespace":"bench","fields":[{"name":"id","type":"long"},{"name":"n","type":"int"},{"name":"s","type":"string"}]}"#,
    )
    .unwrap();
}
