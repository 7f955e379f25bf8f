//! When a scheduled DAG runs: fire instants and data intervals of a `cron`
//! expression or a fixed period (`every`), in a time zone, between optional
//! start and end dates.
//!
//! An interval runs from one fire instant to the next, `[fire_i,
//! fire_{i+1})`. The run of an interval is created once it has ended; its
//! logical date is the interval's start (Airflow's semantics).
//!
//! A cron expression matches the wall clock of the time zone. `croner`
//! parses it and finds the matching wall clock times; this module maps them
//! to instants itself, because what happens when the clocks change depends
//! on the expression's hour field (croner looks at minutes and seconds too):
//!
//! - an expression whose hour field is `*`, a step (`*/2`, `1-23/3`) or all
//!   24 hours is *hourly*: it fires at each real instant its wall clock
//!   times occur, so in both passes of a repeated hour, and not at all for
//!   wall clock times the clocks skip (the next real one follows within the
//!   hour);
//! - any other expression has *fixed hours*: a repeated wall clock time
//!   fires once, at its first occurrence, and a skipped one fires at the
//!   first instant after the gap (once, even when several skipped times or a
//!   time right after the gap also match).
//!
//! Properties the functions keep (tested below with Europe/Berlin's changes
//! of 2026):
//! - fire instants are strictly increasing: `next_fire_after` never returns
//!   an instant at or before its argument, and no instant twice;
//! - `next_fire_after` and `last_fire_at_or_before` agree: each is the
//!   other's inverse on fire instants;
//! - every search is bounded: an expression that can never fire is refused
//!   when the timetable is built, and the searches stop after a fixed
//!   number of steps.
//!
//! `every` intervals are `[anchor + k·period, anchor + (k+1)·period)` in
//! absolute time, with the anchor at the start date (else the Unix epoch);
//! clock changes do not affect them.

use std::fmt;
use std::time::Duration;

use chrono::{
    DateTime, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A data interval: `[start, end)`. A run's logical date is its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The cron macros and the expressions they stand for.
pub const CRON_MACROS: &[(&str, &str)] = &[
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
];

/// Shortest `every` period.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);

/// Wall clock matches one search looks at before it gives up. A search
/// normally needs one or two; only a repeated hour of an expression firing
/// every minute needs a few hundred.
const MAX_SEARCH_STEPS: usize = 100_000;

/// A schedule: when its DAG runs.
#[derive(Debug, Clone)]
pub struct Timetable {
    kind: Kind,
    timezone: Tz,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron(CronSchedule),
    Every(Every),
}

#[derive(Debug, Clone)]
struct CronSchedule {
    /// As written (`@daily`, `0 3 * * *`), for display and comparison.
    written: String,
    cron: Cron,
    /// Fires in both passes of a repeated hour and skips skipped wall clock
    /// times (see the module documentation).
    hourly: bool,
}

#[derive(Debug, Clone, Copy)]
struct Every {
    period: Duration,
    period_nanos: i128,
    anchor_nanos: i128,
}

impl PartialEq for Timetable {
    /// Equal when built from the same expression text (or period), time zone
    /// and dates.
    fn eq(&self, other: &Self) -> bool {
        let same_kind = match (&self.kind, &other.kind) {
            (Kind::Cron(left), Kind::Cron(right)) => left.written == right.written,
            (Kind::Every(left), Kind::Every(right)) => left.period == right.period,
            _ => false,
        };
        same_kind
            && self.timezone == other.timezone
            && self.start == other.start
            && self.end == other.end
    }
}

impl fmt::Display for Timetable {
    /// The cron expression as written, or `every <period>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Cron(schedule) => f.write_str(&schedule.written),
            Kind::Every(every) => write!(f, "every {}", humantime::format_duration(every.period)),
        }
    }
}

impl Timetable {
    /// A timetable of a 5-field cron expression or a macro (`@daily`, see
    /// [`CRON_MACROS`]). The error says what is wrong in cron's terms.
    pub fn cron(
        expression: &str,
        timezone: Tz,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
    ) -> Result<Timetable, String> {
        check_dates(start, end)?;
        let (cron, hourly) = parse_cron(expression)?;
        Ok(Timetable {
            kind: Kind::Cron(CronSchedule {
                written: expression.trim().to_string(),
                cron,
                hourly,
            }),
            timezone,
            start,
            end,
        })
    }

    /// A timetable of intervals of `period` (at least [`MIN_PERIOD`]),
    /// anchored at `start` or else at the Unix epoch.
    pub fn every(
        period: Duration,
        timezone: Tz,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
    ) -> Result<Timetable, String> {
        check_dates(start, end)?;
        if period < MIN_PERIOD {
            return Err(format!(
                "the period {} is too short; it must be at least {}",
                humantime::format_duration(period),
                humantime::format_duration(MIN_PERIOD)
            ));
        }
        Ok(Timetable {
            kind: Kind::Every(Every {
                period,
                period_nanos: period.as_nanos() as i128,
                anchor_nanos: start.map_or(0, nanos_of),
            }),
            timezone,
            start,
            end,
        })
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    pub fn start_date(&self) -> Option<DateTime<Utc>> {
        self.start
    }

    pub fn end_date(&self) -> Option<DateTime<Utc>> {
        self.end
    }

    /// The period of an `every` timetable; `None` for cron.
    pub fn period(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Every(every) => Some(every.period),
            Kind::Cron(_) => None,
        }
    }

    /// The cron expression as written; `None` for `every`.
    pub fn cron_expression(&self) -> Option<&str> {
        match &self.kind {
            Kind::Cron(schedule) => Some(&schedule.written),
            Kind::Every(_) => None,
        }
    }

    /// The first fire instant strictly after `after` (ignores start/end dates).
    pub fn next_fire_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(schedule) => self.cron_next_after(schedule, after),
            Kind::Every(every) => {
                let steps = (nanos_of(after) - every.anchor_nanos).div_euclid(every.period_nanos);
                instant_of_nanos(every.anchor_nanos + (steps + 1) * every.period_nanos)
            }
        }
    }

    /// The last fire instant at or before `at` (ignores start/end dates).
    pub fn last_fire_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(schedule) => self.cron_last_at_or_before(schedule, at),
            Kind::Every(every) => {
                let steps = (nanos_of(at) - every.anchor_nanos).div_euclid(every.period_nanos);
                instant_of_nanos(every.anchor_nanos + steps * every.period_nanos)
            }
        }
    }

    /// The first interval whose start is at or after `not_before` and at or
    /// after start_date, and not after end_date (None when there is none).
    pub fn first_interval_from(&self, not_before: DateTime<Utc>) -> Option<Interval> {
        let from = match self.start {
            Some(start) => not_before.max(start),
            None => not_before,
        };
        let start = self.next_fire_after(from.checked_sub_signed(TimeDelta::nanoseconds(1))?)?;
        self.interval_starting_at(start)
    }

    /// The interval after `previous`: the one starting at `previous.end`
    /// (at the first fire instant at or after it, should `previous` come
    /// from another timetable), None past end_date.
    pub fn next_interval(&self, previous: &Interval) -> Option<Interval> {
        self.first_interval_from(previous.end)
    }

    /// The latest interval that ended at or before `now` and starts at or
    /// after start_date and not after end_date.
    pub fn latest_complete_interval(&self, now: DateTime<Utc>) -> Option<Interval> {
        let end = self.last_fire_at_or_before(now)?;
        let mut interval = Interval {
            start: self
                .last_fire_at_or_before(end.checked_sub_signed(TimeDelta::nanoseconds(1))?)?,
            end,
        };
        if let Some(last_start) = self.end
            && interval.start > last_start
        {
            let start = self.last_fire_at_or_before(last_start)?;
            interval = Interval {
                start,
                end: self.next_fire_after(start)?,
            };
        }
        if self
            .start
            .is_some_and(|first_start| interval.start < first_start)
        {
            return None;
        }
        Some(interval)
    }

    /// Intervals whose start lies in `[from, to]` (and within start/end
    /// dates), in order; an error if there would be more than `limit`.
    pub fn intervals_starting_in(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Interval>, String> {
        let mut intervals = Vec::new();
        let mut next = self.first_interval_from(from);
        while let Some(interval) = next {
            if interval.start > to {
                break;
            }
            if intervals.len() == limit {
                return Err(format!(
                    "more than {limit} intervals start between {} and {}; the limit is {limit}",
                    format_instant(from),
                    format_instant(to)
                ));
            }
            intervals.push(interval);
            // `interval.end` is a fire instant of this timetable: the next
            // interval starts there, with no search for its start.
            next = self.interval_starting_at(interval.end);
        }
        Ok(intervals)
    }

    /// The interval starting at fire instant `start`, unless past end_date.
    fn interval_starting_at(&self, start: DateTime<Utc>) -> Option<Interval> {
        if self.end.is_some_and(|last_start| start > last_start) {
            return None;
        }
        Some(Interval {
            start,
            end: self.next_fire_after(start)?,
        })
    }

    fn cron_next_after(
        &self,
        schedule: &CronSchedule,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let timezone = self.timezone;
        let mut wall = whole_second(after.with_timezone(&timezone).naive_local());
        if let LocalResult::Ambiguous(earlier, later) = timezone.from_local_datetime(&wall)
            && after < later.with_timezone(&Utc)
        {
            // `after` is in the first pass of a repeated hour: the wall clock
            // times of that hour before it come again, after it.
            wall = wall.checked_sub_signed(later.signed_duration_since(earlier))?;
        }
        let mut wall = schedule.cron.find_next_occurrence(&wall, true).ok()?;
        let mut best: Option<DateTime<Utc>> = None;
        for _ in 0..MAX_SEARCH_STEPS {
            let instants = self.instants_of(schedule, wall);
            // The earliest instant of a wall clock time only grows with it, so
            // nothing further can beat `best`.
            if best.is_some_and(|best| instants.earliest >= best) {
                return best;
            }
            for fire in instants.fires.into_iter().flatten() {
                if fire > after && best.is_none_or(|best| fire < best) {
                    best = Some(fire);
                }
            }
            // Outside a repeated hour, every later wall clock time is later
            // in absolute time too: no need to look at the next one.
            if best.is_some() && instants.earliest == instants.latest {
                return best;
            }
            match schedule.cron.find_next_occurrence(&wall, false) {
                Ok(next) => wall = next,
                Err(_) => return best,
            }
        }
        best
    }

    fn cron_last_at_or_before(
        &self,
        schedule: &CronSchedule,
        at: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let timezone = self.timezone;
        let mut wall = whole_second(at.with_timezone(&timezone).naive_local());
        if let LocalResult::Ambiguous(earlier, later) = timezone.from_local_datetime(&wall)
            && at >= later.with_timezone(&Utc)
        {
            // `at` is in the second pass of a repeated hour: the wall clock
            // times of that hour after it came before it, in the first pass.
            wall = wall.checked_add_signed(later.signed_duration_since(earlier))?;
        }
        let mut wall = schedule.cron.find_previous_occurrence(&wall, true).ok()?;
        let mut best: Option<DateTime<Utc>> = None;
        for _ in 0..MAX_SEARCH_STEPS {
            let instants = self.instants_of(schedule, wall);
            if best.is_some_and(|best| instants.latest <= best) {
                return best;
            }
            for fire in instants.fires.into_iter().flatten() {
                if fire <= at && best.is_none_or(|best| fire > best) {
                    best = Some(fire);
                }
            }
            if best.is_some() && instants.earliest == instants.latest {
                return best;
            }
            match schedule.cron.find_previous_occurrence(&wall, false) {
                Ok(previous) => wall = previous,
                Err(_) => return best,
            }
        }
        best
    }

    /// The instants a matching wall clock time fires at, and bounds of the
    /// instants it denotes (whether it fires at them or not), which grow
    /// with the wall clock time.
    fn instants_of(&self, schedule: &CronSchedule, wall: NaiveDateTime) -> WallInstants {
        match self.timezone.from_local_datetime(&wall) {
            LocalResult::Single(instant) => {
                let instant = instant.with_timezone(&Utc);
                WallInstants {
                    earliest: instant,
                    latest: instant,
                    fires: [Some(instant), None],
                }
            }
            LocalResult::Ambiguous(earlier, later) => {
                let earlier = earlier.with_timezone(&Utc);
                let later = later.with_timezone(&Utc);
                WallInstants {
                    earliest: earlier,
                    latest: later,
                    fires: [Some(earlier), schedule.hourly.then_some(later)],
                }
            }
            LocalResult::None => {
                let after_gap = first_instant_after_gap(self.timezone, wall);
                WallInstants {
                    earliest: after_gap,
                    latest: after_gap,
                    fires: [(!schedule.hourly).then_some(after_gap), None],
                }
            }
        }
    }
}

/// The first instant whose wall clock in `timezone` reads past `wall`, a
/// time the clocks skip: the instant they jump.
fn first_instant_after_gap(timezone: Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    // UTC offsets stay within ±26 hours, so the wall clock reads before
    // `wall` at `low` and after it at `high`. Transitions fall on whole
    // seconds, so the bisection runs on seconds.
    let as_if_utc = wall.and_utc().timestamp();
    let mut low = as_if_utc - 26 * 3_600;
    let mut high = as_if_utc + 26 * 3_600;
    let wall_at = |seconds: i64| {
        DateTime::from_timestamp(seconds, 0)
            .map(|instant| instant.with_timezone(&timezone).naive_local())
    };
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if wall_at(middle).is_some_and(|reading| reading < wall) {
            low = middle;
        } else {
            high = middle;
        }
    }
    DateTime::from_timestamp(high, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// What one matching wall clock time means in absolute time.
struct WallInstants {
    earliest: DateTime<Utc>,
    latest: DateTime<Utc>,
    fires: [Option<DateTime<Utc>>; 2],
}

fn check_dates(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Result<(), String> {
    if let (Some(start), Some(end)) = (start, end)
        && end < start
    {
        return Err(format!(
            "end_date {} is before start_date {}",
            format_instant(end),
            format_instant(start)
        ));
    }
    Ok(())
}

/// Names of the five fields, in order, and what each takes.
const FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 (0 and 7 are Sunday) or SUN-SAT"),
];

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Parses a 5-field expression or a macro; returns it and whether it is
/// hourly (see the module documentation).
fn parse_cron(expression: &str) -> Result<(Cron, bool), String> {
    let written = expression.trim();
    if written.is_empty() {
        return Err("the cron expression is empty; write 5 fields (minute hour day-of-month month day-of-week) or a macro such as `@daily`".to_string());
    }
    let expanded = if written.starts_with('@') {
        CRON_MACROS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(written))
            .map(|(_, expanded)| *expanded)
            .ok_or_else(|| {
                let names: Vec<&str> = CRON_MACROS.iter().map(|(name, _)| *name).collect();
                format!(
                    "unknown macro `{written}`; the macros are {}",
                    names.join(", ")
                )
            })?
    } else {
        written
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    if fields.len() != 5 {
        let extra = if fields.len() > 5 {
            " (seconds and years are not supported)"
        } else {
            ""
        };
        return Err(format!(
            "`{written}` has {} field{}; a cron expression has 5: minute, hour, day-of-month, month and day-of-week{extra}",
            fields.len(),
            if fields.len() == 1 { "" } else { "s" }
        ));
    }
    for (position, field) in fields.iter().enumerate() {
        check_classic_field(position, field)?;
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let cron = parser.parse(expanded).map_err(|error| {
        // Find the field croner refuses by parsing it among wildcards, so
        // the message names it.
        for (position, field) in fields.iter().enumerate() {
            let mut alone = ["*"; 5];
            alone[position] = field;
            if parser.parse(&alone.join(" ")).is_err() {
                let (name, range) = FIELDS[position];
                return format!(
                    "the {name} field `{field}` is not valid; it takes {range}, as a value, a list (`1,15`), a range (`1-5`), a step (`*/10`, `1-30/5`) or `*`"
                );
            }
        }
        format!("`{written}` is not a valid cron expression ({error})")
    })?;
    check_fires(written, &cron)?;
    let hour_field = fields[1];
    let hourly = hour_field.contains(['*', '/'])
        || (0..24).all(|hour| cron.pattern.hour_match(hour).unwrap_or(false));
    Ok((cron, hourly))
}

/// Refuses what croner accepts beyond classic cron: `L`, `W`, `#`, `?` and
/// the `+` day-of-week prefix. Month and weekday names are classic.
fn check_classic_field(position: usize, field: &str) -> Result<(), String> {
    let (name, range) = FIELDS[position];
    let names: &[&str] = match position {
        3 => &MONTH_NAMES,
        4 => &WEEKDAY_NAMES,
        _ => &[],
    };
    let mut letters = String::new();
    let check_word = |word: &str| -> Result<(), String> {
        if word.is_empty() || names.iter().any(|known| known.eq_ignore_ascii_case(word)) {
            return Ok(());
        }
        let hint = match word.to_ascii_uppercase().as_str() {
            "L" | "W" | "LW" => format!("`{word}` (last day, nearest weekday) is not classic cron"),
            _ if names.is_empty() => format!("`{word}` is not a number"),
            _ => format!("`{word}` is not a {name} name"),
        };
        Err(format!(
            "the {name} field `{field}` is not valid: {hint}; it takes {range}"
        ))
    };
    for character in field.chars() {
        if character.is_ascii_alphabetic() {
            letters.push(character);
            continue;
        }
        check_word(&letters)?;
        letters.clear();
        if !(character.is_ascii_digit() || matches!(character, '*' | ',' | '-' | '/')) {
            let what = match character {
                '#' => "`#` (nth weekday of the month) is not classic cron".to_string(),
                '?' => "`?` is not classic cron; write `*`".to_string(),
                other => format!("{other:?} is not allowed"),
            };
            return Err(format!(
                "the {name} field `{field}` is not valid: {what}; it takes {range}"
            ));
        }
    }
    check_word(&letters)
}

/// Refuses an expression that never fires, such as `0 0 30 2 *`: without
/// `L`, `W` and `#` an expression that fires at all does so at least once
/// in any 9 years (February 29th can be 8 years apart around 2100).
fn check_fires(written: &str, cron: &Cron) -> Result<(), String> {
    let from = NaiveDate::from_ymd_opt(2000, 1, 1)
        .unwrap_or_default()
        .and_time(NaiveTime::MIN);
    let until = NaiveDate::from_ymd_opt(2009, 1, 1)
        .unwrap_or_default()
        .and_time(NaiveTime::MIN);
    match cron.find_next_occurrence(&from, true) {
        Ok(first) if first < until => Ok(()),
        _ => Err(format!(
            "`{written}` never fires: no date matches its day-of-month and month fields"
        )),
    }
}

/// `wall` without its fraction of a second: croner searches whole seconds.
fn whole_second(wall: NaiveDateTime) -> NaiveDateTime {
    wall.with_nanosecond(0).unwrap_or(wall)
}

fn nanos_of(instant: DateTime<Utc>) -> i128 {
    i128::from(instant.timestamp()) * 1_000_000_000 + i128::from(instant.timestamp_subsec_nanos())
}

fn instant_of_nanos(nanos: i128) -> Option<DateTime<Utc>> {
    let seconds = i64::try_from(nanos.div_euclid(1_000_000_000)).ok()?;
    let subsecond = u32::try_from(nanos.rem_euclid(1_000_000_000)).ok()?;
    DateTime::from_timestamp(seconds, subsecond)
}

/// RFC 3339 in UTC, seconds unless a fraction is set: how instants appear
/// in messages.
pub fn format_instant(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Reads a date as a DAG file writes `start_date` and `end_date`:
/// `YYYY-MM-DD` (the start of that day in `timezone`),
/// `YYYY-MM-DDTHH:MM[:SS[.fff]]` (a wall clock time in `timezone`), or
/// RFC 3339 with `Z` or an offset. A wall clock time the clocks skip is
/// refused; one they repeat means its first occurrence.
pub fn parse_instant(text: &str, timezone: Tz) -> Result<DateTime<Utc>, String> {
    let trimmed = text.trim();
    let usage = "write `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]` (in the DAG's time zone) or RFC 3339 with `Z` or an offset (`2024-01-01T00:00:00Z`)";
    if let Ok(instant) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(instant.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(trimmed, "%Y-%m-%d") {
        // The day's first instant: midnight, or the end of a gap that
        // swallows midnight (some zones change their clocks at 00:00).
        let midnight = date.and_time(NaiveTime::MIN);
        return Ok(match timezone.from_local_datetime(&midnight) {
            LocalResult::Single(instant) | LocalResult::Ambiguous(instant, _) => {
                instant.with_timezone(&Utc)
            }
            LocalResult::None => first_instant_after_gap(timezone, midnight),
        });
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(wall) = NaiveDateTime::parse_from_str(trimmed, format) {
            return match timezone.from_local_datetime(&wall) {
                LocalResult::Single(instant) | LocalResult::Ambiguous(instant, _) => {
                    Ok(instant.with_timezone(&Utc))
                }
                LocalResult::None => Err(format!(
                    "`{trimmed}` does not exist in {}: the clocks skip it; pick a time outside the gap or give an offset",
                    timezone.name()
                )),
            };
        }
    }
    Err(format!("`{trimmed}` is not a date; {usage}"))
}

/// A time zone by its IANA name (`UTC`, `Europe/Berlin`); the error
/// suggests a close name.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    if let Ok(timezone) = name.parse::<Tz>() {
        return Ok(timezone);
    }
    let names = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|timezone| timezone.name());
    let suggestion = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|timezone| timezone.name())
        .find(|known| known.eq_ignore_ascii_case(name))
        .or_else(|| {
            let mut best: Option<(f64, &str)> = None;
            for known in names {
                let similarity =
                    strsim::jaro_winkler(&name.to_ascii_lowercase(), &known.to_ascii_lowercase());
                if similarity >= 0.9 && best.is_none_or(|(score, _)| similarity > score) {
                    best = Some((similarity, known));
                }
            }
            best.map(|(_, known)| known)
        });
    Err(match suggestion {
        Some(known) => format!("unknown time zone `{name}`; did you mean `{known}`?"),
        None => format!(
            "unknown time zone `{name}`; use an IANA name such as `UTC`, `Europe/Berlin` or `America/New_York`"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERLIN: Tz = chrono_tz::Europe::Berlin;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|error| panic!("{text}: {error}"))
            .with_timezone(&Utc)
    }

    fn berlin(expression: &str) -> Timetable {
        Timetable::cron(expression, BERLIN, None, None).unwrap()
    }

    /// Fire instants whose Berlin calendar date is `date`.
    fn fires_on(timetable: &Timetable, date: &str) -> Vec<DateTime<Utc>> {
        let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
        let first = BERLIN
            .from_local_datetime(&day.and_time(NaiveTime::MIN))
            .earliest()
            .unwrap()
            .with_timezone(&Utc);
        let mut fires = Vec::new();
        let mut cursor = first - TimeDelta::nanoseconds(1);
        while let Some(fire) = timetable.next_fire_after(cursor) {
            if fire.with_timezone(&BERLIN).date_naive() != day {
                break;
            }
            fires.push(fire);
            cursor = fire;
        }
        fires
    }

    fn strictly_increasing_and_inverse(timetable: &Timetable, fires: &[DateTime<Utc>]) {
        for pair in fires.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
        }
        for &fire in fires {
            assert_eq!(timetable.last_fire_at_or_before(fire), Some(fire));
            let before = timetable.last_fire_at_or_before(fire - TimeDelta::nanoseconds(1));
            let next = before.and_then(|before| timetable.next_fire_after(before));
            assert_eq!(next, Some(fire), "next after the previous of {fire}");
        }
    }

    #[test]
    fn fixed_hour_skipped_by_spring_forward_fires_after_the_gap() {
        let timetable = berlin("30 2 * * *");
        let fires = fires_on(&timetable, "2026-03-29");
        // 02:30 does not exist on 29 March: it fires at 03:00 CEST.
        assert_eq!(fires, [utc("2026-03-29T01:00:00Z")]);
        assert_eq!(
            fires_on(&timetable, "2026-03-28"),
            [utc("2026-03-28T01:30:00Z")]
        );
        assert_eq!(
            fires_on(&timetable, "2026-03-30"),
            [utc("2026-03-30T00:30:00Z")]
        );
        strictly_increasing_and_inverse(&timetable, &fires);
        // A skipped time and the first one after the gap fire once together.
        let both = berlin("0 2,3 * * *");
        assert_eq!(fires_on(&both, "2026-03-29"), [utc("2026-03-29T01:00:00Z")]);
        assert_eq!(
            both.next_fire_after(utc("2026-03-29T01:00:00Z")),
            Some(utc("2026-03-30T00:00:00Z"))
        );
    }

    #[test]
    fn fixed_hour_repeated_by_fall_back_fires_once_at_the_first_occurrence() {
        let timetable = berlin("30 2 * * *");
        let fires = fires_on(&timetable, "2026-10-25");
        // The first 02:30 is CEST (+02:00).
        assert_eq!(fires, [utc("2026-10-25T00:30:00Z")]);
        strictly_increasing_and_inverse(&timetable, &fires);
        // From inside the second pass, the next fire is the next day's.
        assert_eq!(
            timetable.next_fire_after(utc("2026-10-25T01:15:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
        assert_eq!(
            timetable.last_fire_at_or_before(utc("2026-10-25T01:45:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        // A list of minutes in a fixed hour is fixed too.
        let twice = berlin("0,30 2 * * *");
        assert_eq!(
            fires_on(&twice, "2026-10-25"),
            [utc("2026-10-25T00:00:00Z"), utc("2026-10-25T00:30:00Z")]
        );
        assert_eq!(
            fires_on(&twice, "2026-03-29"),
            [utc("2026-03-29T01:00:00Z")]
        );
    }

    #[test]
    fn hourly_fires_at_every_real_hour_across_both_changes() {
        let timetable = berlin("0 * * * *");
        let spring = fires_on(&timetable, "2026-03-29");
        assert_eq!(spring.len(), 23, "{spring:?}");
        let autumn = fires_on(&timetable, "2026-10-25");
        assert_eq!(autumn.len(), 25, "{autumn:?}");
        for fires in [&spring, &autumn] {
            for pair in fires.windows(2) {
                assert_eq!(pair[1] - pair[0], TimeDelta::hours(1), "{pair:?}");
            }
            strictly_increasing_and_inverse(&timetable, fires);
        }
        assert_eq!(spring[0], utc("2026-03-28T23:00:00Z"));
        assert_eq!(spring[2], utc("2026-03-29T01:00:00Z"), "03:00 CEST");
        assert_eq!(autumn[2], utc("2026-10-25T00:00:00Z"), "02:00 CEST");
        assert_eq!(autumn[3], utc("2026-10-25T01:00:00Z"), "02:00 CET");
        // Going backwards from the second pass finds the first pass too.
        assert_eq!(
            timetable.last_fire_at_or_before(utc("2026-10-25T00:59:59Z")),
            Some(utc("2026-10-25T00:00:00Z"))
        );
    }

    #[test]
    fn every_half_hour_across_both_changes() {
        let timetable = berlin("*/30 * * * *");
        let spring = fires_on(&timetable, "2026-03-29");
        assert_eq!(spring.len(), 46);
        let autumn = fires_on(&timetable, "2026-10-25");
        assert_eq!(autumn.len(), 50);
        for fires in [&spring, &autumn] {
            for pair in fires.windows(2) {
                assert_eq!(pair[1] - pair[0], TimeDelta::minutes(30), "{pair:?}");
            }
            strictly_increasing_and_inverse(&timetable, fires);
        }
        // A step in the minutes of a fixed hour is not hourly.
        let in_two = berlin("*/30 2 * * *");
        assert_eq!(
            fires_on(&in_two, "2026-10-25"),
            [utc("2026-10-25T00:00:00Z"), utc("2026-10-25T00:30:00Z")]
        );
        // Every minute through the repeated hour: 60 × 25 distinct instants.
        let minutely = berlin("* * * * *");
        let fires = fires_on(&minutely, "2026-10-25");
        assert_eq!(fires.len(), 25 * 60);
        strictly_increasing_and_inverse(&minutely, &fires[..200]);
    }

    #[test]
    fn a_time_outside_the_changes_is_unaffected() {
        let timetable = berlin("0 3 * * *");
        assert_eq!(
            fires_on(&timetable, "2026-03-29"),
            [utc("2026-03-29T01:00:00Z")]
        );
        assert_eq!(
            fires_on(&timetable, "2026-10-25"),
            [utc("2026-10-25T02:00:00Z")]
        );
    }

    #[test]
    fn macros_equal_their_expressions_over_a_year() {
        for (name, expression) in CRON_MACROS {
            let by_macro = berlin(name);
            let by_expression = berlin(expression);
            let mut cursor = utc("2026-01-01T00:00:00Z");
            let until = utc("2027-01-01T00:00:00Z");
            let mut count = 0;
            while cursor < until {
                let fire = by_macro.next_fire_after(cursor).unwrap();
                assert_eq!(Some(fire), by_expression.next_fire_after(cursor), "{name}");
                cursor = fire;
                count += 1;
            }
            assert!(count > 0);
            assert_eq!(by_macro.to_string(), *name);
        }
        assert_ne!(berlin("@daily"), berlin("0 0 * * *"), "compared as written");
        assert_eq!(berlin("@daily"), berlin(" @daily "));
        assert_eq!(berlin("@DAILY").cron_expression(), Some("@DAILY"));
    }

    #[test]
    fn weekday_and_month_names_and_lists() {
        let timetable = Timetable::cron("15 9 * JAN,jul MON-FRI", Tz::UTC, None, None).unwrap();
        assert_eq!(
            timetable.next_fire_after(utc("2026-06-30T12:00:00Z")),
            Some(utc("2026-07-01T09:15:00Z"))
        );
        // Day of month and day of week both restricted: either matches (cron's rule).
        let either = Timetable::cron("0 0 13 * 5", Tz::UTC, None, None).unwrap();
        assert_eq!(
            either.next_fire_after(utc("2026-02-01T00:00:00Z")),
            Some(utc("2026-02-06T00:00:00Z")),
            "the first Friday comes before the 13th"
        );
        let sunday = Timetable::cron("0 0 * * 7", Tz::UTC, None, None).unwrap();
        assert_eq!(
            sunday.next_fire_after(utc("2026-03-02T00:00:00Z")),
            Some(utc("2026-03-08T00:00:00Z"))
        );
    }

    #[test]
    fn expressions_are_refused_in_cron_terms() {
        let refused = |expression: &str| {
            Timetable::cron(expression, Tz::UTC, None, None)
                .map(|_| ())
                .unwrap_err()
        };
        assert_eq!(
            refused("0 0 3 * * *"),
            "`0 0 3 * * *` has 6 fields; a cron expression has 5: minute, hour, day-of-month, month and day-of-week (seconds and years are not supported)"
        );
        assert_eq!(
            refused("0 3 *"),
            "`0 3 *` has 3 fields; a cron expression has 5: minute, hour, day-of-month, month and day-of-week"
        );
        assert_eq!(
            refused("60 * * * *"),
            "the minute field `60` is not valid; it takes 0-59, as a value, a list (`1,15`), a range (`1-5`), a step (`*/10`, `1-30/5`) or `*`"
        );
        assert!(refused("0 24 * * *").starts_with("the hour field `24` is not valid"));
        assert!(refused("0 0 0 * *").starts_with("the day-of-month field `0` is not valid"));
        assert!(refused("0 0 * 13 *").starts_with("the month field `13` is not valid"));
        assert_eq!(
            refused("0 0 L * *"),
            "the day-of-month field `L` is not valid: `L` (last day, nearest weekday) is not classic cron; it takes 1-31"
        );
        assert_eq!(
            refused("0 0 * * 5#3"),
            "the day-of-week field `5#3` is not valid: `#` (nth weekday of the month) is not classic cron; it takes 0-7 (0 and 7 are Sunday) or SUN-SAT"
        );
        assert!(refused("0 0 ? * MON").contains("`?` is not classic cron"));
        assert!(refused("0 0 * * +MON").contains("'+' is not allowed"));
        assert!(refused("0 0 * * FUN").contains("`FUN` is not a day-of-week name"));
        assert!(refused("0 0 * FEBR *").contains("`FEBR` is not a month name"));
        assert!(refused("x * * * *").contains("`x` is not a number"));
        assert!(refused("5/15 * * * *").starts_with("the minute field `5/15` is not valid"));
        assert_eq!(
            refused("@reboot"),
            "unknown macro `@reboot`; the macros are @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually"
        );
        assert!(refused("  ").starts_with("the cron expression is empty"));
    }

    #[test]
    fn impossible_expressions_are_refused() {
        for expression in ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 FEB *"] {
            let error = Timetable::cron(expression, BERLIN, None, None)
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                error,
                format!(
                    "`{expression}` never fires: no date matches its day-of-month and month fields"
                )
            );
        }
        // Rare but possible.
        let leap_day = Timetable::cron("0 0 29 2 *", BERLIN, None, None).unwrap();
        assert_eq!(
            leap_day.next_fire_after(utc("2096-03-01T00:00:00Z")),
            Some(utc("2104-02-28T23:00:00Z")),
            "2100 is not a leap year"
        );
    }

    #[test]
    fn every_is_anchored_in_absolute_time() {
        let period = Duration::from_secs(30 * 60);
        let from_epoch = Timetable::every(period, BERLIN, None, None).unwrap();
        assert_eq!(
            from_epoch.next_fire_after(utc("2026-03-29T00:59:59Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            from_epoch.next_fire_after(utc("2026-03-29T01:00:00Z")),
            Some(utc("2026-03-29T01:30:00Z"))
        );
        assert_eq!(
            from_epoch.last_fire_at_or_before(utc("2026-03-29T01:29:59.999Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            from_epoch.last_fire_at_or_before(utc("1969-12-31T23:59:00Z")),
            Some(utc("1969-12-31T23:30:00Z")),
            "before the anchor too"
        );
        let anchored = Timetable::every(
            Duration::from_secs(7 * 60),
            Tz::UTC,
            Some(utc("2026-01-01T00:01:00Z")),
            None,
        )
        .unwrap();
        assert_eq!(
            anchored.first_interval_from(utc("2025-01-01T00:00:00Z")),
            Some(Interval {
                start: utc("2026-01-01T00:01:00Z"),
                end: utc("2026-01-01T00:08:00Z")
            })
        );
        assert_eq!(
            anchored.next_fire_after(utc("2026-01-01T01:00:00Z")),
            Some(utc("2026-01-01T01:04:00Z"))
        );
        assert_eq!(anchored.to_string(), "every 7m");
        assert_eq!(anchored.period(), Some(Duration::from_secs(420)));
        let error = Timetable::every(Duration::from_millis(500), Tz::UTC, None, None)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            error,
            "the period 500ms is too short; it must be at least 1s"
        );
    }

    #[test]
    fn intervals_respect_start_and_end_dates() {
        let timetable = Timetable::cron(
            "0 0 * * *",
            BERLIN,
            Some(utc("2025-12-31T23:00:00Z")),
            Some(utc("2026-01-04T23:00:00Z")),
        )
        .unwrap();
        let first = timetable
            .first_interval_from(utc("2020-01-01T00:00:00Z"))
            .unwrap();
        assert_eq!(
            first,
            Interval {
                start: utc("2025-12-31T23:00:00Z"),
                end: utc("2026-01-01T23:00:00Z")
            }
        );
        let second = timetable.next_interval(&first).unwrap();
        assert_eq!(second.start, first.end);
        assert_eq!(second.end, utc("2026-01-02T23:00:00Z"));
        // A not_before between fires takes the next one.
        assert_eq!(
            timetable
                .first_interval_from(utc("2026-01-01T12:00:00Z"))
                .unwrap()
                .start,
            utc("2026-01-01T23:00:00Z")
        );
        // The last interval starts at end_date; none after it.
        let last = timetable
            .first_interval_from(utc("2026-01-04T23:00:00Z"))
            .unwrap();
        assert_eq!(last.end, utc("2026-01-05T23:00:00Z"));
        assert_eq!(timetable.next_interval(&last), None);

        let all = timetable
            .intervals_starting_in(utc("2000-01-01T00:00:00Z"), utc("2100-01-01T00:00:00Z"), 5)
            .unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[0], first);
        assert_eq!(all[4], last);
        let error = timetable
            .intervals_starting_in(utc("2000-01-01T00:00:00Z"), utc("2100-01-01T00:00:00Z"), 4)
            .unwrap_err();
        assert_eq!(
            error,
            "more than 4 intervals start between 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z; the limit is 4"
        );
        let inner = timetable
            .intervals_starting_in(utc("2026-01-01T23:00:00Z"), utc("2026-01-02T23:00:00Z"), 10)
            .unwrap();
        assert_eq!(inner.len(), 2, "both ends of the range are included");
        assert!(
            timetable
                .intervals_starting_in(utc("2026-01-03T00:00:00Z"), utc("2026-01-01T00:00:00Z"), 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn latest_complete_interval() {
        let timetable = berlin("0 0 * * *");
        let now = utc("2026-03-29T12:00:00Z");
        assert_eq!(
            timetable.latest_complete_interval(now),
            Some(Interval {
                start: utc("2026-03-27T23:00:00Z"),
                end: utc("2026-03-28T23:00:00Z")
            }),
            "the day of 28 March, which had 24 hours"
        );
        let at_end = timetable.latest_complete_interval(utc("2026-03-28T23:00:00Z"));
        assert_eq!(
            at_end.map(|interval| interval.end),
            Some(utc("2026-03-28T23:00:00Z"))
        );
        let dated = Timetable::cron(
            "0 0 * * *",
            BERLIN,
            Some(utc("2026-03-20T23:00:00Z")),
            Some(utc("2026-03-24T23:00:00Z")),
        )
        .unwrap();
        assert_eq!(
            dated.latest_complete_interval(now),
            Some(Interval {
                start: utc("2026-03-24T23:00:00Z"),
                end: utc("2026-03-25T23:00:00Z")
            }),
            "the interval starting at end_date"
        );
        assert_eq!(
            dated.latest_complete_interval(utc("2026-03-21T22:59:59Z")),
            None,
            "the first interval has not ended yet"
        );
        assert_eq!(
            dated
                .latest_complete_interval(utc("2026-03-21T23:00:00Z"))
                .map(|interval| interval.start),
            Some(utc("2026-03-20T23:00:00Z"))
        );
    }

    #[test]
    fn end_before_start_is_refused() {
        let error = Timetable::cron(
            "@daily",
            Tz::UTC,
            Some(utc("2026-02-01T00:00:00Z")),
            Some(utc("2026-01-01T00:00:00Z")),
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(
            error,
            "end_date 2026-01-01T00:00:00Z is before start_date 2026-02-01T00:00:00Z"
        );
    }

    #[test]
    fn dates_are_read_in_the_time_zone() {
        assert_eq!(
            parse_instant("2026-01-01", BERLIN),
            Ok(utc("2025-12-31T23:00:00Z"))
        );
        assert_eq!(
            parse_instant("2026-07-01T09:30", BERLIN),
            Ok(utc("2026-07-01T07:30:00Z"))
        );
        assert_eq!(
            parse_instant("2026-07-01T09:30:15", BERLIN),
            Ok(utc("2026-07-01T07:30:15Z"))
        );
        assert_eq!(
            parse_instant("2026-07-01T09:30:00+05:00", BERLIN),
            Ok(utc("2026-07-01T04:30:00Z"))
        );
        assert_eq!(
            parse_instant("2026-10-25T02:30", BERLIN),
            Ok(utc("2026-10-25T00:30:00Z")),
            "a repeated time means its first occurrence"
        );
        assert_eq!(
            parse_instant("2026-03-29T02:30", BERLIN),
            Err("`2026-03-29T02:30` does not exist in Europe/Berlin: the clocks skip it; pick a time outside the gap or give an offset".to_string())
        );
        // Santiago moved its clocks forward at midnight on 7 September 2025.
        assert_eq!(
            parse_instant("2025-09-07", chrono_tz::America::Santiago),
            Ok(utc("2025-09-07T04:00:00Z")),
            "the day starts at 01:00 -03"
        );
        assert_eq!(
            parse_instant("2026-13-01", BERLIN),
            Err("`2026-13-01` is not a date; write `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]` (in the DAG's time zone) or RFC 3339 with `Z` or an offset (`2024-01-01T00:00:00Z`)".to_string())
        );
    }

    #[test]
    fn time_zones_by_name_with_suggestions() {
        assert_eq!(parse_timezone("Europe/Berlin"), Ok(BERLIN));
        assert_eq!(parse_timezone("UTC"), Ok(Tz::UTC));
        assert_eq!(
            parse_timezone("Europe/Berln"),
            Err("unknown time zone `Europe/Berln`; did you mean `Europe/Berlin`?".to_string())
        );
        assert_eq!(
            parse_timezone("europe/berlin"),
            Err("unknown time zone `europe/berlin`; did you mean `Europe/Berlin`?".to_string())
        );
        assert!(
            parse_timezone("Mars/Olympus")
                .unwrap_err()
                .ends_with("use an IANA name such as `UTC`, `Europe/Berlin` or `America/New_York`")
        );
    }

    #[test]
    fn searches_are_fast_enough_for_catchup() {
        // A month of minutes, across the autumn change: what a backfill of
        // `* * * * *` over a month walks.
        let timetable = berlin("* * * * *");
        let started = std::time::Instant::now();
        let intervals = timetable
            .intervals_starting_in(
                utc("2026-10-01T00:00:00Z"),
                utc("2026-10-31T23:59:00Z"),
                100_000,
            )
            .unwrap();
        assert_eq!(intervals.len(), 31 * 24 * 60);
        eprintln!("{} intervals in {:?}", intervals.len(), started.elapsed());
    }
}
