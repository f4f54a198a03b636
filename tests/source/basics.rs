//! Spec: the source streams every row change of the published tables from a real
//! PostgreSQL 15, in commit order, with (lsn, seq), and confirms only what was acknowledged.

use std::time::Duration;

use crate::support::{source_settings, unique, RunningSource, Stack};
use walcast::source::value::Value;
use walcast::source::Op;

/// A fresh database with a `users` table, and a source streaming it.
async fn users_source(prefix: &str) -> (tokio_postgres::Client, RunningSource) {
    let stack = Stack::get();
    let name = unique(prefix);
    let (db, pg) = users_db(stack, &name).await;
    let settings = source_settings(stack, &name, &db, &["public.users"]);
    (
        pg,
        RunningSource::start_streaming(stack, &db, settings).await,
    )
}

async fn users_db(stack: &Stack, name: &str) -> (String, tokio_postgres::Client) {
    let db = stack.fresh_pg_database(name).await;
    let client = stack.pg(&db).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, email text);
                 ALTER TABLE users OWNER TO walcast;
                 GRANT CREATE ON DATABASE {name} TO walcast;"
        ))
        .await
        .unwrap();
    (db, client)
}

#[tokio::test]
async fn inserts_updates_deletes_and_truncates_arrive_in_commit_order() {
    let (pg, mut source) = users_source("src_ops").await;

    // One two-row transaction, then one transaction per statement.
    for sql in [
        "INSERT INTO users VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', NULL)",
        "UPDATE users SET name = 'Ada Lovelace' WHERE id = 1",
        "UPDATE users SET id = 3 WHERE id = 2",
        "DELETE FROM users WHERE id = 1",
        "TRUNCATE users",
    ] {
        pg.execute(sql, &[]).await.unwrap();
    }

    let changes = source.changes(6, Duration::from_secs(30)).await;
    let ops: Vec<Op> = changes.iter().map(|c| c.op).collect();
    assert_eq!(
        ops,
        [
            Op::Insert,
            Op::Insert,
            Op::Update,
            Op::Update,
            Op::Delete,
            Op::Truncate
        ]
    );

    let t = &changes[0].table;
    assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", "users"));
    let new = |i: usize, col: &str| {
        changes[i]
            .new
            .as_ref()
            .unwrap()
            .get(&changes[i].table, col)
            .unwrap()
            .unwrap()
    };
    let old = |i: usize, col: &str| {
        changes[i]
            .old
            .as_ref()
            .unwrap()
            .get(&changes[i].table, col)
            .unwrap()
            .unwrap()
    };
    assert_eq!(new(0, "id"), Value::Int8(1));
    assert_eq!(new(0, "name"), Value::Text("Ada".into()));
    assert_eq!(new(1, "email"), Value::Null);
    assert_eq!(new(2, "name"), Value::Text("Ada Lovelace".into()));
    assert!(
        changes[2].old.is_none(),
        "the key did not change, so there is no old key"
    );
    assert_eq!(
        old(3, "id"),
        Value::Int8(2),
        "a key change carries the old key"
    );
    assert_eq!(new(3, "id"), Value::Int8(3));
    assert_eq!(old(4, "id"), Value::Int8(1));
    assert!(changes[4].old.as_ref().unwrap().key_only);
    assert!(changes[5].old.is_none() && changes[5].new.is_none());

    // One transaction's changes share its commit LSN and count up from 0; later transactions
    // have later LSNs.
    assert_eq!(changes[0].lsn, changes[1].lsn);
    assert_eq!((changes[0].seq, changes[1].seq), (0, 1));
    assert_eq!(changes[0].xid, changes[1].xid);
    for w in changes[1..].windows(2) {
        assert!(w[0].lsn < w[1].lsn, "{:?} then {:?}", w[0].lsn, w[1].lsn);
    }
    source.stop().await.unwrap();
}

#[tokio::test]
async fn a_changed_table_shape_is_announced_before_its_first_change() {
    use walcast::source::SourceEvent;
    let (pg, mut source) = users_source("src_schema").await;
    pg.execute("INSERT INTO users VALUES (1, 'Ada', NULL)", &[])
        .await
        .unwrap();
    pg.batch_execute(
        "ALTER TABLE users RENAME COLUMN name TO full_name; ALTER TABLE users ADD COLUMN age int",
    )
    .await
    .unwrap();
    pg.execute("INSERT INTO users VALUES (2, 'Grace', NULL, 85)", &[])
        .await
        .unwrap();

    let mut schemas = Vec::new();
    let mut changes = Vec::new();
    while changes.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(30), source.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            SourceEvent::Schema { old, new } => schemas.push((old, new, changes.len())),
            SourceEvent::Change(c) => changes.push(c),
            _ => {}
        }
    }
    assert_eq!(schemas.len(), 2, "first sight, then the change");
    let (old, new, before) = &schemas[1];
    assert_eq!(
        *before, 1,
        "announced before the first change with the new shape"
    );
    let names =
        |t: &walcast::source::Table| t.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(old.as_ref().unwrap()), ["id", "name", "email"]);
    assert_eq!(names(new), ["id", "full_name", "email", "age"]);
    assert_eq!(
        changes[1]
            .new
            .as_ref()
            .unwrap()
            .get(&changes[1].table, "age")
            .unwrap()
            .unwrap(),
        Value::Int4(85)
    );
    source.stop().await.unwrap();
}
