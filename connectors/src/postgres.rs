//! PostgreSQL read replicas: one table per event stream, version-guarded.
//!
//! Every replica row carries the source version it was written at, in `_walcast_lsn` and
//! `_walcast_seq`. A batch is one transaction:
//! - upserts are one `INSERT … SELECT … FROM (SELECT unnest($1) AS c0, …) AS v ON CONFLICT
//!   (key) DO UPDATE … WHERE stored < incoming`, skipping keys whose tombstone is newer;
//! - deletes remove rows older than them and leave a tombstone version in
//!   `<table>_walcast_tombstones`, so a late update cannot resurrect the row;
//! - the consumer's positions are upserted into `walcast_offsets` in the same transaction,
//!   so the replica is exactly-once with respect to the topic: after a crash, the runner
//!   resumes from the positions stored with the rows;
//! - a truncate raises the replica's floor in `walcast_truncations` (one row per replica
//!   table) and deletes the rows and tombstones older than it, first in its transaction.
//!   The upsert takes only the rows above the floor, which it reads `FOR SHARE`, so a
//!   truncate applied by another lane or group member is either wholly before a batch
//!   (which then sees its floor) or wholly after it (and deletes what the batch wrote below
//!   it).
//!
//! Each statement takes one array parameter per column (a column of the batch), so its text
//! depends only on the batch's columns and on how each travels: it is prepared once per
//! connection, and PostgreSQL soon settles on one generic plan, whatever the batch size. A
//! column travels in binary (`bigint[]`, `timestamptz[]`, …) when the replica column's type
//! has an exact binary form for walcast's values, and otherwise as `text[]` cast to the
//! column's type (`v.c0::numeric`), so every type (numeric, enums, domains, arrays, `jsonb`,
//! user types) still goes through its input function (`postgres/arrays.rs`). `BEGIN`, the statements
//! and `COMMIT` leave in one write and their answers come back together: a batch costs one
//! round trip. A failing statement aborts the transaction, the ones after it fail too, and
//! `COMMIT` rolls back; the batch's error is the first one.
//!
//! Figures (`bench/sink.rs`, issue #14: batches of 1,000, against the same guarded upsert
//! run by the server from a staged table): 0.73–0.82× for inserts and 0.71–0.85× for
//! updates with one lane. Of a batch of inserts (~3.5 ms), the upsert's execution takes
//! ~2.45 ms where the staged statement takes ~2.25 ms (its tombstone check probes the index
//! once per row, where the staged rows, sorted, are merged), and building the arrays
//! ~0.3 ms. Before, with every value sent as text, `unnest` in `FROM` and four round trips a
//! batch: 0.43–0.57× and 0.60–0.71× (issue #14's figures and this machine's). Earlier still,
//! a multi-row `VALUES` statement planned per batch ran at 0.04× of binary COPY.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod arrays;
use arrays::Column;

use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Statement};

use crate::column::{check_types, ColumnKind};
use crate::connector::{Connector, Endpoint, Issue};
use crate::sink::{Batch, Change, Op, Position, Sink, Value, Version};
use crate::sink::{Field, FieldType};
use crate::table::{
    field, fields_of, missing_columns, newest_truncate, TableOptions, TableSettings,
};
use crate::tls::{explain, refused_login, TlsMode, TlsSettings};
use crate::Error;

/// Connects to `url` as a lane would (`tls`), and returns the server's version string.
pub async fn probe(url: &str, tls: &Tls) -> Result<String, Error> {
    let client = tls.open(url).await?;
    let row = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await?;
    let version: String = row.get(0);
    Ok(format!("PostgreSQL {version}"))
}

/// How a lane reaches the server: the TLS mode and the connector built once for it.
#[derive(Clone)]
pub struct Tls {
    mode: SslMode,
    connector: Option<native_tls::TlsConnector>,
    has_ca_file: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("mode", &self.mode).finish()
    }
}

impl Tls {
    /// `tls_mode` (or, when unset, the url's `sslmode`, else libpq's default, prefer) and
    /// `tls_ca_file`.
    pub fn new(url: &str, mode: Option<TlsMode>, ca_file: Option<PathBuf>) -> Result<Tls, Error> {
        let mode = mode.unwrap_or_else(|| match url.parse::<Config>().map(|c| c.get_ssl_mode()) {
            Ok(SslMode::Disable) => TlsMode::Disable,
            Ok(SslMode::Require) => TlsMode::Require,
            _ => TlsMode::Prefer,
        });
        let has_ca_file = ca_file.is_some();
        let connector = TlsSettings { mode, ca_file }.connector()?;
        let mode = match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
        };
        Ok(Tls {
            mode,
            connector,
            has_ca_file,
        })
    }

    /// A connection to `url`; TLS and authentication failures are [`Error::Security`].
    async fn open(&self, url: &str) -> Result<Client, Error> {
        let mut config: Config = url.parse()?;
        config.ssl_mode(self.mode);
        // The session in UTC, as the MySQL replica's: a timestamp or date without a zone
        // written to a timestamptz column is read as UTC, whatever the server's zone.
        let options = match config.get_options() {
            Some(theirs) => format!("{theirs} -c TimeZone=UTC"),
            None => "-c TimeZone=UTC".to_string(),
        };
        config.options(&options);
        let connected = match &self.connector {
            None => config.connect(NoTls).await.map(|(client, connection)| {
                // A broken connection surfaces as the next statement's error, and `is_closed`.
                tokio::spawn(connection);
                client
            }),
            Some(connector) => {
                let tls = postgres_native_tls::MakeTlsConnector::new(connector.clone());
                config.connect(tls).await.map(|(client, connection)| {
                    tokio::spawn(connection);
                    client
                })
            }
        };
        connected.map_err(|e| self.classify(e))
    }

    fn classify(&self, e: tokio_postgres::Error) -> Error {
        if let Some(db) = e.as_db_error() {
            // Invalid authorization specification, invalid password.
            if db.code().code().starts_with("28") {
                return refused_login("PostgreSQL", db.message());
            }
            return Error::Postgres(e);
        }
        let text = walcast_text::describe(&e);
        if text.contains("password missing") {
            return refused_login(
                "PostgreSQL",
                "the server asks for a password, and none was given",
            );
        }
        if text.contains("TLS") {
            if let Some(failure) = explain("PostgreSQL", &text, self.has_ca_file, true) {
                return failure;
            }
        }
        Error::Postgres(e)
    }
}

impl Connector for PostgresSink {
    type Config = TableOptions;
    const TYPE: &'static str = "postgres";
    const SCHEMES: &'static [&'static str] = &["postgres", "postgresql"];

    fn endpoint(config: &TableOptions) -> Endpoint<'_> {
        config.endpoint()
    }

    fn check(config: &mut TableOptions, base: &Path) -> Vec<Issue> {
        config.check(base)
    }

    async fn connect(config: &TableOptions, url: &str, consumer: &str) -> Result<Self, Error> {
        PostgresSink::connect(config.settings(url, consumer)).await
    }

    async fn probe(config: &TableOptions, url: &str) -> Result<String, Error> {
        probe(
            url,
            &Tls::new(url, config.tls_mode, config.tls_ca_file.clone())?,
        )
        .await
    }
}

/// A replica table, connected and checked.
#[derive(Debug)]
pub struct PostgresSink {
    /// `None` after the connection broke; the next `apply` connects again.
    client: Option<Client>,
    tls: Tls,
    settings: TableSettings,
    table: String,
    tombstones: String,
    /// The replica's name in `walcast_truncations`: `schema.table`, unquoted.
    replica: String,
    /// Column name → its type.
    types: HashMap<String, ColumnType>,
    /// Statements prepared on the current connection, by their text: a batch's statements
    /// depend only on its column set, so each is planned once.
    prepared: HashMap<String, Statement>,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `schema.table` quoted, the tombstone table's name beside it, and `schema.table` as the
/// replica's name in `walcast_truncations`.
fn names(table: &str) -> (String, String, String) {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    (
        format!("{}.{}", quote(schema), quote(name)),
        format!(
            "{}.{}",
            quote(schema),
            quote(&format!("{name}_walcast_tombstones"))
        ),
        format!("{schema}.{name}"),
    )
}

impl PostgresSink {
    /// Connects, checks the replica table and creates walcast's bookkeeping tables (the
    /// tombstones beside it, and `walcast_offsets`) when missing. With `auto_create`, a
    /// missing table is created by the first [`Sink::prepare`].
    pub async fn connect(settings: TableSettings) -> Result<Self, Error> {
        let tls = Tls::new(
            &settings.url,
            settings.tls_mode,
            settings.tls_ca_file.clone(),
        )?;
        let client = tls.open(&settings.url).await?;
        let (table, tombstones, replica) = names(&settings.table);
        let mut sink = PostgresSink {
            client: Some(client),
            tls,
            table,
            tombstones,
            replica,
            types: HashMap::new(),
            settings,
            prepared: HashMap::new(),
        };
        sink.load_types().await?;
        if sink.types.is_empty() {
            if !sink.settings.auto_create {
                return Err(Error::Setup(format!(
                    "replica table {} does not exist; create it with the key columns, the columns of the fields kept, and _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL (or set auto_create = true)",
                    sink.settings.table
                )));
            }
            sink.create_positions_and_floor().await?;
            return Ok(sink);
        }
        sink.check_and_create_bookkeeping().await?;
        Ok(sink)
    }

    /// `walcast_offsets` and `walcast_truncations`, and this replica's floor row (so that
    /// every transaction has a row to lock, even before the first truncate).
    async fn create_positions_and_floor(&mut self) -> Result<(), Error> {
        let replica = self.replica.clone();
        let client = self.client().await?;
        client.batch_execute(BOOKKEEPING_DDL).await?;
        client
            .execute(
                "INSERT INTO walcast_truncations (replica, lsn, seq) VALUES ($1, 0, 0) ON CONFLICT (replica) DO NOTHING",
                &[&replica],
            )
            .await?;
        Ok(())
    }

    /// The replica table's columns and their types; empty when it does not exist.
    async fn load_types(&mut self) -> Result<(), Error> {
        let table = self.table.clone();
        let rows = self.client().await?.query(CAST_TYPES, &[&table]).await?;
        self.types = rows
            .iter()
            .map(|r| {
                let (cast, declared, base): (String, String, Option<String>) =
                    (r.get(1), r.get(2), r.get(3));
                (
                    r.get(0),
                    ColumnType {
                        cast,
                        declared,
                        base,
                    },
                )
            })
            .collect();
        // Statements were planned for the old columns.
        self.prepared.clear();
        Ok(())
    }

    async fn check_and_create_bookkeeping(&mut self) -> Result<(), Error> {
        for (column, ty) in [("_walcast_lsn", "bigint"), ("_walcast_seq", "integer")] {
            if self.types.get(column).map(|t| t.declared.as_str()) != Some(ty) {
                return Err(Error::Setup(format!(
                    "replica table {} lacks the version column {column} {ty}; run ALTER TABLE {} ADD COLUMN {column} {ty} NOT NULL DEFAULT 0",
                    self.settings.table, self.table
                )));
            }
        }
        let key_columns = self
            .settings
            .existing_key_columns(|c| self.types.contains_key(c))?;
        let key_defs: Vec<String> = key_columns
            .iter()
            .map(|c| format!("{} {}", quote(c), self.types[c].declared))
            .collect();
        let key_list: Vec<String> = key_columns.iter().map(|c| quote(c)).collect();
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL, PRIMARY KEY ({}))",
            self.tombstones,
            key_defs.join(", "),
            key_list.join(", ")
        );
        self.client().await?.batch_execute(&sql).await?;
        self.create_positions_and_floor().await
    }

    /// PostgreSQL names the type of a value it refuses (`value too long for type character
    /// varying(3)`, `invalid input syntax for type integer`, `value for domain positive
    /// violates check constraint`), not its column: the batch's
    /// columns of that type (or whose items are of it) are named beside it.
    fn name_the_column(&self, e: tokio_postgres::Error, batch: &Batch) -> Error {
        // Data exceptions and integrity violations (a domain's check).
        let Some(db) = e
            .as_db_error()
            .filter(|db| matches!(&db.code().code()[..2], "22" | "23"))
        else {
            return Error::Postgres(e);
        };
        let message = db.message();
        let mut columns: Vec<String> = Vec::new();
        for change in &batch.changes {
            let fields = match &change.op {
                Op::Upsert(fields) => fields.as_slice(),
                _ => &[],
            };
            let names = change.key.iter().chain(fields).map(|(f, _)| f);
            for column in names.map(|f| self.settings.column_of(f)) {
                let Some(ty) = self.types.get(&column) else {
                    continue;
                };
                let named = [Some(&ty.declared), ty.base.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|t| names_type(message, t.trim_end_matches("[]")));
                if !columns.contains(&column) && named {
                    columns.push(column);
                }
            }
        }
        if columns.is_empty() {
            return Error::Postgres(e);
        }
        Error::Value {
            message: walcast_text::describe(&e),
            columns: format!(
                "column {} of replica table {}",
                columns.join(", "),
                self.settings.table
            ),
        }
    }

    fn cast(&self, column: &str) -> &str {
        self.types.get(column).map_or("text", |t| t.cast.as_str())
    }

    /// Drops the connection after a transient error, so the next call opens a new one
    /// rather than racing the old one's shutdown.
    fn forget_broken<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if result.as_ref().is_err_and(Error::is_transient) {
            self.client = None;
        }
        result
    }

    /// The connection, opened again if it broke.
    async fn client(&mut self) -> Result<&mut Client, Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            // Statements are prepared per connection.
            self.prepared.clear();
            self.client = Some(self.tls.open(&self.settings.url).await?);
        }
        Ok(self.client.as_mut().expect("connected"))
    }
}

const BOOKKEEPING_DDL: &str = "CREATE TABLE IF NOT EXISTS walcast_offsets (consumer text NOT NULL, topic text NOT NULL,
    partition integer NOT NULL, next_offset bigint NOT NULL, PRIMARY KEY (consumer, topic, partition));
    CREATE TABLE IF NOT EXISTS walcast_truncations (replica text PRIMARY KEY, lsn bigint NOT NULL, seq integer NOT NULL)";

/// Raises a replica's floor (locking its row even when it stays: a truncate and a batch
/// never interleave).
const RAISE_FLOOR: &str =
    "INSERT INTO walcast_truncations AS f (replica, lsn, seq) VALUES ($1, $2, $3)
    ON CONFLICT (replica) DO UPDATE SET lsn = EXCLUDED.lsn, seq = EXCLUDED.seq
    WHERE (f.lsn, f.seq) < (EXCLUDED.lsn, EXCLUDED.seq)";

/// A replica's floor row, made again should it be gone (connecting makes it), so that the
/// upsert always has a floor to read and lock.
const ENSURE_FLOOR: &str = "INSERT INTO walcast_truncations (replica, lsn, seq) VALUES ($1, 0, 0)
    ON CONFLICT (replica) DO NOTHING";

/// The column type a field is created with: arrays of scalars as arrays of the element's
/// type, maps and records (and arrays of them) as `jsonb`.
fn pg_type(ty: &FieldType) -> String {
    match ty {
        FieldType::Bool => "boolean".into(),
        FieldType::Int => "integer".into(),
        FieldType::Long => "bigint".into(),
        FieldType::Float => "real".into(),
        FieldType::Double => "double precision".into(),
        FieldType::Text => "text".into(),
        FieldType::Bytes => "bytea".into(),
        FieldType::Decimal { precision, scale } => format!("numeric({precision}, {scale})"),
        FieldType::Date => "date".into(),
        FieldType::Timestamp => "timestamptz".into(),
        FieldType::LocalTimestamp => "timestamp".into(),
        FieldType::Time => "time".into(),
        FieldType::Uuid => "uuid".into(),
        FieldType::Array(item) => format!("{}[]", pg_type(item)),
        FieldType::Json => "jsonb".into(),
    }
}

/// Whether a server message names type `ty` (`… for type character varying(3)`, `… for
/// domain positive …`), not merely a longer type spelled alike (`integer[]`, `bit(3)` for
/// `bit`, `character varying` for `character`).
fn names_type(message: &str, ty: &str) -> bool {
    ["type ", "domain "].iter().any(|word| {
        let spelled = format!("{word}{ty}");
        message.match_indices(&spelled).any(|(at, _)| {
            let rest = &message[at + spelled.len()..];
            match rest.chars().next() {
                None | Some(':' | ',' | ';' | '"' | ')') => true,
                Some(' ') => !["with", "without", "varying", "precision", "to", "zone"]
                    .iter()
                    .any(|w| rest[1..].starts_with(w)),
                Some(_) => false,
            }
        })
    })
}

/// A replica column's type, as `format_type` spells it.
#[derive(Debug, Clone)]
struct ColumnType {
    /// What a value is cast to before it is assigned to the column: the declared type,
    /// but for the types whose modifier cuts a value on an explicit cast (`character
    /// varying(3)`, `character(3)`, `bit(3)`, `bit varying(3)`, arrays of them and domains
    /// over them), the base type without its modifier. Assignment then refuses a value
    /// too long, where the cast would cut it silently. Modifiers that round (`numeric(10,
    /// 2)`, `timestamp(3)`) stay: the same rounding happens on assignment anyway, and key
    /// comparisons (deletes, tombstones) must round as the stored keys were.
    cast: String,
    /// The column's type as declared.
    declared: String,
    /// A domain's base type as declared (PostgreSQL's errors name it, not the domain).
    base: Option<String>,
}

/// Each column of a table (`$1`): name, cast type, declared type, a domain's base type
/// (through domains over domains).
/// The oids are `bpchar`, `varchar`, `bit`, `varbit` and their arrays.
const CAST_TYPES: &str = "WITH RECURSIVE c (attname, atttypid, atttypmod, cur, curmod) AS (
    SELECT a.attname::text, a.atttypid, a.atttypmod, a.atttypid, a.atttypmod
      FROM pg_attribute a
     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    -- Down a domain (over a domain, …) to its base type.
    SELECT c.attname, c.atttypid, c.atttypmod, t.typbasetype, t.typtypmod
      FROM c JOIN pg_type t ON t.oid = c.cur
     WHERE t.typtype = 'd')
SELECT c.attname,
       CASE WHEN c.cur IN (1042, 1043, 1560, 1562, 1014, 1015, 1561, 1563)
            THEN format_type(c.cur, -1)
            ELSE format_type(c.atttypid, c.atttypmod) END,
       format_type(c.atttypid, c.atttypmod),
       CASE WHEN c.cur <> c.atttypid THEN format_type(c.cur, c.curmod) END
  FROM c JOIN pg_type t ON t.oid = c.cur
 WHERE t.typtype <> 'd'";

/// What a column of this type (as `format_type` spells it) holds.
fn column_kind(declared: &str) -> ColumnKind {
    if let Some(item) = declared.strip_suffix("[]") {
        return ColumnKind::Array(Box::new(column_kind(item)));
    }
    let base = declared.split('(').next().unwrap_or(declared).trim();
    match base {
        "smallint" => ColumnKind::Int(16),
        "integer" => ColumnKind::Int(32),
        "bigint" => ColumnKind::Int(64),
        "numeric" => {
            let declared: Option<(usize, usize)> = declared
                .strip_prefix("numeric(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|ps| ps.split_once(','))
                .and_then(|(p, s)| Some((p.trim().parse().ok()?, s.trim().parse().ok()?)));
            ColumnKind::Decimal {
                whole: declared.map(|(p, s)| p.saturating_sub(s)),
                scale: declared.map(|(_, s)| s),
            }
        }
        "real" => ColumnKind::Float(32),
        "double precision" => ColumnKind::Float(64),
        "boolean" => ColumnKind::Bool,
        "text" | "character varying" | "character" | "citext" | "name" => ColumnKind::Text,
        "bytea" => ColumnKind::Bytes,
        "date" => ColumnKind::Date,
        "uuid" => ColumnKind::Uuid,
        "json" | "jsonb" => ColumnKind::Json,
        _ if declared.starts_with("timestamp") => {
            if declared.ends_with("with time zone") && !declared.ends_with("without time zone") {
                ColumnKind::Timestamp
            } else {
                ColumnKind::LocalTimestamp
            }
        }
        _ if declared.starts_with("time") => ColumnKind::Time,
        _ => ColumnKind::Other,
    }
}

impl PostgresSink {
    /// The batch's column `f` for the replica column `c`, as an array parameter.
    fn column<'b>(&self, changes: &[&'b crate::sink::Change], f: &str, c: &str) -> Column<'b> {
        let values: Vec<Option<&Value>> = changes.iter().map(|change| field(change, f)).collect();
        Column::encode(&values, self.cast(c))
    }

    /// The statements that apply one batch, each with its parameters: its truncate first,
    /// if any, then the changes above the replica's floor, round after round
    /// ([`crate::rounds`]): each upsert writes only the fields it carries.
    fn statements<'b>(&self, batch: &'b Batch) -> Result<Vec<(String, Vec<Param<'b>>)>, Error> {
        // The floor leaves out what it covers in SQL (the upsert reads it locked), so no
        // round trip waits for it.
        let rounds = self.settings.rounds(
            &batch.changes,
            Version { lsn: 0, seq: 0 },
            !self.types.is_empty(),
        )?;
        let mut out = Vec::new();
        if let Some(version) = newest_truncate(&batch.changes) {
            let (lsn, seq) = (version.lsn as i64, version.seq as i32);
            out.push((
                RAISE_FLOOR.to_string(),
                vec![
                    Param::One(self.replica.clone()),
                    Param::Lsn(lsn),
                    Param::Seq(seq),
                ],
            ));
            if !self.types.is_empty() {
                for table in [&self.table, &self.tombstones] {
                    out.push((
                        format!(
                            "DELETE FROM {table} WHERE (_walcast_lsn, _walcast_seq) < ($1, $2)"
                        ),
                        vec![Param::Lsn(lsn), Param::Seq(seq)],
                    ));
                }
            }
        } else if rounds.iter().any(|r| !r.upserts.is_empty()) {
            // The floor's row, should it be gone: the upsert's floor must be a row.
            out.push((
                ENSURE_FLOOR.to_string(),
                vec![Param::One(self.replica.clone())],
            ));
        }
        for round in &rounds {
            for group in self.settings.by_fields(&round.upserts) {
                out.push(self.upsert(&group)?);
            }
            if !round.deletes.is_empty() {
                out.extend(self.delete(&round.deletes));
            }
        }
        if !batch.positions.is_empty() {
            out.push((
                "INSERT INTO walcast_offsets (consumer, topic, partition, next_offset)
                 SELECT $1::text, v.t, v.p, v.o FROM unnest($2::text[], $3::integer[], $4::bigint[]) AS v(t, p, o)
                 ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"
                    .to_string(),
                vec![
                    Param::One(self.settings.consumer.clone()),
                    Param::Column(Column::Text(
                        batch.positions.iter().map(|p| Some(p.topic.as_str().into())).collect(),
                    )),
                    Param::Int(batch.positions.iter().map(|p| p.partition).collect()),
                    Param::Long(batch.positions.iter().map(|p| p.next_offset).collect()),
                ],
            ));
        }
        Ok(out)
    }

    /// The statement that upserts `upserts` (each of another key, all carrying the same
    /// kept fields): its columns are those fields, so none is written for a change that
    /// lacks it.
    fn upsert<'b>(&self, upserts: &[&'b Change]) -> Result<(String, Vec<Param<'b>>), Error> {
        let key_columns = self.settings.key_columns();
        let keys: Vec<String> = key_columns.iter().map(|k| quote(k)).collect();
        let columns = self
            .settings
            .upsert_columns(upserts, |c| self.types.contains_key(c))?;
        let names: Vec<String> = columns.iter().map(|(_, c)| c.clone()).collect();
        // Row by row (the fields in the order the changes mostly carry them), then
        // column by column.
        let width = columns.len();
        let mut cells: Vec<Option<&Value>> = Vec::with_capacity(upserts.len() * width);
        let mut row = Vec::with_capacity(width);
        for change in upserts {
            fields_of(change, &columns, &mut row);
            cells.extend(&row);
        }
        let arrays: Vec<Column<'b>> = columns
            .iter()
            .enumerate()
            .map(|(j, (_, c))| {
                let values: Vec<Option<&Value>> =
                    cells.iter().skip(j).step_by(width).copied().collect();
                Column::encode(&values, self.cast(c))
            })
            .collect();
        let mut tomb_match = Vec::with_capacity(key_columns.len());
        for k in &key_columns {
            // A key column no change carries: the sink's `key` names a field the events'
            // key does not have. Refused, never guessed.
            let Some(at) = names.iter().position(|c| c == k) else {
                return Err(Error::Setup(format!(
                    "replica table {}: key column {k} is written by no field of the events (the sink's key is {:?}); set key to the key contract's fields",
                    self.settings.table, self.settings.key
                )));
            };
            tomb_match.push(format!(
                "d.{} = {}",
                quote(k),
                arrays[at].typed(&format!("v.c{at}"), self.cast(k))
            ));
        }
        let target: Vec<String> = names.iter().map(|c| quote(c)).collect();
        let updates: Vec<String> = target
            .iter()
            .map(String::as_str)
            .chain(["_walcast_lsn", "_walcast_seq"])
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let sql = format!(
            "INSERT INTO {table} AS t ({target}, _walcast_lsn, _walcast_seq)
                 SELECT {selected}, v.l, v.s FROM {rows}
                 WHERE NOT EXISTS (SELECT 1 FROM {tomb} d WHERE {tomb_match} AND (d._walcast_lsn, d._walcast_seq) >= (v.l, v.s))
                 AND (v.l, v.s) > (SELECT f.lsn, f.seq FROM walcast_truncations f WHERE f.replica = ${floor} FOR SHARE)
                 ON CONFLICT ({keys}) DO UPDATE SET {updates}
                 WHERE (t._walcast_lsn, t._walcast_seq) < (EXCLUDED._walcast_lsn, EXCLUDED._walcast_seq)",
            table = self.table,
            target = target.join(", "),
            selected = self.typed(&arrays, &names, "c").join(", "),
            rows = rows(&arrays, "c"),
            tomb = self.tombstones,
            tomb_match = tomb_match.join(" AND "),
            keys = keys.join(", "),
            updates = updates.join(", "),
            floor = names.len() + 3,
        );
        let mut params: Vec<Param> = arrays.into_iter().map(Param::Column).collect();
        params.extend(versions(upserts));
        params.push(Param::One(self.replica.clone()));
        Ok((sql, params))
    }

    /// The statements that delete `deletes` (each of another key) and leave their
    /// tombstones.
    fn delete<'b>(&self, deletes: &[&'b Change]) -> [(String, Vec<Param<'b>>); 2] {
        let key_columns = self.settings.key_columns();
        let keys: Vec<String> = key_columns.iter().map(|k| quote(k)).collect();
        let arrays: Vec<Column<'b>> = self
            .settings
            .key
            .iter()
            .zip(&key_columns)
            .map(|(f, c)| self.column(deletes, f, c))
            .collect();
        let values = rows(&arrays, "k");
        let matches: Vec<String> = key_columns
            .iter()
            .zip(self.typed(&arrays, &key_columns, "k"))
            .map(|(k, v)| format!("t.{} = {v}", quote(k)))
            .collect();
        let selected = self.typed(&arrays, &key_columns, "k").join(", ");
        let mut params: Vec<Param> = arrays.into_iter().map(Param::Column).collect();
        params.extend(versions(deletes));
        [
            (
                format!(
                    "DELETE FROM {} AS t USING {values} WHERE {} AND (t._walcast_lsn, t._walcast_seq) < (v.l, v.s)",
                    self.table,
                    matches.join(" AND ")
                ),
                params.clone(),
            ),
            (
                format!(
                    "INSERT INTO {tomb} AS d ({keys}, _walcast_lsn, _walcast_seq) SELECT {selected}, v.l, v.s FROM {values}
                     ON CONFLICT ({keys}) DO UPDATE SET _walcast_lsn = EXCLUDED._walcast_lsn, _walcast_seq = EXCLUDED._walcast_seq
                     WHERE (d._walcast_lsn, d._walcast_seq) < (EXCLUDED._walcast_lsn, EXCLUDED._walcast_seq)",
                    tomb = self.tombstones,
                    keys = keys.join(", "),
                ),
                params,
            ),
        ]
    }

    /// `v.c0, v.c1::numeric, …`: each staged column as a value of its replica column's type.
    fn typed(&self, arrays: &[Column<'_>], columns: &[String], alias: &str) -> Vec<String> {
        arrays
            .iter()
            .zip(columns)
            .enumerate()
            .map(|(j, (a, c))| a.typed(&format!("v.{alias}{j}"), self.cast(c)))
            .collect()
    }
}

/// One parameter: a column of the batch, mostly.
#[derive(Debug, Clone)]
enum Param<'a> {
    One(String),
    /// A version's LSN.
    Lsn(i64),
    /// A version's position in its transaction.
    Seq(i32),
    Column(Column<'a>),
    Long(Vec<i64>),
    Int(Vec<i32>),
}

impl Param<'_> {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::One(v) => v,
            Param::Lsn(v) => v,
            Param::Seq(v) => v,
            Param::Column(c) => c.sql(),
            Param::Long(v) => v,
            Param::Int(v) => v,
        }
    }
}

/// `(SELECT unnest($1::bigint[]) AS c0, unnest($2::text[]) AS c1, …, unnest($n+1::bigint[])
/// AS l, unnest($n+2::integer[]) AS s) AS v`: the columns, each as its array type, then the
/// versions, row by row. Set-returning functions in a select list run in step, one row at a
/// time; `unnest($1, $2, …)` in `FROM` stores each array's elements first (7% more of the
/// upsert's execution for five columns).
fn rows(columns: &[Column<'_>], prefix: &str) -> String {
    let n = columns.len();
    let mut parts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("unnest(${}::{}) AS {prefix}{i}", i + 1, c.array_type()))
        .collect();
    parts.push(format!("unnest(${}::bigint[]) AS l", n + 1));
    parts.push(format!("unnest(${}::integer[]) AS s", n + 2));
    format!("(SELECT {}) AS v", parts.join(", "))
}

/// The changes' versions as two array parameters, `lsn` and `seq`.
fn versions<'a>(changes: &[&crate::sink::Change]) -> [Param<'a>; 2] {
    [
        Param::Long(changes.iter().map(|c| c.version.lsn as i64).collect()),
        Param::Int(changes.iter().map(|c| c.version.seq as i32).collect()),
    ]
}

/// One request of a batch's pipeline.
enum Step<'s> {
    /// `BEGIN` or `COMMIT`.
    Simple(&'static str),
    /// A prepared statement and its parameters.
    Execute(&'s Statement, Vec<&'s (dyn ToSql + Sync)>),
}

impl Sink for PostgresSink {
    async fn apply(&mut self, batch: &Batch) -> Result<(), Error> {
        if self.types.is_empty() && newest_truncate(&batch.changes).is_some() {
            // The table may exist by now (another member's auto_create): a truncate must
            // see it to delete its rows.
            let loaded = self.load_types().await;
            self.forget_broken(loaded)?;
        }
        let statements = self.statements(batch)?;
        if self.prepared.len() > 64 {
            self.prepared.clear();
        }
        self.client().await?;
        let client = self.client.as_mut().expect("connected");
        let prepared = &mut self.prepared;
        let result = async {
            for (sql, _) in &statements {
                if !prepared.contains_key(sql) {
                    prepared.insert(sql.clone(), client.prepare(sql).await?);
                }
            }
            // BEGIN, the statements and COMMIT, sent together. Should a statement fail, the
            // ones after it fail too (the transaction is aborted) and COMMIT rolls back; the
            // first error is the batch's. READ COMMITTED whatever the server's default: a
            // truncate's DELETEs must see what a batch it waited for (on the floor's row)
            // wrote.
            let mut steps = vec![Step::Simple("BEGIN ISOLATION LEVEL READ COMMITTED")];
            for (sql, params) in &statements {
                steps.push(Step::Execute(
                    &prepared[sql],
                    params.iter().map(Param::sql).collect(),
                ));
            }
            steps.push(Step::Simple("COMMIT"));
            let client = &*client;
            // A statement refused before it was sent (its parameters did not encode) leaves
            // the transaction open, not aborted: COMMIT would keep the statements around it.
            // Futures are first polled in order, so such a refusal is known before COMMIT
            // is sent, which then becomes ROLLBACK.
            let unsent = std::sync::atomic::AtomicBool::new(false);
            let unsent = &unsent;
            let runs = steps.iter().map(|step| async move {
                use std::sync::atomic::Ordering::Relaxed;
                let outcome = match step {
                    Step::Simple("COMMIT") if unsent.load(Relaxed) => {
                        client.batch_execute("ROLLBACK").await
                    }
                    Step::Simple(sql) => client.batch_execute(sql).await,
                    Step::Execute(statement, params) => {
                        client.execute(*statement, params).await.map(|_| ())
                    }
                };
                if outcome.is_err() {
                    unsent.store(true, Relaxed);
                }
                outcome
            });
            // Each statement's request is sent when its future is first polled, so the
            // batch's statements leave in one write, in order, and their answers come back
            // together: one round trip.
            crate::join_all(runs.collect())
                .await
                .into_iter()
                .collect::<Result<(), tokio_postgres::Error>>()
        }
        .await;
        let result = result.map_err(|e| self.name_the_column(e, batch));
        self.forget_broken(result)
    }

    async fn prepare(&mut self, fields: &[Field]) -> Result<(), Error> {
        check_types(
            &self.settings,
            fields,
            |c| {
                self.types
                    .get(c)
                    .map(|t| (column_kind(&t.declared), t.declared.clone()))
            },
            |c, ty| {
                format!(
                    "ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}::{}",
                    self.table,
                    quote(c),
                    pg_type(ty),
                    quote(c),
                    pg_type(ty)
                )
            },
        )?;
        let missing = missing_columns(&self.settings, fields, |c| self.types.contains_key(c))?;
        if missing.is_empty() {
            return Ok(());
        }
        // Only key columns are NOT NULL: a row may be written by an event type that lacks
        // a field another one requires (an update of a key the replica does not hold yet).
        let key_columns = self.settings.key_columns();
        let definition = |(f, c): &(&Field, String)| {
            format!(
                "{} {}{}",
                quote(c),
                pg_type(&f.ty),
                if key_columns.contains(c) {
                    " NOT NULL"
                } else {
                    ""
                }
            )
        };
        if self.types.is_empty() {
            // auto_create: connect refused a missing table otherwise.
            self.settings.check_creatable(&missing)?;
            let columns: Vec<String> = missing.iter().map(definition).collect();
            let keys: Vec<String> = self
                .settings
                .key_columns()
                .iter()
                .map(|k| quote(k))
                .collect();
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} ({}, _walcast_lsn bigint NOT NULL, _walcast_seq integer NOT NULL, PRIMARY KEY ({}))",
                self.table,
                columns.join(", "),
                keys.join(", ")
            );
            self.client().await?.batch_execute(&sql).await?;
            self.load_types().await?;
            return self.check_and_create_bookkeeping().await;
        }
        if !self.settings.auto_add_columns {
            // upsert_columns names the fix if a change carries such a field.
            return Ok(());
        }
        let added: Vec<String> = missing
            .iter()
            .map(|(f, c)| format!("ADD COLUMN IF NOT EXISTS {} {}", quote(c), pg_type(&f.ty)))
            .collect();
        let sql = format!("ALTER TABLE {} {}", self.table, added.join(", "));
        self.client().await?.batch_execute(&sql).await?;
        self.load_types().await
    }

    async fn positions(&mut self) -> Result<Vec<Position>, Error> {
        let consumer = self.settings.consumer.clone();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT topic, partition, next_offset FROM walcast_offsets WHERE consumer = $1 ORDER BY topic, partition",
                &[&consumer],
            )
            .await
            .map_err(Error::from);
        let rows = self.forget_broken(rows)?;
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

#[cfg(test)]
mod tests {
    use super::names_type;

    #[test]
    fn a_message_names_a_type_only_when_spelled_whole() {
        let too_long = "value too long for type character varying(3)";
        assert!(names_type(too_long, "character varying(3)"));
        assert!(!names_type(too_long, "character varying(30)"));
        assert!(!names_type(too_long, "character"));
        let syntax = "invalid input syntax for type integer: \"abc\"";
        assert!(names_type(syntax, "integer") && !names_type(syntax, "int"));
        assert!(!names_type(
            "malformed array literal for type integer[]",
            "integer"
        ));
        assert!(names_type(
            "value for domain positive violates check constraint \"positive_check\"",
            "positive"
        ));
        assert!(names_type(
            "bit string length 4 does not match type bit(3)",
            "bit(3)"
        ));
        assert!(!names_type(
            "bit string length 4 does not match type bit(3)",
            "bit"
        ));
        assert!(!names_type(
            "out of range for type timestamp with time zone",
            "timestamp without time zone"
        ));
        assert!(!names_type(
            "out of range for type timestamp with time zone",
            "timestamp"
        ));
    }
}
