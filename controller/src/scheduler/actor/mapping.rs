//! Dynamic fan-out (`map_over`): a task expanded at run time into one
//! instance per element of a list, and the expressions (`map_over`,
//! `run_if`) evaluated over the run's params and upstream outputs.
//!
//! An expanded task's instances are slots of the run past the plan's tasks
//! (`task[i]` in the API), each leased, retried and logged on its own. The
//! task itself stays `running` while they run and ends when the last one
//! does: failed if any failed, skipped if all were, success otherwise. Its
//! downstream see it as one upstream task, and read its output as the
//! list of its instances' outputs. The list an expansion went over is kept
//! in memory for rendering `{{ item }}` and recomputed from the same
//! inputs after a failover.
//!
//! One instance can be cleared or marked by hand (`task[3]`): a cleared
//! instance runs again and its task is running again until it ends; a
//! marked one counts for its task as if it had ended so.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_common::error::ApiError;
use baton_common::ids::RunId;
use baton_common::pb::api::TaskState;
use baton_common::states::{task_state_is_final, task_state_name};
use baton_common::template::TemplateContext;
use baton_common::time::now_micros;
use tracing::info;

use super::Scheduler;
use super::schedules::to_datetime;
use crate::plan::TaskIndex;
use crate::scheduler::state::{Ended, Instance, RunEntry};

impl Scheduler {
    /// Evaluates a task's expression (`field` is `run_if` or `map_over`)
    /// over the run's params and the outputs of its upstream tasks.
    pub(super) fn evaluate_expression(
        &self,
        run_id: RunId,
        index: TaskIndex,
        field: &str,
        expression: &str,
    ) -> Result<serde_json::Value, String> {
        let reads = &self.runs[&run_id].plan.expression_reads[index as usize];
        let inputs = self.template_inputs(run_id, reads);
        let entry = &self.runs[&run_id];
        let attempt = entry.slot(index).attempt + 1;
        let context = inputs.context(entry, index, attempt, None);
        self.renderer
            .evaluate(field, expression, &context)
            .map_err(|error| error.message)
    }

    /// What templates or expressions read that must first be computed: the
    /// run's params and the outputs of the tasks in `reads` (a plan's
    /// `template_reads` or `expression_reads` of a task).
    pub(super) fn template_inputs(&self, run_id: RunId, reads: &[TaskIndex]) -> TemplateInputs {
        let entry = &self.runs[&run_id];
        let params = match serde_json::from_str::<serde_json::Value>(&entry.params_json) {
            Ok(serde_json::Value::Object(params)) => params,
            _ => serde_json::Map::new(),
        };
        TemplateInputs {
            params,
            task_outputs: self.upstream_outputs(run_id, reads),
            run_id: run_id.to_string(),
        }
    }

    /// The outputs of the given plan tasks of a run, as templates read
    /// them: a succeeded task's output, and for an expanded task the list
    /// of its instances' outputs (`null` where none).
    pub(super) fn upstream_outputs(
        &self,
        run_id: RunId,
        reads: &[TaskIndex],
    ) -> BTreeMap<String, String> {
        let entry = &self.runs[&run_id];
        reads
            .iter()
            .filter_map(|&read| {
                let slot = entry.slot(read);
                if slot.state != TaskState::Success {
                    return None;
                }
                let id = entry.plan.task(read).id.to_string();
                match entry.mapped.get(&read) {
                    Some(group) => {
                        let outputs: Vec<&str> = (group.first..group.first + group.len)
                            .map(|instance| {
                                entry.slot(instance).output.as_deref().unwrap_or("null")
                            })
                            .collect();
                        Some((id, format!("[{}]", outputs.join(","))))
                    }
                    None => slot
                        .output
                        .as_deref()
                        .map(|output| (id, output.to_string())),
                }
            })
            .collect()
    }

    /// The list a mapped task goes over, evaluated once per run and kept.
    pub(super) fn map_items(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
    ) -> Result<Arc<Vec<serde_json::Value>>, String> {
        let entry = &self.runs[&run_id];
        if let Some(items) = entry.map_items.get(&index) {
            return Ok(Arc::clone(items));
        }
        let Some(map_over) = entry.plan.task(index).map_over.clone() else {
            return Err("the task has no map_over".into());
        };
        let value = self.evaluate_expression(run_id, index, "map_over", &map_over.expression)?;
        let items = match value {
            serde_json::Value::Array(items) => items,
            other => {
                return Err(format!(
                    "map_over `{}` gave {}; it must give a list",
                    map_over.expression,
                    describe(&other)
                ));
            }
        };
        if items.len() > map_over.max_length as usize {
            return Err(format!(
                "map_over `{}` gave {} items; max_map_length is {}",
                map_over.expression,
                items.len(),
                map_over.max_length
            ));
        }
        let items = Arc::new(items);
        if let Some(entry) = self.runs.get_mut(&run_id) {
            entry.map_items.insert(index, Arc::clone(&items));
        }
        Ok(items)
    }

    /// Expands a mapped task whose rule holds into one ready instance per
    /// item. Returns the task when it became final instead (an empty list
    /// skips it; a list that cannot be made fails it).
    pub(super) fn expand(&mut self, run_id: RunId, index: TaskIndex) -> Option<TaskIndex> {
        let items = match self.map_items(run_id, index) {
            Ok(items) => items,
            Err(error) => {
                self.fail_before_start(run_id, index, error);
                return Some(index);
            }
        };
        if items.is_empty() {
            self.end_without_running(
                run_id,
                index,
                TaskState::Skipped,
                Some("map_over gave an empty list".into()),
            );
            return Some(index);
        }
        let entry = self.runs.get_mut(&run_id)?;
        let len = items.len() as u32;
        let now = now_micros();
        // The task itself runs through its instances (no attempt of its own).
        entry.set_state(index, TaskState::Ready);
        entry.set_state(index, TaskState::Running);
        entry.slot_mut(index).started_at = now;
        let first = match entry.mapped.get(&index) {
            // Cleared and expanded again: the same instances run again.
            Some(group) if group.len == len => group.first,
            Some(group) => {
                let previous = group.len;
                self.fail_mapped_task(
                    run_id,
                    index,
                    format!(
                        "map_over now gives {len} items; this run expanded the task to {previous} instances before, and a cleared mapped task keeps them"
                    ),
                );
                return Some(index);
            }
            None => entry.add_instances(index, len),
        };
        info!(%run_id, task_id = %entry.plan.task(index).id, instances = len, "task expanded");
        for instance in first..first + len {
            let entry = self.runs.get_mut(&run_id)?;
            entry.set_state(instance, TaskState::Ready);
            self.queue_ready(run_id, instance);
        }
        self.touch(run_id);
        None
    }

    /// Fails a mapped task that was set running for its expansion.
    fn fail_mapped_task(&mut self, run_id: RunId, index: TaskIndex, error: String) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        entry.set_state(index, TaskState::Failed);
        let slot = entry.slot_mut(index);
        slot.ended_at = now_micros();
        slot.error = Some(error.into_boxed_str());
        self.touch(run_id);
    }

    /// An instance ended: its mapped task ends with the last of them.
    /// Returns the mapped task when it did.
    pub(super) fn instance_ended(
        &mut self,
        run_id: RunId,
        instance: Instance,
        how: Ended,
    ) -> Option<TaskIndex> {
        let entry = self.runs.get_mut(&run_id)?;
        let parent_running = entry.slot(instance.parent).state == TaskState::Running;
        let group = entry.mapped.get_mut(&instance.parent)?;
        group.count(how, true);
        if group.unfinished > 0 || !parent_running {
            return None;
        }
        let (state, error) = (group.outcome(), group.error());
        entry.set_state(instance.parent, state);
        let slot = entry.slot_mut(instance.parent);
        slot.ended_at = now_micros();
        slot.error = error;
        self.touch(run_id);
        if state == TaskState::Success {
            self.record_task_outputs(run_id, instance.parent);
        }
        Some(instance.parent)
    }
}

impl Scheduler {
    /// A task ended: if it is a mapped task that ended without expanding
    /// (again) (skipped, upstream failed, marked, or its list could not be
    /// made), instances left pending from an earlier expansion end with
    /// it, so nothing waits for them.
    pub(super) fn settle_unexpanded(&mut self, run_id: RunId, parent: TaskIndex) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let Some(group) = entry
            .mapped
            .get(&parent)
            .filter(|group| group.unfinished > 0)
        else {
            return;
        };
        let (first, len) = (group.first, group.len);
        let parent_state = entry.slot(parent).state;
        let (state, reason) = match parent_state {
            TaskState::UpstreamFailed => (TaskState::UpstreamFailed, None),
            _ => (
                TaskState::Skipped,
                Some(format!(
                    "`{}` ended {} without expanding again",
                    entry.plan.task(parent).id,
                    task_state_name(parent_state)
                )),
            ),
        };
        let now = now_micros();
        for index in first..first + len {
            if entry.slot(index).state != TaskState::Pending {
                continue;
            }
            entry.set_state(index, state);
            let slot = entry.slot_mut(index);
            slot.ended_at = now;
            slot.error = reason.clone().map(String::into_boxed_str);
            if let Some(group) = entry.mapped.get_mut(&parent) {
                group.count(Ended::of(state).unwrap_or(Ended::Skipped), true);
            }
        }
        self.touch(run_id);
    }

    /// Refuses a change to one instance while its task has not expanded
    /// (again): the instance runs, or not, with that expansion.
    pub(super) fn check_instance_expanded(
        &self,
        run_id: RunId,
        instance: Instance,
        action: &str,
    ) -> Result<(), ApiError> {
        let entry = &self.runs[&run_id];
        let parent_state = entry.slot(instance.parent).state;
        if matches!(parent_state, TaskState::Pending | TaskState::Ready) {
            let task = &entry.plan.task(instance.parent).id;
            return Err(ApiError::FailedPrecondition(format!(
                "`{}` waits for `{task}` to expand again; {action} it once `{task}` runs",
                task.instance(instance.map_index)
            )));
        }
        Ok(())
    }

    /// Clears one instance so it runs again, and with `include_downstream`
    /// everything downstream of its task. Its task is running again until
    /// the instance ends; the other instances keep their outcomes. Returns
    /// the ids cleared.
    pub(super) fn clear_instance(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
        instance: Instance,
        include_downstream: bool,
    ) -> Vec<String> {
        let parent = instance.parent;
        self.cancel_open_attempt(run_id, index, "task cleared by user");
        self.reopen_run(run_id);
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return Vec::new();
        };
        let plan = entry.plan.clone();
        let parent_state = entry.slot(parent).state;
        if task_state_is_final(parent_state) {
            // Its downstream no longer count how it ended; it ends again
            // with this instance.
            if let Some(how) = Ended::of(parent_state) {
                for &down in &plan.downstream[parent as usize] {
                    entry.tasks[down as usize].count_upstream(how, false);
                }
            }
            entry.set_state(parent, TaskState::Pending);
            entry.set_state(parent, TaskState::Ready);
            entry.set_state(parent, TaskState::Running);
            let slot = entry.slot_mut(parent);
            slot.ended_at = 0;
            slot.error = None;
            slot.output = None;
        }
        if let Some(how) = Ended::of(entry.slot(index).state)
            && let Some(group) = entry.mapped.get_mut(&parent)
        {
            group.count(how, false);
        }
        entry.set_state(index, TaskState::Pending);
        entry.slot_mut(index).reset_for_rerun();
        entry.set_state(index, TaskState::Ready);
        let mut cleared = vec![entry.task_id(index).to_string()];
        self.queue_ready(run_id, index);
        self.touch(run_id);
        if include_downstream {
            let downstream: Vec<TaskIndex> = plan
                .downstream_closure(parent)
                .into_iter()
                .filter(|&down| down != parent)
                .collect();
            cleared.extend(self.clear_set(run_id, &downstream));
        }
        cleared
    }

    /// Sets one instance succeeded, failed or skipped by hand. One still
    /// running ends now; one that had ended counts for its task the new
    /// way, and a task that had ended takes the outcome that follows.
    pub(super) fn mark_instance(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
        instance: Instance,
        to: TaskState,
        reason: &str,
    ) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        let from = entry.slot(index).state;
        if from == to {
            return;
        }
        self.cancel_open_attempt(
            run_id,
            index,
            &format!("marked {} by user", task_state_name(to)),
        );
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        entry.set_state_marked(index, to);
        let slot = entry.slot_mut(index);
        slot.ended_at = now_micros();
        slot.error = marked_error(to, reason);
        self.touch(run_id);
        let (Some(old), Some(new)) = (Ended::of(from), Ended::of(to)) else {
            // It had not ended: it ends now, as if it had run.
            self.task_ended(run_id, index);
            return;
        };
        let parent = instance.parent;
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let Some(group) = entry.mapped.get_mut(&parent) else {
            return;
        };
        group.count(old, false);
        group.count(new, true);
        let (outcome, error) = (group.outcome(), group.error());
        let parent_state = entry.slot(parent).state;
        if !task_state_is_final(parent_state) {
            // Its task ends with its last running instance.
            return;
        }
        if outcome != parent_state {
            self.apply_mark(run_id, parent, outcome, "");
        }
        if let Some(entry) = self.runs.get_mut(&run_id) {
            entry.slot_mut(parent).error = error;
        }
        if outcome == TaskState::Success {
            self.record_task_outputs(run_id, parent);
        }
    }
}

/// The run's params and the upstream outputs a task reads, computed once
/// for rendering its fields or evaluating an expression.
pub(super) struct TemplateInputs {
    params: serde_json::Map<String, serde_json::Value>,
    task_outputs: BTreeMap<String, String>,
    run_id: String,
}

impl TemplateInputs {
    /// The context of slot `index` (a task or a mapped instance, whose
    /// `item` is given) for its attempt `attempt`.
    pub(super) fn context<'a>(
        &'a self,
        entry: &'a RunEntry,
        index: TaskIndex,
        attempt: u32,
        item: Option<&'a serde_json::Value>,
    ) -> TemplateContext<'a> {
        TemplateContext {
            dag_id: entry.dag_id.as_str(),
            run_id: &self.run_id,
            task_id: entry.task(index).id.as_str(),
            attempt,
            logical_date: to_datetime(entry.origin.logical_date),
            data_interval_start: to_datetime(entry.origin.data_interval_start),
            data_interval_end: to_datetime(entry.origin.data_interval_end),
            timezone: entry.plan.settings.timezone,
            params: &self.params,
            task_outputs: &self.task_outputs,
            item,
            map_index: entry.instance(index).map(|instance| instance.map_index),
        }
    }
}

/// The error a task marked by hand shows: the user's reason, or what was
/// done; none for a success.
pub(super) fn marked_error(to: TaskState, reason: &str) -> Option<Box<str>> {
    match to {
        TaskState::Success => None,
        _ if reason.is_empty() => {
            Some(format!("marked {} by user", task_state_name(to)).into_boxed_str())
        }
        _ => Some(reason.to_string().into_boxed_str()),
    }
}

fn describe(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}
