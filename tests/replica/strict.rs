//! A MariaDB whose default SQL mode clamps values (no `STRICT_*`) still never receives a
//! clamped or cut value from the sink: the sink's sessions are strict, so a value the
//! column cannot hold is refused as that record's error, naming the column.

use std::collections::BTreeMap;

use crate::support::targets::OwnMariadb;
use connectors::mysql::MysqlSink;
use connectors::{Batch, Change, Op, Sink, TableSettings, Value, Version};

#[tokio::test]
async fn a_lenient_mariadb_never_stores_a_clamped_value() {
    // The server of the test's own: its global SQL mode is changed.
    let db = OwnMariadb::start(false).await;
    let url = db.fresh_database("lenient");
    db.sql(
        "SET GLOBAL sql_mode = ''; \
         CREATE TABLE lenient.replica (user_id BIGINT PRIMARY KEY, age SMALLINT, code VARCHAR(3), \
           _walcast_lsn BIGINT NOT NULL, _walcast_seq INT NOT NULL)",
    );
    // What the server does by itself now: clamps and cuts, with a warning only.
    db.sql("INSERT INTO lenient.replica VALUES (0, 100000, 'ABCDEF', 1, 0)");
    assert_eq!(
        db.sql("SELECT CONCAT(age, ' ', code) FROM lenient.replica WHERE user_id = 0"),
        "32767 ABC\n",
        "the server is lenient"
    );

    let mut sink = MysqlSink::connect(TableSettings {
        url,
        table: "replica".into(),
        key: vec!["user_id".into()],
        columns: BTreeMap::new(),
        fields: None,
        consumer: "walcast.strict".into(),
        auto_create: false,
        auto_add_columns: false,
        tls_mode: None,
        tls_ca_file: None,
    })
    .await
    .unwrap();
    let row = |id: i64, age: i64, code: &str, lsn: u64| Batch {
        changes: vec![Change {
            key: vec![("user_id".into(), Value::Long(id))],
            op: Op::Upsert(vec![
                ("age".into(), Value::Long(age)),
                ("code".into(), Value::Text(code.into())),
            ]),
            version: Version { lsn, seq: 0 },
        }],
        positions: vec![],
    };
    sink.apply(&row(1, 41, "ABC", 10)).await.unwrap();
    for (bad, column) in [
        (row(2, 100_000, "ABC", 20), "age"),
        (row(3, 7, "ABCDEF", 30), "code"),
    ] {
        let e = sink.apply(&bad).await.unwrap_err().to_string();
        assert!(e.contains(column), "names the column {column}: {e}");
    }
    assert_eq!(
        db.sql("SELECT GROUP_CONCAT(user_id, ':', age, ':', code ORDER BY user_id) FROM lenient.replica WHERE user_id > 0"),
        "1:41:ABC\n",
        "only the row that fits is stored"
    );
}
