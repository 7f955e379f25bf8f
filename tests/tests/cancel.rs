//! Cancelling a run: CancelRun answers the run CANCELLED, every task that had
//! not finished (two running, one pending downstream) ends CANCELLED, the
//! running tasks' processes (with their children) are killed, and
//! cancelling the finished run again is refused with FAILED_PRECONDITION.

use std::time::Duration;

use baton_tests::pb::{AttemptOutcome, CancelRunRequest, RunState, TaskState};
use baton_tests::{PidFiles, Sandbox};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);
const GONE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn cancel_stops_running_tasks_and_cancels_the_rest() {
    let mut sandbox = Sandbox::new("cancel");
    let _dev = sandbox.start_dev(&["--slots", "4"]).await;
    let mut api = sandbox.api().await;
    let mut pid_files = PidFiles::new();
    let pids_left = pid_files.track(sandbox.path().join("pids-left"));
    let pids_right = pid_files.track(sandbox.path().join("pids-right"));

    let sleeper =
        r#"["sh", "-c", "echo $$ > \"$PIDS\"; sleep 600 & echo $! >> \"$PIDS\"; sleep 600"]"#;
    let dag = format!(
        r#"
id: cancellable
tasks:
  - id: left
    command: {sleeper}
    env:
      PIDS: "{}"
  - id: right
    command: {sleeper}
    env:
      PIDS: "{}"
  - id: after
    kind: noop
    depends_on: [left, right]
"#,
        pids_left.display(),
        pids_right.display()
    );
    api.register(&dag).await;
    let run = api.trigger("cancellable").await;
    api.wait_until(&run.run_id, "both sleepers running", WAIT, |view| {
        ["left", "right"]
            .iter()
            .all(|task| view.task_state(task) == TaskState::Running)
    })
    .await;
    // Both shells have started their background child.
    let recorded = baton_tests::poll::poll_until(WAIT, Duration::from_millis(50), async || {
        (PidFiles::read(&pids_left).len() == 2 && PidFiles::read(&pids_right).len() == 2)
            .then_some(())
    })
    .await;
    assert!(recorded.is_some(), "the sleepers did not record their pids");

    let cancelled = api
        .client
        .runs
        .cancel_run(CancelRunRequest {
            run_id: run.run_id.clone(),
            reason: "test cancels".to_string(),
        })
        .await
        .expect("CancelRun")
        .into_inner()
        .run
        .expect("CancelRun answers the run");
    assert_eq!(cancelled.state, RunState::Cancelled as i32, "{cancelled:?}");

    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Cancelled, "{}", view.describe());
    // Running attempts report back once killed; wait for their outcome.
    let view = api
        .wait_until(&run.run_id, "every task cancelled", WAIT, |view| {
            view.tasks
                .iter()
                .all(|task| baton_tests::task_state(task) == TaskState::Cancelled)
        })
        .await;
    assert_eq!(view.task("after").attempt, 0, "the downstream never ran");
    for task_id in ["left", "right"] {
        let attempts = api.attempts(&run.run_id, task_id).await;
        assert_eq!(attempts.len(), 1, "{task_id}: {attempts:?}");
        assert_eq!(
            attempts[0].outcome,
            AttemptOutcome::Cancelled as i32,
            "{task_id}: {attempts:?}"
        );
    }
    pid_files.wait_all_gone(GONE_TIMEOUT).await;

    let again = api
        .client
        .runs
        .cancel_run(CancelRunRequest {
            run_id: run.run_id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("cancelling a cancelled run is refused");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again}");
}
