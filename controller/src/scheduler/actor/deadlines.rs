//! The scheduler's wall-clock timers ([`WallTimer`]) and what each does
//! when due, and SLA deadlines: a run (or task) that has not finished by
//! its data interval's end plus its `sla` gets an [`SlaMiss`] recorded on
//! the run, once.

use baton_common::ids::{DagId, RunId};
use baton_common::pb::api::SlaMiss;
use baton_common::states::{run_state_is_final, task_state_is_final};
use baton_common::time::{Micros, format_micros, micros_to_timestamp_opt};
use tracing::warn;

use super::Scheduler;
use crate::plan::TaskIndex;
use crate::scheduler::state::{Change, Changed};

/// Something the scheduler does at a wall-clock instant. One timer per
/// key: queueing a key again moves it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum WallTimer {
    /// The end of the next interval of a DAG's schedule.
    Schedule(DagId),
    RunSla(RunId),
    TaskSla(RunId, TaskIndex),
    /// A sensor the controller evaluates: its target time or its deadline.
    /// The attempt number makes a timer of an earlier attempt harmless.
    Sensor(RunId, TaskIndex, u32),
}

fn sla_deadline(interval_end: Micros, sla: std::time::Duration) -> Micros {
    interval_end.saturating_add(i64::try_from(sla.as_micros()).unwrap_or(i64::MAX))
}

impl Scheduler {
    /// Runs every timer that is due.
    pub(super) fn on_wall_timers(&mut self) {
        let now = self.parts.config.clock.now_micros();
        for timer in self.wall_timers.pop_due(now) {
            match timer {
                WallTimer::Schedule(dag_id) => self.evaluate_schedule(&dag_id),
                WallTimer::RunSla(run_id) => self.on_sla_due(run_id, None),
                WallTimer::TaskSla(run_id, index) => self.on_sla_due(run_id, Some(index)),
                WallTimer::Sensor(run_id, index, attempt) => {
                    self.on_sensor_timer(run_id, index, attempt)
                }
            }
        }
    }

    /// Queues the SLA deadlines of a running run that it has not missed yet.
    pub(super) fn arm_deadlines(&mut self, run_id: RunId) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        // A backfill reruns the past: its deadlines passed long ago.
        if run_state_is_final(entry.state)
            || entry.origin.trigger == baton_common::pb::api::RunTrigger::Backfill
        {
            return;
        }
        let plan = entry.plan.clone();
        let end = entry.origin.data_interval_end;
        let missed = |task_id: &str| entry.sla_misses.iter().any(|miss| miss.task_id == task_id);
        let mut timers = Vec::new();
        if let Some(sla) = plan.settings.sla
            && !missed("")
        {
            timers.push((WallTimer::RunSla(run_id), sla_deadline(end, sla)));
        }
        for &index in &plan.sla_tasks {
            let task = plan.task(index);
            let Some(sla) = task.sla else { continue };
            if task_state_is_final(entry.slot(index).state) || missed(task.id.as_str()) {
                continue;
            }
            timers.push((WallTimer::TaskSla(run_id, index), sla_deadline(end, sla)));
        }
        for (timer, at) in timers {
            self.wall_timers.insert(timer, at);
        }
    }

    /// Forgets the deadlines of a run that leaves memory.
    pub(super) fn disarm_deadlines(&mut self, run_id: RunId, sla_tasks: &[TaskIndex]) {
        self.wall_timers.remove(&WallTimer::RunSla(run_id));
        for &index in sla_tasks {
            self.wall_timers.remove(&WallTimer::TaskSla(run_id, index));
        }
    }

    fn on_sla_due(&mut self, run_id: RunId, index: Option<TaskIndex>) {
        let now = self.parts.config.clock.now_micros();
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        if run_state_is_final(entry.state) {
            return;
        }
        let (task_id, sla) = match index {
            None => (String::new(), entry.plan.settings.sla),
            Some(index) => {
                if task_state_is_final(entry.slot(index).state) {
                    return;
                }
                let task = entry.task(index);
                (task.id.to_string(), task.sla)
            }
        };
        let Some(sla) = sla else { return };
        if entry.sla_misses.iter().any(|miss| miss.task_id == task_id) {
            return;
        }
        let deadline = sla_deadline(entry.origin.data_interval_end, sla);
        warn!(dag_id = %entry.dag_id, %run_id, task_id = %task_id, sla = %humantime::format_duration(sla), "sla missed");
        entry.changes.push(Change {
            at: now,
            what: Changed::SlaMiss {
                index,
                detail: format!(
                    "sla {} missed: due by {}",
                    humantime::format_duration(sla),
                    format_micros(deadline)
                ),
            },
        });
        entry.sla_misses.push(SlaMiss {
            task_id,
            deadline: micros_to_timestamp_opt(deadline),
            detected_at: micros_to_timestamp_opt(now),
        });
        entry.dirty = true;
        self.touch(run_id);
        self.notify_sla_missed(run_id, index, sla, deadline, now);
    }
}
