//! The records of the `_schemas` topic, in the format Confluent Schema Registry writes, so a
//! Confluent or Karapace registry pointed at the same topic reads walcast's history (and
//! walcast reads theirs).
//!
//! Keys and values are JSON. The key says what a record is about; a null value (a tombstone)
//! removes it, which is also what lets the topic be compacted:
//!
//! | keytype | key fields | value |
//! |---|---|---|
//! | `SCHEMA` | subject, version, `magic: 1` | `{subject, version, id, schema, deleted}` |
//! | `CONFIG` | subject (null: global), `magic: 0` | `{compatibilityLevel}` |
//! | `DELETE_SUBJECT` | subject, `magic: 0` | `{subject, version}`: every version up to it is soft-deleted |
//! | `CLEAR_SUBJECT` | subject, `magic: 0` | `{subject}`: soft-deleted versions are gone |
//! | `MODE` | subject, `magic: 0` | `{mode}` |
//! | `NOOP` | `magic: 0` | none: a marker to read up to |

use serde::{Deserialize, Serialize};

use crate::config::Compatibility;

/// What a record is about: its Kafka key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Key {
    /// `SCHEMA`: one version of a subject.
    Schema {
        /// The subject.
        subject: String,
        /// The version number, from 1.
        version: u32,
        /// Always 1 for this key type.
        magic: u8,
    },
    /// `CONFIG`: the compatibility level of a subject, or the global one.
    Config {
        /// The subject, or `None` for the global level.
        subject: Option<String>,
        /// Always 0.
        magic: u8,
    },
    /// `DELETE_SUBJECT`: a subject's versions were soft-deleted.
    DeleteSubject {
        /// The subject.
        subject: String,
        /// Always 0.
        magic: u8,
    },
    /// `CLEAR_SUBJECT`: a subject's soft-deleted versions were removed for good.
    ClearSubject {
        /// The subject.
        subject: String,
        /// Always 0.
        magic: u8,
    },
    /// `MODE`: a subject's or the global mode (READWRITE, IMPORT, …); walcast ignores it.
    Mode {
        /// The subject, or `None` for the global mode.
        subject: Option<String>,
        /// Always 0.
        magic: u8,
    },
    /// `NOOP`: a marker written to know how far the topic has been read.
    Noop {
        /// Always 0.
        magic: u8,
    },
}

/// A registered schema version, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaValue {
    /// The subject the version belongs to.
    pub subject: String,
    /// The version number within the subject, from 1.
    pub version: u32,
    /// The schema id, global across subjects; the same schema (canonical form) always has the
    /// same id.
    pub id: u32,
    /// The schema text.
    pub schema: String,
    /// `AVRO` when absent; the only type walcast registers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_type: Option<String>,
    /// Soft-deleted: hidden from lookups by default, its id still resolves.
    #[serde(default)]
    pub deleted: bool,
}

/// The value of a `CONFIG` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigValue {
    /// The subject's (or the global) compatibility level.
    pub compatibility_level: Compatibility,
}

/// The value of a `DELETE_SUBJECT` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSubjectValue {
    /// The subject.
    pub subject: String,
    /// Every version up to and including this one is soft-deleted.
    pub version: u32,
}

/// The value of a `CLEAR_SUBJECT` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearSubjectValue {
    /// The subject whose soft-deleted versions are removed.
    pub subject: String,
}

/// One record of the topic: a key, and a value unless it is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A schema version registered or updated (e.g. soft-deleted).
    Schema(SchemaValue),
    /// Permanent deletion of one version.
    SchemaTombstone {
        /// The subject.
        subject: String,
        /// The version removed.
        version: u32,
    },
    /// A compatibility level set.
    Config {
        /// The subject, or `None` for the global level.
        subject: Option<String>,
        /// The new level.
        level: Compatibility,
    },
    /// A compatibility level removed; the subject falls back to the global one.
    ConfigTombstone {
        /// The subject, or `None` for the global level.
        subject: Option<String>,
    },
    /// A subject's versions soft-deleted.
    DeleteSubject(DeleteSubjectValue),
    /// A subject's soft-deleted versions removed for good.
    ClearSubject(ClearSubjectValue),
    /// Records walcast does not act on (MODE, NOOP): read and passed over.
    Ignored,
}

/// A record that is not in the registry's format, with why.
#[derive(Debug, thiserror::Error)]
#[error("not a schema registry record: {0}")]
pub struct BadRecord(String);

impl Record {
    /// The `SCHEMA` key of `subject`'s `version`.
    pub fn schema_key(subject: &str, version: u32) -> Key {
        Key::Schema {
            subject: subject.into(),
            version,
            magic: 1,
        }
    }

    /// The Kafka key and value bytes of this record.
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let json = |v: &dyn erased::Json| v.to_vec();
        match self {
            Record::Schema(v) => (
                json(&Self::schema_key(&v.subject, v.version)),
                Some(json(v)),
            ),
            Record::SchemaTombstone { subject, version } => {
                (json(&Self::schema_key(subject, *version)), None)
            }
            Record::Config { subject, level } => (
                json(&Key::Config {
                    subject: subject.clone(),
                    magic: 0,
                }),
                Some(json(&ConfigValue {
                    compatibility_level: *level,
                })),
            ),
            Record::ConfigTombstone { subject } => (
                json(&Key::Config {
                    subject: subject.clone(),
                    magic: 0,
                }),
                None,
            ),
            Record::DeleteSubject(v) => (
                json(&Key::DeleteSubject {
                    subject: v.subject.clone(),
                    magic: 0,
                }),
                Some(json(v)),
            ),
            Record::ClearSubject(v) => (
                json(&Key::ClearSubject {
                    subject: v.subject.clone(),
                    magic: 0,
                }),
                Some(json(v)),
            ),
            Record::Ignored => (json(&Key::Noop { magic: 0 }), None),
        }
    }

    /// Reads a record from its Kafka key and value.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Record, BadRecord> {
        let bad = |what: &str, e: serde_json::Error| BadRecord(format!("{what}: {e}"));
        // Key types of newer registries (contexts, …) are read and passed over.
        let raw: serde_json::Value = serde_json::from_slice(key).map_err(|e| bad("key", e))?;
        const KNOWN: [&str; 6] = [
            "SCHEMA",
            "CONFIG",
            "DELETE_SUBJECT",
            "CLEAR_SUBJECT",
            "MODE",
            "NOOP",
        ];
        match raw.get("keytype").and_then(|k| k.as_str()) {
            Some(k) if KNOWN.contains(&k) => {}
            Some(_) => return Ok(Record::Ignored),
            None => return Err(BadRecord("key: no keytype".into())),
        }
        let key: Key = serde_json::from_value(raw).map_err(|e| bad("key", e))?;
        let Some(value) = value else {
            return Ok(match key {
                Key::Schema {
                    subject, version, ..
                } => Record::SchemaTombstone { subject, version },
                Key::Config { subject, .. } => Record::ConfigTombstone { subject },
                _ => Record::Ignored,
            });
        };
        Ok(match key {
            Key::Schema { .. } => {
                Record::Schema(serde_json::from_slice(value).map_err(|e| bad("schema value", e))?)
            }
            Key::Config { subject, .. } => {
                let v: ConfigValue =
                    serde_json::from_slice(value).map_err(|e| bad("config value", e))?;
                Record::Config {
                    subject,
                    level: v.compatibility_level,
                }
            }
            Key::DeleteSubject { .. } => Record::DeleteSubject(
                serde_json::from_slice(value).map_err(|e| bad("delete-subject value", e))?,
            ),
            Key::ClearSubject { .. } => Record::ClearSubject(
                serde_json::from_slice(value).map_err(|e| bad("clear-subject value", e))?,
            ),
            Key::Mode { .. } | Key::Noop { .. } => Record::Ignored,
        })
    }
}

/// `serde_json::to_vec` over the few types above, without generic plumbing at call sites.
mod erased {
    pub(super) trait Json {
        fn to_vec(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_vec(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("registry records always serialize")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_confluents() {
        let record = Record::Schema(SchemaValue {
            subject: "users.user-value".into(),
            version: 2,
            id: 7,
            schema: "\"string\"".into(),
            schema_type: None,
            deleted: false,
        });
        let (key, value) = record.encode();
        assert_eq!(
            String::from_utf8(key.clone()).unwrap(),
            r#"{"keytype":"SCHEMA","subject":"users.user-value","version":2,"magic":1}"#
        );
        assert_eq!(
            String::from_utf8(value.clone().unwrap()).unwrap(),
            r#"{"subject":"users.user-value","version":2,"id":7,"schema":"\"string\"","deleted":false}"#
        );
        assert_eq!(Record::decode(&key, value.as_deref()).unwrap(), record);
        assert_eq!(
            Record::decode(&key, None).unwrap(),
            Record::SchemaTombstone {
                subject: "users.user-value".into(),
                version: 2
            }
        );
    }

    #[test]
    fn global_config_has_a_null_subject() {
        let record = Record::Config {
            subject: None,
            level: Compatibility::FullTransitive,
        };
        let (key, value) = record.encode();
        assert_eq!(
            String::from_utf8(key).unwrap(),
            r#"{"keytype":"CONFIG","subject":null,"magic":0}"#
        );
        assert_eq!(
            String::from_utf8(value.unwrap()).unwrap(),
            r#"{"compatibilityLevel":"FULL_TRANSITIVE"}"#
        );
    }

    #[test]
    fn records_written_by_confluent_are_read() {
        let key = br#"{"keytype":"DELETE_SUBJECT","subject":"t-value","magic":0}"#;
        let value = br#"{"subject":"t-value","version":3}"#;
        assert_eq!(
            Record::decode(key, Some(value)).unwrap(),
            Record::DeleteSubject(DeleteSubjectValue {
                subject: "t-value".into(),
                version: 3
            })
        );
        let noop = br#"{"keytype":"NOOP","magic":0}"#;
        assert_eq!(Record::decode(noop, None).unwrap(), Record::Ignored);
        assert!(Record::decode(b"not json", None).is_err());
    }
}
