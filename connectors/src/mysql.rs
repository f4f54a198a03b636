//! MySQL and MariaDB read replicas: one table per event stream, version-guarded.
//!
//! The same semantics as the PostgreSQL replica, in MySQL's dialect. Every row carries its
//! source version in `_walcast_lsn` and `_walcast_seq`; a batch is one transaction:
//! - upserts are one multi-row `INSERT … ON DUPLICATE KEY UPDATE` whose every assignment
//!   keeps the stored value unless the incoming version is higher; then the rows of the
//!   batch's keys that a newer tombstone shadows (a late update of a deleted row) are
//!   removed again, before anyone can see them;
//! - deletes remove rows older than them and leave a tombstone version in
//!   `<table>_walcast_tombstones`;
//! - the consumer's positions are upserted into `walcast_offsets` in the same transaction;
//! - a truncate raises the replica's floor in `walcast_truncations` and deletes the rows and
//!   tombstones older than it, first in its transaction; every transaction reads the floor
//!   `LOCK IN SHARE MODE` and leaves out the changes at or below it (see the PostgreSQL
//!   replica for why that makes truncates and batches of other members serialise).
//!
//! `ON DUPLICATE KEY UPDATE` assigns left to right, each assignment seeing the ones before
//! it. So the data columns come first, all guarded by the stored version; then
//! `_walcast_seq`, guarded the same way; then `_walcast_lsn = GREATEST(stored, incoming)`,
//! which is right whichever way the guard went.
//!
//! Statements are sent as text with literals escaped by the driver (honouring the
//! session's `NO_BACKSLASH_ESCAPES`), so a batch costs no prepare round trips. The session
//! runs in UTC, so UTC timestamps are written as they are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, DriverError, Opts, OptsBuilder, SslOpts, TxOpts, Value as My};

use crate::column::{check_types, ColumnKind};
use crate::connector::{Connector, Endpoint, Issue};
use crate::sink::{Batch, Change, Position, Sink, Value, Version};
use crate::sink::{Field, FieldType};
use crate::table::{field, missing_columns, newest_truncate, TableOptions, TableSettings};
use crate::tls::{explain, refused_login, TlsMode};
use crate::Error;

/// Connects to `url` as a lane would (`target`), and returns the server's version string.
pub async fn probe(target: &Target) -> Result<String, Error> {
    let mut conn = target.open().await?;
    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
    conn.disconnect().await?;
    Ok(format!("MySQL/MariaDB {}", version.unwrap_or_default()))
}

/// Where a lane connects, and how: the url's options with the TLS settings applied. Its
/// `Debug` shows neither (the options hold the password).
#[derive(Clone)]
pub struct Target {
    opts: Opts,
    /// With `tls_mode = "prefer"`: the options without TLS, for a server that offers none.
    plain: Option<Opts>,
    has_ca_file: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.opts.ip_or_hostname())
            .field("port", &self.opts.tcp_port())
            .field("tls", &self.opts.ssl_opts().is_some())
            .finish()
    }
}

impl Target {
    /// `url` with `tls_mode` (default prefer, as the MySQL client's `--ssl-mode`, unless the
    /// url's own parameters ask for TLS) and `tls_ca_file`.
    pub fn new(
        url: &str,
        mode: Option<TlsMode>,
        ca_file: Option<PathBuf>,
    ) -> Result<Target, Error> {
        let opts = Opts::from_url(url).map_err(mysql_async::Error::from)?;
        let mode = match mode {
            Some(mode) => mode,
            // The url's `require_ssl` and its companions decide.
            None if opts.ssl_opts().is_some() => {
                return Ok(Target {
                    opts,
                    plain: None,
                    has_ca_file: false,
                })
            }
            None => TlsMode::Prefer,
        };
        let has_ca_file = ca_file.is_some();
        let ssl = match mode {
            TlsMode::Disable => None,
            TlsMode::Prefer | TlsMode::Require => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            TlsMode::VerifyFull => Some(match ca_file {
                Some(ca) => SslOpts::default()
                    .with_root_certs(vec![ca.into()])
                    .with_disable_built_in_roots(true),
                None => SslOpts::default(),
            }),
        };
        let plain = (mode == TlsMode::Prefer).then(|| opts.clone());
        // A loopback server's unix socket would bypass TLS: stay on TCP when TLS is on.
        let opts = match ssl {
            Some(ssl) => OptsBuilder::from_opts(opts)
                .ssl_opts(ssl)
                .prefer_socket(false)
                .into(),
            None => opts,
        };
        Ok(Target {
            opts,
            plain,
            has_ca_file,
        })
    }

    /// A connection in UTC; TLS and authentication failures are [`Error::Security`].
    async fn open(&self) -> Result<Conn, Error> {
        let conn = match Conn::new(self.opts.clone()).await {
            Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer))
                if self.plain.is_some() =>
            {
                Conn::new(self.plain.clone().expect("prefer")).await
            }
            other => other,
        };
        let mut conn = conn.map_err(|e| self.classify(e))?;
        conn.query_drop("SET time_zone = '+00:00'").await?;
        Ok(conn)
    }

    fn classify(&self, e: mysql_async::Error) -> Error {
        const STORE: &str = "MySQL/MariaDB";
        match &e {
            // Access denied (for the user, with or without a password, through a plugin).
            mysql_async::Error::Server(s)
                if s.state == "28000" || matches!(s.code, 1044 | 1045 | 1698) =>
            {
                refused_login(STORE, &s.message)
            }
            mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer) => {
                explain(STORE, "NoClientSslFlagFromServer", self.has_ca_file, true)
                    .expect("explained")
            }
            mysql_async::Error::Io(mysql_async::IoError::Tls(_)) => {
                explain(STORE, &walcast_text::describe(&e), self.has_ca_file, true)
                    .unwrap_or(Error::Mysql(e))
            }
            _ => Error::Mysql(e),
        }
    }
}

impl Connector for MysqlSink {
    type Config = TableOptions;
    const TYPE: &'static str = "mysql";
    const SCHEMES: &'static [&'static str] = &["mysql", "mariadb"];

    fn endpoint(config: &TableOptions) -> Endpoint<'_> {
        config.endpoint()
    }

    fn check(config: &mut TableOptions, base: &Path) -> Vec<Issue> {
        config.check(base)
    }

    /// One lane: InnoDB takes next-key locks for `INSERT … ON DUPLICATE KEY UPDATE`, so
    /// concurrent upserts of one table deadlock each other, even at READ COMMITTED.
    fn lanes(_requested: usize) -> usize {
        1
    }

    async fn connect(config: &TableOptions, url: &str, consumer: &str) -> Result<Self, Error> {
        MysqlSink::connect(config.settings(url, consumer)).await
    }

    async fn probe(config: &TableOptions, url: &str) -> Result<String, Error> {
        probe(&Target::new(
            url,
            config.tls_mode,
            config.tls_ca_file.clone(),
        )?)
        .await
    }
}

/// A replica table, connected and checked.
#[derive(Debug)]
pub struct MysqlSink {
    target: Target,
    /// `None` after an error; the next `apply` connects again.
    conn: Option<Conn>,
    settings: TableSettings,
    database: String,
    name: String,
    table: String,
    tombstones: String,
    /// Column name → (`DATA_TYPE`, `COLUMN_TYPE`).
    types: HashMap<String, (String, String)>,
    no_backslash_escapes: bool,
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// The guard every assignment of an upsert shares: the incoming version is higher.
const NEWER: &str = "(_walcast_lsn, _walcast_seq) < (VALUES(_walcast_lsn), VALUES(_walcast_seq))";

impl MysqlSink {
    /// Connects, checks the replica table and creates the tombstone table beside it and
    /// `walcast_offsets` when missing. With `auto_create`, a missing table is created by the
    /// first [`Sink::prepare`].
    pub async fn connect(settings: TableSettings) -> Result<Self, Error> {
        let target = Target::new(
            &settings.url,
            settings.tls_mode,
            settings.tls_ca_file.clone(),
        )?;
        let mut conn = target.open().await?;
        let (schema, name) = match settings.table.split_once('.') {
            Some((s, n)) => (s.to_string(), n.to_string()),
            None => {
                let db: Option<String> = conn.query_first("SELECT DATABASE()").await?;
                let db = db.ok_or_else(|| {
                    Error::Setup(format!(
                        "replica table {} names no database, and the url selects none; write database.table, or add /database to the url",
                        settings.table
                    ))
                })?;
                (db, settings.table.clone())
            }
        };
        let sql_mode: Option<String> = conn.query_first("SELECT @@SESSION.sql_mode").await?;
        let mut sink = MysqlSink {
            target,
            conn: Some(conn),
            table: format!("{}.{}", quote(&schema), quote(&name)),
            tombstones: format!(
                "{}.{}",
                quote(&schema),
                quote(&format!("{name}_walcast_tombstones"))
            ),
            database: schema,
            name,
            types: HashMap::new(),
            settings,
            no_backslash_escapes: sql_mode.is_some_and(|m| m.contains("NO_BACKSLASH_ESCAPES")),
        };
        sink.load_types().await?;
        if sink.types.is_empty() {
            if !sink.settings.auto_create {
                return Err(Error::Setup(format!(
                    "replica table {} does not exist; create it with the key columns as its primary key, the columns of the fields kept, and _walcast_lsn BIGINT NOT NULL, _walcast_seq INT NOT NULL (or set auto_create = true)",
                    sink.settings.table
                )));
            }
            sink.create_positions_and_floor().await?;
            return Ok(sink);
        }
        sink.check_and_create_bookkeeping().await?;
        Ok(sink)
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("connected")
    }

    async fn connected(&mut self) -> Result<&mut Conn, Error> {
        if self.conn.is_none() {
            self.conn = Some(self.target.open().await?);
        }
        Ok(self.conn())
    }

    /// The replica table's columns: name → (`DATA_TYPE`, `COLUMN_TYPE`); empty when it does
    /// not exist.
    async fn load_types(&mut self) -> Result<(), Error> {
        let (database, name) = (self.database.clone(), self.name.clone());
        let rows: Vec<(String, String, String)> = self
            .connected()
            .await?
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (database, name),
            )
            .await?;
        self.types = rows.into_iter().map(|(c, d, t)| (c, (d, t))).collect();
        Ok(())
    }

    /// `walcast_offsets` and `walcast_truncations`, and this replica's floor row (so that
    /// every transaction has a row to lock, even before the first truncate).
    async fn create_positions_and_floor(&mut self) -> Result<(), Error> {
        let database = quote(&self.database);
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS {database}.walcast_offsets (consumer VARCHAR(255) NOT NULL, topic VARCHAR(255) NOT NULL,
                   `partition` INT NOT NULL, next_offset BIGINT NOT NULL, PRIMARY KEY (consumer, topic, `partition`))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {database}.walcast_truncations (replica VARCHAR(255) NOT NULL PRIMARY KEY,
                   lsn BIGINT NOT NULL, seq INT NOT NULL)"
            ),
            format!(
                "INSERT IGNORE INTO {database}.walcast_truncations (replica, lsn, seq) VALUES ({}, 0, 0)",
                self.replica_literal()
            ),
        ];
        let conn = self.connected().await?;
        for sql in statements {
            conn.query_drop(sql).await?;
        }
        Ok(())
    }

    /// The replica's name in `walcast_truncations` (`database.table`), as a literal.
    fn replica_literal(&self) -> String {
        self.literal(Some(&Value::Text(format!(
            "{}.{}",
            self.database, self.name
        ))))
    }

    /// Raises the floor to `version` (locking its row even when it stays) and deletes the
    /// rows and tombstones older than it.
    fn truncation(&self, version: Version) -> Vec<String> {
        let mut out = vec![format!(
            "INSERT INTO {}.walcast_truncations (replica, lsn, seq) VALUES ({}, {}) ON DUPLICATE KEY UPDATE \
             seq = IF((lsn, seq) < (VALUES(lsn), VALUES(seq)), VALUES(seq), seq), lsn = GREATEST(lsn, VALUES(lsn))",
            quote(&self.database),
            self.replica_literal(),
            Self::version(version)
        )];
        if !self.types.is_empty() {
            for table in [&self.table, &self.tombstones] {
                out.push(format!(
                    "DELETE FROM {table} WHERE (_walcast_lsn, _walcast_seq) < ({})",
                    Self::version(version)
                ));
            }
        }
        out
    }

    async fn check_and_create_bookkeeping(&mut self) -> Result<(), Error> {
        for (column, ty) in [("_walcast_lsn", "bigint"), ("_walcast_seq", "int")] {
            if self.types.get(column).is_none_or(|(d, _)| d != ty) {
                return Err(Error::Setup(format!(
                    "replica table {} lacks the version column {column} {ty}; run ALTER TABLE {} ADD COLUMN {column} {} NOT NULL DEFAULT 0",
                    self.settings.table,
                    quote(&self.name),
                    ty.to_uppercase()
                )));
            }
        }
        let key_columns = self
            .settings
            .existing_key_columns(|c| self.types.contains_key(c))?;
        let key_defs: Vec<String> = key_columns
            .iter()
            .map(|c| format!("{} {} NOT NULL", quote(c), self.types[c].1))
            .collect();
        let key_list: Vec<String> = key_columns.iter().map(|c| quote(c)).collect();
        let tombstones = format!(
            "CREATE TABLE IF NOT EXISTS {} ({}, _walcast_lsn BIGINT NOT NULL, _walcast_seq INT NOT NULL, PRIMARY KEY ({}))",
            self.tombstones,
            key_defs.join(", "),
            key_list.join(", ")
        );
        self.connected().await?.query_drop(tombstones).await?;
        self.create_positions_and_floor().await
    }

    /// `value` as an SQL literal.
    fn literal(&self, value: Option<&Value>) -> String {
        literal(value, self.no_backslash_escapes)
    }

    fn version(v: Version) -> String {
        format!("{}, {}", v.lsn, v.seq)
    }

    /// `(k1, k2)` of a change, as literals.
    fn key_tuple(&self, change: &Change) -> String {
        let parts: Vec<String> = self
            .settings
            .key
            .iter()
            .map(|k| self.literal(field(change, k)))
            .collect();
        format!("({})", parts.join(", "))
    }

    /// The statements that apply `batch`, in order. Needs the tombstones of the batch's
    /// upserted keys, read in the same transaction.
    fn statements(
        &self,
        upserts: &[&Change],
        deletes: &[&Change],
        positions: &[Position],
    ) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        let key_columns = self.settings.key_columns();
        let keys: Vec<String> = key_columns.iter().map(|k| quote(k)).collect();
        if !upserts.is_empty() {
            let columns = self
                .settings
                .upsert_columns(upserts, |c| self.types.contains_key(c))?;
            let rows: Vec<String> = upserts
                .iter()
                .map(|c| {
                    let values: Vec<String> = columns
                        .iter()
                        .map(|(f, _)| self.literal(field(c, f)))
                        .collect();
                    format!("({}, {})", values.join(", "), Self::version(c.version))
                })
                .collect();
            let target: Vec<String> = columns.iter().map(|(_, c)| quote(c)).collect();
            let mut updates: Vec<String> = columns
                .iter()
                .filter(|(_, c)| !key_columns.contains(c))
                .map(|(_, c)| format!("{0} = IF({NEWER}, VALUES({0}), {0})", quote(c)))
                .collect();
            updates.push(format!(
                "_walcast_seq = IF({NEWER}, VALUES(_walcast_seq), _walcast_seq)"
            ));
            updates.push("_walcast_lsn = GREATEST(_walcast_lsn, VALUES(_walcast_lsn))".into());
            out.push(format!(
                "INSERT INTO {} ({}, _walcast_lsn, _walcast_seq) VALUES {} ON DUPLICATE KEY UPDATE {}",
                self.table,
                target.join(", "),
                rows.join(", "),
                updates.join(", ")
            ));
            let tuples: Vec<String> = upserts.iter().map(|c| self.key_tuple(c)).collect();
            let on: Vec<String> = keys.iter().map(|k| format!("t.{k} = d.{k}")).collect();
            let qualified: Vec<String> = keys.iter().map(|k| format!("t.{k}")).collect();
            out.push(format!(
                "DELETE t FROM {} AS t JOIN {} AS d ON {} WHERE ({}) IN ({}) \
                 AND (d._walcast_lsn, d._walcast_seq) >= (t._walcast_lsn, t._walcast_seq)",
                self.table,
                self.tombstones,
                on.join(" AND "),
                qualified.join(", "),
                tuples.join(", ")
            ));
        }
        if !deletes.is_empty() {
            let selects: Vec<String> = deletes
                .iter()
                .map(|c| {
                    let parts: Vec<String> = self
                        .settings
                        .key
                        .iter()
                        .enumerate()
                        .map(|(i, k)| format!("{} AS k{i}", self.literal(field(c, k))))
                        .collect();
                    format!(
                        "SELECT {}, {} AS l, {} AS s",
                        parts.join(", "),
                        c.version.lsn,
                        c.version.seq
                    )
                })
                .collect();
            let on: Vec<String> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| format!("t.{k} = v.k{i}"))
                .collect();
            out.push(format!(
                "DELETE t FROM {} AS t JOIN ({}) AS v ON {} WHERE (t._walcast_lsn, t._walcast_seq) < (v.l, v.s)",
                self.table,
                selects.join(" UNION ALL "),
                on.join(" AND ")
            ));
            let rows: Vec<String> = deletes
                .iter()
                .map(|c| {
                    let key = self.key_tuple(c);
                    format!("{}, {})", &key[..key.len() - 1], Self::version(c.version))
                })
                .collect();
            out.push(format!(
                "INSERT INTO {} ({}, _walcast_lsn, _walcast_seq) VALUES {} ON DUPLICATE KEY UPDATE \
                 _walcast_seq = IF({NEWER}, VALUES(_walcast_seq), _walcast_seq), _walcast_lsn = GREATEST(_walcast_lsn, VALUES(_walcast_lsn))",
                self.tombstones,
                keys.join(", "),
                rows.join(", ")
            ));
        }
        if !positions.is_empty() {
            let rows: Vec<String> = positions
                .iter()
                .map(|p| {
                    format!(
                        "({}, {}, {}, {})",
                        self.literal(Some(&Value::Text(self.settings.consumer.clone()))),
                        self.literal(Some(&Value::Text(p.topic.clone()))),
                        p.partition,
                        p.next_offset
                    )
                })
                .collect();
            out.push(format!(
                "INSERT INTO walcast_offsets (consumer, topic, `partition`, next_offset) VALUES {} \
                 ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset)",
                rows.join(", ")
            ));
        }
        Ok(out)
    }
}

/// What a column holds, from its `DATA_TYPE` and `COLUMN_TYPE` (`BOOLEAN` is `tinyint(1)`;
/// MariaDB's `JSON` is a checked `longtext`).
fn column_kind(data_type: &str, column_type: &str) -> ColumnKind {
    match data_type {
        "tinyint" if column_type.starts_with("tinyint(1)") => ColumnKind::Bool,
        "tinyint" => ColumnKind::Int(8),
        "smallint" => ColumnKind::Int(16),
        "mediumint" => ColumnKind::Int(24),
        "int" => ColumnKind::Int(32),
        "bigint" => ColumnKind::Int(64),
        // DECIMAL(65, 30) is MySQL's widest: walcast makes it for wider decimals, whose
        // values fit or not one by one.
        "decimal" => ColumnKind::Decimal(
            column_type
                .strip_prefix("decimal(")
                .and_then(|rest| rest.split(')').next())
                .and_then(|ps| ps.split_once(','))
                .and_then(|(p, s)| Some((p.trim().parse().ok()?, s.trim().parse().ok()?)))
                .filter(|&(p, s): &(usize, usize)| p < 65 && s < 30),
        ),
        "float" => ColumnKind::Float(32),
        "double" => ColumnKind::Float(64),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => ColumnKind::Text,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            ColumnKind::Bytes
        }
        "date" => ColumnKind::Date,
        "datetime" => ColumnKind::LocalTimestamp,
        "timestamp" => ColumnKind::Timestamp,
        "time" => ColumnKind::Time,
        "json" => ColumnKind::Json,
        "uuid" => ColumnKind::Uuid,
        _ => ColumnKind::Other,
    }
}

/// `value` as an SQL literal, escaped for a session with or without `NO_BACKSLASH_ESCAPES`.
fn literal(value: Option<&Value>, no_backslash_escapes: bool) -> String {
    let my = match value {
        None | Some(Value::Null) => My::NULL,
        Some(Value::Bool(b)) => My::Int(i64::from(*b)),
        Some(Value::Long(n)) => My::Int(*n),
        // Digits with an exponent, which MySQL reads as a DOUBLE literal (plain digits
        // beyond 65 would be a DECIMAL one, clamped). NaN and ±Infinity go as strings
        // (below), which a DOUBLE or FLOAT column refuses (SQLSTATE 22007): a poison
        // record, never a wrong value.
        Some(Value::Double(x)) if x.is_finite() => return crate::text::double(*x),
        Some(Value::Bytes(b)) => My::Bytes(b.clone()),
        Some(other) => My::Bytes(
            crate::text::value(other, "")
                .unwrap_or_default()
                .into_bytes(),
        ),
    };
    my.as_sql(no_backslash_escapes)
}

/// The column type a field is created with. Key columns need a bounded length. Arrays,
/// maps and records are JSON (in MariaDB, a `LONGTEXT` checked to hold JSON).
fn mysql_type(ty: &FieldType, key: bool) -> String {
    match ty {
        FieldType::Bool => "BOOLEAN".into(),
        FieldType::Int => "INT".into(),
        FieldType::Long => "BIGINT".into(),
        FieldType::Float => "FLOAT".into(),
        FieldType::Double => "DOUBLE".into(),
        FieldType::Text if key => "VARCHAR(255)".into(),
        FieldType::Text => "TEXT".into(),
        FieldType::Bytes if key => "VARBINARY(255)".into(),
        FieldType::Bytes => "LONGBLOB".into(),
        FieldType::Decimal { precision, scale } => {
            format!("DECIMAL({}, {})", (*precision).min(65), (*scale).min(30))
        }
        FieldType::Date => "DATE".into(),
        FieldType::Timestamp | FieldType::LocalTimestamp => "DATETIME(6)".into(),
        FieldType::Time => "TIME(6)".into(),
        FieldType::Uuid => "CHAR(36)".into(),
        FieldType::Array(_) | FieldType::Json => "JSON".into(),
    }
}

impl Sink for MysqlSink {
    async fn apply(&mut self, batch: &Batch) -> Result<(), Error> {
        if self.conn.is_none() {
            self.conn = Some(self.target.open().await?);
        }
        let mut conn = self.conn.take().expect("connected");
        let result = async {
            // READ COMMITTED takes no gap locks, so lanes writing different keys of one
            // table do not deadlock each other; every guard reads the row it locks.
            let mut options = TxOpts::default();
            options.with_isolation_level(mysql_async::IsolationLevel::ReadCommitted);
            let mut tx = conn.start_transaction(options).await?;
            if let Some(version) = newest_truncate(&batch.changes) {
                for sql in self.truncation(version) {
                    tx.query_drop(sql).await?;
                }
            }
            let floor: Option<(u64, u32)> = tx
                .query_first(format!(
                    "SELECT lsn, seq FROM {}.walcast_truncations WHERE replica = {} LOCK IN SHARE MODE",
                    quote(&self.database),
                    self.replica_literal()
                ))
                .await?;
            let (lsn, seq) = floor.unwrap_or_default();
            let (upserts, deletes) = self.settings.latest_per_key(
                &batch.changes,
                Version { lsn, seq },
                !self.types.is_empty(),
            )?;
            for sql in self.statements(&upserts, &deletes, &batch.positions)? {
                tx.query_drop(sql).await?;
            }
            tx.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        // A connection that failed mid-transaction is not reused.
        if result.is_ok() {
            self.conn = Some(conn);
        }
        result
    }

    async fn prepare(&mut self, fields: &[Field]) -> Result<(), Error> {
        let key_columns = self.settings.key_columns();
        check_types(
            &self.settings,
            fields,
            |c| {
                self.types
                    .get(c)
                    .map(|(data, column)| (column_kind(data, column), column.clone()))
            },
            |c, ty| {
                format!(
                    "ALTER TABLE {} MODIFY COLUMN {} {}",
                    self.table,
                    quote(c),
                    mysql_type(ty, key_columns.iter().any(|k| k == c))
                )
            },
        )?;
        let missing = missing_columns(&self.settings, fields, |c| self.types.contains_key(c))?;
        if missing.is_empty() {
            return Ok(());
        }
        let is_key = |c: &str| self.settings.key_columns().iter().any(|k| k == c);
        // Only key columns are NOT NULL: a row may be written by an event type that lacks
        // a field another one requires (an update of a key the replica does not hold yet).
        let definition = |(f, c): &(&Field, String)| {
            format!(
                "{} {}{}",
                quote(c),
                mysql_type(&f.ty, is_key(c)),
                if is_key(c) { " NOT NULL" } else { "" }
            )
        };
        let sql = if self.types.is_empty() {
            // auto_create: connect refused a missing table otherwise.
            self.settings.check_creatable(&missing)?;
            let columns: Vec<String> = missing.iter().map(definition).collect();
            let keys: Vec<String> = self
                .settings
                .key_columns()
                .iter()
                .map(|k| quote(k))
                .collect();
            format!(
                "CREATE TABLE IF NOT EXISTS {} ({}, _walcast_lsn BIGINT NOT NULL, _walcast_seq INT NOT NULL, PRIMARY KEY ({}))",
                self.table,
                columns.join(", "),
                keys.join(", ")
            )
        } else if self.settings.auto_add_columns {
            let added: Vec<String> = missing
                .iter()
                .map(|(f, c)| {
                    format!(
                        "ADD COLUMN IF NOT EXISTS {} {}",
                        quote(c),
                        mysql_type(&f.ty, false)
                    )
                })
                .collect();
            format!("ALTER TABLE {} {}", self.table, added.join(", "))
        } else {
            // upsert_columns names the fix if a change carries such a field.
            return Ok(());
        };
        let created = self.types.is_empty();
        self.connected().await?.query_drop(sql).await?;
        self.load_types().await?;
        if created {
            self.check_and_create_bookkeeping().await?;
        }
        Ok(())
    }

    async fn positions(&mut self) -> Result<Vec<Position>, Error> {
        if self.conn.is_none() {
            self.conn = Some(self.target.open().await?);
        }
        let mut conn = self.conn.take().expect("connected");
        let rows: Vec<(String, i32, i64)> = conn
            .exec(
                "SELECT topic, `partition`, next_offset FROM walcast_offsets WHERE consumer = ? ORDER BY topic, `partition`",
                (&self.settings.consumer,),
            )
            .await?;
        // Kept only when it worked: a failed connection is not reused.
        self.conn = Some(conn);
        Ok(rows
            .into_iter()
            .map(|(topic, partition, next_offset)| Position {
                topic,
                partition,
                next_offset,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::literal;
    use crate::sink::Value;

    #[test]
    fn doubles_are_double_literals_and_nan_a_string_the_column_refuses() {
        let lit = |x: f64| literal(Some(&Value::Double(x)), false);
        assert_eq!(lit(f64::MAX), "1.7976931348623157e+308");
        assert_eq!(lit(5e-324), "5e-324");
        assert_eq!(lit(f64::from(f32::MAX)), "3.4028234663852886e+38");
        assert_eq!(lit(0.1), "0.1");
        assert_eq!(lit(f64::NAN), "'NaN'");
        assert_eq!(lit(f64::NEG_INFINITY), "'-Infinity'");
    }
}
