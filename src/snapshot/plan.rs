//! The pure part of a snapshot: chunk queries, the version of a snapshot read, the durable
//! progress record, the rate limit and the ETA. No I/O here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;
use crate::source::catalog::TableName;
use crate::source::protocol::quote_ident;

/// The `seq` of every snapshot read. Replicas store `seq` as a signed 32-bit integer, so
/// this is the largest `seq` they can order.
pub const SNAPSHOT_SEQ: u32 = i32::MAX as u32;

/// The version `(lsn, seq)` of a row read in a snapshot that sees every transaction
/// committed before `horizon` (see the module doc of [`super`]).
///
/// It is above the version of every change whose commit record starts before `horizon`
/// (such a record starts at `horizon - 24` or earlier, and its seq is at most
/// [`SNAPSHOT_SEQ`]), and below every change committed at or after `horizon`.
pub fn read_version(horizon: Lsn) -> (Lsn, u32) {
    (Lsn(horizon.0.saturating_sub(1)), SNAPSHOT_SEQ)
}

/// A column of the key a table is chunked by, with its SQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    /// The column's name.
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, for casting the text of the last key read.
    pub sql_type: String,
}

/// How one table is read: which columns, in which order, by which key.
#[derive(Debug, Clone)]
pub struct ChunkPlan {
    table: TableName,
    /// One SQL expression per column of the table, in the table's column order: the column,
    /// or `NULL` when nothing downstream reads it (it never leaves the database).
    columns: Vec<String>,
    key: Vec<KeyColumn>,
    rows: u64,
}

impl ChunkPlan {
    /// `columns` are the table's columns in order, each with whether a contract reads it.
    pub fn new(
        table: &TableName,
        columns: &[(String, bool)],
        key: Vec<KeyColumn>,
        rows: u64,
    ) -> Self {
        Self {
            table: table.clone(),
            columns: columns
                .iter()
                .map(|(name, read)| {
                    if *read {
                        format!("t.{}", quote_ident(name))
                    } else {
                        "NULL".into()
                    }
                })
                .collect(),
            key,
            rows,
        }
    }

    /// Columns of the table; each row of a chunk has these, then the key as text.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// Columns of the chunking key.
    pub fn key_width(&self) -> usize {
        self.key.len()
    }

    /// Rows the table held when planned (the estimate for progress).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The binary COPY of the chunk after the key `after` (from the start with `None`):
    /// keyset pagination, so each chunk costs one index range scan however far in it is.
    pub fn query(&self, after: Option<&[String]>) -> String {
        let table = format!(
            "{}.{}",
            quote_ident(&self.table.schema),
            quote_ident(&self.table.name)
        );
        let key_names: Vec<String> = self.key.iter().map(|k| quote_ident(&k.name)).collect();
        let select: Vec<String> = self
            .columns
            .iter()
            .cloned()
            .chain(
                key_names
                    .iter()
                    .enumerate()
                    .map(|(i, k)| format!("t.{k}::text AS \"_walcast_key_{i}\"")),
            )
            .collect();
        let ordered: Vec<String> = key_names.iter().map(|k| format!("t.{k}")).collect();
        let filter = match after {
            Some(values) => {
                let literals: Vec<String> = self
                    .key
                    .iter()
                    .zip(values)
                    .map(|(k, v)| format!("{}::{}", quote_literal(v), k.sql_type))
                    .collect();
                format!(
                    " WHERE ({}) > ({})",
                    ordered.join(", "),
                    literals.join(", ")
                )
            }
            None => String::new(),
        };
        format!(
            "COPY (SELECT {} FROM {table} AS t{filter} ORDER BY {} LIMIT {}) TO STDOUT (FORMAT binary)",
            select.join(", "),
            ordered.join(", "),
            self.rows
        )
    }
}

/// A SQL string literal (`standard_conforming_strings` is on in the reading session).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Where one table's snapshot stands, kept durably (see [`super::store`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableProgress {
    /// `schema.table`.
    pub table: String,
    /// Which request this is: 0 for the initial snapshot or a table added to the
    /// configuration, otherwise the id of the signal row that asked for it.
    pub request: i64,
    /// Pending or done.
    pub state: State,
    /// The key (as text) of the last row of the last chunk published; `None` before the
    /// first chunk.
    pub after: Option<Vec<String>>,
    /// Rows published so far.
    pub rows_done: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// Where a table's snapshot stands.
pub enum State {
    /// To read, from `after` on.
    Pending,
    /// Every row was published.
    Done,
}

impl TableProgress {
    /// A table to read from its first key, for `request`.
    pub fn pending(table: &TableName, request: i64) -> Self {
        Self {
            table: table.to_string(),
            request,
            state: State::Pending,
            after: None,
            rows_done: 0,
        }
    }

    /// The record's key in the progress topic: `<source>/<schema.table>`.
    pub fn key(source: &str, table: &str) -> Vec<u8> {
        format!("{source}/{table}").into_bytes()
    }

    /// The progress record's value (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("progress serializes")
    }

    /// A progress record read back; `None` when it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// After a chunk of `rows` rows ending at key `last` was published; `last == None`
    /// means the table has no more rows.
    pub fn advanced(&self, rows: u64, last: Option<Vec<String>>) -> Self {
        let mut next = self.clone();
        next.rows_done += rows;
        match last {
            Some(key) => next.after = Some(key),
            None => next.state = State::Done,
        }
        next
    }
}

/// How long to wait before reading more so that `rows` read over `elapsed` stay within
/// `per_sec` rows a second; `per_sec == 0` means no bound.
pub fn rate_delay(per_sec: u64, rows: u64, elapsed: Duration) -> Duration {
    if per_sec == 0 {
        return Duration::ZERO;
    }
    let due = Duration::from_secs_f64(rows as f64 / per_sec as f64);
    due.saturating_sub(elapsed)
}

/// The remaining time at the rate so far, when an estimate of the table's rows is known.
pub fn eta(
    done: u64,
    done_this_run: u64,
    estimated: Option<u64>,
    elapsed: Duration,
) -> Option<Duration> {
    let estimated = estimated?;
    if done_this_run == 0 {
        return None;
    }
    let left = estimated.saturating_sub(done);
    Some(Duration::from_secs_f64(
        elapsed.as_secs_f64() * left as f64 / done_this_run as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> TableName {
        TableName {
            schema: "public".into(),
            name: "users".into(),
        }
    }

    fn plan(key: &[(&str, &str)]) -> ChunkPlan {
        ChunkPlan::new(
            &users(),
            &[
                ("id".into(), true),
                ("password_hash".into(), false),
                ("full name".into(), true),
            ],
            key.iter()
                .map(|(n, t)| KeyColumn {
                    name: n.to_string(),
                    sql_type: t.to_string(),
                })
                .collect(),
            500,
        )
    }

    #[test]
    fn the_first_chunk_reads_from_the_start_and_unread_columns_stay_in_the_database() {
        assert_eq!(
            plan(&[("id", "bigint")]).query(None),
            r#"COPY (SELECT t."id", NULL, t."full name", t."id"::text AS "_walcast_key_0" FROM "public"."users" AS t ORDER BY t."id" LIMIT 500) TO STDOUT (FORMAT binary)"#
        );
    }

    #[test]
    fn later_chunks_start_after_the_last_key_read_with_its_type() {
        assert_eq!(
            plan(&[("tenant", "text"), ("id", "bigint")])
                .query(Some(&["o'hara".into(), "42".into()])),
            r#"COPY (SELECT t."id", NULL, t."full name", t."tenant"::text AS "_walcast_key_0", t."id"::text AS "_walcast_key_1" FROM "public"."users" AS t WHERE (t."tenant", t."id") > ('o''hara'::text, '42'::bigint) ORDER BY t."tenant", t."id" LIMIT 500) TO STDOUT (FORMAT binary)"#
        );
    }

    #[test]
    fn a_snapshot_read_orders_between_changes_before_and_at_its_horizon() {
        let horizon = Lsn(0x1_0000_0100);
        let read = read_version(horizon);
        // The last change that could commit before the horizon: a record starts at least
        // one record length (24 bytes) before it.
        assert!((Lsn(horizon.0 - 24), SNAPSHOT_SEQ) < read);
        assert!((Lsn(horizon.0 - 24), 0) < read);
        // A change committed at or after the horizon always wins, even at seq 0.
        assert!(read < (horizon, 0));
        assert!(read < (Lsn(horizon.0 + 8), 0));
        // Replicas keep seq in a signed 32-bit column.
        assert_eq!(SNAPSHOT_SEQ as i32, i32::MAX);
    }

    #[test]
    fn progress_round_trips_and_advances_to_done() {
        let p = TableProgress::pending(&users(), 0);
        assert_eq!(TableProgress::decode(&p.encode()), Some(p.clone()));
        let p = p.advanced(500, Some(vec!["500".into()]));
        assert_eq!(
            (p.state, p.after.clone(), p.rows_done),
            (State::Pending, Some(vec!["500".into()]), 500)
        );
        let p = p.advanced(20, None);
        assert_eq!((p.state, p.rows_done), (State::Done, 520));
        assert_eq!(p.after, Some(vec!["500".into()]));
        assert_eq!(TableProgress::decode(b"{\"lsn\": 1}"), None);
        assert_eq!(
            TableProgress::key("users", "public.users"),
            b"users/public.users"
        );
    }

    #[test]
    fn the_rate_limit_waits_only_when_ahead_of_it() {
        assert_eq!(rate_delay(0, 1_000_000, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            rate_delay(1000, 500, Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        assert_eq!(
            rate_delay(1000, 500, Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn the_eta_follows_the_rate_of_this_run() {
        assert_eq!(
            eta(50, 50, Some(100), Duration::from_secs(10)),
            Some(Duration::from_secs(10))
        );
        // Resumed at 50: 25 rows in 5 s this run, 25 left.
        assert_eq!(
            eta(75, 25, Some(100), Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(eta(10, 0, Some(100), Duration::from_secs(1)), None);
        assert_eq!(eta(10, 10, None, Duration::from_secs(1)), None);
    }
}
