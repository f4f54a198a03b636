//! Snapshots: the rows a table already holds, published as `op = snapshot` events beside the
//! stream of changes, so a new replica starts complete.
//!
//! - **Initial.** With `snapshot = "initial"`, a new slot is created with an exported
//!   snapshot (`CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')`), and every table is read in
//!   that snapshot (`SET TRANSACTION SNAPSHOT`), exactly as of the slot's consistent point,
//!   while the stream starts at once from the same point: no gap.
//! - **Added tables.** A table added to the configuration of an existing deployment is added
//!   to the publication on the next start, then read while the others stream.
//! - **On demand.** `walcast snapshot --source S --table T` inserts a request into the
//!   source's `signal_table`; the running daemon polls it, re-reads the table while
//!   streaming, and writes its state and progress back to the request's row.
//!
//! # Versions: why a snapshot read never beats a newer change
//! Replicas keep a row only over an older `(lsn, seq)`. A streamed change carries its
//! transaction's commit LSN. A chunk is read in a snapshot S together with a *horizon* H:
//! an LSN such that every transaction whose commit record starts before H is visible in S.
//! Its rows carry the version `(H - 1, 2^31 - 1)` ([`plan::read_version`]): above every
//! change committed before H (a record starts at least 24 bytes before H, and `seq` never
//! reaches 2^31 - 1), below every change committed at or after H. Then, for each key:
//! - every change before H is already reflected in the row read, so overwriting it is
//!   right, and this is what **repairs** a replica edited by hand: its rows hold versions
//!   of changes before H;
//! - every change at or after H is (or will be) in Kafka with a higher version, so the read
//!   never overwrites it, in whatever order the two reach the replica. The stream carries
//!   each such key to its latest state, and a read of a row deleted after H loses to the
//!   delete's tombstone.
//!
//! This holds whenever S is taken after H is known, which is why DBLog's window (dropping
//! chunk rows changed between the low and high watermarks) is not needed here: DBLog emits
//! chunks *in stream order* without versions, and the window is what orders them; walcast's
//! replicas order by version. H is:
//! - the slot's consistent point, for chunks read in the exported snapshot (exact);
//! - otherwise (a resumed, added or on-demand snapshot) the source's acknowledged position
//!   when the chunk is read, or the slot's `confirmed_flush_lsn` if higher: every
//!   transaction before it was decoded, so committed, and Kafka holds its events. Chunks
//!   then read in a fresh snapshot each.
//!
//! # Headers
//! A snapshot read carries the stream's headers: `op = snapshot`, `lsn` and `seq` its read
//! version, `xid` 0, `commit_ts` the time it was read, and `event_id`
//! `<source>/<lsn>/snapshot/<schema.table>/<key>`.
//!
//! # Order in the topic
//! The replicas' guard makes the order in which a read and a newer change of the same key
//! reach them irrelevant, and that is all walcast's sinks need. In the topic itself, a read
//! may follow a newer change of its key (the read published after it, carrying the row's
//! older state at a lower version): a consumer of its own must compare versions as the sinks
//! do, or ignore a read whose version is below what it holds. Publishing chunks through the
//! stream's producer and dropping keys the stream published since the chunk's horizon
//! (DBLog's window) would make the topic's order monotonic per key too; it is not done yet.
//!
//! # Chunks
//! A table is read by its primary key (or its replica identity index) in chunks of
//! `snapshot_chunk_rows`, by keyset pagination: `COPY (SELECT … WHERE key > last ORDER BY
//! key LIMIT n) TO STDOUT (FORMAT binary)`. Binary COPY sends each value in its binary send
//! format, the bytes pgoutput sends in binary mode, so the source's decoder reads them, and
//! columns no contract reads are selected as `NULL` (they never leave the database). A
//! table with neither key is refused with [`SnapshotError::NoKey`]: chunking by `ctid` is
//! not stable across updates, and reading it whole in one transaction is neither bounded
//! nor resumable. Up to `snapshot_parallel_tables` tables are read at once; each prefetches
//! one chunk while the previous is published, so memory is about three chunks per table.
//! `snapshot_max_rows_per_sec` bounds the rate over all tables.
//!
//! # Progress: why a compacted Kafka topic
//! After each chunk, the key of its last row is recorded in `<client_id>.snapshot.<source>`
//! (compacted, one record per table), only once the chunk's records are acknowledged; with
//! `exactly_once`, in the same Kafka transaction as the chunk. A crash therefore resumes
//! from the last recorded chunk and republishes at most the one in flight (none with
//! exactly-once). Kafka, not the source database: the progress must be durable exactly when
//! the records are, which only Kafka's acknowledgement (or transaction) says; it needs no
//! write access or DDL in the service's database; and it survives the slot, so
//! `walcast slot drop` starts a new snapshot while a restart resumes the old one. The
//! signal table only carries requests and a copy of the progress for `walcast snapshot
//! --wait`.
//!
//! # Exactly-once
//! Snapshot records go through a producer of their own ([`publish`]): transactional with
//! the id `<client_id>.<source>.snapshot`, one Kafka transaction per chunk. The stream's
//! transactions, its progress record and the skip on restart in [`crate::pipeline`] are
//! untouched: snapshot reads never move the acknowledged LSN, and need no ordering against
//! the stream beyond their versions.
//!
//! # Layout
//! [`plan`] (chunk queries, versions, progress records, rate and ETA) and [`copy`] (the
//! binary COPY format) are pure; [`store`] and [`publish`] talk to Kafka; [`signal`] to the
//! signal table; this module runs them.

pub mod copy;
pub mod plan;
pub mod publish;
pub mod signal;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Config, SnapshotMode, SourceConfig};
use crate::events::mapping::Mapping;
use crate::kafka::KafkaError;
use crate::lsn::Lsn;
use crate::source::catalog::{Catalog, TableName};
use crate::source::pgoutput::TupleData;
use crate::source::protocol::{quote_ident, ReplicationConn};
use crate::source::{Row, SourceError, SourceSettings};
use plan::{ChunkPlan, KeyColumn, State, TableProgress};
use publish::{Publisher, Record};

/// Why a snapshot stopped.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    /// Reading the source database failed.
    Source(#[from] SourceError),
    #[error(transparent)]
    /// Publishing to Kafka failed.
    Kafka(#[from] KafkaError),
    #[error("source {source_name}: table {table} has no primary key and no replica identity index, so it cannot be snapshotted in chunks\n  hint: run ALTER TABLE {table} ADD PRIMARY KEY (…) (or give it a unique index and ALTER TABLE {table} REPLICA IDENTITY USING INDEX …), or set snapshot = \"never\" on the source and backfill the table another way")]
    /// The table has no key to chunk it by.
    NoKey {
        /// The source.
        source_name: String,
        /// The table.
        table: String,
    },
    #[error("source {source_name}: snapshot of table {table}: {message}")]
    /// A query of the snapshot failed; transient when the connection broke or the server was busy.
    Database {
        /// The source.
        source_name: String,
        /// The table.
        table: String,
        /// The server's error.
        message: String,
        /// Whether retrying may help.
        transient: bool,
    },
    #[error(
        "source {source_name}: snapshot of table {table}: {message}; nothing after it is published"
    )]
    /// A row could not be encoded into its contract.
    Encode {
        /// The source.
        source_name: String,
        /// The table.
        table: String,
        /// Why.
        message: String,
    },
    #[error("snapshot progress topic {topic}: {message}")]
    /// The snapshot progress topic could not be read or written (transient).
    Progress {
        /// The progress topic.
        topic: String,
        /// What failed.
        message: String,
    },
    #[error("snapshot delivery to topic {topic} failed: {message}")]
    /// A snapshot record was not acknowledged (transient: the chunk is read again).
    Delivery {
        /// The topic.
        topic: String,
        /// librdkafka's reason.
        message: String,
    },
    #[error("source {source_name}: signal table {table}: {message}\n  hint: {hint}")]
    /// The signal table cannot be used.
    Signal {
        /// The source.
        source_name: String,
        /// The signal table.
        table: String,
        /// What failed.
        message: String,
        /// How to fix it.
        hint: String,
        /// The connection broke (rather than the table being unusable).
        transient: bool,
    },
    #[error("source {source_name}: the snapshot task stopped abnormally: {message}")]
    /// The snapshot task panicked or was cancelled.
    Task {
        /// The source.
        source_name: String,
        /// The join error.
        message: String,
    },
}

impl SnapshotError {
    /// Whether restarting the snapshot after a backoff may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SnapshotError::Source(e) => e.is_transient(),
            SnapshotError::Kafka(e) => e.is_transient(),
            SnapshotError::Database { transient, .. } | SnapshotError::Signal { transient, .. } => {
                *transient
            }
            SnapshotError::Progress { .. } | SnapshotError::Delivery { .. } => true,
            SnapshotError::NoKey { .. }
            | SnapshotError::Encode { .. }
            | SnapshotError::Task { .. } => false,
        }
    }
}

fn db_error(source_name: &str, table: &str, e: &tokio_postgres::Error) -> SnapshotError {
    let transient = e
        .as_db_error()
        .is_none_or(|db| crate::source::error::sqlstate_is_transient(db.code().code()));
    SnapshotError::Database {
        source_name: source_name.to_string(),
        table: table.to_string(),
        message: walcast_text::describe(e),
        transient,
    }
}

/// Counters of a source's snapshots, for logs and metrics.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    /// Rows published by snapshots since start.
    pub rows_published: AtomicU64,
    /// Chunks published since start.
    pub chunks_published: AtomicU64,
    /// Tables whose snapshot finished.
    pub tables_done: AtomicU64,
    /// Tables waiting for or in their snapshot.
    pub tables_pending: AtomicU64,
}

/// The running snapshot of one source; aborted when dropped (its progress is durable).
#[derive(Debug)]
pub struct Snapshot {
    source_name: String,
    handle: tokio::task::JoinHandle<Result<(), SnapshotError>>,
    /// Counters of this snapshot.
    pub stats: Arc<SnapshotStats>,
}

impl Snapshot {
    /// Completes when the snapshot task ends: every table read (and, without a signal
    /// table, nothing more to do), or a failure.
    pub async fn finished(&mut self) -> Result<(), SnapshotError> {
        (&mut self.handle).await.unwrap_or_else(|join| {
            Err(SnapshotError::Task {
                source_name: self.source_name.clone(),
                message: join.to_string(),
            })
        })
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// What every table reader shares.
struct Shared {
    source_name: String,
    settings: SourceSettings,
    chunk_rows: u64,
    max_rows_per_sec: u64,
    publisher: Publisher,
    acked: watch::Receiver<Lsn>,
    /// The slot's confirmed position when the snapshot started.
    confirmed: Lsn,
    parallel: Semaphore,
    limiter: Mutex<(Instant, u64)>,
    stats: Arc<SnapshotStats>,
    signal: Option<signal::Signals>,
}

/// A snapshot exported by the slot's creation: its name and consistent point. The
/// connection that exported it stays open, idle, until every table has been read.
struct Exported {
    _conn: ReplicationConn,
    name: String,
    horizon: Lsn,
}

/// Prepares the snapshots of `source` before its stream starts: creates the slot with an
/// exported snapshot when it is new and `mode` (the source's `snapshot`, or `initial` when
/// `walcast slot recreate --snapshot` asked for one) is `initial`, adds tables new to the
/// configuration to the publication, reads the recorded progress, and starts reading
/// whatever is pending. Returns `None` when there is nothing to do, now or later.
pub async fn start(
    config: &Config,
    source: &SourceConfig,
    mode: SnapshotMode,
    settings: &SourceSettings,
    catalog: &Catalog,
    mappings: Vec<Mapping>,
    acked: watch::Receiver<Lsn>,
) -> Result<Option<Snapshot>, SnapshotError> {
    if mode == SnapshotMode::Never && source.signal_table.is_none() {
        return Ok(None);
    }
    let topic = store::topic(&config.kafka, &source.name);
    store::ensure(&config.kafka, &topic).await?;
    let mut progress = store::read(&config.kafka, &topic, &source.name).await?;
    let publisher = Publisher::create(&config.kafka, &source.name, &topic).await?;
    let signal = match &source.signal_table {
        Some(table) => Some(signal::Signals::open(settings, table).await?),
        None => None,
    };
    let record = |p: &TableProgress| (TableProgress::key(&source.name, &p.table), p.encode());

    let mut exported = None;
    let slot = catalog.slot_state(&settings.slot).await?;
    if mode == SnapshotMode::Initial {
        if slot.is_none() {
            // The intent first: a crash between the slot's creation and the first chunk
            // must still leave every table pending.
            crate::source::prepare(settings).await?;
            for m in &mappings {
                let p = TableProgress::pending(&m.spec.table, 0);
                publisher.publish(Vec::new(), record(&p)).await?;
                progress.insert(p.table.clone(), p);
            }
            let mut conn = ReplicationConn::connect(
                &settings.url,
                &format!("walcast:{}:snapshot", settings.name),
                &settings.tls,
            )
            .await?;
            conn.identify_system().await?;
            // The snapshot is imported on the catalog's server: it must be this one.
            crate::source::hosts::same_server(catalog, &mut conn).await?;
            let (horizon, name) = conn
                .create_slot_exporting(&settings.slot, settings.slot_failover)
                .await?;
            tracing::info!(source = %source.name, slot = %settings.slot, consistent_point = %horizon, snapshot = %name, "created replication slot with an exported snapshot");
            exported = Some(Exported {
                _conn: conn,
                name,
                horizon,
            });
        } else {
            for table in added_tables(catalog, settings).await? {
                let p = TableProgress::pending(&table, 0);
                publisher.publish(Vec::new(), record(&p)).await?;
                let sql = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}.{}",
                    quote_ident(&settings.publication),
                    quote_ident(&table.schema),
                    quote_ident(&table.name)
                );
                // Recorded pending first: once the operator adds it, it is still read.
                if let Some(owner) = catalog
                    .foreign_publication_owner(&settings.publication)
                    .await?
                {
                    return Err(SnapshotError::Source(SourceError::setup(
                        format!("source {}: table {table} is new to the configuration, and publication {}, which role {owner} owns, does not publish it; walcast alters only a publication its own role owns", source.name, settings.publication),
                        format!("run {sql}, then restart (its rows are read then)"),
                    )));
                }
                catalog.client().batch_execute(&sql).await.map_err(|e| {
                    // 25006: read-only transaction, i.e. the source decodes on a standby.
                    let on_standby = e.code().is_some_and(|c| c.code() == "25006");
                    SnapshotError::Source(SourceError::setup(
                        format!("source {}: cannot add table {table} to publication {}: {}", source.name, settings.publication, walcast_text::describe(&e)),
                        if on_standby {
                            format!("the source's url reaches a standby: on the primary run {sql}")
                        } else {
                            format!("run {sql} yourself, or make walcast's role a member of the role owning the table")
                        },
                    ))
                })?;
                tracing::info!(source = %source.name, %table, "table added to the publication; its rows are read while the others stream");
                progress.insert(p.table.clone(), p);
            }
        }
    }
    let confirmed = catalog
        .slot_state(&settings.slot)
        .await?
        .and_then(|s| s.confirmed_flush)
        .and_then(|t| t.parse().ok())
        .unwrap_or(Lsn::ZERO);

    let by_name: HashMap<String, Mapping> = mappings
        .into_iter()
        .filter(|m| m.reads_snapshots())
        .map(|m| (m.spec.table.to_string(), m))
        .collect();
    let mut pending: Vec<(Mapping, TableProgress)> = progress
        .into_values()
        .filter(|p| p.state == State::Pending)
        .filter_map(|p| by_name.get(&p.table).map(|m| (m.clone(), p)))
        .collect();
    pending.sort_by(|a, b| a.1.table.cmp(&b.1.table));
    if pending.is_empty() && signal.is_none() {
        return Ok(None);
    }
    let stats = Arc::new(SnapshotStats::default());
    let shared = Arc::new(Shared {
        source_name: source.name.clone(),
        settings: settings.clone(),
        chunk_rows: source.snapshot_chunk_rows,
        max_rows_per_sec: source.snapshot_max_rows_per_sec,
        publisher,
        acked,
        confirmed,
        parallel: Semaphore::new(source.snapshot_parallel_tables as usize),
        limiter: Mutex::new((Instant::now(), 0)),
        stats: stats.clone(),
        signal,
    });
    let handle = tokio::spawn(run(shared, pending, exported, by_name));
    Ok(Some(Snapshot {
        source_name: source.name.clone(),
        handle,
        stats,
    }))
}

/// Configured tables missing from an existing publication.
async fn added_tables(
    catalog: &Catalog,
    settings: &SourceSettings,
) -> Result<Vec<TableName>, SnapshotError> {
    let rows = catalog
        .client()
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&settings.publication],
        )
        .await
        .map_err(|e| db_error(&settings.name, &settings.publication, &e))?;
    if rows.is_empty() {
        // No publication yet: the source creates it with every table.
        let exists = catalog
            .client()
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&settings.publication],
            )
            .await
            .map_err(|e| db_error(&settings.name, &settings.publication, &e))?;
        if exists.is_none() {
            return Ok(Vec::new());
        }
    }
    let published: Vec<TableName> = rows
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect();
    Ok(settings
        .tables
        .iter()
        .filter(|t| !published.contains(t))
        .cloned()
        .collect())
}

async fn run(
    shared: Arc<Shared>,
    pending: Vec<(Mapping, TableProgress)>,
    mut exported: Option<Exported>,
    mappings: HashMap<String, Mapping>,
) -> Result<(), SnapshotError> {
    let export = exported.as_ref().map(|e| (e.name.clone(), e.horizon));
    let mut tables = JoinSet::new();
    shared
        .stats
        .tables_pending
        .store(pending.len() as u64, Ordering::Relaxed);
    let pending_names = pending.iter().map(|(_, p)| p.table.clone()).collect();
    for (mapping, progress) in pending {
        // A table resumed from recorded progress is read in fresh snapshots.
        let export = export.clone().filter(|_| progress.after.is_none());
        tables.spawn(table(shared.clone(), mapping, progress, export));
    }
    let mut running: std::collections::HashSet<String> = pending_names;
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            joined = tables.join_next(), if !tables.is_empty() => {
                match joined.expect("not empty") {
                    Ok(Ok(done)) => {
                        shared.stats.tables_done.fetch_add(1, Ordering::Relaxed);
                        running.remove(&done.table);
                        if tables.is_empty() {
                            // The exported snapshot is no longer needed.
                            drop(exported.take());
                        }
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(join) => return Err(SnapshotError::Task { source_name: shared.source_name.clone(), message: join.to_string() }),
                }
            }
            _ = poll.tick(), if shared.signal.is_some() => {
                let signals = shared.signal.as_ref().expect("guarded");
                for request in signals.requested().await? {
                    let Some(mapping) = mappings.get(&request.table) else {
                        signals.refuse(request.id, &format!("table {} is not one of source {}'s tables (or it has no snapshot or insert contract)", request.table, shared.source_name)).await?;
                        continue;
                    };
                    if running.contains(&request.table) {
                        // Taken once the table's current snapshot ends.
                        continue;
                    }
                    let p = TableProgress::pending(&mapping.spec.table, request.id);
                    shared.publisher.publish(Vec::new(), (TableProgress::key(&shared.source_name, &p.table), p.encode())).await?;
                    signals.accept(request.id).await?;
                    tracing::info!(source = %shared.source_name, table = %p.table, request = request.id, "on-demand snapshot accepted");
                    running.insert(p.table.clone());
                    tables.spawn(table(shared.clone(), mapping.clone(), p, None));
                }
            }
            else => return Ok(()),
        }
    }
}

/// Reads one table to its end, publishing chunk after chunk; returns its final progress.
async fn table(
    shared: Arc<Shared>,
    mapping: Mapping,
    progress: TableProgress,
    export: Option<(String, Lsn)>,
) -> Result<TableProgress, SnapshotError> {
    let _permit = shared.parallel.acquire().await.expect("never closed");
    let source_name = shared.source_name.clone();
    let name = progress.table.clone();
    let fail = |e: tokio_postgres::Error| db_error(&source_name, &name, &e);
    let catalog = Catalog::connect(
        &shared.settings.url,
        &shared.settings.name,
        &shared.settings.tls,
    )
    .await?;
    let client = catalog.client();
    client
        .batch_execute("SET standard_conforming_strings = on; SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3")
        .await
        .map_err(fail)?;
    let table = &mapping.spec.table;
    let key = key_columns(client, table).await.map_err(fail)?;
    if key.is_empty() {
        return Err(SnapshotError::NoKey {
            source_name,
            table: table.to_string(),
        });
    }
    let estimated = estimate(client, table).await.map_err(fail)?;
    let read: std::collections::HashSet<&str> = mapping
        .spec
        .contracts()
        .flat_map(|c| c.fields.iter())
        .map(|f| {
            mapping
                .spec
                .columns
                .get(&f.name)
                .unwrap_or(&f.name)
                .as_str()
        })
        .collect();
    let columns: Vec<(String, bool)> = mapping
        .table
        .columns
        .iter()
        .map(|c| (c.name.clone(), read.contains(c.name.as_str())))
        .collect();
    let plan = ChunkPlan::new(table, &columns, key, shared.chunk_rows);
    tracing::info!(source = %source_name, table = %name, rows_estimated = ?estimated, resumed_after = ?progress.after, request = progress.request, "snapshot of table started");

    let (chunks_tx, mut chunks) = mpsc::channel::<Chunk>(1);
    let reader = Reader {
        shared: shared.clone(),
        mapping: mapping.clone(),
        plan,
        export,
    };
    let after = progress.after.clone();
    let reading = tokio::spawn(async move { reader.run(catalog, after, chunks_tx).await });
    let mut reading = AbortOnDrop(reading);
    let started = Instant::now();
    let done_at_start = progress.rows_done;
    let mut progress = progress;
    let mut logged = Instant::now();
    let rows_metric = crate::metrics::get()
        .snapshot_rows
        .get_or_create_owned(&[("source", source_name.clone()), ("table", name.to_string())]);
    while let Some(chunk) = chunks.recv().await {
        let next = progress.advanced(chunk.records.len() as u64, chunk.last);
        let rows = chunk.records.len() as u64;
        shared
            .publisher
            .publish(
                chunk.records,
                (TableProgress::key(&source_name, &next.table), next.encode()),
            )
            .await?;
        progress = next;
        shared
            .stats
            .rows_published
            .fetch_add(rows, Ordering::Relaxed);
        rows_metric.inc_by(rows);
        shared
            .stats
            .chunks_published
            .fetch_add(1, Ordering::Relaxed);
        let finished = progress.state == State::Done;
        if let Some(signals) = &shared.signal {
            if progress.request > 0 {
                signals
                    .report(progress.request, &progress, estimated)
                    .await?;
            }
        }
        if finished || logged.elapsed() >= Duration::from_secs(5) {
            logged = Instant::now();
            let eta = plan::eta(
                progress.rows_done,
                progress.rows_done - done_at_start,
                estimated,
                started.elapsed(),
            );
            tracing::info!(
                source = %source_name,
                table = %name,
                rows_done = progress.rows_done,
                rows_estimated = ?estimated,
                eta_secs = ?eta.map(|d| d.as_secs()),
                done = finished,
                "snapshot progress"
            );
        }
        if finished {
            break;
        }
    }
    let read = (&mut reading.0).await.map_err(|join| SnapshotError::Task {
        source_name: source_name.clone(),
        message: join.to_string(),
    })?;
    read?;
    if progress.state != State::Done {
        return Err(SnapshotError::Task {
            source_name,
            message: format!("the reader of table {name} stopped before its end"),
        });
    }
    tracing::info!(source = %source_name, table = %name, rows = progress.rows_done, secs = started.elapsed().as_secs_f64(), "snapshot of table done");
    Ok(progress)
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One chunk, encoded: its records, and the key of its last row (`None` at the end).
struct Chunk {
    records: Vec<Record>,
    last: Option<Vec<String>>,
}

struct Reader {
    shared: Arc<Shared>,
    mapping: Mapping,
    plan: ChunkPlan,
    export: Option<(String, Lsn)>,
}

impl Reader {
    async fn run(
        self,
        catalog: Catalog,
        mut after: Option<Vec<String>>,
        chunks: mpsc::Sender<Chunk>,
    ) -> Result<(), SnapshotError> {
        let client = catalog.client();
        let name = self.mapping.spec.table.to_string();
        let fail = |e: tokio_postgres::Error| db_error(&self.shared.source_name, &name, &e);
        let topic: Arc<str> = Arc::from(self.mapping.spec.topic.as_str());
        loop {
            let horizon = match &self.export {
                Some((snapshot, horizon)) => {
                    client
                        .batch_execute(&format!(
                            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
                            plan::quote_literal(snapshot)
                        ))
                        .await
                        .map_err(fail)?;
                    *horizon
                }
                None => (*self.shared.acked.borrow()).max(self.shared.confirmed),
            };
            let (lsn, seq) = plan::read_version(horizon);
            let (lsn_text, seq_text) = (lsn.to_string(), seq.to_string());
            let now_micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or_default()
                .to_string();
            let stream = client
                .copy_out(&self.plan.query(after.as_deref()))
                .await
                .map_err(fail)?;
            tokio::pin!(stream);
            let mut parser = copy::CopyParser::default();
            let mut records = Vec::with_capacity(self.plan.rows() as usize);
            let mut last = None;
            let width = self.plan.width();
            loop {
                while let Some(datums) = parser.next_row().map_err(|e| SnapshotError::Database {
                    source_name: self.shared.source_name.clone(),
                    table: name.clone(),
                    message: e.to_string(),
                    transient: false,
                })? {
                    if datums.len() != width + self.plan.key_width() {
                        return Err(SnapshotError::Database {
                            source_name: self.shared.source_name.clone(),
                            table: name.clone(),
                            message: format!(
                                "a row of {} fields, expected {}",
                                datums.len(),
                                width + self.plan.key_width()
                            ),
                            transient: true,
                        });
                    }
                    let key: Vec<String> = datums[width..]
                        .iter()
                        .map(|d| match d {
                            crate::source::pgoutput::Datum::Binary(b) => {
                                String::from_utf8_lossy(b).into_owned()
                            }
                            _ => String::new(),
                        })
                        .collect();
                    let row = Row::new(TupleData(datums), false);
                    let event = self.mapping.snapshot_event(&row).map_err(|message| {
                        SnapshotError::Encode {
                            source_name: self.shared.source_name.clone(),
                            table: name.clone(),
                            message,
                        }
                    })?;
                    if let Some(event) = event {
                        let event_id = format!(
                            "{}/{lsn_text}/snapshot/{name}/{}",
                            self.shared.source_name,
                            key.join("/")
                        );
                        let headers = [
                            ("event_type", event.event_type.as_bytes()),
                            ("op", event.op.as_bytes()),
                            ("source", self.shared.source_name.as_bytes()),
                            ("lsn", lsn_text.as_bytes()),
                            ("seq", seq_text.as_bytes()),
                            ("xid", b"0".as_slice()),
                            ("commit_ts", now_micros.as_bytes()),
                            ("event_id", event_id.as_bytes()),
                        ]
                        .into_iter()
                        .fold(
                            OwnedHeaders::new_with_capacity(8),
                            |h, (key, value)| {
                                h.insert(Header {
                                    key,
                                    value: Some(value),
                                })
                            },
                        );
                        records.push(Record {
                            topic: topic.clone(),
                            key: event.key,
                            value: event.value,
                            headers,
                        });
                    }
                    last = Some(key);
                }
                use futures_util::StreamExt;
                match stream.next().await {
                    Some(bytes) => parser.push(bytes.map_err(fail)?),
                    None => break,
                }
            }
            if self.export.is_some() {
                client.batch_execute("COMMIT").await.map_err(fail)?;
            }
            let rows = records.len() as u64;
            let end = rows < self.plan.rows();
            self.limit(rows).await;
            let chunk = Chunk {
                records,
                last: if end { None } else { last.clone() },
            };
            if chunks.send(chunk).await.is_err() {
                return Ok(());
            }
            if end {
                return Ok(());
            }
            after = last;
        }
    }

    /// Waits as long as the source's rate limit asks after reading `rows` more rows.
    async fn limit(&self, rows: u64) {
        let per_sec = self.shared.max_rows_per_sec;
        if per_sec == 0 {
            return;
        }
        let delay = {
            let mut l = self.shared.limiter.lock().expect("limiter lock");
            l.1 += rows;
            plan::rate_delay(per_sec, l.1, l.0.elapsed())
        };
        tokio::time::sleep(delay).await;
    }
}

/// The columns `table` is chunked by: its primary key, else its replica identity index;
/// empty when it has neither.
async fn key_columns(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<Vec<KeyColumn>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN LATERAL (SELECT i.indkey FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident) \
                           ORDER BY i.indisprimary DESC LIMIT 1) i ON true \
             JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, pos) ON true \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
             WHERE n.nspname = $1 AND c.relname = $2 ORDER BY k.pos",
            &[&table.schema, &table.name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KeyColumn {
            name: r.get(0),
            sql_type: r.get(1),
        })
        .collect())
}

/// The planner's estimate of the table's rows, if it has one.
async fn estimate(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<Option<u64>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT c.reltuples::float8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await?;
    let estimate: f64 = row.get(0);
    if estimate >= 0.0 {
        return Ok(Some(estimate as u64));
    }
    // Never analyzed: count, within a bound.
    let counted = client
        .batch_execute("SET statement_timeout = 5000")
        .await
        .and(Ok(()));
    let count = match counted {
        Ok(()) => client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.{}",
                    quote_ident(&table.schema),
                    quote_ident(&table.name)
                ),
                &[],
            )
            .await
            .ok()
            .map(|r| r.get::<_, i64>(0) as u64),
        Err(_) => None,
    };
    client.batch_execute("SET statement_timeout = 0").await?;
    Ok(count)
}
