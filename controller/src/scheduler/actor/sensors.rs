//! Sensors: tasks that wait for a condition.
//!
//! Workers poke files and HTTP endpoints. In `poke` mode one attempt pokes
//! until the condition holds or the sensor's deadline passes; in
//! `reschedule` mode each poke is an attempt that gives its slot back
//! (`up_for_reschedule`) and uses none of the task's retries. The deadline
//! is set at the first poke and kept until the task is cleared.
//!
//! Time, delta and external-task sensors need no worker: the controller
//! evaluates them itself. A time sensor is one entry in the wall-clock
//! timer queue; an external-task sensor waits on the run it watches (it is
//! woken when that run or its task ends, and reads the store once in case
//! that happened before), plus a timer for its deadline. Nothing polls.

use std::sync::Arc;

use baton_common::ids::{AttemptId, DagId, RunId, TaskId};
use baton_common::pb::api::{AttemptOutcome, RunState, TaskState};
use baton_common::pb::records::{IntervalRecord, RunRecord, TaskRecord};
use baton_common::spec::{SensorCondition, SensorMode, SensorTask, TaskKind};
use baton_common::states::{run_state_name, task_state_name};
use baton_common::time::{Micros, now_micros};
use chrono::{NaiveDateTime, TimeZone};
use tracing::{debug, info};

use super::Scheduler;
use super::deadlines::WallTimer;
use super::schedules::to_datetime;
use crate::plan::TaskIndex;
use crate::scheduler::Command;
use crate::scheduler::views::{record_run_state, record_task_state};
use crate::store::{Store, StoreError, get_record, keys};

/// What a sensor saw of the run (or task) it watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalObservation {
    Met,
    /// It ended in a way that can no longer satisfy the sensor.
    Failed(String),
    Waiting,
}

/// A sensor attempt the controller evaluates, waiting on another run.
pub(super) type ExternalWaiter = (RunId, TaskIndex, u32);

pub(in crate::scheduler) fn sensor_of(kind: &TaskKind) -> Option<&SensorTask> {
    match kind {
        TaskKind::Sensor(sensor) => Some(sensor),
        _ => None,
    }
}

/// A sensor the controller evaluates itself (no worker).
pub(in crate::scheduler) fn runs_on_controller(kind: &TaskKind) -> bool {
    sensor_of(kind).is_some_and(|sensor| !sensor.condition.runs_on_worker())
}

fn micros_of(duration: std::time::Duration) -> Micros {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

impl Scheduler {
    /// The deadline of a sensor's attempt about to start: set at the first
    /// poke, then kept.
    pub(super) fn sensor_deadline_for(&mut self, run_id: RunId, index: TaskIndex) -> Micros {
        let now = self.parts.config.clock.now_micros();
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return now;
        };
        let Some(sensor) = sensor_of(&entry.task(index).kind) else {
            return 0;
        };
        let timeout = micros_of(sensor.timeout);
        let slot = entry.slot_mut(index);
        if slot.sensor_deadline == 0 {
            slot.sensor_deadline = now.saturating_add(timeout);
        }
        slot.sensor_deadline
    }

    /// Whether a TIMED_OUT result of a sensor is the sensor giving up (its
    /// deadline passed) rather than one attempt's own `timeout`.
    pub(super) fn is_sensor_deadline(&self, run_id: RunId, index: TaskIndex) -> bool {
        let Some(entry) = self.runs.get(&run_id) else {
            return false;
        };
        if sensor_of(&entry.task(index).kind).is_none() {
            return false;
        }
        let deadline = entry.slot(index).sensor_deadline;
        // A second of slack for the worker's clock.
        deadline != 0 && self.parts.config.clock.now_micros() + 1_000_000 >= deadline
    }

    /// A reschedule-mode sensor's condition did not hold: its slot is free
    /// already; it pokes again after `poke_interval`, using no retry.
    pub(super) fn reschedule_sensor(&mut self, run_id: RunId, index: TaskIndex) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let Some(sensor) = sensor_of(&entry.task(index).kind) else {
            return;
        };
        let interval = sensor.poke_interval;
        entry.slot_mut(index).attempt_base += 1;
        if !entry.set_state(index, TaskState::UpForReschedule) {
            return;
        }
        let attempt = entry.slot(index).attempt;
        entry.slot_mut(index).next_attempt_at = now_micros() + micros_of(interval);
        self.retry_timers.insert((run_id, index, attempt), interval);
        debug!(dag_id = %entry.dag_id, %run_id, task_id = %entry.task(index).id, attempt, "sensor rescheduled");
        self.touch(run_id);
    }

    /// A sensor reached its deadline: skipped with `soft_fail` (its
    /// downstream skipped too), else failed without a retry.
    pub(super) fn sensor_timed_out(&mut self, run_id: RunId, index: TaskIndex) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let soft_fail = sensor_of(&entry.task(index).kind).is_some_and(|s| s.soft_fail);
        let task_id = entry.task_id(index);
        if soft_fail {
            entry.set_state(index, TaskState::Skipped);
            info!(dag_id = %entry.dag_id, %run_id, %task_id, attempt = entry.slot(index).attempt, "sensor timed out; skipped (soft_fail)");
        } else {
            entry.set_state(index, TaskState::Failed);
            info!(dag_id = %entry.dag_id, %run_id, %task_id, attempt = entry.slot(index).attempt, "sensor timed out; failed");
        }
        self.touch(run_id);
        self.task_ended(run_id, index);
    }

    /// A controller-evaluated sensor became ready: its attempt starts now,
    /// holding no worker slot.
    pub(super) fn start_controller_sensor(&mut self, run_id: RunId, index: TaskIndex) {
        let deadline = self.sensor_deadline_for(run_id, index);
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        if !entry.set_state(index, TaskState::Running) {
            return;
        }
        let now = now_micros();
        let slot = entry.slot_mut(index);
        let attempt = slot.begin_attempt(AttemptId::generate(), None, now);
        slot.started_at = now;
        debug!(dag_id = %entry.dag_id, %run_id, task_id = %entry.task(index).id, attempt, "sensor started on the controller");
        self.touch(run_id);
        self.wall_timers
            .insert(WallTimer::Sensor(run_id, index, attempt), deadline);
        self.evaluate_controller_sensor(run_id, index, attempt, true);
    }

    /// After a restart or failover: a controller sensor that was running
    /// goes on waiting.
    pub(super) fn resume_controller_sensor(&mut self, run_id: RunId, index: TaskIndex) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        let slot = entry.slot(index);
        let (attempt, deadline) = (slot.attempt, slot.sensor_deadline);
        self.wall_timers
            .insert(WallTimer::Sensor(run_id, index, attempt), deadline);
        self.evaluate_controller_sensor(run_id, index, attempt, true);
    }

    /// Whether the attempt is still the task's current one and running.
    fn sensor_attempt_current(&self, run_id: RunId, index: TaskIndex, attempt: u32) -> bool {
        self.runs.get(&run_id).is_some_and(|entry| {
            let slot = entry.slot(index);
            slot.attempt == attempt && slot.state == TaskState::Running
        })
    }

    /// Checks a controller sensor's condition. `first` also starts what it
    /// waits on (a timer, a store read).
    fn evaluate_controller_sensor(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
        attempt: u32,
        first: bool,
    ) {
        if !self.sensor_attempt_current(run_id, index, attempt) {
            return;
        }
        let now = self.parts.config.clock.now_micros();
        let entry = &self.runs[&run_id];
        let Some(sensor) = sensor_of(&entry.task(index).kind) else {
            return;
        };
        let deadline = entry.slot(index).sensor_deadline;
        match &sensor.condition {
            SensorCondition::Time { .. } | SensorCondition::Delta { .. } => {
                let target = self.time_sensor_target(run_id, index);
                if now >= target {
                    self.end_controller_sensor(run_id, index, AttemptOutcome::Succeeded, None);
                } else if now >= deadline {
                    self.end_controller_sensor(
                        run_id,
                        index,
                        AttemptOutcome::TimedOut,
                        Some("the sensor timed out before its time was reached".into()),
                    );
                } else {
                    self.wall_timers.insert(
                        WallTimer::Sensor(run_id, index, attempt),
                        target.min(deadline),
                    );
                }
            }
            SensorCondition::ExternalTask {
                dag_id,
                task_id,
                delta,
            } => {
                let watched = (
                    dag_id.clone(),
                    entry.origin.logical_date.saturating_sub(micros_of(*delta)),
                );
                let task_id = task_id.clone();
                if now >= deadline {
                    if let Some(waiters) = self.external_waiters.get_mut(&watched) {
                        waiters.retain(|waiter| *waiter != (run_id, index, attempt));
                        if waiters.is_empty() {
                            self.external_waiters.remove(&watched);
                        }
                    }
                    self.end_controller_sensor(
                        run_id,
                        index,
                        AttemptOutcome::TimedOut,
                        Some(format!(
                            "the sensor timed out waiting for dag `{}`'s run of {}",
                            watched.0,
                            to_datetime(watched.1).to_rfc3339()
                        )),
                    );
                    return;
                }
                let active = self
                    .active_keys
                    .get(&super::CreateKey::Interval(watched.0.clone(), watched.1))
                    .copied();
                let observation = active.and_then(|watched_run| {
                    self.runs
                        .get(&watched_run)
                        .map(|entry| observe_entry(entry, task_id.as_ref()))
                });
                if first {
                    let waiters = self.external_waiters.entry(watched.clone()).or_default();
                    if !waiters.contains(&(run_id, index, attempt)) {
                        waiters.push((run_id, index, attempt));
                    }
                }
                match observation {
                    Some(observation) => {
                        self.apply_external_observation(run_id, index, attempt, observation)
                    }
                    None if first => {
                        // Not in memory: it may have ended long ago.
                        let store = Arc::clone(&self.parts.store);
                        let sender = self.self_sender.clone();
                        tokio::spawn(async move {
                            let observation =
                                observe_stored(store.as_ref(), &watched.0, watched.1, task_id)
                                    .await;
                            let _ = sender
                                .send(Command::ExternalObserved {
                                    run_id,
                                    index,
                                    attempt,
                                    observation,
                                })
                                .await;
                        });
                    }
                    None => {}
                }
            }
            SensorCondition::File { .. } | SensorCondition::Http { .. } => {}
        }
    }

    /// When a time (`at`) or delta sensor's condition holds.
    fn time_sensor_target(&self, run_id: RunId, index: TaskIndex) -> Micros {
        let entry = &self.runs[&run_id];
        let end = entry.origin.data_interval_end;
        match sensor_of(&entry.task(index).kind).map(|sensor| &sensor.condition) {
            Some(SensorCondition::Delta { after }) => end.saturating_add(micros_of(*after)),
            Some(SensorCondition::Time { at }) => {
                let timezone = entry.plan.settings.timezone;
                let local_date = to_datetime(end).with_timezone(&timezone).date_naive();
                let naive = NaiveDateTime::new(local_date, *at);
                // A time in a daylight-saving gap holds from the gap's end.
                timezone
                    .from_local_datetime(&naive)
                    .earliest()
                    .or_else(|| {
                        timezone
                            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
                            .earliest()
                    })
                    .map_or(end, |instant| instant.timestamp_micros())
            }
            _ => end,
        }
    }

    pub(super) fn on_sensor_timer(&mut self, run_id: RunId, index: TaskIndex, attempt: u32) {
        self.evaluate_controller_sensor(run_id, index, attempt, false);
    }

    /// What a store read found for an external-task sensor.
    pub(super) fn on_external_observed(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
        attempt: u32,
        observation: Result<ExternalObservation, String>,
    ) {
        match observation {
            Ok(observation) => self.apply_external_observation(run_id, index, attempt, observation),
            Err(error) => {
                // The watched run will still wake the sensor when it ends.
                tracing::warn!(%run_id, %error, "cannot read the run an external-task sensor watches");
            }
        }
    }

    fn apply_external_observation(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
        attempt: u32,
        observation: ExternalObservation,
    ) {
        if !self.sensor_attempt_current(run_id, index, attempt) {
            return;
        }
        match observation {
            ExternalObservation::Waiting => {}
            ExternalObservation::Met => {
                self.end_controller_sensor(run_id, index, AttemptOutcome::Succeeded, None)
            }
            ExternalObservation::Failed(reason) => {
                self.end_controller_sensor(run_id, index, AttemptOutcome::Failed, Some(reason))
            }
        }
    }

    /// A run (or a task of it) ended: wake the sensors watching it.
    pub(super) fn on_external_run_changed(&mut self, run_id: RunId) {
        if self.external_waiters.is_empty() {
            return;
        }
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        if !entry.origin.claims_interval() {
            return;
        }
        let watched = (entry.dag_id.clone(), entry.origin.data_interval_start);
        let Some(waiters) = self.external_waiters.get(&watched).cloned() else {
            return;
        };
        for (waiting_run, index, attempt) in waiters {
            self.evaluate_controller_sensor(waiting_run, index, attempt, false);
        }
        if let Some(waiters) = self.external_waiters.get_mut(&watched) {
            let runs = &self.runs;
            waiters.retain(|(waiting_run, index, attempt)| {
                runs.get(waiting_run).is_some_and(|entry| {
                    let slot = entry.slot(*index);
                    slot.attempt == *attempt && slot.state == TaskState::Running
                })
            });
            if waiters.is_empty() {
                self.external_waiters.remove(&watched);
            }
        }
    }

    /// Forgets the timers and waiters of the controller sensors of a run
    /// that leaves memory.
    pub(super) fn disarm_controller_sensors(&mut self, entry: &crate::scheduler::state::RunEntry) {
        for &index in &entry.plan.controller_sensor_tasks {
            let attempt = entry.slot(index).attempt;
            self.wall_timers
                .remove(&WallTimer::Sensor(entry.run_id, index, attempt));
            let watched = match sensor_of(&entry.task(index).kind).map(|s| &s.condition) {
                Some(SensorCondition::ExternalTask { dag_id, delta, .. }) => (
                    dag_id.clone(),
                    entry.origin.logical_date.saturating_sub(micros_of(*delta)),
                ),
                _ => continue,
            };
            if let Some(waiters) = self.external_waiters.get_mut(&watched) {
                waiters.retain(|(run_id, _, _)| *run_id != entry.run_id);
                if waiters.is_empty() {
                    self.external_waiters.remove(&watched);
                }
            }
        }
    }

    /// Ends a controller sensor's attempt with `outcome`.
    fn end_controller_sensor(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
        outcome: AttemptOutcome,
        error: Option<String>,
    ) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let attempt = entry.slot(index).attempt;
        let slot = entry.slot_mut(index);
        slot.outcome = outcome;
        slot.ended_at = now_micros();
        slot.error = error.map(String::into_boxed_str);
        self.wall_timers
            .remove(&WallTimer::Sensor(run_id, index, attempt));
        self.record_attempt_end(run_id, index, 0);
        self.touch(run_id);
        match outcome {
            AttemptOutcome::Succeeded => {
                if let Some(entry) = self.runs.get_mut(&run_id) {
                    entry.set_state(index, TaskState::Success);
                }
                self.task_succeeded(run_id, index);
            }
            AttemptOutcome::TimedOut => self.sensor_timed_out(run_id, index),
            _ => self.after_failed_attempt(run_id, index),
        }
    }
}

/// What an in-memory run says to a sensor watching it (or its task).
fn observe_entry(
    entry: &crate::scheduler::state::RunEntry,
    task_id: Option<&TaskId>,
) -> ExternalObservation {
    let dag_id = &entry.dag_id;
    match task_id {
        None => observe_run_state(dag_id, entry.state),
        Some(task_id) => match entry.plan.index_of(task_id.as_str()) {
            None => ExternalObservation::Failed(format!(
                "dag `{dag_id}` version {} has no task `{task_id}`",
                entry.plan.version
            )),
            Some(index) => observe_task_state(dag_id, task_id, entry.slot(index).state),
        },
    }
}

fn observe_run_state(dag_id: &DagId, state: RunState) -> ExternalObservation {
    match state {
        RunState::Success => ExternalObservation::Met,
        RunState::Failed | RunState::Cancelled => ExternalObservation::Failed(format!(
            "the watched run of dag `{dag_id}` ended {}",
            run_state_name(state)
        )),
        _ => ExternalObservation::Waiting,
    }
}

fn observe_task_state(dag_id: &DagId, task_id: &TaskId, state: TaskState) -> ExternalObservation {
    match state {
        TaskState::Success => ExternalObservation::Met,
        TaskState::Failed
        | TaskState::UpstreamFailed
        | TaskState::Skipped
        | TaskState::Cancelled => ExternalObservation::Failed(format!(
            "task `{task_id}` of the watched run of dag `{dag_id}` ended {}",
            task_state_name(state)
        )),
        _ => ExternalObservation::Waiting,
    }
}

/// Reads the run of `dag_id`'s interval starting at `start` (and its task).
async fn observe_stored(
    store: &dyn Store,
    dag_id: &DagId,
    start: Micros,
    task_id: Option<TaskId>,
) -> Result<ExternalObservation, String> {
    let text = |error: StoreError| error.to_string();
    let Some(interval): Option<IntervalRecord> = get_record(store, &keys::interval(dag_id, start))
        .await
        .map_err(text)?
    else {
        return Ok(ExternalObservation::Waiting);
    };
    let run_id: RunId = interval
        .run_id
        .parse()
        .map_err(|error: baton_common::ids::IdError| error.reason)?;
    let Some(run): Option<RunRecord> =
        get_record(store, &keys::run(&run_id)).await.map_err(text)?
    else {
        return Ok(ExternalObservation::Waiting);
    };
    let run_state = record_run_state(&run);
    match task_id {
        None => Ok(observe_run_state(dag_id, run_state)),
        Some(task_id) => {
            let task: Option<TaskRecord> =
                get_record(store, &keys::task(&run_id, task_id.as_str()))
                    .await
                    .map_err(text)?;
            Ok(match task {
                Some(task) => observe_task_state(dag_id, &task_id, record_task_state(&task)),
                // A task without a record never ran: in a finished run it
                // never will.
                None if baton_common::states::run_state_is_final(run_state) => {
                    ExternalObservation::Failed(format!(
                        "task `{task_id}` of the watched run of dag `{dag_id}` never ran (the run ended {})",
                        run_state_name(run_state)
                    ))
                }
                None => ExternalObservation::Waiting,
            })
        }
    }
}

/// Whether a sensor task runs in reschedule mode.
pub(super) fn reschedules(kind: &TaskKind) -> bool {
    sensor_of(kind).is_some_and(|sensor| sensor.mode == SensorMode::Reschedule)
}
