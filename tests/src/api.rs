//! [`Api`]: the typed Baton client with the helpers tests share. Every call
//! carries a deadline; helpers that expect success panic with the status and
//! the tail of the sandbox's process logs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_common::client::{BatonClient, endpoint};
use baton_common::pb::api::{
    Attempt, AttemptOutcome, Dag, GetDagRequest, GetDagResponse, GetRunRequest, ListDagsRequest,
    ListTaskAttemptsRequest, MarkTaskRequest, MarkTaskResponse, RegisterDagRequest,
    RegisterDagResponse, RetryTaskRequest, RetryTaskResponse, Run, RunState, TaskInstance,
    TaskState, TriggerRunRequest, TriggerRunResponse,
};
use baton_common::states::{run_state_is_final, task_state_is_final};
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

    /// Connects to a cluster through `addrs` (comma-separated controller
    /// addresses): reads go to the first reachable one, writes follow it to
    /// the leader. `log_dir` holds the process logs shown on failure.
    pub async fn connect_cluster(addrs: &str, log_dir: &Path) -> Self {
        let client = tokio::time::timeout(CALL_TIMEOUT, BatonClient::connect(addrs))
            .await
            .unwrap_or_else(|_| panic!("connecting to {addrs} took over {CALL_TIMEOUT:?}"))
            .unwrap_or_else(|error| {
                panic!("cannot connect to {addrs}: {error}\n{}", logs_tail(log_dir))
            });
        Self {
            client,
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
        bounded(self.client.dags.register_dag(RegisterDagRequest {
            spec: yaml.to_string(),
            ..Default::default()
        }))
        .await
    }

    /// Registers a DAG from YAML text; panics unless it is accepted.
    pub async fn register(&mut self, yaml: &str) -> RegisterDagResponse {
        match self.try_register(yaml).await {
            Ok(response) => response,
            Err(status) => self.fail("RegisterDag", &status),
        }
    }

    pub async fn get_dag(&mut self, dag_id: &str) -> GetDagResponse {
        match bounded(self.client.dags.get_dag(GetDagRequest {
            dag_id: dag_id.to_string(),
            version: 0,
        }))
        .await
        {
            Ok(response) => response,
            Err(status) => self.fail(&format!("GetDag({dag_id})"), &status),
        }
    }

    /// Every DAG stored (`ListDags`, first page).
    pub async fn list_dags(&mut self) -> Vec<Dag> {
        match bounded(self.client.dags.list_dags(ListDagsRequest::default())).await {
            Ok(response) => response.dags,
            Err(status) => self.fail("ListDags", &status),
        }
    }

    pub async fn try_trigger(
        &mut self,
        request: TriggerRunRequest,
    ) -> Result<TriggerRunResponse, Status> {
        bounded(self.client.runs.trigger_run(request)).await
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

    /// The run, with every task of it when `include_tasks`.
    pub async fn try_get_run(
        &mut self,
        run_id: &str,
        include_tasks: bool,
    ) -> Result<RunView, Status> {
        let response = bounded(self.client.runs.get_run(GetRunRequest {
            run_id: run_id.to_string(),
            include_tasks,
        }))
        .await?;
        Ok(RunView {
            run: response.run.expect("GetRun answers a run"),
            tasks: response.tasks,
        })
    }

    /// The run and every task of it.
    pub async fn get_run(&mut self, run_id: &str) -> RunView {
        match self.try_get_run(run_id, true).await {
            Ok(view) => view,
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

    /// Polls the run record (without its tasks) every `interval` until
    /// `done` holds, riding out failed calls (in a cluster a controller may
    /// be down or an election under way meanwhile); panics with `what`, the
    /// last state and error seen, and the process logs after `timeout`.
    pub async fn poll_run(
        &mut self,
        run_id: &str,
        what: &str,
        timeout: Duration,
        interval: Duration,
        done: impl Fn(&Run) -> bool,
    ) -> Run {
        let mut last_run = None;
        let mut last_error = None;
        let found = poll_until(timeout, interval, async || {
            match self.try_get_run(run_id, false).await {
                Ok(view) if done(&view.run) => return Some(view.run),
                Ok(view) => last_run = Some(view.run),
                Err(status) => {
                    last_error = Some(format!("{:?}: {}", status.code(), status.message()))
                }
            }
            None
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "run {run_id}: timed out after {timeout:?} waiting for {what}; last seen: {:?} {:?}; last error: {}\n{}",
                last_run.as_ref().map(|run| RunState::try_from(run.state)),
                last_run.as_ref().map(|run| &run.task_counts),
                last_error.unwrap_or_default(),
                self.logs_tail()
            )
        })
    }

    /// Waits until the run is SUCCESS, FAILED or CANCELLED.
    pub async fn wait_for_run(&mut self, run_id: &str, timeout: Duration) -> RunView {
        self.wait_until(run_id, "a final run state", timeout, |view| {
            run_state_is_final(view.state())
        })
        .await
    }

    /// Waits until the run is SUCCESS, FAILED or CANCELLED and every task of
    /// it is in a final state too (a run that ended with tasks left pending
    /// times out here, showing them).
    pub async fn wait_for_settled_run(&mut self, run_id: &str, timeout: Duration) -> RunView {
        self.wait_until(
            run_id,
            "a final run state with every task final",
            timeout,
            |view| {
                run_state_is_final(view.state())
                    && view
                        .tasks
                        .iter()
                        .all(|task| task_state_is_final(task_state(task)))
            },
        )
        .await
    }

    /// Triggers a run of `dag_id` with these params (a JSON object).
    pub async fn trigger_with_params(&mut self, dag_id: &str, params_json: &str) -> Run {
        let request = TriggerRunRequest {
            dag_id: dag_id.to_string(),
            params_json: params_json.to_string(),
            ..Default::default()
        };
        match self.try_trigger(request).await {
            Ok(response) => response.run.expect("TriggerRun answers a run"),
            Err(status) => self.fail(&format!("TriggerRun({dag_id}, {params_json})"), &status),
        }
    }

    /// Sets a task's state by hand (`RunService.MarkTask`).
    pub async fn try_mark_task(
        &mut self,
        run_id: &str,
        task_id: &str,
        state: TaskState,
        reason: &str,
    ) -> Result<MarkTaskResponse, Status> {
        bounded(self.client.runs.mark_task(MarkTaskRequest {
            run_id: run_id.to_string(),
            task_id: task_id.to_string(),
            state: state as i32,
            reason: reason.to_string(),
        }))
        .await
    }

    /// Sets a task's state by hand; panics unless it is accepted.
    pub async fn mark_task(
        &mut self,
        run_id: &str,
        task_id: &str,
        state: TaskState,
        reason: &str,
    ) -> MarkTaskResponse {
        match self.try_mark_task(run_id, task_id, state, reason).await {
            Ok(response) => response,
            Err(status) => self.fail(&format!("MarkTask({task_id}, {state:?})"), &status),
        }
    }

    /// Clears a task (`RunService.RetryTask`); panics unless it is accepted.
    pub async fn retry_task(&mut self, request: RetryTaskRequest) -> RetryTaskResponse {
        let what = format!("RetryTask({})", request.task_id);
        match bounded(self.client.runs.retry_task(request)).await {
            Ok(response) => response,
            Err(status) => self.fail(&what, &status),
        }
    }

    /// Every attempt of a task, oldest first.
    pub async fn try_attempts(
        &mut self,
        run_id: &str,
        task_id: &str,
    ) -> Result<Vec<Attempt>, Status> {
        bounded(
            self.client
                .runs
                .list_task_attempts(ListTaskAttemptsRequest {
                    run_id: run_id.to_string(),
                    task_id: task_id.to_string(),
                }),
        )
        .await
        .map(|response| response.attempts)
    }

    /// Every attempt of a task, oldest first.
    pub async fn attempts(&mut self, run_id: &str, task_id: &str) -> Vec<Attempt> {
        match self.try_attempts(run_id, task_id).await {
            Ok(attempts) => attempts,
            Err(status) => self.fail(&format!("ListTaskAttempts({task_id})"), &status),
        }
    }
}

/// Tasks whose attempts are listed at once by
/// [`Api::check_each_task_succeeded_once`].
const ATTEMPT_LISTS_IN_FLIGHT: usize = 8;

/// What [`Api::check_each_task_succeeded_once`] found.
#[derive(Debug, Default)]
pub struct SuccessCheck {
    pub tasks: usize,
    /// Attempts recorded over every task.
    pub attempts: usize,
    /// Tasks that took more than one attempt, with their outcomes.
    pub retried: Vec<String>,
    /// Every breach of "each task SUCCESS, its success recorded once".
    pub problems: Vec<String>,
}

impl SuccessCheck {
    /// Panics listing the problems (at most 20) unless there are none.
    pub fn assert_no_problems(&self, context: &str) {
        assert!(
            self.problems.is_empty(),
            "{} of {} tasks break \"SUCCESS, success recorded once\" ({context}):\n{}",
            self.problems.len(),
            self.tasks,
            self.problems
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

impl Api {
    /// Checks every task of a finished run (`view`, with its tasks): state
    /// SUCCESS; `ListTaskAttempts` shows attempts numbered 1, 2, … with
    /// unique ids, every one ended, and exactly one SUCCEEDED, the last one,
    /// which is the task's current attempt. Lists attempts of several tasks
    /// at once; a failed call is a problem, not a panic.
    pub async fn check_each_task_succeeded_once(&self, view: &RunView) -> SuccessCheck {
        let run_id = view.run.run_id.clone();
        let tasks: Vec<TaskInstance> = view.tasks.clone();
        let chunk_size = tasks.len().div_ceil(ATTEMPT_LISTS_IN_FLIGHT).max(1);
        let mut checks = tokio::task::JoinSet::new();
        for chunk in tasks.chunks(chunk_size) {
            let chunk = chunk.to_vec();
            let mut api = self.clone();
            let run_id = run_id.clone();
            checks.spawn(async move {
                let mut check = SuccessCheck::default();
                for task in &chunk {
                    check_task(&mut api, &run_id, task, &mut check).await;
                }
                check
            });
        }
        let mut total = SuccessCheck {
            tasks: tasks.len(),
            ..SuccessCheck::default()
        };
        while let Some(joined) = checks.join_next().await {
            let check = joined.expect("attempt check task panicked");
            total.attempts += check.attempts;
            total.retried.extend(check.retried);
            total.problems.extend(check.problems);
        }
        total.retried.sort();
        total.problems.sort();
        total
    }
}

async fn check_task(api: &mut Api, run_id: &str, task: &TaskInstance, check: &mut SuccessCheck) {
    let id = &task.task_id;
    if task_state(task) != TaskState::Success {
        check
            .problems
            .push(format!("{id}: {:?}, not SUCCESS", task_state(task)));
    }
    let attempts = match api.try_attempts(run_id, id).await {
        Ok(attempts) => attempts,
        Err(status) => {
            check.problems.push(format!(
                "{id}: ListTaskAttempts failed: {:?} {}",
                status.code(),
                status.message()
            ));
            return;
        }
    };
    check.attempts += attempts.len();
    let outcomes: Vec<String> = attempts
        .iter()
        .map(|attempt| {
            let outcome = AttemptOutcome::try_from(attempt.outcome).map_or_else(
                |_| attempt.outcome.to_string(),
                |o| o.as_str_name().to_string(),
            );
            format!("#{} {outcome} on {}", attempt.attempt, attempt.worker_id)
        })
        .collect();
    if attempts.len() > 1 {
        check.retried.push(format!("{id}: {}", outcomes.join(", ")));
    }
    let numbers: Vec<u32> = attempts.iter().map(|attempt| attempt.attempt).collect();
    let expected: Vec<u32> = (1..=attempts.len() as u32).collect();
    let ids: HashSet<&str> = attempts.iter().map(|a| a.attempt_id.as_str()).collect();
    let succeeded = attempts
        .iter()
        .filter(|attempt| attempt.outcome == AttemptOutcome::Succeeded as i32)
        .count();
    let last = attempts.last();
    let last_is_current_success = last.is_some_and(|attempt| {
        attempt.outcome == AttemptOutcome::Succeeded as i32 && attempt.attempt_id == task.attempt_id
    });
    let unfinished = attempts
        .iter()
        .any(|attempt| attempt.outcome == AttemptOutcome::Unspecified as i32);
    if numbers != expected
        || ids.len() != attempts.len()
        || succeeded != 1
        || !last_is_current_success
        || unfinished
    {
        check.problems.push(format!(
            "{id}: attempts [{}] (numbers {numbers:?}, {} unique ids, {succeeded} SUCCEEDED; task's attempt {} {})",
            outcomes.join(", "),
            ids.len(),
            task.attempt,
            task.attempt_id
        ));
    }
}

/// Bounds one call by [`CALL_TIMEOUT`] whatever channel carries it: a
/// client that follows the leader opens channels of its own, without the
/// timeout of the one it was given.
pub async fn bounded<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

/// The state of a run record.
pub fn run_state(run: &Run) -> RunState {
    RunState::try_from(run.state).unwrap_or(RunState::Unspecified)
}

/// Whether the run is SUCCESS, FAILED or CANCELLED.
pub fn run_is_final(run: &Run) -> bool {
    run_state_is_final(run_state(run))
}

/// How many tasks of the run are in `state` (e.g. `"success"`), as of the
/// run record's last write.
pub fn task_count(run: &Run, state: &str) -> u32 {
    run.task_counts.get(state).copied().unwrap_or(0)
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

    /// The JSON output of a task; panics if it has none or it is not JSON.
    pub fn output(&self, task_id: &str) -> serde_json::Value {
        serde_json::from_str(&self.task(task_id).output_json).unwrap_or_else(|error| {
            panic!(
                "the output of `{task_id}` is not JSON: {error}\n{}",
                self.describe()
            )
        })
    }

    /// Asserts the run's state and each listed task's, reporting every
    /// difference at once. A task that ran (SUCCESS, FAILED) has one
    /// attempt and the others none; an expanded `map_over` task runs no
    /// attempt of its own (its instances do). With `complete`, a task of
    /// the run that is not listed is a difference too.
    pub fn assert_states(
        &self,
        expected: &[(&str, TaskState)],
        run_state: RunState,
        complete: bool,
    ) {
        let mut problems = Vec::new();
        if self.state() != run_state {
            problems.push(format!("run: {:?}, expected {run_state:?}", self.state()));
        }
        for (task_id, state) in expected {
            let Some(task) = self.tasks.iter().find(|task| task.task_id == *task_id) else {
                problems.push(format!("{task_id}: missing from GetRun"));
                continue;
            };
            let actual = task_state(task);
            if actual != *state {
                problems.push(format!("{task_id}: {actual:?}, expected {state:?}"));
            }
            let ran = matches!(state, TaskState::Success | TaskState::Failed)
                && task.map_length.is_none();
            let expected_attempts = u32::from(ran);
            if task.attempt != expected_attempts {
                problems.push(format!(
                    "{task_id}: attempt {}, expected {expected_attempts} ({})",
                    task.attempt,
                    if ran {
                        "it ran once"
                    } else {
                        "it must not run"
                    }
                ));
            }
        }
        if complete {
            for task in &self.tasks {
                if !expected.iter().any(|(task_id, _)| *task_id == task.task_id) {
                    problems.push(format!("{}: not expected in the run", task.task_id));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{} differences:\n{}\n{}",
            problems.len(),
            problems.join("\n"),
            self.describe()
        );
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
