//! Conformance: the scenarios every connector must pass, against the real store.
//! Each store implements [`Harness`]; each scenario runs once per store, one
//! `conformance!(module => Harness)` line each, against the stack's PostgreSQL, MariaDB and
//! Redis.

use std::collections::BTreeMap;

use connectors::mysql::MysqlSink;
use connectors::postgres::PostgresSink;
use connectors::redis::{RedisSettings, RedisSink};
use connectors::{
    Batch, Change, Field, FieldType, Op, Position, Sink, TableSettings, Value, Version,
};

/// One store under test: a fresh replica, and a way to read back what it holds.
trait Harness: Sized {
    type Sink: Sink;
    async fn fresh(name: &str) -> (Self, Self::Sink);
    /// `id → name` of every row the replica holds.
    async fn rows(&self) -> BTreeMap<i64, String>;
    /// `id → email` of every row the replica holds (NULL as "").
    async fn emails(&self) -> BTreeMap<i64, String>;
    /// A new connection to the same replica, as after a crash.
    async fn reconnect(&self) -> Self::Sink;
    /// A replica that takes any field: a table that auto_create makes and auto_add_columns
    /// extends (`typed_replica`), or the same hashes.
    async fn typed_sink(&self) -> Self::Sink;
    /// What [`Harness::typed_sink`]'s replica holds in `field` for key `id`, as JSON text;
    /// `None` when NULL or missing.
    async fn typed(&self, id: i64, field: &str) -> Option<String>;
}

fn upsert(id: i64, name: &str, lsn: u64, seq: u32) -> Change {
    Change {
        key: vec![("user_id".into(), Value::Long(id))],
        op: Op::Upsert(vec![("name".into(), Value::Text(name.into()))]),
        version: Version { lsn, seq },
    }
}

fn delete(id: i64, lsn: u64, seq: u32) -> Change {
    Change {
        key: vec![("user_id".into(), Value::Long(id))],
        op: Op::Delete,
        version: Version { lsn, seq },
    }
}

fn truncate(lsn: u64, seq: u32) -> Change {
    Change {
        key: Vec::new(),
        op: Op::Truncate,
        version: Version { lsn, seq },
    }
}

fn batch(changes: Vec<Change>) -> Batch {
    Batch {
        changes,
        positions: vec![],
    }
}

fn rows(pairs: &[(i64, &str)]) -> BTreeMap<i64, String> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

async fn inserts_updates_and_deletes_converge<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    sink.apply(&batch(vec![
        upsert(1, "Ada", 10, 0),
        upsert(2, "Grace", 10, 1),
        upsert(3, "Edsger", 10, 2),
    ]))
    .await
    .unwrap();
    sink.apply(&batch(vec![
        upsert(1, "Ada Lovelace", 20, 0),
        delete(2, 30, 0),
    ]))
    .await
    .unwrap();
    assert_eq!(h.rows().await, rows(&[(1, "Ada Lovelace"), (3, "Edsger")]));
}

async fn redelivery_changes_nothing<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    let b = batch(vec![
        upsert(1, "Ada", 10, 0),
        upsert(1, "Ada Lovelace", 10, 1),
        delete(2, 10, 2),
    ]);
    sink.apply(&b).await.unwrap();
    let once = h.rows().await;
    sink.apply(&b).await.unwrap();
    sink.apply(&b).await.unwrap();
    assert_eq!(h.rows().await, once);
    assert_eq!(
        once,
        rows(&[(1, "Ada Lovelace")]),
        "within a batch, the highest version of a key wins"
    );
}

async fn a_stale_update_never_overwrites_a_newer_one<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    sink.apply(&batch(vec![upsert(1, "new", 20, 0)]))
        .await
        .unwrap();
    sink.apply(&batch(vec![upsert(1, "old", 10, 5)]))
        .await
        .unwrap();
    sink.apply(&batch(vec![upsert(1, "same version, other data", 20, 0)]))
        .await
        .unwrap();
    assert_eq!(h.rows().await, rows(&[(1, "new")]));
}

async fn a_late_update_cannot_resurrect_a_deleted_row<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    sink.apply(&batch(vec![upsert(1, "Ada", 10, 0)]))
        .await
        .unwrap();
    sink.apply(&batch(vec![delete(1, 30, 0)])).await.unwrap();
    sink.apply(&batch(vec![upsert(1, "late", 20, 0)]))
        .await
        .unwrap();
    assert_eq!(
        h.rows().await,
        rows(&[]),
        "an update older than the delete was applied"
    );
    // A delete older than the row is stale too.
    sink.apply(&batch(vec![upsert(2, "Grace", 50, 0), delete(3, 5, 0)]))
        .await
        .unwrap();
    sink.apply(&batch(vec![delete(2, 40, 0)])).await.unwrap();
    // A row created again after its delete is live.
    sink.apply(&batch(vec![upsert(1, "Ada again", 60, 0)]))
        .await
        .unwrap();
    assert_eq!(h.rows().await, rows(&[(1, "Ada again"), (2, "Grace")]));
}

/// A truncate removes every row older than it, and no older change comes back after it,
/// whichever partition or group member it is read from; newer changes apply.
async fn a_truncate_clears_older_rows_and_nothing_older_comes_back<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    sink.apply(&batch(vec![
        upsert(1, "Ada", 10, 0),
        upsert(2, "Grace", 20, 0),
        delete(3, 15, 0),
    ]))
    .await
    .unwrap();
    // Newer than the truncate, read first from another partition.
    sink.apply(&batch(vec![upsert(4, "Edsger", 50, 0)]))
        .await
        .unwrap();
    sink.apply(&batch(vec![truncate(30, 0)])).await.unwrap();
    assert_eq!(h.rows().await, rows(&[(4, "Edsger")]));

    // Older changes read late, from other partitions: none comes back.
    sink.apply(&batch(vec![
        upsert(1, "late", 25, 0),
        upsert(5, "Barbara", 29, 9),
        delete(4, 20, 0),
    ]))
    .await
    .unwrap();
    assert_eq!(h.rows().await, rows(&[(4, "Edsger")]));

    // The truncate redelivered (every partition carries it) changes nothing; newer
    // changes apply.
    sink.apply(&batch(vec![truncate(30, 0), upsert(1, "Ada again", 40, 0)]))
        .await
        .unwrap();
    assert_eq!(h.rows().await, rows(&[(1, "Ada again"), (4, "Edsger")]));

    // One batch holding changes on both sides of a truncate.
    sink.apply(&batch(vec![
        upsert(6, "before", 55, 0),
        truncate(60, 0),
        upsert(7, "after", 61, 0),
    ]))
    .await
    .unwrap();
    assert_eq!(h.rows().await, rows(&[(7, "after")]));

    // Another connection (another member of the group) meets the same floor.
    let mut other = h.reconnect().await;
    other
        .apply(&batch(vec![upsert(8, "older", 59, 0)]))
        .await
        .unwrap();
    assert_eq!(h.rows().await, rows(&[(7, "after")]));
}

/// Events keyed by (tenant_id, user_id) into a replica keyed by user_id alone: two tenants'
/// users would be one entry, each overwriting and deleting the other. Nothing is written;
/// the sink stops naming the field left out.
async fn a_key_field_the_sink_leaves_out_stops_it<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    let tenant = |tenant: i64, change: Change| Change {
        key: [("tenant_id".to_string(), Value::Long(tenant))]
            .into_iter()
            .chain(change.key)
            .collect(),
        ..change
    };
    let e = sink
        .apply(&batch(vec![
            tenant(1, upsert(1, "Ada", 10, 0)),
            tenant(2, upsert(1, "Grace", 10, 1)),
        ]))
        .await
        .unwrap_err();
    assert!(!e.is_transient() && !e.is_poison(), "{e:?}");
    assert!(
        e.to_string().contains(
            "leaves out key field tenant_id of the events (their key fields: tenant_id, user_id)"
        ),
        "{e}"
    );
    let e = sink
        .apply(&batch(vec![tenant(1, delete(1, 11, 0))]))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("leaves out key field tenant_id"),
        "{e}"
    );
    assert_eq!(h.rows().await, rows(&[]), "nothing written");
}

/// The runner commits Kafka offsets after `apply`; a crash in between redelivers the batch.
/// The positions stored with the rows say where to resume, and redelivery is absorbed.
async fn a_crash_between_write_and_offset_commit_is_absorbed<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    let position = |offset| Position {
        topic: "users.user".into(),
        partition: 2,
        next_offset: offset,
    };
    let b = Batch {
        changes: vec![upsert(1, "Ada", 10, 0), upsert(2, "Grace", 11, 0)],
        positions: vec![position(42)],
    };
    sink.apply(&b).await.unwrap();
    drop(sink); // crash: the Kafka offset was never committed
    let mut sink = h.reconnect().await;
    assert_eq!(
        sink.positions().await.unwrap(),
        vec![position(42)],
        "the replica knows where it stopped"
    );
    sink.apply(&b).await.unwrap(); // redelivered anyway
    assert_eq!(h.rows().await, rows(&[(1, "Ada"), (2, "Grace")]));
}

/// Changes of different keys arrive in any order across batches; each key's newest wins.
async fn reordered_delivery_converges<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    let changes = [
        upsert(1, "a1", 10, 0),
        upsert(2, "b1", 10, 1),
        upsert(1, "a2", 20, 0),
        delete(2, 30, 0),
        upsert(3, "c1", 30, 1),
        upsert(1, "a3", 40, 0),
        upsert(3, "c2", 50, 0),
    ];
    // Newest first, one change per batch: the worst order.
    for c in changes.iter().rev() {
        sink.apply(&batch(vec![c.clone()])).await.unwrap();
    }
    assert_eq!(h.rows().await, rows(&[(1, "a3"), (3, "c2")]));
}

/// A contract gains an optional field: events of both versions apply, and an older event
/// never clears what a newer one wrote.
async fn schema_evolution_keeps_both_versions_applicable<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    let v2 = |id: i64, name: &str, email: &str, lsn: u64| Change {
        key: vec![("user_id".into(), Value::Long(id))],
        op: Op::Upsert(vec![
            ("name".into(), Value::Text(name.into())),
            ("email".into(), Value::Text(email.into())),
        ]),
        version: Version { lsn, seq: 0 },
    };
    sink.apply(&batch(vec![
        upsert(1, "Ada", 10, 0),
        upsert(2, "Grace", 10, 1),
    ]))
    .await
    .unwrap();
    sink.apply(&batch(vec![v2(1, "Ada", "ada@example.com", 20)]))
        .await
        .unwrap();
    sink.apply(&batch(vec![upsert(1, "stale v1", 15, 0)]))
        .await
        .unwrap();
    assert_eq!(h.rows().await, rows(&[(1, "Ada"), (2, "Grace")]));
    assert_eq!(
        h.emails().await,
        rows(&[(1, "ada@example.com"), (2, "")]),
        "a v1 event leaves email NULL; a stale v1 event does not clear it"
    );
}

/// A change writes only the fields it carries, whatever shares its batch. `UserCreated`
/// carries `email`, `UserUpdated` only `name`: one source transaction updates users and
/// creates others in between, and no update clears the email it does not carry. Within the
/// batch a key's changes take effect in version order: an update after an insert keeps the
/// insert's email, a row deleted and created again without an email has none, and a field
/// carried as NULL is cleared.
async fn a_change_writes_only_the_fields_it_carries<H: Harness>(name: &str) {
    let (h, mut sink) = H::fresh(name).await;
    let created = |id: i64, name: &str, email: Option<&str>, lsn: u64, seq: u32| Change {
        key: vec![("user_id".into(), Value::Long(id))],
        op: Op::Upsert(vec![
            ("name".into(), Value::Text(name.into())),
            (
                "email".into(),
                email.map_or(Value::Null, |e| Value::Text(e.into())),
            ),
        ]),
        version: Version { lsn, seq },
    };
    let updated = upsert;
    sink.apply(&batch(
        (1..=4)
            .map(|id| created(id, "v1", Some(&format!("{id}@example.com")), 10, id as u32))
            .collect(),
    ))
    .await
    .unwrap();
    // One source transaction.
    let transaction = batch(vec![
        updated(1, "Ada", 20, 0),
        created(5, "Barbara", Some("5@example.com"), 20, 1),
        updated(3, "Edsger", 20, 2),
        delete(2, 20, 3),
        updated(2, "Grace again", 20, 4),
        updated(4, "renamed", 20, 5),
        created(4, "Linus", Some("4@new.example.com"), 20, 6),
        created(7, "Ken", Some("7@example.com"), 20, 7),
        updated(7, "Ken T.", 20, 8),
        updated(5, "Barbara L.", 20, 9),
        updated(7, "Ken Thompson", 20, 10),
    ]);
    let names = rows(&[
        (1, "Ada"),
        (2, "Grace again"),
        (3, "Edsger"),
        (4, "Linus"),
        (5, "Barbara L."),
        (7, "Ken Thompson"),
    ]);
    let emails = rows(&[
        (1, "1@example.com"),
        (2, ""),
        (3, "3@example.com"),
        (4, "4@new.example.com"),
        (5, "5@example.com"),
        (7, "7@example.com"),
    ]);
    sink.apply(&transaction).await.unwrap();
    assert_eq!(h.rows().await, names);
    assert_eq!(
        h.emails().await,
        emails,
        "an update that does not carry email left it as it was"
    );
    // Redelivered, and in another order: the same.
    sink.apply(&transaction).await.unwrap();
    let mut reversed = transaction.clone();
    reversed.changes.reverse();
    sink.apply(&reversed).await.unwrap();
    assert_eq!(h.rows().await, names);
    assert_eq!(h.emails().await, emails);
    // A field carried as NULL is cleared; a stale change writes nothing.
    sink.apply(&batch(vec![
        created(1, "Ada", None, 30, 0),
        created(3, "stale", None, 15, 0),
    ]))
    .await
    .unwrap();
    assert_eq!(h.emails().await.get(&1).map(String::as_str), Some(""));
    assert_eq!(
        h.emails().await.get(&3).map(String::as_str),
        Some("3@example.com")
    );
}

/// Arrays (of text with every character an array literal quotes, and of decimals), maps and
/// records (nested arrays and decimals) are stored and read back as the same JSON in every
/// store: PostgreSQL arrays of the element type and jsonb, MySQL JSON, Redis JSON text.
async fn arrays_maps_and_records_round_trip<H: Harness>(name: &str) {
    let (h, _) = H::fresh(name).await;
    let mut sink = h.typed_sink().await;
    let fields = [
        field("user_id", FieldType::Long, false),
        field("tags", FieldType::Array(Box::new(FieldType::Text)), true),
        field(
            "prices",
            FieldType::Array(Box::new(FieldType::Decimal {
                precision: 9,
                scale: 2,
            })),
            true,
        ),
        field("home", FieldType::Json, true),
        field("attrs", FieldType::Json, true),
    ];
    sink.prepare(&fields).await.unwrap();
    let text = |t: &str| Value::Text(t.into());
    let decimal = |t: &str| Value::Decimal(t.into());
    let full = Change {
        key: vec![("user_id".into(), Value::Long(1))],
        op: Op::Upsert(vec![
            (
                "tags".into(),
                Value::Array(vec![
                    text("a"),
                    text("b, \"c\" {d}"),
                    text("back\\slash"),
                    Value::Null,
                    text("NULL"),
                    text(""),
                ]),
            ),
            (
                "prices".into(),
                Value::Array(vec![decimal("12.50"), decimal("-0.05")]),
            ),
            (
                "home".into(),
                Value::Object(vec![
                    ("city".into(), text("Tromsø \"north\"")),
                    ("lat".into(), decimal("69.64920")),
                    ("langs".into(), Value::Array(vec![text("nb"), text("se")])),
                    ("since".into(), Value::Date(19_782)),
                ]),
            ),
            (
                "attrs".into(),
                Value::Object(vec![
                    ("a".into(), Value::Long(1)),
                    ("b".into(), Value::Null),
                ]),
            ),
        ]),
        version: Version { lsn: 10, seq: 0 },
    };
    let empty = Change {
        key: vec![("user_id".into(), Value::Long(2))],
        op: Op::Upsert(vec![
            ("tags".into(), Value::Array(vec![])),
            ("prices".into(), Value::Null),
            ("home".into(), Value::Null),
            ("attrs".into(), Value::Object(vec![])),
        ]),
        version: Version { lsn: 10, seq: 1 },
    };
    sink.apply(&batch(vec![full, empty])).await.unwrap();
    let json =
        |t: Option<String>| t.map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap());
    let expected = |t: &str| Some(serde_json::from_str::<serde_json::Value>(t).unwrap());
    assert_eq!(
        json(h.typed(1, "tags").await),
        expected(r#"["a", "b, \"c\" {d}", "back\\slash", null, "NULL", ""]"#)
    );
    assert_eq!(json(h.typed(1, "prices").await), expected("[12.50, -0.05]"));
    assert_eq!(
        json(h.typed(1, "home").await),
        expected(
            r#"{"city": "Tromsø \"north\"", "lat": 69.64920, "langs": ["nb", "se"], "since": "2024-02-29"}"#
        )
    );
    assert_eq!(
        json(h.typed(1, "attrs").await),
        expected(r#"{"a": 1, "b": null}"#)
    );
    assert_eq!(json(h.typed(2, "tags").await), expected("[]"));
    assert_eq!(h.typed(2, "prices").await, None);
    assert_eq!(h.typed(2, "home").await, None);
    assert_eq!(json(h.typed(2, "attrs").await), expected("{}"));
}

/// A table-shaped store that can also open a replica of a table that does not exist yet.
trait TableHarness: Harness {
    /// A sink on the missing table `auto_replica`, with auto_create and auto_add_columns.
    async fn auto_sink(&self) -> Self::Sink;
    /// `id → value of column` of `auto_replica`.
    async fn auto_rows(&self, column: &str) -> BTreeMap<i64, String>;
}

fn field(name: &str, ty: FieldType, nullable: bool) -> Field {
    Field {
        name: name.into(),
        ty,
        nullable,
    }
}

/// `auto_create` makes the table from the first contract version; `auto_add_columns` adds a
/// nullable column when a later version gains a field.
async fn auto_create_and_auto_add_columns<H: TableHarness>(name: &str) {
    let (h, _) = H::fresh(name).await;
    let mut sink = h.auto_sink().await;
    // Deletes before any upsert: nothing to delete yet.
    sink.apply(&batch(vec![delete(9, 5, 0)])).await.unwrap();
    let v1 = [
        field("user_id", FieldType::Long, false),
        field("name", FieldType::Text, false),
        field(
            "balance",
            FieldType::Decimal {
                precision: 12,
                scale: 2,
            },
            true,
        ),
    ];
    sink.prepare(&v1).await.unwrap();
    sink.prepare(&v1).await.unwrap(); // idempotent
                                      // Only the key is NOT NULL: another event type may lack a field this one requires.
    let nameless = Change {
        key: vec![("user_id".into(), Value::Long(3))],
        op: Op::Upsert(vec![("name".into(), Value::Null)]),
        version: Version { lsn: 9, seq: 0 },
    };
    sink.apply(&batch(vec![nameless])).await.unwrap();
    let retyped = [
        field("user_id", FieldType::Long, false),
        field("name", FieldType::Text, false),
        field("name", FieldType::Long, false),
    ];
    let e = sink.prepare(&retyped).await.unwrap_err();
    assert!(
        e.to_string().starts_with(
            "event field name is text in one contract version or event type and long in another"
        ),
        "{e}"
    );
    let mut with_balance = upsert(1, "Ada", 10, 0);
    if let Op::Upsert(fields) = &mut with_balance.op {
        fields.push(("balance".into(), Value::Decimal("-12.50".into())));
    }
    sink.apply(&batch(vec![with_balance, upsert(2, "Grace", 10, 1)]))
        .await
        .unwrap();
    assert_eq!(
        h.auto_rows("coalesce(customer_name, '')").await,
        rows(&[(1, "Ada"), (2, "Grace"), (3, "")])
    );
    assert_eq!(
        h.auto_rows("coalesce(cast(balance as char), '')")
            .await
            .get(&1)
            .map(String::as_str),
        Some("-12.50")
    );
    let v2 = [
        field("user_id", FieldType::Long, false),
        field("name", FieldType::Text, false),
        field("email", FieldType::Text, true),
    ];
    sink.prepare(&v2).await.unwrap();
    let v2_change = Change {
        key: vec![("user_id".into(), Value::Long(2))],
        op: Op::Upsert(vec![
            ("name".into(), Value::Text("Grace".into())),
            ("email".into(), Value::Text("grace@example.com".into())),
        ]),
        version: Version { lsn: 20, seq: 0 },
    };
    sink.apply(&batch(vec![v2_change, delete(1, 20, 1)]))
        .await
        .unwrap();
    assert_eq!(
        h.auto_rows("coalesce(email, '')").await,
        rows(&[(2, "grace@example.com"), (3, "")])
    );
    // A contract that changes a field to a type its column cannot hold: one named error
    // with the fix, rather than every record failing in the store.
    let balance_as_text = [
        field("user_id", FieldType::Long, false),
        field("balance", FieldType::Text, true),
    ];
    let e = sink
        .prepare(&balance_as_text)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(": column balance is ")
            && e.contains("which cannot hold field balance (text) of the topic's contracts")
            && e.contains("walcast never changes a column's type: run ALTER TABLE ")
            && e.contains(
                "or keep the field in a new column (columns = { new_column = \"balance\" })"
            ),
        "{e}"
    );
    // Narrower types than the column's are no change: an int key, fewer decimal digits.
    let narrower = [
        field("user_id", FieldType::Int, false),
        field(
            "balance",
            FieldType::Decimal {
                precision: 10,
                scale: 2,
            },
            true,
        ),
    ];
    sink.prepare(&narrower).await.unwrap();
}

// ------------------------------------------------------------------ PostgreSQL

struct Pg {
    admin_url: String,
    settings: TableSettings,
}

fn stack_var(name: &str) -> String {
    let dir =
        std::env::var("WALCAST_STACK_DIR").unwrap_or_else(|_| "/var/tmp/walcast-stack".into());
    let text =
        std::fs::read_to_string(format!("{dir}/stack.env")).expect("run scripts/stack up first");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("stack.env lacks {name}"))
        .to_string()
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("stack PostgreSQL");
    tokio::spawn(conn);
    client
}

impl Harness for Pg {
    type Sink = PostgresSink;

    async fn fresh(name: &str) -> (Self, PostgresSink) {
        let base = stack_var("WALCAST_PG_URL");
        let db = format!(
            "conf_{}_{}",
            &name[..name.len().min(40)],
            std::process::id()
        );
        let admin = pg_client(&format!("{base}/postgres")).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let url = format!("{base}/{db}");
        pg_client(&url)
            .await
            .batch_execute(
                "CREATE TABLE user_replica (user_id bigint PRIMARY KEY, customer_name text, email text,
                   _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)",
            )
            .await
            .unwrap();
        let settings = table_settings(&url);
        let sink = PostgresSink::connect(settings.clone()).await.unwrap();
        (
            Pg {
                admin_url: url,
                settings,
            },
            sink,
        )
    }

    async fn rows(&self) -> BTreeMap<i64, String> {
        self.select("customer_name").await
    }

    async fn emails(&self) -> BTreeMap<i64, String> {
        self.select("coalesce(email, '')").await
    }

    async fn reconnect(&self) -> PostgresSink {
        PostgresSink::connect(self.settings.clone()).await.unwrap()
    }

    async fn typed_sink(&self) -> PostgresSink {
        let mut settings = self.settings.clone();
        settings.table = "typed_replica".into();
        settings.auto_create = true;
        settings.auto_add_columns = true;
        PostgresSink::connect(settings).await.unwrap()
    }

    async fn typed(&self, id: i64, field: &str) -> Option<String> {
        pg_client(&self.admin_url)
            .await
            .query_one(
                &format!("SELECT to_jsonb({field})::text FROM typed_replica WHERE user_id = $1"),
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }
}

impl Pg {
    async fn select(&self, column: &str) -> BTreeMap<i64, String> {
        pg_client(&self.admin_url)
            .await
            .query(&format!("SELECT user_id, {column} FROM user_replica"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

impl TableHarness for Pg {
    async fn auto_sink(&self) -> PostgresSink {
        let mut settings = self.settings.clone();
        settings.table = "auto_replica".into();
        settings.auto_create = true;
        settings.auto_add_columns = true;
        PostgresSink::connect(settings).await.unwrap()
    }

    async fn auto_rows(&self, column: &str) -> BTreeMap<i64, String> {
        let column = column.replace("cast(balance as char)", "balance::text");
        pg_client(&self.admin_url)
            .await
            .query(&format!("SELECT user_id, {column} FROM auto_replica"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

/// A table cannot be created from a contract that lacks a key field; the error says so.
#[tokio::test]
async fn postgres_auto_create_needs_the_key_fields() {
    let (h, _) = Pg::fresh("autokey").await;
    let mut sink = h.auto_sink().await;
    let e = sink
        .prepare(&[field("name", FieldType::Text, false)])
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot create replica table auto_replica: key field user_id is not a field of the contract; set key to the contract's key fields"
    );
    let e = sink
        .apply(&batch(vec![upsert(1, "Ada", 10, 0)]))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "replica table auto_replica was not created: no contract version was prepared"
    );
}

#[tokio::test]
async fn postgres_auto_create_and_auto_add_columns() {
    auto_create_and_auto_add_columns::<Pg>("auto").await;
}

/// The replica the table-shaped stores share: `name` is written to `customer_name`.
fn table_settings(url: &str) -> TableSettings {
    TableSettings {
        url: url.to_string(),
        table: "user_replica".into(),
        key: vec!["user_id".into()],
        columns: [("customer_name".to_string(), "name".to_string())].into(),
        fields: None,
        consumer: "walcast.test".into(),
        auto_create: false,
        auto_add_columns: false,
        tls_mode: None,
        tls_ca_file: None,
    }
}

/// Setup problems name the table and the fix.
#[tokio::test]
async fn postgres_setup_errors_say_how_to_fix_them() {
    let (h, _) = Pg::fresh("setup").await;
    let mut settings = h.settings.clone();
    settings.table = "missing_replica".into();
    let e = PostgresSink::connect(settings).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("replica table missing_replica does not exist; create it"),
        "{e}"
    );
    pg_client(&h.admin_url)
        .await
        .batch_execute("CREATE TABLE bare (user_id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let mut settings = h.settings.clone();
    settings.table = "bare".into();
    let e = PostgresSink::connect(settings).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "replica table bare lacks the version column _walcast_lsn bigint; run ALTER TABLE \"public\".\"bare\" ADD COLUMN _walcast_lsn bigint NOT NULL DEFAULT 0"
    );
    let mut sink = h.reconnect().await;
    let unknown = Change {
        key: vec![("user_id".into(), Value::Long(1))],
        op: Op::Upsert(vec![("nickname".into(), Value::Text("x".into()))]),
        version: Version { lsn: 1, seq: 0 },
    };
    let e = sink.apply(&batch(vec![unknown])).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "event field nickname has no column nickname in replica table user_replica; add the column, map the field with columns, or leave it out of fields"
    );
}

/// A change of `scalars` (in `postgres_every_scalar_type_reaches_its_column` and its MySQL
/// twin): `user_id` and the fields given.
fn scalars(id: i64, lsn: u64, fields: Vec<(&str, Value)>) -> Change {
    Change {
        key: vec![("user_id".into(), Value::Long(id))],
        op: Op::Upsert(fields.into_iter().map(|(f, v)| (f.into(), v)).collect()),
        version: Version { lsn, seq: 0 },
    }
}

/// Every scalar reaches its column exactly, whether it travels as a binary array (bigint,
/// integer, smallint, double precision, boolean, bytea, timestamptz, timestamp, date) or as
/// text cast to the column's type (numeric beyond 64 bits, real, time, uuid, an enum, a
/// domain, a type modifier, arrays, jsonb). NULLs too. A value its column cannot hold is
/// refused by the server with its own error, and the next batch goes through.
#[tokio::test]
async fn postgres_every_scalar_type_reaches_its_column() {
    let (h, _) = Pg::fresh("scalars").await;
    let admin = pg_client(&h.admin_url).await;
    admin
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('ok', 'sad');
             CREATE DOMAIN positive AS bigint CHECK (VALUE > 0);
             CREATE TABLE scalars (user_id bigint PRIMARY KEY, i integer, sm smallint, d double precision,
               r real, b boolean, raw bytea, at timestamptz, at3 timestamp(3) with time zone,
               local timestamp, day date, t time, id uuid, big numeric(40, 0), m mood, p positive,
               label varchar(5), tags text[], doc jsonb,
               _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)",
        )
        .await
        .unwrap();
    let mut settings = h.settings.clone();
    settings.table = "scalars".into();
    settings.columns = BTreeMap::new();
    let mut sink = PostgresSink::connect(settings).await.unwrap();
    let full = |id: i64, lsn: u64, i: i64| {
        scalars(
            id,
            lsn,
            vec![
                ("i", Value::Long(i)),
                ("sm", Value::Long(-32_768)),
                ("d", Value::Double(0.1)),
                ("r", Value::Double(1.5)),
                ("b", Value::Bool(true)),
                ("raw", Value::Bytes(vec![0, 255, b'\\', b'"'])),
                ("at", Value::Timestamp(1_700_000_000_123_456)),
                ("at3", Value::Timestamp(1_700_000_000_123_456)),
                ("local", Value::LocalTimestamp(-1)),
                ("day", Value::Date(19_782)),
                ("t", Value::Time(3_600_000_001)),
                (
                    "id",
                    Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
                ),
                (
                    "big",
                    Value::Decimal("-123456789012345678901234567890".into()),
                ),
                ("m", Value::Text("sad".into())),
                ("p", Value::Long(7)),
                ("label", Value::Text("short".into())),
                (
                    "tags",
                    Value::Array(vec![Value::Text("a,\"b\"".into()), Value::Null]),
                ),
                (
                    "doc",
                    Value::Object(vec![("k".into(), Value::Decimal("1.50".into()))]),
                ),
            ],
        )
    };
    let nulls = |id: i64, lsn: u64| {
        let names = [
            "i", "sm", "d", "r", "b", "raw", "at", "at3", "local", "day", "t", "id", "big", "m",
            "p", "label", "tags", "doc",
        ];
        scalars(id, lsn, names.iter().map(|n| (*n, Value::Null)).collect())
    };
    let read = |id: i64| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT concat_ws('|', i, sm, d, r, b, encode(raw, 'hex'), at AT TIME ZONE 'UTC',
                       at3 AT TIME ZONE 'UTC', local, day, t, id, big, m, p, label, tags, doc),
                       num_nulls(i, sm, d, r, b, raw, at, at3, local, day, t, id, big, m, p, label, tags, doc)
                     FROM scalars WHERE user_id = $1",
                    &[&id],
                )
                .await
                .map(|row| (row.get::<_, String>(0), row.get::<_, i32>(1)))
                .unwrap()
        }
    };
    sink.apply(&batch(vec![full(1, 10, i64::from(i32::MIN)), nulls(2, 10)]))
        .await
        .unwrap();
    let expected = "-2147483648|-32768|0.1|1.5|t|00ff5c22|2023-11-14 22:13:20.123456|2023-11-14 22:13:20.123|1969-12-31 23:59:59.999999|2024-02-29|01:00:00.000001|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|-123456789012345678901234567890|sad|7|short|{\"a,\\\"b\\\"\",NULL}|{\"k\": 1.50}";
    assert_eq!(read(1).await, (expected.to_string(), 0));
    assert_eq!(read(2).await, (String::new(), 18), "every field NULL");
    // An int beyond the column's range goes as text, for the server to refuse as before.
    let e = sink
        .apply(&batch(vec![full(3, 20, i64::from(i32::MAX) + 1)]))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "db error: ERROR: value \"2147483648\" is out of range for type integer (column i of replica table scalars)",
        "{e:?}"
    );
    assert!(!e.is_transient());
    let e = sink
        .apply(&batch(vec![scalars(3, 20, vec![("p", Value::Long(-1))])]))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("value for domain positive violates check constraint")
            && e.to_string()
                .ends_with("(column p of replica table scalars)"),
        "{e}"
    );
    // Then a batch whose columns take the other encodings, on the same connection.
    sink.apply(&batch(vec![nulls(1, 30), full(2, 30, 5)]))
        .await
        .unwrap();
    assert_eq!(read(1).await, (String::new(), 18));
    assert_eq!(read(2).await.0, expected.replacen("-2147483648", "5", 1));
}

/// A value longer than its column (`varchar(3)`, `char(3)`, `bit(3)`, as items of arrays
/// too) is refused, never cut to fit; values that fit are stored as sent.
#[tokio::test]
async fn postgres_never_cuts_a_value_to_fit_its_column() {
    let (h, _) = Pg::fresh("lengths").await;
    let admin = pg_client(&h.admin_url).await;
    admin
        .batch_execute(
            "CREATE DOMAIN code3 AS varchar(3); CREATE DOMAIN code3_again AS code3;
             CREATE TABLE lengths (user_id bigint PRIMARY KEY, code varchar(3), fixed char(3),
               flags bit(3), codes varchar(3)[], short code3, shorter code3_again,
               _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)",
        )
        .await
        .unwrap();
    let mut settings = h.settings.clone();
    settings.table = "lengths".into();
    settings.columns = BTreeMap::new();
    let mut sink = PostgresSink::connect(settings).await.unwrap();
    let row = |id: i64, lsn: u64, field: &str, value: Value| {
        let mut change = upsert(id, "", lsn, 0);
        change.op = Op::Upsert(vec![(field.into(), value)]);
        batch(vec![change])
    };
    let text = |s: &str| Value::Text(s.into());
    for (field, too_long, expected) in [
        ("code", text("ABCD"), "character varying(3)"),
        ("fixed", text("ABCD"), "character(3)"),
        (
            "flags",
            text("1010"),
            "bit string length 4 does not match type bit(3)",
        ),
        (
            "codes",
            Value::Array(vec![text("AB"), text("ABCD")]),
            "character varying(3)",
        ),
        ("short", text("ABCD"), "character varying(3)"),
        ("shorter", text("ABCD"), "character varying(3)"),
    ] {
        let e = sink.apply(&row(1, 10, field, too_long)).await.unwrap_err();
        let named = format!("(column {field} of replica table lengths)");
        assert!(
            e.is_poison() && e.to_string().contains(expected) && e.to_string().ends_with(&named),
            "{field}: {e}"
        );
    }
    let stored = |id: i64| {
        let admin = &admin;
        async move {
            admin
                .query_opt(
                    "SELECT concat_ws('|', code, fixed || '.', flags, codes, short) FROM lengths WHERE user_id = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .map(|r| r.get::<_, String>(0))
        }
    };
    assert_eq!(stored(1).await, None, "nothing cut to fit was stored");
    sink.apply(&row(2, 20, "code", text("AB"))).await.unwrap();
    sink.apply(&row(2, 21, "fixed", text("AB"))).await.unwrap();
    sink.apply(&row(2, 22, "flags", text("101"))).await.unwrap();
    sink.apply(&row(2, 23, "codes", Value::Array(vec![text("ABC")])))
        .await
        .unwrap();
    sink.apply(&row(2, 24, "short", text("XYZ"))).await.unwrap();
    assert_eq!(stored(2).await.as_deref(), Some("AB|AB.|101|{ABC}|XYZ"));
}

/// A key column that rounds (`numeric(10,2)` fed `1.234`, stored `1.23`): its delete and
/// tombstone compare as the column rounds, so the delete finds the row and a late upsert
/// does not bring it back.
#[tokio::test]
async fn postgres_a_rounding_key_column_is_compared_as_it_rounds() {
    let (h, _) = Pg::fresh("rounded").await;
    pg_client(&h.admin_url)
        .await
        .batch_execute(
            "CREATE TABLE rounded (k numeric(10,2) PRIMARY KEY, name text,
               _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL)",
        )
        .await
        .unwrap();
    let mut settings = h.settings.clone();
    settings.table = "rounded".into();
    settings.key = vec!["k".into()];
    settings.columns = BTreeMap::new();
    let mut sink = PostgresSink::connect(settings).await.unwrap();
    let key = || vec![("k".to_string(), Value::Decimal("1.234".into()))];
    let upsert = |lsn| Change {
        key: key(),
        op: Op::Upsert(vec![("name".into(), Value::Text("Ada".into()))]),
        version: Version { lsn, seq: 0 },
    };
    sink.apply(&batch(vec![upsert(10)])).await.unwrap();
    let count = || async {
        pg_client(&h.admin_url)
            .await
            .query_one("SELECT count(*) FROM rounded", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(count().await, 1);
    let delete = Change {
        key: key(),
        op: Op::Delete,
        version: Version { lsn: 20, seq: 0 },
    };
    sink.apply(&batch(vec![delete])).await.unwrap();
    assert_eq!(count().await, 0, "the delete found the rounded key");
    sink.apply(&batch(vec![upsert(15)])).await.unwrap();
    assert_eq!(count().await, 0, "the tombstone holds the late upsert off");
}

// ------------------------------------------------------------------ MySQL/MariaDB

struct My {
    pool: mysql_async::Pool,
    settings: TableSettings,
}

impl My {
    async fn select(&self, column: &str) -> BTreeMap<i64, String> {
        use mysql_async::prelude::Queryable;
        let mut conn = self.pool.get_conn().await.unwrap();
        conn.query(format!("SELECT user_id, {column} FROM user_replica"))
            .await
            .unwrap()
            .into_iter()
            .collect()
    }
}

impl Harness for My {
    type Sink = MysqlSink;

    async fn fresh(name: &str) -> (Self, MysqlSink) {
        use mysql_async::prelude::Queryable;
        let base = stack_var("WALCAST_MYSQL_URL");
        let db = format!(
            "conf_{}_{}",
            &name[..name.len().min(40)],
            std::process::id()
        );
        let admin = mysql_async::Pool::new(base.as_str());
        let mut conn = admin.get_conn().await.unwrap();
        conn.query_drop(format!("DROP DATABASE IF EXISTS {db}"))
            .await
            .unwrap();
        conn.query_drop(format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        conn.query_drop(format!(
            "CREATE TABLE {db}.user_replica (user_id BIGINT PRIMARY KEY, customer_name TEXT, email TEXT,
               _walcast_lsn BIGINT NOT NULL, _walcast_seq INT NOT NULL)"
        ))
        .await
        .unwrap();
        drop(conn);
        admin.disconnect().await.unwrap();
        let url = format!("{base}/{db}");
        let settings = table_settings(&url);
        let sink = MysqlSink::connect(settings.clone()).await.unwrap();
        let pool = mysql_async::Pool::new(url.as_str());
        (My { pool, settings }, sink)
    }

    async fn rows(&self) -> BTreeMap<i64, String> {
        self.select("customer_name").await
    }

    async fn emails(&self) -> BTreeMap<i64, String> {
        self.select("coalesce(email, '')").await
    }

    async fn reconnect(&self) -> MysqlSink {
        MysqlSink::connect(self.settings.clone()).await.unwrap()
    }

    async fn typed_sink(&self) -> MysqlSink {
        let mut settings = self.settings.clone();
        settings.table = "typed_replica".into();
        settings.auto_create = true;
        settings.auto_add_columns = true;
        MysqlSink::connect(settings).await.unwrap()
    }

    async fn typed(&self, id: i64, field: &str) -> Option<String> {
        use mysql_async::prelude::Queryable;
        let mut conn = self.pool.get_conn().await.unwrap();
        conn.exec_first::<Option<String>, _, _>(
            format!("SELECT {field} FROM typed_replica WHERE user_id = ?"),
            (id,),
        )
        .await
        .unwrap()
        .flatten()
    }
}

impl TableHarness for My {
    async fn auto_sink(&self) -> MysqlSink {
        let mut settings = self.settings.clone();
        settings.table = "auto_replica".into();
        settings.auto_create = true;
        settings.auto_add_columns = true;
        MysqlSink::connect(settings).await.unwrap()
    }

    async fn auto_rows(&self, column: &str) -> BTreeMap<i64, String> {
        use mysql_async::prelude::Queryable;
        let mut conn = self.pool.get_conn().await.unwrap();
        conn.query(format!("SELECT user_id, {column} FROM auto_replica"))
            .await
            .unwrap()
            .into_iter()
            .collect()
    }
}

#[tokio::test]
async fn mysql_auto_create_and_auto_add_columns() {
    auto_create_and_auto_add_columns::<My>("auto").await;
}

/// Source keys that differ only in case, accents or trailing spaces are different rows of
/// the source, and stay different rows of the replica: auto-created text keys compare byte
/// for byte, and a hand-made key column whose collation would merge them is refused.
#[tokio::test]
async fn mysql_text_keys_that_differ_only_in_case_or_spaces_stay_apart() {
    use mysql_async::prelude::Queryable;
    let (h, _) = My::fresh("text_keys").await;
    let mut settings = h.settings.clone();
    settings.table = "coded".into();
    settings.key = vec!["code".into()];
    settings.columns = BTreeMap::new();
    settings.auto_create = true;
    let mut sink = MysqlSink::connect(settings.clone()).await.unwrap();
    sink.prepare(&[
        field("code", FieldType::Text, false),
        field("name", FieldType::Text, true),
    ])
    .await
    .unwrap();
    let keys = ["Alice", "alice", "José", "Jose", "a", "a "];
    let change = |code: &str, op: Op, lsn: u64| Change {
        key: vec![("code".into(), Value::Text(code.into()))],
        op,
        version: Version { lsn, seq: 0 },
    };
    let named = |code: &str| Op::Upsert(vec![("name".into(), Value::Text(format!("[{code}]")))]);
    sink.apply(&batch(
        keys.iter()
            .enumerate()
            .map(|(i, k)| change(k, named(k), 10 + i as u64))
            .collect(),
    ))
    .await
    .unwrap();
    sink.apply(&batch(vec![change("alice", Op::Delete, 20)]))
        .await
        .unwrap();
    // A late upsert of a key that differs from the deleted one is no resurrection.
    sink.apply(&batch(vec![change("Alice", named("Alice"), 19)]))
        .await
        .unwrap();
    let mut conn = h.pool.get_conn().await.unwrap();
    let mut rows: Vec<String> = conn.query("SELECT name FROM coded").await.unwrap();
    rows.sort();
    assert_eq!(rows, ["[Alice]", "[Jose]", "[José]", "[a ]", "[a]"]);

    conn.query_drop(
        "CREATE TABLE by_hand (code VARCHAR(40) COLLATE utf8mb4_general_ci PRIMARY KEY, name TEXT,
           _walcast_lsn BIGINT NOT NULL, _walcast_seq INT NOT NULL)",
    )
    .await
    .unwrap();
    settings.table = "by_hand".into();
    let e = MysqlSink::connect(settings).await.unwrap_err().to_string();
    assert!(
        e.starts_with("replica table by_hand: key column code of by_hand has collation utf8mb4_general_ci, which holds keys that differ only in case, accents or trailing spaces as one")
            && e.contains("run ALTER TABLE `by_hand` MODIFY `code` varchar(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL (and on `by_hand_walcast_tombstones`, if it exists)"),
        "{e}"
    );
}

/// MySQL keeps at most 30 decimal places and would round the rest away with a note only:
/// `auto_create` gives a decimal of more places a TEXT column, which keeps every digit,
/// and a uuid key a column that compares byte for byte like a text key.
#[tokio::test]
async fn mysql_auto_create_keeps_every_digit_and_makes_uuid_keys_exact() {
    use mysql_async::prelude::Queryable;
    let (h, _) = My::fresh("places").await;
    let mut settings = h.settings.clone();
    settings.table = "places".into();
    settings.key = vec!["id".into()];
    settings.columns = BTreeMap::new();
    settings.auto_create = true;
    let mut sink = MysqlSink::connect(settings).await.unwrap();
    let ratio = FieldType::Decimal {
        precision: 40,
        scale: 35,
    };
    sink.prepare(&[
        field("id", FieldType::Uuid, false),
        field("ratio", ratio, true),
    ])
    .await
    .unwrap();
    let digits = "0.12345678901234567890123456789012345";
    sink.apply(&batch(vec![Change {
        key: vec![(
            "id".into(),
            Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        )],
        op: Op::Upsert(vec![("ratio".into(), Value::Decimal(digits.into()))]),
        version: Version { lsn: 10, seq: 0 },
    }]))
    .await
    .unwrap();
    let mut conn = h.pool.get_conn().await.unwrap();
    let stored: Vec<(String, String)> = conn.query("SELECT id, ratio FROM places").await.unwrap();
    assert_eq!(
        stored,
        [(
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_string(),
            digits.to_string()
        )]
    );
}

/// Key columns that round or cut what they store (`DECIMAL(10,2)` fed `1.005`, stored
/// `1.01`; `DATETIME(0)` fed `.6` s): the delete finds the row, and its tombstone holds a
/// late upsert off.
#[tokio::test]
async fn mysql_a_rounding_key_column_is_compared_as_it_stores() {
    use mysql_async::prelude::Queryable;
    let (h, _) = My::fresh("rounded").await;
    let mut conn = h.pool.get_conn().await.unwrap();
    conn.query_drop(
        "CREATE TABLE rounded (n DECIMAL(10,2) NOT NULL, at DATETIME(0) NOT NULL, name TEXT,
           _walcast_lsn BIGINT NOT NULL, _walcast_seq INT NOT NULL, PRIMARY KEY (n, at))",
    )
    .await
    .unwrap();
    let mut settings = h.settings.clone();
    settings.table = "rounded".into();
    settings.key = vec!["n".into(), "at".into()];
    settings.columns = BTreeMap::new();
    let mut sink = MysqlSink::connect(settings).await.unwrap();
    let key = || {
        vec![
            ("n".to_string(), Value::Decimal("1.005".into())),
            (
                "at".to_string(),
                Value::LocalTimestamp(1_600_000_000_600_000),
            ),
        ]
    };
    let upsert = |lsn| Change {
        key: key(),
        op: Op::Upsert(vec![("name".into(), Value::Text("Ada".into()))]),
        version: Version { lsn, seq: 0 },
    };
    sink.apply(&batch(vec![upsert(10)])).await.unwrap();
    const COUNT: &str = "SELECT count(*) FROM rounded";
    assert_eq!(conn.query_first::<i64, _>(COUNT).await.unwrap(), Some(1));
    let delete = Change {
        key: key(),
        op: Op::Delete,
        version: Version { lsn: 20, seq: 0 },
    };
    sink.apply(&batch(vec![delete])).await.unwrap();
    assert_eq!(
        conn.query_first::<i64, _>(COUNT).await.unwrap(),
        Some(0),
        "the delete found the rounded key"
    );
    sink.apply(&batch(vec![upsert(15)])).await.unwrap();
    assert_eq!(
        conn.query_first::<i64, _>(COUNT).await.unwrap(),
        Some(0),
        "the tombstone holds the late upsert off"
    );
}

/// Setup problems name the table and the fix.
#[tokio::test]
async fn mysql_setup_errors_say_how_to_fix_them() {
    use mysql_async::prelude::Queryable;
    let (h, _) = My::fresh("setup").await;
    let mut settings = h.settings.clone();
    settings.table = "missing_replica".into();
    let e = MysqlSink::connect(settings).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("replica table missing_replica does not exist; create it"),
        "{e}"
    );
    let mut conn = h.pool.get_conn().await.unwrap();
    conn.query_drop("CREATE TABLE bare (user_id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let mut settings = h.settings.clone();
    settings.table = "bare".into();
    let e = MysqlSink::connect(settings).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "replica table bare lacks the version column _walcast_lsn bigint; run ALTER TABLE `bare` ADD COLUMN _walcast_lsn BIGINT NOT NULL DEFAULT 0"
    );
}

/// Every scalar reaches its MySQL/MariaDB column exactly through the prepared upsert's
/// binary parameters, NULLs too; text keeps quotes and backslashes as they are. A batch
/// larger than one statement's placeholders takes several; the rows that pad a statement to
/// its prepared size change nothing, and cannot resurrect a deleted row. A value its column
/// cannot hold is refused by the server, and the next batch goes through.
#[tokio::test]
async fn mysql_every_scalar_type_reaches_its_column() {
    use mysql_async::prelude::Queryable;
    let (h, _) = My::fresh("scalars").await;
    let mut conn = h.pool.get_conn().await.unwrap();
    conn.query_drop(
        "CREATE TABLE scalars (user_id BIGINT PRIMARY KEY, i INT, d DOUBLE, b BOOLEAN, raw LONGBLOB,
           at DATETIME(6), at3 DATETIME(3), local DATETIME(6), ts TIMESTAMP(6) NULL, day DATE, t TIME(6), id CHAR(36), big DECIMAL(40, 0), m ENUM('ok', 'sad'),
           note TEXT, doc JSON, _walcast_lsn BIGINT NOT NULL, _walcast_seq INT NOT NULL)",
    )
    .await
    .unwrap();
    let mut settings = h.settings.clone();
    settings.table = "scalars".into();
    settings.columns = BTreeMap::new();
    let mut sink = MysqlSink::connect(settings).await.unwrap();
    let full = |id: i64, lsn: u64, i: i64| {
        scalars(
            id,
            lsn,
            vec![
                ("i", Value::Long(i)),
                ("d", Value::Double(0.1)),
                ("b", Value::Bool(true)),
                ("raw", Value::Bytes(vec![0, 255, b'\\', b'\''])),
                ("at", Value::Timestamp(1_700_000_000_123_456)),
                ("at3", Value::Timestamp(1_700_000_000_123_456)),
                ("local", Value::LocalTimestamp(-1)),
                ("ts", Value::Timestamp(1_700_000_000_123_456)),
                ("day", Value::Date(19_782)),
                ("t", Value::Time(3_600_000_001)),
                (
                    "id",
                    Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
                ),
                (
                    "big",
                    Value::Decimal("-123456789012345678901234567890".into()),
                ),
                ("m", Value::Text("sad".into())),
                ("note", Value::Text("it's a \\ \"q\" \\'".into())),
                (
                    "doc",
                    Value::Object(vec![("k".into(), Value::Decimal("1.50".into()))]),
                ),
            ],
        )
    };
    let names = [
        "i", "d", "b", "raw", "at", "at3", "local", "ts", "day", "t", "id", "big", "m", "note",
        "doc",
    ];
    let nulls =
        |id: i64, lsn: u64| scalars(id, lsn, names.iter().map(|n| (*n, Value::Null)).collect());
    let read = |id: i64| {
        let pool = h.pool.clone();
        async move {
            let mut conn = pool.get_conn().await.unwrap();
            conn.exec_first::<(Option<String>, i64), _, _>(
                "SELECT CONCAT_WS('|', i, d, b, HEX(raw), at, at3, local, UNIX_TIMESTAMP(ts), day, t, id, big, m, note, doc),
                   (i IS NULL) + (d IS NULL) + (b IS NULL) + (raw IS NULL) + (at IS NULL) + (at3 IS NULL)
                   + (local IS NULL) + (ts IS NULL) + (day IS NULL)
                   + (t IS NULL) + (id IS NULL) + (big IS NULL) + (m IS NULL) + (note IS NULL) + (doc IS NULL)
                 FROM scalars WHERE user_id = ?",
                (id,),
            )
            .await
            .unwrap()
            .map(|(text, nulls)| (text.unwrap_or_default(), nulls))
        }
    };
    sink.apply(&batch(vec![full(1, 10, i64::from(i32::MIN)), nulls(2, 10)]))
        .await
        .unwrap();
    let expected = "-2147483648|0.1|1|00FF5C27|2023-11-14 22:13:20.123456|2023-11-14 22:13:20.123|1969-12-31 23:59:59.999999|1700000000.123456|2024-02-29|01:00:00.000001|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|-123456789012345678901234567890|sad|it's a \\ \"q\" \\'|{\"k\":1.50}";
    assert_eq!(read(1).await, Some((expected.to_string(), 0)));
    assert_eq!(read(2).await, Some((String::new(), 15)), "every field NULL");
    let e = sink
        .apply(&batch(vec![full(3, 20, i64::from(i32::MAX) + 1)]))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("Out of range value for column 'i' at row 1"),
        "{e}"
    );
    assert!(!e.is_transient());
    // 4,500 rows: more than one statement's 65,535 placeholders hold (17 a row).
    let many: Vec<Change> = (100..4_600).map(|id| full(id, 30, id)).collect();
    sink.apply(&batch(many)).await.unwrap();
    let (count, sum): (i64, i64) = conn
        .query_first("SELECT COUNT(*), CAST(SUM(i) AS SIGNED) FROM scalars WHERE user_id >= 100")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((count, sum), (4_500, (100..4_600).sum::<i64>()));
    assert_eq!(
        read(4_599).await,
        Some((expected.replacen("-2147483648", "4599", 1), 0))
    );
    // Three rows pad a statement of four with the last one again: a no-op. A late update
    // of a deleted row stays deleted.
    sink.apply(&batch(vec![Change {
        key: vec![("user_id".into(), Value::Long(5))],
        op: Op::Delete,
        version: Version { lsn: 100, seq: 0 },
    }]))
    .await
    .unwrap();
    sink.apply(&batch(vec![full(5, 50, 5), nulls(6, 50), full(7, 50, 7)]))
        .await
        .unwrap();
    assert_eq!(read(5).await, None);
    assert_eq!(read(6).await, Some((String::new(), 15)));
    // The tombstone check names a run of consecutive keys by its range, the others one by
    // one: neither resurrects a deleted row.
    let gone = |id: i64| Change {
        key: vec![("user_id".into(), Value::Long(id))],
        op: Op::Delete,
        version: Version { lsn: 100, seq: 0 },
    };
    sink.apply(&batch(vec![gone(10), gone(13), gone(20)]))
        .await
        .unwrap();
    sink.apply(&batch(
        [10, 11, 12, 13, 20, 22].map(|id| full(id, 50, id)).to_vec(),
    ))
    .await
    .unwrap();
    for (id, kept) in [
        (10, false),
        (11, true),
        (12, true),
        (13, false),
        (20, false),
        (22, true),
    ] {
        assert_eq!(read(id).await.is_some(), kept, "key {id}");
    }
    assert_eq!(
        read(7).await,
        Some((expected.replacen("-2147483648", "7", 1), 0))
    );
}

// ------------------------------------------------------------------ Redis

struct Redis {
    settings: RedisSettings,
    prefix: String,
}

impl Redis {
    async fn field(&self, field: &str) -> BTreeMap<i64, String> {
        let client = ::redis::Client::open(self.settings.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for key in keys {
            let id: i64 = key[self.prefix.len()..].parse().unwrap();
            let value: Option<String> = ::redis::cmd("HGET")
                .arg(&key)
                .arg(field)
                .query_async(&mut conn)
                .await
                .unwrap();
            out.insert(id, value.unwrap_or_default());
        }
        out
    }
}

impl Harness for Redis {
    type Sink = RedisSink;

    async fn fresh(name: &str) -> (Self, RedisSink) {
        let prefix = format!("conf:{name}:{}:user:", std::process::id());
        let settings = RedisSettings {
            url: stack_var("WALCAST_REDIS_URL"),
            key_template: format!("{prefix}{{user_id}}"),
            fields: None,
            ttl_secs: 600,
            tombstone_ttl_secs: 600,
            consumer: format!("walcast.test.{name}.{}", std::process::id()),
            tls_ca_file: None,
        };
        let client = ::redis::Client::open(settings.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for pattern in [
            format!("{prefix}*"),
            format!("walcast:tombstone:{prefix}*"),
            format!("walcast:offsets:{}", settings.consumer),
            format!("walcast:floor:{prefix}*"),
            format!("walcast:cleared:{prefix}*"),
        ] {
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            for key in keys {
                let _: () = ::redis::cmd("DEL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
        let sink = RedisSink::connect(settings.clone()).await.unwrap();
        (Redis { settings, prefix }, sink)
    }

    async fn rows(&self) -> BTreeMap<i64, String> {
        self.field("name").await
    }

    async fn emails(&self) -> BTreeMap<i64, String> {
        self.field("email").await
    }

    async fn reconnect(&self) -> RedisSink {
        RedisSink::connect(self.settings.clone()).await.unwrap()
    }

    async fn typed_sink(&self) -> RedisSink {
        self.reconnect().await
    }

    async fn typed(&self, id: i64, field: &str) -> Option<String> {
        let client = ::redis::Client::open(self.settings.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        ::redis::cmd("HGET")
            .arg(format!("{}{id}", self.prefix))
            .arg(field)
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}

/// The key template is checked, and names the fix.
#[tokio::test]
async fn redis_key_template_errors_say_how_to_fix_them() {
    let (h, _) = Redis::fresh("template").await;
    let mut settings = h.settings.clone();
    settings.key_template = "user".into();
    let e = RedisSink::connect(settings).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "key_template \"user\" has no {field} placeholder, so every event would write the same key; name the key fields, e.g. \"user:{user_id}\""
    );
    let mut settings = h.settings.clone();
    settings.key_template = "user:{id}".into();
    let mut sink = RedisSink::connect(settings).await.unwrap();
    let e = sink
        .apply(&batch(vec![upsert(1, "Ada", 1, 0)]))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "key_template \"user:{id}\" names {id}, which is not a key field of the events (key fields: user_id); use key fields only, so each key maps to one hash"
    );
}

/// A deleted key's tombstone expires after `tombstone_ttl_secs`; kept keys after `ttl_secs`.
#[tokio::test]
async fn redis_keys_and_tombstones_expire() {
    let (h, mut sink) = Redis::fresh("ttl").await;
    sink.apply(&batch(vec![upsert(1, "Ada", 10, 0), delete(2, 10, 1)]))
        .await
        .unwrap();
    let client = ::redis::Client::open(h.settings.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl = |key: String| {
        let mut conn = conn.clone();
        async move {
            let t: i64 = ::redis::cmd("TTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            t
        }
    };
    let kept = ttl(format!("{}1", h.prefix)).await;
    let tomb = ttl(format!("walcast:tombstone:{}2", h.prefix)).await;
    assert!((590..=600).contains(&kept), "key TTL {kept}");
    assert!((590..=600).contains(&tomb), "tombstone TTL {tomb}");
    let version: String = ::redis::cmd("HGET")
        .arg(format!("{}1", h.prefix))
        .arg("_walcast_version")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, "000000000000000a00000000");
}

/// Two keys whose values, joined by the template's text, would read the same (`x:y`, `z`
/// and `x`, `y:z` in `…{a}:{b}`) stay two hashes: a value's separator is escaped.
#[tokio::test]
async fn redis_two_keys_never_make_one_hash() {
    let (h, _) = Redis::fresh("two_keys").await;
    let mut sink = RedisSink::connect(RedisSettings {
        key_template: format!("{}{{a}}:{{b}}", h.prefix),
        ..h.settings.clone()
    })
    .await
    .unwrap();
    let change = |a: &str, b: &str, lsn: u64| Change {
        key: vec![
            ("a".into(), Value::Text(a.into())),
            ("b".into(), Value::Text(b.into())),
        ],
        op: Op::Upsert(vec![("n".into(), Value::Text(format!("{a}|{b}")))]),
        version: Version { lsn, seq: 0 },
    };
    sink.apply(&batch(vec![change("x:y", "z", 10), change("x", "y:z", 11)]))
        .await
        .unwrap();
    let client = ::redis::Client::open(h.settings.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (key, n) in [("x%3Ay:z", "x:y|z"), ("x:y%3Az", "x|y:z")] {
        let stored: Option<String> = ::redis::cmd("HGET")
            .arg(format!("{}{key}", h.prefix))
            .arg("n")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(stored.as_deref(), Some(n), "{key}");
    }
}

/// A truncate clears its own replica's hashes only: another sink's, whose keys its pattern
/// also matches (`…user:{user_id}:addr:{address_id}` beside `…user:{user_id}`), stay.
#[tokio::test]
async fn redis_a_truncate_leaves_other_replicas_hashes_alone() {
    let (h, mut users) = Redis::fresh("trunc_other").await;
    let mut addresses = RedisSink::connect(RedisSettings {
        key_template: format!("{}{{user_id}}:addr:{{address_id}}", h.prefix),
        consumer: format!("{}-addresses", h.settings.consumer),
        ..h.settings.clone()
    })
    .await
    .unwrap();
    let address = Change {
        key: vec![
            ("user_id".into(), Value::Long(1)),
            ("address_id".into(), Value::Long(7)),
        ],
        op: Op::Upsert(vec![("city".into(), Value::Text("Oslo".into()))]),
        version: Version { lsn: 10, seq: 1 },
    };
    addresses.apply(&batch(vec![address])).await.unwrap();
    users
        .apply(&batch(vec![
            upsert(1, "Ada", 10, 0),
            upsert(2, "Grace", 40, 0),
        ]))
        .await
        .unwrap();
    users.apply(&batch(vec![truncate(30, 0)])).await.unwrap();

    let client = ::redis::Client::open(h.settings.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let city: Option<String> = ::redis::cmd("HGET")
        .arg(format!("{}1:addr:7", h.prefix))
        .arg("city")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        city.as_deref(),
        Some("Oslo"),
        "another replica's hash stays"
    );
    let kept: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{}*", h.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut kept: Vec<&str> = kept.iter().map(|k| &k[h.prefix.len()..]).collect();
    kept.sort();
    assert_eq!(
        kept,
        ["1:addr:7", "2"],
        "only the users older than the truncate went"
    );
}

// ------------------------------------------------------------------ every scenario × every store

/// `conformance!(module => Harness)`: every scenario against one store. One line per store.
macro_rules! conformance {
    ($store:ident => $harness:ident) => {
        conformance!(@each $store, $harness, [
            inserts_updates_and_deletes_converge,
            redelivery_changes_nothing,
            reordered_delivery_converges,
            a_stale_update_never_overwrites_a_newer_one,
            a_late_update_cannot_resurrect_a_deleted_row,
            schema_evolution_keeps_both_versions_applicable,
            a_change_writes_only_the_fields_it_carries,
            a_crash_between_write_and_offset_commit_is_absorbed,
            arrays_maps_and_records_round_trip,
            a_truncate_clears_older_rows_and_nothing_older_comes_back,
            a_key_field_the_sink_leaves_out_stops_it,
        ]);
    };
    (@each $store:ident, $harness:ident, [$($scenario:ident),+ $(,)?]) => {
        mod $store {
            $(#[tokio::test] async fn $scenario() { super::$scenario::<super::$harness>(stringify!($scenario)).await; })+
        }
    };
}

conformance!(postgres => Pg);
conformance!(mysql => My);
conformance!(redis => Redis);

/// A key that holds another kind of value is poison (the runner's policy decides), while an
/// unreachable server is transient: the runner retries it.
#[tokio::test]
async fn redis_errors_are_classified() {
    let (h, mut sink) = Redis::fresh("classify").await;
    let client = ::redis::Client::open(h.settings.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("SET")
        .arg(format!("{}1", h.prefix))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();
    let e = sink
        .apply(&batch(vec![upsert(1, "Ada", 10, 0)]))
        .await
        .unwrap_err();
    assert!(e.is_poison() && !e.is_transient(), "{e}");
    let mut settings = h.settings.clone();
    settings.url = "redis://127.0.0.1:1".into();
    let e = RedisSink::connect(settings).await.unwrap_err();
    assert!(e.is_transient() && !e.is_poison(), "{e}");
}

/// After the server drops the connection, the sink reconnects on its next call, whichever
/// call that is, and re-prepares its statements on the new connection.
#[tokio::test]
async fn postgres_a_dropped_connection_is_reopened() {
    let (h, mut sink) = Pg::fresh("dropped").await;
    sink.apply(&batch(vec![upsert(1, "Ada", 10, 0)]))
        .await
        .unwrap();
    let admin = pg_client(&h.admin_url).await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    // The first call after the drop may fail, as transient; the next one reconnects.
    if let Err(e) = sink.positions().await {
        assert!(e.is_transient(), "{e}");
        sink.positions().await.unwrap();
    }
    sink.apply(&batch(vec![upsert(1, "Ada Lovelace", 20, 0)]))
        .await
        .unwrap();
    assert_eq!(h.rows().await, rows(&[(1, "Ada Lovelace")]));
}
