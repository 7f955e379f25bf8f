//! Task timeout: a command that runs past its `timeout` fails with outcome
//! TIMED_OUT and an error saying it timed out, and the worker kills its whole
//! process group, including a background child the task started; a task
//! that ignores SIGTERM is killed with SIGKILL after the worker's kill grace.

use std::time::Duration;

use baton_tests::pb::{AttemptOutcome, RunState, TaskState};
use baton_tests::{PidFiles, Sandbox};

const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the killed processes may take to disappear (the worker's kill
/// grace between SIGTERM and SIGKILL is shorter).
const GONE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn timed_out_task_fails_and_its_process_group_is_killed() {
    let mut sandbox = Sandbox::new("timeout");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    let mut pid_files = PidFiles::new();
    let pids = pid_files.track(sandbox.path().join("pids"));

    let dag = format!(
        r#"
id: slow
tasks:
  - id: sleeper
    command: ["sh", "-c", "echo $$ > \"$PIDS\"; sleep 600 & echo $! >> \"$PIDS\"; sleep 600"]
    env:
      PIDS: "{}"
    timeout: 1s
"#,
        pids.display()
    );
    api.register(&dag).await;
    let run = api.trigger("slow").await;
    let view = api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;

    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());
    let task = view.task("sleeper");
    assert_eq!(view.task_state("sleeper"), TaskState::Failed);
    assert_eq!(
        task.outcome,
        AttemptOutcome::TimedOut as i32,
        "{}",
        view.describe()
    );
    assert!(
        task.error.to_lowercase().contains("timed out"),
        "error `{}` does not say the task timed out",
        task.error
    );
    let attempts = api.attempts(&run.run_id, "sleeper").await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].outcome, AttemptOutcome::TimedOut as i32);

    assert_eq!(
        PidFiles::read(&pids).len(),
        2,
        "the task recorded its shell and its background child"
    );
    pid_files.wait_all_gone(GONE_TIMEOUT).await;
}

#[tokio::test]
async fn timed_out_task_that_ignores_sigterm_is_killed_after_the_grace() {
    let mut sandbox = Sandbox::new("timeout-stubborn");
    let _controller = sandbox.start_controller(&[]).await;
    let _worker = sandbox
        .start_worker("w", &["--slots", "1", "--kill-grace", "500ms"])
        .await;
    let mut api = sandbox.api().await;
    let mut pid_files = PidFiles::new();
    let pids = pid_files.track(sandbox.path().join("pids"));

    // Ignored signals stay ignored across exec: the background sleep ignores
    // SIGTERM too.
    let dag = format!(
        r#"
id: stubborn
tasks:
  - id: sleeper
    command: ["sh", "-c", "trap '' TERM; echo $$ > \"$PIDS\"; sleep 600 & echo $! >> \"$PIDS\"; sleep 600"]
    env:
      PIDS: "{}"
    timeout: 1s
"#,
        pids.display()
    );
    api.register(&dag).await;
    let run = api.trigger("stubborn").await;
    let view = api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;

    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());
    assert_eq!(
        view.task("sleeper").outcome,
        AttemptOutcome::TimedOut as i32,
        "{}",
        view.describe()
    );
    assert_eq!(PidFiles::read(&pids).len(), 2);
    pid_files.wait_all_gone(GONE_TIMEOUT).await;
}
