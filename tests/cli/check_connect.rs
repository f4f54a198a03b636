//! Spec: `walcast check --connect` reaches every configured server on the real stack and
//! prints one line per server with OK or the reason.

use std::process::Output;

use crate::support::{unique, Stack};

fn config(
    source_url: &str,
    brokers: &str,
    pg_sink_url: &str,
    mysql_url: &str,
    redis_url: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"

[registry]
url = "http://127.0.0.1:1"
embedded = true

[[source]]
name = "users"
url = "{source_url}"

[[source.table]]
table = "public.users"
topic = "users.user"
key = "{root}/schemas/users/UserKey.avsc"
insert = "{root}/schemas/users/UserCreated.avsc"

[[sink]]
name = "replica"
type = "postgres"
topics = ["users.user"]
url = "{pg_sink_url}"
table = "user_replica"
key = ["user_id"]

[[sink]]
name = "shipping"
type = "mysql"
topics = ["users.user"]
url = "{mysql_url}"
table = "user_replica"
key = ["user_id"]

[[sink]]
name = "cache"
type = "redis"
topics = ["users.user"]
url = "{redis_url}"
key_template = "user:{{user_id}}"
"#,
        root = env!("CARGO_MANIFEST_DIR")
    )
}

fn check_connect(config: &str) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("walcast.toml");
    std::fs::write(&file, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["check", "--connect", "--timeout-ms", "8000", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// The status and detail columns of the line for `target`.
fn line<'a>(stdout: &'a str, target: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(target))
        .unwrap_or_else(|| panic!("no line for {target} in:\n{stdout}"))
}

/// A configuration whose servers are all the stack's, with `users_ddl` creating the
/// source's table in a fresh database.
async fn stack_config(prefix: &str, users_ddl: &str) -> String {
    let stack = Stack::get();
    let db = stack.fresh_pg_database(&unique(prefix)).await;
    stack.pg(&db).await.batch_execute(users_ddl).await.unwrap();
    let mysql = stack.fresh_mysql_database(&unique(prefix)).await;
    config(
        &stack.pg_url_for("walcast", &db),
        &stack.kafka_brokers,
        &stack.pg_url_for("postgres", &db),
        &mysql,
        &stack.redis_url,
    )
}

#[tokio::test]
async fn every_server_of_the_stack_is_reached() {
    let text = stack_config(
        "check_ok",
        "CREATE TABLE users (id bigint PRIMARY KEY, name text)",
    )
    .await;
    let (out, stdout) = check_connect(&text);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        line(&stdout, "source users").contains(" OK   PostgreSQL 15."),
        "{stdout}"
    );
    assert!(
        line(&stdout, "source users").ends_with("wal_level=logical"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "kafka").contains(" OK   1 broker(s)"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "registry").contains(" SKIP not running; registry.embedded = true"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "sink replica (postgres)").contains(" OK   PostgreSQL 15."),
        "{stdout}"
    );
    assert!(
        line(&stdout, "sink shipping (mysql)").contains(" OK   MySQL/MariaDB "),
        "{stdout}"
    );
    assert!(
        line(&stdout, "sink cache (redis)").contains(" OK   Redis "),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_table_the_source_cannot_use_is_named_by_check() {
    let text = stack_config("check_table", "CREATE TABLE users (id bigint, name text)").await;
    let (out, stdout) = check_connect(&text);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        line(&stdout, "source users").ends_with(
            "FAIL source users: table public.users has no primary key and REPLICA IDENTITY DEFAULT, so its updates and deletes cannot be identified; hint: run ALTER TABLE \"public\".\"users\" ADD PRIMARY KEY (…), or ALTER TABLE \"public\".\"users\" REPLICA IDENTITY FULL"
        ),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_publication_that_would_drop_changes_is_named_by_check() {
    let text = stack_config(
        "check_pub",
        "CREATE TABLE users (id bigint NOT NULL, region text NOT NULL, name text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE users_eu PARTITION OF users FOR VALUES IN ('eu');
         CREATE PUBLICATION walcast_users FOR TABLE users",
    )
    .await;
    let (out, stdout) = check_connect(&text);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        line(&stdout, "source users").ends_with(
            "FAIL source users: publication walcast_users lacks publish_via_partition_root, so the changes of partitioned table public.users arrive under its partitions' names, which the configuration does not map; hint: run ALTER PUBLICATION \"walcast_users\" SET (publish_via_partition_root = true), then restart"
        ),
        "{stdout}"
    );
}

#[tokio::test]
async fn unusable_servers_are_named_with_the_reason_and_exit_1() {
    let stack = Stack::get();
    let db = stack.fresh_pg_database(&unique("check_fail")).await;
    let role = unique("no_replication");
    stack.fresh_role(&role, "LOGIN").await;
    let text = config(
        &stack.pg_url_for(&role, &db),
        "127.0.0.1:1",
        &stack.pg_url_for("postgres", "no_such_database"),
        &stack.mysql_url,
        "redis://127.0.0.1:1",
    );
    let (out, stdout) = check_connect(&text);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        line(&stdout, "source users").ends_with(&format!(
                        "FAIL source users: role {role} lacks the REPLICATION attribute; hint: run ALTER ROLE \"{role}\" WITH REPLICATION"
        )),
        "{stdout}"
    );
    assert!(line(&stdout, "kafka").contains(" FAIL "), "{stdout}");
    assert!(
        line(&stdout, "sink replica (postgres)")
            .ends_with("FAIL db error: FATAL: database \"no_such_database\" does not exist"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "sink cache (redis)").contains(" FAIL "),
        "{stdout}"
    );
    assert!(
        line(&stdout, "sink shipping (mysql)").contains(" OK "),
        "{stdout}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "walcast: 4 of 6 server(s) could not be used\n"
    );
}

#[tokio::test]
async fn the_stacks_registry_is_reached_as_a_confluent_registry() {
    let stack = Stack::get();
    let text = stack_config(
        "check_registry",
        "CREATE TABLE users (id bigint PRIMARY KEY, name text)",
    )
    .await
    .replace(
        "url = \"http://127.0.0.1:1\"\nembedded = true",
        &format!("url = \"{}\"", stack.registry_url),
    );
    let (out, stdout) = check_connect(&text);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        line(&stdout, "registry").contains(" OK   Confluent-compatible registry"),
        "{stdout}"
    );
}
