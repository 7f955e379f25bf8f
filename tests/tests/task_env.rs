//! What a command task sees and gives back: the `BATON_*` variables of its
//! run and attempt, `default_args.env` merged under the task's `env`, its
//! `cwd`, an argument vector passed without a shell; and its output, the
//! JSON written to `$BATON_OUTPUT` (invalid or oversized output fails the
//! attempt with outcome ERROR).

use std::collections::HashMap;
use std::time::Duration;

use baton_tests::pb::{AttemptOutcome, RunState, TaskState, TriggerRunRequest};
use baton_tests::{RunView, Sandbox};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// `KEY=VALUE` lines as `env` prints them (values here have no newline).
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

#[tokio::test]
async fn command_tasks_get_run_details_env_cwd_and_exact_arguments() {
    let mut sandbox = Sandbox::new("task-env");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    let cwd = sandbox.path().join("workdir");
    std::fs::create_dir(&cwd).expect("create the task's cwd");
    let env_dump = sandbox.path().join("env.txt");
    let args_dump = sandbox.path().join("args.txt");
    let dag = format!(
        r#"
id: envy
default_args:
  env:
    SHARED: from-defaults
    OVERRIDDEN: from-defaults
tasks:
  - id: report
    command: 'env > "$ENV_DUMP"; pwd >> "$ENV_DUMP.cwd"'
    cwd: "{cwd}"
    env:
      OVERRIDDEN: from-task
      ENV_DUMP: "{env_dump}"
  - id: argv
    command: ["sh", "-c", "printf '%s|' \"$@\" > \"$ARGS_DUMP\"", "sh", "two words", "$HOME", "*", "'quoted'"]
    env:
      ARGS_DUMP: "{args_dump}"
"#,
        cwd = cwd.display(),
        env_dump = env_dump.display(),
        args_dump = args_dump.display(),
    );
    api.register(&dag).await;
    let params = json!({"table": "orders", "limit": 3, "nested": {"flag": true}});
    let response = api
        .try_trigger(TriggerRunRequest {
            dag_id: "envy".to_string(),
            params_json: params.to_string(),
            logical_date: Some(prost_types::Timestamp {
                seconds: 1_714_521_600, // 2024-05-01T00:00:00Z
                nanos: 0,
            }),
            idempotency_key: String::new(),
        })
        .await
        .expect("TriggerRun");
    let run = response.run.expect("run");
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());

    let env = parse_env(&read(&env_dump));
    let var = |name: &str| {
        env.get(name)
            .unwrap_or_else(|| panic!("{name} not set; the task saw {env:?}"))
            .as_str()
    };
    assert_eq!(var("BATON_DAG_ID"), "envy");
    assert_eq!(var("BATON_RUN_ID"), run.run_id);
    assert_eq!(var("BATON_TASK_ID"), "report");
    assert_eq!(var("BATON_ATTEMPT"), "1");
    assert_eq!(var("BATON_ATTEMPT_ID"), view.task("report").attempt_id);
    assert_eq!(var("BATON_LOGICAL_DATE"), "2024-05-01T00:00:00Z");
    let given: Value = serde_json::from_str(var("BATON_PARAMS")).expect("BATON_PARAMS is JSON");
    assert_eq!(given, params);
    assert!(!var("BATON_OUTPUT").is_empty());
    assert_eq!(var("SHARED"), "from-defaults");
    assert_eq!(var("OVERRIDDEN"), "from-task", "the task's env wins");
    let pwd = read(&sandbox.path().join("env.txt.cwd"));
    assert_eq!(
        std::fs::canonicalize(pwd.trim()).unwrap(),
        std::fs::canonicalize(&cwd).unwrap()
    );

    // An argument vector reaches the program unchanged: no shell expands it.
    assert_eq!(read(&args_dump), "two words|$HOME|*|'quoted'|");
}

fn assert_failed_with_error(view: &RunView, task_id: &str, mention: &str) {
    let task = view.task(task_id);
    assert_eq!(
        view.task_state(task_id),
        TaskState::Failed,
        "{}",
        view.describe()
    );
    assert_eq!(
        task.outcome,
        AttemptOutcome::Error as i32,
        "{task_id}: {}",
        view.describe()
    );
    assert!(
        task.error.contains(mention),
        "{task_id}: error `{}` does not mention `{mention}`",
        task.error
    );
}

#[tokio::test]
async fn output_json_becomes_the_task_output_and_bad_output_fails_the_attempt() {
    let mut sandbox = Sandbox::new("task-output");
    let _dev = sandbox.start_dev(&["--slots", "4"]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: outputs
tasks:
  - id: good
    command: 'printf ''{"rows": 3, "names": ["a", "b"], "big": 9007199254740993}'' > "$BATON_OUTPUT"'
  - id: silent
    command: "true"
  - id: noop
    kind: noop
  - id: not_json
    command: 'echo "rows: 3" > "$BATON_OUTPUT"'
  - id: too_big
    command: 'printf ''"'' > "$BATON_OUTPUT"; head -c 70000 /dev/zero | tr "\0" a >> "$BATON_OUTPUT"; printf ''"'' >> "$BATON_OUTPUT"'
"#,
    )
    .await;
    let run = api.trigger("outputs").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());

    let good = view.task("good");
    assert_eq!(view.task_state("good"), TaskState::Success);
    let output: Value = serde_json::from_str(&good.output_json).expect("output is JSON");
    assert_eq!(output["rows"], json!(3));
    assert_eq!(output["names"], json!(["a", "b"]));
    // Integers above 2^53 survive: outputs travel as JSON text.
    assert!(
        good.output_json.contains("9007199254740993"),
        "{}",
        good.output_json
    );
    for task_id in ["silent", "noop"] {
        assert_eq!(view.task_state(task_id), TaskState::Success);
        assert_eq!(
            view.task(task_id).output_json,
            "",
            "{task_id} wrote nothing"
        );
    }
    assert_failed_with_error(&view, "not_json", "not valid JSON");
    assert_failed_with_error(&view, "too_big", "the limit is 65536");
}
