//! A run's history (`GetRunEvents`, `baton run events`): with
//! `baton controller` and two `baton worker`s, a run whose first task fails
//! once and is retried, and whose second task's worker is SIGKILLed (its
//! attempt is lost and retried on the other worker), lists every change of
//! the run and of its tasks in order, each with its cause and actor:
//! triggered by the user, leased by the scheduler, started and ended by the
//! worker, lost with the worker, retried. The API pages through it and
//! filters it by task; an unknown run or a bad page token is refused.

use std::time::Duration;

use baton_tests::pb::{GetRunEventsRequest, RunState, TaskState};
use baton_tests::{PidFiles, Sandbox};
use nix::sys::signal::Signal;
use serde_json::Value;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

/// One event as `baton run events -o json` prints it: task (`None` for the
/// run), from, to, cause, actor.
type Row = (Option<String>, String, String, String, String);

fn rows(events: &[Value], task: Option<&str>) -> Vec<Row> {
    events
        .iter()
        .filter(|event| event["task_id"].as_str() == task)
        .map(|event| {
            let text = |field: &str| event[field].as_str().unwrap_or_default().to_string();
            (
                event["task_id"].as_str().map(str::to_string),
                text("from"),
                text("to"),
                text("cause"),
                text("actor"),
            )
        })
        .collect()
}

fn row(task: Option<&str>, from: &str, to: &str, cause: &str, actor: &str) -> Row {
    (
        task.map(str::to_string),
        from.into(),
        to.into(),
        cause.into(),
        actor.into(),
    )
}

#[tokio::test]
async fn run_events_list_a_retry_and_a_worker_loss_in_order_with_causes() {
    let mut sandbox = Sandbox::new("run-events");
    let _controller = sandbox.start_controller(&["--id", "ctl"]).await;
    let mut worker_a = sandbox.start_worker("a", &["--slots", "1"]).await;
    let mut api = sandbox.api().await;
    let mut pid_files = PidFiles::new();
    let pids = pid_files.track(sandbox.path().join("pids"));

    // `flaky` fails its first attempt; `work`'s first attempt outlives its
    // worker (PidFiles kills the orphan at the end).
    let dag = format!(
        r#"
id: history
tasks:
  - id: flaky
    command: 'test "$BATON_ATTEMPT" -ge 2'
    retries: 1
    retry_delay: 100ms
  - id: work
    depends_on: flaky
    command: |
      echo $$ >> "$PIDS"
      if [ "$BATON_ATTEMPT" = 1 ]; then exec sleep 60; fi
    env:
      PIDS: "{}"
    retries: 1
    retry_delay: 100ms
"#,
        pids.display()
    );
    api.register(&dag).await;
    let run = api.trigger("history").await;
    api.wait_until(&run.run_id, "work running on worker a", WAIT, |view| {
        view.task_state("work") == TaskState::Running
    })
    .await;
    let _worker_b = sandbox.start_worker("b", &["--slots", "1"]).await;
    worker_a.signal(Signal::SIGKILL);
    worker_a.wait_exit(WAIT).await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());

    let output = sandbox
        .cli(&["run", "events", &run.run_id, "-o", "json"])
        .await;
    output.assert_success();
    let events: Vec<Value> = serde_json::from_str(&output.stdout).expect("JSON events");

    assert_eq!(
        rows(&events, None),
        [
            row(None, "-", "queued", "user", "user"),
            row(None, "queued", "running", "scheduler", "ctl"),
            row(None, "running", "success", "scheduler", "ctl"),
        ],
        "{output}"
    );
    assert_eq!(
        rows(&events, Some("flaky")),
        [
            row(Some("flaky"), "pending", "ready", "scheduler", "ctl"),
            row(Some("flaky"), "ready", "leased", "scheduler", "ctl"),
            row(Some("flaky"), "leased", "running", "worker", "a"),
            row(Some("flaky"), "running", "up_for_retry", "worker", "a"),
            row(Some("flaky"), "up_for_retry", "ready", "retry", "ctl"),
            row(Some("flaky"), "ready", "leased", "scheduler", "ctl"),
            row(Some("flaky"), "leased", "running", "worker", "a"),
            row(Some("flaky"), "running", "success", "worker", "a"),
        ],
        "{output}"
    );
    assert_eq!(
        rows(&events, Some("work")),
        [
            row(Some("work"), "pending", "ready", "scheduler", "ctl"),
            row(Some("work"), "ready", "leased", "scheduler", "ctl"),
            row(Some("work"), "leased", "running", "worker", "a"),
            row(Some("work"), "running", "up_for_retry", "worker_lost", "a"),
            row(Some("work"), "up_for_retry", "ready", "retry", "ctl"),
            row(Some("work"), "ready", "leased", "scheduler", "ctl"),
            row(Some("work"), "leased", "running", "worker", "b"),
            row(Some("work"), "running", "success", "worker", "b"),
        ],
        "{output}"
    );
    // In order: times never go back, the run starts first and ends last,
    // and `work` is ready only after `flaky` succeeded.
    let times: Vec<&str> = events
        .iter()
        .map(|event| event["at"].as_str().unwrap_or_default())
        .collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{output}");
    assert_eq!(
        events.first().map(|event| &event["to"]),
        Some(&"queued".into())
    );
    assert_eq!(
        events.last().map(|event| &event["to"]),
        Some(&"success".into())
    );
    let position = |task: &str, to: &str, attempt: u64| {
        events
            .iter()
            .position(|event| {
                event["task_id"] == task && event["to"] == to && event["attempt"] == attempt
            })
            .unwrap_or_else(|| panic!("no {task} → {to} (attempt {attempt}) in {output}"))
    };
    assert!(position("flaky", "success", 2) < position("work", "ready", 0));
    // Attempts and details say which attempt and why.
    let failed = &events[position("flaky", "up_for_retry", 1)];
    assert!(
        failed["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("exited with status 1"),
        "{failed}"
    );
    let lost = &events[position("work", "up_for_retry", 1)];
    assert!(
        lost["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("worker_lost"),
        "{lost}"
    );
    let release = &events[position("work", "leased", 2)];
    assert_eq!(release["detail"], "leased to b", "{release}");

    // The table says the same for people.
    let table = sandbox.cli(&["run", "events", &run.run_id]).await;
    table.assert_success();
    assert!(table.stdout.contains("worker_lost"), "{table}");

    // The API pages (3 at a time) through the same events, and filters.
    let mut paged = Vec::new();
    let mut page_token = String::new();
    for _ in 0..100 {
        let response = api
            .client
            .runs
            .get_run_events(GetRunEventsRequest {
                run_id: run.run_id.clone(),
                task_id: String::new(),
                page_size: 3,
                page_token,
            })
            .await
            .expect("GetRunEvents")
            .into_inner();
        assert!(response.events.len() <= 3);
        paged.extend(response.events);
        if response.next_page_token.is_empty() {
            break;
        }
        page_token = response.next_page_token;
    }
    assert_eq!(paged.len(), events.len(), "paging gives every event once");
    let work_only = api
        .client
        .runs
        .get_run_events(GetRunEventsRequest {
            run_id: run.run_id.clone(),
            task_id: "work".into(),
            ..Default::default()
        })
        .await
        .expect("GetRunEvents for work")
        .into_inner();
    assert_eq!(work_only.events.len(), 8);
    assert!(work_only.events.iter().all(|event| event.task_id == "work"));

    // Bad requests are refused, naming the problem.
    let unknown = api
        .client
        .runs
        .get_run_events(GetRunEventsRequest {
            run_id: "01a23ae5-56e7-772d-9a9a-a79f3c4b7da4".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such run");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let bad_token = api
        .client
        .runs
        .get_run_events(GetRunEventsRequest {
            run_id: run.run_id.clone(),
            page_token: "history/other/1|0".into(),
            ..Default::default()
        })
        .await
        .expect_err("a token of another run");
    assert_eq!(bad_token.code(), Code::InvalidArgument, "{bad_token:?}");
    assert!(bad_token.message().contains("page_token"), "{bad_token:?}");
}
