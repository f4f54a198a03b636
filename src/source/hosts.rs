//! The hosts a source's URL lists, as libpq reads them: `postgres://u@h1:5432,h2:5433/db`
//! names two servers, tried in order, and `target_session_attrs` says which one to keep.
//!
//! The catalog connection gets this from tokio-postgres; the replication connection
//! ([`super::protocol::ReplicationConn`]) is walcast's own, and picks its host with the
//! same rules, so both reach the same server:
//! - hosts are tried in the order written; a port list of one applies to every host;
//! - `target_session_attrs=read-write` keeps the first server whose
//!   `transaction_read_only` is `off` (a primary), `read-only` the first where it is `on`
//!   (a standby), `any` (the default) the first that accepts the connection.
//!
//! After a failover the old primary refuses connections (or is read-only once it comes
//! back as a standby) and the promoted standby answers read-write: the source's ordinary
//! reconnect, with its backoff, finds the new primary. That is why a URL where no host
//! fits yet is a transient error ([`super::SourceError::NoHost`]): a promotion takes
//! seconds.

use std::path::PathBuf;

use tokio_postgres::config::{Host, TargetSessionAttrs};

use super::error::SourceError;

/// One server of the URL's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    /// A TCP host (name or address) and port.
    Tcp {
        /// Host name or address, as written (also the name TLS verifies).
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket directory and port (the socket is `.s.PGSQL.<port>` in it).
    Unix {
        /// The socket's directory.
        dir: PathBuf,
        /// Port, naming the socket file.
        port: u16,
    },
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Candidate::Tcp { host, port } => write!(f, "{host}:{port}"),
            Candidate::Unix { dir, port } => {
                write!(f, "{}", dir.join(format!(".s.PGSQL.{port}")).display())
            }
        }
    }
}

/// The servers of `config`, in the order they are tried. No host means `localhost`, as
/// with libpq.
pub fn candidates(config: &tokio_postgres::Config) -> Result<Vec<Candidate>, SourceError> {
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let count = hosts.len().max(1);
    if ports.len() > 1 && ports.len() != count {
        return Err(SourceError::setup(
            format!(
                "the source's URL lists {count} host(s) and {} ports",
                ports.len()
            ),
            "give one port per host (h1:5432,h2:5433), or one port for all of them",
        ));
    }
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    if hosts.is_empty() {
        return Ok(vec![Candidate::Tcp {
            host: "localhost".into(),
            port: port(0),
        }]);
    }
    Ok(hosts
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            Host::Tcp(host) => Candidate::Tcp {
                host: host.clone(),
                port: port(i),
            },
            #[cfg(unix)]
            Host::Unix(dir) => Candidate::Unix {
                dir: dir.clone(),
                port: port(i),
            },
        })
        .collect())
}

/// Whether a server whose `transaction_read_only` is `read_only` is what `wanted` asks for.
pub fn fits(wanted: TargetSessionAttrs, read_only: bool) -> bool {
    match wanted {
        TargetSessionAttrs::ReadWrite => !read_only,
        TargetSessionAttrs::ReadOnly => read_only,
        _ => true,
    }
}

/// `target_session_attrs` as the URL spells it, for messages.
pub fn attrs_name(wanted: TargetSessionAttrs) -> &'static str {
    match wanted {
        TargetSessionAttrs::ReadWrite => "read-write",
        TargetSessionAttrs::ReadOnly => "read-only",
        _ => "any",
    }
}

/// What tells servers apart: whether it is in recovery, and when its postmaster started.
const FINGERPRINT: &str = "SELECT pg_is_in_recovery()::text, pg_postmaster_start_time()::text";

/// Refuses a session whose two connections reached different servers of the URL's list
/// (`any`, or two standbys with `read-only`, and a host that flapped between the two
/// connects): the slot would be made on one and checked on the other, and an exported
/// snapshot imported where it does not exist. Transient: the next attempt picks again.
pub async fn same_server(
    catalog: &super::catalog::Catalog,
    conn: &mut super::protocol::ReplicationConn,
) -> Result<(), SourceError> {
    let row = catalog
        .client()
        .query_one(FINGERPRINT, &[])
        .await
        .map_err(super::catalog::catalog_error)?;
    let via_catalog: (Option<String>, Option<String>) = (row.get(0), row.get(1));
    let rows = conn.simple_query(FINGERPRINT).await?;
    let via_replication = rows
        .into_iter()
        .next()
        .map(|r| (r.first().cloned().flatten(), r.get(1).cloned().flatten()))
        .unwrap_or_default();
    if via_catalog == via_replication {
        return Ok(());
    }
    Err(SourceError::ServersDiffer {
        replication: conn.target().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(url: &str) -> Vec<String> {
        candidates(&url.parse().unwrap())
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn hosts_come_in_the_order_written_with_their_ports() {
        assert_eq!(
            of("postgres://u@a:5001,b:5002/db?target_session_attrs=read-write"),
            ["a:5001", "b:5002"]
        );
        assert_eq!(of("postgres://u@a,b:6000/db"), ["a:5432", "b:6000"]);
        assert_eq!(of("postgres://u@/db"), ["localhost:5432"]);
        assert_eq!(of("host=a,b port=7000 user=u"), ["a:7000", "b:7000"]);
    }

    #[test]
    fn a_port_list_that_does_not_match_the_hosts_is_refused() {
        let config = "host=a,b,c port=1,2 user=u".parse().unwrap();
        let e = candidates(&config).unwrap_err().to_string();
        assert!(e.contains("3 host(s) and 2 ports"), "{e}");
    }

    #[test]
    fn read_write_keeps_a_primary_and_read_only_a_standby() {
        assert!(fits(TargetSessionAttrs::ReadWrite, false));
        assert!(!fits(TargetSessionAttrs::ReadWrite, true));
        assert!(fits(TargetSessionAttrs::ReadOnly, true));
        assert!(!fits(TargetSessionAttrs::ReadOnly, false));
        assert!(fits(TargetSessionAttrs::Any, true));
    }
}
