//! Spec: the stack's Apache Kafka does what walcast relies on: explicit topic creation, an
//! idempotent acks=all producer, keyed partitioning with order per key, and consumer-group
//! offsets that outlive the consumer; and walcast never lets a broker create a topic for it
//! on first use, which would ignore the partition count and cleanup policy it configures.

use std::time::Duration;

use crate::support::targets::OwnKafka;
use crate::support::{consume, unique, wait_until, Stack};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn client(stack: &Stack) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &stack.kafka_brokers);
    cc
}

async fn create_topic(stack: &Stack, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client(stack).create().unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

#[tokio::test]
async fn topics_records_and_group_offsets_round_trip() {
    let stack = Stack::get();
    let topic = unique("broker_roundtrip");
    let group = unique("broker_group");
    create_topic(stack, &topic, 3).await;

    let producer: FutureProducer = client(stack)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..30 {
        let key = format!("user-{}", i % 5);
        let value = format!("event-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("delivery of {value}: {e}"));
    }

    let records = consume(
        &stack.kafka_brokers,
        &group,
        &topic,
        30,
        Duration::from_secs(30),
    )
    .await;

    // Order per key: each key's events arrive in the order they were produced, on one partition.
    for k in 0..5 {
        let key = format!("user-{k}").into_bytes();
        let of_key: Vec<_> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(&key[..]))
            .collect();
        let values: Vec<String> = of_key
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
            .collect();
        let expected: Vec<String> = (0..30)
            .filter(|i| i % 5 == k)
            .map(|i| format!("event-{i}"))
            .collect();
        assert_eq!(values, expected, "order of user-{k}");
        assert!(
            of_key.iter().all(|r| r.partition == of_key[0].partition),
            "user-{k} spans partitions"
        );
    }

    // The group's committed offsets, read by a new client, cover every record.
    let mut partitions = TopicPartitionList::new();
    for p in 0..3 {
        partitions.add_partition(&topic, p);
    }
    let reader: BaseConsumer = client(stack).set("group.id", &group).create().unwrap();
    let committed = reader
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!(
                "partition {} has no committed offset: {other:?}",
                e.partition()
            ),
        })
        .sum();
    assert_eq!(total, 30);
}

fn partitions(brokers: &str, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
}

/// On a broker that creates topics on first use, walcast still creates each of its topics
/// itself, with its settings, and a sink waiting for its topic never creates it.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_auto_creates_topics_never_creates_walcasts() {
    let kafka = OwnKafka::start_with(true).await;
    let brokers = kafka.brokers();
    let config: walcast::config::KafkaConfig =
        toml::from_str(&format!("brokers = \"{brokers}\"")).unwrap();
    let topic = unique("broker_own_settings");
    let settings = walcast::config::TopicSettings {
        partitions: 3,
        replication_factor: 1,
        cleanup_policy: walcast::config::CleanupPolicy::Compact,
    };
    walcast::kafka::ensure_topic(&config, &topic, &settings)
        .await
        .unwrap();
    assert_eq!(partitions(&brokers, &topic), Some(3));

    // A sink whose topic has no source yet waits for it, and leaves it alone.
    let waiting = unique("broker_waiting");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{brokers}\"\n[registry]\nurl = \"{}\"\n\
             [[sink]]\nname = \"waits\"\ntype = \"redis\"\ntopics = [\"{waiting}\"]\n\
             url = \"{}\"\nkey_template = \"w:{{id}}\"\n",
            Stack::get().registry_url,
            Stack::get().redis_url
        ),
    )
    .unwrap();
    let log = dir.path().join("walcast.log");
    let daemon = crate::support::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until(
        "the sink to wait for its topic",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move { text.contains("waiting for the topic to be created by its source") }
        },
    )
    .await;
    // It keeps looking (every 200 ms) while the broker would have created it at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        partitions(&brokers, &waiting),
        None,
        "the sink created its topic"
    );
    drop(daemon); // kill -9
}
