//! A batch's columns as array parameters: in PostgreSQL's binary form for the column types
//! that have one walcast's values map onto exactly, else as text arrays the statement casts.
//!
//! A column travels as `bigint[]`, `integer[]`, `smallint[]`, `double precision[]`,
//! `boolean[]`, `bytea[]`, `timestamptz[]`, `timestamp[]` or `date[]` when the replica column
//! has exactly that type (no type modifier, no domain) and every value of the batch's column
//! is of the matching kind and in range (an `int` that fits, a timestamp between the years 1
//! and 9999). The server then reads each element with its receive function: no text to
//! format here, none to parse there. Any other column, or a batch whose values do not all
//! fit, travels as `text[]` cast to the column's type (`v.c0::numeric`), so every type
//! (numeric, enums, domains, arrays, `jsonb`, user types) still goes through its input
//! function, and a value the column refuses is refused with the same error as before.

use std::borrow::Cow;
use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::sink::Value;

/// Microseconds from 1970-01-01 (walcast's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
/// 0001-01-01 and 9999-12-31 23:59:59.999999 in µs since 1970: the range sent in binary
/// (beyond it, the text form and the server's input function decide, as before).
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;
/// The same range in days since 1970.
const MIN_DAYS: i32 = -719_162;
const MAX_DAYS: i32 = 2_932_896;

/// A timestamp (with or without time zone) in PostgreSQL's binary form: µs since 2000.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Micros(i64);

impl ToSql for Micros {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_i64(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMP | Type::TIMESTAMPTZ)
    }

    to_sql_checked!();
}

/// A date in PostgreSQL's binary form: days since 2000-01-01.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Days(i32);

impl ToSql for Days {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_i32(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }

    to_sql_checked!();
}

fn micros(us: i64) -> Option<Micros> {
    (MIN_MICROS..=MAX_MICROS)
        .contains(&us)
        .then(|| Micros(us - PG_EPOCH_MICROS))
}

fn days(d: i32) -> Option<Days> {
    (MIN_DAYS..=MAX_DAYS)
        .contains(&d)
        .then(|| Days(d - PG_EPOCH_DAYS))
}

/// One column of a batch as an array parameter.
#[derive(Debug, Clone)]
pub(super) enum Column<'a> {
    /// Text forms, cast by the statement to the column's type.
    Text(Vec<Option<Cow<'a, str>>>),
    /// `bigint[]`.
    Long(Vec<Option<i64>>),
    /// `integer[]`.
    Int(Vec<Option<i32>>),
    /// `smallint[]`.
    Short(Vec<Option<i16>>),
    /// `double precision[]`.
    Double(Vec<Option<f64>>),
    /// `boolean[]`.
    Bool(Vec<Option<bool>>),
    /// `bytea[]`.
    Bytes(Vec<Option<&'a [u8]>>),
    /// `timestamptz[]`.
    Timestamp(Vec<Option<Micros>>),
    /// `timestamp[]`.
    LocalTimestamp(Vec<Option<Micros>>),
    /// `date[]`.
    Date(Vec<Option<Days>>),
}

/// Every value through `f`, or `None` when one does not convert: a NULL (or a missing
/// field) is `Some(None)`.
fn all<'v, T>(
    values: &[Option<&'v Value>],
    f: impl Fn(&'v Value) -> Option<T>,
) -> Option<Vec<Option<T>>> {
    values
        .iter()
        .map(|v| match v {
            None | Some(Value::Null) => Some(None),
            Some(v) => f(v).map(Some),
        })
        .collect()
}

impl<'a> Column<'a> {
    /// `values` (a missing field is NULL) for a column of type `ty`, as `format_type`
    /// spells it.
    pub(super) fn encode(values: &[Option<&'a Value>], ty: &str) -> Column<'a> {
        let binary = match ty {
            "bigint" => all(values, |v| match v {
                Value::Long(n) => Some(*n),
                _ => None,
            })
            .map(Column::Long),
            "integer" => all(values, |v| match v {
                Value::Long(n) => i32::try_from(*n).ok(),
                _ => None,
            })
            .map(Column::Int),
            "smallint" => all(values, |v| match v {
                Value::Long(n) => i16::try_from(*n).ok(),
                _ => None,
            })
            .map(Column::Short),
            "double precision" => all(values, |v| match v {
                Value::Double(x) => Some(*x),
                Value::Float(x) => Some(f64::from(*x)),
                _ => None,
            })
            .map(Column::Double),
            "boolean" => all(values, |v| match v {
                Value::Bool(b) => Some(*b),
                _ => None,
            })
            .map(Column::Bool),
            "bytea" => all(values, |v| match v {
                Value::Bytes(b) => Some(b.as_slice()),
                _ => None,
            })
            .map(Column::Bytes),
            "timestamp with time zone" => all(values, |v| match v {
                Value::Timestamp(us) => micros(*us),
                _ => None,
            })
            .map(Column::Timestamp),
            "timestamp without time zone" => all(values, |v| match v {
                Value::LocalTimestamp(us) => micros(*us),
                _ => None,
            })
            .map(Column::LocalTimestamp),
            "date" => all(values, |v| match v {
                Value::Date(d) => days(*d),
                _ => None,
            })
            .map(Column::Date),
            _ => None,
        };
        binary.unwrap_or_else(|| {
            Column::Text(values.iter().map(|v| v.and_then(|v| text(v, ty))).collect())
        })
    }

    /// The parameter's array type in the statement: `bigint[]`, or `text[]` for text forms.
    pub(super) fn array_type(&self) -> &'static str {
        match self {
            Column::Text(_) => "text[]",
            Column::Long(_) => "bigint[]",
            Column::Int(_) => "integer[]",
            Column::Short(_) => "smallint[]",
            Column::Double(_) => "double precision[]",
            Column::Bool(_) => "boolean[]",
            Column::Bytes(_) => "bytea[]",
            Column::Timestamp(_) => "timestamptz[]",
            Column::LocalTimestamp(_) => "timestamp[]",
            Column::Date(_) => "date[]",
        }
    }

    /// `expr` as a value of the column's type `ty`: cast from text, or as it is.
    pub(super) fn typed(&self, expr: &str, ty: &str) -> String {
        match self {
            Column::Text(_) => format!("{expr}::{ty}"),
            _ => expr.to_string(),
        }
    }

    /// The parameter.
    pub(super) fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Text(v) => v,
            Column::Long(v) => v,
            Column::Int(v) => v,
            Column::Short(v) => v,
            Column::Double(v) => v,
            Column::Bool(v) => v,
            Column::Bytes(v) => v,
            Column::Timestamp(v) | Column::LocalTimestamp(v) => v,
            Column::Date(v) => v,
        }
    }
}

/// A value in the text form PostgreSQL's input functions read for a column of type `cast`;
/// `None` is NULL. An array written to an array column takes the array literal form
/// (`{"a",NULL}`); to any other column (`jsonb`, `text`), its JSON form. Text and decimals
/// are borrowed as they are.
fn text<'a>(value: &'a Value, cast: &str) -> Option<Cow<'a, str>> {
    match value {
        Value::Array(items) if cast.ends_with("[]") => {
            let mut s = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                match text(item, cast.strip_suffix("[]").unwrap_or(cast)) {
                    None => s.push_str("NULL"),
                    Some(t) => {
                        s.push('"');
                        s.push_str(&t.replace('\\', "\\\\").replace('"', "\\\""));
                        s.push('"');
                    }
                }
            }
            s.push('}');
            Some(Cow::Owned(s))
        }
        Value::Text(t) | Value::Decimal(t) => Some(Cow::Borrowed(t)),
        other => crate::text::value(other, "+00").map(Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<'a>(values: &'a [Value], ty: &str) -> Column<'a> {
        let values: Vec<Option<&Value>> = values.iter().map(Some).collect();
        Column::encode(&values, ty)
    }

    fn bytes(column: &Column<'_>) -> Vec<u8> {
        let ty = match column.array_type() {
            "bigint[]" => Type::INT8_ARRAY,
            "integer[]" => Type::INT4_ARRAY,
            "smallint[]" => Type::INT2_ARRAY,
            "timestamptz[]" => Type::TIMESTAMPTZ_ARRAY,
            "timestamp[]" => Type::TIMESTAMP_ARRAY,
            "date[]" => Type::DATE_ARRAY,
            "text[]" => Type::TEXT_ARRAY,
            other => panic!("{other}"),
        };
        let mut out = BytesMut::new();
        column.sql().to_sql_checked(&ty, &mut out).unwrap();
        out.to_vec()
    }

    /// The binary array body after its header (ndim, flags, element type, length, lower
    /// bound): each element's length and bytes.
    fn elements(column: &Column<'_>) -> Vec<Option<Vec<u8>>> {
        let raw = bytes(column);
        let n = i32::from_be_bytes(raw[12..16].try_into().unwrap()) as usize;
        let mut at = 20;
        let mut out = Vec::new();
        for _ in 0..n {
            let len = i32::from_be_bytes(raw[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                out.push(Some(raw[at..at + len as usize].to_vec()));
                at += len as usize;
            }
        }
        out
    }

    #[test]
    fn timestamps_and_dates_are_counted_from_2000() {
        let values = [Value::Timestamp(PG_EPOCH_MICROS + 1), Value::Null];
        let column = encode(&values, "timestamp with time zone");
        assert_eq!(column.array_type(), "timestamptz[]");
        assert_eq!(elements(&column), [Some(1i64.to_be_bytes().to_vec()), None]);
        // 1970-01-01 is 10957 days before 2000-01-01.
        let column = encode(&[Value::Date(0)], "date");
        assert_eq!(
            elements(&column),
            [Some((-10_957i32).to_be_bytes().to_vec())]
        );
        let column = encode(&[Value::LocalTimestamp(0)], "timestamp without time zone");
        assert_eq!(
            elements(&column),
            [Some((-PG_EPOCH_MICROS).to_be_bytes().to_vec())]
        );
    }

    #[test]
    fn a_timestamp_beyond_the_years_1_to_9999_travels_as_text() {
        let column = encode(
            &[Value::Timestamp(MAX_MICROS + 1)],
            "timestamp with time zone",
        );
        assert_eq!(column.array_type(), "text[]");
        assert_eq!(
            column.typed("v.c0", "timestamp with time zone"),
            "v.c0::timestamp with time zone"
        );
        let column = encode(&[Value::Timestamp(MAX_MICROS)], "timestamp with time zone");
        assert_eq!(column.array_type(), "timestamptz[]");
        assert_eq!(column.typed("v.c0", "timestamp with time zone"), "v.c0");
    }

    #[test]
    fn an_int_that_does_not_fit_the_column_travels_as_text_for_the_server_to_refuse() {
        let fits = [Value::Long(i64::from(i32::MAX)), Value::Null];
        assert_eq!(encode(&fits, "integer").array_type(), "integer[]");
        let too_big = [Value::Long(1), Value::Long(i64::from(i32::MAX) + 1)];
        let column = encode(&too_big, "integer");
        assert_eq!(column.array_type(), "text[]");
        assert_eq!(
            elements(&column),
            [Some(b"1".to_vec()), Some(b"2147483648".to_vec())]
        );
        assert_eq!(
            encode(&[Value::Long(-32_769)], "smallint").array_type(),
            "text[]"
        );
    }

    #[test]
    fn a_value_of_another_kind_sends_its_column_as_text() {
        // A text into a bigint column: the server's input function decides, as before.
        let values = [Value::Long(1), Value::Text("2".into())];
        assert_eq!(encode(&values, "bigint").array_type(), "text[]");
        assert_eq!(encode(&values[..1], "bigint").array_type(), "bigint[]");
    }

    #[test]
    fn types_without_an_exact_binary_match_travel_as_text_with_a_cast() {
        for ty in [
            "numeric(10,2)",
            "timestamp(3) with time zone",
            "character varying(20)",
            "mood",
            "jsonb",
            "uuid",
            "text",
            "bigint[]",
        ] {
            let column = encode(&[Value::Null], ty);
            assert_eq!(column.array_type(), "text[]", "{ty}");
            assert_eq!(column.typed("v.c1", ty), format!("v.c1::{ty}"));
        }
    }

    #[test]
    fn text_forms_borrow_text_and_write_arrays_as_array_literals() {
        let values = [
            Value::Text("a".into()),
            Value::Array(vec![Value::Text("x \"y\"".into()), Value::Null]),
        ];
        let column = encode(&values[..1], "text");
        assert!(matches!(&column, Column::Text(v) if matches!(v[0], Some(Cow::Borrowed("a")))));
        let column = encode(&values[1..], "text[]");
        assert_eq!(elements(&column), [Some(br#"{"x \"y\"",NULL}"#.to_vec())]);
    }
}
