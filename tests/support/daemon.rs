//! `walcast run` as a child process over a fresh `users` database, with its own slot and
//! topics, publishing to the stack's broker and registry. Tests write rows, kill or stop the
//! daemon, and read the topic back with Confluent's Python client.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{unique, Stack};

/// The demo's `users` table, owned by the walcast role.
pub const USERS_DDL: &str = "CREATE TABLE users (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  full_name     text        NOT NULL,
  email         text        NOT NULL,
  password_hash text        NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
)";

/// A `[[sink]]` of `kind` (postgres or mysql) named `name`, reading `topic` into table
/// `user_replica` at `url`, keyed by `user_id`, keeping `user_id` and `name`, created by
/// the sink.
pub fn user_replica_sink(name: &str, kind: &str, topic: &str, url: &str) -> String {
    format!(
        "\n[[sink]]\nname = \"{name}\"\ntype = \"{kind}\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\nfields = [\"user_id\", \"name\"]\nauto_create = true\nbatch_max_wait_ms = 50\n"
    )
}

/// A daemon under test.
pub struct Daemon {
    pub name: String,
    pub db: String,
    pub topic: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The registry the daemon publishes through.
    pub registry_url: String,
    /// The brokers the daemon publishes to.
    pub brokers: String,
    /// `http://host:port` of the admin endpoint, with [`Setup::admin`].
    pub admin: Option<String>,
    child: Option<Child>,
    pub log: PathBuf,
    /// The stack, with the cluster the daemon's source is on.
    stack: Stack,
}

/// How the test's configuration differs from the default.
#[derive(Default, Clone)]
pub struct Setup {
    /// Extra `[[source.table]]` keys, e.g. a different `columns` mapping.
    pub table_keys: Option<String>,
    /// Replaces a contract file: (file name, content).
    pub contracts: Vec<(&'static str, String)>,
    pub compacted: bool,
    /// Serve walcast's own registry from the daemon, on a port and topic of the test's own.
    pub embedded_registry: bool,
    /// `kafka.exactly_once = true`.
    pub exactly_once: bool,
    /// Another broker than the stack's (one the test starts and stops).
    pub brokers: Option<String>,
    /// Serve the admin endpoint on a free port of the test's own (`Daemon::admin`); by
    /// default it listens on port 0, which nothing reads.
    pub admin: bool,
    /// Extra `[admin]` keys, e.g. `log_format = "json"`.
    pub admin_keys: String,
    /// The source reaches PostgreSQL at this `host:port` (a fault proxy) instead of the
    /// stack's address.
    pub pg_addr: Option<String>,
    /// Another registry URL than the stack's (a fault proxy in front of it).
    pub registry_url: Option<String>,
    /// The stack's cluster of this PostgreSQL major instead of the run's (`Stack::pg_of`).
    pub pg_major: Option<u32>,
    /// The source's `url`, when not the stack's database (a cluster of the test's own; the
    /// test creates the users table there). `Daemon::start` waits on the stack's database,
    /// so such a test spawns the daemon and waits itself.
    pub source_url: Option<String>,
    /// Extra `[[source]]` keys, e.g. `slot_failover = true`.
    pub source_keys: String,
}

impl Daemon {
    /// A fresh database with the users table, and a configuration for it (not started).
    pub async fn prepare(prefix: &str, setup: Setup) -> Daemon {
        let on = match setup.pg_major {
            Some(major) => Stack::get().for_major(major),
            None => Stack::get().clone(),
        };
        let stack = &on;
        let name = unique(prefix);
        let db = stack.fresh_pg_database(&name).await;
        stack
            .pg(&db)
            .await
            .batch_execute(&format!(
                "{USERS_DDL}; ALTER TABLE users OWNER TO walcast; GRANT CREATE ON DATABASE {name} TO walcast;"
            ))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/users");
        for file in [
            "UserKey.avsc",
            "UserCreated.avsc",
            "UserUpdated.avsc",
            "UserDeleted.avsc",
        ] {
            std::fs::copy(format!("{root}/{file}"), dir.path().join(file)).unwrap();
        }
        for (file, content) in &setup.contracts {
            std::fs::write(dir.path().join(file), content).unwrap();
        }
        let topic = format!("{name}.user");
        let table_keys = setup
            .table_keys
            .clone()
            .unwrap_or_else(|| "columns = { user_id = \"id\", name = \"full_name\" }".into());
        let compaction = if setup.compacted {
            format!("[kafka.topic.\"{topic}\"]\ncleanup_policy = \"compact\"\n")
        } else {
            String::new()
        };
        let (registry_url, registry_keys) = if setup.embedded_registry {
            let port = super::free_port();
            let url = format!("http://127.0.0.1:{port}");
            (
                url.clone(),
                format!("url = \"{url}\"\nembedded = true\ntopic = \"_schemas_{name}\"\n"),
            )
        } else {
            let url = setup
                .registry_url
                .clone()
                .unwrap_or_else(|| stack.registry_url.clone());
            (url.clone(), format!("url = \"{url}\"\n"))
        };
        let brokers = setup
            .brokers
            .clone()
            .unwrap_or_else(|| stack.kafka_brokers.clone());
        let exactly_once = if setup.exactly_once {
            "exactly_once = true\n"
        } else {
            ""
        };
        let admin_port = if setup.admin { super::free_port() } else { 0 };
        let admin_listen = format!("127.0.0.1:{admin_port}");
        let admin_keys = &setup.admin_keys;
        let config = dir.path().join("walcast.toml");
        std::fs::write(
            &config,
            format!(
                r#"[admin]
listen = "{admin_listen}"
{admin_keys}
[kafka]
brokers = "{brokers}"
{exactly_once}[kafka.properties]
"linger.ms" = 5
{compaction}
[registry]
{registry_keys}
[[source]]
name = "{name}"
url = "{url}"
slot = "{name}"
snapshot = "never"
status_interval_ms = 200
{source_keys}

[[source.table]]
table = "public.users"
topic = "{topic}"
key = "UserKey.avsc"
insert = "UserCreated.avsc"
update = "UserUpdated.avsc"
delete = "UserDeleted.avsc"
{table_keys}
"#,
                url = match (&setup.source_url, &setup.pg_addr) {
                    (Some(url), _) => url.clone(),
                    (None, Some(addr)) => format!("postgres://walcast@{addr}/{db}"),
                    (None, None) => stack.pg_url_for("walcast", &db),
                },
                source_keys = setup.source_keys,
            ),
        )
        .unwrap();
        let log = dir.path().join("walcast.log");
        Daemon {
            name,
            db,
            topic,
            dir,
            config,
            registry_url,
            brokers,
            admin: setup.admin.then(|| format!("http://{admin_listen}")),
            child: None,
            log,
            stack: on,
        }
    }

    /// A second instance on the same configuration, database, slot and topic (not started),
    /// logging to a file of its own.
    pub fn twin(&self) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("walcast.log");
        Daemon {
            name: self.name.clone(),
            db: self.db.clone(),
            topic: self.topic.clone(),
            dir,
            config: self.config.clone(),
            registry_url: self.registry_url.clone(),
            brokers: self.brokers.clone(),
            admin: self.admin.clone(),
            child: None,
            log,
            stack: self.stack.clone(),
        }
    }

    /// Starts `walcast run` and waits until its slot streams to it (not to the walsender of
    /// a daemon just killed, which the server may not have noticed yet).
    pub async fn start(&mut self) {
        self.start_with(&[]).await;
    }

    /// Starts `walcast run` without waiting for anything.
    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    /// [`Daemon::start`] with extra environment variables (secrets the configuration names).
    pub async fn start_with(&mut self, env: &[(&str, &str)]) {
        let pg = self.stack.pg(&self.db).await;
        let before: Option<i32> = pg
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .unwrap()
            .and_then(|row| row.get(0));
        self.spawn_with(env);
        self.wait_streaming(&pg, before).await;
    }

    /// [`Daemon::spawn`] with extra environment variables.
    pub fn spawn_with(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    async fn wait_streaming(&mut self, pg: &tokio_postgres::Client, before: Option<i32>) {
        let (name, log) = (self.name.clone(), self.log.clone());
        let child = self.child.as_mut().unwrap();
        super::wait_for(
            Duration::from_secs(60),
            || {
                format!(
                    "slot {name} to stream:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            },
            || {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "walcast run exited with {status} before streaming:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                let name = &name;
                async move {
                    pg.query_opt(
                        "SELECT 1 FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid \
                         WHERE s.slot_name = $1 AND r.state = 'streaming' AND r.pid IS DISTINCT FROM $2",
                        &[name, &before],
                    )
                    .await
                    .unwrap()
                    .map(|_| ())
                }
            },
        )
        .await;
    }

    /// Runs `walcast run` to its end (for configurations it must refuse): exit code, log.
    pub fn run_to_end(&self) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// SIGKILL: no flush, no final confirmation.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        super::wait_for(
            Duration::from_secs(60),
            || "walcast to stop after SIGTERM".to_string(),
            || {
                let status = child.try_wait().unwrap();
                async move { status.map(|s| s.code()) }
            },
        )
        .await
    }

    /// Whether the daemon is still running; its exit status otherwise.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Waits (30 s at most) for the daemon to exit on its own, as it must after `why`;
    /// its exit status.
    pub async fn stops(&mut self, why: &str) -> std::process::ExitStatus {
        let log = self.log.clone();
        super::wait_for(
            Duration::from_secs(30),
            || {
                format!(
                    "walcast to stop {why}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            },
            || {
                let exited = self.exited();
                async move { exited }
            },
        )
        .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        self.stack.pg(&self.db).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One event as Confluent's Python client decoded it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Decoded {
    pub partition: i32,
    pub offset: i64,
    pub key: serde_json::Value,
    pub value: Option<serde_json::Value>,
    pub headers: std::collections::HashMap<String, String>,
}

/// Reads `topic` from the beginning with confluent-kafka's AvroDeserializer until `n`
/// records arrived (and a little longer, to catch extras), in per-partition offset order.
pub async fn decode(topic: &str, n: usize) -> Vec<Decoded> {
    decode_with(&Stack::get().registry_url, topic, n).await
}

/// [`decode`] through the registry at `registry`.
pub async fn decode_with(registry: &str, topic: &str, n: usize) -> Vec<Decoded> {
    decode_from(registry, &Stack::get().kafka_brokers, topic, n).await
}

/// [`decode`] from `brokers` through the registry at `registry`.
pub async fn decode_from(registry: &str, brokers: &str, topic: &str, n: usize) -> Vec<Decoded> {
    let stack = Stack::get();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/consume_events.py"
    );
    let out = tokio::process::Command::new(&stack.python)
        .args([script, registry, brokers, topic, &n.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "consume_events.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
