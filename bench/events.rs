//! End-to-end benchmark: PostgreSQL → domain events → Apache Kafka's acknowledgement,
//! against `pg_recvlogical` draining the same WAL.
//!
//! Four slots are created before a backlog of small rows (100-row transactions) is written,
//! so all hold identical WAL. `pg_recvlogical` drains one to /dev/null. The real `walcast
//! run` binary (release build) drains the others, one after the other: it decodes, maps,
//! Avro-encodes, produces, and confirms a position only once Kafka holds it; it is done when
//! the slot's `confirmed_flush_lsn` reaches the backlog's end. Rates are compared from the
//! moment each side streams.
//!
//! walcast drains three times:
//! - into the stack's Kafka, at-least-once (idempotent, acks=all);
//! - into the stack's Kafka, exactly-once (Kafka transactions with the progress record);
//! - into librdkafka's mock cluster (in this process, acknowledging at once): walcast's own
//!   pipeline with no broker cost, as an extra.
//!
//! A bare idempotent producer sending records of the same shape measures the broker's own
//! ceiling on this machine.
//!
//! Then, with both Kafka daemons caught up, a fixed offered load of 5,000 rows/s (50-row
//! transactions every 10 ms, 10 s) measures latency from each commit returning to its
//! position being confirmed (so acknowledged, or committed, by Kafka), polled every
//! millisecond. Last, each daemon's peak RSS (VmHWM).
//!
//! Run: `scripts/stack up && cargo bench --bench events`. `WALCAST_BENCH_ROWS` sets the
//! backlog (default 300000).

#[path = "stack.rs"]
mod stack;
use stack::{
    broker_ceiling, connect, fresh_database, recvlogical, stack, write_small_contracts, LOAD_SMALL,
};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walcast::lsn::Lsn;

async fn confirmed(pg: &tokio_postgres::Client, slot: &str) -> Lsn {
    let text: Option<String> = pg
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    text.map_or(Lsn::ZERO, |t| t.parse().unwrap())
}

#[tokio::main]
async fn main() {
    let s = stack();
    let rows: u64 = std::env::var("WALCAST_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let db = "bench_events";
    let pg = fresh_database(&s, db).await;
    pg.batch_execute(&format!(
        "CREATE TABLE small (id bigint PRIMARY KEY, n int NOT NULL, s text NOT NULL);
         ALTER TABLE small OWNER TO walcast; GRANT CREATE ON DATABASE {db} TO walcast;
         CREATE PUBLICATION bench_pub FOR TABLE small;"
    ))
    .await
    .unwrap();
    pg.batch_execute(LOAD_SMALL).await.unwrap();
    for slot in ["bench_alo", "bench_eos", "bench_mock", "bench_recvlogical"] {
        pg.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    write_small_contracts(dir.path());
    let topic = format!("bench_events_{}", std::process::id());
    // Each walcast below is a source of its own (named after its slot, under a client id of
    // this run): a source's progress record in Kafka would otherwise carry one run's position
    // into the next (exactly-once would skip what the record covers) and one cluster's system
    // identifier into a run on another major (slot safety refuses that).
    let write_config = |name: &str, brokers: &str, slot: &str, exactly_once: bool| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"[admin]
listen = "127.0.0.1:0"
[kafka]
brokers = "{brokers}"
exactly_once = {exactly_once}
client_id = "walcast-bench-{pid}"
[kafka.properties]
"linger.ms" = 5
[registry]
url = "{registry}"
[[source]]
name = "{slot}"
url = "postgres://walcast@{host}:{port}/{db}"
slot = "{slot}"
publication = "bench_pub"
snapshot = "never"
status_interval_ms = 1000
[[source.table]]
table = "public.small"
topic = "{topic}"
key = "Key.avsc"
insert = "Row.avsc"
update = "Row.avsc"
"#,
                registry = s.registry,
                pid = std::process::id(),
                host = s.host,
                port = s.port,
            ),
        )
        .unwrap();
        path
    };
    let mock = rdkafka::mocking::MockCluster::new(1).expect("librdkafka mock cluster");
    mock.create_topic(&topic, 3, 1)
        .expect("a topic on the mock cluster");
    // The source's progress topic too: the mock cluster times out creating topics itself.
    let progress = format!("walcast-bench-{}.progress.bench_mock", std::process::id());
    mock.create_topic(&progress, 1, 1)
        .expect("the progress topic on the mock cluster");
    let mock_config = write_config("mock", &mock.bootstrap_servers(), "bench_mock", false);
    let alo_config = write_config("alo", &s.brokers, "bench_alo", false);
    let eos_config = write_config("eos", &s.brokers, "bench_eos", true);

    eprintln!("writing a backlog of {rows} rows in 100-row transactions");
    pg.batch_execute(&format!("CALL load_small({})", rows / 100))
        .await
        .unwrap();
    let end: Lsn = {
        let t: String = pg
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        t.parse().unwrap()
    };

    // pg_recvlogical: the server's own decoding speed, nothing downstream.
    let recvlogical = recvlogical(&s, db, "bench_recvlogical", "bench_pub", end);

    // walcast run: decode, map, encode, produce, wait for acks, confirm.
    eprintln!("walcast into Kafka, at-least-once");
    let (alo_time, startup, mut alo) = drain(&pg, &alo_config, "bench_alo", end).await;
    eprintln!("walcast into Kafka, exactly-once");
    let (eos_time, eos_startup, mut eos) = drain(&pg, &eos_config, "bench_eos", end).await;
    eprintln!("walcast into the mock cluster");
    let (mock_time, _, mut mock_child) = drain(&pg, &mock_config, "bench_mock", end).await;
    let mock_rss = peak_rss(&mock_child);
    terminate(&mut mock_child);
    eprintln!("Kafka's ceiling");
    let ceiling = broker_ceiling(&s.brokers, &format!("{topic}_ceiling"), 300_000).await;

    // Latency at 5,000 rows/s: commit returned → position confirmed (broker-acknowledged).
    // Both daemons run; each slot's confirmations are polled.
    let polls: Arc<Mutex<Vec<(Instant, Lsn, Lsn)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (polls, stop) = (polls.clone(), stop.clone());
        let poll_pg = connect(&format!("{}/{db}", s.pg_url)).await;
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a = confirmed(&poll_pg, "bench_alo").await;
                let e = confirmed(&poll_pg, "bench_eos").await;
                polls.lock().unwrap().push((Instant::now(), a, e));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut commits: Vec<(Instant, Lsn)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let load_started = Instant::now();
    for t in 0..1000u64 {
        tick.tick().await;
        let base = 10_000_000 + t * 50;
        let row = pg
            .query_one(
                "WITH ins AS (INSERT INTO small SELECT $1::bigint + g, g, 'live ' || g FROM generate_series(1, 50) g RETURNING 1)
                 SELECT count(*), pg_current_wal_lsn()::text FROM ins",
                &[&(base as i64)],
            )
            .await
            .unwrap();
        let lsn: String = row.get(1);
        commits.push((Instant::now(), lsn.parse().unwrap()));
    }
    let offered = 50_000.0 / load_started.elapsed().as_secs_f64();
    let last = commits.last().unwrap().1;
    while confirmed(&pg, "bench_alo").await <= last || confirmed(&pg, "bench_eos").await <= last {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.await.unwrap();
    let polls = polls.lock().unwrap();
    let latencies = |eos: bool| {
        let mut l: Vec<f64> = commits
            .iter()
            .map(|(at, lsn)| {
                let (confirmed_at, ..) = polls
                    .iter()
                    .find(|(t, on_alo, on_eos)| {
                        (if eos { on_eos } else { on_alo }) > lsn && t >= at
                    })
                    .expect("confirmed");
                confirmed_at.duration_since(*at).as_secs_f64() * 1000.0
            })
            .collect();
        l.sort_by(|a, b| a.partial_cmp(b).unwrap());
        l
    };
    let pct = |l: &[f64], p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    let (on_alo, on_eos) = (latencies(false), latencies(true));
    let (alo_rss, eos_rss) = (peak_rss(&alo), peak_rss(&eos));
    let exit = terminate(&mut alo);
    let eos_exit = terminate(&mut eos);

    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!("end-to-end, {rows} small rows in 100-row transactions (TLS prefer on both sides), pg_recvlogical {:.0} rows/s:", rate(recvlogical));
    println!("| walcast into | rows/s PostgreSQL → Kafka | ratio to pg_recvlogical | peak RSS |");
    println!("|---|---:|---:|---:|");
    for (what, time, rss) in [
        ("Apache Kafka, at-least-once", alo_time, &alo_rss),
        ("Apache Kafka, exactly-once", eos_time, &eos_rss),
        ("librdkafka's mock cluster (extra)", mock_time, &mock_rss),
    ] {
        println!(
            "| {what} | {:.0} | {:.2} | {rss} |",
            rate(time),
            rate(time) / rate(recvlogical)
        );
    }
    println!(
        "Kafka's ceiling for the same record shape (bare idempotent producer, 8 headers): {ceiling:.0} records/s"
    );
    println!("walcast start-up before streaming (registry, topics, slot checks): {startup:?} at-least-once, {eos_startup:?} exactly-once");
    println!("latency, commit → confirmed to PostgreSQL (so held by Kafka), offered {offered:.0} rows/s in 50-row transactions:");
    for (mode, l) in [("at-least-once", &on_alo), ("exactly-once", &on_eos)] {
        println!(
            "  {mode}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pct(l, 0.50),
            pct(l, 0.99),
            l.last().unwrap()
        );
    }
    println!("walcast exit on SIGTERM: {exit} at-least-once, {eos_exit} exactly-once");
}

/// Starts `walcast run` on `config` and waits until `slot` is confirmed up to `end`: the
/// time from streaming to done, the start-up time, and the daemon, still running.
async fn drain(
    pg: &tokio_postgres::Client,
    config: &std::path::Path,
    slot: &str,
    end: Lsn,
) -> (Duration, Duration, std::process::Child) {
    let spawned = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("walcast runs");
    let streaming = loop {
        let active = pg
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .unwrap()
            .is_some();
        if active {
            break Instant::now();
        }
        assert!(child.try_wait().unwrap().is_none(), "walcast exited");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    while confirmed(pg, slot).await < end {
        assert!(child.try_wait().unwrap().is_none(), "walcast exited");
        assert!(
            spawned.elapsed() < Duration::from_secs(600),
            "walcast did not catch up within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (streaming.elapsed(), streaming - spawned, child)
}

fn peak_rss(child: &std::process::Child) -> String {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}
