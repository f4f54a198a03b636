//! Text forms that walcast's event encoder and its connectors share, so each is made in one
//! place: dates and times in ISO 8601 (as stores and PostgreSQL's input functions read
//! them), and an error with its causes on one line.

use std::error::Error as StdError;
use std::fmt::Write as _;

/// Days since 1970-01-01 as `YYYY-MM-DD` (proleptic Gregorian; years before 1 as `… BC`).
pub fn date(out: &mut String, unix_days: i64) {
    let (year, month, day) = civil(unix_days);
    if year <= 0 {
        let _ = write!(out, "{:04}-{month:02}-{day:02} BC", 1 - year);
    } else {
        let _ = write!(out, "{year:04}-{month:02}-{day:02}");
    }
}

/// Days since 1970-01-01 as a proleptic Gregorian (year, month, day); year 0 is 1 BC.
pub fn civil(unix_days: i64) -> (i64, i64, i64) {
    // Howard Hinnant's civil-from-days.
    let z = unix_days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
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
    timestamp_zoned(out, unix_micros, "");
}

/// [`timestamp`] followed by `zone` (`Z`, `+00`, or nothing), and by ` BC` for years before
/// 1: `4713-01-01T00:00:00Z BC`, which PostgreSQL reads (the era after the zone).
pub fn timestamp_zoned(out: &mut String, unix_micros: i64, zone: &str) {
    date_time(
        out,
        unix_micros.div_euclid(86_400_000_000),
        unix_micros.rem_euclid(86_400_000_000),
        zone,
    );
}

/// A day (since 1970-01-01) and a time of day (microseconds) as [`timestamp_zoned`] writes
/// them, for timestamps beyond what microseconds in an `i64` reach.
pub fn date_time(out: &mut String, unix_days: i64, micros: i64, zone: &str) {
    date(out, unix_days);
    let bc = out.ends_with(" BC");
    if bc {
        out.truncate(out.len() - " BC".len());
    }
    out.push('T');
    time(out, micros);
    out.push_str(zone);
    if bc {
        out.push_str(" BC");
    }
}

/// An error and its causes on one line, without repeating a cause the error already printed.
pub fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(-719_162), (1, 1, 1));
        assert_eq!(civil(-719_163), (0, 12, 31), "1 BC");
        assert_eq!(civil(2_932_896), (9999, 12, 31));
    }

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

    #[test]
    fn a_timestamp_before_year_1_ends_in_bc_after_its_zone() {
        let mut s = String::new();
        // 4713-01-01 BC (year -4712) at 00:00:00.5, and the microsecond before 0001-01-01.
        timestamp_zoned(&mut s, -210_863_520_000_000_000 + 500_000, "Z");
        assert_eq!(s, "4713-01-01T00:00:00.500000Z BC");
        s.clear();
        timestamp_zoned(&mut s, -62_135_596_800_000_001, "+00");
        assert_eq!(s, "0001-12-31T23:59:59.999999+00 BC");
        s.clear();
        timestamp(&mut s, 6_249_223_180_800_000_000);
        assert_eq!(s, "200000-01-01T00:00:00");
    }
}
