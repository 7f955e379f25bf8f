//! `baton task`: change a task's state by hand (Airflow's "Mark success" /
//! "Mark failed"), and the reading of task names shared with `baton run`
//! (`load`, or one mapped instance `load[3]`).

use baton_common::ids::TaskId;
use baton_common::pb::api::{MarkTaskRequest, TaskState};
use baton_common::states::task_state_name;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::Context;
use crate::Outcome;
use crate::output::{print_json, print_line, run_json, run_summary, task_json, task_state};

/// Longest `--reason`, in characters (the API's limit).
const MAX_REASON_CHARS: usize = 1_000;

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Set a task's state by hand, like Airflow's "Mark success" / "Mark
    /// failed": a running attempt is stopped, and the downstream tasks react
    /// at once by their trigger rules (marking a failed task success lets
    /// the run go on; a finished run may run again).
    Mark {
        run_id: String,
        /// The task, or one mapped instance of it as `task[3]`.
        #[arg(value_parser = parse_task)]
        task: String,
        /// The state to set.
        #[arg(long, value_enum)]
        state: MarkState,
        /// Why, recorded on the task (at most 1000 characters).
        #[arg(long, value_parser = parse_reason)]
        reason: Option<String>,
    },
}

/// The states a task may be marked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MarkState {
    Success,
    Failed,
    Skipped,
}

impl MarkState {
    pub fn task_state(self) -> TaskState {
        match self {
            MarkState::Success => TaskState::Success,
            MarkState::Failed => TaskState::Failed,
            MarkState::Skipped => TaskState::Skipped,
        }
    }
}

/// A task id, or a mapped instance `task[3]`, checked before it is sent.
pub fn parse_task(text: &str) -> Result<String, String> {
    TaskId::new(text)
        .map(|task| task.to_string())
        .map_err(|error| error.reason)
}

fn parse_reason(text: &str) -> Result<String, String> {
    let length = text.chars().count();
    if length > MAX_REASON_CHARS {
        return Err(format!(
            "the reason is {length} characters; the limit is {MAX_REASON_CHARS}"
        ));
    }
    Ok(text.to_string())
}

pub async fn run(command: TaskCommand, context: &Context) -> anyhow::Result<Outcome> {
    match command {
        TaskCommand::Mark {
            run_id,
            task,
            state,
            reason,
        } => {
            let mut client = context.client().await?;
            let response = client
                .runs
                .mark_task(MarkTaskRequest {
                    run_id,
                    task_id: task,
                    state: state.task_state() as i32,
                    reason: reason.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let run = response.run.unwrap_or_default();
            let task = response.task.unwrap_or_default();
            if context.json() {
                print_json(&json!({ "task": task_json(&task), "run": run_json(&run) }));
            } else {
                print_line(marked_line(
                    &task.task_id,
                    task_state(&task),
                    &run.run_id,
                    &task.error,
                ));
                print_line(run_summary(&run));
            }
            Ok(Outcome::Success)
        }
    }
}

/// `task load of run R is now success (reason)`.
fn marked_line(task_id: &str, state: TaskState, run_id: &str, reason: &str) -> String {
    let mut line = format!(
        "task {task_id} of run {run_id} is now {}",
        task_state_name(state)
    );
    if !reason.is_empty() {
        line.push_str(&format!(" ({reason})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_are_checked_before_they_are_sent() {
        assert_eq!(parse_task("load"), Ok("load".to_string()));
        assert_eq!(parse_task("per-file[3]"), Ok("per-file[3]".to_string()));
        assert_eq!(
            parse_task("per-file[x]"),
            Err(
                "`per-file[x]` is not a task or a mapped instance; write `task` or `task[3]`"
                    .into()
            )
        );
        assert!(parse_task("two words").is_err());
    }

    #[test]
    fn reasons_are_bounded() {
        assert!(parse_reason(&"é".repeat(1_000)).is_ok());
        assert_eq!(
            parse_reason(&"x".repeat(1_001)),
            Err("the reason is 1001 characters; the limit is 1000".into())
        );
    }

    #[test]
    fn the_marked_line_names_task_state_and_reason() {
        assert_eq!(
            marked_line("load[3]", TaskState::Success, "r1", "fixed by hand"),
            "task load[3] of run r1 is now success (fixed by hand)"
        );
        assert_eq!(
            marked_line("load", TaskState::Skipped, "r1", ""),
            "task load of run r1 is now skipped"
        );
    }
}
