//! What the source hands downstream: tables, rows and changes, ordered by `(lsn, seq)`.

use std::fmt;
use std::sync::Arc;

use crate::lsn::Lsn;

use super::pgoutput::{Datum, TupleData};
use super::value::{decode_binary, decode_text, PgType, Value, ValueError};

/// A published table's shape, from its latest Relation message, with each column's type
/// resolved. Shared by every change of the table (`Arc`); a new shape is a new `Table`.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// OID of the table (`pg_class.oid`), the key the Relation and data messages use.
    pub oid: u32,
    /// Schema (namespace) of the table.
    pub schema: String,
    /// Name of the table, unqualified.
    pub name: String,
    /// What the old image of this table's updates and deletes contains.
    pub replica_identity: ReplicaIdentity,
    /// Columns in the order the publication sends them, which is the order of every row's values.
    pub columns: Vec<Column>,
}

impl Table {
    /// Position of the column named `name` in [`Table::columns`], if the table has it.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A column of a [`Table`].
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// OID of the column's type (`pg_type.oid`); for a domain, the domain's own OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), e.g. a varchar's length or a numeric's precision; -1 when none.
    pub type_modifier: i32,
    /// `pg_type.typname` (or the OID when unknown), for messages.
    pub type_name: String,
    /// How the column's values are decoded, resolved from `type_oid` by the catalog.
    pub ty: PgType,
    /// Part of the replica identity key.
    pub key: bool,
}

/// `pg_class.relreplident`: what the old image of an update or delete contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key.
    Default,
    /// Nothing: updates and deletes cannot be identified.
    Nothing,
    /// The whole old row.
    Full,
    /// The columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The replica identity of a Relation message's byte (`d`, `n`, `f`, `i`); `None` for any
    /// other.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(Self::Default),
            b'n' => Some(Self::Nothing),
            b'f' => Some(Self::Full),
            b'i' => Some(Self::Index),
            _ => None,
        }
    }
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A row was inserted: `new` is set, `old` is `None`.
    Insert,
    /// A row was updated: `new` is set, `old` holds the old key or row when PostgreSQL sent one.
    Update,
    /// A row was deleted: `old` holds its key (or whole row under REPLICA IDENTITY FULL), `new` is
    /// `None`.
    Delete,
    /// The whole table was emptied; the change has no rows.
    Truncate,
}

/// One row image as sent by the server. Values are decoded when read.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    data: TupleData,
    /// Only the replica identity key columns are present; others read as [`Value::Null`].
    pub key_only: bool,
}

impl Row {
    /// A row image of `data`; `key_only` when it is a replica identity key image.
    pub fn new(data: TupleData, key_only: bool) -> Self {
        Self { data, key_only }
    }

    /// The raw column values, in the table's column order.
    pub fn datums(&self) -> &[Datum] {
        &self.data.0
    }

    /// The value of column `index` of `table`, decoded.
    pub fn value(&self, table: &Table, index: usize) -> Result<Value, ColumnError> {
        let column = &table.columns[index];
        let located = |error| ColumnError {
            table: table.to_string(),
            column: column.name.clone(),
            type_name: column.type_name.clone(),
            error,
        };
        match self.data.0.get(index) {
            None | Some(Datum::Null) => Ok(Value::Null),
            Some(Datum::UnchangedToast) => Ok(Value::UnchangedToast),
            Some(Datum::Binary(raw)) => decode_binary(&column.ty, raw).map_err(located),
            Some(Datum::Text(raw)) => decode_text(&column.ty, raw).map_err(located),
        }
    }

    /// The value of the column named `name`, decoded; `None` when the table has no such column.
    pub fn get(&self, table: &Table, name: &str) -> Option<Result<Value, ColumnError>> {
        table.column_index(name).map(|i| self.value(table, i))
    }
}

/// A value that could not be decoded, located by table and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}.{column} ({type_name}): {error}")]
pub struct ColumnError {
    /// Qualified table name, `schema.name`.
    pub table: String,
    /// Column name.
    pub column: String,
    /// Column type name, as in [`Column::type_name`].
    pub type_name: String,
    /// Why the value could not be decoded.
    pub error: ValueError,
}

/// One row change, in commit order.
///
/// `(lsn, seq)` orders every change of a source totally: `lsn` is the commit LSN of the
/// change's transaction and `seq` its position within that transaction, from 0. Redelivery
/// after a restart yields the same pair for the same change, which is what makes replica
/// writes and event ids idempotent.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The changed table's shape at the time of the change.
    pub table: Arc<Table>,
    /// Kind of change.
    pub op: Op,
    /// The old key (or the old row under REPLICA IDENTITY FULL) of updates and deletes.
    /// `None` for an update that did not change the key under REPLICA IDENTITY DEFAULT.
    pub old: Option<Row>,
    /// The row after an insert or update; `None` for deletes and truncates.
    pub new: Option<Row>,
    /// Commit LSN of the change's transaction, from its Begin (or Stream Commit) message.
    pub lsn: Lsn,
    /// Position of the change within its transaction, from 0; with `lsn`, the change's total order.
    pub seq: u32,
    /// Top-level transaction id.
    pub xid: u32,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch).
    pub commit_ts: i64,
}

/// What the source emits, in WAL commit order. A transaction's changes sit between its
/// `Begin` and `Commit`; a transaction is never interleaved with another.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// A transaction begins; its changes follow.
    Begin {
        /// Top-level transaction id.
        xid: u32,
        /// Commit LSN of the transaction, carried by every change of it.
        commit_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
        commit_ts: i64,
    },
    /// One row change of the current transaction.
    Change(Change),
    /// A table's shape changed (columns added, dropped, renamed or retyped). Emitted before
    /// the first change that has the new shape.
    Schema {
        /// The shape before, or `None` the first time the table is seen.
        old: Option<Arc<Table>>,
        /// The new shape.
        new: Arc<Table>,
    },
    /// The transaction is complete. Confirming `end_lsn` to PostgreSQL means it is never
    /// sent again.
    Commit {
        /// Top-level transaction id.
        xid: u32,
        /// Commit LSN of the transaction, the same as in its `Begin`.
        commit_lsn: Lsn,
        /// End of the commit record: the position to confirm once the transaction is durable
        /// downstream.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
        commit_ts: i64,
    },
}

impl SourceEvent {
    /// The change this event carries, if it is a [`SourceEvent::Change`].
    pub fn change(&self) -> Option<&Change> {
        match self {
            SourceEvent::Change(c) => Some(c),
            _ => None,
        }
    }
}

/// Microseconds between 1970-01-01 and 2000-01-01.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
