//! Spec: a source's connections use TLS when configured, verify the server with
//! `verify-full`, and refuse clearly when verification or the server's rules fail.
//! The stack's `walcast_tls` role may only connect over TLS (pg_hba: hostnossl … reject).

use std::path::PathBuf;
use std::time::Duration;

use crate::support::{source_settings, unique, RunningSource, Stack};
use walcast::source::protocol::ReplicationConn;
use walcast::source::tls::{TlsMode, TlsSettings};
use walcast::source::{prepare, SourceError};

fn stack_ca() -> PathBuf {
    let dir =
        std::env::var("WALCAST_STACK_DIR").unwrap_or_else(|_| "/var/tmp/walcast-stack".into());
    PathBuf::from(dir).join("tls/ca.crt")
}

fn tls_url(stack: &Stack, db: &str) -> String {
    stack
        .pg_url_for("walcast_tls", db)
        .replacen("walcast_tls@", "walcast_tls:tls-secret@", 1)
}

#[tokio::test]
async fn verify_full_streams_over_tls() {
    let stack = Stack::get();
    let name = unique("tls_ok");
    let db = stack.fresh_pg_database(&name).await;
    let pg = stack.pg(&db).await;
    pg.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO walcast_tls;
         GRANT CREATE ON DATABASE {name} TO walcast_tls;"
    ))
    .await
    .unwrap();
    let mut settings = source_settings(stack, &name, &db, &["public.t"]);
    settings.url = tls_url(stack, &db);
    settings.tls = TlsSettings {
        mode: TlsMode::VerifyFull,
        ca_file: Some(stack_ca()),
    };
    let mut source = RunningSource::start_streaming(stack, &db, settings).await;
    pg.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    assert_eq!(source.changes(1, Duration::from_secs(30)).await.len(), 1);

    // Both of the source's sessions are encrypted.
    let encrypted: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.usename = 'walcast_tls' AND a.datname = $1 AND s.ssl",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(encrypted, 2, "the catalog and the replication connection");
    source.stop().await.unwrap();
}

#[tokio::test]
async fn a_server_certificate_that_does_not_verify_is_refused() {
    let stack = Stack::get();
    // The system roots do not include the stack's own CA.
    let tls = TlsSettings {
        mode: TlsMode::VerifyFull,
        ca_file: None,
    };
    let err = ReplicationConn::connect(&tls_url(stack, "postgres"), "walcast:test", &tls)
        .await
        .expect_err("an unverifiable certificate must be refused");
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.starts_with("TLS handshake with 127.0.0.1:"), "{text}");
    assert!(text.contains("certificate verify failed"), "{text}");
    assert!(text.ends_with("hint: check tls_ca_file and that the server certificate names this host, or use tls_mode = \"require\" to skip verification"), "{text}");
}

#[tokio::test]
async fn a_server_that_requires_tls_refuses_a_plain_connection() {
    let stack = Stack::get();
    let name = unique("tls_plain");
    let db = stack.fresh_pg_database(&name).await;
    let mut settings = source_settings(stack, &name, &db, &["public.t"]);
    settings.url = tls_url(stack, &db);
    settings.tls = TlsSettings {
        mode: TlsMode::Disable,
        ca_file: None,
    };
    let err = prepare(&settings)
        .await
        .expect_err("plain connections are rejected by pg_hba");
    assert!(matches!(err, SourceError::Auth(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("authentication failed: pg_hba.conf rejects connection for host \"127.0.0.1\", user \"walcast_tls\", database \"{db}\", no encryption")
    );
}
