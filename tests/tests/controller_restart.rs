//! Crash recovery of the controller.
//!
//! - `baton dev` is SIGKILLed in the middle of a run of 40 tasks (chains and
//!   parallel tasks) and started again on the same data dir and port. The
//!   run resumes from the store and succeeds; every task ends SUCCESS with
//!   attempts numbered 1, 2, … without gaps or duplicates and exactly one
//!   SUCCEEDED outcome, the last one.
//! - `baton controller` is SIGKILLed while a separate `baton worker` runs two
//!   tasks: one finishes while the controller is down, one after it is back.
//!   The worker keeps the unacknowledged result and log and re-announces the
//!   running attempt, so both tasks succeed in their first attempt (nothing
//!   is run twice) and their logs are complete.
//! - Whatever the API acknowledged before a SIGKILL (a new DAG version, a
//!   pause, a run with its idempotency key, a cancellation) is there after
//!   the restart.
//! - `baton controller` and the worker running a task both die. The restarted
//!   controller waits the recovery grace for the worker to re-announce the
//!   attempt, then fails it as WORKER_LOST and retries it on another worker.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use baton_tests::pb::{
    AttemptOutcome, CancelRunRequest, PauseDagRequest, ReadTaskLogRequest, RunState, TaskState,
    TriggerRunRequest, UnpauseDagRequest,
};
use baton_tests::{Api, PidFiles, Sandbox, micros};
use nix::sys::signal::Signal;
use regex::Regex;

const WAIT: Duration = Duration::from_secs(60);
const CHAINS: usize = 4;
const CHAIN_LENGTH: usize = 5;
const PARALLEL: usize = 19;
/// Chains, parallel tasks and the final join.
const TASKS: usize = CHAINS * CHAIN_LENGTH + PARALLEL + 1;

fn dag() -> String {
    let mut yaml = String::from(
        "id: restartable\ndefault_args:\n  retries: 3\n  retry_delay: 200ms\ntasks:\n",
    );
    let mut ends = Vec::new();
    for chain in 0..CHAINS {
        for link in 0..CHAIN_LENGTH {
            let id = format!("chain{chain}_{link}");
            write!(yaml, "  - id: {id}\n    command: sleep 0.2\n").unwrap();
            if link > 0 {
                writeln!(yaml, "    depends_on: [chain{chain}_{}]", link - 1).unwrap();
            }
            if link == CHAIN_LENGTH - 1 {
                ends.push(id);
            }
        }
    }
    for part in 0..PARALLEL {
        let id = format!("part{part:02}");
        write!(yaml, "  - id: {id}\n    command: sleep 0.2\n").unwrap();
        ends.push(id);
    }
    write!(
        yaml,
        "  - id: join\n    command: sleep 0.2\n    depends_on: [{}]\n",
        ends.join(", ")
    )
    .unwrap();
    yaml
}

#[tokio::test]
async fn run_resumes_after_the_controller_is_killed_and_restarted() {
    let mut sandbox = Sandbox::new("restart");
    let mut dev = sandbox.start_dev(&["--slots", "4"]).await;
    let mut api = sandbox.api().await;
    api.register(&dag()).await;
    let run = api.trigger("restartable").await;

    let before = api
        .wait_until(&run.run_id, "some but not all tasks done", WAIT, |view| {
            let done = view.run.task_counts.get("success").copied().unwrap_or(0);
            (8..TASKS as u32 - 10).contains(&done)
        })
        .await;
    dev.signal(Signal::SIGKILL);
    dev.wait_exit(WAIT).await;
    drop(dev);

    let _dev = sandbox.start_dev(&["--slots", "4"]).await;
    let mut api = sandbox.api().await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(
        view.state(),
        RunState::Success,
        "{}\nbefore the kill:\n{}",
        view.describe(),
        before.describe()
    );
    assert_eq!(view.tasks.len(), TASKS);

    let mut problems = Vec::new();
    for task in &view.tasks {
        if view.task_state(&task.task_id) != TaskState::Success {
            problems.push(format!("{}: not SUCCESS", task.task_id));
        }
        let attempts = api.attempts(&run.run_id, &task.task_id).await;
        let numbers: Vec<u32> = attempts.iter().map(|attempt| attempt.attempt).collect();
        let expected: Vec<u32> = (1..=attempts.len() as u32).collect();
        let ids: HashSet<&str> = attempts.iter().map(|a| a.attempt_id.as_str()).collect();
        let succeeded = attempts
            .iter()
            .filter(|attempt| attempt.outcome == AttemptOutcome::Succeeded as i32)
            .count();
        let last_succeeded = attempts
            .last()
            .is_some_and(|attempt| attempt.outcome == AttemptOutcome::Succeeded as i32);
        let unfinished = attempts
            .iter()
            .any(|attempt| attempt.outcome == AttemptOutcome::Unspecified as i32);
        if numbers != expected
            || ids.len() != attempts.len()
            || succeeded != 1
            || !last_succeeded
            || unfinished
            || task.attempt as usize != attempts.len()
        {
            problems.push(format!(
                "{}: task attempt {}, attempts {:?}",
                task.task_id,
                task.attempt,
                attempts
                    .iter()
                    .map(|a| (a.attempt, a.outcome, a.attempt_id.clone()))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "after the restart:\n{}\n{}",
        problems.join("\n"),
        view.describe()
    );
}

/// The whole log of a task's latest attempt.
async fn task_log(api: &mut Api, run_id: &str, task_id: &str) -> String {
    let mut stream = api
        .client
        .runs
        .read_task_log(ReadTaskLogRequest {
            run_id: run_id.to_string(),
            task_id: task_id.to_string(),
            ..Default::default()
        })
        .await
        .expect("ReadTaskLog")
        .into_inner();
    let mut log = Vec::new();
    for _ in 0..10_000 {
        let message = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("log chunk in time")
            .expect("ReadTaskLog stream");
        let Some(chunk) = message else {
            return String::from_utf8_lossy(&log).into_owned();
        };
        assert_eq!(chunk.offset as usize, log.len(), "chunks are contiguous");
        log.extend_from_slice(&chunk.data);
    }
    panic!("the log of {task_id} did not end");
}

#[tokio::test]
async fn worker_keeps_its_attempts_across_a_controller_restart() {
    let mut sandbox = Sandbox::new("restart-worker");
    let controller_args = ["--recovery-grace", "10s"];
    let mut controller = sandbox.start_controller(&controller_args).await;
    let mut worker = sandbox.start_worker("w", &["--slots", "2"]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: survivor
tasks:
  - id: short
    command: "echo short begins; sleep 0.5; echo short done"
  - id: long
    command: "echo long begins; sleep 3; echo long done"
"#,
    )
    .await;
    let run = api.trigger("survivor").await;
    api.wait_until(&run.run_id, "both tasks running", WAIT, |view| {
        ["short", "long"]
            .iter()
            .all(|task| view.task_state(task) == TaskState::Running)
    })
    .await;

    controller.signal(Signal::SIGKILL);
    controller.wait_exit(WAIT).await;
    drop(controller);
    // `short` ends while no controller is there to hear it.
    worker
        .wait_for_log(
            Regex::new(r"task_id=short\b.*attempt finished").unwrap(),
            WAIT,
        )
        .await;

    let _controller = sandbox.start_controller(&controller_args).await;
    let mut api = sandbox.api().await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    for task_id in ["short", "long"] {
        let attempts = api.attempts(&run.run_id, task_id).await;
        assert_eq!(
            attempts.len(),
            1,
            "{task_id} ran again after the restart: {attempts:?}"
        );
        assert_eq!(attempts[0].outcome, AttemptOutcome::Succeeded as i32);
        assert_eq!(attempts[0].worker_id, "w");
        let log = task_log(&mut api, &run.run_id, task_id).await;
        assert_eq!(log, format!("{task_id} begins\n{task_id} done\n"));
    }
}

#[tokio::test]
async fn attempts_of_a_worker_that_never_returns_fail_after_the_recovery_grace() {
    let mut sandbox = Sandbox::new("restart-lost-worker");
    let controller_args = ["--recovery-grace", "1s"];
    let mut controller = sandbox.start_controller(&controller_args).await;
    let mut doomed = sandbox.start_worker("doomed", &["--slots", "1"]).await;
    let mut api = sandbox.api().await;
    let mut pid_files = PidFiles::new();
    let pids = pid_files.track(sandbox.path().join("pids"));
    api.register(&format!(
        r#"
id: orphaned
tasks:
  - id: work
    command: |
      echo $$ >> "$PIDS"
      if [ "$BATON_ATTEMPT" = 1 ]; then exec sleep 60; fi
    env:
      PIDS: "{}"
    retries: 1
    retry_delay: 100ms
"#,
        pids.display()
    ))
    .await;
    let run = api.trigger("orphaned").await;
    api.wait_until(&run.run_id, "work running", WAIT, |view| {
        view.task_state("work") == TaskState::Running
    })
    .await;

    doomed.signal(Signal::SIGKILL);
    controller.signal(Signal::SIGKILL);
    doomed.wait_exit(WAIT).await;
    controller.wait_exit(WAIT).await;
    drop(controller);

    let _restarted = sandbox.start_controller(&controller_args).await;
    let _survivor = sandbox.start_worker("survivor", &["--slots", "1"]).await;
    let mut api = sandbox.api().await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let attempts = api.attempts(&run.run_id, "work").await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].worker_id, "doomed");
    assert_eq!(
        attempts[0].outcome,
        AttemptOutcome::WorkerLost as i32,
        "{attempts:?}"
    );
    assert_eq!(attempts[1].worker_id, "survivor");
    assert_eq!(attempts[1].outcome, AttemptOutcome::Succeeded as i32);
    assert!(
        micros(attempts[1].started_at.as_ref()) >= micros(attempts[0].ended_at.as_ref()),
        "{attempts:?}"
    );
}

#[tokio::test]
async fn acknowledged_writes_survive_a_controller_kill() {
    let mut sandbox = Sandbox::new("restart-durable");
    let mut controller = sandbox.start_controller(&[]).await;
    let mut api = sandbox.api().await;
    api.register("id: durable\ntasks:\n  - id: a\n    command: echo v1\n")
        .await;
    let v2 = api
        .register("id: durable\ntasks:\n  - id: a\n    command: echo v2\n")
        .await;
    assert_eq!(v2.version, 2);
    let keyed = TriggerRunRequest {
        dag_id: "durable".to_string(),
        idempotency_key: "the-key".to_string(),
        ..Default::default()
    };
    // No worker: runs wait with their task READY.
    let kept = api
        .try_trigger(keyed.clone())
        .await
        .expect("TriggerRun")
        .run
        .expect("run");
    let cancelled = api.trigger("durable").await;
    api.client
        .runs
        .cancel_run(CancelRunRequest {
            run_id: cancelled.run_id.clone(),
            reason: "not needed".to_string(),
        })
        .await
        .expect("CancelRun");
    api.client
        .dags
        .pause_dag(PauseDagRequest {
            dag_id: "durable".to_string(),
        })
        .await
        .expect("PauseDag");

    controller.signal(Signal::SIGKILL);
    controller.wait_exit(WAIT).await;
    drop(controller);
    let _controller = sandbox.start_controller(&[]).await;
    let mut api = sandbox.api().await;

    let dag = api.get_dag("durable").await;
    let meta = dag.dag.expect("dag");
    assert_eq!(meta.latest_version, 2);
    assert!(meta.paused, "the pause was lost");
    let view = api.get_run(&cancelled.run_id).await;
    assert_eq!(view.state(), RunState::Cancelled, "{}", view.describe());
    assert_eq!(view.task_state("a"), TaskState::Cancelled);
    let again = api.try_trigger(keyed).await.expect("TriggerRun");
    assert!(!again.created, "the idempotency key was lost");
    assert_eq!(again.run.expect("run").run_id, kept.run_id);

    api.client
        .dags
        .unpause_dag(UnpauseDagRequest {
            dag_id: "durable".to_string(),
        })
        .await
        .expect("UnpauseDag");
    let _worker = sandbox.start_worker("w", &["--slots", "1"]).await;
    let view = api.wait_for_run(&kept.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(view.run.dag_version, 2);
    assert_eq!(
        task_log(&mut api, &kept.run_id, "a").await,
        "v2\n",
        "the run executes the version it was created with"
    );
}
