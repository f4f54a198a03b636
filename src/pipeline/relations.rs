//! Which `[[source.table]]` a relation of the stream is, and what happens to one none is.
//!
//! # Unmapped relations stop the source
//! The publication lists exactly the configured tables (checked at start), so a change of a
//! relation no mapping covers means the publication sends something the configuration does
//! not expect: a table added to it by hand, a partition published under its own name, or a
//! configured table renamed while running. Publishing nothing for it and confirming past it
//! would lose it, so it stops the source ([`PipelineError::Unmapped`]) naming the relation
//! and the transaction, and nothing from it on is confirmed.
//!
//! One exception, in replayed history only (a transaction committed before the source
//! started): a relation the publication no longer sends, neither itself nor as a partition
//! of a published root, was taken out of the publication (or dropped) since, together with
//! its `[[source.table]]`, which the check at start made the operator do. Its replayed
//! changes are skipped with a warning; a live change never is.
//!
//! # Renamed relations
//! `ALTER TABLE … RENAME` or `SET SCHEMA` keeps the relation's OID and its place in the
//! publication, and pgoutput sends a Relation message under the new name. A live one stops
//! the source ([`PipelineError::Renamed`]) naming both names and the fix (the configuration
//! must name the table as it is now, which the check at start also demands). In replayed
//! history, a relation under the name it had before a rename is the table the configuration
//! names now (same OID), and maps to it.

use std::sync::Arc;

use super::{Pipeline, PipelineError};
use crate::events::mapping::{SchemaIds, TableSpec};
use crate::lsn::Lsn;
use crate::source::catalog::Catalog;
use crate::source::protocol::quote_ident;
use crate::source::{self, Table};

impl Pipeline {
    /// The spec of `table` by its name, or, for a mapped relation under another name, by its
    /// OID: in history the name it had before a rename; live a rename, which stops the
    /// source. `None` when no spec covers it.
    pub(super) fn spec_of(
        &self,
        table: &Table,
        live: bool,
    ) -> Result<Option<(Arc<TableSpec>, SchemaIds)>, Box<PipelineError>> {
        let by_name = self
            .specs
            .iter()
            .find(|(s, _)| s.table.schema == table.schema && s.table.name == table.name);
        if let Some(found) = by_name {
            return Ok(Some(found.clone()));
        }
        let Some(mapped) = self.mappings.by_oid(table.oid) else {
            return Ok(None);
        };
        if live {
            return Err(Box::new(PipelineError::Renamed {
                source_name: self.name.clone(),
                oid: table.oid,
                was: mapped.spec.table.to_string(),
                now: table.to_string(),
                lsn: self.current.map_or(Lsn::ZERO, |c| c.lsn),
            }));
        }
        tracing::info!(source = %self.name, table = %mapped.spec.table, was = %table, "a change replayed from before a rename: mapped to the table as it is named now");
        Ok(self
            .specs
            .iter()
            .find(|(s, _)| s.table == mapped.spec.table)
            .cloned())
    }

    /// A change of a relation no mapping covers: stops the source, except a replayed
    /// change of a relation no longer published (see the module doc).
    pub(super) async fn unmapped(
        &mut self,
        change: &source::Change,
        lsn: Lsn,
        catalog: &Catalog,
    ) -> Result<(), PipelineError> {
        let oid = change.table.oid;
        let live = lsn >= self.started_at;
        if !live {
            if self.unpublished.contains(&oid) {
                return Ok(());
            }
            if !catalog.publishes(&self.publication, oid).await? {
                tracing::warn!(source = %self.name, table = %change.table, oid, %lsn, "replayed changes of a table the publication no longer sends are skipped (it was taken out of the publication or dropped after they were written)");
                self.unpublished.insert(oid);
                return Ok(());
            }
        }
        Err(PipelineError::Unmapped {
            source_name: self.name.clone(),
            table: change.table.to_string(),
            oid,
            lsn,
            publication: quote_ident(&self.publication),
        })
    }
}
