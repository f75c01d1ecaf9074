//! Times on the command line (`--since`, `--until`, `--at`), parsed with `jiff`.
//!
//! An operator types what is at hand: a timestamp copied from a log (RFC 3339), a day
//! (`2026-11-28`), a wall-clock time (`2026-11-28 09:00`), or a span (`3d` ago, `+40d`
//! from now). Times without an offset are read in the local time zone (`TZ`, else the
//! system's), because that is the clock the operator looks at. Every other input is an
//! error the flag's parser returns, so clap reports it as a usage error naming the flag:
//! nothing here may panic, whatever the input (a property test checks it).

use chrono::{DateTime, Utc};
use jiff::civil;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

/// The forms a time may take, for error messages and `--help`.
pub const FORMS: &str = "2026-11-28T09:00:00Z (RFC 3339), 2026-11-28 (midnight, local time), \
     2026-11-28T09:00 or 2026-11-28 09:00:00 (local time), 3d / 12h / 30m / 2w ago \
     (also -90d), or +40d from now";

/// A time for `--since` / `--until` / `--at`, now and the time zone taken from the system.
///
/// # Errors
/// A message saying what the accepted forms are; clap adds the flag and exits with 2.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time_at(s, Timestamp::now(), TimeZone::try_system)
}

/// [`parse_time`] at a given `now`, with the local time zone from `tz` (asked only for a
/// time without an offset).
pub fn parse_time_at(
    s: &str,
    now: Timestamp,
    tz: impl FnOnce() -> Result<TimeZone, jiff::Error>,
) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    let bad = |why: &str| format!("`{s}` is not a time ({why}); use {FORMS}");
    if s.is_empty() {
        return Err(format!("an empty value is not a time; use {FORMS}"));
    }
    let t = if let Ok(t) = s.parse::<Timestamp>() {
        t
    } else if let Ok(local) = s.parse::<civil::DateTime>() {
        // Also a bare date: midnight.
        let tz = tz().map_err(|e| format!("cannot tell the local time zone for `{s}` ({e})"))?;
        tz.to_timestamp(local).map_err(|e| bad(&e.to_string()))?
    } else {
        let span: Span = s.parse().map_err(|e: jiff::Error| bad(&e.to_string()))?;
        let ahead = s.starts_with('+') && span.is_positive();
        // Calendar units (days, weeks) count in the local calendar when it is known.
        let zone = tz().unwrap_or(TimeZone::UTC);
        let here = now.to_zoned_datetime(zone);
        let then = if ahead {
            here.checked_add(span)
        } else {
            here.checked_sub(span.abs())
        };
        then.map_err(|e| bad(&e.to_string()))?.timestamp()
    };
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().unsigned_abs())
        .ok_or_else(|| bad("out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: &str = "2026-11-28T12:00:00Z";

    fn paris() -> Result<TimeZone, jiff::Error> {
        // Central European time with its summer time rule, without the system's tzdb.
        TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3")
    }

    fn at(s: &str) -> Result<String, String> {
        parse_time_at(s, NOW.parse().unwrap(), paris).map(|t| t.to_rfc3339())
    }

    #[test]
    fn rfc3339_is_exact() {
        assert_eq!(
            at("2026-11-28T09:00:00Z").unwrap(),
            "2026-11-28T09:00:00+00:00"
        );
        assert_eq!(
            at("2026-11-28T09:00:00+02:00").unwrap(),
            "2026-11-28T07:00:00+00:00"
        );
        assert_eq!(
            at(" 2026-11-28T09:00:00.5Z ").unwrap(),
            "2026-11-28T09:00:00.500+00:00"
        );
    }

    #[test]
    fn a_date_is_local_midnight() {
        // Winter: UTC+1.
        assert_eq!(at("2026-11-28").unwrap(), "2026-11-27T23:00:00+00:00");
        // Summer: UTC+2.
        assert_eq!(at("2026-07-01").unwrap(), "2026-06-30T22:00:00+00:00");
    }

    #[test]
    fn naive_date_times_are_local() {
        for s in [
            "2026-11-28T09:00",
            "2026-11-28 09:00:00",
            "2026-11-28 09:00",
        ] {
            assert_eq!(at(s).unwrap(), "2026-11-28T08:00:00+00:00", "{s}");
        }
        // In UTC the same text is the same instant.
        let utc = parse_time_at("2026-11-28 09:00", NOW.parse().unwrap(), || {
            Ok(TimeZone::UTC)
        })
        .unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-11-28T09:00:00+00:00");
        // A time the spring change skips is taken after the gap, not refused.
        assert_eq!(at("2026-03-29 02:30").unwrap(), "2026-03-29T01:30:00+00:00");
    }

    #[test]
    fn spans_are_ago_unless_plus() {
        assert_eq!(at("3d").unwrap(), "2026-11-25T12:00:00+00:00");
        assert_eq!(at("+40d").unwrap(), "2027-01-07T12:00:00+00:00");
        assert_eq!(at("12h").unwrap(), "2026-11-28T00:00:00+00:00");
        assert_eq!(at("30m").unwrap(), "2026-11-28T11:30:00+00:00");
        assert_eq!(at("2w").unwrap(), "2026-11-14T12:00:00+00:00");
        // Days are calendar days: 90 days before 13:00 CET is 13:00 CEST on 30 August,
        // across the autumn change, so 11:00 UTC; in UTC it is 12:00.
        assert_eq!(at("-90d").unwrap(), "2026-08-30T11:00:00+00:00");
        let utc = parse_time_at("-90d", NOW.parse().unwrap(), || Ok(TimeZone::UTC)).unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-08-30T12:00:00+00:00");
    }

    #[test]
    fn bad_values_are_errors_with_the_forms() {
        for s in [
            "",
            " ",
            "+",
            "-",
            "3x",
            "3",
            "d",
            "+-3d",
            "2026-13-01",
            "2026-11-28T25:00",
            "99999999999999999999d",
            "9999999999d",
            "+9999999y",
            "-9999999y",
            "yesterday",
        ] {
            let e = at(s).expect_err(s);
            assert!(e.contains("2026-11-28"), "{s:?}: {e}");
        }
    }

    #[test]
    fn a_broken_time_zone_is_named_for_local_times_only() {
        let broken = || TimeZone::get("Nowhere/Bad");
        let e = parse_time_at("2026-11-28", NOW.parse().unwrap(), broken).unwrap_err();
        assert!(e.contains("local time zone"), "{e}");
        let ok = parse_time_at("3d", NOW.parse().unwrap(), broken).unwrap();
        assert_eq!(ok.to_rfc3339(), "2026-11-25T12:00:00+00:00");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// No input makes the parser panic: any text, and text shaped like the forms.
        #[test]
        fn no_input_panics(
            any in any::<String>(),
            shaped in "[+-]?[0-9]{0,22}[a-z ]{0,4}",
            dated in "[+-]?[0-9]{0,6}-[0-9]{0,3}-[0-9]{0,3}([T ][0-9]{0,3}(:[0-9]{0,3}){0,2}(Z|[+-][0-9]{2}:?[0-9]{2})?)?",
        ) {
            for s in [&any, &shaped, &dated] {
                let _ = at(s);
                let _ = parse_time(s);
            }
        }
    }
}
