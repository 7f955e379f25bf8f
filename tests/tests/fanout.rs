//! Fan-out and fan-in (`examples/fanout.yaml`): one task, 100 in parallel,
//! one that waits for all of them. Every one of the 102 tasks succeeds
//! exactly once: one attempt each, recorded once, and the fan-in starts only
//! after the last of the 100 ended.

use std::path::Path;
use std::time::Duration;

use baton_tests::pb::{AttemptOutcome, RunState, TaskState};
use baton_tests::{Sandbox, micros};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn fan_out_of_100_and_fan_in_run_every_task_exactly_once() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fanout.yaml");
    let spec = std::fs::read_to_string(&example).expect("examples/fanout.yaml");
    let mut sandbox = Sandbox::new("fanout");
    let _dev = sandbox.start_dev(&["--slots", "8"]).await;
    let mut api = sandbox.api().await;

    api.register(&spec).await;
    let run = api.trigger("fanout").await;
    let view = api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;

    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(view.tasks.len(), 102);
    assert_eq!(view.run.task_total, 102);
    assert_eq!(view.run.task_counts.get("success"), Some(&102));
    for task in &view.tasks {
        assert_eq!(
            view.task_state(&task.task_id),
            TaskState::Success,
            "{}",
            task.task_id
        );
        assert_eq!(task.attempt, 1, "{} ran more than once", task.task_id);
        let attempts = api.attempts(&run.run_id, &task.task_id).await;
        assert_eq!(
            attempts.len(),
            1,
            "{} has attempts {attempts:?}",
            task.task_id
        );
        assert_eq!(attempts[0].attempt, 1);
        assert_eq!(
            attempts[0].outcome,
            AttemptOutcome::Succeeded as i32,
            "{}: {:?}",
            task.task_id,
            attempts[0]
        );
        assert_eq!(attempts[0].attempt_id, task.attempt_id);
    }

    let start_ended = micros(view.task("start").ended_at.as_ref());
    let finish_started = micros(view.task("finish").started_at.as_ref());
    for part in view.tasks.iter().filter(|t| t.task_id.starts_with("part_")) {
        assert!(
            micros(part.started_at.as_ref()) >= start_ended,
            "{}",
            part.task_id
        );
        assert!(
            finish_started >= micros(part.ended_at.as_ref()),
            "{}",
            part.task_id
        );
    }
}
