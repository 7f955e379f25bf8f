//! The serde model of a DAG document as written.
//!
//! These types say which fields exist and what type each one has; nothing
//! more. Ranges, ids, dependencies and defaults are the business of
//! `validate`, so that one pass can report every problem at once.
//!
//! Every field has a default so that `parse` can deserialize one field at a
//! time when a document has type errors, and report all of them with their
//! paths. Required fields (`id`, at least one task) are checked by `parse`
//! and `validate`, not by serde.
//!
//! Serializing a [`DagSpec`] gives its canonical form: fields in struct
//! order, maps sorted, fields that were not written left out, durations in
//! one spelling. The lists of known field names used for "unknown field"
//! reports come from these derives (through `serde_introspect`), so they
//! cannot drift from the structs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::params::ParamType;

/// A DAG document: its id, optional description and schedule, defaults
/// shared by its tasks, and the tasks.
///
/// Fields added after the first release are left out of the canonical form
/// when not written, so documents that do not use them keep their digest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagSpec {
    /// Empty when the document did not give one (reported by `parse`).
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When the DAG runs by itself: a cron expression or macro, or a
    /// mapping with one of `cron`, `every`, `events` and `assets`. A string
    /// stays a string in the canonical form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// IANA name of the time zone cron expressions, local dates and `ds`
    /// are read in; UTC when not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// First data interval's earliest start, as written (a date, a local
    /// date and time, or RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<String>,
    /// Last data interval's latest start, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date: Option<String>,
    /// Run every interval missed since start_date (true) or only the latest
    /// (false, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchup: Option<bool>,
    /// Runs of the DAG active at once (16 when not written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_runs: Option<u32>,
    /// Typed run parameters, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamSpec>,
    /// A run must finish within this after its data interval ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<SpecDuration>,
    /// Settings every task gets unless it sets them itself. An empty
    /// `default_args: {}` and a missing one are the same document.
    #[serde(default, skip_serializing_if = "TaskDefaults::is_empty")]
    pub default_args: TaskDefaults,
    /// At most this many of the DAG's tasks leased or running at once,
    /// across all its runs (Airflow's `max_active_tasks`); unlimited when
    /// not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_tasks: Option<u32>,
    /// Webhooks told when a run fails or succeeds, a task's last attempt
    /// fails, or an SLA is missed. Without any, the controller's default
    /// notifiers apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifierSpec>,
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
}

/// One notifier as written: in a DAG's `notify` list, or in the
/// controller's config file as a default (`[[notify.default]]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierSpec {
    /// Event names (`run_failed`, ...); the failure events when not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<String>>,
    /// Where the POST goes; empty when not written (reported by checks).
    #[serde(default)]
    pub url: String,
    /// `json` (the default) or `slack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_header: Option<SecretHeaderSpec>,
}

/// A header sent with every POST so the receiver can tell the controller
/// from anyone else. Its value comes from an environment variable of the
/// controller (`value_env`); a literal `value` is accepted only in the
/// controller's config file, never in a DAG file, which is stored and shown.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretHeaderSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl fmt::Debug for SecretHeaderSpec {
    // The literal value is a secret: never printed, even in debug logs.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SecretHeaderSpec")
            .field("name", &self.name)
            .field("value_env", &self.value_env)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The `default_args` of a DAG: the task settings that can be shared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<SpecDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_exponential_backoff: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_delay: Option<SpecDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_jitter: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Slots of the pool one attempt takes (1 when not written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_slots: Option<u32>,
    /// Worker labels the task needs: it runs only on a worker whose labels
    /// include every one of these. Merged under each task's own `labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Compute one attempt holds on its worker while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,
    /// Merged under each command task's own `env`; the task's value wins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The trigger rule of every task that does not set one (`all_success`
    /// when not written), as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_rule: Option<String>,
}

impl TaskDefaults {
    /// True when no field is set, which is how a missing `default_args`
    /// deserializes.
    pub fn is_empty(&self) -> bool {
        *self == TaskDefaults::default()
    }
}

/// One task as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Empty when the task did not give one (reported by `parse`).
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `command` when not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TaskKindSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Ids of the tasks this one runs after, as written: duplicates are kept
    /// here and removed on resolution. A single string is read as a list of
    /// one, and always written back as a list.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub depends_on: Vec<String>,
    /// When the task may run given its upstream tasks' states
    /// (`all_success` when not written), as written: checked against the
    /// rule names by `validate`, which suggests the closest one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_rule: Option<String>,
    /// The task's output names the direct downstream tasks that run (the
    /// others are skipped). `kind: branch` is the same on a command task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<bool>,
    /// An expression that must hold for the task to run; it is skipped
    /// otherwise.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "run_if_expression"
    )]
    pub run_if: Option<String>,
    /// An expression giving a list: the task runs once per element.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "map_over_expression"
    )]
    pub map_over: Option<String>,
    /// Most elements `map_over` may give (10,000 when not written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_map_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<SpecDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_exponential_backoff: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_delay: Option<SpecDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_jitter: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Slots of the pool one attempt takes (1 when not written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_slots: Option<u32>,
    /// Worker labels the task needs: it runs only on a worker whose labels
    /// include every one of these. Merged under each task's own `labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Compute one attempt holds on its worker while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,
    /// At most this many instances of this task leased or running at once,
    /// across all runs of the DAG (Airflow's `max_active_tis_per_dag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active: Option<u32>,
    /// `kind: custom`: the handler a worker must declare to run the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// `kind: custom`: any JSON value, given to the handler as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// `kind: sensor`: the condition waited for and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<SensorSpec>,
    /// Assets the task updates when it succeeds. A single string is read as
    /// a list of one.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub outputs: Vec<String>,
    /// The task must finish within this after its run's data interval ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<SpecDuration>,
}

/// The `schedule` of a DAG as written.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleSpec {
    /// `schedule: "0 3 * * *"` or `schedule: "@daily"`.
    Cron(String),
    /// `schedule: {cron: …}`, `{every: …}`, `{events: …}` or `{assets: …}`.
    Detailed(ScheduleDetail),
}

/// The mapping form of `schedule`: exactly one field is expected (checked
/// by `validate`, so that a mapping with two reports both).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<SpecDuration>,
    /// A single string is read as a list of one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_one_or_many"
    )]
    pub events: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_one_or_many"
    )]
    pub assets: Option<Vec<String>>,
}

impl Serialize for ScheduleSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ScheduleSpec::Cron(expression) => serializer.serialize_str(expression),
            ScheduleSpec::Detailed(detail) => detail.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ScheduleSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScheduleVisitor;

        impl<'de> Visitor<'de> for ScheduleVisitor {
            type Value = ScheduleSpec;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(
                    "a cron expression (\"0 3 * * *\", \"@daily\") or a mapping with `cron`, `every`, `events` or `assets`",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ScheduleSpec, E> {
                Ok(ScheduleSpec::Cron(value.to_string()))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<ScheduleSpec, E> {
                Ok(ScheduleSpec::Cron(value))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ScheduleSpec, A::Error> {
                ScheduleDetail::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ScheduleSpec::Detailed)
            }
        }

        deserializer.deserialize_any(ScheduleVisitor)
    }
}

/// One declared run parameter as written.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamSpec {
    /// `limit: {type: integer, default: 100, minimum: 1}`.
    Declared(ParamDeclarationSpec),
    /// `tags: [a, b]`: any value but a mapping is the default, and its JSON
    /// type the param's type.
    Default(serde_json::Value),
}

/// The mapping form of a param declaration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamDeclarationSpec {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub param_type: Option<ParamType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The allowed values (`enum`).
    #[serde(rename = "enum", default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<serde_json::Value>>,
    /// Kept as written (`1`, not `1.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<serde_json::Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
}

impl Serialize for ParamSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ParamSpec::Declared(declaration) => declaration.serialize(serializer),
            ParamSpec::Default(value) => value.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ParamSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParamVisitor;

        impl<'de> Visitor<'de> for ParamVisitor {
            type Value = ParamSpec;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter
                    .write_str("a param declaration (a mapping with `type`) or a default value")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ParamSpec, A::Error> {
                ParamDeclarationSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ParamSpec::Declared)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ParamSpec, A::Error> {
                serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(ParamSpec::Default)
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<ParamSpec, E> {
                Ok(ParamSpec::Default(value.into()))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ParamSpec, E> {
                Ok(ParamSpec::Default(value.into()))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ParamSpec, E> {
                Ok(ParamSpec::Default(value.into()))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<ParamSpec, E> {
                serde_json::Number::from_f64(value)
                    .map(|number| ParamSpec::Default(serde_json::Value::Number(number)))
                    .ok_or_else(|| E::custom(format!("{value} is not a finite number")))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ParamSpec, E> {
                Ok(ParamSpec::Default(value.into()))
            }

            fn visit_unit<E: de::Error>(self) -> Result<ParamSpec, E> {
                Ok(ParamSpec::Default(serde_json::Value::Null))
            }
        }

        deserializer.deserialize_any(ParamVisitor)
    }
}

/// The `sensor` of a sensor task as written: one condition (`file`, `http`,
/// `external_task`, `time` or `delta`) and how to wait for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorSpec {
    /// A path or glob that must exist on the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSensorSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_task: Option<ExternalTaskSensorSpec>,
    /// `HH:MM` or `HH:MM:SS` in the DAG's time zone, on the local date of
    /// the run's data interval end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Holds once this long has passed since the data interval's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<SpecDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poke_interval: Option<SpecDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_fail: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SensorModeSpec>,
}

/// `sensor.http`: a request that must answer with an accepted status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSensorSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `GET` (the default) or `HEAD`, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// One status or a list of them; always written back as a list.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_statuses"
    )]
    pub status: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<SpecDuration>,
}

/// `sensor.external_task`: another DAG's run (or one of its tasks)
/// succeeded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalTaskSensorSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The other run's logical date is this run's minus `delta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<SpecDuration>,
}

/// `sensor.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorModeSpec {
    /// Holds its worker slot between pokes.
    Poke,
    /// Gives its slot back between pokes.
    Reschedule,
}

/// The `resources` of a task: `cpu` in cores (`0.5`, `2`) or millicores
/// (`"500m"`), `memory` in bytes or with a unit (`"512Mi"`, `"2Gi"`,
/// `"1G"`). Kept as written; [`ResourcesSpec::cpu_millis`] and
/// [`ResourcesSpec::memory_bytes`] read them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// A number or a string with a unit, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    Number(f64),
    Text(String),
}

impl ResourcesSpec {
    /// Thousandths of a core; an error names what is wrong.
    pub fn cpu_millis(&self) -> Result<u64, String> {
        self.cpu.as_ref().map_or(Ok(0), parse_cpu)
    }

    pub fn memory_bytes(&self) -> Result<u64, String> {
        self.memory.as_ref().map_or(Ok(0), parse_memory)
    }
}

/// `0.5` or `"0.5"` cores, or `"500m"` millicores, to millicores (> 0).
pub fn parse_cpu(quantity: &Quantity) -> Result<u64, String> {
    let millis = match quantity {
        Quantity::Number(cores) => cores * 1000.0,
        Quantity::Text(text) => {
            let text = text.trim();
            match text.strip_suffix('m') {
                Some(millis) => millis.parse::<f64>().map_err(|_| {
                    format!("`{text}` is not a CPU amount; write cores (`0.5`, `2`) or millicores (`\"500m\"`)")
                })?,
                None => {
                    text.parse::<f64>().map_err(|_| {
                        format!("`{text}` is not a CPU amount; write cores (`0.5`, `2`) or millicores (`\"500m\"`)")
                    })? * 1000.0
                }
            }
        }
    };
    if !millis.is_finite() || !(1.0..=1e9).contains(&millis) || millis.fract() != 0.0 {
        return Err(format!(
            "CPU must be a whole number of millicores from 1m to 1000000 cores; got {millis}m"
        ));
    }
    Ok(millis as u64)
}

/// `1073741824`, `"512Mi"`, `"2Gi"`, `"1G"`, `"100M"`, `"64Ki"`, `"1k"` to
/// bytes (> 0).
pub fn parse_memory(quantity: &Quantity) -> Result<u64, String> {
    let bytes = match quantity {
        Quantity::Number(bytes) => *bytes,
        Quantity::Text(text) => {
            let text = text.trim();
            let split = text
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(text.len());
            let (number, unit) = text.split_at(split);
            let factor: f64 = match unit.trim() {
                "" => 1.0,
                "k" | "K" | "kB" | "KB" => 1e3,
                "M" | "MB" => 1e6,
                "G" | "GB" => 1e9,
                "T" | "TB" => 1e12,
                "Ki" | "KiB" => 1024.0,
                "Mi" | "MiB" => 1024.0 * 1024.0,
                "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
                "Ti" | "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
                other => {
                    return Err(format!(
                        "unknown memory unit `{other}`; use one of k, M, G, T, Ki, Mi, Gi, Ti"
                    ));
                }
            };
            let number: f64 = number.parse().map_err(|_| {
                format!("`{text}` is not a memory amount (e.g. `\"512Mi\"`, `\"2G\"`)")
            })?;
            number * factor
        }
    };
    if !bytes.is_finite() || !(1.0..=1e18).contains(&bytes) {
        return Err(format!(
            "memory must be from 1 byte to 1 EB; got {bytes} bytes"
        ));
    }
    Ok(bytes.round() as u64)
}

/// The `kind` field of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKindSpec {
    /// Runs a process.
    Command,
    /// Runs nothing and succeeds: a join point or a placeholder.
    Noop,
    /// Runs on a worker that declared the task's `handler` (an SDK worker
    /// in any language), which gets the task's `payload`.
    Custom,
    /// Waits for the condition of its `sensor`.
    Sensor,
    /// A command task whose output names the direct downstream tasks that
    /// run: `kind: command` with `branch: true`. Kept as written in the
    /// canonical form.
    Branch,
}

impl TaskKindSpec {
    pub fn name(self) -> &'static str {
        match self {
            TaskKindSpec::Command => "command",
            TaskKindSpec::Noop => "noop",
            TaskKindSpec::Custom => "custom",
            TaskKindSpec::Sensor => "sensor",
            TaskKindSpec::Branch => "branch",
        }
    }

    /// The kind that runs: `branch` runs as `command`.
    pub fn runs_as(self) -> TaskKindSpec {
        match self {
            TaskKindSpec::Branch => TaskKindSpec::Command,
            other => other,
        }
    }
}

/// The `command` of a task: a list of arguments run as is, or a string run
/// by `sh -c`. Kept as written so the canonical form shows what the user
/// wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandSpec {
    /// `command: "gzip -9 out/*.csv"`, run as `sh -c <string>`.
    Shell(String),
    /// `command: ["python", "extract.py"]`, run without a shell.
    Argv(Vec<String>),
}

impl CommandSpec {
    /// The argument vector to execute.
    pub fn to_argv(&self) -> Vec<String> {
        self.clone().into_argv()
    }

    /// The argument vector to execute, without copying.
    pub fn into_argv(self) -> Vec<String> {
        match self {
            CommandSpec::Shell(script) => vec!["sh".to_string(), "-c".to_string(), script],
            CommandSpec::Argv(argv) => argv,
        }
    }
}

impl Serialize for CommandSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CommandSpec::Shell(script) => serializer.serialize_str(script),
            CommandSpec::Argv(argv) => {
                let mut seq = serializer.serialize_seq(Some(argv.len()))?;
                for arg in argv {
                    seq.serialize_element(arg)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for CommandSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CommandVisitor;

        impl<'de> Visitor<'de> for CommandVisitor {
            type Value = CommandSpec;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a list of arguments or a shell command string")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<CommandSpec, E> {
                Ok(CommandSpec::Shell(value.to_string()))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<CommandSpec, E> {
                Ok(CommandSpec::Shell(value))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandSpec, A::Error> {
                let mut argv = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                Ok(CommandSpec::Argv(argv))
            }
        }

        deserializer.deserialize_any(CommandVisitor)
    }
}

/// `depends_on: a` is `depends_on: [a]`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;

    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a task id or a list of task ids")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Vec<String>, E> {
            Ok(vec![value.to_string()])
        }

        fn visit_string<E: de::Error>(self, value: String) -> Result<Vec<String>, E> {
            Ok(vec![value])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(id) = seq.next_element::<String>()? {
                ids.push(id);
            }
            Ok(ids)
        }
    }

    deserializer.deserialize_any(OneOrMany)
}

/// An expression field: a string. Other values are refused with an example
/// of the field, since YAML reads `run_if: false` as a boolean and
/// `map_over: [1, 2]` as a list.
fn expression<'de, D: Deserializer<'de>>(
    deserializer: D,
    example: &'static str,
) -> Result<Option<String>, D::Error> {
    struct ExpressionVisitor(&'static str);

    impl Visitor<'_> for ExpressionVisitor {
        type Value = String;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(formatter, "an expression in a string, such as {}", self.0)
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_string())
        }

        fn visit_string<E: de::Error>(self, value: String) -> Result<String, E> {
            Ok(value)
        }
    }

    deserializer
        .deserialize_any(ExpressionVisitor(example))
        .map(Some)
}

fn run_if_expression<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    expression(
        deserializer,
        "\"params.full\" or \"tasks.count.output.rows > 0\"",
    )
}

fn map_over_expression<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    expression(
        deserializer,
        "\"tasks.list.output.files\", \"params.items\" or \"[1, 2, 3]\"",
    )
}

/// `events: a` is `events: [a]`, in a field that distinguishes absent
/// from empty.
fn some_one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many(deserializer).map(Some)
}

/// `status: 200` is `status: [200]`.
fn some_statuses<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u16>>, D::Error> {
    struct Statuses;

    impl<'de> Visitor<'de> for Statuses {
        type Value = Vec<u16>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("an HTTP status or a list of them")
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Vec<u16>, E> {
            u16::try_from(value)
                .map(|status| vec![status])
                .map_err(|_| E::custom(format!("{value} is not an HTTP status")))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Vec<u16>, E> {
            u16::try_from(value)
                .map(|status| vec![status])
                .map_err(|_| E::custom(format!("{value} is not an HTTP status")))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u16>, A::Error> {
            let mut statuses = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(status) = seq.next_element::<u16>()? {
                statuses.push(status);
            }
            Ok(statuses)
        }
    }

    deserializer.deserialize_any(Statuses).map(Some)
}

/// A duration as written in a document: a humantime string (`"500ms"`,
/// `"30s"`, `"1h 30m"`) or a non-negative number of seconds (`30`, `0.5`).
///
/// It serializes as the humantime spelling of the parsed value, so `60`,
/// `"60s"` and `"1m"` all become `"1m"` in the canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SpecDuration(pub Duration);

impl SpecDuration {
    /// Longest accepted duration: what fits in 64 bits of nanoseconds
    /// (about 584 years), so that deadlines computed from it cannot overflow.
    pub const MAX: Duration = Duration::from_nanos(u64::MAX);

    pub fn as_duration(self) -> Duration {
        self.0
    }

    /// Reads the string form; the error is a sentence naming the value.
    pub fn parse(text: &str) -> Result<SpecDuration, String> {
        let trimmed = text.trim();
        if trimmed.starts_with('-') {
            return Err(format!(
                "duration `{text}` is negative; durations must be zero or more"
            ));
        }
        let duration = humantime::parse_duration(trimmed).map_err(|error| {
            format!("`{text}` is not a duration ({error}); write for example `500ms`, `30s`, `5m` or `1h 30m`")
        })?;
        Self::checked(duration, text)
    }

    /// Reads a number of seconds.
    pub fn from_seconds(seconds: f64) -> Result<SpecDuration, String> {
        if seconds.is_nan() {
            return Err("a duration must be a number of seconds, not NaN".to_string());
        }
        if seconds < 0.0 {
            return Err(format!(
                "duration `{seconds}` is negative; durations must be zero or more"
            ));
        }
        let nanos = (seconds * 1e9).round();
        if nanos > u64::MAX as f64 {
            return Err(Self::too_long(&seconds.to_string()));
        }
        Ok(SpecDuration(Duration::from_nanos(nanos as u64)))
    }

    fn checked(duration: Duration, written: &str) -> Result<SpecDuration, String> {
        if duration > Self::MAX {
            Err(Self::too_long(written))
        } else {
            Ok(SpecDuration(duration))
        }
    }

    fn too_long(written: &str) -> String {
        format!(
            "duration `{written}` is too long; the limit is {}",
            humantime::format_duration(Self::MAX)
        )
    }
}

impl From<Duration> for SpecDuration {
    fn from(duration: Duration) -> Self {
        SpecDuration(duration)
    }
}

impl fmt::Display for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_duration(self.0), f)
    }
}

impl Serialize for SpecDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpecDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = SpecDuration;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(
                    "a duration such as \"30s\", \"5m\" or \"1h 30m\", or a number of seconds",
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<SpecDuration, E> {
                SpecDuration::parse(value).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<SpecDuration, E> {
                SpecDuration::checked(Duration::from_secs(value), &value.to_string())
                    .map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<SpecDuration, E> {
                match u64::try_from(value) {
                    Ok(seconds) => self.visit_u64(seconds),
                    Err(_) => Err(E::custom(format!(
                        "duration `{value}` is negative; durations must be zero or more"
                    ))),
                }
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<SpecDuration, E> {
                SpecDuration::from_seconds(value).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_both_forms_and_write_one() {
        let sixty: SpecDuration = serde_json::from_str("60").unwrap();
        let minute: SpecDuration = serde_json::from_str("\"1m\"").unwrap();
        assert_eq!(sixty, minute);
        assert_eq!(serde_json::to_string(&sixty).unwrap(), "\"1m\"");
        let half: SpecDuration = serde_json::from_str("0.5").unwrap();
        assert_eq!(half.0, Duration::from_millis(500));
        let mixed: SpecDuration = serde_json::from_str("\"1h 30m\"").unwrap();
        assert_eq!(mixed.0, Duration::from_secs(5_400));
        assert_eq!(mixed.to_string(), "1h 30m");
    }

    #[test]
    fn durations_refuse_negative_and_nonsense() {
        let error = serde_json::from_str::<SpecDuration>("-5")
            .unwrap_err()
            .to_string();
        assert!(error.contains("negative"), "{error}");
        let error = serde_json::from_str::<SpecDuration>("\"-5s\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("negative"), "{error}");
        let error = serde_json::from_str::<SpecDuration>("\"5 parsecs\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`5 parsecs` is not a duration"), "{error}");
        let error = serde_json::from_str::<SpecDuration>("1e30")
            .unwrap_err()
            .to_string();
        assert!(error.contains("too long"), "{error}");
    }

    #[test]
    fn humantime_spelling_reads_back_exactly() {
        for nanos in [
            0,
            1,
            999,
            1_000_000,
            1_500_000_000,
            86_400_000_000_000,
            123_456_789_987_654_321,
            u64::MAX,
        ] {
            let duration = SpecDuration(Duration::from_nanos(nanos));
            let back = SpecDuration::parse(&duration.to_string()).unwrap();
            assert_eq!(back, duration, "{duration}");
        }
    }

    #[test]
    fn command_is_a_string_or_a_list() {
        let shell: CommandSpec = serde_json::from_str("\"echo hi\"").unwrap();
        assert_eq!(shell.to_argv(), ["sh", "-c", "echo hi"]);
        assert_eq!(serde_json::to_string(&shell).unwrap(), "\"echo hi\"");
        let argv: CommandSpec = serde_json::from_str("[\"echo\", \"hi\"]").unwrap();
        assert_eq!(argv, CommandSpec::Argv(vec!["echo".into(), "hi".into()]));
        assert_eq!(serde_json::to_string(&argv).unwrap(), "[\"echo\",\"hi\"]");
        let error = serde_json::from_str::<CommandSpec>("5")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("expected a list of arguments or a shell command string"),
            "{error}"
        );
    }
}
