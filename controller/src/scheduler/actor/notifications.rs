//! Notifications of a run's events: which notifiers want the event (the
//! DAG version's own, else the controller's defaults), the notification
//! built from the run in memory, and its hand-over as an [`Effect`].
//!
//! The hand-over is an effect, so it happens only after the batch holding
//! the change commits: a leader that loses its term (a fenced write, a
//! lapsed lease) before that sends nothing for the change, and the next
//! leader decides again from the store. Building costs nothing when no
//! notifier wants the event; a run's end lists its failed tasks by walking
//! its slots only while failed ones remain unlisted.

use baton_common::ids::RunId;
use baton_common::pb::api::{AttemptOutcome, RunState, RunTrigger, TaskState};
use baton_common::spec::NotifyEvent;
use baton_common::states::{outcome_name, run_state_name, task_state_name};
use baton_common::time::{Micros, micros_to_datetime};
use chrono::SecondsFormat;

use super::Scheduler;
use crate::notify::{MAX_LISTED_TASKS, Notification, SlaSummary, TaskSummary};
use crate::plan::TaskIndex;
use crate::scheduler::flush::Effect;
use crate::scheduler::state::RunEntry;

impl Scheduler {
    /// The run just ended (its state is set): notifiers of `run_failed` or
    /// `run_succeeded` are told. A cancelled run notifies nobody: someone
    /// cancelled it.
    pub(super) fn notify_run_ended(&mut self, run_id: RunId) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        let event = match entry.state {
            RunState::Failed => NotifyEvent::RunFailed,
            RunState::Success => NotifyEvent::RunSucceeded,
            _ => return,
        };
        self.queue_notification(run_id, event, |_| (None, None));
    }

    /// The task's last allowed attempt failed (its state is `failed`).
    pub(super) fn notify_retry_exhausted(&mut self, run_id: RunId, index: TaskIndex) {
        self.queue_notification(run_id, NotifyEvent::RetryExhausted, |entry| {
            (Some(task_summary(entry, index)), None)
        });
    }

    /// The run (`index` is `None`) or one of its tasks missed its SLA.
    pub(super) fn notify_sla_missed(
        &mut self,
        run_id: RunId,
        index: Option<TaskIndex>,
        sla: std::time::Duration,
        deadline: Micros,
        detected_at: Micros,
    ) {
        self.queue_notification(run_id, NotifyEvent::SlaMissed, |entry| {
            let sla = SlaSummary {
                task_id: index.map(|index| entry.task_id(index).to_string()),
                sla_seconds: sla.as_secs_f64(),
                deadline: timestamp(deadline),
                detected_at: timestamp(detected_at),
            };
            (index.map(|index| task_summary(entry, index)), Some(sla))
        });
    }

    fn queue_notification(
        &mut self,
        run_id: RunId,
        event: NotifyEvent,
        details: impl FnOnce(&RunEntry) -> (Option<TaskSummary>, Option<SlaSummary>),
    ) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        let targets = self
            .parts
            .notifications
            .targets(&entry.plan.settings.notify, event);
        if targets.is_empty() {
            return;
        }
        let (task, sla) = details(entry);
        let notification = notification(entry, event, task, sla);
        self.pending.effects.push(Effect::Notify {
            targets,
            notification: Box::new(notification),
        });
    }
}

fn notification(
    entry: &RunEntry,
    event: NotifyEvent,
    task: Option<TaskSummary>,
    sla: Option<SlaSummary>,
) -> Notification {
    let (failed_tasks, failed_tasks_omitted) = failed_tasks(entry);
    let started = entry.started_at.max(entry.created_at);
    let duration_seconds =
        (entry.ended_at > 0).then(|| (entry.ended_at - started).max(0) as f64 / 1_000_000.0);
    let mut notification = Notification {
        id: uuid::Uuid::now_v7().to_string(),
        event,
        dag_id: entry.dag_id.to_string(),
        run_id: entry.run_id.to_string(),
        state: run_state_name(entry.state),
        reason: entry.reason.clone(),
        trigger: trigger_name(entry.origin.trigger),
        logical_date: timestamp(entry.origin.logical_date),
        data_interval_start: timestamp(entry.origin.data_interval_start),
        data_interval_end: timestamp(entry.origin.data_interval_end),
        created_at: timestamp(entry.created_at),
        started_at: timestamp_opt(entry.started_at),
        ended_at: timestamp_opt(entry.ended_at),
        duration_seconds,
        failed_tasks,
        failed_tasks_omitted,
        task,
        sla,
        description: String::new(),
    };
    notification.description = notification.describe();
    notification
}

/// The run's failed tasks in slot order (plan order, then mapped
/// instances), at most [`MAX_LISTED_TASKS`], and how many more there are.
fn failed_tasks(entry: &RunEntry) -> (Vec<TaskSummary>, u32) {
    let failed = entry.counts[TaskState::Failed as usize] as usize;
    let wanted = failed.min(MAX_LISTED_TASKS);
    let mut listed = Vec::with_capacity(wanted);
    for index in 0..entry.tasks.len() as TaskIndex {
        if listed.len() == wanted {
            break;
        }
        if entry.slot(index).state == TaskState::Failed {
            listed.push(task_summary(entry, index));
        }
    }
    let omitted = failed.saturating_sub(listed.len()) as u32;
    (listed, omitted)
}

fn task_summary(entry: &RunEntry, index: TaskIndex) -> TaskSummary {
    let slot = entry.slot(index);
    let task = entry.task(index);
    TaskSummary {
        task_id: entry.task_id(index).to_string(),
        state: task_state_name(slot.state),
        attempt: slot.attempt,
        max_attempts: slot.max_attempts(task.retries),
        outcome: (slot.outcome != AttemptOutcome::Unspecified).then(|| outcome_name(slot.outcome)),
        exit_code: slot.exit_code,
        error: slot.error.as_deref().map(str::to_string),
        ended_at: timestamp_opt(slot.ended_at),
    }
}

fn trigger_name(trigger: RunTrigger) -> &'static str {
    match trigger {
        RunTrigger::Unspecified => "unspecified",
        RunTrigger::Manual => "manual",
        RunTrigger::Scheduled => "scheduled",
        RunTrigger::Backfill => "backfill",
        RunTrigger::Event => "event",
        RunTrigger::Asset => "asset",
    }
}

/// RFC 3339 in UTC with milliseconds.
fn timestamp(micros: Micros) -> String {
    micros_to_datetime(micros).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn timestamp_opt(micros: Micros) -> Option<String> {
    (micros > 0).then(|| timestamp(micros))
}
