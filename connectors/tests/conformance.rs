//! Conformance: the scenarios every connector must pass, against the real store.
//! Each store implements [`Harness`]; each scenario runs once per store. (PostgreSQL now;
//! MySQL/MariaDB and Redis join with their connectors.)

use std::collections::BTreeMap;

use connectors::postgres::{PostgresSettings, PostgresSink};
use connectors::{Batch, Change, Op, Position, Sink, Value, Version};

/// One store under test: a fresh replica, and a way to read back what it holds.
trait Harness: Sized {
    type Sink: Sink;
    async fn fresh(name: &str) -> (Self, Self::Sink);
    /// `id → name` of every row the replica holds.
    async fn rows(&self) -> BTreeMap<i64, String>;
    /// A new connection to the same replica, as after a crash.
    async fn reconnect(&self) -> Self::Sink;
}

fn upsert(id: i64, name: &str, lsn: u64, seq: u32) -> Change {
    Change {
        key: vec![("user_id".into(), Value::Long(id))],
        op: Op::Upsert(vec![("name".into(), Value::Text(name.into()))]),
        version: Version { lsn, seq },
    }
}

fn delete(id: i64, lsn: u64, seq: u32) -> Change {
    Change {
        key: vec![("user_id".into(), Value::Long(id))],
        op: Op::Delete,
        version: Version { lsn, seq },
    }
}

fn batch(changes: Vec<Change>) -> Batch {
    Batch {
        changes,
        positions: vec![],
    }
}

fn rows(pairs: &[(i64, &str)]) -> BTreeMap<i64, String> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

async fn inserts_updates_and_deletes_converge<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    sink.apply(&batch(vec![
        upsert(1, "Ada", 10, 0),
        upsert(2, "Grace", 10, 1),
        upsert(3, "Edsger", 10, 2),
    ]))
    .await
    .unwrap();
    sink.apply(&batch(vec![
        upsert(1, "Ada Lovelace", 20, 0),
        delete(2, 30, 0),
    ]))
    .await
    .unwrap();
    assert_eq!(h.rows().await, rows(&[(1, "Ada Lovelace"), (3, "Edsger")]));
}

async fn redelivery_changes_nothing<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    let b = batch(vec![
        upsert(1, "Ada", 10, 0),
        upsert(1, "Ada Lovelace", 10, 1),
        delete(2, 10, 2),
    ]);
    sink.apply(&b).await.unwrap();
    let once = h.rows().await;
    sink.apply(&b).await.unwrap();
    sink.apply(&b).await.unwrap();
    assert_eq!(h.rows().await, once);
    assert_eq!(
        once,
        rows(&[(1, "Ada Lovelace")]),
        "within a batch, the highest version of a key wins"
    );
}

async fn a_stale_update_never_overwrites_a_newer_one<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    sink.apply(&batch(vec![upsert(1, "new", 20, 0)]))
        .await
        .unwrap();
    sink.apply(&batch(vec![upsert(1, "old", 10, 5)]))
        .await
        .unwrap();
    sink.apply(&batch(vec![upsert(1, "same version, other data", 20, 0)]))
        .await
        .unwrap();
    assert_eq!(h.rows().await, rows(&[(1, "new")]));
}

async fn a_late_update_cannot_resurrect_a_deleted_row<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    sink.apply(&batch(vec![upsert(1, "Ada", 10, 0)]))
        .await
        .unwrap();
    sink.apply(&batch(vec![delete(1, 30, 0)])).await.unwrap();
    sink.apply(&batch(vec![upsert(1, "late", 20, 0)]))
        .await
        .unwrap();
    assert_eq!(
        h.rows().await,
        rows(&[]),
        "an update older than the delete was applied"
    );
    // A delete older than the row is stale too.
    sink.apply(&batch(vec![upsert(2, "Grace", 50, 0), delete(3, 5, 0)]))
        .await
        .unwrap();
    sink.apply(&batch(vec![delete(2, 40, 0)])).await.unwrap();
    // A row created again after its delete is live.
    sink.apply(&batch(vec![upsert(1, "Ada again", 60, 0)]))
        .await
        .unwrap();
    assert_eq!(h.rows().await, rows(&[(1, "Ada again"), (2, "Grace")]));
}

/// The runner commits Kafka offsets after `apply`; a crash in between redelivers the batch.
/// The positions stored with the rows say where to resume, and redelivery is absorbed.
async fn a_crash_between_write_and_offset_commit_is_absorbed<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    let position = |offset| Position {
        topic: "users.user".into(),
        partition: 2,
        next_offset: offset,
    };
    let b = Batch {
        changes: vec![upsert(1, "Ada", 10, 0), upsert(2, "Grace", 11, 0)],
        positions: vec![position(42)],
    };
    sink.apply(&b).await.unwrap();
    drop(sink); // crash: the Kafka offset was never committed
    let mut sink = h.reconnect().await;
    assert_eq!(
        sink.positions().await.unwrap(),
        vec![position(42)],
        "the replica knows where it stopped"
    );
    sink.apply(&b).await.unwrap(); // redelivered anyway
    assert_eq!(h.rows().await, rows(&[(1, "Ada"), (2, "Grace")]));
}

// ------------------------------------------------------------------ PostgreSQL

struct Pg {
    admin_url: String,
    settings: PostgresSettings,
}

fn stack_var(name: &str) -> String {
    let dir =
        std::env::var("WALCAST_STACK_DIR").unwrap_or_else(|_| "/var/tmp/walcast-stack".into());
    let text =
        std::fs::read_to_string(format!("{dir}/stack.env")).expect("run scripts/stack up first");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("stack.env lacks {name}"))
        .to_string()
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("stack PostgreSQL");
    tokio::spawn(conn);
    client
}

impl Harness for Pg {
    type Sink = PostgresSink;

    async fn fresh(name: &str) -> (Self, PostgresSink) {
        let base = stack_var("WALCAST_PG_URL");
        let db = format!("conf_{name}_{}", std::process::id());
        let admin = pg_client(&format!("{base}/postgres")).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let url = format!("{base}/{db}");
        pg_client(&url)
            .await
            .batch_execute(
                "CREATE TABLE user_replica (user_id bigint PRIMARY KEY, customer_name text,
                   _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)",
            )
            .await
            .unwrap();
        let settings = PostgresSettings {
            url: url.clone(),
            table: "user_replica".into(),
            key: vec!["user_id".into()],
            columns: [("customer_name".to_string(), "name".to_string())].into(),
            fields: None,
            consumer: "walcast.test".into(),
        };
        let sink = PostgresSink::connect(settings.clone()).await.unwrap();
        (
            Pg {
                admin_url: url,
                settings,
            },
            sink,
        )
    }

    async fn rows(&self) -> BTreeMap<i64, String> {
        pg_client(&self.admin_url)
            .await
            .query("SELECT user_id, customer_name FROM user_replica", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    async fn reconnect(&self) -> PostgresSink {
        PostgresSink::connect(self.settings.clone()).await.unwrap()
    }
}

#[tokio::test]
async fn postgres_inserts_updates_and_deletes_converge() {
    inserts_updates_and_deletes_converge::<Pg>("ops").await;
}
#[tokio::test]
async fn postgres_redelivery_changes_nothing() {
    redelivery_changes_nothing::<Pg>("redelivery").await;
}
#[tokio::test]
async fn postgres_a_stale_update_never_overwrites_a_newer_one() {
    a_stale_update_never_overwrites_a_newer_one::<Pg>("stale").await;
}
#[tokio::test]
async fn postgres_a_late_update_cannot_resurrect_a_deleted_row() {
    a_late_update_cannot_resurrect_a_deleted_row::<Pg>("late").await;
}
#[tokio::test]
async fn postgres_a_crash_between_write_and_offset_commit_is_absorbed() {
    a_crash_between_write_and_offset_commit_is_absorbed::<Pg>("crash").await;
}

/// Setup problems name the table and the fix.
#[tokio::test]
async fn postgres_setup_errors_say_how_to_fix_them() {
    let (h, _) = Pg::fresh("setup").await;
    let mut settings = h.settings.clone();
    settings.table = "missing_replica".into();
    let e = PostgresSink::connect(settings).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("replica table missing_replica does not exist; create it"),
        "{e}"
    );
    pg_client(&h.admin_url)
        .await
        .batch_execute("CREATE TABLE bare (user_id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let mut settings = h.settings.clone();
    settings.table = "bare".into();
    let e = PostgresSink::connect(settings).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "replica table bare lacks the version column _walcast_lsn bigint; run ALTER TABLE \"public\".\"bare\" ADD COLUMN _walcast_lsn bigint NOT NULL DEFAULT 0"
    );
    let mut sink = h.reconnect().await;
    let unknown = Change {
        key: vec![("user_id".into(), Value::Long(1))],
        op: Op::Upsert(vec![("nickname".into(), Value::Text("x".into()))]),
        version: Version { lsn: 1, seq: 0 },
    };
    let e = sink.apply(&batch(vec![unknown])).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "event field nickname has no column nickname in replica table user_replica; add the column, map the field with columns, or leave it out of fields"
    );
}
