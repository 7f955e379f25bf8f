//! Names of run and task states as users type and read them (`success`,
//! `up_for_retry`), and which states are final.

use crate::pb::api::{AttemptOutcome, EventCause, RunState, TaskState};

pub fn run_state_name(state: RunState) -> &'static str {
    match state {
        RunState::Unspecified => "unspecified",
        RunState::Queued => "queued",
        RunState::Running => "running",
        RunState::Success => "success",
        RunState::Failed => "failed",
        RunState::Cancelled => "cancelled",
    }
}

pub fn parse_run_state(name: &str) -> Option<RunState> {
    [
        RunState::Queued,
        RunState::Running,
        RunState::Success,
        RunState::Failed,
        RunState::Cancelled,
    ]
    .into_iter()
    .find(|state| run_state_name(*state) == name)
}

pub fn run_state_is_final(state: RunState) -> bool {
    matches!(
        state,
        RunState::Success | RunState::Failed | RunState::Cancelled
    )
}

pub fn task_state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified => "unspecified",
        TaskState::Pending => "pending",
        TaskState::Ready => "ready",
        TaskState::Leased => "leased",
        TaskState::Running => "running",
        TaskState::Success => "success",
        TaskState::Failed => "failed",
        TaskState::UpstreamFailed => "upstream_failed",
        TaskState::Skipped => "skipped",
        TaskState::Cancelled => "cancelled",
        TaskState::UpForRetry => "up_for_retry",
        TaskState::UpForReschedule => "up_for_reschedule",
    }
}

pub fn task_state_is_final(state: TaskState) -> bool {
    final_task_state_index(state).is_some()
}

/// How many final task states there are ([`final_task_state_index`]).
pub const FINAL_TASK_STATES: usize = 5;

/// A final task state's place among the [`FINAL_TASK_STATES`], for what is
/// kept per final state (a task's finished counters); `None` for the
/// others.
pub fn final_task_state_index(state: TaskState) -> Option<usize> {
    match state {
        TaskState::Success => Some(0),
        TaskState::Failed => Some(1),
        TaskState::UpstreamFailed => Some(2),
        TaskState::Skipped => Some(3),
        TaskState::Cancelled => Some(4),
        _ => None,
    }
}

pub fn outcome_name(outcome: AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Unspecified => "-",
        AttemptOutcome::Succeeded => "succeeded",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::TimedOut => "timed_out",
        AttemptOutcome::Cancelled => "cancelled",
        AttemptOutcome::WorkerLost => "worker_lost",
        AttemptOutcome::Error => "error",
        AttemptOutcome::WorkerDrained => "worker_drained",
        AttemptOutcome::Rescheduled => "rescheduled",
    }
}

/// Whether an attempt did not succeed for a reason of its own (its trace
/// spans are marked as errors): a cancel, a drained worker or a reschedule
/// is not a failure.
pub fn outcome_is_failure(outcome: AttemptOutcome) -> bool {
    !matches!(
        outcome,
        AttemptOutcome::Succeeded
            | AttemptOutcome::Cancelled
            | AttemptOutcome::Rescheduled
            | AttemptOutcome::WorkerDrained
            | AttemptOutcome::Unspecified
    )
}

pub fn event_cause_name(cause: EventCause) -> &'static str {
    match cause {
        EventCause::Unspecified => "-",
        EventCause::Scheduler => "scheduler",
        EventCause::User => "user",
        EventCause::Worker => "worker",
        EventCause::WorkerLost => "worker_lost",
        EventCause::Timeout => "timeout",
        EventCause::Retry => "retry",
        EventCause::Sensor => "sensor",
        EventCause::SlaMiss => "sla_miss",
        EventCause::WorkerDrained => "worker_drained",
        EventCause::Trigger => "trigger",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_state_names_parse_back() {
        for state in [
            RunState::Queued,
            RunState::Running,
            RunState::Success,
            RunState::Failed,
            RunState::Cancelled,
        ] {
            assert_eq!(parse_run_state(run_state_name(state)), Some(state));
        }
        assert_eq!(parse_run_state("bogus"), None);
    }
}
