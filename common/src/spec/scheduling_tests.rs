//! Tests of what DAG files say about scheduling, through `parse_dag`:
//! schedules, time zones, dates, params, sensors, outputs, SLAs and
//! templated fields.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::*;

fn parse(text: &str) -> Result<ValidatedDag, SpecErrors> {
    parse_dag(text, SpecFormat::Detect, &SpecLimits::default())
}

fn valid(text: &str) -> ValidatedDag {
    match parse(text) {
        Ok(dag) => dag,
        Err(errors) => panic!("expected a valid document, got:\n{errors}"),
    }
}

fn violations(text: &str) -> Vec<FieldViolation> {
    match parse(text) {
        Ok(dag) => panic!(
            "expected violations, got a valid DAG: {}",
            dag.canonical_json
        ),
        Err(errors) => errors.0,
    }
}

/// The only violation of `text`, as `path: reason`.
fn only_violation(text: &str) -> String {
    let found = violations(text);
    assert_eq!(found.len(), 1, "{text}\n{}", SpecErrors(found.clone()));
    found[0].to_string()
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn timetable(dag: &ValidatedDag) -> &Timetable {
    match &dag.trigger {
        DagTrigger::Timetable(timetable) => timetable,
        other => panic!("expected a timetable, got {other:?}"),
    }
}

const ONE_TASK: &str = "tasks: [{id: a, command: \"true\"}]\n";

/// The reference's complete example as it was before schedules were
/// interpreted, and its digest then: documents that do not use the new
/// fields keep their canonical form, so their versions do not change.
const COMPLETE_EXAMPLE_BEFORE: &str = r#"
id: nightly-etl
description: Extract, transform and load the sales data
schedule: "@daily"

default_args:
  retries: 2
  retry_delay: 30s
  retry_exponential_backoff: true
  max_retry_delay: 10m
  retry_jitter: 0.2
  timeout: 1h
  queue: etl
  env:
    WAREHOUSE_URL: postgres://warehouse.internal/sales
    LOG_LEVEL: info
  cwd: /srv/etl

tasks:
  - id: extract-orders
    description: Pull the orders of the logical date
    command: python extract.py --table orders --date "$BATON_LOGICAL_DATE"

  - id: extract-customers
    command: [python, extract.py, --table, customers]
    priority: 10                      # first in line when the queue is busy

  - id: join
    depends_on: [extract-orders, extract-customers]
    command: [python, join.py]        # writes its row count to $BATON_OUTPUT
    env:
      LOG_LEVEL: debug                # overrides default_args.env.LOG_LEVEL
    timeout: 2h
    queue: etl-large

  - id: load
    depends_on: join
    command: [python, load.py]
    retries: 5
    retry_delay: 1m

  - id: done
    kind: noop
    depends_on: [load]
"#;

#[test]
fn documents_without_the_new_fields_keep_their_digest() {
    let dag = valid(COMPLETE_EXAMPLE_BEFORE);
    assert_eq!(
        dag.digest,
        "53b28013070363c5266e005c533baa815e2af7d12466a82000f205882f90c9e6"
    );
    assert!(
        dag.canonical_json.starts_with(
            r#"{"id":"nightly-etl","description":"Extract, transform and load the sales data","schedule":"@daily","default_args":{"#
        ),
        "{}",
        dag.canonical_json
    );
    // And what they mean now: a daily schedule in UTC.
    assert_eq!(dag.schedule.as_deref(), Some("@daily"));
    assert_eq!(dag.timezone, chrono_tz::Tz::UTC);
    assert_eq!(
        timetable(&dag).next_fire_after(utc("2024-05-01T10:00:00Z")),
        Some(utc("2024-05-02T00:00:00Z"))
    );
    assert!(!dag.catchup);
    assert_eq!(dag.max_active_runs, DEFAULT_MAX_ACTIVE_RUNS);
    assert!(dag.params.is_empty());
    assert_eq!(dag.sla, None);
    for task in &dag.tasks {
        assert!(!task.templated && task.outputs.is_empty() && task.sla.is_none());
    }
}

#[test]
fn the_new_fields_appear_in_the_canonical_form() {
    let dag = valid(
        r#"
id: x
tasks:
  - id: wait
    kind: sensor
    sensor: {mode: reschedule, timeout: 3600, poke_interval: 60, http: {url: "https://api/ready?d={{ ds }}", status: 204}}
    outputs: s3://bucket/orders
    sla: 30m
sla: 2h
params: {tags: [a, b], limit: {maximum: 10000, minimum: 1, default: 100, type: integer}}
max_active_runs: 3
catchup: true
end_date: 2024-12-31T00:00:00Z
start_date: 2024-01-01
timezone: Europe/Berlin
schedule: {every: 90}
"#,
    );
    assert_eq!(
        dag.canonical_json,
        concat!(
            r#"{"id":"x","schedule":{"every":"1m 30s"},"timezone":"Europe/Berlin","start_date":"2024-01-01","#,
            r#""end_date":"2024-12-31T00:00:00Z","catchup":true,"max_active_runs":3,"#,
            r#""params":{"limit":{"type":"integer","default":100,"minimum":1,"maximum":10000},"tags":["a","b"]},"#,
            r#""sla":"2h","tasks":[{"id":"wait","kind":"sensor","sensor":{"http":{"url":"https://api/ready?d={{ ds }}","status":[204]},"#,
            r#""poke_interval":"1m","timeout":"1h","mode":"reschedule"},"outputs":["s3://bucket/orders"],"sla":"30m"}]}"#
        )
    );
    let again = parse_dag(
        &dag.canonical_json,
        SpecFormat::Json,
        &SpecLimits::default(),
    )
    .unwrap();
    assert_eq!(again, dag, "the canonical form reads back to the same DAG");
    let schedule = valid("id: x\nschedule: {events: one}\ntasks: [{id: a, kind: noop}]\n");
    assert_eq!(
        schedule.canonical_json,
        r#"{"id":"x","schedule":{"events":["one"]},"tasks":[{"id":"a","kind":"noop"}]}"#
    );
}

#[test]
fn cron_schedules_in_a_time_zone() {
    let dag = valid(&format!(
        "id: x\nschedule: \"30 2 * * *\"\ntimezone: Europe/Berlin\n{ONE_TASK}"
    ));
    assert_eq!(dag.schedule.as_deref(), Some("30 2 * * *"));
    assert_eq!(dag.timezone, chrono_tz::Europe::Berlin);
    let timetable = timetable(&dag);
    assert_eq!(timetable.timezone(), chrono_tz::Europe::Berlin);
    assert_eq!(
        timetable.next_fire_after(utc("2026-03-28T12:00:00Z")),
        Some(utc("2026-03-29T01:00:00Z")),
        "02:30 is skipped on 29 March: 03:00 CEST"
    );
    let mapping = valid(&format!(
        "id: x\nschedule: {{cron: \"@hourly\"}}\ncatchup: true\nmax_active_runs: 2\nsla: 1h\n{ONE_TASK}"
    ));
    assert_eq!(mapping.schedule.as_deref(), Some("@hourly"));
    assert!(mapping.catchup);
    assert_eq!(mapping.max_active_runs, 2);
    assert_eq!(mapping.sla, Some(std::time::Duration::from_secs(3_600)));
}

#[test]
fn dates_are_read_in_the_dag_time_zone() {
    for (start, expected) in [
        ("2024-01-01", "2023-12-31T23:00:00Z"),
        ("\"2024-01-01\"", "2023-12-31T23:00:00Z"),
        ("2024-07-01T06:30", "2024-07-01T04:30:00Z"),
        ("2024-07-01T06:30:15", "2024-07-01T04:30:15Z"),
        ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
        ("2024-01-01T00:00:00-05:00", "2024-01-01T05:00:00Z"),
    ] {
        let dag = valid(&format!(
            "id: x\nschedule: \"@daily\"\ntimezone: Europe/Berlin\nstart_date: {start}\nend_date: 2025-01-01\n{ONE_TASK}"
        ));
        let timetable = timetable(&dag);
        assert_eq!(timetable.start_date(), Some(utc(expected)), "{start}");
        assert_eq!(timetable.end_date(), Some(utc("2024-12-31T23:00:00Z")));
    }
    let json = valid(
        r#"{"id": "x", "schedule": {"every": "1h"}, "start_date": "2024-01-01T00:30:00Z", "tasks": [{"id": "a", "kind": "noop"}]}"#,
    );
    let timetable = timetable(&json);
    assert_eq!(json.schedule.as_deref(), Some("every 1h"));
    assert_eq!(
        timetable.first_interval_from(utc("2020-01-01T00:00:00Z")),
        Some(crate::timetable::Interval {
            start: utc("2024-01-01T00:30:00Z"),
            end: utc("2024-01-01T01:30:00Z")
        }),
        "every is anchored at start_date"
    );
}

#[test]
fn events_and_assets_schedules() {
    let dag = valid(&format!(
        "id: x\nschedule: {{events: [orders.loaded, \"s3:put\", orders.loaded]}}\ntimezone: Asia/Tokyo\n{ONE_TASK}"
    ));
    let events: Vec<&str> = match &dag.trigger {
        DagTrigger::Events(events) => events.iter().map(EventName::as_str).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(events, ["orders.loaded", "s3:put"], "repeats count once");
    assert_eq!(
        dag.schedule.as_deref(),
        Some("events: orders.loaded, s3:put")
    );
    assert_eq!(dag.timezone, chrono_tz::Asia::Tokyo, "for `ds`");

    let dag = valid(&format!(
        "id: x\nschedule: {{assets: \"s3://bucket/orders\"}}\n{ONE_TASK}"
    ));
    assert_eq!(
        dag.trigger,
        DagTrigger::Assets(vec![AssetUri::new("s3://bucket/orders").unwrap()])
    );
    assert_eq!(dag.schedule.as_deref(), Some("assets: s3://bucket/orders"));

    let manual = valid(&format!("id: x\n{ONE_TASK}"));
    assert_eq!(manual.trigger, DagTrigger::Manual);
    assert_eq!(manual.schedule, None);
}

#[test]
fn schedule_problems_name_their_field() {
    let cases = [
        (
            "schedule: \"0 0 3 * * *\"",
            "schedule: `0 0 3 * * *` has 6 fields; a cron expression has 5: minute, hour, day-of-month, month and day-of-week (seconds and years are not supported)",
        ),
        (
            "schedule: {cron: \"61 * * * *\"}",
            "schedule.cron: the minute field `61` is not valid; it takes 0-59, as a value, a list (`1,15`), a range (`1-5`), a step (`*/10`, `1-30/5`) or `*`",
        ),
        (
            "schedule: \"0 0 30 2 *\"",
            "schedule: `0 0 30 2 *` never fires: no date matches its day-of-month and month fields",
        ),
        (
            "schedule: \"@reboot\"",
            "schedule: unknown macro `@reboot`; the macros are @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually",
        ),
        (
            "schedule: {}",
            "schedule: a schedule mapping needs one of `cron`, `every`, `events` or `assets`",
        ),
        (
            "schedule: {cron: \"@daily\", every: 5m, events: x}",
            "schedule: a schedule takes one of `cron`, `every`, `events` or `assets`; this one sets `cron`, `every` and `events`",
        ),
        (
            "schedule: {every: 500ms}",
            "schedule.every: every is 500ms; it must be at least 1s",
        ),
        (
            "schedule: {events: []}",
            "schedule.events: list at least one event",
        ),
        (
            "schedule: {events: [ok, \"not ok\"]}",
            "schedule.events[1]: event name `not ok` contains ' '; only letters, digits, `_`, `.`, `:` and `-` are allowed",
        ),
        (
            "schedule: {assets: [\"s3://a b\"]}",
            "schedule.assets[0]: asset URI `s3://a b` contains ' '; whitespace and control characters are not allowed",
        ),
        (
            "schedule: {crn: \"@daily\"}",
            "schedule.crn: unknown field; did you mean `cron`?",
        ),
        (
            "schedule: 5",
            "schedule: invalid type: integer `5`, expected a cron expression (\"0 3 * * *\", \"@daily\") or a mapping with `cron`, `every`, `events` or `assets`",
        ),
        (
            "schedule: \"@daily\"\ntimezone: Europe/Berln",
            "timezone: unknown time zone `Europe/Berln`; did you mean `Europe/Berlin`?",
        ),
        (
            "schedule: \"@daily\"\nstart_date: 2024-02-30",
            "start_date: `2024-02-30` is not a date; write `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]` (in the DAG's time zone) or RFC 3339 with `Z` or an offset (`2024-01-01T00:00:00Z`)",
        ),
        (
            "schedule: \"@daily\"\ntimezone: Europe/Berlin\nstart_date: 2026-03-29T02:30",
            "start_date: `2026-03-29T02:30` does not exist in Europe/Berlin: the clocks skip it; pick a time outside the gap or give an offset",
        ),
        (
            "schedule: \"@daily\"\nstart_date: 2024-02-01\nend_date: 2024-01-01",
            "end_date: end_date 2024-01-01T00:00:00Z is before start_date 2024-02-01T00:00:00Z",
        ),
        (
            "schedule: {events: x}\nstart_date: 2024-01-01",
            "start_date: start_date applies only to `cron` and `every` schedules; this DAG is scheduled by events",
        ),
        (
            "schedule: {assets: x}\nend_date: 2024-01-01",
            "end_date: end_date applies only to `cron` and `every` schedules; this DAG is scheduled by assets",
        ),
        (
            "catchup: true",
            "catchup: catchup applies only to `cron` and `every` schedules; this DAG has no schedule",
        ),
        (
            "max_active_runs: 0",
            "max_active_runs: max_active_runs is 0; it must be from 1 to 10000",
        ),
        (
            "max_active_runs: 10001",
            "max_active_runs: max_active_runs is 10001; it must be from 1 to 10000",
        ),
        (
            "sla: 0s",
            "sla: sla must be longer than zero; leave it out for no SLA",
        ),
        ("tz: UTC", "tz: unknown field; did you mean `timezone`?"),
    ];
    for (fields, expected) in cases {
        let text = format!("id: x\n{fields}\n{ONE_TASK}");
        assert_eq!(only_violation(&text), expected, "{fields}");
    }
}

#[test]
fn every_scheduling_problem_is_reported_at_once() {
    let found = violations(&format!(
        "id: x\nschedule: \"0 25 * * *\"\ntimezone: Mars/Olympus\nstart_date: yesterday\nmax_active_runs: 0\n{ONE_TASK}"
    ));
    let fields: Vec<&str> = found
        .iter()
        .map(|violation| violation.field.as_str())
        .collect();
    assert_eq!(
        fields,
        ["timezone", "max_active_runs", "schedule"],
        "{found:?}"
    );
}

#[test]
fn params_are_declared_and_checked() {
    let dag = valid(&format!(
        r#"
id: x
params:
  limit: {{type: integer, default: 100, minimum: 1, maximum: 10000, description: "rows per batch"}}
  mode: {{type: string, enum: [full, incremental], default: incremental}}
  day: {{type: string}}
  tags: [a, b]
{ONE_TASK}"#
    ));
    assert_eq!(
        dag.params.names().collect::<Vec<_>>(),
        ["day", "limit", "mode", "tags"]
    );
    let given = json!({"day": "2024-01-01"});
    let resolved = dag.params.resolve(given.as_object().unwrap()).unwrap();
    assert_eq!(
        serde_json::Value::Object(resolved),
        json!({"day": "2024-01-01", "limit": 100, "mode": "incremental", "tags": ["a", "b"]})
    );
    let errors = dag
        .params
        .resolve(json!({"limit": 100001}).as_object().unwrap())
        .unwrap_err();
    assert_eq!(
        errors,
        [
            FieldViolation::new("day", "required; the DAG declares it without a default"),
            FieldViolation::new("limit", "100001 is above the maximum 10000"),
        ]
    );

    let cases = [
        (
            "params: {limit: {type: integer, default: 0, minimum: 1}}",
            "params.limit.default: 0 is below the minimum 1",
        ),
        (
            "params: {limit: {type: integer, defualt: 3}}",
            "params.limit.defualt: unknown field; did you mean `default`?",
        ),
        (
            "params: {limit: {type: int}}",
            "params.limit.type: unknown variant `int`, expected one of `string`, `integer`, `number`, `boolean`, `array`, `object`",
        ),
        (
            "params: {limit: {default: 3}}",
            "params.limit.type: missing; a param declared as a mapping needs a `type`: string, integer, number, boolean, array or object",
        ),
        (
            "params: {\"-x\": 1}",
            "params.-x: param name `-x` must start with a letter or digit",
        ),
        (
            "params: {mode: {type: string, enum: [a, b], default: c}}",
            "params.mode.default: \"c\" is not one of the allowed values: \"a\", \"b\"",
        ),
    ];
    for (fields, expected) in cases {
        let text = format!("id: x\n{fields}\n{ONE_TASK}");
        assert_eq!(only_violation(&text), expected, "{fields}");
    }
}

fn sensor(task: &ResolvedTask) -> &SensorTask {
    match &task.kind {
        TaskKind::Sensor(sensor) => sensor,
        other => panic!("task {} is a {} task", task.id, other.name()),
    }
}

#[test]
fn sensors_resolve_with_their_defaults() {
    let dag = valid(
        r#"
id: x
tasks:
  - id: file
    kind: sensor
    sensor: {file: "/data/{{ ds }}/_SUCCESS"}
  - id: http
    kind: sensor
    sensor:
      http: {url: "https://api.example.com/ready", method: head, status: [200, 204], request_timeout: 3s}
      poke_interval: 1s
      timeout: 1h
      soft_fail: true
      mode: reschedule
  - id: other
    kind: sensor
    sensor: {external_task: {dag: upstream-dag, task: load, delta: 1d}}
  - id: whole-run
    kind: sensor
    sensor: {external_task: {dag: upstream-dag}}
  - id: morning
    kind: sensor
    sensor: {time: "09:30"}
  - id: later
    kind: sensor
    sensor: {delta: 1h}
"#,
    );
    let file = sensor(&dag.tasks[0]);
    assert_eq!(
        *file,
        SensorTask {
            condition: SensorCondition::File {
                path: "/data/{{ ds }}/_SUCCESS".to_string()
            },
            poke_interval: DEFAULT_POKE_INTERVAL,
            timeout: DEFAULT_SENSOR_TIMEOUT,
            soft_fail: false,
            mode: SensorMode::Poke,
        }
    );
    assert!(dag.tasks[0].templated);
    assert!(file.condition.runs_on_worker());
    let http = sensor(&dag.tasks[1]);
    assert_eq!(
        http.condition,
        SensorCondition::Http {
            url: "https://api.example.com/ready".to_string(),
            method: "HEAD".to_string(),
            statuses: vec![200, 204],
            request_timeout: Duration::from_secs(3),
        }
    );
    assert_eq!(http.poke_interval, Duration::from_secs(1));
    assert_eq!(http.timeout, Duration::from_secs(3_600));
    assert!(http.soft_fail);
    assert_eq!(http.mode, SensorMode::Reschedule);
    assert!(http.condition.runs_on_worker());
    assert!(!dag.tasks[1].templated);
    assert_eq!(
        sensor(&dag.tasks[2]).condition,
        SensorCondition::ExternalTask {
            dag_id: DagId::new("upstream-dag").unwrap(),
            task_id: Some(TaskId::new("load").unwrap()),
            delta: Duration::from_secs(86_400),
        }
    );
    assert_eq!(
        sensor(&dag.tasks[3]).condition,
        SensorCondition::ExternalTask {
            dag_id: DagId::new("upstream-dag").unwrap(),
            task_id: None,
            delta: Duration::ZERO,
        }
    );
    let morning = &sensor(&dag.tasks[4]).condition;
    assert_eq!(
        *morning,
        SensorCondition::Time {
            at: chrono::NaiveTime::from_hms_opt(9, 30, 0).unwrap()
        }
    );
    assert!(!morning.runs_on_worker());
    assert_eq!(morning.name(), "time");
    assert_eq!(
        sensor(&dag.tasks[5]).condition,
        SensorCondition::Delta {
            after: Duration::from_secs(3_600)
        }
    );
    assert_eq!(dag.tasks[5].kind.name(), "sensor");
    let defaults =
        valid("id: x\ntasks:\n  - {id: h, kind: sensor, sensor: {http: {url: \"http://x\"}}}\n");
    assert_eq!(
        sensor(&defaults.tasks[0]).condition,
        SensorCondition::Http {
            url: "http://x".to_string(),
            method: "GET".to_string(),
            statuses: vec![200],
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    );
}

#[test]
fn sensor_problems_name_their_field() {
    let cases = [
        (
            "{id: s, kind: sensor}",
            "tasks[0].sensor: missing; a sensor task needs a `sensor` with one condition: `file`, `http`, `external_task`, `time` or `delta`",
        ),
        (
            "{id: s, command: \"true\", sensor: {file: x}}",
            "tasks[0].sensor: only sensor tasks take `sensor` (this one is `kind: command`); add `kind: sensor`",
        ),
        (
            "{id: s, kind: sensor, sensor: {file: x}, command: \"true\"}",
            "tasks[0].command: a sensor task waits for its condition; remove `command` or drop `kind: sensor`",
        ),
        (
            "{id: s, kind: sensor, sensor: {file: x}, env: {A: b}}",
            "tasks[0].env: only command tasks take `env`",
        ),
        (
            "{id: s, kind: sensor, sensor: {file: x}, handler: h}",
            "tasks[0].handler: only custom tasks take `handler` (this one is `kind: sensor`); add `kind: custom`",
        ),
        (
            "{id: s, kind: sensor, sensor: {poke_interval: 1m}}",
            "tasks[0].sensor: a sensor needs one condition: `file`, `http`, `external_task`, `time` or `delta`",
        ),
        (
            "{id: s, kind: sensor, sensor: {file: x, time: \"09:00\", delta: 1h}}",
            "tasks[0].sensor: a sensor takes one condition; this one sets `file` and `delta`",
        ),
        (
            "{id: s, kind: sensor, sensor: {file: \" \"}}",
            "tasks[0].sensor.file: the path must not be empty",
        ),
        (
            "{id: s, kind: sensor, sensor: {http: {method: GET}}}",
            "tasks[0].sensor.http.url: missing; an http sensor needs a `url`",
        ),
        (
            "{id: s, kind: sensor, sensor: {http: {url: \"ftp://x/y\"}}}",
            "tasks[0].sensor.http.url: the URL must start with http:// or https://; `ftp://x/y` does not",
        ),
        (
            "{id: s, kind: sensor, sensor: {http: {url: \"api/{{ ds }}\"}}}",
            "tasks[0].sensor.http.url: the URL must start with http:// or https://; `api/{{ ds }}` does not",
        ),
        (
            "{id: s, kind: sensor, sensor: {http: {url: \"http://[x\"}}}",
            "tasks[0].sensor.http.url: `http://[x` is not a URL (invalid IPv6 address)",
        ),
        (
            "{id: s, kind: sensor, sensor: {http: {url: \"http://x\", method: POST}}}",
            "tasks[0].sensor.http.method: method `POST` is not supported; use GET or HEAD",
        ),
        (
            "{id: s, kind: sensor, sensor: {http: {url: \"http://x\", status: [200, 999]}}}",
            "tasks[0].sensor.http.status[1]: 999 is not an HTTP status (100 to 599)",
        ),
        (
            "{id: s, kind: sensor, sensor: {http: {url: \"http://x\", status: []}}}",
            "tasks[0].sensor.http.status: list at least one status, or leave `status` out for 200",
        ),
        (
            "{id: s, kind: sensor, sensor: {http: {url: \"http://x\", request_timeout: 0s}}}",
            "tasks[0].sensor.http.request_timeout: request_timeout must be longer than zero",
        ),
        (
            "{id: s, kind: sensor, sensor: {external_task: {task: t}}}",
            "tasks[0].sensor.external_task.dag: missing; an external_task sensor names the `dag` whose run it waits for",
        ),
        (
            "{id: s, kind: sensor, sensor: {external_task: {dag: \"a b\"}}}",
            "tasks[0].sensor.external_task.dag: dag id `a b` contains ' '; only letters, digits, `_`, `.` and `-` are allowed",
        ),
        (
            "{id: s, kind: sensor, sensor: {time: \"25:00\"}}",
            "tasks[0].sensor.time: `25:00` is not a time of day; write `HH:MM` or `HH:MM:SS` (24-hour, in the DAG's time zone)",
        ),
        (
            "{id: s, kind: sensor, sensor: {time: \"9:30\"}}",
            "tasks[0].sensor.time: `9:30` is not a time of day; write `HH:MM` or `HH:MM:SS` (24-hour, in the DAG's time zone)",
        ),
        (
            "{id: s, kind: sensor, sensor: {delta: 1h, poke_interval: 10ms}}",
            "tasks[0].sensor.poke_interval: poke_interval is 10ms; it must be at least 100ms",
        ),
        (
            "{id: s, kind: sensor, sensor: {delta: 1h, timeout: 0}}",
            "tasks[0].sensor.timeout: timeout must be longer than zero",
        ),
        (
            "{id: s, kind: sensor, sensor: {delta: 1h, mode: reschedule, poke_interval: 1s}}",
            "tasks[0].sensor.mode: reschedule mode would poke up to 604800 times (timeout 7days / poke_interval 1s); the limit is 10000: raise poke_interval or shorten timeout",
        ),
        (
            "{id: s, kind: sensor, sensor: {delta: 1h, mode: wait}}",
            "tasks[0].sensor.mode: unknown variant `wait`, expected `poke` or `reschedule`",
        ),
        (
            "{id: s, kind: sensor, sensor: {fiel: x}}",
            "tasks[0].sensor.fiel: unknown field; did you mean `file`?",
        ),
        (
            "{id: s, kind: sensor, poke_interval: 5m, sensor: {file: x}}",
            "tasks[0].poke_interval: unknown field; `poke_interval` is set under `sensor`",
        ),
    ];
    for (task, expected) in cases {
        let text = format!("id: x\ntasks:\n  - {task}\n");
        assert_eq!(only_violation(&text), expected, "{task}");
    }
}

#[test]
fn outputs_and_slas() {
    let dag = valid(
        r#"
id: x
sla: 2h
tasks:
  - {id: a, command: "true", outputs: ["s3://bucket/orders", warehouse.sales, "s3://bucket/orders"], sla: 30m}
  - {id: b, kind: noop, outputs: warehouse.daily}
"#,
    );
    let outputs: Vec<&str> = dag.tasks[0].outputs.iter().map(AssetUri::as_str).collect();
    assert_eq!(outputs, ["s3://bucket/orders", "warehouse.sales"]);
    assert_eq!(dag.tasks[0].sla, Some(Duration::from_secs(1_800)));
    assert_eq!(dag.tasks[1].outputs[0].as_str(), "warehouse.daily");
    assert_eq!(dag.tasks[1].sla, None);
    assert_eq!(dag.sla, Some(Duration::from_secs(7_200)));

    let found = violations(
        "id: x\ntasks:\n  - {id: a, command: \"true\", outputs: [ok, \"\", \"a\\tb\"], sla: 0}\n",
    );
    assert_eq!(
        found,
        [
            FieldViolation::new("tasks[0].outputs[1]", "asset URI must not be empty"),
            FieldViolation::new(
                "tasks[0].outputs[2]",
                "asset URI `a\\tb` contains '\\t'; whitespace and control characters are not allowed"
            ),
            FieldViolation::new(
                "tasks[0].sla",
                "sla must be longer than zero; leave it out for no SLA"
            ),
        ]
    );
}

#[test]
fn templated_fields_are_flagged() {
    let dag = valid(
        r#"
id: x
default_args: {env: {DAY: "{{ ds }}"}}
tasks:
  - {id: plain, command: [echo, hi], env: {DAY: fixed}}
  - {id: by-default, command: [echo, hi]}
  - {id: argument, command: [echo, "{{ ds }}"], env: {DAY: fixed}}
  - {id: shell, command: "echo {% if attempt > 1 %}again{% endif %}", env: {DAY: fixed}}
  - {id: directory, command: [ls], cwd: "/data/{{ ds_nodash }}", env: {DAY: fixed}}
  - {id: nothing, kind: noop}
  - {id: braces, command: [echo, "{not a template} {# comment #}"], env: {DAY: fixed}}
"#,
    );
    let flags: Vec<(&str, bool)> = dag
        .tasks
        .iter()
        .map(|task| (task.id.as_str(), task.templated))
        .collect();
    assert_eq!(
        flags,
        [
            ("plain", false),
            ("by-default", true),
            ("argument", true),
            ("shell", true),
            ("directory", true),
            ("nothing", false),
            ("braces", false),
        ]
    );
}

#[test]
fn templates_are_checked_at_registration() {
    let text = r#"
id: x
params: {limit: {type: integer, default: 10}}
default_args: {env: {ROWS: "{{ tasks.extract.output.rows }}"}}
tasks:
  - id: extract
    command: [extract, "{{ ds }}"]
    env: {ROWS: "0"}
  - id: transform
    depends_on: extract
    command: [transform, "{{ params.limit }}", "{{ tasks['extract'].output }}"]
  - id: load
    depends_on: transform
    command: [load, "{{ ds ", "{{ tasks.extract.output.rows }}"]
  - id: report
    depends_on: extract
    command: [report, "{{ dss }}", "{{ params.limt }}", "{{ tasks.load.output }}", "{{ tasks.lod.output }}"]
    env: {A: "{{ run_ids }}", ROWS: "1"}
    cwd: "{% for %}"
  - id: side
    command: [side]
  - id: wait
    kind: sensor
    depends_on: extract
    sensor: {file: "/data/{{ tasks.side.output.path }}"}
"#;
    let found = violations(text);
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 9, "{}", lines.join("\n"));
    assert!(
        lines[0].starts_with("tasks[2].command[1]: invalid template: "),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1..],
        [
            "tasks[3].command[1]: the template reads `dss`, which is not a template variable; did you mean `ds`?",
            "tasks[3].command[2]: the template reads `params.limt`, which the DAG does not declare; did you mean `limit`?",
            "tasks[3].command[3]: the template reads the output of `load`, which is not upstream of `report`",
            "tasks[3].command[4]: the template reads the output of `lod`, which is not a task of this DAG; did you mean `load`?",
            "tasks[3].env.A: the template reads `run_ids`, which is not a template variable; did you mean `run_id`?",
            "tasks[3].cwd: invalid template: unexpected end of block, expected in (line 1)",
            "default_args.env.ROWS: the template reads the output of `extract`, which is not upstream of `side` (which inherits this value)",
            "tasks[5].sensor.file: the template reads the output of `side`, which is not upstream of `wait`",
        ]
    );
}

#[test]
fn undeclared_params_are_only_checked_when_the_dag_declares_some() {
    // Without declarations a run may carry any params.
    let dag = valid("id: x\ntasks:\n  - {id: a, command: [echo, \"{{ params.anything }}\"]}\n");
    assert!(dag.tasks[0].templated);
    let error = only_violation("id: x\ntasks:\n  - {id: a, command: [echo, \"{{ nope }}\"]}\n");
    assert_eq!(
        error,
        "tasks[0].command[1]: the template reads `nope`, which is not a template variable; the variables are ds, ds_nodash, ts, ts_nodash, logical_date, data_interval_start, data_interval_end, run_id, dag_id, task_id, attempt, params, tasks"
    );
    let error = only_violation(
        "id: x\nparams: {a: 1, b: 2}\ntasks:\n  - {id: a, command: [echo, \"{{ params.zzz }}\"]}\n",
    );
    assert_eq!(
        error,
        "tasks[0].command[1]: the template reads `params.zzz`, which the DAG does not declare; it declares a, b"
    );
}

#[test]
fn transitive_upstream_outputs_may_be_read() {
    let dag = valid(
        r#"
id: x
tasks:
  - {id: extract-orders, command: ["true"]}
  - {id: b, command: ["true"], depends_on: extract-orders}
  - {id: c, command: ["true"], depends_on: b}
  - id: d
    depends_on: c
    command: [echo, "{{ tasks['extract-orders'].output.rows }}", "{{ tasks.c.output }}"]
    env: {ANY: "{% for t in tasks %}{{ t }}{% endfor %}"}
"#,
    );
    assert!(dag.tasks[3].templated);
}

#[test]
fn a_large_templated_fan_out_validates_quickly() {
    const TASKS: usize = 20_000;
    let mut text = String::from(r#"{"id": "wide", "tasks": [{"id": "root", "command": ["true"]}"#);
    for position in 1..TASKS {
        write!(
            text,
            r#",{{"id": "task-{position}", "command": ["echo", "{{{{ ds }}}}", "{{{{ tasks.root.output.n }}}}"], "depends_on": ["root"]}}"#
        )
        .unwrap();
    }
    // One reader at the end of a long chain: its check walks the chain once.
    write!(
        text,
        r#",{{"id": "chain-0", "command": ["true"], "depends_on": ["root"]}}"#
    )
    .unwrap();
    for position in 1..TASKS {
        write!(
            text,
            r#",{{"id": "chain-{position}", "command": ["echo", "{{{{ tasks.root.output }}}}"], "depends_on": ["chain-{}"]}}"#,
            position - 1
        )
        .unwrap();
    }
    text.push_str("]}");
    let started = std::time::Instant::now();
    let dag = parse_dag(&text, SpecFormat::Json, &SpecLimits::default()).expect("valid");
    let elapsed = started.elapsed();
    eprintln!(
        "validated {} templated tasks in {elapsed:?}",
        dag.tasks.len()
    );
    assert_eq!(dag.tasks.len(), 2 * TASKS);
    assert!(dag.tasks[1].templated && dag.tasks[2 * TASKS - 1].templated);
}
const REFERENCE: &str = include_str!("../../../docs/dag-reference.md");

/// The fenced block that follows `<!-- example: NAME -->` in the reference.
fn reference_block(name: &str) -> &'static str {
    let marker = format!("<!-- example: {name} -->\n");
    let start = REFERENCE
        .find(&marker)
        .expect("marker in docs/dag-reference.md")
        + marker.len();
    let fenced = &REFERENCE[start..];
    let body = &fenced[fenced.find('\n').expect("fence line") + 1..];
    &body[..body.find("```").expect("closing fence")]
}

#[test]
fn the_reference_quotes_the_cron_errors_exactly() {
    let mut lines = String::new();
    for expression in ["0 0 3 * * *", "61 * * * *", "0 0 L * *", "0 0 30 2 *"] {
        let text = format!("id: x\nschedule: \"{expression}\"\n{ONE_TASK}");
        writeln!(lines, "{}", only_violation(&text)).unwrap();
    }
    assert_eq!(lines, reference_block("cron errors"));
}

#[test]
fn the_reference_quotes_the_template_errors_exactly() {
    let dag = valid(
        "id: x\nparams: {limit: {type: integer, default: 1}}\ntasks:\n  - {id: extract-orders, command: [\"true\"]}\n  - {id: load, command: [\"true\"]}\n",
    );
    let renderer = crate::template::Renderer::new();
    let outputs = std::collections::BTreeMap::from([(
        "extract-orders".to_string(),
        r#"{"files": 3}"#.to_string(),
    )]);
    let no_params = serde_json::Map::new();
    let context = crate::template::TemplateContext {
        dag_id: dag.dag_id.as_str(),
        run_id: "0190f1a2-7c3b-7d4e-8f00-0123456789ab",
        task_id: "load",
        attempt: 1,
        logical_date: utc("2024-05-01T00:00:00Z"),
        data_interval_start: utc("2024-05-01T00:00:00Z"),
        data_interval_end: utc("2024-05-02T00:00:00Z"),
        timezone: dag.timezone,
        params: &no_params,
        task_outputs: &outputs,
        item: None,
        map_index: None,
    };
    let mut lines = String::new();
    for (field, source) in [
        ("command[1]", "{{ params.limit }}"),
        ("env.ROWS", "{{ tasks['extract-orders'].output.rows }}"),
        ("command[2]", "{{ tasks.load.output }}"),
    ] {
        let error = renderer.render(field, source, &context).unwrap_err();
        writeln!(lines, "{error}").unwrap();
    }
    assert_eq!(lines, reference_block("template errors"));
}
