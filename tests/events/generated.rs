//! Spec: an event field fed by a stored generated column carries the table's values in
//! snapshot reads and streamed changes alike on PostgreSQL 18 (walcast's publication sets
//! `publish_generated_columns`), and is refused at start, naming the column and why, where
//! the server cannot send it: before 18, a virtual column, or a publication of the user's
//! own without the setting (never altered).

use crate::support::daemon::{decode, Daemon, Setup};

/// A daemon over `users` on PostgreSQL `major`, whose events' `name` is the generated
/// column `shout` (`upper(full_name)`, `kind` STORED or VIRTUAL), snapshot first.
async fn shouting(prefix: &str, major: u32, kind: &str) -> Daemon {
    let daemon = Daemon::prepare(
        prefix,
        Setup {
            pg_major: Some(major),
            table_keys: Some("columns = { user_id = \"id\", name = \"shout\" }".into()),
            ..Setup::default()
        },
    )
    .await;
    daemon
        .pg()
        .await
        .batch_execute(&format!(
            "ALTER TABLE users ADD COLUMN shout text NOT NULL GENERATED ALWAYS AS (upper(full_name)) {kind};
             INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'ada@example.com', 'x')"
        ))
        .await
        .unwrap();
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(
        &daemon.config,
        config.replace("snapshot = \"never\"", "snapshot = \"initial\""),
    )
    .unwrap();
    daemon
}

/// The daemon's refusal at start: it exits with 1, logging `message`, before making a slot.
async fn refused(daemon: &mut Daemon, message: &str) {
    daemon.spawn();
    let status = daemon.stops("refusing the generated column").await;
    assert_eq!(status.code(), Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(log.contains(message), "{log}");
    let slots: i64 = daemon
        .pg()
        .await
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&daemon.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_18_a_stored_generated_column_feeds_its_field_in_reads_and_changes() {
    let mut daemon = shouting("ev_gen18", 18, "STORED").await;
    daemon.start().await;
    let pg = daemon.pg().await;
    pg.batch_execute(
        "INSERT INTO users (full_name, email, password_hash) VALUES ('Grace', 'grace@example.com', 'x');
         UPDATE users SET full_name = 'Ada Lovelace' WHERE id = 1",
    )
    .await
    .unwrap();
    let events = decode(&daemon.topic, 3).await;
    let names: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.headers["op"].as_str(),
                e.value.as_ref().unwrap()["name"].as_str().unwrap(),
            )
        })
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("insert", "GRACE"),
            ("snapshot", "ADA"),
            ("update", "ADA LOVELACE")
        ],
        "{events:#?}"
    );
    let gencols: String = pg
        .query_one(
            "SELECT pubgencols::text FROM pg_publication WHERE pubname = $1",
            &[&daemon.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gencols, "s");
    // Still streaming: the column was never taken for a dropped one.
    pg.batch_execute("UPDATE users SET full_name = 'Grace Hopper' WHERE id = 2")
        .await
        .unwrap();
    let events = decode(&daemon.topic, 4).await;
    assert!(
        events.iter().any(|e| e
            .value
            .as_ref()
            .is_some_and(|v| v["name"] == "GRACE HOPPER")),
        "{events:#?}\n{}",
        daemon.log_text()
    );
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn before_18_a_mapping_reading_a_generated_column_is_refused_at_start() {
    let mut daemon = shouting("ev_gen15", 15, "STORED").await;
    refused(
        &mut daemon,
        "column public.users.shout, which an event field reads, is a generated column, and PostgreSQL 15 leaves generated columns out of logical replication (18 sends them with publish_generated_columns): a snapshot would publish its values, streamed changes none\n  hint: leave shout out of the table's event mapping (map the field to another column in [[source.table]] columns, or give it a default), make shout an ordinary column a trigger fills, or upgrade to PostgreSQL 18",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_virtual_generated_column_is_refused_at_start() {
    let mut daemon = shouting("ev_genv", 18, "VIRTUAL").await;
    refused(
        &mut daemon,
        "column public.users.shout, which an event field reads, is a virtual generated column: logical replication never sends its values, so streamed events could not carry it\n  hint: leave shout out of the table's event mapping, or make it a stored generated column (GENERATED ALWAYS AS (…) STORED) on PostgreSQL 18",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_18_a_publication_without_generated_columns_is_refused_naming_the_fix() {
    let mut daemon = shouting("ev_genpub", 18, "STORED").await;
    let pg = daemon.pg().await;
    pg.batch_execute(&format!(
        "CREATE PUBLICATION \"{}\" FOR TABLE users WITH (publish_via_partition_root = true)",
        daemon.name
    ))
    .await
    .unwrap();
    let message = format!("column public.users.shout, which an event field reads, is a generated column, and publication {0} does not send generated columns (publish_generated_columns is none): streamed events could not carry it\n  hint: run ALTER PUBLICATION \"{0}\" SET (publish_generated_columns = stored), then restart", daemon.name);
    refused(&mut daemon, &message).await;
    let gencols: String = pg
        .query_one(
            "SELECT pubgencols::text FROM pg_publication WHERE pubname = $1",
            &[&daemon.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gencols, "n", "the user's publication is not altered");
    // The hint's fix is enough.
    pg.batch_execute(&format!(
        "ALTER PUBLICATION \"{}\" SET (publish_generated_columns = stored)",
        daemon.name
    ))
    .await
    .unwrap();
    daemon.start().await;
    assert_eq!(decode(&daemon.topic, 1).await.len(), 1);
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
}
