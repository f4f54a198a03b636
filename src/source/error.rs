//! Source errors: transient ones are retried with capped backoff by reconnecting and resuming
//! from the slot; permanent ones stop the source with an operator hint.

use std::fmt;

/// Why the source stopped or must reconnect.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The connection broke or timed out. Transient: reconnect and resume from the slot.
    #[error("connection to {target} lost: {source}")]
    Io {
        /// The server connected to: `host:port`, or the Unix socket's path.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server reported an error.
    #[error("{0}")]
    Server(ServerError),
    /// The server's answer was not what the protocol allows. Permanent.
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// Authentication was refused or is not supported. Permanent.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The database or its tables are not set up for walcast. Permanent, with the fix.
    #[error("{problem}\n  hint: {hint}")]
    Setup {
        /// What is wrong, naming the table, slot or setting.
        problem: String,
        /// What the operator should run or change to fix it.
        hint: String,
    },
    /// Buffering a streamed transaction on local disk failed. Permanent: the spill directory
    /// must be fixed (space, permissions).
    #[error("spilling a streamed transaction to disk: {0}")]
    Spill(std::io::Error),
    /// A catalog query on the ordinary connection failed. `code` is the server's SQLSTATE;
    /// `None` when the connection itself failed (transient).
    #[error("catalog query: {message}")]
    Catalog {
        /// SQLSTATE of the error, or `None` when the connection itself failed.
        code: Option<String>,
        /// The server's or client's message.
        message: String,
    },
    /// Another process streams from the slot. Transient: a dead connection's slot is freed
    /// once PostgreSQL notices, and an active instance that stops frees it for a standby.
    #[error("source {source_name}: replication slot {slot} is active for PID {pid}; waiting for it to be released\n  hint: if that is not another instance of this source stopping, stop the client using it (SELECT pg_terminate_backend({pid})) or give this source its own slot")]
    SlotActive {
        /// Name of the source in the configuration.
        source_name: String,
        /// Name of the replication slot.
        slot: String,
        /// Process id of the backend holding the slot (`pg_replication_slots.active_pid`).
        pid: i32,
    },
    /// No server of the URL's host list took the connection as its `target_session_attrs`
    /// asks (say, every one is read-only while a standby is being promoted). Transient: a
    /// promotion, or a primary coming back, takes seconds.
    #[error("no server of the source's URL is {wanted} (target_session_attrs): {tried}\n  hint: during a failover this passes once the standby is promoted; otherwise list the primary in the source's url")]
    NoHost {
        /// `read-write` or `read-only`.
        wanted: String,
        /// Each host tried and what it was or why it failed.
        tried: String,
    },
    /// The catalog and replication connections reached different servers of a multi-host
    /// URL. Transient: the next attempt picks the host again.
    #[error("the source's catalog and replication connections reached different servers (the replication connection {replication}); connecting again\n  hint: if it persists, list only the wanted servers in the source's url, or set target_session_attrs")]
    ServersDiffer {
        /// The server the replication connection reached.
        replication: String,
    },
    /// The slot is gone, or the server is in another LSN space than before. Permanent.
    /// Boxed: it is large, and every source result carries the error type.
    #[error(transparent)]
    Slot(Box<super::safety::SlotError>),
}

impl From<super::safety::SlotError> for SourceError {
    fn from(e: super::safety::SlotError) -> Self {
        SourceError::Slot(Box::new(e))
    }
}

impl SourceError {
    /// Whether reconnecting may help.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Io { .. } => true,
            SourceError::Server(e) => e.is_transient(),
            SourceError::Catalog { code, .. } => code.as_deref().is_none_or(sqlstate_is_transient),
            SourceError::SlotActive { .. } => true,
            SourceError::NoHost { .. } | SourceError::ServersDiffer { .. } => true,
            _ => false,
        }
    }

    /// A [`SourceError::Protocol`]: the server sent something the protocol does not allow.
    pub fn protocol(msg: impl Into<String>) -> Self {
        SourceError::Protocol(msg.into())
    }

    /// A [`SourceError::Setup`]: what is wrong (`problem`) and the command that fixes it (`hint`).
    pub fn setup(problem: impl Into<String>, hint: impl Into<String>) -> Self {
        SourceError::Setup {
            problem: problem.into(),
            hint: hint.into(),
        }
    }

    /// A catalog query that failed for a reason the code does not say.
    pub fn catalog(message: impl Into<String>) -> Self {
        SourceError::Catalog {
            code: None,
            message: message.into(),
        }
    }

    pub(crate) fn spill(e: std::io::Error) -> Self {
        SourceError::Spill(e)
    }
}

/// An ErrorResponse from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// Severity (`S` field), e.g. `ERROR` or `FATAL`.
    pub severity: String,
    /// SQLSTATE (`C` field), five characters; its class says whether the error is transient.
    pub code: String,
    /// Primary message (`M` field).
    pub message: String,
    /// Detail (`D` field), when the server gave one.
    pub detail: Option<String>,
    /// Hint (`H` field), when the server gave one.
    pub hint: Option<String>,
}

impl ServerError {
    /// Connection-class, shutdown and resource errors pass; the rest are definite.
    pub fn is_transient(&self) -> bool {
        sqlstate_is_transient(&self.code)
    }
}

/// Whether an error with this SQLSTATE may go away by itself: connection exceptions,
/// insufficient resources, an operator's shutdown or crash, serialization failures and
/// deadlocks, a query cancelled (statement timeout), and an object in use (a slot another
/// process streams from). Everything else (a missing table, a permission, a syntax error)
/// stays until someone fixes it.
pub fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57P") // operator intervention: shutdown, crash
        || code == "57014" // query cancelled
        || code.starts_with("40") // transaction rollback: serialization failure, deadlock
        || code == "55006" // object in use
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(d) = &self.detail {
            write!(f, "\n  detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(code: &str) -> SourceError {
        SourceError::Catalog {
            code: Some(code.into()),
            message: "m".into(),
        }
    }

    #[test]
    fn a_catalog_error_is_transient_only_for_the_classes_that_pass() {
        for code in [
            "08006", "53300", "57P01", "57014", "40001", "40P01", "55006",
        ] {
            assert!(catalog(code).is_transient(), "{code} passes");
        }
        for code in ["42P01", "42501", "42601", "22P02", "XX000"] {
            assert!(!catalog(code).is_transient(), "{code} stays until fixed");
        }
        assert!(SourceError::catalog("connection reset").is_transient());
    }

    #[test]
    fn a_url_whose_hosts_do_not_fit_yet_is_retried() {
        // A standby being promoted: the old primary refuses, the standby is still read-only.
        let no_host = SourceError::NoHost {
            wanted: "read-write".into(),
            tried: "a:1: connection refused; b:2 is read-only".into(),
        };
        assert!(no_host.is_transient());
        assert!(SourceError::ServersDiffer {
            replication: "b:2".into()
        }
        .is_transient());
    }
}
