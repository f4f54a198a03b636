//! What a sink's configuration names, checked against the contracts of its topics before
//! anything connects (`walcast check`).
//!
//! A topic published by a source of the same configuration has known contracts: its key
//! record and each event type's record. A sink's `key` (or, for Redis, the placeholders of
//! `key_template`) must name the fields of the key record, every one of them (two rows
//! differing in one left out would be one replica entry) and nothing else (every change,
//! deletes included, carries only those); `fields` and the event fields of `columns` must name
//! fields of some contract of the topic. A topic no source of the file publishes is
//! checked by no one here: its contracts are known only to the registry.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::{Config, ConfigIssue, SinkKind};
use crate::events::mapping::TableSpec;

/// Every field a sink names that its topics' contracts do not have, one issue each.
/// Contracts that do not load are left to `walcast schemas check` and the source's own
/// start-up checks.
pub fn check(config: &Config) -> Vec<ConfigIssue> {
    let specs: Vec<Arc<TableSpec>> = config
        .sources
        .iter()
        .filter_map(|s| crate::events::specs(config, s).ok())
        .flatten()
        .collect();
    let mut issues = Vec::new();
    for (i, sink) in config.sinks.iter().enumerate() {
        let (key_key, key, fields, columns): (&str, Vec<String>, _, Vec<(String, String)>) =
            match &sink.kind {
                SinkKind::Postgres(t) | SinkKind::Mysql(t) => (
                    "key",
                    t.key.clone(),
                    t.fields.clone(),
                    t.columns
                        .iter()
                        .map(|(c, f)| (c.clone(), f.clone()))
                        .collect(),
                ),
                SinkKind::Redis(r) => (
                    "key_template",
                    connectors::redis::placeholders(&r.key_template),
                    r.fields.clone(),
                    Vec::new(),
                ),
            };
        for topic in &sink.common.topics {
            let Some(spec) = specs.iter().find(|s| &s.topic == topic) else {
                continue;
            };
            let key_fields: Vec<&str> = spec.key.fields.iter().map(|f| f.name.as_str()).collect();
            let all: BTreeSet<&str> = spec
                .contracts()
                .flat_map(|c| c.fields.iter().map(|f| f.name.as_str()))
                .collect();
            let name = sink.name();
            for field in &key {
                if !key_fields.contains(&field.as_str()) {
                    issues.push(ConfigIssue::new(
                        format!("sink[{i}].{key_key}"),
                        format!(
                            "sink {name}: key field {field} is not a field of topic {topic}'s key contract {} (its fields: {}); name the key contract's fields, which every change, deletes included, carries",
                            spec.key.path.display(),
                            key_fields.join(", ")
                        ),
                    ));
                }
            }
            // Left out: reported once every name given is a key field (else that is the fix).
            let named_well = key.iter().all(|k| key_fields.contains(&k.as_str()));
            for field in key_fields
                .iter()
                .filter(|f| named_well && !key.iter().any(|k| k == *f))
            {
                issues.push(ConfigIssue::new(
                    format!("sink[{i}].{key_key}"),
                    format!(
                        "sink {name}: {key_key} leaves out field {field} of topic {topic}'s key contract {} (its fields: {}): two source rows that differ only in {field} would be one replica entry, each overwriting and deleting the other; name every key field",
                        spec.key.path.display(),
                        key_fields.join(", ")
                    ),
                ));
            }
            for field in fields.iter().flatten() {
                if !all.contains(field.as_str()) {
                    issues.push(ConfigIssue::new(
                        format!("sink[{i}].fields"),
                        format!(
                            "sink {name}: field {field} is not a field of any contract of topic {topic} (fields: {}); name event fields",
                            all.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            for (column, field) in &columns {
                if !all.contains(field.as_str()) {
                    issues.push(ConfigIssue::new(
                        format!("sink[{i}].columns.{column}"),
                        format!(
                            "sink {name}: column {column} is fed by field {field}, which is not a field of any contract of topic {topic} (fields: {}); write column = \"event field\"",
                            all.iter().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
    }
    issues
}
