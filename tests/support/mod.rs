//! The local real stack, as `scripts/stack up` left it, and per-test resources on it.
//!
//! Tests never skip when a server is missing: a test that cannot reach the stack fails and
//! says to run `scripts/stack up` (scripts/test does). The only servers tests start are the
//! replica stores a spec restarts ([`targets`]).
// Shared by every test binary, each using its own part; its `pub` items are for the
// binaries' modules, not a library API.
#![allow(dead_code, unreachable_pub)]

pub mod cleanup;
pub mod daemon;
pub mod proxy;
pub mod registry;
pub mod targets;
pub mod workload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Addresses of the stack's servers, read from `$WALCAST_STACK_DIR/stack.env`.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The cluster the tests of this run use: the stack's PostgreSQL 15, or the major that
    /// `WALCAST_TEST_PG` names (16, 17 or 18), as `postgres://postgres@host:port`.
    pub pg_url: String,
    /// PostgreSQL 15's client tools (psql, pg_recvlogical), which speak to every newer server.
    pub pg_bin: PathBuf,
    /// The major of the cluster at `pg_url`.
    pub pg_major: u32,
    /// Every major the stack runs: its URL and its server binaries (initdb, pg_ctl, postgres).
    pub pg_majors: Vec<PgMajor>,
    pub kafka_brokers: String,
    /// The classpath of the stack's Apache Kafka, for brokers a test starts itself.
    pub kafka_libs: PathBuf,
    pub mysql_url: String,
    pub redis_url: String,
    /// Python with the official confluent-kafka client installed.
    pub python: PathBuf,
    /// The stack's schema registry (`walcast registry`, topic `_schemas`).
    pub registry_url: String,
    /// The SASL_SSL listener and its SCRAM user.
    pub kafka_sasl: KafkaSasl,
    /// The CA that signed the stack's PostgreSQL certificate.
    pub pg_ca: PathBuf,
}

/// One PostgreSQL major the stack runs.
#[derive(Debug, Clone)]
pub struct PgMajor {
    pub major: u32,
    /// `postgres://postgres@host:port` (no database).
    pub url: String,
    /// The server binaries: initdb, pg_ctl, postgres (the builds for 16+ have no client tools).
    pub server_bin: PathBuf,
}

/// The stack's SASL_SSL listener: TLS with a CA of its own, a SCRAM user.
#[derive(Debug, Clone)]
pub struct KafkaSasl {
    pub brokers: String,
    pub mechanism: String,
    pub username: String,
    pub password: String,
    /// The CA (PEM) that signed the listener's certificate.
    pub ca: PathBuf,
    /// A certificate for 127.0.0.1 / localhost signed by `ca`, and its key, for the TLS
    /// servers a test starts itself.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The same broker's SSL listener, which requires a client certificate signed by `ca`,
    /// and such a certificate with its key.
    pub ssl_brokers: String,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Stack {
    pub fn get() -> &'static Stack {
        static STACK: OnceLock<Stack> = OnceLock::new();
        STACK.get_or_init(|| {
            let dir = std::env::var("WALCAST_STACK_DIR")
                .unwrap_or_else(|_| "/var/tmp/walcast-stack".into());
            let file = PathBuf::from(dir).join("stack.env");
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `scripts/stack up` first (scripts/test does)",
                    file.display()
                )
            });
            let vars: HashMap<&str, &str> = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .collect();
            let var = |k: &str| {
                vars.get(k)
                    .unwrap_or_else(|| panic!("{} lacks {k}", file.display()))
                    .to_string()
            };
            let pg_majors: Vec<PgMajor> = var("WALCAST_PG_MAJORS")
                .split_whitespace()
                .map(|m| {
                    let major: u32 = m.parse().expect("WALCAST_PG_MAJORS lists numbers");
                    if major == 15 {
                        PgMajor {
                            major,
                            url: var("WALCAST_PG_URL"),
                            server_bin: PathBuf::from(var("WALCAST_PG_BIN")),
                        }
                    } else {
                        PgMajor {
                            major,
                            url: var(&format!("WALCAST_PG{major}_URL")),
                            server_bin: PathBuf::from(var(&format!(
                                "WALCAST_PG{major}_SERVER_BIN"
                            ))),
                        }
                    }
                })
                .collect();
            let pg_major: u32 = std::env::var("WALCAST_TEST_PG")
                .ok()
                .filter(|m| !m.is_empty())
                .map_or(15, |m| {
                    m.parse()
                        .expect("WALCAST_TEST_PG is a major: 15, 16, 17 or 18")
                });
            let pg_url = pg_majors
                .iter()
                .find(|m| m.major == pg_major)
                .unwrap_or_else(|| {
                    panic!(
                        "WALCAST_TEST_PG={pg_major}, but the stack runs PostgreSQL {}; \
                         run `scripts/stack up` (WALCAST_PG_MAJORS picks the majors)",
                        var("WALCAST_PG_MAJORS")
                    )
                })
                .url
                .clone();
            let stack = Stack {
                pg_url,
                pg_bin: PathBuf::from(var("WALCAST_PG_BIN")),
                pg_major,
                pg_majors,
                kafka_brokers: var("WALCAST_KAFKA_BROKERS"),
                kafka_libs: PathBuf::from(var("WALCAST_KAFKA_LIBS")),
                mysql_url: var("WALCAST_MYSQL_URL"),
                redis_url: var("WALCAST_REDIS_URL"),
                python: PathBuf::from(var("WALCAST_PYTHON")),
                registry_url: var("WALCAST_REGISTRY_URL"),
                kafka_sasl: KafkaSasl {
                    brokers: var("WALCAST_KAFKA_SASL_BROKERS"),
                    mechanism: var("WALCAST_KAFKA_SASL_MECHANISM"),
                    username: var("WALCAST_KAFKA_SASL_USERNAME"),
                    password: var("WALCAST_KAFKA_SASL_PASSWORD"),
                    ca: PathBuf::from(var("WALCAST_KAFKA_CA")),
                    server_cert: PathBuf::from(var("WALCAST_TLS_SERVER_CERT")),
                    server_key: PathBuf::from(var("WALCAST_TLS_SERVER_KEY")),
                    ssl_brokers: var("WALCAST_KAFKA_SSL_BROKERS"),
                    client_cert: PathBuf::from(var("WALCAST_TLS_CLIENT_CERT")),
                    client_key: PathBuf::from(var("WALCAST_TLS_CLIENT_KEY")),
                },
                pg_ca: PathBuf::from(var("WALCAST_PG_CA")),
            };
            stack.remove_leftovers();
            stack
        })
    }

    /// Drops replication slots and databases left by test runs that have ended (their names
    /// end in the pid of a process that no longer exists), so the long-lived stack never runs
    /// out of slots. Runs before any test of this binary has created anything.
    fn remove_leftovers(&self) {
        let psql = |sql: &str| -> Vec<String> {
            let out = std::process::Command::new(self.pg_bin.join("psql"))
                .args(["-At", "-d", &format!("{}/postgres", self.pg_url), "-c", sql])
                .output()
                .expect("psql runs");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        };
        let ended = |name: &str| {
            name.rsplit('_')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| {
                    pid != std::process::id()
                        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                })
        };
        for slot in psql("SELECT slot_name FROM pg_replication_slots WHERE NOT active") {
            if ended(&slot) {
                psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
            }
        }
        for db in psql("SELECT datname FROM pg_database WHERE datname ~ '_[0-9]+$'") {
            if ended(&db) {
                psql(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"));
            }
        }
    }

    /// The stack's cluster of `major` (15 to 18), whatever `WALCAST_TEST_PG` says.
    pub fn pg_of(&self, major: u32) -> &PgMajor {
        self.pg_majors
            .iter()
            .find(|m| m.major == major)
            .unwrap_or_else(|| {
                panic!("the stack runs no PostgreSQL {major}; run `scripts/stack up`")
            })
    }

    /// This stack with the cluster of `major` in place of the run's (`pg_url`, `pg_major`).
    pub fn for_major(&self, major: u32) -> Stack {
        Stack {
            pg_url: self.pg_of(major).url.clone(),
            pg_major: major,
            ..self.clone()
        }
    }

    /// The server binaries (initdb, pg_ctl, postgres) of the major at `pg_url`.
    pub fn pg_server_bin(&self) -> &std::path::Path {
        &self.pg_of(self.pg_major).server_bin
    }

    /// `postgres://user@host:port/db` on the stack's cluster.
    pub fn pg_url_for(&self, user: &str, db: &str) -> String {
        self.pg_url
            .replacen("postgres://postgres@", &format!("postgres://{user}@"), 1)
            + "/"
            + db
    }

    /// A superuser connection to `db`.
    pub async fn pg(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.pg_url_for("postgres", db), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "stack PostgreSQL at {}: {e}; run `scripts/stack up`",
                        self.pg_url
                    )
                });
        tokio::spawn(conn);
        client
    }

    /// A fresh PostgreSQL database for one test, dropped first if a previous run left it,
    /// and dropped with its slots when the test ends ([`cleanup`]).
    pub async fn fresh_pg_database(&self, name: &str) -> String {
        let admin = self.pg("postgres").await;
        // Separate statements: a multi-statement string runs as one transaction.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        cleanup::on_thread_end(self.pg_bin.join("psql"), &self.pg_url, name);
        name.to_string()
    }

    /// A role created anew with `attributes` (e.g. `LOGIN REPLICATION`).
    pub async fn fresh_role(&self, role: &str, attributes: &str) {
        self.pg("postgres")
            .await
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} {attributes}"
            ))
            .await
            .unwrap();
    }

    /// A fresh MariaDB database for one test; returns its URL.
    pub async fn fresh_mysql_database(&self, name: &str) -> String {
        use mysql_async::prelude::Queryable;
        let mut conn = mysql_async::Conn::from_url(&self.mysql_url).await.unwrap();
        conn.query_drop(format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .unwrap();
        conn.query_drop(format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        format!("{}/{name}", self.mysql_url)
    }
}

/// A child process killed when dropped, so a failing test leaves nothing running behind
/// it to slow the tests after it.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free right now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name unique to this test run, usable as a database, slot or topic name:
/// `{prefix}_{run}_{pid}`. Kafka and the registry keep what earlier runs wrote, and a
/// process id comes back, so a tag drawn once per process tells runs apart; the process
/// id stays last, for `remove_leftovers`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", run_tag(), std::process::id())
}

/// Four base-36 characters drawn once per test process.
pub fn run_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let mut n = (nanos ^ std::process::id().rotate_left(16)) % 36u32.pow(4);
        let mut tag = String::new();
        for _ in 0..4 {
            tag.push(char::from_digit(n % 36, 36).unwrap());
            n /= 36;
        }
        tag
    })
}

/// The one way tests wait: polls `probe` every 50 ms until it yields a value, and returns
/// it. After `timeout` the test fails with "timed out after … waiting for {what}", where
/// `what` is asked only then, so it can carry logs or the last state seen. A probe panics
/// itself when waiting longer is pointless (the process under test exited). Never sleep
/// and hope.
pub async fn wait_for<T, F, Fut>(
    timeout: Duration,
    what: impl FnOnce() -> String,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {}", what());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`wait_for`] a condition that holds.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(
        timeout,
        || what.to_string(),
        || {
            let holds = condition();
            async move { holds.await.then_some(()) }
        },
    )
    .await
}

/// One consumed Kafka record.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub partition: i32,
    pub offset: i64,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        use rdkafka::message::{Headers, Message};
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            partition: m.partition(),
            offset: m.offset(),
            headers,
        }
    }
}

/// Consumes `topic` in `group` until `n` records arrived, then commits and closes.
///
/// Counts by consuming, never by watermarks (tansu 0.6.0's can be wrong). Uses librdkafka's
/// BaseConsumer on a blocking thread: rust-rdkafka's StreamConsumer hangs in its destructor
/// against tansu 0.6.0.
pub async fn consume(
    brokers: &str,
    group: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Record> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let (brokers, group, topic) = (brokers.to_string(), group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        while records.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records of {topic} arrived within {timeout:?}",
                records.len()
            );
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = message.unwrap_or_else(|e| panic!("consuming {topic}: {e}"));
            records.push(Record::of(&m));
        }
        consumer.commit_consumer_state(CommitMode::Sync).unwrap();
        records
    })
    .await
    .unwrap()
}

/// A source running in the background of a test, with its event stream and ack handle.
pub struct RunningSource {
    pub events: tokio::sync::mpsc::Receiver<Vec<walcast::source::SourceEvent>>,
    buffered: std::collections::VecDeque<walcast::source::SourceEvent>,
    pub acked: tokio::sync::watch::Sender<walcast::lsn::Lsn>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), walcast::source::SourceError>>,
}

/// Settings for a source over `db` on the stack, publishing `tables` (`schema.table`).
pub fn source_settings(
    stack: &Stack,
    name: &str,
    db: &str,
    tables: &[&str],
) -> walcast::source::SourceSettings {
    walcast::source::SourceSettings {
        name: name.to_string(),
        url: stack.pg_url_for("walcast", db),
        slot: name.to_string(),
        publication: name.to_string(),
        tables: tables
            .iter()
            .map(|t| {
                let (schema, name) = t.split_once('.').unwrap_or(("public", t));
                walcast::source::catalog::TableName {
                    schema: schema.into(),
                    name: name.into(),
                }
            })
            .collect(),
        status_interval: Duration::from_millis(200),
        spill_threshold_bytes: 64 << 20,
        spill_dir: std::env::temp_dir(),
        reconnect_max_backoff: Duration::from_secs(2),
        heartbeat_interval: None,
        heartbeat_table: None,
        tls: Default::default(),
        read_columns: None,
        part: Default::default(),
        slot_failover: false,
        signal_table: false,
    }
}

impl RunningSource {
    /// Starts the source and waits until its slot is streaming, so later writes are captured.
    pub async fn start_streaming(
        stack: &Stack,
        db: &str,
        settings: walcast::source::SourceSettings,
    ) -> Self {
        // A slot is also "active" while CREATE_REPLICATION_SLOT holds it; wait for the
        // walsender to be streaming.
        let slot = settings.slot.clone();
        let application = format!("walcast:{}", settings.name);
        let mut source = Self::start(settings);
        let pg = stack.pg(db).await;
        let finished = |source: &mut Self| source.task.is_finished();
        wait_for(
            Duration::from_secs(30),
            || format!("slot {slot} to stream"),
            || {
                let stopped = finished(&mut source);
                let (pg, slot, application) = (&pg, &slot, &application);
                async move {
                    assert!(!stopped, "the source stopped before streaming");
                    pg.query_opt(
                        "SELECT 1 FROM pg_stat_replication r \
                         JOIN pg_replication_slots s ON s.active_pid = r.pid \
                         WHERE s.slot_name = $1 AND r.application_name = $2 AND r.state = 'streaming'",
                        &[slot, application],
                    )
                    .await
                    .unwrap()
                    .map(|_| ())
                }
            },
        )
        .await;
        source
    }

    /// The next event, from the source's batches.
    pub async fn next_event(&mut self) -> Option<walcast::source::SourceEvent> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(event);
            }
            self.buffered.extend(self.events.recv().await?);
        }
    }

    pub fn start(settings: walcast::source::SourceSettings) -> Self {
        let (tx, events) = tokio::sync::mpsc::channel(16);
        let (acked, acked_rx) = tokio::sync::watch::channel(walcast::lsn::Lsn::ZERO);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(walcast::source::run(settings, tx, acked_rx, async {
            let _ = stopped.await;
        }));
        Self {
            events,
            buffered: Default::default(),
            acked,
            shutdown: Some(stop),
            task,
        }
    }

    /// Receives events until `n` changes arrived and their transactions committed.
    pub async fn changes(&mut self, n: usize, timeout: Duration) -> Vec<walcast::source::Change> {
        use walcast::source::SourceEvent;
        let deadline = Instant::now() + timeout;
        let mut changes = Vec::new();
        let mut open = Vec::new();
        while changes.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let received = tokio::time::timeout(left, self.next_event())
                .await
                .unwrap_or_else(|_| {
                    panic!("only {} of {n} changes within {timeout:?}", changes.len())
                });
            let Some(event) = received else {
                let ended = (&mut self.task).await.unwrap();
                panic!(
                    "the source stopped after {} of {n} changes: {ended:?}",
                    changes.len()
                );
            };
            match event {
                SourceEvent::Begin { .. } => open.clear(),
                SourceEvent::Change(c) => open.push(c),
                SourceEvent::Commit { .. } => changes.append(&mut open),
                SourceEvent::Schema { .. } => {}
            }
        }
        changes
    }

    /// Stops the source and returns how it ended.
    pub async fn stop(mut self) -> Result<(), walcast::source::SourceError> {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap()
    }
}

/// A committed transaction as the source delivered it.
#[derive(Debug, Clone)]
pub struct Txn {
    pub xid: u32,
    pub commit_lsn: walcast::lsn::Lsn,
    pub end_lsn: walcast::lsn::Lsn,
    pub changes: Vec<walcast::source::Change>,
}

impl RunningSource {
    /// Receives events until `n` transactions committed. A `Begin` while a transaction is
    /// open voids it (the source reconnected and will resend it).
    pub async fn transactions(&mut self, n: usize, timeout: Duration) -> Vec<Txn> {
        use walcast::source::SourceEvent;
        let deadline = Instant::now() + timeout;
        let mut txns = Vec::new();
        let mut open: Vec<walcast::source::Change> = Vec::new();
        while txns.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let received = tokio::time::timeout(left, self.next_event())
                .await
                .unwrap_or_else(|_| {
                    panic!("only {} of {n} transactions within {timeout:?}", txns.len())
                });
            let Some(event) = received else {
                let ended = (&mut self.task).await.unwrap();
                panic!(
                    "the source stopped after {} of {n} transactions: {ended:?}",
                    txns.len()
                );
            };
            match event {
                SourceEvent::Begin { .. } => open.clear(),
                SourceEvent::Change(c) => open.push(c),
                SourceEvent::Commit {
                    xid,
                    commit_lsn,
                    end_lsn,
                    ..
                } => txns.push(Txn {
                    xid,
                    commit_lsn,
                    end_lsn,
                    changes: std::mem::take(&mut open),
                }),
                SourceEvent::Schema { .. } => {}
            }
        }
        txns
    }

    /// Acknowledges everything up to `lsn`, as a publisher would once Kafka has it.
    pub fn ack(&self, lsn: walcast::lsn::Lsn) {
        self.acked.send_replace(lsn);
    }

    /// Simulates a crash: the task is aborted without a final status update.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// How many transactions the server streamed to `slot` while they were in progress.
pub async fn streamed_transactions(pg: &tokio_postgres::Client, slot: &str) -> i64 {
    pg.query_one(
        "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until `slot` has confirmed everything written so far: what was written is in
/// Kafka (walcast confirms nothing before).
pub async fn wait_confirmed_to_now(pg: &tokio_postgres::Client, slot: &str) {
    let end: String = pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    wait_until(
        &format!("slot {slot} to confirm {end}"),
        Duration::from_secs(30),
        || {
            let end = &end;
            async move {
                pg.query_one(
                    "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                    &[end, &slot],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
            }
        },
    )
    .await;
}

/// The slot's confirmed_flush_lsn.
pub async fn confirmed_flush(pg: &tokio_postgres::Client, slot: &str) -> walcast::lsn::Lsn {
    let lsn: Option<String> = pg
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    lsn.expect("slot has a confirmed position").parse().unwrap()
}

/// Reads partition 0 of `topic` from its beginning, without a consumer group, until `n`
/// records arrived.
pub async fn consume_from_start(brokers: &str, topic: &str, n: usize) -> Vec<Record> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "walcast-tests-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut records = Vec::new();
        while records.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records of {topic}",
                records.len()
            );
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m.unwrap_or_else(|e| panic!("reading {topic}: {e}"));
            records.push(Record::of(&m));
        }
        records
    })
    .await
    .unwrap()
}
