//! Dependency semantics of a task: its trigger rule, whether it is a
//! branch, its `run_if` condition and its `map_over` expansion; the checks
//! of those fields and the types they resolve to.
//!
//! The expressions themselves (syntax, the names they read, outputs of
//! upstream tasks only) are checked with the templated fields, in
//! `templates`; what is checked here is how the fields combine with the
//! task's kind and with the graph: a branch needs a downstream task to
//! choose, a mapped task cannot be a branch nor a sensor the controller
//! evaluates, `max_map_length` needs `map_over`.
//!
//! What the controller needs at run time lives here too, so that every
//! reader agrees: [`branch_choice`] reads a branch's output. A mapped
//! instance's name (`load[3]`) is a [`crate::ids::TaskId`].

use std::fmt;

use super::model::{SensorSpec, TaskKindSpec, TaskSpec};
use super::validate::{Parsed, Place, Report, Unreadable, did_you_mean};

/// Instances a mapped task may expand to unless it says otherwise.
pub const DEFAULT_MAX_MAP_LENGTH: u32 = 10_000;

/// Largest `max_map_length`.
pub const MAX_MAP_LENGTH_LIMIT: u32 = 100_000;

/// When a task may run, given the states of its direct upstream tasks.
///
/// The rules count, over the direct upstream tasks, those that succeeded
/// (s), failed or were upstream_failed or cancelled (f) and were skipped
/// (k); `docs/dag-reference.md` ("Trigger rules") gives what each one
/// waits for and what the task becomes when it cannot run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TriggerRule {
    /// Every upstream task succeeded.
    #[default]
    AllSuccess,
    /// Every upstream task failed.
    AllFailed,
    /// Every upstream task finished, whatever its state.
    AllDone,
    /// Every upstream task was skipped.
    AllSkipped,
    /// One upstream task succeeded (without waiting for the others).
    OneSuccess,
    /// One upstream task failed (without waiting for the others).
    OneFailed,
    /// One upstream task succeeded or failed (without waiting).
    OneDone,
    /// Every upstream task finished and none failed (skips are fine).
    NoneFailed,
    /// Every upstream task finished, none failed and one succeeded.
    NoneFailedMinOneSuccess,
    /// Every upstream task finished and none was skipped.
    NoneSkipped,
    /// At once, whatever the upstream tasks do.
    Always,
}

impl TriggerRule {
    /// Every rule, in the order the reference lists them.
    pub const ALL: [TriggerRule; 11] = [
        TriggerRule::AllSuccess,
        TriggerRule::AllFailed,
        TriggerRule::AllDone,
        TriggerRule::AllSkipped,
        TriggerRule::OneSuccess,
        TriggerRule::OneFailed,
        TriggerRule::OneDone,
        TriggerRule::NoneFailed,
        TriggerRule::NoneFailedMinOneSuccess,
        TriggerRule::NoneSkipped,
        TriggerRule::Always,
    ];

    /// The rule as DAG files and the API write it: `all_success`, ….
    pub fn name(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllFailed => "all_failed",
            TriggerRule::AllDone => "all_done",
            TriggerRule::AllSkipped => "all_skipped",
            TriggerRule::OneSuccess => "one_success",
            TriggerRule::OneFailed => "one_failed",
            TriggerRule::OneDone => "one_done",
            TriggerRule::NoneFailed => "none_failed",
            TriggerRule::NoneFailedMinOneSuccess => "none_failed_min_one_success",
            TriggerRule::NoneSkipped => "none_skipped",
            TriggerRule::Always => "always",
        }
    }

    /// The rule of that name, exactly as [`TriggerRule::name`] writes it.
    pub fn parse(text: &str) -> Option<TriggerRule> {
        TriggerRule::ALL
            .into_iter()
            .find(|rule| rule.name() == text)
    }
}

impl fmt::Display for TriggerRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A task expanded at run time over a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOver {
    /// The expression giving the list, as written.
    pub expression: String,
    /// Most elements the list may have; a longer one fails the task.
    pub max_length: u32,
}

/// Which of a branch's direct downstream tasks its output chooses: one
/// flag per entry of `downstream` (their ids), in that order.
///
/// The output (`output_json`, the JSON the task wrote to `$BATON_OUTPUT`)
/// is a task id or a list of them. No output, `null` and `[]` choose none.
/// Anything else, or an id that is not one of `downstream`, is an error
/// naming it: the branch did not say what to do.
pub fn branch_choice(output_json: Option<&str>, downstream: &[&str]) -> Result<Vec<bool>, String> {
    let mut chosen = vec![false; downstream.len()];
    let Some(text) = output_json else {
        return Ok(chosen);
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| format!("a branch's output must be JSON: {error}"))?;
    let ids: Vec<&str> = match &value {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::String(id) => vec![id.as_str()],
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str().ok_or_else(|| {
                    format!("a branch's output must be a task id or a list of task ids; the list holds {item}")
                })
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(format!(
                "a branch's output must be a task id or a list of task ids; got {other}"
            ));
        }
    };
    for id in ids {
        match downstream.iter().position(|candidate| *candidate == id) {
            Some(position) => chosen[position] = true,
            None => {
                let reason = match did_you_mean(id, downstream.iter().copied()) {
                    Some(close) => format!(
                        "the branch chose `{id}`, which is not one of its direct downstream tasks; did you mean `{close}`?"
                    ),
                    None => format!(
                        "the branch chose `{id}`, which is not one of its direct downstream tasks: {}",
                        downstream.join(", ")
                    ),
                };
                return Err(reason);
            }
        }
    }
    Ok(chosen)
}

/// The trigger rule of `default_args`, reported there when unknown.
pub(super) fn check_default_trigger_rule(parsed: &Parsed, report: &mut Report) {
    if let Some(rule) = &parsed.spec.default_args.trigger_rule {
        check_trigger_rule(Place::Defaults, rule, report);
    }
}

fn check_trigger_rule(place: Place, text: &str, report: &mut Report) {
    if TriggerRule::parse(text).is_some() {
        return;
    }
    let names = TriggerRule::ALL.map(TriggerRule::name);
    let reason = match did_you_mean(text, names) {
        Some(close) => format!("unknown trigger rule `{text}`; did you mean `{close}`?"),
        None => format!(
            "unknown trigger rule `{text}`; the rules are {}",
            names.join(", ")
        ),
    };
    report.push(place.field("trigger_rule"), reason);
}

/// The trigger rule of a task, reported there when unknown.
pub(super) fn check_task_trigger_rule(position: usize, task: &TaskSpec, report: &mut Report) {
    if let Some(rule) = &task.trigger_rule {
        check_trigger_rule(Place::Task(position), rule, report);
    }
}

/// True when the task is a branch: `kind: branch`, or `branch: true`.
pub(super) fn is_branch(task: &TaskSpec) -> bool {
    task.kind == Some(TaskKindSpec::Branch) || task.branch == Some(true)
}

/// The checks of one task's `branch`, `run_if`, `map_over` and
/// `max_map_length` that need no other task. `kind` is the task's kind
/// with `branch` read as `command`.
pub(super) fn check_task_flow(
    position: usize,
    task: &TaskSpec,
    kind: TaskKindSpec,
    unreadable: &Unreadable,
    report: &mut Report,
) {
    let place = Place::Task(position);
    if task.kind == Some(TaskKindSpec::Branch) && task.branch == Some(false) {
        report.push(
            place.field("branch"),
            "`kind: branch` makes the task a branch; remove `branch: false` or write `kind: command`",
        );
    }
    let branch = is_branch(task);
    if branch && !matches!(kind, TaskKindSpec::Command | TaskKindSpec::Custom) {
        report.push(
            place.field("branch"),
            format!(
                "only command and custom tasks can branch: a branch's output names the downstream tasks that run; this one is `kind: {}`",
                kind.name()
            ),
        );
    }
    for (name, expression) in [("run_if", &task.run_if), ("map_over", &task.map_over)] {
        if let Some(expression) = expression {
            check_expression_text(place, name, expression, report);
        }
    }
    match &task.map_over {
        Some(_) => {
            if branch {
                report.push(
                    place.field("map_over"),
                    "a branch cannot be mapped: its one output names the downstream tasks that run; map a task below it instead",
                );
            }
            if kind == TaskKindSpec::Sensor
                && let Some(condition) = task.sensor.as_ref().and_then(controller_condition)
            {
                report.push(
                    place.field("map_over"),
                    format!(
                        "a `{condition}` sensor is evaluated by the controller and cannot be mapped; map a `file` or `http` sensor, or a command"
                    ),
                );
            }
            if let Some(length) = task.max_map_length
                && !(1..=MAX_MAP_LENGTH_LIMIT).contains(&length)
            {
                report.push(
                    place.field("max_map_length"),
                    format!(
                        "max_map_length is {length}; it must be from 1 to {MAX_MAP_LENGTH_LIMIT}"
                    ),
                );
            }
        }
        None => {
            if task.max_map_length.is_some() && !unreadable.has("map_over") {
                report.push(
                    place.field("max_map_length"),
                    "max_map_length needs `map_over`: it caps the list a mapped task expands over",
                );
            }
        }
    }
}

/// The condition of a sensor the controller evaluates itself (`time`,
/// `delta`, `external_task`), if it has one; those never reach a worker,
/// so there is nothing to expand.
fn controller_condition(sensor: &SensorSpec) -> Option<&'static str> {
    [
        ("time", sensor.time.is_some()),
        ("delta", sensor.delta.is_some()),
        ("external_task", sensor.external_task.is_some()),
    ]
    .into_iter()
    .find_map(|(name, written)| written.then_some(name))
}

/// True when an expression is worth parsing: not blank, not wrapped in
/// `{{ }}` (both reported by [`check_task_flow`] already).
pub(super) fn is_checkable_expression(expression: &str) -> bool {
    let trimmed = expression.trim();
    !trimmed.is_empty() && inside_braces(trimmed).is_none()
}

/// What `{{ … }}` holds, when the whole text is one.
fn inside_braces(trimmed: &str) -> Option<&str> {
    trimmed
        .strip_prefix("{{")
        .and_then(|rest| rest.strip_suffix("}}"))
}

/// An expression field must not be blank, nor wrapped in `{{ }}`.
fn check_expression_text(place: Place, name: &str, expression: &str, report: &mut Report) {
    let trimmed = expression.trim();
    if trimmed.is_empty() {
        let hint = if name == "run_if" {
            "leave it out to run the task whenever its trigger rule lets it"
        } else {
            "leave it out for a task that runs once"
        };
        report.push(
            place.field(name),
            format!("{name} must not be empty; {hint}"),
        );
    } else if let Some(inside) = inside_braces(trimmed) {
        report.push(
            place.field(name),
            format!(
                "{name} is an expression, written without `{{{{ }}}}`: `{name}: \"{}\"`",
                inside.trim()
            ),
        );
    }
}

/// A branch must have a downstream task to choose. `dependencies` are the
/// resolved `depends_on` of each task.
pub(super) fn check_branches(parsed: &Parsed, dependencies: &[Vec<usize>], report: &mut Report) {
    let tasks = &parsed.spec.tasks;
    let branches: Vec<usize> = (0..tasks.len())
        .filter(|&position| is_branch(&tasks[position]) && !parsed.task(position).has("kind"))
        .collect();
    if branches.is_empty() {
        return;
    }
    let mut has_downstream = vec![false; tasks.len()];
    for upstream in dependencies {
        for &task in upstream {
            has_downstream[task] = true;
        }
    }
    for position in branches {
        if has_downstream[position] {
            continue;
        }
        let task = &tasks[position];
        let field = if task.kind == Some(TaskKindSpec::Branch) {
            "kind"
        } else {
            "branch"
        };
        report.push(
            Place::Task(position).field(field),
            format!(
                "a branch chooses which of its downstream tasks run, and no task depends on `{}`; add it to the `depends_on` of the tasks it chooses among",
                task.id
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_rules_read_back_their_names() {
        for rule in TriggerRule::ALL {
            assert_eq!(TriggerRule::parse(rule.name()), Some(rule));
            assert_eq!(rule.to_string(), rule.name());
        }
        assert_eq!(TriggerRule::default(), TriggerRule::AllSuccess);
        assert_eq!(TriggerRule::parse("ALL_SUCCESS"), None);
        assert_eq!(TriggerRule::parse("dummy"), None);
    }

    #[test]
    fn a_branch_output_chooses_among_its_downstream_tasks() {
        let downstream = ["weekday", "weekend", "holiday"];
        for (output, expected) in [
            (None, [false, false, false]),
            (Some("null"), [false, false, false]),
            (Some("[]"), [false, false, false]),
            (Some("\"weekday\""), [true, false, false]),
            (
                Some("[\"holiday\", \"weekend\", \"holiday\"]"),
                [false, true, true],
            ),
        ] {
            assert_eq!(
                branch_choice(output, &downstream),
                Ok(expected.to_vec()),
                "{output:?}"
            );
        }
        for (output, expected) in [
            (
                "\"wekday\"",
                "the branch chose `wekday`, which is not one of its direct downstream tasks; did you mean `weekday`?",
            ),
            (
                "[\"zzz\"]",
                "the branch chose `zzz`, which is not one of its direct downstream tasks: weekday, weekend, holiday",
            ),
            (
                "3",
                "a branch's output must be a task id or a list of task ids; got 3",
            ),
            (
                "[\"weekday\", 1]",
                "a branch's output must be a task id or a list of task ids; the list holds 1",
            ),
        ] {
            assert_eq!(
                branch_choice(Some(output), &downstream),
                Err(expected.to_string()),
                "{output}"
            );
        }
        assert!(
            branch_choice(Some("{not json"), &downstream)
                .unwrap_err()
                .starts_with("a branch's output must be JSON")
        );
    }
}
