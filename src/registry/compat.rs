//! Avro schema compatibility: can data written with one schema be read with another?
//!
//! This follows the Avro specification's schema-resolution rules, the same rules Confluent
//! Schema Registry applies (through Avro's Java `SchemaCompatibility`), so a contract that
//! walcast's registry accepts is one Confluent or Karapace accepts too, and vice versa:
//! - primitives match themselves, plus the promotions int→long/float/double,
//!   long→float/double, float→double and string↔bytes;
//! - records match by unqualified name (or a reader alias); every reader field reads the
//!   writer field of the same name or of one of its aliases, or has a default; writer fields
//!   the reader lacks are skipped;
//! - enums match by name; a writer symbol the reader lacks needs a reader default;
//! - fixed types match by name and size; arrays and maps by their item and value types;
//! - every branch of a writer union must be readable, and a reader union reads a non-union
//!   writer when one of its branches does;
//! - logical types resolve as their underlying types; a decimal's scale must not change,
//!   since the same bytes would then mean another number.
//!
//! apache-avro ships a checker too, but it returns only the first problem, without a path,
//! and ignores field aliases; `walcast schemas check` must say everything that breaks and
//! where, so this one collects every incompatibility with its location.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

use apache_avro::schema::{Name, RecordSchema, Schema};

/// One reason a reader cannot read a writer's data, located by a JSON-pointer-like path
/// into the reader schema (`/fields/1/type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Which rule is broken.
    pub kind: IncompatibilityKind,
    /// Where in the reader schema, e.g. `/fields/1/type`; `/` for the root.
    pub location: String,
    /// What differs, in words.
    pub message: String,
}

/// Avro's incompatibility types, named as Avro and Confluent name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncompatibilityKind {
    /// A named type (record, enum, fixed) has another name in the reader, and no alias matches.
    NameMismatch,
    /// A `fixed` type has another size in the reader.
    FixedSizeMismatch,
    /// The writer's enum has symbols the reader's lacks, and the reader has no default symbol.
    MissingEnumSymbols,
    /// A reader field is not in the writer and has no default.
    ReaderFieldMissingDefaultValue,
    /// The reader's type cannot be promoted from the writer's.
    TypeMismatch,
    /// A branch of the writer's union matches no branch of the reader's.
    MissingUnionBranch,
    /// A decimal's scale differs, so the same bytes would mean another number.
    DecimalScaleMismatch,
}

impl IncompatibilityKind {
    /// The name Confluent uses in its compatibility messages, e.g.
    /// `READER_FIELD_MISSING_DEFAULT_VALUE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NameMismatch => "NAME_MISMATCH",
            Self::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
            Self::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            Self::ReaderFieldMissingDefaultValue => "READER_FIELD_MISSING_DEFAULT_VALUE",
            Self::TypeMismatch => "TYPE_MISMATCH",
            Self::MissingUnionBranch => "MISSING_UNION_BRANCH",
            Self::DecimalScaleMismatch => "DECIMAL_SCALE_MISMATCH",
        }
    }
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}: {}",
            self.kind.as_str(),
            self.location,
            self.message
        )
    }
}

/// Every reason `reader` cannot read data written with `writer`; empty when it can.
pub fn check(reader: &Schema, writer: &Schema) -> Vec<Incompatibility> {
    let mut checker = Checker {
        reader_names: Rc::new(names_of(reader)),
        writer_names: Rc::new(names_of(writer)),
        visiting: HashSet::new(),
        found: Vec::new(),
    };
    checker.visit(reader, writer, "");
    checker.found
}

/// Named types defined in `schema`, so references can be followed.
fn names_of(schema: &Schema) -> HashMap<Name, Schema> {
    fn walk(s: &Schema, out: &mut HashMap<Name, Schema>) {
        match s {
            Schema::Record(r) if out.insert(r.name.clone(), s.clone()).is_none() => {
                for f in &r.fields {
                    walk(&f.schema, out);
                }
            }
            Schema::Enum(e) => {
                out.insert(e.name.clone(), s.clone());
            }
            Schema::Fixed(x) => {
                out.insert(x.name.clone(), s.clone());
            }
            Schema::Array(a) => walk(&a.items, out),
            Schema::Map(m) => walk(&m.types, out),
            Schema::Union(u) => u.variants().iter().for_each(|v| walk(v, out)),
            Schema::Decimal(d) => walk(&d.inner, out),
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(schema, &mut out);
    out
}

struct Checker {
    reader_names: Rc<HashMap<Name, Schema>>,
    writer_names: Rc<HashMap<Name, Schema>>,
    /// Record pairs under comparison, so recursive types terminate.
    visiting: HashSet<(Name, Name)>,
    found: Vec<Incompatibility>,
}

/// A schema with references followed and logical types reduced to what they resolve as.
#[derive(Clone, Copy)]
enum Shape<'a> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(&'a Name, usize),
    Other(&'a Schema),
}

impl Checker {
    fn resolve<'a>(names: &'a HashMap<Name, Schema>, s: &'a Schema) -> &'a Schema {
        match s {
            Schema::Ref { name } => names.get(name).unwrap_or(s),
            _ => s,
        }
    }

    fn shape(s: &Schema) -> Shape<'_> {
        match s {
            Schema::Null => Shape::Null,
            Schema::Boolean => Shape::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Shape::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Shape::Long,
            Schema::Float => Shape::Float,
            Schema::Double => Shape::Double,
            Schema::Bytes | Schema::BigDecimal => Shape::Bytes,
            Schema::String | Schema::Uuid => Shape::String,
            Schema::Fixed(f) => Shape::Fixed(&f.name, f.size),
            Schema::Decimal(d) => Self::shape(&d.inner),
            _ => Shape::Other(s),
        }
    }

    fn report(&mut self, kind: IncompatibilityKind, location: &str, message: String) {
        self.found.push(Incompatibility {
            kind,
            location: if location.is_empty() {
                "/".into()
            } else {
                location.into()
            },
            message,
        });
    }

    /// Whether `reader` reads `writer`, without reporting.
    fn reads(&mut self, reader: &Schema, writer: &Schema) -> bool {
        let before = self.found.len();
        self.visit(reader, writer, "");
        let ok = self.found.len() == before;
        self.found.truncate(before);
        ok
    }

    fn visit(&mut self, reader: &Schema, writer: &Schema, at: &str) {
        let (reader_names, writer_names) = (self.reader_names.clone(), self.writer_names.clone());
        self.visit_resolved(
            Self::resolve(&reader_names, reader),
            Self::resolve(&writer_names, writer),
            at,
        );
    }

    fn visit_resolved(&mut self, reader: &Schema, writer: &Schema, at: &str) {
        // A writer union: each branch the writer may have used must be readable.
        if let Schema::Union(wu) = writer {
            for (i, branch) in wu.variants().iter().enumerate() {
                if let Schema::Union(_) = reader {
                    self.visit(reader, branch, at);
                } else if !self.reads(reader, branch) {
                    self.report(
                        IncompatibilityKind::MissingUnionBranch,
                        at,
                        format!(
                            "the reader type {} cannot read branch {i} ({}) of the writer's union",
                            type_name(reader),
                            type_name(branch)
                        ),
                    );
                }
            }
            return;
        }
        if let Schema::Union(ru) = reader {
            let readable = ru.variants().iter().any(|b| self.reads(b, writer));
            if !readable {
                self.report(
                    IncompatibilityKind::MissingUnionBranch,
                    at,
                    format!(
                        "the reader's union {} has no branch that reads the writer type {}",
                        type_name(reader),
                        type_name(writer)
                    ),
                );
            }
            return;
        }
        if let (Schema::Decimal(rd), Schema::Decimal(wd)) = (reader, writer) {
            if rd.scale != wd.scale {
                self.report(
                    IncompatibilityKind::DecimalScaleMismatch,
                    at,
                    format!(
                        "decimal scale changed from {} to {}; the same bytes would mean another number",
                        wd.scale, rd.scale
                    ),
                );
                return;
            }
        }
        use Shape as S;
        let mismatch = match (Self::shape(reader), Self::shape(writer)) {
            (S::Null, S::Null)
            | (S::Boolean, S::Boolean)
            | (S::Int, S::Int)
            | (S::Long, S::Int | S::Long)
            | (S::Float, S::Int | S::Long | S::Float)
            | (S::Double, S::Int | S::Long | S::Float | S::Double)
            | (S::Bytes | S::String, S::Bytes | S::String) => false,
            (S::Fixed(rn, rs), S::Fixed(wn, ws)) => {
                if rn.name != wn.name {
                    self.report(
                        IncompatibilityKind::NameMismatch,
                        &format!("{at}/name"),
                        format!(
                            "expected fixed {} but found {}",
                            wn.fullname(None),
                            rn.fullname(None)
                        ),
                    );
                } else if rs != ws {
                    self.report(
                        IncompatibilityKind::FixedSizeMismatch,
                        &format!("{at}/size"),
                        format!(
                            "fixed {} has size {ws} in the writer and {rs} in the reader",
                            rn.fullname(None)
                        ),
                    );
                }
                false
            }
            (S::Other(r), S::Other(w)) => self.structured(r, w, at),
            _ => true,
        };
        if mismatch {
            self.report(
                IncompatibilityKind::TypeMismatch,
                at,
                format!(
                    "the reader type {} cannot read the writer type {}",
                    type_name(reader),
                    type_name(writer)
                ),
            );
        }
    }

    /// Records, enums, arrays and maps; true on a plain type mismatch.
    fn structured(&mut self, reader: &Schema, writer: &Schema, at: &str) -> bool {
        match (reader, writer) {
            (Schema::Array(r), Schema::Array(w)) => {
                self.visit(&r.items, &w.items, &format!("{at}/items"));
                false
            }
            (Schema::Map(r), Schema::Map(w)) => {
                self.visit(&r.types, &w.types, &format!("{at}/values"));
                false
            }
            (Schema::Enum(r), Schema::Enum(w)) => {
                if !name_matches(&r.name, r.aliases.as_deref(), &w.name) {
                    self.report(
                        IncompatibilityKind::NameMismatch,
                        &format!("{at}/name"),
                        format!(
                            "expected enum {} but found {}",
                            w.name.fullname(None),
                            r.name.fullname(None)
                        ),
                    );
                    return false;
                }
                let missing: Vec<&str> = w
                    .symbols
                    .iter()
                    .filter(|s| !r.symbols.contains(s))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() && r.default.is_none() {
                    self.report(
                        IncompatibilityKind::MissingEnumSymbols,
                        &format!("{at}/symbols"),
                        format!(
                            "the reader's enum {} lacks the writer's symbols [{}] and has no default",
                            r.name.fullname(None),
                            missing.join(", ")
                        ),
                    );
                }
                false
            }
            (Schema::Record(r), Schema::Record(w)) => {
                self.record(r, w, at);
                false
            }
            _ => true,
        }
    }

    fn record(&mut self, r: &RecordSchema, w: &RecordSchema, at: &str) {
        if !name_matches(&r.name, r.aliases.as_deref(), &w.name) {
            self.report(
                IncompatibilityKind::NameMismatch,
                &format!("{at}/name"),
                format!(
                    "expected record {} but found {}",
                    w.name.fullname(None),
                    r.name.fullname(None)
                ),
            );
            return;
        }
        if !self.visiting.insert((r.name.clone(), w.name.clone())) {
            return; // already being compared further up: a recursive type
        }
        for (i, field) in r.fields.iter().enumerate() {
            let writer_field = w.fields.iter().find(|wf| {
                wf.name == field.name
                    || field.aliases.as_ref().is_some_and(|a| a.contains(&wf.name))
            });
            match writer_field {
                Some(wf) => self.visit(&field.schema, &wf.schema, &format!("{at}/fields/{i}/type")),
                None if field.default.is_none() => self.report(
                    IncompatibilityKind::ReaderFieldMissingDefaultValue,
                    &format!("{at}/fields/{i}"),
                    format!(
                        "field {} of record {} has no default value and is missing from the writer's schema",
                        field.name,
                        r.name.fullname(None)
                    ),
                ),
                None => {}
            }
        }
        self.visiting.remove(&(r.name.clone(), w.name.clone()));
    }
}

/// Avro (and Confluent) compare named types by unqualified name, or by a reader alias.
fn name_matches(
    reader: &Name,
    aliases: Option<&[apache_avro::schema::Alias]>,
    writer: &Name,
) -> bool {
    reader.name == writer.name
        || aliases.is_some_and(|aliases| {
            aliases
                .iter()
                .any(|a| a.name() == writer.name || a.fullname(None) == writer.fullname(None))
        })
}

/// A short name of a schema's type, for messages.
fn type_name(s: &Schema) -> String {
    match s {
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::Fixed(f) => format!("fixed {}", f.name.fullname(None)),
        Schema::Ref { name } => name.fullname(None),
        Schema::Array(a) => format!("array<{}>", type_name(&a.items)),
        Schema::Map(m) => format!("map<{}>", type_name(&m.types)),
        Schema::Union(u) => format!(
            "[{}]",
            u.variants()
                .iter()
                .map(type_name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Schema::Decimal(d) => format!("decimal({}, {})", d.precision, d.scale),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    fn kinds(reader: &str, writer: &str) -> Vec<&'static str> {
        check(&schema(reader), &schema(writer))
            .iter()
            .map(|i| i.kind.as_str())
            .collect()
    }

    const V1: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"}]}"#;

    #[test]
    fn a_new_field_needs_a_default_to_read_old_data() {
        let with_default = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"},{"name":"email","type":["null","string"],"default":null}]}"#;
        let required = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"},{"name":"email","type":"string"}]}"#;
        assert!(kinds(with_default, V1).is_empty());
        assert_eq!(kinds(required, V1), ["READER_FIELD_MISSING_DEFAULT_VALUE"]);
        let found = check(&schema(required), &schema(V1));
        assert_eq!(found[0].location, "/fields/1");
        assert!(found[0].message.contains("field email of record User"));
        // The old reader skips the new field either way.
        assert!(kinds(V1, required).is_empty());
    }

    #[test]
    fn promotions_go_one_way() {
        let long = V1;
        let int = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"int"}]}"#;
        assert!(kinds(long, int).is_empty(), "long reads int");
        assert_eq!(kinds(int, long), ["TYPE_MISMATCH"], "int cannot read long");
        assert_eq!(
            check(&schema(int), &schema(long))[0].location,
            "/fields/0/type"
        );
    }

    #[test]
    fn a_renamed_field_reads_through_its_alias() {
        let renamed = r#"{"type":"record","name":"User","fields":[{"name":"user_id","type":"long","aliases":["id"]}]}"#;
        let bare = r#"{"type":"record","name":"User","fields":[{"name":"user_id","type":"long"}]}"#;
        assert!(kinds(renamed, V1).is_empty());
        assert_eq!(kinds(bare, V1), ["READER_FIELD_MISSING_DEFAULT_VALUE"]);
    }

    #[test]
    fn enum_symbols_added_are_readable_only_by_the_new_reader_or_a_default() {
        let ab = r#"{"type":"enum","name":"S","symbols":["A","B"]}"#;
        let abc = r#"{"type":"enum","name":"S","symbols":["A","B","C"]}"#;
        let ab_default = r#"{"type":"enum","name":"S","symbols":["A","B"],"default":"A"}"#;
        assert!(kinds(abc, ab).is_empty());
        assert_eq!(kinds(ab, abc), ["MISSING_ENUM_SYMBOLS"]);
        assert!(kinds(ab_default, abc).is_empty());
    }

    #[test]
    fn unions_nullable_fields_and_recursion() {
        let nullable = r#"{"type":"record","name":"User","fields":[{"name":"id","type":["null","long"],"default":null}]}"#;
        assert!(kinds(nullable, V1).is_empty(), "a union reads its branch");
        assert_eq!(
            kinds(V1, nullable),
            ["MISSING_UNION_BRANCH"],
            "long cannot read null"
        );
        let list = r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"],"default":null},{"name":"v","type":"int"}]}"#;
        let list_long = r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"],"default":null},{"name":"v","type":"long"}]}"#;
        assert!(kinds(list_long, list).is_empty());
        assert_eq!(kinds(list, list_long), ["TYPE_MISMATCH"]);
    }

    #[test]
    fn names_sizes_and_decimal_scales_must_agree() {
        let other = r#"{"type":"record","name":"Account","fields":[{"name":"id","type":"long"}]}"#;
        assert_eq!(kinds(other, V1), ["NAME_MISMATCH"]);
        let f4 = r#"{"type":"fixed","name":"F","size":4}"#;
        let f8 = r#"{"type":"fixed","name":"F","size":8}"#;
        assert_eq!(kinds(f4, f8), ["FIXED_SIZE_MISMATCH"]);
        let d2 = r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#;
        let d3 = r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":3}"#;
        assert_eq!(kinds(d2, d3), ["DECIMAL_SCALE_MISMATCH"]);
        let ts = r#"{"type":"long","logicalType":"timestamp-micros"}"#;
        assert!(
            kinds(ts, r#""long""#).is_empty(),
            "logical types resolve as their base"
        );
    }
}
