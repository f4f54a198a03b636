//! # walcast connectors
//!
//! Read replicas in other services' stores: PostgreSQL and MySQL/MariaDB tables, Redis hashes.
//! A connector knows nothing about Kafka or Avro: it receives typed changes and writes them.
//! Every store lives in one file of this crate, with the same shape.
//!
//! This crate owns all I/O with the sink stores, including the connectivity probes that
//! `walcast check --connect` runs before any data moves.

pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sink;
pub mod text;

pub use sink::{Batch, Change, Op, Position, Sink, Value, Version};

use std::error::Error as StdError;

/// Why a store could not be reached or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{}", describe(.0))]
    Mysql(#[from] mysql_async::Error),
    #[error("{}", describe(.0))]
    Redis(#[from] ::redis::RedisError),
    /// The store is not set up as the replica needs; the message says how to fix it.
    #[error("{0}")]
    Setup(String),
}

impl Error {
    /// Worth retrying: the store was unreachable or busy, not wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Postgres(e) => e.as_db_error().is_none_or(|db| {
                // Connection, resource and serialization classes: 08, 53, 57, 40.
                matches!(&db.code().code()[..2], "08" | "53" | "57" | "40")
            }),
            Error::Mysql(e) => {
                matches!(e, mysql_async::Error::Io(_) | mysql_async::Error::Driver(_))
            }
            Error::Redis(e) => e.is_io_error() || e.is_timeout() || e.is_connection_dropped(),
            Error::Setup(_) => false,
        }
    }
}

/// An error and its causes on one line, without repeating a cause the error already printed.
pub fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
