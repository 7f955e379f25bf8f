//! [`Api`]: the typed Baton client with the helpers tests share. Every call
//! carries a deadline; helpers that expect success panic with the status and
//! the tail of the sandbox's process logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_common::client::{BatonClient, endpoint};
use baton_common::pb::api::{
    Attempt, GetDagRequest, GetDagResponse, GetRunRequest, ListTaskAttemptsRequest,
    RegisterDagRequest, RegisterDagResponse, Run, RunState, TaskInstance, TaskState,
    TriggerRunRequest, TriggerRunResponse,
};
use baton_common::states::run_state_is_final;
use baton_common::time::timestamp_opt_to_micros;
use tonic::Status;

use crate::poll::{POLL_INTERVAL, poll_until};
use crate::sandbox::logs_tail;

/// Deadline of one unary call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client plus where to find logs when something goes wrong.
#[derive(Debug, Clone)]
pub struct Api {
    pub client: BatonClient,
    log_dir: PathBuf,
}

impl Api {
    /// Connects to `addr`; `log_dir` holds the process logs shown on failure.
    pub async fn connect(addr: &str, log_dir: &Path) -> Self {
        let channel = endpoint(addr)
            .expect("valid address")
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|error| {
                panic!("cannot connect to {addr}: {error}\n{}", logs_tail(log_dir))
            });
        Self {
            client: BatonClient::from_channel(channel),
            log_dir: log_dir.to_path_buf(),
        }
    }

    /// The last lines of every process log of the sandbox.
    pub fn logs_tail(&self) -> String {
        logs_tail(&self.log_dir)
    }

    fn fail(&self, what: &str, status: &Status) -> ! {
        panic!(
            "{what} failed: {:?}: {}\n{}",
            status.code(),
            status.message(),
            self.logs_tail()
        )
    }

    /// Registers a DAG from YAML text.
    pub async fn try_register(&mut self, yaml: &str) -> Result<RegisterDagResponse, Status> {
        self.client
            .dags
            .register_dag(RegisterDagRequest {
                spec: yaml.to_string(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Registers a DAG from YAML text; panics unless it is accepted.
    pub async fn register(&mut self, yaml: &str) -> RegisterDagResponse {
        match self.try_register(yaml).await {
            Ok(response) => response,
            Err(status) => self.fail("RegisterDag", &status),
        }
    }

    pub async fn get_dag(&mut self, dag_id: &str) -> GetDagResponse {
        match self
            .client
            .dags
            .get_dag(GetDagRequest {
                dag_id: dag_id.to_string(),
                version: 0,
            })
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => self.fail(&format!("GetDag({dag_id})"), &status),
        }
    }

    pub async fn try_trigger(
        &mut self,
        request: TriggerRunRequest,
    ) -> Result<TriggerRunResponse, Status> {
        self.client
            .runs
            .trigger_run(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Triggers a run of `dag_id` with no parameters and returns it.
    pub async fn trigger(&mut self, dag_id: &str) -> Run {
        let request = TriggerRunRequest {
            dag_id: dag_id.to_string(),
            ..Default::default()
        };
        match self.try_trigger(request).await {
            Ok(response) => response.run.expect("TriggerRun answers a run"),
            Err(status) => self.fail(&format!("TriggerRun({dag_id})"), &status),
        }
    }

    /// The run and every task of it.
    pub async fn get_run(&mut self, run_id: &str) -> RunView {
        match self
            .client
            .runs
            .get_run(GetRunRequest {
                run_id: run_id.to_string(),
                include_tasks: true,
            })
            .await
        {
            Ok(response) => {
                let response = response.into_inner();
                RunView {
                    run: response.run.expect("GetRun answers a run"),
                    tasks: response.tasks,
                }
            }
            Err(status) => self.fail(&format!("GetRun({run_id})"), &status),
        }
    }

    /// Polls the run every 50 ms until `done` holds; panics with `what`, the
    /// last state seen and the process logs after `timeout`.
    pub async fn wait_until(
        &mut self,
        run_id: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&RunView) -> bool,
    ) -> RunView {
        let mut last = None;
        let found = poll_until(timeout, POLL_INTERVAL, async || {
            let view = self.get_run(run_id).await;
            if done(&view) {
                return Some(view);
            }
            last = Some(view);
            None
        })
        .await;
        match found {
            Some(view) => view,
            None => panic!(
                "run {run_id}: timed out after {timeout:?} waiting for {what}; last seen:\n{}\n{}",
                last.map(|view| view.describe()).unwrap_or_default(),
                self.logs_tail()
            ),
        }
    }

    /// Waits until the run is SUCCESS, FAILED or CANCELLED.
    pub async fn wait_for_run(&mut self, run_id: &str, timeout: Duration) -> RunView {
        self.wait_until(run_id, "a final run state", timeout, |view| {
            run_state_is_final(view.state())
        })
        .await
    }

    /// Every attempt of a task, oldest first.
    pub async fn attempts(&mut self, run_id: &str, task_id: &str) -> Vec<Attempt> {
        match self
            .client
            .runs
            .list_task_attempts(ListTaskAttemptsRequest {
                run_id: run_id.to_string(),
                task_id: task_id.to_string(),
            })
            .await
        {
            Ok(response) => response.into_inner().attempts,
            Err(status) => self.fail(&format!("ListTaskAttempts({task_id})"), &status),
        }
    }
}

/// A run with its tasks, as GetRun returns them.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run: Run,
    pub tasks: Vec<TaskInstance>,
}

impl RunView {
    pub fn state(&self) -> RunState {
        RunState::try_from(self.run.state).unwrap_or(RunState::Unspecified)
    }

    /// The task with this id; panics if the run has none.
    pub fn task(&self, task_id: &str) -> &TaskInstance {
        self.tasks
            .iter()
            .find(|task| task.task_id == task_id)
            .unwrap_or_else(|| panic!("run has no task `{task_id}`:\n{}", self.describe()))
    }

    pub fn task_state(&self, task_id: &str) -> TaskState {
        task_state(self.task(task_id))
    }

    /// Run state and one line per task, for failure messages.
    pub fn describe(&self) -> String {
        let mut lines = vec![format!(
            "run {} of {}: {:?} {}",
            self.run.run_id,
            self.run.dag_id,
            self.state(),
            self.run.reason
        )];
        for task in &self.tasks {
            lines.push(format!(
                "  {}: {:?} attempt {} on `{}` outcome {} {}",
                task.task_id,
                task_state(task),
                task.attempt,
                task.worker_id,
                task.outcome,
                task.error
            ));
        }
        lines.join("\n")
    }
}

pub fn task_state(task: &TaskInstance) -> TaskState {
    TaskState::try_from(task.state).unwrap_or(TaskState::Unspecified)
}

/// Microseconds since the epoch of an optional timestamp (0 when unset).
pub fn micros(timestamp: Option<&prost_types::Timestamp>) -> i64 {
    timestamp_opt_to_micros(timestamp)
}
