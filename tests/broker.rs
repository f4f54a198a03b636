//! Spec: the stack's Kafka-protocol broker (tansu 0.6.0 on PostgreSQL storage) does what
//! walcast relies on: explicit topic creation, an idempotent acks=all producer, keyed
//! partitioning with order per key, and consumer-group offsets that outlive the consumer.

mod support;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::{consume, unique, Stack};

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
