//! Spec: the replication connection authenticates with every method PostgreSQL offers for
//! passwords (cleartext, MD5, SCRAM-SHA-256), and a wrong password is a permanent error.

use std::time::Duration;

use crate::support::{source_settings, unique, RunningSource, Stack};
use walcast::source::protocol::ReplicationConn;
use walcast::source::SourceError;

/// The stack's roles: pg_hba.conf requires exactly this method for each.
const METHODS: &[(&str, &str)] = &[
    ("walcast_password", "password-secret"),
    ("walcast_md5", "md5-secret"),
    ("walcast_scram", "scram-secret"),
];

fn url(stack: &Stack, user: &str, password: &str, db: &str) -> String {
    stack
        .pg_url_for(user, db)
        .replacen(&format!("{user}@"), &format!("{user}:{password}@"), 1)
}

#[tokio::test]
async fn every_password_method_streams_changes() {
    let stack = Stack::get();
    for (user, password) in METHODS {
        let name = unique(&format!("auth_{}", user.trim_start_matches("walcast_")));
        let db = stack.fresh_pg_database(&name).await;
        let pg = stack.pg(&db).await;
        pg.batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO {user};
             GRANT CREATE ON DATABASE {name} TO {user};"
        ))
        .await
        .unwrap();
        let mut settings = source_settings(stack, &name, &db, &["public.t"]);
        settings.url = url(stack, user, password, &db);
        let mut source = RunningSource::start_streaming(stack, &db, settings).await;
        pg.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
        let changes = source.changes(1, Duration::from_secs(30)).await;
        assert_eq!(changes.len(), 1, "{user}");
        source.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_wrong_password_is_a_permanent_authentication_error() {
    let stack = Stack::get();
    for (user, _) in METHODS {
        let err = ReplicationConn::connect(
            &url(stack, user, "wrong", "postgres"),
            "walcast:test",
            &Default::default(),
        )
        .await
        .expect_err("a wrong password must be refused");
        assert!(matches!(err, SourceError::Auth(_)), "{user}: {err:?}");
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            format!("authentication failed: FATAL: password authentication failed for user \"{user}\" (SQLSTATE 28P01)")
        );
    }
    let missing = ReplicationConn::connect(
        &stack.pg_url_for("walcast_scram", "postgres"),
        "walcast:test",
        &Default::default(),
    )
    .await
    .expect_err("no password configured");
    assert_eq!(
        missing.to_string(),
        "authentication failed: the server asks walcast_scram for a password and none is configured; set it in the URL or with password_env"
    );
}
