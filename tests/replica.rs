//! Spec: the full loop. The users database → `walcast run` (source and sink in one daemon)
//! → Kafka → a PostgreSQL read replica in another database, which converges to exactly the
//! source's state after random writes and after kill -9 mid-stream.

mod support;

use std::time::{Duration, Instant};

use support::daemon::{Daemon, Setup};
use support::{unique, Stack};

type Rows = Vec<(i64, String, String)>;

async fn source_rows(pg: &tokio_postgres::Client) -> Rows {
    pg.query("SELECT id, full_name, email FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn replica_rows(pg: &tokio_postgres::Client) -> Rows {
    pg.query(
        "SELECT user_id, name, email FROM user_replica ORDER BY user_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

async fn converged(
    daemon: &Daemon,
    source: &tokio_postgres::Client,
    replica: &tokio_postgres::Client,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (want, got) = (source_rows(source).await, replica_rows(replica).await);
        if want == got {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not converge within 90s: {} source rows, {} replica rows\n{}",
            want.len(),
            got.len(),
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A few transactions of random inserts, updates (also of the same key twice) and deletes.
async fn random_writes(pg: &tokio_postgres::Client, rounds: u32, seed: &mut u64) {
    let mut next = |n: u64| {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed % n
    };
    for round in 0..rounds {
        let mut tx = String::from("BEGIN;");
        for i in 0..20 {
            match next(4) {
                0 | 1 => tx.push_str(&format!(
                    "INSERT INTO users (full_name, email, password_hash) VALUES ('n{round}-{i}', 'e{round}-{i}@example.com', 'x');"
                )),
                2 => tx.push_str(&format!(
                    "UPDATE users SET full_name = full_name || '*', email = 'u{round}-{i}@example.com' WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1);"
                )),
                _ => tx.push_str("DELETE FROM users WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1);"),
            }
        }
        tx.push_str("COMMIT;");
        pg.batch_execute(&tx).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_replica_converges_to_the_source_through_kill_9() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_pg", Setup::default()).await;
    let replica_db = stack.fresh_pg_database(&unique("rep_pg_orders")).await;
    let replica = stack.pg(&replica_db).await;
    replica
        .batch_execute(
            "CREATE TABLE user_replica (user_id bigint PRIMARY KEY, name text, email text,
               _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)",
        )
        .await
        .unwrap();
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&format!(
        r#"
[[sink]]
name = "replica-{name}"
type = "postgres"
topics = ["{topic}"]
url = "{url}"
table = "user_replica"
key = ["user_id"]
fields = ["user_id", "name", "email"]
batch_max_wait_ms = 50
"#,
        name = daemon.name,
        topic = daemon.topic,
        url = stack.pg_url_for("postgres", &replica_db),
    ));
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    let source = daemon.pg().await;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    eprintln!("seed {seed}");

    random_writes(&source, 10, &mut seed).await;
    converged(&daemon, &source, &replica).await;

    // kill -9 while writes stream, then restart: redelivery is absorbed.
    let writes = {
        let pg = daemon.pg().await;
        let mut s = seed;
        tokio::spawn(async move { random_writes(&pg, 30, &mut s).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill9();
    writes.await.unwrap();
    daemon.start().await;
    converged(&daemon, &source, &replica).await;
    let rows = replica_rows(&replica).await.len();
    assert!(
        rows > 0,
        "the scenario deleted everything; nothing was compared"
    );
    eprintln!("converged on {rows} rows");
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// The dead-letter policy is not built yet: a sink asking for it is refused, not ignored.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_policy_is_refused_rather_than_ignored() {
    let stack = Stack::get();
    let daemon = Daemon::prepare("rep_dlq", Setup::default()).await;
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&format!(
        "\n[[sink]]\nname = \"dlq\"\ntype = \"postgres\"\ntopics = [\"{}\"]\non_error = \"dead_letter\"\nurl = \"{}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\n",
        daemon.topic,
        stack.pg_url_for("postgres", &daemon.db),
    ));
    std::fs::write(&daemon.config, config).unwrap();
    let (code, stderr) = daemon.run_to_end();
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(
            "sink dlq: on_error = \"dead_letter\" is not available in this build; use \"stop\""
        ),
        "{stderr}"
    );
}
