//! What the publication sends, beyond its list of tables: partitioned tables and generated
//! columns. Both are places where pgoutput leaves out what the configuration expects, and
//! changes would be lost without a word; every check here refuses at start instead.
//!
//! # Partitioned tables
//! A publication without `publish_via_partition_root` sends a partitioned table's changes
//! under its leaf partitions' names, which no `[[source.table]]` names. walcast creates its
//! publication with `publish_via_partition_root = true` (PostgreSQL 13 and later, every
//! supported server): changes then arrive under the root's name and shape whichever
//! partition holds the row, including partitions attached while running (the publication
//! covers every partition of a published root). A publication that already exists without
//! the setting while a configured table is partitioned is refused with the `ALTER
//! PUBLICATION` that fixes it; walcast never alters a publication silently.
//!
//! # Generated columns
//! pgoutput leaves generated columns out of its Relation and row messages: before
//! PostgreSQL 18 always, on 18 unless the publication sets `publish_generated_columns =
//! stored` (virtual ones, 18's default kind, never). A snapshot reads them from the table,
//! so an event field fed by one would carry its value in snapshot reads and then be taken
//! for a dropped column, or go NULL, in streamed changes. So a mapping that reads a
//! generated column is refused at start unless the server sends it: on 18 walcast creates
//! its publication with `publish_generated_columns = stored`, and an existing publication
//! without it is refused with the fix.

use std::collections::HashMap;

use super::catalog::{catalog_error, Catalog, TableName};
use super::error::SourceError;
use super::protocol::quote_ident;

/// `server_version_num` of the first release with `publish_generated_columns`.
const GENERATED_COLUMNS_SINCE: i32 = 180_000;

impl Catalog {
    /// The server's `server_version_num`, e.g. 150019 for 15.19.
    pub async fn server_version_num(&self) -> Result<i32, SourceError> {
        let row = self
            .client()
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(catalog_error)?;
        Ok(row.get(0))
    }

    /// The `WITH (…)` clause walcast creates its publications with: the highest options the
    /// server offers for sending what the configuration maps (see the module doc).
    pub async fn publication_options(&self) -> Result<String, SourceError> {
        let mut options = vec!["publish_via_partition_root = true"];
        if self.server_version_num().await? >= GENERATED_COLUMNS_SINCE {
            options.push("publish_generated_columns = stored");
        }
        Ok(format!("WITH ({})", options.join(", ")))
    }

    /// Refuses a configured partition whose ancestor is configured too: through the root,
    /// its changes arrive as the ancestor's, never under its own name.
    pub async fn check_nested_partitions(&self, tables: &[TableName]) -> Result<(), SourceError> {
        for t in tables {
            let ancestors = self
                .client()
                .query(
                    "SELECT n.nspname::text, c.relname::text FROM pg_class p                      JOIN pg_namespace pn ON pn.oid = p.relnamespace                      JOIN LATERAL pg_partition_ancestors(p.oid) a(relid) ON a.relid <> p.oid                      JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace                      WHERE pn.nspname = $1 AND p.relname = $2 AND p.relispartition",
                    &[&t.schema, &t.name],
                )
                .await
                .map_err(catalog_error)?;
            let configured = ancestors.iter().map(|r| TableName {
                schema: r.get(0),
                name: r.get(1),
            });
            if let Some(ancestor) = configured.into_iter().find(|a| tables.contains(a)) {
                return Err(SourceError::setup(
                    format!("source {}: table {t} is a partition of {ancestor}, which is configured too: published through the root, its changes arrive as {ancestor}'s", self.source_name()),
                    format!("remove {t} from the source's [[source.table]] list: {ancestor}'s mapping covers its rows"),
                ));
            }
        }
        Ok(())
    }

    /// An existing publication sends each configured partitioned table under its root's
    /// name: refuses one without `publish_via_partition_root`, naming the tables and the fix.
    pub async fn check_partition_root(
        &self,
        publication: &str,
        tables: &[TableName],
    ) -> Result<(), SourceError> {
        let via_root: bool = self
            .client()
            .query_opt(
                "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(catalog_error)?
            .is_some_and(|r| r.get(0));
        if via_root {
            return Ok(());
        }
        let mut partitioned = Vec::new();
        for t in tables {
            let found = self
                .client()
                .query_opt(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'p'",
                    &[&t.schema, &t.name],
                )
                .await
                .map_err(catalog_error)?;
            if found.is_some() {
                partitioned.push(t.to_string());
            }
        }
        if partitioned.is_empty() {
            return Ok(());
        }
        Err(SourceError::setup(
            format!(
                "source {}: publication {publication} lacks publish_via_partition_root, so the changes of partitioned table {} arrive under its partitions' names, which the configuration does not map",
                self.source_name(),
                partitioned.join(", ")
            ),
            format!(
                "run ALTER PUBLICATION {} SET (publish_via_partition_root = true), then restart",
                quote_ident(publication)
            ),
        ))
    }

    /// Refuses a mapping that reads a generated column the publication does not send (see
    /// the module doc), naming the column and why. `read` holds the columns each table's
    /// mapping reads; `None` reads every column. A publication not created yet is created
    /// with the options of [`Catalog::publication_options`].
    pub async fn check_generated_columns(
        &self,
        publication: &str,
        tables: &[TableName],
        read: Option<&HashMap<TableName, Vec<String>>>,
    ) -> Result<(), SourceError> {
        let mut generated = Vec::new();
        for t in tables {
            let rows = self
                .client()
                .query(
                    "SELECT a.attname::text, a.attgenerated::text FROM pg_attribute a \
                     JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
                       AND a.attgenerated <> '' ORDER BY a.attnum",
                    &[&t.schema, &t.name],
                )
                .await
                .map_err(catalog_error)?;
            for r in rows {
                let (column, kind): (String, String) = (r.get(0), r.get(1));
                let is_read =
                    read.is_none_or(|read| read.get(t).is_some_and(|cols| cols.contains(&column)));
                if is_read {
                    generated.push((t.clone(), column, kind));
                }
            }
        }
        let Some(first) = generated.first() else {
            return Ok(());
        };
        let source = self.source_name();
        if let Some((t, column, _)) = generated.iter().find(|(_, _, kind)| kind == "v") {
            return Err(SourceError::setup(
                format!("source {source}: column {t}.{column}, which an event field reads, is a virtual generated column: logical replication never sends its values, so streamed events could not carry it"),
                format!("leave {column} out of the table's event mapping, or make it a stored generated column (GENERATED ALWAYS AS (…) STORED) on PostgreSQL 18"),
            ));
        }
        let version = self.server_version_num().await?;
        let (t, column, _) = first;
        if version < GENERATED_COLUMNS_SINCE {
            return Err(SourceError::setup(
                format!(
                    "source {source}: column {t}.{column}, which an event field reads, is a generated column, and PostgreSQL {} leaves generated columns out of logical replication (18 sends them with publish_generated_columns): a snapshot would publish its values, streamed changes none",
                    version / 10_000
                ),
                format!("leave {column} out of the table's event mapping (map the field to another column in [[source.table]] columns, or give it a default), make {column} an ordinary column a trigger fills, or upgrade to PostgreSQL 18"),
            ));
        }
        let row = self
            .client()
            .query_opt(
                "SELECT pubgencols::text FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(catalog_error)?;
        match row.map(|r| r.get::<_, String>(0)) {
            None => Ok(()),
            Some(kind) if kind == "s" => Ok(()),
            Some(_) => Err(SourceError::setup(
                format!("source {source}: column {t}.{column}, which an event field reads, is a generated column, and publication {publication} does not send generated columns (publish_generated_columns is none): streamed events could not carry it"),
                format!(
                    "run ALTER PUBLICATION {} SET (publish_generated_columns = stored), then restart",
                    quote_ident(publication)
                ),
            )),
        }
    }
}

impl Catalog {
    /// Whether `publication` sends relation `oid` now, itself or as a partition of a
    /// published root. `false` for a relation dropped since.
    pub async fn publishes(&self, publication: &str, oid: u32) -> Result<bool, SourceError> {
        let row = self
            .client()
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_publication_tables pt \
                   JOIN pg_namespace n ON n.nspname = pt.schemaname \
                   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
                   WHERE pt.pubname = $1 AND c.oid IN ($2::oid, pg_partition_root($2::oid)))",
                &[&publication, &oid],
            )
            .await
            .map_err(catalog_error)?;
        Ok(row.get(0))
    }
}

/// `server_version_num` of the first release with row filters and column lists.
const FILTERS_SINCE: i32 = 150_000;

impl Catalog {
    /// An existing publication (the user's own, or walcast's altered by hand) sends every
    /// change of the configured tables: inserts, updates, deletes and truncates, every row
    /// (no row filter) and every column a mapping reads (no column list leaving one out).
    /// Each of these would drop changes without a word (a row filter also turns an update
    /// that moves a row out of it into a delete), so each is refused, naming the fix; the
    /// publication is never altered. `read` is as in [`Catalog::check_generated_columns`].
    pub async fn check_publication_contents(
        &self,
        publication: &str,
        tables: &[TableName],
        read: Option<&HashMap<TableName, Vec<String>>>,
    ) -> Result<(), SourceError> {
        let source = self.source_name();
        let quoted = quote_ident(publication);
        let Some(row) = self
            .client()
            .query_opt(
                "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(catalog_error)?
        else {
            return Ok(());
        };
        let missing: Vec<&str> = ["insert", "update", "delete", "truncate"]
            .iter()
            .enumerate()
            .filter(|(i, _)| !row.get::<_, bool>(*i))
            .map(|(_, op)| *op)
            .collect();
        if !missing.is_empty() {
            return Err(SourceError::setup(
                format!(
                    "source {source}: publication {publication} does not publish {}, so replicas would never see them",
                    missing.iter().map(|op| format!("{op}s")).collect::<Vec<_>>().join(" or ")
                ),
                format!("run ALTER PUBLICATION {quoted} SET (publish = 'insert, update, delete, truncate'), then restart (a table that should ignore truncates says skip_truncate = true)"),
            ));
        }
        if self.server_version_num().await? < FILTERS_SINCE {
            return Ok(());
        }
        let list = tables
            .iter()
            .map(TableName::sql)
            .collect::<Vec<_>>()
            .join(", ");
        let rows = self
            .client()
            .query(
                "SELECT schemaname::text, tablename::text, attnames::text[], rowfilter FROM pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(catalog_error)?;
        for r in rows {
            let table = TableName {
                schema: r.get(0),
                name: r.get(1),
            };
            let columns: Option<Vec<String>> = r.get(2);
            let filter: Option<String> = r.get(3);
            if let Some(filter) = filter {
                return Err(SourceError::setup(
                    format!("source {source}: publication {publication} sends only the rows of {table} matching WHERE {filter}: changes of other rows never reach replicas, and an update moving a row out of the filter arrives as a delete"),
                    format!("run ALTER PUBLICATION {quoted} SET TABLE {list} (no WHERE, no column lists), or give the source a publication of its own, then restart"),
                ));
            }
            let (Some(columns), Some(read)) = (columns, read.and_then(|read| read.get(&table)))
            else {
                continue;
            };
            if let Some(column) = read.iter().find(|c| !columns.contains(c)) {
                // A generated column is left out unless published (checked on its own).
                let generated = self
                    .client()
                    .query_opt(
                        "SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND a.attgenerated <> ''",
                        &[&table.schema, &table.name, column],
                    )
                    .await
                    .map_err(catalog_error)?;
                let exists = self
                    .client()
                    .query_opt(
                        "SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND NOT a.attisdropped",
                        &[&table.schema, &table.name, column],
                    )
                    .await
                    .map_err(catalog_error)?;
                if generated.is_some() || exists.is_none() {
                    continue;
                }
                return Err(SourceError::setup(
                    format!("source {source}: publication {publication} sends table {table} without column {column} (its column list leaves it out), which an event field reads: streamed events could not carry it"),
                    format!("run ALTER PUBLICATION {quoted} SET TABLE {list} (no column lists), or add {column} to the table's column list, then restart"),
                ));
            }
        }
        Ok(())
    }
}

impl Catalog {
    /// The role owning `publication` when it is not walcast's (the connecting role, or a
    /// role it is a direct member of): a publication walcast must not alter, even as a
    /// superuser (which may alter any). `None` for walcast's own, or no such publication.
    pub async fn foreign_publication_owner(
        &self,
        publication: &str,
    ) -> Result<Option<String>, SourceError> {
        let row = self
            .client()
            .query_opt(
                "SELECT pg_get_userbyid(p.pubowner)::text, \
                        p.pubowner = r.oid OR EXISTS (SELECT FROM pg_auth_members m WHERE m.member = r.oid AND m.roleid = p.pubowner) \
                 FROM pg_publication p, pg_roles r WHERE p.pubname = $1 AND r.rolname = current_user",
                &[&publication],
            )
            .await
            .map_err(catalog_error)?;
        Ok(row.and_then(|r| (!r.get::<_, bool>(1)).then(|| r.get(0))))
    }
}
