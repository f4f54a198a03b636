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
    Schema {
        subject: String,
        version: u32,
        magic: u8,
    },
    Config {
        subject: Option<String>,
        magic: u8,
    },
    DeleteSubject {
        subject: String,
        magic: u8,
    },
    ClearSubject {
        subject: String,
        magic: u8,
    },
    Mode {
        subject: Option<String>,
        magic: u8,
    },
    Noop {
        magic: u8,
    },
}

/// A registered schema version, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigValue {
    pub compatibility_level: Compatibility,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSubjectValue {
    pub subject: String,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearSubjectValue {
    pub subject: String,
}

/// One record of the topic: a key, and a value unless it is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Schema(SchemaValue),
    /// Permanent deletion of one version.
    SchemaTombstone {
        subject: String,
        version: u32,
    },
    Config {
        subject: Option<String>,
        level: Compatibility,
    },
    ConfigTombstone {
        subject: Option<String>,
    },
    DeleteSubject(DeleteSubjectValue),
    ClearSubject(ClearSubjectValue),
    /// Records walcast does not act on (MODE, NOOP): read and passed over.
    Ignored,
}

/// A record that is not in the registry's format, with why.
#[derive(Debug, thiserror::Error)]
#[error("not a schema registry record: {0}")]
pub struct BadRecord(String);

impl Record {
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
