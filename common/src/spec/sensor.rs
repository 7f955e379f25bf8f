//! Sensor tasks: the checks of a task's `sensor` and its resolution into a
//! [`SensorTask`].
//!
//! A sensor has exactly one condition. `file` and `http` are poked by a
//! worker; `external_task`, `time` and `delta` the controller evaluates
//! itself. Templates in `file` and `http.url` are checked with the other
//! templated fields (`templates`); a URL without a template must already
//! be an http(s) URL here.

use std::time::Duration;

use chrono::NaiveTime;

use super::model::{SensorModeSpec, SensorSpec, SpecDuration, TaskKindSpec, TaskSpec};
use super::validate::{Place, Report, Unreadable};
use super::{SensorCondition, SensorMode, SensorTask};
use crate::ids::{DagId, TaskId, validate_name};
use crate::template::is_templated;

/// Time between pokes unless the sensor says otherwise.
pub const DEFAULT_POKE_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest `poke_interval`.
pub const MIN_POKE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a sensor waits unless it says otherwise: 7 days.
pub const DEFAULT_SENSOR_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3_600);
/// Longest single HTTP request of an `http` sensor unless it says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most pokes a `reschedule` sensor may need (timeout / poke_interval):
/// each one is an attempt record in the store.
pub const MAX_RESCHEDULED_POKES: u128 = 10_000;

const CONDITIONS: &str = "`file`, `http`, `external_task`, `time` or `delta`";

/// The conditions a sensor sets, by name.
fn conditions(sensor: &SensorSpec) -> Vec<&'static str> {
    [
        ("file", sensor.file.is_some()),
        ("http", sensor.http.is_some()),
        ("external_task", sensor.external_task.is_some()),
        ("time", sensor.time.is_some()),
        ("delta", sensor.delta.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect()
}

/// Checks what a task's kind says about `sensor`, and the sensor itself.
pub(super) fn check_sensor(
    place: Place,
    task: &TaskSpec,
    kind: TaskKindSpec,
    unreadable: &Unreadable,
    report: &mut Report,
) {
    if kind != TaskKindSpec::Sensor {
        if task.sensor.is_some() {
            report.push(
                place.field("sensor"),
                format!(
                    "only sensor tasks take `sensor` (this one is `kind: {}`); add `kind: sensor`",
                    kind.name()
                ),
            );
        }
        return;
    }
    if task.command.is_some() {
        report.push(
            place.field("command"),
            "a sensor task waits for its condition; remove `command` or drop `kind: sensor`",
        );
    }
    if !task.env.is_empty() {
        report.push(place.field("env"), "only command tasks take `env`");
    }
    if task.cwd.is_some() {
        report.push(place.field("cwd"), "only command tasks take `cwd`");
    }
    let Some(sensor) = &task.sensor else {
        if !unreadable.has("sensor") {
            report.push(
                place.field("sensor"),
                format!("missing; a sensor task needs a `sensor` with one condition: {CONDITIONS}"),
            );
        }
        return;
    };
    let field = |name: &str| format!("{}.{name}", place.field("sensor"));
    match conditions(sensor).as_slice() {
        [] => report.push(
            place.field("sensor"),
            format!("a sensor needs one condition: {CONDITIONS}"),
        ),
        [_] => {}
        [first, .., last] => report.push(
            place.field("sensor"),
            format!("a sensor takes one condition; this one sets `{first}` and `{last}`"),
        ),
    }
    if let Some(path) = &sensor.file {
        if path.trim().is_empty() {
            report.push(field("file"), "the path must not be empty");
        } else if path.contains('\0') {
            report.push(field("file"), "the path must not contain a NUL character");
        }
    }
    if let Some(http) = &sensor.http {
        let http_field = |name: &str| format!("{}.{name}", field("http"));
        match &http.url {
            None => report.push(http_field("url"), "missing; an http sensor needs a `url`"),
            Some(url) => {
                if let Err(reason) = check_url(url) {
                    report.push(http_field("url"), reason);
                }
            }
        }
        if let Some(method) = &http.method
            && !matches!(method.to_ascii_uppercase().as_str(), "GET" | "HEAD")
        {
            report.push(
                http_field("method"),
                format!("method `{method}` is not supported; use GET or HEAD"),
            );
        }
        if let Some(statuses) = &http.status {
            if statuses.is_empty() {
                report.push(
                    http_field("status"),
                    "list at least one status, or leave `status` out for 200",
                );
            }
            for (position, status) in statuses.iter().enumerate() {
                if !(100..=599).contains(status) {
                    report.push(
                        format!("{}[{position}]", http_field("status")),
                        format!("{status} is not an HTTP status (100 to 599)"),
                    );
                }
            }
        }
        if http
            .request_timeout
            .is_some_and(|timeout| timeout.0.is_zero())
        {
            report.push(
                http_field("request_timeout"),
                "request_timeout must be longer than zero",
            );
        }
    }
    if let Some(external) = &sensor.external_task {
        let external_field = |name: &str| format!("{}.{name}", field("external_task"));
        match &external.dag {
            None => report.push(
                external_field("dag"),
                "missing; an external_task sensor names the `dag` whose run it waits for",
            ),
            Some(dag) => {
                if let Err(error) = validate_name(DagId::WHAT, dag) {
                    report.push(external_field("dag"), error.reason);
                }
            }
        }
        if let Some(task) = &external.task
            && let Err(error) = validate_name(TaskId::WHAT, task)
        {
            report.push(external_field("task"), error.reason);
        }
    }
    if let Some(time) = &sensor.time
        && let Err(reason) = parse_time_of_day(time)
    {
        report.push(field("time"), reason);
    }
    let poke_interval = sensor
        .poke_interval
        .map_or(DEFAULT_POKE_INTERVAL, SpecDuration::as_duration);
    if poke_interval < MIN_POKE_INTERVAL {
        report.push(
            field("poke_interval"),
            format!(
                "poke_interval is {}; it must be at least {}",
                humantime::format_duration(poke_interval),
                humantime::format_duration(MIN_POKE_INTERVAL)
            ),
        );
    }
    let timeout = sensor
        .timeout
        .map_or(DEFAULT_SENSOR_TIMEOUT, SpecDuration::as_duration);
    if timeout.is_zero() {
        report.push(field("timeout"), "timeout must be longer than zero");
    }
    if sensor.mode == Some(SensorModeSpec::Reschedule) && !poke_interval.is_zero() {
        let pokes = timeout.as_nanos().div_ceil(poke_interval.as_nanos());
        if pokes > MAX_RESCHEDULED_POKES {
            report.push(
                field("mode"),
                format!(
                    "reschedule mode would poke up to {pokes} times (timeout {} / poke_interval {}); the limit is {MAX_RESCHEDULED_POKES}: raise poke_interval or shorten timeout",
                    humantime::format_duration(timeout),
                    humantime::format_duration(poke_interval)
                ),
            );
        }
    }
}

/// An `http.url`: an http(s) URL; with a template, only its start (when
/// not templated) is checked, the rest after rendering.
fn check_url(url: &str) -> Result<(), String> {
    let has_scheme = |text: &str| {
        let lower = text.to_ascii_lowercase();
        lower.starts_with("http://") || lower.starts_with("https://")
    };
    if is_templated(url) {
        if url.starts_with("{{") || url.starts_with("{%") || has_scheme(url) {
            return Ok(());
        }
        return Err(format!(
            "the URL must start with http:// or https://; `{url}` does not"
        ));
    }
    let parsed = url::Url::parse(url).map_err(|error| format!("`{url}` is not a URL ({error})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the URL must start with http:// or https://; `{url}` does not"
        ));
    }
    Ok(())
}

/// `HH:MM` or `HH:MM:SS`, 24-hour.
fn parse_time_of_day(text: &str) -> Result<NaiveTime, String> {
    let well_formed = |text: &str| {
        let parts: Vec<&str> = text.split(':').collect();
        (2..=3).contains(&parts.len())
            && parts
                .iter()
                .all(|part| part.len() == 2 && part.bytes().all(|byte| byte.is_ascii_digit()))
    };
    let parsed = if well_formed(text) {
        NaiveTime::parse_from_str(text, "%H:%M:%S")
            .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M"))
            .ok()
    } else {
        None
    };
    parsed.ok_or_else(|| {
        format!("`{text}` is not a time of day; write `HH:MM` or `HH:MM:SS` (24-hour, in the DAG's time zone)")
    })
}

/// The sensor of a task that passed [`check_sensor`].
pub(super) fn resolve_sensor(sensor: &SensorSpec) -> Result<SensorTask, String> {
    let condition = if let Some(path) = &sensor.file {
        SensorCondition::File { path: path.clone() }
    } else if let Some(http) = &sensor.http {
        SensorCondition::Http {
            url: http.url.clone().unwrap_or_default(),
            method: http.method.as_deref().unwrap_or("GET").to_ascii_uppercase(),
            statuses: http.status.clone().unwrap_or_else(|| vec![200]),
            request_timeout: http
                .request_timeout
                .map_or(DEFAULT_REQUEST_TIMEOUT, SpecDuration::as_duration),
        }
    } else if let Some(external) = &sensor.external_task {
        SensorCondition::ExternalTask {
            dag_id: DagId::new(external.dag.clone().unwrap_or_default())
                .map_err(|error| error.reason)?,
            task_id: external
                .task
                .clone()
                .map(TaskId::new)
                .transpose()
                .map_err(|error| error.reason)?,
            delta: external
                .delta
                .map_or(Duration::ZERO, SpecDuration::as_duration),
        }
    } else if let Some(time) = &sensor.time {
        SensorCondition::Time {
            at: parse_time_of_day(time)?,
        }
    } else if let Some(after) = sensor.delta {
        SensorCondition::Delta { after: after.0 }
    } else {
        return Err("a sensor without a condition passed validation".to_string());
    };
    Ok(SensorTask {
        condition,
        poke_interval: sensor
            .poke_interval
            .map_or(DEFAULT_POKE_INTERVAL, SpecDuration::as_duration),
        timeout: sensor
            .timeout
            .map_or(DEFAULT_SENSOR_TIMEOUT, SpecDuration::as_duration),
        soft_fail: sensor.soft_fail.unwrap_or(false),
        mode: match sensor.mode {
            Some(SensorModeSpec::Reschedule) => SensorMode::Reschedule,
            Some(SensorModeSpec::Poke) | None => SensorMode::Poke,
        },
    })
}
