//! Spec: `snapshot = "initial"`, added tables and `walcast snapshot`, end to end: source
//! database → `walcast run` (source and a PostgreSQL sink) → Kafka → replica.

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
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::new();
        // read_committed (librdkafka's default): each partition ends at its last stable offset.
        let mut ended = std::collections::HashSet::new();
        while ended.len() < partitions as usize {
            assert!(Instant::now() < deadline, "reading {topic} to its end");
            let m = match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    ended.insert(p);
                    continue;
                }
                Some(m) => m.unwrap(),
            };
            ended.remove(&m.partition());
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
        &format!("snapshot_chunk_rows = {CHUNK}\nsnapshot_max_rows_per_sec = 5000"),
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
    let resumed = log
        .lines()
        .filter(|l| l.contains("snapshot of table started") && l.contains("Some([\""))
        .count();
    assert!(
        resumed >= 1,
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

/// The test's own `[[source.table]]` for a second table with the users contracts.
fn add_table(daemon: &Daemon, table: &str, topic: &str) {
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&format!(
        "\n[[source.table]]\ntable = \"public.{table}\"\ntopic = \"{topic}\"\nkey = \"UserKey.avsc\"\ninsert = \"UserCreated.avsc\"\nupdate = \"UserUpdated.avsc\"\ndelete = \"UserDeleted.avsc\"\ncolumns = {{ user_id = \"id\", name = \"full_name\" }}\n"
    ));
    std::fs::write(&daemon.config, config).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_added_to_the_configuration_arrives_with_its_existing_rows_while_another_streams() {
    let mut daemon = Daemon::prepare("snap_added", Setup::default()).await;
    snapshots_on(
        &daemon,
        "snapshot_chunk_rows = 500\nsnapshot_max_rows_per_sec = 4000",
    );
    let replica = Replica::attach(&daemon).await;
    let source = daemon.pg().await;
    seed(&source, 1_000).await;
    source
        .batch_execute(
            "CREATE TABLE archive (LIKE users INCLUDING ALL); ALTER TABLE archive OWNER TO walcast;
             INSERT INTO archive (full_name, email, password_hash)
             SELECT 'old ' || g, 'old' || g || '@example.com', 'x' FROM generate_series(1, 6000) g",
        )
        .await
        .unwrap();
    daemon.start().await;
    snapshot_done(&daemon, "public.users", 1).await;
    converged(&daemon, &source, &replica).await;
    assert_eq!(
        daemon.terminate().await,
        Some(0),
        "{}",
        tail(&daemon.log_text())
    );

    let archive_topic = format!("{}.archive", daemon.name);
    add_table(&daemon, "archive", &archive_topic);
    daemon.start().await;
    // users streams while archive is read (about 1.5 s at the configured rate).
    random_writes(&source, 20, 7, 1_000).await;
    snapshot_done(&daemon, "public.archive", 1).await;
    converged(&daemon, &source, &replica).await;
    let log = daemon.log_text();
    assert!(
        log.contains("table added to the publication"),
        "{}",
        tail(&log)
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("snapshot of table done") && l.contains("public.users"))
            .count(),
        1,
        "users was read again: {}",
        tail(&log)
    );
    let archived = records(&archive_topic).await;
    let reads = archived.iter().filter(|r| r.0 == "snapshot").count();
    assert_eq!(
        reads, 6_000,
        "every existing row of the added table arrives once"
    );
    // The added table streams too.
    source
        .batch_execute("UPDATE archive SET full_name = 'renamed' WHERE id = 1")
        .await
        .unwrap();
    wait_until(
        "the added table's update to arrive",
        Duration::from_secs(30),
        || async {
            records(&archive_topic)
                .await
                .iter()
                .any(|r| r.0 == "update")
        },
    )
    .await;
    assert_eq!(
        daemon.terminate().await,
        Some(0),
        "{}",
        tail(&daemon.log_text())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_on_demand_snapshot_repairs_a_replica_whose_rows_were_deleted_and_changed_by_hand() {
    let mut daemon = Daemon::prepare("snap_repair", Setup::default()).await;
    snapshots_on(
        &daemon,
        "snapshot_chunk_rows = 700\nsignal_table = \"public.walcast_signal\"",
    );
    let replica = Replica::attach(&daemon).await;
    let source = daemon.pg().await;
    source
        .batch_execute("GRANT CREATE ON SCHEMA public TO walcast")
        .await
        .unwrap();
    seed(&source, 3_000).await;
    daemon.start().await;
    snapshot_done(&daemon, "public.users", 1).await;
    // Streamed changes too: the repair must overwrite these old versions.
    random_writes(&source, 10, 11, 3_000).await;
    converged(&daemon, &source, &replica).await;

    let damaged = replica
        .client()
        .await
        .batch_execute(
            "DELETE FROM user_replica WHERE user_id % 10 = 0;
             UPDATE user_replica SET name = 'tampered', email = 'x' WHERE user_id % 10 = 1;",
        )
        .await;
    damaged.unwrap();
    assert_ne!(source_rows(&source).await, replica.rows().await);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["snapshot", "--config"])
        .arg(&daemon.config)
        .args(["--source", &daemon.name, "--table", "users", "--wait"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&daemon.log_text())
    );
    assert!(
        stdout.contains("snapshot of public.users accepted"),
        "{stdout}"
    );
    assert!(stdout.contains("snapshot of public.users done"), "{stdout}");
    converged(&daemon, &source, &replica).await;

    // A table the source does not publish is a usage error, before anything is asked.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["snapshot", "--config"])
        .arg(&daemon.config)
        .args(["--source", &daemon.name, "--table", "orders"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("walcast: --table public.orders: source {} does not publish it; expected one of: public.users\n", daemon.name)
    );
    assert_eq!(
        daemon.terminate().await,
        Some(0),
        "{}",
        tail(&daemon.log_text())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_read_of_a_row_a_streamed_change_already_updated_never_wins() {
    const ROWS: u32 = 20_000;
    let mut daemon = Daemon::prepare("snap_order", Setup::default()).await;
    snapshots_on(
        &daemon,
        "snapshot_chunk_rows = 1000\nsnapshot_max_rows_per_sec = 4000",
    );
    let replica = Replica::attach(&daemon).await;
    let source = daemon.pg().await;
    seed(&source, ROWS).await;
    daemon.start().await;
    // The last row is read last, about 5 s from now, in the snapshot of the slot's start:
    // with its old name.
    source
        .batch_execute(&format!(
            "UPDATE users SET full_name = 'streamed' WHERE id = {ROWS}"
        ))
        .await
        .unwrap();
    snapshot_done(&daemon, "public.users", 1).await;
    converged(&daemon, &source, &replica).await;
    let name: String = replica
        .client()
        .await
        .query_one(
            &format!("SELECT name FROM user_replica WHERE user_id = {ROWS}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "streamed");

    let published = records(&daemon.topic).await;
    let update = published
        .iter()
        .position(|r| r.0 == "update")
        .expect("the update was published");
    let key = &published[update].1;
    let read = published
        .iter()
        .position(|r| r.0 == "snapshot" && &r.1 == key)
        .expect("the row was read");
    assert!(
        read > update,
        "the read (record {read}) was published after the update (record {update}) of the same key, in its partition"
    );
    let (update, read) = (&published[update], &published[read]);
    let old = format!("name {ROWS}");
    assert!(
        read.4
            .as_ref()
            .unwrap()
            .windows(old.len())
            .any(|w| w == old.as_bytes()),
        "the read carries the row as of the slot's start"
    );
    assert!(
        (lsn(&read.2), read.3) < (lsn(&update.2), update.3),
        "the snapshot read ({} {}) must order before the streamed update ({} {})",
        read.2,
        read.3,
        update.2,
        update.3
    );
    assert_eq!(
        daemon.terminate().await,
        Some(0),
        "{}",
        tail(&daemon.log_text())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_exactly_once_each_chunk_is_one_kafka_transaction_and_kill_9_repeats_nothing() {
    const ROWS: usize = 12_000;
    let mut daemon = Daemon::prepare(
        "snap_eos",
        Setup {
            exactly_once: true,
            ..Setup::default()
        },
    )
    .await;
    snapshots_on(
        &daemon,
        "snapshot_chunk_rows = 1000\nsnapshot_max_rows_per_sec = 5000",
    );
    let replica = Replica::attach(&daemon).await;
    let source = daemon.pg().await;
    seed(&source, ROWS as u32).await;
    daemon.start().await;
    wait_until(
        "the snapshot to get under way",
        Duration::from_secs(60),
        || async {
            records(&daemon.topic)
                .await
                .iter()
                .filter(|r| r.0 == "snapshot")
                .count()
                >= 4_000
        },
    )
    .await;
    daemon.kill9();
    random_writes(&source, 5, 3, ROWS as i64).await;
    daemon.start().await;
    snapshot_done(&daemon, "public.users", 1).await;
    converged(&daemon, &source, &replica).await;
    // A read_committed consumer sees every row read exactly once.
    let published = records(&daemon.topic).await;
    let mut keys: Vec<&Vec<u8>> = published
        .iter()
        .filter(|r| r.0 == "snapshot")
        .map(|r| &r.1)
        .collect();
    let reads = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        reads,
        "a row read twice is visible to read_committed consumers"
    );
    assert!(
        (ROWS - 50..=ROWS).contains(&reads),
        "{reads} reads of {ROWS} rows"
    );
    assert_eq!(
        daemon.terminate().await,
        Some(0),
        "{}",
        tail(&daemon.log_text())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_a_key_to_chunk_by_is_refused_with_what_to_do() {
    let daemon = Daemon::prepare("snap_nokey", Setup::default()).await;
    snapshots_on(&daemon, "");
    daemon
        .pg()
        .await
        .batch_execute(
            "ALTER TABLE users DROP CONSTRAINT users_pkey; ALTER TABLE users REPLICA IDENTITY FULL;
             INSERT INTO users (full_name, email, password_hash) VALUES ('a', 'a@example.com', 'x')",
        )
        .await
        .unwrap();
    let (code, log) = daemon.run_to_end();
    assert_eq!(code, Some(1), "{log}");
    let expected = format!(
        "source {0}: table public.users has no primary key and no replica identity index, so it cannot be snapshotted in chunks\n  hint: run ALTER TABLE public.users ADD PRIMARY KEY (…) (or give it a unique index and ALTER TABLE public.users REPLICA IDENTITY USING INDEX …), or set snapshot = \"never\" on the source and backfill the table another way",
        daemon.name
    );
    assert!(log.contains(&expected), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn walcast_snapshot_says_why_when_it_cannot_ask_or_nobody_answers() {
    let daemon = Daemon::prepare("snap_cli", Setup::default()).await;
    let walcast = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(["snapshot", "--config"])
            .arg(&daemon.config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, stderr) = walcast(&["--source", &daemon.name, "--table", "users"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        format!("walcast: source {} has no signal_table, through which the daemon takes snapshot requests; set signal_table = \"public.walcast_signal\" in its [[source]] and restart walcast run\n", daemon.name)
    );

    snapshots_on(&daemon, "signal_table = \"public.walcast_signal\"");
    daemon
        .pg()
        .await
        .batch_execute("GRANT CREATE ON SCHEMA public TO walcast")
        .await
        .unwrap();
    // No daemon runs: the request stays, and the command says so.
    let (code, stdout, stderr) = walcast(&[
        "--source",
        &daemon.name,
        "--table",
        "public.users",
        "--accept-timeout-ms",
        "300",
    ]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        format!("walcast: source {0}: the snapshot request 1 for public.users was not accepted within 300 ms; is walcast run running with this configuration? The request stays in public.walcast_signal and is taken when it starts\n", daemon.name)
    );
    let pending: String = daemon
        .pg()
        .await
        .query_one("SELECT state FROM walcast_signal WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, "requested");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_added_to_a_publication_walcast_does_not_own_is_named_with_the_fix_and_read_once_added(
) {
    let mut daemon = Daemon::prepare("snap_theirs", Setup::default()).await;
    snapshots_on(&daemon, "publication = \"theirs\"");
    // As a superuser, which may alter any publication; this one is another role's.
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(
        &daemon.config,
        config.replace("postgres://walcast@", "postgres://postgres@"),
    )
    .unwrap();
    let source = daemon.pg().await;
    source
        .batch_execute(
            "CREATE PUBLICATION theirs FOR TABLE users WITH (publish_via_partition_root = true);
             ALTER PUBLICATION theirs OWNER TO walcast;
             CREATE TABLE archive (LIKE users INCLUDING ALL);
             INSERT INTO archive (full_name, email, password_hash)
             SELECT 'old ' || g, 'old' || g || '@example.com', 'x' FROM generate_series(1, 50) g",
        )
        .await
        .unwrap();
    daemon.start().await;
    snapshot_done(&daemon, "public.users", 1).await;
    assert_eq!(
        daemon.terminate().await,
        Some(0),
        "{}",
        tail(&daemon.log_text())
    );

    let archive_topic = format!("{}.archive", daemon.name);
    add_table(&daemon, "archive", &archive_topic);
    daemon.spawn();
    assert_eq!(
        daemon
            .stops("on the publication it does not own")
            .await
            .code(),
        Some(1)
    );
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("source {}: table public.archive is new to the configuration, and publication theirs, which role walcast owns, does not publish it; walcast alters only a publication its own role owns\n  hint: run ALTER PUBLICATION \"theirs\" ADD TABLE \"public\".\"archive\", then restart (its rows are read then)", daemon.name)),
        "{}",
        tail(&log)
    );
    let published: i64 = source
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'theirs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 1, "the publication is left as it was");

    // The hint's fix: the table's existing rows are read all the same.
    source
        .batch_execute("ALTER PUBLICATION theirs ADD TABLE archive")
        .await
        .unwrap();
    daemon.start().await;
    snapshot_done(&daemon, "public.archive", 1).await;
    let reads = records(&archive_topic)
        .await
        .iter()
        .filter(|r| r.0 == "snapshot")
        .count();
    assert_eq!(reads, 50, "every existing row of the added table arrives");
    assert_eq!(
        daemon.terminate().await,
        Some(0),
        "{}",
        tail(&daemon.log_text())
    );
    source
        .execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
}
