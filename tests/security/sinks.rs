//! Spec: the sinks over TLS, on real servers with TLS turned on: the stack's PostgreSQL
//! (`verify-full` against the stack's CA, a role that may only log in over TLS), a MariaDB
//! and a Redis of the test's own that speak TLS with the stack's server certificate.
//!
//! Events reach all three replicas. A wrong password or an untrusted certificate stops the
//! sink with a named, permanent error at once (`walcast run` exits within a bound, without
//! retrying), nothing is written to the store, `check --connect` names the same failure,
//! and no password appears in anything walcast prints at log level debug.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::daemon::{Daemon, Setup};
use crate::support::targets::{OwnMariadb, OwnRedis, OwnTlsRedis};
use crate::support::{unique, wait_until, Stack};

/// The stack's `walcast_tls` role: scram-sha-256, and only over TLS (`hostssl`).
const PG_USER: &str = "walcast_tls";
const PG_PASSWORD: &str = "tls-secret";
const MARIADB_PASSWORD: &str = "mariadb-secret-7d2a";
const REDIS_USER: &str = "walcast";
const REDIS_PASSWORD: &str = "redis-secret-91c4";
const WRONG_PASSWORD: &str = "not-the-password-3e8b";

/// A fresh database on the stack's PostgreSQL owned by the TLS-only role, so the sink may
/// create its replica table there.
async fn pg_replica_database(prefix: &str) -> String {
    let stack = Stack::get();
    let db = stack.fresh_pg_database(&unique(prefix)).await;
    stack
        .pg("postgres")
        .await
        .batch_execute(&format!("ALTER DATABASE {db} OWNER TO {PG_USER}"))
        .await
        .unwrap();
    db
}

fn pg_port() -> String {
    let url = &Stack::get().pg_url;
    url.rsplit_once(':').unwrap().1.to_string()
}

/// A PostgreSQL sink into `db` with verify-full against `ca`.
fn pg_sink(name: &str, topic: &str, db: &str, ca: &Path) -> String {
    format!(
        "[[sink]]\nname = \"{name}\"\ntype = \"postgres\"\ntopics = [\"{topic}\"]\n\
         url = \"postgres://{PG_USER}@127.0.0.1:{}/{db}\"\npassword_env = \"PG_SINK_PASSWORD\"\n\
         table = \"user_replica\"\nkey = [\"user_id\"]\nauto_create = true\n\
         tls_mode = \"verify-full\"\ntls_ca_file = \"{}\"\n",
        pg_port(),
        ca.display()
    )
}

/// A MariaDB user that must use TLS (if the server has it), and a database of its own.
fn mariadb_user(db: &OwnMariadb) {
    let require = if db.tls { " REQUIRE SSL" } else { "" };
    db.sql(&format!(
        "CREATE DATABASE shipping; CREATE USER 'walcast'@'%' IDENTIFIED BY '{MARIADB_PASSWORD}'{require}; \
         GRANT ALL ON shipping.* TO 'walcast'@'%';"
    ));
}

/// A MariaDB sink with verify-full against `ca`.
fn mariadb_sink(name: &str, topic: &str, db: &OwnMariadb, ca: &Path) -> String {
    format!(
        "[[sink]]\nname = \"{name}\"\ntype = \"mysql\"\ntopics = [\"{topic}\"]\n\
         url = \"mysql://walcast@127.0.0.1:{}/shipping\"\npassword_env = \"MARIADB_SINK_PASSWORD\"\n\
         table = \"user_replica\"\nkey = [\"user_id\"]\nauto_create = true\n\
         tls_mode = \"verify-full\"\ntls_ca_file = \"{}\"\n",
        db.port,
        ca.display()
    )
}

/// A Redis sink over `rediss://` with the ACL user, trusting `ca` (or the system's roots).
fn redis_sink(name: &str, topic: &str, redis: &OwnTlsRedis, ca: Option<&Path>) -> String {
    let ca = ca
        .map(|ca| format!("tls_ca_file = \"{}\"\n", ca.display()))
        .unwrap_or_default();
    format!(
        "[[sink]]\nname = \"{name}\"\ntype = \"redis\"\ntopics = [\"{topic}\"]\n\
         url = \"rediss://{REDIS_USER}@127.0.0.1:{}\"\npassword_env = \"REDIS_SINK_PASSWORD\"\n\
         key_template = \"user:{{user_id}}\"\n{ca}",
        redis.port
    )
}

/// A configuration of the stack's Kafka and registry and `sink` alone, in `dir`.
fn sink_only(dir: &Path, sink: &str) -> std::path::PathBuf {
    let stack = Stack::get();
    let file = dir.join(format!("{}.toml", unique("sink")));
    std::fs::write(
        &file,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[kafka]\nbrokers = \"{}\"\n[registry]\nurl = \"{}\"\n\n{sink}",
            stack.kafka_brokers, stack.registry_url
        ),
    )
    .unwrap();
    file
}

/// Runs `walcast run` on `config` at log level debug until it exits, which it must within
/// 30 s: exit code and stderr. Its only part is the sink, so its failure ends the process.
async fn run_until_exit(config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (code, stderr, took) = crate::run_until_exit(config, env, Duration::from_secs(30)).await;
    eprintln!("walcast run exited after {took:?}");
    assert!(
        !stderr.contains("retrying"),
        "a permanent failure was retried:\n{stderr}"
    );
    (code, stderr)
}

/// The last thing walcast printed: its error, without the log before it.
fn final_error(stderr: &str) -> String {
    let at = stderr.rfind("\nwalcast: ").map(|i| i + 1).unwrap_or(0);
    stderr[at..].trim_end().to_string()
}

/// `walcast check --connect` on `config`: exit code and the detail of the sink's line.
fn check_connect(config: &Path, sink: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["check", "--connect", "--timeout-ms", "8000", "--config"])
        .arg(config)
        .env("RUST_LOG", "debug")
        .env_remove("SSL_CERT_FILE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_no_password(&all);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("sink {sink} ")))
        .unwrap_or_else(|| panic!("no line for sink {sink} in:\n{all}"));
    let at = [" OK   ", " FAIL ", " SKIP "]
        .iter()
        .filter_map(|s| line.find(s))
        .min()
        .unwrap_or_else(|| panic!("no status in {line}"));
    (out.status.code(), line[at + 1..].trim_end().to_string())
}

fn assert_no_password(text: &str) {
    for secret in [
        PG_PASSWORD,
        MARIADB_PASSWORD,
        REDIS_PASSWORD,
        WRONG_PASSWORD,
    ] {
        assert!(!text.contains(secret), "a password leaked:\n{text}");
    }
}

/// Runs the sink-only `config` with `env`, which must fail at once with `expected` (the
/// sink's failure, the daemon's only part), printing no password; and
/// `check --connect` names the same failure.
async fn fails_with(config: &Path, sink: &str, env: &[(&str, &str)], expected: &str) {
    let (code, stderr) = run_until_exit(config, env).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_no_password(&stderr);
    assert_eq!(final_error(&stderr), format!("walcast: {expected}"));
    let (code, line) = check_connect(config, sink, env);
    assert_eq!(code, Some(1));
    let (_, detail) = expected.split_once(": ").unwrap();
    assert_eq!(
        line,
        format!("FAIL {}", detail.replace("\n  hint: ", "; hint: "))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_reach_postgres_mariadb_and_redis_replicas_over_tls() {
    let stack = Stack::get();
    let pg_db = pg_replica_database("stls_ok_pg").await;
    let mariadb = OwnMariadb::start_tls().await;
    mariadb_user(&mariadb);
    let redis = OwnTlsRedis::start(REDIS_USER, REDIS_PASSWORD).await;
    let mut daemon = Daemon::prepare("stls_ok", Setup::default()).await;
    let ca = &stack.kafka_sasl.ca;
    let sinks = [
        pg_sink("pg", &daemon.topic, &pg_db, &stack.pg_ca),
        mariadb_sink("maria", &daemon.topic, &mariadb, ca),
        redis_sink("cache", &daemon.topic, &redis, Some(ca)),
    ];
    let mut text = std::fs::read_to_string(&daemon.config).unwrap();
    for sink in &sinks {
        text.push('\n');
        text.push_str(sink);
    }
    std::fs::write(&daemon.config, text).unwrap();
    let env = [
        ("PG_SINK_PASSWORD", PG_PASSWORD),
        ("MARIADB_SINK_PASSWORD", MARIADB_PASSWORD),
        ("REDIS_SINK_PASSWORD", REDIS_PASSWORD),
    ];
    for (sink, expected) in [
        ("pg", "OK   PostgreSQL 15"),
        ("maria", "OK   MySQL/MariaDB "),
        ("cache", "OK   Redis "),
    ] {
        let (_, line) = check_connect(&daemon.config, sink, &env);
        assert!(line.starts_with(expected), "{sink}: {line}");
    }

    daemon.start_with(&env).await;
    let pg = daemon.pg().await;
    pg.batch_execute(
        "INSERT INTO users (full_name, email, password_hash) VALUES
           ('Ada', 'ada@example.com', 'x'), ('Grace', 'grace@example.com', 'x'),
           ('Edsger', 'edsger@example.com', 'x')",
    )
    .await
    .unwrap();
    let replica = stack.pg(&pg_db).await;
    wait_until(
        "3 rows in the PostgreSQL replica",
        Duration::from_secs(60),
        || {
            let replica = &replica;
            async move {
                replica
                    .query_one("SELECT count(*) FROM user_replica", &[])
                    .await
                    .is_ok_and(|r| r.get::<_, i64>(0) == 3)
            }
        },
    )
    .await;
    wait_until("3 rows in the MariaDB replica", Duration::from_secs(60), || {
        let mariadb = &mariadb;
        async move {
            mariadb.sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'shipping' AND table_name = 'user_replica'").trim() == "1"
                && mariadb.sql("SELECT count(*) FROM shipping.user_replica").trim() == "3"
        }
    })
    .await;
    wait_until(
        "3 hashes in the Redis cache",
        Duration::from_secs(60),
        || {
            let redis = &redis;
            async move { redis.keys(REDIS_USER, REDIS_PASSWORD, "user:*").len() == 3 }
        },
    )
    .await;
    // The connections really are TLS.
    let ssl: bool = replica
        .query_one(
            "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = $1",
            &[&PG_USER],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    daemon.terminate().await;
    assert_no_password(&daemon.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_sink_with_a_wrong_password_or_an_untrusted_certificate_stops_at_once() {
    let stack = Stack::get();
    let db = pg_replica_database("stls_pg").await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("stls_pg_topic");

    let trusted = sink_only(dir.path(), &pg_sink("pg", &topic, &db, &stack.pg_ca));
    fails_with(
        &trusted,
        "pg",
        &[("PG_SINK_PASSWORD", WRONG_PASSWORD)],
        &format!("sink pg: the PostgreSQL server refused the login (password authentication failed for user \"{PG_USER}\")\n  hint: check the user name in url and the password in the variable password_env names"),
    )
    .await;

    // The Kafka listener's CA did not sign PostgreSQL's certificate.
    let untrusted = sink_only(
        dir.path(),
        &pg_sink("pg", &topic, &db, &stack.kafka_sasl.ca),
    );
    fails_with(
        &untrusted,
        "pg",
        &[("PG_SINK_PASSWORD", PG_PASSWORD)],
        "sink pg: the PostgreSQL server's TLS certificate is not trusted (unable to get local issuer certificate)\n  hint: tls_ca_file is not the CA that signed the server's certificate; point it at the one that did",
    )
    .await;

    // Nothing was written: not even walcast's bookkeeping.
    let created: i64 = stack
        .pg(&db)
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mariadb_sink_with_a_wrong_password_or_an_untrusted_certificate_stops_at_once() {
    let stack = Stack::get();
    let mariadb = OwnMariadb::start_tls().await;
    mariadb_user(&mariadb);
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("stls_maria_topic");

    let trusted = sink_only(
        dir.path(),
        &mariadb_sink("maria", &topic, &mariadb, &stack.kafka_sasl.ca),
    );
    fails_with(
        &trusted,
        "maria",
        &[("MARIADB_SINK_PASSWORD", WRONG_PASSWORD)],
        "sink maria: the MySQL/MariaDB server refused the login (Access denied for user 'walcast'@'localhost' (using password: YES))\n  hint: check the user name in url and the password in the variable password_env names",
    )
    .await;

    // PostgreSQL's CA did not sign the server's certificate.
    let untrusted = sink_only(
        dir.path(),
        &mariadb_sink("maria", &topic, &mariadb, &stack.pg_ca),
    );
    fails_with(
        &untrusted,
        "maria",
        &[("MARIADB_SINK_PASSWORD", MARIADB_PASSWORD)],
        "sink maria: the MySQL/MariaDB server's TLS certificate is not trusted (self-signed certificate in certificate chain)\n  hint: tls_ca_file is not the CA that signed the server's certificate; point it at the one that did",
    )
    .await;

    assert_eq!(
        mariadb
            .sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'shipping'")
            .trim(),
        "0",
        "something was written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_sink_with_a_wrong_password_or_an_untrusted_certificate_stops_at_once() {
    let stack = Stack::get();
    let redis = OwnTlsRedis::start(REDIS_USER, REDIS_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("stls_redis_topic");

    let trusted = sink_only(
        dir.path(),
        &redis_sink("cache", &topic, &redis, Some(&stack.kafka_sasl.ca)),
    );
    fails_with(
        &trusted,
        "cache",
        &[("REDIS_SINK_PASSWORD", WRONG_PASSWORD)],
        "sink cache: the Redis server refused the login (AUTH failed: wrong user name or password, or the user is disabled)\n  hint: check the user name in url and the password in the variable password_env names",
    )
    .await;

    // No tls_ca_file: the system's roots, which do not hold the stack's CA.
    let untrusted = sink_only(dir.path(), &redis_sink("cache", &topic, &redis, None));
    fails_with(
        &untrusted,
        "cache",
        &[("REDIS_SINK_PASSWORD", REDIS_PASSWORD)],
        "sink cache: the Redis server's TLS certificate is not trusted (self-signed certificate in certificate chain)\n  hint: set tls_ca_file to the PEM file of the CA that signed the server's certificate (or add that CA to SSL_CERT_FILE)",
    )
    .await;

    assert!(redis.keys(REDIS_USER, REDIS_PASSWORD, "*").is_empty());
}

/// TLS asked of a server that does not speak it on that port: MySQL's refusal is named and
/// final; a plain Redis says nothing to a TLS handshake, so that one is a timeout (retried,
/// as the server may only be busy) naming the likelier cause.
#[tokio::test(flavor = "multi_thread")]
async fn tls_asked_of_a_plain_server_is_named() {
    let mariadb = OwnMariadb::start(false).await;
    mariadb_user(&mariadb);
    let redis = OwnRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let maria = sink_only(
        dir.path(),
        &format!(
            "[[sink]]\nname = \"maria\"\ntype = \"mysql\"\ntopics = [\"t\"]\n\
             url = \"mysql://walcast@127.0.0.1:{}/shipping\"\npassword_env = \"MARIADB_SINK_PASSWORD\"\n\
             table = \"user_replica\"\nkey = [\"user_id\"]\ntls_mode = \"require\"\n",
            mariadb.port
        ),
    );
    fails_with(
        &maria,
        "maria",
        &[("MARIADB_SINK_PASSWORD", MARIADB_PASSWORD)],
        "sink maria: the MySQL/MariaDB server does not accept TLS on this port\n  hint: turn TLS on in the server, or set tls_mode = \"disable\" (or \"prefer\")",
    )
    .await;
    // prefer falls back to plain TCP.
    let prefer = std::fs::read_to_string(&maria)
        .unwrap()
        .replace("tls_mode = \"require\"", "tls_mode = \"prefer\"");
    std::fs::write(&maria, prefer).unwrap();
    let (_, line) = check_connect(
        &maria,
        "maria",
        &[("MARIADB_SINK_PASSWORD", MARIADB_PASSWORD)],
    );
    assert!(line.starts_with("OK   MySQL/MariaDB "), "{line}");

    let cache = sink_only(
        dir.path(),
        &format!(
            "[[sink]]\nname = \"cache\"\ntype = \"redis\"\ntopics = [\"t\"]\n\
             url = \"rediss://127.0.0.1:{}\"\nkey_template = \"user:{{user_id}}\"\n",
            redis.port
        ),
    );
    let (code, line) = check_connect(&cache, "cache", &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        line,
        format!("FAIL no TLS handshake from 127.0.0.1:{} within 3 s; if the server does not speak TLS on this port, use a redis:// url or its TLS port", redis.port)
    );
}
