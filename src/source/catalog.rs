//! The source's ordinary SQL connection: setup checks, publication and slot management, and
//! type resolution. Every check that fails says which object and the exact SQL that fixes it.

use std::collections::HashMap;

use tokio_postgres::{Client, NoTls};

use super::change::{Column, ReplicaIdentity, Table};
use super::error::SourceError;
use super::pgoutput::RelationBody;
use super::protocol::quote_ident;
use super::tls::TlsSettings;
use super::value::{PgType, ScalarType};

/// Where the server's WAL ends, as SQL: `pg_current_wal_lsn()` on a primary; on a standby
/// (which decodes from 16 on, and where that function fails) the position it replayed.
pub const WAL_END: &str =
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END";

/// A table the source publishes, by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema (namespace) of the table.
    pub schema: String,
    /// Name of the table, unqualified.
    pub name: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl TableName {
    /// The table's name quoted for SQL.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// The state of a replication slot, from `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// Output plugin of the slot; walcast needs `pgoutput`. `None` when not reported.
    pub plugin: Option<String>,
    /// Database the slot belongs to.
    pub database: Option<String>,
    /// Process id of the backend streaming from the slot, `None` when the slot is free.
    pub active_pid: Option<i32>,
    /// `wal_status`: `reserved`, `extended`, `unreserved` or `lost` (WAL the slot needed was
    /// removed).
    pub wal_status: Option<String>,
    /// `confirmed_flush_lsn` as text (`X/Y`): the position the slot resumes from.
    pub confirmed_flush: Option<String>,
    /// `invalidation_reason` (PostgreSQL 17 and later): why PostgreSQL invalidated the
    /// slot (`wal_removed`, `rows_removed`, `wal_level_insufficient`, and from 18
    /// `idle_timeout`); `None` while it is valid, and on older servers.
    pub invalidation_reason: Option<String>,
}

/// Catalog connection of one source.
pub struct Catalog {
    client: Client,
    source: String,
    types: HashMap<u32, (String, PgType)>,
    /// The fractional digits of the database's currency, once asked.
    money_digits: Option<u8>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("source", &self.source)
            .finish()
    }
}

/// A catalog query's error, classified: its SQLSTATE decides whether it is transient.
pub(crate) fn catalog_error(e: tokio_postgres::Error) -> SourceError {
    match e.as_db_error() {
        Some(db) if matches!(db.code().code(), "28P01" | "28000") => {
            SourceError::Auth(db.message().to_string())
        }
        Some(db) => SourceError::Catalog {
            code: Some(db.code().code().to_string()),
            message: format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        },
        // A connection cut mid-handshake is the network's: retried, as any lost connection.
        None if e.to_string().contains("TLS") && super::tls::network_cause(&e).is_some() => {
            SourceError::catalog(walcast_text::describe(&e))
        }
        None if e.to_string().contains("TLS") => SourceError::setup(
            walcast_text::describe(&e),
            "check tls_ca_file and that the server certificate names this host, or use tls_mode = \"require\" to skip verification",
        ),
        None => SourceError::catalog(walcast_text::describe(&e)),
    }
}

impl Catalog {
    /// Connects the catalog connection with `url` (a libpq URL) over `tls`; `source` names the
    /// source in messages.
    pub async fn connect(url: &str, source: &str, tls: &TlsSettings) -> Result<Self, SourceError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            SourceError::setup(
                format!("invalid connection URL: {e}"),
                "fix the source's url",
            )
        })?;
        Self::connect_config(config, source, tls).await
    }

    /// [`Catalog::connect`] with the URL already parsed (one host of a list, for instance).
    pub async fn connect_config(
        mut config: tokio_postgres::Config,
        source: &str,
        tls: &TlsSettings,
    ) -> Result<Self, SourceError> {
        config.ssl_mode(tls.ssl_mode());
        let client = match tls.connector()? {
            None => {
                let (client, connection) = config.connect(NoTls).await.map_err(catalog_error)?;
                tokio::spawn(connection);
                client
            }
            Some(connector) => {
                let tls = postgres_native_tls::MakeTlsConnector::new(connector);
                let (client, connection) = config.connect(tls).await.map_err(catalog_error)?;
                tokio::spawn(connection);
                client
            }
        };
        Ok(Self {
            client,
            source: source.to_string(),
            types: HashMap::new(),
            money_digits: None,
        })
    }

    /// The ordinary (non-replication) connection, for queries outside this type.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The name of the source, for messages.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// wal_level and the REPLICATION attribute.
    pub async fn check_server(&self) -> Result<(), SourceError> {
        let row = self
            .client
            .query_one(
                "SELECT current_setting('wal_level'), current_user::text, r.rolreplication OR r.rolsuper \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .map_err(catalog_error)?;
        let (wal_level, user, replication): (String, String, bool) =
            (row.get(0), row.get(1), row.get(2));
        if wal_level != "logical" {
            return Err(SourceError::setup(
                format!(
                    "source {}: wal_level is {wal_level}, and logical decoding needs logical",
                    self.source
                ),
                "run ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL",
            ));
        }
        if !replication {
            return Err(SourceError::setup(
                format!(
                    "source {}: role {user} lacks the REPLICATION attribute",
                    self.source
                ),
                format!("run ALTER ROLE {} WITH REPLICATION", quote_ident(&user)),
            ));
        }
        Ok(())
    }

    /// Every table exists and identifies its updated and deleted rows.
    pub async fn check_tables(&self, tables: &[TableName]) -> Result<(), SourceError> {
        for t in tables {
            let row = self
                .client
                .query_opt(
                    "SELECT c.relreplident::text, EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                    &[&t.schema, &t.name],
                )
                .await
                .map_err(catalog_error)?;
            let Some(row) = row else {
                return Err(SourceError::setup(
                    format!("source {}: table {t} does not exist", self.source),
                    format!("create {t}, or remove it from the source's [[source.table]] list"),
                ));
            };
            let (identity, has_pk): (String, bool) = (row.get(0), row.get(1));
            match identity.as_str() {
                "n" => {
                    return Err(SourceError::setup(
                        format!("source {}: table {t} has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be identified", self.source),
                        format!("run ALTER TABLE {} REPLICA IDENTITY DEFAULT (it needs a primary key) or ALTER TABLE {} REPLICA IDENTITY FULL", t.sql(), t.sql()),
                    ))
                }
                "d" if !has_pk => {
                    return Err(SourceError::setup(
                        format!("source {}: table {t} has no primary key and REPLICA IDENTITY DEFAULT, so its updates and deletes cannot be identified", self.source),
                        format!("run ALTER TABLE {} ADD PRIMARY KEY (…), or ALTER TABLE {} REPLICA IDENTITY FULL", t.sql(), t.sql()),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Creates the publication for exactly `tables` when missing, with the options of
    /// [`Catalog::publication_options`]; verifies it when present, never altering it (see
    /// [`super::publication`]).
    pub async fn ensure_publication(
        &self,
        publication: &str,
        tables: &[TableName],
    ) -> Result<(), SourceError> {
        let exists = self
            .client
            .query_opt(
                "SELECT puballtables FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(catalog_error)?;
        let list = tables
            .iter()
            .map(TableName::sql)
            .collect::<Vec<_>>()
            .join(", ");
        if exists.is_none() {
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {list} {}",
                quote_ident(publication),
                self.publication_options().await?
            );
            return self.client.batch_execute(&sql).await.map_err(|e| {
                let why = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
                SourceError::setup(
                    format!("source {}: cannot create publication {publication}: {why}", self.source),
                    format!("run {sql} yourself, or give walcast's role CREATE on the database and membership in the role that owns the tables"),
                )
            });
        }
        // Before the list: without the root setting, the list names partitions.
        self.check_partition_root(publication, tables).await?;
        let rows = self
            .client
            .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&publication])
            .await
            .map_err(catalog_error)?;
        let mut published: Vec<TableName> = rows
            .iter()
            .map(|r| TableName {
                schema: r.get(0),
                name: r.get(1),
            })
            .collect();
        published.sort();
        let mut wanted = tables.to_vec();
        wanted.sort();
        if published != wanted {
            let names = |v: &[TableName]| {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(SourceError::setup(
                format!(
                    "source {}: publication {publication} publishes [{}], but the configuration lists [{}]",
                    self.source,
                    names(&published),
                    names(&wanted)
                ),
                if exists.is_some_and(|r| r.get::<_, bool>(0)) {
                    // Tables cannot be set on a FOR ALL TABLES publication.
                    format!("publication {publication} is FOR ALL TABLES; give the source a publication of its own (publication = \"…\" in its [[source]], which walcast creates), or run DROP PUBLICATION {0}; CREATE PUBLICATION {0} FOR TABLE {list} {1}", quote_ident(publication), self.publication_options().await?)
                } else {
                    format!("run ALTER PUBLICATION {} SET TABLE {list}", quote_ident(publication))
                },
            ));
        }
        Ok(())
    }

    /// The slot named `slot`, or `None` when it does not exist.
    pub async fn slot_state(&self, slot: &str) -> Result<Option<SlotState>, SourceError> {
        let row = self
            .client
            .query_opt(
                // to_jsonb: invalidation_reason exists from PostgreSQL 17 only.
                "SELECT plugin::text, database::text, active_pid, wal_status, confirmed_flush_lsn::text, \
                        to_jsonb(s) ->> 'invalidation_reason' \
                 FROM pg_replication_slots s WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(catalog_error)?;
        Ok(row.map(|r| SlotState {
            plugin: r.get(0),
            database: r.get(1),
            active_pid: r.get(2),
            wal_status: r.get(3),
            confirmed_flush: r.get(4),
            invalidation_reason: r.get(5),
        }))
    }

    /// How far `slot` is behind the server's WAL end, in bytes: from its confirmed position
    /// (the lag) and from its restart position (the WAL the server retains for it). `None`
    /// when there is no such slot; a position the slot does not have yet is 0.
    pub async fn slot_lag(&self, slot: &str) -> Result<Option<(i64, i64)>, SourceError> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT ({WAL_END} - confirmed_flush_lsn)::bigint, ({WAL_END} - restart_lsn)::bigint \
                     FROM pg_replication_slots WHERE slot_name = $1"
                ),
                &[&slot],
            )
            .await
            .map_err(catalog_error)?;
        Ok(row.map(|r| {
            let lag: Option<i64> = r.get(0);
            let retained: Option<i64> = r.get(1);
            (lag.unwrap_or(0), retained.unwrap_or(0))
        }))
    }

    /// Where the server's WAL ends now ([`WAL_END`]: on a standby, what it replayed).
    pub async fn current_wal_lsn(&self) -> Result<crate::lsn::Lsn, SourceError> {
        let row = self
            .client
            .query_one(&format!("SELECT {WAL_END}::text"), &[])
            .await
            .map_err(catalog_error)?;
        let text: String = row.get(0);
        text.parse()
            .map_err(|_| SourceError::protocol(format!("pg_current_wal_lsn() returned {text}")))
    }

    /// Drops `slot`, refusing while a process streams from it. Returns the position it had
    /// confirmed, or `None` when there was no such slot.
    pub async fn drop_slot(&self, slot: &str) -> Result<Option<String>, SourceError> {
        let Some(state) = self.slot_state(slot).await? else {
            return Ok(None);
        };
        if let Some(pid) = state.active_pid {
            return Err(SourceError::setup(
                format!("source {}: replication slot {slot} is active for PID {pid}; it was not dropped", self.source),
                "stop the walcast (or client) streaming from it first",
            ));
        }
        self.client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(catalog_error)?;
        Ok(Some(state.confirmed_flush.unwrap_or_else(|| "-".into())))
    }

    /// Refuses a slot walcast cannot use, naming why.
    pub async fn check_slot(&self, slot: &str, state: &SlotState) -> Result<(), SourceError> {
        let db: String = self
            .client
            .query_one("SELECT current_database()::text", &[])
            .await
            .map_err(catalog_error)?
            .get(0);
        let source = &self.source;
        if state.plugin.as_deref() != Some("pgoutput") {
            return Err(SourceError::setup(
                format!("source {source}: replication slot {slot} uses plugin {}, not pgoutput", state.plugin.as_deref().unwrap_or("(none: a physical slot)")),
                format!("give this source another slot name, or drop it: SELECT pg_drop_replication_slot('{slot}')"),
            ));
        }
        if state.database.as_deref() != Some(db.as_str()) {
            return Err(SourceError::setup(
                format!(
                    "source {source}: replication slot {slot} belongs to database {}, not {db}",
                    state.database.as_deref().unwrap_or("?")
                ),
                "give this source its own slot name",
            ));
        }
        if let Some(reason) = state
            .invalidation_reason
            .as_deref()
            .or((state.wal_status.as_deref() == Some("lost")).then_some("wal_removed"))
        {
            let recreate = format!("run walcast slot recreate --source {source} --snapshot and restart: a new slot reads every table in a snapshot (rows deleted in the gap stay in the replicas: see README, Slot safety)");
            let (why, hint) = match reason {
                "wal_removed" => (
                    "the WAL it needed has been removed".to_string(),
                    format!("{recreate}; raise max_slot_wal_keep_size so it does not happen again"),
                ),
                "idle_timeout" => (
                    "it was idle for longer than idle_replication_slot_timeout".to_string(),
                    format!("{recreate}; raise idle_replication_slot_timeout (or set it to 0) so a stopped walcast keeps its slot"),
                ),
                "rows_removed" => (
                    "rows its decoding needed were removed (a conflict on a standby)".to_string(),
                    format!("{recreate}; on a standby, set hot_standby_feedback = on and use a physical slot between primary and standby"),
                ),
                "wal_level_insufficient" => (
                    "the primary's wal_level is below logical".to_string(),
                    format!("run ALTER SYSTEM SET wal_level = logical on the primary and restart it; then {recreate}"),
                ),
                other => (
                    format!("PostgreSQL gives the reason {other}"),
                    recreate.clone(),
                ),
            };
            return Err(SourceError::setup(
                format!("source {source}: replication slot {slot} was invalidated: {why}"),
                hint,
            ));
        }
        if let Some(pid) = state.active_pid {
            return Err(SourceError::SlotActive {
                source_name: source.to_string(),
                slot: slot.to_string(),
                pid,
            });
        }
        Ok(())
    }

    /// Resolves a Relation message into a [`Table`], looking up non-built-in types.
    pub async fn table(&mut self, body: RelationBody) -> Result<Table, SourceError> {
        let mut columns = Vec::with_capacity(body.columns.len());
        for c in body.columns {
            let (type_name, ty) = self.resolve_type(c.type_oid).await?;
            columns.push(Column {
                name: c.name,
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                type_name,
                ty,
                key: c.key,
            });
        }
        Ok(Table {
            oid: body.oid,
            schema: body.namespace,
            name: body.name,
            replica_identity: ReplicaIdentity::from_byte(body.replica_identity).ok_or_else(
                || {
                    SourceError::protocol(format!(
                        "unknown replica identity {:?}",
                        body.replica_identity as char
                    ))
                },
            )?,
            columns,
        })
    }

    async fn resolve_type(&mut self, oid: u32) -> Result<(String, PgType), SourceError> {
        if let Some(t) = self.types.get(&oid) {
            return Ok(t.clone());
        }
        let mut chain = oid;
        let mut array = false;
        let mut name = None;
        let resolved = loop {
            if let Some(t) = PgType::builtin(chain) {
                break match (t, array) {
                    (PgType::Scalar(s), true) => PgType::Array(s),
                    (t, false) => t,
                    (_, true) => {
                        PgType::Unsupported(format!("{}[]", name.clone().unwrap_or_default()))
                    }
                };
            }
            let row = self
                .client
                .query_opt(
                    "SELECT format_type(t.oid, NULL), t.typtype::text, t.typbasetype, t.typelem, t.typcategory::text \
                     FROM pg_type t WHERE t.oid = $1",
                    &[&chain],
                )
                .await
                .map_err(catalog_error)?;
            let Some(row) = row else {
                break PgType::Unsupported(format!("oid {chain}"));
            };
            let (type_name, typtype, base, elem, category): (String, String, u32, u32, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            name.get_or_insert(type_name.clone());
            match (typtype.as_str(), category.as_str()) {
                ("e", _) => {
                    break if array {
                        PgType::Array(ScalarType::Enum)
                    } else {
                        PgType::Scalar(ScalarType::Enum)
                    }
                }
                ("d", _) => chain = base,
                ("b", "A") if elem != 0 && !array => {
                    array = true;
                    chain = elem;
                }
                _ => break PgType::Unsupported(type_name),
            }
        };
        let name = match name {
            Some(name) => name,
            None => self
                .client
                .query_opt("SELECT format_type($1, NULL)", &[&oid])
                .await
                .map_err(catalog_error)?
                .map(|r| r.get(0))
                .unwrap_or_else(|| format!("oid {oid}")),
        };
        let resolved = match resolved {
            PgType::Scalar(ScalarType::Money(_)) => {
                PgType::Scalar(ScalarType::Money(self.money_digits().await?))
            }
            PgType::Array(ScalarType::Money(_)) => {
                PgType::Array(ScalarType::Money(self.money_digits().await?))
            }
            other => other,
        };
        self.types.insert(oid, (name.clone(), resolved.clone()));
        Ok((name, resolved))
    }

    /// How many fractional digits `money` has in this database: its `lc_monetary`
    /// currency's (2 for dollars, 0 for yen). A money value is a count of the currency's
    /// smallest unit, so a fixed two would read yen 100 times too small. The server says:
    /// `1::money` as numeric has exactly that scale.
    pub async fn money_digits(&mut self) -> Result<u8, SourceError> {
        if let Some(digits) = self.money_digits {
            return Ok(digits);
        }
        let scale: i32 = self
            .client
            .query_one("SELECT scale(1::money::numeric)", &[])
            .await
            .map_err(catalog_error)?
            .get(0);
        let digits = u8::try_from(scale.clamp(0, 10)).unwrap_or(2);
        self.money_digits = Some(digits);
        Ok(digits)
    }

    /// The table as the catalog describes it now, with the names of its NOT NULL columns:
    /// what a Relation message would say, available before anything streams. Key flags
    /// follow pgoutput: the replica identity's columns (every column under FULL).
    pub async fn describe(
        &mut self,
        t: &TableName,
    ) -> Result<(Table, std::collections::HashSet<String>), SourceError> {
        let rows = self
            .client
            .query(
                "SELECT c.oid, c.relreplident::text, a.attname::text, a.atttypid, a.atttypmod, a.attnotnull, \
                        COALESCE(a.attnum = ANY (SELECT unnest(i.indkey) FROM pg_index i \
                          WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'd' THEN i.indisprimary \
                                                          WHEN 'i' THEN i.indisreplident ELSE false END), false) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 WHERE n.nspname = $1 AND c.relname = $2 ORDER BY a.attnum",
                &[&t.schema, &t.name],
            )
            .await
            .map_err(catalog_error)?;
        let Some(first) = rows.first() else {
            return Err(SourceError::setup(
                format!("table {}.{} does not exist", t.schema, t.name),
                "create it, or fix the table name in [[source.table]]",
            ));
        };
        let oid: u32 = first.get(0);
        let ident: String = first.get(1);
        let replica_identity = ReplicaIdentity::from_byte(ident.as_bytes()[0])
            .ok_or_else(|| SourceError::protocol(format!("unknown replica identity {ident:?}")))?;
        let mut columns = Vec::with_capacity(rows.len());
        let mut not_null = std::collections::HashSet::new();
        for r in &rows {
            let name: String = r.get(2);
            let type_oid: u32 = r.get(3);
            let (type_name, ty) = self.resolve_type(type_oid).await?;
            if r.get::<_, bool>(5) {
                not_null.insert(name.clone());
            }
            columns.push(Column {
                key: replica_identity == ReplicaIdentity::Full || r.get::<_, bool>(6),
                name,
                type_oid,
                type_modifier: r.get(4),
                type_name,
                ty,
            });
        }
        let table = Table {
            oid,
            schema: t.schema.clone(),
            name: t.name.clone(),
            replica_identity,
            columns,
        };
        Ok((table, not_null))
    }

    /// Columns of `tables` whose types walcast cannot decode, as `(table, column, type)`.
    pub async fn unsupported_columns(
        &mut self,
        tables: &[TableName],
    ) -> Result<Vec<(TableName, String, String)>, SourceError> {
        let mut found = Vec::new();
        for t in tables {
            let rows = self
                .client
                .query(
                    "SELECT a.attname::text, a.atttypid FROM pg_attribute a \
                     JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                    &[&t.schema, &t.name],
                )
                .await
                .map_err(catalog_error)?;
            for r in rows {
                let (column, oid): (String, u32) = (r.get(0), r.get(1));
                if let (name, PgType::Unsupported(_)) = self.resolve_type(oid).await? {
                    found.push((t.clone(), column, name));
                }
            }
        }
        Ok(found)
    }
}
