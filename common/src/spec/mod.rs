//! The DAG file: its model, parsing from YAML or JSON, and validation.
//!
//! One entry point, [`parse_dag`], serves `baton dag validate` offline and
//! the controller's `RegisterDag`, so both report the same errors. It returns
//! a [`ValidatedDag`]: the tasks with `default_args` applied and dependencies
//! resolved to indices, plus the canonical JSON that is stored and compared
//! to decide whether a registration is a new version.
//!
//! # Layout
//! - `model`: the serde model of the document as written.
//! - `parse`: text → generic value → model, reporting unknown fields with a
//!   "did you mean" suggestion and type errors with their path.
//! - `validate`: ids, duplicates, dependencies, cycles (printed as
//!   `a → b → c → a`), limits; resolution into [`ResolvedTask`]s.
//! - `scheduling`: the DAG's `schedule`, `timezone`, dates, `catchup`,
//!   `max_active_runs` and `sla`, resolved into a [`DagTrigger`].
//! - `params`: typed run parameters ([`ParamsSpec`]): their declarations
//!   and the check of a run's params against them.
//! - `sensor`: sensor tasks' conditions and settings ([`SensorTask`]).
//! - `flow`: dependency semantics: trigger rules ([`TriggerRule`]),
//!   branches, `run_if` conditions and `map_over` expansion ([`MapOver`]).
//! - `templates`: the registration-time check of templated fields and of
//!   the `run_if` and `map_over` expressions (syntax, variables, params
//!   and task outputs read).
//! - `notify`: notifiers (webhooks told of run and task events), for DAG
//!   files and the controller's config file alike ([`Notifier`]).

mod flow;
mod model;
mod notify;
mod params;
mod parse;
mod scheduling;
mod sensor;
mod templates;
mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

pub use flow::{DEFAULT_MAX_MAP_LENGTH, MAX_MAP_LENGTH_LIMIT, MapOver, TriggerRule, branch_choice};
pub use model::{
    CommandSpec, DagSpec, ExternalTaskSensorSpec, HttpSensorSpec, NotifierSpec,
    ParamDeclarationSpec, ParamSpec, Quantity, ResourcesSpec, ScheduleDetail, ScheduleSpec,
    SecretHeaderSpec, SensorModeSpec, SensorSpec, SpecDuration, TaskDefaults, TaskKindSpec,
    TaskSpec, parse_cpu, parse_memory,
};
pub use notify::{
    MAX_NOTIFIERS, MAX_NOTIFY_URL_BYTES, Notifier, NotifierSource, NotifyEvent, NotifyFormat,
    SecretHeader, SecretValue, resolve_notifiers,
};
pub use params::{ParamDeclaration, ParamType, ParamsSpec};
pub use parse::parse_dag;
pub use sensor::{
    DEFAULT_POKE_INTERVAL, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SENSOR_TIMEOUT, MAX_RESCHEDULED_POKES,
    MIN_POKE_INTERVAL,
};

use crate::error::{ApiError, FieldViolation};
use crate::ids::{AssetUri, DagId, EventName, HandlerName, PoolName, QueueName, TaskId};
use crate::timetable::Timetable;

/// The queue of tasks that do not name one.
pub const DEFAULT_QUEUE: &str = "default";

/// Most retries a task may ask for.
pub const MAX_RETRIES: u32 = 100;

/// Most problems listed for one document; the rest are counted in a last
/// entry, so that the error of a badly broken document stays readable.
pub const MAX_REPORTED_VIOLATIONS: usize = 100;

/// Limits a DAG document must stay within. The controller's configuration
/// sets them; `baton dag validate` uses the defaults unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecLimits {
    /// Tasks per DAG.
    pub max_tasks: usize,
    /// Size of the document text, in bytes.
    pub max_spec_bytes: usize,
    /// Dependency edges in the whole DAG.
    pub max_dependencies: usize,
}

impl SpecLimits {
    /// Limits for specs that were validated before they were stored.
    pub const UNLIMITED: SpecLimits = SpecLimits {
        max_tasks: usize::MAX,
        max_spec_bytes: usize::MAX,
        max_dependencies: usize::MAX,
    };
}

impl Default for SpecLimits {
    fn default() -> Self {
        Self {
            max_tasks: 100_000,
            max_spec_bytes: 32 * 1024 * 1024,
            max_dependencies: 1_000_000,
        }
    }
}

/// Format of a DAG document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    Yaml,
    Json,
    /// JSON when the first non-blank character is `{`, YAML otherwise.
    Detect,
}

/// Runs of a DAG active at once unless it says otherwise.
pub const DEFAULT_MAX_ACTIVE_RUNS: u32 = 16;

/// Largest `max_active_runs`.
pub const MAX_ACTIVE_RUNS_LIMIT: u32 = 10_000;

/// A DAG document that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedDag {
    pub dag_id: DagId,
    pub description: String,
    /// The schedule for display: the cron text as written (`@daily`,
    /// `0 3 * * *`), `every 30m`, `events: a, b` or `assets: u1, u2`; `None`
    /// without a schedule. [`ValidatedDag::trigger`] is what it means.
    pub schedule: Option<String>,
    /// What starts runs besides manual triggers.
    pub trigger: DagTrigger,
    /// The DAG's time zone: cron expressions, local dates, `ds` and sensor
    /// times are read in it.
    pub timezone: chrono_tz::Tz,
    /// On: one run per interval missed since start_date, oldest first. Off:
    /// only the latest complete interval.
    pub catchup: bool,
    /// Runs of the DAG active (queued or running) at once.
    pub max_active_runs: u32,
    /// Typed run parameters; empty when the DAG declares none.
    pub params: ParamsSpec,
    /// A run must finish within this after its data interval ends.
    pub sla: Option<Duration>,
    /// Tasks of the DAG leased or running at once, across its runs.
    pub max_active_tasks: Option<u32>,
    /// Webhooks told of the DAG's run and task events; empty when the DAG
    /// declares none (the controller's defaults apply then).
    pub notify: Vec<Notifier>,
    /// Tasks in file order, with defaults applied.
    pub tasks: Vec<ResolvedTask>,
    /// The document re-serialized as compact JSON with a fixed field order:
    /// equal for documents that differ only in formatting, comments or
    /// YAML-versus-JSON.
    pub canonical_json: String,
    /// Lower-case hex SHA-256 of `canonical_json`.
    pub digest: String,
}

/// What starts a DAG's runs besides manual triggers.
#[derive(Debug, Clone, PartialEq)]
pub enum DagTrigger {
    /// No schedule: manual triggers (and backfills) only.
    Manual,
    /// `cron` or `every`: one run per data interval.
    Timetable(Timetable),
    /// A run each time one of these events is sent.
    Events(Vec<EventName>),
    /// A run when every one of these assets was updated since the DAG's
    /// last asset-triggered run.
    Assets(Vec<AssetUri>),
}

/// A task with `default_args` applied and dependencies resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTask {
    pub id: TaskId,
    pub kind: TaskKind,
    /// Indices into [`ValidatedDag::tasks`], without duplicates, in the order
    /// written.
    pub depends_on: Vec<usize>,
    pub retries: u32,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    pub queue: QueueName,
    /// Higher runs first among ready tasks of the same queue.
    pub priority: i32,
    /// The pool the task takes `pool_slots` of while leased or running.
    pub pool: Option<PoolName>,
    pub pool_slots: u32,
    /// Labels a worker must have (all of them, with these values).
    pub labels: BTreeMap<String, String>,
    /// Compute an attempt holds on its worker; zero when not declared.
    pub resources: Resources,
    /// Instances of this task leased or running at once, across runs.
    pub max_active: Option<u32>,
    /// Assets the task updates when it succeeds, without duplicates.
    pub outputs: Vec<AssetUri>,
    /// The task must finish within this after its run's data interval ends.
    pub sla: Option<Duration>,
    /// True when any templated field of the task contains a template ("{{"
    /// or "{%"); false lets the controller skip rendering.
    pub templated: bool,
    /// When the task may run, given its direct upstream tasks' states.
    pub trigger_rule: TriggerRule,
    /// The task's output (a task id or a list of them) names the direct
    /// downstream tasks that run; the others are skipped. Only command and
    /// custom tasks with a downstream task.
    pub branch: bool,
    /// An expression (its source, without braces) evaluated when the task
    /// would become ready: the task is skipped unless it holds.
    pub run_if: Option<String>,
    /// The task runs once per element of this expression's list.
    pub map_over: Option<MapOver>,
}

/// Compute in the units the scheduler counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Resources {
    pub fn is_zero(&self) -> bool {
        self.cpu_millis == 0 && self.memory_bytes == 0
    }

    /// True when `self` fits in `free`.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis && self.memory_bytes <= free.memory_bytes
    }
}

/// What a task runs. The variants with settings are boxed: a plan keeps one
/// per task for as long as its DAG is registered, most tasks of wide DAGs
/// are noops, and the sensor's settings would make every task's kind 128
/// bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    Command(Box<CommandTask>),
    Noop,
    Custom(Box<CustomTask>),
    Sensor(Box<SensorTask>),
}

/// A task that waits for a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorTask {
    pub condition: SensorCondition,
    /// Time between pokes.
    pub poke_interval: Duration,
    /// The sensor gives up this long after its first poke.
    pub timeout: Duration,
    /// On timeout the task is skipped instead of failed.
    pub soft_fail: bool,
    pub mode: SensorMode,
}

/// How a sensor waits between pokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorMode {
    /// Holds its worker slot between pokes.
    Poke,
    /// Gives its slot back between pokes (`up_for_reschedule`).
    Reschedule,
}

/// What a sensor waits for. `File::path` and `Http::url` may hold
/// templates, rendered when the task is dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorCondition {
    /// The path (or glob) exists on the worker.
    File { path: String },
    /// A request answers with one of `statuses`.
    Http {
        url: String,
        /// "GET" or "HEAD".
        method: String,
        statuses: Vec<u16>,
        request_timeout: Duration,
    },
    /// The run of `dag_id` whose logical date is this run's minus `delta`
    /// succeeded (or, with `task_id`, that task in it).
    ExternalTask {
        dag_id: DagId,
        task_id: Option<TaskId>,
        delta: Duration,
    },
    /// The wall clock time `at` (DAG time zone) on the local date of the
    /// run's data interval end has passed.
    Time { at: chrono::NaiveTime },
    /// `after` has passed since the run's data interval end.
    Delta { after: Duration },
}

impl SensorCondition {
    /// File and Http are poked by workers; the others the controller
    /// evaluates itself.
    pub fn runs_on_worker(&self) -> bool {
        matches!(
            self,
            SensorCondition::File { .. } | SensorCondition::Http { .. }
        )
    }

    /// `file`, `http`, `external_task`, `time` or `delta`, as DAG files name
    /// them.
    pub fn name(&self) -> &'static str {
        match self {
            SensorCondition::File { .. } => "file",
            SensorCondition::Http { .. } => "http",
            SensorCondition::ExternalTask { .. } => "external_task",
            SensorCondition::Time { .. } => "time",
            SensorCondition::Delta { .. } => "delta",
        }
    }
}

/// A task for an SDK worker that serves `handler`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomTask {
    pub handler: HandlerName,
    /// The task's `payload`, as compact JSON (`null` when not written).
    pub payload_json: String,
}

impl TaskKind {
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Command(_) => "command",
            TaskKind::Noop => "noop",
            TaskKind::Custom(_) => "custom",
            TaskKind::Sensor(_) => "sensor",
        }
    }
}

/// A process to run: `argv[0]` looked up in `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTask {
    pub argv: Vec<String>,
    /// `default_args.env` merged under the task's own `env`.
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
}

/// When the next attempt of a failed task becomes ready.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub delay: Duration,
    /// Double the delay after each failed attempt.
    pub exponential_backoff: bool,
    /// Cap on the delay.
    pub max_delay: Duration,
    /// Fraction in `[0, 1]` of the delay that is randomized away, so that many
    /// tasks failing together do not retry in lockstep.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(10),
            exponential_backoff: false,
            max_delay: Duration::from_secs(3_600),
            jitter: 0.0,
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `failed_attempt` (1 for the first
    /// attempt), with `random` drawn uniformly from `[0, 1)`:
    /// `min(max_delay, delay × 2^(failed_attempt − 1)) × (1 − jitter × random)`
    /// with backoff, `min(max_delay, delay) × (1 − jitter × random)` without.
    pub fn delay_for(&self, failed_attempt: u32, random: f64) -> Duration {
        let base = if self.exponential_backoff {
            let exponent = failed_attempt.saturating_sub(1).min(62);
            self.delay
                .saturating_mul(1u32.checked_shl(exponent.min(31)).unwrap_or(u32::MAX))
        } else {
            self.delay
        };
        let capped = base.min(self.max_delay);
        let factor = 1.0 - self.jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0);
        capped.mul_f64(factor)
    }
}

/// Every problem found in a DAG document, each naming its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.lines())]
pub struct SpecErrors(pub Vec<FieldViolation>);

impl SpecErrors {
    fn lines(&self) -> String {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        lines.join("\n")
    }
}

impl From<SpecErrors> for ApiError {
    /// Field paths are prefixed with `spec.` since the document travels in the
    /// request's `spec` field.
    fn from(errors: SpecErrors) -> Self {
        ApiError::InvalidArgument(
            errors
                .0
                .into_iter()
                .map(|violation| {
                    let field = if violation.field.is_empty() {
                        "spec".to_string()
                    } else {
                        format!("spec.{}", violation.field)
                    };
                    FieldViolation {
                        field,
                        reason: violation.reason,
                    }
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod scheduling_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            delay: Duration::from_secs(1),
            exponential_backoff: true,
            max_delay: Duration::from_secs(5),
            jitter: 0.0,
        };
        let delays: Vec<u64> = (1..=5)
            .map(|n| policy.delay_for(n, 0.5).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        let constant = RetryPolicy {
            exponential_backoff: false,
            ..policy
        };
        assert_eq!(constant.delay_for(4, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_only_shortens() {
        let policy = RetryPolicy {
            delay: Duration::from_secs(10),
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.delay_for(1, 0.0), Duration::from_secs(10));
        assert_eq!(policy.delay_for(1, 1.0), Duration::from_secs(5));
        assert!(policy.delay_for(1, 0.3) < Duration::from_secs(10));
    }
}
