//! How results are shown: tables (comfy-table) for people and JSON for
//! scripts (`-o json`). JSON uses state names and RFC 3339 times, the same
//! words the tables use.

use std::collections::HashMap;
use std::time::Duration;

use baton_common::pb::api::{
    Attempt, AttemptOutcome, Dag, EventCause, Run, RunEvent, RunState, RunTrigger, SlaMiss,
    TaskInstance, TaskState, TaskSummary,
};
use baton_common::states::{
    event_cause_name, outcome_name, run_state_name, task_state_is_final, task_state_name,
};
use baton_common::time::{
    format_duration, format_micros, micros_to_datetime, timestamp_opt_to_micros,
};
use chrono::SecondsFormat;
use chrono_tz::Tz;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde_json::{Value, json};

pub fn table(headers: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers);
    table
}

/// An optional timestamp as RFC 3339, or `-`.
pub fn time_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    format_micros(timestamp_opt_to_micros(timestamp))
}

/// An optional timestamp as RFC 3339 in a time zone (`Z` in UTC, else the
/// zone's offset at that instant), or `-`: how a DAG's schedule times read.
pub fn zoned_time_text(timestamp: Option<&prost_types::Timestamp>, zone: Tz) -> String {
    let micros = timestamp_opt_to_micros(timestamp);
    if micros == 0 {
        return "-".into();
    }
    micros_to_datetime(micros)
        .with_timezone(&zone)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An optional timestamp as RFC 3339 in UTC, or null.
pub fn time_json(timestamp: Option<&prost_types::Timestamp>) -> Value {
    let micros = timestamp_opt_to_micros(timestamp);
    if micros == 0 {
        Value::Null
    } else {
        Value::String(format_micros(micros))
    }
}

/// `end - start`, or `now - start` while running; `-` when not started.
pub fn elapsed(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> String {
    let start = timestamp_opt_to_micros(start);
    if start == 0 {
        return "-".into();
    }
    let end = match timestamp_opt_to_micros(end) {
        0 => baton_common::time::now_micros(),
        end => end,
    };
    format_duration(Duration::from_micros(
        end.saturating_sub(start).max(0) as u64
    ))
}

pub fn run_state(run: &Run) -> RunState {
    RunState::try_from(run.state).unwrap_or(RunState::Unspecified)
}

pub fn task_state(task: &TaskInstance) -> TaskState {
    TaskState::try_from(task.state).unwrap_or(TaskState::Unspecified)
}

/// What created a run, as users read and type it.
pub fn trigger_name(trigger: RunTrigger) -> &'static str {
    match trigger {
        RunTrigger::Unspecified => "-",
        RunTrigger::Manual => "manual",
        RunTrigger::Scheduled => "scheduled",
        RunTrigger::Backfill => "backfill",
        RunTrigger::Event => "event",
        RunTrigger::Asset => "asset",
    }
}

pub fn run_trigger(run: &Run) -> RunTrigger {
    RunTrigger::try_from(run.trigger).unwrap_or(RunTrigger::Unspecified)
}

/// Empty text as null.
pub fn text_or_null(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.to_string())
    }
}

/// JSON text as its value (a string when it does not parse).
pub fn params(json_text: &str) -> Value {
    serde_json::from_str(json_text).unwrap_or(Value::String(json_text.to_string()))
}

pub fn dag_json(dag: &Dag) -> Value {
    json!({
        "dag_id": dag.dag_id,
        "latest_version": dag.latest_version,
        "description": dag.description,
        "schedule": dag.schedule,
        "paused": dag.paused,
        "task_count": dag.task_count,
        "timezone": if dag.timezone.is_empty() { "UTC" } else { dag.timezone.as_str() },
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "next_data_interval_start": time_json(dag.next_data_interval_start.as_ref()),
        "next_data_interval_end": time_json(dag.next_data_interval_end.as_ref()),
        "created_at": time_json(dag.created_at.as_ref()),
        "updated_at": time_json(dag.updated_at.as_ref()),
    })
}

pub fn task_summary_json(task: &TaskSummary) -> Value {
    json!({
        "task_id": task.task_id,
        "kind": task.kind,
        "depends_on": task.depends_on,
        "queue": task.queue,
        "priority": task.priority,
        "retries": task.retries,
        "timeout": task.timeout.as_ref().map(|d| humantime::format_duration(baton_common::time::duration_from_proto(d)).to_string()),
        "outputs": task.outputs,
        "trigger_rule": if task.trigger_rule.is_empty() { DEFAULT_TRIGGER_RULE } else { task.trigger_rule.as_str() },
        "branch": task.branch,
        "run_if": text_or_null(&task.run_if),
        "map_over": text_or_null(&task.map_over),
    })
}

/// The trigger rule of tasks that do not set one.
const DEFAULT_TRIGGER_RULE: &str = "all_success";

/// What `dag show` says about when a task runs: its trigger rule unless
/// `all_success`, `branch`, `if RUN_IF`, `map over MAP_OVER`; empty for a
/// task with none of those.
pub fn flow_text(task: &TaskSummary) -> String {
    let mut parts = Vec::new();
    if !task.trigger_rule.is_empty() && task.trigger_rule != DEFAULT_TRIGGER_RULE {
        parts.push(task.trigger_rule.clone());
    }
    if task.branch {
        parts.push("branch".to_string());
    }
    if !task.run_if.is_empty() {
        parts.push(format!("if {}", task.run_if));
    }
    if !task.map_over.is_empty() {
        parts.push(format!("map over {}", task.map_over));
    }
    parts.join("; ")
}

pub fn run_json(run: &Run) -> Value {
    json!({
        "run_id": run.run_id,
        "dag_id": run.dag_id,
        "dag_version": run.dag_version,
        "state": run_state_name(run_state(run)),
        "params": params(&run.params_json),
        "logical_date": time_json(run.logical_date.as_ref()),
        "idempotency_key": if run.idempotency_key.is_empty() { Value::Null } else { Value::String(run.idempotency_key.clone()) },
        "created_at": time_json(run.created_at.as_ref()),
        "started_at": time_json(run.started_at.as_ref()),
        "ended_at": time_json(run.ended_at.as_ref()),
        "task_counts": run.task_counts,
        "task_total": run.task_total,
        "reason": if run.reason.is_empty() { Value::Null } else { Value::String(run.reason.clone()) },
        "data_interval_start": time_json(run.data_interval_start.as_ref()),
        "data_interval_end": time_json(run.data_interval_end.as_ref()),
        "trigger": match run_trigger(run) {
            RunTrigger::Unspecified => Value::Null,
            trigger => Value::String(trigger_name(trigger).to_string()),
        },
        "trigger_detail": text_or_null(&run.trigger_detail),
        "backfill_id": text_or_null(&run.backfill_id),
        "sla_misses": run.sla_misses.iter().map(sla_miss_json).collect::<Vec<_>>(),
    })
}

pub fn sla_miss_json(miss: &SlaMiss) -> Value {
    json!({
        "task_id": text_or_null(&miss.task_id),
        "deadline": time_json(miss.deadline.as_ref()),
        "detected_at": time_json(miss.detected_at.as_ref()),
    })
}

pub fn task_json(task: &TaskInstance) -> Value {
    json!({
        "task_id": task.task_id,
        "state": task_state_name(task_state(task)),
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "attempt_id": if task.attempt_id.is_empty() { Value::Null } else { Value::String(task.attempt_id.clone()) },
        "worker_id": if task.worker_id.is_empty() { Value::Null } else { Value::String(task.worker_id.clone()) },
        "started_at": time_json(task.started_at.as_ref()),
        "ended_at": time_json(task.ended_at.as_ref()),
        "exit_code": task.exit_code,
        "outcome": outcome_name(AttemptOutcome::try_from(task.outcome).unwrap_or(AttemptOutcome::Unspecified)),
        "error": if task.error.is_empty() { Value::Null } else { Value::String(task.error.clone()) },
        "next_attempt_at": time_json(task.next_attempt_at.as_ref()),
        "output": if task.output_json.is_empty() { Value::Null } else { params(&task.output_json) },
        "sensor_deadline": time_json(task.sensor_deadline.as_ref()),
        "map_index": task.map_index,
        "map_length": task.map_length,
    })
}

pub fn attempt_json(attempt: &Attempt) -> Value {
    json!({
        "attempt": attempt.attempt,
        "attempt_id": attempt.attempt_id,
        "worker_id": attempt.worker_id,
        "leased_at": time_json(attempt.leased_at.as_ref()),
        "started_at": time_json(attempt.started_at.as_ref()),
        "ended_at": time_json(attempt.ended_at.as_ref()),
        "outcome": outcome_name(AttemptOutcome::try_from(attempt.outcome).unwrap_or(AttemptOutcome::Unspecified)),
        "exit_code": attempt.exit_code,
        "error": if attempt.error.is_empty() { Value::Null } else { Value::String(attempt.error.clone()) },
        "log_bytes": attempt.log_bytes,
    })
}

/// One history event: what changed (`run` or the task), from and to, why
/// and by whom.
pub fn run_event_json(event: &RunEvent) -> Value {
    let (from, to) = event_states(event);
    json!({
        "at": time_json(event.at.as_ref()),
        "task_id": text_or_null(&event.task_id),
        "attempt": event.attempt,
        "from": from,
        "to": to,
        "cause": event_cause(event),
        "actor": event.actor,
        "detail": text_or_null(&event.detail),
    })
}

/// An event's cause as a name.
pub fn event_cause(event: &RunEvent) -> &'static str {
    event_cause_name(EventCause::try_from(event.cause).unwrap_or(EventCause::Unspecified))
}

/// An event's states as names: the task's, or the run's; `-` where none
/// (the run's creation has no `from`, an SLA miss changes nothing).
pub fn event_states(event: &RunEvent) -> (&'static str, &'static str) {
    let task = |state: i32| match TaskState::try_from(state) {
        Ok(state) if state != TaskState::Unspecified => task_state_name(state),
        _ => "-",
    };
    let run = |state: i32| match RunState::try_from(state) {
        Ok(state) if state != RunState::Unspecified => run_state_name(state),
        _ => "-",
    };
    if event.task_from != 0 || event.task_to != 0 {
        (task(event.task_from), task(event.task_to))
    } else {
        (run(event.run_from), run(event.run_to))
    }
}

/// A timestamp with milliseconds, which order a run's events.
pub fn event_time_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    let micros = timestamp_opt_to_micros(timestamp);
    if micros == 0 {
        return "-".into();
    }
    micros_to_datetime(micros).to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn print_json(value: &Value) {
    print_line(serde_json::to_string_pretty(value).unwrap_or_default());
}

/// Writes a line of the command's output. When the reader went away (`baton
/// run list | head`), the command ends quietly instead of failing.
pub fn print_line(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write output: {error}");
        std::process::exit(1);
    }
}

/// Tasks of a run in a final state.
pub fn final_count(run: &Run) -> u32 {
    [
        "success",
        "failed",
        "upstream_failed",
        "skipped",
        "cancelled",
    ]
    .iter()
    .filter_map(|state| run.task_counts.get(*state))
    .sum()
}

/// A one-line summary of a run: `run … of etl v2: success (5/5 tasks done, 1.2s)`.
pub fn run_summary(run: &Run) -> String {
    let done = final_count(run);
    let mut line = format!(
        "run {} of {} v{}: {} ({done}/{} tasks done, {})",
        run.run_id,
        run.dag_id,
        run.dag_version,
        run_state_name(run_state(run)),
        run.task_total,
        elapsed(
            run.started_at.as_ref().or(run.created_at.as_ref()),
            run.ended_at.as_ref()
        )
    );
    if !run.reason.is_empty() {
        line.push_str(&format!(": {}", run.reason));
    }
    line
}

/// Task states in the order counts are listed: finished first.
const STATE_ORDER: [&str; 11] = [
    "success",
    "failed",
    "upstream_failed",
    "cancelled",
    "skipped",
    "running",
    "leased",
    "ready",
    "up_for_retry",
    "up_for_reschedule",
    "pending",
];

/// Counts as `3 success, 1 running, 4 pending`, in life-cycle order.
pub fn counts_line(run: &Run) -> String {
    let parts: Vec<String> = STATE_ORDER
        .iter()
        .filter_map(|state| {
            run.task_counts
                .get(*state)
                .map(|count| format!("{count} {state}"))
        })
        .collect();
    parts.join(", ")
}

pub fn run_row(run: &Run) -> Vec<String> {
    vec![
        run.run_id.clone(),
        run.dag_id.clone(),
        format!("v{}", run.dag_version),
        run_state_name(run_state(run)).to_string(),
        trigger_name(run_trigger(run)).to_string(),
        time_text(run.created_at.as_ref()),
        elapsed(run.started_at.as_ref(), run.ended_at.as_ref()),
        counts_line(run),
    ]
}

/// The lines `run show` prints under the summary: the data interval, what
/// triggered the run, and the deadlines it missed.
pub fn run_detail_lines(run: &Run) -> Vec<String> {
    let mut lines = Vec::new();
    let start = timestamp_opt_to_micros(run.data_interval_start.as_ref());
    let end = timestamp_opt_to_micros(run.data_interval_end.as_ref());
    if start != 0 && start != end {
        lines.push(format!(
            "data interval: {} to {}",
            time_text(run.data_interval_start.as_ref()),
            time_text(run.data_interval_end.as_ref())
        ));
    } else {
        lines.push(format!(
            "logical date: {}",
            time_text(run.logical_date.as_ref())
        ));
    }
    let trigger = run_trigger(run);
    if trigger != RunTrigger::Unspecified {
        let mut line = format!("trigger: {}", trigger_name(trigger));
        match trigger {
            RunTrigger::Backfill if !run.backfill_id.is_empty() => {
                line.push_str(&format!(" {}", run.backfill_id));
            }
            RunTrigger::Event => line.push_str(&format!(" {}", run.trigger_detail)),
            RunTrigger::Asset => line.push_str(&format!(" of {}", run.trigger_detail)),
            _ if !run.trigger_detail.is_empty() => {
                line.push_str(&format!(" ({})", run.trigger_detail));
            }
            _ => {}
        }
        lines.push(line);
    }
    for miss in &run.sla_misses {
        lines.push(format!(
            "sla missed by {}: deadline {}, noticed {}",
            if miss.task_id.is_empty() {
                "the run".to_string()
            } else {
                format!("task {}", miss.task_id)
            },
            time_text(miss.deadline.as_ref()),
            time_text(miss.detected_at.as_ref())
        ));
    }
    lines
}

pub fn task_row(task: &TaskInstance) -> Vec<String> {
    let state = task_state(task);
    let mut details = Vec::new();
    match state {
        TaskState::UpForReschedule => details.push(format!(
            "next poke at {}",
            time_text(task.next_attempt_at.as_ref())
        )),
        TaskState::UpForRetry => details.push(format!(
            "retry at {}",
            time_text(task.next_attempt_at.as_ref())
        )),
        _ => {}
    }
    if task.sensor_deadline.is_some() && !task_state_is_final(state) {
        details.push(format!(
            "gives up at {}",
            time_text(task.sensor_deadline.as_ref())
        ));
    }
    if !task.error.is_empty() {
        details.push(task.error.clone());
    } else if let Some(code) = task.exit_code {
        details.push(format!("exit {code}"));
    }
    let detail = details.join("; ");
    vec![
        task.task_id.clone(),
        task_state_name(task_state(task)).to_string(),
        if task.attempt == 0 {
            "-".into()
        } else {
            format!("{}/{}", task.attempt, task.max_attempts)
        },
        time_text(task.started_at.as_ref()),
        elapsed(task.started_at.as_ref(), task.ended_at.as_ref()),
        detail,
    ]
}

/// Mapped instances `run show` lists under their task unless asked for all:
/// at most this many, of those that need a look (failed, retrying).
pub const LISTED_INSTANCES: usize = 20;

/// The rows of `run show`'s task table, and how many mapped instances
/// they leave out.
pub struct TaskListing {
    pub rows: Vec<Vec<String>>,
    pub hidden_instances: usize,
}

/// A run's tasks as `run show` lists them: each task in the order given,
/// then its mapped instances (`task[3]`) by index. A mapped task's row
/// sums up its instances' states. With `all_instances`, every instance has
/// a row; otherwise only the failed and retrying ones, at most
/// [`LISTED_INSTANCES`] per task, so a fan-out of 10,000 stays readable.
pub fn task_listing(tasks: &[TaskInstance], all_instances: bool) -> TaskListing {
    let mut instances: HashMap<&str, Vec<&TaskInstance>> = HashMap::new();
    for task in tasks.iter().filter(|task| task.map_index.is_some()) {
        instances
            .entry(parent_id(&task.task_id))
            .or_default()
            .push(task);
    }
    let mut listing = TaskListing {
        rows: Vec::with_capacity(tasks.len().min(1_024)),
        hidden_instances: 0,
    };
    let add_instances = |listing: &mut TaskListing, mut group: Vec<&TaskInstance>| {
        group.sort_by_key(|instance| instance.map_index);
        let mut listed = 0;
        for instance in group {
            let wanted =
                all_instances || (listed < LISTED_INSTANCES && needs_a_look(task_state(instance)));
            if wanted {
                listed += 1;
                listing.rows.push(task_row(instance));
            } else {
                listing.hidden_instances += 1;
            }
        }
    };
    for task in tasks.iter().filter(|task| task.map_index.is_none()) {
        let mut row = task_row(task);
        let group = instances.remove(task.task_id.as_str()).unwrap_or_default();
        if task.map_length.is_some() || !group.is_empty() {
            let summary = instances_summary(task.map_length, &group);
            row[5] = if row[5].is_empty() {
                summary
            } else {
                format!("{summary}; {}", row[5])
            };
        }
        listing.rows.push(row);
        add_instances(&mut listing, group);
    }
    // Instances whose task was not listed: after the others, in the order
    // their tasks first appear.
    let mut orphans: Vec<(&str, Vec<&TaskInstance>)> = instances.into_iter().collect();
    orphans.sort_by_key(|(parent, _)| {
        tasks
            .iter()
            .position(|task| parent_id(&task.task_id) == *parent)
    });
    for (_, group) in orphans {
        add_instances(&mut listing, group);
    }
    listing
}

/// The task a mapped instance belongs to: `load` for `load[3]`.
fn parent_id(task_id: &str) -> &str {
    task_id.split('[').next().unwrap_or(task_id)
}

/// Failed or retrying: what a user looks at first in a large fan-out.
fn needs_a_look(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Failed | TaskState::UpstreamFailed | TaskState::UpForRetry
    )
}

/// `3 instances: 2 success, 1 failed`; `no instances (empty list)`.
fn instances_summary(map_length: Option<u32>, instances: &[&TaskInstance]) -> String {
    let total = map_length.map_or(instances.len(), |length| length as usize);
    if total == 0 {
        return "no instances (empty list)".to_string();
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for instance in instances {
        *counts
            .entry(task_state_name(task_state(instance)))
            .or_default() += 1;
    }
    let parts: Vec<String> = STATE_ORDER
        .iter()
        .filter_map(|state| counts.get(state).map(|count| format!("{count} {state}")))
        .collect();
    let noun = if total == 1 { "instance" } else { "instances" };
    if parts.is_empty() {
        format!("{total} {noun}")
    } else {
        format!("{total} {noun}: {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(trigger_rule: &str, branch: bool, run_if: &str, map_over: &str) -> TaskSummary {
        TaskSummary {
            task_id: "t".into(),
            trigger_rule: trigger_rule.into(),
            branch,
            run_if: run_if.into(),
            map_over: map_over.into(),
            ..TaskSummary::default()
        }
    }

    #[test]
    fn flow_text_says_what_is_not_the_default() {
        assert_eq!(flow_text(&summary("", false, "", "")), "");
        assert_eq!(flow_text(&summary("all_success", false, "", "")), "");
        assert_eq!(
            flow_text(&summary("one_failed", false, "", "")),
            "one_failed"
        );
        assert_eq!(
            flow_text(&summary(
                "all_done",
                true,
                "params.full",
                "tasks.list.output.files"
            )),
            "all_done; branch; if params.full; map over tasks.list.output.files"
        );
        let json = task_summary_json(&summary("", false, "", "[1, 2]"));
        assert_eq!(json["trigger_rule"], "all_success");
        assert_eq!(json["branch"], false);
        assert_eq!(json["run_if"], Value::Null);
        assert_eq!(json["map_over"], "[1, 2]");
    }

    fn instance(task_id: &str, state: TaskState, map_index: Option<u32>) -> TaskInstance {
        TaskInstance {
            task_id: task_id.into(),
            state: state as i32,
            map_index,
            ..TaskInstance::default()
        }
    }

    fn mapped(task_id: &str, length: u32) -> TaskInstance {
        TaskInstance {
            map_length: Some(length),
            ..instance(task_id, TaskState::Running, None)
        }
    }

    fn ids(listing: &TaskListing) -> Vec<&str> {
        listing.rows.iter().map(|row| row[0].as_str()).collect()
    }

    #[test]
    fn instances_follow_their_task_by_index() {
        let tasks = vec![
            instance("list", TaskState::Success, None),
            instance("per-file[2]", TaskState::Failed, Some(2)),
            mapped("per-file", 4),
            instance("per-file[10]", TaskState::Success, Some(10)),
            instance("per-file[0]", TaskState::Success, Some(0)),
            instance("per-file[1]", TaskState::UpForRetry, Some(1)),
            instance("total", TaskState::Pending, None),
        ];
        let all = task_listing(&tasks, true);
        assert_eq!(
            ids(&all),
            [
                "list",
                "per-file",
                "per-file[0]",
                "per-file[1]",
                "per-file[2]",
                "per-file[10]",
                "total"
            ]
        );
        assert_eq!(all.hidden_instances, 0);
        assert_eq!(
            all.rows[1][5],
            "4 instances: 2 success, 1 failed, 1 up_for_retry"
        );

        let default = task_listing(&tasks, false);
        assert_eq!(
            ids(&default),
            ["list", "per-file", "per-file[1]", "per-file[2]", "total"],
            "failed and retrying instances only"
        );
        assert_eq!(default.hidden_instances, 2);
        assert_eq!(
            default.rows[1][5], all.rows[1][5],
            "the summary counts every instance"
        );
    }

    #[test]
    fn ten_thousand_instances_stay_readable() {
        let mut tasks = vec![mapped("fan", 10_000)];
        for index in 0..10_000u32 {
            let state = if index % 100 == 7 {
                TaskState::Failed
            } else {
                TaskState::Success
            };
            tasks.push(instance(&format!("fan[{index}]"), state, Some(index)));
        }
        let listing = task_listing(&tasks, false);
        assert_eq!(listing.rows.len(), 1 + LISTED_INSTANCES);
        assert_eq!(listing.hidden_instances, 10_000 - LISTED_INSTANCES);
        assert_eq!(
            listing.rows[0][5],
            "10000 instances: 9900 success, 100 failed"
        );
        assert_eq!(listing.rows[1][0], "fan[7]");
        assert_eq!(task_listing(&tasks, true).rows.len(), 10_001);
    }

    #[test]
    fn mapped_tasks_without_instances_and_instances_without_their_task() {
        let tasks = vec![
            mapped("empty", 0),
            mapped("waiting", 3),
            instance("gone[1]", TaskState::Failed, Some(1)),
            instance("gone[0]", TaskState::Success, Some(0)),
        ];
        let listing = task_listing(&tasks, true);
        assert_eq!(ids(&listing), ["empty", "waiting", "gone[0]", "gone[1]"]);
        assert_eq!(listing.rows[0][5], "no instances (empty list)");
        assert_eq!(listing.rows[1][5], "3 instances");
        let one = task_listing(&[mapped("one", 1)], false);
        assert_eq!(one.rows[0][5], "1 instance");
    }

    #[test]
    fn task_json_has_the_map_fields() {
        let json = task_json(&instance("fan[3]", TaskState::Success, Some(3)));
        assert_eq!(json["map_index"], 3);
        assert_eq!(json["map_length"], Value::Null);
        let json = task_json(&mapped("fan", 5));
        assert_eq!(json["map_index"], Value::Null);
        assert_eq!(json["map_length"], 5);
    }
}
