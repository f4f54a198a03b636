//! Snapshots against the real stack: existing rows reach a replica with writes running,
//! through kill -9, for a table added later, on demand to repair a replica, and never over a
//! newer streamed change.
//!
//! One test binary per area: each links librdkafka and the whole crate once.

#[path = "../support/mod.rs"]
mod support;

mod snapshots;
