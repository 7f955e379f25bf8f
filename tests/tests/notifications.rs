//! Notifications, end to end: a real `baton dev` posts to a webhook
//! receiver the test runs on 127.0.0.1.
//!
//! What users rely on: a failed run is reported exactly once, with a body
//! that says what failed and when; successes, exhausted retries and missed
//! SLAs when asked; a receiver that fails a few times still gets the
//! notification once it answers 2xx; a receiver that hangs delays nothing
//! (the next task starts at once, the next run runs); the controller's
//! default notifiers apply to DAGs without their own; the Slack format is a
//! Slack incoming-webhook body; the secret header is sent; bad notifier
//! settings are refused, naming the field, at registration and at startup.

use std::time::Duration;

use baton_tests::pb::{RunState, TaskState};
use baton_tests::{BatonProcess, ReceivedRequest, Sandbox, WebhookReceiver, micros};
use chrono::DateTime;
use tonic::Code;

const RUN_TIMEOUT: Duration = Duration::from_secs(30);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// Quick retries, so that a receiver failing twice is retried within a
/// second.
const FAST_DELIVERY: &str = r#"version = 1

[notify]
retry_delay = "50ms"
max_retry_delay = "200ms"
attempt_timeout = "2s"
"#;

/// A DAG whose one task exits with the run's `code` param.
fn exit_code_dag(dag_id: &str, notify: &str) -> String {
    format!(
        r#"id: {dag_id}
params:
  code: {{type: integer, default: 0}}
notify:
{notify}
tasks:
  - id: extract
    command: ["sh", "-c", "echo extracting; exit {{{{ params.code }}}}"]
  - id: load
    kind: noop
    depends_on: [extract]
"#
    )
}

async fn start_dev(sandbox: &mut Sandbox, config: &str) -> BatonProcess {
    let path = sandbox.write_file("controller.toml", config);
    let path = path.to_string_lossy().into_owned();
    sandbox.start_dev(&["--config", &path]).await
}

/// Microseconds since the epoch of an RFC 3339 field of a body.
fn body_micros(body: &serde_json::Value, field: &str) -> i64 {
    let text = body[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string in {body:#}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|error| panic!("`{field}` = {text} is not RFC 3339: {error}"))
        .timestamp_micros()
}

fn events(requests: &[ReceivedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|request| request.body["event"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test]
async fn a_failed_run_is_reported_once_with_what_failed_and_a_success_when_asked() {
    let receiver = WebhookReceiver::start(&[]).await;
    let mut sandbox = Sandbox::new("notify_failed_run");
    sandbox.set_env("HOOK_SECRET", "s3cret-value");
    let _dev = start_dev(&mut sandbox, FAST_DELIVERY).await;
    let mut api = sandbox.api().await;
    let notify = format!(
        "  - url: {}\n    on: [run_failed, run_succeeded]\n    secret_header: {{name: X-Baton-Secret, value_env: HOOK_SECRET}}",
        receiver.url("/hooks/baton")
    );
    api.register(&exit_code_dag("etl", &notify)).await;

    let run = api.trigger_with_params("etl", r#"{"code": 3}"#).await;
    let view = api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());
    let requests = receiver.wait_for_requests(1, DELIVERY_TIMEOUT).await;
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/baton");
    assert_eq!(request.answered, 200);
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["x-baton-secret"], "s3cret-value");
    assert_eq!(request.headers["x-baton-event"], "run_failed");
    let body = &request.body;
    assert_eq!(
        request.headers["x-baton-notification-id"],
        body["id"].as_str().unwrap()
    );
    assert_eq!(body["event"], "run_failed");
    assert_eq!(body["dag_id"], "etl");
    assert_eq!(body["run_id"], run.run_id.as_str());
    assert_eq!(body["state"], "failed");
    assert_eq!(body["reason"], "task `extract` failed");
    assert_eq!(body["trigger"], "manual");
    assert_eq!(body["failed_tasks_omitted"], 0);
    assert_eq!(body["task"], serde_json::Value::Null);
    assert_eq!(body["sla"], serde_json::Value::Null);
    let failed = body["failed_tasks"].as_array().expect("failed_tasks list");
    assert_eq!(failed.len(), 1, "{body:#}");
    assert_eq!(failed[0]["task_id"], "extract");
    assert_eq!(failed[0]["state"], "failed");
    assert_eq!(failed[0]["attempt"], 1);
    assert_eq!(failed[0]["max_attempts"], 1);
    assert_eq!(failed[0]["outcome"], "failed");
    assert_eq!(failed[0]["exit_code"], 3);
    // Times are the run's own, to the millisecond.
    for (field, stored) in [
        ("created_at", &view.run.created_at),
        ("started_at", &view.run.started_at),
        ("ended_at", &view.run.ended_at),
        ("logical_date", &view.run.logical_date),
    ] {
        let stored = micros(stored.as_ref());
        assert!(
            (body_micros(body, field) - stored).abs() < 1_000,
            "{field}: {body:#} vs {stored}"
        );
    }
    assert!(
        (body_micros(&failed[0], "ended_at") - micros(view.task("extract").ended_at.as_ref()))
            .abs()
            < 1_000
    );
    assert!(body["duration_seconds"].as_f64().unwrap() >= 0.0);
    let description = body["description"].as_str().unwrap();
    for expected in [
        run.run_id.as_str(),
        "DAG etl failed: task `extract` failed",
        "extract (attempt 1 of 1: failed, exited with status 3)",
        "triggered manual",
    ] {
        assert!(
            description.contains(expected),
            "{expected:?} in {description:?}"
        );
    }
    assert!(!description.contains("http"), "link-free: {description}");

    // The same DAG succeeding: one more notification, the success. Had the
    // failure been sent twice, the second copy would be here too.
    let run = api.trigger_with_params("etl", r#"{"code": 0}"#).await;
    let view = api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let requests = receiver.wait_for_requests(2, DELIVERY_TIMEOUT).await;
    assert_eq!(
        events(&requests),
        ["run_failed", "run_succeeded"],
        "{requests:#?}"
    );
    let body = &requests[1].body;
    assert_eq!(body["run_id"], run.run_id.as_str());
    assert_eq!(body["state"], "success");
    assert_eq!(body["reason"], serde_json::Value::Null);
    assert_eq!(body["failed_tasks"], serde_json::json!([]));
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("DAG etl succeeded"),
        "{body:#}"
    );
}

#[tokio::test]
async fn retry_exhausted_is_posted_once_after_the_last_attempt_only() {
    let receiver = WebhookReceiver::start(&[]).await;
    let mut sandbox = Sandbox::new("notify_retry_exhausted");
    let _dev = start_dev(&mut sandbox, FAST_DELIVERY).await;
    let mut api = sandbox.api().await;
    api.register(&format!(
        r#"id: flaky
notify:
  - url: {}
    on: [retry_exhausted]
tasks:
  - {{id: fetch, command: ["sh", "-c", "exit 7"], retries: 2, retry_delay: 100ms}}
  - {{id: report, kind: noop, depends_on: [fetch], trigger_rule: all_done}}
"#,
        receiver.url("/retries")
    ))
    .await;

    let run = api.trigger("flaky").await;
    let view = api.wait_for_settled_run(&run.run_id, RUN_TIMEOUT).await;
    assert_eq!(view.task_state("fetch"), TaskState::Failed);
    assert_eq!(view.task("fetch").attempt, 3, "{}", view.describe());
    let requests = receiver.wait_for_requests(1, DELIVERY_TIMEOUT).await;
    let body = &requests[0].body;
    assert_eq!(body["event"], "retry_exhausted");
    assert_eq!(body["run_id"], run.run_id.as_str());
    assert_eq!(body["task"]["task_id"], "fetch");
    assert_eq!(body["task"]["state"], "failed");
    assert_eq!(body["task"]["attempt"], 3);
    assert_eq!(body["task"]["max_attempts"], 3);
    assert_eq!(body["task"]["exit_code"], 7);
    assert_eq!(body["failed_tasks"][0]["task_id"], "fetch");
    let description = body["description"].as_str().unwrap();
    assert!(
        description.contains(
            "task fetch of run {} of DAG flaky failed on its last attempt (3 of 3) and will not be retried"
                .replace("{}", &run.run_id)
                .as_str()
        ),
        "{description}"
    );
    // Not once per failed attempt: a second run's post is the next one.
    let second = api.trigger("flaky").await;
    api.wait_for_settled_run(&second.run_id, RUN_TIMEOUT).await;
    let requests = receiver.wait_for_requests(2, DELIVERY_TIMEOUT).await;
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[1].body["run_id"], second.run_id.as_str());
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_default_notifier_post_on_the_third_try() {
    let receiver = WebhookReceiver::start(&[500, 500]).await;
    let mut sandbox = Sandbox::new("notify_retries_default");
    let config = format!(
        "{FAST_DELIVERY}\n[[notify.default]]\nurl = \"{}\"\non = [\"run_failed\"]\n",
        receiver.url("/default")
    );
    let _dev = start_dev(&mut sandbox, &config).await;
    let mut api = sandbox.api().await;
    // No `notify` of its own: the controller's default applies.
    api.register("id: plain\ntasks:\n  - {id: fail, command: [\"false\"]}\n")
        .await;

    let run = api.trigger("plain").await;
    let view = api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());
    let requests = receiver.wait_for_requests(3, DELIVERY_TIMEOUT).await;
    let answered: Vec<u16> = requests.iter().map(|request| request.answered).collect();
    assert_eq!(answered, [500, 500, 200], "{requests:#?}");
    // One notification, three attempts: the same id and body each time.
    for request in &requests {
        assert_eq!(request.path, "/default");
        assert_eq!(request.body, requests[0].body);
        assert_eq!(request.body["event"], "run_failed");
        assert_eq!(request.body["run_id"], run.run_id.as_str());
    }

    // Another failed run: exactly one more request, accepted at once.
    let run = api.trigger("plain").await;
    api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;
    let requests = receiver.wait_for_requests(4, DELIVERY_TIMEOUT).await;
    assert_eq!(requests.len(), 4, "{requests:#?}");
    assert_eq!(requests[3].body["run_id"], run.run_id.as_str());
    assert_eq!(requests[3].answered, 200);
}

#[tokio::test]
async fn a_receiver_that_never_answers_delays_no_task_and_no_run() {
    let receiver = WebhookReceiver::silent().await;
    let mut sandbox = Sandbox::new("notify_silent_receiver");
    // One delivery at a time and a queue of one: the hanging receiver
    // holds the only slot, and later notifications are dropped.
    let config = "version = 1\n[notify]\nmax_concurrent = 1\nqueue_capacity = 1\nattempt_timeout = \"60s\"\n";
    let _dev = start_dev(&mut sandbox, config).await;
    let mut api = sandbox.api().await;
    api.register(&format!(
        r#"id: hang
notify:
  - url: {}
    on: [retry_exhausted, run_failed, run_succeeded]
tasks:
  - {{id: first, command: ["false"]}}
  - {{id: cleanup, command: ["true"], depends_on: [first], trigger_rule: all_done}}
"#,
        receiver.url("/hang")
    ))
    .await;

    for round in 0..2 {
        let run = api.trigger("hang").await;
        let view = api.wait_for_settled_run(&run.run_id, RUN_TIMEOUT).await;
        assert_eq!(view.task_state("first"), TaskState::Failed);
        assert_eq!(view.task_state("cleanup"), TaskState::Success);
        assert_eq!(view.state(), RunState::Success, "{}", view.describe());
        let first_ended = micros(view.task("first").ended_at.as_ref());
        let cleanup_started = micros(view.task("cleanup").started_at.as_ref());
        let gap = Duration::from_micros((cleanup_started - first_ended).max(0) as u64);
        assert!(
            gap < Duration::from_secs(1),
            "round {round}: cleanup started {gap:?} after first ended\n{}",
            view.describe()
        );
    }
    // The notification was attempted: the receiver holds its connection.
    assert!(
        receiver.connections() >= 1,
        "no connection reached the receiver"
    );
}

#[tokio::test]
async fn slack_format_posts_a_text_body_and_sla_misses_are_reported() {
    let receiver = WebhookReceiver::start(&[]).await;
    let mut sandbox = Sandbox::new("notify_slack_sla");
    let _dev = start_dev(&mut sandbox, FAST_DELIVERY).await;
    let mut api = sandbox.api().await;
    api.register(&format!(
        r#"id: slow
sla: 1s
notify:
  - url: {}
    on: [sla_missed, run_succeeded]
    format: slack
tasks:
  - {{id: nap, command: ["sleep", "2"]}}
"#,
        receiver.url("/slack")
    ))
    .await;

    let run = api.trigger("slow").await;
    let view = api.wait_for_run(&run.run_id, RUN_TIMEOUT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let requests = receiver.wait_for_requests(2, DELIVERY_TIMEOUT).await;
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let texts: Vec<&str> = requests
        .iter()
        .map(|request| {
            let body = request.body.as_object().expect("a JSON object");
            assert_eq!(body.len(), 1, "only `text`: {body:?}");
            assert!(!request.headers["x-baton-event"].is_empty());
            body["text"].as_str().expect("text is a string")
        })
        .collect();
    assert!(
        texts[0].contains(&format!(
            "run {} of DAG slow missed its SLA of 1s",
            run.run_id
        )),
        "{texts:?}"
    );
    assert!(texts[1].contains("DAG slow succeeded"), "{texts:?}");
}

#[tokio::test]
async fn bad_notifier_settings_are_refused_naming_the_field() {
    let mut sandbox = Sandbox::new("notify_validation");
    let _dev = start_dev(&mut sandbox, FAST_DELIVERY).await;
    let mut api = sandbox.api().await;
    let cases = [
        (
            "notify:\n  - {url: \"ftp://example.com/x\"}\n",
            "spec.notify[0].url: the scheme is `ftp`",
        ),
        (
            "notify:\n  - {url: \"https://example.com/x\", on: [run_faild]}\n",
            "spec.notify[0].on[0]: unknown event `run_faild`; did you mean `run_failed`?",
        ),
        (
            "notify:\n  - {url: \"https://example.com/x\", format: teams}\n",
            "spec.notify[0].format: unknown format `teams`",
        ),
        (
            "notify:\n  - {urll: \"https://example.com/x\"}\n",
            "spec.notify[0].urll: unknown field; did you mean `url`?",
        ),
        (
            "notify:\n  - url: https://example.com/x\n    secret_header: {name: X-Secret, value: hunter2}\n",
            "spec.notify[0].secret_header.value: secrets are not written in DAG files",
        ),
        (
            "notify:\n  - url: https://example.com/x\n    secret_header: {name: X-Secret, value_env: NOT_SET_ANYWHERE}\n",
            "spec.notify[0].secret_header.value_env: the environment variable NOT_SET_ANYWHERE is not set on the controller",
        ),
    ];
    for (notify, expected) in cases {
        let spec = format!("id: bad\n{notify}tasks:\n  - {{id: a, kind: noop}}\n");
        let status = api
            .try_register(&spec)
            .await
            .expect_err("a bad notifier is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(expected),
            "{expected:?} in {:?}",
            status.message()
        );
    }
    let dags = api.list_dags().await;
    assert!(dags.is_empty(), "nothing is stored: {dags:?}");

    // The controller's own config file: refused at startup.
    let config = sandbox.write_file(
        "bad.toml",
        "version = 1\n[[notify.default]]\nurl = \"https://example.com/x\"\non = [\"run_succeded\"]\n",
    );
    let args: Vec<String> = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &sandbox.path().join("other").to_string_lossy(),
        "--config",
        &config.to_string_lossy(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut process = BatonProcess::spawn("bad-config", sandbox.path(), &args);
    let status = process.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "{}", process.log_contents());
    let log = process.log_contents();
    assert!(
        log.contains(
            "config notify.default[0].on[0]: unknown event `run_succeded`; did you mean `run_succeeded`?"
        ),
        "{log}"
    );
}
