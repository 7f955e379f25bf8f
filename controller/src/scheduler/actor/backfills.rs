//! Backfills: one run per data interval of a DAG's schedule over a range,
//! at most `max_active` unfinished at a time.
//!
//! The API plans a backfill (which intervals need a run, which have one,
//! which failed runs to rerun) from the store; the scheduler stores it and
//! drives it: it creates runs as earlier ones end, reacting to each run's
//! end, and records progress in the backfill's record at most once per
//! batch. Interval runs are claimed like scheduled ones, so an interval
//! that got a run meanwhile is skipped, never run twice.

use std::sync::Arc;

use baton_common::error::ApiError;
use baton_common::ids::{DagId, RunId, TaskId};
use baton_common::pb::api::{
    Backfill, BackfillAction, BackfillState as BackfillStatus, RunState, RunTrigger, TaskState,
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
use crate::plan::PlanRef;
use crate::scheduler::flush::{CreateKey, Effect};
use crate::scheduler::{Command, Reply};
use crate::store::{Op, get_record, keys};

/// A running backfill.
pub(super) struct BackfillState {
    pub id: Arc<str>,
    pub backfill: Backfill,
    pub params_json: Arc<str>,
    /// The plan runs are created with (the DAG's latest version when the
    /// backfill was created or recovered).
    pub plan: PlanRef,
    /// Index of the next interval to look at.
    pub next: usize,
}

impl BackfillState {
    /// Where a recovered backfill goes on: the first interval not yet taken
    /// up (a run to create, or a failed run not yet rerun).
    pub fn first_untaken(backfill: &Backfill) -> usize {
        backfill
            .intervals
            .iter()
            .position(|interval| match interval.action() {
                BackfillAction::Create => interval.run_id.is_empty(),
                BackfillAction::Rerun => interval.run_state() == RunState::Failed,
                _ => false,
            })
            .unwrap_or(backfill.intervals.len())
    }

    pub fn record(&self) -> BackfillRecord {
        BackfillRecord {
            backfill: Some(self.backfill.clone()),
            params_json: self.params_json.to_string(),
        }
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
        let result = (|| {
            let meta = self
                .dags
                .get(&dag_id)
                .ok_or_else(|| ApiError::not_found("dag", &dag_id))?;
            if meta.latest_version != plan.version {
                return Err(ApiError::Unavailable(format!(
                    "dag `{dag_id}` changed to version {} while the backfill was planned; try again",
                    meta.latest_version
                )));
            }
            if let Some(running) = self.backfill_by_dag.get(&dag_id) {
                return Err(ApiError::FailedPrecondition(format!(
                    "dag `{dag_id}` already has backfill {running} running; cancel it (`baton backfill cancel {running}`) or wait for it to end"
                )));
            }
            Ok(())
        })();
        if let Err(error) = result {
            let _ = reply.send(Err(error));
            return;
        }
        let id: Arc<str> = Arc::from(Uuid::now_v7().to_string());
        backfill.backfill_id = id.to_string();
        backfill.state = BackfillStatus::Running as i32;
        backfill.created_at = micros_to_timestamp_opt(now_micros());
        backfill.total = backfill.intervals.len() as u32;
        backfill.skipped = count_action(&backfill, BackfillAction::Skip);
        backfill.to_run = backfill.total - backfill.skipped;
        info!(%dag_id, backfill_id = %id, intervals = backfill.total, to_run = backfill.to_run, "backfill created");
        self.pending
            .ops
            .push(Op::put(keys::active_backfill(&id), Vec::new()));
        self.backfill_by_dag.insert(dag_id, id.clone());
        self.backfills.insert(
            id.clone(),
            BackfillState {
                id: id.clone(),
                backfill,
                params_json: Arc::from(params_json),
                plan,
                next: 0,
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
                    let created = self.create_interval_run(
                        &plan,
                        window,
                        RunTrigger::Backfill,
                        Some((id, &params)),
                    );
                    let Some(run_id) = created else { continue };
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
        state.backfill.active += 1;
        self.backfill_runs.insert(run_id, (id.clone(), position));
        self.dirty_backfills.insert(id.clone());
    }

    /// A run of a backfill ended: count it and take up the next interval.
    pub(super) fn on_backfill_run_ended(&mut self, run_id: RunId) {
        let Some((id, position)) = self.backfill_runs.remove(&run_id) else {
            return;
        };
        let run_state = self
            .runs
            .get(&run_id)
            .map_or(RunState::Unspecified, |entry| entry.state);
        self.count_backfill_run(&id, position, run_state);
        self.advance_backfill(&id);
    }

    fn count_backfill_run(&mut self, id: &Arc<str>, position: usize, run_state: RunState) {
        let Some(state) = self.backfills.get_mut(id) else {
            return;
        };
        let backfill = &mut state.backfill;
        backfill.intervals[position].run_state = run_state as i32;
        backfill.active = backfill.active.saturating_sub(1);
        if run_state == RunState::Success {
            backfill.succeeded += 1;
        } else {
            backfill.failed += 1;
        }
        self.dirty_backfills.insert(id.clone());
    }

    /// An interval the backfill created a run for already had one (made
    /// meanwhile by the schedule or another leader): follow that run
    /// instead.
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
        if let Ok(optimistic) = state.backfill.intervals[position].run_id.parse::<RunId>() {
            self.backfill_runs.remove(&optimistic);
        }
        if let Some(&existing) = self
            .active_keys
            .get(&CreateKey::Interval(dag_id.clone(), start))
        {
            // Still running: its end counts for the backfill.
            if let Some(state) = self.backfills.get_mut(backfill_id) {
                let interval = &mut state.backfill.intervals[position];
                interval.run_id = existing.to_string();
                interval.action = BackfillAction::Skip as i32;
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

    /// The finished run an interval already had was read back.
    pub(super) fn on_backfill_interval_found(
        &mut self,
        backfill_id: Arc<str>,
        position: usize,
        found: Option<(RunId, RunState)>,
    ) {
        let Some(state) = self.backfills.get_mut(&backfill_id) else {
            return;
        };
        let Some(interval) = state.backfill.intervals.get_mut(position) else {
            return;
        };
        interval.action = BackfillAction::Skip as i32;
        let backfill = &mut state.backfill;
        match found {
            Some((run_id, run_state)) => {
                let interval = &mut backfill.intervals[position];
                interval.run_id = run_id.to_string();
                interval.run_state = run_state as i32;
            }
            None => warn!(%backfill_id, position, "cannot read the run an interval already had"),
        }
        backfill.active = backfill.active.saturating_sub(1);
        backfill.to_run = backfill.to_run.saturating_sub(1);
        backfill.skipped += 1;
        self.dirty_backfills.insert(backfill_id.clone());
        self.advance_backfill(&backfill_id);
    }

    /// `RERUN`: clears the tasks of a failed run that did not succeed.
    pub(super) fn clear_unsuccessful(&mut self, run_id: RunId) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        if !run_state_is_final(entry.state) {
            return;
        }
        let plan = entry.plan.clone();
        let unsuccessful: Vec<TaskId> = (0..plan.len() as u32)
            .filter(|&index| {
                matches!(
                    entry.slot(index).state,
                    TaskState::Failed
                        | TaskState::UpstreamFailed
                        | TaskState::Cancelled
                        | TaskState::Skipped
                )
            })
            .map(|index| plan.task(index).id.clone())
            .collect();
        info!(%run_id, tasks = unsuccessful.len(), "backfill reruns a failed run");
        for task_id in unsuccessful {
            if let Err(error) = self.clear_tasks(run_id, &task_id, false) {
                warn!(%run_id, %task_id, %error, "cannot clear a task for the backfill");
            }
        }
        if self
            .runs
            .get(&run_id)
            .is_some_and(|entry| run_state_is_final(entry.state))
        {
            // Nothing to rerun after all: it counts as it ended.
            self.on_backfill_run_ended(run_id);
            self.pending.effects.push(Effect::DropRun(run_id));
        }
    }

    /// Cancels a running backfill: no more runs, its unfinished runs
    /// cancelled.
    pub(super) fn cancel_backfill(&mut self, id: &str) -> Result<Backfill, ApiError> {
        let Some(state) = self.backfills.get_mut(id) else {
            return Err(ApiError::FailedPrecondition(format!(
                "backfill {id} is not running"
            )));
        };
        let id = state.id.clone();
        state.backfill.state = BackfillStatus::Cancelled as i32;
        let runs: Vec<RunId> = self
            .backfill_runs
            .iter()
            .filter(|(_, (backfill, _))| *backfill == id)
            .map(|(run_id, _)| *run_id)
            .collect();
        info!(backfill_id = %id, runs = runs.len(), "backfill cancelled");
        for run_id in runs {
            if self.run_is_active(&run_id) {
                let _ = self.cancel_run(run_id, &format!("backfill {id} cancelled"));
            }
        }
        self.end_backfill(&id);
        Ok(self.ended_backfills.get(&id).cloned().unwrap_or_default())
    }

    fn end_backfill_if_done(&mut self, id: &Arc<str>) {
        let done = self.backfills.get(id).is_some_and(|state| {
            state.next >= state.backfill.intervals.len() && state.backfill.active == 0
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
        self.pending
            .ops
            .push(Op::put(keys::backfill(id), state.record().encode_to_vec()));
        self.pending.ops.push(Op::delete(keys::active_backfill(id)));
        // Kept until the reply that shows it went out.
        self.ended_backfills.insert(id.clone(), state.backfill);
    }

    /// The records of the backfills that changed since the last batch.
    pub(super) fn backfill_ops(&mut self) -> Vec<Op> {
        let dirty = std::mem::take(&mut self.dirty_backfills);
        self.ended_backfills.clear();
        dirty
            .iter()
            .filter_map(|id| self.backfills.get(id))
            .map(|state| Op::put(keys::backfill(&state.id), state.record().encode_to_vec()))
            .collect()
    }

    /// After a restart or failover: a running backfill goes on from its
    /// record. `finished` says how its runs that are no longer active ended.
    pub(super) fn resume_backfill(
        &mut self,
        record: BackfillRecord,
        plan: PlanRef,
        finished: &std::collections::HashMap<RunId, RunState>,
    ) {
        let Some(mut backfill) = record.backfill else {
            return;
        };
        let id: Arc<str> = Arc::from(backfill.backfill_id.as_str());
        let Ok(dag_id) = DagId::new(backfill.dag_id.clone()) else {
            return;
        };
        let next = BackfillState::first_untaken(&backfill);
        let mut tracked = Vec::new();
        backfill.active = 0;
        for (position, interval) in backfill.intervals.iter_mut().enumerate().take(next) {
            let Ok(run_id) = interval.run_id.parse::<RunId>() else {
                continue;
            };
            if interval.action() == BackfillAction::Skip || run_state_is_final(interval.run_state())
            {
                continue;
            }
            if self.run_is_active(&run_id) {
                tracked.push((run_id, position));
                backfill.active += 1;
            } else if let Some(&state) = finished.get(&run_id) {
                interval.run_state = state as i32;
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
            },
        );
        self.dirty_backfills.insert(id.clone());
        self.advance_backfill(&id);
    }
}

fn count_action(backfill: &Backfill, action: BackfillAction) -> u32 {
    backfill
        .intervals
        .iter()
        .filter(|interval| interval.action() == action)
        .count() as u32
}
