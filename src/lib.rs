//! # walcast
//!
//! Change-data-capture from a service's PostgreSQL database to versioned domain events on
//! Kafka, and from there into read replicas owned by other services.
//!
//! ```text
//! service DB (PostgreSQL) ── logical replication (pgoutput v2, streaming) ──▶ source
//!   source   decode pgoutput → Change { table, op, old, new, lsn, seq, xid, commit_ts }
//!   events   table change → domain event (Avro contract from schemas/), Confluent framing
//!   kafka    idempotent producer, acks=all, partitioned by key; delivery reports (or, with
//!            exactly_once, transaction commits) advance the acknowledged LSN that the
//!            source confirms to PostgreSQL
//!   sink     consumer group → decode by registry id → batch → connector → commit offsets
//!   connectors  PostgreSQL / MySQL / Redis replicas, idempotent, guarded by (lsn, seq)
//! ```
//!
//! ## Guarantees
//! - **Nothing is lost.** A WAL position is confirmed to PostgreSQL only after Kafka has
//!   acknowledged every event up to it; a sink commits an offset only after its write is
//!   durable. A crash at any point causes redelivery, never loss.
//! - **Order per key**, from the source table to the replica; a stale event never overwrites
//!   a newer one, because every replica row carries its source `(lsn, seq)`.
//! - **Bad input stops with a clear error**, naming the file, key, table or column and how
//!   to fix it. Nothing is skipped silently.
//!
//! ## Modules
//! - [`config`]: the typed TOML configuration; parse and validate before connecting.
//! - [`kafka`]: client settings, topics, each source's producer (at-least-once or
//!   transactional), the acknowledged-LSN watermark and the progress record (both modes, with
//!   the cluster's identity).
//! - [`check`]: `walcast check --connect`, one probe per configured server.
//! - [`redact`]: connection strings made safe to print.
//! - [`lsn`]: WAL positions.
//! - [`source`]: the PostgreSQL logical replication client.
//! - [`registry`]: the embedded Confluent-compatible schema registry, and its client.
//! - [`events`]: contracts, the table → event mapping and the Avro codec.
//! - [`pipeline`]: one source's wiring, source → events → producer, restarted on transient
//!   errors; the acknowledged position flows back to the source.
//! - [`retry`]: the one backoff policy.
//! - [`shutdown`]: shutdown as a value every part can wait on.
//! - [`snapshot`]: initial, added-table and on-demand snapshots: chunked reads whose
//!   versions order them against streamed changes, progress kept in Kafka.
//! - [`sink`]: the sink runner: consumer group → decode → connector → commit.
//! - [`daemon`]: `walcast run`, every part under one shutdown.
//! - [`status`]: `walcast status`, read from the servers themselves.
//! - [`admin`]: the admin endpoint, `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: walcast's Prometheus metrics, one registry.

pub mod admin;
pub mod check;
pub mod config;
pub mod daemon;
pub mod events;
pub mod kafka;
pub mod lsn;
pub mod metrics;
pub mod parts;
pub mod pipeline;
pub mod redact;
pub mod registry;
pub mod retry;
pub mod shutdown;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod status;
