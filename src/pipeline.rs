//! One source's wiring: source → events → producer, with the acknowledged position flowing
//! back to the source.
//!
//! # Start-up
//! Everything is checked before anything streams: tables, the mapping, the contracts in the
//! registry, the topics. A transient failure anywhere (the registry or Kafka unreachable, a
//! reconnect of the source, a Kafka transaction the coordinator aborted) restarts the whole
//! pipeline after a backoff from [`crate::retry`]; the slot then resends everything not yet
//! confirmed, so a restart only ever causes redelivery. A permanent failure stops this source
//! alone, with the reason.
//!
//! # Standby
//! A second `walcast run` on the same configuration finds the slot active and waits as a
//! standby: it checks every 2 s (`STANDBY_CHECK`) and touches nothing the active instance uses
//! (no registration, no transactional id, which would fence the active one). When the active
//! instance dies, PostgreSQL releases the slot as soon as it sees the connection close, and
//! the standby takes over from the slot's confirmed position (and, with exactly-once, its
//! progress record), so nothing is lost or, exactly-once, doubled.
//!
//! # Slot safety
//! Before anything is created or published, the source's progress record (written in both
//! delivery modes, with the cluster's system identifier and timeline) is read and the slot
//! and server judged against it ([`crate::source::slot`]): a source that has published
//! before stops when its slot is gone, the server is another cluster, or its WAL ends before
//! what Kafka holds. A new source (no record, or one `walcast slot recreate` reset) creates
//! its slot here and records it at once. At-least-once, the record then follows the
//! acknowledged position at most once a second (`PROGRESS_INTERVAL`) and at a clean stop.
//!
//! # No loss
//! The source confirms to PostgreSQL only the position the producer reports as acknowledged
//! (see [`crate::kafka::producer`]): every event of every transaction up to it is in Kafka.
//! A change of a relation no mapping covers, or of a mapped one under a new name, stops the
//! source instead of being skipped (see `src/pipeline/relations.rs`).
//!
//! # Exactly once
//! With `kafka.exactly_once`, Kafka transactions hold whole source transactions. On start the
//! pipeline reads the source's committed progress (see [`crate::kafka::progress`]) and skips
//! every source transaction whose commit record starts before it: those are in a committed
//! Kafka transaction already. If the replication stream restarts in the middle of a source
//! transaction, part of it is in the open Kafka transaction: that transaction is aborted and
//! the pipeline restarts, so a read_committed consumer never sees part of a transaction nor
//! any event twice.
//!
//! # Shutdown
//! Stop taking events; at-least-once flushes the producer so the final acknowledged position
//! covers everything sent, exactly-once aborts the open Kafka transaction (the slot resends
//! it). Then the source confirms the final acknowledged position and stops.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, SourceConfig};
use crate::events::mapping::{Event, Mapping, SchemaIds, TableSpec};
use crate::events::EventsError;
use crate::kafka::producer::{SourceProducer, Transactions};
use crate::kafka::watermark::{TxNo, Watermark};
use crate::kafka::KafkaError;
use crate::lsn::Lsn;
use crate::registry::client::Client;
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::source::catalog::Catalog;
use crate::source::change::PG_EPOCH_OFFSET_MICROS;
use crate::source::{self, SourceError, SourceEvent, SourceSettings};
use prometheus_client::metrics::counter::Counter;

mod relations;

/// Why a source's pipeline stopped or restarts.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Mapping, encoding or registering events failed.
    #[error(transparent)]
    Events(#[from] EventsError),
    /// The producer failed: a broker error, a failed delivery or an aborted transaction.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The replication source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Exactly-once only: the replication stream reconnected in the middle of a transaction
    /// whose first part was already in an (aborted) Kafka transaction.
    #[error("source {source_name}: the replication stream restarted inside transaction {xid}; the Kafka transaction holding its first part was aborted, and the pipeline restarts to publish it whole")]
    Interrupted {
        /// Name of the source.
        source_name: String,
        /// Transaction id of the interrupted transaction.
        xid: u32,
    },
    /// A published table was truncated, and it does not say to skip truncates.
    #[error("source {source_name}: table {table} was truncated (at {lsn}), and its [[source.table]] has no truncate contract; replicas would silently keep the rows it removed, so nothing from it on is published or confirmed\n  hint: add truncate = \"<file>.avsc\" (an Avro record without fields) to its [[source.table]], so a truncate event reaches every partition and sinks clear their replicas; or set skip_truncate = true to publish nothing for truncates (then clear the replicas by hand, or re-read them with walcast snapshot); then restart")]
    Truncated {
        /// Name of the source.
        source_name: String,
        /// The table, `schema.table`.
        table: String,
        /// Commit LSN of the truncating transaction.
        lsn: Lsn,
    },
    /// A change arrived for a relation no `[[source.table]]` maps (see `src/pipeline/relations.rs`).
    #[error("source {source_name}: a change of {table} (relation {oid}) arrived in the transaction committed at {lsn}, and no [[source.table]] maps it; skipping it would lose it, so nothing from it on is published or confirmed\n  hint: publication {publication} sends a table the configuration does not list: add {table} to the source's [[source.table]] list, or remove it from the publication (ALTER PUBLICATION {publication} DROP TABLE {table}); if it is a partition of a configured table, run ALTER PUBLICATION {publication} SET (publish_via_partition_root = true); then restart")]
    Unmapped {
        /// Name of the source.
        source_name: String,
        /// The relation as the change names it, `schema.table`.
        table: String,
        /// The relation's OID.
        oid: u32,
        /// Commit LSN of the transaction holding the change.
        lsn: Lsn,
        /// The source's publication, quoted for SQL.
        publication: String,
    },
    /// A mapped relation arrives under another name: renamed or moved to another schema.
    #[error("source {source_name}: relation {oid} was mapped as {was} and now arrives as {now} (in the transaction committed at {lsn}): the table was renamed or moved to another schema (ALTER TABLE … RENAME or SET SCHEMA), and the configuration names it as it was, so nothing from it on is published or confirmed\n  hint: set table = \"{now}\" in the [[source.table]] that says table = \"{was}\" (its topic and contracts stay as they are), then restart; the publication follows the table by itself")]
    Renamed {
        /// Name of the source.
        source_name: String,
        /// The relation's OID.
        oid: u32,
        /// The name it was mapped under, `schema.table`.
        was: String,
        /// The name it arrives under now, `schema.table`.
        now: String,
        /// Commit LSN of the transaction whose change announced the new name.
        lsn: Lsn,
    },
    /// The snapshot of the source's tables failed.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A task of the pipeline panicked or was cancelled.
    #[error("source {source_name}: its {what} task stopped abnormally: {message}")]
    Task {
        /// Name of the source.
        source_name: String,
        /// Which task: `source`, for instance.
        what: &'static str,
        /// The panic or cancellation message.
        message: String,
    },
}

impl PipelineError {
    /// Whether restarting the pipeline after a backoff may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Events(e) => e.is_transient(),
            PipelineError::Kafka(e) => e.is_transient(),
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Snapshot(e) => e.is_transient(),
            PipelineError::Interrupted { .. } => true,
            PipelineError::Task { .. }
            | PipelineError::Truncated { .. }
            | PipelineError::Unmapped { .. }
            | PipelineError::Renamed { .. } => false,
        }
    }
}

/// How often a standby checks whether the active instance released the slot.
const STANDBY_CHECK: Duration = Duration::from_secs(2);

/// A run that streamed this long counts as a success: the next failure backs off from the
/// start again.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// Runs `sources[index]` until `shutdown` or a permanent error, restarting on transient ones.
pub async fn run(
    config: Arc<Config>,
    index: usize,
    registry: Arc<Client>,
    mut shutdown: Shutdown,
    part: crate::parts::PartHandle,
) -> Result<(), PipelineError> {
    let source = &config.sources[index];
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_millis(source.reconnect_max_backoff_ms),
    );
    let mut standby = false;
    loop {
        let started = Instant::now();
        let error = match run_once(&config, source, &registry, shutdown.clone(), &part).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && !shutdown.is_triggered() => e,
            Err(e) => return Err(e),
        };
        if let PipelineError::Source(SourceError::SlotActive { pid, .. }) = &error {
            // Another instance streams: wait as its standby, checking at a steady pace so a
            // takeover after its death takes seconds, not a grown backoff.
            if !standby {
                tracing::info!(source = %source.name, pid, "standby: another process streams from the slot; this instance takes over when it is released");
                part.set(crate::parts::PartState::Standby);
                standby = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(STANDBY_CHECK) => continue,
                _ = shutdown.wait() => return Ok(()),
            }
        }
        standby = false;
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(source = %source.name, error = %error, "pipeline interrupted; restarting in {delay:?}");
        part.waiting(format_args!(
            "pipeline interrupted: {error}; restarting in {delay:?}"
        ));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => return Ok(()),
        }
    }
}

/// The Kafka transactional id and progress topic of `source`.
pub fn transactions(config: &Config, source: &SourceConfig) -> Option<Transactions> {
    config.kafka.exactly_once.then(|| Transactions {
        id: format!("{}.{}", config.kafka.client_id, source.name),
        progress_topic: format!("{}.progress.{}", config.kafka.client_id, source.name),
        interval: Duration::from_millis(config.kafka.transaction_interval_ms),
    })
}

async fn run_once(
    config: &Config,
    source: &SourceConfig,
    registry: &Client,
    mut shutdown: Shutdown,
    part: &crate::parts::PartHandle,
) -> Result<(), PipelineError> {
    let specs = crate::events::specs(config, source)?;
    // A wrong CA or password stops the source here, before anything is read or published.
    crate::kafka::security::connect_async(&config.kafka, crate::kafka::security::CONNECT_TIMEOUT)
        .await?;
    let mut settings = SourceSettings::from_config(source);
    settings.part = part.clone();
    // Only mapped columns are ever decoded, so only they need a supported type.
    settings.read_columns = Some(
        specs
            .iter()
            .map(|spec| {
                let columns = spec
                    .contracts()
                    .flat_map(|c| c.fields.iter())
                    .map(|f| spec.columns.get(&f.name).unwrap_or(&f.name).clone())
                    .collect();
                (spec.table.clone(), columns)
            })
            .collect(),
    );

    let mut catalog = Catalog::connect(&settings.url, &settings.name, &settings.tls).await?;
    // Before anything is compiled or read: a snapshot would publish a generated column's
    // values that streamed changes cannot carry.
    catalog
        .check_generated_columns(
            &settings.publication,
            &settings.tables,
            settings.read_columns.as_ref(),
        )
        .await?;
    // Standby: while another instance streams from the slot, this one waits before touching
    // anything it shares (above all the transactional ids, which would fence the active one).
    if let Some(state) = catalog.slot_state(&settings.slot).await? {
        if let Some(pid) = state.active_pid {
            return Err(SourceError::SlotActive {
                source_name: source.name.clone(),
                slot: settings.slot.clone(),
                pid,
            }
            .into());
        }
    }
    // Out of standby, if it was; running only once the source streams from its slot.
    part.set(crate::parts::PartState::Starting);
    let ids = crate::events::register(registry, &specs, config.registry.compatibility).await?;
    let started_at = catalog.current_wal_lsn().await?;
    let mut mappings = Mappings::default();
    let mut defaulted_at_start = Vec::new();
    let mut issues = Vec::new();
    let specs: Vec<(Arc<TableSpec>, SchemaIds)> = specs.into_iter().zip(ids).collect();
    for (spec, ids) in &specs {
        let (table, not_null) = catalog.describe(&spec.table).await?;
        match Mapping::compile(spec.clone(), Arc::new(table), Some(&not_null), *ids) {
            Ok(m) => {
                for (contract, field) in m.defaulted() {
                    tracing::warn!(source = %source.name, table = %spec.table, contract, field, "no column feeds this field, so every event carries the contract's default; map it in [[source.table]] columns if a column holds it");
                    defaulted_at_start.push((spec.table.to_string(), contract, field));
                }
                mappings.insert(m);
            }
            Err(mut found) => issues.append(&mut found),
        }
    }
    if !issues.is_empty() {
        return Err(EventsError::Mapping {
            source_name: source.name.clone(),
            issues,
        }
        .into());
    }
    let topic_error = |topic: &str| {
        let topic = topic.to_string();
        move |source| KafkaError::Topic { topic, source }
    };
    for (spec, _) in &specs {
        let settings = config.kafka.topic_settings(&spec.topic);
        crate::kafka::ensure_topic(&config.kafka, &spec.topic, &settings)
            .await
            .map_err(topic_error(&spec.topic))?;
    }

    let transactions = transactions(config, source);
    let (acked_tx, acked_rx) = watch::channel(Lsn::ZERO);
    let watermark = Arc::new(Mutex::new(Watermark::default()));
    let mut producer = SourceProducer::create(
        &config.kafka,
        &source.name,
        watermark.clone(),
        acked_tx,
        transactions.clone(),
    )
    .await?;
    // Slot safety: whether this source published before, from which cluster, and whether
    // its slot is still there, before anything is created or published.
    let start = slot_start(config, source, &settings, &catalog).await?;
    producer.set_progress(start.topic.clone(), start.stamp.clone());
    // What a committed Kafka transaction already holds is skipped, never published again.
    let mut skip_before = Lsn::ZERO;
    if let (Some(progress), true) = (start.resumed, producer.is_transactional()) {
        tracing::info!(source = %source.name, %progress, "Kafka holds this source's events up to its progress record; transactions before it are skipped");
        skip_before = progress;
        // Kafka holds it: the slot may be confirmed up to here at once.
        producer.acknowledge(progress);
    }

    // Snapshots start before the stream: a new slot is created here, with the snapshot
    // its tables are read in.
    let mode = if start.stamp.snapshot_pending {
        crate::config::SnapshotMode::Initial
    } else {
        source.snapshot
    };
    let mut snapshot = crate::snapshot::start(
        config,
        source,
        mode,
        &settings,
        &catalog,
        mappings.0.clone(),
        acked_rx.clone(),
    )
    .await?;
    let mut progress_written = start.resumed.unwrap_or(Lsn::ZERO);
    if start.new {
        // A new source's slot, created now, and its first progress record: from here on
        // a missing slot is a gap, never a new start.
        if catalog.slot_state(&settings.slot).await?.is_none() {
            // The publication first, as a snapshot's slot creation does: a refusal leaves
            // no slot behind, and the slot decodes with its publication in place.
            source::prepare(&settings).await?;
            source::safety::create(&settings).await?;
        }
        progress_written = catalog
            .slot_state(&settings.slot)
            .await?
            .and_then(|s| s.confirmed_flush)
            .and_then(|t| t.parse().ok())
            .unwrap_or(Lsn::ZERO);
        producer.write_progress(progress_written, true).await?;
    } else if start.promoted {
        producer.write_progress(progress_written, true).await?;
    }

    let from_start = specs.iter().map(|(s, _)| s.table.to_string()).collect();
    let mut pipeline = Pipeline {
        name: source.name.clone(),
        publication: settings.publication.clone(),
        unpublished: Default::default(),
        specs,
        mappings,
        started_at,
        from_start,
        defaulted_at_start,
        current: None,
        watermark,
        producer,
        skip_before,
        last_end: None,
        event_counts: EventCounts::default(),
        latency: Latency::new(&source.name),
    };
    let (events_tx, mut events) = mpsc::channel(16);
    let (stop_source, source_stopped) = oneshot::channel::<()>();
    let mut acked_for_latency = acked_rx.clone();
    let catalog_target = (settings.url.clone(), settings.tls.clone());
    let mut source_task = tokio::spawn(source::run(settings, events_tx, acked_rx, async {
        let _ = source_stopped.await;
    }));
    let mut last_events = Instant::now();
    // Slot lag and retained WAL for /metrics, read from the catalog every few seconds.
    let slot = source.slot_name();
    let mut measure = tokio::time::interval(SLOT_LAG_INTERVAL);
    measure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At-least-once: the progress record follows the acknowledged position, at most once a
    // second (exactly-once writes it with every Kafka commit).
    let at_least_once = !pipeline.producer.is_transactional();
    let mut progress_tick = tokio::time::interval(PROGRESS_INTERVAL);
    progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stamp_changed = false;
    let outcome = loop {
        // Exactly-once: when the open Kafka transaction is due to commit (far away otherwise).
        let deadline = pipeline
            .commit_deadline(last_events)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            batch = events.recv() => match batch {
                Some(batch) => {
                    last_events = Instant::now();
                    if let Err(e) = pipeline.publish(batch, &mut catalog).await {
                        break Err(e);
                    }
                    if let Err(e) = pipeline.commit_if_due(last_events).await {
                        break Err(e);
                    }
                }
                None => break Ok(()),
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                if let Err(e) = pipeline.commit_if_due(last_events).await {
                    break Err(e);
                }
            }
            finished = async { snapshot.as_mut().expect("guarded").finished().await }, if snapshot.is_some() => {
                snapshot = None;
                if let Err(e) = finished {
                    break Err(e.into());
                }
                if start.stamp.snapshot_pending {
                    tracing::info!(source = %source.name, "the snapshot walcast slot recreate asked for is complete");
                    pipeline.producer.set_snapshot_pending(false);
                    stamp_changed = true;
                }
            }
            _ = progress_tick.tick(), if at_least_once => {
                let acked = *acked_for_latency.borrow();
                if acked > progress_written || stamp_changed {
                    if let Err(e) = pipeline.producer.write_progress(acked.max(progress_written), false).await {
                        break Err(e.into());
                    }
                    progress_written = acked.max(progress_written);
                    stamp_changed = false;
                }
            }
            Ok(()) = acked_for_latency.changed() => {
                let acked = *acked_for_latency.borrow_and_update();
                pipeline.latency.acknowledged(acked);
            }
            _ = measure.tick() => {
                if catalog.client().is_closed() {
                    // Its server went away (a failover): the source reconnects by itself,
                    // and so does this connection, or the lag would stay as it was.
                    let (url, tls) = &catalog_target;
                    if let Ok(fresh) = Catalog::connect(url, &source.name, tls).await {
                        tracing::info!(source = %source.name, "catalog connection opened again (its server went away)");
                        catalog = fresh;
                    }
                }
                measure_slot(&catalog, &source.name, &slot).await
            }
            _ = shutdown.wait() => break Ok(()),
        }
        if let Some(failure) = pipeline.producer.failure() {
            break Err(failure.into());
        }
    };
    // Whatever chunk was in flight is read again on restart.
    drop(snapshot);
    pipeline.stop().await;
    if at_least_once {
        // Everything acknowledged is recorded before the source confirms it and stops.
        let acked = *acked_for_latency.borrow();
        if acked > progress_written || stamp_changed {
            if let Err(e) = pipeline
                .producer
                .write_progress(acked.max(progress_written), true)
                .await
            {
                tracing::warn!(source = %source.name, error = %e, "the final progress record was not written; the previous one stays, which only means redelivery");
            }
        }
    }
    let _ = stop_source.send(());
    drop(events);
    let source_result = (&mut source_task).await.map_err(|e| PipelineError::Task {
        source_name: source.name.clone(),
        what: "source",
        message: e.to_string(),
    })?;
    tracing::info!(source = %source.name, acked = %pipeline.watermark.lock().expect("watermark lock").acked(), "publisher stopped");
    outcome?;
    source_result.map_err(PipelineError::from)
}

/// At-least-once: how often, at most, the progress record follows the acknowledged position.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// How a source starts, as [`slot_start`] judged it.
struct SlotStart {
    /// The source's progress topic.
    topic: String,
    /// What every progress record of this run carries besides its position.
    stamp: crate::kafka::progress::Progress,
    /// Where Kafka holds this source's events up to, when it resumes.
    resumed: Option<Lsn>,
    /// A new source (never published, or reset by the operator): its slot is created now.
    new: bool,
    /// The timeline moved on since the last record (a promotion with the slot).
    promoted: bool,
}

/// Reads the source's progress record and judges its slot and server against it (see
/// [`crate::source::slot`]): a slot gone, another cluster or WAL behind what Kafka holds
/// stop the source before anything is created or published.
async fn slot_start(
    config: &Config,
    source: &SourceConfig,
    settings: &SourceSettings,
    catalog: &Catalog,
) -> Result<SlotStart, PipelineError> {
    use crate::kafka::progress::{self, Origin, Progress, Reset};
    use crate::source::safety::{self, Published, Verdict};
    let topic = progress::topic(&config.kafka, &source.name);
    progress::ensure(&config.kafka, &topic).await?;
    let recorded = progress::read(&config.kafka, &topic, &source.name).await?;
    let server = safety::identify(settings).await?;
    let slot_exists = catalog.slot_state(&settings.slot).await?.is_some();
    let held = format!("progress topic {topic}");
    let published = recorded
        .as_ref()
        .filter(|p| p.reset.is_none())
        .map(|p| Published {
            lsn: p.lsn,
            system_id: p.origin.as_ref().map(|o| o.system_id.as_str()),
            timeline: p.origin.as_ref().map(|o| o.timeline),
            topic: &held,
        });
    let verdict = safety::judge(
        &source.name,
        &settings.slot,
        published.as_ref(),
        &server,
        slot_exists,
    )
    .map_err(SourceError::from)?;
    let reset = recorded.as_ref().and_then(|p| p.reset);
    if let Some(reset) = reset {
        tracing::info!(source = %source.name, ?reset, "the operator let the slot go (walcast slot drop or recreate): this source starts anew");
    }
    if let Verdict::Promoted { from, to } = verdict {
        tracing::info!(source = %source.name, slot = %settings.slot, from, to, "the server is on a new timeline (a promotion) and has the slot: streaming goes on from it");
    }
    Ok(SlotStart {
        stamp: Progress {
            lsn: Lsn::ZERO,
            origin: Some(Origin {
                system_id: server.system_id.clone(),
                timeline: server.timeline,
            }),
            reset: None,
            snapshot_pending: reset == Some(Reset::Snapshot)
                || recorded.as_ref().is_some_and(|p| p.snapshot_pending),
        },
        resumed: published.map(|p| p.lsn),
        new: verdict == Verdict::New,
        promoted: matches!(verdict, Verdict::Promoted { .. }),
        topic,
    })
}

/// How often `walcast_source_slot_lag_bytes` and `walcast_source_retained_wal_bytes` are read.
const SLOT_LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Sets the slot's lag gauges from the catalog. A failed query only leaves them as they were:
/// a lost connection shows up in publishing, which restarts the pipeline.
async fn measure_slot(catalog: &Catalog, source_name: &str, slot: &str) {
    match catalog.slot_lag(slot).await {
        Ok(Some((lag, retained))) => {
            let metrics = crate::metrics::get();
            let labels = crate::metrics::source(source_name);
            metrics
                .source_slot_lag_bytes
                .get_or_create(&labels)
                .set(lag);
            metrics
                .source_retained_wal_bytes
                .get_or_create(&labels)
                .set(retained);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(source = %source_name, error = %e, "reading the slot's lag failed")
        }
    }
}

/// Each published table's compiled mapping. Looked up per change by the table's schema and
/// name without allocating; a source publishes a handful of tables, so a scan beats hashing.
#[derive(Default)]
struct Mappings(Vec<Mapping>);

impl Mappings {
    /// The mapping of `table` by its name, or else by its OID: a relation replayed under
    /// the name it had before a rename (see [`relations`]).
    fn get(&self, table: &crate::source::Table) -> Option<&Mapping> {
        self.0
            .iter()
            .find(|m| m.spec.table.schema == table.schema && m.spec.table.name == table.name)
            .or_else(|| self.by_oid(table.oid))
    }

    /// The mapping whose table has relation OID `oid`.
    fn by_oid(&self, oid: u32) -> Option<&Mapping> {
        self.0.iter().find(|m| m.table.oid == oid)
    }

    /// Adds `mapping`, replacing the one of the same table.
    fn insert(&mut self, mapping: Mapping) {
        self.0.retain(|m| m.spec.table != mapping.spec.table);
        self.0.push(mapping);
    }
}

/// A source transaction being published: its number, commit LSN, xid and commit time, and
/// whether a committed Kafka transaction already holds it.
#[derive(Debug, Clone, Copy)]
struct Current {
    tx: TxNo,
    lsn: Lsn,
    xid: u32,
    commit_ts: i64,
    skipped: bool,
    sent: bool,
}

struct Pipeline {
    name: String,
    /// The source's publication.
    publication: String,
    /// Relations whose replayed changes are skipped: no longer published (see [`relations`]).
    unpublished: std::collections::HashSet<u32>,
    specs: Vec<(Arc<TableSpec>, SchemaIds)>,
    mappings: Mappings,
    /// Where the server's WAL ended when the source started: a change of a table's shape
    /// in a transaction committed after it is live; before it, history replayed.
    started_at: Lsn,
    /// The tables whose mapping is still the one compiled from the catalog at start.
    from_start: std::collections::HashSet<String>,
    /// `(table, contract file, field)` no column fed at start: a default the operator let
    /// be (a column dropped on purpose, then a restart), not reported lost in history.
    defaulted_at_start: Vec<(String, String, String)>,
    current: Option<Current>,
    watermark: Arc<Mutex<Watermark>>,
    producer: SourceProducer,
    /// Source transactions whose commit starts before this are in Kafka already.
    skip_before: Lsn,
    /// The `end_lsn` of the last whole source transaction in the open Kafka transaction.
    last_end: Option<Lsn>,
    /// `walcast_source_events_total` of each (topic, event type) sent so far.
    event_counts: EventCounts,
    /// `walcast_publish_latency_seconds` of the transactions sent and not yet acknowledged.
    latency: Latency,
}

/// Source transactions whose events were sent, waiting for the acknowledged position to pass
/// them: then their commit → acknowledgement time is observed.
struct Latency {
    histogram: prometheus_client::metrics::histogram::Histogram,
    /// `(end_lsn, commit time in Unix microseconds)`, in commit order.
    waiting: std::collections::VecDeque<(Lsn, i64)>,
}

impl Latency {
    fn new(source_name: &str) -> Self {
        Latency {
            histogram: crate::metrics::get()
                .publish_latency_seconds
                .get_or_create_owned(&crate::metrics::source(source_name)),
            waiting: Default::default(),
        }
    }

    fn sent(&mut self, end_lsn: Lsn, commit_ts: i64) {
        // Bounded: a broker that never acknowledges stops the pipeline long before.
        if self.waiting.len() < 100_000 {
            self.waiting
                .push_back((end_lsn, commit_ts + PG_EPOCH_OFFSET_MICROS));
        }
    }

    fn acknowledged(&mut self, acked: Lsn) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        while let Some(&(end, committed)) = self.waiting.front() {
            if end > acked {
                break;
            }
            self.waiting.pop_front();
            self.histogram
                .observe((now - committed).max(0) as f64 / 1_000_000.0);
        }
    }
}

/// The series of `walcast_source_events_total` by (topic, event type), kept so that counting
/// an event neither hashes labels nor allocates; a source has a handful of them.
#[derive(Default)]
struct EventCounts(Vec<(String, String, Counter)>);

impl EventCounts {
    fn get(&mut self, source_name: &str, topic: &str, event: &str) -> &Counter {
        let found = self.0.iter().position(|(t, e, _)| t == topic && e == event);
        let index = found.unwrap_or_else(|| {
            let counter = crate::metrics::get().source_events.get_or_create_owned(&[
                ("source", source_name.to_string()),
                ("topic", topic.to_string()),
                ("event", event.to_string()),
            ]);
            self.0.push((topic.to_string(), event.to_string(), counter));
            self.0.len() - 1
        });
        &self.0[index].2
    }
}

impl Pipeline {
    async fn publish(
        &mut self,
        batch: Vec<SourceEvent>,
        catalog: &mut Catalog,
    ) -> Result<(), PipelineError> {
        for event in batch {
            match event {
                SourceEvent::Begin {
                    xid,
                    commit_lsn,
                    commit_ts,
                } => {
                    if let Some(open) = self.current {
                        // The source reconnected inside a transaction, which comes again.
                        if self.producer.is_transactional() && open.sent {
                            return Err(PipelineError::Interrupted {
                                source_name: self.name.clone(),
                                xid: open.xid,
                            });
                        }
                    }
                    let tx = self.watermark.lock().expect("watermark lock").begin();
                    self.current = Some(Current {
                        tx,
                        lsn: commit_lsn,
                        xid,
                        commit_ts,
                        skipped: commit_lsn < self.skip_before,
                        sent: false,
                    });
                }
                SourceEvent::Schema { new, .. } => self.reshape(new, catalog).await?,
                SourceEvent::Change(change) => self.change(&change, catalog).await?,
                SourceEvent::Commit { end_lsn, .. } => {
                    if let Some(current) = self.current.take() {
                        if current.sent && !current.skipped {
                            self.latency.sent(end_lsn, current.commit_ts);
                        }
                        let moved = self
                            .watermark
                            .lock()
                            .expect("watermark lock")
                            .commit(current.tx, end_lsn);
                        if current.skipped {
                            // Already in Kafka: safe to confirm, in stream order. But one
                            // resent (the replication connection came back) while it sits in
                            // the open Kafka transaction is in Kafka only once that commits,
                            // which confirms it then.
                            let in_open_transaction = self.producer.is_transactional()
                                && self.last_end.is_some_and(|open| end_lsn <= open);
                            if !in_open_transaction {
                                self.producer.acknowledge(end_lsn);
                            }
                        } else if self.producer.is_transactional() {
                            // Whole in the open Kafka transaction: if the stream restarts,
                            // it is not published twice; if that transaction aborts, the
                            // pipeline restarts from the progress record.
                            self.last_end = Some(end_lsn);
                            self.skip_before = self.skip_before.max(end_lsn);
                        } else if let Some(lsn) = moved {
                            self.producer.acknowledge(lsn);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Exactly-once: when the open Kafka transaction can and should commit. It can only
    /// on a source transaction's boundary (it holds whole source transactions only).
    fn commit_deadline(&self, last_events: Instant) -> Option<Instant> {
        if self.last_end.is_none() || self.current.is_some_and(|c| c.sent) {
            return None;
        }
        self.producer.commit_deadline(last_events)
    }

    /// Exactly-once: commits the open Kafka transaction if it is due.
    async fn commit_if_due(&mut self, last_events: Instant) -> Result<(), PipelineError> {
        let Some(end) = self.last_end else {
            return Ok(());
        };
        if self
            .commit_deadline(last_events)
            .is_none_or(|due| due > Instant::now())
        {
            return Ok(());
        }
        self.producer.commit(end).await?;
        self.last_end = None;
        Ok(())
    }

    /// Stops publishing: flushes (at-least-once) or aborts the open Kafka transaction.
    async fn stop(&mut self) {
        let outcome = if self.producer.is_transactional() {
            self.producer.abort().await
        } else {
            self.producer.flush(Duration::from_secs(30)).await
        };
        if let Err(e) = outcome {
            tracing::warn!(source = %self.name, error = %e, "not everything sent was acknowledged before stopping; it is sent again on restart");
        }
    }

    /// A table's shape changed: compile its mapping again. An added column no contract
    /// names changes nothing; a change that breaks a contract stops the source.
    async fn reshape(
        &mut self,
        table: Arc<crate::source::Table>,
        catalog: &mut Catalog,
    ) -> Result<(), PipelineError> {
        let live = self.current.is_none_or(|c| c.lsn >= self.started_at);
        let Some((spec, ids)) = self.spec_of(&table, live).map_err(|e| *e)? else {
            // Unmapped: its first change stops the source.
            return Ok(());
        };
        if self
            .mappings
            .get(&table)
            .is_some_and(|m| *m.table == *table)
        {
            return Ok(());
        }
        let key = spec.table.clone();
        let (_, not_null) = catalog.describe(&key).await?;
        let located = |issues: Vec<String>| EventsError::Mapping {
            source_name: self.name.clone(),
            issues: issues
                .into_iter()
                .map(|i| format!("after a change of table {key}: {i}"))
                .collect(),
        };
        let mapping = Mapping::compile(spec, table, Some(&not_null), ids).map_err(located)?;
        // A live change of shape (committed after the source started) is judged against
        // the shape before it. In history replayed, the first shape of a table is not: the
        // one the source started from was read from today's catalog, which comes after it
        // (a column added since). Later changes in history are judged, but a field no column
        // fed at start keeps its default (dropped on purpose, then a restart).
        let table_key = key.to_string();
        let first_in_history = !live && self.from_start.contains(&table_key);
        self.from_start.remove(&table_key);
        if let Some(lost) = self
            .mappings
            .get(&mapping.table)
            .filter(|_| !first_in_history)
            .map(|old| {
                old.columns_lost(&mapping, |contract, field| {
                    !live
                        && self
                            .defaulted_at_start
                            .iter()
                            .any(|(t, c, f)| *t == table_key && c == contract && f == field)
                })
            })
            .filter(|lost| !lost.is_empty())
        {
            return Err(located(lost).into());
        }
        self.mappings.insert(mapping);
        Ok(())
    }

    async fn change(
        &mut self,
        change: &source::Change,
        catalog: &Catalog,
    ) -> Result<(), PipelineError> {
        let Some(current) = self.current else {
            // The assembler only hands over changes between a Begin and its Commit.
            return Err(SourceError::Protocol(format!(
                "a change of {} arrived outside a transaction",
                change.table
            ))
            .into());
        };
        if current.skipped {
            return Ok(());
        }
        let Some(mapping) = self.mappings.get(&change.table) else {
            return self.unmapped(change, current.lsn, catalog).await;
        };
        let lsn = current.lsn;
        let topic = &mapping.spec.topic;
        let events: Vec<Event> = if change.op == source::Op::Truncate {
            if mapping.publishes_truncates() {
                // On every partition: each reader of the topic, whichever partitions it
                // holds, sees it in order with that partition's changes.
                let partitions = self.producer.partitions(topic).await?;
                tracing::info!(source = %self.name, table = %change.table, %lsn, %topic, partitions, "TRUNCATE published on every partition");
                (0..partitions)
                    .filter_map(|p| mapping.truncate_event(p))
                    .collect()
            } else if mapping.spec.skip_truncate {
                tracing::info!(source = %self.name, table = %change.table, %lsn, "TRUNCATE not published (skip_truncate = true); replicas keep the rows");
                return Ok(());
            } else {
                // Never ignored silently: replicas would keep rows the source no longer has.
                return Err(PipelineError::Truncated {
                    source_name: self.name.clone(),
                    table: change.table.to_string(),
                    lsn,
                });
            }
        } else {
            mapping
                .events(change)
                .map_err(|message| EventsError::Encode {
                    source_name: self.name.clone(),
                    xid: current.xid,
                    lsn,
                    message,
                })?
        };
        let (lsn_text, seq_text, xid_text) = (
            lsn.to_string(),
            change.seq.to_string(),
            current.xid.to_string(),
        );
        let ts_text = (current.commit_ts + PG_EPOCH_OFFSET_MICROS).to_string();
        for event in events {
            // A truncate's copies, one per partition, are distinct events.
            let event_id = match event.partition {
                Some(p) => format!("{}/{lsn_text}/{seq_text}/{}/p{p}", self.name, event.part),
                None => format!("{}/{lsn_text}/{seq_text}/{}", self.name, event.part),
            };
            let headers = OwnedHeaders::new_with_capacity(8);
            let headers = [
                ("event_type", event.event_type.as_bytes()),
                ("op", event.op.as_bytes()),
                ("source", self.name.as_bytes()),
                ("lsn", lsn_text.as_bytes()),
                ("seq", seq_text.as_bytes()),
                ("xid", xid_text.as_bytes()),
                ("commit_ts", ts_text.as_bytes()),
                ("event_id", event_id.as_bytes()),
            ]
            .into_iter()
            .fold(headers, |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value),
                })
            });
            self.watermark
                .lock()
                .expect("watermark lock")
                .sent(current.tx);
            self.producer
                .send(
                    topic,
                    event.partition,
                    &event.key,
                    event.value.as_deref(),
                    headers,
                    current.tx,
                )
                .await?;
            self.event_counts
                .get(&self.name, topic, &event.event_type)
                .inc();
        }
        if let Some(c) = self.current.as_mut() {
            c.sent = true;
        }
        Ok(())
    }
}
