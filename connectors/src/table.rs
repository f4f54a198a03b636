//! What the table-shaped replicas (PostgreSQL, MySQL/MariaDB) share: which fields a replica
//! keeps, the column each one is written to, and which change of a batch decides each key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::connector::{Endpoint, Issue};
use crate::sink::{Change, Field, Op, Version};
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

    /// The upserts and deletes above `floor` that decide each key's state ([`latest_per_key`]), for a
    /// table that exists or not: a missing one (auto_create, no contract version prepared
    /// yet) has nothing to delete, and cannot take upserts.
    pub fn latest_per_key<'c>(
        &self,
        changes: &'c [Change],
        floor: Version,
        table_exists: bool,
    ) -> Result<(Vec<&'c Change>, Vec<&'c Change>), Error> {
        let (upserts, deletes) = latest_per_key(changes, floor);
        if table_exists {
            return Ok((upserts, deletes));
        }
        if !upserts.is_empty() {
            return Err(Error::Setup(format!(
                "replica table {} was not created: no contract version was prepared",
                self.table
            )));
        }
        Ok((upserts, Vec::new()))
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
        for change in changes {
            let Op::Upsert(fields) = &change.op else {
                continue;
            };
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

/// Keeps, per key, only the change with the highest version: it decides the key's state.
/// Changes at or below `floor` (the replica's last truncate) are left out, and so are
/// truncates themselves ([`newest_truncate`] finds them). Returns the upserts and the
/// deletes.
pub fn latest_per_key(changes: &[Change], floor: Version) -> (Vec<&Change>, Vec<&Change>) {
    let mut latest: HashMap<String, &Change> = HashMap::new();
    for c in changes {
        if c.version <= floor || matches!(c.op, Op::Truncate) {
            continue;
        }
        let key = format!("{:?}", c.key);
        match latest.get(&key) {
            Some(seen) if seen.version >= c.version => {}
            _ => {
                latest.insert(key, c);
            }
        }
    }
    latest
        .into_values()
        .partition(|c| matches!(c.op, Op::Upsert(_)))
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
