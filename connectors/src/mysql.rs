//! MySQL and MariaDB read replicas: one table per event stream, version-guarded.
//!
//! The same semantics as the PostgreSQL replica, in MySQL's dialect. Every row carries its
//! source version in `_walcast_lsn` and `_walcast_seq`; a batch is one transaction:
//! - upserts are one multi-row `INSERT … ON DUPLICATE KEY UPDATE` (one per 65,535
//!   placeholders) whose every assignment keeps the stored value unless the incoming version
//!   is higher; then the rows of the
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
//! A batch is three round trips: `START TRANSACTION` (the statements are built meanwhile);
//! the upsert, a prepared statement; then one script with the rest and `COMMIT`. The server
//! stops a script at its first error, and a connection that failed is dropped, which rolls
//! the transaction back.
//!
//! The upsert's values travel in binary (`COM_STMT_EXECUTE`): nothing to escape, no literal
//! for the server to parse, and dates and times written to date and time columns as MySQL's
//! binary dates (the session runs in UTC). It is written for a number of rows from a short
//! ladder (powers of two up to 128, then multiples of 128, or the count of the batch before,
//! as full batches repeat it), the last row repeated to fill it: the same key at the same
//! version, which the guard leaves alone. So a few statements, each prepared once per
//! connection by the driver's statement cache, serve every batch size.
//!
//! The other statements are text, with literals escaped by the driver (honouring the
//! session's `NO_BACKSLASH_ESCAPES`). The tombstone check names the batch's keys: MariaDB
//! parses 1,000 literals faster (0.35 ms) than it runs 1,000 placeholders (0.65 ms), and a
//! one-column integer key's runs of consecutive values (a serial key's new rows) become
//! ranges, with no literal at all.
//!
//! Figures (`bench/sink.rs`, issue #14: batches of 1,000 against the same statements run
//! by the server from a staged table): 0.76–0.90× for inserts and 0.90–1.01× for updates.
//! The bench's keys are consecutive; with the tombstone check naming every key, as sparse
//! keys need, 0.66–0.73× and 0.84–0.87×. Of a batch of new rows (~2.9 ms with the key
//! list), the upsert takes ~1.9 ms, the script ~0.7 ms (0.35 ms of it the key list) and
//! building ~0.25 ms; the staged reference, whose check selects the batch's keys by range,
//! ~2 ms. Before, with every statement sent as text in its own round trip: 0.36–0.68× and
//! 0.50–0.72× (issue #14's figures and this machine's).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, DriverError, Opts, OptsBuilder, SslOpts, Value as My};

use crate::column::{check_types, ColumnKind};
use crate::connector::{Connector, Endpoint, Issue};
use crate::rounds::Round;
use crate::sink::{Batch, Change, Position, Sink, Value, Version};
use crate::sink::{Field, FieldType};
use crate::table::{
    field, fields_of, missing_columns, newest_truncate, TableOptions, TableSettings,
};
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
        // Strict, whatever the server's default: a value the column cannot hold is an
        // error (a poison record naming it), never clamped or cut with a warning.
        conn.query_drop(
            "SET time_zone = '+00:00', sql_mode = IF(@@sql_mode = '', 'STRICT_ALL_TABLES', \
             CONCAT(@@sql_mode, ',STRICT_ALL_TABLES'))",
        )
        .await?;
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
    /// Column name → `CHARACTER SET … COLLATE …`, for character columns.
    charsets: HashMap<String, String>,
    /// The collation text key columns are made with: binary and NO PAD, so two source keys
    /// that differ in case, accents or trailing spaces stay two rows.
    key_collation: String,
    /// Per key field, the type its literals are cast to when the key column rounds what it
    /// stores (`DECIMAL(10,2)`, `DATETIME(0)`, `TIME(3)`): deletes and the tombstone check
    /// then compare as the stored keys were rounded.
    key_casts: Vec<Option<String>>,
    no_backslash_escapes: bool,
    /// The upserts of the batch before.
    last_upserts: usize,
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// `value` as a parameter (or, through [`My::as_sql`], a literal): numbers as numbers, bytes
/// as they are, everything else in its text form, which the server converts to the column's
/// type as it converts a quoted literal.
fn my(value: Option<&Value>) -> My {
    match value {
        None | Some(Value::Null) => My::NULL,
        Some(Value::Bool(b)) => My::Int(i64::from(*b)),
        Some(Value::Long(n)) => My::Int(*n),
        Some(Value::Double(x)) if x.is_finite() => My::Double(*x),
        Some(Value::Float(x)) if x.is_finite() => My::Float(*x),
        // NaN and ±Infinity as strings (below), which a DOUBLE or FLOAT column refuses
        // (SQLSTATE 22007): a poison record, never a wrong value.
        Some(Value::Bytes(b)) => My::Bytes(b.clone()),
        Some(other) => My::Bytes(
            crate::text::value(other, "")
                .unwrap_or_default()
                .into_bytes(),
        ),
    }
}

/// `value` as a prepared statement's parameter for a column of `DATA_TYPE` `ty`: a date, time
/// or timestamp written to a column of that type goes as MySQL's binary date or time (the
/// session is in UTC), with no text for the server to parse, when it lies within the years 1
/// to 9999 (a time: within the day); anything else as [`my`], as a literal would.
fn param(value: Option<&Value>, ty: &str) -> My {
    const DAY: i64 = 86_400_000_000;
    let date = |days: i64, micros: i64| {
        let (y, m, d) = walcast_text::civil(days);
        let secs = micros / 1_000_000;
        (1..=9999).contains(&y).then_some(My::Date(
            y as u16,
            m as u8,
            d as u8,
            (secs / 3600) as u8,
            (secs % 3600 / 60) as u8,
            (secs % 60) as u8,
            (micros % 1_000_000) as u32,
        ))
    };
    let binary = match (value, ty) {
        (Some(Value::Timestamp(us) | Value::LocalTimestamp(us)), "datetime" | "timestamp") => {
            date(us.div_euclid(DAY), us.rem_euclid(DAY))
        }
        (Some(Value::Date(d)), "date") => date(i64::from(*d), 0),
        (Some(Value::Time(us)), "time") if (0..DAY).contains(us) => {
            let secs = us / 1_000_000;
            Some(My::Time(
                false,
                0,
                (secs / 3600) as u8,
                (secs % 3600 / 60) as u8,
                (secs % 60) as u8,
                (us % 1_000_000) as u32,
            ))
        }
        _ => None,
    };
    binary.unwrap_or_else(|| my(value))
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
        // MySQL 8 and MariaDB each have one of these (MariaDB's own first: newer ones also
        // know MySQL's names); utf8mb4_bin, all MySQL before 8.0.17 has, pads with spaces.
        let key_collation: Option<String> = conn
            .query_first(
                "SELECT COLLATION_NAME FROM information_schema.COLLATIONS \
                 WHERE COLLATION_NAME IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin') \
                 ORDER BY COLLATION_NAME = 'utf8mb4_nopad_bin' DESC LIMIT 1",
            )
            .await?;
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
            charsets: HashMap::new(),
            key_collation: key_collation.unwrap_or_else(|| "utf8mb4_bin".into()),
            key_casts: Vec::new(),
            settings,
            no_backslash_escapes: sql_mode.is_some_and(|m| m.contains("NO_BACKSLASH_ESCAPES")),
            last_upserts: 0,
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
        type Row = (String, String, String, Option<String>, Option<String>);
        let rows: Vec<Row> = self
            .connected()
            .await?
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, COLLATION_NAME \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (database, name),
            )
            .await?;
        self.charsets = rows
            .iter()
            .filter_map(|(c, _, _, set, collation)| {
                Some((
                    c.clone(),
                    format!(
                        "CHARACTER SET {} COLLATE {}",
                        set.as_ref()?,
                        collation.as_ref()?
                    ),
                ))
            })
            .collect();
        self.types = rows
            .into_iter()
            .map(|(c, d, t, _, _)| (c, (d, t)))
            .collect();
        self.key_casts = self
            .settings
            .key_columns()
            .iter()
            .map(|c| {
                let (data_type, column_type) = self.types.get(c)?;
                rounding_cast(data_type, column_type)
            })
            .collect();
        Ok(())
    }

    /// `walcast_offsets` and `walcast_truncations`, and this replica's floor row (so that
    /// every transaction has a row to lock, even before the first truncate).
    async fn create_positions_and_floor(&mut self) -> Result<(), Error> {
        let database = quote(&self.database);
        // Names compared byte for byte: Kafka's topics and MySQL's tables on Linux are
        // case-sensitive.
        let name = format!(
            "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {} NOT NULL",
            self.key_collation
        );
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS {database}.walcast_offsets (consumer {name}, topic {name},
                   `partition` INT NOT NULL, next_offset BIGINT NOT NULL, PRIMARY KEY (consumer, topic, `partition`))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {database}.walcast_truncations (replica {name} PRIMARY KEY,
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
        self.check_key_collations(&key_columns).await?;
        let key_defs: Vec<String> = key_columns
            .iter()
            .map(|c| {
                let charset = self.charsets.get(c).map(String::as_str).unwrap_or_default();
                format!("{} {} {charset} NOT NULL", quote(c), self.types[c].1)
            })
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

    /// Refuses character key columns, of the replica or of its tombstones, whose collation
    /// holds two source keys as one (`Ab` and `ab`, `é` and `e`, `a` and `a `): their rows
    /// would merge, and a delete of one would remove the other.
    async fn check_key_collations(&mut self, key_columns: &[String]) -> Result<(), Error> {
        let params = (
            self.database.clone(),
            self.name.clone(),
            format!("{}_walcast_tombstones", self.name),
        );
        let rows: Vec<(String, String, String, String)> = self
            .connected()
            .await?
            .exec(
                "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, COLLATION_NAME \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN (?, ?) AND COLLATION_NAME IS NOT NULL",
                params,
            )
            .await?;
        // ENUM and SET columns too: an incoming string finds its member by the collation.
        let Some((table, column, column_type, collation)) =
            rows.into_iter().find(|(_, c, _, l)| {
                key_columns.contains(c) && *l != self.key_collation && !keeps_keys_apart(l)
            })
        else {
            return Ok(());
        };
        Err(Error::Setup(format!(
            "replica table {}: key column {column} of {table} has collation {collation}, which holds keys that differ only in case, accents or trailing spaces as one, so different source rows would merge into one replica row; run ALTER TABLE {} MODIFY {} {column_type} CHARACTER SET utf8mb4 COLLATE {} NOT NULL (and on {}, if it exists), then restart",
            self.settings.table,
            quote(&table),
            quote(&column),
            self.key_collation,
            if table == self.name {
                quote(&format!("{}_walcast_tombstones", self.name))
            } else {
                quote(&self.name)
            },
        )))
    }

    /// `value` as an SQL literal.
    fn literal(&self, value: Option<&Value>) -> String {
        literal(value, self.no_backslash_escapes)
    }

    fn version(v: Version) -> String {
        format!("{}, {}", v.lsn, v.seq)
    }

    /// The literal of key field `i`'s value, cast as its column stores it when the column
    /// rounds ([`rounding_cast`]).
    fn key_literal(&self, i: usize, value: Option<&Value>) -> String {
        match self.key_casts.get(i).and_then(Option::as_ref) {
            Some(ty) => format!("CAST({} AS {ty})", self.literal(value)),
            None => self.literal(value),
        }
    }

    /// `(k1, k2)` of a change, as literals.
    fn key_tuple(&self, change: &Change) -> String {
        let mut out = String::from("(");
        self.push_key(&mut out, change);
        out.push(')');
        out
    }

    /// `k1, k2` of a change, as literals, appended to `out`.
    fn push_key(&self, out: &mut String, change: &Change) {
        for (i, k) in self.settings.key.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            match field(change, k) {
                Some(Value::Long(n)) => {
                    let _ = write!(out, "{n}");
                }
                value => out.push_str(&self.key_literal(i, value)),
            }
        }
    }

    /// `t.k IN (…)`: the rows of `changes`' keys, for the tombstone check. Sent as text:
    /// prepared with a placeholder per key, MariaDB runs it slower (0.65 ms for 1,000 keys,
    /// against 0.35 ms parsed from literals). A one-column key is a plain list, which parses
    /// faster than one of rows, and a one-column integer key's runs of consecutive values
    /// (a serial key's new rows) are ranges: `(t.k BETWEEN 1 AND 900 OR t.k IN (950, 990))`,
    /// the same rows, without a literal per key.
    fn keys_among(&self, changes: &[&Change], keys: &[String]) -> String {
        if let [k] = keys {
            let mut ints: Vec<i64> = changes
                .iter()
                .filter_map(|c| match field(c, &self.settings.key[0]) {
                    Some(Value::Long(n)) => Some(*n),
                    _ => None,
                })
                .collect();
            if ints.len() == changes.len() {
                ints.sort_unstable();
                ints.dedup();
                let (ranges, single) = runs(&ints);
                let mut parts: Vec<String> = ranges
                    .iter()
                    .map(|(lo, hi)| format!("t.{k} BETWEEN {lo} AND {hi}"))
                    .collect();
                if !single.is_empty() {
                    let list: Vec<String> = single.iter().map(i64::to_string).collect();
                    parts.push(format!("t.{k} IN ({})", list.join(", ")));
                }
                return format!("({})", parts.join(" OR "));
            }
            let mut list = String::with_capacity(changes.len() * 8);
            for (i, c) in changes.iter().enumerate() {
                if i > 0 {
                    list.push_str(", ");
                }
                self.push_key(&mut list, c);
            }
            return format!("t.{k} IN ({list})");
        }
        let tuples: Vec<String> = changes.iter().map(|c| self.key_tuple(c)).collect();
        let qualified: Vec<String> = keys.iter().map(|k| format!("t.{k}")).collect();
        format!("({}) IN ({})", qualified.join(", "), tuples.join(", "))
    }

    /// The prepared statements that upsert `upserts` (each of another key, all carrying the
    /// same kept fields), into `out`.
    fn upsert(
        &self,
        upserts: &[&Change],
        key_columns: &[String],
        repeated: bool,
        out: &mut Vec<Statement>,
    ) -> Result<(), Error> {
        let columns = self
            .settings
            .upsert_columns(upserts, |c| self.types.contains_key(c))?;
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
        let row = format!("({})", vec!["?"; columns.len() + 2].join(", "));
        let types: Vec<&str> = columns
            .iter()
            .map(|(_, c)| self.types[c].0.as_str())
            .collect();
        let mut values = Vec::with_capacity(columns.len());
        for (chunk, rows) in chunks(upserts, columns.len() + 2, repeated) {
            let mut params = Vec::with_capacity(rows * (columns.len() + 2));
            for c in padded(chunk, rows) {
                fields_of(c, &columns, &mut values);
                params.extend(values.iter().zip(&types).map(|(v, ty)| param(*v, ty)));
                params.push(My::UInt(c.version.lsn));
                params.push(My::UInt(u64::from(c.version.seq)));
            }
            out.push(Statement::Prepared(
                    format!(
                        "INSERT INTO {} ({}, _walcast_lsn, _walcast_seq) VALUES {} ON DUPLICATE KEY UPDATE {}",
                        self.table,
                        target.join(", "),
                        vec![row.as_str(); rows].join(", "),
                        updates.join(", ")
                    ),
                    params,
                ));
        }
        Ok(())
    }

    /// The statements that apply a batch's [`Round`]s, in order: each round's upserts
    /// (prepared, a statement per group of upserts carrying the same fields, so each writes
    /// only the fields it carries), its tombstone check, its deletes, then `positions`.
    /// Needs the tombstones of the batch's upserted keys, read in the same transaction.
    fn statements(
        &self,
        rounds: &[Round<'_>],
        positions: &[Position],
        repeated: bool,
    ) -> Result<Vec<Statement>, Error> {
        let mut out = Vec::new();
        let key_columns = self.settings.key_columns();
        let keys: Vec<String> = key_columns.iter().map(|k| quote(k)).collect();
        for round in rounds {
            let (upserts, deletes) = (&round.upserts[..], &round.deletes[..]);
            if !upserts.is_empty() {
                let groups = self.settings.by_fields(upserts);
                // Statements sized to the batch only in the steady stream's shape.
                let repeated = repeated && rounds.len() == 1 && groups.len() == 1;
                for group in &groups {
                    self.upsert(group, &key_columns, repeated, &mut out)?;
                }
                out.push(Statement::Text(format!(
                    "DELETE t FROM {} AS t JOIN {} AS d ON {} WHERE {} \
                     AND (d._walcast_lsn, d._walcast_seq) >= (t._walcast_lsn, t._walcast_seq)",
                    self.table,
                    self.tombstones,
                    keys.iter()
                        .map(|k| format!("t.{k} = d.{k}"))
                        .collect::<Vec<_>>()
                        .join(" AND "),
                    self.keys_among(upserts, &keys),
                )));
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
                            .map(|(i, k)| format!("{} AS k{i}", self.key_literal(i, field(c, k))))
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
                out.push(Statement::Text(format!(
                    "DELETE t FROM {} AS t JOIN ({}) AS v ON {} WHERE (t._walcast_lsn, t._walcast_seq) < (v.l, v.s)",
                    self.table,
                    selects.join(" UNION ALL "),
                    on.join(" AND ")
                )));
                let rows: Vec<String> = deletes
                    .iter()
                    .map(|c| {
                        let key = self.key_tuple(c);
                        format!("{}, {})", &key[..key.len() - 1], Self::version(c.version))
                    })
                    .collect();
                out.push(Statement::Text(format!(
                    "INSERT INTO {} ({}, _walcast_lsn, _walcast_seq) VALUES {} ON DUPLICATE KEY UPDATE \
                     _walcast_seq = IF({NEWER}, VALUES(_walcast_seq), _walcast_seq), _walcast_lsn = GREATEST(_walcast_lsn, VALUES(_walcast_lsn))",
                    self.tombstones,
                    keys.join(", "),
                    rows.join(", ")
                )));
            }
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
            out.push(Statement::Text(format!(
                "INSERT INTO walcast_offsets (consumer, topic, `partition`, next_offset) VALUES {} \
                 ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset)",
                rows.join(", ")
            )));
        }
        Ok(out)
    }
}

/// The type to cast a key literal to for a column of this `DATA_TYPE` and `COLUMN_TYPE`
/// that rounds or cuts what it stores: a decimal at its scale, a time or datetime of fewer
/// than 6 fractional digits. `None` when the column keeps the value as sent.
fn rounding_cast(data_type: &str, column_type: &str) -> Option<String> {
    let digits = || {
        column_type
            .split_once('(')
            .and_then(|(_, rest)| rest.split(')').next())
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    match data_type {
        "decimal" => {
            let declared = column_type.split(')').next()?;
            Some(format!("{})", declared.to_uppercase()))
        }
        "datetime" | "timestamp" if digits() < 6 => Some(format!("DATETIME({})", digits())),
        "time" if digits() < 6 => Some(format!("TIME({})", digits())),
        _ => None,
    }
}

/// The most decimal places a MySQL `DECIMAL` keeps.
const MYSQL_MAX_SCALE: usize = 30;

/// Whether a collation compares strings byte for byte without padding, so distinct keys
/// stay distinct: binary and NO PAD (MariaDB spells it `nopad`; every MySQL 8 `_0900_`
/// collation is NO PAD).
fn keeps_keys_apart(collation: &str) -> bool {
    collation.ends_with("_bin") && (collation.contains("_nopad_") || collation.contains("_0900_"))
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
        // MySQL keeps at most 65 digits: a column of 65 holds as many whole digits as the
        // store allows, and a value with more is refused one by one. Its 30 places are a
        // hard limit: a field with more cannot have a DECIMAL column (see `prepare`).
        "decimal" => {
            let (p, s): (usize, usize) = column_type
                .strip_prefix("decimal(")
                .and_then(|rest| rest.split(')').next())
                .and_then(|ps| ps.split_once(','))
                .and_then(|(p, s)| Some((p.trim().parse().ok()?, s.trim().parse().ok()?)))
                .unwrap_or((65, 30));
            ColumnKind::Decimal {
                whole: (p < 65).then(|| p.saturating_sub(s)),
                // Places beyond 30 are rounded away by MySQL: never unbounded.
                scale: Some(s),
            }
        }
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

/// `value` as an SQL literal, escaped for a session with or without `NO_BACKSLASH_ESCAPES`:
/// as [`my`], but a double in digits with an exponent, which MySQL reads as a DOUBLE
/// literal (plain digits beyond 65 would be a DECIMAL one, clamped).
fn literal(value: Option<&Value>, no_backslash_escapes: bool) -> String {
    match value {
        Some(Value::Double(x)) if x.is_finite() => crate::text::double(*x),
        // A float as the double it is: a FLOAT column's value compares with a literal as a
        // double, so `0.1` would match no stored 0.1f (keys in deletes, tombstone checks).
        Some(Value::Float(x)) if x.is_finite() => crate::text::double(f64::from(*x)),
        _ => my(value).as_sql(no_backslash_escapes),
    }
}

/// A statement of a batch.
#[derive(Debug)]
enum Statement {
    /// Sent with `COM_STMT_EXECUTE`: prepared once per connection (the driver's statement
    /// cache), its values in binary, nothing to escape or parse.
    Prepared(String, Vec<My>),
    /// Sent as text, with literals escaped.
    Text(String),
}

/// Sorted distinct integers as runs of at least three consecutive values (`(first, last)`)
/// and the values in no such run.
fn runs(sorted: &[i64]) -> (Vec<(i64, i64)>, Vec<i64>) {
    let (mut ranges, mut single) = (Vec::new(), Vec::new());
    let mut start = 0;
    for i in 1..=sorted.len() {
        if i < sorted.len() && sorted[i - 1].checked_add(1) == Some(sorted[i]) {
            continue;
        }
        match &sorted[start..i] {
            run if run.len() >= 3 => ranges.push((run[0], run[run.len() - 1])),
            few => single.extend_from_slice(few),
        }
        start = i;
    }
    (ranges, single)
}

/// The most placeholders a prepared statement may have.
const MAX_PLACEHOLDERS: usize = 65_535;

/// The rows a prepared statement for `n` rows is written for: `n` itself when the batch
/// before had as many (`repeated`: full batches, in a steady stream), else a power of two up
/// to 128, then a multiple of 128; never more than `max`. So few statements serve every
/// batch size, and each stays prepared. The rows beyond `n` repeat the last one.
fn statement_rows(n: usize, max: usize, repeated: bool) -> usize {
    let rows = if repeated {
        n
    } else if n <= 128 {
        n.next_power_of_two()
    } else {
        n.div_ceil(128) * 128
    };
    rows.min(max)
}

/// `changes` in chunks that fit a prepared statement of `per_row` placeholders a row, each
/// with the rows of its statement ([`statement_rows`]; `repeated`: the batch before had as
/// many rows).
fn chunks<'c, 'a>(
    changes: &'c [&'a Change],
    per_row: usize,
    repeated: bool,
) -> impl Iterator<Item = (&'c [&'a Change], usize)> {
    let max = MAX_PLACEHOLDERS / per_row;
    changes
        .chunks(max)
        .map(move |chunk| (chunk, statement_rows(chunk.len(), max, repeated)))
}

/// `chunk`, its last change repeated up to `rows`. A repeated row is a no-op: the same key
/// at the same version, which the guard (`stored < incoming`) leaves as it is.
fn padded<'c, 'a>(chunk: &'c [&'a Change], rows: usize) -> impl Iterator<Item = &'a Change> + 'c {
    let last = chunk[chunk.len() - 1];
    chunk
        .iter()
        .copied()
        .chain(std::iter::repeat_n(last, rows - chunk.len()))
}

/// Runs `begin` (which starts the transaction and ends with the floor's `SELECT`) and
/// returns the floor it read: `(0, 0)` when the replica has no row yet.
async fn begin_and_read_floor(conn: &mut Conn, begin: String) -> Result<Version, Error> {
    let mut result = conn.query_iter(begin).await?;
    let mut floor = Version { lsn: 0, seq: 0 };
    while !result.is_empty() {
        for row in result.try_collect::<(u64, u32)>().await? {
            let (lsn, seq) = row.map_err(|e| {
                Error::Setup(format!(
                    "walcast_truncations holds a row walcast cannot read ({e}); its columns are lsn BIGINT, seq INT"
                ))
            })?;
            floor = Version { lsn, seq };
        }
    }
    Ok(floor)
}

/// The column type a field is created with. Key columns need a bounded length. Arrays,
/// maps and records are JSON (in MariaDB, a `LONGTEXT` checked to hold JSON).
/// The column type walcast makes for a field; `key` gives a key column's collation.
/// Character key columns compare byte for byte ([`keeps_keys_apart`]). A decimal of more
/// places than MySQL keeps is TEXT, which keeps every digit: a DECIMAL would round the
/// rest away with a note only.
fn mysql_type(ty: &FieldType, key: Option<&str>) -> String {
    let collated = |ty: &str| match key {
        Some(collation) => format!("{ty} CHARACTER SET utf8mb4 COLLATE {collation}"),
        None => ty.to_string(),
    };
    let key = key.is_some();
    match ty {
        FieldType::Bool => "BOOLEAN".into(),
        FieldType::Int => "INT".into(),
        FieldType::Long => "BIGINT".into(),
        FieldType::Float => "FLOAT".into(),
        FieldType::Double => "DOUBLE".into(),
        FieldType::Decimal { scale, .. } if *scale > MYSQL_MAX_SCALE => {
            collated(if key { "VARCHAR(255)" } else { "TEXT" })
        }
        FieldType::Text if key => collated("VARCHAR(255)"),
        FieldType::Text => "TEXT".into(),
        FieldType::Bytes if key => "VARBINARY(255)".into(),
        FieldType::Bytes => "LONGBLOB".into(),
        FieldType::Decimal { precision, scale } => {
            format!(
                "DECIMAL({}, {})",
                (*precision).min(65),
                (*scale).min(MYSQL_MAX_SCALE)
            )
        }
        FieldType::Date => "DATE".into(),
        FieldType::Timestamp | FieldType::LocalTimestamp => "DATETIME(6)".into(),
        FieldType::Time => "TIME(6)".into(),
        FieldType::Uuid => collated("CHAR(36)"),
        FieldType::Array(_) | FieldType::Json => "JSON".into(),
    }
}

impl Sink for MysqlSink {
    async fn apply(&mut self, batch: &Batch) -> Result<(), Error> {
        if self.types.is_empty() && newest_truncate(&batch.changes).is_some() {
            // The table may exist by now (another member's auto_create): a truncate must
            // see it to delete its rows.
            if let Err(e) = self.load_types().await {
                self.conn = None;
                return Err(e);
            }
        }
        // Every change above version 0: the replica's floor is read in the transaction,
        // while these are turned into statements; it covers some only after a truncate.
        let rounds = self.settings.rounds(
            &batch.changes,
            Version { lsn: 0, seq: 0 },
            !self.types.is_empty(),
        )?;
        let truncate = newest_truncate(&batch.changes);
        if self.conn.is_none() {
            self.conn = Some(self.target.open().await?);
        }
        let mut conn = self.conn.take().expect("connected");
        let upserts: usize = rounds.iter().map(|r| r.upserts.len()).sum();
        let repeated = upserts == self.last_upserts;
        self.last_upserts = upserts;
        let result = async {
            // READ COMMITTED takes no gap locks, so lanes writing different keys of one
            // table do not deadlock each other; every guard reads the row it locks. The
            // transaction starts with the batch's truncate, if any, and reads the replica's
            // floor (share-locked: a truncate of another member waits, or is waited for)
            // while the statements are built (`biased`: the request is sent first).
            let mut begin = String::from(
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION;\n",
            );
            if let Some(version) = truncate {
                for sql in self.truncation(version) {
                    begin.push_str(&sql);
                    begin.push_str(";\n");
                }
            }
            begin.push_str(&format!(
                "SELECT lsn, seq FROM {}.walcast_truncations WHERE replica = {} LOCK IN SHARE MODE",
                quote(&self.database),
                self.replica_literal()
            ));
            let (floor, statements) = tokio::join!(
                biased;
                begin_and_read_floor(&mut conn, begin),
                async { self.statements(&rounds, &batch.positions, repeated) }
            );
            let floor = floor?;
            // Changes the floor covers (only ever after a truncate): sorted again without them.
            let statements = if batch.changes.iter().any(|c| c.version <= floor) {
                let rounds = self
                    .settings
                    .rounds(&batch.changes, floor, !self.types.is_empty())?;
                self.statements(&rounds, &batch.positions, repeated)?
            } else {
                statements?
            };
            // The statements in order, the text ones between two prepared ones (and those
            // after the last, with COMMIT) in one script: the server stops a script at its
            // first error, and a connection that failed is dropped, which rolls the
            // transaction back. A batch of one round sends its prepared statements, then one
            // script.
            let mut script = String::new();
            for statement in statements {
                match statement {
                    Statement::Prepared(sql, params) => {
                        if !script.is_empty() {
                            conn.query_drop(std::mem::take(&mut script)).await?;
                        }
                        conn.exec_drop(sql, params).await?
                    }
                    Statement::Text(sql) => {
                        script.push_str(&sql);
                        script.push_str(";\n");
                    }
                }
            }
            script.push_str("COMMIT");
            conn.query_drop(script).await?;
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
                    mysql_type(
                        ty,
                        key_columns
                            .iter()
                            .any(|k| k == c)
                            .then_some(self.key_collation.as_str()),
                    )
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
            let key = is_key(c);
            format!(
                "{} {}{}",
                quote(c),
                mysql_type(&f.ty, key.then_some(self.key_collation.as_str())),
                if key { " NOT NULL" } else { "" }
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
                        mysql_type(&f.ty, None)
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
    use super::*;

    #[test]
    fn key_literals_are_cast_as_a_rounding_column_stores_them() {
        assert_eq!(
            rounding_cast("decimal", "decimal(10,2) unsigned").as_deref(),
            Some("DECIMAL(10,2)")
        );
        assert_eq!(
            rounding_cast("datetime", "datetime").as_deref(),
            Some("DATETIME(0)")
        );
        assert_eq!(
            rounding_cast("timestamp", "timestamp(3)").as_deref(),
            Some("DATETIME(3)")
        );
        assert_eq!(rounding_cast("datetime", "datetime(6)"), None);
        assert_eq!(rounding_cast("time", "time(1)").as_deref(), Some("TIME(1)"));
        assert_eq!(rounding_cast("varchar", "varchar(20)"), None);
        assert_eq!(rounding_cast("bigint", "bigint(20)"), None);
    }

    #[test]
    fn only_binary_no_pad_collations_keep_keys_apart() {
        for apart in [
            "utf8mb4_nopad_bin",
            "utf8mb4_0900_bin",
            "utf8mb4_uca1400_nopad_bin",
        ] {
            assert!(keeps_keys_apart(apart), "{apart}");
        }
        for merges in [
            "utf8mb4_general_ci",
            "utf8mb4_bin",
            "latin1_swedish_ci",
            "utf8mb4_0900_ai_ci",
            "utf8mb4_nopad_general_ci",
        ] {
            assert!(!keeps_keys_apart(merges), "{merges}");
        }
    }

    #[test]
    fn a_decimal_at_mysqls_limits_keeps_as_many_digits_as_mysql_allows_there() {
        let kind = |t: &str| column_kind("decimal", t);
        let money = |precision, scale| FieldType::Decimal { precision, scale };
        assert!(kind("decimal(12,2)").holds(&money(10, 2)));
        assert!(!kind("decimal(12,2)").holds(&money(12, 0)), "digits lost");
        assert!(
            !kind("decimal(65,2)").holds(&money(10, 4)),
            "65 digits, but places lost"
        );
        assert!(kind("decimal(65,2) unsigned").holds(&money(80, 2)));
        assert!(kind("decimal(65,30)").holds(&money(70, 30)));
        assert!(
            !kind("decimal(65,30)").holds(&money(70, 40)),
            "MySQL would round the places beyond 30 away"
        );
    }

    #[test]
    fn runs_of_three_or_more_consecutive_keys_are_ranges() {
        assert_eq!(runs(&[]), (vec![], vec![]));
        assert_eq!(runs(&[1, 2, 3, 4]), (vec![(1, 4)], vec![]));
        assert_eq!(
            runs(&[-2, -1, 1, 2, 5, 6, 7, 9, i64::MAX - 1, i64::MAX]),
            (vec![(5, 7)], vec![-2, -1, 1, 2, 9, i64::MAX - 1, i64::MAX])
        );
        assert_eq!(
            runs(&[i64::MIN, i64::MIN + 1, i64::MIN + 2]),
            (vec![(i64::MIN, i64::MIN + 2)], vec![])
        );
    }

    #[test]
    fn a_statement_is_written_for_few_row_counts() {
        let rows = |n| statement_rows(n, 4369, false);
        assert_eq!([1, 2, 3, 5, 100, 128].map(rows), [1, 2, 4, 8, 128, 128]);
        assert_eq!(
            [129, 1000, 1024, 1025, 4369].map(rows),
            [256, 1024, 1024, 1152, 4369]
        );
        assert_eq!(
            statement_rows(1000, 4369, true),
            1000,
            "a repeated count is its own"
        );
        assert_eq!(statement_rows(300, 200, false), 200);
    }

    #[test]
    fn the_last_change_pads_a_statement() {
        let change = |id: i64| Change {
            key: vec![("id".into(), Value::Long(id))],
            op: crate::Op::Delete,
            version: Version { lsn: 1, seq: 0 },
        };
        let changes = [change(1), change(2), change(3)];
        let refs: Vec<&Change> = changes.iter().collect();
        let ids: Vec<Option<&Value>> = padded(&refs, 4).map(|c| field(c, "id")).collect();
        let long = |n| Some(Value::Long(n));
        assert_eq!(
            ids,
            [long(1), long(2), long(3), long(3)]
                .each_ref()
                .map(Option::as_ref)
        );
        let chunks: Vec<(usize, usize)> = chunks(&refs, 30_000, false)
            .map(|(chunk, rows)| (chunk.len(), rows))
            .collect();
        assert_eq!(
            chunks,
            [(2, 2), (1, 1)],
            "two rows of 30,000 placeholders at most"
        );
    }

    #[test]
    fn dates_and_times_go_binary_to_their_own_columns_only() {
        let at = Value::Timestamp(1_700_000_000_123_456);
        assert_eq!(
            param(Some(&at), "datetime"),
            My::Date(2023, 11, 14, 22, 13, 20, 123_456)
        );
        assert_eq!(
            param(Some(&Value::LocalTimestamp(-1)), "timestamp"),
            My::Date(1969, 12, 31, 23, 59, 59, 999_999)
        );
        assert_eq!(
            param(Some(&Value::Date(19_782)), "date"),
            My::Date(2024, 2, 29, 0, 0, 0, 0)
        );
        assert_eq!(
            param(Some(&Value::Time(3_600_000_001)), "time"),
            My::Time(false, 0, 1, 0, 0, 1)
        );
        // Into a text column, or beyond the years 1 to 9999: the text form, as a literal.
        assert_eq!(
            param(Some(&at), "varchar"),
            My::Bytes(b"2023-11-14T22:13:20.123456".to_vec())
        );
        let far = Value::Timestamp(253_402_300_800_000_000);
        assert_eq!(param(Some(&far), "datetime"), my(Some(&far)));
        assert_eq!(
            param(Some(&Value::Time(86_400_000_000)), "time"),
            my(Some(&Value::Time(86_400_000_000)))
        );
        assert_eq!(param(None, "datetime"), My::NULL);
    }

    #[test]
    fn doubles_are_double_literals_and_nan_a_string_the_column_refuses() {
        let lit = |x: f64| literal(Some(&Value::Double(x)), false);
        assert_eq!(lit(f64::MAX), "1.7976931348623157e+308");
        assert_eq!(lit(5e-324), "5e-324");
        assert_eq!(lit(f64::from(f32::MAX)), "3.4028234663852886e+38");
        assert_eq!(lit(0.1), "0.1");
        assert_eq!(lit(f64::NAN), "'NaN'");
        assert_eq!(lit(f64::NEG_INFINITY), "'-Infinity'");
        // Bound to a prepared statement: the same string, which the column refuses.
        assert_eq!(
            my(Some(&Value::Double(f64::NAN))),
            My::Bytes(b"NaN".to_vec())
        );
        assert_eq!(my(Some(&Value::Double(0.5))), My::Double(0.5));
        // A float literal is the double it is, which a FLOAT column's value equals.
        assert_eq!(
            literal(Some(&Value::Float(0.1)), false),
            "0.10000000149011612"
        );
        assert_eq!(my(Some(&Value::Float(0.1))), My::Float(0.1));
    }
}
