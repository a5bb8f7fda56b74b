//! Event-time parsing: RFC 3339, ISO-8601 without a zone (read as UTC), and
//! epoch numbers in milliseconds or seconds.

use serde::{Deserialize, Serialize};

/// Event time in milliseconds since the Unix epoch, UTC.
pub type EventTime = i64;

/// How a stream's time field is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Strings are RFC 3339 or zone-less ISO-8601 (UTC); numbers are epoch
    /// seconds when below 10^11 in magnitude, else epoch milliseconds.
    #[default]
    Auto,
    /// Numbers are epoch milliseconds.
    EpochMillis,
    /// Numbers are epoch seconds (fractions allowed).
    EpochSeconds,
}

/// The largest event time magnitude accepted (ms; about 285,000 years):
/// times stay far from `i64` overflow, so deadlines computed from them never
/// saturate. Decoding and snapshot restore both enforce it.
pub const MAX_EVENT_TIME_MS: i64 = 9_000_000_000_000_000;

/// Below this magnitude an epoch number is read as seconds under `Auto`
/// (10^11 s is the year 5138; 10^11 ms is 1973).
const AUTO_SECONDS_LIMIT: f64 = 1e11;

/// Parses a timestamp string. Accepts `2018-04-01T00:00:31Z`,
/// `2018-04-01T00:00:31.250+02:00`, `2018-04-01T00:00:31` and
/// `2018-04-01 00:00:31` (the last two as UTC), and a bare date.
pub fn parse_time_str(s: &str) -> Option<EventTime> {
    let s = s.trim();
    // Pick the parser by shape: trying one that fails builds an error, which
    // costs more than the parse.
    if has_zone(s) {
        return s
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|ts| ts.as_millisecond());
    }
    if let Ok(dt) = s.parse::<jiff::civil::DateTime>() {
        return dt
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_millisecond());
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_millisecond());
    }
    None
}

/// Whether a timestamp string ends with a zone designator (`Z`, `+hh:mm`, `-hhmm`).
fn has_zone(s: &str) -> bool {
    let b = s.as_bytes();
    if b.last().is_some_and(|c| *c == b'Z' || *c == b'z') {
        return true;
    }
    // An offset sign after the time part (position > 10 skips the date's dashes).
    b.iter()
        .enumerate()
        .skip(11)
        .any(|(_, c)| *c == b'+' || *c == b'-')
}

/// Converts an epoch number to milliseconds under `format`.
pub fn epoch_to_millis(n: f64, format: TimeFormat) -> Option<EventTime> {
    if !n.is_finite() {
        return None;
    }
    let ms = match format {
        TimeFormat::EpochMillis => n,
        TimeFormat::EpochSeconds => n * 1000.0,
        TimeFormat::Auto if n.abs() < AUTO_SECONDS_LIMIT => n * 1000.0,
        TimeFormat::Auto => n,
    };
    // i64 milliseconds cover ±292 million years; reject what would saturate.
    if ms.abs() > MAX_EVENT_TIME_MS as f64 {
        return None;
    }
    Some(ms.round() as i64)
}

/// Formats event time as RFC 3339 UTC with milliseconds when they are non-zero.
pub fn format_time(t: EventTime) -> String {
    // From the epoch to the end of jiff's range (the year 9999) the temporal
    // printer writes what `strftime` below writes, at a fraction of the cost
    // (`strftime` interprets its format on every call, and every alert
    // carries a time).
    static WHOLE: jiff::fmt::temporal::DateTimePrinter =
        jiff::fmt::temporal::DateTimePrinter::new().precision(Some(0));
    static MILLIS: jiff::fmt::temporal::DateTimePrinter =
        jiff::fmt::temporal::DateTimePrinter::new().precision(Some(3));
    match jiff::Timestamp::from_millisecond(t) {
        Ok(ts) if t >= 0 => {
            let printer = if t % 1000 == 0 { &WHOLE } else { &MILLIS };
            printer.timestamp_to_string(&ts)
        }
        Ok(ts) if t % 1000 == 0 => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Err(_) => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        assert_eq!(parse_time_str("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time_str("1970-01-01T00:00:01"), Some(1000));
        assert_eq!(parse_time_str("1970-01-01 00:00:01"), Some(1000));
        assert_eq!(parse_time_str("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time_str("1970-01-01T00:00:00.250Z"), Some(250));
        assert_eq!(parse_time_str("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time_str("yesterday"), None);
        assert_eq!(parse_time_str(""), None);
    }

    #[test]
    fn epoch_numbers_follow_the_format() {
        assert_eq!(epoch_to_millis(1.5, TimeFormat::Auto), Some(1500));
        assert_eq!(
            epoch_to_millis(1_522_540_831_000.0, TimeFormat::Auto),
            Some(1_522_540_831_000)
        );
        assert_eq!(epoch_to_millis(5.0, TimeFormat::EpochMillis), Some(5));
        assert_eq!(epoch_to_millis(f64::NAN, TimeFormat::Auto), None);
        assert_eq!(epoch_to_millis(1e300, TimeFormat::EpochMillis), None);
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_time(1000), "1970-01-01T00:00:01Z");
        assert_eq!(format_time(1250), "1970-01-01T00:00:01.250Z");
        assert_eq!(
            parse_time_str(&format_time(1_522_540_831_250)),
            Some(1_522_540_831_250)
        );
    }

    #[test]
    fn the_fast_printer_writes_what_strftime_writes() {
        let strftime = |t: i64| {
            let ts = jiff::Timestamp::from_millisecond(t).unwrap();
            let f = if t % 1000 == 0 {
                "%Y-%m-%dT%H:%M:%SZ"
            } else {
                "%Y-%m-%dT%H:%M:%S%.3fZ"
            };
            ts.strftime(f).to_string()
        };
        let last = jiff::Timestamp::MAX.as_second() * 1000;
        let mut times = vec![
            0,
            1,
            10,
            100,
            999,
            1000,
            1001,
            59_999,
            86_400_000,
            last - 999,
            last,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let t = (x >> 1) as i64 % (last + 1);
            times.extend([t, t - t % 1000]);
        }
        for t in times {
            assert_eq!(format_time(t), strftime(t), "at {t} ms");
        }
        // Before the epoch the strftime forms are kept; out of jiff's range, the number.
        assert_eq!(format_time(-1), strftime(-1));
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_time(last + 1), (last + 1).to_string());
    }
}
