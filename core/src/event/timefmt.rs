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
    parse_plain(s.as_bytes()).or_else(|| {
        let s = s.trim();
        parse_plain(s.as_bytes()).or_else(|| parse_general(s))
    })
}

/// `YYYY-MM-DD[T ]HH:MM:SS`, alone or with `Z`: the shape nearly every event
/// carries, read digit by digit. jiff's general grammar took about a tenth
/// of the instructions decoding such an event took (and its checked
/// calendar types half of that again); the tests hold this to jiff's
/// reading of every string of the shape. `None` for anything else (fractions, offsets, bare dates, the leap
/// second 60), which [`parse_general`] reads.
fn parse_plain(s: &[u8]) -> Option<EventTime> {
    let b = match s {
        [b @ .., b'Z' | b'z'] if b.len() == 19 => b,
        _ if s.len() == 19 => s,
        _ => return None,
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let digits = |from: usize, to: usize| {
        b[from..to].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 7)?, digits(8, 10)?);
    let (hour, minute, second) = (digits(11, 13)?, digits(14, 16)?, digits(17, 19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    // jiff's timestamps end a day early (room for any offset): past that,
    // its answer stands.
    (seconds <= jiff::Timestamp::MAX.as_second()).then_some(seconds * 1000)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`): eras of 400 years, years starting in March so that
/// the leap day ends them.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Every accepted form, by jiff's parsers.
fn parse_general(s: &str) -> Option<EventTime> {
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
    fn the_plain_shape_reads_as_the_general_parsers_read_it() {
        for s in [
            "2018-04-01 00:00:31",
            "2018-04-01T00:00:31",
            "2018-04-01t00:00:31",
            "2018-04-01T00:00:31Z",
            "2018-04-01 00:00:31z",
            "1969-12-31T23:59:59",
            "0000-01-01T00:00:00",
            "9999-12-31T23:59:59Z",
            "2020-02-29T12:00:00",
            "2019-02-29T12:00:00",
            "2018-04-31T00:00:00",
            "2018-13-01T00:00:00",
            "2018-04-01T24:00:00",
            "2018-04-01T23:60:00",
            "2016-12-31T23:59:60Z",
            "2018-04-01X00:00:31",
            "2018-04-01T00:00:3a",
            "+018-04-01T00:00:31",
        ] {
            assert_eq!(parse_time_str(s), parse_general(s), "{s}");
        }
    }

    /// Every day of two centuries, and the end of February of every year.
    #[test]
    fn the_plain_shape_counts_days_as_jiff_does() {
        let mut days: Vec<String> = Vec::new();
        let mut d = jiff::civil::date(1890, 1, 1);
        while d.year() < 2110 {
            days.push(d.to_string());
            d = d.tomorrow().unwrap();
        }
        for y in 0..=9999 {
            for md in ["02-28", "02-29", "03-01", "12-31", "01-01"] {
                days.push(format!("{y:04}-{md}"));
            }
        }
        for day in days {
            let s = format!("{day}T13:07:59");
            assert_eq!(parse_plain(s.as_bytes()), parse_general(&s), "{s}");
        }
    }

    /// Strings of the plain shape and near it, digits anywhere: the fast
    /// path agrees with jiff's parsers on every one (and leaves to them
    /// what it does not read).
    #[test]
    fn the_plain_shape_agrees_with_jiff_on_any_digits() {
        let mut rng = fastrand::Rng::with_seed(7);
        let chars = b"0123456789-: TtZz+.";
        for _ in 0..200_000 {
            let mut b: Vec<u8> = b"2018-04-01T00:00:31Z".to_vec();
            b.truncate(if rng.bool() { 20 } else { 19 });
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(..b.len());
                b[i] = if rng.u8(..4) == 0 {
                    chars[rng.usize(..chars.len())]
                } else {
                    b'0' + rng.u8(..10)
                };
            }
            let s = std::str::from_utf8(&b).unwrap();
            let plain = parse_plain(s.as_bytes());
            assert!(plain.is_none() || plain == parse_general(s), "{s}");
            assert_eq!(parse_time_str(s), parse_general(s.trim()), "{s}");
        }
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
