//! The source: one long-running reader of a service database's logical replication stream.
//!
//! # Why LSN feedback is subtle
//! PostgreSQL keeps WAL, and resends transactions, from the slot's `confirmed_flush_lsn`. A
//! transaction is skipped on restart only if its commit record starts *before* that position,
//! so confirming a transaction's `end_lsn` means "never send it again", and confirming it
//! early loses it if walcast then crashes. Therefore:
//! - the position walcast confirms is only ever the `end_lsn` of a transaction that the
//!   downstream has acknowledged, handed in through the `acked` watch; never what was merely
//!   received;
//! - on an idle database the server's keepalive position may be confirmed too, but only when
//!   no transaction is open, none is buffered, and everything delivered is acknowledged
//!   (otherwise the slot would skip past unpublished changes);
//! - the confirmed position never moves backwards.
//!
//! # Backpressure
//! Events go downstream, in order, in batches of up to [`EVENT_BATCH`] on a bounded channel
//! (a transaction may span batches). While it is full, the source stops reading
//! from the socket (the server buffers, then pauses decoding), but status updates still go
//! out every `status_interval_ms`, so the server does not time the connection out.
//!
//! # Layout
//! [`pgoutput`] and [`value`] are the pure protocol core; [`assembler`] turns messages into
//! ordered events and buffers streamed transactions via [`spill`]; [`protocol`] and
//! [`catalog`] are the I/O shell, with [`publication`] the checks of what the publication
//! sends (partitions through their root, generated columns, filters), [`slot`] the slot's
//! options (failover) and [`safety`] what keeps a lost slot or another cluster from being
//! resumed silently; this module runs them.

pub mod assembler;
pub mod catalog;
pub mod change;
pub mod error;
pub mod frame;
#[cfg(test)]
pub(crate) mod hostile;
pub mod hosts;
pub mod pgoutput;
pub mod protocol;
pub mod publication;
pub mod safety;
pub mod slot;
pub mod slot_sync;
pub mod spill;
pub mod tls;
pub mod value;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

pub use change::{Change, Column, Op, ReplicaIdentity, Row, SourceEvent, Table};
pub use error::SourceError;

use crate::config::SourceConfig;
use crate::lsn::Lsn;
use assembler::{Action, Assembler};
use catalog::{Catalog, TableName};
use protocol::{ReplicationConn, ReplicationMessage};

/// Events handed downstream per channel send. Batching amortises the channel's per-item cost,
/// which otherwise dominates the replay of a large streamed transaction.
pub const EVENT_BATCH: usize = 4096;

/// Buffered messages replayed per loop turn.
const REPLAY_BATCH: usize = 4096;

/// Everything a source needs, resolved from its configuration.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Name of the source (`[[source]] name`), used in messages, metrics and defaults.
    pub name: String,
    /// Connection URL with its password resolved; secret, never print it unredacted.
    pub url: String,
    /// Replication slot the source streams from (created when missing).
    pub slot: String,
    /// Publication the slot decodes (created when missing).
    pub publication: String,
    /// Tables the publication must contain.
    pub tables: Vec<TableName>,
    /// How often the confirmed (acknowledged) LSN is reported to PostgreSQL in a standby status
    /// update.
    pub status_interval: Duration,
    /// Streamed transactions are buffered in memory up to this many bytes, then spilled to
    /// `spill_dir`.
    pub spill_threshold_bytes: u64,
    /// Directory streamed transactions spill to.
    pub spill_dir: PathBuf,
    /// Cap of the reconnect backoff.
    pub reconnect_max_backoff: Duration,
    /// Interval of the heartbeat that keeps an idle database's slot advancing; `None` when off.
    pub heartbeat_interval: Option<Duration>,
    /// Table the heartbeat upserts into; `None` emits a logical decoding message instead.
    pub heartbeat_table: Option<String>,
    /// TLS mode and certificate authority of both connections.
    pub tls: tls::TlsSettings,
    /// The columns anything downstream reads, per table; `None` means all of them. Only
    /// these must have a type walcast decodes: an unmapped column is never decoded.
    pub read_columns: Option<std::collections::HashMap<TableName, Vec<String>>>,
    /// Where the source reports its state: running once it streams from its slot, waiting
    /// while it reconnects.
    pub part: crate::parts::PartHandle,
    /// `slot_failover`: the slot is a failover slot, synchronised to standbys (17+; see
    /// [`slot`]).
    pub slot_failover: bool,
    /// A signal table is configured (on-demand snapshots write to it).
    pub signal_table: bool,
}

impl SourceSettings {
    /// The settings of a configured source; `read_columns` is left `None` (every column).
    pub fn from_config(c: &SourceConfig) -> Self {
        Self {
            name: c.name.clone(),
            url: c.resolved_url.clone(),
            slot: c.slot_name(),
            publication: c.publication_name(),
            tables: c
                .tables
                .iter()
                .map(|t| {
                    let (schema, name) = t.qualified_name();
                    TableName {
                        schema: schema.to_string(),
                        name: name.to_string(),
                    }
                })
                .collect(),
            status_interval: Duration::from_millis(c.status_interval_ms),
            spill_threshold_bytes: c.spill_threshold_bytes,
            spill_dir: c.spill_dir.clone().unwrap_or_else(std::env::temp_dir),
            reconnect_max_backoff: Duration::from_millis(c.reconnect_max_backoff_ms),
            heartbeat_interval: (c.heartbeat_interval_ms > 0)
                .then(|| Duration::from_millis(c.heartbeat_interval_ms)),
            heartbeat_table: c.heartbeat_table.clone(),
            tls: tls::TlsSettings {
                mode: c
                    .tls_mode
                    .unwrap_or_else(|| tls_mode_of_url(&c.resolved_url)),
                ca_file: c.tls_ca_file.clone(),
            },
            read_columns: None,
            part: crate::parts::PartHandle::default(),
            slot_failover: c.slot_failover,
            signal_table: c.signal_table.is_some(),
        }
    }

    /// What this source asks of its slot and server, for [`slot::check_server`].
    pub fn slot_wishes(&self) -> slot::SlotWishes {
        slot::SlotWishes {
            failover: self.slot_failover,
            heartbeat: self.heartbeat_interval.is_some(),
            signal_table: self.signal_table,
        }
    }
}

/// The `sslmode` a URL asks for, when the configuration does not say.
fn tls_mode_of_url(url: &str) -> tls::TlsMode {
    use tokio_postgres::config::SslMode;
    match url
        .parse::<tokio_postgres::Config>()
        .map(|c| c.get_ssl_mode())
    {
        Ok(SslMode::Disable) => tls::TlsMode::Disable,
        Ok(SslMode::Require) => tls::TlsMode::Require,
        _ => tls::TlsMode::Prefer,
    }
}

/// Checks the database, creates the publication and the slot when missing, and verifies
/// them when present. Runs before anything is streamed; every failure is permanent.
/// On a standby ([`slot`]) the publication must exist already: it is created on the primary.
pub async fn prepare(settings: &SourceSettings) -> Result<Catalog, SourceError> {
    let mut catalog = Catalog::connect(&settings.url, &settings.name, &settings.tls).await?;
    catalog.check_server().await?;
    let role = slot::ServerRole::read(&catalog).await?;
    slot::check_server(
        &settings.name,
        &settings.slot,
        &role,
        settings.slot_wishes(),
    )?;
    catalog.check_tables(&settings.tables).await?;
    catalog.check_nested_partitions(&settings.tables).await?;
    if let Some((table, column, ty)) = catalog
        .unsupported_columns(&settings.tables)
        .await?
        .into_iter()
        .find(|(table, column, _)| {
            settings
                .read_columns
                .as_ref()
                .is_none_or(|read| read.get(table).is_some_and(|cols| cols.contains(column)))
        })
    {
        return Err(SourceError::setup(
            format!("source {}: column {table}.{column} has type {ty}, which walcast does not support", settings.name),
            format!("leave {column} out of the table's event mapping, or change its type (e.g. ALTER TABLE {table} ALTER COLUMN {column} TYPE text)"),
        ));
    }
    catalog
        .check_generated_columns(
            &settings.publication,
            &settings.tables,
            settings.read_columns.as_ref(),
        )
        .await?;
    // The slot first: a refusal should leave nothing behind.
    if let Some(state) = catalog.slot_state(&settings.slot).await? {
        catalog.check_slot(&settings.slot, &state).await?;
    } else if role.standby {
        tracing::info!(source = %settings.name, slot = %settings.slot, "{}", slot::STANDBY_CREATE_WAIT);
    }
    if role.standby {
        slot::publication_exists(
            &catalog,
            &settings.name,
            &settings.publication,
            &settings.tables,
        )
        .await?;
    }
    catalog
        .ensure_publication(&settings.publication, &settings.tables)
        .await?;
    catalog
        .check_publication_contents(
            &settings.publication,
            &settings.tables,
            settings.read_columns.as_ref(),
        )
        .await?;
    Ok(catalog)
}

/// Runs the source until `shutdown` completes or a permanent error occurs. Transient errors
/// reconnect with capped exponential backoff and resume from the slot, which resends every
/// transaction not yet confirmed. After a reconnect, a `Begin` may arrive while the previous
/// transaction has no `Commit`: that transaction is void and will be sent again.
///
/// Only the first connection creates the slot when it is missing; a reconnect that finds it
/// gone, or reaches another cluster or WAL that ends before what was confirmed, stops with
/// [`safety::SlotError`] (see [`safety::Continuity`]).
pub async fn run(
    settings: SourceSettings,
    events: mpsc::Sender<Vec<SourceEvent>>,
    acked: watch::Receiver<Lsn>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    tokio::pin!(shutdown);
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(100), settings.reconnect_max_backoff);
    let mut continuity = safety::Continuity::default();
    loop {
        let session = Session::new(&settings, events.clone(), acked.clone());
        let started = std::time::Instant::now();
        let result = session.run(&mut shutdown, &mut continuity).await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                // A session that streamed for a while was a success: back off from the start.
                if started.elapsed() >= Duration::from_secs(30) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(source = %settings.name, error = %e, "replication interrupted; reconnecting in {delay:?}");
                settings.part.waiting(format_args!(
                    "replication interrupted: {e}; reconnecting in {delay:?}"
                ));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut shutdown => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// One connection's worth of streaming.
struct Session<'a> {
    settings: &'a SourceSettings,
    events: mpsc::Sender<Vec<SourceEvent>>,
    acked: watch::Receiver<Lsn>,
    /// Highest WAL position received.
    received: Lsn,
    /// `end_lsn` of the last transaction handed downstream.
    delivered: Lsn,
    /// Position last confirmed to the server.
    confirmed: Lsn,
    /// Keepalive position seen while nothing was open.
    idle: Lsn,
}

impl<'a> Session<'a> {
    fn new(
        settings: &'a SourceSettings,
        events: mpsc::Sender<Vec<SourceEvent>>,
        acked: watch::Receiver<Lsn>,
    ) -> Self {
        Self {
            settings,
            events,
            acked,
            received: Lsn::ZERO,
            delivered: Lsn::ZERO,
            confirmed: Lsn::ZERO,
            idle: Lsn::ZERO,
        }
    }

    /// The position safe to confirm now.
    fn confirmable(&self) -> Lsn {
        let acked = *self.acked.borrow();
        let mut lsn = acked;
        if acked >= self.delivered {
            lsn = lsn.max(self.idle);
        }
        lsn.max(self.confirmed)
    }

    async fn run(
        mut self,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
        continuity: &mut safety::Continuity,
    ) -> Result<(), SourceError> {
        let s = self.settings;
        let mut catalog = prepare(s).await?;
        let mut conn =
            ReplicationConn::connect(&s.url, &format!("walcast:{}", s.name), &s.tls).await?;
        let server = conn.identify_system().await?;
        hosts::same_server(&catalog, &mut conn).await?;
        let may_create = continuity.connected(s, &server)?;
        if catalog.slot_state(&s.slot).await?.is_none() {
            if !may_create {
                return Err(continuity.vanished(s).into());
            }
            let at = conn.create_slot(&s.slot, s.slot_failover).await?;
            tracing::info!(source = %s.name, slot = %s.slot, consistent_point = %at, failover = s.slot_failover, "created replication slot");
        }
        continuity.slot_present();
        slot::ensure_failover(&catalog, &mut conn, s).await?;
        let publications = format!("\"{}\"", s.publication.replace('"', "\"\""));
        conn.start_replication(
            &s.slot,
            Lsn::ZERO,
            &[
                ("proto_version", "2"),
                ("streaming", "on"),
                ("binary", "true"),
                ("publication_names", &publications),
            ],
        )
        .await?;
        tracing::info!(source = %s.name, slot = %s.slot, "streaming");
        // Running means capturing: only now is every later write certain to reach the stream.
        s.part.set(crate::parts::PartState::Running);

        let mut decoder = pgoutput::Decoder::new();
        let mut assembler = Assembler::new(s.spill_threshold_bytes, s.spill_dir.clone());
        let mut pending: VecDeque<SourceEvent> = VecDeque::new();
        let mut out = Vec::new();
        let mut replay: Option<Replay> = None;
        let mut status = tokio::time::interval(s.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = s.heartbeat_interval.map(tokio::time::interval);
        let mut reply_due = false;

        loop {
            // Work in priority order: hand pending events downstream, then replay buffered
            // messages of a committed streamed transaction, then read the socket.
            if !pending.is_empty() {
                // Fast path: hand over what the channel takes without waiting; only a full
                // channel pays for a select.
                if self.try_deliver(&mut pending)? {
                    continue;
                }
                tokio::select! {
                    permit = self.events.reserve() => {
                                                let permit = permit.map_err(|_| SourceError::protocol("the event consumer stopped"))?;
                        permit.send(take_batch(&mut pending, &mut self.delivered));
                        continue;
                    }
                    _ = status.tick() => {}
                    _ = self.acked.changed() => {}
                    _ = &mut *shutdown => return self.stop(conn).await,
                }
            } else if let Some(r) = replay.as_mut() {
                // A batch at a time: the server is done with this transaction, so this is
                // the one place walcast's own speed shows.
                for _ in 0..REPLAY_BATCH {
                    let Some(msg) = r.next().await? else {
                        replay = None;
                        assembler.finish_replay(&mut out)?;
                        break;
                    };
                    // Replayed messages are never buffered again, so no raw bytes are needed.
                    self.handle(&mut assembler, &mut catalog, msg, &Bytes::new(), &mut out)
                        .await?;
                }
                pending.extend(out.drain(..));
                continue;
            } else {
                tokio::select! {
                    msg = conn.next_message() => {
                        match msg? {
                            None => return Err(SourceError::Io { target: conn.target().to_string(), source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server ended the replication stream") }),
                            Some(ReplicationMessage::XLogData { wal_end, data, .. }) => {
                                                                self.received = self.received.max(wal_end);
                                // A data message of a transaction still in progress is only
                                // buffered: it is decoded once, when replayed on commit.
                                if let Some(subxid) = decoder.streamed_xid(&data) {
                                    assembler.buffer_streamed(subxid, &data)?;
                                    continue;
                                }
                                let msg = decoder.decode(data.clone()).map_err(|e| SourceError::protocol(e.to_string()))?;
                                if let Some(buffer) = self.handle(&mut assembler, &mut catalog, msg, &data, &mut out).await? {
                                    replay = Some(Replay::new(buffer)?);
                                }
                                pending.extend(out.drain(..));
                            }
                            Some(ReplicationMessage::Keepalive { wal_end, reply_requested }) => {
                                self.received = self.received.max(wal_end);
                                if !assembler.in_transaction() && pending.is_empty() {
                                    self.idle = self.idle.max(wal_end);
                                }
                                reply_due |= reply_requested;
                            }
                        }
                        if !reply_due {
                            continue;
                        }
                    }
                    _ = status.tick() => {}
                    _ = self.acked.changed() => {}
                    _ = async { heartbeat.as_mut().expect("guarded").tick().await }, if heartbeat.is_some() => {
                        emit_heartbeat(&catalog, s).await;
                        continue;
                    }
                    _ = &mut *shutdown => return self.stop(conn).await,
                }
            }
            let flush = self.confirmable();
            let written = self.received.max(flush);
            conn.send_status(written, flush, false).await?;
            if flush > self.confirmed {
                tracing::debug!(source = %s.name, confirmed = %flush, "confirmed");
                crate::metrics::get()
                    .source_confirmed_lsn
                    .get_or_create(&crate::metrics::source(&s.name))
                    .set(flush.0);
            }
            self.confirmed = flush;
            continuity.confirmed(flush);
            reply_due = false;
        }
    }

    /// Sends pending events while the channel has room; true if any was sent.
    fn try_deliver(&mut self, pending: &mut VecDeque<SourceEvent>) -> Result<bool, SourceError> {
        let mut sent = false;
        while !pending.is_empty() {
            match self.events.try_reserve() {
                Ok(permit) => {
                    permit.send(take_batch(pending, &mut self.delivered));
                    sent = true;
                }
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => {
                    return Err(SourceError::protocol("the event consumer stopped"))
                }
            }
        }
        Ok(sent)
    }

    async fn handle(
        &mut self,
        assembler: &mut Assembler,
        catalog: &mut Catalog,
        msg: pgoutput::PgOutput,
        raw: &Bytes,
        out: &mut Vec<SourceEvent>,
    ) -> Result<Option<spill::StreamBuffer>, SourceError> {
        match assembler.handle(msg, raw, out)? {
            Action::None => Ok(None),
            Action::Resolve(body) => {
                let table = catalog.table(body).await?;
                assembler.set_relation(table, out);
                Ok(None)
            }
            Action::Replay(buffer) => Ok(Some(buffer)),
        }
    }

    async fn stop(&self, mut conn: ReplicationConn) -> Result<(), SourceError> {
        let flush = self.confirmable();
        conn.send_status(self.received.max(flush), flush, false)
            .await?;
        tracing::info!(source = %self.settings.name, confirmed = %flush, "stopped");
        conn.close().await;
        Ok(())
    }
}

/// Takes the next batch off `pending`, tracking the `end_lsn` of the last transaction handed
/// downstream.
fn take_batch(pending: &mut VecDeque<SourceEvent>, delivered: &mut Lsn) -> Vec<SourceEvent> {
    let n = pending.len().min(EVENT_BATCH);
    let batch: Vec<SourceEvent> = pending.drain(..n).collect();
    for event in &batch {
        if let SourceEvent::Commit { end_lsn, .. } = event {
            *delivered = (*delivered).max(*end_lsn);
        }
    }
    batch
}

/// Replays a committed streamed transaction's buffered messages, a batch at a time, reading
/// the spill file on the blocking pool.
struct Replay {
    decoder: pgoutput::Decoder,
    memory: std::vec::IntoIter<Bytes>,
    batch: VecDeque<Bytes>,
    spilled: Option<spill::SpillReader>,
}

impl Replay {
    fn new(buffer: spill::StreamBuffer) -> Result<Self, SourceError> {
        let mut decoder = pgoutput::Decoder::new();
        // Buffered messages carry their xid: decode them as inside a stream block.
        decoder
            .decode(Bytes::from_static(&[b'S', 0, 0, 0, 0, 0]))
            .expect("a stream start is well-formed");
        let (memory, spilled) = buffer.into_parts().map_err(SourceError::spill)?;
        Ok(Self {
            decoder,
            memory: memory.into_iter(),
            batch: VecDeque::new(),
            spilled,
        })
    }

    /// The next buffered message, decoded: from memory directly, from the spill file a batch
    /// at a time on the blocking pool.
    async fn next(&mut self) -> Result<Option<pgoutput::PgOutput>, SourceError> {
        if let Some(raw) = self.memory.next() {
            return self.decode(raw).map(Some);
        }
        if self.batch.is_empty() {
            let Some(mut reader) = self.spilled.take() else {
                return Ok(None);
            };
            let (reader, batch) = tokio::task::spawn_blocking(move || {
                let batch: std::io::Result<VecDeque<Bytes>> = reader.by_ref().take(4096).collect();
                (reader, batch)
            })
            .await
            .map_err(|e| SourceError::Spill(std::io::Error::other(e)))?;
            self.batch = batch.map_err(SourceError::spill)?;
            if !self.batch.is_empty() {
                self.spilled = Some(reader);
            }
        }
        match self.batch.pop_front() {
            Some(raw) => self.decode(raw).map(Some),
            None => Ok(None),
        }
    }

    fn decode(&mut self, raw: Bytes) -> Result<pgoutput::PgOutput, SourceError> {
        self.decoder
            .decode(raw)
            .map_err(|e| SourceError::protocol(format!("buffered stream message: {e}")))
    }
}

/// Writes a heartbeat so an idle database's slot can advance; failures are logged, not fatal.
async fn emit_heartbeat(catalog: &Catalog, s: &SourceSettings) {
    let result = match &s.heartbeat_table {
        None => catalog
            .client()
            .execute("SELECT pg_logical_emit_message(false, 'walcast_heartbeat', now()::text)", &[])
            .await,
        Some(table) => catalog
            .client()
            .execute(
                &format!("INSERT INTO {table} (source, ts) VALUES ($1, now()) ON CONFLICT (source) DO UPDATE SET ts = excluded.ts"),
                &[&s.name],
            )
            .await,
    };
    if let Err(e) = result {
        tracing::warn!(source = %s.name, error = %walcast_text::describe(&e), "heartbeat failed");
    }
}
