//! Spec: a partitioned `users` (by region), configured as its root, reaches a PostgreSQL
//! replica row for row: the snapshot read through the root, inserts, updates, rows moving
//! between partitions (a delete and an insert of the root in pgoutput), deletes, on two
//! partitions and a third attached while running, and again after a restart.

use std::time::Duration;

use super::truncate::{postgres_rows, source_rows};
use crate::support::daemon::{user_replica_sink, Daemon, Setup};
use crate::support::{unique, wait_for, Stack};

/// `users` again, partitioned by `region` (`eu`, `us`), ids given by the test.
const PARTITIONED_USERS: &str = "DROP TABLE users;
  CREATE TABLE users (
    id bigint NOT NULL, region text NOT NULL, full_name text NOT NULL, email text NOT NULL,
    password_hash text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, region)
  ) PARTITION BY LIST (region);
  CREATE TABLE users_eu PARTITION OF users FOR VALUES IN ('eu');
  CREATE TABLE users_us PARTITION OF users FOR VALUES IN ('us');
  ALTER TABLE users OWNER TO walcast; ALTER TABLE users_eu OWNER TO walcast;
  ALTER TABLE users_us OWNER TO walcast";

/// Inserts users `ids` in `region`.
fn insert(ids: std::ops::RangeInclusive<i64>, region: &str) -> String {
    format!(
        "INSERT INTO users (id, region, full_name, email, password_hash)
           SELECT i, '{region}', 'user ' || i, 'u' || i || '@example.com', 'x' FROM generate_series({}, {}) i",
        ids.start(),
        ids.end()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_table_reaches_its_replica_row_for_row() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_part", Setup::default()).await;
    let source = daemon.pg().await;
    source
        .batch_execute(&format!(
            "{PARTITIONED_USERS}; {}; {}",
            insert(1..=10, "eu"),
            insert(11..=20, "us")
        ))
        .await
        .unwrap();
    let pg_db = stack.fresh_pg_database(&unique("rep_part_replica")).await;
    let pg_url = stack.pg_url_for("postgres", &pg_db);
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config = config.replace("snapshot = \"never\"", "snapshot = \"initial\"");
    config.push_str(&user_replica_sink("pg", "postgres", &daemon.topic, &pg_url));
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;

    let log = daemon.log.clone();
    let converged = |what: &'static str| {
        let (source, pg_url, log) = (&source, &pg_url, &log);
        let last = std::sync::Mutex::new(String::new());
        async move {
            wait_for(
                Duration::from_secs(90),
                || {
                    let log = std::fs::read_to_string(log).unwrap_or_default();
                    format!("{what}: {}\n{log}", last.lock().unwrap())
                },
                || async {
                    let (want, got) = (source_rows(source).await, postgres_rows(pg_url).await);
                    *last.lock().unwrap() = format!("source {want:?}\nreplica {got:?}");
                    (want == got).then_some(())
                },
            )
            .await;
        }
    };
    converged("the snapshot, read through the root, to fill the replica").await;

    source
        .batch_execute(&format!(
            "{};
             UPDATE users SET full_name = 'Ada' WHERE id = 1;
             UPDATE users SET region = 'us', full_name = 'moved ' || id WHERE id BETWEEN 2 AND 5;
             UPDATE users SET region = 'eu' WHERE id = 11;
             DELETE FROM users WHERE id IN (6, 12);
             CREATE TABLE users_asia (LIKE users INCLUDING ALL);
             ALTER TABLE users ATTACH PARTITION users_asia FOR VALUES IN ('asia');
             {};
             UPDATE users SET region = 'asia', full_name = 'to asia' WHERE id IN (7, 13);
             UPDATE users SET full_name = 'Grace' WHERE id = 31;
             DELETE FROM users WHERE id = 32",
            insert(21..=25, "eu"),
            insert(31..=35, "asia"),
        ))
        .await
        .unwrap();
    converged("changes in every partition, moves between them and the attached one").await;

    // A restart, with changes made while it was stopped and after.
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    source
        .batch_execute(&format!(
            "{}; UPDATE users SET region = 'eu' WHERE id = 33; DELETE FROM users WHERE id = 1",
            insert(41..=43, "us")
        ))
        .await
        .unwrap();
    daemon.start().await;
    source
        .batch_execute(&format!(
            "{}; UPDATE users SET region = 'us', full_name = 'back' WHERE id = 7",
            insert(51..=53, "asia")
        ))
        .await
        .unwrap();
    converged("the changes around a restart").await;
    assert_eq!(
        source_rows(&source).await.len(),
        20 + 5 - 2 + 5 - 1 + 3 - 1 + 3
    );
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    source
        .execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
}
