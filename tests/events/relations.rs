//! Spec: a change of a relation no `[[source.table]]` maps stops the source, naming the
//! relation and the transaction, and the slot stays before it; a configured table renamed
//! or moved to another schema while running stops it naming both names and the fix, and
//! once the configuration names the table as it is now, its changes are published: none
//! is lost.

use crate::support::daemon::{decode, Daemon, Setup};
use crate::support::{confirmed_flush, wait_confirmed_to_now};

/// The LSN the log names after `after`, up to the next `)` or `,`.
fn lsn_after(log: &str, after: &str) -> walcast::lsn::Lsn {
    let start = log
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} in:\n{log}"))
        + after.len();
    let text: String = log[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == '/')
        .collect();
    text.parse()
        .unwrap_or_else(|_| panic!("an LSN after {after:?} in:\n{log}"))
}

async fn oid(pg: &tokio_postgres::Client, table: &str) -> u32 {
    pg.query_one("SELECT $1::text::regclass::oid", &[&table])
        .await
        .unwrap()
        .get(0)
}

async fn insert_user(pg: &tokio_postgres::Client, table: &str, name: &str) {
    pg.batch_execute(&format!(
        "INSERT INTO {table} (full_name, email, password_hash) VALUES ('{name}', '{name}@example.com', 'x')"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_no_mapping_covers_stops_the_source_before_it() {
    let mut daemon = Daemon::prepare("ev_unmapped_rel", Setup::default()).await;
    daemon.start().await;
    let pg = daemon.pg().await;
    insert_user(&pg, "users", "Ada").await;
    wait_confirmed_to_now(&pg, &daemon.name).await;
    // A table added to walcast's publication by hand, while it runs.
    pg.batch_execute(&format!(
        "CREATE TABLE audit (id int PRIMARY KEY); ALTER PUBLICATION \"{}\" ADD TABLE audit;
         INSERT INTO audit VALUES (1)",
        daemon.name
    ))
    .await
    .unwrap();
    let audit = oid(&pg, "audit").await;
    let status = daemon.stops("on the unmapped change").await;
    assert_eq!(status.code(), Some(1));
    let log = daemon.log_text();
    let expected = format!(
        "source {0}: a change of public.audit (relation {audit}) arrived in the transaction committed at ",
        daemon.name
    );
    assert!(log.contains(&expected), "{log}");
    let lsn = lsn_after(&log, &expected);
    assert!(
        log.contains(&format!(", and no [[source.table]] maps it; skipping it would lose it, so nothing from it on is published or confirmed\n  hint: publication \"{0}\" sends a table the configuration does not list: add public.audit to the source's [[source.table]] list, or remove it from the publication (ALTER PUBLICATION \"{0}\" DROP TABLE public.audit); if it is a partition of a configured table, run ALTER PUBLICATION \"{0}\" SET (publish_via_partition_root = true); then restart", daemon.name)),
        "{log}"
    );
    let confirmed = confirmed_flush(&pg, &daemon.name).await;
    assert!(
        confirmed <= lsn,
        "the slot confirmed {confirmed}, past the unmapped change at {lsn}"
    );
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_or_moved_table_stops_the_source_and_loses_nothing_once_configured() {
    let mut daemon = Daemon::prepare("ev_renamed", Setup::default()).await;
    daemon.start().await;
    let pg = daemon.pg().await;
    let users = oid(&pg, "users").await;
    insert_user(&pg, "users", "Ada").await;
    assert_eq!(decode(&daemon.topic, 1).await.len(), 1);

    // Renamed: the next change arrives under the new name.
    pg.batch_execute("ALTER TABLE users RENAME TO members")
        .await
        .unwrap();
    insert_user(&pg, "members", "Grace").await;
    let status = daemon.stops("on the renamed table").await;
    assert_eq!(status.code(), Some(1));
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("source {}: relation {users} was mapped as public.users and now arrives as public.members (in the transaction committed at ", daemon.name)),
        "{log}"
    );
    assert!(
        log.contains("): the table was renamed or moved to another schema (ALTER TABLE … RENAME or SET SCHEMA), and the configuration names it as it was, so nothing from it on is published or confirmed\n  hint: set table = \"public.members\" in the [[source.table]] that says table = \"public.users\" (its topic and contracts stay as they are), then restart; the publication follows the table by itself"),
        "{log}"
    );

    // The hint's fix: Grace's insert, made after the rename, is published.
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(
        &daemon.config,
        config.replace("table = \"public.users\"", "table = \"public.members\""),
    )
    .unwrap();
    daemon.start().await;
    let names = |events: &[crate::support::daemon::Decoded]| {
        let mut names: Vec<String> = events
            .iter()
            .map(|e| {
                e.value.as_ref().unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        names.sort();
        names.dedup();
        names
    };
    assert_eq!(names(&decode(&daemon.topic, 2).await), ["Ada", "Grace"]);

    // Moved to another schema: the same.
    pg.batch_execute("CREATE SCHEMA archive; ALTER TABLE members SET SCHEMA archive")
        .await
        .unwrap();
    insert_user(&pg, "archive.members", "Edsger").await;
    let status = daemon.stops("on the moved table").await;
    assert_eq!(status.code(), Some(1));
    assert!(
        daemon.log_text().contains(&format!(
            "relation {users} was mapped as public.members and now arrives as archive.members"
        )),
        "{}",
        daemon.log_text()
    );
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(
        &daemon.config,
        config.replace("table = \"public.members\"", "table = \"archive.members\""),
    )
    .unwrap();
    daemon.start().await;
    assert_eq!(
        names(&decode(&daemon.topic, 3).await),
        ["Ada", "Edsger", "Grace"]
    );
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_replayed_from_before_a_rename_map_to_the_table_as_configured_now() {
    let mut daemon = Daemon::prepare("ev_renamed_stopped", Setup::default()).await;
    daemon.start().await;
    let pg = daemon.pg().await;
    insert_user(&pg, "users", "Ada").await;
    wait_confirmed_to_now(&pg, &daemon.name).await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());

    // While walcast is stopped: a change, the rename, another change; the configuration
    // is brought up to date before the start.
    insert_user(&pg, "users", "Grace").await;
    pg.batch_execute("ALTER TABLE users RENAME TO members")
        .await
        .unwrap();
    insert_user(&pg, "members", "Edsger").await;
    let config = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(
        &daemon.config,
        config.replace("table = \"public.users\"", "table = \"public.members\""),
    )
    .unwrap();
    daemon.start().await;
    let events = decode(&daemon.topic, 3).await;
    let mut names: Vec<&str> = events
        .iter()
        .map(|e| e.value.as_ref().unwrap()["name"].as_str().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names, ["Ada", "Edsger", "Grace"], "{}", daemon.log_text());
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_replayed_of_a_table_taken_out_of_the_publication_since_are_skipped() {
    let mut daemon = Daemon::prepare("ev_unpublished", Setup::default()).await;
    daemon.start().await;
    let pg = daemon.pg().await;
    wait_confirmed_to_now(&pg, &daemon.name).await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());

    // While walcast is stopped, a table is published by mistake, written, and taken out
    // again, as the start check would demand.
    pg.batch_execute(&format!(
        "CREATE TABLE audit (id int PRIMARY KEY); ALTER PUBLICATION \"{0}\" ADD TABLE audit;
         INSERT INTO audit VALUES (1)",
        daemon.name
    ))
    .await
    .unwrap();
    insert_user(&pg, "users", "Ada").await;
    pg.batch_execute(&format!(
        "ALTER PUBLICATION \"{}\" DROP TABLE audit",
        daemon.name
    ))
    .await
    .unwrap();
    daemon.start().await;
    assert_eq!(decode(&daemon.topic, 1).await.len(), 1);
    wait_confirmed_to_now(&pg, &daemon.name).await;
    let log = daemon.log_text();
    assert!(
        log.contains("replayed changes of a table the publication no longer sends are skipped"),
        "{log}"
    );
    assert!(daemon.exited().is_none(), "{log}");
    // A live one is not skipped.
    pg.batch_execute(&format!(
        "ALTER PUBLICATION \"{}\" ADD TABLE audit; INSERT INTO audit VALUES (2)",
        daemon.name
    ))
    .await
    .unwrap();
    assert_eq!(
        daemon.stops("on the live unmapped change").await.code(),
        Some(1)
    );
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&daemon.name])
        .await
        .unwrap();
}
