//! In-memory state of an active run: [`RunEntry`] with one [`TaskSlot`] per
//! task of its plan, and the declared state machines every change goes
//! through ([`task_transition_allowed`], [`run_transition_allowed`]).
//!
//! A slot is about 120 bytes whatever the task; strings a task may carry
//! (error, output) are boxed and present only when set. Counts by state and
//! the number of unfinished tasks are kept up to date on every change, so
//! deciding that a run ended never scans its tasks.

use std::sync::Arc;

use baton_common::ids::{AttemptId, DagId, RunId, TaskId};
use baton_common::pb::api::{
    AttemptOutcome, RunState, RunTrigger, SlaMiss, TaskState, WatchRunResponse,
};
use baton_common::spec::ResolvedTask;
use baton_common::states::task_state_is_final;
use baton_common::time::{Micros, now_micros};
use tokio::sync::mpsc;

use crate::plan::{PlanRef, TaskIndex};

/// Whether a task may move from `from` to `to`. Clearing (back to pending)
/// is allowed from every state; everything else follows the design's state
/// machine.
pub fn task_transition_allowed(from: TaskState, to: TaskState) -> bool {
    use TaskState::*;
    if to == Pending {
        return true;
    }
    match from {
        Pending => matches!(to, Ready | UpstreamFailed | Skipped | Cancelled),
        // Running: a sensor the controller evaluates starts without a
        // worker. Failed: its assignment could not be made (a template).
        Ready => matches!(to, Leased | Running | Failed | Cancelled),
        // Back to ready: the lease was never taken up (the worker never got it).
        // Up for reschedule: a sensor's condition did not hold yet.
        // Skipped: a `soft_fail` sensor timed out.
        Leased => matches!(
            to,
            Ready | Running | Success | Failed | UpForRetry | UpForReschedule | Skipped | Cancelled
        ),
        // Back to ready: the worker drained before the attempt finished.
        Running => matches!(
            to,
            Ready | Success | Failed | UpForRetry | UpForReschedule | Skipped | Cancelled
        ),
        UpForRetry => matches!(to, Ready | Cancelled),
        UpForReschedule => matches!(to, Ready | Cancelled),
        Success | Failed | UpstreamFailed | Skipped | Cancelled | Unspecified => false,
    }
}

/// Whether a user may mark a task in `from` as `to` (`MarkTask`): any task
/// may be set succeeded, failed or skipped by hand, as if it had ended so.
pub fn task_mark_allowed(from: TaskState, to: TaskState) -> bool {
    from != TaskState::Unspecified && markable(to)
}

/// The states `MarkTask` sets: succeeded, failed or skipped.
pub fn markable(to: TaskState) -> bool {
    matches!(
        to,
        TaskState::Success | TaskState::Failed | TaskState::Skipped
    )
}

/// Whether a run may move from `from` to `to`. A finished run becomes
/// running again when one of its tasks is cleared.
pub fn run_transition_allowed(from: RunState, to: RunState) -> bool {
    use RunState::*;
    match from {
        Queued => matches!(to, Running | Cancelled),
        Running => matches!(to, Success | Failed | Cancelled),
        Success | Failed | Cancelled => matches!(to, Running),
        Unspecified => false,
    }
}

/// State of one task in one active run.
#[derive(Debug, Clone)]
pub struct TaskSlot {
    pub state: TaskState,
    /// Changed since the last flush: its record is written in the next batch.
    pub dirty: bool,
    /// Current (or last) attempt number; 0 before the first.
    pub attempt: u32,
    /// Attempts made before the last clear.
    pub attempt_base: u32,
    /// How its direct upstream tasks ended (a cancelled one counts as
    /// failed): with the plan's upstream count, what its trigger rule
    /// decides on, kept up to date as each upstream ends or is cleared.
    pub up_succeeded: u32,
    pub up_failed: u32,
    pub up_skipped: u32,
    pub attempt_id: Option<AttemptId>,
    pub worker: Option<Arc<str>>,
    pub leased_at: Micros,
    pub started_at: Micros,
    pub ended_at: Micros,
    pub next_attempt_at: Micros,
    pub exit_code: Option<i32>,
    pub outcome: AttemptOutcome,
    pub error: Option<Box<str>>,
    pub output: Option<Box<str>>,
    /// Sensors: when the sensor gives up; set at its first poke, kept
    /// across reschedules and retries until the task is cleared.
    pub sensor_deadline: Micros,
    /// When it last became ready, until its attempt runs: the scheduling
    /// delay metric (kept only while metrics are on).
    pub ready_at: Micros,
}

impl Default for TaskSlot {
    fn default() -> Self {
        Self {
            state: TaskState::Pending,
            dirty: false,
            attempt: 0,
            attempt_base: 0,
            up_succeeded: 0,
            up_failed: 0,
            up_skipped: 0,
            attempt_id: None,
            worker: None,
            leased_at: 0,
            started_at: 0,
            ended_at: 0,
            next_attempt_at: 0,
            exit_code: None,
            outcome: AttemptOutcome::Unspecified,
            error: None,
            output: None,
            sensor_deadline: 0,
            ready_at: 0,
        }
    }
}

impl TaskSlot {
    /// Forgets the task's last attempt so it runs again (a clear): its
    /// attempts so far stay counted in `attempt_base`.
    pub fn reset_for_rerun(&mut self) {
        self.attempt_base = self.attempt;
        self.attempt_id = None;
        self.worker = None;
        self.leased_at = 0;
        self.forget_outcome();
        self.sensor_deadline = 0;
    }

    /// Starts the task's next attempt: its number grows, it gets `attempt_id`
    /// and `worker` (none for what the controller runs itself), and what
    /// described the previous attempt is cleared. Returns the number.
    pub fn begin_attempt(
        &mut self,
        attempt_id: AttemptId,
        worker: Option<Arc<str>>,
        now: Micros,
    ) -> u32 {
        self.attempt += 1;
        self.attempt_id = Some(attempt_id);
        self.worker = worker;
        self.leased_at = now;
        self.forget_outcome();
        self.attempt
    }

    /// Clears what described how the last attempt went.
    fn forget_outcome(&mut self) {
        self.started_at = 0;
        self.ended_at = 0;
        self.next_attempt_at = 0;
        self.exit_code = None;
        self.outcome = AttemptOutcome::Unspecified;
        self.error = None;
        self.output = None;
    }

    /// Attempts allowed since the last clear.
    pub fn max_attempts(&self, retries: u32) -> u32 {
        self.attempt_base + retries + 1
    }
}

pub type WatchSender = mpsc::Sender<Result<WatchRunResponse, tonic::Status>>;

/// Where a run comes from: what triggered it and the data interval it
/// covers. Fixed when the run is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOrigin {
    pub logical_date: Micros,
    pub data_interval_start: Micros,
    pub data_interval_end: Micros,
    pub trigger: RunTrigger,
    /// The event id (events), the asset URIs (assets).
    pub trigger_detail: Option<Box<str>>,
    pub backfill_id: Option<Arc<str>>,
    pub idempotency_key: Option<String>,
}

impl RunOrigin {
    /// A run triggered by hand (or an API client) at `logical_date`.
    pub fn manual(logical_date: Micros, idempotency_key: Option<String>) -> Self {
        Self {
            logical_date,
            data_interval_start: logical_date,
            data_interval_end: logical_date,
            trigger: RunTrigger::Manual,
            trigger_detail: None,
            backfill_id: None,
            idempotency_key,
        }
    }

    /// The run of one data interval of the DAG's schedule.
    pub fn interval(start: Micros, end: Micros, trigger: RunTrigger) -> Self {
        Self {
            logical_date: start,
            data_interval_start: start,
            data_interval_end: end,
            trigger,
            trigger_detail: None,
            backfill_id: None,
            idempotency_key: None,
        }
    }

    /// Runs of a schedule or a backfill own their interval: at most one run
    /// per DAG and interval.
    pub fn claims_interval(&self) -> bool {
        matches!(self.trigger, RunTrigger::Scheduled | RunTrigger::Backfill)
    }
}

/// How an ended task counts for the trigger rules of its downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Succeeded,
    /// Failed, upstream_failed or cancelled.
    Failed,
    Skipped,
}

impl Ended {
    pub fn of(state: TaskState) -> Option<Ended> {
        match state {
            TaskState::Success => Some(Ended::Succeeded),
            TaskState::Failed | TaskState::UpstreamFailed | TaskState::Cancelled => {
                Some(Ended::Failed)
            }
            TaskState::Skipped => Some(Ended::Skipped),
            _ => None,
        }
    }
}

impl TaskSlot {
    /// Counts an upstream task that ended (`add`) or was cleared (`!add`).
    pub fn count_upstream(&mut self, ended: Ended, add: bool) {
        let counter = match ended {
            Ended::Succeeded => &mut self.up_succeeded,
            Ended::Failed => &mut self.up_failed,
            Ended::Skipped => &mut self.up_skipped,
        };
        if add {
            *counter += 1;
        } else {
            *counter = counter.saturating_sub(1);
        }
    }
}

/// One instance of a task expanded at run time (`map_over`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// The mapped task, in the plan.
    pub parent: TaskIndex,
    pub map_index: u32,
}

/// A mapped task once expanded: its instances are the run's slots
/// `first .. first + len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedGroup {
    pub first: TaskIndex,
    pub len: u32,
    /// Instances not in a final state.
    pub unfinished: u32,
    /// Instances that ended failed (or cancelled).
    pub failed: u32,
    /// Instances that ended skipped.
    pub skipped: u32,
}

impl MappedGroup {
    /// Counts an instance that ended (`add`) or no longer counts as ended
    /// (`!add`: cleared, or marked otherwise).
    pub fn count(&mut self, ended: Ended, add: bool) {
        let counter = match ended {
            Ended::Succeeded => None,
            Ended::Failed => Some(&mut self.failed),
            Ended::Skipped => Some(&mut self.skipped),
        };
        if add {
            if let Some(counter) = counter {
                *counter += 1;
            }
            self.unfinished = self.unfinished.saturating_sub(1);
        } else {
            if let Some(counter) = counter {
                *counter = counter.saturating_sub(1);
            }
            self.unfinished += 1;
        }
    }

    /// How the mapped task ends once every instance has: failed if any
    /// failed, skipped if all were, success otherwise.
    pub fn outcome(&self) -> TaskState {
        if self.failed > 0 {
            TaskState::Failed
        } else if self.skipped == self.len {
            TaskState::Skipped
        } else {
            TaskState::Success
        }
    }

    /// The mapped task's error for that outcome.
    pub fn error(&self) -> Option<Box<str>> {
        (self.failed > 0)
            .then(|| format!("{} of its instances failed", self.failed).into_boxed_str())
    }
}

/// One change of a run or of one of its tasks, kept until the next batch
/// writes it into the run's history (`scheduler/history.rs` gives it a
/// cause then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub at: Micros,
    pub what: Changed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The run's state (from `Unspecified` when it is created).
    Run { from: RunState, to: RunState },
    /// A task's (or instance's) state; `marked` when a user set it;
    /// `attempt` is its attempt number just before the change.
    Task {
        index: TaskIndex,
        from: TaskState,
        to: TaskState,
        marked: bool,
        attempt: u32,
    },
    /// The run (`index` None) or a task missed its SLA.
    SlaMiss {
        index: Option<TaskIndex>,
        detail: String,
    },
}

/// An active run: everything the scheduler needs to move it forward.
pub struct RunEntry {
    pub run_id: RunId,
    pub dag_id: DagId,
    pub plan: PlanRef,
    pub state: RunState,
    pub params_json: Arc<str>,
    pub origin: RunOrigin,
    pub created_at: Micros,
    pub started_at: Micros,
    pub ended_at: Micros,
    pub reason: Option<String>,
    pub tasks: Vec<TaskSlot>,
    /// Tasks not in a final state.
    pub unfinished: u32,
    /// Tasks per state, indexed by the state's protobuf number.
    pub counts: [u32; 12],
    /// The run record changes in the next batch.
    pub dirty: bool,
    pub dirty_tasks: Vec<TaskIndex>,
    pub watchers: Vec<WatchSender>,
    /// Deadlines the run or its tasks missed, in the order noticed.
    pub sla_misses: Vec<SlaMiss>,
    /// Slots past the plan's tasks: mapped instances, in the order made.
    pub instances: Vec<Instance>,
    /// Mapped tasks expanded in this run, by plan index.
    pub mapped: std::collections::HashMap<TaskIndex, MappedGroup>,
    /// The lists mapped tasks were expanded over (evaluated once, kept for
    /// rendering `{{ item }}`), by plan index; not stored.
    pub map_items: std::collections::HashMap<TaskIndex, Arc<Vec<serde_json::Value>>>,
    /// Changes not yet written into the run's history.
    pub changes: Vec<Change>,
    /// The run's spans are exported: traces are on and the sampler keeps
    /// the run. Decided once, when the scheduler takes the run in.
    pub traced: bool,
}

impl RunEntry {
    /// A new run with every task pending.
    pub fn new(
        run_id: RunId,
        plan: PlanRef,
        params_json: Arc<str>,
        origin: RunOrigin,
        now: Micros,
    ) -> Self {
        let tasks: Vec<TaskSlot> = (0..plan.len()).map(|_| TaskSlot::default()).collect();
        let mut counts = [0u32; 12];
        counts[TaskState::Pending as usize] = tasks.len() as u32;
        Self {
            run_id,
            dag_id: plan.dag_id.clone(),
            unfinished: tasks.len() as u32,
            plan,
            state: RunState::Queued,
            params_json,
            origin,
            created_at: now,
            started_at: 0,
            ended_at: 0,
            reason: None,
            tasks,
            counts,
            dirty: true,
            dirty_tasks: Vec::new(),
            watchers: Vec::new(),
            sla_misses: Vec::new(),
            instances: Vec::new(),
            mapped: std::collections::HashMap::new(),
            map_items: std::collections::HashMap::new(),
            changes: vec![Change {
                at: now,
                what: Changed::Run {
                    from: RunState::Unspecified,
                    to: RunState::Queued,
                },
            }],
            traced: false,
        }
    }

    /// The plan index of a slot: itself for a plan task, its mapped task
    /// for an instance.
    pub fn plan_index(&self, index: TaskIndex) -> TaskIndex {
        match index.checked_sub(self.plan.len() as TaskIndex) {
            Some(offset) => self.instances[offset as usize].parent,
            None => index,
        }
    }

    /// The leaf tasks (those nothing depends on) that ended failed or
    /// upstream_failed: what fails a run whose tasks all ended.
    pub fn failed_leaves(&self) -> impl Iterator<Item = TaskIndex> + '_ {
        (0..self.plan.len() as TaskIndex)
            .filter(|&index| self.plan.downstream[index as usize].is_empty())
            .filter(|&index| {
                matches!(
                    self.slot(index).state,
                    TaskState::Failed | TaskState::UpstreamFailed
                )
            })
    }

    /// The instance a slot is, if it is one.
    pub fn instance(&self, index: TaskIndex) -> Option<Instance> {
        index
            .checked_sub(self.plan.len() as TaskIndex)
            .map(|offset| self.instances[offset as usize])
    }

    /// The task a slot runs (an instance runs its mapped task).
    pub fn task(&self, index: TaskIndex) -> &ResolvedTask {
        self.plan.task(self.plan_index(index))
    }

    /// A slot's task id: the task's, or `task[i]` for an instance.
    pub fn task_id(&self, index: TaskIndex) -> TaskId {
        let task = &self.task(index).id;
        match self.instance(index) {
            Some(instance) => task.instance(instance.map_index),
            None => task.clone(),
        }
    }

    /// The slot a task id names (`task` or `task[i]`).
    pub fn index_of(&self, task_id: &TaskId) -> Option<TaskIndex> {
        let (task, map_index) = task_id.split_instance();
        let index = self.plan.index_of(task)?;
        match map_index {
            None => Some(index),
            Some(map_index) => {
                let group = self.mapped.get(&index)?;
                (map_index < group.len).then(|| group.first + map_index)
            }
        }
    }

    /// Appends `len` pending instances of `parent`; returns the first.
    pub fn add_instances(&mut self, parent: TaskIndex, len: u32) -> TaskIndex {
        let first = self.tasks.len() as TaskIndex;
        for map_index in 0..len {
            self.tasks.push(TaskSlot::default());
            self.instances.push(Instance { parent, map_index });
        }
        self.counts[TaskState::Pending as usize] += len;
        self.unfinished += len;
        self.mapped.insert(
            parent,
            MappedGroup {
                first,
                len,
                unfinished: len,
                failed: 0,
                skipped: 0,
            },
        );
        self.dirty = true;
        first
    }

    pub fn logical_date(&self) -> Micros {
        self.origin.logical_date
    }

    pub fn slot(&self, index: TaskIndex) -> &TaskSlot {
        &self.tasks[index as usize]
    }

    /// Mutable access for fields other than `state` (use [`Self::set_state`]
    /// for that); marks the task dirty.
    pub fn slot_mut(&mut self, index: TaskIndex) -> &mut TaskSlot {
        self.mark_dirty(index);
        &mut self.tasks[index as usize]
    }

    pub fn mark_dirty(&mut self, index: TaskIndex) {
        let slot = &mut self.tasks[index as usize];
        if !slot.dirty {
            slot.dirty = true;
            self.dirty_tasks.push(index);
        }
    }

    /// Moves a task to `to` through the declared state machine, keeping the
    /// counts and the run's dirty lists in step. Returns false (and changes
    /// nothing) for a transition the machine does not allow.
    pub fn set_state(&mut self, index: TaskIndex, to: TaskState) -> bool {
        let from = self.tasks[index as usize].state;
        if !task_transition_allowed(from, to) {
            tracing::error!(run_id = %self.run_id, task_id = %self.task_id(index), ?from, ?to, "refused task transition");
            debug_assert!(false, "refused task transition {from:?} -> {to:?}");
            return false;
        }
        self.move_state(index, from, to, false);
        true
    }

    /// Sets a task's state by hand ([`task_mark_allowed`]), keeping the
    /// counts in step like [`Self::set_state`].
    pub fn set_state_marked(&mut self, index: TaskIndex, to: TaskState) -> bool {
        let from = self.tasks[index as usize].state;
        if !task_mark_allowed(from, to) {
            return false;
        }
        self.move_state(index, from, to, true);
        true
    }

    /// Moves a task from `from` to `to`, keeping the counts, the dirty
    /// lists and the history in step; the caller checked the transition.
    fn move_state(&mut self, index: TaskIndex, from: TaskState, to: TaskState, marked: bool) {
        if from == to {
            return;
        }
        self.changes.push(Change {
            at: now_micros(),
            what: Changed::Task {
                index,
                from,
                to,
                marked,
                attempt: self.tasks[index as usize].attempt,
            },
        });
        self.counts[from as usize] -= 1;
        self.counts[to as usize] += 1;
        match (task_state_is_final(from), task_state_is_final(to)) {
            (false, true) => self.unfinished -= 1,
            (true, false) => self.unfinished += 1,
            _ => {}
        }
        self.tasks[index as usize].state = to;
        self.mark_dirty(index);
        self.dirty = true;
    }

    /// Recounts what a mapped task's instances did from their current
    /// states (after a recovery or a clear).
    pub fn recount_group(&mut self, parent: TaskIndex) {
        let Some(group) = self.mapped.get(&parent) else {
            return;
        };
        let (mut unfinished, mut failed, mut skipped) = (0, 0, 0);
        for index in group.first..group.first + group.len {
            match Ended::of(self.tasks[index as usize].state) {
                None => unfinished += 1,
                Some(Ended::Failed) => failed += 1,
                Some(Ended::Skipped) => skipped += 1,
                Some(Ended::Succeeded) => {}
            }
        }
        if let Some(group) = self.mapped.get_mut(&parent) {
            group.unfinished = unfinished;
            group.failed = failed;
            group.skipped = skipped;
        }
    }

    /// Recounts a task's upstream from their current states (after states
    /// changed by hand).
    pub fn recount_upstream(&mut self, index: TaskIndex) {
        let (mut succeeded, mut failed, mut skipped) = (0, 0, 0);
        for &up in &self.plan.upstream[index as usize] {
            match Ended::of(self.tasks[up as usize].state) {
                None => {}
                Some(Ended::Succeeded) => succeeded += 1,
                Some(Ended::Failed) => failed += 1,
                Some(Ended::Skipped) => skipped += 1,
            }
        }
        let slot = &mut self.tasks[index as usize];
        slot.up_succeeded = succeeded;
        slot.up_failed = failed;
        slot.up_skipped = skipped;
    }

    pub fn set_run_state(&mut self, to: RunState) -> bool {
        if !run_transition_allowed(self.state, to) {
            tracing::error!(run_id = %self.run_id, from = ?self.state, ?to, "refused run transition");
            debug_assert!(false, "refused run transition {:?} -> {to:?}", self.state);
            return false;
        }
        if self.state != to {
            self.changes.push(Change {
                at: now_micros(),
                what: Changed::Run {
                    from: self.state,
                    to,
                },
            });
        }
        self.state = to;
        self.dirty = true;
        true
    }

    pub fn count(&self, state: TaskState) -> u32 {
        self.counts[state as usize]
    }

    /// Whether any task failed in a way that fails the run.
    pub fn has_failures(&self) -> bool {
        self.count(TaskState::Failed) > 0 || self.count(TaskState::UpstreamFailed) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_machine_allows_the_design_path_and_refuses_shortcuts() {
        use TaskState::*;
        for (from, to) in [
            (Pending, Ready),
            (Ready, Leased),
            (Leased, Running),
            (Running, Success),
            (Running, UpForRetry),
            (UpForRetry, Ready),
            (Running, UpForReschedule),
            (UpForReschedule, Ready),
            (Running, Skipped),
            (Pending, UpstreamFailed),
            (Success, Pending),
            (Failed, Pending),
        ] {
            assert!(task_transition_allowed(from, to), "{from:?} -> {to:?}");
        }
        for (from, to) in [
            (Pending, Running),
            (Pending, Success),
            (Ready, Success),
            (UpForReschedule, Running),
            (Pending, UpForReschedule),
            (Success, Failed),
            (Failed, Ready),
            (Cancelled, Running),
        ] {
            assert!(!task_transition_allowed(from, to), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn the_run_machine_only_reopens_finished_runs_as_running() {
        use RunState::*;
        assert!(run_transition_allowed(Queued, Running));
        assert!(run_transition_allowed(Failed, Running));
        assert!(!run_transition_allowed(Success, Failed));
        assert!(!run_transition_allowed(Queued, Success));
    }
}
