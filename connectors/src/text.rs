//! A value's text form, as the stores' input conversions read it. Dates and times come from
//! `walcast-text`, shared with walcast's event encoder.
//!
//! Arrays, maps and records take a JSON form ([`json`]), which every store reads: MySQL's
//! JSON columns, PostgreSQL's `jsonb`, and Redis as text. Inside JSON, numbers (decimals
//! too, digit for digit) are JSON numbers; NaN and infinities, bytes (PostgreSQL's hex form
//! `\x…`), dates and times (ISO 8601, UTC timestamps with `Z`) are strings.

use std::fmt::Write as _;

use walcast_text::{date, time, timestamp, timestamp_zoned};

use crate::sink::Value;

/// A value's text form, as the stores' input conversions read it; `None` is NULL.
/// A UTC timestamp is followed by `utc_suffix` (`+00` for PostgreSQL, `Z` for RFC 3339, or
/// nothing for a session whose time zone is UTC). Bytes take PostgreSQL's hex form; stores
/// that take raw bytes write them as they are instead.
pub fn value(value: &Value, utc_suffix: &str) -> Option<String> {
    let mut s = String::new();
    match value {
        Value::Null => return None,
        Value::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Value::Long(n) => s = n.to_string(),
        Value::Double(x) if x.is_nan() => s.push_str("NaN"),
        Value::Float(x) if x.is_nan() => s.push_str("NaN"),
        Value::Double(x) if x.is_infinite() => {
            s.push_str(if *x > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Float(x) if x.is_infinite() => {
            s.push_str(if *x > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Double(x) => s = double(*x),
        Value::Float(x) => s = float(*x),
        Value::Text(t) | Value::Decimal(t) => s.push_str(t),
        Value::Bytes(b) => {
            s.push_str("\\x");
            for byte in b {
                let _ = write!(s, "{byte:02x}");
            }
        }
        Value::Date(d) => date(&mut s, i64::from(*d)),
        Value::Timestamp(us) => timestamp_zoned(&mut s, *us, utc_suffix),
        Value::LocalTimestamp(us) => timestamp(&mut s, *us),
        Value::Time(us) => time(&mut s, *us),
        Value::Array(_) | Value::Object(_) => json(&mut s, value),
    }
    Some(s)
}

/// A finite double as PostgreSQL writes one: the shortest digits that read back as the
/// same double, with an exponent when it is below -4 or above 14 (`0.1`, `1e-05`,
/// `1.7976931348623157e+308`). Plain digits alone would run to 309 characters, which
/// MySQL reads as a DECIMAL literal and clamps to 65 digits.
pub fn double(x: f64) -> String {
    shortest(format!("{x:e}"), || x.to_string())
}

/// A finite float as PostgreSQL writes a `real`: as [`double`], with the float's own shortest
/// digits (`0.1`, `3.4028235e+38`).
pub fn float(x: f32) -> String {
    shortest(format!("{x:e}"), || x.to_string())
}

/// `scientific` (Rust's shortest `{:e}` form), or `plain` digits when the exponent is from
/// -4 to 14.
fn shortest(scientific: String, plain: impl FnOnce() -> String) -> String {
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("a decimal exponent");
    if (-4..15).contains(&exponent) {
        plain()
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    }
}

/// Appends a value's JSON form to `out`.
pub fn json(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(_) | Value::Long(_) | Value::Decimal(_) => {
            out.push_str(&self::value(value, "").unwrap_or_default())
        }
        Value::Double(x) if x.is_finite() => {
            out.push_str(&self::value(value, "").unwrap_or_default())
        }
        Value::Float(x) if x.is_finite() => {
            out.push_str(&self::value(value, "").unwrap_or_default())
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json(out, item);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(out, name);
                out.push(':');
                json(out, item);
            }
            out.push('}');
        }
        scalar => json_string(out, &self::value(scalar, "Z").unwrap_or_default()),
    }
}

/// Appends `text` as a JSON string.
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::{double, float, value};
    use crate::sink::Value;

    #[test]
    fn floats_keep_their_own_shortest_digits() {
        for (x, text) in [
            (0.1f32, "0.1"),
            (f32::MAX, "3.4028235e+38"),
            (1e-45, "1e-45"),
            (-1.5, "-1.5"),
        ] {
            assert_eq!(float(x), text);
            assert_eq!(text.parse::<f32>().unwrap(), x, "{text} reads back");
        }
        assert_eq!(value(&Value::Float(0.1), "").as_deref(), Some("0.1"));
        assert_eq!(value(&Value::Float(f32::NAN), "").as_deref(), Some("NaN"));
        let mut json = String::new();
        super::json(
            &mut json,
            &Value::Array(vec![Value::Float(0.1), Value::Float(f32::NEG_INFINITY)]),
        );
        assert_eq!(json, r#"[0.1,"-Infinity"]"#);
    }

    #[test]
    fn doubles_take_postgresql_s_shortest_form() {
        let cases = [
            (0.1, "0.1"),
            (-0.5, "-0.5"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (123_456_789_012_345.0, "123456789012345"),
            (1e15, "1e+15"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::from(f32::MAX), "3.4028234663852886e+38"),
            (5e-324, "5e-324"),
            (-2.2250738585072014e-308, "-2.2250738585072014e-308"),
        ];
        for (x, text) in cases {
            assert_eq!(double(x), text);
            assert_eq!(text.parse::<f64>().unwrap(), x, "{text} reads back");
        }
    }

    #[test]
    fn timestamps_before_year_1_end_in_bc_after_their_zone() {
        let bc = Value::Timestamp(-62_135_596_800_000_001);
        assert_eq!(
            value(&bc, "+00").unwrap(),
            "0001-12-31T23:59:59.999999+00 BC"
        );
        assert_eq!(
            value(&Value::Array(vec![bc]), "+00").unwrap(),
            r#"["0001-12-31T23:59:59.999999Z BC"]"#
        );
    }

    #[test]
    fn arrays_maps_and_records_are_json() {
        let v = Value::Object(vec![
            (
                "tags".into(),
                Value::Array(vec![Value::Text("a \"b\"\n".into()), Value::Null]),
            ),
            ("n".into(), Value::Decimal("-12.50".into())),
            ("x".into(), Value::Double(f64::NAN)),
            ("at".into(), Value::Timestamp(0)),
            ("raw".into(), Value::Bytes(vec![1, 255])),
            ("ok".into(), Value::Bool(true)),
        ]);
        assert_eq!(
            value(&v, "+00").unwrap(),
            r#"{"tags":["a \"b\"\n",null],"n":-12.50,"x":"NaN","at":"1970-01-01T00:00:00Z","raw":"\\x01ff","ok":true}"#
        );
    }
}
