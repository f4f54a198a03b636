//! Spec: the command line's exit codes and the messages operators see.
//! 0 success, 2 configuration or usage error, 1 runtime failure.

use std::process::{Command, Output};

fn walcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("WALCAST_CONFIG")
        .output()
        .expect("walcast runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_the_example_configuration() {
    let out = walcast(&["check", "--config", "config.example.toml"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "config.example.toml: valid (1 source(s), 2 table(s), 3 sink(s))\n"
    );
}

#[test]
fn the_configuration_may_come_from_walcast_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_walcast"))
        .arg("check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("WALCAST_CONFIG", "config.example.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[test]
fn check_rejects_a_broken_configuration_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        "[kafka]\nbrokers = \"127.0.0.1:9092\"\nbroker = 1\n[registry]\nurl = \"http://127.0.0.1:8081\"\n",
    )
    .unwrap();
    let out = walcast(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{}:3: kafka.broker: unknown key; expected one of: brokers, client_id, exactly_once, transaction_interval_ms, properties, properties_env, topic_defaults, topic\n",
            file.display()
        )
    );
}

#[test]
fn a_missing_file_is_a_configuration_error() {
    let out = walcast(&["check", "--config", "nope.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "nope.toml: cannot read the configuration file: No such file or directory (os error 2)\n"
    );
}

#[test]
fn usage_errors_exit_with_2_and_help_with_0() {
    assert_eq!(walcast(&["check"]).status.code(), Some(2));
    assert_eq!(walcast(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(walcast(&["--help"]).status.code(), Some(0));
    let version = walcast(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        text(&version.stdout),
        format!("walcast {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn slot_drop_names_the_sources_when_the_source_is_unknown() {
    let out = walcast(&[
        "slot",
        "drop",
        "--config",
        "config.example.toml",
        "--source",
        "billing",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "walcast: --source billing: no [[source]] has that name in config.example.toml; expected one of: users\n"
    );
}

/// A sink whose key (or key template) leaves out a field of the events' key would hold two
/// source rows as one: `walcast check` refuses it, naming the field.
#[test]
fn check_refuses_a_sink_key_that_leaves_out_a_key_field() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/users");
    std::fs::write(
        dir.path().join("TenantUserKey.avsc"),
        r#"{"type":"record","name":"TenantUserKey","namespace":"com.example.users","fields":[{"name":"tenant_id","type":"long"},{"name":"user_id","type":"long"}]}"#,
    )
    .unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            r#"[kafka]
brokers = "127.0.0.1:9092"
[registry]
url = "http://127.0.0.1:8081"

[[source]]
name = "users"
url = "postgres://walcast@127.0.0.1:54329/users"
[[source.table]]
table = "public.users"
topic = "users.user"
key = "TenantUserKey.avsc"
insert = "{schemas}/UserCreated.avsc"
columns = {{ user_id = "id", tenant_id = "tenant", name = "full_name" }}

[[sink]]
name = "replica"
type = "postgres"
topics = ["users.user"]
url = "postgres://walcast@127.0.0.1:54329/orders"
table = "user_replica"
key = ["user_id"]

[[sink]]
name = "cache"
type = "redis"
topics = ["users.user"]
url = "redis://127.0.0.1:6379/0"
key_template = "user:{{user_id}}"

[[sink]]
name = "whole"
type = "redis"
topics = ["users.user"]
url = "redis://127.0.0.1:6379/0"
key_template = "tenant:{{tenant_id}}:user:{{user_id}}"
"#
        ),
    )
    .unwrap();
    let out = walcast(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", text(&out.stdout));
    let f = file.display();
    let contract = "TenantUserKey.avsc";
    assert_eq!(
        text(&out.stderr),
        format!(
            "{f}: sink[0].key: sink replica: key leaves out field tenant_id of topic users.user's key contract {contract} (its fields: tenant_id, user_id): two source rows that differ only in tenant_id would be one replica entry, each overwriting and deleting the other; name every key field
{f}: sink[1].key_template: sink cache: key_template leaves out field tenant_id of topic users.user's key contract {contract} (its fields: tenant_id, user_id): two source rows that differ only in tenant_id would be one replica entry, each overwriting and deleting the other; name every key field
"
        )
    );
}

/// A sink's key, `fields` and `columns` are checked, without connecting, against the
/// contracts of a topic the same file's source publishes; each mistake names the sink, the
/// key path and the field.
#[test]
fn check_names_sink_fields_that_the_topics_contracts_lack() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fields.toml");
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/users");
    std::fs::write(
        &file,
        format!(
            r#"[kafka]
brokers = "127.0.0.1:9092"
[registry]
url = "http://127.0.0.1:8081"

[[source]]
name = "users"
url = "postgres://walcast@127.0.0.1:54329/users"
[[source.table]]
table = "public.users"
topic = "users.user"
key = "{schemas}/UserKey.avsc"
insert = "{schemas}/UserCreated.avsc"
update = "{schemas}/UserUpdated.avsc"

[[sink]]
name = "replica"
type = "postgres"
topics = ["users.user"]
url = "postgres://walcast@127.0.0.1:54329/orders"
table = "user_replica"
key = ["id"]
fields = ["user_id", "name", "nickname"]
columns = {{ full_name = "fullname", mail = "email" }}

[[sink]]
name = "cache"
type = "redis"
topics = ["users.user"]
url = "redis://127.0.0.1:6379/0"
key_template = "user:{{email}}"

[[sink]]
name = "elsewhere"
type = "mysql"
topics = ["other.topic"]
url = "mysql://root@127.0.0.1:3306/shipping"
table = "t"
key = ["anything"]
"#
        ),
    )
    .unwrap();
    let out = walcast(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", text(&out.stdout));
    let fields = "created_at, email, name, updated_at, user_id";
    let f = file.display();
    assert_eq!(
        text(&out.stderr),
        format!(
            "{f}: sink[0].key: sink replica: key field id is not a field of topic users.user's key contract {schemas}/UserKey.avsc (its fields: user_id); name the key contract's fields, which every change, deletes included, carries
{f}: sink[0].fields: sink replica: field nickname is not a field of any contract of topic users.user (fields: {fields}); name event fields
{f}: sink[0].columns.full_name: sink replica: column full_name is fed by field fullname, which is not a field of any contract of topic users.user (fields: {fields}); write column = \"event field\"
{f}: sink[1].key_template: sink cache: key field email is not a field of topic users.user's key contract {schemas}/UserKey.avsc (its fields: user_id); name the key contract's fields, which every change, deletes included, carries
"
        )
    );
}
