//! # walcast connectors
//!
//! Read replicas in other services' stores: PostgreSQL and MySQL/MariaDB tables, Redis hashes.
//! A connector knows nothing about Kafka or Avro: it receives typed changes and writes them.
//! Every store lives in one file of this crate, with the same shape.
//!
//! This crate owns all I/O with the sink stores, including the connectivity probes that
//! `walcast check --connect` runs before any data moves.

pub mod column;
pub mod connector;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod rounds;
pub mod sink;
pub mod table;
pub mod text;
pub mod tls;

pub use connector::{Connector, Endpoint, Issue};
pub use sink::{Batch, Change, Field, FieldType, Op, Position, Sink, Value, Version};
pub use table::{TableOptions, TableSettings};

use walcast_text::describe;

/// Runs `futures` concurrently on the current task, and returns their outputs in order. No
/// task is spawned: the futures may borrow (a connection, a batch). A future's first poll
/// happens in order, so requests each sends when first polled leave in that order.
pub async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Why a store could not be reached or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PostgreSQL replica could not be reached, read or written.
    #[error("{}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A MySQL or MariaDB replica could not be reached, read or written.
    #[error("{}", describe(.0))]
    Mysql(#[from] mysql_async::Error),
    /// A Redis cache could not be reached, read or written.
    #[error("{}", describe(.0))]
    Redis(#[from] ::redis::RedisError),
    /// The store is not set up as the replica needs; the message says how to fix it.
    #[error("{0}")]
    Setup(String),
    /// TLS or authentication failed in a way only a configuration change fixes (an untrusted
    /// certificate, a refused password); the message names the key to fix. Never retried.
    #[error("{0}")]
    Security(String),
    /// The store refused a value of the change (a data exception), and walcast named the
    /// column the store's own message leaves out. Poison, like the error it wraps.
    #[error("{message} ({columns})")]
    Value {
        /// The store's message.
        message: String,
        /// The column or columns it concerns, with the replica table.
        columns: String,
    },
}

impl Error {
    /// Worth retrying: the store was unreachable or busy, not wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Postgres(e) => e.as_db_error().is_none_or(|db| {
                // Connection, resource and serialization classes: 08, 53, 57, 40.
                matches!(&db.code().code()[..2], "08" | "53" | "57" | "40")
            }),
            Error::Mysql(mysql_async::Error::Server(e)) => {
                // Deadlock or lock wait timeout (the transaction was rolled back), the server
                // shutting down, too many connections.
                e.state == "40001" || matches!(e.code, 1205 | 1213 | 1053 | 1040)
            }
            Error::Mysql(e) => {
                matches!(e, mysql_async::Error::Io(_) | mysql_async::Error::Driver(_))
            }
            Error::Redis(e) => {
                use ::redis::ErrorKind::*;
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        BusyLoadingError | TryAgain | ClusterDown | MasterDown | ReadOnly
                    )
            }
            Error::Setup(_) | Error::Security(_) | Error::Value { .. } => false,
        }
    }
}

impl Error {
    /// The data of one change cannot be stored (a constraint or a value the store rejects),
    /// while other changes can: the runner isolates the change and applies its poison
    /// policy. Setup errors are not poison: every change would fail the same way.
    pub fn is_poison(&self) -> bool {
        match self {
            // Data exceptions (22) and integrity constraint violations (23).
            Error::Postgres(e) => e
                .as_db_error()
                .is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23")),
            Error::Mysql(mysql_async::Error::Server(e)) => {
                e.state.starts_with("22") || e.state.starts_with("23")
            }
            Error::Mysql(_) => false,
            // The key holds another kind of value than a hash.
            Error::Redis(e) => e.code() == Some("WRONGTYPE"),
            Error::Value { .. } => true,
            Error::Setup(_) | Error::Security(_) => false,
        }
    }
}
