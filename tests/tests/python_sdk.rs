//! Workers and clients in any language: the Python SDK (`sdk/python`, on
//! grpcio with stubs generated from `proto/`) against a real controller.
//! Its example worker serves custom task handlers beside a Rust worker on
//! the same queue; its example client registers a DAG, triggers it and waits
//! for it. Custom tasks run only on a worker declaring their handler, a
//! handler's return value becomes the task's output, an exception fails the
//! task with its message, and a handler nobody serves leaves its task
//! `ready`.
//!
//! Needs python3 with venv; installs grpcio and grpcio-tools from PyPI into
//! `target/python-sdk-venv` on first use (see `baton_tests::python`).

use std::time::Duration;

use baton_tests::pb::{AttemptOutcome, RunState, TaskState};
use baton_tests::sandbox::READY_TIMEOUT;
use baton_tests::{PythonSdk, Sandbox};
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(60);
const PYTHON_WORKER: &str = "py-worker";
const RUST_WORKER: &str = "rust-worker";
const SHELL_QUEUE: &str = "shell";

fn output(view: &baton_tests::RunView, task_id: &str) -> serde_json::Value {
    let output_json = &view.task(task_id).output_json;
    serde_json::from_str(output_json)
        .unwrap_or_else(|error| panic!("{task_id}: output `{output_json}` is not JSON: {error}"))
}

#[tokio::test]
async fn python_worker_and_client_against_a_real_controller() {
    let Some(python) = PythonSdk::setup("python_sdk").await else {
        return;
    };
    // The SDK's own unit tests (leader redirects against fake controllers).
    let unit = python
        .run(&["-m", "unittest", "discover", "-s", "tests"], WAIT)
        .await;
    assert!(
        unit.status.success(),
        "the SDK's unit tests failed ({})\n{}",
        unit.status,
        String::from_utf8_lossy(&unit.stderr)
    );
    let mut sandbox = Sandbox::new("python-sdk");
    let _controller = sandbox.start_controller(&[]).await;
    // A Rust worker on its own queue and on the Python worker's: commands
    // go to it even on the shared queue (an SDK worker runs only custom and
    // noop tasks), and custom tasks never go to it, since it declares no
    // handlers.
    let _rust_worker = sandbox
        .start_worker(
            RUST_WORKER,
            &["--slots", "4", "--queue", &format!("{SHELL_QUEUE},default")],
        )
        .await;
    let addr = sandbox.addr();
    let mut python_worker = python.spawn(
        PYTHON_WORKER,
        sandbox.path(),
        &[
            "examples/worker.py",
            "--addr",
            &addr,
            "--id",
            PYTHON_WORKER,
            "--drain-grace",
            "10",
        ],
    );
    python_worker
        .wait_for_log("registered with the controller", READY_TIMEOUT)
        .await;
    let mut api = sandbox.api().await;

    // The example client: a DAG of two custom tasks, `hello` after `sum`.
    let client = python
        .run(
            &["examples/client.py", "--addr", &addr, "--name", "Ada"],
            WAIT + Duration::from_secs(30),
        )
        .await;
    let stdout = String::from_utf8_lossy(&client.stdout);
    assert!(
        client.status.success(),
        "the example client failed ({})\nstdout:\n{stdout}\nstderr:\n{}\n{}",
        client.status,
        String::from_utf8_lossy(&client.stderr),
        sandbox.logs_tail()
    );
    let run_id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("run ")?.strip_suffix(" success"))
        .unwrap_or_else(|| panic!("no `run <id> success` line in:\n{stdout}"));
    assert!(stdout.contains(r#"sum {"sum": 10}"#), "{stdout}");
    let view = api.get_run(run_id).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    for task_id in ["sum", "hello"] {
        assert_eq!(
            view.task(task_id).worker_id,
            PYTHON_WORKER,
            "{}",
            view.describe()
        );
    }
    assert_eq!(output(&view, "sum"), serde_json::json!({"sum": 10}));
    assert_eq!(
        output(&view, "hello"),
        serde_json::json!({"greeting": "Hello, Ada! Hello, Ada!", "attempt": 1})
    );
    let logs = sandbox.cli(&["logs", run_id, "hello"]).await;
    assert_eq!(logs.stdout, "Hello, Ada!\nHello, Ada!\n", "{logs:?}");

    // Commands go to the Rust worker, custom tasks to the Python one; a
    // raising handler fails its task; a handler nobody serves waits.
    api.register(
        r#"
id: mixed
tasks:
  - id: shell
    command: "true"
    queue: shell
  - id: join
    kind: noop
    depends_on: [shell]
  - id: after_shell
    kind: custom
    handler: add
    payload: {numbers: [2, 3]}
    depends_on: [join]
  - id: boom
    kind: custom
    handler: divide
    payload: {a: 1, b: 0}
    retries: 0
  - id: orphan
    kind: custom
    handler: nobody-serves-this
  - id: orphan_on_shell
    kind: custom
    handler: add
    payload: {numbers: [1]}
    queue: shell
  - {id: shared0, command: "true"}
  - {id: shared1, command: "true"}
  - {id: shared2, command: "true"}
  - {id: shared3, command: "true"}
  - {id: shared4, command: "true"}
  - {id: shared5, command: "true"}
"#,
    )
    .await;
    let run = api.trigger("mixed").await;
    let view = api
        .wait_until(&run.run_id, "every served task finished", WAIT, |view| {
            view.task_state("after_shell") == TaskState::Success
                && view.task_state("boom") == TaskState::Failed
        })
        .await;
    assert_eq!(view.task("shell").worker_id, RUST_WORKER);
    assert_eq!(view.task("after_shell").worker_id, PYTHON_WORKER);
    assert_eq!(output(&view, "after_shell"), serde_json::json!({"sum": 5}));
    let boom = view.task("boom");
    assert_eq!(boom.worker_id, PYTHON_WORKER);
    assert_eq!(boom.outcome, AttemptOutcome::Failed as i32);
    assert_eq!(boom.error, "ZeroDivisionError: division by zero");
    let logs = sandbox.cli(&["logs", &run.run_id, "boom"]).await;
    assert!(
        logs.stdout.starts_with("dividing 1 by 0\nTraceback"),
        "{logs:?}"
    );
    // Commands on the queue both workers serve ran on the Rust worker.
    for index in 0..6 {
        let task_id = format!("shared{index}");
        let view = api
            .wait_until(
                &run.run_id,
                "the shared-queue commands done",
                WAIT,
                |view| view.task_state(&task_id) == TaskState::Success,
            )
            .await;
        assert_eq!(
            view.task(&task_id).worker_id,
            RUST_WORKER,
            "{}",
            view.describe()
        );
    }
    // A noop runs on any worker.
    assert!(
        [PYTHON_WORKER, RUST_WORKER].contains(&view.task("join").worker_id.as_str()),
        "{}",
        view.describe()
    );
    // Nobody serves `nobody-serves-this`; `add` is served, but not on the
    // `shell` queue, whose only worker declares no handlers.
    for task_id in ["orphan", "orphan_on_shell"] {
        let task = view.task(task_id);
        assert_eq!(
            view.task_state(task_id),
            TaskState::Ready,
            "{}",
            view.describe()
        );
        assert_eq!(task.worker_id, "", "{}", view.describe());
        assert_eq!(task.attempt, 0, "{}", view.describe());
    }

    // Cancelling a run cancels the attempt on the Python worker, which
    // reports it at once and tells the handler (it stops early).
    api.register(
        r#"
id: slow
tasks:
  - id: long_greeting
    kind: custom
    handler: greet
    payload: {times: 600, pause: 0.1}
"#,
    )
    .await;
    let slow = api.trigger("slow").await;
    api.wait_until(&slow.run_id, "the greeting running", WAIT, |view| {
        view.task_state("long_greeting") == TaskState::Running
    })
    .await;
    let cancel = sandbox.cli(&["run", "cancel", &slow.run_id]).await;
    assert!(cancel.status.success(), "{cancel:?}");
    let view = api.wait_for_run(&slow.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Cancelled, "{}", view.describe());
    let task = view.task("long_greeting");
    assert_eq!(task.worker_id, PYTHON_WORKER);
    assert_eq!(
        task.outcome,
        AttemptOutcome::Cancelled as i32,
        "{}",
        view.describe()
    );

    // SIGTERM: the Python worker drains and exits on its own.
    python_worker.signal(Signal::SIGTERM);
    let status = python_worker.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", python_worker.log_tail());
    python_worker
        .wait_for_log("worker stopped", Duration::from_secs(1))
        .await;
}
