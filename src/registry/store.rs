//! The registry's state, and the rules of every operation, with no I/O.
//!
//! The state changes only by [`Store::apply`]ing [`Record`]s: on start-up, every record of
//! the `_schemas` topic in order; at run time, the records a write plans, once the broker
//! has acknowledged them. A write is therefore two steps: `plan_*` checks the request
//! against the current state and returns the records that carry it out (or a Confluent
//! error), and the caller appends them to the log and applies them. Because the state is a
//! fold over the log, a restart rebuilds exactly the same ids, versions and configs.

use std::collections::{BTreeMap, HashMap};

use apache_avro::Schema;

use super::compat::{self, Incompatibility};
use super::error::ApiError;
use super::record::{ClearSubjectValue, DeleteSubjectValue, Record, SchemaValue};
use crate::config::Compatibility;

/// A schema parsed and in the form it is stored and compared in.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Canonical JSON form: two schemas are the same schema exactly when these are equal.
    pub canonical: String,
    /// The parsed schema, for compatibility checks.
    pub schema: Schema,
}

/// Parses a schema as a client sent it. The canonical form is apache-avro's full JSON
/// rendering (compact, with defaults, aliases and logical types kept, which compatibility
/// depends on), so the same schema written with other whitespace or key order is the same.
pub fn parse(text: &str) -> Result<Parsed, ApiError> {
    let schema = Schema::parse_str(text)
        .map_err(|e| ApiError::invalid_schema(format!("Invalid schema {text}: {e}")))?;
    let canonical = serde_json::to_string(&schema)
        .map_err(|e| ApiError::invalid_schema(format!("Invalid schema {text}: {e}")))?;
    Ok(Parsed { canonical, schema })
}

/// One version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// The schema id this version registers.
    pub id: u32,
    /// Soft-deleted: hidden unless deleted versions are asked for.
    pub deleted: bool,
}

/// A registered version, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The subject.
    pub subject: String,
    /// The version number within the subject, from 1.
    pub version: u32,
    /// The global schema id.
    pub id: u32,
    /// The schema, in canonical form.
    pub schema: String,
}

/// Which versions a request may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Soft-deleted versions are left out.
    Hide,
    /// Soft-deleted versions are shown too (`?deleted=true`).
    Include,
}

/// Everything the registry knows.
#[derive(Debug, Default)]
pub struct Store {
    subjects: BTreeMap<String, BTreeMap<u32, Version>>,
    schemas: BTreeMap<u32, Parsed>,
    ids: HashMap<String, u32>,
    global: Option<Compatibility>,
    subject_config: HashMap<String, Compatibility>,
}

impl Store {
    /// Applies one record of the log. Unknown or stale records are harmless: applying the
    /// whole log in order always yields the state its writer had.
    pub fn apply(&mut self, record: &Record) -> Result<(), ApiError> {
        match record {
            Record::Schema(v) => {
                if !self.schemas.contains_key(&v.id) {
                    let parsed = parse(&v.schema)?;
                    self.ids.insert(parsed.canonical.clone(), v.id);
                    self.schemas.insert(v.id, parsed);
                }
                self.subjects.entry(v.subject.clone()).or_default().insert(
                    v.version,
                    Version {
                        id: v.id,
                        deleted: v.deleted,
                    },
                );
            }
            Record::SchemaTombstone { subject, version } => {
                if let Some(versions) = self.subjects.get_mut(subject) {
                    versions.remove(version);
                    if versions.is_empty() {
                        self.subjects.remove(subject);
                    }
                }
            }
            Record::DeleteSubject(DeleteSubjectValue { subject, version }) => {
                if let Some(versions) = self.subjects.get_mut(subject) {
                    for (_, v) in versions.range_mut(..=*version) {
                        v.deleted = true;
                    }
                }
            }
            Record::ClearSubject(ClearSubjectValue { subject }) => {
                if let Some(versions) = self.subjects.get_mut(subject) {
                    versions.retain(|_, v| !v.deleted);
                    if versions.is_empty() {
                        self.subjects.remove(subject);
                    }
                }
            }
            Record::Config {
                subject: None,
                level,
            } => self.global = Some(*level),
            Record::Config {
                subject: Some(s),
                level,
            } => {
                self.subject_config.insert(s.clone(), *level);
            }
            Record::ConfigTombstone { subject: None } => self.global = None,
            Record::ConfigTombstone { subject: Some(s) } => {
                self.subject_config.remove(s);
            }
            Record::Ignored => {}
        }
        Ok(())
    }

    // ------------------------------------------------------------------ reads

    /// The subjects that have a visible version, or every subject known with `Deleted::Include`.
    pub fn subjects(&self, deleted: Deleted) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, vs)| deleted == Deleted::Include || vs.values().any(|v| !v.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// A subject's versions; 40401 when it has none visible.
    pub fn versions(&self, subject: &str, deleted: Deleted) -> Result<Vec<u32>, ApiError> {
        let versions: Vec<u32> = self
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(_, v)| deleted == Deleted::Include || !v.deleted)
            .map(|(n, _)| *n)
            .collect();
        if versions.is_empty() {
            return Err(ApiError::subject_not_found(subject));
        }
        Ok(versions)
    }

    /// `version` is a number, `latest` or `-1`.
    pub fn version(
        &self,
        subject: &str,
        version: &str,
        deleted: Deleted,
    ) -> Result<Registered, ApiError> {
        let versions = self.versions(subject, deleted)?;
        let number = match version {
            "latest" | "-1" => *versions.last().expect("non-empty"),
            v => match v.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(ApiError::invalid_version(v)),
            },
        };
        if !versions.contains(&number) {
            return Err(ApiError::version_not_found(subject, number));
        }
        let id = self.subjects[subject][&number].id;
        Ok(self.registered(subject, number, id))
    }

    fn registered(&self, subject: &str, version: u32, id: u32) -> Registered {
        Registered {
            subject: subject.into(),
            version,
            id,
            schema: self.schemas[&id].canonical.clone(),
        }
    }

    /// The schema registered under `id`; 40403 when there is none.
    pub fn schema_by_id(&self, id: u32) -> Result<&Parsed, ApiError> {
        self.schemas.get(&id).ok_or(ApiError::schema_not_found())
    }

    /// Every `(subject, version)` that uses schema `id`, deleted ones when asked.
    pub fn usages(&self, id: u32, deleted: Deleted) -> Result<Vec<(String, u32)>, ApiError> {
        self.schema_by_id(id)?;
        Ok(self
            .subjects
            .iter()
            .flat_map(|(s, vs)| vs.iter().map(move |(n, v)| (s, n, v)))
            .filter(|(_, _, v)| v.id == id && (deleted == Deleted::Include || !v.deleted))
            .map(|(s, n, _)| (s.clone(), *n))
            .collect())
    }

    /// The version of `subject` whose schema is `text`; 40401 or 40403 when none.
    pub fn lookup(
        &self,
        subject: &str,
        text: &str,
        deleted: Deleted,
    ) -> Result<Registered, ApiError> {
        self.lookup_parsed(subject, &parse(text)?, deleted)
    }

    fn lookup_parsed(
        &self,
        subject: &str,
        parsed: &Parsed,
        deleted: Deleted,
    ) -> Result<Registered, ApiError> {
        let versions = self.versions(subject, deleted)?;
        let id = self
            .ids
            .get(&parsed.canonical)
            .ok_or(ApiError::schema_not_found())?;
        versions
            .iter()
            .rev()
            .find(|n| self.subjects[subject][n].id == *id)
            .map(|n| self.registered(subject, *n, *id))
            .ok_or(ApiError::schema_not_found())
    }

    /// The global compatibility level; BACKWARD, the registry default, until one is set.
    pub fn global_level(&self) -> Compatibility {
        self.global.unwrap_or(Compatibility::Backward)
    }

    /// The level set on `subject` itself, `None` when it follows the global one.
    pub fn subject_level(&self, subject: &str) -> Option<Compatibility> {
        self.subject_config.get(subject).copied()
    }

    /// The level that governs `subject`: its own, else the global one.
    pub fn level(&self, subject: &str) -> Compatibility {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    /// Every incompatibility of `candidate` with the versions `level` compares it to, each
    /// labelled with the version it breaks; against `version` only when one is given.
    pub fn incompatibilities(
        &self,
        subject: &str,
        candidate: &Parsed,
        level: Compatibility,
        version: Option<u32>,
    ) -> Vec<(u32, Incompatibility)> {
        use Compatibility as C;
        let live: Vec<(u32, u32)> = self
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.deleted)
            .map(|(n, v)| (*n, v.id))
            .collect();
        let against: Vec<(u32, u32)> = match (version, level) {
            (_, C::None) => vec![],
            (Some(n), _) => live.into_iter().filter(|(v, _)| *v == n).collect(),
            (None, C::Backward | C::Forward | C::Full) => {
                live.last().copied().into_iter().collect()
            }
            (None, _) => live,
        };
        let (backward, forward) = match level {
            C::Backward | C::BackwardTransitive => (true, false),
            C::Forward | C::ForwardTransitive => (false, true),
            C::Full | C::FullTransitive => (true, true),
            C::None => (false, false),
        };
        let mut found = Vec::new();
        for (number, id) in against {
            let old = &self.schemas[&id].schema;
            if backward {
                found.extend(
                    compat::check(&candidate.schema, old)
                        .into_iter()
                        .map(|i| (number, i)),
                );
            }
            if forward {
                found.extend(
                    compat::check(old, &candidate.schema)
                        .into_iter()
                        .map(|i| (number, i)),
                );
            }
        }
        found
    }

    // ------------------------------------------------------------------ writes (plans)

    /// Registers `text` under `subject`: the existing version when the subject already has
    /// this schema, else a new version after the compatibility check. Returns the id and
    /// the records to append (none when nothing changes).
    pub fn plan_register(&self, subject: &str, text: &str) -> Result<(u32, Vec<Record>), ApiError> {
        let parsed = parse(text)?;
        if let Ok(existing) = self.lookup_parsed(subject, &parsed, Deleted::Hide) {
            return Ok((existing.id, vec![]));
        }
        let level = self.level(subject);
        let broken = self.incompatibilities(subject, &parsed, level, None);
        if !broken.is_empty() {
            return Err(ApiError::incompatible(subject, level, &broken));
        }
        let id = match self.ids.get(&parsed.canonical) {
            Some(id) => *id,
            None => self.schemas.keys().next_back().map_or(1, |max| max + 1),
        };
        let version = self
            .subjects
            .get(subject)
            .and_then(|vs| vs.keys().next_back())
            .map_or(1, |max| max + 1);
        let record = Record::Schema(SchemaValue {
            subject: subject.into(),
            version,
            id,
            schema: parsed.canonical,
            schema_type: None,
            deleted: false,
        });
        Ok((id, vec![record]))
    }

    /// Deletes a whole subject: soft (versions hidden, ids kept) or, once soft-deleted,
    /// permanent. Returns the versions deleted.
    pub fn plan_delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<u32>, Vec<Record>), ApiError> {
        let all = self.versions(subject, Deleted::Include)?;
        let live = self.versions(subject, Deleted::Hide).unwrap_or_default();
        if permanent {
            if !live.is_empty() {
                return Err(ApiError::subject_not_soft_deleted(subject));
            }
            let records = all
                .iter()
                .map(|v| Record::SchemaTombstone {
                    subject: subject.into(),
                    version: *v,
                })
                .chain(std::iter::once(Record::ConfigTombstone {
                    subject: Some(subject.into()),
                }))
                .collect();
            return Ok((all, records));
        }
        if live.is_empty() {
            return Err(ApiError::subject_soft_deleted(subject));
        }
        let mut records: Vec<Record> = live
            .iter()
            .map(|v| self.deleted_version(subject, *v))
            .collect();
        records.push(Record::DeleteSubject(DeleteSubjectValue {
            subject: subject.into(),
            version: *live.last().expect("non-empty"),
        }));
        Ok((live, records))
    }

    /// Deletes one version (`latest` allowed): soft, or permanent once soft-deleted.
    pub fn plan_delete_version(
        &self,
        subject: &str,
        version: &str,
        permanent: bool,
    ) -> Result<(u32, Vec<Record>), ApiError> {
        let found = self.version(subject, version, Deleted::Include)?;
        let deleted = self.subjects[subject][&found.version].deleted;
        if permanent {
            if !deleted {
                return Err(ApiError::version_not_soft_deleted(subject, found.version));
            }
            return Ok((
                found.version,
                vec![Record::SchemaTombstone {
                    subject: subject.into(),
                    version: found.version,
                }],
            ));
        }
        if deleted {
            // `latest` names the newest live version; a number may name a deleted one.
            return Err(ApiError::version_soft_deleted(subject, found.version));
        }
        Ok((
            found.version,
            vec![self.deleted_version(subject, found.version)],
        ))
    }

    fn deleted_version(&self, subject: &str, version: u32) -> Record {
        let id = self.subjects[subject][&version].id;
        Record::Schema(SchemaValue {
            subject: subject.into(),
            version,
            id,
            schema: self.schemas[&id].canonical.clone(),
            schema_type: None,
            deleted: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(store: &mut Store, records: Vec<Record>) {
        for r in &records {
            store.apply(r).unwrap();
        }
    }

    fn register(store: &mut Store, subject: &str, text: &str) -> Result<u32, ApiError> {
        let (id, records) = store.plan_register(subject, text)?;
        applied(store, records);
        Ok(id)
    }

    const V1: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"},{"name":"email","type":["null","string"],"default":null}]}"#;

    #[test]
    fn the_same_schema_keeps_its_id_across_subjects_and_spellings() {
        let mut store = Store::default();
        let id = register(&mut store, "a-value", V1).unwrap();
        let respaced = V1.replace(',', ", ");
        assert_eq!(register(&mut store, "a-value", &respaced).unwrap(), id);
        assert_eq!(store.versions("a-value", Deleted::Hide).unwrap(), [1]);
        assert_eq!(register(&mut store, "b-value", V1).unwrap(), id);
        assert_eq!(register(&mut store, "a-value", V2).unwrap(), id + 1);
        assert_eq!(
            store
                .version("a-value", "latest", Deleted::Hide)
                .unwrap()
                .version,
            2
        );
    }

    #[test]
    fn versions_are_not_reused_after_a_soft_delete() {
        let mut store = Store::default();
        register(&mut store, "s", V1).unwrap();
        let (deleted, records) = store.plan_delete_subject("s", false).unwrap();
        assert_eq!(deleted, [1]);
        applied(&mut store, records);
        assert!(store.subjects(Deleted::Hide).is_empty());
        assert_eq!(store.subjects(Deleted::Include), ["s"]);
        assert_eq!(
            store.plan_delete_subject("s", false).unwrap_err().code,
            40404
        );
        register(&mut store, "s", V1).unwrap();
        assert_eq!(store.versions("s", Deleted::Include).unwrap(), [1, 2]);
    }

    #[test]
    fn permanent_deletion_needs_a_soft_deletion_first() {
        let mut store = Store::default();
        register(&mut store, "s", V1).unwrap();
        assert_eq!(
            store.plan_delete_version("s", "1", true).unwrap_err().code,
            40407
        );
        let (_, records) = store.plan_delete_version("s", "1", false).unwrap();
        applied(&mut store, records);
        assert_eq!(
            store.plan_delete_version("s", "1", false).unwrap_err().code,
            40406
        );
        let (_, records) = store.plan_delete_version("s", "1", true).unwrap();
        applied(&mut store, records);
        assert_eq!(
            store.versions("s", Deleted::Include).unwrap_err().code,
            40401
        );
        // The id still resolves: data written with it stays readable.
        assert!(store.schema_by_id(1).is_ok());
    }

    #[test]
    fn an_incompatible_schema_is_refused_with_every_reason() {
        let mut store = Store::default();
        register(&mut store, "s", V1).unwrap();
        let required = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"int"},{"name":"email","type":"string"}]}"#;
        let err = register(&mut store, "s", required).unwrap_err();
        assert_eq!((err.status, err.code), (409, 409));
        assert!(
            err.message.contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
            "{}",
            err.message
        );
        assert!(err.message.contains("TYPE_MISMATCH"), "{}", err.message);
        store
            .apply(&Record::Config {
                subject: Some("s".into()),
                level: Compatibility::None,
            })
            .unwrap();
        assert_eq!(register(&mut store, "s", required).unwrap(), 2);
    }
}
