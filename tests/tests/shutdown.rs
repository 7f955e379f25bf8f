//! Graceful shutdown: a worker sent SIGTERM finishes the task it runs (its
//! result is recorded as a success, not a lost worker), takes no new task
//! meanwhile, and exits 0; the task it did not take runs on another worker.
//! `baton dev` and `baton controller` exit 0 promptly on SIGTERM.

use std::time::Duration;

use baton_tests::pb::{AttemptOutcome, RunState, TaskState};
use baton_tests::{Sandbox, micros};
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn worker_finishes_its_running_task_on_sigterm_and_takes_nothing_new() {
    let mut sandbox = Sandbox::new("drain");
    let _controller = sandbox.start_controller(&[]).await;
    let mut draining = sandbox.start_worker("draining", &["--slots", "2"]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: drained
tasks:
  - id: first
    command: "sleep 1.5; echo first done"
  - id: second
    command: "echo second done"
    depends_on: [first]
"#,
    )
    .await;
    let run = api.trigger("drained").await;
    api.wait_until(&run.run_id, "first running", WAIT, |view| {
        view.task_state("first") == TaskState::Running
    })
    .await;

    draining.signal(Signal::SIGTERM);
    let status = draining.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "the worker exited with {status}\n{}",
        draining.log_tail()
    );
    let view = api.get_run(&run.run_id).await;
    assert_eq!(
        view.task_state("first"),
        TaskState::Success,
        "{}",
        view.describe()
    );
    assert_ne!(
        view.task_state("second"),
        TaskState::Success,
        "the draining worker took a new task: {}",
        view.describe()
    );

    let _other = sandbox.start_worker("other", &["--slots", "1"]).await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let first = api.attempts(&run.run_id, "first").await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].outcome, AttemptOutcome::Succeeded as i32);
    assert_eq!(first[0].worker_id, "draining");
    let second = api.attempts(&run.run_id, "second").await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].worker_id, "other");
    assert!(micros(second[0].started_at.as_ref()) >= micros(first[0].ended_at.as_ref()));
}

#[tokio::test]
async fn dev_and_controller_exit_zero_on_sigterm() {
    let mut sandbox = Sandbox::new("sigterm");
    let mut dev = sandbox.start_dev(&[]).await;
    dev.signal(Signal::SIGTERM);
    let status = dev.wait_exit(WAIT).await;
    assert!(status.success(), "baton dev: {status}\n{}", dev.log_tail());

    let mut other = Sandbox::new("sigterm-controller");
    let mut controller = other.start_controller(&[]).await;
    let _worker = other.start_worker("w", &["--slots", "1"]).await;
    controller.signal(Signal::SIGTERM);
    let status = controller.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "baton controller: {status}\n{}",
        controller.log_tail()
    );
}
