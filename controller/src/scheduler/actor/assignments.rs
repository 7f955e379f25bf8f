//! What a worker is told to run: a task's `Assign` kind, with its templates
//! rendered at dispatch time (params, the run's dates, upstream outputs).
//!
//! Tasks without templates take a path that renders nothing. A template
//! that cannot be rendered (an undefined name, an invalid URL after
//! rendering) fails the task before any worker is involved, with the error
//! naming the field and the name; it is not retried, since it would fail
//! the same way.

use std::collections::BTreeMap;

use baton_common::ids::{AttemptId, RunId};
use baton_common::pb::api::{self, AttemptOutcome, TaskState};
use baton_common::spec::{SensorCondition, SensorMode, TaskKind};
use baton_common::time::{Micros, duration_to_proto, micros_to_timestamp_opt, now_micros};
use tracing::info;

use super::Scheduler;
use crate::plan::{TaskIndex, templated_fields};

impl Scheduler {
    /// The kind of the `Assign` for a task's next attempt.
    /// `sensor_deadline` is the deadline of a sensor's attempt.
    pub(super) fn assignment_kind(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
        attempt: u32,
        sensor_deadline: Micros,
    ) -> Result<api::assign::Kind, String> {
        let rendered = if self.runs[&run_id].task(index).templated {
            Some(self.render_fields(run_id, index, attempt)?)
        } else {
            None
        };
        let entry = &self.runs[&run_id];
        let task = entry.task(index);
        let field = |path: &str, written: &str| -> String {
            rendered
                .as_ref()
                .and_then(|fields| fields.get(path).cloned())
                .unwrap_or_else(|| written.to_string())
        };
        Ok(match &task.kind {
            TaskKind::Command(command) => api::assign::Kind::Command(api::CommandTask {
                argv: command
                    .argv
                    .iter()
                    .enumerate()
                    .map(|(position, arg)| field(&format!("command[{position}]"), arg))
                    .collect(),
                env: command
                    .env
                    .iter()
                    .map(|(name, value)| (name.clone(), field(&format!("env.{name}"), value)))
                    .collect(),
                cwd: command
                    .cwd
                    .as_deref()
                    .map(|cwd| field("cwd", cwd))
                    .unwrap_or_default(),
            }),
            TaskKind::Noop => api::assign::Kind::Noop(api::NoopTask {}),
            TaskKind::Custom(custom) => api::assign::Kind::Custom(api::CustomTask {
                handler: custom.handler.to_string(),
                payload_json: custom.payload_json.clone(),
            }),
            TaskKind::Sensor(sensor) => {
                let condition = match &sensor.condition {
                    SensorCondition::File { path } => {
                        api::sensor_task::Condition::File(api::FileCondition {
                            path: field("sensor.file", path),
                        })
                    }
                    SensorCondition::Http {
                        url,
                        method,
                        statuses,
                        request_timeout,
                    } => {
                        let url = field("sensor.http.url", url);
                        check_url(&url)?;
                        api::sensor_task::Condition::Http(api::HttpCondition {
                            url,
                            method: method.clone(),
                            statuses: statuses.iter().map(|&status| u32::from(status)).collect(),
                            request_timeout: Some(duration_to_proto(*request_timeout)),
                        })
                    }
                    SensorCondition::ExternalTask { .. }
                    | SensorCondition::Time { .. }
                    | SensorCondition::Delta { .. } => {
                        return Err(format!(
                            "task `{}` is a sensor the controller evaluates; it is never sent to a worker",
                            task.id
                        ));
                    }
                };
                api::assign::Kind::Sensor(api::SensorTask {
                    condition: Some(condition),
                    poke_interval: Some(duration_to_proto(sensor.poke_interval)),
                    reschedule: sensor.mode == SensorMode::Reschedule,
                    deadline: micros_to_timestamp_opt(sensor_deadline),
                })
            }
        })
    }

    /// Every templated field of the task rendered, by its path.
    fn render_fields(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
        attempt: u32,
    ) -> Result<BTreeMap<String, String>, String> {
        let entry = &self.runs[&run_id];
        let plan_index = entry.plan_index(index);
        let instance = entry.instance(index);
        let items = match instance {
            Some(instance) => Some(self.map_items(run_id, instance.parent)?),
            None => None,
        };
        let item = match (instance, &items) {
            (Some(instance), Some(items)) => items.get(instance.map_index as usize),
            _ => None,
        };
        let reads = &self.runs[&run_id].plan.template_reads[plan_index as usize];
        let inputs = self.template_inputs(run_id, reads);
        let entry = &self.runs[&run_id];
        let task = entry.plan.task(plan_index);
        let context = inputs.context(entry, index, attempt, item);
        let mut rendered = BTreeMap::new();
        for (path, source) in templated_fields(task) {
            if !baton_common::template::is_templated(source) {
                continue;
            }
            let value = self
                .renderer
                .render(&path, source, &context)
                .map_err(|error| error.message)?;
            rendered.insert(path, value);
        }
        Ok(rendered)
    }

    /// Fails a task that cannot start (a template that does not render, a
    /// condition or expansion that cannot be evaluated): one attempt,
    /// recorded with the error, no retry, since it would fail the same
    /// way. The caller tells its downstream (`task_ended`).
    pub(super) fn fail_before_start(&mut self, run_id: RunId, index: TaskIndex, error: String) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        if entry.slot(index).state == TaskState::Pending {
            entry.set_state(index, TaskState::Ready);
        }
        if !entry.set_state(index, TaskState::Failed) {
            return;
        }
        let now = now_micros();
        let task_id = entry.task_id(index);
        let dag_id = entry.dag_id.clone();
        let slot = entry.slot_mut(index);
        let attempt = slot.begin_attempt(AttemptId::generate(), None, now);
        slot.started_at = now;
        slot.ended_at = now;
        slot.outcome = AttemptOutcome::Error;
        slot.error = Some(error.clone().into_boxed_str());
        info!(%dag_id, %run_id, %task_id, attempt, %error, "task failed before it started");
        self.record_attempt_end(run_id, index, 0);
        self.touch(run_id);
    }
}

/// A sensor URL after rendering: absolute http or https.
fn check_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
        Ok(parsed) => Err(format!(
            "sensor.http.url: `{url}` has the scheme `{}`; only http and https are polled",
            parsed.scheme()
        )),
        Err(error) => Err(format!(
            "sensor.http.url: `{url}` is not a valid URL after rendering ({error})"
        )),
    }
}
