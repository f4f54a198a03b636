//! PostgreSQL read replicas: one table per event stream, version-guarded.
//!
//! Every replica row carries the source version it was written at, in `_walcast_lsn` and
//! `_walcast_seq`. A batch is one transaction:
//! - upserts are one multi-row `INSERT … ON CONFLICT (key) DO UPDATE … WHERE stored <
//!   incoming`, skipping keys whose tombstone is newer;
//! - deletes remove rows older than them and leave a tombstone version in
//!   `<table>_walcast_tombstones`, so a late update cannot resurrect the row;
//! - the consumer's positions are upserted into `walcast_offsets` in the same transaction,
//!   so the replica is exactly-once with respect to the topic: after a crash, the runner
//!   resumes from the positions stored with the rows.
//!
//! Values travel as text parameters cast to each column's own type (`$1::timestamptz`), so
//! every PostgreSQL type accepts them through its input function, in one code path.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use crate::sink::{Batch, Change, Op, Position, Sink, Value, Version};
use crate::Error;

/// Connects to `url` and returns the server's version string.
pub async fn probe(url: &str) -> Result<String, Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let task = tokio::spawn(connection);
    let row = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await?;
    let version: String = row.get(0);
    drop(client);
    let _ = task.await;
    Ok(format!("PostgreSQL {version}"))
}

/// What a PostgreSQL replica is.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    pub url: String,
    /// Target table, optionally schema-qualified.
    pub table: String,
    /// Event fields forming the replica's primary key.
    pub key: Vec<String>,
    /// Replica column = event field, where the names differ.
    pub columns: BTreeMap<String, String>,
    /// Event fields kept; `None` keeps every field that has a column.
    pub fields: Option<Vec<String>>,
    /// Names this replica's positions in `walcast_offsets` (the consumer group).
    pub consumer: String,
}

/// A replica table, connected and checked.
#[derive(Debug)]
pub struct PostgresSink {
    client: Client,
    settings: PostgresSettings,
    table: String,
    tombstones: String,
    /// Column name → its type as `format_type` spells it, for casts.
    types: HashMap<String, String>,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `schema.table` quoted, and the tombstone table's name beside it.
fn names(table: &str) -> (String, String) {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    (
        format!("{}.{}", quote(schema), quote(name)),
        format!(
            "{}.{}",
            quote(schema),
            quote(&format!("{name}_walcast_tombstones"))
        ),
    )
}

impl PostgresSink {
    /// Connects, checks the replica table and creates walcast's bookkeeping tables (the
    /// tombstones beside it, and `walcast_offsets`) when missing.
    pub async fn connect(settings: PostgresSettings) -> Result<Self, Error> {
        let (client, connection) = tokio_postgres::connect(&settings.url, NoTls).await?;
        // A broken connection surfaces as the next statement's error.
        tokio::spawn(connection);
        let (table, tombstones) = names(&settings.table);
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&table],
            )
            .await?;
        if rows.is_empty() {
            return Err(Error::Setup(format!(
                "replica table {} does not exist; create it with the key columns, the columns of the fields kept, and _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL (or set auto_create = true)",
                settings.table
            )));
        }
        let types: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for (column, ty) in [("_walcast_lsn", "bigint"), ("_walcast_seq", "integer")] {
            if types.get(column).map(String::as_str) != Some(ty) {
                return Err(Error::Setup(format!(
                    "replica table {} lacks the version column {column} {ty}; run ALTER TABLE {table} ADD COLUMN {column} {ty} NOT NULL DEFAULT 0",
                    settings.table
                )));
            }
        }
        let sink = PostgresSink {
            client,
            table,
            tombstones,
            types,
            settings,
        };
        let key_columns: Vec<String> = sink
            .settings
            .key
            .iter()
            .map(|f| sink.column_of(f))
            .collect();
        for c in &key_columns {
            if !sink.types.contains_key(c) {
                return Err(Error::Setup(format!(
                    "replica table {} has no column {c} for key field {c}; add it, or map it with columns",
                    sink.settings.table
                )));
            }
        }
        let key_defs: Vec<String> = key_columns
            .iter()
            .map(|c| format!("{} {}", quote(c), sink.types[c]))
            .collect();
        let key_list: Vec<String> = key_columns.iter().map(|c| quote(c)).collect();
        sink.client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} ({}, _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL, PRIMARY KEY ({}));
                 CREATE TABLE IF NOT EXISTS walcast_offsets (consumer text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
                   next_offset bigint NOT NULL, PRIMARY KEY (consumer, topic, partition));",
                sink.tombstones,
                key_defs.join(", "),
                key_list.join(", ")
            ))
            .await?;
        Ok(sink)
    }

    /// The replica column a field is written to.
    fn column_of(&self, field: &str) -> String {
        self.settings
            .columns
            .iter()
            .find(|(_, f)| *f == field)
            .map_or_else(|| field.to_string(), |(c, _)| c.clone())
    }

    fn kept(&self, field: &str) -> bool {
        self.settings.fields.as_ref().is_none_or(|fields| {
            fields.iter().any(|f| f == field) || self.settings.key.iter().any(|k| k == field)
        })
    }

    fn cast(&self, column: &str) -> &str {
        self.types.get(column).map_or("text", String::as_str)
    }

    /// The upserted rows' columns: key first, then the kept fields, in first-seen order.
    fn upsert_columns(&self, changes: &[&Change]) -> Result<Vec<(String, String)>, Error> {
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
                if !self.types.contains_key(&column) {
                    return Err(Error::Setup(format!(
                        "event field {field} has no column {column} in replica table {}; add the column, map the field with columns, or leave it out of fields",
                        self.settings.table
                    )));
                }
                out.push((field.clone(), column));
            }
        }
        Ok(out)
    }
}

/// Keeps, per key, only the change with the highest version: it decides the key's state.
fn latest_per_key(changes: &[Change]) -> Vec<&Change> {
    let mut latest: HashMap<Vec<Option<String>>, &Change> = HashMap::new();
    for c in changes {
        let key: Vec<Option<String>> = c.key.iter().map(|(_, v)| text(v)).collect();
        match latest.get(&key) {
            Some(seen) if seen.version >= c.version => {}
            _ => {
                latest.insert(key, c);
            }
        }
    }
    latest.into_values().collect()
}

/// A value in the text form PostgreSQL's input functions read; `None` is NULL.
fn text(value: &Value) -> Option<String> {
    let mut s = String::new();
    match value {
        Value::Null => return None,
        Value::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Value::Long(n) => s = n.to_string(),
        Value::Double(x) if x.is_nan() => s.push_str("NaN"),
        Value::Double(x) if x.is_infinite() => {
            s.push_str(if *x > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Double(x) => s = x.to_string(),
        Value::Text(t) | Value::Decimal(t) => s.push_str(t),
        Value::Bytes(b) => {
            s.push_str("\\x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
        }
        Value::Date(d) => crate::text::date(&mut s, i64::from(*d)),
        Value::Timestamp(us) => {
            crate::text::timestamp(&mut s, *us);
            s.push_str("+00");
        }
        Value::LocalTimestamp(us) => crate::text::timestamp(&mut s, *us),
        Value::Time(us) => crate::text::time(&mut s, *us),
    }
    Some(s)
}

fn version_params(v: Version) -> (String, String) {
    (v.lsn.to_string(), v.seq.to_string())
}

impl Sink for PostgresSink {
    async fn apply(&mut self, batch: &Batch) -> Result<(), Error> {
        let latest = latest_per_key(&batch.changes);
        let upserts: Vec<&Change> = latest
            .iter()
            .copied()
            .filter(|c| matches!(c.op, Op::Upsert(_)))
            .collect();
        let deletes: Vec<&Change> = latest
            .iter()
            .copied()
            .filter(|c| c.op == Op::Delete)
            .collect();
        let columns = self.upsert_columns(&upserts)?;
        let key_columns: Vec<String> = self
            .settings
            .key
            .iter()
            .map(|f| self.column_of(f))
            .collect();
        let mut statements: Vec<(String, Vec<Option<String>>)> = Vec::new();

        if !upserts.is_empty() {
            let width = columns.len() + 2;
            let mut params: Vec<Option<String>> = Vec::with_capacity(upserts.len() * width);
            let mut rows = Vec::with_capacity(upserts.len());
            for (i, change) in upserts.iter().enumerate() {
                let Op::Upsert(fields) = &change.op else {
                    unreachable!("filtered")
                };
                let placeholders: Vec<String> = (0..width)
                    .map(|j| format!("${}::text", i * width + j + 1))
                    .collect();
                rows.push(format!("({})", placeholders.join(", ")));
                for (field, _) in &columns {
                    let value = change
                        .key
                        .iter()
                        .chain(fields)
                        .find(|(f, _)| f == field)
                        .map(|(_, v)| v);
                    params.push(value.and_then(text));
                }
                let (lsn, seq) = version_params(change.version);
                params.extend([Some(lsn), Some(seq)]);
            }
            let aliases: Vec<String> = (0..columns.len()).map(|j| format!("c{j}")).collect();
            let target: Vec<String> = columns.iter().map(|(_, c)| quote(c)).collect();
            let selected: Vec<String> = columns
                .iter()
                .zip(&aliases)
                .map(|((_, c), a)| format!("v.{a}::{}", self.cast(c)))
                .collect();
            let tomb_match: Vec<String> = key_columns
                .iter()
                .map(|k| {
                    let a = &aliases[columns
                        .iter()
                        .position(|(_, c)| c == k)
                        .expect("key columns are upserted")];
                    format!("d.{} = v.{a}::{}", quote(k), self.cast(k))
                })
                .collect();
            let updates: Vec<String> = target
                .iter()
                .chain([&"_walcast_lsn".to_string(), &"_walcast_seq".to_string()])
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            let sql = format!(
                "INSERT INTO {table} AS t ({target}, _walcast_lsn, _walcast_seq)
                 SELECT {selected}, v.l::bigint, v.s::integer FROM (VALUES {rows}) AS v({aliases}, l, s)
                 WHERE NOT EXISTS (SELECT 1 FROM {tomb} d WHERE {tomb_match} AND (d._walcast_lsn, d._walcast_seq) >= (v.l::bigint, v.s::integer))
                 ON CONFLICT ({keys}) DO UPDATE SET {updates}
                 WHERE (t._walcast_lsn, t._walcast_seq) < (EXCLUDED._walcast_lsn, EXCLUDED._walcast_seq)",
                table = self.table,
                target = target.join(", "),
                selected = selected.join(", "),
                rows = rows.join(", "),
                aliases = aliases.join(", "),
                tomb = self.tombstones,
                tomb_match = tomb_match.join(" AND "),
                keys = key_columns.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", "),
                updates = updates.join(", "),
            );
            statements.push((sql, params));
        }

        if !deletes.is_empty() {
            let width = key_columns.len() + 2;
            let mut params = Vec::with_capacity(deletes.len() * width);
            let mut rows = Vec::with_capacity(deletes.len());
            for (i, change) in deletes.iter().enumerate() {
                let placeholders: Vec<String> = (0..width)
                    .map(|j| format!("${}::text", i * width + j + 1))
                    .collect();
                rows.push(format!("({})", placeholders.join(", ")));
                for field in &self.settings.key {
                    params.push(
                        change
                            .key
                            .iter()
                            .find(|(f, _)| f == field)
                            .and_then(|(_, v)| text(v)),
                    );
                }
                let (lsn, seq) = version_params(change.version);
                params.extend([Some(lsn), Some(seq)]);
            }
            let aliases: Vec<String> = (0..key_columns.len()).map(|j| format!("k{j}")).collect();
            let matches: Vec<String> = key_columns
                .iter()
                .zip(&aliases)
                .map(|(k, a)| format!("t.{} = v.{a}::{}", quote(k), self.cast(k)))
                .collect();
            let values = format!(
                "(VALUES {}) AS v({}, l, s)",
                rows.join(", "),
                aliases.join(", ")
            );
            statements.push((
                format!(
                    "DELETE FROM {} AS t USING {values} WHERE {} AND (t._walcast_lsn, t._walcast_seq) < (v.l::bigint, v.s::integer)",
                    self.table,
                    matches.join(" AND ")
                ),
                params.clone(),
            ));
            let keys: Vec<String> = key_columns.iter().map(|k| quote(k)).collect();
            let selected: Vec<String> = key_columns
                .iter()
                .zip(&aliases)
                .map(|(k, a)| format!("v.{a}::{}", self.cast(k)))
                .collect();
            statements.push((
                format!(
                    "INSERT INTO {tomb} AS d ({keys}, _walcast_lsn, _walcast_seq) SELECT {selected}, v.l::bigint, v.s::integer FROM {values}
                     ON CONFLICT ({keys}) DO UPDATE SET _walcast_lsn = EXCLUDED._walcast_lsn, _walcast_seq = EXCLUDED._walcast_seq
                     WHERE (d._walcast_lsn, d._walcast_seq) < (EXCLUDED._walcast_lsn, EXCLUDED._walcast_seq)",
                    tomb = self.tombstones,
                    keys = keys.join(", "),
                    selected = selected.join(", "),
                ),
                params,
            ));
        }

        for p in &batch.positions {
            statements.push((
                "INSERT INTO walcast_offsets (consumer, topic, partition, next_offset) VALUES ($1::text, $2::text, $3::text::integer, $4::text::bigint)
                 ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"
                    .to_string(),
                vec![
                    Some(self.settings.consumer.clone()),
                    Some(p.topic.clone()),
                    Some(p.partition.to_string()),
                    Some(p.next_offset.to_string()),
                ],
            ));
        }

        let tx = self.client.transaction().await?;
        for (sql, params) in &statements {
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            tx.execute(sql.as_str(), &refs).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn positions(&mut self) -> Result<Vec<Position>, Error> {
        let rows = self
            .client
            .query(
                "SELECT topic, partition, next_offset FROM walcast_offsets WHERE consumer = $1 ORDER BY topic, partition",
                &[&self.settings.consumer],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Position {
                topic: r.get(0),
                partition: r.get(1),
                next_offset: r.get(2),
            })
            .collect())
    }
}
