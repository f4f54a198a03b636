//! Spec: on Apache Kafka, `kafka.exactly_once = true` gives a read_committed consumer every
//! change exactly once and whole source transactions only, through kill -9s, a second
//! instance that fences the first, and a broker that dies mid-stream; and a broker outage
//! never lets a position be confirmed to PostgreSQL before Kafka holds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::daemon::{Daemon, Setup};
use crate::support::targets::OwnKafka;
use crate::support::wait_until;
use crate::support::workload::{assert_every_change_arrived, assert_exactly_once, writer};

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_delivers_every_change_exactly_once_and_whole() {
    let mut daemon = Daemon::prepare(
        "eos_kill",
        Setup {
            exactly_once: true,
            ..Setup::default()
        },
    )
    .await;
    daemon.start().await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut rng = seed | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (written, task) = writer(daemon.pg().await, stop.clone());
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150 + next(800))).await;
        daemon.kill9();
        daemon.start().await;
    }
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert!(
        written.lock().unwrap().len() > 50,
        "too few transactions written to prove anything"
    );
    assert_exactly_once(&daemon, &written).await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// A zombie (an instance that lost its slot but still runs, say behind a network partition)
/// is fenced: once a newer producer of the same source registers the transactional id, the
/// older one's commit fails with the error that says another instance took over, and what
/// it had sent is never visible to read_committed consumers.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_instance_fences_a_zombie() {
    use walcast::kafka::producer::{SourceProducer, Transactions};
    use walcast::kafka::watermark::Watermark;
    use walcast::lsn::Lsn;
    let stack = crate::support::Stack::get();
    let kafka: walcast::config::KafkaConfig =
        toml::from_str(&format!("brokers = \"{}\"", stack.kafka_brokers)).unwrap();
    let name = crate::support::unique("eos_zombie");
    let topic = format!("{name}.events");
    let settings = walcast::config::TopicSettings {
        partitions: 1,
        replication_factor: 1,
        cleanup_policy: walcast::config::CleanupPolicy::Delete,
    };
    for t in [&topic, &format!("walcast.progress.{name}")] {
        walcast::kafka::ensure_topic(&kafka, t, &settings)
            .await
            .unwrap();
    }
    let transactions = Transactions {
        id: format!("walcast.{name}"),
        progress_topic: format!("walcast.progress.{name}"),
        interval: Duration::from_millis(100),
    };
    let producer = || async {
        let (acked, _) = tokio::sync::watch::channel(Lsn::ZERO);
        SourceProducer::create(
            &kafka,
            &name,
            Arc::new(Mutex::new(Watermark::default())),
            acked,
            Some(transactions.clone()),
        )
        .await
        .unwrap()
    };
    let headers = rdkafka::message::OwnedHeaders::new;
    let mut zombie = producer().await;
    zombie
        .send(&topic, None, b"k", Some(b"from the zombie"), headers(), 0)
        .await
        .unwrap();
    let mut newer = producer().await;
    let fenced = zombie.commit("0/10".parse().unwrap()).await.unwrap_err();
    assert_eq!(
        fenced.to_string(),
        format!("source {name}: another walcast instance took over its Kafka transactions (transactional.id walcast.{name}); this one stops publishing. hint: only one instance per source is active at a time; this is expected when a standby took over")
    );
    assert!(!fenced.is_transient());
    newer
        .send(&topic, None, b"k", Some(b"from the newer"), headers(), 0)
        .await
        .unwrap();
    newer.commit("0/20".parse().unwrap()).await.unwrap();
    let records = crate::support::consume_from_start(&stack.kafka_brokers, &topic, 1).await;
    let payloads: Vec<_> = records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(payloads, vec![Some(b"from the newer".to_vec())]);
}

/// The slot's confirmed position while the broker is down never passes the WAL position at
/// which it died: nothing written after it can be in Kafka.
async fn broker_dies_mid_stream(exactly_once: bool) {
    let mut kafka = OwnKafka::start().await;
    let mut daemon = Daemon::prepare(
        if exactly_once {
            "eos_broker"
        } else {
            "alo_broker"
        },
        Setup {
            exactly_once,
            embedded_registry: true,
            brokers: Some(kafka.brokers()),
            ..Setup::default()
        },
    )
    .await;
    // A sink in the same daemon reads through the broker's death too: a broker restarting
    // is Kafka's to recover from, never a reason for the sink to stop.
    let prefix = format!("{}:user:", daemon.name);
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&format!(
        "\n[[sink]]\nname = \"cache\"\ntype = \"redis\"\ntopics = [\"{}\"]\nurl = \"{}\"\nkey_template = \"{prefix}{{user_id}}\"\nfields = [\"name\"]\nbatch_max_wait_ms = 50\n",
        daemon.topic,
        crate::support::Stack::get().redis_url
    ));
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (written, task) = writer(daemon.pg().await, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kafka.kill9();
    let pg = daemon.pg().await;
    let died_at: String = pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let confirmed = || async {
        let row = pg
            .query_one(
                "SELECT confirmed_flush_lsn <= $1::text::pg_lsn, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $2",
                &[&died_at, &daemon.name],
            )
            .await
            .unwrap();
        (row.get::<_, bool>(0), row.get::<_, String>(1))
    };
    let during = (written.lock().unwrap().len(), tokio::time::Instant::now());
    while during.1.elapsed() < Duration::from_secs(4) {
        let (within, at) = confirmed().await;
        assert!(
            within,
            "the slot was confirmed to {at}, past {died_at} where the broker died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        written.lock().unwrap().len() > during.0,
        "no transaction was written while the broker was down"
    );
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    kafka.start_again().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let users: i64 = pg
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    let redis = ::redis::Client::open(crate::support::Stack::get().redis_url.as_str()).unwrap();
    let cache = redis.get_multiplexed_async_connection().await.unwrap();
    wait_until(
        "the sink to hold every user after the broker came back",
        Duration::from_secs(90),
        || {
            let (mut cache, prefix) = (cache.clone(), &prefix);
            async move {
                let keys: Vec<String> = ::redis::cmd("KEYS")
                    .arg(format!("{prefix}*"))
                    .query_async(&mut cache)
                    .await
                    .unwrap();
                keys.len() as i64 == users
            }
        },
    )
    .await;
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    if exactly_once {
        assert_exactly_once(&daemon, &written).await;
    } else {
        assert_every_change_arrived(&daemon, &written).await;
    }
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_dies_mid_stream_loses_nothing_and_is_confirmed_nothing_early() {
    broker_dies_mid_stream(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_through_a_broker_that_dies_mid_stream() {
    broker_dies_mid_stream(true).await;
}

/// The crash window exactly-once exists for: Kafka committed a transaction, and the process
/// died before PostgreSQL was told. The slot is put back to an earlier position (a copy made
/// then), so PostgreSQL resends what Kafka holds; the progress record makes the restarted
/// daemon skip all of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_behind_what_kafka_holds_publishes_nothing_twice() {
    let mut daemon = Daemon::prepare(
        "eos_behind",
        Setup {
            exactly_once: true,
            ..Setup::default()
        },
    )
    .await;
    daemon.start().await;
    let pg = daemon.pg().await;
    let earlier = format!("{}_earlier", daemon.name);
    pg.execute(
        "SELECT pg_copy_logical_replication_slot($1, $2)",
        &[&daemon.name, &earlier],
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (written, task) = writer(daemon.pg().await, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    // Everything written is in Kafka and confirmed.
    crate::support::wait_confirmed_to_now(&pg, &daemon.name).await;
    daemon.kill9();
    // The slot forgets it confirmed anything since the copy.
    wait_until("the slot to be released", Duration::from_secs(30), || {
        let (pg, slot) = (&pg, &daemon.name);
        async move {
            pg.query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[slot],
            )
            .await
            .unwrap()
            .is_some()
        }
    })
    .await;
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
    pg.execute(
        "SELECT pg_copy_logical_replication_slot($1, $2)",
        &[&earlier, &daemon.name],
    )
    .await
    .unwrap();
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&earlier])
        .await
        .unwrap();
    daemon.start().await;
    // A few more after the restart, so the stream is known to have gone on.
    let stop = Arc::new(AtomicBool::new(false));
    let (more, task) = writer(daemon.pg().await, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    written.lock().unwrap().extend(more.lock().unwrap().clone());
    assert_exactly_once(&daemon, &written).await;
    assert!(
        daemon
            .log_text()
            .contains("transactions before it are skipped"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// A second instance on the same configuration waits as a standby without disturbing the
/// active one (it would fence it by taking the transactional id), and takes over within 30 s
/// of the active one's kill -9: every change arrives, exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_within_30_s_of_a_kill_9_losing_nothing() {
    let mut active = Daemon::prepare(
        "eos_standby",
        Setup {
            exactly_once: true,
            ..Setup::default()
        },
    )
    .await;
    active.start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (written, task) = writer(active.pg().await, stop.clone());
    let mut standby = active.twin();
    standby.spawn();
    wait_until(
        "the second instance to wait as a standby",
        Duration::from_secs(30),
        || {
            let waiting = standby
                .log_text()
                .contains("standby: another process streams from the slot");
            async move { waiting }
        },
    )
    .await;
    // Several standby checks later, the active instance still publishes, unfenced.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(active.exited().is_none(), "{}", active.log_text());
    assert!(standby.exited().is_none(), "{}", standby.log_text());
    active.kill9();
    let killed = std::time::Instant::now();
    let pg = standby.pg().await;
    let slot = standby.name.clone();
    wait_until("the standby to stream from the slot", Duration::from_secs(30), || {
        let (pg, slot) = (&pg, &slot);
        async move {
            pg.query_opt(
                "SELECT 1 FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid \
                 WHERE s.slot_name = $1 AND r.state = 'streaming'",
                &[slot],
            )
            .await
            .unwrap()
            .is_some()
        }
    })
    .await;
    eprintln!(
        "the standby took over {:?} after the kill",
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_exactly_once(&standby, &written).await;
    assert_eq!(standby.terminate().await, Some(0), "{}", standby.log_text());
}
