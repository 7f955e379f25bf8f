//! How a task's end moves the rest of its run: its direct downstream count
//! it and decide by their trigger rules (`scheduler/rules.rs`), branches
//! skip the paths they did not choose, `run_if` conditions and `map_over`
//! expansions are evaluated when a task would run, and the run's outcome
//! follows from its leaf tasks once every task is final.
//!
//! An ended task touches only its direct downstream (O(out-degree)), each
//! of which decides in O(1) from its counts. Tasks that become final this
//! way (skipped, upstream_failed) are handled the same way from a work
//! list, never by recursion, however long the chain.

use baton_common::ids::TaskId;
use baton_common::pb::api::{RunState, TaskState};
use baton_common::time::now_micros;
use tracing::{debug, info};

use super::Scheduler;
use crate::plan::TaskIndex;
use crate::scheduler::rules::{UpstreamCounts, Verdict, verdict};
use crate::scheduler::state::Ended;

impl Scheduler {
    /// A task of the run reached a final state: its downstream count it and
    /// decide, and so on for every task that becomes final in turn; then the
    /// run may be done.
    pub(super) fn task_ended(&mut self, run_id: baton_common::ids::RunId, index: TaskIndex) {
        self.tasks_ended(run_id, vec![index]);
    }

    /// [`Self::task_ended`] for several tasks at once.
    pub(super) fn tasks_ended(
        &mut self,
        run_id: baton_common::ids::RunId,
        mut ended: Vec<TaskIndex>,
    ) {
        // External sensors watching the run look once the cascade is over:
        // its tasks only become final, so the last look sees them all.
        let mut tasks_became_final = false;
        while let Some(index) = ended.pop() {
            let Some(entry) = self.runs.get_mut(&run_id) else {
                return;
            };
            let Some(how) = Ended::of(entry.slot(index).state) else {
                continue;
            };
            if let Some(instance) = entry.instance(index) {
                if let Some(parent) = self.instance_ended(run_id, instance, how) {
                    ended.push(parent);
                }
                continue;
            }
            let plan = entry.plan.clone();
            self.settle_unexpanded(run_id, index);
            let Some(entry) = self.runs.get_mut(&run_id) else {
                return;
            };
            for &down in &plan.downstream[index as usize] {
                entry.tasks[down as usize].count_upstream(how, true);
            }
            for &down in &plan.downstream[index as usize] {
                if let Some(decided) = self.decide(run_id, down) {
                    ended.push(decided);
                }
            }
            tasks_became_final = true;
        }
        if tasks_became_final {
            self.on_task_ended(run_id);
        }
        self.check_run_done(run_id);
    }

    /// Decides a pending task of a running run by its trigger rule.
    /// Returns the task when it became final (so its downstream must count
    /// it); a task that runs is made ready (or expanded) and is not
    /// returned.
    pub(super) fn decide(
        &mut self,
        run_id: baton_common::ids::RunId,
        index: TaskIndex,
    ) -> Option<TaskIndex> {
        let entry = self.runs.get_mut(&run_id)?;
        // A mapped instance has no trigger rule (nor a place in the plan):
        // its task's expansion, or its end, decides it.
        if entry.state != RunState::Running
            || entry.slot(index).state != TaskState::Pending
            || entry.instance(index).is_some()
        {
            return None;
        }
        let task = entry.plan.task(index);
        let slot = entry.slot(index);
        let counts = UpstreamCounts {
            total: entry.plan.upstream[index as usize].len() as u32,
            succeeded: slot.up_succeeded,
            failed: slot.up_failed,
            skipped: slot.up_skipped,
        };
        match verdict(task.trigger_rule, counts) {
            Verdict::Wait => None,
            Verdict::Skip => {
                self.end_without_running(run_id, index, TaskState::Skipped, None);
                Some(index)
            }
            Verdict::UpstreamFailed => {
                self.end_without_running(run_id, index, TaskState::UpstreamFailed, None);
                Some(index)
            }
            Verdict::Run => self.begin_task(run_id, index),
        }
    }

    /// A pending task ends without running (skipped, upstream_failed).
    pub(super) fn end_without_running(
        &mut self,
        run_id: baton_common::ids::RunId,
        index: TaskIndex,
        state: TaskState,
        reason: Option<String>,
    ) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        if !entry.set_state(index, state) {
            return;
        }
        let slot = entry.slot_mut(index);
        slot.ended_at = now_micros();
        if let Some(reason) = reason {
            slot.error = Some(reason.into_boxed_str());
        }
        self.touch(run_id);
    }

    /// A task whose rule holds: its condition, then its expansion, then it
    /// is ready. Returns it when it became final instead.
    fn begin_task(
        &mut self,
        run_id: baton_common::ids::RunId,
        index: TaskIndex,
    ) -> Option<TaskIndex> {
        let entry = self.runs.get(&run_id)?;
        let task = entry.plan.task(index);
        if let Some(condition) = task.run_if.clone() {
            match self.evaluate_expression(run_id, index, "run_if", &condition) {
                Ok(value) if !baton_common::template::is_truthy(&value) => {
                    debug!(%run_id, task_id = %self.runs[&run_id].task_id(index), "run_if is false; skipped");
                    self.end_without_running(
                        run_id,
                        index,
                        TaskState::Skipped,
                        Some(format!("run_if `{condition}` is false")),
                    );
                    return Some(index);
                }
                Ok(_) => {}
                Err(error) => {
                    self.fail_before_start(run_id, index, error);
                    return Some(index);
                }
            }
        }
        let entry = self.runs.get_mut(&run_id)?;
        if entry.plan.task(index).map_over.is_some() {
            return self.expand(run_id, index);
        }
        entry.set_state(index, TaskState::Ready);
        self.touch(run_id);
        self.queue_ready(run_id, index);
        None
    }

    /// Skips the direct downstream tasks a branch task did not choose
    /// (whatever their rules); returns those that became final.
    pub(super) fn skip_unchosen(
        &mut self,
        run_id: baton_common::ids::RunId,
        index: TaskIndex,
        chosen: &[TaskIndex],
    ) -> Vec<TaskIndex> {
        let Some(entry) = self.runs.get(&run_id) else {
            return Vec::new();
        };
        let branch = entry.plan.task(index).id.clone();
        let unchosen: Vec<TaskIndex> = entry.plan.downstream[index as usize]
            .iter()
            .copied()
            .filter(|down| !chosen.contains(down))
            .filter(|&down| entry.slot(down).state == TaskState::Pending)
            .collect();
        for &down in &unchosen {
            self.end_without_running(
                run_id,
                down,
                TaskState::Skipped,
                Some(format!("not chosen by branch `{branch}`")),
            );
        }
        unchosen
    }

    /// The direct downstream tasks a branch task's output chooses (see
    /// `spec::branch_choice`); an error names what is wrong with it.
    pub(super) fn branch_choice(
        &self,
        run_id: baton_common::ids::RunId,
        index: TaskIndex,
        output: Option<&str>,
    ) -> Result<Vec<TaskIndex>, String> {
        let entry = &self.runs[&run_id];
        let downstream = &entry.plan.downstream[index as usize];
        let ids: Vec<&str> = downstream
            .iter()
            .map(|&down| entry.plan.task(down).id.as_str())
            .collect();
        let chosen = baton_common::spec::branch_choice(output, &ids)?;
        Ok(downstream
            .iter()
            .zip(chosen)
            .filter(|(_, chosen)| *chosen)
            .map(|(&down, _)| down)
            .collect())
    }

    /// Every task is final: the run fails when a leaf task (one nothing
    /// depends on) ended failed or upstream_failed, and succeeds otherwise.
    pub(super) fn check_run_done(&mut self, run_id: baton_common::ids::RunId) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        if entry.state != RunState::Running || entry.unfinished > 0 {
            return;
        }
        let plan = &entry.plan;
        let failed_leaves: Vec<TaskId> = entry
            .failed_leaves()
            .map(|index| plan.task(index).id.clone())
            .collect();
        if failed_leaves.is_empty() {
            self.finish_run(run_id, RunState::Success, None);
            return;
        }
        let failed: Vec<String> = (0..plan.len() as TaskIndex)
            .filter(|&index| entry.slot(index).state == TaskState::Failed)
            .map(|index| plan.task(index).id.to_string())
            .take(4)
            .collect();
        let reason = match failed.len() {
            0 => format!(
                "tasks could not run because their upstream failed ({})",
                list(&failed_leaves)
            ),
            1 => format!("task `{}` failed", failed[0]),
            2 | 3 => format!("tasks failed: {}", failed.join(", ")),
            _ => format!("tasks failed, among them {}", failed[..3].join(", ")),
        };
        info!(dag_id = %entry.dag_id, %run_id, failed_leaves = failed_leaves.len(), "run failed: a leaf task did not succeed");
        self.finish_run(run_id, RunState::Failed, Some(reason));
    }
}

fn list(ids: &[TaskId]) -> String {
    let shown: Vec<&str> = ids.iter().take(3).map(TaskId::as_str).collect();
    match ids.len() {
        n if n <= 3 => shown.join(", "),
        n => format!("{} and {} more", shown.join(", "), n - 3),
    }
}
