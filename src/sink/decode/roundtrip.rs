//! Property: every value the source can publish comes back from the sink as the connector
//! value it stands for. A value is encoded by the events encoder
//! ([`crate::events::avro::encode`]) under a contract field of each Avro type, decoded as
//! [`super::Decoder::record`] decodes a record (apache-avro with the writer's schema, then
//! [`super::convert`] by the view's schema), and compared with the connector value
//! worked out independently here.
//!
//! Values come from a seeded xorshift generator; a failure prints the seed. Set
//! `WALCAST_ROUNDTRIP_SEED` to replay it, and `WALCAST_ROUNDTRIP_CASES` for more values.

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use bytes::Bytes;
use connectors::Value as Sink;

use crate::events::avro::{convertible, encode, Slot};
use crate::events::contract::slot_of;
use crate::source::value::{Infinite, Numeric, PgType, ScalarType, Value};

/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds between 1970-01-01 and 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const DAY_MICROS: i64 = 86_400_000_000;
/// PostgreSQL's date range, in days since 2000-01-01: 4714-11-24 BC to 5874897-12-31.
const PG_MIN_DATE: i64 = -2_451_545;
const PG_MAX_DATE: i64 = 2_145_031_948;
/// PostgreSQL's first timestamp, 4714-11-24 BC, in microseconds since 2000-01-01.
const PG_MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// The last microsecond of the Unix-epoch `long` that timestamp-micros is, in
/// microseconds since 2000-01-01 (294247 AD). PostgreSQL's run on to 294276 AD; the
/// encoder refuses those (see `events::avro`'s tests).
const AVRO_MAX_TIMESTAMP: i64 = i64::MAX - PG_EPOCH_MICROS;

/// xorshift64*: small, fast, and good enough to pick test values.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi as i128 - lo as i128 + 1) as u128;
        (lo as i128 + (u128::from(self.next()) % span) as i128) as i64
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// Mostly small magnitudes, sometimes the extremes, sometimes anything.
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        match self.below(8) {
            0 => *self.pick(&[lo, hi, 0.clamp(lo, hi), (lo + 1).min(hi), (hi - 1).max(lo)]),
            1..=3 => self.between((-1000).max(lo), 1000.min(hi)),
            _ => self.between(lo, hi),
        }
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|i| {
                let lo = if i == 0 { 1 } else { 0 };
                char::from(b'0' + (lo + self.below(10 - lo)) as u8)
            })
            .collect()
    }
    fn text(&mut self) -> String {
        const CHARS: &[char] = &[
            'a', 'Z', '0', ' ', '"', '\\', '\n', '\t', 'é', 'ß', '€', '日', '本', '😀', '\u{7f}',
            '\u{1}', '\u{ffff}',
        ];
        let len = self.below(40) as usize;
        (0..len).map(|_| *self.pick(CHARS)).collect()
    }
}

/// Connector values compared as stored: floats and doubles by their bits, so NaN is NaN.
fn same(a: &Sink, b: &Sink) -> bool {
    match (a, b) {
        (Sink::Double(x), Sink::Double(y)) => x.to_bits() == y.to_bits(),
        (Sink::Float(x), Sink::Float(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// One contract field type, with the source values that may feed it.
struct Case {
    /// The field's Avro type, as a contract writes it.
    avro: &'static str,
    /// A source value and the connector value it must come back as.
    gen: fn(&mut Rng) -> (Value, Sink),
}

/// The sink's decoding of a record body whose writer's schema is `schema` (the part of
/// `Decoder::record` after the registry lookup: [`super::Resolution::read`], which walks
/// the body's bounds first, so every publishable value must pass them).
fn sink_decode(schema: &Schema, body: &[u8]) -> Result<Vec<(String, Sink)>, String> {
    let mut rest = body;
    apache_avro::from_avro_datum(schema, &mut rest, None).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} byte(s) left over", rest.len()));
    }
    let text = schema.canonical_form();
    super::Resolution::new(schema.clone(), &text, None)?.read(1, body)
}

fn source_type(value: &Value) -> Option<PgType> {
    use ScalarType as S;
    let s = match value {
        Value::Bool(_) => S::Bool,
        Value::Int2(_) => S::Int2,
        Value::Int4(_) => S::Int4,
        Value::Int8(_) => S::Int8,
        Value::Oid(_) => S::Oid,
        Value::Float4(_) => S::Float4,
        Value::Float8(_) => S::Float8,
        Value::Numeric(_) => S::Numeric,
        Value::Text(_) => S::Text,
        Value::Enum(_) => S::Enum,
        Value::Json(_) => S::Json,
        Value::Bytea(_) => S::Bytea,
        Value::Date(_) => S::Date,
        Value::Time(_) => S::Time,
        Value::Timestamp(_) => S::Timestamp,
        Value::TimestampTz(_) => S::TimestampTz,
        Value::Uuid(_) => S::Uuid,
        _ => return None,
    };
    Some(PgType::Scalar(s))
}

fn cases_per_type() -> usize {
    std::env::var("WALCAST_ROUNDTRIP_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

fn seed() -> u64 {
    match std::env::var("WALCAST_ROUNDTRIP_SEED") {
        Ok(s) => s.parse().expect("WALCAST_ROUNDTRIP_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

/// Runs every case as a plain field and as a nullable one (null first, and null second),
/// and returns the failures.
fn run(cases: &[Case], seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    for case in cases {
        for (union, field) in [
            (false, case.avro.to_string()),
            (true, format!(r#"["null", {}], "default": null"#, case.avro)),
            (true, format!(r#"[{}, "null"]"#, case.avro)),
        ] {
            let text = format!(
                r#"{{"type": "record", "name": "R", "fields": [{{"name": "v", "type": {field}}}]}}"#
            );
            let schema = match Schema::parse_str(&text) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{text}: {e}"));
                    continue;
                }
            };
            let Schema::Record(record) = &schema else {
                unreachable!("a record")
            };
            let slot: Slot = match slot_of(&record.fields[0].schema) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{field}: no slot: {e}"));
                    continue;
                }
            };
            for i in 0..n {
                let (value, expected) = if union && rng.chance(4) {
                    (Value::Null, Sink::Null)
                } else {
                    (case.gen)(&mut rng)
                };
                if let Some(problem) = check(&schema, &slot, &value, &expected) {
                    failures.push(format!("{field}, case {i}: {value:?}: {problem}"));
                }
                if failures.len() >= 20 {
                    return failures;
                }
            }
        }
    }
    failures
}

fn check(schema: &Schema, slot: &Slot, value: &Value, expected: &Sink) -> Option<String> {
    if let Some(pg) = source_type(value) {
        if let Err(e) = convertible(&pg, &slot.enc) {
            return Some(format!("the mapping would refuse it: {e}"));
        }
    }
    let mut body = Vec::new();
    if let Err(e) = encode(slot, value, &mut body) {
        return Some(format!("did not encode: {e}"));
    }
    match sink_decode(schema, &body) {
        Err(e) => Some(format!("did not decode: {e}")),
        Ok(fields) if fields.len() == 1 && same(&fields[0].1, expected) => None,
        Ok(fields) => Some(format!("came back as {fields:?}, not {expected:?}")),
    }
}

fn int2(rng: &mut Rng) -> i16 {
    rng.int(i16::MIN.into(), i16::MAX.into()) as i16
}
fn int4(rng: &mut Rng) -> i32 {
    rng.int(i32::MIN.into(), i32::MAX.into()) as i32
}
fn int8(rng: &mut Rng) -> i64 {
    rng.int(i64::MIN, i64::MAX)
}

fn float4(rng: &mut Rng) -> f32 {
    match rng.below(4) {
        0 => *rng.pick(&[
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            f32::MAX,
        ]),
        1 => rng.between(-1_000_000, 1_000_000) as f32 / 8.0,
        _ => f32::from_bits(rng.next() as u32),
    }
}
fn float8(rng: &mut Rng) -> f64 {
    match rng.below(4) {
        0 => *rng.pick(&[
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
        ]),
        1 => rng.between(-1_000_000, 1_000_000) as f64 / 1024.0,
        _ => f64::from_bits(rng.next()),
    }
}

/// The exact text of `negative` `digits` × 10^-`scale`, written independently of both the
/// encoder and the sink's decoder.
fn decimal_text(negative: bool, digits: &str, scale: usize) -> String {
    let digits = format!(
        "{}{digits}",
        "0".repeat((scale + 1).saturating_sub(digits.len()))
    );
    let (int, frac) = digits.split_at(digits.len() - scale);
    let sign = if negative && digits.bytes().any(|b| b != b'0') {
        "-"
    } else {
        ""
    };
    if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// A numeric that fits `precision` digits at the field's `scale`, sometimes written with
/// more (zero) decimal places than the field has, as `numeric` columns may be.
fn numeric(rng: &mut Rng, precision: usize, scale: usize) -> (Value, Sink) {
    let negative = rng.chance(2);
    let value_scale = rng.below(scale as u64 + 1) as usize;
    let room = precision - (scale - value_scale);
    let n = match rng.below(4) {
        0 => room, // as wide as the field takes: beyond 64 bits for wide decimals
        _ => 1 + rng.below(room.max(1) as u64) as usize,
    };
    // A field whose scale is its precision holds only values below 1.
    let mut digits = if room == 0 || rng.chance(16) {
        "0".to_string()
    } else {
        rng.digits(n)
    };
    let expected = decimal_text(
        negative,
        &(digits.clone() + &"0".repeat(scale - value_scale)),
        scale,
    );
    let extra_zeros = if rng.chance(4) {
        rng.below(4) as usize
    } else {
        0
    };
    if digits != "0" {
        digits.push_str(&"0".repeat(extra_zeros));
    }
    let value_scale = if digits == "0" {
        value_scale
    } else {
        value_scale + extra_zeros
    };
    (
        Value::Numeric(Numeric::Finite {
            negative,
            digits,
            scale: value_scale as u16,
        }),
        Sink::Decimal(expected),
    )
}

/// An integer column feeding a decimal field at `scale`, within the field's precision.
fn integer_decimal(rng: &mut Rng, precision: usize, scale: usize) -> (Value, Sink) {
    let max = 10i64.pow((precision - scale).min(18) as u32) - 1;
    let n = rng.int(-max, max);
    let value = match (i16::try_from(n), i32::try_from(n)) {
        (Ok(n), _) if rng.chance(2) => Value::Int2(n),
        (_, Ok(n)) if rng.chance(2) => Value::Int4(n),
        _ => Value::Int8(n),
    };
    let digits = format!("{}{}", n.unsigned_abs(), "0".repeat(scale));
    (value, Sink::Decimal(decimal_text(n < 0, &digits, scale)))
}

/// Field types with the values each takes. Decimals are at several scales, up to 38
/// digits (beyond 64 bits), as `bytes` and as `fixed`.
fn cases() -> Vec<Case> {
    macro_rules! decimal {
        ($avro:expr, $precision:expr, $scale:expr) => {
            Case {
                avro: $avro,
                gen: |rng| {
                    if $scale < $precision && rng.chance(4) {
                        integer_decimal(rng, $precision, $scale)
                    } else {
                        numeric(rng, $precision, $scale)
                    }
                },
            }
        };
    }
    vec![
        Case {
            avro: r#""boolean""#,
            gen: |rng| {
                let b = rng.chance(2);
                (Value::Bool(b), Sink::Bool(b))
            },
        },
        Case {
            avro: r#""int""#,
            gen: |rng| {
                if rng.chance(2) {
                    let n = int2(rng);
                    (Value::Int2(n), Sink::Long(n.into()))
                } else {
                    let n = int4(rng);
                    (Value::Int4(n), Sink::Long(n.into()))
                }
            },
        },
        Case {
            avro: r#""long""#,
            gen: |rng| match rng.below(4) {
                0 => {
                    let n = int2(rng);
                    (Value::Int2(n), Sink::Long(n.into()))
                }
                1 => {
                    let n = int4(rng);
                    (Value::Int4(n), Sink::Long(n.into()))
                }
                2 => {
                    let n = rng.int(0, u32::MAX.into()) as u32;
                    (Value::Oid(n), Sink::Long(n.into()))
                }
                _ => {
                    let n = int8(rng);
                    (Value::Int8(n), Sink::Long(n))
                }
            },
        },
        Case {
            avro: r#""float""#,
            gen: |rng| {
                let x = float4(rng);
                (Value::Float4(x), Sink::Float(x))
            },
        },
        Case {
            avro: r#""double""#,
            gen: |rng| {
                if rng.chance(3) {
                    let x = float4(rng);
                    (Value::Float4(x), Sink::Double(x.into()))
                } else {
                    let x = float8(rng);
                    (Value::Float8(x), Sink::Double(x))
                }
            },
        },
        Case {
            avro: r#""string""#,
            gen: |rng| {
                let s = rng.text();
                let v = match rng.below(3) {
                    0 => Value::Text(s.clone()),
                    1 => Value::Enum(s.clone()),
                    _ => Value::Json(s.clone()),
                };
                (v, Sink::Text(s))
            },
        },
        Case {
            avro: r#""bytes""#,
            gen: |rng| {
                let len = rng.below(48) as usize;
                let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                (Value::Bytea(Bytes::from(b.clone())), Sink::Bytes(b))
            },
        },
        decimal!(
            r#"{"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 0}"#,
            38,
            0
        ),
        decimal!(
            r#"{"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}"#,
            10,
            2
        ),
        decimal!(
            r#"{"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 9}"#,
            38,
            9
        ),
        decimal!(
            r#"{"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 18}"#,
            38,
            18
        ),
        decimal!(
            r#"{"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 38}"#,
            38,
            38
        ),
        decimal!(
            r#"{"type": "fixed", "name": "D16", "size": 16, "logicalType": "decimal", "precision": 38, "scale": 4}"#,
            38,
            4
        ),
        decimal!(
            r#"{"type": "fixed", "name": "D8", "size": 8, "logicalType": "decimal", "precision": 18, "scale": 6}"#,
            18,
            6
        ),
        Case {
            avro: r#"{"type": "int", "logicalType": "date"}"#,
            gen: |rng| {
                let d = rng.int(PG_MIN_DATE, PG_MAX_DATE) as i32;
                (
                    Value::Date(Infinite::Finite(d)),
                    Sink::Date(d + PG_EPOCH_DAYS),
                )
            },
        },
        Case {
            avro: r#"{"type": "long", "logicalType": "time-micros"}"#,
            gen: |rng| {
                let us = rng.int(0, DAY_MICROS);
                (Value::Time(us), Sink::Time(us))
            },
        },
        Case {
            // Milliseconds: the microseconds are cut off.
            avro: r#"{"type": "int", "logicalType": "time-millis"}"#,
            gen: |rng| {
                let us = rng.int(0, DAY_MICROS);
                (Value::Time(us), Sink::Time(us / 1000 * 1000))
            },
        },
        Case {
            avro: r#"{"type": "long", "logicalType": "timestamp-micros"}"#,
            gen: |rng| {
                let us = rng.int(PG_MIN_TIMESTAMP, AVRO_MAX_TIMESTAMP);
                (
                    Value::TimestampTz(Infinite::Finite(us)),
                    Sink::Timestamp(us + PG_EPOCH_MICROS),
                )
            },
        },
        Case {
            // Milliseconds: rounded down, also before 1970.
            avro: r#"{"type": "long", "logicalType": "timestamp-millis"}"#,
            gen: |rng| {
                let us = rng.int(PG_MIN_TIMESTAMP, AVRO_MAX_TIMESTAMP);
                let unix = us + PG_EPOCH_MICROS;
                (
                    Value::TimestampTz(Infinite::Finite(us)),
                    Sink::Timestamp(unix.div_euclid(1000) * 1000),
                )
            },
        },
        Case {
            avro: r#"{"type": "long", "logicalType": "local-timestamp-micros"}"#,
            gen: |rng| {
                let us = rng.int(PG_MIN_TIMESTAMP, AVRO_MAX_TIMESTAMP);
                (
                    Value::Timestamp(Infinite::Finite(us)),
                    Sink::LocalTimestamp(us + PG_EPOCH_MICROS),
                )
            },
        },
        Case {
            avro: r#"{"type": "long", "logicalType": "local-timestamp-millis"}"#,
            gen: |rng| {
                let us = rng.int(PG_MIN_TIMESTAMP, AVRO_MAX_TIMESTAMP);
                let unix = us + PG_EPOCH_MICROS;
                (
                    Value::Timestamp(Infinite::Finite(us)),
                    Sink::LocalTimestamp(unix.div_euclid(1000) * 1000),
                )
            },
        },
        Case {
            avro: r#"{"type": "enum", "name": "Mood", "symbols": ["happy", "sad", "ok", "_unknown", "Z9"]}"#,
            gen: |rng| {
                let s = rng
                    .pick(&["happy", "sad", "ok", "_unknown", "Z9"])
                    .to_string();
                let v = if rng.chance(2) {
                    Value::Enum(s.clone())
                } else {
                    Value::Text(s.clone())
                };
                (v, Sink::Text(s))
            },
        },
        Case {
            avro: r#"{"type": "string", "logicalType": "uuid"}"#,
            gen: uuid,
        },
        Case {
            avro: r#""string""#,
            gen: uuid,
        },
    ]
}

/// A uuid column feeds a string field, with or without the `uuid` logical type, in its
/// canonical lower-case text form.
fn uuid(rng: &mut Rng) -> (Value, Sink) {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = rng.next() as u8;
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let text = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    (Value::Uuid(b), Sink::Text(text))
}

#[test]
fn every_publishable_value_comes_back_from_the_sink_as_the_same_connector_value() {
    let seed = seed();
    // Printed with the output of a failing test, whatever fails.
    eprintln!("WALCAST_ROUNDTRIP_SEED={seed}");
    let failures = run(&cases(), seed, cases_per_type());
    assert!(
        failures.is_empty(),
        "round trip failed with WALCAST_ROUNDTRIP_SEED={seed}:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn the_generator_reaches_decimals_beyond_64_bits_and_the_timestamp_extremes() {
    // Guards the property above against a generator that quietly stopped covering them.
    let mut rng = Rng::new(seed());
    let wide = (0..200)
        .filter(|_| match numeric(&mut rng, 38, 0).1 {
            Sink::Decimal(t) => t.trim_start_matches('-').len() > 20,
            _ => false,
        })
        .count();
    assert!(
        wide > 20,
        "only {wide} of 200 decimals were wider than 64 bits"
    );
    let extremes = (0..400)
        .filter(|_| {
            let us = rng.int(PG_MIN_TIMESTAMP, AVRO_MAX_TIMESTAMP);
            us == PG_MIN_TIMESTAMP || us == AVRO_MAX_TIMESTAMP
        })
        .count();
    assert!(extremes > 0, "no timestamp extreme in 400 draws");
}

#[test]
fn arrays_come_back_as_arrays_of_their_items() {
    let schema = Schema::parse_str(
        r#"{"type": "record", "name": "R", "fields": [{"name": "v", "type": {"type": "array", "items": "long"}}]}"#,
    )
    .unwrap();
    let Schema::Record(record) = &schema else {
        unreachable!()
    };
    let slot = slot_of(&record.fields[0].schema).unwrap();
    let mut rng = Rng::new(seed());
    for _ in 0..50 {
        let items: Vec<i64> = (0..rng.below(5)).map(|_| int8(&mut rng)).collect();
        let value = Value::Array(items.iter().map(|n| Value::Int8(*n)).collect());
        let mut body = Vec::new();
        encode(&slot, &value, &mut body).unwrap();
        let decoded = apache_avro::from_avro_datum(&schema, &mut &body[..], None).unwrap();
        assert_eq!(
            decoded,
            Avro::Record(vec![(
                "v".into(),
                Avro::Array(items.iter().map(|n| Avro::Long(*n)).collect())
            )])
        );
        assert_eq!(
            sink_decode(&schema, &body).unwrap(),
            vec![(
                "v".to_string(),
                Sink::Array(items.iter().map(|n| Sink::Long(*n)).collect())
            )]
        );
    }
}
