//! A run's history: the changes the scheduler made to a run and its tasks
//! (`RunEntry::changes`, noted by every state move), turned into
//! `RunEvent`s with their cause and actor when a batch is cut, and written
//! in that batch (`history/<run>/…`), so the history holds exactly the
//! changes that were stored.
//!
//! The cause is read from the change and from what the task's slot says
//! when the batch is cut (its last attempt's outcome, its worker): a task
//! leaving `running` for `up_for_retry` with outcome `timed_out` was
//! stopped by its timeout; `up_for_retry` to `ready` is the retry; a state
//! set by hand is the user's.

use baton_common::pb::api::{
    AttemptOutcome, EventCause, RunEvent, RunState, RunTrigger, TaskState,
};

use baton_common::states::{outcome_name, task_state_is_final};
use baton_common::time::micros_to_timestamp_opt;

use super::actor::sensors;
use super::state::{Change, Changed, RunEntry};
use crate::plan::TaskIndex;

/// Most events in one history record: a batch that changed more of a run
/// (a 10,000-instance expansion) is written as several records.
pub const EVENTS_PER_RECORD: usize = 1_000;

/// The actor of a change made by a user through the API.
pub const USER: &str = "user";

/// The events of a run's changes, in order; `controller_id` is the actor
/// of what the scheduler decided.
pub fn events(entry: &RunEntry, changes: Vec<Change>, controller_id: &str) -> Vec<RunEvent> {
    changes
        .into_iter()
        .map(|change| {
            let mut event = RunEvent {
                at: micros_to_timestamp_opt(change.at),
                ..RunEvent::default()
            };
            let (cause, actor, detail) = match change.what {
                Changed::Run { from, to } => {
                    event.run_from = from as i32;
                    event.run_to = to as i32;
                    run_cause(entry, from, to, controller_id)
                }
                Changed::Task {
                    index,
                    from,
                    to,
                    marked,
                    attempt,
                } => {
                    event.task_id = entry.task_id(index).to_string();
                    // Leaving `ready` for a worker (or a sensor the
                    // controller runs, or a failure before starting)
                    // begins the next attempt; a mapped task runs none.
                    let begins = from == TaskState::Ready
                        && matches!(
                            to,
                            TaskState::Leased | TaskState::Running | TaskState::Failed
                        )
                        && !entry.mapped.contains_key(&index);
                    event.attempt = attempt + u32::from(begins);
                    event.task_from = from as i32;
                    event.task_to = to as i32;
                    task_cause(entry, index, from, to, marked, controller_id)
                }
                Changed::SlaMiss { index, detail } => {
                    if let Some(index) = index {
                        event.task_id = entry.task_id(index).to_string();
                        event.attempt = entry.slot(index).attempt;
                    }
                    (EventCause::SlaMiss, controller_id.to_string(), detail)
                }
            };
            event.cause = cause as i32;
            event.actor = actor;
            event.detail = detail;
            event
        })
        .collect()
}

fn run_cause(
    entry: &RunEntry,
    from: RunState,
    to: RunState,
    controller_id: &str,
) -> (EventCause, String, String) {
    let scheduler = || controller_id.to_string();
    let reason = entry.reason.clone().unwrap_or_default();
    match (from, to) {
        (RunState::Unspecified, _) => match entry.origin.trigger {
            RunTrigger::Manual | RunTrigger::Unspecified => {
                (EventCause::User, USER.to_string(), "triggered".to_string())
            }
            trigger => {
                let what = match trigger {
                    RunTrigger::Scheduled => "its schedule".to_string(),
                    RunTrigger::Backfill => format!(
                        "backfill {}",
                        entry.origin.backfill_id.as_deref().unwrap_or_default()
                    ),
                    RunTrigger::Event => format!(
                        "event {}",
                        entry.origin.trigger_detail.as_deref().unwrap_or_default()
                    ),
                    _ => format!(
                        "assets {}",
                        entry.origin.trigger_detail.as_deref().unwrap_or_default()
                    ),
                };
                (
                    EventCause::Trigger,
                    scheduler(),
                    format!("created by {what}"),
                )
            }
        },
        (_, RunState::Cancelled) => (EventCause::User, USER.to_string(), reason),
        (RunState::Success | RunState::Failed | RunState::Cancelled, RunState::Running) => (
            EventCause::User,
            USER.to_string(),
            "a task was cleared or marked".to_string(),
        ),
        _ => (EventCause::Scheduler, scheduler(), reason),
    }
}

fn task_cause(
    entry: &RunEntry,
    index: TaskIndex,
    from: TaskState,
    to: TaskState,
    marked: bool,
    controller_id: &str,
) -> (EventCause, String, String) {
    use TaskState::*;
    let slot = entry.slot(index);
    let scheduler = || controller_id.to_string();
    let worker = || slot.worker.as_deref().unwrap_or(controller_id).to_string();
    let error = slot.error.as_deref().unwrap_or_default().to_string();
    if marked {
        return (EventCause::User, USER.to_string(), error);
    }
    let kind = &entry.task(index).kind;
    let sensor = sensors::sensor_of(kind);
    let on_controller = sensors::runs_on_controller(kind);
    let mapped = entry.mapped.contains_key(&index);
    // How the last attempt ended, as its event says it.
    let ended = || match slot.outcome {
        AttemptOutcome::Unspecified | AttemptOutcome::Succeeded => error.clone(),
        outcome if error.is_empty() => outcome_name(outcome).to_string(),
        outcome => format!("{}: {error}", outcome_name(outcome)),
    };
    match (from, to) {
        (_, Pending) if task_state_is_final(from) => {
            (EventCause::User, USER.to_string(), "cleared".to_string())
        }
        (UpForRetry, Ready) => (EventCause::Retry, scheduler(), String::new()),
        (UpForReschedule, Ready) => (EventCause::Sensor, scheduler(), "poke".to_string()),
        (Leased | Running, Ready) if slot.outcome == AttemptOutcome::WorkerDrained => {
            (EventCause::WorkerDrained, worker(), ended())
        }
        (Leased | Running, Ready) if slot.outcome == AttemptOutcome::WorkerLost => {
            (EventCause::WorkerLost, worker(), ended())
        }
        (_, Ready) if mapped => (EventCause::Scheduler, scheduler(), "expanding".to_string()),
        (Ready, Leased) => (
            EventCause::Scheduler,
            scheduler(),
            format!("leased to {}", worker()),
        ),
        (_, Running) if mapped => (
            EventCause::Scheduler,
            scheduler(),
            "running its mapped instances".to_string(),
        ),
        (_, Running) if on_controller => (EventCause::Sensor, scheduler(), String::new()),
        (_, Running) => (EventCause::Worker, worker(), String::new()),
        (_, UpForReschedule) => (EventCause::Sensor, worker(), ended()),
        (_, Success | Failed | Skipped) if mapped => (EventCause::Scheduler, scheduler(), error),
        (Leased | Running, Success | Failed | UpForRetry | Skipped) => {
            let cause = match slot.outcome {
                AttemptOutcome::TimedOut => EventCause::Timeout,
                AttemptOutcome::WorkerLost => EventCause::WorkerLost,
                _ if sensor.is_some() => EventCause::Sensor,
                _ => EventCause::Worker,
            };
            let actor = if on_controller { scheduler() } else { worker() };
            (cause, actor, ended())
        }
        (_, Cancelled) => (EventCause::User, USER.to_string(), error),
        _ => (EventCause::Scheduler, scheduler(), ended()),
    }
}
