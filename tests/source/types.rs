//! Spec: every supported PostgreSQL 15 type round-trips from a real server to the exact value,
//! including NaN, ±Infinity, ±infinity, enums, domains, arrays, NULL and unchanged TOAST.

use std::net::IpAddr;
use std::time::Duration;

use crate::support::{source_settings, unique, RunningSource, Stack};
use walcast::source::value::{Infinite, Numeric, Value};
use walcast::source::Change;

/// Days from 2000-01-01 to the civil date (proleptic Gregorian).
fn pg_days(y: i64, m: i64, d: i64) -> i64 {
    let days_from_civil = |y: i64, m: i64, d: i64| {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe
    };
    days_from_civil(y, m, d) - days_from_civil(2000, 1, 1)
}

fn micros(h: i64, mi: i64, s: i64, us: i64) -> i64 {
    ((h * 60 + mi) * 60 + s) * 1_000_000 + us
}

fn num(s: &str) -> Numeric {
    let negative = s.starts_with('-');
    let s = s.trim_start_matches('-');
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = format!("{int}{frac}").trim_start_matches('0').to_string();
    Numeric::Finite {
        negative,
        digits: if digits.is_empty() {
            "0".into()
        } else {
            digits
        },
        scale: frac.len() as u16,
    }
}

const SETUP: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TABLE all_types (
  id int PRIMARY KEY,
  c_bool bool, c_int2 int2, c_int4 int4, c_int8 int8, c_oid oid,
  c_float4 float4, c_float8 float8, c_numeric numeric(12,4), c_numeric_any numeric,
  c_text text, c_varchar varchar(20), c_char char(5), c_name name, c_qchar \"char\",
  c_bytea bytea, c_date date, c_time time, c_timetz timetz, c_timestamp timestamp,
  c_timestamptz timestamptz, c_interval interval, c_uuid uuid, c_json json, c_jsonb jsonb,
  c_inet inet, c_inet6 inet, c_cidr cidr, c_macaddr macaddr, c_macaddr8 macaddr8,
  c_money money, c_bit bit(4), c_varbit varbit(10), c_enum mood, c_domain positive_int,
  c_int_arr int[], c_text_arr text[], c_enum_arr mood[], c_numeric_arr numeric[],
  c_ts_arr timestamptz[], c_uuid_arr uuid[], c_bool_arr boolean[], c_domain_arr positive_int[]
);
ALTER TABLE all_types OWNER TO walcast;
";

const ROW_1: &str = "INSERT INTO all_types VALUES (1,
  true, -32768, 2147483647, -9223372036854775808, 12345,
  1.5, -2.25, 12345.6789, -0.000123,
  'héllo, wörld', 'varchar', 'ab', 'pg_name', 'x',
  '\\xdeadbeef', '2024-02-29', '12:34:56.789012', '12:34:56+02', '1999-12-31 23:59:59.999999',
  '2024-02-29 12:34:56.789012+00', '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{\"a\": 1}', '{\"b\": [1, 2]}',
  '192.168.1.5/24', '::1', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
  1234.56, B'1010', B'101', 'happy', 42,
  '{1,NULL,3}', '{\"a b\",c}', '{sad,happy}', '{1.5,NaN}',
  '{\"2000-01-01 00:00:00+00\",infinity}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '{true,false}', '{7}')";

const ROW_2: &str = "INSERT INTO all_types (id, c_float4, c_float8, c_numeric_any, c_date, c_timestamp, c_timestamptz, c_numeric)
  VALUES (2, 'NaN', '-Infinity', 'Infinity', '-infinity', 'infinity', '-infinity', 'NaN')";

const ROW_3: &str =
    "INSERT INTO all_types (id, c_float4, c_float8, c_numeric_any, c_date, c_text_arr)
  VALUES (3, '-Infinity', 'NaN', '-Infinity', 'infinity', '{}')";

fn get(change: &Change, column: &str) -> Value {
    change
        .new
        .as_ref()
        .unwrap()
        .get(&change.table, column)
        .unwrap_or_else(|| panic!("no column {column}"))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn every_supported_type_round_trips_to_its_exact_value() {
    let stack = Stack::get();
    let name = unique("src_types");
    let db = stack.fresh_pg_database(&name).await;
    let pg = stack.pg(&db).await;
    pg.batch_execute(&format!(
        "{SETUP} GRANT CREATE ON DATABASE {name} TO walcast;"
    ))
    .await
    .unwrap();
    let mut source = RunningSource::start_streaming(
        stack,
        &db,
        source_settings(stack, &name, &db, &["public.all_types"]),
    )
    .await;
    for sql in [ROW_1, ROW_2, ROW_3, "INSERT INTO all_types (id) VALUES (4)"] {
        pg.batch_execute(sql).await.unwrap();
    }
    let rows = source.changes(4, Duration::from_secs(30)).await;
    let r = &rows[0];

    let expected: Vec<(&str, Value)> = vec![
        ("c_bool", Value::Bool(true)),
        ("c_int2", Value::Int2(-32768)),
        ("c_int4", Value::Int4(2147483647)),
        ("c_int8", Value::Int8(i64::MIN)),
        ("c_oid", Value::Oid(12345)),
        ("c_float4", Value::Float4(1.5)),
        ("c_float8", Value::Float8(-2.25)),
        ("c_numeric", Value::Numeric(num("12345.6789"))),
        ("c_numeric_any", Value::Numeric(num("-0.000123"))),
        ("c_text", Value::Text("héllo, wörld".into())),
        ("c_varchar", Value::Text("varchar".into())),
        ("c_char", Value::Text("ab   ".into())),
        ("c_name", Value::Text("pg_name".into())),
        ("c_qchar", Value::Char(b'x')),
        (
            "c_bytea",
            Value::Bytea(bytes::Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef])),
        ),
        (
            "c_date",
            Value::Date(Infinite::Finite(pg_days(2024, 2, 29) as i32)),
        ),
        ("c_time", Value::Time(micros(12, 34, 56, 789_012))),
        (
            "c_timetz",
            Value::TimeTz {
                micros: micros(12, 34, 56, 0),
                offset_secs: 7200,
            },
        ),
        ("c_timestamp", Value::Timestamp(Infinite::Finite(-1))),
        (
            "c_timestamptz",
            Value::TimestampTz(Infinite::Finite(
                pg_days(2024, 2, 29) * 86_400_000_000 + micros(12, 34, 56, 789_012),
            )),
        ),
        (
            "c_interval",
            Value::Interval {
                months: 14,
                days: 3,
                micros: micros(4, 5, 6, 789_000),
            },
        ),
        (
            "c_uuid",
            Value::Uuid(*b"\xa0\xee\xbc\x99\x9c\x0b\x4e\xf8\xbb\x6d\x6b\xb9\xbd\x38\x0a\x11"),
        ),
        ("c_json", Value::Json("{\"a\": 1}".into())),
        ("c_jsonb", Value::Jsonb("{\"b\": [1, 2]}".into())),
        (
            "c_inet",
            Value::Inet {
                addr: "192.168.1.5".parse::<IpAddr>().unwrap(),
                prefix: 24,
            },
        ),
        (
            "c_inet6",
            Value::Inet {
                addr: "::1".parse::<IpAddr>().unwrap(),
                prefix: 128,
            },
        ),
        (
            "c_cidr",
            Value::Cidr {
                addr: "10.0.0.0".parse::<IpAddr>().unwrap(),
                prefix: 8,
            },
        ),
        (
            "c_macaddr",
            Value::MacAddr([0x08, 0x00, 0x2b, 0x01, 0x02, 0x03]),
        ),
        (
            "c_macaddr8",
            Value::MacAddr8([0x08, 0x00, 0x2b, 0x01, 0x02, 0x03, 0x04, 0x05]),
        ),
        (
            "c_money",
            Value::Money {
                units: 123_456,
                digits: 2,
            },
        ),
        ("c_enum", Value::Enum("happy".into())),
        ("c_domain", Value::Int4(42)),
        (
            "c_int_arr",
            Value::Array(vec![Value::Int4(1), Value::Null, Value::Int4(3)]),
        ),
        (
            "c_text_arr",
            Value::Array(vec![Value::Text("a b".into()), Value::Text("c".into())]),
        ),
        (
            "c_enum_arr",
            Value::Array(vec![Value::Enum("sad".into()), Value::Enum("happy".into())]),
        ),
        (
            "c_numeric_arr",
            Value::Array(vec![
                Value::Numeric(num("1.5")),
                Value::Numeric(Numeric::NaN),
            ]),
        ),
        (
            "c_ts_arr",
            Value::Array(vec![
                Value::TimestampTz(Infinite::Finite(0)),
                Value::TimestampTz(Infinite::Infinity),
            ]),
        ),
        (
            "c_uuid_arr",
            Value::Array(vec![Value::Uuid(
                *b"\xa0\xee\xbc\x99\x9c\x0b\x4e\xf8\xbb\x6d\x6b\xb9\xbd\x38\x0a\x11",
            )]),
        ),
        (
            "c_bool_arr",
            Value::Array(vec![Value::Bool(true), Value::Bool(false)]),
        ),
        ("c_domain_arr", Value::Array(vec![Value::Int4(7)])),
    ];
    for (column, want) in expected {
        assert_eq!(get(r, column), want, "{column}");
    }
    let bits = |c: &str| match get(r, c) {
        Value::Bit(b) | Value::VarBit(b) => b.to_string(),
        other => panic!("{c}: {other:?}"),
    };
    assert_eq!(
        (bits("c_bit"), bits("c_varbit")),
        ("1010".to_string(), "101".to_string())
    );

    // Special values.
    let (r2, r3) = (&rows[1], &rows[2]);
    assert!(matches!(get(r2, "c_float4"), Value::Float4(x) if x.is_nan()));
    assert_eq!(get(r2, "c_float8"), Value::Float8(f64::NEG_INFINITY));
    assert_eq!(get(r2, "c_numeric_any"), Value::Numeric(Numeric::Infinity));
    assert_eq!(get(r2, "c_numeric"), Value::Numeric(Numeric::NaN));
    assert_eq!(get(r2, "c_date"), Value::Date(Infinite::NegInfinity));
    assert_eq!(get(r2, "c_timestamp"), Value::Timestamp(Infinite::Infinity));
    assert_eq!(
        get(r2, "c_timestamptz"),
        Value::TimestampTz(Infinite::NegInfinity)
    );
    assert_eq!(get(r3, "c_float4"), Value::Float4(f32::NEG_INFINITY));
    assert!(matches!(get(r3, "c_float8"), Value::Float8(x) if x.is_nan()));
    assert_eq!(
        get(r3, "c_numeric_any"),
        Value::Numeric(Numeric::NegInfinity)
    );
    assert_eq!(get(r3, "c_date"), Value::Date(Infinite::Infinity));
    assert_eq!(get(r3, "c_text_arr"), Value::Array(vec![]));

    // NULL in every column but the key.
    let r4 = &rows[3];
    for (i, column) in r4.table.columns.iter().enumerate().skip(1) {
        assert_eq!(
            r4.new.as_ref().unwrap().value(&r4.table, i).unwrap(),
            Value::Null,
            "{}",
            column.name
        );
    }
    source.stop().await.unwrap();
}

#[tokio::test]
async fn an_unchanged_toast_value_is_explicit_never_null() {
    let stack = Stack::get();
    let name = unique("src_toast");
    let db = stack.fresh_pg_database(&name).await;
    let pg = stack.pg(&db).await;
    pg.batch_execute(&format!(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER TABLE docs OWNER TO walcast; GRANT CREATE ON DATABASE {name} TO walcast;"
    ))
    .await
    .unwrap();
    let mut source = RunningSource::start_streaming(
        stack,
        &db,
        source_settings(stack, &name, &db, &["public.docs"]),
    )
    .await;
    let body: String = (0..20_000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    pg.execute("INSERT INTO docs VALUES (1, 'first', $1)", &[&body])
        .await
        .unwrap();
    pg.execute("UPDATE docs SET title = 'second' WHERE id = 1", &[])
        .await
        .unwrap();
    let changes = source.changes(2, Duration::from_secs(30)).await;
    assert_eq!(get(&changes[0], "body"), Value::Text(body));
    assert_eq!(get(&changes[1], "title"), Value::Text("second".into()));
    assert_eq!(get(&changes[1], "body"), Value::UnchangedToast);
    source.stop().await.unwrap();
}

/// `money` is a count of the currency's smallest unit: the source asks the server how many
/// fractional digits its `lc_monetary` currency has, rather than taking two (a currency
/// without minor units would read 100 times too small). The answer agrees with how the
/// server itself writes `1::money`.
#[tokio::test]
async fn money_takes_the_fractional_digits_of_the_databases_currency() {
    let stack = Stack::get();
    let db = stack.fresh_pg_database(&unique("src_money")).await;
    let url = stack.pg_url_for("postgres", &db);
    let mut catalog =
        walcast::source::catalog::Catalog::connect(&url, "money", &Default::default())
            .await
            .unwrap();
    let shown: String = stack
        .pg(&db)
        .await
        .query_one("SELECT 1::money::text", &[])
        .await
        .unwrap()
        .get(0);
    // "$1.00", "1,00 €", "￥1": the digits after the one.
    let fractional = shown.chars().filter(char::is_ascii_digit).count() - 1;
    assert_eq!(
        usize::from(catalog.money_digits().await.unwrap()),
        fractional,
        "{shown}"
    );
}
