//! Publishing: row changes become contract events on Apache Kafka (decoded by Confluent's client), with no loss through kill -9 and broker deaths, exactly once when asked, and never a topic the broker made up; the admin endpoint reports on it all.
//!
//! One test binary per area: each links librdkafka and the whole crate once.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod broker;
mod exactly_once;
mod generated;
mod publishing;
mod relations;
mod slots;
