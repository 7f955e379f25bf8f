//! Dates on the command line (`backfill --from/--to`), read the way a DAG's
//! schedule reads time: a date or a date and time without an offset is
//! local time in the DAG's time zone; RFC 3339 with `Z` or an offset is an
//! instant, taken as is.
//!
//! Daylight-saving changes make some local times special, and the choice is
//! the same everywhere:
//! - a local time that does not exist (clocks jump forward over it) is
//!   refused, naming it and the zone: it has no instant, and guessing one
//!   would cover an interval the user did not mean;
//! - a local time that happens twice (clocks go back) means the earlier of
//!   the two instants, the first time the wall clock shows it.

use std::fmt;

use anyhow::bail;
use chrono::{DateTime, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The forms a date may take, for `--help` and error messages.
pub const DATE_FORMS: &str = "YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (in the DAG's time zone), \
     or RFC 3339 with an offset (2026-03-01T00:00:00Z, 2026-03-01T00:00:00+01:00)";

/// A date as typed: local (zone to be applied) or an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateArg {
    text: String,
    value: DateValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DateValue {
    Local(NaiveDateTime),
    Instant(DateTime<Utc>),
}

impl fmt::Display for DateArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Local forms, most specific first. `T` or a space between date and time.
const LOCAL_FORMATS: [&str; 4] = [
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
];

/// Forms with an offset that RFC 3339 itself does not allow (no seconds).
const OFFSET_FORMATS: [&str; 2] = ["%Y-%m-%dT%H:%M%#z", "%Y-%m-%d %H:%M%#z"];

impl DateArg {
    /// Parses one of the forms of [`DATE_FORMS`] (a clap value parser:
    /// clap names the flag in the error).
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let value =
            Self::parse_value(trimmed).ok_or_else(|| format!("is not a date: use {DATE_FORMS}"))?;
        Ok(Self {
            text: trimmed.to_string(),
            value,
        })
    }

    fn parse_value(text: &str) -> Option<DateValue> {
        if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
            return Some(DateValue::Instant(instant.with_timezone(&Utc)));
        }
        if let Some(instant) = OFFSET_FORMATS
            .iter()
            .find_map(|format| DateTime::<FixedOffset>::parse_from_str(text, format).ok())
        {
            return Some(DateValue::Instant(instant.with_timezone(&Utc)));
        }
        if let Some(local) = LOCAL_FORMATS
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        {
            return Some(DateValue::Local(local));
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(DateValue::Local)
    }

    /// Whether the date needs a time zone to become an instant.
    pub fn is_local(&self) -> bool {
        matches!(self.value, DateValue::Local(_))
    }

    /// The instant the date names in `zone`; `flag` names it in errors.
    pub fn resolve(&self, flag: &str, zone: Tz) -> anyhow::Result<DateTime<Utc>> {
        let local = match self.value {
            DateValue::Instant(instant) => return Ok(instant),
            DateValue::Local(local) => local,
        };
        match zone.from_local_datetime(&local) {
            LocalResult::Single(instant) => Ok(instant.with_timezone(&Utc)),
            // The first time the wall clock shows it (before clocks go back).
            LocalResult::Ambiguous(earlier, later) => Ok(earlier.min(later).with_timezone(&Utc)),
            LocalResult::None => bail!(
                "{flag} `{}` does not exist in {zone}: clocks skip it at a daylight-saving \
                 change; give a time outside the gap, or RFC 3339 with an offset",
                self.text
            ),
        }
    }
}

/// Refuses `--from` after `--to` when the order is known without a time
/// zone (both local, or both instants: a zone maps local times in order).
/// Mixed forms are compared once resolved ([`check_resolved_order`]).
pub fn check_order(from: &DateArg, to: &DateArg) -> anyhow::Result<()> {
    let after = match (from.value, to.value) {
        (DateValue::Local(from), DateValue::Local(to)) => from > to,
        (DateValue::Instant(from), DateValue::Instant(to)) => from > to,
        _ => false,
    };
    if after {
        bail!("--from `{from}` is after --to `{to}`: the range would be empty");
    }
    Ok(())
}

/// Refuses a resolved `from` after `to`.
pub fn check_resolved_order(
    from_arg: &DateArg,
    from: DateTime<Utc>,
    to_arg: &DateArg,
    to: DateTime<Utc>,
) -> anyhow::Result<()> {
    if from > to {
        bail!(
            "--from `{from_arg}` ({}) is after --to `{to_arg}` ({}): the range would be empty",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(())
}

/// A DAG's time zone by its IANA name; empty (a controller that predates
/// time zones) means UTC.
pub fn zone(dag_id: &str, name: &str) -> anyhow::Result<Tz> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    match name.parse::<Tz>() {
        Ok(zone) => Ok(zone),
        Err(_) => bail!(
            "dag `{dag_id}` has the time zone `{name}`, which this baton does not know; \
             give dates in RFC 3339 with an offset"
        ),
    }
}

/// A DAG's time zone for display: UTC when empty or unknown here.
pub fn zone_or_utc(name: &str) -> Tz {
    name.parse().unwrap_or(Tz::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn resolve(text: &str, zone: &str) -> anyhow::Result<DateTime<Utc>> {
        DateArg::parse(text)
            .unwrap()
            .resolve("--from", zone.parse().unwrap())
    }

    #[test]
    fn local_dates_are_read_in_the_zone() {
        assert_eq!(
            resolve("2026-01-15", "Europe/Paris").unwrap(),
            utc("2026-01-14T23:00:00Z")
        );
        assert_eq!(
            resolve("2026-07-15", "Europe/Paris").unwrap(),
            utc("2026-07-14T22:00:00Z")
        );
        assert_eq!(
            resolve("2026-07-15T06:30", "America/New_York").unwrap(),
            utc("2026-07-15T10:30:00Z")
        );
        assert_eq!(
            resolve("2026-07-15 06:30:15", "Asia/Kolkata").unwrap(),
            utc("2026-07-15T01:00:15Z")
        );
        assert_eq!(
            resolve("2026-07-15", "UTC").unwrap(),
            utc("2026-07-15T00:00:00Z")
        );
    }

    #[test]
    fn instants_with_an_offset_ignore_the_zone() {
        for (text, expected) in [
            ("2026-03-01T00:00:00Z", "2026-03-01T00:00:00Z"),
            ("2026-03-01T00:00:00+01:00", "2026-02-28T23:00:00Z"),
            ("2026-03-01T00:00:00.5-05:00", "2026-03-01T05:00:00.5Z"),
            ("2026-03-01T00:00Z", "2026-03-01T00:00:00Z"),
            ("2026-03-01T00:00+05:30", "2026-02-28T18:30:00Z"),
        ] {
            let date = DateArg::parse(text).unwrap();
            assert!(!date.is_local(), "{text}");
            assert_eq!(
                date.resolve("--to", "Asia/Tokyo".parse().unwrap()).unwrap(),
                utc(expected),
                "{text}"
            );
        }
    }

    #[test]
    fn a_local_time_skipped_by_daylight_saving_is_refused_by_name() {
        // Europe/Paris jumps from 02:00 to 03:00 on 2026-03-29.
        let error = resolve("2026-03-29T02:30", "Europe/Paris")
            .unwrap_err()
            .to_string();
        assert!(error.contains("--from `2026-03-29T02:30`"), "{error}");
        assert!(error.contains("does not exist in Europe/Paris"), "{error}");
        // The minutes around the gap exist.
        assert_eq!(
            resolve("2026-03-29T01:59", "Europe/Paris").unwrap(),
            utc("2026-03-29T00:59:00Z")
        );
        assert_eq!(
            resolve("2026-03-29T03:00", "Europe/Paris").unwrap(),
            utc("2026-03-29T01:00:00Z")
        );
    }

    #[test]
    fn a_local_time_that_happens_twice_is_the_earlier_instant() {
        // Europe/Paris goes back from 03:00 to 02:00 on 2026-10-25: 02:30
        // is first 00:30 UTC (+02:00), then 01:30 UTC (+01:00).
        assert_eq!(
            resolve("2026-10-25T02:30", "Europe/Paris").unwrap(),
            utc("2026-10-25T00:30:00Z")
        );
        // America/New_York: 01:30 on 2026-11-01 is 05:30 UTC, then 06:30.
        assert_eq!(
            resolve("2026-11-01T01:30", "America/New_York").unwrap(),
            utc("2026-11-01T05:30:00Z")
        );
    }

    #[test]
    fn malformed_dates_say_which_forms_are_accepted() {
        for text in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2026/03/01",
            "01-03-2026",
            "2026-03-01T25:00",
        ] {
            let error = DateArg::parse(text).unwrap_err();
            assert!(error.contains("YYYY-MM-DD"), "{text}: {error}");
        }
    }

    #[test]
    fn from_after_to_is_refused_before_the_zone_is_known() {
        let date = |text| DateArg::parse(text).unwrap();
        let error = check_order(&date("2026-03-05"), &date("2026-03-01"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--from `2026-03-05` is after --to `2026-03-01`"),
            "{error}"
        );
        assert!(check_order(&date("2026-03-01T00:00:00Z"), &date("2026-02-28T23:00:00Z")).is_err());
        assert!(check_order(&date("2026-03-01"), &date("2026-03-01")).is_ok());
        // Mixed forms wait for the zone.
        assert!(check_order(&date("2026-03-01T12:00:00Z"), &date("2026-03-01")).is_ok());
        let from = date("2026-03-01T12:00:00Z");
        let to = date("2026-03-01");
        let zone: Tz = "Europe/Paris".parse().unwrap();
        let error = check_resolved_order(
            &from,
            from.resolve("--from", zone).unwrap(),
            &to,
            to.resolve("--to", zone).unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("is after --to `2026-03-01`"), "{error}");
    }

    #[test]
    fn zones_are_iana_names_and_empty_means_utc() {
        assert_eq!(zone("d", "").unwrap(), Tz::UTC);
        assert_eq!(zone("d", "Europe/Paris").unwrap(), Tz::Europe__Paris);
        let error = zone("d", "Mars/Olympus").unwrap_err().to_string();
        assert!(error.contains("`Mars/Olympus`"), "{error}");
    }
}
