//! Retries with exponential backoff: a task that always fails with
//! `retries: 2`, `retry_delay: 1s` and backoff runs three attempts, waiting
//! about 1 s and then about 2 s between them; the run fails and everything
//! downstream of the task (transitively) ends UPSTREAM_FAILED without
//! running. `max_retry_delay` caps the growth.

use std::time::Duration;

use baton_tests::pb::{AttemptOutcome, RunState, TaskState};
use baton_tests::{Sandbox, micros};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

const DAG: &str = r#"
id: retries
tasks:
  - id: flaky
    command: "echo attempt $BATON_ATTEMPT; exit 1"
    retries: 2
    retry_delay: 1s
    retry_exponential_backoff: true
    retry_jitter: 0
  - id: downstream
    command: ["sh", "-c", "echo must not run"]
    depends_on: [flaky]
  - id: downstream_of_downstream
    kind: noop
    depends_on: [downstream]
"#;

/// Scheduling slack below the configured delay that still counts as "waited
/// the delay" (timestamps of different events come from different clocks'
/// readings of the same host).
const SLACK_MICROS: i64 = 50_000;

#[tokio::test]
async fn failing_task_retries_with_growing_delays_then_fails_its_downstream() {
    let mut sandbox = Sandbox::new("retries");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register(DAG).await;
    let run = api.trigger("retries").await;

    let view = api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());

    let flaky = view.task("flaky");
    assert_eq!(view.task_state("flaky"), TaskState::Failed);
    assert_eq!(flaky.attempt, 3);
    assert_eq!(flaky.max_attempts, 3);
    assert_eq!(flaky.outcome, AttemptOutcome::Failed as i32);
    assert_eq!(flaky.exit_code, Some(1));

    let attempts = api.attempts(&run.run_id, "flaky").await;
    let numbers: Vec<u32> = attempts.iter().map(|attempt| attempt.attempt).collect();
    assert_eq!(numbers, [1, 2, 3], "{attempts:?}");
    for attempt in &attempts {
        assert_eq!(
            attempt.outcome,
            AttemptOutcome::Failed as i32,
            "{attempt:?}"
        );
        assert_eq!(attempt.exit_code, Some(1), "{attempt:?}");
    }
    let gap = |later: usize| {
        micros(attempts[later].started_at.as_ref()) - micros(attempts[later - 1].ended_at.as_ref())
    };
    let (first_gap, second_gap) = (gap(1), gap(2));
    assert!(
        first_gap >= 1_000_000 - SLACK_MICROS,
        "attempt 2 started {first_gap} µs after attempt 1 ended; the delay is 1 s"
    );
    assert!(
        second_gap >= 2_000_000 - SLACK_MICROS,
        "attempt 3 started {second_gap} µs after attempt 2 ended; with backoff the delay is 2 s"
    );
    assert!(
        second_gap > first_gap,
        "backoff did not grow: {first_gap} µs then {second_gap} µs"
    );

    for task_id in ["downstream", "downstream_of_downstream"] {
        assert_eq!(
            view.task_state(task_id),
            TaskState::UpstreamFailed,
            "{}",
            view.describe()
        );
        assert_eq!(view.task(task_id).attempt, 0, "{task_id} must not run");
        assert!(api.attempts(&run.run_id, task_id).await.is_empty());
    }
}

#[tokio::test]
async fn max_retry_delay_caps_the_backoff() {
    let mut sandbox = Sandbox::new("retries-capped");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: capped
tasks:
  - id: flaky
    command: "exit 1"
    retries: 2
    retry_delay: 1s
    retry_exponential_backoff: true
    max_retry_delay: 1s
    retry_jitter: 0
"#,
    )
    .await;
    let run = api.trigger("capped").await;
    let view = api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());
    let attempts = api.attempts(&run.run_id, "flaky").await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    for later in 1..3 {
        let gap = micros(attempts[later].started_at.as_ref())
            - micros(attempts[later - 1].ended_at.as_ref());
        assert!(
            (1_000_000 - SLACK_MICROS..1_800_000).contains(&gap),
            "attempt {} started {gap} µs after the previous ended; the capped delay is 1 s",
            later + 1
        );
    }
}
