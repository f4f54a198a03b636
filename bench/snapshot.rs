//! Snapshot benchmark: 1,000,000 small rows read by `walcast run`'s initial snapshot and
//! acknowledged by Apache Kafka, against a binary `COPY (SELECT …) TO STDOUT` of the same
//! table, in the same run, plus the daemon's peak RSS.
//!
//! - COPY: one connection drains `COPY (SELECT * FROM small) TO STDOUT (FORMAT binary)`:
//!   the database's own export speed, nothing downstream.
//! - walcast: the release `walcast run` binary with `snapshot = "initial"` on a new slot: it
//!   reads the table in chunks by primary key (binary COPY), maps and Avro-encodes each row,
//!   produces it to the stack's Kafka (idempotent, acks=all), and records each chunk's
//!   progress only once Kafka acknowledged the chunk. Its rate is timed from the table's
//!   first chunk to the last chunk's acknowledged progress record (the daemon's
//!   `snapshot of table done` line), so start-up (registry, topics, slot) is not counted;
//!   the wall time from spawn is reported beside it.
//! - Peak RSS: the daemon's VmHWM once the snapshot is done.
//! - The broker's ceiling, for reading the ratio: a bare idempotent producer sending
//!   300,000 records of the same shape (small key and value, eight headers).
//!
//! Both sides talk to PostgreSQL over plain TCP. Targets: walcast ≥ 0.5× COPY, peak RSS ≤
//! 100 MB. Run: `scripts/stack up && cargo bench --bench snapshot`.
//! `WALCAST_BENCH_ROWS` sets the table's size (default 1000000).

#[path = "stack.rs"]
mod stack;
use stack::{broker_ceiling, connect, fresh_database, stack, write_small_contracts};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let s = stack();
    let rows: u64 = std::env::var("WALCAST_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let db = "bench_snapshot";
    let pg = fresh_database(&s, db).await;
    eprintln!("loading {rows} rows");
    pg.batch_execute(&format!(
        "CREATE TABLE small (id bigint PRIMARY KEY, n int NOT NULL, s text NOT NULL);
         ALTER TABLE small OWNER TO walcast; GRANT CREATE ON DATABASE {db} TO walcast;
         INSERT INTO small SELECT g, g % 1000, 'row ' || g FROM generate_series(1, {rows}) g;"
    ))
    .await
    .unwrap();
    // Alone: a multi-statement string runs as one transaction, which VACUUM refuses.
    pg.batch_execute("VACUUM ANALYZE small").await.unwrap();

    // COPY: twice, keeping the faster, so a cold cache does not flatter walcast.
    let mut copy = Duration::MAX;
    for _ in 0..2 {
        let reader = connect(&format!("{}/{db}", s.pg_url)).await;
        let started = Instant::now();
        let stream = reader
            .copy_out("COPY (SELECT * FROM small) TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        tokio::pin!(stream);
        let mut bytes = 0usize;
        use futures_util::StreamExt;
        while let Some(chunk) = stream.next().await {
            bytes += chunk.unwrap().len();
        }
        copy = copy.min(started.elapsed());
        eprintln!("binary COPY: {bytes} bytes in {:?}", started.elapsed());
    }

    let dir = tempfile::tempdir().unwrap();
    write_small_contracts(dir.path());
    let run = format!("{}_{}", db, std::process::id());
    let config = dir.path().join("walcast.toml");
    std::fs::write(
        &config,
        format!(
            r#"[admin]
listen = "127.0.0.1:0"
[kafka]
brokers = "{brokers}"
client_id = "{run}"
[kafka.properties]
"linger.ms" = 5
[registry]
url = "{registry}"
[[source]]
name = "bench"
url = "postgres://walcast@{host}:{port}/{db}?sslmode=disable"
slot = "bench_snapshot"
snapshot = "initial"
status_interval_ms = 1000
[[source.table]]
table = "public.small"
topic = "{run}"
key = "Key.avsc"
insert = "Row.avsc"
"#,
            brokers = s.brokers,
            registry = s.registry,
            host = s.host,
            port = s.port,
        ),
    )
    .unwrap();
    let log_path = dir.path().join("walcast.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let spawned = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "walcast::snapshot=info,warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("walcast runs");
    let done = loop {
        let text = strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
        if let Some(line) = text.lines().find(|l| l.contains("snapshot of table done")) {
            break line.to_string();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("walcast run exited with {status}:\n{text}");
        }
        assert!(
            spawned.elapsed() < Duration::from_secs(600),
            "no snapshot within 10 minutes:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = spawned.elapsed();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "?".into());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let secs: f64 = done
        .split("secs=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no secs in {done}"));
    let published: u64 = done
        .split(" rows=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(published, rows, "every row published: {done}");
    eprintln!("Kafka's ceiling");
    let ceiling = broker_ceiling(&s.brokers, &format!("{run}_ceiling"), 300_000).await;
    let copy_rate = rows as f64 / copy.as_secs_f64();
    let walcast_rate = rows as f64 / secs;
    let rss_mb = rss
        .trim_end_matches(" kB")
        .parse::<f64>()
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN);
    println!("snapshot of {rows} small rows (id bigint, n int, s text)");
    println!(
        "  binary COPY (SELECT …) TO STDOUT      {:>8.3} s  {:>10.0} rows/s",
        copy.as_secs_f64(),
        copy_rate
    );
    println!(
        "  walcast → Kafka acknowledgement       {:>8.3} s  {:>10.0} rows/s  ({:.2}× COPY; target ≥ 0.5×)",
        secs,
        walcast_rate,
        walcast_rate / copy_rate
    );
    println!(
        "  walcast wall time from spawn          {:>8.3} s",
        wall.as_secs_f64()
    );
    println!(
        "  the broker's ceiling: a bare idempotent producer, same record shape (8 headers) {ceiling:>10.0} records/s (walcast at {:.0}% of it)",
        100.0 * walcast_rate / ceiling
    );
    println!("  walcast peak RSS (VmHWM)              {rss_mb:>8.1} MB (target ≤ 100 MB)");
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
