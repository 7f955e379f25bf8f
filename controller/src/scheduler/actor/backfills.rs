//! Backfills: one run per data interval of a DAG's schedule over a range,
//! at most `max_active` unfinished at a time.
//!
//! The API plans a backfill (which intervals need a run, which have one,
//! which failed runs to rerun) from the store; the scheduler stores it and
//! drives it: it takes up intervals in order as earlier runs end, reacting
//! to each run's end. The backfill's record holds its counts and the
//! position of the next interval to take up; each interval has a key of its
//! own, written when it changes, so progress costs O(1) per run however
//! long the range. Interval runs are claimed like scheduled ones, so an
//! interval that got a run meanwhile is followed, never run twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use baton_common::error::ApiError;
use baton_common::ids::{DagId, RunId};
use baton_common::pb::api::{
    Backfill, BackfillAction, BackfillInterval, BackfillState as BackfillStatus, RunState,
    RunTrigger, TaskState,
};
use baton_common::pb::records::BackfillRecord;
use baton_common::states::run_state_is_final;
use baton_common::time::{Micros, micros_to_timestamp_opt, now_micros, timestamp_opt_to_micros};
use baton_common::timetable::Interval;
use prost::Message;
use tracing::{info, warn};
use uuid::Uuid;

use super::Scheduler;
use super::schedules::to_datetime;
use crate::plan::{PlanRef, TaskIndex};
use crate::scheduler::flush::{CreateKey, Effect};
use crate::scheduler::{Command, Reply};
use crate::store::{Op, get_record, keys};

/// A running backfill.
pub(super) struct BackfillState {
    pub id: Arc<str>,
    /// With its intervals, in the order they are taken up.
    pub backfill: Backfill,
    pub params_json: Arc<str>,
    /// The plan runs are created with (the DAG's latest version when the
    /// backfill was created or resumed).
    pub plan: PlanRef,
    /// Position of the next interval to take up.
    pub next: usize,
    /// Intervals changed since the last batch.
    pub dirty_intervals: BTreeSet<usize>,
}

impl BackfillState {
    /// The record: the backfill without its intervals, and the cursor.
    pub fn record(&self) -> BackfillRecord {
        BackfillRecord {
            backfill: Some(Backfill {
                intervals: Vec::new(),
                ..self.backfill.clone()
            }),
            params_json: self.params_json.to_string(),
            next: self.next as u32,
        }
    }

    /// The record and every changed interval, as operations.
    fn ops(&mut self) -> Vec<Op> {
        let mut ops = vec![Op::put(
            keys::backfill(&self.id),
            self.record().encode_to_vec(),
        )];
        for position in std::mem::take(&mut self.dirty_intervals) {
            if let Some(interval) = self.backfill.intervals.get(position) {
                ops.push(Op::put(
                    keys::backfill_interval(&self.id, position),
                    interval.encode_to_vec(),
                ));
            }
        }
        ops
    }
}

impl Scheduler {
    /// Stores a planned backfill and starts it.
    pub(super) fn create_backfill(
        &mut self,
        mut backfill: Backfill,
        params_json: String,
        plan: PlanRef,
        reply: Reply<Backfill>,
    ) {
        let dag_id = plan.dag_id.clone();
        let refused = match self.dags.get(&dag_id) {
            None => Some(ApiError::not_found("dag", &dag_id)),
            Some(meta) if meta.latest_version != plan.version => Some(ApiError::Unavailable(format!(
                "dag `{dag_id}` changed to version {} while the backfill was planned; try again",
                meta.latest_version
            ))),
            Some(_) => self.backfill_by_dag.get(&dag_id).map(|running| {
                ApiError::FailedPrecondition(format!(
                    "dag `{dag_id}` already has backfill {running} running; cancel it (`baton backfill cancel {running}`) or wait for it to end"
                ))
            }),
        };
        if let Some(error) = refused {
            let _ = reply.send(Err(error));
            return;
        }
        let id: Arc<str> = Arc::from(Uuid::now_v7().to_string());
        backfill.backfill_id = id.to_string();
        backfill.state = BackfillStatus::Running as i32;
        backfill.created_at = micros_to_timestamp_opt(now_micros());
        backfill.total = backfill.intervals.len() as u32;
        backfill.skipped = backfill
            .intervals
            .iter()
            .filter(|interval| interval.action() == BackfillAction::Skip)
            .count() as u32;
        backfill.to_run = backfill.total - backfill.skipped;
        info!(%dag_id, backfill_id = %id, intervals = backfill.total, to_run = backfill.to_run, "backfill created");
        self.pending
            .ops
            .push(Op::put(keys::active_backfill(&id), Vec::new()));
        self.backfill_by_dag.insert(dag_id, id.clone());
        let dirty_intervals = (0..backfill.intervals.len()).collect();
        self.backfills.insert(
            id.clone(),
            BackfillState {
                id: id.clone(),
                backfill,
                params_json: Arc::from(params_json),
                plan,
                next: 0,
                dirty_intervals,
            },
        );
        self.dirty_backfills.insert(id.clone());
        self.advance_backfill(&id);
        let view = match self.backfills.get(&id) {
            Some(state) => state.backfill.clone(),
            None => self.ended_backfills.get(&id).cloned().unwrap_or_default(),
        };
        self.reply_after_commit(reply, Ok(view));
    }

    /// Whether the backfill runs (not cancelled, not ended).
    fn backfill_running(&self, id: &str) -> bool {
        self.backfills
            .get(id)
            .is_some_and(|state| state.backfill.state() == BackfillStatus::Running)
    }

    /// Takes up intervals while the backfill has room, then ends it if
    /// nothing is left.
    pub(super) fn advance_backfill(&mut self, id: &Arc<str>) {
        loop {
            let Some(state) = self.backfills.get_mut(id) else {
                return;
            };
            if state.backfill.state() != BackfillStatus::Running
                || state.backfill.active >= state.backfill.max_active
                || state.next >= state.backfill.intervals.len()
            {
                break;
            }
            let position = state.next;
            state.next += 1;
            self.dirty_backfills.insert(id.clone());
            let interval = &state.backfill.intervals[position];
            match interval.action() {
                BackfillAction::Create => {
                    let window = Interval {
                        start: to_datetime(timestamp_opt_to_micros(
                            interval.data_interval_start.as_ref(),
                        )),
                        end: to_datetime(timestamp_opt_to_micros(
                            interval.data_interval_end.as_ref(),
                        )),
                    };
                    let (plan, params) = (state.plan.clone(), state.params_json.clone());
                    let holder = self.create_interval_run(
                        &plan,
                        window,
                        RunTrigger::Backfill,
                        Some((id, &params)),
                    );
                    let Some(run_id) = holder else { continue };
                    self.track_backfill_run(id, position, run_id, RunState::Queued);
                }
                BackfillAction::Rerun => {
                    let Ok(run_id) = interval.run_id.parse::<RunId>() else {
                        continue;
                    };
                    self.track_backfill_run(id, position, run_id, RunState::Running);
                    self.handle(Command::ClearForBackfill { run_id });
                }
                BackfillAction::Skip | BackfillAction::Unspecified => {}
            }
        }
        self.end_backfill_if_done(id);
    }

    fn track_backfill_run(
        &mut self,
        id: &Arc<str>,
        position: usize,
        run_id: RunId,
        run_state: RunState,
    ) {
        let Some(state) = self.backfills.get_mut(id) else {
            return;
        };
        let interval = &mut state.backfill.intervals[position];
        interval.run_id = run_id.to_string();
        interval.run_state = run_state as i32;
        state.dirty_intervals.insert(position);
        state.backfill.active += 1;
        self.backfill_runs.insert(run_id, (id.clone(), position));
        self.dirty_backfills.insert(id.clone());
    }

    /// A run reached a final state: if a backfill waits for it, count it
    /// and take up the next interval.
    pub(super) fn on_backfill_run_ended(&mut self, run_id: RunId) {
        let Some((id, position)) = self.backfill_runs.remove(&run_id) else {
            return;
        };
        let run_state = self
            .runs
            .get(&run_id)
            .map_or(RunState::Unspecified, |entry| entry.state);
        self.count_backfill_run(&id, position, run_state);
        self.deferred
            .push_back(super::Deferred::AdvanceBackfill(id));
    }

    fn count_backfill_run(&mut self, id: &Arc<str>, position: usize, run_state: RunState) {
        let Some(state) = self.backfills.get_mut(id) else {
            return;
        };
        let backfill = &mut state.backfill;
        backfill.intervals[position].run_state = run_state as i32;
        state.dirty_intervals.insert(position);
        backfill.active = backfill.active.saturating_sub(1);
        if run_state == RunState::Success {
            backfill.succeeded += 1;
        } else {
            backfill.failed += 1;
        }
        self.dirty_backfills.insert(id.clone());
    }

    /// The interval a backfill's run was being created for already had a
    /// run (made meanwhile by the schedule or another leader): follow that
    /// run instead.
    pub(super) fn on_backfill_interval_taken(
        &mut self,
        backfill_id: &Arc<str>,
        dag_id: DagId,
        start: Micros,
    ) {
        let Some(state) = self.backfills.get(backfill_id) else {
            return;
        };
        let Some(position) = state.backfill.intervals.iter().position(|interval| {
            timestamp_opt_to_micros(interval.data_interval_start.as_ref()) == start
        }) else {
            return;
        };
        if let Ok(taken) = state.backfill.intervals[position].run_id.parse::<RunId>() {
            self.backfill_runs.remove(&taken);
        }
        if let Some(&existing) = self
            .active_keys
            .get(&CreateKey::Interval(dag_id.clone(), start))
        {
            // Still running: its end counts for the backfill.
            if let Some(state) = self.backfills.get_mut(backfill_id) {
                state.backfill.intervals[position].run_id = existing.to_string();
                state.dirty_intervals.insert(position);
            }
            self.backfill_runs
                .insert(existing, (backfill_id.clone(), position));
            self.dirty_backfills.insert(backfill_id.clone());
            return;
        }
        // It finished: read how, then count it.
        let store = Arc::clone(&self.parts.store);
        let sender = self.self_sender.clone();
        let backfill_id = backfill_id.clone();
        tokio::spawn(async move {
            let found = async {
                let interval: baton_common::pb::records::IntervalRecord =
                    get_record(store.as_ref(), &keys::interval(&dag_id, start))
                        .await
                        .ok()??;
                let run_id: RunId = interval.run_id.parse().ok()?;
                let run: baton_common::pb::records::RunRecord =
                    get_record(store.as_ref(), &keys::run(&run_id))
                        .await
                        .ok()??;
                Some((run_id, crate::scheduler::views::record_run_state(&run)))
            }
            .await;
            let _ = sender
                .send(Command::BackfillIntervalFound {
                    backfill_id,
                    position,
                    found,
                })
                .await;
        });
    }

    /// The finished run an interval already had was read back: it counts
    /// as skipped.
    pub(super) fn on_backfill_interval_found(
        &mut self,
        backfill_id: Arc<str>,
        position: usize,
        found: Option<(RunId, RunState)>,
    ) {
        let Some(state) = self.backfills.get_mut(&backfill_id) else {
            return;
        };
        let backfill = &mut state.backfill;
        let Some(interval) = backfill.intervals.get_mut(position) else {
            return;
        };
        interval.action = BackfillAction::Skip as i32;
        match found {
            Some((run_id, run_state)) => {
                interval.run_id = run_id.to_string();
                interval.run_state = run_state as i32;
            }
            None => warn!(%backfill_id, position, "cannot read the run an interval already had"),
        }
        state.dirty_intervals.insert(position);
        backfill.active = backfill.active.saturating_sub(1);
        backfill.to_run = backfill.to_run.saturating_sub(1);
        backfill.skipped += 1;
        self.dirty_backfills.insert(backfill_id.clone());
        self.advance_backfill(&backfill_id);
    }

    /// `RERUN`: clears, all at once, the tasks of a failed run that did not
    /// succeed. Nothing happens for a run no running backfill waits for (a
    /// cancelled one).
    pub(super) fn clear_unsuccessful(&mut self, run_id: RunId) {
        let waited_for = self
            .backfill_runs
            .get(&run_id)
            .is_some_and(|(id, _)| self.backfill_running(id));
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        if !waited_for || !run_state_is_final(entry.state) {
            if !waited_for && run_state_is_final(entry.state) {
                self.pending.effects.push(Effect::DropRun(run_id));
            }
            return;
        }
        let unsuccessful: Vec<TaskIndex> = (0..entry.plan.len() as TaskIndex)
            .filter(|&index| {
                matches!(
                    entry.slot(index).state,
                    TaskState::Failed
                        | TaskState::UpstreamFailed
                        | TaskState::Cancelled
                        | TaskState::Skipped
                )
            })
            .collect();
        info!(%run_id, tasks = unsuccessful.len(), "backfill reruns a failed run");
        if unsuccessful.is_empty() {
            // Nothing to rerun after all: it counts as it ended.
            self.on_backfill_run_ended(run_id);
            self.pending.effects.push(Effect::DropRun(run_id));
            return;
        }
        self.clear_set(run_id, &unsuccessful);
    }

    /// Cancels a running backfill: no more runs; its unfinished runs are
    /// cancelled (queued ones first, so none starts in their place).
    pub(super) fn cancel_backfill(&mut self, id: &str) -> Result<Backfill, ApiError> {
        let Some(state) = self.backfills.get_mut(id) else {
            return Err(ApiError::FailedPrecondition(format!(
                "backfill {id} is not running"
            )));
        };
        let id = state.id.clone();
        state.backfill.state = BackfillStatus::Cancelled as i32;
        let mut runs: Vec<(bool, RunId)> = self
            .backfill_runs
            .iter()
            .filter(|(_, (backfill, _))| *backfill == id)
            .map(|(run_id, _)| {
                let running = self
                    .runs
                    .get(run_id)
                    .is_some_and(|entry| entry.state == RunState::Running);
                (running, *run_id)
            })
            .collect();
        runs.sort();
        info!(backfill_id = %id, runs = runs.len(), "backfill cancelled");
        for (_, run_id) in runs {
            if self.run_is_active(&run_id) {
                let _ = self.cancel_run(run_id, &format!("backfill {id} cancelled"));
            }
        }
        self.end_backfill(&id);
        Ok(self.ended_backfills.get(&id).cloned().unwrap_or_default())
    }

    /// A run of a cancelled backfill whose creation was in flight: it is
    /// cancelled as soon as it exists.
    pub(super) fn cancel_if_backfill_cancelled(&mut self, run_id: RunId) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        let Some(backfill_id) = entry.origin.backfill_id.clone() else {
            return;
        };
        if !self.backfill_running(&backfill_id) && self.run_is_active(&run_id) {
            let _ = self.cancel_run(run_id, &format!("backfill {backfill_id} cancelled"));
        }
    }

    fn end_backfill_if_done(&mut self, id: &Arc<str>) {
        let done = self.backfills.get(id).is_some_and(|state| {
            state.backfill.state() == BackfillStatus::Running
                && state.next >= state.backfill.intervals.len()
                && state.backfill.active == 0
        });
        if done {
            if let Some(state) = self.backfills.get_mut(id) {
                state.backfill.state = BackfillStatus::Completed as i32;
            }
            self.end_backfill(id);
        }
    }

    /// Writes a backfill's last record and forgets it.
    fn end_backfill(&mut self, id: &Arc<str>) {
        let Some(mut state) = self.backfills.remove(id) else {
            return;
        };
        state.backfill.ended_at = micros_to_timestamp_opt(now_micros());
        self.dirty_backfills.remove(id);
        self.backfill_runs.retain(|_, (backfill, _)| backfill != id);
        if let Ok(dag_id) = DagId::new(state.backfill.dag_id.clone()) {
            self.backfill_by_dag.remove(&dag_id);
        }
        info!(backfill_id = %id, state = ?state.backfill.state(), succeeded = state.backfill.succeeded, failed = state.backfill.failed, "backfill ended");
        self.pending.ops.extend(state.ops());
        self.pending.ops.push(Op::delete(keys::active_backfill(id)));
        // Kept until the reply that shows it went out.
        self.ended_backfills.insert(id.clone(), state.backfill);
    }

    /// The records and intervals of the backfills that changed since the
    /// last batch.
    pub(super) fn backfill_ops(&mut self) -> Vec<Op> {
        let dirty = std::mem::take(&mut self.dirty_backfills);
        self.ended_backfills.clear();
        let mut ops = Vec::new();
        for id in dirty {
            if let Some(state) = self.backfills.get_mut(&id) {
                ops.extend(state.ops());
            }
        }
        ops
    }

    /// After a restart or failover: a running backfill goes on from its
    /// record and intervals. `finished` says how its runs that are not in
    /// memory ended.
    pub(super) fn resume_backfill(
        &mut self,
        record: BackfillRecord,
        intervals: Vec<BackfillInterval>,
        plan: PlanRef,
        finished: &HashMap<RunId, RunState>,
    ) {
        let Some(mut backfill) = record.backfill else {
            return;
        };
        backfill.intervals = intervals;
        let id: Arc<str> = Arc::from(backfill.backfill_id.as_str());
        let Ok(dag_id) = DagId::new(backfill.dag_id.clone()) else {
            return;
        };
        let next = (record.next as usize).min(backfill.intervals.len());
        let mut tracked = Vec::new();
        let mut dirty_intervals = BTreeSet::new();
        backfill.active = 0;
        for (position, interval) in backfill.intervals.iter_mut().enumerate().take(next) {
            let Ok(run_id) = interval.run_id.parse::<RunId>() else {
                continue;
            };
            if interval.action() == BackfillAction::Skip || run_state_is_final(interval.run_state())
            {
                continue;
            }
            let state = match self.runs.get(&run_id) {
                Some(entry) if !run_state_is_final(entry.state) => {
                    tracked.push((run_id, position));
                    backfill.active += 1;
                    continue;
                }
                // Ended while this leader recovered.
                Some(entry) => Some(entry.state),
                None => finished.get(&run_id).copied(),
            };
            if let Some(state) = state {
                interval.run_state = state as i32;
                dirty_intervals.insert(position);
                if state == RunState::Success {
                    backfill.succeeded += 1;
                } else {
                    backfill.failed += 1;
                }
            }
        }
        info!(backfill_id = %id, %dag_id, next, active = backfill.active, "backfill resumed");
        for (run_id, position) in tracked {
            self.backfill_runs.insert(run_id, (id.clone(), position));
        }
        self.backfill_by_dag.insert(dag_id, id.clone());
        self.backfills.insert(
            id.clone(),
            BackfillState {
                id: id.clone(),
                backfill,
                params_json: Arc::from(record.params_json),
                plan,
                next,
                dirty_intervals,
            },
        );
        self.dirty_backfills.insert(id.clone());
        self.deferred
            .push_back(super::Deferred::AdvanceBackfill(id));
    }
}
