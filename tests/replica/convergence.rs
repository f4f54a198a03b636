//! Spec: the full loop. The users database → `walcast run` (source and sinks in one daemon)
//! → Kafka → read replicas in PostgreSQL, MariaDB and Redis, each of which converges to
//! exactly the source's state after random writes, after kill -9 of the daemon mid-stream,
//! and after a restart of its store mid-stream. The MariaDB replica's table is created by
//! the sink from the contract (`auto_create`).

use std::time::Duration;

use crate::support::daemon::{Daemon, Setup};
use crate::support::targets::{OwnMariadb, OwnPostgres, OwnRedis};
use crate::support::{unique, wait_for, wait_until, Stack};
use mysql_async::prelude::Queryable;

type Rows = Vec<(i64, String, String)>;

async fn source_rows(pg: &tokio_postgres::Client) -> Rows {
    pg.query("SELECT id, full_name, email FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The replicas under test, read back as `(id, name, email)` rows.
struct Replicas {
    pg: OwnPostgres,
    mysql: OwnMariadb,
    mysql_url: String,
    redis: OwnRedis,
    redis_prefix: String,
}

impl Replicas {
    async fn postgres(&self) -> Rows {
        let Ok(client) =
            tokio_postgres::connect(&self.pg.url("orders"), tokio_postgres::NoTls).await
        else {
            return vec![];
        };
        let (client, conn) = client;
        tokio::spawn(conn);
        client
            .query(
                "SELECT user_id, name, email FROM user_replica ORDER BY user_id",
                &[],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn mysql(&self) -> Rows {
        let Ok(mut conn) = mysql_async::Conn::from_url(&self.mysql_url).await else {
            return vec![];
        };
        let rows = conn
            .query("SELECT user_id, name, email FROM user_replica ORDER BY user_id")
            .await
            .unwrap_or_default();
        let _ = conn.disconnect().await;
        rows
    }

    async fn redis(&self) -> Rows {
        let Ok(client) = redis::Client::open(self.redis.url().as_str()) else {
            return vec![];
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return vec![];
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.redis_prefix))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let mut rows = Vec::new();
        for key in keys {
            let (name, email): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(&key)
                .arg("name")
                .arg("email")
                .query_async(&mut conn)
                .await
                .unwrap();
            let id = key[self.redis_prefix.len()..].parse().unwrap();
            rows.push((id, name.unwrap_or_default(), email.unwrap_or_default()));
        }
        rows.sort();
        rows
    }
}

/// Waits until every replica holds exactly the source's rows.
async fn converged(daemon: &Daemon, source: &tokio_postgres::Client, replicas: &Replicas) {
    let last = std::sync::Mutex::new(String::new());
    wait_for(
        Duration::from_secs(120),
        || {
            format!(
                "the replicas to converge; {}\n{}",
                last.lock().unwrap(),
                daemon.log_text()
            )
        },
        || async {
            let want = source_rows(source).await;
            let got = [
                ("postgres", replicas.postgres().await),
                ("mariadb", replicas.mysql().await),
                ("redis", replicas.redis().await),
            ];
            let behind: Vec<String> = got
                .iter()
                .filter(|(_, rows)| *rows != want)
                .map(|(store, rows)| format!("{store} ({} rows)", rows.len()))
                .collect();
            *last.lock().unwrap() =
                format!("{} source rows; behind: {}", want.len(), behind.join(", "));
            behind.is_empty().then_some(())
        },
    )
    .await;
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
async fn every_replica_converges_through_kill_9_and_restarts_of_its_store() {
    let mut daemon = Daemon::prepare("rep_all", Setup::default()).await;
    let pg = OwnPostgres::start(&daemon.name).await;
    pg.client("postgres")
        .await
        .batch_execute("CREATE DATABASE orders")
        .await
        .unwrap();
    pg.client("orders")
        .await
        .batch_execute(REPLICA)
        .await
        .unwrap();
    // A MariaDB of the test's own, since it restarts it: other specs use the machine's.
    let mysql = OwnMariadb::start(false).await;
    let mysql_url = mysql.fresh_database("shipping");
    // The MariaDB replica's table is created by the sink, from the contract.
    let redis = OwnRedis::start().await;
    let replicas = Replicas {
        redis_prefix: format!("{}:user:", daemon.name),
        pg,
        mysql,
        mysql_url,
        redis,
    };
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    for (kind, url, keys) in [
        (
            "postgres",
            replicas.pg.url("orders"),
            "table = \"user_replica\"\nkey = [\"user_id\"]",
        ),
        (
            "mysql",
            replicas.mysql_url.clone(),
            "table = \"user_replica\"\nkey = [\"user_id\"]\nauto_create = true",
        ),
        (
            "redis",
            replicas.redis.url(),
            &format!("key_template = \"{}{{user_id}}\"", replicas.redis_prefix),
        ),
    ] {
        config.push_str(&format!(
            "\n[[sink]]\nname = \"{kind}-{name}\"\ntype = \"{kind}\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\n{keys}\nfields = [\"user_id\", \"name\", \"email\"]\nbatch_max_wait_ms = 50\n",
            name = daemon.name,
            topic = daemon.topic,
        ));
    }
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    let source = daemon.pg().await;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    eprintln!("seed {seed}");

    random_writes(&source, 10, &mut seed).await;
    converged(&daemon, &source, &replicas).await;

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
    converged(&daemon, &source, &replicas).await;

    // Every store restarts while writes stream; the Redis one comes back empty.
    seed = seed.wrapping_mul(31).wrapping_add(7);
    let writes = {
        let pg = daemon.pg().await;
        let mut s = seed;
        tokio::spawn(async move { random_writes(&pg, 30, &mut s).await })
    };
    replicas.pg.restart().await;
    let mut replicas = replicas;
    replicas.mysql.restart().await;
    replicas.redis.restart().await;
    writes.await.unwrap();
    converged(&daemon, &source, &replicas).await;

    let rows = source_rows(&source).await.len();
    assert!(
        rows > 0,
        "the scenario deleted everything; nothing was compared"
    );
    eprintln!("converged on {rows} rows");
    assert!(
        daemon.log_text().contains("store unavailable; rewinding"),
        "no store outage was seen, so none was survived\n{}",
        daemon.log_text()
    );
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// The replica table of the PostgreSQL sinks.
const REPLICA: &str =
    "CREATE TABLE user_replica (user_id bigint PRIMARY KEY, name text, email text,
    _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)";

/// A replica table whose CHECK constraint rejects one email: a record the store refuses.
const POISON_CHECKED_REPLICA: &str =
    "CREATE TABLE user_replica (user_id bigint PRIMARY KEY, name text,
    email text CHECK (email <> 'poison@example.com'),
    _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)";

/// A record the replica's store rejects (here a CHECK constraint), and a record that is not
/// an event at all, go to the dead-letter topic with the error in headers; the rows around
/// them are applied, and nothing is skipped silently.
#[tokio::test(flavor = "multi_thread")]
async fn poison_records_go_to_the_dead_letter_topic_and_the_sink_goes_on() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_dlq", Setup::default()).await;
    let replica_db = stack.fresh_pg_database(&unique("rep_dlq_orders")).await;
    let replica = stack.pg(&replica_db).await;
    replica.batch_execute(POISON_CHECKED_REPLICA).await.unwrap();
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
        .batch_execute(
            "INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'ada@example.com', 'x'), ('Bad', 'poison@example.com', 'x'), ('Grace', 'grace@example.com', 'x')",
        )
        .await
        .unwrap();
    // Not an event: no Confluent framing, no walcast headers.
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .create()
        .unwrap();
    producer
        .send(
            rdkafka::producer::BaseRecord::to(&daemon.topic)
                .key("garbage")
                .payload("not avro"),
        )
        .unwrap();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    source
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Edsger', 'edsger@example.com', 'x')")
        .await
        .unwrap();

    let records = crate::support::consume_from_start(&stack.kafka_brokers, &dlq, 2).await;
    let header = |r: &crate::support::Record, name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("no {name} header: {:?}", r.headers))
    };
    let mut by_stage: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            assert_eq!(header(r, "__walcast.errors.topic"), daemon.topic);
            assert_eq!(
                header(r, "__walcast.errors.sink"),
                format!("dlq-{}", daemon.name)
            );
            header(r, "__walcast.errors.offset").parse::<i64>().unwrap();
            (
                header(r, "__walcast.errors.stage"),
                header(r, "__walcast.errors.message"),
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    by_stage.sort();
    assert_eq!(by_stage[0].0, "apply");
    assert!(
        by_stage[0].1.contains("user_replica_email_check"),
        "{:?}",
        by_stage[0]
    );
    assert_eq!(
        by_stage[1],
        (
            "decode".to_string(),
            "no lsn header; only walcast's events can be applied".to_string(),
            "garbage".to_string()
        )
    );
    // The poison event's own record is copied as it was: its walcast headers travel with it.
    let apply = records
        .iter()
        .find(|r| header(r, "__walcast.errors.stage") == "apply")
        .unwrap();
    assert_eq!(header(apply, "op"), "insert");

    crate::support::wait_until("the good rows", Duration::from_secs(60), || async {
        let names: Vec<String> = replica
            .query("SELECT name FROM user_replica ORDER BY user_id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        names == ["Ada", "Grace", "Edsger"]
    })
    .await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// A sink that meets a poison record under `on_error = "stop"` stops alone, naming the
/// record: the source and the other sink go on converging, and the daemon stays up.
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_stops_its_sink_alone_naming_topic_partition_and_offset() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_stop", Setup::default()).await;
    let checked_db = stack.fresh_pg_database(&unique("rep_stop_orders")).await;
    stack
        .pg(&checked_db)
        .await
        .batch_execute(POISON_CHECKED_REPLICA)
        .await
        .unwrap();
    let other_db = stack.fresh_pg_database(&unique("rep_stop_other")).await;
    let other = stack.pg(&other_db).await;
    other.batch_execute(REPLICA).await.unwrap();
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    for (name, db) in [("stop", &checked_db), ("other", &other_db)] {
        config.push_str(&format!(
            "\n[[sink]]\nname = \"{name}\"\ntype = \"postgres\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\nfields = [\"user_id\", \"name\", \"email\"]\nbatch_max_wait_ms = 50\n",
            topic = daemon.topic,
            url = stack.pg_url_for("postgres", db),
        ));
    }
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    let source = daemon.pg().await;
    source
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Bad', 'poison@example.com', 'x')")
        .await
        .unwrap();
    let expected = format!("sink stop: {} partition ", daemon.topic);
    wait_until(
        "the sink to stop naming the record",
        Duration::from_secs(60),
        || {
            let log = daemon.log_text();
            let seen = log.contains(&expected);
            async move { seen }
        },
    )
    .await;
    let log = daemon.log_text();
    assert!(
        log.contains("violates check constraint \"user_replica_email_check\""),
        "{log}"
    );
    assert!(
        log.contains("; the record was not applied and its offset not committed (on_error = \"dead_letter\" sends such records to a dead-letter topic instead)"),
        "{log}"
    );
    assert!(log.contains("failed; the other parts go on"), "{log}");
    // The source and the other sink go on: later rows reach the other replica.
    source
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('After', 'after@example.com', 'x')")
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(60),
        || format!("the other replica to converge\n{}", daemon.log_text()),
        || async {
            let want = source_rows(&source).await;
            let got: Rows = other
                .query(
                    "SELECT user_id, name, email FROM user_replica ORDER BY user_id",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            (want == got).then_some(())
        },
    )
    .await;
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// Two members of one sink's consumer group share its partitions. When one dies (kill -9),
/// the other is given its partitions once the group's session times out, and resumes them
/// from the replica's positions: the replica converges.
#[tokio::test(flavor = "multi_thread")]
async fn a_sink_group_member_takes_over_when_the_other_dies() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_grp", Setup::default()).await;
    let replica_db = stack.fresh_pg_database(&unique("rep_grp_orders")).await;
    let replica = stack.pg(&replica_db).await;
    replica.batch_execute(REPLICA).await.unwrap();
    let sink = format!(
        "\n[[sink]]\nname = \"grp-{name}\"\ntype = \"postgres\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\nfields = [\"user_id\", \"name\", \"email\"]\nbatch_max_wait_ms = 50\n",
        name = daemon.name,
        topic = daemon.topic,
        url = stack.pg_url_for("postgres", &replica_db),
    );
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&sink);
    std::fs::write(&daemon.config, config).unwrap();
    // The second member runs the same sink, and nothing else.
    let member_config = daemon.dir.path().join("member.toml");
    std::fs::write(
        &member_config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{}\"\n[registry]\nurl = \"{}\"\n{sink}",
            stack.kafka_brokers, daemon.registry_url
        ),
    )
    .unwrap();
    let member_log = daemon.dir.path().join("member.log");
    daemon.start().await;
    let member = crate::support::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(["run", "--config"])
            .arg(&member_config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&member_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let source = daemon.pg().await;
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(std::process::id());
    random_writes(&source, 5, &mut seed).await;
    let member_text = || std::fs::read_to_string(&member_log).unwrap_or_default();
    wait_for(
        Duration::from_secs(60),
        || {
            format!(
                "the second member to be given a partition:\n{}\nfirst member:\n{}",
                member_text(),
                daemon.log_text()
            )
        },
        || {
            let log = member_text();
            let assigned = log.contains("partitions assigned")
                && log.contains(&format!("(\"{}\", ", daemon.topic));
            async move { assigned.then_some(()) }
        },
    )
    .await;
    let replica_rows = || async {
        replica
            .query(
                "SELECT user_id, name, email FROM user_replica ORDER BY user_id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect::<Rows>()
    };
    let converged = || {
        wait_for(
            Duration::from_secs(90),
            || {
                format!(
                    "the replica to converge\n{}\nmember:\n{}",
                    daemon.log_text(),
                    member_text()
                )
            },
            || async {
                let (want, got) = (source_rows(&source).await, replica_rows().await);
                (want == got).then_some(want.len())
            },
        )
    };
    random_writes(&source, 10, &mut seed).await;
    converged().await;

    drop(member); // kill -9
    random_writes(&source, 10, &mut seed).await;
    let rows = converged().await;
    assert!(
        rows > 0,
        "the scenario deleted everything; nothing was compared"
    );
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// Records are read in their subject's latest view: after a contract gains a field with a
/// default, events written before it reach the replica with the default, and newer events
/// with their own value. (Decoding by the writer's schema alone would leave the field NULL.)
#[tokio::test(flavor = "multi_thread")]
async fn older_events_are_read_in_the_latest_contract_version() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_view", Setup::default()).await;
    daemon.start().await;
    let source = daemon.pg().await;
    source
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'ada@example.com', 'x'), ('Grace', 'grace@example.com', 'x')")
        .await
        .unwrap();
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());

    // Version 2 of the contracts gains `tier`, read from a new column.
    source
        .batch_execute("ALTER TABLE users ADD COLUMN tier text NOT NULL DEFAULT 'gold'")
        .await
        .unwrap();
    let tier = r#"{"name": "tier", "type": "string", "default": "standard"}"#;
    for file in ["UserCreated.avsc", "UserUpdated.avsc"] {
        let path = daemon.dir.path().join(file);
        let v1 = std::fs::read_to_string(&path).unwrap();
        let at = v1.rfind(']').unwrap();
        let v2 = format!("{},\n    {tier}\n  {}", v1[..at].trim_end(), &v1[at..]);
        std::fs::write(&path, v2).unwrap();
    }
    let replica_db = stack.fresh_pg_database(&unique("rep_view_orders")).await;
    let replica = stack.pg(&replica_db).await;
    replica
        .batch_execute(
            "CREATE TABLE user_replica (user_id bigint PRIMARY KEY, name text, tier text,
               _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)",
        )
        .await
        .unwrap();
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&format!(
        "\n[[sink]]\nname = \"view-{name}\"\ntype = \"postgres\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\nfields = [\"user_id\", \"name\", \"tier\"]\nbatch_max_wait_ms = 50\n",
        name = daemon.name,
        topic = daemon.topic,
        url = stack.pg_url_for("postgres", &replica_db),
    ));
    std::fs::write(&daemon.config, config).unwrap();
    // The schema registry workflow: version 2 is registered before the deployment that
    // uses it, so the sink's first look at the subject already finds it.
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
    source
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Edsger', 'edsger@example.com', 'x')")
        .await
        .unwrap();
    let want = vec![
        ("Ada".to_string(), "standard".to_string()),
        ("Grace".to_string(), "standard".to_string()),
        ("Edsger".to_string(), "gold".to_string()),
    ];
    wait_until(
        &format!("the replica to hold {want:?}"),
        Duration::from_secs(60),
        || async {
            let got: Vec<(String, String)> = replica
                .query(
                    "SELECT name, coalesce(tier, 'NULL') FROM user_replica ORDER BY user_id",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            got == want
        },
    )
    .await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

/// `auto_create` makes the table from every event type of the topic, not from the first one
/// it sees: an update of a key the replica does not hold yet (`UserUpdated`, which lacks
/// `created_at`) is stored, in a table that also has `created_at` (`UserCreated`'s), and
/// every non-key column is nullable. In PostgreSQL and MariaDB.
#[tokio::test(flavor = "multi_thread")]
async fn auto_create_takes_every_event_type_of_the_topic() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_union", Setup::default()).await;
    let source = daemon.pg().await;
    // Before the slot exists: never published, so the replicas first see its update.
    source
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'ada@example.com', 'x')")
        .await
        .unwrap();
    let pg_db = stack.fresh_pg_database(&unique("rep_union_orders")).await;
    let mysql_url = stack
        .fresh_mysql_database(&unique("rep_union_shipping"))
        .await;
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    for (kind, url) in [
        ("postgres", stack.pg_url_for("postgres", &pg_db)),
        ("mysql", mysql_url.clone()),
    ] {
        config.push_str(&format!(
            "\n[[sink]]\nname = \"{kind}-{name}\"\ntype = \"{kind}\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\nauto_create = true\nbatch_max_wait_ms = 50\n",
            name = daemon.name,
            topic = daemon.topic,
        ));
    }
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    source
        .batch_execute("UPDATE users SET full_name = 'Ada L.'; INSERT INTO users (full_name, email, password_hash) VALUES ('Grace', 'grace@example.com', 'x')")
        .await
        .unwrap();
    let query = "SELECT user_id, name, CASE WHEN created_at IS NULL THEN 'null' ELSE 'set' END, \
                 CASE WHEN updated_at IS NULL THEN 'null' ELSE 'set' END FROM user_replica ORDER BY user_id";
    let want: Vec<(i64, String, String, String)> = vec![
        (1, "Ada L.".into(), "null".into(), "set".into()),
        // UserCreated carries no updated_at.
        (2, "Grace".into(), "set".into(), "null".into()),
    ];
    let replica = stack.pg(&pg_db).await;
    let last = std::sync::Mutex::new(String::new());
    wait_for(
        Duration::from_secs(60),
        || {
            format!(
                "the replicas to hold {want:?}; {}\n{}",
                last.lock().unwrap(),
                daemon.log_text()
            )
        },
        || async {
            let pg: Vec<(i64, String, String, String)> = match replica.query(query, &[]).await {
                Ok(rows) => rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect(),
                Err(e) => {
                    *last.lock().unwrap() = format!("postgres: {e}");
                    return None;
                }
            };
            let mut conn = mysql_async::Conn::from_url(&mysql_url).await.ok()?;
            let my: Result<Vec<(i64, String, String, String)>, _> = conn.query(query).await;
            let _ = conn.disconnect().await;
            *last.lock().unwrap() = format!("postgres holds {pg:?}, mariadb {my:?}");
            (pg == want && my.ok()? == want).then_some(())
        },
    )
    .await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}
