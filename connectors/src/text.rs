//! A value's text form, as the stores' input conversions read it. Dates and times come from
//! `walcast-text`, shared with walcast's event encoder.

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
    }
    Some(s)
}
