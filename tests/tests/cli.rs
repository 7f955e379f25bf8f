//! The `baton` CLI against a running `baton dev`: `baton logs RUN TASK`
//! prints what a task wrote to stdout and stderr (and with `-f` follows a
//! running task to its end), and `baton run trigger DAG --wait` follows the
//! run and exits 0 only when it succeeds, so that scripts and CI can rely on
//! the exit status.

use std::time::Duration;

use baton_tests::Sandbox;
use baton_tests::pb::{ListRunsRequest, RunState, TaskState};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn logs_prints_what_the_task_wrote() {
    let mut sandbox = Sandbox::new("cli-logs");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: chatty
tasks:
  - id: talk
    command: |
      echo "hello from $BATON_TASK_ID attempt $BATON_ATTEMPT"
      echo "a warning on stderr" >&2
      echo "done"
"#,
    )
    .await;
    let run = api.trigger("chatty").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());

    let output = sandbox.cli(&["logs", &run.run_id, "talk"]).await;
    output.assert_success();
    for line in ["hello from talk attempt 1", "a warning on stderr", "done"] {
        assert!(
            output.stdout.lines().any(|printed| printed == line),
            "`{line}` missing from {output}"
        );
    }
    let first_attempt = sandbox
        .cli(&["logs", &run.run_id, "talk", "--attempt", "1"])
        .await;
    first_attempt.assert_success();
    assert_eq!(first_attempt.stdout, output.stdout);

    let missing = sandbox.cli(&["logs", &run.run_id, "no_such_task"]).await;
    missing.assert_failure();
}

#[tokio::test]
async fn logs_follow_prints_a_running_task_to_its_end() {
    let mut sandbox = Sandbox::new("cli-logs-follow");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register(
        "id: ticker\ntasks:\n  - id: tick\n    command: 'for i in 1 2 3 4 5 6 7 8; do echo tick $i; sleep 0.2; done'\n",
    )
    .await;
    let run = api.trigger("ticker").await;
    api.wait_until(&run.run_id, "tick running", WAIT, |view| {
        view.task_state("tick") == TaskState::Running
    })
    .await;

    let followed = sandbox.cli(&["logs", "-f", &run.run_id, "tick"]).await;
    followed.assert_success();
    let expected: String = (1..=8).map(|n| format!("tick {n}\n")).collect();
    assert_eq!(followed.stdout, expected, "{followed}");
    // It returned because the attempt ended, not before.
    let view = api.get_run(&run.run_id).await;
    assert_eq!(
        view.task_state("tick"),
        TaskState::Success,
        "{}",
        view.describe()
    );
}

#[tokio::test]
async fn run_trigger_wait_exits_zero_only_for_a_successful_run() {
    let mut sandbox = Sandbox::new("cli-wait");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    let good = sandbox.write_file(
        "good.yaml",
        "id: good\ntasks:\n  - id: a\n    command: echo fine\n  - id: b\n    kind: noop\n    depends_on: [a]\n",
    );
    let bad = sandbox.write_file(
        "bad.yaml",
        "id: bad\ntasks:\n  - id: a\n    command: exit 3\n  - id: b\n    kind: noop\n    depends_on: [a]\n",
    );
    sandbox
        .cli(&[
            "dag",
            "apply",
            &good.to_string_lossy(),
            &bad.to_string_lossy(),
        ])
        .await
        .assert_success();

    let succeeded = sandbox.cli(&["run", "trigger", "good", "--wait"]).await;
    succeeded.assert_success();
    let failed = sandbox.cli(&["run", "trigger", "bad", "--wait"]).await;
    failed.assert_failure();

    // The exit statuses match the runs' final states.
    for (dag_id, state) in [("good", RunState::Success), ("bad", RunState::Failed)] {
        let runs = api
            .client
            .runs
            .list_runs(ListRunsRequest {
                dag_id: dag_id.to_string(),
                ..Default::default()
            })
            .await
            .expect("ListRuns")
            .into_inner()
            .runs;
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0].state, state as i32, "{runs:?}");
    }
}
