//! The DAG-level scheduling fields: `schedule`, `timezone`, `start_date`,
//! `end_date`, `catchup`, `max_active_runs` and `sla`, checked together and
//! resolved into a [`DagTrigger`].
//!
//! Dates and catchup only mean something for schedules with data intervals
//! (`cron`, `every`); on an event, asset or manual DAG they are refused
//! rather than silently ignored.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::model::{ScheduleSpec, SpecDuration};
use super::validate::{Parsed, Report};
use super::{DEFAULT_MAX_ACTIVE_RUNS, DagTrigger, MAX_ACTIVE_RUNS_LIMIT};
use crate::ids::{AssetUri, EventName};
use crate::timetable::{MIN_PERIOD, Timetable, format_instant, parse_instant, parse_timezone};

/// The scheduling settings of a DAG that passed the checks.
#[derive(Debug)]
pub(super) struct Scheduling {
    pub(super) trigger: DagTrigger,
    pub(super) display: Option<String>,
    pub(super) timezone: Tz,
    pub(super) catchup: bool,
    pub(super) max_active_runs: u32,
    pub(super) sla: Option<Duration>,
}

/// The kind of schedule a document asks for, read as far as it could be.
enum Requested<'a> {
    Manual,
    Cron {
        expression: &'a str,
        field: &'static str,
    },
    Every(SpecDuration),
    Events(Vec<EventName>),
    Assets(Vec<AssetUri>),
    /// The schedule could not be read or has a problem (reported): checks
    /// that depend on its kind are skipped.
    Unknown,
}

impl Requested<'_> {
    /// What a DAG of this kind is, for "only with cron or every" messages;
    /// `None` for kinds with data intervals.
    fn without_intervals(&self) -> Option<&'static str> {
        match self {
            Requested::Manual => Some("this DAG has no schedule"),
            Requested::Events(_) => Some("this DAG is scheduled by events"),
            Requested::Assets(_) => Some("this DAG is scheduled by assets"),
            Requested::Cron { .. } | Requested::Every(_) | Requested::Unknown => None,
        }
    }
}

/// Checks the scheduling fields, reporting every problem; `None` when
/// there was one.
pub(super) fn check_scheduling(parsed: &Parsed, report: &mut Report) -> Option<Scheduling> {
    let spec = &parsed.spec;
    let unreadable = &parsed.root;
    let problems_before = report.len();

    let timezone = match &spec.timezone {
        None if unreadable.has("timezone") => None,
        None => Some(Tz::UTC),
        Some(name) => match parse_timezone(name) {
            Ok(timezone) => Some(timezone),
            Err(reason) => {
                report.push("timezone", reason);
                None
            }
        },
    };

    let requested = requested(spec.schedule.as_ref(), unreadable.has("schedule"), report);

    let mut read_date = |field: &'static str, written: Option<&String>| -> Option<DateTime<Utc>> {
        let written = written?;
        if let Some(kind) = requested.without_intervals() {
            report.push(
                field,
                format!("{field} applies only to `cron` and `every` schedules; {kind}"),
            );
            return None;
        }
        match parse_instant(written, timezone?) {
            Ok(instant) => Some(instant),
            Err(reason) => {
                report.push(field, reason);
                None
            }
        }
    };
    let start = read_date("start_date", spec.start_date.as_ref());
    let end = read_date("end_date", spec.end_date.as_ref());
    if let (Some(start), Some(end)) = (start, end)
        && end < start
    {
        report.push(
            "end_date",
            format!(
                "end_date {} is before start_date {}",
                format_instant(end),
                format_instant(start)
            ),
        );
    }
    if spec.catchup.is_some()
        && let Some(kind) = requested.without_intervals()
    {
        report.push(
            "catchup",
            format!("catchup applies only to `cron` and `every` schedules; {kind}"),
        );
    }

    if let Some(runs) = spec.max_active_runs
        && !(1..=MAX_ACTIVE_RUNS_LIMIT).contains(&runs)
    {
        report.push(
            "max_active_runs",
            format!("max_active_runs is {runs}; it must be from 1 to {MAX_ACTIVE_RUNS_LIMIT}"),
        );
    }
    if spec.sla.is_some_and(|sla| sla.0.is_zero()) {
        report.push(
            "sla",
            "sla must be longer than zero; leave it out for no SLA",
        );
    }

    // The expression is checked even when the time zone or a date is
    // wrong, so that all of a document's problems show at once.
    let timetable = match &requested {
        Requested::Cron { expression, field } => {
            match Timetable::cron(expression, timezone.unwrap_or(Tz::UTC), None, None) {
                Ok(_) => timezone
                    .and_then(|timezone| Timetable::cron(expression, timezone, start, end).ok()),
                Err(reason) => {
                    report.push(*field, reason);
                    None
                }
            }
        }
        Requested::Every(period) => {
            timezone.and_then(|timezone| Timetable::every(period.0, timezone, start, end).ok())
        }
        _ => None,
    };

    if report.len() > problems_before || unreadable.has("timezone") {
        return None;
    }
    let (trigger, display) = match requested {
        Requested::Manual => (DagTrigger::Manual, None),
        Requested::Cron { expression, .. } => (
            DagTrigger::Timetable(timetable?),
            Some(expression.trim().to_string()),
        ),
        Requested::Every(period) => (
            DagTrigger::Timetable(timetable?),
            Some(format!("every {period}")),
        ),
        Requested::Events(events) => {
            let display = format!("events: {}", join(&events));
            (DagTrigger::Events(events), Some(display))
        }
        Requested::Assets(assets) => {
            let display = format!("assets: {}", join(&assets));
            (DagTrigger::Assets(assets), Some(display))
        }
        Requested::Unknown => return None,
    };
    Some(Scheduling {
        trigger,
        display,
        timezone: timezone?,
        catchup: spec.catchup.unwrap_or(false),
        max_active_runs: spec.max_active_runs.unwrap_or(DEFAULT_MAX_ACTIVE_RUNS),
        sla: spec.sla.map(SpecDuration::as_duration),
    })
}

fn join<T: AsRef<str>>(names: &[T]) -> String {
    let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    names.join(", ")
}

/// Reads the kind of schedule, reporting a mapping with no or several
/// kinds, a short period, and bad event names and asset URIs.
fn requested<'a>(
    schedule: Option<&'a ScheduleSpec>,
    unreadable: bool,
    report: &mut Report,
) -> Requested<'a> {
    let detail = match schedule {
        None if unreadable => return Requested::Unknown,
        None => return Requested::Manual,
        Some(ScheduleSpec::Cron(expression)) => {
            return Requested::Cron {
                expression,
                field: "schedule",
            };
        }
        Some(ScheduleSpec::Detailed(detail)) => detail,
    };
    let set: Vec<&str> = [
        ("cron", detail.cron.is_some()),
        ("every", detail.every.is_some()),
        ("events", detail.events.is_some()),
        ("assets", detail.assets.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    match set.as_slice() {
        [] => {
            report.push(
                "schedule",
                "a schedule mapping needs one of `cron`, `every`, `events` or `assets`",
            );
            return Requested::Unknown;
        }
        [_] => {}
        [.., last] => {
            let all: Vec<String> = set.iter().map(|name| format!("`{name}`")).collect();
            report.push(
                "schedule",
                format!(
                    "a schedule takes one of `cron`, `every`, `events` or `assets`; this one sets {} and `{last}`",
                    all[..all.len() - 1].join(", ")
                ),
            );
            return Requested::Unknown;
        }
    }
    if let Some(expression) = &detail.cron {
        return Requested::Cron {
            expression,
            field: "schedule.cron",
        };
    }
    if let Some(period) = detail.every {
        if period.0 < MIN_PERIOD {
            report.push(
                "schedule.every",
                format!("every is {period}; it must be at least 1s"),
            );
            return Requested::Unknown;
        }
        return Requested::Every(period);
    }
    if let Some(events) = &detail.events {
        return match names("schedule.events", "event", events, EventName::new, report) {
            Some(events) => Requested::Events(events),
            None => Requested::Unknown,
        };
    }
    match names(
        "schedule.assets",
        "asset",
        detail.assets.as_deref().unwrap_or_default(),
        AssetUri::new,
        report,
    ) {
        Some(assets) => Requested::Assets(assets),
        None => Requested::Unknown,
    }
}

/// Checks a non-empty list of names, dropping repeats; `None` when a
/// problem was reported.
fn names<T: PartialEq>(
    field: &str,
    what: &str,
    written: &[String],
    new: impl Fn(String) -> Result<T, crate::ids::IdError>,
    report: &mut Report,
) -> Option<Vec<T>> {
    if written.is_empty() {
        report.push(field, format!("list at least one {what}"));
        return None;
    }
    let mut sound = true;
    let mut checked: Vec<T> = Vec::with_capacity(written.len());
    for (position, name) in written.iter().enumerate() {
        match new(name.clone()) {
            Ok(name) if checked.contains(&name) => {}
            Ok(name) => checked.push(name),
            Err(error) => {
                report.push(format!("{field}[{position}]"), error.reason);
                sound = false;
            }
        }
    }
    sound.then_some(checked)
}
