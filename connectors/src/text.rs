//! Dates and times in ISO 8601 text, as stores (and PostgreSQL's input functions) read them.
//! Shared with walcast's event encoder, so every text form of a time is made in one place.

use std::fmt::Write as _;

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

/// Days since 1970-01-01 as `YYYY-MM-DD` (proleptic Gregorian; years before 1 as `… BC`).
pub fn date(out: &mut String, unix_days: i64) {
    // Howard Hinnant's civil-from-days.
    let z = unix_days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year <= 0 {
        let _ = write!(out, "{:04}-{month:02}-{day:02} BC", 1 - year);
    } else {
        let _ = write!(out, "{year:04}-{month:02}-{day:02}");
    }
}

/// Microseconds since midnight as `HH:MM:SS[.ffffff]`.
pub fn time(out: &mut String, micros: i64) {
    let secs = micros / 1_000_000;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    if micros % 1_000_000 != 0 {
        let _ = write!(out, ".{:06}", micros % 1_000_000);
    }
}

/// Microseconds since 1970-01-01 00:00:00 as `YYYY-MM-DDTHH:MM:SS[.ffffff]`.
pub fn timestamp(out: &mut String, unix_micros: i64) {
    date(out, unix_micros.div_euclid(86_400_000_000));
    out.push('T');
    time(out, unix_micros.rem_euclid(86_400_000_000));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_8601() {
        let mut s = String::new();
        timestamp(&mut s, 946_684_800_000_001);
        assert_eq!(s, "2000-01-01T00:00:00.000001");
        s.clear();
        date(&mut s, -1);
        assert_eq!(s, "1969-12-31");
        s.clear();
        date(&mut s, -719_163); // the day before 0001-01-01
        assert_eq!(s, "0001-12-31 BC");
    }
}
