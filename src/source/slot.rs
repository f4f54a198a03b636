//! How walcast's slot is made, and what the server it is made on must be: failover slots
//! (PostgreSQL 17+) and decoding on a physical standby (16+).
//!
//! # Failover slots
//! With `slot_failover = true` the slot is created with `FAILOVER true`, so a standby with
//! `sync_replication_slots = on` keeps a copy of it, and after the standby's promotion the
//! source resumes from that copy (its URL lists both servers with
//! `target_session_attrs=read-write`; see [`super::hosts`]). The copy lags the primary's
//! slot a little, which only resends transactions (skipped by exactly-once, absorbed by
//! replicas). It never runs ahead of what walcast confirmed, because only walcast advances
//! the primary's slot. With `synchronized_standby_slots` naming the standby's physical slot,
//! the primary also sends walcast nothing the standby has not received, so nothing in Kafka
//! can be missing from the promoted standby.
//!
//! An existing slot without the flag is altered (`ALTER_REPLICATION_SLOT … (FAILOVER
//! true)`, on the replication connection, before streaming): that only adds the copy on the
//! standby. `slot_failover = false` never clears the flag of a slot someone made a failover
//! slot by hand. Servers before 17 have no failover slots, and a standby cannot create
//! one: both are refused before anything is created.
//!
//! # Decoding on a standby
//! From 16 on, a logical slot can live on a physical standby, so the primary carries no
//! decoding load. The source finds out by itself (`pg_is_in_recovery()`), and then:
//! - the publication is not created (a standby is read-only): it must exist, created on the
//!   primary, and the error says the exact `CREATE PUBLICATION` to run there;
//! - `hot_standby_feedback` must be on, or the primary's vacuum removes catalog rows the
//!   slot needs and the standby invalidates the slot (refused with the fix);
//! - the heartbeat and the signal table write, so they are refused with the fix;
//! - creating the slot waits for the primary's next running-transactions record (the
//!   bgwriter logs one every 15 s while the primary writes); `SELECT
//!   pg_log_standby_snapshot()` on the primary makes one at once.
//!
//! The server facts are read once per session ([`ServerRole::read`]), on the catalog
//! connection, which reaches the same server as the replication connection.

use super::catalog::Catalog;
use super::error::SourceError;
use super::protocol::quote_ident;

/// The first major with failover slots.
pub const FAILOVER_MAJOR: u32 = 17;
/// The first major that decodes on a standby.
pub const STANDBY_DECODING_MAJOR: u32 = 16;

/// What the server the source reached is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRole {
    /// `server_version_num / 10000`, e.g. 17.
    pub major: u32,
    /// `pg_is_in_recovery()`: a standby.
    pub standby: bool,
    /// `hot_standby_feedback` is on.
    pub hot_standby_feedback: bool,
}

impl ServerRole {
    /// Reads the server's major and role on the catalog connection.
    pub async fn read(catalog: &Catalog) -> Result<Self, SourceError> {
        let row = catalog
            .client()
            .query_one(
                "SELECT current_setting('server_version_num')::int / 10000, pg_is_in_recovery(), \
                        current_setting('hot_standby_feedback')::bool",
                &[],
            )
            .await
            .map_err(super::catalog::catalog_error)?;
        Ok(Self {
            major: row.get::<_, i32>(0).max(0) as u32,
            standby: row.get(1),
            hot_standby_feedback: row.get(2),
        })
    }
}

/// What the source's configuration asks of its slot and server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotWishes {
    /// `slot_failover`.
    pub failover: bool,
    /// The heartbeat is on (it writes).
    pub heartbeat: bool,
    /// A signal table is configured (requests are written to it).
    pub signal_table: bool,
}

/// Refuses a server that cannot hold the slot the configuration asks for, naming the fix.
pub fn check_server(
    source: &str,
    slot: &str,
    role: &ServerRole,
    wishes: SlotWishes,
) -> Result<(), SourceError> {
    if wishes.failover && role.major < FAILOVER_MAJOR {
        return Err(SourceError::setup(
            format!("source {source}: slot_failover = true, but PostgreSQL {} has no failover slots (they came with 17)", role.major),
            "set slot_failover = false, or upgrade the server to PostgreSQL 17 or later",
        ));
    }
    if !role.standby {
        return Ok(());
    }
    if role.major < STANDBY_DECODING_MAJOR {
        return Err(SourceError::setup(
            format!("source {source}: the source's url reaches a standby (pg_is_in_recovery() is true), and PostgreSQL {} decodes only on a primary (standbys decode from 16 on)", role.major),
            "point the source's url at the primary (with several hosts, add target_session_attrs=read-write), or upgrade to PostgreSQL 16 or later",
        ));
    }
    if wishes.failover {
        return Err(SourceError::setup(
            format!("source {source}: slot_failover = true, but the source's url reaches a standby, and PostgreSQL creates failover slots only on a primary"),
            "set slot_failover = false to decode on the standby, or point the url at the primary (target_session_attrs=read-write)",
        ));
    }
    if !role.hot_standby_feedback {
        return Err(SourceError::setup(
            format!("source {source}: the source's url reaches a standby whose hot_standby_feedback is off, so the primary may remove catalog rows slot {slot} needs, and the standby would invalidate the slot"),
            "on the standby run ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf(); and give it a physical slot on the primary (primary_slot_name)",
        ));
    }
    if wishes.heartbeat {
        return Err(SourceError::setup(
            format!("source {source}: the heartbeat writes, and the source's url reaches a standby, which is read-only"),
            "set heartbeat_interval_ms = 0 for a source that decodes on a standby",
        ));
    }
    if wishes.signal_table {
        return Err(SourceError::setup(
            format!("source {source}: on-demand snapshots write to the signal table, and the source's url reaches a standby, which is read-only"),
            "remove signal_table from a source that decodes on a standby",
        ));
    }
    Ok(())
}

/// `CREATE_REPLICATION_SLOT` for a pgoutput slot: `snapshot` is `export` or `nothing`, and
/// `failover` adds `FAILOVER true` (17+, checked by [`check_server`] before).
pub fn create_sql(slot: &str, snapshot: &str, failover: bool) -> String {
    let failover = if failover { "FAILOVER true, " } else { "" };
    format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput ({failover}SNAPSHOT '{snapshot}')",
        quote_ident(slot)
    )
}

/// `ALTER_REPLICATION_SLOT` making `slot` a failover slot (17+).
pub fn make_failover_sql(slot: &str) -> String {
    format!(
        "ALTER_REPLICATION_SLOT {} (FAILOVER true)",
        quote_ident(slot)
    )
}

/// Whether `slot` is a failover slot; `None` when it does not exist. Servers before 17 have
/// no such column, and their slots never are.
pub async fn is_failover(catalog: &Catalog, slot: &str) -> Result<Option<bool>, SourceError> {
    let row = catalog
        .client()
        .query_opt(
            "SELECT coalesce((to_jsonb(s) ->> 'failover')::bool, false) FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(super::catalog::catalog_error)?;
    Ok(row.map(|r| r.get(0)))
}

/// Makes an existing slot a failover slot when `slot_failover` asks and it is not one yet,
/// on the replication connection (the slot must be free: run before streaming). Never
/// clears the flag.
pub async fn ensure_failover(
    catalog: &Catalog,
    conn: &mut super::protocol::ReplicationConn,
    settings: &super::SourceSettings,
) -> Result<(), SourceError> {
    if !settings.slot_failover {
        return Ok(());
    }
    let waits_for_standbys = catalog
        .client()
        .query_one(
            "SELECT coalesce(current_setting('synchronized_standby_slots', true), '') <> ''",
            &[],
        )
        .await
        .map_err(super::catalog::catalog_error)?
        .get::<_, bool>(0);
    if !waits_for_standbys {
        tracing::warn!(source = %settings.name, slot = %settings.slot, "slot_failover = true, but the primary's synchronized_standby_slots is empty: walcast may receive changes a standby lacks, and after a failover Kafka could hold changes the promoted standby never had; set it to the standbys' physical slots (walcast check --connect says what else slot synchronisation lacks)");
    }
    if is_failover(catalog, &settings.slot).await? != Some(false) {
        return Ok(());
    }
    conn.make_failover(&settings.slot).await?;
    tracing::info!(source = %settings.name, slot = %settings.slot, "made the existing slot a failover slot (slot_failover = true): standbys with sync_replication_slots = on now keep a copy");
    Ok(())
}

/// On a standby, which cannot create it: the publication must exist (made on the primary,
/// whose catalog the standby replays). Its tables are verified afterwards as on a primary.
pub async fn publication_exists(
    catalog: &Catalog,
    source: &str,
    publication: &str,
    tables: &[super::catalog::TableName],
) -> Result<(), SourceError> {
    let exists = catalog
        .client()
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(super::catalog::catalog_error)?
        .is_some();
    if exists {
        return Ok(());
    }
    let list: Vec<String> = tables.iter().map(|t| t.sql()).collect();
    Err(SourceError::setup(
        format!("source {source}: publication {publication} does not exist, and the source's url reaches a standby, which cannot create it"),
        format!(
            "on the primary run CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(publication),
            list.join(", ")
        ),
    ))
}

/// The message logged while a slot is created on a standby, which can take a while.
pub const STANDBY_CREATE_WAIT: &str = "creating the slot on a standby waits for the primary's next running-transactions record (every 15 s while the primary writes); SELECT pg_log_standby_snapshot() on the primary makes one at once";

#[cfg(test)]
mod tests {
    use super::*;

    fn role(major: u32, standby: bool) -> ServerRole {
        ServerRole {
            major,
            standby,
            hot_standby_feedback: true,
        }
    }

    const FAILOVER: SlotWishes = SlotWishes {
        failover: true,
        heartbeat: false,
        signal_table: false,
    };

    #[test]
    fn failover_slots_need_17_and_a_primary() {
        for major in [15, 16] {
            let e = check_server("s", "x", &role(major, false), FAILOVER).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("PostgreSQL {major} has no failover slots")),
                "{e}"
            );
            assert!(!e.is_transient());
        }
        assert!(check_server("s", "x", &role(17, false), FAILOVER).is_ok());
        assert!(check_server("s", "x", &role(18, false), FAILOVER).is_ok());
        let e = check_server("s", "x", &role(17, true), FAILOVER).unwrap_err();
        assert!(e.to_string().contains("only on a primary"), "{e}");
    }

    #[test]
    fn a_standby_decodes_from_16_with_feedback_and_without_writes() {
        let none = SlotWishes::default();
        let e = check_server("s", "x", &role(15, true), none).unwrap_err();
        assert!(e.to_string().contains("decodes only on a primary"), "{e}");
        assert!(check_server("s", "x", &role(16, true), none).is_ok());
        let mut no_feedback = role(16, true);
        no_feedback.hot_standby_feedback = false;
        let e = check_server("s", "x", &no_feedback, none).unwrap_err();
        assert!(e.to_string().contains("hot_standby_feedback = on"), "{e}");
        let heartbeat = SlotWishes {
            heartbeat: true,
            ..none
        };
        let e = check_server("s", "x", &role(17, true), heartbeat).unwrap_err();
        assert!(e.to_string().contains("heartbeat_interval_ms = 0"), "{e}");
        // A primary without feedback is fine: the setting is the standby's.
        let mut primary = role(15, false);
        primary.hot_standby_feedback = false;
        assert!(check_server("s", "x", &primary, heartbeat).is_ok());
    }

    #[test]
    fn the_slot_is_created_with_failover_only_when_asked() {
        assert_eq!(
            create_sql("a\"b", "export", true),
            "CREATE_REPLICATION_SLOT \"a\"\"b\" LOGICAL pgoutput (FAILOVER true, SNAPSHOT 'export')"
        );
        assert_eq!(
            create_sql("s", "nothing", false),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'nothing')"
        );
        assert_eq!(
            make_failover_sql("s"),
            "ALTER_REPLICATION_SLOT \"s\" (FAILOVER true)"
        );
    }
}
