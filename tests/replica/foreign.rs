//! Records walcast did not write are never applied: a record is applied only when its
//! schemas are registered versions of the topic's subjects. A tombstone without walcast's
//! headers, a record framed with another subject's schema (even with walcast-like `op`,
//! `lsn` and `seq` headers, and the topic's own key), and a delete keyed by another
//! subject's key schema take the poison path: here the dead-letter topic, while the
//! replica's rows keep their values.

use std::time::Duration;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;

use crate::support::daemon::{Daemon, Setup};
use crate::support::registry::raw;
use crate::support::{consume_from_start, unique, wait_until, Stack};

/// GETs or POSTs `path` on the stack's registry; the JSON answer.
async fn registry(method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    let body = body.map(|b| b.to_string());
    let (status, text) = raw(
        &Stack::get().registry_url,
        method,
        path,
        body.as_deref(),
        Some("application/vnd.schemaregistry.v1+json"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Magic byte 0, the schema id, then the Avro datum.
fn framed(id: u64, schema: &Schema, value: Avro) -> Vec<u8> {
    let mut out = vec![0];
    out.extend((id as u32).to_be_bytes());
    out.extend(apache_avro::to_avro_datum(schema, value).unwrap());
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn records_walcast_did_not_write_are_dead_lettered_and_never_applied() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_foreign", Setup::default()).await;
    let replica_db = stack.fresh_pg_database(&unique("rep_foreign_orders")).await;
    let replica = stack.pg(&replica_db).await;
    replica
        .batch_execute(
            "CREATE TABLE user_replica (user_id bigint PRIMARY KEY, name text, email text,
               _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)",
        )
        .await
        .unwrap();
    let dlq = format!("{}.dlq", daemon.name);
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&format!(
        "\n[kafka.topic.\"{dlq}\"]\npartitions = 1\n\n[[sink]]\nname = \"dlq-{name}\"\ntype = \"postgres\"\ntopics = [\"{topic}\"]\non_error = \"dead_letter\"\ndead_letter_topic = \"{dlq}\"\nurl = \"{url}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\nfields = [\"user_id\", \"name\", \"email\"]\nbatch_max_wait_ms = 50\n",
        name = daemon.name,
        topic = daemon.topic,
        url = stack.pg_url_for("postgres", &replica_db),
    ));
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    let source = daemon.pg().await;
    source
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'ada@example.com', 'x')")
        .await
        .unwrap();
    let ada: i64 = source
        .query_one("SELECT id FROM users", &[])
        .await
        .unwrap()
        .get(0);
    let row = || async {
        replica
            .query(
                "SELECT name, email, _walcast_lsn FROM user_replica WHERE user_id = $1",
                &[&ada],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let (name, email, lsn): (Option<String>, Option<String>, i64) =
                    (r.get(0), r.get(1), r.get(2));
                (name, email, lsn)
            })
            .next()
    };
    let ada_row = (Some("Ada".to_string()), Some("ada@example.com".to_string()));
    wait_until("Ada in the replica", Duration::from_secs(60), || async {
        row().await.is_some_and(|(n, e, _)| (n, e) == ada_row)
    })
    .await;
    let stored = row().await;

    // The topic's own key, Ada's; a value schema registered only under another topic's
    // subject; headers as walcast's would be, at a version above every real one.
    let key = registry(
        "GET",
        &format!("/subjects/{}-key/versions/latest", daemon.topic),
        None,
    )
    .await;
    let key_schema = Schema::parse_str(key["schema"].as_str().unwrap()).unwrap();
    let key = framed(
        key["id"].as_u64().unwrap(),
        &key_schema,
        Avro::Record(vec![("user_id".into(), Avro::Long(ada))]),
    );
    let foreign_text = r#"{"type": "record", "name": "Customer", "namespace": "crm", "fields": [{"name": "user_id", "type": "long"}, {"name": "nickname", "type": "string"}]}"#;
    let foreign_id = registry(
        "POST",
        &format!("/subjects/{}.crm-crm.Customer/versions", daemon.name),
        Some(serde_json::json!({ "schema": foreign_text })),
    )
    .await["id"]
        .as_u64()
        .unwrap();
    let foreign = framed(
        foreign_id,
        &Schema::parse_str(foreign_text).unwrap(),
        Avro::Record(vec![
            ("user_id".into(), Avro::Long(ada)),
            ("nickname".into(), Avro::String("countess".into())),
        ]),
    );
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .create()
        .unwrap();
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: "op",
            value: Some("update"),
        })
        .insert(rdkafka::message::Header {
            key: "lsn",
            value: Some("FFFF/0"),
        })
        .insert(rdkafka::message::Header {
            key: "seq",
            value: Some("0"),
        });
    producer
        .send(
            rdkafka::producer::BaseRecord::to(&daemon.topic)
                .key(&key)
                .payload(&foreign)
                .headers(headers),
        )
        .unwrap();
    // A tombstone without headers.
    producer
        .send(rdkafka::producer::BaseRecord::<[u8], [u8]>::to(&daemon.topic).key(&key[..]))
        .unwrap();
    // A delete of Ada, keyed by another subject's key schema of the same shape.
    let foreign_key_text = r#"{"type": "record", "name": "CustomerKey", "namespace": "crm", "fields": [{"name": "user_id", "type": "long"}]}"#;
    let foreign_key_id = registry(
        "POST",
        &format!("/subjects/{}.crm-key/versions", daemon.name),
        Some(serde_json::json!({ "schema": foreign_key_text })),
    )
    .await["id"]
        .as_u64()
        .unwrap();
    let foreign_key = framed(
        foreign_key_id,
        &Schema::parse_str(foreign_key_text).unwrap(),
        Avro::Record(vec![("user_id".into(), Avro::Long(ada))]),
    );
    let delete_headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: "op",
            value: Some("delete"),
        })
        .insert(rdkafka::message::Header {
            key: "lsn",
            value: Some("FFFF/0"),
        })
        .insert(rdkafka::message::Header {
            key: "seq",
            value: Some("1"),
        });
    producer
        .send(
            rdkafka::producer::BaseRecord::<[u8], [u8]>::to(&daemon.topic)
                .key(&foreign_key[..])
                .headers(delete_headers),
        )
        .unwrap();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();

    let records = consume_from_start(&stack.kafka_brokers, &dlq, 3).await;
    let header = |r: &crate::support::Record, name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("no {name} header: {:?}", r.headers))
    };
    let mut messages: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                header(r, "__walcast.errors.stage"),
                header(r, "__walcast.errors.message"),
            )
        })
        .collect();
    messages.sort();
    assert_eq!(
        messages,
        [
            (
                "decode".to_string(),
                "a tombstone (null value) without walcast's op = delete header: walcast did not write it, so it is not applied".to_string()
            ),
            (
                "decode".to_string(),
                format!("the record's key schema (id {foreign_key_id}) is not a registered version of subject {}-key, so it is none of topic {}'s contracts and walcast did not write it; it is not applied", daemon.topic, daemon.topic)
            ),
            (
                "decode".to_string(),
                format!("the record's value schema (id {foreign_id}) is not a registered version of subject {}-crm.Customer, so it is none of topic {}'s contracts and walcast did not write it; it is not applied", daemon.topic, daemon.topic)
            ),
        ]
    );
    assert_eq!(
        row().await,
        stored,
        "Ada's row keeps its values and version: neither foreign record was applied"
    );
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}
