//! OpenTelemetry traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointed at a
//! collector the test runs, a run of five tasks is one trace whose id is the
//! run id: the run's span is the root, each attempt's controller span is its
//! child, and each worker's execution span is the child of its attempt's
//! span, with the trace context carried in `Assign` from the controller's
//! process to the worker's. `baton dev` flushes its spans on SIGTERM. A
//! controller killed while an attempt runs and started again exports the
//! same trace: every id is derived from the run and attempt ids. A sampler
//! keeps or drops whole runs, and the worker follows the controller.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_tests::otlp::TEST_HEADER;
use baton_tests::pb::{RunState, TaskState};
use baton_tests::{BatonProcess, CollectedSpan, OtlpCollector, Sandbox};
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(30);

/// Five command tasks: `extract`, three transforms after it, `load` after
/// all three.
const FIVE_TASKS: &str = r#"
id: traced
tasks:
  - id: extract
    command: "echo extract"
  - id: clean
    command: "echo clean"
    depends_on: [extract]
  - id: enrich
    command: "echo enrich"
    depends_on: [extract]
  - id: score
    command: "echo score"
    depends_on: [extract]
  - id: load
    command: "echo load"
    depends_on: [clean, enrich, score]
"#;

const FIVE_TASK_IDS: [&str; 5] = ["extract", "clean", "enrich", "score", "load"];

/// The spans of one run's trace, by role.
struct RunTrace {
    run: CollectedSpan,
    /// Controller spans of attempts, by task id.
    attempts: BTreeMap<String, CollectedSpan>,
    /// Worker spans of executions, by task id.
    executions: BTreeMap<String, CollectedSpan>,
}

/// The run's trace once its run span and an attempt span and an execution
/// span of each task have arrived (`None` before).
fn run_trace(spans: &[CollectedSpan], trace_id: &str, tasks: &[&str]) -> Option<RunTrace> {
    let in_trace: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|span| span.trace_id == trace_id)
        .collect();
    let run = in_trace.iter().find(|span| span.name == "run")?;
    let by_task = |name: &str| -> BTreeMap<String, CollectedSpan> {
        in_trace
            .iter()
            .filter(|span| span.name == name)
            .filter_map(|span| Some((span.attribute("task_id")?.to_string(), (*span).clone())))
            .collect()
    };
    let attempts = by_task("attempt");
    // An execution span names no task: its parent, the attempt span, does.
    // One whose parent is no attempt of the trace is not counted, and the
    // trace never completes.
    let executions = in_trace
        .iter()
        .filter(|span| span.name == "execute")
        .filter_map(|span| {
            let (task_id, _) = attempts
                .iter()
                .find(|(_, attempt)| attempt.span_id == span.parent_span_id)?;
            Some((task_id.clone(), (*span).clone()))
        })
        .collect();
    let trace = RunTrace {
        run: (*run).clone(),
        attempts,
        executions,
    };
    tasks
        .iter()
        .all(|task| trace.attempts.contains_key(*task) && trace.executions.contains_key(*task))
        .then_some(trace)
}

fn describe(spans: &[CollectedSpan]) -> String {
    spans
        .iter()
        .map(|span| {
            format!(
                "{} {} trace={} span={} parent={} {:?}",
                span.service_name,
                span.name,
                span.trace_id,
                span.span_id,
                span.parent_span_id,
                span.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks the structure: run span root, attempt spans its children,
/// execution spans children of their attempt's span, times nested, the
/// identity attributes on the run and attempt spans, and only what the
/// worker adds (worker, outcome, exit code) on an execution span.
fn assert_run_trace(
    trace: &RunTrace,
    run_id: &str,
    dag_id: &str,
    tasks: &[&str],
    controller_service: &str,
    worker_service: &str,
    worker_id: &str,
) {
    let run = &trace.run;
    assert_eq!(run.parent_span_id, "", "the run span is the root: {run:?}");
    assert_eq!(run.service_name, controller_service);
    assert_eq!(run.attribute("run_id"), Some(run_id));
    assert_eq!(run.attribute("dag_id"), Some(dag_id));
    assert_eq!(run.attribute("state"), Some("success"));
    assert_eq!(trace.attempts.len(), tasks.len(), "one attempt per task");
    assert_eq!(
        trace.executions.len(),
        tasks.len(),
        "one execution per task"
    );
    for &task_id in tasks {
        let attempt = &trace.attempts[task_id];
        assert_eq!(
            attempt.parent_span_id, run.span_id,
            "the attempt span of {task_id} is a child of the run span: {attempt:?}"
        );
        assert_eq!(attempt.service_name, controller_service);
        for (key, value) in [
            ("dag_id", dag_id),
            ("run_id", run_id),
            ("task_id", task_id),
            ("attempt", "1"),
            ("worker_id", worker_id),
            ("outcome", "succeeded"),
        ] {
            assert_eq!(attempt.attribute(key), Some(value), "{key} of {attempt:?}");
        }
        assert!(
            run.start_unix_nanos <= attempt.start_unix_nanos
                && attempt.end_unix_nanos <= run.end_unix_nanos,
            "the attempt of {task_id} lies within the run: {attempt:?} {run:?}"
        );
        let execution = &trace.executions[task_id];
        assert_eq!(execution.service_name, worker_service);
        // What the worker adds to the attempt span it is a child of.
        let expected = [
            ("exit_code", "0"),
            ("outcome", "succeeded"),
            ("worker_id", worker_id),
        ];
        let attributes: Vec<(&str, &str)> = execution
            .attributes
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(attributes, expected, "attributes of {execution:?}");
        assert!(
            attempt.start_unix_nanos <= execution.start_unix_nanos
                && execution.end_unix_nanos <= attempt.end_unix_nanos,
            "the execution of {task_id} lies within its attempt: {execution:?} {attempt:?}"
        );
    }
}

/// Dependencies of the five-task DAG show in time: `load` was leased after
/// the three it waits for ended.
fn assert_load_after_its_upstream(trace: &RunTrace) {
    let load = &trace.attempts["load"];
    for upstream in ["clean", "enrich", "score"] {
        assert!(trace.executions[upstream].end_unix_nanos <= load.start_unix_nanos);
    }
}

/// The trace id of a run: its UUID as 32 hex digits.
fn trace_id_of(run_id: &str) -> String {
    run_id.replace('-', "")
}

/// The trace of `run_id` with an attempt and an execution span for each
/// of `tasks`, once the collector has it (within `timeout`); panics with
/// what arrived and `logs` otherwise, saying the trace `what`.
async fn wait_for_trace(
    collector: &OtlpCollector,
    run_id: &str,
    tasks: &[&str],
    timeout: Duration,
    what: &str,
    logs: impl FnOnce() -> String,
) -> RunTrace {
    let trace_id = trace_id_of(run_id);
    let spans = collector
        .wait_for_spans(timeout, |spans| {
            run_trace(spans, &trace_id, tasks).is_some()
        })
        .await;
    let Some(spans) = spans else {
        panic!(
            "the run's trace {what}; received:\n{}\n{}",
            describe(&collector.spans()),
            logs()
        )
    };
    run_trace(&spans, &trace_id, tasks).expect("checked by the wait")
}

/// A sandbox whose processes export to a collector the test runs, with
/// this batch delay.
async fn traced_sandbox(name: &str, batch_delay_ms: &str) -> (OtlpCollector, Sandbox) {
    let collector = OtlpCollector::start().await;
    let mut sandbox = Sandbox::new(name);
    sandbox.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint());
    sandbox.set_env("OTEL_BSP_SCHEDULE_DELAY", batch_delay_ms);
    (collector, sandbox)
}

/// The name and nice value of each thread of a process, from `/proc`.
fn thread_nice_values(pid: u32) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            // After the name's closing parenthesis: state is field 3, nice 19.
            let (_, rest) = stat.rsplit_once(')')?;
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            Some((name.trim_end().to_string(), nice))
        })
        .collect()
}

/// The case that matters: controller and worker are separate processes, so
/// the worker's spans join the run's trace only through the context its
/// `Assign` carries.
#[tokio::test]
async fn a_run_is_one_trace_across_the_controller_and_worker_processes() {
    let (collector, mut sandbox) = traced_sandbox("traces-cluster", "100").await;
    // Headers and compression as the OTLP variables set them; values are
    // percent-encoded.
    sandbox.set_env(
        "OTEL_EXPORTER_OTLP_HEADERS",
        &format!("{TEST_HEADER}=team%20data"),
    );
    sandbox.set_env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip");
    let mut controller = sandbox.start_controller(&[]).await;
    let mut worker = sandbox.start_worker("traced-worker", &[]).await;
    let mut api = sandbox.api().await;
    api.register(FIVE_TASKS).await;
    let run = api.trigger("traced").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());

    let trace = wait_for_trace(
        &collector,
        &run.run_id,
        &FIVE_TASK_IDS,
        WAIT,
        "did not arrive",
        || sandbox.logs_tail(),
    )
    .await;
    assert_run_trace(
        &trace,
        &run.run_id,
        "traced",
        &FIVE_TASK_IDS,
        "baton-controller",
        "baton-worker",
        "traced-worker",
    );
    assert_load_after_its_upstream(&trace);
    let headers = collector.test_headers();
    assert!(
        !headers.is_empty() && headers.iter().all(|value| value == "team data"),
        "{headers:?}"
    );
    // Each process exports from one thread of its own, at a lower priority
    // than the threads that schedule and run tasks.
    for process in [&controller, &worker] {
        let threads = thread_nice_values(process.pid());
        let exporters: Vec<i64> = threads
            .iter()
            .filter(|(name, _)| name == "baton-otlp")
            .map(|(_, nice)| *nice)
            .collect();
        assert_eq!(exporters, [10], "{}: {threads:?}", process.name());
        assert!(
            threads
                .iter()
                .any(|(name, nice)| name != "baton-otlp" && *nice == 0),
            "{}: {threads:?}",
            process.name()
        );
    }

    for process in [&mut worker, &mut controller] {
        process.signal(Signal::SIGTERM);
        let status = process.wait_exit(WAIT).await;
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            process.name(),
            process.log_tail()
        );
    }
}

/// `baton dev` runs both in one process; with a batch delay far longer than
/// the test, the spans arrive only because SIGTERM flushes them.
#[tokio::test]
async fn baton_dev_exports_the_run_trace_when_it_stops() {
    let (collector, mut sandbox) = traced_sandbox("traces-dev", "600000").await;
    let mut dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register(FIVE_TASKS).await;
    let run = api.trigger("traced").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());

    dev.signal(Signal::SIGTERM);
    let status = dev.wait_exit(WAIT).await;
    assert!(status.success(), "baton dev: {status}\n{}", dev.log_tail());
    let trace = wait_for_trace(
        &collector,
        &run.run_id,
        &FIVE_TASK_IDS,
        Duration::from_secs(5),
        "was not flushed on SIGTERM",
        || dev.log_tail(),
    )
    .await;
    assert_run_trace(
        &trace,
        &run.run_id,
        "traced",
        &FIVE_TASK_IDS,
        "baton-dev",
        "baton-dev",
        "dev-worker",
    );
    assert_load_after_its_upstream(&trace);
}

/// The controller is killed (no flush) while `slow` runs and started again
/// on the same store: the worker's span of `slow` got its parent from the
/// first process, its attempt span and the run span come from the second,
/// and they still form one tree.
#[tokio::test]
async fn a_restarted_controller_continues_the_same_trace() {
    let (collector, mut sandbox) = traced_sandbox("traces-restart", "100").await;
    let mut controller = sandbox.start_controller(&[]).await;
    let _worker = sandbox.start_worker("steady-worker", &[]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: restarted
tasks:
  - id: slow
    command: "sleep 1.5"
  - id: after
    command: "echo after"
    depends_on: [slow]
"#,
    )
    .await;
    let run = api.trigger("restarted").await;
    api.wait_until(&run.run_id, "slow running", WAIT, |view| {
        view.task_state("slow") == TaskState::Running
    })
    .await;
    controller.signal(Signal::SIGKILL);
    controller.wait_exit(WAIT).await;
    let _controller = sandbox.start_controller(&[]).await;
    let mut api = sandbox.api().await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(api.attempts(&run.run_id, "slow").await.len(), 1);

    let tasks = ["slow", "after"];
    let trace = wait_for_trace(
        &collector,
        &run.run_id,
        &tasks,
        WAIT,
        "did not arrive",
        || sandbox.logs_tail(),
    )
    .await;
    assert_run_trace(
        &trace,
        &run.run_id,
        "restarted",
        &tasks,
        "baton-controller",
        "baton-worker",
        "steady-worker",
    );
}

/// Sampling keeps or drops whole runs. The controller samples half of the
/// runs by trace id (`traceidratio` 0.5); the worker, whose own sampler
/// keeps everything, follows the decision each `Assign` carries. So every
/// run has either all its spans (run, attempt, execution) or none, and
/// both kinds occur.
#[tokio::test]
async fn a_run_is_traced_whole_or_not_at_all_as_the_controller_samples_it() {
    const RUNS: usize = 16;
    let (collector, mut sandbox) = traced_sandbox("traces-sampling", "100").await;
    sandbox.set_env("OTEL_TRACES_SAMPLER", "traceidratio");
    sandbox.set_env("OTEL_TRACES_SAMPLER_ARG", "0.5");
    let mut controller = sandbox.start_controller(&[]).await;
    sandbox.set_env("OTEL_TRACES_SAMPLER", "always_on");
    let mut worker = sandbox.start_worker("sampling-worker", &[]).await;
    let mut api = sandbox.api().await;
    api.register("id: sampled\ntasks:\n  - id: only\n    kind: noop\n")
        .await;
    let mut run_ids = Vec::new();
    for _ in 0..RUNS {
        run_ids.push(api.trigger("sampled").await.run_id);
    }
    for run_id in &run_ids {
        let view = api.wait_for_run(run_id, WAIT).await;
        assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    }
    // A graceful stop exports every span still queued.
    for process in [&mut worker, &mut controller] {
        process.signal(Signal::SIGTERM);
        let status = process.wait_exit(WAIT).await;
        assert!(status.success(), "{} exited with {status}", process.name());
    }

    let spans = collector.spans();
    let mut traced = 0;
    for run_id in &run_ids {
        let trace_id = trace_id_of(run_id);
        let mut names: Vec<&str> = spans
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .map(|span| span.name.as_str())
            .collect();
        names.sort_unstable();
        match names.as_slice() {
            [] => {}
            ["attempt", "execute", "run"] => traced += 1,
            partial => panic!(
                "run {run_id} is traced in part: {partial:?}\n{}",
                describe(&spans)
            ),
        }
    }
    // Each run is kept with probability 1/2: all 16 alike is a 1 in 32,768
    // chance.
    assert!(
        0 < traced && traced < RUNS,
        "{traced} of {RUNS} runs traced: the sampler should keep about half\n{}",
        describe(&spans)
    );
}

/// A malformed exporter variable stops the server at start, naming the
/// variable, instead of exporting nothing or with defaults.
#[tokio::test]
async fn a_malformed_otlp_variable_is_refused_at_start() {
    let sandbox = Sandbox::new("traces-bad-variable");
    for (name, value, reason) in [
        (
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "soon",
            "is not a whole number of milliseconds",
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://127.0.0.1:4317",
            "TLS is not built into",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "no-equals-sign",
            "is not key=value",
        ),
    ] {
        let mut env = vec![(name.to_string(), value.to_string())];
        if name != "OTEL_EXPORTER_OTLP_ENDPOINT" {
            env.push((
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
                "http://127.0.0.1:4317".to_string(),
            ));
        }
        let args: Vec<String> = [
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &sandbox.path().join(name).to_string_lossy(),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let mut process = BatonProcess::spawn_with_env(name, sandbox.path(), &args, &env);
        let status = process.wait_exit(WAIT).await;
        assert!(!status.success(), "{}", process.log_contents());
        let log = process.log_contents();
        assert!(
            log.contains("cannot export traces")
                && log.contains(&format!("{name}: `{value}`"))
                && log.contains(reason),
            "{log}"
        );
    }
}

/// Spans do not wait for the schedule delay once half the queue is used:
/// with a delay of ten minutes, a queue of 64 and requests of 8, a run of
/// 40 noops (two spans each, from two scopes) is exported while the
/// process still runs.
#[tokio::test]
async fn half_a_queue_is_exported_before_the_schedule_delay() {
    let (collector, mut sandbox) = traced_sandbox("traces-early", "600000").await;
    sandbox.set_env("OTEL_BSP_MAX_QUEUE_SIZE", "64");
    sandbox.set_env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8");
    let mut dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    let tasks: String = (0..40)
        .map(|index| format!("  - id: n{index}\n    kind: noop\n"))
        .collect();
    api.register(&format!("id: burst\ntasks:\n{tasks}")).await;
    let run = api.trigger("burst").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let spans = collector
        .wait_for_spans(WAIT, |spans| spans.len() >= 32)
        .await;
    assert!(
        spans.is_some(),
        "{} spans arrived before the schedule delay\n{}",
        collector.spans().len(),
        dev.log_tail()
    );
    dev.signal(Signal::SIGTERM);
    let status = dev.wait_exit(WAIT).await;
    assert!(status.success(), "baton dev: {status}\n{}", dev.log_tail());
}
