//! `baton top` against a real `baton dev`: one view (`--once`) shows the
//! leader, the worker with its slots in use, the queue, and the active run
//! with its running tasks; a refresh interval out of range is refused,
//! naming it.

use std::time::Duration;

use baton_tests::Sandbox;
use baton_tests::pb::TaskState;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn top_shows_the_leader_workers_queues_and_running_tasks() {
    let mut sandbox = Sandbox::new("top");
    let _dev = sandbox.start_dev(&["--slots", "3"]).await;
    let mut api = sandbox.api().await;
    api.register(
        "
id: busy
tasks:
  - id: one
    command: sleep 30
  - id: two
    command: sleep 30
  - id: after
    depends_on: [one, two]
    command: exit 0
",
    )
    .await;
    let run = api.trigger("busy").await;
    api.wait_until(&run.run_id, "both sleeps running", WAIT, |view| {
        view.task_state("one") == TaskState::Running && view.task_state("two") == TaskState::Running
    })
    .await;

    let output = sandbox.cli(&["top", "--once"]).await;
    output.assert_success();
    let view = &output.stdout;
    assert!(view.contains("leader: dev at http://"), "{output}");
    let worker = view
        .lines()
        .find(|line| line.contains("dev-worker"))
        .unwrap_or_else(|| panic!("no worker row: {output}"));
    // 3 slots, 1 free, 2 running.
    let cells: Vec<&str> = worker.split(['│', '┆']).map(str::trim).collect();
    assert!(cells.windows(3).any(|w| w == ["3", "1", "2"]), "{worker}");
    assert!(
        view.lines().any(|line| line.contains("default")),
        "{output}"
    );
    let run_row = view
        .lines()
        .find(|line| line.contains(&run.run_id))
        .unwrap_or_else(|| panic!("no row for the run: {output}"));
    assert!(run_row.contains("busy"), "{run_row}");
    assert!(run_row.contains("2 running"), "{run_row}");
    assert!(run_row.contains("1 pending"), "{run_row}");

    let refused = sandbox.cli(&["top", "--interval", "10ms"]).await;
    refused.assert_failure();
    assert!(refused.stderr.contains("100ms to 1h"), "{refused}");

    sandbox
        .cli(&["run", "cancel", &run.run_id])
        .await
        .assert_success();
}
