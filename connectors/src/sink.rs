//! What every connector receives and promises: the [`Sink`] contract.

use std::future::Future;

use crate::Error;

/// A change's place in its source's total order: the commit LSN of its transaction, then
/// its position in that transaction. Ordered; a replica keeps, per key, the highest it has
/// applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Commit LSN of the change's transaction in the source database.
    pub lsn: u64,
    /// Position of the change within its transaction, from 0.
    pub seq: u32,
}

/// A field value as a replica stores it. Decoding events is the runner's job; a connector
/// only writes these.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A null field.
    Null,
    /// An Avro `boolean`.
    Bool(bool),
    /// An Avro `int` or `long`.
    Long(i64),
    /// An Avro `float`, kept single-precision so that its text is the float's own (`0.1`,
    /// not the `0.10000000149011612` of the same value widened).
    Float(f32),
    /// An Avro `double`.
    Double(f64),
    /// An Avro `string`, enum symbol, or `uuid` in its text form.
    Text(String),
    /// Avro `bytes` or `fixed`.
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
    /// An Avro `array`: its items, in order.
    Array(Vec<Value>),
    /// An Avro `map` (entries sorted by key) or `record` (fields in the record's order):
    /// stored as a JSON object.
    Object(Vec<(String, Value)>),
}

/// The type of an event field, as a contract declares it: what a replica column for it
/// is created as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// Avro `boolean`.
    Bool,
    /// Avro `int`: a 32-bit column.
    Int,
    /// Avro `long`: a 64-bit column.
    Long,
    /// Avro `float`: a single-precision column.
    Float,
    /// Avro `double`: a double-precision column.
    Double,
    /// Avro `string` or enum: a text column.
    Text,
    /// Avro `bytes` or `fixed`: a binary column.
    Bytes,
    /// An exact decimal with this many digits after the point.
    Decimal {
        /// Total number of significant digits.
        precision: usize,
        /// Digits after the decimal point.
        scale: usize,
    },
    /// Avro `date`: a date column.
    Date,
    /// Avro `timestamp-millis`/`-micros`: an instant, stored in UTC.
    Timestamp,
    /// Avro `local-timestamp-millis`/`-micros`: a timestamp without time zone.
    LocalTimestamp,
    /// Avro `time-millis`/`-micros`: a time of day.
    Time,
    /// Avro `uuid`: a UUID column where the store has one, else text.
    Uuid,
    /// An Avro `array` of scalars (the element's type): an array column where the store has
    /// one (PostgreSQL), else JSON.
    Array(Box<FieldType>),
    /// An Avro `map` or `record`, or an array of them: `jsonb` in PostgreSQL, JSON elsewhere.
    Json,
}

impl FieldType {
    /// The type's name in errors: `long`, `array of text`, `json`.
    pub fn name(&self) -> String {
        match self {
            FieldType::Bool => "boolean".into(),
            FieldType::Int => "int".into(),
            FieldType::Long => "long".into(),
            FieldType::Float => "float".into(),
            FieldType::Double => "double".into(),
            FieldType::Text => "text".into(),
            FieldType::Bytes => "bytes".into(),
            FieldType::Decimal { precision, scale } => format!("decimal({precision}, {scale})"),
            FieldType::Date => "date".into(),
            FieldType::Timestamp => "timestamp".into(),
            FieldType::LocalTimestamp => "local timestamp".into(),
            FieldType::Time => "time".into(),
            FieldType::Uuid => "uuid".into(),
            FieldType::Array(item) => format!("array of {}", item.name()),
            FieldType::Json => "json (map or record)".into(),
        }
    }
}

/// One field of a contract version: its name, type, and whether it may be null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name, which is the replica column (or hash field) name.
    pub name: String,
    /// Type of the field's non-null values.
    pub ty: FieldType,
    /// Whether the field is a union with null.
    pub nullable: bool,
}

/// What happened to one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The key's current state: `(field, value)` pairs.
    Upsert(Vec<(String, Value)>),
    /// The key was deleted; the replica keeps its version as a tombstone.
    Delete,
    /// The source table was truncated: every row and tombstone of the replica older than
    /// the change's version goes, and the version becomes the replica's *floor*, below
    /// which no change is applied any more (a change read late from another partition
    /// cannot bring a truncated row back). The change's key is empty.
    Truncate,
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The key's fields, `(field, value)`, in the key contract's order.
    pub key: Vec<(String, Value)>,
    /// Whether the key is upserted or deleted.
    pub op: Op,
    /// The change's place in its source's order; a replica applies it only above what it holds.
    pub version: Version,
}

impl Change {
    /// A field of the change's key that `named` (a sink's key fields, or its key template's
    /// placeholders) leaves out, with the sink's stop error: two source rows differing only
    /// in that field would be one replica row (or hash), each overwriting and deleting the
    /// other. `None` when every key field is named (a truncate has no key), or when `named`
    /// holds a name that is no key field at all, which the sink names itself.
    pub fn key_left_out(&self, named: &[String], what: impl FnOnce() -> String) -> Option<Error> {
        let (left_out, _) = self
            .key
            .iter()
            .find(|(field, _)| !named.iter().any(|n| n == field))?;
        if named.iter().any(|n| !self.key.iter().any(|(f, _)| f == n)) {
            // A name that is no key field at all: the sink's own error says so first.
            return None;
        }
        let fields: Vec<&str> = self.key.iter().map(|(f, _)| f.as_str()).collect();
        Some(Error::Setup(format!(
            "{} leaves out key field {left_out} of the events (their key fields: {}): two source rows that differ only in {left_out} would be one replica entry, each overwriting and deleting the other; name every key field",
            what(),
            fields.join(", ")
        )))
    }
}

/// How far a consumer has read one partition: the next offset to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Kafka topic.
    pub topic: String,
    /// Partition of the topic.
    pub partition: i32,
    /// Offset of the next record to read: one past the last one applied.
    pub next_offset: i64,
}

/// Changes to apply together, and the consumer positions they bring the replica to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Changes in the order their records were consumed.
    pub changes: Vec<Change>,
    /// Where each partition of the batch ends, to commit once the batch is durable.
    pub positions: Vec<Position>,
}

/// A read replica in some store.
///
/// # Contract
/// - **At-least-once.** The same change may arrive again (after a crash, a rebalance), and
///   changes of different keys may arrive in any order. `apply` must be idempotent.
/// - **Versions decide.** A change is applied only if its [`Version`] is higher than what
///   the replica holds for its key. A stale or duplicate change never overwrites newer data.
/// - **A change writes only the fields it carries.** Event types of a topic carry different
///   fields; a field a change lacks keeps what the replica holds, whatever else shares the
///   batch (a field carried as NULL is cleared). A key's changes within a batch take effect
///   in version order ([`crate::rounds`]).
/// - **Deletes leave a tombstone version**, so a late upsert older than the delete cannot
///   resurrect the row.
/// - **Truncates leave a floor.** An [`Op::Truncate`] removes every row older than it and
///   raises the replica's floor to its version, kept with the rows; from then on a change
///   at or below the floor is skipped, whichever partition (or group member) it comes
///   from. A batch's truncate is applied before its other changes, which the floor then
///   sorts: older ones are dropped, newer ones applied.
/// - **`Ok` means durable**: the runner commits the batch's positions only then. A sink that
///   can store the positions in the same transaction as the rows does, and returns them from
///   [`Sink::positions`], which makes the replica exactly-once with respect to the topic.
pub trait Sink {
    /// Applies `batch` durably.
    fn apply(&mut self, batch: &Batch) -> impl Future<Output = Result<(), crate::Error>> + Send;

    /// The positions stored with the rows, if this store keeps them.
    fn positions(&mut self) -> impl Future<Output = Result<Vec<Position>, crate::Error>> + Send;

    /// The fields of the contracts whose changes are about to be applied: the union of every
    /// contract on the topic (key, every event type, its latest version). A field listed
    /// twice has two types, which a table-shaped store refuses with a setup error naming
    /// both. A store that creates its table, or adds columns when a contract gains fields
    /// (`auto_create`, `auto_add_columns`), does so here, every non-key column nullable;
    /// others ignore it.
    fn prepare(
        &mut self,
        fields: &[Field],
    ) -> impl Future<Output = Result<(), crate::Error>> + Send;
}
