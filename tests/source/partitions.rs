//! Spec: a partitioned table is published through its root: every change arrives under the
//! root's name and shape, whichever partition holds the row, partitions created or attached
//! while streaming included; a publication of the user's own without
//! `publish_via_partition_root` is refused, naming the fix, and never altered.

use std::time::Duration;

use crate::support::{source_settings, unique, RunningSource, Stack};
use walcast::source::value::Value;
use walcast::source::{prepare, Op};

/// `orders`, partitioned by region, with partitions for `eu` and `us`, owned by walcast.
pub(crate) const ORDERS_DDL: &str = "CREATE TABLE orders (id bigint NOT NULL, region text NOT NULL, note text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
  CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
  CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
  ALTER TABLE orders OWNER TO walcast; ALTER TABLE orders_eu OWNER TO walcast; ALTER TABLE orders_us OWNER TO walcast";

async fn orders_db(stack: &Stack, prefix: &str, more: &str) -> (String, tokio_postgres::Client) {
    let name = unique(prefix);
    let db = stack.fresh_pg_database(&name).await;
    let pg = stack.pg(&db).await;
    pg.batch_execute(&format!(
        "{ORDERS_DDL}; {more}; GRANT CREATE ON DATABASE {name} TO walcast;"
    ))
    .await
    .unwrap();
    (db, pg)
}

/// A row's `(id, region)`.
type Key = (Value, Value);

async fn drop_slot(pg: &tokio_postgres::Client, slot: &str) {
    pg.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn every_change_of_a_partitioned_table_arrives_under_its_root() {
    let stack = Stack::get();
    let (db, pg) = orders_db(stack, "src_part", "SELECT 1").await;
    let settings = source_settings(stack, &db, &db, &["public.orders"]);
    let mut source = RunningSource::start_streaming(stack, &db, settings).await;
    let via_root: bool = pg
        .query_one(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert!(via_root, "walcast creates its publication through the root");

    for sql in [
        "INSERT INTO orders VALUES (1, 'eu', 'a'), (2, 'us', 'b')",
        // Moves the row from orders_eu to orders_us.
        "UPDATE orders SET region = 'us', note = 'moved' WHERE id = 1",
        "UPDATE orders SET note = 'b2' WHERE id = 2",
        "DELETE FROM orders WHERE id = 2",
        // Partitions made while streaming: one created in place, one attached.
        "CREATE TABLE orders_asia PARTITION OF orders FOR VALUES IN ('asia')",
        "INSERT INTO orders VALUES (3, 'asia', 'c')",
        "CREATE TABLE orders_sa (LIKE orders INCLUDING ALL)",
        "ALTER TABLE orders ATTACH PARTITION orders_sa FOR VALUES IN ('sa')",
        "INSERT INTO orders VALUES (4, 'sa', 'd')",
        "UPDATE orders SET region = 'sa' WHERE id = 3",
    ] {
        pg.batch_execute(sql).await.unwrap();
    }
    let changes = source.changes(10, Duration::from_secs(30)).await;
    for c in &changes {
        assert_eq!(
            (c.table.schema.as_str(), c.table.name.as_str()),
            ("public", "orders"),
            "{c:?}"
        );
    }
    let value = |row: &walcast::source::Row, table, col| row.get(table, col).unwrap().unwrap();
    let summary: Vec<(Op, Option<Key>, Option<Key>)> = changes
        .iter()
        .map(|c| {
            let key = |row: &Option<walcast::source::Row>| {
                row.as_ref()
                    .map(|r| (value(r, &c.table, "id"), value(r, &c.table, "region")))
            };
            (c.op, key(&c.old), key(&c.new))
        })
        .collect();
    let key = |id: i64, region: &str| Some((Value::Int8(id), Value::Text(region.into())));
    assert_eq!(
        summary,
        [
            (Op::Insert, None, key(1, "eu")),
            (Op::Insert, None, key(2, "us")),
            // What PostgreSQL sends for a row moving to another partition, even through the
            // root: the delete of the old row and the insert of the new one, in one
            // transaction, in that order.
            (Op::Delete, key(1, "eu"), None),
            (Op::Insert, None, key(1, "us")),
            (Op::Update, None, key(2, "us")),
            (Op::Delete, key(2, "us"), None),
            (Op::Insert, None, key(3, "asia")),
            (Op::Insert, None, key(4, "sa")),
            (Op::Delete, key(3, "asia"), None),
            (Op::Insert, None, key(3, "sa")),
        ],
        "{changes:#?}"
    );
    assert_eq!(changes[2].lsn, changes[3].lsn, "a move is one transaction");
    assert!(changes[2].seq < changes[3].seq);

    // What PostgreSQL does not send through the root: a TRUNCATE of one partition (its
    // rows stay in replicas, see the README); a TRUNCATE of the root arrives as the root's.
    for sql in [
        "TRUNCATE orders_eu",
        "INSERT INTO orders VALUES (5, 'eu', 'e')",
        "TRUNCATE orders",
    ] {
        pg.batch_execute(sql).await.unwrap();
    }
    let changes = source.changes(2, Duration::from_secs(30)).await;
    let ops: Vec<(Op, &str)> = changes
        .iter()
        .map(|c| (c.op, c.table.name.as_str()))
        .collect();
    assert_eq!(
        ops,
        [(Op::Insert, "orders"), (Op::Truncate, "orders")],
        "{changes:#?}"
    );
    source.stop().await.unwrap();
    drop_slot(&pg, &db).await;
}

#[tokio::test]
async fn a_publication_of_partitions_is_refused_naming_the_fix_and_left_as_it_is() {
    let stack = Stack::get();
    // The user's own publication, made without publish_via_partition_root: it sends the
    // partitions' changes under their own names.
    let (db, pg) = orders_db(
        stack,
        "src_part_pub",
        "CREATE PUBLICATION leaves FOR TABLE orders",
    )
    .await;
    let mut settings = source_settings(stack, &db, &db, &["public.orders"]);
    settings.publication = "leaves".into();
    let refusal = match prepare(&settings).await {
        Ok(_) => panic!("a publication sending partitions was accepted"),
        Err(e) => {
            assert!(!e.is_transient(), "{e} must be permanent");
            e.to_string()
        }
    };
    assert_eq!(
        refusal,
        format!("source {db}: publication leaves lacks publish_via_partition_root, so the changes of partitioned table public.orders arrive under its partitions' names, which the configuration does not map\n  hint: run ALTER PUBLICATION \"leaves\" SET (publish_via_partition_root = true), then restart")
    );
    let via_root: bool = pg
        .query_one(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = 'leaves'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!via_root, "the user's publication is not altered");
    let slots: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a refusal leaves no slot behind");

    // The hint's fix is enough.
    pg.batch_execute("ALTER PUBLICATION leaves SET (publish_via_partition_root = true)")
        .await
        .unwrap();
    prepare(&settings).await.unwrap();
}

#[tokio::test]
async fn a_partition_configured_beside_its_root_is_refused() {
    let stack = Stack::get();
    let (db, _pg) = orders_db(stack, "src_part_both", "SELECT 1").await;
    let settings = source_settings(stack, &db, &db, &["public.orders", "public.orders_eu"]);
    let refusal = match prepare(&settings).await {
        Ok(_) => panic!("a partition beside its root was accepted"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        refusal,
        format!("source {db}: table public.orders_eu is a partition of public.orders, which is configured too: published through the root, its changes arrive as public.orders's\n  hint: remove public.orders_eu from the source's [[source.table]] list: public.orders's mapping covers its rows")
    );
    // A partition alone is accepted: it has no published ancestor to be sent as.
    let alone = source_settings(stack, &db, &db, &["public.orders_eu"]);
    prepare(&alone).await.unwrap();
}
