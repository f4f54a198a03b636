//! A replica whose positions are older than what its topic still holds (restored from a
//! backup older than the topic's retention) would skip the records retention removed: the
//! sink stops naming the fix, and nothing is skipped. The source goes on.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::daemon::{user_replica_sink, Daemon, Setup};
use crate::support::{unique, wait_until, Stack};
use crate::truncate::postgres_rows;

/// A daemon over the users table with a PostgreSQL replica (`pg`), 30 users written and
/// applied: the daemon, the replica's database and URL.
async fn thirty_users_replicated(prefix: &str, setup: Setup) -> (Daemon, String, String) {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare(prefix, setup).await;
    let pg_db = stack
        .fresh_pg_database(&unique(&format!("{prefix}_orders")))
        .await;
    let pg_url = stack.pg_url_for("postgres", &pg_db);
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&user_replica_sink("pg", "postgres", &daemon.topic, &pg_url));
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    daemon
        .pg()
        .await
        .batch_execute(
            "INSERT INTO users (full_name, email, password_hash)
               SELECT 'user ' || i, 'u' || i || '@example.com', 'x' FROM generate_series(1, 30) i",
        )
        .await
        .unwrap();
    wait_until(
        "the replica to hold 30 rows",
        Duration::from_secs(60),
        || async { postgres_rows(&pg_url).await.len() == 30 },
    )
    .await;
    (daemon, pg_db, pg_url)
}

/// Where each of the topic's 3 partitions ends.
fn ends(topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().kafka_brokers)
        .create()
        .unwrap();
    (0..3)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// What retention does to an old topic: every record gone (DeleteRecords to each end).
async fn remove_every_record(topic: &str) {
    let mut gone = TopicPartitionList::new();
    for (p, high) in ends(topic).into_iter().enumerate() {
        gone.add_partition_offset(topic, p as i32, Offset::Offset(high))
            .unwrap();
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().kafka_brokers)
        .create()
        .unwrap();
    admin
        .delete_records(&gone, &AdminOptions::new())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn positions_older_than_the_topic_stop_the_sink_rather_than_skip() {
    let stack = Stack::get();
    let (mut daemon, pg_db, pg_url) =
        thirty_users_replicated("rep_retained", Setup::default()).await;
    assert_eq!(daemon.terminate().await, Some(0));
    // Retention removes every record; the replica comes back from a backup that had none.
    remove_every_record(&daemon.topic).await;
    let source = daemon.pg().await;
    let replica = stack.pg(&pg_db).await;
    replica
        .batch_execute("DELETE FROM user_replica; UPDATE walcast_offsets SET next_offset = 0")
        .await
        .unwrap();

    daemon.start().await;
    crate::support::wait_for(
        Duration::from_secs(60),
        || format!("the sink to stop:\n{}", daemon.log_text()),
        || {
            let log = daemon.log_text();
            async move { log.contains("is no longer in its topic").then_some(()) }
        },
    )
    .await;
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("{} partition ", daemon.topic))
            && log.contains(": the position 0 of this sink's replica is no longer in its topic (retention removed records the replica never applied, or the topic was made again); nothing was skipped. Read the source table again into the replica (walcast snapshot --source S --table T)")
            && log.contains("(the partition now starts at "),
        "{log}"
    );
    assert!(
        postgres_rows(&pg_url).await.is_empty(),
        "nothing applied past the gap"
    );
    // The source is a part of its own: it goes on.
    source
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'a@example.com', 'x')")
        .await
        .unwrap();
    crate::support::wait_confirmed_to_now(&source, &daemon.name).await;
    assert!(daemon.exited().is_none(), "{log}");
    assert_eq!(daemon.terminate().await, Some(0));
}

/// On an exactly-once topic each Kafka transaction ends in a marker the client steps over
/// without handing it over. Once retention removed everything, markers included, a
/// replica that applied every record is not behind: the idle sink stored its place past
/// the markers, and after a restart it reads on.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_applied_everything_survives_retention_of_its_markers() {
    let stack = Stack::get();
    let setup = Setup {
        exactly_once: true,
        ..Setup::default()
    };
    let (mut daemon, pg_db, pg_url) = thirty_users_replicated("rep_markers", setup).await;
    let replica = stack.pg(&pg_db).await;
    // The idle sink's positions reach past the last markers.
    crate::support::wait_for(
        Duration::from_secs(60),
        || {
            format!(
                "the replica's positions to reach the partitions' ends:\n{}",
                daemon.log_text()
            )
        },
        || {
            let (replica, want) = (&replica, ends(&daemon.topic));
            async move {
                let stored: Vec<i64> = replica
                    .query(
                        "SELECT next_offset FROM walcast_offsets ORDER BY partition",
                        &[],
                    )
                    .await
                    .ok()?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                (stored == want).then_some(())
            }
        },
    )
    .await;
    assert_eq!(daemon.terminate().await, Some(0));
    remove_every_record(&daemon.topic).await;

    daemon.start().await;
    daemon
        .pg()
        .await
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'a@example.com', 'x')")
        .await
        .unwrap();
    wait_until(
        "the replica to hold the new row",
        Duration::from_secs(60),
        || async { postgres_rows(&pg_url).await.len() == 31 },
    )
    .await;
    assert!(
        !daemon.log_text().contains("is no longer in its topic"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(daemon.terminate().await, Some(0));
}
