//! The worker fleet: routing by labels and resources, pools and
//! concurrency limits (checked from the recorded start and end of every
//! task under load), scaling up by adding workers, and scaling down by
//! draining one. Real `baton controller` and `baton worker` processes.

use std::collections::HashMap;
use std::time::Duration;

use baton_common::time::now_micros;
use baton_tests::pb::{AttemptOutcome, GetClusterStatusRequest, RunState, TaskState};
use baton_tests::{RunView, Sandbox, micros};

const WAIT: Duration = Duration::from_secs(60);

/// One task's recorded run: where and when.
struct Interval {
    worker: String,
    start: i64,
    end: i64,
    weight: u64,
}

/// The largest sum of `weight` over intervals running at the same instant,
/// among those `include` selects. Intervals are half-open: one that ends
/// when another starts does not overlap it.
fn peak(intervals: &[Interval], include: impl Fn(&Interval) -> bool) -> u64 {
    let mut events: Vec<(i64, i64)> = Vec::new();
    for interval in intervals.iter().filter(|interval| include(interval)) {
        let weight = interval.weight as i64;
        events.push((interval.start, weight));
        events.push((interval.end, -weight));
    }
    // Ends before starts at the same instant.
    events.sort_by_key(|&(at, delta)| (at, delta));
    let (mut current, mut peak) = (0i64, 0i64);
    for (_, delta) in events {
        current += delta;
        peak = peak.max(current);
    }
    peak as u64
}

/// The intervals of a finished run's tasks, weighted by `weight(task_id)`.
fn intervals(view: &RunView, weight: impl Fn(&str) -> u64) -> Vec<Interval> {
    view.tasks
        .iter()
        .map(|task| {
            let (start, end) = (
                micros(task.started_at.as_ref()),
                micros(task.ended_at.as_ref()),
            );
            assert!(start > 0 && end >= start, "{}", view.describe());
            Interval {
                worker: task.worker_id.clone(),
                start,
                end,
                weight: weight(&task.task_id),
            }
        })
        .collect()
}

fn many(prefix: &str, count: usize, body: &str) -> String {
    (0..count)
        .map(|index| format!("  - id: {prefix}{index:03}\n{body}"))
        .collect()
}

#[tokio::test]
async fn labels_and_resources_route_tasks_and_never_overcommit_a_worker() {
    let mut sandbox = Sandbox::new("fleet-resources");
    let _controller = sandbox.start_controller(&[]).await;
    let _small = sandbox
        .start_worker(
            "small",
            &[
                "--slots", "8", "--cpu", "1", "--memory", "1Gi", "--label", "disk=hdd",
            ],
        )
        .await;
    let _big = sandbox
        .start_worker(
            "big",
            &[
                "--slots", "8", "--cpu", "4", "--memory", "4Gi", "--label", "disk=ssd",
            ],
        )
        .await;
    let mut api = sandbox.api().await;
    let spec = format!(
        "id: sized\ntasks:\n{}{}",
        // Only `big` has the label; at most 2 of these fit its 4 cores.
        many(
            "ssd",
            8,
            "    command: \"sleep 0.3\"\n    labels: {disk: ssd}\n    resources: {cpu: 2}\n"
        ),
        // 768 MiB: one at a time on `small`, five on `big`.
        many(
            "mem",
            10,
            "    command: \"sleep 0.3\"\n    resources: {memory: 768Mi}\n"
        ),
    );
    api.register(&spec).await;
    let run = api.trigger("sized").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    for task in view
        .tasks
        .iter()
        .filter(|task| task.task_id.starts_with("ssd"))
    {
        assert_eq!(task.worker_id, "big", "{}", view.describe());
    }
    let cpu = intervals(&view, |id| if id.starts_with("ssd") { 2000 } else { 0 });
    assert!(
        peak(&cpu, |i| i.worker == "big") <= 4000,
        "over 4 cores on big:\n{}",
        view.describe()
    );
    let memory = intervals(&view, |id| if id.starts_with("mem") { 768 } else { 0 });
    assert!(
        peak(&memory, |i| i.worker == "small") <= 1024,
        "{}",
        view.describe()
    );
    assert!(
        peak(&memory, |i| i.worker == "big") <= 4096,
        "{}",
        view.describe()
    );
    // The limits were reached, so the check above had something to check.
    assert_eq!(
        peak(&cpu, |i| i.worker == "big"),
        4000,
        "{}",
        view.describe()
    );

    // A task no worker can take (more CPU than any offers) waits in `ready`
    // and shows in the queue's depth; nothing else is held up.
    api.register(
        "id: too-big\ntasks:\n  - id: huge\n    command: \"true\"\n    resources: {cpu: 64}\n  - id: small\n    command: \"true\"\n",
    )
    .await;
    let run = api.trigger("too-big").await;
    let view = api
        .wait_until(&run.run_id, "the small task done", WAIT, |view| {
            view.task_state("small") == TaskState::Success
        })
        .await;
    assert_eq!(
        view.task_state("huge"),
        TaskState::Ready,
        "{}",
        view.describe()
    );
    let status = api
        .client
        .cluster
        .get_cluster_status(GetClusterStatusRequest {})
        .await
        .expect("cluster status")
        .into_inner();
    let queue = status
        .queues
        .iter()
        .find(|queue| queue.queue == "default")
        .expect("the default queue");
    assert_eq!(queue.ready, 1, "{status:?}");
    assert!(queue.oldest_ready_age.is_some(), "{status:?}");
    let big = status
        .workers
        .iter()
        .find(|worker| worker.worker_id == "big")
        .expect("big");
    assert_eq!(big.resources.map(|r| r.cpu_millis), Some(4000));
    assert_eq!(big.resources.map(|r| r.memory_bytes), Some(4 << 30));
}

#[tokio::test]
async fn a_pool_never_runs_more_than_its_slots() {
    let mut sandbox = Sandbox::new("fleet-pool");
    let _controller = sandbox.start_controller(&[]).await;
    let _a = sandbox.start_worker("a", &["--slots", "4"]).await;
    let _b = sandbox.start_worker("b", &["--slots", "4"]).await;
    let mut api = sandbox.api().await;

    let spec = format!(
        "id: pooled\ntasks:\n{}  - id: wide\n    command: \"sleep 0.2\"\n    pool: db\n    pool_slots: 2\n  - id: free\n    command: \"sleep 0.2\"\n",
        many("p", 16, "    command: \"sleep 0.2\"\n    pool: db\n"),
    );
    // A DAG naming a pool that does not exist is refused, naming the field.
    let error = api.try_register(&spec).await.expect_err("unknown pool");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().contains("tasks[0].pool") && error.message().contains("`db`"),
        "{}",
        error.message()
    );
    sandbox
        .cli(&[
            "pool",
            "create",
            "db",
            "--slots",
            "2",
            "--description",
            "the database",
        ])
        .await
        .assert_success();
    let duplicate = sandbox.cli(&["pool", "create", "db", "--slots", "3"]).await;
    duplicate.assert_failure();
    assert!(
        duplicate.stderr.contains("already exists"),
        "{}",
        duplicate.stderr
    );
    let bad = sandbox
        .cli(&["pool", "create", "bad name", "--slots", "3"])
        .await;
    bad.assert_failure();
    assert!(bad.stderr.contains("name"), "{}", bad.stderr);

    api.register(&spec).await;
    let run = api.trigger("pooled").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let slots = intervals(&view, |id| match id {
        "wide" => 2,
        "free" => 0,
        _ => 1,
    });
    assert_eq!(
        peak(&slots, |_| true),
        2,
        "the pool's 2 slots were exceeded or never filled:\n{}",
        view.describe()
    );
    // Resized up, the pool takes more at once.
    sandbox
        .cli(&["pool", "set", "db", "--slots", "4"])
        .await
        .assert_success();
    let run = api.trigger("pooled").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let slots = intervals(&view, |id| match id {
        "wide" => 2,
        "free" => 0,
        _ => 1,
    });
    let resized = peak(&slots, |_| true);
    assert!(
        (3..=4).contains(&resized),
        "peak {resized}\n{}",
        view.describe()
    );

    let listed = sandbox.cli(&["-o", "json", "pool", "list"]).await;
    listed.assert_success();
    let pools: serde_json::Value = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(pools[0]["name"], "db");
    assert_eq!(pools[0]["slots"], 4);
    assert_eq!(pools[0]["used_slots"], 0);
    sandbox
        .cli(&["pool", "delete", "db"])
        .await
        .assert_success();
}

#[tokio::test]
async fn max_active_tasks_and_max_active_hold_across_runs() {
    let mut sandbox = Sandbox::new("fleet-concurrency");
    let _controller = sandbox.start_controller(&[]).await;
    let _worker = sandbox.start_worker("w", &["--slots", "16"]).await;
    let mut api = sandbox.api().await;
    api.register(&format!(
        "id: capped\nmax_active_tasks: 3\ntasks:\n{}",
        many("t", 8, "    command: \"sleep 0.2\"\n")
    ))
    .await;
    api.register(&format!(
        "id: single\ntasks:\n  - id: one\n    command: \"sleep 0.2\"\n    max_active: 1\n{}",
        many("o", 4, "    command: \"sleep 0.2\"\n")
    ))
    .await;
    let runs = [
        api.trigger("capped").await,
        api.trigger("capped").await,
        api.trigger("single").await,
        api.trigger("single").await,
        api.trigger("single").await,
    ];
    let mut views = Vec::new();
    for run in &runs {
        let view = api.wait_for_run(&run.run_id, WAIT).await;
        assert_eq!(view.state(), RunState::Success, "{}", view.describe());
        views.push(view);
    }
    let capped: Vec<Interval> = views[..2]
        .iter()
        .flat_map(|view| intervals(view, |_| 1))
        .collect();
    assert_eq!(
        peak(&capped, |_| true),
        3,
        "max_active_tasks 3 across 2 runs"
    );
    let single: Vec<Interval> = views[2..]
        .iter()
        .flat_map(|view| intervals(view, |id| u64::from(id == "one")))
        .collect();
    assert_eq!(peak(&single, |_| true), 1, "max_active 1 across 3 runs");
}

#[tokio::test]
async fn workers_joining_mid_run_raise_the_completion_rate_within_a_second() {
    let mut sandbox = Sandbox::new("fleet-scale-up");
    let _controller = sandbox.start_controller(&[]).await;
    let _first = sandbox.start_worker("w0", &["--slots", "2"]).await;
    let mut api = sandbox.api().await;
    api.register(&format!(
        "id: wide\ntasks:\n{}",
        many("t", 400, "    command: \"sleep 0.2\"\n")
    ))
    .await;
    let run = api.trigger("wide").await;
    // ~2 s at 2 slots × 5 tasks/s.
    api.wait_until(&run.run_id, "20 tasks done", WAIT, |view| {
        baton_tests::task_count(&view.run, "success") >= 20
    })
    .await;
    let joining = now_micros();
    let mut joined_workers = Vec::new();
    for id in ["w1", "w2", "w3"] {
        joined_workers.push(sandbox.start_worker(id, &["--slots", "2"]).await);
    }
    let joined = now_micros();
    let view = api
        .wait_for_run(&run.run_id, Duration::from_secs(120))
        .await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let starts: Vec<i64> = view
        .tasks
        .iter()
        .map(|task| micros(task.started_at.as_ref()))
        .collect();
    let per_second = |from: i64, to: i64| {
        let count = starts.iter().filter(|&&at| at >= from && at < to).count();
        count as f64 / ((to - from) as f64 / 1e6)
    };
    let before = per_second(joining - 2_000_000, joining);
    let after = per_second(joined, joined + 1_000_000);
    eprintln!("starts/s: {before:.1} before the join, {after:.1} in the second after it");
    assert!(
        after >= 2.5 * before,
        "starts/s before the join {before:.1}, in the second after it {after:.1} (joined over {} ms)",
        (joined - joining) / 1000
    );
    let used: std::collections::HashSet<&str> = view
        .tasks
        .iter()
        .map(|task| task.worker_id.as_str())
        .collect();
    assert_eq!(used.len(), 4, "every worker took tasks");
}

#[tokio::test]
async fn draining_a_worker_lets_its_tasks_finish_and_loses_nothing() {
    let mut sandbox = Sandbox::new("fleet-drain");
    let _controller = sandbox.start_controller(&[]).await;
    let mut leaving = sandbox.start_worker("leaving", &["--slots", "2"]).await;
    let _staying = sandbox.start_worker("staying", &["--slots", "2"]).await;
    let mut api = sandbox.api().await;
    api.register(&format!(
        "id: steady\ntasks:\n{}",
        many("t", 16, "    command: \"sleep 1\"\n")
    ))
    .await;
    let run = api.trigger("steady").await;
    let view = api
        .wait_until(&run.run_id, "2 tasks running on `leaving`", WAIT, |view| {
            view.tasks
                .iter()
                .filter(|task| {
                    task.worker_id == "leaving"
                        && baton_tests::task_state(task) == TaskState::Running
                })
                .count()
                == 2
        })
        .await;
    let draining: Vec<String> = view
        .tasks
        .iter()
        .filter(|task| {
            task.worker_id == "leaving" && baton_tests::task_state(task) == TaskState::Running
        })
        .map(|task| task.task_id.clone())
        .collect();
    let drain = sandbox.cli(&["worker", "drain", "leaving"]).await;
    drain.assert_success();
    assert!(
        drain.stdout.contains("draining (2 tasks running)"),
        "{}",
        drain.stdout
    );
    let status = leaving.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "the drained worker exits 0: {status:?}");

    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    for task in &view.tasks {
        assert_eq!(
            task.attempt,
            1,
            "no task needed another attempt\n{}",
            view.describe()
        );
    }
    for task_id in &draining {
        assert_eq!(
            view.task(task_id).worker_id,
            "leaving",
            "{}",
            view.describe()
        );
    }
    let after_drain = view
        .tasks
        .iter()
        .filter(|task| task.worker_id == "leaving")
        .count();
    assert!(after_drain < 16, "the other worker took the rest");
    api.check_each_task_succeeded_once(&view).await;
}

#[tokio::test]
async fn a_task_still_running_when_the_drain_grace_ends_is_requeued_without_using_a_retry() {
    let mut sandbox = Sandbox::new("fleet-drain-grace");
    let _controller = sandbox.start_controller(&[]).await;
    let mut leaving = sandbox.start_worker("leaving", &["--slots", "1"]).await;
    let mut api = sandbox.api().await;
    api.register("id: long\ntasks:\n  - id: slow\n    command: \"sleep 3\"\n    retries: 0\n")
        .await;
    let run = api.trigger("long").await;
    api.wait_until(&run.run_id, "slow running", WAIT, |view| {
        view.task_state("slow") == TaskState::Running
    })
    .await;
    let _staying = sandbox.start_worker("staying", &["--slots", "1"]).await;
    sandbox
        .cli(&["worker", "drain", "leaving", "--grace", "500ms"])
        .await
        .assert_success();
    let status = leaving.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");

    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(view.task("slow").worker_id, "staying");
    let attempts = api.attempts(&run.run_id, "slow").await;
    let outcomes: Vec<(String, i32)> = attempts
        .iter()
        .map(|attempt| (attempt.worker_id.clone(), attempt.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("leaving".to_string(), AttemptOutcome::WorkerDrained as i32),
            ("staying".to_string(), AttemptOutcome::Succeeded as i32),
        ]
    );
    let by_worker: HashMap<&str, &str> = attempts
        .iter()
        .map(|attempt| (attempt.worker_id.as_str(), attempt.error.as_str()))
        .collect();
    assert!(by_worker["leaving"].contains("drained"), "{by_worker:?}");

    // An unknown worker cannot be drained; the error names it.
    let missing = sandbox.cli(&["worker", "drain", "nobody"]).await;
    missing.assert_failure();
    assert!(missing.stderr.contains("nobody"), "{}", missing.stderr);
}

#[tokio::test]
async fn a_restarted_controller_counts_running_attempts_against_their_pool() {
    let mut sandbox = Sandbox::new("fleet-pool-restart");
    let mut controller = sandbox.start_controller(&[]).await;
    // Two workers with room for everything: only the pool limits.
    let _a = sandbox.start_worker("a", &["--slots", "4"]).await;
    let _b = sandbox.start_worker("b", &["--slots", "4"]).await;
    sandbox
        .cli(&["pool", "create", "one", "--slots", "1"])
        .await
        .assert_success();
    let mut api = sandbox.api().await;
    api.register(&format!(
        "id: serial\ntasks:\n{}",
        many("s", 5, "    command: \"sleep 1\"\n    pool: one\n")
    ))
    .await;
    let run = api.trigger("serial").await;
    api.wait_until(&run.run_id, "a task of the pool running", WAIT, |view| {
        view.tasks
            .iter()
            .any(|task| baton_tests::task_state(task) == TaskState::Running)
    })
    .await;
    controller.signal(nix::sys::signal::Signal::SIGKILL);
    controller.wait_exit(WAIT).await;
    drop(controller);
    // The restarted controller must count the attempt still running on a
    // worker (re-announced, or not yet) before it leases anything.
    let _controller = sandbox.start_controller(&[]).await;
    let mut api = sandbox.api().await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let slots = intervals(&view, |_| 1);
    assert_eq!(
        peak(&slots, |_| true),
        1,
        "the pool of 1 ran two tasks at once across the restart:\n{}",
        view.describe()
    );
    let pools = sandbox.cli(&["-o", "json", "pool", "show", "one"]).await;
    pools.assert_success();
    let pool: serde_json::Value = serde_json::from_str(&pools.stdout).expect("json");
    assert_eq!(pool["used_slots"], 0, "{pool}");
}
