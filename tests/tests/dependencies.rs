//! Branches, conditions, dynamic fan-out and manual state changes against a
//! real `baton dev`:
//!
//! - Branch: the tasks a branch's output names run (a single id, or a
//!   list), its other direct downstream tasks are skipped and the skip
//!   propagates; an output naming a task that is not a direct downstream
//!   (or no task at all) fails the branch with an error naming it, and then
//!   the branch chooses nothing: its downstream follow their rules.
//! - `run_if`: true runs the task, false skips it (and its all_success
//!   downstream), reading params and an upstream's output.
//! - `map_over`: an upstream writes 1,000 items; the mapped task squares
//!   each (`square[0]` … `square[999]`, with `map_index`, the parent with
//!   `map_length`); a fan-in sums the instances' outputs. An empty list
//!   skips the mapped task and its downstream; a failed instance fails the
//!   mapped task as its downstream see it.
//! - `MarkTask` on a finished run: a failed task marked SUCCESS lets its
//!   downstream run and the run succeed, without running the task again; a
//!   succeeded leaf marked FAILED fails the run; bad requests are refused.
//! - `RetryTask` with `include_upstream` on a finished run: exactly the
//!   cleared tasks run again (one more attempt each, the others unchanged);
//!   with `exclude_downstream` only the task itself.
//! - One mapped instance (`check[1]`) marked SUCCESS: its task succeeds
//!   and the fan-in that had upstream_failed runs; one instance cleared
//!   with its downstream: it and the fan-in run again, the other instances
//!   keep their one attempt; instances that do not exist are refused.
//! - A mapped task whose upstream is cleared and then fails does not expand
//!   again: its earlier instances end with it and the run ends.
//! - A controller killed while a mapped task's upstream runs again (its
//!   instances pending, waiting for the new expansion) recovers the run,
//!   and the run ends.

use std::time::Duration;

use baton_tests::pb::{RetryTaskRequest, RunState, TaskInstance, TaskState};
use baton_tests::{Api, RunView, Sandbox, micros, task_state};
use nix::sys::signal::Signal;
use tonic::Code;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// A run of 1,000 mapped instances, each a process.
const MAP_RUN_TIMEOUT: Duration = Duration::from_secs(240);

use TaskState::{Failed, Skipped, Success, UpstreamFailed};

async fn start(name: &str) -> (Sandbox, baton_tests::BatonProcess, Api) {
    let mut sandbox = Sandbox::new(name);
    let dev = sandbox.start_dev(&["--slots", "16"]).await;
    let api = sandbox.api().await;
    (sandbox, dev, api)
}

async fn run(api: &mut Api, dag_id: &str, params_json: &str, timeout: Duration) -> RunView {
    let run = api.trigger_with_params(dag_id, params_json).await;
    api.wait_for_settled_run(&run.run_id, timeout).await
}

/// Asserts the run's state and each listed task's.
fn assert_states(view: &RunView, expected: &[(&str, TaskState)], run_state: RunState) {
    view.assert_states(expected, run_state, false);
}

const BRANCH: &str = r#"
id: branch
params:
  choice: {type: string, default: '"weekday"'}
tasks:
  - id: pick
    kind: branch
    command: 'printf "%s" "$CHOICE" > "$BATON_OUTPUT"'
    env:
      CHOICE: "{{ params.choice }}"
  - id: weekday
    depends_on: pick
    command: exit 0
  - id: weekend
    depends_on: pick
    command: exit 0
  - id: on_branch_failure
    trigger_rule: one_failed
    depends_on: pick
    command: exit 0
  - id: weekday_report
    depends_on: weekday
    command: exit 0
  - id: weekend_report
    depends_on: weekend
    command: exit 0
  - id: join
    trigger_rule: none_failed_min_one_success
    depends_on: [weekday_report, weekend_report]
    command: exit 0
"#;

#[tokio::test]
async fn a_branch_runs_the_tasks_it_names_and_skips_its_other_direct_downstream() {
    let (_sandbox, _dev, mut api) = start("branch").await;
    api.register(BRANCH).await;

    // One id, as a JSON string: the other path is skipped down to the join,
    // which runs on the chosen path.
    let one = run(&mut api, "branch", "", RUN_TIMEOUT).await;
    assert_states(
        &one,
        &[
            ("pick", Success),
            ("weekday", Success),
            ("weekend", Skipped),
            ("on_branch_failure", Skipped),
            ("weekday_report", Success),
            ("weekend_report", Skipped),
            ("join", Success),
        ],
        RunState::Success,
    );
    assert_eq!(one.output("pick"), serde_json::json!("weekday"));

    // A list of ids.
    let both = run(
        &mut api,
        "branch",
        r#"{"choice": "[\"weekday\", \"weekend\"]"}"#,
        RUN_TIMEOUT,
    )
    .await;
    assert_states(
        &both,
        &[
            ("pick", Success),
            ("weekday", Success),
            ("weekend", Success),
            ("on_branch_failure", Skipped),
            ("weekday_report", Success),
            ("weekend_report", Success),
            ("join", Success),
        ],
        RunState::Success,
    );
}

#[tokio::test]
async fn a_branch_naming_a_task_that_is_not_a_direct_downstream_fails_naming_it() {
    let (_sandbox, _dev, mut api) = start("branch-invalid").await;
    api.register(BRANCH).await;
    // `weekday_report` is a task of the DAG, but below `weekday`, not
    // directly below `pick`; `nope` is no task at all.
    for name in ["weekday_report", "nope"] {
        let params = format!(r#"{{"choice": "\"{name}\""}}"#);
        let view = run(&mut api, "branch", &params, RUN_TIMEOUT).await;
        // The failed branch chooses nothing: its downstream follow their
        // rules (all_success: upstream_failed; one_failed: runs).
        assert_states(
            &view,
            &[
                ("pick", Failed),
                ("weekday", UpstreamFailed),
                ("weekend", UpstreamFailed),
                ("on_branch_failure", Success),
                ("weekday_report", UpstreamFailed),
                ("weekend_report", UpstreamFailed),
                ("join", UpstreamFailed),
            ],
            RunState::Failed,
        );
        let error = &view.task("pick").error;
        assert!(
            error.contains(name),
            "the branch's error names `{name}`: {error}\n{}",
            view.describe()
        );
    }
}

const CONDITIONS: &str = r#"
id: conditions
params:
  full: {type: boolean, default: true}
  rows: {type: integer, default: 5}
tasks:
  - id: count
    command: 'echo "{\"rows\": {{ params.rows }}}" > "$BATON_OUTPUT"'
  - id: maybe
    depends_on: count
    run_if: "params.full and tasks.count.output.rows > 0"
    command: exit 0
  - id: after_maybe
    depends_on: maybe
    command: exit 0
  - id: finally
    trigger_rule: all_done
    depends_on: maybe
    command: exit 0
  - id: only_full
    run_if: "params.full"
    command: exit 0
"#;

#[tokio::test]
async fn run_if_runs_the_task_when_true_and_skips_it_when_false() {
    let (_sandbox, _dev, mut api) = start("run-if").await;
    api.register(CONDITIONS).await;
    for (params, maybe, only_full) in [
        (r#"{"full": true, "rows": 5}"#, Success, Success),
        (r#"{"full": false, "rows": 5}"#, Skipped, Skipped),
        (r#"{"full": true, "rows": 0}"#, Skipped, Success),
    ] {
        let view = run(&mut api, "conditions", params, RUN_TIMEOUT).await;
        let after_maybe = if maybe == Success { Success } else { Skipped };
        assert_states(
            &view,
            &[
                ("count", Success),
                ("maybe", maybe),
                ("after_maybe", after_maybe),
                ("finally", Success),
                ("only_full", only_full),
            ],
            RunState::Success,
        );
        assert_eq!(
            view.output("count")["rows"],
            serde_json::from_str::<serde_json::Value>(params).unwrap()["rows"],
            "{params}"
        );
    }
}

const SQUARES: &str = r#"
id: squares
params:
  n: {type: integer, default: 1000}
tasks:
  - id: list
    command: 'printf "{\"items\": [%s]}" "$(seq -s, 0 $(( {{ params.n }} - 1 )))" > "$BATON_OUTPUT"'
  - id: square
    depends_on: list
    map_over: "tasks.list.output.items"
    command: 'echo $(( {{ item }} * {{ item }} )) > "$BATON_OUTPUT"'
  - id: total
    depends_on: square
    command: 'echo "{{ tasks.square.output | sum }}" > "$BATON_OUTPUT"'
"#;

/// The mapped instances of `task_id` in the run, by index.
fn instances<'a>(view: &'a RunView, task_id: &str) -> Vec<&'a TaskInstance> {
    let prefix = format!("{task_id}[");
    let mut found: Vec<&TaskInstance> = view
        .tasks
        .iter()
        .filter(|task| task.task_id.starts_with(&prefix))
        .collect();
    found.sort_by_key(|task| task.map_index);
    found
}

#[tokio::test]
async fn map_over_runs_one_instance_per_item_and_the_fan_in_sums_their_outputs() {
    let (_sandbox, _dev, mut api) = start("map-over").await;
    api.register(SQUARES).await;
    let view = run(&mut api, "squares", "", MAP_RUN_TIMEOUT).await;
    assert_states(
        &view,
        &[("list", Success), ("total", Success)],
        RunState::Success,
    );
    let items = view.output("list")["items"].as_array().cloned();
    assert_eq!(items.map(|items| items.len()), Some(1000), "list's output");

    let parent = view.task("square");
    assert_eq!(task_state(parent), Success, "{}", view.describe());
    assert_eq!(parent.map_length, Some(1000));
    assert_eq!(parent.map_index, None);
    let mapped = instances(&view, "square");
    assert_eq!(mapped.len(), 1000, "one instance per item");
    assert_eq!(view.tasks.len(), 3 + 1000, "the tasks and the instances");
    let total_started = micros(view.task("total").started_at.as_ref());
    for (index, instance) in mapped.iter().enumerate() {
        assert_eq!(instance.task_id, format!("square[{index}]"));
        assert_eq!(
            instance.map_index,
            Some(index as u32),
            "{}",
            instance.task_id
        );
        assert_eq!(task_state(instance), Success, "{}", instance.task_id);
        assert_eq!(instance.attempt, 1, "{}", instance.task_id);
        let square = (index * index) as u64;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&instance.output_json).ok(),
            Some(serde_json::json!(square)),
            "{}",
            instance.task_id
        );
        assert!(
            micros(instance.ended_at.as_ref()) <= total_started,
            "total started before {} ended",
            instance.task_id
        );
    }
    // Σ i² for i in 0..1000 = 999 · 1000 · 1999 / 6.
    assert_eq!(view.output("total"), serde_json::json!(332_833_500u64));

    // An empty list skips the mapped task, and its downstream with it.
    let empty = run(&mut api, "squares", r#"{"n": 0}"#, RUN_TIMEOUT).await;
    assert_states(
        &empty,
        &[("list", Success), ("square", Skipped), ("total", Skipped)],
        RunState::Success,
    );
    assert_eq!(empty.output("list"), serde_json::json!({"items": []}));
    assert!(
        instances(&empty, "square").is_empty(),
        "{}",
        empty.describe()
    );
}

#[tokio::test]
async fn a_failed_instance_fails_the_mapped_task_for_its_downstream() {
    let (_sandbox, _dev, mut api) = start("map-failure").await;
    api.register(MAP_FAILURE).await;
    let view = run(&mut api, "map-failure", "", RUN_TIMEOUT).await;
    assert_states(
        &view,
        &[
            ("list", Success),
            ("check", Failed),
            ("check[0]", Success),
            ("check[1]", Failed),
            ("check[2]", Success),
            ("total", UpstreamFailed),
            ("on_failure", Success),
        ],
        RunState::Failed,
    );
    assert_eq!(view.task("check").map_length, Some(3));
    assert_eq!(view.task("check[1]").map_index, Some(1));
}

const MAP_FAILURE: &str = r#"
id: map-failure
tasks:
  - id: list
    command: 'echo "[1, 2, 3]" > "$BATON_OUTPUT"'
  - id: check
    depends_on: list
    map_over: "tasks.list.output"
    # Each instance sees its index, and its task's id, in the environment.
    command: 'test "$BATON_MAP_INDEX" = {{ map_index }} && test "$BATON_TASK_ID" = check && test {{ item }} -ne 2'
  - id: total
    depends_on: check
    command: exit 0
  - id: on_failure
    trigger_rule: one_failed
    depends_on: check
    command: exit 0
"#;

#[tokio::test]
async fn one_mapped_instance_is_marked_and_cleared_on_its_own() {
    let (_sandbox, _dev, mut api) = start("map-instance").await;
    api.register(MAP_FAILURE).await;
    let failed = run(&mut api, "map-failure", "", RUN_TIMEOUT).await;
    assert_eq!(failed.state(), RunState::Failed, "{}", failed.describe());
    let run_id = failed.run.run_id.clone();

    // Instances the run does not have are refused, naming why; nothing
    // changes.
    for (task_id, reason) in [
        ("check[3]", "has 3 instances"),
        ("list[0]", "has no map_over"),
        ("nope[0]", "has no task `nope`"),
    ] {
        let status = api
            .try_mark_task(&run_id, task_id, Success, "")
            .await
            .expect_err(task_id);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{task_id}: {status:?}"
        );
        assert!(status.message().contains(reason), "{task_id}: {status:?}");
    }
    assert_eq!(api.get_run(&run_id).await.state(), RunState::Failed);

    // The failed instance marked success: its task succeeds, the fan-in
    // that could not run runs; the one_failed task that ran keeps its run.
    let marked = api
        .mark_task(&run_id, "check[1]", Success, "checked by hand")
        .await;
    assert_eq!(
        marked.task.map(|task| task.task_id),
        Some("check[1]".into())
    );
    let view = api.wait_for_settled_run(&run_id, RUN_TIMEOUT).await;
    assert_states(
        &view,
        &[
            ("list", Success),
            ("check", Success),
            ("check[0]", Success),
            ("check[2]", Success),
            ("total", Success),
            ("on_failure", Success),
        ],
        RunState::Success,
    );
    assert_eq!(view.task_state("check[1]"), Success);
    assert_eq!(api.attempts(&run_id, "check[1]").await.len(), 1);
    assert_eq!(
        view.task("on_failure").attempt_id,
        failed.task("on_failure").attempt_id
    );

    // One instance cleared with the downstream of its task: it and the
    // fan-in run again; its siblings and the one_failed task do not.
    let response = api
        .retry_task(RetryTaskRequest {
            run_id: run_id.clone(),
            task_id: "check[2]".to_string(),
            exclude_downstream: false,
            include_upstream: false,
        })
        .await;
    assert_eq!(
        response.cleared_task_ids,
        ["check[2]", "total", "on_failure"]
    );
    let view = api.wait_for_settled_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    for (task_id, attempts) in [
        ("check[0]", 1),
        ("check[1]", 1),
        ("check[2]", 2),
        ("total", 2),
    ] {
        assert_eq!(
            view.task(task_id).attempt,
            attempts,
            "{task_id}\n{}",
            view.describe()
        );
    }
    // on_failure was cleared and, nothing failing now, is skipped.
    assert_eq!(
        view.task_state("on_failure"),
        Skipped,
        "{}",
        view.describe()
    );
    assert_eq!(view.task_state("check"), Success);
    assert!(
        micros(view.task("total").started_at.as_ref())
            >= micros(view.task("check[2]").ended_at.as_ref()),
        "the fan-in ran again before the cleared instance ended\n{}",
        view.describe()
    );
}

#[tokio::test]
async fn instances_of_a_task_that_does_not_expand_again_end_with_it() {
    let (sandbox, _dev, mut api) = start("map-unexpanded").await;
    // `list` succeeds the first time and fails once the marker exists.
    let marker = sandbox.path().join("list-ran");
    api.register(&format!(
        r#"
id: map-again
tasks:
  - id: list
    command: 'test ! -e "{marker}" && touch "{marker}" && echo "[1, 2]" > "$BATON_OUTPUT"'
  - id: each
    depends_on: list
    map_over: "tasks.list.output"
    command: exit 0
  - id: after
    depends_on: each
    command: exit 0
"#,
        marker = marker.display()
    ))
    .await;
    let done = run(&mut api, "map-again", "", RUN_TIMEOUT).await;
    assert_eq!(done.state(), RunState::Success, "{}", done.describe());
    let run_id = done.run.run_id.clone();

    let response = api
        .retry_task(RetryTaskRequest {
            run_id: run_id.clone(),
            task_id: "list".to_string(),
            exclude_downstream: false,
            include_upstream: false,
        })
        .await;
    assert_eq!(response.cleared_task_ids, ["list", "each", "after"]);
    // Before, the earlier instances waited for an expansion that never
    // came, and the run never ended.
    let view = api.wait_for_settled_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());
    for (task_id, state) in [
        ("list", Failed),
        ("each", UpstreamFailed),
        ("each[0]", UpstreamFailed),
        ("each[1]", UpstreamFailed),
        ("after", UpstreamFailed),
    ] {
        assert_eq!(
            view.task_state(task_id),
            state,
            "{task_id}\n{}",
            view.describe()
        );
    }
    // Their first attempts stay in their history.
    assert_eq!(api.attempts(&run_id, "each[1]").await.len(), 1);
}

#[tokio::test]
async fn a_run_with_pending_instances_is_recovered_after_a_controller_kill() {
    let (mut sandbox, mut dev, mut api) = start("map-recover").await;
    // `list` is quick the first time and runs long once the marker exists.
    let marker = sandbox.path().join("list-ran");
    api.register(&format!(
        r#"
id: map-recover
tasks:
  - id: list
    command: 'if test -e "{marker}"; then sleep 30; fi; touch "{marker}"; echo "[1, 2]" > "$BATON_OUTPUT"'
  - id: each
    depends_on: list
    map_over: "tasks.list.output"
    command: exit 0
"#,
        marker = marker.display()
    ))
    .await;
    let done = run(&mut api, "map-recover", "", RUN_TIMEOUT).await;
    assert_eq!(done.state(), RunState::Success, "{}", done.describe());
    let run_id = done.run.run_id.clone();
    api.retry_task(RetryTaskRequest {
        run_id: run_id.clone(),
        task_id: "list".to_string(),
        exclude_downstream: false,
        include_upstream: false,
    })
    .await;
    api.wait_until(&run_id, "list running again", RUN_TIMEOUT, |view| {
        view.task_state("list") == TaskState::Running
    })
    .await;

    dev.signal(Signal::SIGKILL);
    dev.wait_exit(RUN_TIMEOUT).await;
    drop(dev);
    let _dev = sandbox.start_dev(&["--slots", "16"]).await;
    let mut api = sandbox.api().await;
    // The attempt of `list` died with the process: it fails, and the
    // instances waiting for its new list end with their task.
    let view = api.wait_for_settled_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());
    for (task_id, state) in [
        ("list", Failed),
        ("each", UpstreamFailed),
        ("each[0]", UpstreamFailed),
        ("each[1]", UpstreamFailed),
    ] {
        assert_eq!(
            view.task_state(task_id),
            state,
            "{task_id}\n{}",
            view.describe()
        );
    }
}

const MARK: &str = "
id: mark
tasks:
  - id: gate
    command: exit 1
  - id: after
    depends_on: gate
    command: exit 0
  - id: independent
    command: exit 0
";

#[tokio::test]
async fn marking_a_failed_task_success_runs_its_downstream_and_the_run_succeeds() {
    let (_sandbox, _dev, mut api) = start("mark-success").await;
    api.register(MARK).await;
    let failed = run(&mut api, "mark", "", RUN_TIMEOUT).await;
    assert_states(
        &failed,
        &[
            ("gate", Failed),
            ("after", UpstreamFailed),
            ("independent", Success),
        ],
        RunState::Failed,
    );
    let run_id = failed.run.run_id.clone();
    let independent_attempt = failed.task("independent").attempt_id.clone();

    let marked = api
        .mark_task(&run_id, "gate", Success, "fixed upstream by hand")
        .await;
    let task = marked.task.expect("MarkTask answers the task");
    assert_eq!(
        (task.task_id.as_str(), task_state(&task)),
        ("gate", Success)
    );
    let reopened = marked.run.expect("MarkTask answers the run");
    assert_eq!(
        reopened.state,
        RunState::Running as i32,
        "a finished run with a task left to run reopens: {reopened:?}"
    );

    let view = api.wait_for_settled_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(view.task_state("gate"), Success);
    assert_eq!(view.task_state("after"), Success);
    assert_eq!(view.task_state("independent"), Success);
    // The marked task did not run again; its downstream ran once.
    assert_eq!(api.attempts(&run_id, "gate").await.len(), 1);
    assert_eq!(view.task("gate").attempt, 1);
    assert_eq!(api.attempts(&run_id, "after").await.len(), 1);
    assert_eq!(view.task("independent").attempt_id, independent_attempt);
    assert_eq!(api.attempts(&run_id, "independent").await.len(), 1);
}

#[tokio::test]
async fn marking_a_succeeded_leaf_failed_fails_the_run_and_bad_marks_are_refused() {
    let (_sandbox, _dev, mut api) = start("mark-failed").await;
    api.register(
        "
id: mark-leaf
tasks:
  - id: a
    command: exit 0
  - id: b
    depends_on: a
    command: exit 0
",
    )
    .await;
    let done = run(&mut api, "mark-leaf", "", RUN_TIMEOUT).await;
    assert_states(&done, &[("a", Success), ("b", Success)], RunState::Success);
    let run_id = done.run.run_id.clone();

    // Refused, naming the field or the task; nothing changes.
    let status = api
        .try_mark_task(&run_id, "b", TaskState::Running, "")
        .await
        .expect_err("RUNNING is not a state to mark");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("state"), "{status:?}");
    let status = api
        .try_mark_task(&run_id, "nope", Failed, "")
        .await
        .expect_err("no such task");
    // As RetryTask: the request names a task the run's DAG does not have.
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("task_id"), "{status:?}");
    assert!(status.message().contains("nope"), "{status:?}");
    let unchanged = api.get_run(&run_id).await;
    assert_eq!(unchanged.state(), RunState::Success);

    api.mark_task(&run_id, "b", Failed, "the load was wrong")
        .await;
    let view = api
        .wait_until(&run_id, "the run FAILED", RUN_TIMEOUT, |view| {
            view.state() == RunState::Failed
        })
        .await;
    assert_eq!(view.task_state("b"), Failed, "{}", view.describe());
    assert!(
        view.task("b").error.contains("the load was wrong"),
        "the reason is recorded: {}",
        view.task("b").error
    );
    assert_eq!(view.task_state("a"), Success);
    assert_eq!(api.attempts(&run_id, "a").await.len(), 1);
    assert_eq!(api.attempts(&run_id, "b").await.len(), 1);
}

const CLEAR: &str = "
id: clear
tasks:
  - id: a
    command: exit 0
  - id: b
    depends_on: a
    command: exit 0
  - id: c
    depends_on: b
    command: exit 0
  - id: e
    depends_on: a
    command: exit 0
  - id: d
    command: exit 0
";

#[tokio::test]
async fn retry_task_with_upstream_reruns_exactly_the_cleared_tasks() {
    let (_sandbox, _dev, mut api) = start("retry-upstream").await;
    api.register(CLEAR).await;
    let done = run(&mut api, "clear", "", RUN_TIMEOUT).await;
    assert_eq!(done.state(), RunState::Success, "{}", done.describe());
    let run_id = done.run.run_id.clone();

    let response = api
        .retry_task(RetryTaskRequest {
            run_id: run_id.clone(),
            task_id: "b".to_string(),
            exclude_downstream: false,
            include_upstream: true,
        })
        .await;
    // b, its upstream a and its downstream c; not e (downstream of a, not
    // of b) nor d.
    assert_eq!(response.cleared_task_ids, ["a", "b", "c"]);
    let reopened = response.run.expect("run");
    assert_eq!(reopened.state, RunState::Running as i32, "{reopened:?}");
    let view = api.wait_for_settled_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    for (task_id, attempts) in [("a", 2), ("b", 2), ("c", 2), ("d", 1), ("e", 1)] {
        assert_eq!(view.task_state(task_id), Success, "{}", view.describe());
        assert_eq!(view.task(task_id).attempt, attempts, "{task_id}");
        assert_eq!(
            api.attempts(&run_id, task_id).await.len(),
            attempts as usize,
            "{task_id}"
        );
    }
    for (task_id, upstream) in [("b", "a"), ("c", "b")] {
        assert!(
            micros(view.task(task_id).started_at.as_ref())
                >= micros(view.task(upstream).ended_at.as_ref()),
            "{task_id} ran again before {upstream} ended again\n{}",
            view.describe()
        );
    }
    assert_eq!(view.task("e").attempt_id, done.task("e").attempt_id);

    // Only the task itself.
    let response = api
        .retry_task(RetryTaskRequest {
            run_id: run_id.clone(),
            task_id: "b".to_string(),
            exclude_downstream: true,
            include_upstream: false,
        })
        .await;
    assert_eq!(response.cleared_task_ids, ["b"]);
    let view = api.wait_for_settled_run(&run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    for (task_id, attempts) in [("a", 2), ("b", 3), ("c", 2), ("d", 1), ("e", 1)] {
        assert_eq!(view.task(task_id).attempt, attempts, "{task_id}");
        assert_eq!(
            api.attempts(&run_id, task_id).await.len(),
            attempts as usize,
            "{task_id}"
        );
    }
}
