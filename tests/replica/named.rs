//! The fields a sink names (`fields`, `columns`) are checked against the contracts
//! registered for its topics when it starts, or, for a topic whose contracts are not
//! registered yet, at its first record: a misspelt field stops the sink naming the field,
//! the subjects and the fields they have, instead of leaving its column NULL.

use std::time::Duration;

use crate::support::daemon::{Daemon, Setup};
use crate::support::{unique, wait_until, Stack};

/// The sink `typo`, keeping `emial` (sic) into `user_replica` at `url`.
fn misspelt_sink(topic: &str, url: &str) -> String {
    format!(
        "\n[[sink]]\nname = \"typo\"\ntype = \"postgres\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\nfields = [\"user_id\", \"name\", \"emial\"]\nbatch_max_wait_ms = 50\n"
    )
}

fn expected(topic: &str) -> String {
    format!(
        "sink typo: fields names emial, which is not a field of any contract registered for topic {topic} (subjects "
    )
}

async fn replica(stack: &Stack, prefix: &str) -> (String, tokio_postgres::Client) {
    let db = stack.fresh_pg_database(&unique(prefix)).await;
    let client = stack.pg(&db).await;
    client
        .batch_execute(
            "CREATE TABLE user_replica (user_id bigint PRIMARY KEY, name text, email text,
               _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)",
        )
        .await
        .unwrap();
    (stack.pg_url_for("postgres", &db), client)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misspelt_field_stops_the_sink_at_start_naming_it_and_the_fields_that_exist() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_named", Setup::default()).await;
    let (url, replica) = replica(stack, "rep_named_orders").await;
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&misspelt_sink(&daemon.topic, &url));
    std::fs::write(&daemon.config, config).unwrap();
    let registered = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["schemas", "register", "--config"])
        .arg(&daemon.config)
        .output()
        .unwrap();
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    daemon.start().await;
    let expected = expected(&daemon.topic);
    wait_until(
        "the sink to stop naming the field",
        Duration::from_secs(60),
        || {
            let seen = daemon.log_text().contains(&expected);
            async move { seen }
        },
    )
    .await;
    let log = daemon.log_text();
    for subject in [
        "key",
        "com.example.users.UserCreated",
        "com.example.users.UserUpdated",
    ] {
        assert!(
            log.contains(&format!("{}-{subject}", daemon.topic)),
            "{log}"
        );
    }
    assert!(log.contains("; their fields: "), "{log}");
    assert!(log.contains(", email, "), "{log}");
    assert!(
        log.contains("name event fields, or leave emial out"),
        "{log}"
    );
    // The source goes on; the replica was never written.
    daemon
        .pg()
        .await
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'ada@example.com', 'x')")
        .await
        .unwrap();
    let rows: i64 = replica
        .query_one("SELECT count(*) FROM user_replica", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// A sink started before its topic's source has registered anything checks at the
/// topic's first record, before applying it.
#[tokio::test(flavor = "multi_thread")]
async fn a_misspelt_field_of_a_topic_registered_later_stops_the_sink_at_its_first_record() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_named_late", Setup::default()).await;
    let (url, replica) = replica(stack, "rep_named_late_orders").await;
    // A sink-only configuration: the same file without its source.
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let at = config.find("[[source]]").unwrap();
    let mut sink_only = daemon.twin();
    sink_only.config = sink_only.dir.path().join("sink.toml");
    std::fs::write(
        &sink_only.config,
        format!("{}{}", &config[..at], misspelt_sink(&daemon.topic, &url)),
    )
    .unwrap();
    sink_only.spawn();
    wait_until(
        "the sink to wait for its topic",
        Duration::from_secs(60),
        || {
            let seen = sink_only
                .log_text()
                .contains("waiting for the topic to be created by its source");
            async move { seen }
        },
    )
    .await;
    daemon.start().await;
    daemon
        .pg()
        .await
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'ada@example.com', 'x')")
        .await
        .unwrap();
    let expected = expected(&daemon.topic);
    wait_until(
        "the sink to stop naming the field",
        Duration::from_secs(60),
        || {
            let seen = sink_only.log_text().contains(&expected);
            async move { seen }
        },
    )
    .await;
    let rows: i64 = replica
        .query_one("SELECT count(*) FROM user_replica", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "nothing applied");
    sink_only.terminate().await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}
