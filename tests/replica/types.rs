//! Spec (issue #14): every PostgreSQL type the source supports makes the full trip, source →
//! Kafka → each store, and arrives as the source's value, read back by SQL.
//!
//! One source table holds a column of each supported type; one contract has a field per
//! column (the Avro type the README's type table gives it). One daemon runs the source and
//! four sinks, each creating its table (`auto_create`): a PostgreSQL replica, a MariaDB
//! replica, a Redis hash per row, and a second MariaDB replica of the columns whose values
//! MariaDB cannot hold (NaN, ±Infinity, years outside 1000–9999), which must refuse those
//! rows as poison records (to its dead-letter topic) and store the others exactly.
//!
//! Rows cover each type's edge values and NULLs; some are updated, one deleted. Every
//! value in every store is then compared with the source's, per the documented mapping:
//! numerics digit for digit at the contract's scale, floats bit for bit, times and
//! timestamps to the microsecond, bytes byte for byte, json semantically, arrays element by
//! element (PostgreSQL arrays; JSON in MariaDB and Redis). Values the contract carries as
//! strings (interval, inet, money, ±infinity…) are compared by reading them back into the
//! source type in the source database.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::support::daemon::{Daemon, Setup};
use crate::support::{consume_from_start, unique, wait_for, Stack};
use mysql_async::prelude::Queryable;

/// How a field's values are compared: each store's value is read into a canonical text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    /// int or long: decimal digits.
    Int,
    /// An Avro decimal: digit for digit at this scale.
    Dec(usize),
    /// float: the same f32.
    F32,
    /// double: the same f64.
    F64,
    /// string (text types, enum symbols, uuid): the same text.
    Text,
    /// bytes: the same bytes.
    Bytes,
    /// date: the same day.
    Date,
    /// time-millis, time-micros: the same microsecond of the day.
    Time,
    /// (local-)timestamp-millis/-micros: the same microsecond.
    Timestamp,
    /// A json or jsonb column as a string: the same JSON value.
    Json,
    /// Another type's text form in a string: read back as that source type, the same value.
    SourceText(&'static str),
    /// A one-dimensional array: the same items, in order, NULLs included.
    Array(&'static Kind),
}

/// One source column and its field: the PostgreSQL column type, the Avro type, how values
/// compare, and the column type each table store creates for it (`None`: not kept there).
struct Column {
    name: &'static str,
    pg: &'static str,
    avro: &'static str,
    kind: Kind,
    pg_replica: &'static str,
    mysql: Option<&'static str>,
}

const fn col(
    name: &'static str,
    pg: &'static str,
    avro: &'static str,
    kind: Kind,
    pg_replica: &'static str,
    mysql: Option<&'static str>,
) -> Column {
    Column {
        name,
        pg,
        avro,
        kind,
        pg_replica,
        mysql,
    }
}

const MOOD: &str = r#"{"type": "enum", "name": "Mood", "symbols": ["sad", "ok", "happy"]}"#;

/// Every type the source supports, and the Avro types it publishes them as: one line each.
#[rustfmt::skip]
const COLUMNS: &[Column] = &[
    col("b", "boolean", r#""boolean""#, Kind::Bool, "boolean", Some("tinyint(1)")),
    col("i2", "smallint", r#""int""#, Kind::Int, "integer", Some("int(11)")),
    col("i4", "integer", r#""int""#, Kind::Int, "integer", Some("int(11)")),
    col("i8", "bigint", r#""long""#, Kind::Int, "bigint", Some("bigint(20)")),
    col("o", "oid", r#""long""#, Kind::Int, "bigint", Some("bigint(20)")),
    col("n38", "numeric(38,6)", r#"{"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 6}"#, Kind::Dec(6), "numeric(38,6)", Some("decimal(38,6)")),
    col("n30", "numeric(30,0)", r#"{"type": "bytes", "logicalType": "decimal", "precision": 30, "scale": 0}"#, Kind::Dec(0), "numeric(30,0)", Some("decimal(30,0)")),
    col("nany", "numeric", r#"{"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 10}"#, Kind::Dec(10), "numeric(38,10)", Some("decimal(38,10)")),
    col("nfix", "numeric(20,4)", r#"{"type": "fixed", "name": "Decimal20", "size": 9, "logicalType": "decimal", "precision": 20, "scale": 4}"#, Kind::Dec(4), "numeric(20,4)", Some("decimal(20,4)")),
    col("i8d", "bigint", r#"{"type": "bytes", "logicalType": "decimal", "precision": 19, "scale": 0}"#, Kind::Dec(0), "numeric(19,0)", Some("decimal(19,0)")),
    col("ntext", "numeric", r#""string""#, Kind::SourceText("numeric"), "text", Some("text")),
    col("f4", "real", r#""float""#, Kind::F32, "real", Some("float")),
    col("f8", "double precision", r#""double""#, Kind::F64, "double precision", Some("double")),
    col("f4d", "real", r#""double""#, Kind::F64, "double precision", Some("double")),
    col("f4s", "real", r#""float""#, Kind::F32, "real", None),
    col("f8s", "double precision", r#""double""#, Kind::F64, "double precision", None),
    col("t", "text", r#""string""#, Kind::Text, "text", Some("text")),
    col("vc", "varchar(20)", r#""string""#, Kind::Text, "text", Some("text")),
    col("ch", "char(5)", r#""string""#, Kind::Text, "text", Some("text")),
    col("nm", "name", r#""string""#, Kind::Text, "text", Some("text")),
    col("qc", "\"char\"", r#""string""#, Kind::Text, "text", Some("text")),
    col("bin", "bytea", r#""bytes""#, Kind::Bytes, "bytea", Some("longblob")),
    col("u", "uuid", r#"{"type": "string", "logicalType": "uuid"}"#, Kind::Text, "uuid", Some("char(36)")),
    col("us", "uuid", r#""string""#, Kind::Text, "text", Some("text")),
    col("j", "json", r#""string""#, Kind::Json, "text", Some("text")),
    col("jb", "jsonb", r#""string""#, Kind::Json, "text", Some("text")),
    col("d", "date", r#"{"type": "int", "logicalType": "date"}"#, Kind::Date, "date", Some("date")),
    col("dfar", "date", r#"{"type": "int", "logicalType": "date"}"#, Kind::Date, "date", None),
    col("tm", "time", r#"{"type": "long", "logicalType": "time-micros"}"#, Kind::Time, "time without time zone", Some("time(6)")),
    col("tmm", "time", r#"{"type": "int", "logicalType": "time-millis"}"#, Kind::Time, "time without time zone", Some("time(6)")),
    col("ts", "timestamp", r#"{"type": "long", "logicalType": "local-timestamp-micros"}"#, Kind::Timestamp, "timestamp without time zone", Some("datetime(6)")),
    col("tsm", "timestamp", r#"{"type": "long", "logicalType": "local-timestamp-millis"}"#, Kind::Timestamp, "timestamp without time zone", Some("datetime(6)")),
    col("tz", "timestamptz", r#"{"type": "long", "logicalType": "timestamp-micros"}"#, Kind::Timestamp, "timestamp with time zone", Some("datetime(6)")),
    col("tzm", "timestamptz", r#"{"type": "long", "logicalType": "timestamp-millis"}"#, Kind::Timestamp, "timestamp with time zone", Some("datetime(6)")),
    col("tsfar", "timestamp", r#"{"type": "long", "logicalType": "local-timestamp-micros"}"#, Kind::Timestamp, "timestamp without time zone", None),
    col("tzfar", "timestamptz", r#"{"type": "long", "logicalType": "timestamp-micros"}"#, Kind::Timestamp, "timestamp with time zone", None),
    col("tzt", "timestamptz", r#""string""#, Kind::SourceText("timestamptz"), "text", Some("text")),
    col("ttz", "timetz", r#""string""#, Kind::SourceText("timetz"), "text", Some("text")),
    col("iv", "interval", r#""string""#, Kind::SourceText("interval"), "text", Some("text")),
    col("ip", "inet", r#""string""#, Kind::SourceText("inet"), "text", Some("text")),
    col("net", "cidr", r#""string""#, Kind::SourceText("cidr"), "text", Some("text")),
    col("mac", "macaddr", r#""string""#, Kind::SourceText("macaddr"), "text", Some("text")),
    col("mac8", "macaddr8", r#""string""#, Kind::SourceText("macaddr8"), "text", Some("text")),
    col("cash", "money", r#""string""#, Kind::SourceText("money"), "text", Some("text")),
    col("bits", "bit(4)", r#""string""#, Kind::SourceText("bit(4)"), "text", Some("text")),
    col("vbits", "varbit(10)", r#""string""#, Kind::SourceText("varbit(10)"), "text", Some("text")),
    col("e", "mood", MOOD, Kind::Text, "text", Some("text")),
    col("et", "mood", r#""string""#, Kind::Text, "text", Some("text")),
    col("dom", "positive_int", r#""int""#, Kind::Int, "integer", Some("int(11)")),
    col("domt", "email", r#""string""#, Kind::Text, "text", Some("text")),
    col("domn", "price", r#"{"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}"#, Kind::Dec(2), "numeric(10,2)", Some("decimal(10,2)")),
    col("ai", "integer[]", r#"{"type": "array", "items": ["null", "int"]}"#, Kind::Array(&Kind::Int), "integer[]", Some("longtext")),
    col("al", "bigint[]", r#"{"type": "array", "items": ["null", "long"]}"#, Kind::Array(&Kind::Int), "bigint[]", Some("longtext")),
    col("at", "text[]", r#"{"type": "array", "items": ["null", "string"]}"#, Kind::Array(&Kind::Text), "text[]", Some("longtext")),
    col("an", "numeric(10,2)[]", r#"{"type": "array", "items": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}]}"#, Kind::Array(&Kind::Dec(2)), "numeric(10,2)[]", Some("longtext")),
    col("ab", "boolean[]", r#"{"type": "array", "items": ["null", "boolean"]}"#, Kind::Array(&Kind::Bool), "boolean[]", Some("longtext")),
    col("af8", "double precision[]", r#"{"type": "array", "items": ["null", "double"]}"#, Kind::Array(&Kind::F64), "double precision[]", Some("longtext")),
    col("af4", "real[]", r#"{"type": "array", "items": ["null", "float"]}"#, Kind::Array(&Kind::F32), "real[]", Some("longtext")),
    col("ad", "date[]", r#"{"type": "array", "items": ["null", {"type": "int", "logicalType": "date"}]}"#, Kind::Array(&Kind::Date), "date[]", Some("longtext")),
    col("atz", "timestamptz[]", r#"{"type": "array", "items": ["null", {"type": "long", "logicalType": "timestamp-micros"}]}"#, Kind::Array(&Kind::Timestamp), "timestamp with time zone[]", Some("longtext")),
    col("ats", "timestamp[]", r#"{"type": "array", "items": ["null", {"type": "long", "logicalType": "local-timestamp-micros"}]}"#, Kind::Array(&Kind::Timestamp), "timestamp without time zone[]", Some("longtext")),
    col("atm", "time[]", r#"{"type": "array", "items": ["null", {"type": "long", "logicalType": "time-micros"}]}"#, Kind::Array(&Kind::Time), "time without time zone[]", Some("longtext")),
    col("au", "uuid[]", r#"{"type": "array", "items": ["null", {"type": "string", "logicalType": "uuid"}]}"#, Kind::Array(&Kind::Text), "uuid[]", Some("longtext")),
    col("abin", "bytea[]", r#"{"type": "array", "items": ["null", "bytes"]}"#, Kind::Array(&Kind::Bytes), "bytea[]", Some("longtext")),
    col("ae", "mood[]", r#"{"type": "array", "items": ["null", "Mood"]}"#, Kind::Array(&Kind::Text), "text[]", Some("longtext")),
    col("aj", "jsonb[]", r#"{"type": "array", "items": ["null", "string"]}"#, Kind::Array(&Kind::Json), "text[]", Some("longtext")),
    col("adom", "positive_int[]", r#"{"type": "array", "items": ["null", "int"]}"#, Kind::Array(&Kind::Int), "integer[]", Some("longtext")),
    col("atext", "integer[]", r#""string""#, Kind::SourceText("integer[]"), "text", Some("text")),
];

const TYPES: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
CREATE DOMAIN price AS numeric(10,2);
";

/// Typical values, then the largest, then the smallest and most negative, then NULLs.
const ROWS: &[&str] = &[
    r#"INSERT INTO kinds VALUES (1,
      true, 12, 123456, 1234567890123, 4000000000,
      '12345678901234567890123456789012.345678', '-123456789012345678901234567890', '-0.000123', '1234567890123456.7890', 9223372036854775807, 'NaN',
      0.1, 0.1, 0.1, 1.5, -2.5,
      E'h\u00e9llo "w\u00f6rld"\\ \n\t,{}', 'varchar', 'ab', 'pg_name', 'x',
      '\x00ff10deadbeef', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
      '{"b": [1, 2.50, null], "a": "x"}', '{"k": {"n": 1.5e3, "s": "\u00e9"}}',
      '2024-02-29', '1000-01-01', '12:34:56.789012', '23:59:59.999',
      '2024-02-29 12:34:56.789012', '1999-12-31 23:59:59.999', '2024-02-29 12:34:56.789012+02', '2024-02-29 12:34:56.789+00',
      '9999-12-31 23:59:59.999999', '1000-01-01 00:00:00+00', 'infinity', '12:34:56.5+05:30',
      '1 year 2 mons 3 days 04:05:06.789', '192.168.1.5/24', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
      1234.56, B'1010', B'101',
      'happy', 'ok', 42, 'a@b.c', 12.5,
      '{1,NULL,-3}', '{9223372036854775807,-9223372036854775808}',
      '{"a b","",NULL,"NULL","q\"uote","back\\slash","{brace}","com,ma"}',
      '{12.5,NULL,-0.01}', '{true,false,NULL}', '{1.5,NaN,Infinity,-Infinity,1e308}', '{0.1,NULL}',
      '{2024-02-29,NULL}', '{"2024-02-29 12:34:56.789012+00","1970-01-01 00:00:00+00"}', '{"1969-12-31 23:59:59.999999"}',
      '{00:00:00,24:00:00}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}', '{"\\x00ff",NULL,"\\x"}',
      '{sad,NULL,happy}', '{"{\"a\": 1}",NULL}', '{1,2}', '{1,NULL,3}')"#,
    r#"INSERT INTO kinds VALUES (2,
      false, 32767, 2147483647, 9223372036854775807, 4294967295,
      '99999999999999999999999999999999.999999', '999999999999999999999999999999', '12345678901234567890123456.1234567891', '9999999999999999.9999', -9223372036854775808, 'Infinity',
      '3.4028235e38', '1.7976931348623157e308', '-3.4028235e38', 'NaN', 'NaN',
      '', '', '', '', 'Z',
      '', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '00000000-0000-0000-0000-000000000000',
      '[]', 'null',
      '9999-12-31', '200000-01-01', '24:00:00', '00:00:00',
      '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999', '9999-12-31 23:59:59.999999+00', '9999-12-31 23:59:59.999+00',
      '200000-01-01 00:00:00', '200000-12-31 23:59:59.999999+00', '200000-01-01 00:00:00+00', '00:00:00-15:59',
      '-1 years -2 mons +3 days -00:00:01', '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', 'ff:ff:ff:ff:ff:ff:ff:ff',
      '92233720368547758.07', B'1111', B'',
      'sad', 'happy', 2147483647, '@', 99999999.99,
      '{}', '{}', '{NULL}', '{}', '{}', '{}', '{3.4028235e38,-1e-45}',
      '{"4713-01-01 BC","200000-01-01"}', '{"0001-01-01 00:00:00+00 BC","200000-01-01 00:00:00+00"}', '{}',
      '{}', '{}', '{}', '{}', '{"[]","null"}', '{}', '{}')"#,
    r#"INSERT INTO kinds VALUES (3,
      false, -32768, -2147483648, -9223372036854775808, 0,
      '-99999999999999999999999999999999.999999', '0', '0', '-0.0001', 0, '-0.000000000000000000000000000000000000000001',
      '1e-45', '5e-324', '1.17549435e-38', 'Infinity', '-Infinity',
      E'\U0001F600 \u2713 \u00fcn\u00efcode', 'x', 'abcde', 'n', 'q',
      '\x00', '00000000-0000-0000-0000-000000000001', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
      '{"a": {"b": [true, false]}}', '[1, "two", 3.0e2]',
      '1970-01-01', '4713-01-01 BC', '00:00:00', '00:00:00.001',
      '1969-12-31 23:59:59.999999', '1000-01-01 00:00:00', '1000-01-01 00:00:00+00', '1969-12-31 23:59:59.999+00',
      '4713-01-01 00:00:00 BC', '0001-12-31 23:59:59.999999+00 BC', '-infinity', '00:00:00+15:59',
      '-00:00:00.5', '0.0.0.0', '0.0.0.0/0', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00',
      '-92233720368547758.08', B'0000', B'1111111111',
      'ok', 'sad', 1, 'x@y', -99999999.99,
      '{-2147483648,2147483647}', '{NULL}', '{"éè",""}', '{-99999999.99,99999999.99}', '{NULL}',
      '{5e-324,-1.7976931348623157e308}', '{1e-45}', '{1970-01-01}', '{"1969-12-31 23:59:59.999999+00"}',
      '{"9999-12-31 23:59:59.999999"}', '{23:59:59.999999}', '{00000000-0000-0000-0000-000000000000}', '{"\\x"}',
      '{ok}', '{"{}"}', '{2147483647}', '{}')"#,
    "INSERT INTO kinds (id) VALUES (4)",
    r#"INSERT INTO kinds (id, t, ai, tz) VALUES (5, 'to be deleted', '{5}', '2000-01-01 00:00:00+00')"#,
];

/// Updates (values to NULL, NULL to values, new arrays) and a delete, in one transaction.
const CHANGES: &str = r#"BEGIN;
UPDATE kinds SET t = 'updated', ai = '{}', n38 = NULL, e = 'sad', atz = NULL, j = '{"updated": true}', f8 = -0.5 WHERE id = 1;
UPDATE kinds SET b = true, i4 = 7, at = '{"x"}', tz = '2000-01-01 00:00:00+00', bin = '\xff', f8s = 0, dfar = '2000-02-29', ae = '{happy}' WHERE id = 4;
DELETE FROM kinds WHERE id = 5;
COMMIT;"#;

/// The rows MariaDB cannot hold (NaN, ±Infinity, years beyond 9999 or before 1000), which
/// its second sink refuses to its dead-letter topic: rows 2 and 3.
const BEYOND_MYSQL: &[&str] = &["f4s", "f8s", "dfar", "tsfar", "tzfar"];

fn contract(name: &str, fields: &[(&str, String)]) -> String {
    let fields: Vec<String> = fields
        .iter()
        .map(|(n, ty)| format!(r#"{{"name": "{n}", "type": {ty}}}"#))
        .collect();
    format!(
        r#"{{"type": "record", "name": "{name}", "namespace": "walcast.types", "fields": [{}]}}"#,
        fields.join(", ")
    )
}

/// A row: column → canonical value (`None` for NULL, or a field a hash does not hold).
type Row = BTreeMap<String, Value>;

/// A value in the canonical text its kind compares by.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    One(String),
    Json(serde_json::Value),
    Items(Vec<Value>),
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year: 1 BC is 0).
fn civil_days(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// `YYYY-MM-DD[THH:MM:SS[.ffffff]][Z|+00][ BC]` → (days, microseconds of the day).
fn parse_iso(text: &str) -> (i64, i64) {
    let (text, bc) = match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    };
    let (date, time) = text.split_once('T').unwrap_or((text, ""));
    let parts: Vec<i64> = date
        .splitn(3, '-')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("not a date: {text:?}")))
        .collect();
    let year = if bc { 1 - parts[0] } else { parts[0] };
    let time = time.trim_end_matches('Z').trim_end_matches("+00");
    (civil_days(year, parts[1], parts[2]), parse_time(time))
}

/// `HH:MM:SS[.ffffff]` (or empty) → microseconds.
fn parse_time(text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    let (hms, frac) = text.split_once('.').unwrap_or((text, ""));
    let p: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let frac: i64 = format!("{frac:0<6}").parse().unwrap();
    ((p[0] * 60 + p[1]) * 60 + p[2]) * 1_000_000 + frac
}

/// A decimal's text padded to `scale` digits after the point (the source's unconstrained
/// numerics carry fewer).
fn at_scale(text: &str, scale: usize) -> String {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    assert!(frac.len() <= scale, "{text} has more than {scale} decimals");
    if scale == 0 {
        int.to_string()
    } else {
        format!("{int}.{frac:0<scale$}")
    }
}

/// A scalar's canonical text, from a store's text for it. For JSON items (`in_json`),
/// bytes and times are the strings the README documents.
fn canonical(kind: Kind, text: &str) -> Value {
    let one = |s: String| Value::One(s);
    match kind {
        Kind::Bool => one(matches!(text, "t" | "true" | "1").to_string()),
        Kind::Int | Kind::Dec(_) | Kind::Text | Kind::SourceText(_) => one(text.to_string()),
        Kind::F32 => one(format!("{:?}", parse_float(text) as f32)),
        Kind::F64 => one(format!("{:?}", parse_float(text))),
        Kind::Bytes => one(text.strip_prefix("\\x").unwrap_or(text).to_string()),
        Kind::Date => one(parse_iso(text).0.to_string()),
        Kind::Time => one(parse_time(text).to_string()),
        Kind::Timestamp => {
            let (days, micros) = parse_iso(text);
            one((days * 86_400_000_000 + micros).to_string())
        }
        Kind::Json => {
            Value::Json(serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: json {text:?}")))
        }
        Kind::Array(_) => unreachable!("arrays are read item by item"),
    }
}

fn parse_float(text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|e| panic!("{e}: not a float: {text:?}"))
}

/// A JSON array of scalars, read item by item: each item's raw text (strings unescaped),
/// `None` for null. Numbers keep their digits, which serde_json's f64 would not.
fn json_items(text: &str) -> Vec<Option<String>> {
    let body = text.trim();
    let body = body
        .strip_prefix('[')
        .and_then(|b| b.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not a JSON array: {text:?}"));
    let mut items = Vec::new();
    let mut chars = body.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        match c {
            ' ' | ',' => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut escaped = false;
                let end = loop {
                    let (i, c) = chars.next().expect("a closed string");
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break i,
                        _ => escaped = false,
                    }
                };
                items.push(Some(serde_json::from_str(&body[start..=end]).unwrap()));
            }
            _ => {
                let mut end = start;
                while let Some(&(i, c)) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                let raw = body[start..end].trim();
                items.push((raw != "null").then(|| raw.to_string()));
            }
        }
    }
    items
}

/// A store's text for a field (`None` for NULL) as the canonical value of its kind. Arrays
/// come as JSON from MariaDB and Redis, as their items' texts from PostgreSQL. With `by_sql`,
/// dates, times and bytes were read as days, microseconds and hex already (`pg_scalar`,
/// `mysql_expr`).
fn value_of(kind: Kind, text: Option<&str>, by_sql: bool) -> Value {
    match (kind, text) {
        (_, None) => Value::Null,
        (Kind::Date | Kind::Time | Kind::Timestamp | Kind::Bytes, Some(t)) if by_sql => {
            Value::One(t.to_string())
        }
        (Kind::Array(item), Some(json)) => Value::Items(
            json_items(json)
                .iter()
                .map(|i| value_of(*item, i.as_deref(), false))
                .collect(),
        ),
        (kind, Some(text)) => canonical(kind, text),
    }
}

/// PostgreSQL (source or replica): an SQL expression giving the canonical text of `c`.
fn pg_scalar(kind: Kind, c: &str) -> String {
    match kind {
        Kind::Date => format!("({c} - DATE '1970-01-01')::text"),
        Kind::Time | Kind::Timestamp => {
            format!("(extract(epoch FROM {c}) * 1000000)::int8::text")
        }
        Kind::Bytes => format!("encode({c}, 'hex')"),
        // A real read as a double is the same number, widened.
        Kind::F64 => format!("({c})::float8::text"),
        _ => format!("({c})::text"),
    }
}

/// Reads `table`'s rows in PostgreSQL, canonical, keyed by id. `columns` are those kept;
/// `source` reads the source table (its numerics at the contract's scale, its text forms of
/// other types as they are).
async fn pg_rows(pg: &tokio_postgres::Client, table: &str, columns: &[&Column]) -> Vec<Row> {
    let exprs: Vec<String> = columns
        .iter()
        .map(|c| {
            let q = format!("\"{}\"", c.name);
            match c.kind {
                // char(n) keeps its padding: bpcharout, not a cast to text.
                Kind::Text if c.pg == "char(5)" && table == "kinds" => {
                    format!("textin(bpcharout({q}))")
                }
                Kind::Array(item) => format!(
                    "CASE WHEN {q} IS NULL THEN NULL ELSE ARRAY(SELECT {} FROM unnest({q}) WITH ORDINALITY AS u(x, i) ORDER BY u.i) END",
                    pg_scalar(*item, "u.x")
                ),
                kind => pg_scalar(kind, &q),
            }
        })
        .collect();
    let sql = format!("SELECT id, {} FROM {table} ORDER BY id", exprs.join(", "));
    let Ok(rows) = pg.query(&sql, &[]).await else {
        return Vec::new();
    };
    rows.iter()
        .map(|r| {
            let mut row = Row::new();
            row.insert("id".into(), Value::One(r.get::<_, i64>(0).to_string()));
            for (i, c) in columns.iter().enumerate() {
                let v = match c.kind {
                    Kind::Array(item) => match r.get::<_, Option<Vec<Option<String>>>>(i + 1) {
                        None => Value::Null,
                        Some(items) => Value::Items(
                            items
                                .iter()
                                .map(|t| value_of(*item, t.as_deref(), true))
                                .collect(),
                        ),
                    },
                    kind => value_of(kind, r.get::<_, Option<String>>(i + 1).as_deref(), true),
                };
                row.insert(c.name.into(), v);
            }
            row
        })
        .collect()
}

/// The source's rows, as each store must hold them: decimals at the contract's scale.
async fn source_rows(pg: &tokio_postgres::Client, columns: &[&Column]) -> Vec<Row> {
    let mut rows = pg_rows(pg, "kinds", columns).await;
    for row in &mut rows {
        for c in columns {
            let Some(v) = row.get_mut(c.name) else {
                continue;
            };
            match (c.kind, v) {
                (Kind::Dec(scale), Value::One(t)) => *t = at_scale(t, scale),
                (Kind::Array(Kind::Dec(scale)), Value::Items(items)) => {
                    for i in items {
                        if let Value::One(t) = i {
                            *t = at_scale(t, *scale);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    rows
}

/// Reads back a string field that carries another type's text form, as that type, in the
/// source database: the replica's value then reads as the source's did.
async fn in_source_type(source: &tokio_postgres::Client, rows: &mut [Row]) {
    for row in rows {
        for c in COLUMNS {
            let (Kind::SourceText(ty), Some(Value::One(text))) = (c.kind, row.get(c.name)) else {
                continue;
            };
            let read: Result<tokio_postgres::Row, _> = source
                .query_one(&format!("SELECT ($1::text)::{ty}::text"), &[text])
                .await;
            let v = match read {
                Ok(r) => Value::One(r.get(0)),
                Err(e) => Value::One(format!("{text:?} does not read as {ty}: {e}")),
            };
            row.insert(c.name.into(), v);
        }
    }
}

/// MariaDB: an SQL expression giving the canonical text of `c`.
fn mysql_expr(kind: Kind, c: &str) -> String {
    match kind {
        Kind::Date => format!("DATEDIFF({c}, '1970-01-01')"),
        Kind::Time => format!(
            "HOUR({c}) * 3600000000 + MINUTE({c}) * 60000000 + SECOND({c}) * 1000000 + MICROSECOND({c})"
        ),
        Kind::Timestamp => format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {c})"),
        Kind::Bytes => format!("LOWER(HEX({c}))"),
        Kind::F32 => format!("CAST({c} AS DOUBLE)"),
        _ => c.to_string(),
    }
}

async fn mysql_rows(url: &str, table: &str, columns: &[&Column]) -> Vec<Row> {
    let Ok(mut conn) = mysql_async::Conn::from_url(url).await else {
        return Vec::new();
    };
    let exprs: Vec<String> = columns
        .iter()
        .map(|c| {
            format!(
                "CAST({} AS CHAR)",
                mysql_expr(c.kind, &format!("`{}`", c.name))
            )
        })
        .collect();
    let sql = format!("SELECT id, {} FROM {table} ORDER BY id", exprs.join(", "));
    let rows: Vec<mysql_async::Row> = conn.query(sql).await.unwrap_or_default();
    let _ = conn.disconnect().await;
    rows.into_iter()
        .map(|mut r| {
            let mut row = Row::new();
            let id: i64 = r.take(0).unwrap();
            row.insert("id".into(), Value::One(id.to_string()));
            for (i, c) in columns.iter().enumerate() {
                let text: Option<String> = r.take(i + 1).unwrap();
                row.insert(c.name.into(), value_of(c.kind, text.as_deref(), true));
            }
            row
        })
        .collect()
}

async fn redis_rows(url: &str, prefix: &str) -> Vec<Row> {
    let Ok(client) = redis::Client::open(url) else {
        return Vec::new();
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return Vec::new();
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    let mut rows = Vec::new();
    for key in keys {
        let hash: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut row = Row::new();
        let id = String::from_utf8(hash["id"].clone()).unwrap();
        assert_eq!(key, format!("{prefix}{id}"));
        row.insert("id".into(), Value::One(id));
        for c in COLUMNS {
            let text = hash.get(c.name).map(|raw| match c.kind {
                // Redis holds bytes raw.
                Kind::Bytes => raw.iter().map(|b| format!("{b:02x}")).collect(),
                _ => String::from_utf8(raw.clone()).unwrap(),
            });
            if let (Kind::F32, Some(text)) = (c.kind, &text) {
                // The float's own digits, never those of the double it widens to
                // (0.10000000149011612 for 0.1).
                let x = parse_float(text) as f32;
                assert!(
                    !x.is_finite() || parse_float(text) == parse_float(&x.to_string()),
                    "{}: {text:?} is not the float's own text",
                    c.name
                );
            }
            row.insert(c.name.into(), value_of(c.kind, text.as_deref(), false));
        }
        rows.push(row);
    }
    rows.sort_by_key(|r| match &r["id"] {
        Value::One(id) => id.parse::<i64>().unwrap(),
        _ => 0,
    });
    rows
}

/// What differs between the source's rows and a store's, column by column.
fn differences(store: &str, want: &[Row], got: &[Row]) -> Vec<String> {
    let ids = |rows: &[Row]| -> Vec<Value> { rows.iter().map(|r| r["id"].clone()).collect() };
    if ids(want) != ids(got) {
        return vec![format!(
            "{store}: rows {:?}, the source has {:?}",
            ids(got),
            ids(want)
        )];
    }
    let mut out = Vec::new();
    for (w, g) in want.iter().zip(got) {
        for (column, value) in w {
            if g.get(column) != Some(value) {
                out.push(format!(
                    "{store}: row {:?} column {column}: {:?}, the source has {value:?}",
                    w["id"],
                    g.get(column)
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_supported_type_arrives_in_every_store_as_the_source_value() {
    let started = std::time::Instant::now();
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("rep_types", Setup::default()).await;
    let name = daemon.name.clone();
    let source = daemon.pg().await;
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|c| format!("\"{}\" {}", c.name, c.pg))
        .collect();
    source
        .batch_execute(&format!(
            "{TYPES} CREATE TABLE kinds (id bigint PRIMARY KEY, {}); ALTER TABLE kinds OWNER TO walcast;",
            columns.join(", ")
        ))
        .await
        .unwrap();

    // The contracts: a field per column, each nullable; Mood is defined once and referenced.
    let dir = daemon.dir.path();
    let fields: Vec<(&str, String)> = COLUMNS
        .iter()
        .map(|c| (c.name, format!(r#"["null", {}], "default": null"#, c.avro)))
        .collect();
    std::fs::write(
        dir.join("KindChanged.avsc"),
        contract("KindChanged", &fields),
    )
    .unwrap();
    let key = [("id", r#""long""#.to_string())];
    std::fs::write(dir.join("KindKey.avsc"), contract("KindKey", &key)).unwrap();
    std::fs::write(dir.join("KindRemoved.avsc"), contract("KindRemoved", &key)).unwrap();

    let pg_db = stack.fresh_pg_database(&unique("rep_types_pg")).await;
    let mysql_url = stack.fresh_mysql_database(&unique("rep_types_my")).await;
    let redis_prefix = format!("{name}:kind:");
    let topic = format!("{name}.kinds");
    let dlq = format!("{name}.beyond.dlq");
    let mysql_fields: Vec<String> = std::iter::once("id")
        .chain(COLUMNS.iter().filter(|c| c.mysql.is_some()).map(|c| c.name))
        .map(|f| format!("\"{f}\""))
        .collect();
    let beyond_fields: Vec<String> = std::iter::once("id")
        .chain(BEYOND_MYSQL.iter().copied())
        .map(|f| format!("\"{f}\""))
        .collect();
    let sink = |kind: &str, id: &str, url: &str, keys: String| {
        format!(
            "\n[[sink]]\nname = \"{id}-{name}\"\ntype = \"{kind}\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\nbatch_max_wait_ms = 50\n{keys}\n"
        )
    };
    let config = format!(
        r#"[admin]
listen = "127.0.0.1:0"

[kafka]
brokers = "{brokers}"
[kafka.properties]
"linger.ms" = 5
[kafka.topic."{dlq}"]
partitions = 1

[registry]
url = "{registry}"

[[source]]
name = "{name}"
url = "{source_url}"
slot = "{name}"
snapshot = "never"
status_interval_ms = 200

[[source.table]]
table = "public.kinds"
topic = "{topic}"
key = "KindKey.avsc"
insert = "KindChanged.avsc"
update = "KindChanged.avsc"
delete = "KindRemoved.avsc"
{pg}{my}{beyond}{redis}"#,
        brokers = stack.kafka_brokers,
        registry = stack.registry_url,
        source_url = stack.pg_url_for("walcast", &daemon.db),
        pg = sink(
            "postgres",
            "pg",
            &stack.pg_url_for("postgres", &pg_db),
            "table = \"kinds_replica\"\nkey = [\"id\"]\nauto_create = true".into()
        ),
        my = sink(
            "mysql",
            "my",
            &mysql_url,
            format!(
                "table = \"kinds_replica\"\nkey = [\"id\"]\nauto_create = true\nfields = [{}]",
                mysql_fields.join(", ")
            )
        ),
        beyond = sink(
            "mysql",
            "beyond",
            &mysql_url,
            format!(
                "table = \"kinds_beyond\"\nkey = [\"id\"]\nauto_create = true\nfields = [{}]\non_error = \"dead_letter\"\ndead_letter_topic = \"{dlq}\"",
                beyond_fields.join(", ")
            )
        ),
        redis = sink(
            "redis",
            "cache",
            &stack.redis_url,
            format!("key_template = \"{redis_prefix}{{id}}\"")
        ),
    );
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;

    for row in ROWS {
        source.batch_execute(row).await.unwrap();
    }
    source.batch_execute(CHANGES).await.unwrap();

    let all: Vec<&Column> = COLUMNS.iter().collect();
    let in_mysql: Vec<&Column> = COLUMNS.iter().filter(|c| c.mysql.is_some()).collect();
    let beyond: Vec<&Column> = COLUMNS
        .iter()
        .filter(|c| BEYOND_MYSQL.contains(&c.name))
        .collect();
    let pg_url = stack.pg_url_for("postgres", &pg_db);
    let last = std::sync::Mutex::new(Vec::<String>::new());
    wait_for(
        Duration::from_secs(120),
        || {
            format!(
                "every store to hold the source's values:\n{}\n{}",
                last.lock().unwrap().join("\n"),
                daemon.log_text()
            )
        },
        || async {
            let want = source_rows(&source, &all).await;
            let replica = match tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    let mut rows = pg_rows(&client, "kinds_replica", &all).await;
                    in_source_type(&source, &mut rows).await;
                    rows
                }
                Err(_) => Vec::new(),
            };
            let mut mysql = mysql_rows(&mysql_url, "kinds_replica", &in_mysql).await;
            in_source_type(&source, &mut mysql).await;
            let mut cache = redis_rows(&stack.redis_url, &redis_prefix).await;
            in_source_type(&source, &mut cache).await;
            let want_in = |cols: &[&Column], keep: &dyn Fn(&Row) -> bool| -> Vec<Row> {
                want.iter()
                    .filter(|r| keep(r))
                    .map(|r| {
                        let mut row = Row::new();
                        row.insert("id".into(), r["id"].clone());
                        for c in cols {
                            row.insert(c.name.into(), r[c.name].clone());
                        }
                        row
                    })
                    .collect()
            };
            let want_mysql = want_in(&in_mysql, &|_| true);
            // Rows 2 and 3 hold values MariaDB cannot, and go to the dead-letter topic.
            let want_beyond = want_in(
                &beyond,
                &|r| !matches!(&r["id"], Value::One(id) if id == "2" || id == "3"),
            );
            let got_beyond = mysql_rows(&mysql_url, "kinds_beyond", &beyond).await;
            let mut diffs = differences("postgres", &want, &replica);
            diffs.extend(differences("mariadb", &want_mysql, &mysql));
            diffs.extend(differences("mariadb (beyond)", &want_beyond, &got_beyond));
            diffs.extend(differences("redis", &want, &cache));
            let done = diffs.is_empty() && want.len() == 4;
            *last.lock().unwrap() = diffs;
            done.then_some(())
        },
    )
    .await;

    // The tables auto_create made: each field's column type, per the README's type map.
    let replica = stack.pg(&pg_db).await;
    let pg_types: HashMap<String, String> = replica
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'kinds_replica'::regclass AND attnum > 0",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut conn = mysql_async::Conn::from_url(&mysql_url).await.unwrap();
    let mysql_types: HashMap<String, String> = conn
        .query::<(String, String), _>(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'kinds_replica'",
        )
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut wrong = Vec::new();
    for c in COLUMNS {
        if pg_types.get(c.name).map(String::as_str) != Some(c.pg_replica) {
            wrong.push(format!(
                "postgres {}: {:?}, expected {}",
                c.name,
                pg_types.get(c.name),
                c.pg_replica
            ));
        }
        if mysql_types.get(c.name).map(String::as_str) != c.mysql {
            wrong.push(format!(
                "mariadb {}: {:?}, expected {:?}",
                c.name,
                mysql_types.get(c.name),
                c.mysql
            ));
        }
    }
    assert!(wrong.is_empty(), "column types:\n{}", wrong.join("\n"));
    assert_eq!(pg_types["id"], "bigint");
    assert_eq!(mysql_types["id"], "bigint(20)");

    // MariaDB refused rows 2 and 3 of the beyond table with its reason, naming the column.
    let refused = consume_from_start(&stack.kafka_brokers, &dlq, 2).await;
    for r in &refused {
        let message = r
            .headers
            .iter()
            .find(|(k, _)| k == "__walcast.errors.message")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        assert!(
            BEYOND_MYSQL
                .iter()
                .any(|c| message.contains(&format!("`{c}`"))),
            "{message}"
        );
    }
    let _ = conn.disconnect().await;
    eprintln!(
        "every store holds the source's values, after {:?}",
        started.elapsed()
    );
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}
