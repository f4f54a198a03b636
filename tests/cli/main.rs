//! The command line: exit codes, `slot drop`, configuration errors with their key paths, and `check --connect` against the real stack.
//!
//! One test binary per area: each links librdkafka and the whole crate once.

#[path = "../support/mod.rs"]
mod support;

mod check_connect;
mod commands;
mod config_errors;
mod slot;
mod status;
