//! `fanout`, `command` and `cluster-command`: throughput of one wide run.
//!
//! One `baton dev --slots N` process (`cluster-command`: a cluster on etcd,
//! see [`Target`]); the DAG is `start` → `width` tasks → `end`: noops for
//! `fanout`, `command: ["true"]` for `command` (a process spawned, its
//! output spooled and its result sent for each). Runs are triggered one at
//! a time. Per run: tasks/s =
//! (width + 2) / (`run.ended_at` − `run.started_at`) from the run record
//! (`GetRun`), and the wall time from the `TriggerRun` call to the poll
//! (`GetRun` without tasks, every [`POLL`]) that first saw the run final.
//! Before the next run, the process is left to go idle (its CPU time stops
//! growing); how long that took after the run's success was seen is
//! reported too.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::procs::memory;
use crate::report::{Figure, Goal, Report, number};
use crate::runs::{fanout_spec_of, micros, register, run_seconds, trigger, wait_success};
use crate::target::Target;

pub const SCENARIO: &str = "fanout";
pub const COMMAND_SCENARIO: &str = "command";
pub const CLUSTER_COMMAND_SCENARIO: &str = "cluster-command";
/// Command tasks of `command`.
pub const COMMAND_WIDTH: usize = 2_000;
const POLL: Duration = Duration::from_millis(5);
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Issue 8: fan-out of 10,000 on the embedded store.
pub const TARGET_TASKS_PER_S: f64 = 20_000.0;
/// Issue 8's targets for `command`: on the embedded store, and on etcd
/// with 3 controllers.
pub const COMMAND_TARGET_TASKS_PER_S: f64 = 1_000.0;
pub const CLUSTER_COMMAND_TARGET_TASKS_PER_S: f64 = 800.0;

/// What a fan-out scenario runs in the middle.
pub struct Shape {
    pub scenario: &'static str,
    dag_id: &'static str,
    /// The middle tasks, for the heading.
    what: &'static str,
    body: Value,
    target: f64,
}

/// `fanout`: noops.
pub fn noops() -> Shape {
    Shape {
        scenario: SCENARIO,
        dag_id: "bench-fanout",
        what: "noop",
        body: json!({"kind": "noop"}),
        target: TARGET_TASKS_PER_S,
    }
}

/// `command`: `true`, spawned as a process per task.
pub fn commands() -> Shape {
    Shape {
        scenario: COMMAND_SCENARIO,
        dag_id: "bench-command",
        what: "`true` command",
        body: json!({"command": ["true"]}),
        target: COMMAND_TARGET_TASKS_PER_S,
    }
}

/// `cluster-command`: `command` on a cluster.
pub fn cluster_commands() -> Shape {
    Shape {
        scenario: CLUSTER_COMMAND_SCENARIO,
        target: CLUSTER_COMMAND_TARGET_TASKS_PER_S,
        ..commands()
    }
}

pub async fn run(
    target: &mut Target,
    repeat: usize,
    slots: u32,
    width: usize,
    shape: Shape,
    report: &mut Report,
) -> anyhow::Result<()> {
    let scenario = shape.scenario;
    let tasks = width + 2;
    println!(
        "== {scenario}: start → {} {} → end ({} tasks), {}, {repeat} runs ==",
        number(width as f64),
        shape.what,
        number(tasks as f64),
        target.describe(slots)
    );
    let mut client = target.client.clone();
    let spec = fanout_spec_of(shape.dag_id, width, &shape.body);
    let registered = Instant::now();
    register(&mut client, spec).await?;
    println!(
        "  registered in {} ms",
        number(registered.elapsed().as_secs_f64() * 1e3)
    );
    let mut rates = Vec::new();
    let mut walls = Vec::new();
    let mut queued = Vec::new();
    let mut busy = Vec::new();
    for round in 0..repeat {
        let triggered = Instant::now();
        let run_id = trigger(&mut client, shape.dag_id).await?;
        let finished = wait_success(&mut client, target, &run_id, POLL, RUN_TIMEOUT, || {}).await?;
        let wall = finished.observed.duration_since(triggered).as_secs_f64();
        // The next run starts on an idle process, so runs do not overlap
        // with work left over from the previous one.
        let settled = target.settle().await?;
        let seconds = run_seconds(&finished.run)?;
        let rate = tasks as f64 / seconds;
        let start_delay = (micros(finished.run.started_at.as_ref(), "run.started_at")?
            - micros(finished.run.created_at.as_ref(), "run.created_at")?)
            as f64
            / 1e3;
        println!(
            "  run #{}: {} tasks/s (ended_at − started_at {} s), wall {} s, created → started {} ms; busy {} s ({} CPU-s) after success was seen",
            round + 1,
            number(rate),
            number(seconds),
            number(wall),
            number(start_delay),
            number(settled.busy.as_secs_f64()),
            number(settled.cpu.as_secs_f64())
        );
        busy.push(settled.busy.as_secs_f64());
        rates.push(rate);
        walls.push(wall);
        queued.push(start_delay);
    }
    if let Some(pid) = target.dev_pid() {
        let peak = memory(pid)?.hwm as f64 / 1024.0 / 1024.0;
        println!("  baton dev peak RSS {} MiB", number(peak));
        report.notes.push(format!(
            "{scenario}: baton dev --slots {slots}; peak RSS of the dev process over all runs {} MiB",
            number(peak)
        ));
    }
    report.figures.push(
        Figure::new(
            scenario,
            "tasks_per_s",
            format!("{} tasks / (ended_at − started_at)", number(tasks as f64)),
            "tasks/s",
            rates,
        )
        .goal(Goal::AtLeast(shape.target)),
    );
    report.figures.push(Figure::new(
        scenario,
        "wall_s",
        "wall: trigger → completion seen",
        "s",
        walls,
    ));
    report.figures.push(Figure::new(
        scenario,
        "start_delay_ms",
        "run created_at → started_at",
        "ms",
        queued,
    ));
    report.figures.push(Figure::new(
        scenario,
        "busy_after_run_s",
        "busy after success was seen (dev process, or the leader above its idle floor)",
        "s",
        busy,
    ));
    target.compare_median(report, scenario, "tasks_per_s", "tasks");
    Ok(())
}
