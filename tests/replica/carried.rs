//! A change writes only the fields it carries, on the full loop: `UserCreated` carries
//! `created_at`, `UserUpdated` does not. One source transaction updates users and creates
//! others between the updates; every replica keeps the updated users' `created_at` (a
//! batch's columns were the union of its changes' fields, and an update wrote NULL for the
//! ones it lacks). In PostgreSQL, MariaDB and Redis.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::daemon::{Daemon, Setup};
use crate::support::{unique, wait_for, Stack};

/// (user_id, name, whether created_at is set), by user_id.
type Rows = Vec<(i64, String, bool)>;

async fn source_rows(pg: &tokio_postgres::Client) -> Rows {
    pg.query("SELECT id, full_name FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), true))
        .collect()
}

async fn postgres_rows(url: &str) -> Rows {
    let Ok((client, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return vec![];
    };
    tokio::spawn(conn);
    client
        .query(
            "SELECT user_id, name, created_at IS NOT NULL FROM user_replica ORDER BY user_id",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect()
        })
        .unwrap_or_default()
}

async fn mysql_rows(url: &str) -> Rows {
    let Ok(mut conn) = mysql_async::Conn::from_url(url).await else {
        return vec![];
    };
    let rows: Vec<(i64, String, bool)> = conn
        .query("SELECT user_id, name, created_at IS NOT NULL FROM user_replica ORDER BY user_id")
        .await
        .unwrap_or_default();
    let _ = conn.disconnect().await;
    rows
}

async fn redis_rows(url: &str, prefix: &str) -> Rows {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut rows = Vec::new();
    for key in keys {
        let (name, created_at): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("name")
            .arg("created_at")
            .query_async(&mut conn)
            .await
            .unwrap();
        rows.push((
            key[prefix.len()..].parse().unwrap(),
            name.unwrap_or_default(),
            created_at.is_some(),
        ));
    }
    rows.sort();
    rows
}

/// Waits until every replica holds `want`.
async fn converged(daemon: &Daemon, pg_url: &str, mysql_url: &str, prefix: &str, want: Rows) {
    wait_for(
        Duration::from_secs(60),
        || daemon.log_text(),
        || {
            let want = want.clone();
            async move {
                let got = (
                    postgres_rows(pg_url).await,
                    mysql_rows(mysql_url).await,
                    redis_rows(&Stack::get().redis_url, prefix).await,
                );
                (got.0 == want && got.1 == want && got.2 == want).then_some(())
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_sharing_a_batch_with_inserts_keeps_the_fields_it_does_not_carry() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_carried", Setup::default()).await;
    let pg_db = stack.fresh_pg_database(&unique("rep_carried_orders")).await;
    let pg_url = stack.pg_url_for("postgres", &pg_db);
    let mysql_url = stack
        .fresh_mysql_database(&unique("rep_carried_shipping"))
        .await;
    let prefix = format!("{}:user:", daemon.name);
    let topic = daemon.topic.clone();
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    // Every field kept (the default): the table has created_at (UserCreated's) and
    // updated_at (UserUpdated's).
    for (name, kind, url) in [("pg", "postgres", &pg_url), ("my", "mysql", &mysql_url)] {
        config.push_str(&format!(
            "\n[[sink]]\nname = \"{name}\"\ntype = \"{kind}\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\nauto_create = true\nbatch_max_wait_ms = 200\n"
        ));
    }
    config.push_str(&format!(
        "\n[[sink]]\nname = \"cache\"\ntype = \"redis\"\ntopics = [\"{topic}\"]\nurl = \"{}\"\nkey_template = \"{prefix}{{user_id}}\"\nbatch_max_wait_ms = 200\n",
        stack.redis_url
    ));
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    let source = daemon.pg().await;
    source
        .batch_execute(
            "INSERT INTO users (full_name, email, password_hash)
               SELECT 'user ' || i, 'u' || i || '@example.com', 'x' FROM generate_series(1, 20) i",
        )
        .await
        .unwrap();
    converged(
        &daemon,
        &pg_url,
        &mysql_url,
        &prefix,
        source_rows(&source).await,
    )
    .await;
    // One transaction: updates, inserts between them, updates of the new rows.
    source
        .batch_execute(
            "BEGIN;
             UPDATE users SET full_name = full_name || ' (a)' WHERE id BETWEEN 2 AND 10;
             INSERT INTO users (full_name, email, password_hash)
               SELECT 'new ' || i, 'n' || i || '@example.com', 'x' FROM generate_series(1, 5) i;
             UPDATE users SET full_name = full_name || ' (b)' WHERE id BETWEEN 11 AND 19 OR id > 22;
             COMMIT",
        )
        .await
        .unwrap();
    let want = source_rows(&source).await;
    assert_eq!(want.len(), 25);
    converged(&daemon, &pg_url, &mysql_url, &prefix, want).await;
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    assert_eq!(daemon.terminate().await, Some(0));
}
