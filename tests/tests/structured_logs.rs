//! Structured logs: `--log-format json` writes one JSON object per line, and
//! every line about a task's attempt from the controller's scheduler and
//! from the worker carries `dag_id`, `run_id`, `task_id` and `attempt`
//! (as the event's own fields or its spans'). `RUST_LOG` sets levels per
//! crate.

use std::time::Duration;

use baton_tests::Sandbox;
use baton_tests::pb::RunState;
use serde_json::{Map, Value};

const WAIT: Duration = Duration::from_secs(30);

/// One JSON log line, as an object.
type LogLine = Map<String, Value>;

/// An event's fields merged with those of its spans (the event's win).
fn merged_fields(line: &Map<String, Value>) -> Map<String, Value> {
    let mut fields = Map::new();
    let spans = line
        .get("spans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(line.get("span"));
    for span in spans {
        if let Some(span) = span.as_object() {
            fields.extend(span.clone());
        }
    }
    fields.extend(line.clone());
    fields
}

#[tokio::test]
async fn json_log_lines_of_an_attempt_carry_its_identity() {
    let mut sandbox = Sandbox::new("json-logs");
    // The scheduler's attempt events are at debug; the worker stays at info.
    sandbox.set_env("RUST_LOG", "info,baton_controller=debug");
    let dev = sandbox.start_dev(&["--log-format", "json"]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: logged
tasks:
  - id: hello
    command: "echo hello"
"#,
    )
    .await;
    let run = api.trigger("logged").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    // The worker logs the attempt's end before it reports it, the scheduler
    // the success when it handles the report: both are written by now.
    let log = dev.log_contents();

    let lines = json_lines(&log);
    assert!(!lines.is_empty(), "no JSON log line:\n{log}");
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.contains_key(key), "no `{key}` in {line:?}");
        }
    }

    // The scheduler's and the worker's lines about the task (the log
    // store's own lines name the run, task and attempt of the log only).
    let about_hello: Vec<(&LogLine, LogLine)> = lines
        .iter()
        .filter(|line| {
            line.get("target")
                .and_then(Value::as_str)
                .is_some_and(|target| {
                    target.starts_with("baton_controller::scheduler")
                        || target.starts_with("baton_worker")
                })
        })
        .map(|line| (line, merged_fields(line)))
        .filter(|(_, fields)| fields.get("task_id") == Some(&Value::from("hello")))
        .collect();
    for (line, fields) in &about_hello {
        assert_eq!(
            fields.get("dag_id"),
            Some(&Value::from("logged")),
            "{line:?}"
        );
        assert_eq!(
            fields.get("run_id"),
            Some(&Value::from(run.run_id.as_str())),
            "{line:?}"
        );
        assert_eq!(fields.get("attempt"), Some(&Value::from(1)), "{line:?}");
    }
    let has = |target_prefix: &str, message: &str| {
        about_hello.iter().any(|(line, _)| {
            line.get("target")
                .and_then(Value::as_str)
                .is_some_and(|target| target.starts_with(target_prefix))
                && line.get("message") == Some(&Value::from(message))
        })
    };
    for (target, message) in [
        ("baton_controller", "task leased"),
        ("baton_controller", "task succeeded"),
        ("baton_worker", "attempt started"),
        ("baton_worker", "attempt finished"),
    ] {
        assert!(
            has(target, message),
            "no `{message}` line from {target} with the attempt's fields:\n{log}"
        );
    }

    // RUST_LOG: debug lines from the controller, none from the worker.
    let level_of = |target: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|line| {
                line.get("target")
                    .and_then(Value::as_str)
                    .is_some_and(|name| name.starts_with(target))
            })
            .filter_map(|line| line.get("level").and_then(Value::as_str))
            .map(str::to_string)
            .collect()
    };
    assert!(
        level_of("baton_controller")
            .iter()
            .any(|level| level == "DEBUG")
    );
    assert!(
        level_of("baton_worker")
            .iter()
            .all(|level| level != "DEBUG" && level != "TRACE"),
        "the worker logged below info:\n{log}"
    );
}

/// Every line of the log file that is a JSON object, parsed; panics on a
/// line that looks like JSON and is not.
fn json_lines(log: &str) -> Vec<Map<String, Value>> {
    log.lines()
        .filter(|text| text.starts_with('{'))
        .map(|text| match serde_json::from_str(text) {
            Ok(Value::Object(line)) => line,
            other => panic!("not a JSON object log line ({other:?}): {text}"),
        })
        .collect()
}

#[tokio::test]
async fn controller_and_worker_take_the_log_format_too() {
    let mut sandbox = Sandbox::new("json-logs-servers");
    let controller = sandbox.start_controller(&["--log-format", "json"]).await;
    let worker = sandbox
        .start_worker("json-worker", &["--log-format", "json"])
        .await;
    for (process, message) in [
        (&controller, "controller serving"),
        (&worker, "registered with the controller"),
    ] {
        let log = process.log_contents();
        let lines = json_lines(&log);
        assert!(
            lines
                .iter()
                .any(|line| line.get("message") == Some(&Value::from(message))),
            "no JSON line `{message}` in the log of {}:\n{log}",
            process.name()
        );
        assert!(
            log.lines().all(|text| text.starts_with('{')),
            "{} wrote a line that is not JSON:\n{log}",
            process.name()
        );
    }
}
