//! Trigger rules against a real `baton dev`, one test per rule, each with
//! its expected task and run states written out by hand (not computed by
//! the reference model, which `trigger_rule_model.rs` checks against).
//!
//! Every DAG builds the upstream states a rule reacts to from small parts:
//! `ok` (`exit 0`), `bad` (`exit 1`), `slow` (`sleep 2`), a branch `pick`
//! that chooses `chosen` so that its other direct downstream tasks
//! (`skipped`, `skipped2`) are skipped, and `uf`, which depends on `bad` and
//! so ends upstream_failed. Besides the states, every test checks that
//! tasks that ran have one attempt and tasks that did not have none, and
//! the rule's timing: rules that wait start after every upstream ended,
//! `one_*` and `always` start at once, before a slow upstream ended.
//!
//! Also: the issue's `cleanup` example (runs only when `transform` fails,
//! both ways), `trigger_rule` in `default_args`, and a branch skip flowing
//! down a chain of all_success tasks and stopping at none_failed and
//! all_done.

use std::time::Duration;

use baton_tests::pb::{RunState, TaskState};
use baton_tests::{Api, RunView, Sandbox, micros};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

use TaskState::{Failed, Skipped, Success, UpstreamFailed};

/// A DAG file's task entries for the parts named in the module doc.
const OK: &str = "
  - id: ok
    command: exit 0";
const OK2: &str = "
  - id: ok2
    command: exit 0";
const BAD: &str = "
  - id: bad
    command: exit 1";
const BAD2: &str = "
  - id: bad2
    command: exit 1";
const SLOW: &str = "
  - id: slow
    command: sleep 2";
const UF: &str = "
  - id: uf
    depends_on: bad
    command: exit 0";
/// `pick` chooses `chosen`; `skipped` and `skipped2` are its other direct
/// downstream tasks.
const PICK: &str = r#"
  - id: pick
    kind: branch
    command: "echo '[\"chosen\"]' > \"$BATON_OUTPUT\""
  - id: chosen
    depends_on: pick
    command: exit 0
  - id: skipped
    depends_on: pick
    command: exit 0
  - id: skipped2
    depends_on: pick
    command: exit 0"#;

/// A DAG file with id `dag_id` whose tasks are `parts` then `targets`.
fn dag(dag_id: &str, parts: &[&str], targets: &str) -> String {
    format!("id: {dag_id}\ntasks:{}{targets}\n", parts.concat())
}

async fn start(name: &str) -> (Sandbox, baton_tests::BatonProcess, Api) {
    let mut sandbox = Sandbox::new(name);
    let dev = sandbox.start_dev(&["--slots", "8"]).await;
    let api = sandbox.api().await;
    (sandbox, dev, api)
}

/// Registers `yaml`, triggers `dag_id` with `params_json`, and waits until
/// the run and every task are final.
async fn run(api: &mut Api, yaml: &str, dag_id: &str, params_json: &str) -> RunView {
    api.register(yaml).await;
    let run = api.trigger_with_params(dag_id, params_json).await;
    api.wait_for_settled_run(&run.run_id, RUN_TIMEOUT).await
}

/// Asserts the run's state and every task's, listed completely in
/// `expected`.
fn assert_states(view: &RunView, expected: &[(&str, TaskState)], run_state: RunState) {
    view.assert_states(expected, run_state, true);
}

fn started(view: &RunView, task_id: &str) -> i64 {
    let at = micros(view.task(task_id).started_at.as_ref());
    assert!(at > 0, "{task_id} has no started_at\n{}", view.describe());
    at
}

fn ended(view: &RunView, task_id: &str) -> i64 {
    let at = micros(view.task(task_id).ended_at.as_ref());
    assert!(at > 0, "{task_id} has no ended_at\n{}", view.describe());
    at
}

/// `task_id` started after each of `upstream` ended.
fn assert_started_after(view: &RunView, task_id: &str, upstream: &[&str]) {
    for before in upstream {
        assert!(
            started(view, task_id) >= ended(view, before),
            "{task_id} started before {before} ended\n{}",
            view.describe()
        );
    }
}

/// `task_id` started while `upstream` was still running.
fn assert_started_before_end_of(view: &RunView, task_id: &str, upstream: &str) {
    assert!(
        started(view, task_id) < ended(view, upstream),
        "{task_id} waited for {upstream} to end; its rule runs it at once\n{}",
        view.describe()
    );
}

#[tokio::test]
async fn all_success_runs_when_every_upstream_succeeded_else_fails_or_skips() {
    let (_sandbox, _dev, mut api) = start("rule-all-success").await;
    let yaml = dag(
        "rule-all-success",
        &[OK, OK2, BAD, PICK],
        "
  - id: both_ok
    depends_on: [ok, ok2]
    command: exit 0
  - id: written_out
    trigger_rule: all_success
    depends_on: [ok, chosen]
    command: exit 0
  - id: one_bad
    depends_on: [ok, bad]
    command: exit 0
  - id: one_skipped
    depends_on: [ok, skipped]
    command: exit 0
  - id: after_upstream_failed
    depends_on: one_bad
    command: exit 0
  - id: after_skipped
    depends_on: one_skipped
    command: exit 0",
    );
    let view = run(&mut api, &yaml, "rule-all-success", "").await;
    assert_states(
        &view,
        &[
            ("ok", Success),
            ("ok2", Success),
            ("bad", Failed),
            ("pick", Success),
            ("chosen", Success),
            ("skipped", Skipped),
            ("skipped2", Skipped),
            ("both_ok", Success),
            ("written_out", Success),
            ("one_bad", UpstreamFailed),
            ("one_skipped", Skipped),
            ("after_upstream_failed", UpstreamFailed),
            ("after_skipped", Skipped),
        ],
        RunState::Failed,
    );
    assert_started_after(&view, "both_ok", &["ok", "ok2"]);
}

#[tokio::test]
async fn all_failed_runs_when_every_upstream_failed_counting_upstream_failed() {
    let (_sandbox, _dev, mut api) = start("rule-all-failed").await;
    let yaml = dag(
        "rule-all-failed",
        &[OK, BAD, BAD2, UF, PICK],
        "
  - id: both_bad
    trigger_rule: all_failed
    depends_on: [bad, bad2]
    command: exit 0
  - id: bad_and_upstream_failed
    trigger_rule: all_failed
    depends_on: [bad2, uf]
    command: exit 0
  - id: bad_and_ok
    trigger_rule: all_failed
    depends_on: [bad, ok]
    command: exit 0
  - id: bad_and_skipped
    trigger_rule: all_failed
    depends_on: [bad, skipped]
    command: exit 0",
    );
    let view = run(&mut api, &yaml, "rule-all-failed", "").await;
    // Every failure is handled by an all_failed task, so no leaf failed and
    // the run succeeds.
    assert_states(
        &view,
        &[
            ("ok", Success),
            ("bad", Failed),
            ("bad2", Failed),
            ("uf", UpstreamFailed),
            ("pick", Success),
            ("chosen", Success),
            ("skipped", Skipped),
            ("skipped2", Skipped),
            ("both_bad", Success),
            ("bad_and_upstream_failed", Success),
            ("bad_and_ok", Skipped),
            ("bad_and_skipped", Skipped),
        ],
        RunState::Success,
    );
    assert_started_after(&view, "both_bad", &["bad", "bad2"]);
}

const CLEANUP: &str = r#"
id: etl-cleanup
params:
  transform_exit: {type: integer, default: 0}
tasks:
  - id: extract
    command: exit 0
  - id: transform
    depends_on: extract
    command: "exit {{ params.transform_exit }}"
  - id: load
    depends_on: transform
    command: exit 0
  - id: cleanup
    trigger_rule: all_failed
    depends_on: transform
    command: exit 0
  - id: alert
    trigger_rule: one_failed
    depends_on: transform
    command: exit 0
"#;

#[tokio::test]
async fn cleanup_runs_only_when_transform_fails() {
    let (_sandbox, _dev, mut api) = start("rule-cleanup").await;
    let failed = run(&mut api, CLEANUP, "etl-cleanup", r#"{"transform_exit": 1}"#).await;
    assert_states(
        &failed,
        &[
            ("extract", Success),
            ("transform", Failed),
            ("load", UpstreamFailed),
            ("cleanup", Success),
            ("alert", Success),
        ],
        RunState::Failed,
    );
    assert_started_after(&failed, "cleanup", &["transform"]);
    assert_started_after(&failed, "alert", &["transform"]);

    let succeeded = run(&mut api, CLEANUP, "etl-cleanup", r#"{"transform_exit": 0}"#).await;
    assert_states(
        &succeeded,
        &[
            ("extract", Success),
            ("transform", Success),
            ("load", Success),
            ("cleanup", Skipped),
            ("alert", Skipped),
        ],
        RunState::Success,
    );
}

#[tokio::test]
async fn all_done_runs_once_every_upstream_ended_whatever_the_states() {
    let (_sandbox, _dev, mut api) = start("rule-all-done").await;
    let yaml = dag(
        "rule-all-done",
        &[OK, BAD, UF, SLOW, PICK],
        "
  - id: finally
    trigger_rule: all_done
    depends_on: [ok, bad, skipped, slow]
    command: exit 0
  - id: after_upstream_failed
    trigger_rule: all_done
    depends_on: uf
    command: exit 0",
    );
    let view = run(&mut api, &yaml, "rule-all-done", "").await;
    assert_states(
        &view,
        &[
            ("ok", Success),
            ("bad", Failed),
            ("uf", UpstreamFailed),
            ("slow", Success),
            ("pick", Success),
            ("chosen", Success),
            ("skipped", Skipped),
            ("skipped2", Skipped),
            ("finally", Success),
            ("after_upstream_failed", Success),
        ],
        RunState::Success,
    );
    assert_started_after(&view, "finally", &["ok", "bad", "slow"]);
}

#[tokio::test]
async fn all_skipped_runs_when_every_upstream_was_skipped() {
    let (_sandbox, _dev, mut api) = start("rule-all-skipped").await;
    let yaml = dag(
        "rule-all-skipped",
        &[OK, BAD, PICK],
        "
  - id: both_skipped
    trigger_rule: all_skipped
    depends_on: [skipped, skipped2]
    command: exit 0
  - id: skipped_and_ok
    trigger_rule: all_skipped
    depends_on: [skipped, ok]
    command: exit 0
  - id: skipped_and_bad
    trigger_rule: all_skipped
    depends_on: [skipped, bad]
    command: exit 0",
    );
    let view = run(&mut api, &yaml, "rule-all-skipped", "").await;
    assert_states(
        &view,
        &[
            ("ok", Success),
            ("bad", Failed),
            ("pick", Success),
            ("chosen", Success),
            ("skipped", Skipped),
            ("skipped2", Skipped),
            ("both_skipped", Success),
            ("skipped_and_ok", Skipped),
            ("skipped_and_bad", Skipped),
        ],
        RunState::Success,
    );
}

#[tokio::test]
async fn one_success_runs_at_once_and_fails_or_skips_when_none_succeeded() {
    let (_sandbox, _dev, mut api) = start("rule-one-success").await;
    let yaml = dag(
        "rule-one-success",
        &[OK, BAD, BAD2, SLOW, PICK],
        "
  - id: ok_and_bad
    trigger_rule: one_success
    depends_on: [ok, bad]
    command: exit 0
  - id: at_once
    trigger_rule: one_success
    depends_on: [ok, slow]
    command: exit 0
  - id: none_succeeded
    trigger_rule: one_success
    depends_on: [bad, bad2]
    command: exit 0
  - id: all_skipped_upstream
    trigger_rule: one_success
    depends_on: [skipped, skipped2]
    command: exit 0
  - id: skipped_and_bad
    trigger_rule: one_success
    depends_on: [skipped, bad]
    command: exit 0",
    );
    let view = run(&mut api, &yaml, "rule-one-success", "").await;
    assert_states(
        &view,
        &[
            ("ok", Success),
            ("bad", Failed),
            ("bad2", Failed),
            ("slow", Success),
            ("pick", Success),
            ("chosen", Success),
            ("skipped", Skipped),
            ("skipped2", Skipped),
            ("ok_and_bad", Success),
            ("at_once", Success),
            ("none_succeeded", UpstreamFailed),
            ("all_skipped_upstream", Skipped),
            ("skipped_and_bad", UpstreamFailed),
        ],
        RunState::Failed,
    );
    assert_started_after(&view, "at_once", &["ok"]);
    assert_started_before_end_of(&view, "at_once", "slow");
}

#[tokio::test]
async fn one_failed_runs_at_once_and_skips_when_nothing_failed() {
    let (_sandbox, _dev, mut api) = start("rule-one-failed").await;
    let yaml = dag(
        "rule-one-failed",
        &[OK, OK2, BAD, UF, SLOW, PICK],
        "
  - id: bad_and_ok
    trigger_rule: one_failed
    depends_on: [bad, ok]
    command: exit 0
  - id: at_once
    trigger_rule: one_failed
    depends_on: [bad, slow]
    command: exit 0
  - id: upstream_failed_counts
    trigger_rule: one_failed
    depends_on: [uf, ok]
    command: exit 0
  - id: nothing_failed
    trigger_rule: one_failed
    depends_on: [ok, ok2]
    command: exit 0
  - id: skipped_and_ok
    trigger_rule: one_failed
    depends_on: [skipped, ok]
    command: exit 0",
    );
    let view = run(&mut api, &yaml, "rule-one-failed", "").await;
    assert_states(
        &view,
        &[
            ("ok", Success),
            ("ok2", Success),
            ("bad", Failed),
            ("uf", UpstreamFailed),
            ("slow", Success),
            ("pick", Success),
            ("chosen", Success),
            ("skipped", Skipped),
            ("skipped2", Skipped),
            ("bad_and_ok", Success),
            ("at_once", Success),
            ("upstream_failed_counts", Success),
            ("nothing_failed", Skipped),
            ("skipped_and_ok", Skipped),
        ],
        RunState::Success,
    );
    assert_started_after(&view, "at_once", &["bad"]);
    assert_started_before_end_of(&view, "at_once", "slow");
}

#[tokio::test]
async fn one_done_runs_at_once_on_a_success_or_failure_and_skips_when_all_skipped() {
    let (_sandbox, _dev, mut api) = start("rule-one-done").await;
    let yaml = dag(
        "rule-one-done",
        &[OK, BAD, SLOW, PICK],
        "
  - id: at_once
    trigger_rule: one_done
    depends_on: [ok, slow]
    command: exit 0
  - id: bad_and_skipped
    trigger_rule: one_done
    depends_on: [bad, skipped]
    command: exit 0
  - id: all_skipped_upstream
    trigger_rule: one_done
    depends_on: [skipped, skipped2]
    command: exit 0",
    );
    let view = run(&mut api, &yaml, "rule-one-done", "").await;
    assert_states(
        &view,
        &[
            ("ok", Success),
            ("bad", Failed),
            ("slow", Success),
            ("pick", Success),
            ("chosen", Success),
            ("skipped", Skipped),
            ("skipped2", Skipped),
            ("at_once", Success),
            ("bad_and_skipped", Success),
            ("all_skipped_upstream", Skipped),
        ],
        RunState::Success,
    );
    assert_started_before_end_of(&view, "at_once", "slow");
    assert_started_after(&view, "bad_and_skipped", &["bad"]);
}

#[tokio::test]
async fn none_failed_runs_after_successes_and_skips_and_fails_on_a_failure() {
    let (_sandbox, _dev, mut api) = start("rule-none-failed").await;
    let yaml = dag(
        "rule-none-failed",
        &[OK, BAD, UF, PICK],
        "
  - id: ok_and_skipped
    trigger_rule: none_failed
    depends_on: [ok, skipped]
    command: exit 0
  - id: only_skipped
    trigger_rule: none_failed
    depends_on: [skipped, skipped2]
    command: exit 0
  - id: ok_and_bad
    trigger_rule: none_failed
    depends_on: [ok, bad]
    command: exit 0
  - id: upstream_failed_counts
    trigger_rule: none_failed
    depends_on: [uf, ok]
    command: exit 0",
    );
    let view = run(&mut api, &yaml, "rule-none-failed", "").await;
    assert_states(
        &view,
        &[
            ("ok", Success),
            ("bad", Failed),
            ("uf", UpstreamFailed),
            ("pick", Success),
            ("chosen", Success),
            ("skipped", Skipped),
            ("skipped2", Skipped),
            ("ok_and_skipped", Success),
            ("only_skipped", Success),
            ("ok_and_bad", UpstreamFailed),
            ("upstream_failed_counts", UpstreamFailed),
        ],
        RunState::Failed,
    );
    assert_started_after(&view, "ok_and_skipped", &["ok"]);
}

#[tokio::test]
async fn none_failed_min_one_success_needs_a_success_and_no_failure() {
    let (_sandbox, _dev, mut api) = start("rule-none-failed-min-one").await;
    let yaml = dag(
        "rule-none-failed-min-one",
        &[OK, BAD, PICK],
        "
  - id: ok_and_skipped
    trigger_rule: none_failed_min_one_success
    depends_on: [ok, skipped]
    command: exit 0
  - id: only_skipped
    trigger_rule: none_failed_min_one_success
    depends_on: [skipped, skipped2]
    command: exit 0
  - id: ok_and_bad
    trigger_rule: none_failed_min_one_success
    depends_on: [ok, bad]
    command: exit 0",
    );
    let view = run(&mut api, &yaml, "rule-none-failed-min-one", "").await;
    assert_states(
        &view,
        &[
            ("ok", Success),
            ("bad", Failed),
            ("pick", Success),
            ("chosen", Success),
            ("skipped", Skipped),
            ("skipped2", Skipped),
            ("ok_and_skipped", Success),
            ("only_skipped", Skipped),
            ("ok_and_bad", UpstreamFailed),
        ],
        RunState::Failed,
    );
}

#[tokio::test]
async fn none_skipped_runs_after_every_upstream_ended_unless_one_was_skipped() {
    let (_sandbox, _dev, mut api) = start("rule-none-skipped").await;
    let yaml = dag(
        "rule-none-skipped",
        &[OK, BAD, SLOW, PICK],
        "
  - id: ok_and_bad
    trigger_rule: none_skipped
    depends_on: [ok, bad]
    command: exit 0
  - id: waits
    trigger_rule: none_skipped
    depends_on: [ok, slow]
    command: exit 0
  - id: with_a_skip
    trigger_rule: none_skipped
    depends_on: [ok, skipped]
    command: exit 0",
    );
    let view = run(&mut api, &yaml, "rule-none-skipped", "").await;
    assert_states(
        &view,
        &[
            ("ok", Success),
            ("bad", Failed),
            ("slow", Success),
            ("pick", Success),
            ("chosen", Success),
            ("skipped", Skipped),
            ("skipped2", Skipped),
            ("ok_and_bad", Success),
            ("waits", Success),
            ("with_a_skip", Skipped),
        ],
        RunState::Success,
    );
    assert_started_after(&view, "ok_and_bad", &["ok", "bad"]);
    assert_started_after(&view, "waits", &["ok", "slow"]);
}

#[tokio::test]
async fn always_runs_at_once_whatever_its_upstream_did() {
    let (_sandbox, _dev, mut api) = start("rule-always").await;
    let yaml = dag(
        "rule-always",
        &[BAD, UF, SLOW],
        "
  - id: after_bad
    trigger_rule: always
    depends_on: bad
    command: exit 0
  - id: after_upstream_failed
    trigger_rule: always
    depends_on: uf
    command: exit 0
  - id: at_once
    trigger_rule: always
    depends_on: slow
    command: exit 0
  - id: fails_itself
    trigger_rule: always
    depends_on: bad
    command: exit 1",
    );
    let view = run(&mut api, &yaml, "rule-always", "").await;
    // A task that runs ends by its own exit status; `fails_itself` is a
    // failed leaf, so the run fails.
    assert_states(
        &view,
        &[
            ("bad", Failed),
            ("uf", UpstreamFailed),
            ("slow", Success),
            ("after_bad", Success),
            ("after_upstream_failed", Success),
            ("at_once", Success),
            ("fails_itself", Failed),
        ],
        RunState::Failed,
    );
    assert_started_before_end_of(&view, "at_once", "slow");
}

#[tokio::test]
async fn default_args_trigger_rule_applies_to_tasks_that_do_not_set_one() {
    let (_sandbox, _dev, mut api) = start("rule-default-args").await;
    let yaml = "
id: rule-default-args
default_args:
  trigger_rule: all_done
tasks:
  - id: bad
    command: exit 1
  - id: inherits
    depends_on: bad
    command: exit 0
  - id: overrides
    trigger_rule: all_success
    depends_on: bad
    command: exit 0
";
    let view = run(&mut api, yaml, "rule-default-args", "").await;
    assert_states(
        &view,
        &[
            ("bad", Failed),
            ("inherits", Success),
            ("overrides", UpstreamFailed),
        ],
        RunState::Failed,
    );
    let dag = api.get_dag("rule-default-args").await;
    let tasks = dag.version.expect("version").tasks;
    let rule_of = |task_id: &str| {
        tasks
            .iter()
            .find(|task| task.task_id == task_id)
            .map(|task| task.trigger_rule.clone())
            .unwrap_or_default()
    };
    assert_eq!(rule_of("bad"), "all_done", "resolved with default_args");
    assert_eq!(rule_of("inherits"), "all_done");
    assert_eq!(rule_of("overrides"), "all_success");
}

#[tokio::test]
async fn a_branch_skip_flows_through_all_success_and_stops_at_none_failed_and_all_done() {
    let (_sandbox, _dev, mut api) = start("rule-skip-chain").await;
    let yaml = r#"
id: skip-chain
tasks:
  - id: pick
    kind: branch
    command: "echo '\"taken\"' > \"$BATON_OUTPUT\""
  - id: taken
    depends_on: pick
    command: exit 0
  - id: not_taken
    depends_on: pick
    command: exit 0
  - id: step1
    depends_on: not_taken
    command: exit 0
  - id: step2
    depends_on: step1
    command: exit 0
  - id: join_none_failed
    trigger_rule: none_failed
    depends_on: [step2, taken]
    command: exit 0
  - id: join_all_done
    trigger_rule: all_done
    depends_on: step2
    command: exit 0
  - id: join_all_success
    depends_on: [step2, taken]
    command: exit 0
  - id: after_join
    depends_on: join_none_failed
    command: exit 0
"#;
    let view = run(&mut api, yaml, "skip-chain", "").await;
    assert_states(
        &view,
        &[
            ("pick", Success),
            ("taken", Success),
            ("not_taken", Skipped),
            ("step1", Skipped),
            ("step2", Skipped),
            ("join_none_failed", Success),
            ("join_all_done", Success),
            ("join_all_success", Skipped),
            ("after_join", Success),
        ],
        RunState::Success,
    );
    assert_started_after(&view, "join_none_failed", &["taken"]);
    assert_started_after(&view, "after_join", &["join_none_failed"]);
}
