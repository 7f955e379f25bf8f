//! Manual state changes (`MarkTask`): a user sets a task succeeded, failed
//! or skipped, in a running or finished run, and the run reacts at once as
//! if the task had ended so.
//!
//! Downstream tasks whose state followed from the old one without running
//! (upstream_failed, or skipped by a rule) decide again from their
//! upstream's new states; tasks that ran keep their outcome. A finished
//! run becomes running again when that leaves tasks to run, and otherwise
//! its outcome follows its leaf tasks again.

use baton_common::error::{ApiError, FieldViolation};
use baton_common::ids::{RunId, TaskId};
use baton_common::pb::api::{RunState, TaskInstance, TaskState};
use baton_common::pb::records::RunRecord;
use baton_common::states::{run_state_is_final, task_state_is_final, task_state_name};
use baton_common::time::now_micros;
use tracing::info;

use super::mapping::marked_error;
use super::{Command, Scheduler};
use crate::plan::TaskIndex;
use crate::scheduler::views::{run_record, task_record, task_view};

impl Scheduler {
    /// The slot a request names: a task, or one instance of a mapped task
    /// (`task[3]`) that this run expanded.
    pub(super) fn task_of_request(
        &self,
        run_id: RunId,
        task_id: &TaskId,
    ) -> Result<TaskIndex, ApiError> {
        let entry = self
            .runs
            .get(&run_id)
            .ok_or_else(|| ApiError::not_found("run", run_id))?;
        if let Some(index) = entry.index_of(task_id) {
            return Ok(index);
        }
        let (name, map_index) = task_id.split_instance();
        let reason = match (entry.plan.index_of(name), map_index) {
            (None, _) => format!(
                "dag `{}` version {} has no task `{name}`",
                entry.plan.dag_id, entry.plan.version
            ),
            (Some(index), Some(map_index)) => match entry.mapped.get(&index) {
                Some(group) => format!(
                    "`{name}` has {} instances in run {run_id}, `{name}[0]` to `{name}[{}]`; there is no instance {map_index}",
                    group.len,
                    group.len - 1
                ),
                None if entry.plan.task(index).map_over.is_some() => {
                    format!("`{name}` has not expanded in run {run_id}; it has no instances yet")
                }
                None => format!("`{name}` has no map_over; it has no instances"),
            },
            (Some(_), None) => unreachable!("index_of finds every plan task"),
        };
        Err(ApiError::InvalidArgument(vec![FieldViolation::new(
            "task_id", reason,
        )]))
    }

    pub(super) fn mark_task(&mut self, command: Command) {
        let Command::MarkTask { run_id, .. } = command else {
            return;
        };
        if !self.runs.contains_key(&run_id) {
            // A finished run: read it back first.
            self.load_run_then(run_id, command);
            return;
        }
        let Command::MarkTask {
            task_id,
            state,
            reason,
            reply,
            ..
        } = command
        else {
            return;
        };
        let result = self.mark(run_id, &task_id, state, &reason);
        self.reply_on_run(run_id, reply, result);
    }

    fn mark(
        &mut self,
        run_id: RunId,
        task_id: &TaskId,
        to: TaskState,
        reason: &str,
    ) -> Result<(RunRecord, TaskInstance), ApiError> {
        if !crate::scheduler::state::markable(to) {
            return Err(ApiError::invalid(
                "state",
                format!(
                    "{} cannot be set by hand; mark a task SUCCESS, FAILED or SKIPPED",
                    task_state_name(to)
                ),
            ));
        }
        let index = self.task_of_request(run_id, task_id)?;
        let entry = &self.runs[&run_id];
        if entry.state == RunState::Cancelled || entry.state == RunState::Queued {
            return Err(ApiError::FailedPrecondition(format!(
                "run {run_id} is {}; its tasks cannot be marked",
                baton_common::states::run_state_name(entry.state)
            )));
        }
        let from = entry.slot(index).state;
        if let Some(instance) = entry.instance(index) {
            self.check_instance_expanded(run_id, instance, "mark")?;
            self.mark_instance(run_id, index, instance, to, reason);
            let entry = &self.runs[&run_id];
            info!(%run_id, %task_id, from = task_state_name(from), to = task_state_name(to), "task marked by user");
            return Ok((run_record(entry), task_view(task_record(entry, index))));
        }
        if entry.mapped.contains_key(&index) && from == TaskState::Running {
            return Err(ApiError::FailedPrecondition(format!(
                "task `{task_id}` is running its mapped instances; mark it once they ended"
            )));
        }
        if from != to {
            self.cancel_open_attempt(
                run_id,
                index,
                &format!("marked {} by user", task_state_name(to)),
            );
            self.apply_mark(run_id, index, to, reason);
        }
        let entry = &self.runs[&run_id];
        info!(%run_id, %task_id, from = task_state_name(from), to = task_state_name(to), "task marked by user");
        Ok((run_record(entry), task_view(task_record(entry, index))))
    }

    pub(super) fn apply_mark(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
        to: TaskState,
        reason: &str,
    ) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let plan = entry.plan.clone();
        let closure: Vec<TaskIndex> = plan
            .downstream_closure(index)
            .into_iter()
            .filter(|&down| down != index)
            .collect();
        // What followed from the old state without running decides again.
        for &down in &closure {
            let slot = entry.slot(down);
            let derived = matches!(slot.state, TaskState::UpstreamFailed)
                || (slot.state == TaskState::Skipped && slot.attempt == slot.attempt_base);
            if derived {
                entry.set_state(down, TaskState::Pending);
                let slot = entry.slot_mut(down);
                slot.ended_at = 0;
                slot.error = None;
            }
        }
        entry.set_state_marked(index, to);
        let slot = entry.slot_mut(index);
        slot.ended_at = now_micros();
        slot.error = marked_error(to, reason);
        self.settle_unexpanded(run_id, index);
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        for &down in &closure {
            entry.recount_upstream(down);
        }
        if entry.unfinished > 0 {
            self.reopen_run(run_id);
        }
        self.touch(run_id);
        let decided: Vec<TaskIndex> = closure
            .iter()
            .filter_map(|&down| self.decide(run_id, down))
            .collect();
        self.on_task_ended(run_id);
        self.tasks_ended(run_id, decided);
        // Nothing left to run: the outcome follows the leaves again.
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        if run_state_is_final(entry.state) && entry.unfinished == 0 {
            let finished_as = entry.state;
            let outcome = if entry.failed_leaves().next().is_some() {
                RunState::Failed
            } else {
                RunState::Success
            };
            if outcome != finished_as && task_state_is_final(entry.slot(index).state) {
                self.reopen_run(run_id);
                self.check_run_done(run_id);
            }
        }
    }
}
