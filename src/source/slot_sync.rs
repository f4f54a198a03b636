//! What slot synchronisation (PostgreSQL 17+) needs, checked on every server of the source's
//! URL, for `walcast check --connect` with `slot_failover = true`.
//!
//! A failover slot is only as good as the standby that keeps its copy. The servers the URL
//! lists are each reached on their own; those in recovery are the standbys. What is
//! missing is named with the statement that fixes it, on the server it must run on:
//! - on the primary, `synchronized_standby_slots` names the standbys' physical slots, so
//!   walcast never receives a change a standby lacks (otherwise Kafka could hold changes
//!   the promoted standby never had);
//! - on each standby, `sync_replication_slots = on`, `hot_standby_feedback = on`,
//!   `primary_slot_name` set (and listed on the primary), `dbname=` in
//!   `primary_conninfo`, and `wal_level = logical`.
//!
//! A URL that lists only the primary cannot show the standby: that is said, with what the
//! standby needs, and is not counted a failure.

use std::collections::HashMap;

use super::catalog::Catalog;
use super::hosts::{candidates, Candidate};
use super::SourceSettings;

/// What the check found: problems (each with its fix), and notes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// What is missing, each naming the server and the fix.
    pub problems: Vec<String>,
    /// The standbys found ready, or why none could be checked.
    pub notes: Vec<String>,
}

/// The settings read from one server.
struct Server {
    at: Candidate,
    major: u32,
    standby: bool,
    settings: HashMap<String, String>,
    physical_slots: Vec<String>,
}

impl Server {
    fn setting(&self, name: &str) -> &str {
        self.settings.get(name).map(String::as_str).unwrap_or("")
    }
}

/// One host of `config`'s list, with everything else of the URL kept.
fn one_host(config: &tokio_postgres::Config, at: &Candidate) -> tokio_postgres::Config {
    let mut one = tokio_postgres::Config::new();
    if let Some(user) = config.get_user() {
        one.user(user);
    }
    if let Some(password) = config.get_password() {
        one.password(password);
    }
    if let Some(db) = config.get_dbname() {
        one.dbname(db);
    }
    if let Some(timeout) = config.get_connect_timeout() {
        one.connect_timeout(*timeout);
    }
    one.application_name("walcast check");
    match at {
        Candidate::Tcp { host, port } => one.host(host).port(*port),
        Candidate::Unix { dir, port } => one.host_path(dir).port(*port),
    };
    one
}

async fn read(settings: &SourceSettings, at: &Candidate) -> Result<Server, String> {
    let config: tokio_postgres::Config = settings.url.parse().map_err(|e| format!("{e}"))?;
    let catalog = Catalog::connect_config(one_host(&config, at), &settings.name, &settings.tls)
        .await
        .map_err(|e| e.to_string().replace("\n  hint: ", "; hint: "))?;
    let fail = |e: tokio_postgres::Error| walcast_text::describe(&e);
    let row = catalog
        .client()
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .map_err(fail)?;
    // pg_settings leaves out what the role may not read (primary_conninfo, for one).
    let rows = catalog
        .client()
        .query(
            "SELECT name::text, setting FROM pg_settings WHERE name IN ('wal_level', 'hot_standby_feedback', \
             'sync_replication_slots', 'synchronized_standby_slots', 'primary_slot_name', 'primary_conninfo')",
            &[],
        )
        .await
        .map_err(fail)?;
    let slots = catalog
        .client()
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical'",
            &[],
        )
        .await
        .map_err(fail)?;
    Ok(Server {
        at: at.clone(),
        standby: row.get(0),
        major: row.get::<_, i32>(1).max(0) as u32,
        settings: rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
            .collect(),
        physical_slots: slots.iter().map(|r| r.get(0)).collect(),
    })
}

/// Checks every server of the source's URL for what slot synchronisation needs.
pub async fn check(settings: &SourceSettings) -> Readiness {
    let mut found = Readiness::default();
    let config: tokio_postgres::Config = match settings.url.parse() {
        Ok(c) => c,
        Err(e) => {
            found.problems.push(format!("the url does not parse: {e}"));
            return found;
        }
    };
    let hosts = match candidates(&config) {
        Ok(h) => h,
        Err(e) => {
            found
                .problems
                .push(e.to_string().replace("\n  hint: ", "; hint: "));
            return found;
        }
    };
    let mut servers = Vec::new();
    for at in &hosts {
        match read(settings, at).await {
            Ok(server) => servers.push(server),
            Err(e) => found.problems.push(format!("{at}: not reached ({e})")),
        }
    }
    let primaries: Vec<&Server> = servers.iter().filter(|s| !s.standby).collect();
    let standbys: Vec<&Server> = servers.iter().filter(|s| s.standby).collect();
    let mut listed: Vec<String> = Vec::new();
    for p in &primaries {
        let names: Vec<String> = p
            .setting("synchronized_standby_slots")
            .split(',')
            .map(|n| n.trim().trim_matches('"').to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            let example = p
                .physical_slots
                .first()
                .map(String::as_str)
                .unwrap_or("<the standby's physical slot>");
            found.problems.push(format!(
                "on the primary {}, synchronized_standby_slots is empty, so walcast may receive changes a standby lacks (fix: ALTER SYSTEM SET synchronized_standby_slots = '{example}'; SELECT pg_reload_conf())",
                p.at
            ));
        }
        for name in &names {
            if !p.physical_slots.contains(name) {
                found.problems.push(format!(
                    "on the primary {}, synchronized_standby_slots names {name}, which is not a physical slot there (fix: SELECT pg_create_physical_replication_slot('{name}', true), and primary_slot_name = '{name}' on the standby)",
                    p.at
                ));
            }
        }
        listed.extend(names);
    }
    for s in &standbys {
        let before = found.problems.len();
        if s.major < super::slot::FAILOVER_MAJOR {
            found.problems.push(format!(
                "the standby {} runs PostgreSQL {}, which does not synchronise slots (17+)",
                s.at, s.major
            ));
            continue;
        }
        let fix = |setting: &str| {
            format!("(fix on the standby: ALTER SYSTEM SET {setting}; SELECT pg_reload_conf())")
        };
        if s.setting("sync_replication_slots") != "on" {
            found.problems.push(format!(
                "on the standby {}, sync_replication_slots is off {}",
                s.at,
                fix("sync_replication_slots = on")
            ));
        }
        if s.setting("hot_standby_feedback") != "on" {
            found.problems.push(format!(
                "on the standby {}, hot_standby_feedback is off {}",
                s.at,
                fix("hot_standby_feedback = on")
            ));
        }
        if s.setting("wal_level") != "logical" {
            found.problems.push(format!(
                "on the standby {}, wal_level is {} (fix on the standby: ALTER SYSTEM SET wal_level = logical, then restart it)",
                s.at,
                s.setting("wal_level")
            ));
        }
        let slot = s.setting("primary_slot_name");
        if slot.is_empty() {
            found.problems.push(format!(
                "on the standby {}, primary_slot_name is not set, so the primary cannot wait for it {}",
                s.at,
                fix("primary_slot_name = '<a physical slot on the primary>'")
            ));
        } else if !listed.is_empty() && !listed.iter().any(|n| n == slot) {
            // (An empty list is a problem of its own, named above.)
            found.problems.push(format!(
                "the standby {} streams from the physical slot {slot}, which the primary's synchronized_standby_slots does not name (fix on the primary: ALTER SYSTEM SET synchronized_standby_slots = '{}'; SELECT pg_reload_conf())",
                s.at,
                listed.iter().map(String::as_str).chain([slot]).collect::<Vec<_>>().join(",")
            ));
        }
        if let Some(conninfo) = s.settings.get("primary_conninfo") {
            if !conninfo.contains("dbname=") {
                found.problems.push(format!(
                    "on the standby {}, primary_conninfo names no database, which the slot sync worker needs (fix: add dbname=<a database> to primary_conninfo on the standby and reload it)",
                    s.at
                ));
            }
        }
        if found.problems.len() == before {
            found
                .notes
                .push(format!("standby {} synchronises slots", s.at));
        }
    }
    if primaries.is_empty() && !servers.is_empty() {
        found.problems.push(
            "no server of the url is a primary, and failover slots are created on the primary"
                .into(),
        );
    }
    if standbys.is_empty() && !servers.is_empty() {
        found.notes.push("the url lists no standby to check (it needs sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name, dbname= in primary_conninfo)".into());
    }
    found
}
