//! Spec: `snapshot = "initial"`, added tables and `walcast snapshot`, end to end: source
//! database → `walcast run` (source and a PostgreSQL sink) → Kafka → replica.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, Setup};
use crate::support::{wait_for, wait_until, Stack};

type Rows = Vec<(i64, String, String)>;

async fn rows_of(pg: &tokio_postgres::Client, sql: &str) -> Rows {
    pg.query(sql, &[])
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect()
        })
        .unwrap_or_default()
}

async fn source_rows(pg: &tokio_postgres::Client) -> Rows {
    rows_of(pg, "SELECT id, full_name, email FROM users ORDER BY id").await
}

/// A PostgreSQL replica of the users topic, in a database of its own on the stack.
struct Replica {
    db: String,
}

impl Replica {
    /// Creates the replica and adds its sink to the daemon's configuration.
    async fn attach(daemon: &Daemon) -> Replica {
        let stack = Stack::get();
        let db = stack.fresh_pg_database(&format!("{}_r", daemon.name)).await;
        stack
            .pg(&db)
            .await
            .batch_execute(
                "CREATE TABLE user_replica (user_id bigint PRIMARY KEY, name text, email text,
                   _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL);
                 ALTER TABLE user_replica OWNER TO walcast; ALTER SCHEMA public OWNER TO walcast;",
            )
            .await
            .unwrap();
        let mut config = std::fs::read_to_string(&daemon.config).unwrap();
        config.push_str(&format!(
            "\n[[sink]]\nname = \"pg-{name}\"\ntype = \"postgres\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\nauto_create = true\nfields = [\"user_id\", \"name\", \"email\"]\nbatch_max_wait_ms = 50\n",
            name = daemon.name,
            topic = daemon.topic,
            url = stack.pg_url_for("walcast", &db),
        ));
        std::fs::write(&daemon.config, config).unwrap();
        Replica { db }
    }

    async fn client(&self) -> tokio_postgres::Client {
        Stack::get().pg(&self.db).await
    }

    async fn rows(&self) -> Rows {
        rows_of(
            &self.client().await,
            "SELECT user_id, name, email FROM user_replica ORDER BY user_id",
        )
        .await
    }
}

/// Turns the test configuration's snapshots on, with `keys` added to its `[[source]]`.
fn snapshots_on(daemon: &Daemon, keys: &str) {
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let config = config.replacen(
        "snapshot = \"never\"\n",
        &format!("snapshot = \"initial\"\n{keys}\n"),
        1,
    );
    std::fs::write(&daemon.config, config).unwrap();
}

async fn seed(pg: &tokio_postgres::Client, rows: u32) {
    pg.batch_execute(&format!(
        "INSERT INTO users (full_name, email, password_hash)
         SELECT 'name ' || g, 'user' || g || '@example.com', 'secret' FROM generate_series(1, {rows}) g"
    ))
    .await
    .unwrap();
}

/// Waits until the replica holds exactly the source's rows.
async fn converged(daemon: &Daemon, source: &tokio_postgres::Client, replica: &Replica) {
    let last = std::sync::Mutex::new(String::new());
    wait_for(
        Duration::from_secs(90),
        || {
            format!(
                "the replica to converge; {}\n{}",
                last.lock().unwrap(),
                tail(&daemon.log_text())
            )
        },
        || async {
            let (want, got) = (source_rows(source).await, replica.rows().await);
            if want == got {
                return Some(());
            }
            let differ = want
                .iter()
                .filter(|r| !got.contains(r))
                .take(3)
                .collect::<Vec<_>>();
            *last.lock().unwrap() = format!(
                "source {} rows, replica {} rows; e.g. missing or different: {differ:?}",
                want.len(),
                got.len()
            );
            None
        },
    )
    .await;
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Random single-row inserts, updates and deletes, in small transactions.
async fn random_writes(pg: &tokio_postgres::Client, rounds: u32, mut seed: u64, max_id: i64) {
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..rounds {
        let mut tx = String::from("BEGIN;");
        for i in 0..10 {
            let id = 1 + next(max_id as u64);
            match next(3) {
                0 => tx.push_str(&format!(
                    "INSERT INTO users (full_name, email, password_hash) VALUES ('new {round}-{i}', 'new{round}-{i}@example.com', 'x');"
                )),
                1 => tx.push_str(&format!(
                    "UPDATE users SET full_name = full_name || '*', email = 'u{round}-{i}@example.com' WHERE id = {id};"
                )),
                _ => tx.push_str(&format!("DELETE FROM users WHERE id = {id};")),
            }
        }
        tx.push_str("COMMIT;");
        pg.batch_execute(&tx).await.unwrap();
    }
}

/// Every record of `topic` (all partitions, up to their ends now): (op, key bytes, lsn, seq, value).
async fn records(topic: &str) -> Vec<(String, Vec<u8>, String, u32, Option<Vec<u8>>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let (brokers, topic) = (Stack::get().kafka_brokers.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "walcast-snapshot-tests")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut ends = HashMap::new();
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .unwrap();
            if high > low {
                ends.insert(p, high);
                tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(low))
                    .unwrap();
            }
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::new();
        while !ends.is_empty() {
            assert!(Instant::now() < deadline, "reading {topic} to its end");
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m.unwrap();
            let header = |name: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == name))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            out.push((
                header("op"),
                m.key().unwrap_or_default().to_vec(),
                header("lsn"),
                header("seq").parse().unwrap_or(0),
                m.payload().map(<[u8]>::to_vec),
            ));
            if m.offset() + 1 >= ends[&m.partition()] {
                ends.remove(&m.partition());
            }
        }
        out
    })
    .await
    .unwrap()
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

async fn snapshot_done(daemon: &Daemon, table: &str, times: usize) {
    let what = format!("snapshot of {table} done ({times} time(s))");
    wait_for(
        Duration::from_secs(90),
        || format!("{what}\n{}", tail(&daemon.log_text())),
        || async {
            let log = daemon.log_text();
            let n = log
                .lines()
                .filter(|l| l.contains("snapshot of table done") && l.contains(table))
                .count();
            (n >= times).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_of_100000_rows_with_writes_running_leaves_the_replica_equal_to_the_source() {
    let mut daemon = Daemon::prepare("snap_full", Setup::default()).await;
    snapshots_on(&daemon, "snapshot_chunk_rows = 5000");
    let replica = Replica::attach(&daemon).await;
    let source = daemon.pg().await;
    seed(&source, 100_000).await;
    let started = Instant::now();
    daemon.start().await;
    // Inserts, updates and deletes run while the table is read.
    let writes = {
        let pg = daemon.pg().await;
        tokio::spawn(async move { random_writes(&pg, 60, 0x9E37_79B9_7F4A_7C15, 100_000).await })
    };
    writes.await.unwrap();
    snapshot_done(&daemon, "public.users", 1).await;
    converged(&daemon, &source, &replica).await;
    eprintln!(
        "100000 rows snapshotted and converged in {:?}",
        started.elapsed()
    );
    let published = records(&daemon.topic).await;
    let reads = published.iter().filter(|r| r.0 == "snapshot").count();
    assert!(
        (99_000..=100_000).contains(&reads),
        "{reads} snapshot reads for 100000 rows (some deleted before being read)"
    );
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_snapshot_resumes_from_the_last_chunk_and_the_replica_converges() {
    const ROWS: usize = 40_000;
    const CHUNK: usize = 1_000;
    let mut daemon = Daemon::prepare("snap_kill", Setup::default()).await;
    snapshots_on(
        &daemon,
        &format!("snapshot_chunk_rows = {CHUNK}\nsnapshot_max_rows_per_sec = 10000"),
    );
    let replica = Replica::attach(&daemon).await;
    let source = daemon.pg().await;
    seed(&source, ROWS as u32).await;
    let mut kills = 0;
    for at in [8_000, 20_000] {
        daemon.start().await;
        wait_until(
            "the snapshot to get well under way",
            Duration::from_secs(60),
            || async {
                records(&daemon.topic)
                    .await
                    .iter()
                    .filter(|r| r.0 == "snapshot")
                    .count()
                    >= at
            },
        )
        .await;
        random_writes(&source, 5, at as u64, ROWS as i64).await;
        daemon.kill9();
        kills += 1;
    }
    daemon.start().await;
    snapshot_done(&daemon, "public.users", 1).await;
    converged(&daemon, &source, &replica).await;
    let reads = records(&daemon.topic)
        .await
        .iter()
        .filter(|r| r.0 == "snapshot")
        .count();
    eprintln!("{reads} snapshot reads for {ROWS} rows through {kills} kill(s)");
    assert!(
        reads <= ROWS + kills * CHUNK,
        "{reads} snapshot reads published for {ROWS} rows and {kills} kill(s) of chunks of {CHUNK}: a restart read more than its last chunk again"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("resumed_after=Some"),
        "no restart resumed from a recorded chunk\n{}",
        tail(&log)
    );
    assert_eq!(
        daemon.terminate().await,
        Some(0),
        "{}",
        tail(&daemon.log_text())
    );
}
