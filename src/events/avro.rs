//! Avro binary encoding of PostgreSQL values, straight from [`Value`] to bytes.
//!
//! A field's [`Slot`] is compiled once per table shape (see [`super::mapping`]) from the
//! column's PostgreSQL type and the field's Avro type, so every question of *whether* a
//! column can feed a field is settled before data moves; encoding a row is then a walk over
//! the slots with no schema lookups. apache-avro parses the contracts, but its value tree
//! would cost an allocation per field per event, which the throughput target cannot afford.
//!
//! # Type map
//! | PostgreSQL | Avro |
//! |---|---|
//! | boolean | boolean |
//! | smallint, integer | int, long |
//! | bigint, oid | long |
//! | real | float, double |
//! | double precision | double |
//! | numeric, smallint/integer/bigint | `decimal` (bytes or fixed), scale ≥ the value's |
//! | bytea | bytes |
//! | uuid | string, `uuid` |
//! | date | `date` |
//! | time | `time-micros`, `time-millis` |
//! | timestamptz | `timestamp-micros`, `timestamp-millis` |
//! | timestamp | `local-timestamp-micros`, `local-timestamp-millis` |
//! | enum, text | Avro `enum` (by symbol) |
//! | anything scalar | string, in PostgreSQL's text form (ISO 8601 for dates and times) |
//! | one-dimensional arrays | `array` of the element's mapping |
//!
//! A nullable field is a union with `"null"`; a NULL for any other field is an error naming
//! the column. ±infinity dates and timestamps have no Avro value but as strings.

use std::fmt::Write as _;

use crate::source::value::{Infinite, Numeric, PgType, ScalarType, Value};

/// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// How one value is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Enc {
    /// Avro `boolean`.
    Boolean,
    /// Avro `int`, zigzag varint of 32 bits.
    Int,
    /// Avro `long`, zigzag varint of 64 bits.
    Long,
    /// Avro `float`, 4 bytes little-endian.
    Float,
    /// Avro `double`, 8 bytes little-endian.
    Double,
    /// PostgreSQL's text form of the value.
    String,
    /// Avro `bytes`.
    Bytes,
    /// Unscaled two's-complement integer at `scale`; in `fixed` bytes when set.
    Decimal {
        /// Digits after the decimal point, from the schema.
        scale: u32,
        /// Byte size of a `fixed`-based decimal; `None` for a `bytes`-based one.
        fixed: Option<usize>,
    },
    /// Avro `date`: days since 1970-01-01.
    Date,
    /// Avro `time-millis`: milliseconds since midnight.
    TimeMillis,
    /// Avro `time-micros`: microseconds since midnight.
    TimeMicros,
    /// Avro `timestamp-millis`: milliseconds since the Unix epoch, UTC.
    TimestampMillis,
    /// Avro `timestamp-micros`: microseconds since the Unix epoch, UTC.
    TimestampMicros,
    /// Avro `local-timestamp-millis`: milliseconds since 1970-01-01 00:00:00, no time zone.
    LocalTimestampMillis,
    /// Avro `local-timestamp-micros`: microseconds since 1970-01-01 00:00:00, no time zone.
    LocalTimestampMicros,
    /// An Avro enum: the index of the value's symbol.
    Enum(Vec<String>),
    /// An Avro array of items encoded as the slot says.
    Array(Box<Slot>),
}

/// A compiled field: its encoding, and where `null` and the value sit in its union.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// How a non-null value is written.
    pub enc: Enc,
    /// `(null branch, value branch)` when the field is a union with null.
    pub nullable: Option<(u32, u32)>,
}

/// A value the slot cannot take; the caller adds the table, column and contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

/// Whether a column of type `pg` can feed a field encoded as `enc`; `Err` says why not.
pub fn convertible(pg: &PgType, enc: &Enc) -> Result<(), String> {
    use ScalarType as S;
    let scalar = match (pg, enc) {
        (PgType::Array(s), Enc::Array(item)) => {
            return convertible(&PgType::Scalar(*s), &item.enc);
        }
        (PgType::Array(_), Enc::String) => return Ok(()),
        (PgType::Array(_), _) => {
            return Err("an array column feeds an Avro array or a string".into())
        }
        (_, Enc::Array(_)) => return Err("only an array column can feed an Avro array".into()),
        (PgType::Unsupported(t), _) => return Err(format!("type {t} is not supported")),
        (PgType::Scalar(s), _) => *s,
    };
    let ok = match enc {
        Enc::String => true,
        Enc::Boolean => scalar == S::Bool,
        Enc::Int => matches!(scalar, S::Int2 | S::Int4),
        Enc::Long => matches!(scalar, S::Int2 | S::Int4 | S::Int8 | S::Oid),
        Enc::Float => scalar == S::Float4,
        Enc::Double => matches!(scalar, S::Float4 | S::Float8),
        Enc::Bytes => scalar == S::Bytea,
        Enc::Decimal { .. } => matches!(scalar, S::Numeric | S::Int2 | S::Int4 | S::Int8),
        Enc::Date => scalar == S::Date,
        Enc::TimeMillis | Enc::TimeMicros => scalar == S::Time,
        Enc::TimestampMillis | Enc::TimestampMicros => scalar == S::TimestampTz,
        Enc::LocalTimestampMillis | Enc::LocalTimestampMicros => scalar == S::Timestamp,
        Enc::Enum(_) => matches!(scalar, S::Enum | S::Text),
        Enc::Array(_) => false,
    };
    if ok {
        return Ok(());
    }
    let hint = match (scalar, enc) {
        (S::Timestamp, Enc::TimestampMicros | Enc::TimestampMillis) => {
            ": a timestamp without time zone is local-timestamp-micros (or make the column timestamptz)"
        }
        (S::TimestampTz, Enc::LocalTimestampMicros | Enc::LocalTimestampMillis) => {
            ": a timestamptz is timestamp-micros"
        }
        (S::Int8, Enc::Int) => ": a bigint needs long",
        (S::Float8, Enc::Float) => ": a double precision needs double",
        _ => "",
    };
    Err(format!("it does not convert to {}{hint}", enc_name(enc)))
}

/// The Avro name of an encoding, for messages.
pub fn enc_name(enc: &Enc) -> String {
    match enc {
        Enc::Boolean => "boolean".into(),
        Enc::Int => "int".into(),
        Enc::Long => "long".into(),
        Enc::Float => "float".into(),
        Enc::Double => "double".into(),
        Enc::String => "string".into(),
        Enc::Bytes => "bytes".into(),
        Enc::Decimal { scale, .. } => format!("decimal (scale {scale})"),
        Enc::Date => "date".into(),
        Enc::TimeMillis => "time-millis".into(),
        Enc::TimeMicros => "time-micros".into(),
        Enc::TimestampMillis => "timestamp-millis".into(),
        Enc::TimestampMicros => "timestamp-micros".into(),
        Enc::LocalTimestampMillis => "local-timestamp-millis".into(),
        Enc::LocalTimestampMicros => "local-timestamp-micros".into(),
        Enc::Enum(_) => "an Avro enum".into(),
        Enc::Array(item) => format!("array of {}", enc_name(&item.enc)),
    }
}

/// Writes `n` as an Avro `long`: zigzag, then a little-endian base-128 varint.
pub fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Writes `value` as `slot` says.
pub fn encode(slot: &Slot, value: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match (value, slot.nullable) {
        (Value::Null, Some((null, _))) => {
            write_long(out, i64::from(null));
            return Ok(());
        }
        (Value::Null, None) => {
            return Err(EncodeError(
                "the value is NULL but the field is not nullable; make it a union with null (\"type\": [\"null\", …], \"default\": null) or add NOT NULL to the column".into(),
            ))
        }
        (_, Some((_, branch))) => write_long(out, i64::from(branch)),
        (_, None) => {}
    }
    encode_value(&slot.enc, value, out)
}

fn encode_value(enc: &Enc, value: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let infinite = || {
        EncodeError(format!(
            "{} has no {} value; map the column to a string field to carry ±infinity",
            render(value),
            enc_name(enc)
        ))
    };
    // PostgreSQL's timestamps run to 294276 AD; Unix-epoch microseconds in a long, to
    // 294247 AD.
    let out_of_range = || {
        EncodeError(format!(
            "{} is beyond the range of {} (Unix-epoch microseconds in a long end in 294247 AD); map the column to a string field to carry it",
            render(value),
            enc_name(enc)
        ))
    };
    match (enc, value) {
        (Enc::Boolean, Value::Bool(b)) => out.push(u8::from(*b)),
        (Enc::Int | Enc::Long, Value::Int2(n)) => write_long(out, i64::from(*n)),
        (Enc::Int | Enc::Long, Value::Int4(n)) => write_long(out, i64::from(*n)),
        (Enc::Long, Value::Int8(n)) => write_long(out, *n),
        (Enc::Long, Value::Oid(n)) => write_long(out, i64::from(*n)),
        (Enc::Float, Value::Float4(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (Enc::Double, Value::Float4(x)) => out.extend_from_slice(&f64::from(*x).to_le_bytes()),
        (Enc::Double, Value::Float8(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (Enc::Bytes, Value::Bytea(b)) => write_bytes(out, b),
        (Enc::String, Value::Text(s) | Value::Enum(s) | Value::Json(s) | Value::Jsonb(s)) => {
            write_bytes(out, s.as_bytes())
        }
        (Enc::String, v) => write_bytes(out, render(v).as_bytes()),
        (Enc::Decimal { scale, fixed }, v) => {
            let unscaled = unscaled(v, *scale)?;
            let bytes = twos_complement(unscaled, *fixed)?;
            match fixed {
                Some(_) => out.extend_from_slice(&bytes),
                None => write_bytes(out, &bytes),
            }
        }
        (Enc::Date, Value::Date(Infinite::Finite(d))) => {
            write_long(out, i64::from(*d) + i64::from(PG_EPOCH_DAYS))
        }
        (Enc::TimeMicros, Value::Time(us)) => write_long(out, *us),
        (Enc::TimeMillis, Value::Time(us)) => write_long(out, us / 1000),
        (
            Enc::TimestampMicros | Enc::LocalTimestampMicros,
            Value::TimestampTz(Infinite::Finite(us)) | Value::Timestamp(Infinite::Finite(us)),
        ) => write_long(out, unix_micros(*us).ok_or_else(out_of_range)?),
        (
            Enc::TimestampMillis | Enc::LocalTimestampMillis,
            Value::TimestampTz(Infinite::Finite(us)) | Value::Timestamp(Infinite::Finite(us)),
        ) => write_long(
            out,
            unix_micros(*us).ok_or_else(out_of_range)?.div_euclid(1000),
        ),
        (Enc::Date, Value::Date(_)) | (_, Value::Timestamp(_) | Value::TimestampTz(_)) => {
            return Err(infinite())
        }
        (Enc::Enum(symbols), Value::Enum(s) | Value::Text(s)) => {
            let index = symbols.iter().position(|x| x == s).ok_or_else(|| {
                EncodeError(format!(
                    "\"{s}\" is not a symbol of the field's enum [{}]; add it to the contract",
                    symbols.join(", ")
                ))
            })?;
            write_long(out, index as i64);
        }
        (Enc::Array(item), Value::Array(values)) => {
            if !values.is_empty() {
                write_long(out, values.len() as i64);
                for v in values {
                    encode(item, v, out)?;
                }
            }
            write_long(out, 0);
        }
        (enc, v) => {
            return Err(EncodeError(format!(
                "{} does not convert to {}",
                render(v),
                enc_name(enc)
            )))
        }
    }
    Ok(())
}

/// Microseconds since 2000-01-01 as microseconds since 1970-01-01, when a long holds them.
fn unix_micros(pg_micros: i64) -> Option<i64> {
    pg_micros.checked_add(PG_EPOCH_MICROS)
}

/// Microseconds since 2000-01-01 in ISO 8601 with `zone`, for every PostgreSQL timestamp
/// (whole days are counted apart, so nothing overflows where Unix-epoch microseconds
/// would); years before 1 end in ` BC`, after the zone, as PostgreSQL reads them.
fn timestamp_text(s: &mut String, pg_micros: i64, zone: &str) {
    const DAY_MICROS: i64 = 86_400_000_000;
    walcast_text::date_time(
        s,
        pg_micros.div_euclid(DAY_MICROS) + i64::from(PG_EPOCH_DAYS),
        pg_micros.rem_euclid(DAY_MICROS),
        zone,
    );
}

/// The unscaled integer of a numeric at `scale`; refuses to drop digits.
fn unscaled(value: &Value, scale: u32) -> Result<i128, EncodeError> {
    let (negative, digits, from_scale) = match value {
        Value::Int2(n) => (*n < 0, n.unsigned_abs().to_string(), 0),
        Value::Int4(n) => (*n < 0, n.unsigned_abs().to_string(), 0),
        Value::Int8(n) => (*n < 0, n.unsigned_abs().to_string(), 0),
        Value::Numeric(Numeric::Finite {
            negative,
            digits,
            scale,
        }) => (*negative, digits.clone(), u32::from(*scale)),
        other => {
            return Err(EncodeError(format!(
                "{} has no decimal value; map the column to a string field to carry it",
                render(other)
            )))
        }
    };
    let too_big = || {
        EncodeError(format!(
            "{} exceeds 38 digits at scale {scale}",
            render(value)
        ))
    };
    let mut n: i128 = 0;
    let keep = if from_scale > scale {
        let cut = (from_scale - scale) as usize;
        let (kept, dropped) = digits.split_at(digits.len().saturating_sub(cut));
        if dropped.bytes().any(|b| b != b'0') {
            return Err(EncodeError(format!(
                "{} has more than {scale} decimal places; widen the contract's decimal scale",
                render(value)
            )));
        }
        kept.to_string()
    } else {
        digits
    };
    for b in keep.bytes() {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i128::from(b - b'0')))
            .ok_or_else(too_big)?;
    }
    for _ in from_scale..scale {
        n = n.checked_mul(10).ok_or_else(too_big)?;
    }
    Ok(if negative { -n } else { n })
}

fn twos_complement(n: i128, fixed: Option<usize>) -> Result<Vec<u8>, EncodeError> {
    let full = n.to_be_bytes();
    let sign = if n < 0 { 0xFF } else { 0x00 };
    let mut start = 0;
    while start < 15 && full[start] == sign && (full[start + 1] & 0x80) == (sign & 0x80) {
        start += 1;
    }
    let minimal = &full[start..];
    match fixed {
        None => Ok(minimal.to_vec()),
        Some(size) if minimal.len() <= size => {
            let mut out = vec![sign; size - minimal.len()];
            out.extend_from_slice(minimal);
            Ok(out)
        }
        Some(size) => Err(EncodeError(format!(
            "the decimal does not fit the contract's fixed({size})"
        ))),
    }
}

/// PostgreSQL's text form of a value (ISO 8601 for dates and times).
pub fn render(value: &Value) -> String {
    let mut s = String::new();
    match value {
        Value::Null => s.push_str("NULL"),
        Value::UnchangedToast => s.push_str("(unchanged TOAST value)"),
        Value::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Value::Int2(n) => s = n.to_string(),
        Value::Int4(n) => s = n.to_string(),
        Value::Int8(n) => s = n.to_string(),
        Value::Oid(n) => s = n.to_string(),
        Value::Float4(x) => s = float(f64::from(*x), x.to_string()),
        Value::Float8(x) => s = float(*x, x.to_string()),
        Value::Numeric(n) => s = n.to_string(),
        Value::Text(t) | Value::Enum(t) | Value::Json(t) | Value::Jsonb(t) => s.push_str(t),
        // A byte beyond ASCII is no character: PostgreSQL writes it in octal (`\303`).
        Value::Char(c) if *c >= 0x80 => {
            let _ = write!(s, "\\{c:03o}");
        }
        Value::Char(c) => s.push(char::from(*c)),
        Value::Bytea(b) => {
            s.push_str("\\x");
            for byte in b.iter() {
                let _ = write!(s, "{byte:02x}");
            }
        }
        Value::Date(d) => infinite(&mut s, d, |s, d| {
            walcast_text::date(s, i64::from(*d) + i64::from(PG_EPOCH_DAYS))
        }),
        Value::Time(us) => walcast_text::time(&mut s, *us),
        Value::TimeTz {
            micros,
            offset_secs,
        } => {
            walcast_text::time(&mut s, *micros);
            let sign = if *offset_secs < 0 { '-' } else { '+' };
            let o = offset_secs.unsigned_abs();
            let _ = write!(s, "{sign}{:02}:{:02}", o / 3600, o % 3600 / 60);
            // Rare (historical local mean times), and kept: `+05:30:15`, as PostgreSQL.
            if o % 60 != 0 {
                let _ = write!(s, ":{:02}", o % 60);
            }
        }
        Value::Timestamp(t) => infinite(&mut s, t, |s, us| timestamp_text(s, *us, "")),
        Value::TimestampTz(t) => infinite(&mut s, t, |s, us| timestamp_text(s, *us, "Z")),
        Value::Interval {
            months,
            days,
            micros,
        } => {
            let _ = write!(s, "P{}Y{}M{days}DT", months / 12, months % 12);
            let (h, rest) = (micros / 3_600_000_000, micros % 3_600_000_000);
            let (m, us) = (rest / 60_000_000, rest % 60_000_000);
            let _ = write!(s, "{h}H{m}M");
            // -0.5 s has no whole seconds to carry its sign.
            if us < 0 && us > -1_000_000 {
                s.push('-');
            }
            let _ = write!(s, "{}", us / 1_000_000);
            if us % 1_000_000 != 0 {
                let _ = write!(s, ".{:06}", (us % 1_000_000).unsigned_abs());
            }
            s.push('S');
        }
        Value::Uuid(b) => {
            for (i, byte) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    s.push('-');
                }
                let _ = write!(s, "{byte:02x}");
            }
        }
        Value::Inet { addr, prefix } => {
            let host = if addr.is_ipv4() { 32 } else { 128 };
            let _ = if *prefix == host {
                write!(s, "{addr}")
            } else {
                write!(s, "{addr}/{prefix}")
            };
        }
        Value::Cidr { addr, prefix } => {
            let _ = write!(s, "{addr}/{prefix}");
        }
        Value::MacAddr(b) => s = hex_colon(b),
        Value::MacAddr8(b) => s = hex_colon(b),
        Value::Money { units, digits } => {
            let sign = if *units < 0 { "-" } else { "" };
            let c = units.unsigned_abs();
            // PostgreSQL keeps lc_monetary's fractional digits within 0..=10.
            let digits = u32::from((*digits).min(10));
            let unit = 10u64.pow(digits);
            let _ = if digits == 0 {
                write!(s, "{sign}{c}")
            } else {
                write!(
                    s,
                    "{sign}{}.{:0width$}",
                    c / unit,
                    c % unit,
                    width = digits as usize
                )
            };
        }
        Value::Bit(b) | Value::VarBit(b) => s = b.to_string(),
        Value::Array(items) => {
            // As PostgreSQL's array_out writes it, so its input reads the same elements back:
            // an element that is empty, spells NULL, or holds a delimiter, brace, quote,
            // backslash or space is quoted, with quotes and backslashes escaped.
            s.push('{');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                if *v == Value::Null {
                    s.push_str("NULL");
                    continue;
                }
                let item = render(v);
                let quoted = item.is_empty()
                    || item.eq_ignore_ascii_case("NULL")
                    || item.chars().any(|c| {
                        // PostgreSQL's array_isspace counts the vertical tab too.
                        matches!(c, '{' | '}' | ',' | '"' | '\\' | '\x0B')
                            || c.is_ascii_whitespace()
                    });
                if !quoted {
                    s.push_str(&item);
                    continue;
                }
                s.push('"');
                for c in item.chars() {
                    if matches!(c, '"' | '\\') {
                        s.push('\\');
                    }
                    s.push(c);
                }
                s.push('"');
            }
            s.push('}');
        }
    }
    s
}

fn float(x: f64, shortest: String) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        shortest
    }
}

fn hex_colon(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn infinite<T>(s: &mut String, v: &Infinite<T>, finite: impl FnOnce(&mut String, &T)) {
    match v {
        Infinite::NegInfinity => s.push_str("-infinity"),
        Infinite::Infinity => s.push_str("infinity"),
        Infinite::Finite(x) => finite(s, x),
    }
}

#[cfg(test)]
mod tests;
