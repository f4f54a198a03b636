//! A value's text form, as the stores' input conversions read it. Dates and times come from
//! `walcast-text`, shared with walcast's event encoder.
//!
//! Arrays, maps and records take a JSON form ([`json`]), which every store reads: MySQL's
//! JSON columns, PostgreSQL's `jsonb`, and Redis as text. Inside JSON, numbers (decimals
//! too, digit for digit) are JSON numbers; NaN and infinities, bytes (PostgreSQL's hex form
//! `\x…`), dates and times (ISO 8601, UTC timestamps with `Z`) are strings.

use std::fmt::Write as _;

use walcast_text::{date, time, timestamp};

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
        Value::Double(x) if x.is_infinite() => {
            s.push_str(if *x > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Double(x) => s = x.to_string(),
        Value::Text(t) | Value::Decimal(t) => s.push_str(t),
        Value::Bytes(b) => {
            s.push_str("\\x");
            for byte in b {
                let _ = write!(s, "{byte:02x}");
            }
        }
        Value::Date(d) => date(&mut s, i64::from(*d)),
        Value::Timestamp(us) => {
            timestamp(&mut s, *us);
            s.push_str(utc_suffix);
        }
        Value::LocalTimestamp(us) => timestamp(&mut s, *us),
        Value::Time(us) => time(&mut s, *us),
        Value::Array(_) | Value::Object(_) => json(&mut s, value),
    }
    Some(s)
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
    use super::value;
    use crate::sink::Value;

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
