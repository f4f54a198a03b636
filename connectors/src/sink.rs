//! What every connector receives and promises: the [`Sink`] contract.

use std::future::Future;

/// A change's place in its source's total order: the commit LSN of its transaction, then
/// its position in that transaction. Ordered; a replica keeps, per key, the highest it has
/// applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub lsn: u64,
    pub seq: u32,
}

/// A field value as a replica stores it. Decoding events is the runner's job; a connector
/// only writes these.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Long(i64),
    Double(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// An exact decimal, in its text form (`-12.50`).
    Decimal(String),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01 00:00:00 UTC.
    Timestamp(i64),
    /// Microseconds since 1970-01-01 00:00:00, no time zone.
    LocalTimestamp(i64),
    /// Microseconds since midnight.
    Time(i64),
}

/// The type of an event field, as a contract declares it: what a replica column for it
/// is created as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Bool,
    Int,
    Long,
    Float,
    Double,
    Text,
    Bytes,
    /// An exact decimal with this many digits after the point.
    Decimal {
        precision: usize,
        scale: usize,
    },
    Date,
    Timestamp,
    LocalTimestamp,
    Time,
    Uuid,
}

/// One field of a contract version: its name, type, and whether it may be null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub nullable: bool,
}

/// What happened to one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The key's current state: `(field, value)` pairs.
    Upsert(Vec<(String, Value)>),
    Delete,
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The key's fields, `(field, value)`, in the key contract's order.
    pub key: Vec<(String, Value)>,
    pub op: Op,
    pub version: Version,
}

/// How far a consumer has read one partition: the next offset to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// Changes to apply together, and the consumer positions they bring the replica to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub changes: Vec<Change>,
    pub positions: Vec<Position>,
}

/// A read replica in some store.
///
/// # Contract
/// - **At-least-once.** The same change may arrive again (after a crash, a rebalance), and
///   changes of different keys may arrive in any order. `apply` must be idempotent.
/// - **Versions decide.** A change is applied only if its [`Version`] is higher than what
///   the replica holds for its key. A stale or duplicate change never overwrites newer data.
/// - **Deletes leave a tombstone version**, so a late upsert older than the delete cannot
///   resurrect the row.
/// - **`Ok` means durable**: the runner commits the batch's positions only then. A sink that
///   can store the positions in the same transaction as the rows does, and returns them from
///   [`Sink::positions`], which makes the replica exactly-once with respect to the topic.
pub trait Sink {
    /// Applies `batch` durably.
    fn apply(&mut self, batch: &Batch) -> impl Future<Output = Result<(), crate::Error>> + Send;

    /// The positions stored with the rows, if this store keeps them.
    fn positions(&mut self) -> impl Future<Output = Result<Vec<Position>, crate::Error>> + Send;

    /// A contract version whose changes are about to be applied, with every field it has.
    /// A store that creates its table, or adds columns when a contract gains fields
    /// (`auto_create`, `auto_add_columns`), does so here; others ignore it.
    fn prepare(
        &mut self,
        fields: &[Field],
    ) -> impl Future<Output = Result<(), crate::Error>> + Send;
}
