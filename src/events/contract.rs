//! Contracts: the Avro records in `schemas/` that a service publishes, one file per event
//! type and one key record per topic. A contract is the service's public API; the table
//! behind it is not, which is why columns reach fields only through the mapping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use apache_avro::schema::Schema;

use super::avro::{Enc, Slot};

/// A parsed contract file.
#[derive(Debug, Clone)]
pub struct Contract {
    /// As written in the configuration, for messages.
    pub path: PathBuf,
    /// The parsed Avro schema.
    pub schema: Schema,
    /// The schema text registered: the file's own JSON, normalised by the registry.
    pub text: String,
    /// `namespace.name`: with the topic, the value subject (TopicRecordNameStrategy).
    pub full_name: String,
    /// The compiled fields, in the record's order (the order they are encoded in).
    pub fields: Vec<Field>,
}

/// One field of a contract, compiled.
#[derive(Debug, Clone)]
pub struct Field {
    /// Field name, as in the contract.
    pub name: String,
    /// How the field's values are encoded, and where null sits in its union.
    pub slot: Slot,
    /// The default's Avro bytes, written when no column feeds the field.
    pub default: Option<Vec<u8>>,
}

/// The key of truncate events, built into walcast: a truncate is published once on every
/// partition of its table's topic, keyed by the partition, so a compacted topic keeps the
/// newest truncate of each partition. Registered as `<topic>-walcast.TruncateKey`.
const TRUNCATE_KEY: &str = r#"{"type":"record","name":"TruncateKey","namespace":"walcast","doc":"Key of a truncate event: walcast publishes one on every partition of the topic.","fields":[{"name":"partition","type":"int"}]}"#;

impl Contract {
    /// Reads and compiles `resolved`; `path` is how the configuration names it.
    pub fn load(path: &Path, resolved: &Path) -> Result<Contract, String> {
        let at = path.display();
        let text = std::fs::read_to_string(resolved)
            .map_err(|e| format!("{at}: cannot read the contract ({e})"))?;
        Contract::parse(path, text)
    }

    /// The key record of truncate events: `walcast.TruncateKey {partition: int}`.
    pub fn truncate_key() -> Contract {
        Contract::parse(
            Path::new("(built in) walcast.TruncateKey"),
            TRUNCATE_KEY.into(),
        )
        .expect("the built-in truncate key is a valid contract")
    }

    /// Checks that this contract fits truncate events: a record without fields, since a
    /// TRUNCATE has no row to fill them from.
    pub fn check_truncate(&self) -> Result<(), String> {
        match self.fields.first() {
            None => Ok(()),
            Some(f) => Err(format!(
                "{}: a truncate contract has no fields, since a TRUNCATE has no row to fill them from; remove field {} (walcast's headers say which table, when and where)",
                self.path.display(),
                f.name
            )),
        }
    }

    /// Compiles the contract `text`; `path` names it in messages.
    fn parse(path: &Path, text: String) -> Result<Contract, String> {
        let at = path.display();
        let schema =
            Schema::parse_str(&text).map_err(|e| format!("{at}: not a valid Avro schema: {e}"))?;
        let Schema::Record(record) = &schema else {
            return Err(format!("{at}: a contract must be an Avro record"));
        };
        let names = names_of(&schema);
        let mut fields = Vec::with_capacity(record.fields.len());
        for f in &record.fields {
            let slot =
                slot_in(&f.schema, &names).map_err(|e| format!("{at}: field {}: {e}", f.name))?;
            let default = match &f.default {
                None => None,
                Some(json) => Some(default_bytes(&f.schema, json).map_err(|e| {
                    format!(
                        "{at}: field {}: the default {json} does not fit the field's type: {e}",
                        f.name
                    )
                })?),
            };
            fields.push(Field {
                name: f.name.clone(),
                slot,
                default,
            });
        }
        Ok(Contract {
            path: path.to_path_buf(),
            full_name: record.name.fullname(None),
            schema: schema.clone(),
            text,
            fields,
        })
    }

    /// The field named `name`, if the contract has one.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

fn default_bytes(schema: &Schema, json: &serde_json::Value) -> Result<Vec<u8>, String> {
    let value = apache_avro::types::Value::from(json.clone());
    // Avro: a union's default belongs to its first branch.
    let target = match schema {
        Schema::Union(u) => u.variants().first().cloned().unwrap_or(Schema::Null),
        s => s.clone(),
    };
    let resolved = value.resolve(&target).map_err(|e| e.to_string())?;
    let mut bytes = apache_avro::to_avro_datum(&target, resolved).map_err(|e| e.to_string())?;
    if matches!(schema, Schema::Union(_)) {
        bytes.insert(0, 0); // branch 0, zig-zag encoded
    }
    Ok(bytes)
}

/// A schema's named types (records, enums, fixed), by full name: what a reference to one
/// by name (`"items": ["null", "Mood"]`, after `Mood` was defined) stands for.
type Names = HashMap<String, Schema>;

fn names_of(schema: &Schema) -> Names {
    fn walk(schema: &Schema, names: &mut Names) {
        match schema {
            Schema::Record(r) => {
                names.insert(r.name.fullname(None), schema.clone());
                for f in &r.fields {
                    walk(&f.schema, names);
                }
            }
            Schema::Enum(e) => {
                names.insert(e.name.fullname(None), schema.clone());
            }
            Schema::Fixed(f) => {
                names.insert(f.name.fullname(None), schema.clone());
            }
            Schema::Decimal(d) => walk(&d.inner, names),
            Schema::Array(a) => walk(&a.items, names),
            Schema::Map(m) => walk(&m.types, names),
            Schema::Union(u) => {
                for v in u.variants() {
                    walk(v, names);
                }
            }
            _ => {}
        }
    }
    let mut names = Names::new();
    walk(schema, &mut names);
    names
}

/// How a field of Avro type `schema` is written.
pub fn slot_of(schema: &Schema) -> Result<Slot, String> {
    slot_in(schema, &names_of(schema))
}

/// [`slot_of`] for a field of a record whose named types are `names`.
fn slot_in(schema: &Schema, names: &Names) -> Result<Slot, String> {
    if let Schema::Union(u) = schema {
        let branches = u.variants();
        let null = branches.iter().position(|b| matches!(b, Schema::Null));
        return match (branches.len(), null) {
            (2, Some(n)) => {
                let value = 1 - n;
                Ok(Slot {
                    enc: enc_of(&branches[value], names)?,
                    nullable: Some((n as u32, value as u32)),
                })
            }
            _ => Err("only unions of null and one type (a nullable field) are supported".into()),
        };
    }
    Ok(Slot {
        enc: enc_of(schema, names)?,
        nullable: None,
    })
}

fn enc_of(schema: &Schema, names: &Names) -> Result<Enc, String> {
    Ok(match schema {
        Schema::Ref { name } => {
            let named = names.get(&name.fullname(None)).ok_or_else(|| {
                format!(
                    "the type {} is referenced but not defined",
                    name.fullname(None)
                )
            })?;
            return enc_of(named, names);
        }
        Schema::Boolean => Enc::Boolean,
        Schema::Int => Enc::Int,
        Schema::Long => Enc::Long,
        Schema::Float => Enc::Float,
        Schema::Double => Enc::Double,
        Schema::String | Schema::Uuid => Enc::String,
        Schema::Bytes => Enc::Bytes,
        Schema::Decimal(d) => Enc::Decimal {
            scale: d.scale as u32,
            fixed: match d.inner.as_ref() {
                Schema::Fixed(f) => Some(f.size),
                _ => None,
            },
        },
        Schema::Date => Enc::Date,
        Schema::TimeMillis => Enc::TimeMillis,
        Schema::TimeMicros => Enc::TimeMicros,
        Schema::TimestampMillis => Enc::TimestampMillis,
        Schema::TimestampMicros => Enc::TimestampMicros,
        Schema::LocalTimestampMillis => Enc::LocalTimestampMillis,
        Schema::LocalTimestampMicros => Enc::LocalTimestampMicros,
        Schema::Enum(e) => Enc::Enum(e.symbols.clone()),
        Schema::Array(a) => Enc::Array(Box::new(slot_in(&a.items, names)?)),
        other => {
            return Err(format!(
            "no column type converts to {:?}; use a type from the type map in the events module",
            apache_avro::schema::SchemaKind::from(other)
        ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{names_of, slot_in, Enc, Slot};
    use apache_avro::Schema;

    #[test]
    fn a_named_type_referenced_by_name_is_the_type_it_names() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "K", "namespace": "shop", "fields": [
                {"name": "mood", "type": {"type": "enum", "name": "Mood", "symbols": ["sad", "ok"]}},
                {"name": "moods", "type": ["null", {"type": "array", "items": ["null", "Mood"]}]},
                {"name": "again", "type": "shop.Mood"}
            ]}"#,
        )
        .unwrap();
        let Schema::Record(record) = &schema else {
            unreachable!()
        };
        let names = names_of(&schema);
        let mood = Enc::Enum(vec!["sad".into(), "ok".into()]);
        let slot = |i: usize| slot_in(&record.fields[i].schema, &names).unwrap();
        assert_eq!(
            slot(1),
            Slot {
                enc: Enc::Array(Box::new(Slot {
                    enc: mood.clone(),
                    nullable: Some((0, 1)),
                })),
                nullable: Some((0, 1)),
            }
        );
        assert_eq!(slot(2).enc, mood);
    }
}
