//! Spec: a database that is not set up for walcast is refused before anything streams, with
//! a message naming the object and the exact SQL that fixes it.

use crate::support::targets::OwnPostgres;
use crate::support::{source_settings, unique, RunningSource, Stack};
use walcast::source::{prepare, SourceError, SourceSettings};

/// A fresh database owned by the test, with `ddl` run in it and walcast allowed to publish.
async fn database(stack: &Stack, prefix: &str, ddl: &str) -> (String, String) {
    let name = unique(prefix);
    let db = stack.fresh_pg_database(&name).await;
    stack
        .pg(&db)
        .await
        .batch_execute(&format!(
            "{ddl}; GRANT CREATE ON DATABASE {name} TO walcast;"
        ))
        .await
        .unwrap();
    (name, db)
}

async fn refusal(settings: &SourceSettings) -> String {
    match prepare(settings).await {
        Ok(_) => panic!("source {} was accepted", settings.name),
        Err(e) => {
            assert!(!e.is_transient(), "{e} must be permanent");
            e.to_string()
        }
    }
}

#[tokio::test]
async fn wal_level_other_than_logical_is_refused() {
    // A cluster of the test's own, with PostgreSQL's default wal_level = replica.
    let stack = Stack::get();
    let plain = OwnPostgres::start(&unique("wal_replica")).await;
    let mut settings = source_settings(stack, "plain", "postgres", &["public.users"]);
    settings.url = plain.url("postgres");
    assert_eq!(
        refusal(&settings).await,
        "source plain: wal_level is replica, and logical decoding needs logical\n  hint: run ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL"
    );
}

#[tokio::test]
async fn a_role_without_replication_is_refused() {
    let stack = Stack::get();
    let (name, db) = database(
        stack,
        "err_norepl",
        "CREATE TABLE users (id int PRIMARY KEY)",
    )
    .await;
    let role = unique("plain_role");
    stack.fresh_role(&role, "LOGIN").await;
    let mut settings = source_settings(stack, &name, &db, &["public.users"]);
    settings.url = stack.pg_url_for(&role, &db);
    assert_eq!(
        refusal(&settings).await,
        format!("source {name}: role {role} lacks the REPLICATION attribute\n  hint: run ALTER ROLE \"{role}\" WITH REPLICATION")
    );
}

#[tokio::test]
async fn a_table_without_primary_key_under_replica_identity_default_is_refused() {
    let stack = Stack::get();
    let (name, db) = database(stack, "err_nopk", "CREATE TABLE events (id int, body text)").await;
    assert_eq!(
        refusal(&source_settings(stack, &name, &db, &["public.events"])).await,
        format!(
            "source {name}: table public.events has no primary key and REPLICA IDENTITY DEFAULT, so its updates and deletes cannot be identified\n  hint: run ALTER TABLE \"public\".\"events\" ADD PRIMARY KEY (…), or ALTER TABLE \"public\".\"events\" REPLICA IDENTITY FULL"
        )
    );
}

#[tokio::test]
async fn replica_identity_nothing_is_refused() {
    let stack = Stack::get();
    let (name, db) = database(
        stack,
        "err_nothing",
        "CREATE TABLE events (id int PRIMARY KEY); ALTER TABLE events REPLICA IDENTITY NOTHING",
    )
    .await;
    assert_eq!(
        refusal(&source_settings(stack, &name, &db, &["public.events"])).await,
        format!(
            "source {name}: table public.events has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be identified\n  hint: run ALTER TABLE \"public\".\"events\" REPLICA IDENTITY DEFAULT (it needs a primary key) or ALTER TABLE \"public\".\"events\" REPLICA IDENTITY FULL"
        )
    );
}

#[tokio::test]
async fn a_missing_table_is_named() {
    let stack = Stack::get();
    let (name, db) = database(stack, "err_missing", "SELECT 1").await;
    assert_eq!(
        refusal(&source_settings(stack, &name, &db, &["public.ghosts"])).await,
        format!("source {name}: table public.ghosts does not exist\n  hint: create public.ghosts, or remove it from the source's [[source.table]] list")
    );
}

#[tokio::test]
async fn an_unsupported_column_type_names_table_and_column() {
    let stack = Stack::get();
    let (name, db) = database(
        stack,
        "err_type",
        "CREATE TABLE shapes (id int PRIMARY KEY, center point)",
    )
    .await;
    assert_eq!(
        refusal(&source_settings(stack, &name, &db, &["public.shapes"])).await,
        format!(
            "source {name}: column public.shapes.center has type point, which walcast does not support\n  hint: leave center out of the table's event mapping, or change its type (e.g. ALTER TABLE public.shapes ALTER COLUMN center TYPE text)"
        )
    );
}

#[tokio::test]
async fn a_publication_with_other_tables_is_refused() {
    let stack = Stack::get();
    let (name, db) = database(
        stack,
        "err_pub",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE PUBLICATION pub_ab FOR TABLE a",
    )
    .await;
    let mut settings = source_settings(stack, &name, &db, &["public.a", "public.b"]);
    settings.publication = "pub_ab".into();
    assert_eq!(
        refusal(&settings).await,
        format!(
            "source {name}: publication pub_ab publishes [public.a], but the configuration lists [public.a, public.b]\n  hint: run ALTER PUBLICATION \"pub_ab\" SET TABLE \"public\".\"a\", \"public\".\"b\""
        )
    );
}

#[tokio::test]
async fn a_publication_walcast_may_not_create_names_the_reason() {
    let stack = Stack::get();
    let (name, db) = database(stack, "err_owner", "CREATE TABLE a (id int PRIMARY KEY)").await;
    // The options walcast creates its publications with: the highest the server offers.
    let options = if stack.pg_major >= 18 {
        "publish_via_partition_root = true, publish_generated_columns = stored"
    } else {
        "publish_via_partition_root = true"
    };
    assert_eq!(
        refusal(&source_settings(stack, &name, &db, &["public.a"])).await,
        format!(
            "source {name}: cannot create publication {name}: must be owner of table a\n  hint: run CREATE PUBLICATION \"{name}\" FOR TABLE \"public\".\"a\" WITH ({options}) yourself, or give walcast's role CREATE on the database and membership in the role that owns the tables"
        )
    );
}

#[tokio::test]
async fn a_slot_of_another_plugin_is_refused() {
    let stack = Stack::get();
    let (name, db) = database(
        stack,
        "err_plugin",
        "CREATE TABLE a (id int PRIMARY KEY); ALTER TABLE a OWNER TO walcast",
    )
    .await;
    stack
        .pg(&db)
        .await
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{name}', 'test_decoding')"
        ))
        .await
        .unwrap();
    let result = refusal(&source_settings(stack, &name, &db, &["public.a"])).await;
    stack
        .pg(&db)
        .await
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await
        .unwrap();
    assert_eq!(
        result,
        format!(
            "source {name}: replication slot {name} uses plugin test_decoding, not pgoutput\n  hint: give this source another slot name, or drop it: SELECT pg_drop_replication_slot('{name}')"
        )
    );
}

#[tokio::test]
async fn a_slot_active_in_another_process_is_waited_for_naming_the_pid() {
    let stack = Stack::get();
    let (name, db) = database(
        stack,
        "err_active",
        "CREATE TABLE a (id int PRIMARY KEY); ALTER TABLE a OWNER TO walcast",
    )
    .await;
    let first = RunningSource::start_streaming(
        stack,
        &db,
        source_settings(stack, &name, &db, &["public.a"]),
    )
    .await;
    let pid: i32 = stack
        .pg(&db)
        .await
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    let second = prepare(&source_settings(stack, &name, &db, &["public.a"])).await;
    first.stop().await.unwrap();
    let Err(e @ SourceError::SlotActive { .. }) = second else {
        panic!("the second source was accepted: {second:?}")
    };
    assert!(
        e.is_transient(),
        "a slot in use is waited for (a standby, a dead connection), not a reason to stop"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "source {name}: replication slot {name} is active for PID {pid}; waiting for it to be released\n  hint: if that is not another instance of this source stopping, stop the client using it (SELECT pg_terminate_backend({pid})) or give this source its own slot"
        )
    );
}
