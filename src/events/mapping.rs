//! Table changes → domain events: which contract each operation publishes, which column
//! feeds each field, and the checks that make a mapping safe before any data moves.
//!
//! A [`Mapping`] is compiled against one shape of a table (its latest Relation message).
//! Compiling checks everything that can be known without data:
//! - every field without a default reads a column whose type converts to the field's type;
//! - a nullable column feeds only a nullable field;
//! - key fields read NOT NULL columns of the replica identity, so deletes can be keyed;
//! - delete contracts read only replica-identity columns, which is all a delete carries
//!   (unless REPLICA IDENTITY FULL);
//! - every `columns` entry names a field of some contract.
//!
//! Each problem is reported with the contract file, field, table and column, all at once.
//! When the table's shape changes, the mapping is compiled again: an unmapped column added
//! changes nothing, and a change that breaks a contract stops the source.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::avro::{self, convertible};
use super::contract::Contract;
use crate::source::value::Value;
use crate::source::{Change, Op, ReplicaIdentity, Row, Table};

/// What the configuration says about one table.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The source table, `schema.name`.
    pub table: crate::source::catalog::TableName,
    /// Kafka topic of the table's events.
    pub topic: String,
    /// Key record contract; every event of the table carries a key of it.
    pub key: Arc<Contract>,
    /// Contract of the event an insert publishes; `None` publishes no insert events.
    pub insert: Option<Arc<Contract>>,
    /// Contract of the event an update publishes; `None` publishes no update events (a key
    /// change still yields the old key's delete).
    pub update: Option<Arc<Contract>>,
    /// Contract of the event a delete publishes; `None` publishes none (a compacted topic
    /// still gets the tombstone).
    pub delete: Option<Arc<Contract>>,
    /// The contract of snapshot reads (`op = snapshot`); the insert contract by default.
    pub snapshot: Option<Arc<Contract>>,
    /// The contract of truncate events (a record without fields); `None`: a TRUNCATE is
    /// skipped (`skip_truncate`) or stops the source.
    pub truncate: Option<Arc<Contract>>,
    /// Event field → column, where the names differ.
    pub columns: BTreeMap<String, String>,
    /// The topic is compacted: a delete is followed by a tombstone.
    pub compacted: bool,
    /// The table's `skip_truncate`: a TRUNCATE publishes nothing, deliberately.
    pub skip_truncate: bool,
}

impl TableSpec {
    /// The contracts of this table: key first, then insert, update, delete, snapshot,
    /// truncate.
    pub fn contracts(&self) -> impl Iterator<Item = &Arc<Contract>> {
        std::iter::once(&self.key)
            .chain(self.insert.iter())
            .chain(self.update.iter())
            .chain(self.delete.iter())
            .chain(self.snapshot.iter())
            .chain(self.truncate.iter())
    }

    fn column_of<'a>(&'a self, field: &'a str) -> &'a str {
        self.columns.get(field).map_or(field, String::as_str)
    }
}

/// Registry ids of a table's contracts, in the order of [`TableSpec::contracts`]' kinds.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchemaIds {
    /// Schema id of the key subject.
    pub key: u32,
    /// Schema id of the insert contract's subject; 0 when the table has none.
    pub insert: u32,
    /// Schema id of the update contract's subject; 0 when the table has none.
    pub update: u32,
    /// Schema id of the delete contract's subject; 0 when the table has none.
    pub delete: u32,
    /// Schema id of the snapshot contract's subject (the insert contract's by default).
    pub snapshot: u32,
    /// Schema id of the truncate contract's subject; 0 when the table has none.
    pub truncate: u32,
    /// Schema id of the built-in truncate key's subject (`<topic>-walcast.TruncateKey`); 0
    /// when the table has no truncate contract.
    pub truncate_key: u32,
}

#[derive(Debug, Clone)]
enum Source {
    Column(usize),
    Default(Vec<u8>),
}

/// One contract compiled against one table shape.
#[derive(Debug, Clone)]
struct Plan {
    contract: Arc<Contract>,
    id: u32,
    /// `(source, field index)` in field order.
    fields: Vec<Source>,
}

/// A table's contracts compiled against its current shape.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The configuration this mapping was compiled from.
    pub spec: Arc<TableSpec>,
    /// The table shape it was compiled against.
    pub table: Arc<Table>,
    key: Plan,
    insert: Option<Plan>,
    update: Option<Plan>,
    delete: Option<Plan>,
    snapshot: Option<Plan>,
    /// Schema ids of the truncate contract and of the truncate key, when the table
    /// publishes truncates.
    truncate: Option<(u32, u32)>,
}

/// One record to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Confluent-framed key record.
    pub key: Vec<u8>,
    /// Confluent-framed event, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The event's record full name, or `tombstone`.
    pub event_type: String,
    /// `insert`, `update`, `delete`, `snapshot` or `truncate`: the change's operation, for
    /// the `op` header.
    pub op: &'static str,
    /// Distinguishes the events one change yields (a key change yields a delete first).
    pub part: u8,
    /// The partition the event must go to; `None`: the one its key hashes to.
    pub partition: Option<i32>,
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Key,
    Delete,
    Other,
}

impl Mapping {
    /// Compiles `spec` against `table`. `not_null` lists the table's NOT NULL columns when
    /// the catalog was asked; every problem found is returned.
    pub fn compile(
        spec: Arc<TableSpec>,
        table: Arc<Table>,
        not_null: Option<&HashSet<String>>,
        ids: SchemaIds,
    ) -> Result<Mapping, Vec<String>> {
        let mut issues = Vec::new();
        for (field, column) in &spec.columns {
            if !spec.contracts().any(|c| c.field(field).is_some()) {
                issues.push(format!(
                    "table {}: columns maps field {field} (to column {column}), but no contract of the table has a field {field}; expected one of the contracts' fields",
                    spec.table
                ));
            }
        }
        let mut plan = |contract: &Arc<Contract>, role: Role, id: u32| {
            compile_plan(&spec, &table, contract, role, id, not_null, &mut issues)
        };
        let key = plan(&spec.key, Role::Key, ids.key);
        let insert = spec
            .insert
            .as_ref()
            .map(|c| plan(c, Role::Other, ids.insert));
        let update = spec
            .update
            .as_ref()
            .map(|c| plan(c, Role::Other, ids.update));
        let delete = spec
            .delete
            .as_ref()
            .map(|c| plan(c, Role::Delete, ids.delete));
        let snapshot = spec
            .snapshot
            .as_ref()
            .map(|c| plan(c, Role::Other, ids.snapshot));
        if !issues.is_empty() {
            // The snapshot contract is usually the insert contract: report each issue once.
            let mut seen = HashSet::new();
            issues.retain(|i| seen.insert(i.clone()));
            return Err(issues);
        }
        let truncate = spec
            .truncate
            .as_ref()
            .map(|_| (ids.truncate, ids.truncate_key));
        Ok(Mapping {
            spec,
            table,
            key,
            insert,
            update,
            delete,
            snapshot,
            truncate,
        })
    }

    /// The contracts' fields that read a column of this mapping's table, and would take
    /// their default in `newer` (the same table after a change of its shape) because that
    /// column is gone: a rename or a drop. Each as a sentence naming the field, the column
    /// and the fix. Publishing the default instead would overwrite every replica's value
    /// silently. `accepted(contract file, field)` leaves out the defaults the operator let
    /// be.
    pub fn columns_lost(
        &self,
        newer: &Mapping,
        accepted: impl Fn(&str, &str) -> bool,
    ) -> Vec<String> {
        let pairs = [
            (Some(&self.key), Some(&newer.key)),
            (self.insert.as_ref(), newer.insert.as_ref()),
            (self.update.as_ref(), newer.update.as_ref()),
            (self.delete.as_ref(), newer.delete.as_ref()),
            (self.snapshot.as_ref(), newer.snapshot.as_ref()),
        ];
        let mut lost = Vec::new();
        for (old, new) in pairs {
            let (Some(old), Some(new)) = (old, new) else {
                continue;
            };
            for ((field, was), now) in old.contract.fields.iter().zip(&old.fields).zip(&new.fields)
            {
                let (Source::Column(at), Source::Default(_)) = (was, now) else {
                    continue;
                };
                let column = &self.table.columns[*at].name;
                let contract = old.contract.path.display().to_string();
                if newer.table.column_index(column).is_some() || accepted(&contract, &field.name) {
                    // Still there: the replica identity changed (a delete's old row).
                    continue;
                }
                let sentence = format!(
                    "column {}.{column}, which field {} of {} reads, is gone (renamed or dropped), and walcast never publishes a default in place of a value the column had; if it was renamed, map the field to its new name in [[source.table]] columns ({} = \"new_name\") and restart; if it was dropped on purpose, restart to publish the contract's default from now on",
                    self.spec.table,
                    field.name,
                    old.contract.path.display(),
                    field.name
                );
                if !lost.contains(&sentence) {
                    lost.push(sentence);
                }
            }
        }
        lost
    }

    /// The contracts' fields that no column feeds, so every event carries the field's
    /// default: `(contract file, field)`, once each.
    pub fn defaulted(&self) -> Vec<(String, String)> {
        let plans = [
            Some(&self.key),
            self.insert.as_ref(),
            self.update.as_ref(),
            self.snapshot.as_ref(),
        ];
        let mut out = Vec::new();
        for plan in plans.into_iter().flatten() {
            for (field, source) in plan.contract.fields.iter().zip(&plan.fields) {
                let entry = (plan.contract.path.display().to_string(), field.name.clone());
                if matches!(source, Source::Default(_)) && !out.contains(&entry) {
                    out.push(entry);
                }
            }
        }
        out
    }

    /// Whether the table publishes truncate events (it has a truncate contract).
    pub fn publishes_truncates(&self) -> bool {
        self.truncate.is_some()
    }

    /// The truncate event of one partition of the topic: keyed by the built-in truncate
    /// key (the partition), its value the truncate contract's empty record. `None` when the
    /// table has no truncate contract.
    pub fn truncate_event(&self, partition: i32) -> Option<Event> {
        let (id, key_id) = self.truncate?;
        let mut key = Vec::with_capacity(10);
        key.push(0);
        key.extend_from_slice(&key_id.to_be_bytes());
        avro::write_long(&mut key, i64::from(partition));
        let mut value = Vec::with_capacity(5);
        value.push(0);
        value.extend_from_slice(&id.to_be_bytes());
        Some(Event {
            key,
            value: Some(value),
            event_type: self.spec.truncate.as_ref()?.full_name.clone(),
            op: "truncate",
            part: 0,
            partition: Some(partition),
        })
    }

    /// Whether the table publishes snapshot reads (it has a snapshot or insert contract).
    pub fn reads_snapshots(&self) -> bool {
        self.snapshot.is_some()
    }

    /// The event of one row read by a snapshot (`op = snapshot`), in the snapshot
    /// contract; `None` when the table has none.
    pub fn snapshot_event(&self, row: &Row) -> Result<Option<Event>, String> {
        self.snapshot
            .as_ref()
            .map(|plan| self.event(plan, row, None, "snapshot", 0))
            .transpose()
    }

    /// The events of one change, in the order they must be published.
    pub fn events(&self, change: &Change) -> Result<Vec<Event>, String> {
        let mut out = Vec::new();
        match change.op {
            Op::Insert => {
                let new = change.new.as_ref().ok_or("an insert without a row")?;
                if let Some(plan) = &self.insert {
                    out.push(self.event(plan, new, None, "insert", 0)?);
                }
            }
            Op::Update => {
                let new = change.new.as_ref().ok_or("an update without a new row")?;
                let key = self.encode(&self.key, new, change.old.as_ref())?;
                // The key changed: the old key's row is gone (Debezium does the same).
                if let Some(old) = &change.old {
                    let old_key = self.encode(&self.key, old, None)?;
                    if old_key != key {
                        self.deleted(old, &mut out)?;
                    }
                }
                if let Some(plan) = &self.update {
                    out.push(self.event(plan, new, change.old.as_ref(), "update", 1)?);
                }
            }
            Op::Delete => {
                let old = change.old.as_ref().ok_or("a delete without the old key")?;
                self.deleted(old, &mut out)?;
            }
            Op::Truncate => {}
        }
        Ok(out)
    }

    fn deleted(&self, old: &Row, out: &mut Vec<Event>) -> Result<(), String> {
        if let Some(plan) = &self.delete {
            out.push(self.event(plan, old, None, "delete", 0)?);
        }
        if self.spec.compacted {
            let key = self.encode(&self.key, old, None)?;
            out.push(Event {
                key,
                value: None,
                event_type: "tombstone".into(),
                op: "delete",
                part: 2,
                partition: None,
            });
        }
        Ok(())
    }

    fn event(
        &self,
        plan: &Plan,
        row: &Row,
        old: Option<&Row>,
        op: &'static str,
        part: u8,
    ) -> Result<Event, String> {
        Ok(Event {
            key: self.encode(&self.key, row, old)?,
            value: Some(self.encode(plan, row, old)?),
            event_type: plan.contract.full_name.clone(),
            op,
            part,
            partition: None,
        })
    }

    /// Confluent framing (magic 0, schema id) and the Avro record of `plan` over `row`. An
    /// unchanged TOAST value is taken from `old` (REPLICA IDENTITY FULL) or is an error.
    fn encode(&self, plan: &Plan, row: &Row, old: Option<&Row>) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(64);
        out.push(0);
        out.extend_from_slice(&plan.id.to_be_bytes());
        for (source, field) in plan.fields.iter().zip(&plan.contract.fields) {
            match source {
                Source::Default(bytes) => out.extend_from_slice(bytes),
                Source::Column(i) => {
                    let column = &self.table.columns[*i];
                    let located = |e: String| {
                        format!(
                            "{}.{} ({}) feeding field {} of {}: {e}",
                            self.table,
                            column.name,
                            column.type_name,
                            field.name,
                            plan.contract.path.display()
                        )
                    };
                    let mut value = row
                        .value(&self.table, *i)
                        .map_err(|e| located(e.error.to_string()))?;
                    if value == Value::UnchangedToast {
                        value = match old.map(|o| o.value(&self.table, *i)) {
                            Some(Ok(v)) if v != Value::UnchangedToast && old.is_some_and(|o| !o.key_only) => v,
                            _ => return Err(located(format!(
                                "the update did not change this TOASTed value, so PostgreSQL did not send it; run ALTER TABLE {} REPLICA IDENTITY FULL so updates carry it, or leave the column out of the contract",
                                self.table
                            ))),
                        };
                    }
                    avro::encode(&field.slot, &value, &mut out).map_err(|e| located(e.0))?;
                }
            }
        }
        Ok(out)
    }
}

fn compile_plan(
    spec: &TableSpec,
    table: &Table,
    contract: &Arc<Contract>,
    role: Role,
    id: u32,
    not_null: Option<&HashSet<String>>,
    issues: &mut Vec<String>,
) -> Plan {
    let full = table.replica_identity == ReplicaIdentity::Full;
    let mut fields = Vec::with_capacity(contract.fields.len());
    for field in &contract.fields {
        let column_name = spec.column_of(&field.name);
        let at = format!("{}: field {}", contract.path.display(), field.name);
        let Some(index) = table.column_index(column_name) else {
            match (&field.default, role) {
                (Some(bytes), Role::Other | Role::Delete) => fields.push(Source::Default(bytes.clone())),
                (_, Role::Key) => issues.push(format!(
                    "{at}: key fields must read a column, and table {table} has no column {column_name}; map it in [[source.table]] columns ({} = \"column\")",
                    field.name
                )),
                (None, _) => issues.push(format!(
                    "{at} has no default, and table {table} has no column {column_name}; map the field to a column in [[source.table]] columns ({} = \"column\"), or give it a default in the contract",
                    field.name
                )),
            }
            continue;
        };
        let column = &table.columns[index];
        let col = format!("column {table}.{} ({})", column.name, column.type_name);
        if let Err(why) = convertible(&column.ty, &field.slot.enc) {
            issues.push(format!("{at} reads {col}, but {why}"));
        }
        let nullable_column = not_null.is_some_and(|nn| !nn.contains(&column.name)) && !column.key;
        if role == Role::Key {
            if field.slot.nullable.is_some() || nullable_column {
                issues.push(format!(
                    "{at}: key fields are never null, but it reads {col}{}; key fields must read NOT NULL columns and not be nullable in the contract",
                    if nullable_column { ", which is nullable" } else { "" }
                ));
            }
            if !column.key && !full {
                issues.push(format!(
                    "{at}: key field reads {col}, which is not part of the table's replica identity, so deletes could not be keyed; map key fields to the primary key columns, or run ALTER TABLE {table} REPLICA IDENTITY FULL"
                ));
            }
        } else if nullable_column && field.slot.nullable.is_none() {
            issues.push(format!(
                "{at} is not nullable, but it reads {col}, which is; make the field a union with null (\"type\": [\"null\", …], \"default\": null), or add NOT NULL to the column"
            ));
        }
        if role == Role::Delete && !column.key && !full {
            // A delete's old row holds only the replica identity.
            match &field.default {
                Some(bytes) => fields.push(Source::Default(bytes.clone())),
                None => issues.push(format!(
                    "{at}: a delete carries only the replica identity, and {col} is not part of it; drop the field from the delete contract, give it a default, or run ALTER TABLE {table} REPLICA IDENTITY FULL"
                )),
            }
            continue;
        }
        fields.push(Source::Column(index));
    }
    Plan {
        contract: contract.clone(),
        id,
        fields,
    }
}

#[cfg(test)]
mod tests;
