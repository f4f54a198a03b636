//! Tests clean up after themselves, also when they fail: every database a test creates on
//! the stack ([`super::Stack::fresh_pg_database`]) is dropped, with the replication slots
//! in it, when the test's thread ends (libtest runs each test on a thread of its own, and a
//! thread's locals are dropped after a panic unwinds it too). An inactive slot keeps every
//! WAL segment since its position, so slots left behind by each run would fill the disk.
//! What a killed test process leaves is removed at the next run's start
//! ([`super::Stack`]'s leftovers pass).

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The databases this thread created, dropped with it.
struct Created {
    psql: PathBuf,
    databases: Vec<(String, String)>,
}

impl Drop for Created {
    fn drop(&mut self) {
        for (server, db) in self.databases.drain(..).rev() {
            drop_database(&self.psql, &server, &db);
        }
    }
}

thread_local! {
    static CREATED: RefCell<Option<Created>> = const { RefCell::new(None) };
}

/// Drops `db` on `server` (`postgres://postgres@host:port`) when this thread ends.
pub fn on_thread_end(psql: PathBuf, server: &str, db: &str) {
    CREATED.with(|created| {
        let mut created = created.borrow_mut();
        let created = created.get_or_insert_with(|| Created {
            psql,
            databases: Vec::new(),
        });
        if !created
            .databases
            .iter()
            .any(|(s, d)| s == server && d == db)
        {
            created.databases.push((server.to_string(), db.to_string()));
        }
    });
}

/// Ends every session on `db`, drops its slots (waiting, 10 s at most, for a walsender of a
/// daemon just killed to let go), then the database.
fn drop_database(psql: &PathBuf, server: &str, db: &str) {
    let run = |sql: &str| {
        std::process::Command::new(psql)
            .args(["-XAtq", "-d", &format!("{server}/postgres"), "-c", sql])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let literal = db.replace('\'', "''");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        run(&format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE database = '{literal}' AND active_pid IS NOT NULL"
        ));
        run(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = '{literal}' AND NOT active"
        ));
        let left = run(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE database = '{literal}'"
        ));
        if left == "0" || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        db.replace('"', "\"\"")
    ));
}
