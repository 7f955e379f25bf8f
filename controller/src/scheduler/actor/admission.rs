//! Run admission: which runs of a DAG may run now.
//!
//! A DAG's `max_active_runs` bounds its running runs, whatever created
//! them; the others wait `queued`, and so do every run of a paused DAG.
//! Queued runs start in logical-date order as running ones end or the DAG
//! is unpaused. Counts are kept per DAG on every run state change, so
//! admission never scans runs.

use std::collections::BTreeSet;

use baton_common::ids::{DagId, RunId};
use baton_common::pb::api::RunState;
use baton_common::states::run_state_is_final;
use baton_common::time::{Micros, now_micros};

use super::Scheduler;
use crate::plan::TaskIndex;

/// A DAG's `max_active_runs` when its record does not say (DAGs stored
/// before the setting existed), as in Airflow.
pub const DEFAULT_MAX_ACTIVE_RUNS: u32 = 16;

/// A DAG's runs in memory, as admission sees them.
#[derive(Debug, Default)]
pub(super) struct DagRuns {
    pub running: u32,
    /// Queued runs by logical date, then id (UUIDv7: creation order).
    pub queued: BTreeSet<(Micros, RunId)>,
}

impl DagRuns {
    fn is_empty(&self) -> bool {
        self.running == 0 && self.queued.is_empty()
    }
}

impl Scheduler {
    pub(super) fn max_active_runs(&self, dag_id: &DagId) -> u32 {
        match self.dags.get(dag_id).map(|meta| meta.max_active_runs) {
            Some(0) | None => DEFAULT_MAX_ACTIVE_RUNS,
            Some(max) => max,
        }
    }

    /// Queued and running runs of a DAG: what its schedule compares with
    /// `max_active_runs` before creating another.
    pub(super) fn active_run_count(&self, dag_id: &DagId) -> u32 {
        self.dag_runs
            .get(dag_id)
            .map_or(0, |runs| runs.running + runs.queued.len() as u32)
            + self.creating.get(dag_id).copied().unwrap_or(0)
    }

    /// Counts a run whose conditional creation is in flight (`+1`) or
    /// returned (`-1`), so that a schedule does not create more than
    /// `max_active_runs` before the first ones are stored.
    pub(super) fn note_creating(&mut self, dag_id: &DagId, started: bool) {
        if started {
            *self.creating.entry(dag_id.clone()).or_default() += 1;
        } else if let Some(count) = self.creating.get_mut(dag_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.creating.remove(dag_id);
            }
        }
    }

    /// Keeps the per-DAG counts in step with a run moving from `from` to
    /// `to` (`Unspecified` for a run entering or leaving memory).
    pub(super) fn track_run_state(
        &mut self,
        dag_id: &DagId,
        run_id: RunId,
        logical_date: Micros,
        from: RunState,
        to: RunState,
    ) {
        let runs = self.dag_runs.entry(dag_id.clone()).or_default();
        match from {
            RunState::Queued => {
                runs.queued.remove(&(logical_date, run_id));
            }
            RunState::Running => runs.running = runs.running.saturating_sub(1),
            _ => {}
        }
        match to {
            RunState::Queued => {
                runs.queued.insert((logical_date, run_id));
            }
            RunState::Running => runs.running += 1,
            _ => {}
        }
        if runs.is_empty() {
            self.dag_runs.remove(dag_id);
        }
    }

    /// Starts a queued run unless its DAG is paused or already runs
    /// `max_active_runs` runs; then it stays queued until one ends.
    pub(super) fn start_run(&mut self, run_id: RunId) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        if entry.state != RunState::Queued {
            return;
        }
        let dag_id = entry.dag_id.clone();
        let paused = self.dags.get(&dag_id).is_some_and(|meta| meta.paused);
        let running = self.dag_runs.get(&dag_id).map_or(0, |runs| runs.running);
        if paused || running >= self.max_active_runs(&dag_id) {
            self.touch(run_id);
            return;
        }
        let entry = self.runs.get_mut(&run_id).expect("checked above");
        let logical_date = entry.logical_date();
        entry.set_run_state(RunState::Running);
        entry.started_at = now_micros();
        let plan = entry.plan.clone();
        self.track_run_state(
            &dag_id,
            run_id,
            logical_date,
            RunState::Queued,
            RunState::Running,
        );
        self.touch(run_id);
        self.arm_deadlines(run_id);
        // Roots, and tasks whose rule is `always`, decide at once.
        let decided: Vec<TaskIndex> = plan
            .starters
            .iter()
            .filter_map(|&index| self.decide(run_id, index))
            .collect();
        self.tasks_ended(run_id, decided);
    }

    /// Starts the DAG's queued runs, oldest logical date first, while it
    /// has room.
    pub(super) fn start_queued(&mut self, dag_id: &DagId) {
        if self.dags.get(dag_id).is_some_and(|meta| meta.paused) {
            return;
        }
        let max = self.max_active_runs(dag_id);
        loop {
            let Some(runs) = self.dag_runs.get(dag_id) else {
                return;
            };
            if runs.running >= max {
                return;
            }
            let Some(&(_, run_id)) = runs.queued.first() else {
                return;
            };
            let before = runs.queued.len();
            self.start_run(run_id);
            let after = self
                .dag_runs
                .get(dag_id)
                .map_or(0, |runs| runs.queued.len());
            if after >= before {
                // Not started (it cannot be): stop rather than spin.
                return;
            }
        }
    }

    /// A run of `dag_id` reached a final state: room for queued runs, for
    /// the schedule's next run, and for the backfill it belongs to.
    pub(super) fn on_run_ended(&mut self, dag_id: &DagId, run_id: RunId) {
        self.deferred
            .push_back(super::Deferred::Admit(dag_id.clone()));
        self.on_backfill_run_ended(run_id);
        self.on_external_run_changed(run_id);
    }

    /// Whether a run is still to finish.
    pub(super) fn run_is_active(&self, run_id: &RunId) -> bool {
        self.runs
            .get(run_id)
            .is_some_and(|entry| !run_state_is_final(entry.state))
    }
}
