//! What the table-shaped replicas (PostgreSQL, MySQL/MariaDB) share: which fields a replica
//! keeps, the column each one is written to, and which change of a batch decides each key.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::connector::{Endpoint, Issue};
use crate::rounds::Round;
use crate::sink::{Change, Field, Op, Value, Version};
use crate::tls::TlsMode;
use crate::Error;

/// The `[[sink]]` keys of a table-shaped store (PostgreSQL, MySQL/MariaDB).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableOptions {
    /// Connection URL; exactly one of `url` and `url_env`.
    pub url: Option<String>,
    /// Environment variable holding the connection URL, instead of `url`.
    pub url_env: Option<String>,
    /// Environment variable holding the password, which overrides the one in the URL.
    pub password_env: Option<String>,
    /// Target table, optionally schema-qualified.
    pub table: String,
    /// Event fields forming the replica's primary key.
    pub key: Vec<String>,
    /// Replica column = event field, where the names differ.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Event fields to keep; default all.
    pub fields: Option<Vec<String>>,
    /// Create the table when it is missing.
    #[serde(default)]
    pub auto_create: bool,
    /// Add new nullable columns when a contract gains a field.
    #[serde(default)]
    pub auto_add_columns: bool,
    /// TLS: disable, prefer, require or verify-full; default prefer (PostgreSQL: the url's
    /// `sslmode` when it has one).
    pub tls_mode: Option<TlsMode>,
    /// PEM file of the CA(s) trusted for verify-full instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl TableOptions {
    /// The URL and password keys.
    pub fn endpoint(&self) -> Endpoint<'_> {
        Endpoint {
            url: self.url.as_deref(),
            url_env: self.url_env.as_deref(),
            password_env: self.password_env.as_deref(),
        }
    }

    /// The table name, the key and the TLS keys, checked without connecting; `tls_ca_file`
    /// is resolved against `base` (the configuration file's directory).
    pub fn check(&mut self, base: &Path) -> Vec<Issue> {
        let mut issues = check_ca_file(&mut self.tls_ca_file, base);
        if issues.is_empty()
            && self.tls_ca_file.is_some()
            && self.tls_mode != Some(TlsMode::VerifyFull)
        {
            issues.push(Issue::new(
                "tls_ca_file",
                "is only used with tls_mode = \"verify-full\"; set that too, or remove tls_ca_file",
            ));
        }
        if let Err(why) = check_table_name(&self.table) {
            issues.push(Issue::new("table", why));
        }
        if self.key.is_empty() {
            issues.push(Issue::new(
                "key",
                "found an empty array, expected the event fields that form the replica's primary key",
            ));
        }
        issues
    }

    /// The settings a lane connects with.
    pub fn settings(&self, url: &str, consumer: &str) -> TableSettings {
        TableSettings {
            url: url.to_string(),
            table: self.table.clone(),
            key: self.key.clone(),
            columns: self.columns.clone(),
            fields: self.fields.clone(),
            consumer: consumer.to_string(),
            auto_create: self.auto_create,
            auto_add_columns: self.auto_add_columns,
            tls_mode: self.tls_mode,
            tls_ca_file: self.tls_ca_file.clone(),
        }
    }
}

/// Resolves `tls_ca_file` against `base` and checks that it holds PEM certificates.
pub fn check_ca_file(file: &mut Option<PathBuf>, base: &Path) -> Vec<Issue> {
    let Some(path) = file.as_ref() else {
        return Vec::new();
    };
    let resolved = base.join(path);
    if !resolved.is_file() {
        let issue = Issue::new(
            "tls_ca_file",
            format!(
                "file {} does not exist (looked for {}); expected a PEM certificate",
                path.display(),
                resolved.display()
            ),
        );
        return vec![issue];
    }
    if let Err(why) = crate::tls::read_certificates(&resolved) {
        return vec![Issue::new("tls_ca_file", why)];
    }
    *file = Some(resolved);
    Vec::new()
}

/// `table` or `schema.table`, each part an identifier of 1 to 63 characters without `"`.
pub fn check_table_name(name: &str) -> Result<(), String> {
    let identifier =
        |p: &str| !p.is_empty() && p.len() <= 63 && !p.contains('"') && !p.contains('\0');
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| identifier(p)) {
        Ok(())
    } else {
        Err(format!(
            "found \"{name}\", expected a table name such as \"public.users\""
        ))
    }
}

/// What a replica table is. Its `Debug` hides the url's password.
#[derive(Clone)]
pub struct TableSettings {
    /// Connection URL, with its password resolved.
    pub url: String,
    /// Target table, optionally qualified (`schema.table`, or `database.table` in MySQL).
    pub table: String,
    /// Event fields forming the replica's primary key.
    pub key: Vec<String>,
    /// Replica column = event field, where the names differ.
    pub columns: BTreeMap<String, String>,
    /// Event fields kept; `None` keeps every field that has a column.
    pub fields: Option<Vec<String>>,
    /// Names this replica's positions in `walcast_offsets` (the consumer group).
    pub consumer: String,
    /// Create the table when it is missing, from the union of the topic's contracts (every
    /// event type, the latest version of each), with only the key columns NOT NULL.
    pub auto_create: bool,
    /// Add a nullable column for each kept field a contract version gains.
    pub auto_add_columns: bool,
    /// `tls_mode`, when set; each store has its own default.
    pub tls_mode: Option<TlsMode>,
    /// `tls_ca_file`, resolved.
    pub tls_ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for TableSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSettings")
            .field("url", &crate::connector::redacted(&self.url))
            .field("table", &self.table)
            .field("key", &self.key)
            .field("consumer", &self.consumer)
            .field("tls_mode", &self.tls_mode)
            .finish_non_exhaustive()
    }
}

impl TableSettings {
    /// The replica column a field is written to.
    pub fn column_of(&self, field: &str) -> String {
        self.columns
            .iter()
            .find(|(_, f)| *f == field)
            .map_or_else(|| field.to_string(), |(c, _)| c.clone())
    }

    /// Whether the replica keeps `field` (key fields always).
    pub fn kept(&self, field: &str) -> bool {
        self.key.iter().any(|k| k == field)
            || self
                .fields
                .as_ref()
                .is_none_or(|fields| fields.iter().any(|f| f == field))
    }

    /// The key's replica columns, in key order.
    pub fn key_columns(&self) -> Vec<String> {
        self.key.iter().map(|f| self.column_of(f)).collect()
    }

    /// The changes above `floor` a replica writes, in [`Round`]s ([`crate::rounds`]), for a
    /// table that exists or not: a missing one (auto_create, no contract version prepared
    /// yet) has nothing to delete, and cannot take upserts.
    pub fn rounds<'c>(
        &self,
        changes: &'c [Change],
        floor: Version,
        table_exists: bool,
    ) -> Result<Vec<Round<'c>>, Error> {
        let mut rounds = crate::rounds::rounds(changes, floor, |f| self.kept(f));
        if let Some(e) = rounds
            .iter()
            .flat_map(|r| r.upserts.iter().chain(&r.deletes))
            .find_map(|c| {
                c.key_left_out(&self.key, || {
                    format!("key {:?} of replica table {}", self.key, self.table)
                })
            })
        {
            return Err(e);
        }
        if table_exists {
            return Ok(rounds);
        }
        if rounds.iter().any(|r| !r.upserts.is_empty()) {
            return Err(Error::Setup(format!(
                "replica table {} was not created: no contract version was prepared",
                self.table
            )));
        }
        rounds.iter_mut().for_each(|r| r.deletes.clear());
        Ok(rounds)
    }

    /// A round's upserts in groups that carry the same kept fields ([`crate::rounds::by_fields`]).
    pub fn by_fields<'c>(&self, upserts: &[&'c Change]) -> Vec<Vec<&'c Change>> {
        crate::rounds::by_fields(upserts, |f| self.kept(f))
    }

    /// The key's replica columns, each checked to exist.
    pub fn existing_key_columns(
        &self,
        has_column: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, Error> {
        let columns = self.key_columns();
        for (field, c) in self.key.iter().zip(&columns) {
            if !has_column(c) {
                return Err(Error::Setup(format!(
                    "replica table {} has no column {c} for key field {field}; add it, or map it with columns",
                    self.table
                )));
            }
        }
        Ok(columns)
    }

    /// A table made from `missing` (every kept field of a contract version) needs every
    /// key field among them.
    pub fn check_creatable(&self, missing: &[(&Field, String)]) -> Result<(), Error> {
        match self
            .key
            .iter()
            .find(|key| !missing.iter().any(|(f, _)| &&f.name == key))
        {
            Some(key) => Err(Error::Setup(format!(
                "cannot create replica table {}: key field {key} is not a field of the contract; set key to the contract's key fields",
                self.table
            ))),
            None => Ok(()),
        }
    }

    /// The upserted rows' `(field, column)`s: key first, then the kept fields, in first-seen
    /// order. A kept field without a column is a setup error naming the fix.
    pub fn upsert_columns(
        &self,
        changes: &[&Change],
        has_column: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, String)>, Error> {
        let mut out: Vec<(String, String)> = Vec::new();
        // The fields of the change before: a change with the same ones adds nothing.
        type Fields<'a> = &'a [(String, Value)];
        let mut last: Option<(Fields<'_>, Fields<'_>)> = None;
        let same_names = |a: &[(String, Value)], b: &[(String, Value)]| {
            a.len() == b.len() && a.iter().zip(b).all(|((x, _), (y, _))| x == y)
        };
        for change in changes {
            let Op::Upsert(fields) = &change.op else {
                continue;
            };
            if last.is_some_and(|(k, f)| same_names(k, &change.key) && same_names(f, fields)) {
                continue;
            }
            last = Some((&change.key, fields));
            for (field, _) in change.key.iter().chain(fields) {
                if out.iter().any(|(f, _)| f == field) || !self.kept(field) {
                    continue;
                }
                let column = self.column_of(field);
                if !has_column(&column) {
                    return Err(Error::Setup(format!(
                        "event field {field} has no column {column} in replica table {}; add the column, map the field with columns, or leave it out of fields",
                        self.table
                    )));
                }
                out.push((field.clone(), column));
            }
        }
        Ok(out)
    }
}

/// The kept fields of the topic's contracts (the union of every event type and version)
/// that have no column yet, as (field, column), key fields first. A kept field that comes
/// with two types (a type changed between versions, or differs between event types) has no
/// one column type: a setup error names it, both types, and the fix.
pub fn missing_columns<'f>(
    settings: &TableSettings,
    fields: &'f [Field],
    has_column: impl Fn(&str) -> bool,
) -> Result<Vec<(&'f Field, String)>, Error> {
    for (i, f) in fields.iter().enumerate() {
        if !settings.kept(&f.name) {
            continue;
        }
        if let Some(other) = fields[..i]
            .iter()
            .find(|o| o.name == f.name && o.ty != f.ty)
        {
            return Err(Error::Setup(format!(
                "event field {} is {} in one contract version or event type and {} in another, so replica table {} cannot give it one column type; keep the field's type in every contract of the topic (publish a new type under a new field name), or leave the field out of fields",
                f.name,
                other.ty.name(),
                f.ty.name(),
                settings.table
            )));
        }
    }
    let mut out: Vec<(&Field, String)> = Vec::new();
    for key in &settings.key {
        if let Some(f) = fields.iter().find(|f| &f.name == key) {
            out.push((f, settings.column_of(key)));
        }
    }
    for f in fields {
        let seen = out.iter().any(|(o, _)| o.name == f.name);
        if !seen && !settings.key.contains(&f.name) && settings.kept(&f.name) {
            out.push((f, settings.column_of(&f.name)));
        }
    }
    out.retain(|(_, c)| !has_column(c));
    Ok(out)
}

/// The version of the newest truncate among `changes`: the one a replica applies (an
/// older one is implied by it).
pub fn newest_truncate(changes: &[Change]) -> Option<Version> {
    changes
        .iter()
        .filter(|c| matches!(c.op, Op::Truncate))
        .map(|c| c.version)
        .max()
}

/// A hash of a change's key, the same for keys [`crate::rounds::rounds`] takes as one (the same
/// fields and values, doubles compared by their bits): which lane a key's changes take.
pub fn key_hash(key: &[(String, Value)]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    Key(key).hash(&mut hasher);
    hasher.finish()
}

/// FxHash (rustc's): a multiply and a rotate a word, several times faster than SipHash for
/// short keys. Keys come from the source database, not from an adversary.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.write_u64(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        for byte in chunks.remainder() {
            self.write_u8(*byte);
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A change's key, compared and hashed field by field without formatting it: names and
/// values equal, a double by its bits (so a key is always equal to itself, NaN too).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key<'a>(pub(crate) &'a [(String, Value)]);

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0)
                .all(|((a, x), (b, y))| a == b && same(x, y))
    }
}

impl Eq for Key<'_> {}

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.0.len());
        for (name, value) in self.0 {
            name.hash(state);
            hash_value(value, state);
        }
    }
}

/// Values equal, doubles by their bits.
fn same(x: &Value, y: &Value) -> bool {
    match (x, y) {
        (Value::Double(a), Value::Double(b)) => a.to_bits() == b.to_bits(),
        (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|((m, x), (n, y))| m == n && same(x, y))
        }
        (Value::Double(_) | Value::Float(_) | Value::Array(_) | Value::Object(_), _) => false,
        _ => x == y,
    }
}

fn hash_value<H: Hasher>(value: &Value, state: &mut H) {
    std::mem::discriminant(value).hash(state);
    match value {
        Value::Null => {}
        Value::Bool(b) => b.hash(state),
        Value::Long(n) => n.hash(state),
        Value::Double(x) => x.to_bits().hash(state),
        Value::Float(x) => x.to_bits().hash(state),
        Value::Text(t) | Value::Decimal(t) => t.hash(state),
        Value::Bytes(b) => b.hash(state),
        Value::Date(d) => d.hash(state),
        Value::Timestamp(t) | Value::LocalTimestamp(t) | Value::Time(t) => t.hash(state),
        Value::Array(items) => {
            state.write_usize(items.len());
            for item in items {
                hash_value(item, state);
            }
        }
        Value::Object(fields) => {
            state.write_usize(fields.len());
            for (name, item) in fields {
                name.hash(state);
                hash_value(item, state);
            }
        }
    }
}

/// The values of `columns`' fields in a change (`None` for one it lacks), in `columns`'
/// order, into `out`: the same values as [`field`] finds. Changes mostly carry their fields
/// in the order [`TableSettings::upsert_columns`] found them, so each is looked for first
/// where the one before it was found; an entry whose name an earlier column already took
/// (a key field repeated among the fields) is stepped over. Once the order differs, the
/// rest are searched for.
pub fn fields_of<'a>(
    change: &'a Change,
    columns: &[(String, String)],
    out: &mut Vec<Option<&'a crate::Value>>,
) {
    let fields = match &change.op {
        Op::Upsert(fields) => fields.as_slice(),
        Op::Delete | Op::Truncate => &[],
    };
    let mut all = change.key.iter().chain(fields).peekable();
    let mut in_order = true;
    out.clear();
    for (i, (f, _)) in columns.iter().enumerate() {
        while in_order {
            match all.peek() {
                Some((name, value)) if name == f => {
                    out.push(Some(value));
                    all.next();
                    break;
                }
                Some((name, _)) if columns[..i].iter().any(|(c, _)| c == name) => {
                    all.next();
                }
                _ => in_order = false,
            }
        }
        if !in_order {
            out.push(field(change, f));
        }
    }
}

/// The value of `field` in a change's key or fields, if it has one.
pub fn field<'a>(change: &'a Change, field: &str) -> Option<&'a crate::Value> {
    let fields = match &change.op {
        Op::Upsert(fields) => fields.as_slice(),
        Op::Delete | Op::Truncate => &[],
    };
    change
        .key
        .iter()
        .chain(fields)
        .find(|(f, _)| f == field)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::FieldType;

    fn settings() -> TableSettings {
        TableSettings {
            url: String::new(),
            table: "user_replica".into(),
            key: vec!["user_id".into()],
            columns: BTreeMap::new(),
            fields: None,
            consumer: String::new(),
            auto_create: true,
            auto_add_columns: true,
            tls_mode: None,
            tls_ca_file: None,
        }
    }

    fn field(name: &str, ty: FieldType) -> Field {
        Field {
            name: name.into(),
            ty,
            nullable: false,
        }
    }

    fn change(key: Vec<(&str, Value)>, lsn: u64, op: Op) -> Change {
        Change {
            key: key.into_iter().map(|(f, v)| (f.to_string(), v)).collect(),
            op,
            version: crate::sink::Version { lsn, seq: 0 },
        }
    }

    #[test]
    fn the_latest_change_of_each_key_decides_it() {
        let k = |n: i64, s: &str| vec![("id", Value::Long(n)), ("x", Value::Text(s.into()))];
        let changes = [
            change(k(1, "a"), 5, Op::Upsert(vec![])),
            change(k(1, "a"), 7, Op::Delete),
            change(k(1, "a"), 6, Op::Upsert(vec![])),
            change(k(1, "b"), 3, Op::Upsert(vec![])),
            change(k(2, "a"), 9, Op::Upsert(vec![])),
            change(k(2, "a"), 9, Op::Delete),
            change(vec![("id", Value::Double(f64::NAN))], 1, Op::Upsert(vec![])),
            change(vec![("id", Value::Double(f64::NAN))], 2, Op::Upsert(vec![])),
            // A timestamp and a local timestamp of the same instant are different keys.
            change(vec![("id", Value::Timestamp(1))], 1, Op::Upsert(vec![])),
            change(
                vec![("id", Value::LocalTimestamp(1))],
                1,
                Op::Upsert(vec![]),
            ),
        ];
        let rounds = crate::rounds::rounds(&changes, Version { lsn: 0, seq: 0 }, |_| true);
        assert_eq!(rounds.len(), 1);
        let (upserts, deletes) = (&rounds[0].upserts, &rounds[0].deletes);
        let mut upserts: Vec<u64> = upserts.iter().map(|c| c.version.lsn).collect();
        upserts.sort();
        assert_eq!(
            upserts,
            [1, 1, 2, 3, 9],
            "the first of equal versions stays"
        );
        let deletes: Vec<u64> = deletes.iter().map(|c| c.version.lsn).collect();
        assert_eq!(deletes, [7]);
        assert_eq!(key_hash(&changes[0].key), key_hash(&changes[2].key));
        assert_ne!(key_hash(&changes[0].key), key_hash(&changes[3].key));
    }

    #[test]
    fn fields_are_found_in_any_order() {
        let c = change(
            vec![("id", Value::Long(1))],
            1,
            Op::Upsert(vec![
                ("a".into(), Value::Long(2)),
                ("b".into(), Value::Long(3)),
            ]),
        );
        let columns = |names: &[&str]| -> Vec<(String, String)> {
            names
                .iter()
                .map(|n| (n.to_string(), n.to_string()))
                .collect()
        };
        let mut out = Vec::new();
        fields_of(&c, &columns(&["id", "a", "b"]), &mut out);
        assert_eq!(
            out,
            [
                Some(&Value::Long(1)),
                Some(&Value::Long(2)),
                Some(&Value::Long(3))
            ]
        );
        // The key repeated among the fields is stepped over.
        let mut repeated = c.clone();
        if let Op::Upsert(fields) = &mut repeated.op {
            fields.insert(0, ("id".into(), Value::Long(9)));
        }
        fields_of(&repeated, &columns(&["id", "a", "b"]), &mut out);
        assert_eq!(
            out,
            [
                Some(&Value::Long(1)),
                Some(&Value::Long(2)),
                Some(&Value::Long(3))
            ]
        );
        fields_of(&c, &columns(&["b", "missing", "id", "a"]), &mut out);
        assert_eq!(
            out,
            [
                Some(&Value::Long(3)),
                None,
                Some(&Value::Long(1)),
                Some(&Value::Long(2))
            ]
        );
    }

    #[test]
    fn the_union_of_the_contracts_makes_one_column_per_field() {
        let fields = [
            field("user_id", FieldType::Long),
            field("name", FieldType::Text),
            field("created_at", FieldType::Timestamp),
            field("name", FieldType::Text),
        ];
        let missing = missing_columns(&settings(), &fields, |c| c == "name").unwrap();
        let columns: Vec<&str> = missing.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(columns, ["user_id", "created_at"]);
    }

    #[test]
    fn a_field_whose_type_changed_is_refused_naming_both_types() {
        let fields = [
            field("user_id", FieldType::Long),
            field("age", FieldType::Int),
            field("age", FieldType::Text),
        ];
        let e = missing_columns(&settings(), &fields, |_| false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "event field age is int in one contract version or event type and text in another, so replica table user_replica cannot give it one column type; keep the field's type in every contract of the topic (publish a new type under a new field name), or leave the field out of fields"
        );
        let mut only_id = settings();
        only_id.fields = Some(vec!["user_id".into()]);
        assert!(
            missing_columns(&only_id, &fields, |_| false).is_ok(),
            "age is not kept"
        );
    }
}
