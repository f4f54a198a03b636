//! Spec: a TRUNCATE of a table with a `truncate` contract reaches every partition of its
//! topic as a truncate event (read back with Confluent's client), and every replica
//! (PostgreSQL, MariaDB, Redis) drops the rows the source no longer has, while changes made
//! after it, in the same transaction or later, stay.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::daemon::{decode, user_replica_sink, Daemon, Setup};
use crate::support::{unique, wait_for, Stack};

type Rows = Vec<(i64, String)>;

const TRUNCATED: &str = r#"{"type": "record", "name": "UsersTruncated", "namespace": "com.example.users",
  "doc": "Every user was removed at once (TRUNCATE).", "fields": []}"#;

pub(crate) async fn source_rows(pg: &tokio_postgres::Client) -> Rows {
    pg.query("SELECT id, full_name FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

pub(crate) async fn postgres_rows(url: &str) -> Rows {
    let Ok((client, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return vec![];
    };
    tokio::spawn(conn);
    client
        .query(
            "SELECT user_id, name FROM user_replica ORDER BY user_id",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}

pub(crate) async fn mysql_rows(url: &str) -> Rows {
    let Ok(mut conn) = mysql_async::Conn::from_url(url).await else {
        return vec![];
    };
    let rows = conn
        .query("SELECT user_id, name FROM user_replica ORDER BY user_id")
        .await
        .unwrap_or_default();
    let _ = conn.disconnect().await;
    rows
}

pub(crate) async fn redis_rows(url: &str, prefix: &str) -> Rows {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut rows = Vec::new();
    for key in keys {
        let name: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("name")
            .query_async(&mut conn)
            .await
            .unwrap();
        rows.push((
            key[prefix.len()..].parse().unwrap(),
            name.unwrap_or_default(),
        ));
    }
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncate_reaches_every_partition_and_clears_every_replica() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare(
        "rep_trunc",
        Setup {
            compacted: true,
            contracts: vec![("UsersTruncated.avsc", TRUNCATED.into())],
            table_keys: Some(
                "columns = { user_id = \"id\", name = \"full_name\" }\ntruncate = \"UsersTruncated.avsc\"".into(),
            ),
            ..Setup::default()
        },
    )
    .await;
    let pg_db = stack.fresh_pg_database(&unique("rep_trunc_orders")).await;
    let pg_url = stack.pg_url_for("postgres", &pg_db);
    let mysql_url = stack
        .fresh_mysql_database(&unique("rep_trunc_shipping"))
        .await;
    let prefix = format!("{}:user:", daemon.name);
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    let topic = daemon.topic.clone();
    config.push_str(&user_replica_sink("pg", "postgres", &topic, &pg_url));
    config.push_str(&user_replica_sink("my", "mysql", &topic, &mysql_url));
    config.push_str(&format!(
        "\n[[sink]]\nname = \"cache\"\ntype = \"redis\"\ntopics = [\"{topic}\"]\nurl = \"{}\"\nkey_template = \"{prefix}{{user_id}}\"\nfields = [\"name\"]\nbatch_max_wait_ms = 50\n",
        stack.redis_url
    ));
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    let source = daemon.pg().await;
    source
        .batch_execute(
            "INSERT INTO users (full_name, email, password_hash)
               SELECT 'user ' || i, 'u' || i || '@example.com', 'x' FROM generate_series(1, 40) i;
             UPDATE users SET full_name = 'Ada' WHERE id = 7",
        )
        .await
        .unwrap();
    let converged = |what: &'static str| {
        let (source, pg_url, mysql_url, prefix) = (&source, &pg_url, &mysql_url, &prefix);
        let daemon = &daemon;
        let last = std::sync::Mutex::new(String::new());
        async move {
            wait_for(
                Duration::from_secs(90),
                || format!("{what}: {}\n{}", last.lock().unwrap(), daemon.log_text()),
                || async {
                    let want = source_rows(source).await;
                    let got = [
                        ("postgres", postgres_rows(pg_url).await),
                        ("mariadb", mysql_rows(mysql_url).await),
                        ("redis", redis_rows(&stack.redis_url, prefix).await),
                    ];
                    let behind: Vec<String> = got
                        .iter()
                        .filter(|(_, rows)| *rows != want)
                        .map(|(store, rows)| format!("{store} {rows:?}"))
                        .collect();
                    *last.lock().unwrap() = format!("source {want:?}; behind: {behind:?}");
                    behind.is_empty().then_some(())
                },
            )
            .await;
        }
    };
    converged("the replicas to hold the 40 users").await;

    // Rows before the TRUNCATE in its transaction go with it; rows after it stay.
    source
        .batch_execute(
            "BEGIN;
             INSERT INTO users (full_name, email, password_hash) VALUES ('gone', 'gone@example.com', 'x');
             TRUNCATE users;
             INSERT INTO users (full_name, email, password_hash) VALUES ('Grace', 'grace@example.com', 'x');
             COMMIT;
             INSERT INTO users (full_name, email, password_hash) VALUES ('Edsger', 'edsger@example.com', 'x')",
        )
        .await
        .unwrap();
    assert_eq!(source_rows(&source).await.len(), 2);
    converged("the replicas to drop every row the TRUNCATE removed").await;

    // On Kafka: one truncate event on each of the topic's 3 partitions, keyed by it, its
    // value the contract's empty record, between the changes before and after it.
    let events = decode(&topic, 40 + 1 + 1 + 3 + 2).await;
    let truncates: Vec<_> = events
        .iter()
        .filter(|e| e.headers["op"] == "truncate")
        .collect();
    let mut partitions: Vec<i64> = truncates
        .iter()
        .map(|e| {
            assert_eq!(
                e.key["partition"].as_i64(),
                Some(i64::from(e.partition)),
                "{e:?}"
            );
            assert_eq!(e.value, Some(serde_json::json!({})), "{e:?}");
            assert_eq!(e.headers["event_type"], "com.example.users.UsersTruncated");
            assert_eq!(e.headers["lsn"], truncates[0].headers["lsn"]);
            // Each copy its own event: a consumer deduplicating by event_id keeps all three.
            assert_eq!(
                e.headers["event_id"],
                format!(
                    "{}/{}/{}/0/p{}",
                    e.headers["source"], e.headers["lsn"], e.headers["seq"], e.partition
                )
            );
            i64::from(e.partition)
        })
        .collect();
    partitions.sort();
    assert_eq!(partitions, [0, 1, 2], "{events:#?}");
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}
