//! The PostgreSQL source against real clusters: streaming, authentication, refusals with their fixes, invalidated slots, streamed transactions, TLS, every type, and captured pgoutput (golden files).
//!
//! One test binary per area: each links librdkafka and the whole crate once.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod basics;
mod errors;
mod failover;
mod golden;
mod invalidated;
mod partitions;
mod publications;
mod standby;
mod streaming;
mod tls;
mod types;
