//! Routing and ordering: a task runs only on a worker serving its `queue`,
//! and among ready tasks waiting for a busy worker, higher `priority` starts
//! first.

use std::time::Duration;

use baton_tests::pb::{RunState, TaskState};
use baton_tests::{Sandbox, micros};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn tasks_run_only_on_workers_serving_their_queue() {
    let mut sandbox = Sandbox::new("queues");
    let _controller = sandbox.start_controller(&[]).await;
    let _general = sandbox.start_worker("general", &["--slots", "4"]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: routed
tasks:
  - id: anywhere
    command: "true"
  - id: on_gpu
    command: "true"
    queue: gpu
  - id: also_anywhere
    command: "true"
    depends_on: [anywhere]
"#,
    )
    .await;
    let run = api.trigger("routed").await;
    // With no worker on `gpu`, its task waits; the others run.
    let view = api
        .wait_until(&run.run_id, "the default-queue tasks done", WAIT, |view| {
            view.task_state("also_anywhere") == TaskState::Success
        })
        .await;
    assert_eq!(
        view.task_state("on_gpu"),
        TaskState::Ready,
        "{}",
        view.describe()
    );

    let _gpu = sandbox
        .start_worker("gpu", &["--slots", "1", "--queue", "gpu"])
        .await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(view.task("on_gpu").worker_id, "gpu");
    assert_eq!(view.task("anywhere").worker_id, "general");
    assert_eq!(view.task("also_anywhere").worker_id, "general");
}

#[tokio::test]
async fn higher_priority_ready_tasks_start_first() {
    let mut sandbox = Sandbox::new("priority");
    let _controller = sandbox.start_controller(&[]).await;
    let mut api = sandbox.api().await;
    // Written lowest first, so file order and priority order differ.
    api.register(
        r#"
id: prioritized
tasks:
  - id: low
    command: "true"
    priority: -5
  - id: default
    command: "true"
  - id: high
    command: "true"
    priority: 10
  - id: middle
    command: "true"
    priority: 5
"#,
    )
    .await;
    // Every task is ready before the only worker (one slot) connects.
    let run = api.trigger("prioritized").await;
    api.wait_until(&run.run_id, "every task ready", WAIT, |view| {
        view.tasks
            .iter()
            .all(|task| baton_tests::task_state(task) == TaskState::Ready)
    })
    .await;
    let _worker = sandbox.start_worker("w", &["--slots", "1"]).await;

    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let mut by_start: Vec<(i64, &str)> = view
        .tasks
        .iter()
        .map(|task| (micros(task.started_at.as_ref()), task.task_id.as_str()))
        .collect();
    by_start.sort();
    let order: Vec<&str> = by_start.iter().map(|(_, id)| *id).collect();
    assert_eq!(order, ["high", "middle", "default", "low"]);
}
