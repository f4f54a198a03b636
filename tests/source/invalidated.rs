//! Spec: a slot PostgreSQL invalidated (its WAL was removed, or, from PostgreSQL 18, it was
//! idle too long) is refused with the reason and the way out.
//!
//! Invalidating a slot needs a small `max_slot_wal_keep_size`, which would endanger every
//! other slot on the shared stack cluster, so this test runs a throwaway cluster of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::targets::OwnPostgres;
use crate::support::{source_settings, wait_until, Stack};
use walcast::source::prepare;

/// A PostgreSQL cluster in a temporary directory, stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn start(bin: &Path, settings: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/var/tmp/walcast-test-cluster-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let try_run = |args: &[&str]| {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        let run = |args: &[&str]| assert!(try_run(args), "{args:?}");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap()
            .success());
        let data = dir.join("data");
        run(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
        ]);
        let base_conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        let log = dir.join("log");
        // A port the kernel says is free now (a fixed one can be any client's ephemeral
        // port); another process may still take it first, so a failed start tries another.
        let mut attempt = 0;
        let port = loop {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = logical\n{settings}\n",
                dir.display()
            );
            std::fs::write(data.join("postgresql.conf"), format!("{base_conf}{conf}")).unwrap();
            let started = try_run(&[
                bin.join("pg_ctl").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ]);
            attempt += 1;
            if started {
                break port;
            }
            assert!(
                attempt < 5,
                "the throwaway cluster did not start; see {}",
                log.display()
            );
        };
        Cluster {
            bin: bin.to_path_buf(),
            dir,
            port,
        }
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.dir.join("data").to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn an_invalidated_slot_is_refused_with_the_way_out() {
    let stack = Stack::get();
    let cluster = Cluster::start(
        &stack.pg_bin,
        "max_slot_wal_keep_size = 1MB\nmax_wal_size = 32MB\nmin_wal_size = 32MB",
    );
    let (pg, conn) = tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // One statement per call: a multi-statement string is one transaction, and a slot is
    // not created in a transaction that has written.
    for sql in [
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "CREATE PUBLICATION lost FOR TABLE t",
        "SELECT pg_create_logical_replication_slot('lost', 'pgoutput')",
    ] {
        pg.batch_execute(sql).await.unwrap();
    }

    // Write WAL past the slot's allowance and checkpoint until PostgreSQL removes what the
    // slot still needs.
    let mut status = String::new();
    for _ in 0..10 {
        for sql in [
            "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g ON CONFLICT (id) DO UPDATE SET v = excluded.v",
            "SELECT pg_switch_wal()",
            "CHECKPOINT",
        ] {
            pg.batch_execute(sql).await.unwrap();
        }
        status = pg
            .query_one("SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = 'lost'", &[])
            .await
            .unwrap()
            .get(0);
        if status == "lost" {
            break;
        }
    }
    assert_eq!(status, "lost", "PostgreSQL did not invalidate the slot");

    let mut settings = source_settings(stack, "orders", "postgres", &["public.t"]);
    settings.url = cluster.url("postgres");
    settings.slot = "lost".into();
    settings.publication = "lost".into();
    let err = prepare(&settings)
        .await
        .expect_err("an invalidated slot must be refused");
    assert!(!err.is_transient());
    assert_eq!(
        err.to_string(),
        "source orders: replication slot lost was invalidated: the WAL it needed has been removed\n  hint: run walcast slot recreate --source orders --snapshot and restart: a new slot reads every table in a snapshot (rows deleted in the gap stay in the replicas: see README, Slot safety); raise max_slot_wal_keep_size so it does not happen again"
    );
}

/// PostgreSQL 18 invalidates a slot left idle longer than `idle_replication_slot_timeout`
/// (a walcast stopped over a weekend): the refusal names that setting, not removed WAL.
#[tokio::test]
async fn a_slot_invalidated_for_idling_is_refused_naming_the_timeout() {
    let stack = Stack::get();
    let cluster = OwnPostgres::start_major_settings(
        &format!("idle_slot_{}", std::process::id()),
        18,
        &[
            ("wal_level", "logical"),
            ("idle_replication_slot_timeout", "1"),
        ],
    )
    .await;
    let pg = cluster.client("postgres").await;
    for sql in [
        "CREATE TABLE t (id int PRIMARY KEY)",
        "CREATE PUBLICATION idle FOR TABLE t",
        "SELECT pg_create_logical_replication_slot('idle', 'pgoutput')",
    ] {
        pg.batch_execute(sql).await.unwrap();
    }
    // Idle invalidation happens at checkpoints, once the slot was inactive for a second.
    wait_until(
        "PostgreSQL 18 to invalidate the idle slot",
        std::time::Duration::from_secs(60),
        || {
            let pg = &pg;
            async move {
                pg.batch_execute("CHECKPOINT").await.unwrap();
                pg.query_one(
                    "SELECT coalesce(invalidation_reason, '') = 'idle_timeout' FROM pg_replication_slots WHERE slot_name = 'idle'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
            }
        },
    )
    .await;

    let mut settings = source_settings(stack, "orders", "postgres", &["public.t"]);
    settings.url = cluster.url("postgres");
    settings.slot = "idle".into();
    settings.publication = "idle".into();
    let err = prepare(&settings)
        .await
        .expect_err("an invalidated slot must be refused");
    assert!(!err.is_transient());
    assert_eq!(
        err.to_string(),
        "source orders: replication slot idle was invalidated: it was idle for longer than idle_replication_slot_timeout\n  hint: run walcast slot recreate --source orders --snapshot and restart: a new slot reads every table in a snapshot (rows deleted in the gap stay in the replicas: see README, Slot safety); raise idle_replication_slot_timeout (or set it to 0) so a stopped walcast keeps its slot"
    );
}
