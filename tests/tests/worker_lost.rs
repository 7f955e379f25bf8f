//! Worker loss: `baton controller` with two `baton worker`s.
//!
//! - When the worker running a task is SIGKILLed, the controller fails the
//!   attempt as WORKER_LOST (which uses up an attempt) and the retry runs on
//!   the surviving worker; the run succeeds.
//! - When the worker running a task is cut off by a network partition (a TCP
//!   proxy that stops forwarding but keeps the connection open), the
//!   controller notices the missing heartbeats and does the same. When the
//!   partition heals and the worker comes back announcing its old attempt,
//!   the controller tells it the attempt is stale: the worker kills it, and
//!   nothing the old attempt reports changes the recorded outcome.
//! - When the partitioned worker's attempt succeeds during the partition, the
//!   result it delivers after the heal is refused as stale: the attempt stays
//!   WORKER_LOST (one outcome per attempt, recorded once).

use std::time::Duration;

use baton_tests::pb::{AttemptOutcome, RunState, TaskState};
use baton_tests::{PidFiles, Sandbox, TcpProxy, micros};
use nix::sys::signal::Signal;
use regex::Regex;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn attempt_on_a_killed_worker_fails_as_worker_lost_and_retries_elsewhere() {
    let mut sandbox = Sandbox::new("worker-lost");
    let _controller = sandbox.start_controller(&[]).await;
    let mut worker_a = sandbox.start_worker("a", &["--slots", "1"]).await;
    let mut api = sandbox.api().await;
    let mut pid_files = PidFiles::new();
    let pids = pid_files.track(sandbox.path().join("pids"));

    // The first attempt outlives the time it takes to start worker b and
    // kill worker a (its process survives the worker: PidFiles kills it at
    // the end); the retry takes about a second.
    let dag = format!(
        r#"
id: long
tasks:
  - id: work
    command: |
      echo $$ >> "$PIDS"
      if [ "$BATON_ATTEMPT" = 1 ]; then exec sleep 60; else sleep 1; fi
    env:
      PIDS: "{}"
    retries: 1
    retry_delay: 100ms
"#,
        pids.display()
    );
    api.register(&dag).await;
    let run = api.trigger("long").await;
    let view = api
        .wait_until(&run.run_id, "work running on worker a", WAIT, |view| {
            view.task_state("work") == TaskState::Running
        })
        .await;
    assert_eq!(view.task("work").worker_id, "a", "{}", view.describe());

    let _worker_b = sandbox.start_worker("b", &["--slots", "1"]).await;
    worker_a.signal(Signal::SIGKILL);
    worker_a.wait_exit(WAIT).await;

    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let task = view.task("work");
    assert_eq!(task.attempt, 2);
    assert_eq!(task.worker_id, "b");

    let attempts = api.attempts(&run.run_id, "work").await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let (lost, retry) = (&attempts[0], &attempts[1]);
    assert_eq!((lost.attempt, retry.attempt), (1, 2));
    assert_eq!(lost.worker_id, "a");
    assert_eq!(
        lost.outcome,
        AttemptOutcome::WorkerLost as i32,
        "{attempts:?}"
    );
    assert_eq!(retry.worker_id, "b");
    assert_eq!(
        retry.outcome,
        AttemptOutcome::Succeeded as i32,
        "{attempts:?}"
    );
    assert!(
        micros(retry.started_at.as_ref()) >= micros(lost.ended_at.as_ref()),
        "the retry started before the lost attempt was given up: {attempts:?}"
    );
}

#[tokio::test]
async fn partitioned_worker_is_lost_and_its_stale_attempt_is_killed_when_it_returns() {
    let mut sandbox = Sandbox::new("worker-partition");
    let _controller = sandbox.start_controller(&[]).await;
    let proxy = TcpProxy::start(sandbox.port()).await;
    let mut worker_a = sandbox
        .start_worker_at("a", &proxy.addr(), &["--slots", "1"])
        .await;
    let mut api = sandbox.api().await;
    let mut pid_files = PidFiles::new();
    let first_pids = pid_files.track(sandbox.path().join("pids-1"));
    let dag = format!(
        r#"
id: partitioned
tasks:
  - id: work
    command: |
      if [ "$BATON_ATTEMPT" = 1 ]; then echo $$ >> "$PIDS"; exec sleep 60; fi
      echo "attempt $BATON_ATTEMPT done"
    env:
      PIDS: "{}"
    retries: 1
    retry_delay: 100ms
"#,
        first_pids.display()
    );
    api.register(&dag).await;
    let run = api.trigger("partitioned").await;
    api.wait_until(&run.run_id, "work running on worker a", WAIT, |view| {
        view.task_state("work") == TaskState::Running && view.task("work").worker_id == "a"
    })
    .await;

    let _worker_b = sandbox.start_worker("b", &["--slots", "1"]).await;
    proxy.partition();
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let attempts = api.attempts(&run.run_id, "work").await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(
        (attempts[0].worker_id.as_str(), attempts[0].outcome),
        ("a", AttemptOutcome::WorkerLost as i32),
        "{attempts:?}"
    );
    assert_eq!(
        (attempts[1].worker_id.as_str(), attempts[1].outcome),
        ("b", AttemptOutcome::Succeeded as i32),
        "{attempts:?}"
    );
    // Cut off, worker a still runs the first attempt.
    assert_eq!(PidFiles::read(&first_pids).len(), 1);
    assert!(
        PidFiles::read(&first_pids)
            .iter()
            .all(|&pid| baton_tests::process::process_is_alive(pid)),
        "the first attempt stopped before the partition healed"
    );

    proxy.heal();
    let stale_attempt = Regex::new(&format!(
        "attempt is stale.*{}",
        regex::escape(&attempts[0].attempt_id)
    ))
    .unwrap();
    worker_a.wait_for_log(stale_attempt, WAIT).await;
    pid_files.wait_all_gone(WAIT).await;

    let view = api.get_run(&run.run_id).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(view.task("work").attempt, 2);
    assert_eq!(view.task("work").worker_id, "b");
    let after = api.attempts(&run.run_id, "work").await;
    assert_eq!(
        after, attempts,
        "the stale attempt changed what was recorded"
    );
}

#[tokio::test]
async fn result_of_a_lost_attempt_delivered_after_the_partition_is_refused() {
    let mut sandbox = Sandbox::new("worker-partition-result");
    let _controller = sandbox.start_controller(&[]).await;
    let proxy = TcpProxy::start(sandbox.port()).await;
    let mut worker_a = sandbox
        .start_worker_at("a", &proxy.addr(), &["--slots", "1"])
        .await;
    let mut api = sandbox.api().await;
    let go = sandbox.path().join("go");
    // Every attempt waits (at most 30 s) for the test to say go.
    let dag = format!(
        r#"
id: late
tasks:
  - id: work
    command: |
      for i in $(seq 600); do [ -f "$GO" ] && break; sleep 0.05; done
      [ -f "$GO" ] && echo "attempt $BATON_ATTEMPT done"
    env:
      GO: "{}"
    retries: 1
    retry_delay: 100ms
"#,
        go.display()
    );
    api.register(&dag).await;
    let run = api.trigger("late").await;
    let view = api
        .wait_until(&run.run_id, "work running on worker a", WAIT, |view| {
            view.task_state("work") == TaskState::Running && view.task("work").worker_id == "a"
        })
        .await;
    let first_attempt = view.task("work").attempt_id.clone();

    proxy.partition();
    let _worker_b = sandbox.start_worker("b", &["--slots", "1"]).await;
    std::fs::write(&go, "go").expect("write the go file");
    // The first attempt succeeds on worker a, which cannot report it.
    worker_a
        .wait_for_log(
            Regex::new(&format!(
                "{}.*attempt finished outcome=\"ATTEMPT_OUTCOME_SUCCEEDED\"",
                regex::escape(&first_attempt)
            ))
            .unwrap(),
            WAIT,
        )
        .await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let attempts = api.attempts(&run.run_id, "work").await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].attempt_id, first_attempt);
    assert_eq!(
        attempts[0].outcome,
        AttemptOutcome::WorkerLost as i32,
        "{attempts:?}"
    );
    assert_eq!(
        (attempts[1].worker_id.as_str(), attempts[1].outcome),
        ("b", AttemptOutcome::Succeeded as i32),
        "{attempts:?}"
    );

    proxy.heal();
    worker_a
        .wait_for_log(
            Regex::new(&format!(
                "attempt is stale.*{}",
                regex::escape(&first_attempt)
            ))
            .unwrap(),
            WAIT,
        )
        .await;
    let view = api.get_run(&run.run_id).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(view.task("work").attempt, 2);
    let after = api.attempts(&run.run_id, "work").await;
    assert_eq!(after, attempts, "the late result changed what was recorded");
}
