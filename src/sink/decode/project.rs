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
use connectors::{Field, Value};

use super::{bounds, view_fields, View};

/// A writer's schema and the view its records are projected onto (this module).
pub(super) struct Resolution {
    writer: Schema,
    /// How the writer's fields are projected onto the view, when the view is not the
    /// writer's schema itself.
    projection: Option<Projection>,
    /// Each field's schema in the writer's schema, and its named types: what the values as
    /// written convert by (a decimal's scale, a map's or record's layout).
    written: View,
    /// The same of the view: what defaults convert by.
    view: View,
    /// The view's fields, for replicas that create or extend their tables.
    pub(super) fields: Vec<Field>,
}

impl Resolution {
    /// How records of `writer` (whose text is `text`) are read, given the latest version
    /// of their subject (`None`: the subject has none). `Err` says why the latest version
    /// cannot read them, as the compatibility check finds.
    pub(super) fn new(
        writer: Schema,
        text: &str,
        latest: Option<&str>,
    ) -> Result<Resolution, String> {
        let reader = match latest {
            Some(latest) if latest != text => Some(Schema::parse_str(latest).map_err(|e| {
                format!("cannot be read: the latest version of its subject does not parse ({e})")
            })?),
            _ => None,
        };
        if let Some(reader) = &reader {
            // The registry's own rules decide what the view can read.
            let problems = crate::registry::compat::check(reader, &writer);
            if !problems.is_empty() {
                let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "cannot be read in the latest version of its subject ({}); register the contracts compatibly",
                    problems.join("; ")
                ));
            }
        }
        let view = reader.as_ref().unwrap_or(&writer);
        let fields = view_fields(view);
        let view_schema = View::of(view);
        let written = View::of(&writer);
        let projection = reader.map(|r| Projection::new(&writer, &r));
        Ok(Resolution {
            writer,
            projection,
            written,
            view: view_schema,
            fields,
        })
    }

    /// A record's Avro body (after the framing): decoded in the writer's schema, the values
    /// exactly as written, then projected onto the view. `id` is the schema's, for errors.
    pub(super) fn read(&self, id: u32, mut body: &[u8]) -> Result<Vec<(String, Value)>, String> {
        bounds::check(&self.writer, &self.written.names, body)
            .map_err(|e| format!("undecodable with schema id {id}: {e}"))?;
        let value = apache_avro::from_avro_datum(&self.writer, &mut body, None)
            .map_err(|e| format!("undecodable with schema id {id}: {e}"))?;
        let Avro::Record(fields) = value else {
            return Err(format!("schema id {id} is not a record"));
        };
        match &self.projection {
            None => fields
                .into_iter()
                .map(|(name, v)| {
                    self.written
                        .convert(&name, v)
                        .map(|v| (name.clone(), v))
                        .map_err(|e| format!("field {name}: {e}"))
                })
                .collect(),
            Some(projection) => projection.apply(fields, &self.written, &self.view),
        }
    }
}

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

    /// Version 1 of a contract, and version 2, its subject's latest: an enum that swapped a
    /// symbol for a default one, a `long` widened to `double`, a field added with a default.
    const V1: &str = r#"{"type": "record", "name": "E", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["ON", "OFF", "PAUSED"]}},
        {"name": "amount", "type": "long"}
    ]}"#;
    const V2: &str = r#"{"type": "record", "name": "E", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["ON", "OFF", "UNKNOWN"], "default": "UNKNOWN"}},
        {"name": "amount", "type": "double"},
        {"name": "tier", "type": "string", "default": "standard"}
    ]}"#;

    fn v1_record() -> Vec<u8> {
        let writer = Schema::parse_str(V1).unwrap();
        apache_avro::to_avro_datum(
            &writer,
            Avro::Record(vec![
                ("id".into(), Avro::Long(7)),
                ("state".into(), Avro::Enum(2, "PAUSED".into())),
                ("amount".into(), Avro::Long(9_007_199_254_740_993)),
            ]),
        )
        .unwrap()
    }

    #[test]
    fn a_record_is_read_in_its_writers_schema_with_its_values_as_written() {
        let body = v1_record();
        // What Avro's resolution into the latest version reads: other values.
        let resolved = apache_avro::from_avro_datum(
            &Schema::parse_str(V1).unwrap(),
            &mut &body[..],
            Some(&Schema::parse_str(V2).unwrap()),
        )
        .unwrap();
        let Avro::Record(resolved) = resolved else {
            panic!("{resolved:?}")
        };
        assert_eq!(resolved[1].1, Avro::Enum(2, "UNKNOWN".into()));
        assert_eq!(resolved[2].1, Avro::Double(9_007_199_254_740_992.0));

        let resolution = Resolution::new(Schema::parse_str(V1).unwrap(), V1, Some(V2)).unwrap();
        assert_eq!(
            resolution.read(3, &body).unwrap(),
            [
                ("id".to_string(), Value::Long(7)),
                ("state".to_string(), Value::Text("PAUSED".into())),
                ("amount".to_string(), Value::Long(9_007_199_254_740_993)),
                ("tier".to_string(), Value::Text("standard".into())),
            ]
        );
        // The replica prepares for the latest version's fields.
        assert_eq!(
            resolution.fields,
            view_fields(&Schema::parse_str(V2).unwrap())
        );
        // The latest version itself: read as it is.
        let latest = Resolution::new(Schema::parse_str(V1).unwrap(), V1, Some(V1)).unwrap();
        assert_eq!(
            latest.read(3, &body).unwrap()[1].1,
            Value::Text("PAUSED".into())
        );
    }

    #[test]
    fn a_writer_the_compatibility_check_refuses_is_not_read() {
        let v2_without_default = V2.replace(r#", "default": "standard""#, "");
        let e = Resolution::new(
            Schema::parse_str(V1).unwrap(),
            V1,
            Some(&v2_without_default),
        )
        .err()
        .unwrap();
        assert_eq!(
            e,
            "cannot be read in the latest version of its subject (READER_FIELD_MISSING_DEFAULT_VALUE at /fields/3: field tier of record shop.E has no default value and is missing from the writer's schema); register the contracts compatibly"
        );
    }

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
