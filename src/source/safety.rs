//! Slot safety: a slot that is gone is never recreated silently, and a source never resumes
//! in another LSN space than the one its events in Kafka came from.
//!
//! # Why
//! A replica keeps a row only over an older `(lsn, seq)`, and exactly-once skips what its
//! progress record covers. Both assume that a position means the same WAL for ever. It does
//! not when:
//! - **the slot is gone** (dropped while walcast was stopped, or a standby promoted without
//!   it). A new slot starts at the server's end of WAL: every change committed in between is
//!   never decoded, and a `DELETE` among them is never published, so replicas keep that row
//!   for ever;
//! - **the cluster is another one** (a restore, a dump and reload, a move): its positions
//!   are another LSN space, new changes carry positions replicas already hold, and every
//!   update and delete would be skipped as stale;
//! - **the WAL ends before what Kafka holds**: the same database restored from an earlier
//!   backup (or another database), whose next changes reuse positions Kafka already has.
//!
//! So at every start the pipeline reads the source's progress record (written in both
//! delivery modes, with the system identifier and timeline, see
//! [`crate::kafka::progress`]) and [`judge`]s the slot and the server against it: a source
//! that has published before and finds no slot, another system identifier or its WAL behind
//! stops with [`SlotError`], naming the slot, the position Kafka holds and the fix, and
//! publishes nothing and creates nothing. A source without a record is new, and starts as
//! always. The only way on is explicit: `walcast slot recreate --source S --snapshot`, which
//! records the operator's decision in the progress topic; the next start creates the slot
//! with an exported snapshot and reads every table.
//!
//! A timeline change with the same system identifier is a promotion. When the slot is there
//! (synchronised to the standby before it was promoted) it is legitimate: it is logged, the
//! next record carries the new timeline, and streaming goes on.
//!
//! While a source runs, a reconnect ([`Continuity`]) never creates a slot either, and stops
//! when the server it reaches is another cluster or its WAL ends before what was confirmed.
//!
//! # What is not caught
//! A slot behind what Kafka holds, on the same cluster and with the WAL still there, is
//! normal: exactly-once confirms the slot only after each Kafka commit, and PostgreSQL's
//! crash recovery puts a slot back to its last checkpointed position. Its WAL is the same
//! history, so resending it is only redelivery (skipped by exactly-once, absorbed by the
//! replicas' versions). A restored backup whose new writes have already passed the recorded
//! position before walcast connects, and a promotion that lost WAL past the recorded
//! position while a slot of the same name exists, look the same as that from positions
//! alone; the timeline history (`TIMELINE_HISTORY`) would tell the second apart, and is not
//! read yet.

use crate::lsn::Lsn;

use super::error::SourceError;
use super::protocol::{ReplicationConn, SystemId};
use super::SourceSettings;

/// A lost slot or another LSN space: permanent, each with the fix.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The slot does not exist, and Kafka holds this source's changes from before.
    #[error("source {source_name}: replication slot {slot} does not exist, but this source has published before: Kafka holds its changes up to {lsn} ({topic}). The changes committed since then went with the slot (dropped while walcast was stopped, or a standby promoted without it), so walcast publishes nothing and creates no slot rather than resume over the gap\n  hint: if the slot is on another server (a failover), point the source's url there; otherwise run walcast slot recreate --source {source_name} --snapshot and start again: a new slot is created with a snapshot of every table (rows deleted in the gap stay in the replicas, so rebuild them: see README, Slot safety)")]
    Gone {
        /// Name of the source.
        source_name: String,
        /// The slot that is missing.
        slot: String,
        /// Where Kafka holds the source's changes up to.
        lsn: Lsn,
        /// Where that position comes from: `progress topic <name>`.
        topic: String,
    },
    /// The server is another PostgreSQL cluster than the one Kafka's events came from.
    #[error("source {source_name}: the database is another PostgreSQL cluster (system identifier {found}) than the one this source published from (system identifier {recorded}, up to {lsn}, {topic}). Its positions are another LSN space (a restore, a dump and reload, a move to a new cluster): replicas would skip its changes as stale, so walcast publishes nothing\n  hint: point the source's url back at the cluster it published from; if it moved on purpose, run walcast slot recreate --source {source_name} --snapshot and start again: every table is re-read through a new slot (rows deleted meanwhile stay in the replicas, so rebuild them: see README, Slot safety)")]
    OtherCluster {
        /// Name of the source.
        source_name: String,
        /// The system identifier of the progress record.
        recorded: String,
        /// The system identifier the server reports.
        found: String,
        /// Where Kafka holds the source's changes up to.
        lsn: Lsn,
        /// Where that position comes from: `progress topic <name>`.
        topic: String,
    },
    /// The server's WAL ends before the position Kafka holds changes up to.
    #[error("source {source_name}: the database's WAL ends at {current}, before {lsn}, up to where Kafka holds this source's changes ({topic}): it was restored from an earlier backup, or it is another database, and its next changes would reuse positions the replicas hold (skipped as stale), so walcast publishes nothing\n  hint: point the source's url at the database it published from; if the restore is meant to stay, run walcast slot recreate --source {source_name} --snapshot and start again: every table is re-read through a new slot (rows deleted since the backup stay in the replicas, so rebuild them: see README, Slot safety)")]
    WalBehind {
        /// Name of the source.
        source_name: String,
        /// The server's end of WAL.
        current: Lsn,
        /// Where Kafka holds the source's changes up to.
        lsn: Lsn,
        /// Where that position comes from: `progress topic <name>`.
        topic: String,
    },
    /// The slot disappeared while the source streamed from it.
    #[error("source {source_name}: replication slot {slot} disappeared while walcast streamed from it (dropped, or the server failed over to one without it); the changes committed since {confirmed} went with it, so walcast stops instead of creating a new one\n  hint: if the slot is on another server (a failover), point the source's url there; otherwise run walcast slot recreate --source {source_name} --snapshot and start again (rows deleted in the gap stay in the replicas, so rebuild them: see README, Slot safety)")]
    Vanished {
        /// Name of the source.
        source_name: String,
        /// The slot that is missing.
        slot: String,
        /// The last position confirmed to the slot.
        confirmed: Lsn,
    },
}

impl SlotError {
    /// Always false: only the operator can decide what a gap or another cluster means.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// What Kafka holds of a source, from its progress record.
#[derive(Debug, Clone, Copy)]
pub struct Published<'a> {
    /// Kafka holds every change of the source up to here.
    pub lsn: Lsn,
    /// The system identifier the record was written from; `None` in records written before
    /// walcast kept it.
    pub system_id: Option<&'a str>,
    /// The timeline the record was written on, with `system_id`.
    pub timeline: Option<u32>,
    /// Where the position comes from, for messages: `progress topic <name>`.
    pub topic: &'a str,
}

/// How a source may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing published before (or the operator reset it): create the slot if missing.
    New,
    /// Resume from the existing slot.
    Resume,
    /// Resume from the existing slot on a new timeline of the same cluster: a promotion
    /// whose standby had the slot.
    Promoted {
        /// The timeline of the progress record.
        from: u32,
        /// The server's timeline now.
        to: u32,
    },
}

/// Judges whether source `source_name` may start on `server` with its slot `slot`
/// (`slot_exists`), given what Kafka holds (`published`, `None` for a source that never
/// published or that the operator reset). Pure; see the module docs for the rules.
pub fn judge(
    source_name: &str,
    slot: &str,
    published: Option<&Published<'_>>,
    server: &SystemId,
    slot_exists: bool,
) -> Result<Verdict, SlotError> {
    let Some(p) = published else {
        return Ok(Verdict::New);
    };
    if let Some(recorded) = p.system_id.filter(|id| *id != server.system_id) {
        return Err(SlotError::OtherCluster {
            source_name: source_name.to_string(),
            recorded: recorded.to_string(),
            found: server.system_id.clone(),
            lsn: p.lsn,
            topic: p.topic.to_string(),
        });
    }
    if server.xlog_pos < p.lsn {
        return Err(SlotError::WalBehind {
            source_name: source_name.to_string(),
            current: server.xlog_pos,
            lsn: p.lsn,
            topic: p.topic.to_string(),
        });
    }
    if !slot_exists {
        return Err(SlotError::Gone {
            source_name: source_name.to_string(),
            slot: slot.to_string(),
            lsn: p.lsn,
            topic: p.topic.to_string(),
        });
    }
    Ok(match p.timeline {
        Some(from) if p.system_id.is_some() && from != server.timeline => Verdict::Promoted {
            from,
            to: server.timeline,
        },
        _ => Verdict::Resume,
    })
}

/// The server's identity: `IDENTIFY_SYSTEM` over a short replication connection.
pub async fn identify(settings: &SourceSettings) -> Result<SystemId, SourceError> {
    let mut conn = ReplicationConn::connect(
        &settings.url,
        &format!("walcast:{}:identify", settings.name),
        &settings.tls,
    )
    .await?;
    let id = conn.identify_system().await;
    conn.close().await;
    id
}

/// Creates the source's slot without a snapshot (`snapshot = "never"`), once [`judge`]
/// said the source is new; returns its consistent point.
pub async fn create(settings: &SourceSettings) -> Result<Lsn, SourceError> {
    let mut conn = ReplicationConn::connect(
        &settings.url,
        &format!("walcast:{}", settings.name),
        &settings.tls,
    )
    .await?;
    conn.identify_system().await?;
    let at = conn
        .create_slot(&settings.slot, settings.slot_failover)
        .await;
    conn.close().await;
    let at = at?;
    tracing::info!(source = %settings.name, slot = %settings.slot, consistent_point = %at, "created replication slot");
    Ok(at)
}

/// What one run of a source carries from one replication connection to the next, so a
/// reconnect never creates a slot and never goes on in another LSN space.
#[derive(Debug, Default)]
pub struct Continuity {
    /// The system identifier the first connection reached.
    system_id: Option<String>,
    /// Whether a connection found (or created) the slot: from then on it must exist.
    slot_seen: bool,
    /// The highest position confirmed to the slot so far.
    confirmed: Lsn,
}

impl Continuity {
    /// Checks a new connection to `server`: the same cluster as before, its WAL not behind
    /// what was confirmed. Returns whether the slot may be created when missing (only by
    /// the first connection of a run: the pipeline has judged it just before).
    pub fn connected(
        &mut self,
        settings: &SourceSettings,
        server: &SystemId,
    ) -> Result<bool, SlotError> {
        let topic = "as this run confirmed it";
        if let Some(id) = &self.system_id {
            let published = Published {
                lsn: self.confirmed,
                system_id: Some(id),
                timeline: None,
                topic,
            };
            judge(
                &settings.name,
                &settings.slot,
                Some(&published),
                server,
                true,
            )?;
        }
        self.system_id = Some(server.system_id.clone());
        Ok(!self.slot_seen)
    }

    /// The slot exists now (found or created).
    pub fn slot_present(&mut self) {
        self.slot_seen = true;
    }

    /// The slot is missing on a reconnect.
    pub fn vanished(&self, settings: &SourceSettings) -> SlotError {
        SlotError::Vanished {
            source_name: settings.name.clone(),
            slot: settings.slot.clone(),
            confirmed: self.confirmed,
        }
    }

    /// `lsn` was confirmed to the slot.
    pub fn confirmed(&mut self, lsn: Lsn) {
        self.confirmed = self.confirmed.max(lsn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(system_id: &str, timeline: u32, wal_end: &str) -> SystemId {
        SystemId {
            system_id: system_id.into(),
            timeline,
            xlog_pos: wal_end.parse().unwrap(),
            database: "users".into(),
        }
    }

    fn published<'a>(system_id: Option<&'a str>, timeline: u32, lsn: &str) -> Published<'a> {
        Published {
            lsn: lsn.parse().unwrap(),
            system_id,
            timeline: system_id.map(|_| timeline),
            topic: "progress topic walcast.progress.users",
        }
    }

    #[test]
    fn a_source_that_never_published_starts_as_new_with_or_without_a_slot() {
        let s = server("1", 1, "0/5000");
        assert_eq!(judge("users", "u", None, &s, false).unwrap(), Verdict::New);
        assert_eq!(judge("users", "u", None, &s, true).unwrap(), Verdict::New);
    }

    #[test]
    fn a_missing_slot_of_a_source_that_published_is_refused_naming_the_position() {
        let p = published(Some("1"), 1, "0/4000");
        let e = judge(
            "users",
            "walcast_users",
            Some(&p),
            &server("1", 1, "0/5000"),
            false,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("source users: replication slot walcast_users does not exist, but this source has published before: Kafka holds its changes up to 0/4000 (progress topic walcast.progress.users)."), "{text}");
        assert!(
            text.contains("run walcast slot recreate --source users --snapshot"),
            "{text}"
        );
        assert!(!e.is_transient());
        // Records from before origins were kept count as well.
        let old = published(None, 0, "0/4000");
        assert!(matches!(
            judge("users", "u", Some(&old), &server("1", 1, "0/5000"), false),
            Err(SlotError::Gone { .. })
        ));
    }

    #[test]
    fn another_cluster_is_refused_before_anything_else() {
        let p = published(Some("1"), 1, "0/4000");
        for exists in [true, false] {
            let e = judge("users", "u", Some(&p), &server("2", 1, "9/0"), exists).unwrap_err();
            assert!(
                matches!(&e, SlotError::OtherCluster { recorded, found, .. } if recorded == "1" && found == "2"),
                "{e}"
            );
        }
    }

    #[test]
    fn wal_ending_before_what_kafka_holds_is_refused() {
        let p = published(Some("1"), 1, "0/4000");
        let e = judge("users", "u", Some(&p), &server("1", 1, "0/3000"), true).unwrap_err();
        assert!(matches!(e, SlotError::WalBehind { .. }), "{e}");
        let old = published(None, 0, "0/4000");
        let e = judge("users", "u", Some(&old), &server("1", 1, "0/3000"), true).unwrap_err();
        assert!(matches!(e, SlotError::WalBehind { .. }), "{e}");
    }

    #[test]
    fn the_same_cluster_resumes_and_a_new_timeline_is_a_promotion() {
        let p = published(Some("1"), 1, "0/4000");
        assert_eq!(
            judge("users", "u", Some(&p), &server("1", 1, "0/4000"), true).unwrap(),
            Verdict::Resume
        );
        assert_eq!(
            judge("users", "u", Some(&p), &server("1", 2, "0/5000"), true).unwrap(),
            Verdict::Promoted { from: 1, to: 2 }
        );
        let old = published(None, 0, "0/4000");
        assert_eq!(
            judge("users", "u", Some(&old), &server("1", 2, "0/5000"), true).unwrap(),
            Verdict::Resume
        );
    }

    fn settings() -> SourceSettings {
        SourceSettings {
            name: "users".into(),
            url: "postgres://localhost/users".into(),
            slot: "walcast_users".into(),
            publication: "walcast_users".into(),
            tables: Vec::new(),
            status_interval: std::time::Duration::from_secs(1),
            spill_threshold_bytes: 1,
            spill_dir: std::env::temp_dir(),
            reconnect_max_backoff: std::time::Duration::from_secs(1),
            heartbeat_interval: None,
            heartbeat_table: None,
            tls: Default::default(),
            read_columns: None,
            part: Default::default(),
            slot_failover: false,
            signal_table: false,
        }
    }

    #[test]
    fn only_the_first_connection_of_a_run_may_create_the_slot() {
        let s = settings();
        let mut c = Continuity::default();
        assert!(c.connected(&s, &server("1", 1, "0/5000")).unwrap());
        c.slot_present();
        c.confirmed("0/4000".parse().unwrap());
        assert!(!c.connected(&s, &server("1", 1, "0/5000")).unwrap());
        assert!(c
            .vanished(&s)
            .to_string()
            .starts_with("source users: replication slot walcast_users disappeared while walcast streamed from it (dropped, or the server failed over to one without it); the changes committed since 0/4000 went with it"));
    }

    #[test]
    fn a_reconnect_to_another_cluster_or_to_wal_behind_what_was_confirmed_stops() {
        let s = settings();
        let mut c = Continuity::default();
        c.connected(&s, &server("1", 1, "0/5000")).unwrap();
        c.slot_present();
        c.confirmed("0/4000".parse().unwrap());
        assert!(matches!(
            c.connected(&s, &server("2", 1, "0/9000")),
            Err(SlotError::OtherCluster { .. })
        ));
        assert!(matches!(
            c.connected(&s, &server("1", 1, "0/3000")),
            Err(SlotError::WalBehind { .. })
        ));
        // A promotion of a standby that had everything confirmed goes on.
        assert!(!c.connected(&s, &server("1", 2, "0/4000")).unwrap());
    }
}
