//! The full loop into every replica store: convergence through kill -9 and store restarts, poison policies, consumer-group takeover, contract versions, truncates, and every supported type.
//!
//! One test binary per area: each links librdkafka and the whole crate once.

#[path = "../support/mod.rs"]
mod support;

mod carried;
mod convergence;
mod foreign;
mod named;
mod partitions;
mod retention;
mod strict;
mod tombstones;
mod truncate;
mod types;
