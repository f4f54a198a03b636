//! A compacted topic keeps a deleted key's tombstone and drops the delete event before it:
//! the tombstone (headers `op = delete`, `lsn`, `seq`) is the delete for a sink that reads
//! the topic after compaction, or for a table without a delete contract. In PostgreSQL,
//! MariaDB and Redis.

use std::time::Duration;

use crate::support::daemon::{user_replica_sink, Daemon, Setup};
use crate::support::{unique, wait_for, Stack};
use crate::truncate::{mysql_rows, postgres_rows, redis_rows, source_rows};

#[tokio::test(flavor = "multi_thread")]
async fn a_tombstone_alone_deletes_the_row_from_every_replica() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare(
        "rep_tomb",
        Setup {
            compacted: true,
            ..Setup::default()
        },
    )
    .await;
    let pg_db = stack.fresh_pg_database(&unique("rep_tomb_orders")).await;
    let pg_url = stack.pg_url_for("postgres", &pg_db);
    let mysql_url = stack
        .fresh_mysql_database(&unique("rep_tomb_shipping"))
        .await;
    let prefix = format!("{}:user:", daemon.name);
    let topic = daemon.topic.clone();
    // No delete contract: a delete publishes only its tombstone.
    let original = std::fs::read_to_string(&daemon.config).unwrap();
    let mut config = original.replacen("delete = \"UserDeleted.avsc\"\n", "", 1);
    assert_ne!(config, original, "the delete contract is left out");
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
               SELECT 'user ' || i, 'u' || i || '@example.com', 'x' FROM generate_series(1, 10) i;
             DELETE FROM users WHERE id IN (3, 7)",
        )
        .await
        .unwrap();
    let want = source_rows(&source).await;
    assert_eq!(want.len(), 8);
    wait_for(
        Duration::from_secs(60),
        || daemon.log_text(),
        || async {
            let got = (
                postgres_rows(&pg_url).await,
                mysql_rows(&mysql_url).await,
                redis_rows(&stack.redis_url, &prefix).await,
            );
            (got.0 == want && got.1 == want && got.2 == want).then_some(())
        },
    )
    .await;
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    assert_eq!(daemon.terminate().await, Some(0));
}
