//! A record read in its writer's schema, projected onto the view (its subject's latest
//! version): the values exactly as written, under the view's field names.
//!
//! Avro's own resolution would read a record straight into the view, and change values on
//! the way: a writer's enum symbol the view lacks becomes the view's default symbol, and a
//! `long` the view widened to `double` becomes a double (rounded past 2^53). Here the record
//! is decoded in the writer's schema, and each view field takes:
//! - the writer's field of its name, or of one of its aliases, as written: the symbol the
//!   writer wrote, the writer's integer (the store casts it into its column, exactly where
//!   the column can hold it); `string` ↔ `bytes` are the same bytes, so they are turned
//!   into each other's form;
//! - its default, when the writer has no such field (Avro's rule: an event written before
//!   the field existed reads as its default; Avro's own resolution in apache-avro also
//!   ignores field aliases, which the compatibility check honours);
//!
//! and writer fields the view lacks are left out. Which writer a view reads at all is the
//! compatibility check's word ([`crate::registry::compat::check`]): a writer it refuses is
//! poison, so the decoder and the registry never disagree on what is readable.

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use connectors::Value;

use super::View;

/// Where each view field's value comes from.
pub(super) struct Projection {
    /// Per view field, in the view's order: its name and its source.
    fields: Vec<(String, Source)>,
}

enum Source {
    /// The writer's field at this index, and how its form changes.
    Writer(usize, Form),
    /// The view's default, read by the field's schema (or why it cannot be).
    Default(Result<Avro, String>),
}

#[derive(Clone, Copy)]
enum Form {
    AsWritten,
    /// A `string` the view reads as `bytes`.
    Bytes,
    /// `bytes` the view reads as a `string`.
    Text,
}

/// A field's type without its null branch and references: `"bytes"`, `"string"`, or other.
fn kind(schema: &Schema) -> Option<&'static str> {
    match schema {
        Schema::String => Some("string"),
        Schema::Bytes => Some("bytes"),
        Schema::Union(u) => {
            let mut kinds = u.variants().iter().filter(|v| !matches!(v, Schema::Null));
            match (kinds.next(), kinds.next()) {
                (Some(only), None) => kind(only),
                _ => None,
            }
        }
        _ => None,
    }
}

impl Projection {
    /// The projection of `writer`'s records onto `view`; both are records (the caller
    /// checked them compatible).
    pub(super) fn new(writer: &Schema, view: &Schema) -> Projection {
        let (Schema::Record(w), Schema::Record(v)) = (writer, view) else {
            return Projection { fields: Vec::new() };
        };
        let fields = v
            .fields
            .iter()
            .map(|f| {
                let aliases = f.aliases.as_deref().unwrap_or_default();
                let found = w
                    .fields
                    .iter()
                    .position(|wf| wf.name == f.name)
                    .or_else(|| w.fields.iter().position(|wf| aliases.contains(&wf.name)));
                let source = match found {
                    Some(i) => {
                        let form = match (kind(&w.fields[i].schema), kind(&f.schema)) {
                            (Some("string"), Some("bytes")) => Form::Bytes,
                            (Some("bytes"), Some("string")) => Form::Text,
                            _ => Form::AsWritten,
                        };
                        Source::Writer(i, form)
                    }
                    None => Source::Default(match &f.default {
                        Some(default) => Avro::from(default.clone())
                            .resolve_schemata(&f.schema, vec![view])
                            .map_err(|e| format!("its default {default} does not read: {e}")),
                        None => Err("the writer lacks it, and it has no default".into()),
                    }),
                };
                (f.name.clone(), source)
            })
            .collect();
        Projection { fields }
    }

    /// The view's fields of a record `written` (decoded in the writer's schema, read by
    /// `writer`); defaults are read by `view`. An error names the field.
    pub(super) fn apply(
        &self,
        written: Vec<(String, Avro)>,
        writer: &View,
        view: &View,
    ) -> Result<Vec<(String, Value)>, String> {
        let mut written: Vec<Option<(String, Avro)>> = written.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(self.fields.len());
        for (name, source) in &self.fields {
            let value = match source {
                Source::Writer(i, form) => {
                    let (written_name, v) = written
                        .get_mut(*i)
                        .and_then(Option::take)
                        .ok_or_else(|| format!("field {name}: not in the record as written"))?;
                    let v = writer
                        .convert(&written_name, v)
                        .map_err(|e| format!("field {name}: {e}"))?;
                    match (form, v) {
                        (Form::Bytes, Value::Text(t)) => Value::Bytes(t.into_bytes()),
                        (Form::Text, Value::Bytes(b)) => {
                            Value::Text(String::from_utf8(b).map_err(|_| {
                                format!("field {name}: the writer's bytes are not UTF-8, so the latest contract's string cannot hold them")
                            })?)
                        }
                        (_, v) => v,
                    }
                }
                Source::Default(default) => {
                    let v = default.clone().map_err(|e| format!("field {name}: {e}"))?;
                    view.convert(name, v)
                        .map_err(|e| format!("field {name}: {e}"))?
                }
            };
            out.push((name.clone(), value));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITER: &str = r#"{"type": "record", "name": "E", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["ON", "OFF", "PAUSED"]}},
        {"name": "amount", "type": "long"},
        {"name": "ratio", "type": ["null", "float"]},
        {"name": "nick", "type": "string"},
        {"name": "raw", "type": "string"},
        {"name": "dropped", "type": "string"}
    ]}"#;

    const VIEW: &str = r#"{"type": "record", "name": "E", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["ON", "OFF", "UNKNOWN"], "default": "UNKNOWN"}},
        {"name": "amount", "type": "double"},
        {"name": "ratio", "type": ["null", "double"]},
        {"name": "nickname", "type": "string", "aliases": ["nick"]},
        {"name": "raw", "type": "bytes"},
        {"name": "tier", "type": "string", "default": "standard"}
    ]}"#;

    fn decoded(writer: &Schema, view: &Schema) -> Result<Vec<(String, Value)>, String> {
        let record = Avro::Record(vec![
            ("id".into(), Avro::Long(7)),
            ("state".into(), Avro::Enum(2, "PAUSED".into())),
            ("amount".into(), Avro::Long(9_007_199_254_740_993)),
            ("ratio".into(), Avro::Union(1, Box::new(Avro::Float(0.1)))),
            ("nick".into(), Avro::String("ada".into())),
            ("raw".into(), Avro::String("é\\x00".into())),
            ("dropped".into(), Avro::String("gone".into())),
        ]);
        let bytes = apache_avro::to_avro_datum(writer, record).unwrap();
        let fields = match apache_avro::from_avro_datum(writer, &mut &bytes[..], None).unwrap() {
            Avro::Record(f) => f,
            other => panic!("{other:?}"),
        };
        assert!(crate::registry::compat::check(view, writer).is_empty());
        Projection::new(writer, view).apply(fields, &View::of(writer), &View::of(view))
    }

    #[test]
    fn values_are_projected_as_written_and_missing_fields_take_their_default() {
        let writer = Schema::parse_str(WRITER).unwrap();
        let view = Schema::parse_str(VIEW).unwrap();
        assert_eq!(
            decoded(&writer, &view).unwrap(),
            [
                ("id".to_string(), Value::Long(7)),
                // Resolution would have read the view's default, UNKNOWN.
                ("state".to_string(), Value::Text("PAUSED".into())),
                // Resolution would have read 9007199254740992.0.
                ("amount".to_string(), Value::Long(9_007_199_254_740_993)),
                ("ratio".to_string(), Value::Float(0.1)),
                ("nickname".to_string(), Value::Text("ada".into())),
                (
                    "raw".to_string(),
                    Value::Bytes("é\\x00".as_bytes().to_vec())
                ),
                ("tier".to_string(), Value::Text("standard".into())),
            ]
        );
    }

    #[test]
    fn bytes_the_view_reads_as_a_string_must_be_utf8() {
        let writer = Schema::parse_str(
            r#"{"type": "record", "name": "E", "fields": [{"name": "b", "type": "bytes"}]}"#,
        )
        .unwrap();
        let view = Schema::parse_str(
            r#"{"type": "record", "name": "E", "fields": [{"name": "b", "type": "string"}]}"#,
        )
        .unwrap();
        let projection = Projection::new(&writer, &view);
        let apply = |b: &[u8]| {
            projection.apply(
                vec![("b".into(), Avro::Bytes(b.to_vec()))],
                &View::of(&writer),
                &View::of(&view),
            )
        };
        assert_eq!(
            apply(b"ok").unwrap(),
            [("b".to_string(), Value::Text("ok".into()))]
        );
        assert_eq!(
            apply(&[0xff]).unwrap_err(),
            "field b: the writer's bytes are not UTF-8, so the latest contract's string cannot hold them"
        );
    }
}
