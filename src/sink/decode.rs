//! Records → changes: Confluent framing, Avro read in the writer's schema and projected
//! onto the subject's latest ([`project`]), and walcast's headers (`op`, `lsn`, `seq`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use connectors::{Change, Field, FieldType, Op, Value, Version};
use rdkafka::message::{Headers, Message};

use crate::lsn::Lsn;
use crate::registry::client::{Client, ClientError};
use project::Resolution;

/// Why a record did not decode.
#[derive(Debug)]
pub(super) enum DecodeError {
    /// The record itself is bad: no retry will help. The policy decides.
    Poison(String),
    /// The registry could not be asked; retry.
    Unavailable(ClientError),
    /// The registry refused the sink (credentials, TLS, an answer that is no registry's):
    /// no record is to blame, so none is rejected; the sink stops naming the fix.
    Refused(ClientError),
    /// The sink's settings do not fit the topic's contracts (a field it names is in none):
    /// no record is to blame; the sink stops naming the fix.
    Setup(String),
}

/// A registry error met while reading a record's schema (`what`): only a schema or subject
/// the registry does not know makes the record itself bad.
fn registry_error(e: ClientError, what: impl FnOnce() -> String) -> DecodeError {
    match &e {
        _ if e.is_transient() => DecodeError::Unavailable(e),
        // Confluent's "subject not found", "version not found", "schema not found": a bare
        // 404 (a proxy, a wrong path) says nothing about the record.
        ClientError::Api {
            code: 40401..=40403,
            ..
        } => DecodeError::Poison(format!("{}: {e}", what())),
        _ => DecodeError::Refused(e),
    }
}

/// Decodes records, caching schemas by (id, topic, role).
///
/// Ids are global: one schema text has one id in every subject that registered it. A
/// record is decoded in its writer's schema, which must be a registered version of the
/// subject walcast's events name by TopicRecordNameStrategy (`<topic>-key` for keys,
/// `<topic>-<record full name>` for values), and projected onto the view, that subject's
/// latest version ([`project`]).
pub(super) struct Decoder {
    registry: Arc<Client>,
    schemas: HashMap<(u32, String), Resolution>,
    runtime: tokio::runtime::Handle,
    /// (topic, key schema id, value schema id) of upserts seen so far.
    views: HashSet<(String, u32, u32)>,
    /// For each view first seen since the last `take_new_views`: the union of its fields
    /// and those of every contract on its topic.
    new_views: Vec<Vec<Field>>,
    /// Topics whose contracts were not registered when the sink started: the sink's
    /// `fields` and `columns` are checked against them at their first record.
    unchecked: Option<Unchecked>,
}

/// The sink, and its topics not checked yet ([`super::fields`]).
pub(super) struct Unchecked {
    pub(super) config: Arc<crate::config::Config>,
    pub(super) index: usize,
    pub(super) topics: Vec<String>,
}

/// Adds to `union` the fields of `fields` it lacks, by (name, type): a field with two types
/// stays there twice, for the replica to refuse with both named.
fn merge(union: &mut Vec<Field>, fields: &[Field]) {
    for f in fields {
        match union.iter_mut().find(|u| u.name == f.name && u.ty == f.ty) {
            Some(u) => u.nullable |= f.nullable,
            None => union.push(f.clone()),
        }
    }
}

impl Decoder {
    pub(super) fn new(registry: Arc<Client>, runtime: tokio::runtime::Handle) -> Self {
        Decoder {
            registry,
            schemas: HashMap::new(),
            runtime,
            views: HashSet::new(),
            new_views: Vec::new(),
            unchecked: None,
        }
    }

    /// Checks the sink's `fields` and `columns` against these topics' contracts at their
    /// first record (they had none registered when the sink started).
    pub(super) fn check_later(&mut self, unchecked: Unchecked) {
        self.unchecked = (!unchecked.topics.is_empty()).then_some(unchecked);
    }

    /// The check of [`Decoder::check_later`], for `topic`, if still due.
    fn check_fields(&mut self, topic: &str) -> Result<(), DecodeError> {
        let Some(u) = &mut self.unchecked else {
            return Ok(());
        };
        if !u.topics.iter().any(|t| t == topic) {
            return Ok(());
        }
        let sink = &u.config.sinks[u.index];
        match self
            .runtime
            .block_on(super::fields::check(&self.registry, sink, topic))
        {
            Ok(true) => {
                u.topics.retain(|t| t != topic);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(super::fields::CheckError::Unknown(message)) => Err(DecodeError::Setup(message)),
            Err(super::fields::CheckError::Registry(e)) => Err(registry_error(e, || {
                format!("listing the subjects of topic {topic}")
            })),
        }
    }

    /// The change a record carries. A compaction tombstone of walcast's (headers `op =
    /// delete`, `lsn`, `seq`) is the delete it follows, at the same version: compaction
    /// keeps the tombstone and removes the delete event, so a replica reading the topic
    /// later, or a table without a delete contract, has only the tombstone to go by.
    /// Anything else walcast did not write is poison, a null record without walcast's
    /// headers included: only a record whose schemas are registered versions of the
    /// topic's subjects is applied ([`Decoder::resolve`]).
    pub(super) fn change<M: Message>(&mut self, m: &M) -> Result<Change, DecodeError> {
        let poison = |reason: String| DecodeError::Poison(reason);
        let header = |name: &str| -> Option<String> {
            m.headers()?
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        self.check_fields(m.topic())?;
        let payload = m.payload();
        if payload.is_none() && header("op").as_deref() != Some("delete") {
            return Err(poison(
                "a tombstone (null value) without walcast's op = delete header: walcast did not write it, so it is not applied".into(),
            ));
        }
        let lsn: Lsn = header("lsn")
            .ok_or_else(|| poison("no lsn header; only walcast's events can be applied".into()))?
            .parse()
            .map_err(|e| poison(format!("lsn header: {e}")))?;
        let seq: u32 = header("seq")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| poison("no valid seq header".into()))?;
        let key_bytes = m.key().unwrap_or_default();
        let topic = m.topic();
        let version = Version { lsn: lsn.0, seq };
        if header("op").as_deref() == Some("truncate") {
            // Keyed by the built-in truncate key, not the topic's: only the value, the
            // table's truncate contract, is read (and must be readable).
            self.record(payload.unwrap_or_default(), topic, false)?;
            return Ok(Change {
                key: Vec::new(),
                op: Op::Truncate,
                version,
            });
        }
        let key = self.record(key_bytes, topic, true)?;
        let op = match header("op").as_deref() {
            Some("delete") => Op::Delete,
            Some("insert" | "update" | "snapshot") => {
                let payload = payload.ok_or_else(|| poison("an upsert without a value".into()))?;
                let fields = self.record(payload, topic, false)?;
                self.note_view(topic, key_bytes, payload)?;
                Op::Upsert(fields)
            }
            other => {
                return Err(poison(format!(
                    "op header {other:?} is not insert, update, snapshot, delete or truncate"
                )))
            }
        };
        Ok(Change { key, op, version })
    }

    /// For each view (key and value contract versions) that appeared since the last call,
    /// the union of the fields of every contract on its topic: a replica prepares its table
    /// for them before applying their changes.
    pub(super) fn take_new_views(&mut self) -> Vec<Vec<Field>> {
        std::mem::take(&mut self.new_views)
    }

    /// Forgets which views were prepared, so they are prepared again when next seen.
    pub(super) fn forget_views(&mut self) {
        self.views.clear();
        self.new_views.clear();
    }

    /// Records a new (key, value) view of an upsert; both ids are already resolved. What the
    /// replica prepares for is the union of every contract on the topic: this view's fields,
    /// then those of the latest version of each of the topic's subjects (every event type;
    /// older versions are read in the latest), so a table created now has a column for
    /// every field any event type of the topic carries.
    fn note_view(&mut self, topic: &str, key: &[u8], value: &[u8]) -> Result<(), DecodeError> {
        let id = |b: &[u8]| u32::from_be_bytes(b[1..5].try_into().expect("4 bytes"));
        let (key_id, value_id) = (id(key), id(value));
        if self.views.contains(&(topic.to_string(), key_id, value_id)) {
            return Ok(());
        }
        let mut fields = self.schemas[&(key_id, role(topic, true))].fields.clone();
        merge(
            &mut fields,
            &self.schemas[&(value_id, role(topic, false))].fields,
        );
        for other in self.topic_fields(topic)? {
            merge(&mut fields, &other);
        }
        self.views.insert((topic.to_string(), key_id, value_id));
        self.new_views.push(fields);
        Ok(())
    }

    /// The fields of the latest version of each subject of `topic` (`<topic>-key` and
    /// `<topic>-<record full name>`).
    fn topic_fields(&self, topic: &str) -> Result<Vec<Vec<Field>>, DecodeError> {
        let contracts = self
            .runtime
            .block_on(super::fields::contracts(&self.registry, topic))
            .map_err(|e| registry_error(e, || format!("listing the subjects of topic {topic}")))?;
        Ok(contracts.iter().map(|(_, s)| view_fields(s)).collect())
    }

    /// A Confluent-framed Avro record, decoded in its writer's schema and projected onto
    /// its subject's latest version.
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
        self.schemas[&cache_key]
            .read(id, &bytes[5..])
            .map_err(DecodeError::Poison)
    }

    fn resolve(&self, id: u32, topic: &str, key: bool) -> Result<Resolution, DecodeError> {
        fn fetch<T>(id: u32, r: Result<T, ClientError>) -> Result<T, DecodeError> {
            r.map_err(|e| registry_error(e, || format!("schema id {id}")))
        }
        let text = fetch(id, self.runtime.block_on(self.registry.schema(id)))?;
        let writer = Schema::parse_str(&text)
            .map_err(|e| DecodeError::Poison(format!("schema id {id}: {e}")))?;
        let subject = match &writer {
            _ if key => format!("{topic}-key"),
            Schema::Record(r) => format!("{topic}-{}", r.name.fullname(None)),
            _ => format!("{topic}-value"),
        };
        // Only a registered version of one of the topic's subjects is walcast's: a schema
        // of another subject (another topic's, anyone's) would be read into the replica as
        // NULLs for every field it lacks.
        let foreign = |why: &str| {
            DecodeError::Poison(format!(
                "the record's {} schema (id {id}) {why}, so it is none of topic {topic}'s contracts and walcast did not write it; it is not applied",
                if key { "key" } else { "value" }
            ))
        };
        if !key && !matches!(writer, Schema::Record(_)) {
            return Err(foreign("is not a record"));
        }
        let registered = self.registry.is_version_of(&subject, &text);
        if !fetch(id, self.runtime.block_on(registered))? {
            return Err(foreign(&format!(
                "is not a registered version of subject {subject}"
            )));
        }
        let latest = fetch(id, self.runtime.block_on(self.registry.latest(&subject)))?;
        Resolution::new(writer, &text, latest.as_deref()).map_err(|why| {
            DecodeError::Poison(format!(
                "the record's {} schema (id {id}, subject {subject}) {why}",
                if key { "key" } else { "value" }
            ))
        })
    }
}

impl super::runner::Decode for Decoder {
    fn change<M: Message>(&mut self, record: &M) -> Result<Change, DecodeError> {
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
/// Every Avro type has one: arrays of scalars are arrays of their item's type, maps and
/// records (and arrays of them) are JSON.
fn view_fields(schema: &Schema) -> Vec<Field> {
    let Schema::Record(record) = schema else {
        return Vec::new();
    };
    let mut names = Names::new();
    named_types(schema, &mut names);
    record
        .fields
        .iter()
        .filter_map(|f| {
            let nullable = matches!(&f.schema, Schema::Union(u) if u.variants().iter().any(|v| matches!(v, Schema::Null)));
            Some(Field {
                name: f.name.clone(),
                ty: field_type(&f.schema, &names)?,
                nullable,
            })
        })
        .collect()
}

/// The column type of a field of this schema; `None` for a field that is always null.
fn field_type(schema: &Schema, names: &Names) -> Option<FieldType> {
    Some(match resolved(schema, names) {
        Schema::Union(u) => {
            let mut types = u
                .variants()
                .iter()
                .filter(|v| !matches!(v, Schema::Null))
                .filter_map(|v| field_type(v, names));
            let first = types.next()?;
            // A union of several types has no one column type but JSON's.
            if types.any(|t| t != first) {
                FieldType::Json
            } else {
                first
            }
        }
        Schema::Boolean => FieldType::Bool,
        Schema::Int => FieldType::Int,
        Schema::Long => FieldType::Long,
        Schema::Float => FieldType::Float,
        Schema::Double => FieldType::Double,
        Schema::String | Schema::Enum(_) | Schema::BigDecimal | Schema::Duration => FieldType::Text,
        Schema::Bytes | Schema::Fixed(_) => FieldType::Bytes,
        Schema::Uuid => FieldType::Uuid,
        Schema::Decimal(d) => FieldType::Decimal {
            precision: d.precision,
            scale: d.scale,
        },
        Schema::Date => FieldType::Date,
        Schema::TimeMillis | Schema::TimeMicros => FieldType::Time,
        Schema::TimestampMillis | Schema::TimestampMicros | Schema::TimestampNanos => {
            FieldType::Timestamp
        }
        Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => FieldType::LocalTimestamp,
        Schema::Array(a) => match field_type(&a.items, names) {
            Some(FieldType::Array(_) | FieldType::Json) | None => FieldType::Json,
            Some(item) => FieldType::Array(Box::new(item)),
        },
        Schema::Map(_) | Schema::Record(_) => FieldType::Json,
        Schema::Null | Schema::Ref { .. } => return None,
    })
}

/// A schema's named types (records, enums, fixed), by full name.
type Names = HashMap<String, Schema>;

fn named_types(schema: &Schema, names: &mut Names) {
    match schema {
        Schema::Record(r) => {
            names.insert(r.name.fullname(None), schema.clone());
            for f in &r.fields {
                named_types(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.fullname(None), schema.clone());
        }
        Schema::Fixed(f) => {
            names.insert(f.name.fullname(None), schema.clone());
        }
        Schema::Decimal(d) => named_types(&d.inner, names),
        Schema::Array(a) => named_types(&a.items, names),
        Schema::Map(m) => named_types(&m.types, names),
        Schema::Union(u) => {
            for v in u.variants() {
                named_types(v, names);
            }
        }
        _ => {}
    }
}

/// A reference resolved to the type it names (itself when unknown).
fn resolved<'s>(schema: &'s Schema, names: &'s Names) -> &'s Schema {
    match schema {
        Schema::Ref { name } => names.get(&name.fullname(None)).unwrap_or(schema),
        other => other,
    }
}

/// The view a record's values are read in: each field's schema, and the named types.
struct View {
    fields: HashMap<String, Schema>,
    names: Names,
}

impl View {
    fn of(schema: &Schema) -> View {
        let mut names = Names::new();
        named_types(schema, &mut names);
        let fields = match schema {
            Schema::Record(r) => r
                .fields
                .iter()
                .map(|f| (f.name.clone(), f.schema.clone()))
                .collect(),
            _ => HashMap::new(),
        };
        View { fields, names }
    }

    /// The value of field `name`, converted by its schema.
    fn convert(&self, name: &str, v: Avro) -> Result<Value, String> {
        convert(
            v,
            self.fields.get(name).unwrap_or(&Schema::Null),
            &self.names,
        )
    }
}

/// The variant of a (possibly union, possibly referenced) schema that `fits`.
fn variant<'s>(
    schema: &'s Schema,
    names: &'s Names,
    fits: fn(&Schema) -> bool,
) -> Option<&'s Schema> {
    match resolved(schema, names) {
        Schema::Union(u) => u
            .variants()
            .iter()
            .map(|v| resolved(v, names))
            .find(|v| fits(v)),
        other => Some(other).filter(|s| fits(s)),
    }
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

/// Milliseconds as the microseconds replicas keep; a value beyond them (past ±292,000 years,
/// which only a foreign producer writes) is refused, never wrapped.
fn micros(ms: i64) -> Result<i64, String> {
    ms.checked_mul(1000).ok_or_else(|| {
        format!("timestamp of {ms} ms since 1970 is beyond the ±292,000 years a replica holds")
    })
}

/// An Avro value as a connector value, read by its (view's) schema: the schema gives a
/// decimal its scale and a record its fields' schemas.
fn convert(v: Avro, schema: &Schema, names: &Names) -> Result<Value, String> {
    Ok(match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(n) => Value::Long(n.into()),
        Avro::Long(n) => Value::Long(n),
        Avro::Float(x) => Value::Float(x),
        Avro::Double(x) => Value::Double(x),
        Avro::String(s) | Avro::Enum(_, s) => Value::Text(s),
        Avro::Uuid(u) => Value::Text(u.to_string()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Value::Bytes(b),
        Avro::Date(d) => Value::Date(d),
        Avro::TimeMillis(ms) => Value::Time(i64::from(ms) * 1000),
        Avro::TimeMicros(us) => Value::Time(us),
        Avro::TimestampMillis(ms) => Value::Timestamp(micros(ms)?),
        Avro::TimestampMicros(us) => Value::Timestamp(us),
        // Replicas keep microseconds.
        Avro::TimestampNanos(ns) => Value::Timestamp(ns.div_euclid(1000)),
        Avro::LocalTimestampMillis(ms) => Value::LocalTimestamp(micros(ms)?),
        Avro::LocalTimestampMicros(us) => Value::LocalTimestamp(us),
        Avro::LocalTimestampNanos(ns) => Value::LocalTimestamp(ns.div_euclid(1000)),
        Avro::Union(i, inner) => {
            let chosen = match resolved(schema, names) {
                Schema::Union(u) => u.variants().get(i as usize).unwrap_or(schema),
                other => other,
            };
            convert(*inner, chosen, names)?
        }
        Avro::Decimal(d) => {
            let scale = variant(schema, names, |s| matches!(s, Schema::Decimal(_)))
                .and_then(|s| match s {
                    Schema::Decimal(d) => Some(d.scale),
                    _ => None,
                })
                .ok_or("a decimal value outside a decimal type")?;
            let bytes = Vec::<u8>::try_from(&d).map_err(|e| format!("decimal: {e}"))?;
            Value::Decimal(decimal_text(&bytes, scale))
        }
        Avro::BigDecimal(d) => Value::Text(d.to_plain_string()),
        // ISO 8601, which PostgreSQL's interval reads: P1M2DT0.003S.
        Avro::Duration(d) => {
            let millis = u32::from(d.millis());
            Value::Text(format!(
                "P{}M{}DT{}.{:03}S",
                u32::from(d.months()),
                u32::from(d.days()),
                millis / 1000,
                millis % 1000
            ))
        }
        Avro::Array(items) => {
            let item = match variant(schema, names, |s| matches!(s, Schema::Array(_))) {
                Some(Schema::Array(a)) => resolved(&a.items, names),
                _ => return Err("an array value outside an array type".into()),
            };
            Value::Array(
                items
                    .into_iter()
                    .map(|v| convert(v, item, names))
                    .collect::<Result<_, _>>()?,
            )
        }
        Avro::Map(entries) => {
            let types = match variant(schema, names, |s| matches!(s, Schema::Map(_))) {
                Some(Schema::Map(m)) => resolved(&m.types, names),
                _ => return Err("a map value outside a map type".into()),
            };
            let mut entries: Vec<(String, Value)> = entries
                .into_iter()
                .map(|(k, v)| convert(v, types, names).map(|v| (k, v)))
                .collect::<Result<_, _>>()?;
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries)
        }
        Avro::Record(fields) => {
            let Some(Schema::Record(record)) =
                variant(schema, names, |s| matches!(s, Schema::Record(_)))
            else {
                return Err("a record value outside a record type".into());
            };
            Value::Object(
                fields
                    .into_iter()
                    .map(|(name, v)| {
                        let field = record
                            .lookup
                            .get(&name)
                            .map_or(&Schema::Null, |&i| &record.fields[i].schema);
                        convert(v, field, names)
                            .map(|v| (name.clone(), v))
                            .map_err(|e| format!("{name}: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

mod bounds;
mod project;

#[cfg(test)]
mod roundtrip;

#[cfg(test)]
mod tests {
    use super::{decimal_text, merge, view_fields, View};
    use apache_avro::types::Value as Avro;
    use apache_avro::Schema;
    use connectors::{Field, FieldType, Value};

    const NESTED: &str = r#"{"type": "record", "name": "E", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "tags", "type": ["null", {"type": "array", "items": "string"}]},
        {"name": "prices", "type": {"type": "array", "items": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}]}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {"name": "home", "type": ["null", {"type": "record", "name": "Address", "fields": [
            {"name": "city", "type": "string"},
            {"name": "lat", "type": {"type": "bytes", "logicalType": "decimal", "precision": 8, "scale": 5}}]}]},
        {"name": "work", "type": ["null", "Address"]},
        {"name": "homes", "type": {"type": "array", "items": "Address"}},
        {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["ON", "OFF"]}}
    ]}"#;

    #[test]
    fn a_millisecond_timestamp_beyond_microseconds_is_refused_not_wrapped() {
        assert_eq!(super::micros(-1_500), Ok(-1_500_000));
        assert_eq!(
            super::micros(i64::MAX / 10),
            Err("timestamp of 922337203685477580 ms since 1970 is beyond the ±292,000 years a replica holds".into())
        );
        let schema = Schema::TimestampMillis;
        let names = super::Names::new();
        assert!(super::convert(Avro::TimestampMillis(i64::MIN), &schema, &names).is_err());
    }

    #[test]
    fn the_union_keeps_each_field_once_and_a_retyped_one_twice() {
        let f = |name: &str, ty: FieldType, nullable: bool| Field {
            name: name.into(),
            ty,
            nullable,
        };
        let mut union = vec![
            f("id", FieldType::Long, false),
            f("a", FieldType::Text, false),
        ];
        merge(
            &mut union,
            &[
                f("id", FieldType::Long, false),
                f("a", FieldType::Text, true),
                f("b", FieldType::Date, false),
                f("id", FieldType::Text, false),
            ],
        );
        assert_eq!(
            union,
            vec![
                f("id", FieldType::Long, false),
                f("a", FieldType::Text, true),
                f("b", FieldType::Date, false),
                f("id", FieldType::Text, false),
            ]
        );
    }

    #[test]
    fn every_field_has_a_column_type() {
        let schema = Schema::parse_str(NESTED).unwrap();
        let field = |name: &str, ty: FieldType, nullable: bool| Field {
            name: name.into(),
            ty,
            nullable,
        };
        assert_eq!(
            view_fields(&schema),
            vec![
                field("id", FieldType::Long, false),
                field("tags", FieldType::Array(Box::new(FieldType::Text)), true),
                field(
                    "prices",
                    FieldType::Array(Box::new(FieldType::Decimal {
                        precision: 9,
                        scale: 2
                    })),
                    false
                ),
                field("attrs", FieldType::Json, false),
                field("home", FieldType::Json, true),
                field("work", FieldType::Json, true),
                field("homes", FieldType::Json, false),
                field("state", FieldType::Text, false),
            ]
        );
    }

    #[test]
    fn arrays_maps_and_records_decode_with_their_decimals_scaled() {
        let schema = Schema::parse_str(NESTED).unwrap();
        let view = View::of(&schema);
        let decimal = |n: &[u8]| Avro::Decimal(n.to_vec().into());
        let address = Avro::Record(vec![
            ("city".into(), Avro::String("Oslo".into())),
            ("lat".into(), decimal(&[0x5a, 0x0d, 0x18])), // 5901592
        ]);
        let city = |lat: &str| {
            Value::Object(vec![
                ("city".into(), Value::Text("Oslo".into())),
                ("lat".into(), Value::Decimal(lat.into())),
            ])
        };
        let cases = [
            (
                "tags",
                Avro::Union(1, Box::new(Avro::Array(vec![Avro::String("a".into())]))),
                Value::Array(vec![Value::Text("a".into())]),
            ),
            (
                "prices",
                Avro::Array(vec![
                    Avro::Union(1, Box::new(decimal(&[0x04, 0xe2]))),
                    Avro::Union(0, Box::new(Avro::Null)),
                ]),
                Value::Array(vec![Value::Decimal("12.50".into()), Value::Null]),
            ),
            (
                "attrs",
                Avro::Map(
                    [
                        ("b".to_string(), Avro::Long(2)),
                        ("a".to_string(), Avro::Long(1)),
                    ]
                    .into_iter()
                    .collect(),
                ),
                Value::Object(vec![
                    ("a".into(), Value::Long(1)),
                    ("b".into(), Value::Long(2)),
                ]),
            ),
            (
                "home",
                Avro::Union(1, Box::new(address.clone())),
                city("59.01592"),
            ),
            (
                "work",
                Avro::Union(1, Box::new(address.clone())),
                city("59.01592"),
            ),
            (
                "homes",
                Avro::Array(vec![address]),
                Value::Array(vec![city("59.01592")]),
            ),
            (
                "state",
                Avro::Enum(1, "OFF".into()),
                Value::Text("OFF".into()),
            ),
        ];
        for (name, avro, expected) in cases {
            assert_eq!(view.convert(name, avro).unwrap(), expected, "{name}");
        }
    }

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
