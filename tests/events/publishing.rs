//! Spec: `walcast run` turns row changes into versioned domain events on Kafka, which
//! Confluent's own Python client decodes through the registry; it loses nothing when killed;
//! and it refuses, with a message naming the file, field, table and column, every mapping
//! or contract that would publish wrong data.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::support::daemon::{decode, decode_with, Daemon, Setup};

async fn insert_users(pg: &tokio_postgres::Client, names: &[&str]) {
    let mut sql = String::from("INSERT INTO users (full_name, email, password_hash) VALUES ");
    let rows: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "('{n}', '{}@example.com', 'secret')",
                n.to_lowercase().replace(' ', ".")
            )
        })
        .collect();
    sql.push_str(&rows.join(", "));
    pg.batch_execute(&sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn row_changes_become_the_contracts_events_decoded_by_confluents_client() {
    let mut daemon = Daemon::prepare(
        "ev_types",
        Setup {
            compacted: true,
            ..Default::default()
        },
    )
    .await;
    daemon.start().await;
    let pg = daemon.pg().await;
    insert_users(&pg, &["Ada", "Grace", "Edsger"]).await; // one transaction, three rows
    pg.batch_execute("UPDATE users SET full_name = 'Ada Lovelace' WHERE id = 1")
        .await
        .unwrap();
    pg.batch_execute("DELETE FROM users WHERE id = 2")
        .await
        .unwrap();

    let events = decode(&daemon.topic, 6).await;
    assert_eq!(events.len(), 6, "{events:#?}");
    let types: Vec<(&str, i64)> = events
        .iter()
        .map(|e| {
            (
                e.headers["event_type"].as_str(),
                e.key["user_id"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut sorted = types.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("com.example.users.UserCreated", 1),
            ("com.example.users.UserCreated", 2),
            ("com.example.users.UserCreated", 3),
            ("com.example.users.UserDeleted", 2),
            ("com.example.users.UserUpdated", 1),
            ("tombstone", 2),
        ]
    );
    let created = events
        .iter()
        .find(|e| e.headers["event_type"].ends_with("UserCreated") && e.key["user_id"] == 1)
        .unwrap();
    let value = created.value.as_ref().unwrap();
    // The column full_name feeds the field name; password_hash is in no contract, so it never leaves.
    assert_eq!(value["name"], "Ada");
    assert_eq!(value["email"], "ada@example.com");
    assert!(value.get("password_hash").is_none());
    assert!(
        value["created_at"].as_i64().unwrap() > 1_700_000_000_000_000,
        "timestamp-micros since the Unix epoch"
    );
    let h = &created.headers;
    assert_eq!(h["op"], "insert");
    assert_eq!(h["source"], daemon.name);
    assert_eq!(h["seq"], "0");
    assert!(h["xid"].parse::<u32>().is_ok());
    assert!(h["commit_ts"].parse::<i64>().unwrap() > 1_700_000_000_000_000);
    assert_eq!(h["event_id"], format!("{}/{}/0/0", daemon.name, h["lsn"]));
    let updated = events
        .iter()
        .find(|e| e.headers["event_type"].ends_with("UserUpdated"))
        .unwrap();
    assert_eq!(updated.value.as_ref().unwrap()["name"], "Ada Lovelace");
    // Order per key: user 2's delete and then its tombstone, on one partition.
    let of_2: Vec<&str> = events
        .iter()
        .filter(|e| e.key["user_id"] == 2)
        .map(|e| e.headers["event_type"].as_str())
        .collect();
    assert_eq!(
        of_2,
        [
            "com.example.users.UserCreated",
            "com.example.users.UserDeleted",
            "tombstone"
        ]
    );
    assert!(events
        .iter()
        .filter(|e| e.key["user_id"] == 2)
        .all(|e| e.partition
            == events
                .iter()
                .find(|x| x.key["user_id"] == 2)
                .unwrap()
                .partition));
    assert!(events
        .iter()
        .find(|e| e.headers["event_type"] == "tombstone")
        .unwrap()
        .value
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transactions_changes_keep_their_order() {
    let mut daemon = Daemon::prepare("ev_order", Setup::default()).await;
    daemon.start().await;
    let pg = daemon.pg().await;
    insert_users(&pg, &["Ada"]).await;
    let mut tx = String::from("BEGIN;");
    for i in 1..=100 {
        tx.push_str(&format!(
            "UPDATE users SET full_name = 'v{i}' WHERE id = 1;"
        ));
    }
    tx.push_str("COMMIT;");
    pg.batch_execute(&tx).await.unwrap();
    let events = decode(&daemon.topic, 101).await;
    let names: Vec<String> = events
        .iter()
        .filter(|e| e.headers["op"] == "update")
        .map(|e| {
            e.value.as_ref().unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected: Vec<String> = (1..=100).map(|i| format!("v{i}")).collect();
    assert_eq!(names, expected);
    let seqs: Vec<u32> = events
        .iter()
        .filter(|e| e.headers["op"] == "update")
        .map(|e| e.headers["seq"].parse().unwrap())
        .collect();
    assert_eq!(seqs, (0..100).collect::<Vec<u32>>());
}

/// kill -9 at random moments under a steady write load, then restart: every change is on
/// the topic at least once, and a change delivered twice carries the same event id.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_loses_nothing() {
    let mut daemon = Daemon::prepare("ev_kill", Setup::default()).await;
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
    let pg = daemon.pg().await;
    let writer = tokio::spawn(async move {
        for batch in 0..200 {
            // ~10 ms per transaction: about two seconds of writes.
            let names: Vec<String> = (0..10).map(|i| format!("user {batch}-{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            insert_users(&pg, &refs).await;
            if batch % 20 == 0 {
                pg.batch_execute(&format!(
                    "UPDATE users SET full_name = full_name || '!' WHERE id % 7 = {}",
                    batch % 7
                ))
                .await
                .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut mid_write = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100 + next(500))).await;
        mid_write += usize::from(!writer.is_finished());
        daemon.kill9();
        daemon.start().await;
    }
    assert!(
        mid_write > 0,
        "no kill landed while rows were being written; the test proved nothing"
    );
    writer.await.unwrap();

    let pg = daemon.pg().await;
    let rows: i64 = pg
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2000);
    let events = decode(&daemon.topic, 2000).await;
    let created: HashSet<i64> = events
        .iter()
        .filter(|e| e.headers["op"] == "insert")
        .map(|e| e.key["user_id"].as_i64().unwrap())
        .collect();
    let missing: Vec<i64> = (1..=2000).filter(|id| !created.contains(id)).collect();
    assert!(missing.is_empty(), "inserts lost: {missing:?}");
    // Every (lsn, seq, part) maps to one event: duplicates are identical.
    let mut by_id: HashMap<&str, (&serde_json::Value, &Option<serde_json::Value>)> = HashMap::new();
    let mut duplicates = 0;
    for e in &events {
        if let Some(seen) = by_id.insert(e.headers["event_id"].as_str(), (&e.key, &e.value)) {
            duplicates += 1;
            assert_eq!(
                seen,
                (&e.key, &e.value),
                "event {} differs between deliveries",
                e.headers["event_id"]
            );
        }
    }
    eprintln!(
        "{} events, {duplicates} redelivered, {mid_write} kill(s) mid-write",
        events.len()
    );
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_confirms_the_final_position_and_exits_0() {
    let mut daemon = Daemon::prepare("ev_term", Setup::default()).await;
    daemon.start().await;
    let pg = daemon.pg().await;
    insert_users(&pg, &["Ada", "Grace"]).await;
    decode(&daemon.topic, 2).await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    // Everything published was confirmed: a restart publishes nothing again.
    daemon.start().await;
    insert_users(&pg, &["Edsger"]).await;
    let events = decode(&daemon.topic, 3).await;
    assert_eq!(
        events.len(),
        3,
        "a change was published twice after a clean stop: {events:#?}"
    );
    assert_eq!(daemon.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmapped_column_added_is_ignored_and_a_breaking_change_stops_the_source() {
    let mut daemon = Daemon::prepare("ev_drift", Setup::default()).await;
    daemon.start().await;
    let pg = daemon.pg().await;
    pg.batch_execute("ALTER TABLE users ADD COLUMN nickname text")
        .await
        .unwrap();
    insert_users(&pg, &["Ada"]).await;
    let events = decode(&daemon.topic, 1).await;
    assert_eq!(events[0].value.as_ref().unwrap()["name"], "Ada");

    pg.batch_execute("ALTER TABLE users RENAME COLUMN full_name TO display_name")
        .await
        .unwrap();
    pg.batch_execute("INSERT INTO users (display_name, email, password_hash) VALUES ('Grace', 'g@example.com', 'x')").await.unwrap();
    let status = daemon.stops("after a breaking change").await;
    assert_eq!(status.code(), Some(1));
    let log = daemon.log_text();
    assert!(
        log.contains("after a change of table public.users: UserCreated.avsc: field name has no default, and table public.users has no column full_name; map the field to a column in [[source.table]] columns (name = \"column\"), or give it a default in the contract"),
        "{log}"
    );
    // Nothing after the breaking change was published.
    assert_eq!(decode(&daemon.topic, 1).await.len(), 1);
}

/// A column renamed while walcast streams, whose field has a default: the default is never
/// published in place of the value the column had (every replica would overwrite it). The
/// source stops naming the column and the fix; once the mapping names the new column, the
/// values flow again.
#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_column_never_turns_its_field_into_the_default() {
    let nullable = |name: &str, time: &str| {
        format!(
            r#"{{"type":"record","name":"{name}","namespace":"com.example.users","fields":[{{"name":"user_id","type":"long"}},{{"name":"name","type":"string"}},{{"name":"email","type":["null","string"],"default":null}},{{"name":"{time}","type":{{"type":"long","logicalType":"timestamp-micros"}}}}]}}"#
        )
    };
    let mut daemon = Daemon::prepare(
        "ev_rename",
        Setup {
            contracts: vec![
                ("UserCreated.avsc", nullable("UserCreated", "created_at")),
                ("UserUpdated.avsc", nullable("UserUpdated", "updated_at")),
            ],
            ..Default::default()
        },
    )
    .await;
    daemon.start().await;
    let pg = daemon.pg().await;
    insert_users(&pg, &["Ada"]).await;
    let events = decode(&daemon.topic, 1).await;
    assert_eq!(
        events[0].value.as_ref().unwrap()["email"],
        serde_json::json!("ada@example.com"),
        "{events:?}"
    );

    pg.batch_execute(
        "ALTER TABLE users RENAME COLUMN email TO contact_email; UPDATE users SET full_name = 'Ada L'",
    )
    .await
    .unwrap();
    let status = daemon.stops("on the breaking change").await;
    assert_eq!(status.code(), Some(1));
    let log = daemon.log_text();
    assert!(
        log.contains("after a change of table public.users: column public.users.email, which field email of UserUpdated.avsc reads, is gone (renamed or dropped), and walcast never publishes a default in place of a value the column had; if it was renamed, map the field to its new name in [[source.table]] columns (email = \"new_name\") and restart"),
        "{log}"
    );
    assert_eq!(
        decode(&daemon.topic, 1).await.len(),
        1,
        "nothing published after the rename"
    );

    // The fix: map the field to the column's new name, and restart.
    let config = std::fs::read_to_string(&daemon.config).unwrap().replace(
        "name = \"full_name\" }",
        "name = \"full_name\", email = \"contact_email\" }",
    );
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    let events = decode(&daemon.topic, 2).await;
    assert_eq!(
        events[1].value.as_ref().unwrap()["email"],
        serde_json::json!("ada@example.com"),
        "the update carries the renamed column's value: {events:?}"
    );
    assert_eq!(daemon.terminate().await, Some(0));
}

/// Rows written before a column was added, replayed after a restart (the source was
/// stopped meanwhile), come with the table's shape of their time: the field takes its
/// default there, and that is history, not a column lost. Rows after carry the column.
#[tokio::test(flavor = "multi_thread")]
async fn rows_written_before_a_column_was_added_replay_with_the_default() {
    let mut daemon = Daemon::prepare("ev_added", Setup::default()).await;
    daemon.start().await;
    assert_eq!(daemon.terminate().await, Some(0));
    let pg = daemon.pg().await;
    insert_users(&pg, &["Ada"]).await;
    pg.batch_execute("ALTER TABLE users ADD COLUMN tier text NOT NULL DEFAULT 'gold'")
        .await
        .unwrap();
    let tier = r#"{"name": "tier", "type": "string", "default": "standard"}"#;
    for file in ["UserCreated.avsc", "UserUpdated.avsc"] {
        let path = daemon.dir.path().join(file);
        let v1 = std::fs::read_to_string(&path).unwrap();
        let at = v1.rfind(']').unwrap();
        std::fs::write(
            &path,
            format!("{},\n    {tier}\n  {}", v1[..at].trim_end(), &v1[at..]),
        )
        .unwrap();
    }
    daemon.start().await;
    insert_users(&pg, &["Grace"]).await;
    let events = decode(&daemon.topic, 2).await;
    let mut tiers: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            let v = e.value.as_ref().unwrap();
            (v["name"].as_str().unwrap(), v["tier"].as_str().unwrap())
        })
        .collect();
    tiers.sort();
    assert_eq!(
        tiers,
        [("Ada", "standard"), ("Grace", "gold")],
        "{}",
        daemon.log_text()
    );
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    assert_eq!(daemon.terminate().await, Some(0));
}

/// Each mapping problem is refused before anything streams, naming the contract file, the
/// field, the table and the column, with the fix.
#[tokio::test(flavor = "multi_thread")]
async fn every_mapping_error_names_the_contract_field_table_and_column() {
    let key_int = r#"{"type":"record","name":"UserKey","namespace":"com.example.users","fields":[{"name":"user_id","type":"int"}]}"#;
    let key_nullable = r#"{"type":"record","name":"UserKey","namespace":"com.example.users","fields":[{"name":"user_id","type":["null","long"],"default":null}]}"#;
    let deleted_email = r#"{"type":"record","name":"UserDeleted","namespace":"com.example.users","fields":[{"name":"user_id","type":"long"},{"name":"email","type":"string"}]}"#;
    let mut cases: Vec<(Setup, &str, &str)> = vec![
        (
            Setup { table_keys: Some("columns = { user_id = \"id\" }".into()), ..Default::default() },
            "",
            "UserCreated.avsc: field name has no default, and table public.users has no column name; map the field to a column in [[source.table]] columns (name = \"column\"), or give it a default in the contract",
        ),
        (
            Setup { contracts: vec![("UserKey.avsc", key_int.into())], ..Default::default() },
            "",
            "UserKey.avsc: field user_id reads column public.users.id (bigint), but it does not convert to int: a bigint needs long",
        ),
        (
            Setup { contracts: vec![("UserKey.avsc", key_nullable.into())], ..Default::default() },
            "",
            "UserKey.avsc: field user_id: key fields are never null, but it reads column public.users.id (bigint); key fields must read NOT NULL columns and not be nullable in the contract",
        ),
        (
            Setup::default(),
            "ALTER TABLE users ALTER COLUMN email DROP NOT NULL",
            "UserCreated.avsc: field email is not nullable, but it reads column public.users.email (text), which is; make the field a union with null (\"type\": [\"null\", …], \"default\": null), or add NOT NULL to the column",
        ),
        (
            Setup { contracts: vec![("UserDeleted.avsc", deleted_email.into())], ..Default::default() },
            "",
            "UserDeleted.avsc: field email: a delete carries only the replica identity, and column public.users.email (text) is not part of it; drop the field from the delete contract, give it a default, or run ALTER TABLE public.users REPLICA IDENTITY FULL",
        ),
        (
            Setup { table_keys: Some("columns = { user_id = \"id\", name = \"full_name\", nick = \"full_name\" }".into()), ..Default::default() },
            "",
            "table public.users: columns maps field nick (to column full_name), but no contract of the table has a field nick; expected one of the contracts' fields",
        ),
        (
            Setup { contracts: vec![("UserUpdated.avsc", "{\"type\": \"recrod\"}".into())], ..Default::default() },
            "",
            "UserUpdated.avsc: not a valid Avro schema",
        ),
    ];
    cases.push((
        Setup {
            table_keys: Some("columns = { user_id = \"id\", name = \"full_name\", email = \"search\" }".into()),
            ..Default::default()
        },
        "ALTER TABLE users ADD COLUMN search tsvector",
        "UserCreated.avsc: field email reads column public.users.search (tsvector), but type tsvector is not supported",
    ));
    for (i, (setup, sql, expected)) in cases.into_iter().enumerate() {
        let daemon = Daemon::prepare(&format!("ev_maperr{i}"), setup).await;
        if !sql.is_empty() {
            daemon.pg().await.batch_execute(sql).await.unwrap();
        }
        let (code, stderr) = daemon.run_to_end();
        assert_eq!(code, Some(1), "case {i}: {stderr}");
        assert!(
            stderr.contains(expected),
            "case {i}: expected\n  {expected}\nin\n{stderr}"
        );
    }
}

/// A contract change the registry's compatibility rules refuse: `schemas check` lists what
/// breaks and exits 1, and `run` stops with the registry's reasons before publishing.
#[tokio::test(flavor = "multi_thread")]
async fn an_incompatible_contract_change_is_refused_with_its_reasons() {
    let daemon = Daemon::prepare("ev_compat", Setup::default()).await;
    let walcast = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(args)
            .arg("--config")
            .arg(&daemon.config)
            .output()
            .unwrap()
    };
    let out = walcast(&["schemas", "register"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 contract(s) registered and compatible")
    );

    // A new required field: consumers of the new contract could not read old events.
    let breaking = r#"{"type":"record","name":"UserCreated","namespace":"com.example.users","fields":[
      {"name":"user_id","type":"long"},{"name":"name","type":"string"},{"name":"email","type":"string"},
      {"name":"created_at","type":{"type":"long","logicalType":"timestamp-micros"}},
      {"name":"password_hash","type":"string"}]}"#;
    std::fs::write(daemon.dir.path().join("UserCreated.avsc"), breaking).unwrap();
    let out = walcast(&["schemas", "check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    let subject = format!("{}-com.example.users.UserCreated", daemon.topic);
    assert!(
        stdout.contains(&format!("FAIL  {subject}  (UserCreated.avsc)")),
        "{stdout}"
    );
    assert!(
        stdout.contains("READER_FIELD_MISSING_DEFAULT_VALUE")
            && stdout.contains("field password_hash"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("1 of 4 contract(s) break the registry's compatibility rules"));

    let (code, stderr) = daemon.run_to_end();
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!(
            "UserCreated.avsc: the registry refused the contract for subject {subject}"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "field password_hash of record com.example.users.UserCreated has no default value"
        ),
        "{stderr}"
    );
}

/// `[registry] embedded = true`: the daemon serves the registry its events are framed with,
/// and Confluent's client decodes them through it.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_serves_its_embedded_registry() {
    let mut daemon = Daemon::prepare(
        "ev_embedded",
        Setup {
            embedded_registry: true,
            ..Default::default()
        },
    )
    .await;
    daemon.start().await;
    insert_users(&daemon.pg().await, &["Ada"]).await;
    let events = decode_with(&daemon.registry_url, &daemon.topic, 1).await;
    assert_eq!(events[0].value.as_ref().unwrap()["name"], "Ada");
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// A column no contract maps never leaves the service, so its type does not matter: a
/// `tsvector` search column, which walcast cannot decode, is no obstacle.
#[tokio::test(flavor = "multi_thread")]
async fn an_unmapped_column_of_an_unsupported_type_is_no_obstacle() {
    let mut daemon = Daemon::prepare("ev_unmapped", Setup::default()).await;
    daemon
        .pg()
        .await
        .batch_execute("ALTER TABLE users ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('simple', full_name)) STORED")
        .await
        .unwrap();
    daemon.start().await;
    insert_users(&daemon.pg().await, &["Ada"]).await;
    let events = decode(&daemon.topic, 1).await;
    assert_eq!(events[0].value.as_ref().unwrap()["name"], "Ada");
    assert_eq!(daemon.terminate().await, Some(0));
}

/// A TRUNCATE is never ignored silently: without a truncate contract or `skip_truncate` it
/// stops the source naming the table and both fixes; with `skip_truncate`, nothing is
/// published for it and the stream goes on. (With a contract: `tests/replica/truncate.rs`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_truncate_stops_the_source_unless_the_table_says_to_skip_it() {
    let mut daemon = Daemon::prepare("ev_trunc", Setup::default()).await;
    daemon.start().await;
    let pg = daemon.pg().await;
    insert_users(&pg, &["Ada"]).await;
    pg.batch_execute("TRUNCATE users").await.unwrap();
    let status = daemon.stops("on the TRUNCATE").await;
    assert_eq!(status.code(), Some(1));
    let text = daemon.log_text();
    assert!(
        text.contains("table public.users was truncated (at ")
            && text.contains("and its [[source.table]] has no truncate contract")
            && text
                .contains("hint: add truncate = \"<file>.avsc\" (an Avro record without fields)")
            && text.contains("or set skip_truncate = true to publish nothing for truncates"),
        "{text}"
    );

    // The table says to skip truncates: the stream goes on past it.
    let config = std::fs::read_to_string(&daemon.config).unwrap().replacen(
        "delete = \"UserDeleted.avsc\"\n",
        "delete = \"UserDeleted.avsc\"\nskip_truncate = true\n",
        1,
    );
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    insert_users(&pg, &["Grace"]).await;
    let events = decode(&daemon.topic, 2).await;
    let names: Vec<&str> = events
        .iter()
        .filter_map(|e| e.value.as_ref()?["name"].as_str())
        .collect();
    assert!(
        names.contains(&"Ada") && names.contains(&"Grace"),
        "{names:?}"
    );
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}
