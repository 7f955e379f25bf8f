//! Prometheus metrics of `baton dev --metrics-listen`, scraped over HTTP and
//! parsed by the Prometheus project's own parser (the Python client's
//! OpenMetrics parser, `tests/scripts/scrape_metrics.py`):
//!
//! - after a known run (3 tasks succeed, 1 fails on both of its 2 attempts),
//!   the counters show exactly those outcomes, the retry and the failed
//!   run; the duration and scheduling delay histograms have one
//!   observation per attempt; store commits are observed;
//! - the present: this controller leads, one worker with its slots is
//!   connected, no run is active, a pool has its size;
//! - freshness: seconds since a DAG's last success grow, and fall back
//!   when it succeeds again;
//! - a DAG's second run adds to the same per-task series, and mapped
//!   instances count as their task;
//! - every metric the Grafana dashboard (`deploy/grafana/baton.json`)
//!   queries is one `baton dev` serves, the in-process worker's included;
//! - `baton worker --metrics-listen`: the worker's own attempts by outcome,
//!   log bytes, and its connection, which drops when the controller dies
//!   and comes back (a second registration) when it returns; a bad or busy
//!   address is refused, naming the flag.

use std::time::Duration;

use baton_tests::dirs::free_port;
use baton_tests::pb::{CreatePoolRequest, RunState};
use baton_tests::poll::poll_until;
use baton_tests::{PythonSdk, Sandbox};
use nix::sys::signal::Signal;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

const KNOWN: &str = "
id: known
tasks:
  - id: a
    command: exit 0
  - id: b
    depends_on: a
    command: exit 0
  - id: c
    depends_on: a
    command: exit 0
  - id: bad
    depends_on: [b, c]
    retries: 1
    retry_delay: 100ms
    command: exit 1
";

const FRESH: &str = "
id: fresh
tasks:
  - id: only
    command: exit 0
";

/// A mapped task: its instances count as it (`task_id="each"`).
const MAPPED: &str = r#"
id: mapped
tasks:
  - id: list
    command: 'printf "{\"items\": [1, 2]}" > "$BATON_OUTPUT"'
  - id: each
    depends_on: list
    map_over: "tasks.list.output.items"
    command: exit 0
"#;

struct Samples {
    families: Vec<String>,
    samples: Vec<Value>,
}

impl Samples {
    /// The value of the sample `name` whose labels include `labels`; 0 when
    /// there is none (a counter never incremented is absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|sample| sample["name"] == name)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(key, value)| sample["labels"][key] == *value)
            })
            .map(|sample| sample["value"].as_f64().unwrap_or(f64::NAN))
            .sum()
    }
}

async fn scrape(python: &PythonSdk, url: &str) -> Samples {
    let script = baton_tests::binary::workspace_root().join("tests/scripts/scrape_metrics.py");
    let script = script.to_string_lossy().into_owned();
    let output = python.run(&[&script, url], SCRAPE_TIMEOUT).await;
    assert!(
        output.status.success(),
        "scraping {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let scraped: Value = serde_json::from_slice(&output.stdout).expect("the scraper prints JSON");
    Samples {
        families: serde_json::from_value(scraped["families"].clone()).expect("families"),
        samples: serde_json::from_value(scraped["samples"].clone()).expect("samples"),
    }
}

#[tokio::test]
async fn metrics_count_a_known_run_and_freshness_resets_on_success() {
    let Some(python) = PythonSdk::setup("metrics").await else {
        return;
    };
    let mut sandbox = Sandbox::new("metrics");
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let _dev = sandbox
        .start_dev(&["--slots", "4", "--metrics-listen", &metrics_address])
        .await;
    let url = format!("http://{metrics_address}/metrics");
    let mut api = sandbox.api().await;
    api.register(KNOWN).await;
    api.register(FRESH).await;
    api.client
        .pools
        .create_pool(CreatePoolRequest {
            name: "warehouse".into(),
            slots: 2,
            description: String::new(),
        })
        .await
        .expect("CreatePool");

    let run = api.trigger("known").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());

    let samples = scrape(&python, &url).await;
    let finished = "baton_tasks_finished_total";
    for task_id in ["a", "b", "c"] {
        let labels = [
            ("dag_id", "known"),
            ("task_id", task_id),
            ("state", "success"),
        ];
        assert_eq!(samples.value(finished, &labels), 1.0, "{task_id}");
    }
    let known = [("dag_id", "known")];
    assert_eq!(
        samples.value(finished, &[("dag_id", "known"), ("state", "success")]),
        3.0
    );
    assert_eq!(
        samples.value(
            finished,
            &[("dag_id", "known"), ("task_id", "bad"), ("state", "failed")]
        ),
        1.0
    );
    assert_eq!(samples.value(finished, &known), 4.0, "nothing else ended");
    assert_eq!(
        samples.value(
            "baton_task_retries_total",
            &[("dag_id", "known"), ("task_id", "bad")]
        ),
        1.0
    );
    assert_eq!(
        samples.value(
            "baton_attempts_total",
            &[("dag_id", "known"), ("outcome", "succeeded")]
        ),
        3.0
    );
    assert_eq!(
        samples.value(
            "baton_attempts_total",
            &[("dag_id", "known"), ("outcome", "failed")]
        ),
        2.0
    );
    assert_eq!(
        samples.value(
            "baton_runs_finished_total",
            &[("dag_id", "known"), ("state", "failed")]
        ),
        1.0
    );
    // One observation per attempt, each of them real time.
    for histogram in [
        "baton_task_duration_seconds",
        "baton_task_scheduling_delay_seconds",
    ] {
        assert_eq!(
            samples.value(&format!("{histogram}_count"), &known),
            5.0,
            "{histogram}"
        );
        assert!(
            samples.value(&format!("{histogram}_sum"), &known) > 0.0,
            "{histogram}"
        );
    }
    assert!(samples.value("baton_store_commit_duration_seconds_count", &[]) > 0.0);
    assert!(samples.value("baton_store_batch_operations_count", &[]) > 0.0);
    // The present.
    assert_eq!(
        samples.value("baton_controller_leader", &[("controller_id", "dev")]),
        1.0
    );
    assert_eq!(samples.value("baton_workers_connected", &[]), 1.0);
    assert_eq!(samples.value("baton_worker_slots", &[]), 4.0);
    assert_eq!(samples.value("baton_worker_free_slots", &[]), 4.0);
    assert_eq!(samples.value("baton_runs_active", &[]), 0.0);
    // No DAG here notifies anyone.
    for result in ["delivered", "failed", "dropped"] {
        assert_eq!(
            samples.value("baton_notifications_total", &[("result", result)]),
            0.0,
            "{result}"
        );
    }
    // The in-process worker's own view: 3 attempts succeeded and 2 failed
    // on it, it is connected and runs nothing now.
    let agent_finished = "baton_agent_attempts_finished_total";
    assert_eq!(
        samples.value(agent_finished, &[("outcome", "succeeded")]),
        3.0
    );
    assert_eq!(samples.value(agent_finished, &[("outcome", "failed")]), 2.0);
    assert_eq!(
        samples.value("baton_agent_attempt_duration_seconds_count", &[]),
        5.0
    );
    assert_eq!(samples.value("baton_agent_slots", &[]), 4.0);
    assert_eq!(samples.value("baton_agent_running_attempts", &[]), 0.0);
    assert_eq!(samples.value("baton_agent_connected", &[]), 1.0);
    assert_eq!(
        samples.value("baton_agent_info", &[("worker_id", "dev-worker")]),
        1.0
    );
    let warehouse = [("pool", "warehouse")];
    assert_eq!(samples.value("baton_pool_slots", &warehouse), 2.0);
    assert_eq!(samples.value("baton_pool_used_slots", &warehouse), 0.0);
    assert_eq!(
        samples.value("baton_queue_ready_tasks", &[("queue", "default")]),
        0.0
    );

    // Freshness: after a success it is small, then grows, and a new
    // success brings it back down.
    let fresh = [("dag_id", "fresh")];
    let since = "baton_dag_seconds_since_last_success";
    let first = api.trigger("fresh").await;
    let view = api.wait_for_run(&first.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let right_after = scrape(&python, &url).await.value(since, &fresh);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = scrape(&python, &url).await.value(since, &fresh);
    assert!(
        later >= right_after + 1.0,
        "freshness grows: {right_after} then {later}"
    );
    let second = api.trigger("fresh").await;
    api.wait_for_run(&second.run_id, WAIT).await;
    let samples = scrape(&python, &url).await;
    let reset = samples.value(since, &fresh);
    assert!(
        reset < later,
        "a success resets freshness: {later} then {reset}"
    );
    assert!(samples.value("baton_dag_last_success_timestamp_seconds", &fresh) > 1.7e9);
    assert_eq!(
        samples.value(
            "baton_runs_finished_total",
            &[("dag_id", "fresh"), ("state", "success")]
        ),
        2.0
    );
    // Every run of a DAG version counts its tasks: the second run's end
    // adds to the same series, and mapped instances count as their task.
    assert_eq!(
        samples.value(
            finished,
            &[
                ("dag_id", "fresh"),
                ("task_id", "only"),
                ("state", "success")
            ]
        ),
        2.0
    );
    api.register(MAPPED).await;
    for _ in 0..2 {
        let run = api.trigger("mapped").await;
        let view = api.wait_for_run(&run.run_id, WAIT).await;
        assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    }
    let mapped = scrape(&python, &url).await;
    let count = |task_id: &str| {
        mapped.value(
            finished,
            &[
                ("dag_id", "mapped"),
                ("task_id", task_id),
                ("state", "success"),
            ],
        )
    };
    assert_eq!(count("list"), 2.0);
    // Per run, both instances and the mapped task itself.
    assert_eq!(count("each"), 6.0);
    // A DAG that never succeeded has no freshness yet.
    assert!(
        !samples
            .samples
            .iter()
            .any(|sample| sample["name"] == since && sample["labels"]["dag_id"] == "known")
    );

    // The dashboard queries only what is served.
    let dashboard = std::fs::read_to_string(
        baton_tests::binary::workspace_root().join("deploy/grafana/baton.json"),
    )
    .expect("deploy/grafana/baton.json");
    let names = regex::Regex::new(r"baton_[a-z_]+").expect("regex");
    for name in names.find_iter(&dashboard).map(|found| found.as_str()) {
        let family = ["_bucket", "_count", "_sum", "_total", "_info"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            samples.families.iter().any(|served| served == family),
            "the dashboard queries {name}, which /metrics does not serve"
        );
    }
}

const WORKER_RUN: &str = r#"
id: on-worker
tasks:
  - id: talk
    command: "echo twelve bytes"
  - id: quiet
    kind: noop
  - id: broken
    command: exit 3
"#;

/// Scrapes until `holds` is true of the samples, for at most [`WAIT`].
async fn scrape_until(
    python: &PythonSdk,
    url: &str,
    what: &str,
    holds: impl Fn(&Samples) -> bool,
) -> Samples {
    let mut last = None;
    let held = poll_until(WAIT, Duration::from_millis(200), async || {
        let samples = scrape(python, url).await;
        if holds(&samples) {
            return Some(samples);
        }
        last = Some(samples.samples);
        None
    })
    .await;
    held.unwrap_or_else(|| panic!("{what}: not within {WAIT:?}; last scrape: {last:?}"))
}

#[tokio::test]
async fn a_worker_serves_its_own_metrics_and_they_follow_its_connection() {
    let Some(python) = PythonSdk::setup("worker-metrics").await else {
        return;
    };
    let mut sandbox = Sandbox::new("worker-metrics");
    let mut controller = sandbox.start_controller(&[]).await;
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let _worker = sandbox
        .start_worker("w", &["--slots", "3", "--metrics-listen", &metrics_address])
        .await;
    let url = format!("http://{metrics_address}/metrics");
    let mut api = sandbox.api().await;
    api.register(WORKER_RUN).await;
    let run = api.trigger("on-worker").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());

    // The last acknowledgements may still be on their way.
    let samples = scrape_until(&python, &url, "everything acknowledged", |samples| {
        samples.value("baton_agent_unacknowledged_attempts", &[]) == 0.0
    })
    .await;
    let finished = "baton_agent_attempts_finished_total";
    assert_eq!(samples.value(finished, &[("outcome", "succeeded")]), 2.0);
    assert_eq!(samples.value(finished, &[("outcome", "failed")]), 1.0);
    assert_eq!(samples.value(finished, &[]), 3.0, "nothing else ended");
    assert_eq!(
        samples.value("baton_agent_attempt_duration_seconds_count", &[]),
        3.0
    );
    assert_eq!(
        samples.value("baton_agent_log_sent_bytes_total", &[]),
        "twelve bytes\n".len() as f64
    );
    assert_eq!(samples.value("baton_agent_slots", &[]), 3.0);
    assert_eq!(samples.value("baton_agent_running_attempts", &[]), 0.0);
    assert_eq!(samples.value("baton_agent_draining", &[]), 0.0);
    assert_eq!(samples.value("baton_agent_connected", &[]), 1.0);
    assert_eq!(samples.value("baton_agent_registrations_total", &[]), 1.0);
    assert_eq!(
        samples.value("baton_agent_info", &[("worker_id", "w")]),
        1.0
    );
    assert!(
        !samples
            .families
            .iter()
            .any(|family| family == "baton_tasks_finished"),
        "a worker serves only its own metrics: {:?}",
        samples.families
    );

    // The controller dies: the worker says it is not connected, and says
    // so again once it registered with the controller that came back.
    controller.signal(Signal::SIGKILL);
    controller.wait_exit(WAIT).await;
    drop(controller);
    scrape_until(&python, &url, "disconnected", |samples| {
        samples.value("baton_agent_connected", &[]) == 0.0
    })
    .await;
    let _controller = sandbox.start_controller(&[]).await;
    let samples = scrape_until(&python, &url, "registered again", |samples| {
        samples.value("baton_agent_connected", &[]) == 1.0
    })
    .await;
    assert_eq!(samples.value("baton_agent_registrations_total", &[]), 2.0);

    // A bad or busy address is refused before the worker starts.
    let bad = sandbox
        .cli(&["worker", "--id", "bad", "--metrics-listen", "nowhere"])
        .await;
    bad.assert_failure();
    assert!(bad.stderr.contains("--metrics-listen"), "{bad}");
    let busy = sandbox
        .cli(&[
            "worker",
            "--id",
            "busy",
            "--metrics-listen",
            &metrics_address,
        ])
        .await;
    busy.assert_failure();
    assert!(
        busy.stderr
            .contains(&format!("--metrics-listen {metrics_address}")),
        "{busy}"
    );
}
