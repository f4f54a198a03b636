//! The signal table: how `walcast snapshot` asks a running daemon to re-read a table, and
//! where the daemon reports how far it got. Requests are polled (it is one indexed query
//! every half second), so the table need not be published.
//!
//! A request's `state` goes `requested` → `accepted` → `running` → `done`, or `refused`
//! with a `message`. The durable progress is the snapshot's own (see [`super`]); the row
//! only mirrors it for `walcast snapshot --wait`.

use super::plan::{State, TableProgress};
use super::SnapshotError;
use crate::source::catalog::Catalog;
use crate::source::SourceSettings;

/// The DDL of a signal table named `table` (already quoted where needed).
pub fn ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, source text NOT NULL, table_name text NOT NULL, \
         requested_at timestamptz NOT NULL DEFAULT now(), state text NOT NULL DEFAULT 'requested', \
         rows_done bigint NOT NULL DEFAULT 0, rows_estimated bigint, message text)"
    )
}

/// `schema.table` as given, with `public` when no schema is.
pub fn qualified(table: &str) -> String {
    if table.contains('.') {
        table.to_string()
    } else {
        format!("public.{table}")
    }
}

/// A request read from the signal table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The signal row's id.
    pub id: i64,
    /// `schema.table`.
    pub table: String,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `pending`, `accepted`, `running`, `done` or `refused`.
    pub state: String,
    /// Rows published so far.
    pub rows_done: u64,
    /// Rows the table held when the snapshot was planned.
    pub rows_estimated: Option<u64>,
    /// Why it was refused, or what went wrong.
    pub message: Option<String>,
}

/// A progress bar of `width` cells for `done` of `total`.
pub fn bar(done: u64, total: Option<u64>, width: usize) -> String {
    match total {
        Some(total) if total > 0 => {
            let fraction = (done as f64 / total as f64).min(1.0);
            let filled = (fraction * width as f64).round() as usize;
            format!(
                "[{}{}] {:>3}% {done}/{total} rows",
                "#".repeat(filled),
                ".".repeat(width - filled),
                (fraction * 100.0).round() as u64
            )
        }
        _ => format!("[{}] {done} rows", "?".repeat(width)),
    }
}

/// A source's signal table, over a connection of its own.
pub struct Signals {
    catalog: Catalog,
    source: String,
    table: String,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("table", &self.table)
            .finish()
    }
}

impl Signals {
    /// Connects, and creates the table when missing.
    pub async fn open(settings: &SourceSettings, table: &str) -> Result<Self, SnapshotError> {
        let catalog = Catalog::connect(&settings.url, &settings.name, &settings.tls).await?;
        let signals = Signals {
            catalog,
            source: settings.name.clone(),
            table: table.to_string(),
        };
        let sql = ddl(table);
        signals
            .catalog
            .client()
            .batch_execute(&sql)
            .await
            .map_err(|e| signals.error(&e, format!("create it yourself: {sql}; and GRANT SELECT, INSERT, UPDATE ON {table} TO walcast's role")))?;
        Ok(signals)
    }

    fn error(&self, e: &tokio_postgres::Error, hint: String) -> SnapshotError {
        SnapshotError::Signal {
            source_name: self.source.clone(),
            table: self.table.clone(),
            message: walcast_text::describe(e),
            hint,
            transient: e.as_db_error().is_none(),
        }
    }

    /// Requests of this source not yet accepted, oldest first.
    pub async fn requested(&self) -> Result<Vec<Request>, SnapshotError> {
        let rows = self
            .catalog
            .client()
            .query(
                &format!("SELECT id, table_name FROM {} WHERE source = $1 AND state = 'requested' ORDER BY id", self.table),
                &[&self.source],
            )
            .await
            .map_err(|e| self.error(&e, "check that walcast's role may read and update it".into()))?;
        Ok(rows
            .iter()
            .map(|r| Request {
                id: r.get(0),
                table: qualified(r.get(1)),
            })
            .collect())
    }

    /// Marks request `id` accepted.
    pub async fn accept(&self, id: i64) -> Result<(), SnapshotError> {
        self.set(id, "accepted", None).await
    }

    /// Marks request `id` refused, saying why.
    pub async fn refuse(&self, id: i64, message: &str) -> Result<(), SnapshotError> {
        self.set(id, "refused", Some(message)).await
    }

    async fn set(&self, id: i64, state: &str, message: Option<&str>) -> Result<(), SnapshotError> {
        self.catalog
            .client()
            .execute(
                &format!(
                    "UPDATE {} SET state = $2, message = $3 WHERE id = $1",
                    self.table
                ),
                &[&id, &state, &message],
            )
            .await
            .map_err(|e| self.error(&e, "check that walcast's role may update it".into()))?;
        Ok(())
    }

    /// Records a request to snapshot `table` (`schema.table`); returns its id.
    pub async fn request(&self, table: &str) -> Result<i64, SnapshotError> {
        let row = self
            .catalog
            .client()
            .query_one(
                &format!(
                    "INSERT INTO {} (source, table_name) VALUES ($1, $2) RETURNING id",
                    self.table
                ),
                &[&self.source, &table],
            )
            .await
            .map_err(|e| self.error(&e, "check that walcast's role may insert into it".into()))?;
        Ok(row.get(0))
    }

    /// The state of request `id`.
    pub async fn status(&self, id: i64) -> Result<Status, SnapshotError> {
        let row = self
            .catalog
            .client()
            .query_one(
                &format!(
                    "SELECT state, rows_done, rows_estimated, message FROM {} WHERE id = $1",
                    self.table
                ),
                &[&id],
            )
            .await
            .map_err(|e| self.error(&e, "check that walcast's role may read it".into()))?;
        Ok(Status {
            state: row.get(0),
            rows_done: row.get::<_, i64>(1) as u64,
            rows_estimated: row.get::<_, Option<i64>>(2).map(|e| e.max(0) as u64),
            message: row.get(3),
        })
    }

    /// Mirrors the progress of request `id`.
    pub async fn report(
        &self,
        id: i64,
        progress: &TableProgress,
        estimated: Option<u64>,
    ) -> Result<(), SnapshotError> {
        let state = if progress.state == State::Done {
            "done"
        } else {
            "running"
        };
        let (done, estimated) = (progress.rows_done as i64, estimated.map(|e| e as i64));
        self.catalog
            .client()
            .execute(
                &format!(
                    "UPDATE {} SET state = $2, rows_done = $3, rows_estimated = $4 WHERE id = $1",
                    self.table
                ),
                &[&id, &state, &done, &estimated],
            )
            .await
            .map_err(|e| self.error(&e, "check that walcast's role may update it".into()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_without_a_schema_is_in_public() {
        assert_eq!(qualified("users"), "public.users");
        assert_eq!(qualified("crm.users"), "crm.users");
    }

    #[test]
    fn the_bar_fills_with_the_rows_done() {
        assert_eq!(bar(50, Some(100), 10), "[#####.....]  50% 50/100 rows");
        assert_eq!(bar(120, Some(100), 4), "[####] 100% 120/100 rows");
        assert_eq!(bar(7, None, 3), "[???] 7 rows");
    }
}
