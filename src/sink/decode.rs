//! Records → changes: Confluent framing, Avro resolved from the writer's schema to the
//! subject's latest, and walcast's headers (`op`, `lsn`, `seq`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use connectors::{Change, Field, FieldType, Op, Value, Version};
use rdkafka::message::{Headers, Message};

use crate::lsn::Lsn;
use crate::registry::client::{Client, ClientError};

/// Why a record did not decode.
#[derive(Debug)]
pub(super) enum DecodeError {
    /// The record itself is bad: no retry will help. The policy decides.
    Poison(String),
    /// The registry could not be asked; retry.
    Unavailable(ClientError),
}

/// A writer's schema and the view its records are read in.
struct Resolution {
    writer: Schema,
    reader: Option<Schema>,
    /// The scale of each decimal field of the view.
    scales: HashMap<String, usize>,
    /// The view's fields, for replicas that create or extend their tables.
    fields: Vec<Field>,
}

/// Decodes records, caching schemas by (id, topic, role).
///
/// Ids are global: one schema text has one id in every subject that registered it. The
/// view a record is read in is the latest version of the subject its producer registered
/// it under, which walcast's events name by TopicRecordNameStrategy: `<topic>-key` for
/// keys, `<topic>-<record full name>` for values.
pub(super) struct Decoder {
    registry: Arc<Client>,
    schemas: HashMap<(u32, String), Resolution>,
    runtime: tokio::runtime::Handle,
    /// (topic, key schema id, value schema id) of upserts seen so far.
    views: HashSet<(String, u32, u32)>,
    /// The fields (key's and value's) of views first seen since the last `take_new_views`.
    new_views: Vec<Vec<Field>>,
}

impl Decoder {
    pub(super) fn new(registry: Arc<Client>, runtime: tokio::runtime::Handle) -> Self {
        Decoder {
            registry,
            schemas: HashMap::new(),
            runtime,
            views: HashSet::new(),
            new_views: Vec::new(),
        }
    }

    /// The change a record carries; `None` for a compaction tombstone, whose delete event
    /// came before it.
    pub(super) fn change<M: Message>(&mut self, m: &M) -> Result<Option<Change>, DecodeError> {
        let poison = |reason: String| DecodeError::Poison(reason);
        let header = |name: &str| -> Option<String> {
            m.headers()?
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let Some(payload) = m.payload() else {
            return Ok(None);
        };
        let lsn: Lsn = header("lsn")
            .ok_or_else(|| poison("no lsn header; only walcast's events can be applied".into()))?
            .parse()
            .map_err(|e| poison(format!("lsn header: {e}")))?;
        let seq: u32 = header("seq")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| poison("no valid seq header".into()))?;
        let key_bytes = m.key().unwrap_or_default();
        let topic = m.topic();
        let key = self.record(key_bytes, topic, true)?;
        let op = match header("op").as_deref() {
            Some("delete") => Op::Delete,
            Some("insert" | "update" | "snapshot") => {
                let fields = self.record(payload, topic, false)?;
                self.note_view(topic, key_bytes, payload);
                Op::Upsert(fields)
            }
            other => {
                return Err(poison(format!(
                    "op header {other:?} is not insert, update, snapshot or delete"
                )))
            }
        };
        Ok(Some(Change {
            key,
            op,
            version: Version { lsn: lsn.0, seq },
        }))
    }

    /// The fields of views (key and value contract versions) that appeared since the last
    /// call: a replica prepares its table for them before applying their changes.
    pub(super) fn take_new_views(&mut self) -> Vec<Vec<Field>> {
        std::mem::take(&mut self.new_views)
    }

    /// Forgets which views were prepared, so they are prepared again when next seen.
    pub(super) fn forget_views(&mut self) {
        self.views.clear();
        self.new_views.clear();
    }

    /// Records a new (key, value) view of an upsert; both ids are already resolved.
    fn note_view(&mut self, topic: &str, key: &[u8], value: &[u8]) {
        let id = |b: &[u8]| u32::from_be_bytes(b[1..5].try_into().expect("4 bytes"));
        let (key_id, value_id) = (id(key), id(value));
        if !self.views.insert((topic.to_string(), key_id, value_id)) {
            return;
        }
        let mut fields = self.schemas[&(key_id, role(topic, true))].fields.clone();
        for f in &self.schemas[&(value_id, role(topic, false))].fields {
            if !fields.iter().any(|k| k.name == f.name) {
                fields.push(f.clone());
            }
        }
        self.new_views.push(fields);
    }

    /// A Confluent-framed Avro record, read in its subject's latest view.
    fn record(
        &mut self,
        bytes: &[u8],
        topic: &str,
        key: bool,
    ) -> Result<Vec<(String, Value)>, DecodeError> {
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err(DecodeError::Poison(
                "not Confluent-framed Avro (magic byte 0, then a 4-byte schema id)".into(),
            ));
        }
        let id = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
        let cache_key = (id, role(topic, key));
        if !self.schemas.contains_key(&cache_key) {
            let resolution = self.resolve(id, topic, key)?;
            self.schemas.insert(cache_key.clone(), resolution);
        }
        let Resolution {
            writer,
            reader,
            scales,
            ..
        } = &self.schemas[&cache_key];
        let value = apache_avro::from_avro_datum(writer, &mut &bytes[5..], reader.as_ref())
            .map_err(|e| DecodeError::Poison(format!("undecodable with schema id {id}: {e}")))?;
        let Avro::Record(fields) = value else {
            return Err(DecodeError::Poison(format!(
                "schema id {id} is not a record"
            )));
        };
        fields
            .into_iter()
            .map(|(name, v)| {
                convert(v, scales.get(&name).copied())
                    .map(|v| (name.clone(), v))
                    .map_err(|e| DecodeError::Poison(format!("field {name}: {e}")))
            })
            .collect()
    }

    fn resolve(&self, id: u32, topic: &str, key: bool) -> Result<Resolution, DecodeError> {
        fn fetch<T>(id: u32, r: Result<T, ClientError>) -> Result<T, DecodeError> {
            match r {
                Ok(v) => Ok(v),
                Err(e) if e.is_transient() => Err(DecodeError::Unavailable(e)),
                Err(e) => Err(DecodeError::Poison(format!("schema id {id}: {e}"))),
            }
        }
        let text = fetch(id, self.runtime.block_on(self.registry.schema(id)))?;
        let writer = Schema::parse_str(&text)
            .map_err(|e| DecodeError::Poison(format!("schema id {id}: {e}")))?;
        let subject = match &writer {
            _ if key => format!("{topic}-key"),
            Schema::Record(r) => format!("{topic}-{}", r.name.fullname(None)),
            _ => format!("{topic}-value"),
        };
        let latest = fetch(id, self.runtime.block_on(self.registry.latest(&subject)))?;
        let reader = match latest {
            Some(latest) if latest != text => Some(Schema::parse_str(&latest).map_err(|e| {
                DecodeError::Poison(format!("latest schema of id {id}'s subject: {e}"))
            })?),
            _ => None,
        };
        let view = reader.as_ref().unwrap_or(&writer);
        let scales = decimal_scales(view);
        let fields = view_fields(view);
        Ok(Resolution {
            writer,
            reader,
            scales,
            fields,
        })
    }
}

impl super::runner::Decode for Decoder {
    fn change<M: Message>(&mut self, record: &M) -> Result<Option<Change>, DecodeError> {
        Decoder::change(self, record)
    }

    fn take_new_views(&mut self) -> Vec<Vec<Field>> {
        Decoder::take_new_views(self)
    }

    fn forget_views(&mut self) {
        Decoder::forget_views(self)
    }
}

/// The cache key of a schema's role on a topic: a record's subject depends on both.
fn role(topic: &str, key: bool) -> String {
    format!("{topic}/{}", if key { "key" } else { "value" })
}

/// A record schema's fields as replica columns: type, and nullable when a union with null.
/// Fields of a type no column takes (records, arrays, maps) are left out.
fn view_fields(schema: &Schema) -> Vec<Field> {
    let Schema::Record(record) = schema else {
        return Vec::new();
    };
    record
        .fields
        .iter()
        .filter_map(|f| {
            let (inner, nullable) = match &f.schema {
                Schema::Union(u) => (
                    u.variants().iter().find(|v| !matches!(v, Schema::Null))?,
                    u.variants().iter().any(|v| matches!(v, Schema::Null)),
                ),
                other => (other, false),
            };
            let ty = match inner {
                Schema::Boolean => FieldType::Bool,
                Schema::Int => FieldType::Int,
                Schema::Long => FieldType::Long,
                Schema::Float => FieldType::Float,
                Schema::Double => FieldType::Double,
                Schema::String | Schema::Enum(_) => FieldType::Text,
                Schema::Bytes | Schema::Fixed(_) => FieldType::Bytes,
                Schema::Uuid => FieldType::Uuid,
                Schema::Decimal(d) => FieldType::Decimal {
                    precision: d.precision,
                    scale: d.scale,
                },
                Schema::Date => FieldType::Date,
                Schema::TimeMillis | Schema::TimeMicros => FieldType::Time,
                Schema::TimestampMillis | Schema::TimestampMicros => FieldType::Timestamp,
                Schema::LocalTimestampMillis | Schema::LocalTimestampMicros => {
                    FieldType::LocalTimestamp
                }
                _ => return None,
            };
            Some(Field {
                name: f.name.clone(),
                ty,
                nullable,
            })
        })
        .collect()
}

/// The scale of each decimal field (plain or in a union) of a record schema.
fn decimal_scales(schema: &Schema) -> HashMap<String, usize> {
    let Schema::Record(record) = schema else {
        return HashMap::new();
    };
    record
        .fields
        .iter()
        .filter_map(|f| {
            let scale = match &f.schema {
                Schema::Decimal(d) => Some(d.scale),
                Schema::Union(u) => u.variants().iter().find_map(|v| match v {
                    Schema::Decimal(d) => Some(d.scale),
                    _ => None,
                }),
                _ => None,
            }?;
            Some((f.name.clone(), scale))
        })
        .collect()
}

/// An Avro decimal (big-endian two's complement unscaled value) as exact text: `-12.50`.
fn decimal_text(unscaled: &[u8], scale: usize) -> String {
    let negative = unscaled.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude: Vec<u8> = unscaled.to_vec();
    if negative {
        // Two's complement: invert, add one.
        for b in &mut magnitude {
            *b = !*b;
        }
        for b in magnitude.iter_mut().rev() {
            let (sum, carry) = b.overflowing_add(1);
            *b = sum;
            if !carry {
                break;
            }
        }
    }
    // Repeated division by 10 of the big-endian magnitude.
    let mut digits = Vec::new();
    while magnitude.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in &mut magnitude {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let mut text = String::from_utf8(digits).expect("ascii digits");
    if scale > 0 {
        text.insert(text.len() - scale, '.');
    }
    if negative {
        text.insert(0, '-');
    }
    text
}

fn convert(v: Avro, scale: Option<usize>) -> Result<Value, String> {
    Ok(match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(n) => Value::Long(n.into()),
        Avro::Long(n) => Value::Long(n),
        Avro::Float(x) => Value::Double(x.into()),
        Avro::Double(x) => Value::Double(x),
        Avro::String(s) | Avro::Enum(_, s) => Value::Text(s),
        Avro::Uuid(u) => Value::Text(u.to_string()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Value::Bytes(b),
        Avro::Date(d) => Value::Date(d),
        Avro::TimeMillis(ms) => Value::Time(i64::from(ms) * 1000),
        Avro::TimeMicros(us) => Value::Time(us),
        Avro::TimestampMillis(ms) => Value::Timestamp(ms * 1000),
        Avro::TimestampMicros(us) => Value::Timestamp(us),
        Avro::LocalTimestampMillis(ms) => Value::LocalTimestamp(ms * 1000),
        Avro::LocalTimestampMicros(us) => Value::LocalTimestamp(us),
        Avro::Union(_, inner) => convert(*inner, scale)?,
        Avro::Decimal(d) => {
            let bytes = Vec::<u8>::try_from(&d).map_err(|e| format!("decimal: {e}"))?;
            Value::Decimal(decimal_text(&bytes, scale.unwrap_or(0)))
        }
        other => {
            return Err(format!(
                "{other:?} has no replica column type in this build"
            ))
        }
    })
}

#[cfg(test)]
mod roundtrip;

#[cfg(test)]
mod tests {
    use super::decimal_text;

    #[test]
    fn decimals_are_exact_text() {
        assert_eq!(decimal_text(&[0x04, 0xe2], 2), "12.50"); // 1250
        assert_eq!(decimal_text(&[0xfb, 0x1e], 2), "-12.50"); // -1250
        assert_eq!(decimal_text(&[0x05], 3), "0.005");
        assert_eq!(decimal_text(&[0xff], 0), "-1");
        assert_eq!(decimal_text(&[0x00], 2), "0.00");
        // 2^64, beyond any machine integer.
        assert_eq!(
            decimal_text(&[0x01, 0, 0, 0, 0, 0, 0, 0, 0], 4),
            "1844674407370955.1616"
        );
    }
}
