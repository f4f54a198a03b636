//! The embedded Confluent-compatible schema registry: its REST API, storage in Kafka, compatibility, and Confluent's own client against it.
//!
//! One test binary per area: each links librdkafka and the whole crate once.

#[path = "../support/mod.rs"]
mod support;

mod api;
mod confluent;
