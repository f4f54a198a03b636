//! Spec: a broken configuration is rejected with a message that names the file, the key path,
//! what was found and what is expected. These are the exact texts operators see.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use walcast::config::{self, Config, ConfigError};

/// Files are resolved as if the configuration sat at the repository root, so the demo's
/// schemas/ are found.
fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("walcast.toml")
}

fn parse_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config::parse(text, &config_path(), &|name| env.get(name).cloned())
}

/// The error text, with the file path shortened to `walcast.toml` for readability.
fn error_of(text: &str) -> String {
    let err = parse_with_env(text, &[]).expect_err("configuration should be rejected");
    err.to_string()
        .replace(&format!("{}/", env!("CARGO_MANIFEST_DIR")), "")
}

const HEAD: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"

[registry]
url = "http://127.0.0.1:8081"
"#;

const USERS_SOURCE: &str = r#"
[[source]]
name = "users"
url = "postgres://walcast@127.0.0.1:54329/users"

[[source.table]]
table = "public.users"
topic = "users.user"
key = "schemas/users/UserKey.avsc"
insert = "schemas/users/UserCreated.avsc"
"#;

#[test]
fn the_example_configuration_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let config = config::load(&path).expect("config.example.toml must stay valid");
    assert_eq!(config.sources.len(), 1);
    assert_eq!(config.sources[0].tables.len(), 2);
    assert_eq!(config.sinks.len(), 3);
    assert_eq!(config.sources[0].slot_name(), "walcast_users");
    assert_eq!(
        config.kafka.topic_settings("users.user").cleanup_policy,
        config::CleanupPolicy::Compact
    );
}

#[test]
fn an_unknown_key_is_named_with_the_keys_that_are_accepted() {
    let text = format!("{HEAD}{USERS_SOURCE}slott = \"x\"\n");
    assert_eq!(
        error_of(&text),
        "walcast.toml:17: source[0].table[0].slott: unknown key; expected one of: table, topic, key, insert, update, delete, snapshot, columns, truncate, skip_truncate"
    );
}

#[test]
fn a_table_cannot_both_publish_and_skip_truncates() {
    let text = format!(
        "{HEAD}{USERS_SOURCE}truncate = \"schemas/users/UsersTruncated.avsc\"\nskip_truncate = true\n"
    );
    assert_eq!(
        error_of(&text),
        "walcast.toml: source[0].table[0].skip_truncate: is true, and a truncate contract is given too: publish truncates (keep truncate) or skip them (keep skip_truncate = true), not both"
    );
}

#[test]
fn an_unknown_key_in_a_sink_lists_its_type_keys_and_the_common_keys() {
    let text = format!(
        "{HEAD}[[sink]]\nname = \"c\"\ntype = \"redis\"\ntopics = [\"t\"]\nurl = \"redis://127.0.0.1:6379\"\nkey_template = \"u:{{id}}\"\nttl = 5\n"
    );
    assert_eq!(
        error_of(&text),
        "walcast.toml: sink[0].ttl: unknown key; expected one of: url, url_env, password_env, key_template, fields, ttl_secs, tombstone_ttl_secs, tls_ca_file, name, topics, group, on_error, dead_letter_topic, batch_max_records, batch_max_wait_ms, parallelism"
    );
}

#[test]
fn a_wrong_type_names_what_was_found_and_what_is_expected() {
    let text = format!("{HEAD}[[source]]\nname = \"users\"\nheartbeat_interval_ms = \"10s\"\n");
    assert_eq!(
        error_of(&text),
        "walcast.toml:9: source[0].heartbeat_interval_ms: found string \"10s\", expected a non-negative integer"
    );
}

#[test]
fn a_wrong_enum_value_lists_the_choices() {
    let text = format!("{HEAD}[[source]]\nname = \"users\"\nsnapshot = \"always\"\n");
    assert_eq!(
        error_of(&text),
        "walcast.toml:9: source[0].snapshot: found \"always\", expected one of: initial, never"
    );
}

#[test]
fn a_log_format_is_text_or_json() {
    let text = format!("{HEAD}[admin]\nlog_format = \"xml\"\n");
    assert_eq!(
        error_of(&text),
        "walcast.toml:8: admin.log_format: found \"xml\", expected one of: text, json"
    );
    let json = parse_with_env(&format!("{HEAD}[admin]\nlog_format = \"json\"\n"), &[]).unwrap();
    assert_eq!(json.admin.log_format, config::LogFormat::Json);
}

#[test]
fn a_missing_required_key_is_named_in_full() {
    let text = format!(
        "{HEAD}[[source]]\nname = \"users\"\nurl = \"postgres://h/db\"\n[[source.table]]\ntable = \"users\"\nkey = \"schemas/users/UserKey.avsc\"\n"
    );
    assert_eq!(
        error_of(&text),
        "walcast.toml: source[0].table[0].topic: required key is missing"
    );
}

#[test]
fn a_missing_top_level_section_is_named() {
    let text = "[kafka]\nbrokers = \"127.0.0.1:9092\"\n";
    assert_eq!(
        error_of(text),
        "walcast.toml: registry: required key is missing"
    );
}

#[test]
fn duplicate_source_names_are_refused() {
    let second = USERS_SOURCE.replace("walcast@", "other@");
    let text = format!("{HEAD}{USERS_SOURCE}{second}");
    assert_eq!(
        error_of(&text),
        "walcast.toml: source[1].name: found \"users\", which source[0] already uses; expected a name unique among sources"
    );
}

#[test]
fn duplicate_sink_names_are_refused() {
    let sink = "[[sink]]\nname = \"cache\"\ntype = \"redis\"\ntopics = [\"users.user\"]\nurl = \"redis://127.0.0.1:6379\"\nkey_template = \"user:{user_id}\"\n";
    let text = format!("{HEAD}{sink}{sink}");
    assert_eq!(
        error_of(&text),
        "walcast.toml: sink[1].name: found \"cache\", which sink[0] already uses; expected a name unique among sinks"
    );
}

#[test]
fn a_missing_secret_names_the_variable_and_the_key() {
    let source = USERS_SOURCE.replace(
        "url = \"postgres://walcast@127.0.0.1:54329/users\"",
        "url_env = \"USERS_DB_URL\"",
    );
    let text = format!("{HEAD}{source}");
    assert_eq!(
        error_of(&text),
        "walcast.toml: source[0].url_env: environment variable USERS_DB_URL is not set; expected it to hold the connection URL (export USERS_DB_URL=…)"
    );
}

#[test]
fn a_secret_from_the_environment_is_resolved_and_encoded() {
    let text = users_source_with("password_env = \"USERS_DB_PASSWORD\"");
    let config = parse_with_env(&text, &[("USERS_DB_PASSWORD", "s3cr3t/@")]).unwrap();
    assert_eq!(
        config.sources[0].resolved_url,
        "postgres://walcast:s3cr3t%2F%40@127.0.0.1:54329/users"
    );
}

#[test]
fn a_schema_file_that_does_not_exist_is_named_with_where_it_was_looked_for() {
    let source = USERS_SOURCE.replace("UserCreated.avsc", "UserRegistered.avsc");
    let text = format!("{HEAD}{source}");
    assert_eq!(
        error_of(&text),
        "walcast.toml: source[0].table[0].insert: file schemas/users/UserRegistered.avsc does not exist (looked for schemas/users/UserRegistered.avsc); expected the path of an Avro schema (.avsc), relative to the configuration file's directory"
    );
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = format!(
        "{HEAD}{USERS_SOURCE}\n[[sink]]\nname = \"r\"\ntype = \"postgres\"\ntopics = [\"bad topic\"]\nurl = \"mysql://h/db\"\ntable = \"replica\"\nkey = []\n"
    );
    assert_eq!(
        error_of(&text),
        [
            "walcast.toml: sink[0].topics[0]: found \"bad topic\", expected a Kafka topic name: 1 to 249 of letters, digits, '.', '_' and '-'",
            "walcast.toml: sink[0].url: found a URL with scheme \"mysql\", expected one of: postgres://, postgresql://",
            "walcast.toml: sink[0].key: found an empty array, expected the event fields that form the replica's primary key",
        ]
        .join("\n")
    );
}

#[test]
fn an_unknown_sink_type_lists_the_types() {
    let text = format!("{HEAD}[[sink]]\nname = \"s\"\ntype = \"mongodb\"\ntopics = [\"t\"]\n");
    assert_eq!(
        error_of(&text),
        "walcast.toml: sink[0].type: found \"mongodb\", expected one of: postgres, mysql, redis"
    );
}

#[test]
fn properties_that_would_weaken_delivery_are_refused() {
    let text = HEAD.replace(
        "brokers = \"127.0.0.1:9092\"",
        "brokers = \"127.0.0.1:9092\"\n[kafka.properties]\n\"acks\" = 1",
    );
    assert_eq!(
        error_of(&text),
        "walcast.toml: kafka.properties.\"acks\": found 1, but walcast never loses an acknowledged change: idempotence stays on and acks stays \"all\"; remove this property"
    );
}

#[test]
fn invalid_toml_is_located() {
    assert_eq!(
        error_of("[kafka]\nbrokers = \n"),
        "walcast.toml:2: not valid TOML: string values must be quoted, expected literal string"
    );
}

/// Every key each table accepts, as the parser itself lists them for an unknown key.
fn accepted_keys(text: &str) -> Vec<String> {
    let err = error_of(text);
    let (_, list) = err
        .split_once("expected one of: ")
        .unwrap_or_else(|| panic!("not an unknown-key error: {err}"));
    list.split(", ").map(str::to_string).collect()
}

#[test]
fn every_accepted_key_is_documented_in_the_example() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"))
            .unwrap();
    let documented = |key: &str| {
        example.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.starts_with(&format!("{key} "))
                || line.starts_with(&format!("{key}="))
                || line.contains(&format!(".{key}]"))
        })
    };
    let sink = |kind: &str, extra: &str| {
        format!("{HEAD}[[sink]]\nname = \"s\"\ntype = \"{kind}\"\ntopics = [\"t\"]\nurl = \"x://h\"\n{extra}zzz = 1\n")
    };
    let tables = [
        format!("{HEAD}zzz = 1\n"),
        HEAD.replace("brokers =", "zzz = 1\nbrokers ="),
        HEAD.replace("url =", "zzz = 1\nurl ="),
        format!("{HEAD}[admin]\nzzz = 1\n"),
        format!("{HEAD}[kafka.topic_defaults]\nzzz = 1\n"),
        format!("{HEAD}[[source]]\nname = \"u\"\nzzz = 1\n"),
        format!("{HEAD}{USERS_SOURCE}zzz = 1\n"),
        sink("postgres", "table = \"t\"\nkey = [\"k\"]\n"),
        sink("mysql", "table = \"t\"\nkey = [\"k\"]\n"),
        sink("redis", "key_template = \"k:{k}\"\n"),
    ];
    let mut missing = Vec::new();
    for text in &tables {
        for key in accepted_keys(text) {
            if !documented(&key) {
                missing.push(key);
            }
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "config.example.toml does not document: {missing:?}"
    );
}

#[test]
fn the_compose_deployment_configuration_is_valid() {
    // docker/walcast.toml is mounted beside the image's schemas/, as the repository root has them.
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/walcast.toml"))
            .unwrap();
    let config = parse_with_env(&text, &[("USERS_DB_PASSWORD", "walcast")])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.sources[0].resolved_url,
        "postgres://walcast:walcast@users-db:5432/users"
    );
    assert!(!config.registry.embedded);
}

/// The users source with `extra` keys added to its `[[source]]` table.
fn users_source_with(extra: &str) -> String {
    let url = "url = \"postgres://walcast@127.0.0.1:54329/users\"";
    format!(
        "{HEAD}{}",
        USERS_SOURCE.replace(url, &format!("{url}\n{extra}"))
    )
}

#[test]
fn tls_settings_are_checked() {
    assert_eq!(
        error_of(&users_source_with("tls_mode = \"verify\"")),
        "walcast.toml:11: source[0].tls_mode: found \"verify\", expected one of: disable, prefer, require, verify-full"
    );
    assert_eq!(
        error_of(&users_source_with("tls_mode = \"verify-full\"\ntls_ca_file = \"certs/db-ca.pem\"")),
        "walcast.toml: source[0].tls_ca_file: file certs/db-ca.pem does not exist (looked for certs/db-ca.pem); expected a PEM certificate"
    );
    assert_eq!(
        error_of(&users_source_with("tls_ca_file = \"schemas/users/UserKey.avsc\"")),
        "walcast.toml: source[0].tls_ca_file: is only used with tls_mode = \"verify-full\"; set that too, or remove tls_ca_file"
    );
}

#[test]
fn sink_tls_settings_are_checked() {
    let sink = |kind: &str, url: &str, extra: &str| {
        format!("{HEAD}[[sink]]\nname = \"s\"\ntype = \"{kind}\"\ntopics = [\"t\"]\nurl = \"{url}\"\n{extra}")
    };
    let table = "table = \"replica\"\nkey = [\"user_id\"]\n";
    assert_eq!(
        error_of(&sink("postgres", "postgres://h/db", &format!("{table}tls_mode = \"verify\"\n"))),
        "walcast.toml: sink[0].tls_mode: found \"verify\", expected one of: disable, prefer, require, verify-full"
    );
    assert_eq!(
        error_of(&sink("mysql", "mysql://h/db", &format!("{table}tls_mode = \"verify-full\"\ntls_ca_file = \"certs/db-ca.pem\"\n"))),
        "walcast.toml: sink[0].tls_ca_file: file certs/db-ca.pem does not exist (looked for certs/db-ca.pem); expected a PEM certificate"
    );
    assert_eq!(
        error_of(&sink("postgres", "postgres://h/db", &format!("{table}tls_mode = \"require\"\ntls_ca_file = \"docker/compose.yaml\"\n"))),
        "walcast.toml: sink[0].tls_ca_file: docker/compose.yaml holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    );
    assert_eq!(
        error_of(&sink("postgres", "postgres://h/db", &format!("{table}tls_ca_file = \"scripts/stack\"\n"))),
        "walcast.toml: sink[0].tls_ca_file: scripts/stack holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    );
    assert_eq!(
        error_of(&sink("redis", "redis://h:6379", "key_template = \"u:{id}\"\ntls_ca_file = \"missing.pem\"\n")),
        "walcast.toml: sink[0].tls_ca_file: file missing.pem does not exist (looked for missing.pem); expected a PEM certificate"
    );
    assert_eq!(
        error_of(&sink("redis", "rediss://h:6379", "key_template = \"u:{id}\"\ntls_mode = \"require\"\n")),
        "walcast.toml: sink[0].tls_mode: unknown key; expected one of: url, url_env, password_env, key_template, fields, ttl_secs, tombstone_ttl_secs, tls_ca_file, name, topics, group, on_error, dead_letter_topic, batch_max_records, batch_max_wait_ms, parallelism"
    );
    assert_eq!(
        error_of(&sink("redis", "https://h:6379", "key_template = \"u:{id}\"\n")),
        "walcast.toml: sink[0].url: found a URL with scheme \"https\", expected one of: redis://, rediss://"
    );
}

#[test]
fn the_registrys_storage_topic_must_be_a_kafka_topic_name() {
    let text = HEAD.replace(
        "url = \"http://127.0.0.1:8081\"",
        "url = \"http://127.0.0.1:8081\"\ntopic = \"schemas store\"",
    );
    assert_eq!(
        error_of(&text),
        "walcast.toml: registry.topic: found \"schemas store\", expected a Kafka topic name: 1 to 249 of letters, digits, '.', '_' and '-'"
    );
}

#[test]
fn a_sinks_parallelism_must_be_1_to_64() {
    let text = format!(
        "{HEAD}{USERS_SOURCE}\n[[sink]]\nname = \"r\"\ntype = \"postgres\"\ntopics = [\"users.user\"]\nurl = \"postgres://h/db\"\ntable = \"replica\"\nkey = [\"user_id\"]\nparallelism = 0\n"
    );
    assert_eq!(
        error_of(&text),
        "walcast.toml: sink[0].parallelism: found 0, expected 1 to 64 (connections to the store)"
    );
}

/// The Grafana dashboard of the compose deployment charts every metric walcast exports,
/// and every file compose mounts for Prometheus and Grafana exists.
#[test]
fn the_dashboard_charts_every_metric_and_compose_mounts_real_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/dashboards/walcast.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    for metric in [
        "walcast_source_slot_lag_bytes",
        "walcast_source_retained_wal_bytes",
        "walcast_source_confirmed_lsn",
        "walcast_source_events_total",
        "walcast_publish_latency_seconds",
        "walcast_sink_applied_total",
        "walcast_sink_lag_records",
        "walcast_sink_apply_seconds",
        "walcast_sink_poison_total",
        "walcast_sink_freshness_seconds",
        "walcast_snapshot_rows_total",
        "walcast_part_up",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel charts {metric}"
        );
    }
    let compose = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    for mount in compose
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix("./"))
        .chain(compose.lines().filter_map(|l| l.split("[\"./").nth(1)))
    {
        let path = mount.split(':').next().unwrap();
        assert!(
            root.join(path).exists(),
            "compose mounts ./{path}, which is missing"
        );
    }
}

#[test]
fn a_source_url_may_list_several_hosts() {
    let url = "url = \"postgres://walcast@127.0.0.1:54329/users\"";
    let text = format!(
        "{HEAD}{}",
        USERS_SOURCE.replace(
            url,
            "url = \"postgres://walcast@db-a:5432,db-b:5433/users?target_session_attrs=read-write\"\npassword_env = \"USERS_DB_PASSWORD\"\nslot_failover = true"
        )
    );
    let config = parse_with_env(&text, &[("USERS_DB_PASSWORD", "pw")]).unwrap();
    assert_eq!(
        config.sources[0].resolved_url,
        "postgres://walcast:pw@db-a:5432,db-b:5433/users?target_session_attrs=read-write"
    );
    assert!(config.sources[0].slot_failover);
    let primary = text
        .replace("read-write", "primary")
        .replace("password_env = \"USERS_DB_PASSWORD\"\n", "");
    assert_eq!(
        error_of(&primary),
        "walcast.toml: source[0].url: found target_session_attrs=primary, expected one of: read-write, read-only, any (read-write finds the primary)"
    );
    let random = primary.replace("=primary", "=read-write&load_balance_hosts=random");
    assert_eq!(
        error_of(&random),
        "walcast.toml: source[0].url: found load_balance_hosts=random, expected the hosts tried in the order written (remove it): both of the source's connections must reach the same server"
    );
}
