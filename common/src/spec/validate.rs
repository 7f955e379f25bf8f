//! Checks a parsed [`DagSpec`] and resolves it into a [`ValidatedDag`].
//!
//! Every check runs and reports into one [`Report`], so a user sees all the
//! problems of a document at once. `parse` hands over, besides the model,
//! which fields it could not read ([`Unreadable`]): those were reported
//! already, and the checks that depend on them are skipped rather than
//! guessing (a task whose `id` could not be read makes "unknown task"
//! reports unreliable, a `retry_delay` that could not be read cannot be
//! compared with `max_retry_delay`).
//!
//! Properties the dependency checks keep:
//! - no recursion: cycle detection is an iterative Tarjan SCC pass followed
//!   by a breadth-first search per strongly connected component, so 100,000
//!   tasks in one chain cannot overflow the stack;
//! - linear time in tasks plus edges; duplicates in one `depends_on` list are
//!   removed with a per-task stamp array, not a set per task;
//! - each cycle is reported once: one per task that depends on itself and
//!   one (the shortest through its first task in file order) per strongly
//!   connected component of two or more tasks.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::error::shorten;
use sha2::{Digest, Sha256};

use super::flow::{
    DEFAULT_MAX_MAP_LENGTH, MapOver, TriggerRule, check_branches, check_default_trigger_rule,
    check_task_flow, check_task_trigger_rule, is_branch,
};
use super::model::{
    CommandSpec, DagSpec, ResourcesSpec, SpecDuration, TaskDefaults, TaskKindSpec, TaskSpec,
};
use super::notify::{Notifier, NotifierSource, resolve_notifiers};
use super::params::check_params;
use super::scheduling::{Scheduling, check_scheduling};
use super::sensor::{check_sensor, resolve_sensor};
use super::templates::check_templates;
use super::{
    CommandTask, CustomTask, DEFAULT_QUEUE, MAX_REPORTED_VIOLATIONS, MAX_RETRIES, ParamsSpec,
    ResolvedTask, Resources, RetryPolicy, SensorCondition, SpecErrors, SpecLimits, TaskKind,
    ValidatedDag,
};
use crate::error::FieldViolation;
use crate::ids::{AssetUri, DagId, HandlerName, PoolName, QueueName, TaskId, validate_name};
use crate::template::is_templated;

/// Longest label key and value, in bytes (Kubernetes' limits for names and
/// values are 63; keys may carry a prefix).
const MAX_LABEL_KEY_BYTES: usize = 253;
const MAX_LABEL_VALUE_BYTES: usize = 63;
/// Most labels one task may require.
const MAX_LABELS: usize = 64;
/// Largest `pool_slots`, `max_active` and `max_active_tasks`.
const MAX_CONCURRENCY: u32 = 1_000_000;

/// How many unknown dependencies get a "did you mean" search: each search
/// compares against every task id, which adds up in a large DAG.
const MAX_DEPENDENCY_SUGGESTIONS: usize = 10;

/// Longest field path and reason kept in a violation, in bytes.
const MAX_FIELD_BYTES: usize = 300;
const MAX_REASON_BYTES: usize = 600;

/// Where a field lives in the document, for violation paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Root,
    Defaults,
    Task(usize),
}

impl Place {
    /// Path of the object itself (`""`, `default_args`, `tasks[3]`).
    pub(super) fn path(self) -> String {
        match self {
            Place::Root => String::new(),
            Place::Defaults => "default_args".to_string(),
            Place::Task(index) => format!("tasks[{index}]"),
        }
    }

    /// Path of one of its fields.
    pub(super) fn field(self, name: &str) -> String {
        match self {
            Place::Root => name.to_string(),
            Place::Defaults => format!("default_args.{name}"),
            Place::Task(index) => format!("tasks[{index}].{name}"),
        }
    }
}

/// The violations found so far, capped at [`MAX_REPORTED_VIOLATIONS`] so an
/// error for a huge broken document stays readable (and fits in a gRPC
/// status); the rest are counted.
#[derive(Debug, Default)]
pub(super) struct Report {
    violations: Vec<FieldViolation>,
    omitted: usize,
}

impl Report {
    /// Records a violation. Field and reason are cut to a few hundred
    /// bytes: they may quote user values of any length.
    pub(super) fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        if self.violations.len() < MAX_REPORTED_VIOLATIONS {
            self.violations.push(FieldViolation::new(
                shorten(field.into(), MAX_FIELD_BYTES),
                shorten(reason.into(), MAX_REASON_BYTES),
            ));
        } else {
            self.omitted += 1;
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// Problems found so far, listed or not.
    pub(super) fn len(&self) -> usize {
        self.violations.len() + self.omitted
    }

    /// Adds what `other` found after what this one found.
    pub(super) fn append(&mut self, other: Report) {
        for violation in other.violations {
            self.push(violation.field, violation.reason);
        }
        self.omitted += other.omitted;
    }

    pub(super) fn into_errors(mut self) -> SpecErrors {
        if self.omitted > 0 {
            self.violations.push(FieldViolation::new(
                "",
                format!(
                    "{} more problems not listed; fix the ones above and validate again",
                    self.omitted
                ),
            ));
        }
        SpecErrors(self.violations)
    }
}

/// Fields of one object that `parse` could not read (and reported).
#[derive(Debug, Default)]
pub(super) struct Unreadable {
    /// The object itself was not a mapping: nothing in it is usable.
    whole: bool,
    fields: Vec<&'static str>,
}

impl Unreadable {
    pub(super) fn whole() -> Self {
        Self {
            whole: true,
            fields: Vec::new(),
        }
    }

    pub(super) fn insert(&mut self, field: &'static str) {
        if !self.fields.contains(&field) {
            self.fields.push(field);
        }
    }

    pub(super) fn has(&self, field: &str) -> bool {
        self.whole || self.fields.contains(&field)
    }

    pub(super) fn is_empty(&self) -> bool {
        !self.whole && self.fields.is_empty()
    }
}

/// What `parse` produced: the model plus the fields it could not read.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub(super) spec: DagSpec,
    pub(super) root: Unreadable,
    pub(super) defaults: Unreadable,
    /// Only tasks with unreadable fields have an entry.
    pub(super) tasks: BTreeMap<usize, Unreadable>,
}

impl Parsed {
    /// The fields of task `index` that could not be read.
    pub(super) fn task(&self, index: usize) -> &Unreadable {
        static NONE: Unreadable = Unreadable {
            whole: false,
            fields: Vec::new(),
        };
        self.tasks.get(&index).unwrap_or(&NONE)
    }
}

/// The best "did you mean" among `candidates`, if one is close enough:
/// Jaro-Winkler similarity of at least 0.8, or an edit distance of at most
/// 2 (1 for short words).
pub(super) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(f64, &'a str)> = None;
    for candidate in candidates {
        if candidate == word {
            continue;
        }
        let similarity = strsim::jaro_winkler(word, candidate);
        let close = similarity >= 0.8 || {
            let longest = word.chars().count().max(candidate.chars().count());
            let allowed = (longest / 3).clamp(1, 2);
            word.len().abs_diff(candidate.len()) <= allowed
                && strsim::osa_distance(word, candidate) <= allowed
        };
        if close && best.is_none_or(|(best_similarity, _)| similarity > best_similarity) {
            best = Some((similarity, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Runs every check on `parsed`, adding to what `parse` reported, and
/// resolves the DAG when nothing was found.
pub(super) fn validate(
    parsed: Parsed,
    limits: &SpecLimits,
    mut report: Report,
) -> Result<ValidatedDag, SpecErrors> {
    let spec = &parsed.spec;

    if !parsed.root.has("id")
        && let Err(error) = validate_name(DagId::WHAT, &spec.id)
    {
        report.push("id", error.reason);
    }
    if spec.tasks.is_empty() && !parsed.root.has("tasks") {
        report.push("tasks", "a DAG needs at least one task");
    }
    check_limit("max_active_tasks", spec.max_active_tasks, &mut report);
    let scheduling = check_scheduling(&parsed, &mut report);
    let params = check_params(&spec.params, &mut report);
    let notify = match resolve_notifiers(&spec.notify, "notify", NotifierSource::DagFile) {
        Ok(notifiers) => notifiers,
        Err(violations) => {
            for violation in violations {
                report.push(violation.field, violation.reason);
            }
            Vec::new()
        }
    };

    let defaults = Settings::of_defaults(&spec.default_args);
    check_settings(Place::Defaults, &defaults, true, &mut report);
    check_default_trigger_rule(&parsed, &mut report);

    let (index, any_id_unreadable) = check_task_ids(&parsed, &mut report);

    let mut pair_reported_on_defaults = false;
    for (position, task) in spec.tasks.iter().enumerate() {
        let unreadable = parsed.task(position);
        check_task_trigger_rule(position, task, &mut report);
        if unreadable.has("kind") {
            // Which fields are allowed depends on the kind; skip rather than guess.
            check_settings(
                Place::Task(position),
                &Settings::of_task(task),
                false,
                &mut report,
            );
            continue;
        }
        let kind = task.kind.unwrap_or(TaskKindSpec::Command);
        check_settings(
            Place::Task(position),
            &Settings::of_task(task),
            kind.runs_as() == TaskKindSpec::Command,
            &mut report,
        );
        check_kind(position, task, kind, unreadable, &mut report);
        check_sensor(Place::Task(position), task, kind, unreadable, &mut report);
        check_task_flow(position, task, kind.runs_as(), unreadable, &mut report);
        for (entry, output) in task.outputs.iter().enumerate() {
            if let Err(error) = AssetUri::new(output.clone()) {
                report.push(
                    format!("{}[{entry}]", Place::Task(position).field("outputs")),
                    error.reason,
                );
            }
        }
        if task.sla.is_some_and(|sla| sla.0.is_zero()) {
            report.push(
                Place::Task(position).field("sla"),
                "sla must be longer than zero; leave it out for no SLA",
            );
        }
        check_limit(
            &Place::Task(position).field("max_active"),
            task.max_active,
            &mut report,
        );
        if task.pool.is_none() && spec.default_args.pool.is_none() && task.pool_slots.is_some() {
            report.push(
                Place::Task(position).field("pool_slots"),
                "pool_slots needs a `pool` (on the task or in default_args)",
            );
        }
        check_retry_cap(
            position,
            &parsed,
            &mut pair_reported_on_defaults,
            &mut report,
        );
    }

    let dependencies =
        resolve_dependencies(&parsed, &index, any_id_unreadable, limits, &mut report);
    report_cycles(&spec.tasks, &dependencies, &mut report);
    check_branches(&parsed, &dependencies, &mut report);
    check_templates(
        &parsed,
        &dependencies,
        &params,
        !parsed.root.has("params"),
        &mut report,
    );

    if !report.is_empty() {
        return Err(report.into_errors());
    }
    let Some(scheduling) = scheduling else {
        return Err(internal_error(
            "the schedule passed its checks but was not resolved".to_string(),
        ));
    };
    resolve(parsed.spec, dependencies, scheduling, params, notify)
}

/// A problem the checks should have caught: reported rather than panicking.
fn internal_error(what: String) -> SpecErrors {
    SpecErrors(vec![FieldViolation::new(
        "",
        format!("internal error: {what}"),
    )])
}

/// Checks task id rules and uniqueness; returns id → first position, and
/// whether some task's id could not be read.
fn check_task_ids<'a>(parsed: &'a Parsed, report: &mut Report) -> (HashMap<&'a str, usize>, bool) {
    let tasks = &parsed.spec.tasks;
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
    let mut any_id_unreadable = false;
    for (position, task) in tasks.iter().enumerate() {
        if parsed.task(position).has("id") {
            any_id_unreadable = true;
            continue;
        }
        if let Err(error) = validate_name(TaskId::WHAT, &task.id) {
            report.push(Place::Task(position).field("id"), error.reason);
        }
        match index.entry(task.id.as_str()) {
            std::collections::hash_map::Entry::Occupied(first) => report.push(
                Place::Task(position).field("id"),
                format!(
                    "duplicate task id `{}` (first defined at tasks[{}])",
                    task.id,
                    first.get()
                ),
            ),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(position);
            }
        }
    }
    (index, any_id_unreadable)
}

/// The settings a task and `default_args` have in common, borrowed from
/// either.
struct Settings<'a> {
    retries: Option<u32>,
    retry_jitter: Option<f64>,
    timeout: Option<SpecDuration>,
    queue: Option<&'a str>,
    env: &'a BTreeMap<String, String>,
    cwd: Option<&'a str>,
    pool: Option<&'a str>,
    pool_slots: Option<u32>,
    labels: &'a BTreeMap<String, String>,
    resources: Option<&'a ResourcesSpec>,
}

impl<'a> Settings<'a> {
    fn of_defaults(defaults: &'a TaskDefaults) -> Self {
        Self {
            retries: defaults.retries,
            retry_jitter: defaults.retry_jitter,
            timeout: defaults.timeout,
            queue: defaults.queue.as_deref(),
            env: &defaults.env,
            cwd: defaults.cwd.as_deref(),
            pool: defaults.pool.as_deref(),
            pool_slots: defaults.pool_slots,
            labels: &defaults.labels,
            resources: defaults.resources.as_ref(),
        }
    }

    fn of_task(task: &'a TaskSpec) -> Self {
        Self {
            retries: task.retries,
            retry_jitter: task.retry_jitter,
            timeout: task.timeout,
            queue: task.queue.as_deref(),
            env: &task.env,
            cwd: task.cwd.as_deref(),
            pool: task.pool.as_deref(),
            pool_slots: task.pool_slots,
            labels: &task.labels,
            resources: task.resources.as_ref(),
        }
    }
}

/// Range and content checks of one object's own settings. `with_process`
/// is false for a noop task, whose `env` and `cwd` are refused elsewhere.
fn check_settings(place: Place, settings: &Settings<'_>, with_process: bool, report: &mut Report) {
    if let Some(retries) = settings.retries
        && retries > MAX_RETRIES
    {
        report.push(
            place.field("retries"),
            format!("retries is {retries}; the limit is {MAX_RETRIES}"),
        );
    }
    if let Some(jitter) = settings.retry_jitter
        && !(0.0..=1.0).contains(&jitter)
    {
        report.push(
            place.field("retry_jitter"),
            format!("retry_jitter is {jitter}; it must be between 0 and 1"),
        );
    }
    if let Some(timeout) = settings.timeout
        && timeout.0.is_zero()
    {
        report.push(
            place.field("timeout"),
            "timeout must be longer than zero; leave it out for no timeout",
        );
    }
    if let Some(queue) = settings.queue
        && let Err(error) = validate_name(QueueName::WHAT, queue)
    {
        report.push(place.field("queue"), error.reason);
    }
    if let Some(pool) = settings.pool
        && let Err(error) = validate_name(PoolName::WHAT, pool)
    {
        report.push(place.field("pool"), error.reason);
    }
    if let Some(slots) = settings.pool_slots
        && !(1..=MAX_CONCURRENCY).contains(&slots)
    {
        report.push(
            place.field("pool_slots"),
            format!("pool_slots is {slots}; it must be from 1 to {MAX_CONCURRENCY}"),
        );
    }
    check_labels(place, settings.labels, report);
    if let Some(resources) = settings.resources {
        if resources.cpu.is_none() && resources.memory.is_none() {
            report.push(
                place.field("resources"),
                "resources needs `cpu` and/or `memory`; leave it out to request nothing",
            );
        }
        if let Err(reason) = resources.cpu_millis() {
            report.push(format!("{}.cpu", place.field("resources")), reason);
        }
        if let Err(reason) = resources.memory_bytes() {
            report.push(format!("{}.memory", place.field("resources")), reason);
        }
    }
    if !with_process {
        return;
    }
    for (name, value) in settings.env {
        if name.is_empty() {
            report.push(
                place.field("env"),
                "environment variable names must not be empty",
            );
            continue;
        }
        let field = format!("{}.{name}", place.field("env"));
        if name.contains('=') {
            report.push(
                field,
                format!("environment variable name `{name}` must not contain `=`"),
            );
        } else if name.contains('\0') {
            report.push(
                field,
                format!(
                    "environment variable name `{}` must not contain a NUL character",
                    name.escape_debug()
                ),
            );
        } else if value.contains('\0') {
            report.push(
                field,
                format!("the value of `{name}` must not contain a NUL character"),
            );
        }
    }
    if let Some(cwd) = settings.cwd {
        if cwd.is_empty() {
            report.push(
                place.field("cwd"),
                "cwd must not be empty; leave it out to use the worker's directory",
            );
        } else if cwd.contains('\0') {
            report.push(
                place.field("cwd"),
                format!(
                    "cwd `{}` must not contain a NUL character",
                    cwd.escape_debug()
                ),
            );
        }
    }
}

/// A concurrency limit, when written, is from 1 to [`MAX_CONCURRENCY`].
fn check_limit(field: &str, limit: Option<u32>, report: &mut Report) {
    if let Some(limit) = limit
        && !(1..=MAX_CONCURRENCY).contains(&limit)
    {
        report.push(
            field,
            format!("{field} is {limit}; it must be from 1 to {MAX_CONCURRENCY} (leave it out for no limit)"),
        );
    }
}

/// Label keys and values: what Kubernetes allows, roughly (printable, no
/// spaces, bounded).
fn check_labels(place: Place, labels: &BTreeMap<String, String>, report: &mut Report) {
    if labels.len() > MAX_LABELS {
        report.push(
            place.field("labels"),
            format!("{} labels; the limit is {MAX_LABELS}", labels.len()),
        );
    }
    let printable = |text: &str| text.chars().all(|c| c.is_ascii_graphic());
    for (key, value) in labels {
        let field = format!("{}.{key}", place.field("labels"));
        if key.is_empty() || key.len() > MAX_LABEL_KEY_BYTES || !printable(key) {
            report.push(
                field,
                format!(
                    "label keys are 1 to {MAX_LABEL_KEY_BYTES} printable characters without spaces"
                ),
            );
        } else if value.len() > MAX_LABEL_VALUE_BYTES || !printable(value) {
            report.push(
                field,
                format!("label values are up to {MAX_LABEL_VALUE_BYTES} printable characters without spaces"),
            );
        }
    }
}

/// What a task's kind requires or refuses. `written` is the kind as
/// written: `branch` is checked as `command`, and named as written.
fn check_kind(
    position: usize,
    task: &TaskSpec,
    written: TaskKindSpec,
    unreadable: &Unreadable,
    report: &mut Report,
) {
    let place = Place::Task(position);
    let kind = written.runs_as();
    if kind != TaskKindSpec::Custom {
        if task.handler.is_some() {
            report.push(
                place.field("handler"),
                format!(
                    "only custom tasks take `handler` (this one is `kind: {}`); add `kind: custom`",
                    written.name()
                ),
            );
        }
        if task.payload.is_some() {
            report.push(
                place.field("payload"),
                format!(
                    "only custom tasks take `payload` (this one is `kind: {}`)",
                    written.name()
                ),
            );
        }
    }
    match kind {
        TaskKindSpec::Custom => {
            match &task.handler {
                None if !unreadable.has("handler") => report.push(
                    place.field("handler"),
                    "missing; a custom task needs the `handler` a worker serves",
                ),
                Some(handler) => {
                    if let Err(error) = validate_name(HandlerName::WHAT, handler) {
                        report.push(place.field("handler"), error.reason);
                    }
                }
                None => {}
            }
            if task.command.is_some() {
                report.push(
                    place.field("command"),
                    "a custom task runs its handler; remove `command` or drop `kind: custom`",
                );
            }
            if !task.env.is_empty() {
                report.push(place.field("env"), "only command tasks take `env`");
            }
            if task.cwd.is_some() {
                report.push(place.field("cwd"), "only command tasks take `cwd`");
            }
        }
        TaskKindSpec::Command => {
            if unreadable.has("command") {
                return;
            }
            match &task.command {
                None if written == TaskKindSpec::Branch => report.push(
                    place.field("command"),
                    "missing; a branch task needs a `command` that writes the ids of the downstream \
                     tasks to run to $BATON_OUTPUT",
                ),
                None => report.push(
                    place.field("command"),
                    "missing; a command task needs a `command` (a list of arguments or a shell string), \
                     or `kind: noop`",
                ),
                Some(CommandSpec::Shell(script)) => {
                    if script.trim().is_empty() {
                        report.push(place.field("command"), "the shell command must not be empty");
                    } else if script.contains('\0') {
                        report.push(place.field("command"), "the shell command must not contain a NUL character");
                    }
                }
                Some(CommandSpec::Argv(argv)) => {
                    if argv.is_empty() {
                        report.push(place.field("command"), "the argument list must not be empty");
                        return;
                    }
                    if argv[0].is_empty() {
                        report.push(format!("{}[0]", place.field("command")), "the program name must not be empty");
                    }
                    for (position, argument) in argv.iter().enumerate() {
                        if argument.contains('\0') {
                            report.push(
                                format!("{}[{position}]", place.field("command")),
                                format!("argument `{}` must not contain a NUL character", argument.escape_debug()),
                            );
                        }
                    }
                }
            }
        }
        // The sensor's own checks are in `sensor`.
        TaskKindSpec::Sensor => {}
        // Read as `command` above.
        TaskKindSpec::Branch => {}
        TaskKindSpec::Noop => {
            if task.command.is_some() {
                report.push(
                    place.field("command"),
                    "a noop task runs nothing; remove `command` or drop `kind: noop`",
                );
            }
            if !task.env.is_empty() {
                report.push(place.field("env"), "only command tasks take `env`");
            }
            if task.cwd.is_some() {
                report.push(place.field("cwd"), "only command tasks take `cwd`");
            }
        }
    }
}

/// Where a resolved setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Task,
    Defaults,
    Builtin,
}

/// The value a task ends up with, or `None` when it depends on a field that
/// could not be read.
fn effective<T>(
    on_task: Option<T>,
    task_unreadable: bool,
    on_defaults: Option<T>,
    defaults_unreadable: bool,
    builtin: T,
) -> Option<(T, Source)> {
    if task_unreadable {
        return None;
    }
    if let Some(value) = on_task {
        return Some((value, Source::Task));
    }
    if defaults_unreadable {
        return None;
    }
    Some(match on_defaults {
        Some(value) => (value, Source::Defaults),
        None => (builtin, Source::Builtin),
    })
}

/// `max_retry_delay` must not be shorter than `retry_delay`, comparing the
/// values the task ends up with. A conflict between `default_args` and the
/// built-in defaults alone is reported once, on `default_args`.
fn check_retry_cap(
    position: usize,
    parsed: &Parsed,
    reported_on_defaults: &mut bool,
    report: &mut Report,
) {
    let task = &parsed.spec.tasks[position];
    let defaults = &parsed.spec.default_args;
    let unreadable = parsed.task(position);
    let builtin = RetryPolicy::default();
    let delay = effective(
        task.retry_delay.map(SpecDuration::as_duration),
        unreadable.has("retry_delay"),
        defaults.retry_delay.map(SpecDuration::as_duration),
        parsed.defaults.has("retry_delay"),
        builtin.delay,
    );
    let cap = effective(
        task.max_retry_delay.map(SpecDuration::as_duration),
        unreadable.has("max_retry_delay"),
        defaults.max_retry_delay.map(SpecDuration::as_duration),
        parsed.defaults.has("max_retry_delay"),
        builtin.max_delay,
    );
    let (Some((delay, delay_source)), Some((cap, cap_source))) = (delay, cap) else {
        return;
    };
    if cap >= delay {
        return;
    }
    let place = if delay_source == Source::Task || cap_source == Source::Task {
        Place::Task(position)
    } else if *reported_on_defaults {
        return;
    } else {
        *reported_on_defaults = true;
        Place::Defaults
    };
    let field = if delay_source == Source::Task
        || (place == Place::Defaults && delay_source == Source::Defaults)
    {
        "retry_delay"
    } else {
        "max_retry_delay"
    };
    let origin = |source: Source| match source {
        Source::Task => "",
        Source::Defaults if place == Place::Defaults => "",
        Source::Defaults => " (from default_args)",
        Source::Builtin => " (the default)",
    };
    report.push(
        place.field(field),
        format!(
            "retry_delay {}{} is longer than max_retry_delay {}{}; raise max_retry_delay or shorten retry_delay",
            humantime::format_duration(delay),
            origin(delay_source),
            humantime::format_duration(cap),
            origin(cap_source),
        ),
    );
}

/// Resolves every `depends_on` entry to a task position, without duplicates,
/// reporting bad and unknown ids and the edge limit.
fn resolve_dependencies(
    parsed: &Parsed,
    index: &HashMap<&str, usize>,
    any_id_unreadable: bool,
    limits: &SpecLimits,
    report: &mut Report,
) -> Vec<Vec<usize>> {
    let tasks = &parsed.spec.tasks;
    // last_added_by[t] == position when task `position` already depends on t.
    let mut last_added_by = vec![usize::MAX; tasks.len()];
    let mut dependencies = Vec::with_capacity(tasks.len());
    let mut edges = 0usize;
    let mut suggestions_left = MAX_DEPENDENCY_SUGGESTIONS;
    for (position, task) in tasks.iter().enumerate() {
        let mut upstream = Vec::with_capacity(task.depends_on.len());
        for (entry, name) in task.depends_on.iter().enumerate() {
            let field = || format!("{}[{entry}]", Place::Task(position).field("depends_on"));
            if let Err(error) = validate_name(TaskId::WHAT, name) {
                report.push(field(), error.reason);
                continue;
            }
            match index.get(name.as_str()) {
                Some(&target) => {
                    if last_added_by[target] != position {
                        last_added_by[target] = position;
                        upstream.push(target);
                    }
                }
                // The task that could not be read may well be the one named.
                None if any_id_unreadable => {}
                None => {
                    let suggestion = if suggestions_left > 0 {
                        suggestions_left -= 1;
                        did_you_mean(name, tasks.iter().map(|task| task.id.as_str()))
                    } else {
                        None
                    };
                    let reason = match suggestion {
                        Some(known) => format!("unknown task `{name}`; did you mean `{known}`?"),
                        None => format!("unknown task `{name}`; no task in this DAG has that id"),
                    };
                    report.push(field(), reason);
                }
            }
        }
        edges += upstream.len();
        dependencies.push(upstream);
    }
    if edges > limits.max_dependencies {
        report.push(
            "tasks",
            format!(
                "the DAG has {edges} dependencies; the limit is {}",
                limits.max_dependencies
            ),
        );
    }
    dependencies
}

/// Reports each task that depends on itself, and one cycle per strongly
/// connected component of two or more tasks, in file order of their first
/// task.
fn report_cycles(tasks: &[TaskSpec], dependencies: &[Vec<usize>], report: &mut Report) {
    let mut cycles: Vec<Vec<usize>> = Vec::new();
    for (position, upstream) in dependencies.iter().enumerate() {
        if upstream.contains(&position) {
            cycles.push(vec![position]);
        }
    }
    let components = strongly_connected_components(dependencies);
    if !components.is_empty() {
        let mut component_of = vec![usize::MAX; dependencies.len()];
        for (number, component) in components.iter().enumerate() {
            for &member in component {
                component_of[member] = number;
            }
        }
        let mut parent = vec![usize::MAX; dependencies.len()];
        for (number, component) in components.iter().enumerate() {
            let start = component.iter().copied().min().unwrap_or_default();
            cycles.push(shortest_cycle(
                start,
                dependencies,
                |task| component_of[task] == number,
                &mut parent,
            ));
        }
    }
    cycles.sort_by_key(|cycle| cycle[0]);
    for cycle in cycles {
        let start = cycle[0];
        let next = *cycle.get(1).unwrap_or(&start);
        let entry = tasks[start]
            .depends_on
            .iter()
            .position(|name| *name == tasks[next].id)
            .unwrap_or(0);
        let mut reason = format!("dependency cycle: {}", format_cycle(tasks, &cycle));
        if cycle.len() == 1 {
            reason.push_str("; a task cannot depend on itself");
        }
        report.push(
            format!("{}[{entry}]", Place::Task(start).field("depends_on")),
            reason,
        );
    }
}

/// `a → b → c → a`, each task depending on the next; very long cycles are
/// shortened in the middle.
fn format_cycle(tasks: &[TaskSpec], cycle: &[usize]) -> String {
    const HEAD: usize = 8;
    const TAIL: usize = 3;
    let name = |position: usize| tasks[position].id.as_str();
    let mut parts: Vec<String> = Vec::with_capacity(HEAD + TAIL + 2);
    if cycle.len() <= HEAD + TAIL + 1 {
        parts.extend(cycle.iter().map(|&position| name(position).to_string()));
    } else {
        parts.extend(
            cycle[..HEAD]
                .iter()
                .map(|&position| name(position).to_string()),
        );
        parts.push(format!("… {} more …", cycle.len() - HEAD - TAIL));
        parts.extend(
            cycle[cycle.len() - TAIL..]
                .iter()
                .map(|&position| name(position).to_string()),
        );
    }
    parts.push(name(cycle[0]).to_string());
    parts.join(" → ")
}

/// Tarjan's algorithm with an explicit stack. Returns the components of two
/// or more tasks (the ones that contain a cycle besides self-dependencies).
fn strongly_connected_components(dependencies: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let count = dependencies.len();
    let mut order = vec![UNSEEN; count];
    let mut low = vec![0usize; count];
    let mut on_stack = vec![false; count];
    let mut stack: Vec<usize> = Vec::new();
    // (task, next edge to follow): the call stack of the recursive version.
    let mut frames: Vec<(usize, usize)> = Vec::new();
    let mut counter = 0usize;
    let mut components = Vec::new();

    for root in 0..count {
        if order[root] != UNSEEN {
            continue;
        }
        order[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root] = true;
        frames.push((root, 0));

        while let Some(frame) = frames.last_mut() {
            let (task, next_edge) = *frame;
            if let Some(&target) = dependencies[task].get(next_edge) {
                frame.1 += 1;
                if order[target] == UNSEEN {
                    order[target] = counter;
                    low[target] = counter;
                    counter += 1;
                    stack.push(target);
                    on_stack[target] = true;
                    frames.push((target, 0));
                } else if on_stack[target] {
                    low[task] = low[task].min(order[target]);
                }
                continue;
            }
            frames.pop();
            if let Some(&(caller, _)) = frames.last() {
                low[caller] = low[caller].min(low[task]);
            }
            if low[task] == order[task] {
                let mut component = Vec::new();
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component.push(member);
                    if member == task {
                        break;
                    }
                }
                if component.len() > 1 {
                    components.push(component);
                }
            }
        }
    }
    components
}

/// The shortest cycle from `start` back to itself through tasks for which
/// `inside` holds (a strongly connected component, so one exists). `parent`
/// is scratch space of one entry per task, all `usize::MAX`, and is left so.
fn shortest_cycle(
    start: usize,
    dependencies: &[Vec<usize>],
    inside: impl Fn(usize) -> bool,
    parent: &mut [usize],
) -> Vec<usize> {
    let mut visited = vec![start];
    let mut queue = VecDeque::from([start]);
    parent[start] = start;
    let mut last = None;
    'search: while let Some(task) = queue.pop_front() {
        for &target in &dependencies[task] {
            if target == task || !inside(target) {
                continue;
            }
            if target == start {
                last = Some(task);
                break 'search;
            }
            if parent[target] == usize::MAX {
                parent[target] = task;
                visited.push(target);
                queue.push_back(target);
            }
        }
    }
    let mut cycle = Vec::new();
    let mut task = last.unwrap_or(start);
    while task != start {
        cycle.push(task);
        task = parent[task];
    }
    cycle.push(start);
    cycle.reverse();
    for task in visited {
        parent[task] = usize::MAX;
    }
    cycle
}

/// Builds the [`ValidatedDag`] of a document that passed every check,
/// moving the strings out of the model rather than copying them.
fn resolve(
    spec: DagSpec,
    dependencies: Vec<Vec<usize>>,
    scheduling: Scheduling,
    params: ParamsSpec,
    notify: Vec<Notifier>,
) -> Result<ValidatedDag, SpecErrors> {
    let internal = internal_error;
    let canonical_json = serde_json::to_string(&spec)
        .map_err(|error| internal(format!("cannot serialize the spec: {error}")))?;
    let digest = hex::encode(Sha256::digest(canonical_json.as_bytes()));

    let DagSpec {
        id,
        description,
        default_args: defaults,
        max_active_tasks,
        tasks: task_specs,
        ..
    } = spec;
    let builtin = RetryPolicy::default();
    let default_queue = QueueName::new(defaults.queue.as_deref().unwrap_or(DEFAULT_QUEUE))
        .map_err(|error| internal(error.reason))?;
    let mut tasks = Vec::with_capacity(task_specs.len());
    let default_trigger_rule = match defaults.trigger_rule.as_deref() {
        Some(rule) => TriggerRule::parse(rule)
            .ok_or_else(|| internal(format!("unknown trigger rule `{rule}`")))?,
        None => TriggerRule::default(),
    };
    for (task, depends_on) in task_specs.into_iter().zip(dependencies) {
        let trigger_rule = match task.trigger_rule.as_deref() {
            Some(rule) => TriggerRule::parse(rule)
                .ok_or_else(|| internal(format!("unknown trigger rule `{rule}`")))?,
            None => default_trigger_rule,
        };
        let branch = is_branch(&task);
        let map_over = task.map_over.map(|expression| MapOver {
            expression,
            max_length: task.max_map_length.unwrap_or(DEFAULT_MAX_MAP_LENGTH),
        });
        let kind = match task.kind.unwrap_or(TaskKindSpec::Command).runs_as() {
            TaskKindSpec::Noop => TaskKind::Noop,
            TaskKindSpec::Sensor => TaskKind::Sensor(Box::new(
                resolve_sensor(&task.sensor.clone().unwrap_or_default()).map_err(internal)?,
            )),
            TaskKindSpec::Custom => TaskKind::Custom(Box::new(CustomTask {
                handler: HandlerName::new(task.handler.clone().unwrap_or_default())
                    .map_err(|error| internal(error.reason))?,
                payload_json: task
                    .payload
                    .as_ref()
                    .map_or_else(|| "null".to_string(), ToString::to_string),
            })),
            TaskKindSpec::Command | TaskKindSpec::Branch => {
                let env = if defaults.env.is_empty() {
                    task.env
                } else {
                    let mut env = defaults.env.clone();
                    env.extend(task.env);
                    env
                };
                TaskKind::Command(Box::new(CommandTask {
                    argv: task.command.map(CommandSpec::into_argv).unwrap_or_default(),
                    env,
                    cwd: task.cwd.or_else(|| defaults.cwd.clone()),
                }))
            }
        };
        let pick_duration = |on_task: Option<SpecDuration>, on_defaults: Option<SpecDuration>| {
            on_task.or(on_defaults).map(SpecDuration::as_duration)
        };
        let queue = match task.queue {
            Some(queue) => QueueName::new(queue).map_err(|error| internal(error.reason))?,
            None => default_queue.clone(),
        };
        let pool = match task.pool.as_ref().or(defaults.pool.as_ref()) {
            Some(pool) => {
                Some(PoolName::new(pool.clone()).map_err(|error| internal(error.reason))?)
            }
            None => None,
        };
        let labels = if defaults.labels.is_empty() {
            task.labels
        } else {
            let mut labels = defaults.labels.clone();
            labels.extend(task.labels);
            labels
        };
        let resources = match task.resources.as_ref().or(defaults.resources.as_ref()) {
            Some(spec) => Resources {
                cpu_millis: spec.cpu_millis().map_err(internal)?,
                memory_bytes: spec.memory_bytes().map_err(internal)?,
            },
            None => Resources::default(),
        };
        let templated = match &kind {
            TaskKind::Command(command) => {
                command.argv.iter().any(|argument| is_templated(argument))
                    || command.env.values().any(|value| is_templated(value))
                    || command.cwd.as_deref().is_some_and(is_templated)
            }
            TaskKind::Sensor(sensor) => match &sensor.condition {
                SensorCondition::File { path } => is_templated(path),
                SensorCondition::Http { url, .. } => is_templated(url),
                _ => false,
            },
            TaskKind::Noop | TaskKind::Custom(_) => false,
        };
        let mut outputs: Vec<AssetUri> = Vec::with_capacity(task.outputs.len());
        for output in task.outputs {
            let output = AssetUri::new(output).map_err(|error| internal(error.reason))?;
            if !outputs.contains(&output) {
                outputs.push(output);
            }
        }
        tasks.push(ResolvedTask {
            id: TaskId::new(task.id).map_err(|error| internal(error.reason))?,
            kind,
            depends_on,
            retries: task.retries.or(defaults.retries).unwrap_or(0),
            retry: RetryPolicy {
                delay: pick_duration(task.retry_delay, defaults.retry_delay)
                    .unwrap_or(builtin.delay),
                exponential_backoff: task
                    .retry_exponential_backoff
                    .or(defaults.retry_exponential_backoff)
                    .unwrap_or(builtin.exponential_backoff),
                max_delay: pick_duration(task.max_retry_delay, defaults.max_retry_delay)
                    .unwrap_or(builtin.max_delay),
                jitter: task
                    .retry_jitter
                    .or(defaults.retry_jitter)
                    .unwrap_or(builtin.jitter),
            },
            timeout: pick_duration(task.timeout, defaults.timeout),
            queue,
            priority: task.priority.or(defaults.priority).unwrap_or(0),
            pool_slots: if pool.is_some() {
                task.pool_slots.or(defaults.pool_slots).unwrap_or(1)
            } else {
                0
            },
            pool,
            labels,
            resources,
            max_active: task.max_active,
            outputs,
            sla: task.sla.map(SpecDuration::as_duration),
            templated,
            trigger_rule,
            branch,
            run_if: task.run_if,
            map_over,
        });
    }

    Ok(ValidatedDag {
        dag_id: DagId::new(id).map_err(|error| internal(error.reason))?,
        description: description.unwrap_or_default(),
        schedule: scheduling.display,
        trigger: scheduling.trigger,
        timezone: scheduling.timezone,
        catchup: scheduling.catchup,
        max_active_runs: scheduling.max_active_runs,
        params,
        sla: scheduling.sla,
        max_active_tasks,
        notify,
        tasks,
        canonical_json,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_only_when_close() {
        let fields = [
            "id",
            "command",
            "retries",
            "retry_delay",
            "queue",
            "depends_on",
        ];
        assert_eq!(did_you_mean("retires", fields), Some("retries"));
        assert_eq!(did_you_mean("dependson", fields), Some("depends_on"));
        assert_eq!(did_you_mean("queu", fields), Some("queue"));
        assert_eq!(did_you_mean("ib", fields), Some("id"));
        assert_eq!(did_you_mean("zzzzzz", fields), None);
        assert_eq!(did_you_mean("x", fields), None);
        assert_eq!(
            did_you_mean("id", fields),
            None,
            "the word itself is no suggestion"
        );
    }

    #[test]
    fn components_and_shortest_cycles() {
        // 0 → 1 → 2 → 0 with a chord 0 → 2; 3 → 3 alone; 4 → 5 → 4; 6 depends on 4.
        let dependencies = vec![
            vec![1, 2],
            vec![2],
            vec![0],
            vec![3],
            vec![5],
            vec![4],
            vec![4],
        ];
        let mut components = strongly_connected_components(&dependencies);
        for component in &mut components {
            component.sort_unstable();
        }
        components.sort();
        assert_eq!(components, [vec![0, 1, 2], vec![4, 5]]);

        let mut parent = vec![usize::MAX; dependencies.len()];
        let cycle = shortest_cycle(0, &dependencies, |task| task <= 2, &mut parent);
        assert_eq!(cycle, [0, 2], "the chord gives the shorter cycle 0 → 2 → 0");
        assert!(
            parent.iter().all(|&entry| entry == usize::MAX),
            "scratch space is left clean"
        );
    }

    #[test]
    fn report_is_capped_and_cuts_long_text() {
        let mut report = Report::default();
        for position in 0..MAX_REPORTED_VIOLATIONS + 5 {
            report.push(Place::Task(position).field("id"), "x".repeat(1_000));
        }
        let errors = report.into_errors().0;
        assert_eq!(errors.len(), MAX_REPORTED_VIOLATIONS + 1);
        assert_eq!(errors[0].reason.len(), MAX_REASON_BYTES + '…'.len_utf8());
        assert!(errors.last().unwrap().reason.starts_with("5 more problems"));
        assert_eq!(shorten("ééé".to_string(), 3), "é…");
    }
}
