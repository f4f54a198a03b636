use std::path::Path;

use apache_avro::types::Value as Avro;
use bytes::Bytes;

use super::*;
use crate::lsn::Lsn;
use crate::source::pgoutput::{Datum, TupleData};
use crate::source::value::{PgType, ScalarType};
use crate::source::Column;

const IDS: SchemaIds = SchemaIds {
    key: 11,
    insert: 12,
    update: 13,
    delete: 14,
    snapshot: 12,
    truncate: 15,
    truncate_key: 16,
};

/// Contracts written to a temporary directory, named as a configuration would name them.
struct Contracts(tempfile::TempDir);

impl Contracts {
    fn new() -> Self {
        Contracts(tempfile::tempdir().unwrap())
    }

    fn record(&self, name: &str, fields: &str) -> Arc<Contract> {
        let text = format!(
            r#"{{"type": "record", "name": "{name}", "namespace": "com.example.users", "fields": [{fields}]}}"#
        );
        let resolved = self.0.path().join(format!("{name}.avsc"));
        std::fs::write(&resolved, text).unwrap();
        let path = format!("schemas/users/{name}.avsc");
        Arc::new(Contract::load(Path::new(&path), &resolved).unwrap())
    }
}

const KEY: &str = r#"{"name": "user_id", "type": "long"}"#;
const CREATED: &str = r#"{"name": "user_id", "type": "long"},
    {"name": "name", "type": "string"},
    {"name": "email", "type": ["null", "string"], "default": null},
    {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-micros"}}"#;
const UPDATED: &str = r#"{"name": "user_id", "type": "long"},
    {"name": "name", "type": "string"},
    {"name": "bio", "type": ["null", "string"], "default": null}"#;
const DELETED: &str = r#"{"name": "user_id", "type": "long"}"#;

fn spec(c: &Contracts, compacted: bool) -> TableSpec {
    TableSpec {
        table: crate::source::catalog::TableName {
            schema: "public".into(),
            name: "users".into(),
        },
        topic: "users.user".into(),
        key: c.record("UserKey", KEY),
        insert: Some(c.record("UserCreated", CREATED)),
        update: Some(c.record("UserUpdated", UPDATED)),
        delete: Some(c.record("UserDeleted", DELETED)),
        snapshot: None,
        truncate: None,
        columns: BTreeMap::from([("user_id".to_string(), "id".to_string())]),
        compacted,
        skip_truncate: false,
    }
}

fn column(name: &str, type_name: &str, ty: ScalarType, key: bool) -> Column {
    Column {
        name: name.into(),
        type_oid: 0,
        type_modifier: -1,
        type_name: type_name.into(),
        ty: PgType::Scalar(ty),
        key,
    }
}

/// `public.users (id bigint primary key, name text not null, email text, bio text,
/// updated_at timestamptz not null)`.
fn users(replica_identity: ReplicaIdentity) -> Arc<Table> {
    Arc::new(Table {
        oid: 16_384,
        schema: "public".into(),
        name: "users".into(),
        replica_identity,
        columns: vec![
            column("id", "int8", ScalarType::Int8, true),
            column("name", "text", ScalarType::Text, false),
            column("email", "text", ScalarType::Text, false),
            column("bio", "text", ScalarType::Text, false),
            column("updated_at", "timestamptz", ScalarType::TimestampTz, false),
        ],
    })
}

fn not_null() -> HashSet<String> {
    ["id", "name", "updated_at"]
        .into_iter()
        .map(String::from)
        .collect()
}

fn compile(spec: TableSpec, table: Arc<Table>) -> Result<Mapping, Vec<String>> {
    Mapping::compile(Arc::new(spec), table, Some(&not_null()), IDS)
}

fn mapping(compacted: bool) -> Mapping {
    let c = Contracts::new();
    compile(spec(&c, compacted), users(ReplicaIdentity::Default)).unwrap()
}

fn text(s: &str) -> Datum {
    Datum::Binary(Bytes::copy_from_slice(s.as_bytes()))
}

/// A whole row: `updated_at` is 2000-01-01 00:00:01 UTC.
fn row(id: i64, name: &str, email: Option<&str>, bio: Datum) -> Row {
    Row::new(
        TupleData(vec![
            Datum::Binary(Bytes::copy_from_slice(&id.to_be_bytes())),
            text(name),
            email.map_or(Datum::Null, text),
            bio,
            Datum::Binary(Bytes::copy_from_slice(&1_000_000i64.to_be_bytes())),
        ]),
        false,
    )
}

/// An old key image (REPLICA IDENTITY DEFAULT): only the key column is set.
fn old_key(id: i64) -> Row {
    Row::new(
        TupleData(vec![
            Datum::Binary(Bytes::copy_from_slice(&id.to_be_bytes())),
            Datum::Null,
            Datum::Null,
            Datum::Null,
            Datum::Null,
        ]),
        true,
    )
}

fn change(table: &Arc<Table>, op: Op, old: Option<Row>, new: Option<Row>) -> Change {
    Change {
        table: table.clone(),
        op,
        old,
        new,
        lsn: Lsn(0x100),
        seq: 3,
        xid: 9,
        commit_ts: 0,
    }
}

/// The fields of a Confluent-framed record written with `contract` under schema `id`.
fn read(contract: &Contract, id: u32, framed: &[u8]) -> Vec<(String, Avro)> {
    assert_eq!(framed[0], 0, "magic byte");
    assert_eq!(&framed[1..5], &id.to_be_bytes(), "schema id");
    let mut body = &framed[5..];
    let value = apache_avro::from_avro_datum(&contract.schema, &mut body, None).unwrap();
    assert!(body.is_empty(), "the record fills the frame");
    let Avro::Record(fields) = value else {
        panic!("{value:?}")
    };
    fields
}

fn key_of(m: &Mapping, e: &Event) -> Vec<(String, Avro)> {
    read(&m.spec.key, IDS.key, &e.key)
}

fn user_key(id: i64) -> Vec<(String, Avro)> {
    vec![("user_id".into(), Avro::Long(id))]
}

#[test]
fn a_snapshot_read_is_the_insert_contract_with_op_snapshot_by_default() {
    let c = Contracts::new();
    let mut s = spec(&c, false);
    s.snapshot = s.insert.clone();
    let m = compile(s, users(ReplicaIdentity::Default)).unwrap();
    let event = m
        .snapshot_event(&row(7, "Ada", Some("ada@example.com"), Datum::Null))
        .unwrap()
        .expect("the table has a snapshot contract");
    assert_eq!(
        (event.event_type.as_str(), event.op, event.part),
        ("com.example.users.UserCreated", "snapshot", 0)
    );
    assert_eq!(key_of(&m, &event), user_key(7));
    let insert = m
        .events(&change(
            &m.table.clone(),
            Op::Insert,
            None,
            Some(row(7, "Ada", Some("ada@example.com"), Datum::Null)),
        ))
        .unwrap();
    assert_eq!(
        event.value, insert[0].value,
        "the same record as the insert's"
    );
    // Without a snapshot contract, nothing is read.
    assert!(mapping(false)
        .snapshot_event(&row(7, "Ada", None, Datum::Null))
        .unwrap()
        .is_none());
}

fn kinds(events: &[Event]) -> Vec<(&str, &str, u8)> {
    events
        .iter()
        .map(|e| (e.event_type.as_str(), e.op, e.part))
        .collect()
}

#[test]
fn an_insert_publishes_the_insert_contract_keyed_by_the_key_contract() {
    let m = mapping(false);
    let table = m.table.clone();
    let events = m
        .events(&change(
            &table,
            Op::Insert,
            None,
            Some(row(7, "Ada", None, Datum::Null)),
        ))
        .unwrap();
    assert_eq!(
        kinds(&events),
        [("com.example.users.UserCreated", "insert", 0)]
    );
    assert_eq!(key_of(&m, &events[0]), user_key(7));
    let value = events[0].value.as_ref().unwrap();
    assert_eq!(
        read(m.spec.insert.as_ref().unwrap(), IDS.insert, value),
        vec![
            ("user_id".into(), Avro::Long(7)),
            ("name".into(), Avro::String("Ada".into())),
            ("email".into(), Avro::Union(0, Box::new(Avro::Null))),
            (
                "updated_at".into(),
                Avro::TimestampMicros(946_684_801_000_000)
            ),
        ]
    );
}

#[test]
fn an_update_that_keeps_the_key_publishes_only_the_update_contract() {
    let m = mapping(true);
    let table = m.table.clone();
    let events = m
        .events(&change(
            &table,
            Op::Update,
            None,
            Some(row(7, "Ada L.", None, text("hi"))),
        ))
        .unwrap();
    assert_eq!(
        kinds(&events),
        [("com.example.users.UserUpdated", "update", 1)]
    );
    assert_eq!(key_of(&m, &events[0]), user_key(7));
    assert_eq!(
        read(
            m.spec.update.as_ref().unwrap(),
            IDS.update,
            events[0].value.as_ref().unwrap()
        ),
        vec![
            ("user_id".into(), Avro::Long(7)),
            ("name".into(), Avro::String("Ada L.".into())),
            (
                "bio".into(),
                Avro::Union(1, Box::new(Avro::String("hi".into())))
            ),
        ]
    );
}

#[test]
fn an_update_whose_old_key_image_has_the_same_key_is_not_a_key_change() {
    let m = mapping(true);
    let table = m.table.clone();
    let events = m
        .events(&change(
            &table,
            Op::Update,
            Some(old_key(7)),
            Some(row(7, "Ada", None, Datum::Null)),
        ))
        .unwrap();
    assert_eq!(
        kinds(&events),
        [("com.example.users.UserUpdated", "update", 1)]
    );
}

#[test]
fn a_key_change_deletes_the_old_key_before_the_update_under_the_new_one() {
    let m = mapping(false);
    let table = m.table.clone();
    let events = m
        .events(&change(
            &table,
            Op::Update,
            Some(old_key(7)),
            Some(row(8, "Ada", None, Datum::Null)),
        ))
        .unwrap();
    assert_eq!(
        kinds(&events),
        [
            ("com.example.users.UserDeleted", "delete", 0),
            ("com.example.users.UserUpdated", "update", 1)
        ]
    );
    assert_eq!(key_of(&m, &events[0]), user_key(7));
    assert_eq!(
        read(
            m.spec.delete.as_ref().unwrap(),
            IDS.delete,
            events[0].value.as_ref().unwrap()
        ),
        user_key(7)
    );
    assert_eq!(key_of(&m, &events[1]), user_key(8));
}

#[test]
fn a_key_change_on_a_compacted_topic_also_tombstones_the_old_key() {
    let m = mapping(true);
    let table = m.table.clone();
    let events = m
        .events(&change(
            &table,
            Op::Update,
            Some(old_key(7)),
            Some(row(8, "Ada", None, Datum::Null)),
        ))
        .unwrap();
    assert_eq!(
        kinds(&events),
        [
            ("com.example.users.UserDeleted", "delete", 0),
            ("tombstone", "delete", 2),
            ("com.example.users.UserUpdated", "update", 1)
        ]
    );
    assert_eq!(key_of(&m, &events[1]), user_key(7));
    assert_eq!(events[1].value, None);
}

#[test]
fn a_delete_publishes_the_delete_contract_keyed_by_the_old_key() {
    let m = mapping(false);
    let table = m.table.clone();
    let events = m
        .events(&change(&table, Op::Delete, Some(old_key(7)), None))
        .unwrap();
    assert_eq!(
        kinds(&events),
        [("com.example.users.UserDeleted", "delete", 0)]
    );
    assert_eq!(key_of(&m, &events[0]), user_key(7));
}

#[test]
fn a_delete_on_a_compacted_topic_is_followed_by_a_tombstone_of_the_same_key() {
    let m = mapping(true);
    let table = m.table.clone();
    let events = m
        .events(&change(&table, Op::Delete, Some(old_key(7)), None))
        .unwrap();
    assert_eq!(
        kinds(&events),
        [
            ("com.example.users.UserDeleted", "delete", 0),
            ("tombstone", "delete", 2)
        ]
    );
    assert_eq!(events[1].key, events[0].key);
    assert_eq!(events[1].value, None);
}

#[test]
fn without_a_delete_contract_a_delete_is_only_a_tombstone_and_only_when_compacted() {
    for compacted in [true, false] {
        let c = Contracts::new();
        let s = TableSpec {
            delete: None,
            ..spec(&c, compacted)
        };
        let m = compile(s, users(ReplicaIdentity::Default)).unwrap();
        let table = m.table.clone();
        let events = m
            .events(&change(&table, Op::Delete, Some(old_key(7)), None))
            .unwrap();
        let expected: &[(&str, &str, u8)] = if compacted {
            &[("tombstone", "delete", 2)]
        } else {
            &[]
        };
        assert_eq!(kinds(&events), expected, "compacted = {compacted}");
    }
}

#[test]
fn a_truncate_is_no_row_event() {
    let m = mapping(true);
    let table = m.table.clone();
    assert_eq!(
        m.events(&change(&table, Op::Truncate, None, None)),
        Ok(vec![])
    );
    assert!(!m.publishes_truncates());
    assert_eq!(m.truncate_event(0), None);
}

#[test]
fn a_truncate_event_is_keyed_by_its_partition_and_carries_the_empty_truncate_record() {
    let c = Contracts::new();
    let spec = TableSpec {
        truncate: Some(c.record("UsersTruncated", "")),
        ..spec(&c, true)
    };
    let m = compile(spec, users(ReplicaIdentity::Default)).unwrap();
    assert!(m.publishes_truncates());
    let key_schema = Contract::truncate_key().schema;
    for partition in [0, 2, 300] {
        let event = m.truncate_event(partition).unwrap();
        assert_eq!(event.op, "truncate");
        assert_eq!(event.event_type, "com.example.users.UsersTruncated");
        // Confluent framing with the truncate key's id, then the record {partition}.
        assert_eq!(event.key[..5], [0, 0, 0, 0, 16]);
        let key = apache_avro::from_avro_datum(&key_schema, &mut &event.key[5..], None).unwrap();
        assert_eq!(
            key,
            Avro::Record(vec![("partition".into(), Avro::Int(partition))])
        );
        // The truncate contract's id, and a record without fields: no bytes.
        assert_eq!(event.value, Some(vec![0, 0, 0, 0, 15]));
    }
}

#[test]
fn a_truncate_contract_with_fields_is_refused_naming_the_file_and_field() {
    let c = Contracts::new();
    let contract = c.record("UsersTruncated", r#"{"name": "reason", "type": "string"}"#);
    assert_eq!(
        contract.check_truncate(),
        Err("schemas/users/UsersTruncated.avsc: a truncate contract has no fields, since a TRUNCATE has no row to fill them from; remove field reason (walcast's headers say which table, when and where)".into())
    );
    assert_eq!(c.record("UsersTruncated", "").check_truncate(), Ok(()));
}

#[test]
fn an_unchanged_toast_value_is_taken_from_a_full_old_row() {
    let c = Contracts::new();
    let m = compile(spec(&c, false), users(ReplicaIdentity::Full)).unwrap();
    let table = m.table.clone();
    let events = m
        .events(&change(
            &table,
            Op::Update,
            Some(row(7, "Ada", None, text("long bio"))),
            Some(row(7, "Ada L.", None, Datum::UnchangedToast)),
        ))
        .unwrap();
    assert_eq!(
        read(
            m.spec.update.as_ref().unwrap(),
            IDS.update,
            events[0].value.as_ref().unwrap()
        )[2],
        (
            "bio".into(),
            Avro::Union(1, Box::new(Avro::String("long bio".into())))
        )
    );
}

#[test]
fn an_unchanged_toast_value_without_a_full_old_row_is_an_error_naming_column_field_and_contract() {
    let m = mapping(false);
    let table = m.table.clone();
    for old in [None, Some(old_key(7))] {
        let e = m
            .events(&change(
                &table,
                Op::Update,
                old.clone(),
                Some(row(7, "Ada", None, Datum::UnchangedToast)),
            ))
            .unwrap_err();
        assert_eq!(
            e,
            "public.users.bio (text) feeding field bio of schemas/users/UserUpdated.avsc: the update did not change this TOASTed value, so PostgreSQL did not send it; run ALTER TABLE public.users REPLICA IDENTITY FULL so updates carry it, or leave the column out of the contract",
            "old image {old:?}"
        );
    }
}

#[test]
fn a_null_for_a_field_that_is_not_nullable_is_an_error_naming_column_field_and_contract() {
    // Compiled without the catalog's NOT NULL list, so only the value can tell.
    let c = Contracts::new();
    let m = Mapping::compile(
        Arc::new(spec(&c, false)),
        users(ReplicaIdentity::Default),
        None,
        IDS,
    )
    .unwrap();
    let table = m.table.clone();
    let mut new = row(7, "Ada", None, Datum::Null);
    new = Row::new(
        TupleData(
            new.datums()
                .iter()
                .enumerate()
                .map(|(i, d)| if i == 1 { Datum::Null } else { d.clone() })
                .collect(),
        ),
        false,
    );
    let e = m
        .events(&change(&table, Op::Insert, None, Some(new)))
        .unwrap_err();
    assert!(
        e.starts_with(
            "public.users.name (text) feeding field name of schemas/users/UserCreated.avsc: the value is NULL but the field is not nullable"
        ),
        "{e}"
    );
}

#[test]
fn a_nullable_column_feeds_a_nullable_field() {
    let m = mapping(false);
    let table = m.table.clone();
    let events = m
        .events(&change(
            &table,
            Op::Insert,
            None,
            Some(row(7, "Ada", Some("ada@example.com"), Datum::Null)),
        ))
        .unwrap();
    assert_eq!(
        read(
            m.spec.insert.as_ref().unwrap(),
            IDS.insert,
            events[0].value.as_ref().unwrap()
        )[2],
        (
            "email".into(),
            Avro::Union(1, Box::new(Avro::String("ada@example.com".into())))
        )
    );
}

fn issues(spec: TableSpec, table: Arc<Table>) -> Vec<String> {
    compile(spec, table).map(|_| ()).unwrap_err()
}

#[test]
fn a_nullable_column_feeding_a_field_that_is_not_nullable_does_not_compile() {
    let c = Contracts::new();
    let s = TableSpec {
        insert: Some(c.record(
            "UserCreated",
            r#"{"name": "user_id", "type": "long"}, {"name": "email", "type": "string"}"#,
        )),
        ..spec(&c, false)
    };
    assert_eq!(
        issues(s, users(ReplicaIdentity::Default)),
        ["schemas/users/UserCreated.avsc: field email is not nullable, but it reads column public.users.email (text), which is; make the field a union with null (\"type\": [\"null\", …], \"default\": null), or add NOT NULL to the column"]
    );
}

#[test]
fn a_key_field_must_read_a_not_null_replica_identity_column() {
    let c = Contracts::new();
    let s = TableSpec {
        key: c.record("UserKey", r#"{"name": "email", "type": "string"}"#),
        ..spec(&c, false)
    };
    assert_eq!(
        issues(s, users(ReplicaIdentity::Default)),
        [
            "schemas/users/UserKey.avsc: field email: key fields are never null, but it reads column public.users.email (text), which is nullable; key fields must read NOT NULL columns and not be nullable in the contract",
            "schemas/users/UserKey.avsc: field email: key field reads column public.users.email (text), which is not part of the table's replica identity, so deletes could not be keyed; map key fields to the primary key columns, or run ALTER TABLE public.users REPLICA IDENTITY FULL",
        ]
    );
}

#[test]
fn a_nullable_key_field_does_not_compile() {
    let c = Contracts::new();
    let s = TableSpec {
        key: c.record(
            "UserKey",
            r#"{"name": "user_id", "type": ["null", "long"], "default": null}"#,
        ),
        ..spec(&c, false)
    };
    assert_eq!(
        issues(s, users(ReplicaIdentity::Default)),
        ["schemas/users/UserKey.avsc: field user_id: key fields are never null, but it reads column public.users.id (int8); key fields must read NOT NULL columns and not be nullable in the contract"]
    );
}

#[test]
fn a_key_field_without_a_column_does_not_compile() {
    let c = Contracts::new();
    let s = TableSpec {
        columns: BTreeMap::new(),
        ..spec(&c, false)
    };
    let found = issues(s, users(ReplicaIdentity::Default));
    assert!(
        found.contains(&"schemas/users/UserKey.avsc: field user_id: key fields must read a column, and table public.users has no column user_id; map it in [[source.table]] columns (user_id = \"column\")".to_string()),
        "{found:#?}"
    );
}

#[test]
fn a_field_without_a_column_or_a_default_does_not_compile() {
    let c = Contracts::new();
    let s = TableSpec {
        insert: Some(c.record(
            "UserCreated",
            r#"{"name": "user_id", "type": "long"}, {"name": "nickname", "type": "string"}"#,
        )),
        ..spec(&c, false)
    };
    assert_eq!(
        issues(s, users(ReplicaIdentity::Default)),
        ["schemas/users/UserCreated.avsc: field nickname has no default, and table public.users has no column nickname; map the field to a column in [[source.table]] columns (nickname = \"column\"), or give it a default in the contract"]
    );
}

#[test]
fn a_field_without_a_column_is_written_with_its_default() {
    let c = Contracts::new();
    let s = TableSpec {
        insert: Some(c.record(
            "UserCreated",
            r#"{"name": "user_id", "type": "long"}, {"name": "plan", "type": "string", "default": "free"}"#,
        )),
        ..spec(&c, false)
    };
    let m = compile(s, users(ReplicaIdentity::Default)).unwrap();
    let table = m.table.clone();
    let events = m
        .events(&change(
            &table,
            Op::Insert,
            None,
            Some(row(1, "Ada", None, Datum::Null)),
        ))
        .unwrap();
    assert_eq!(
        read(
            m.spec.insert.as_ref().unwrap(),
            IDS.insert,
            events[0].value.as_ref().unwrap()
        ),
        vec![
            ("user_id".into(), Avro::Long(1)),
            ("plan".into(), Avro::String("free".into()))
        ]
    );
}

#[test]
fn a_column_whose_type_does_not_convert_does_not_compile_and_says_why() {
    let c = Contracts::new();
    let s = TableSpec {
        insert: Some(c.record(
            "UserCreated",
            r#"{"name": "user_id", "type": "int"}, {"name": "updated_at", "type": {"type": "long", "logicalType": "local-timestamp-micros"}}"#,
        )),
        ..spec(&c, false)
    };
    assert_eq!(
        issues(s, users(ReplicaIdentity::Default)),
        [
            "schemas/users/UserCreated.avsc: field user_id reads column public.users.id (int8), but it does not convert to int: a bigint needs long",
            "schemas/users/UserCreated.avsc: field updated_at reads column public.users.updated_at (timestamptz), but it does not convert to local-timestamp-micros: a timestamptz is timestamp-micros",
        ]
    );
}

#[test]
fn a_delete_contract_reads_only_the_replica_identity_unless_it_is_full() {
    let c = Contracts::new();
    let deleted = c.record(
        "UserDeleted",
        r#"{"name": "user_id", "type": "long"}, {"name": "name", "type": "string"}"#,
    );
    let s = TableSpec {
        delete: Some(deleted.clone()),
        ..spec(&c, false)
    };
    assert_eq!(
        issues(s.clone(), users(ReplicaIdentity::Default)),
        ["schemas/users/UserDeleted.avsc: field name: a delete carries only the replica identity, and column public.users.name (text) is not part of it; drop the field from the delete contract, give it a default, or run ALTER TABLE public.users REPLICA IDENTITY FULL"]
    );
    assert!(compile(s, users(ReplicaIdentity::Full)).is_ok());
}

#[test]
fn a_delete_contract_field_outside_the_replica_identity_is_written_with_its_default() {
    let c = Contracts::new();
    let s = TableSpec {
        delete: Some(c.record(
            "UserDeleted",
            r#"{"name": "user_id", "type": "long"}, {"name": "name", "type": "string", "default": "(deleted)"}"#,
        )),
        ..spec(&c, false)
    };
    let m = compile(s, users(ReplicaIdentity::Default)).unwrap();
    let table = m.table.clone();
    let events = m
        .events(&change(&table, Op::Delete, Some(old_key(7)), None))
        .unwrap();
    assert_eq!(
        read(
            m.spec.delete.as_ref().unwrap(),
            IDS.delete,
            events[0].value.as_ref().unwrap()
        ),
        vec![
            ("user_id".into(), Avro::Long(7)),
            ("name".into(), Avro::String("(deleted)".into()))
        ]
    );
}

#[test]
fn a_columns_entry_for_a_field_no_contract_has_does_not_compile() {
    let c = Contracts::new();
    let mut s = spec(&c, false);
    s.columns.insert("nick".into(), "name".into());
    assert_eq!(
        issues(s, users(ReplicaIdentity::Default)),
        ["table public.users: columns maps field nick (to column name), but no contract of the table has a field nick; expected one of the contracts' fields"]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let c = Contracts::new();
    let mut s = TableSpec {
        insert: Some(c.record(
            "UserCreated",
            r#"{"name": "user_id", "type": "int"}, {"name": "email", "type": "string"}, {"name": "nickname", "type": "string"}"#,
        )),
        ..spec(&c, false)
    };
    s.columns.insert("nick".into(), "name".into());
    let found = issues(s, users(ReplicaIdentity::Default));
    assert_eq!(found.len(), 4, "{found:#?}");
    for (i, fragment) in [
        "columns maps field nick",
        "field user_id reads column public.users.id (int8)",
        "field email is not nullable",
        "field nickname has no default",
    ]
    .iter()
    .enumerate()
    {
        assert!(found[i].contains(fragment), "{i}: {}", found[i]);
    }
}
