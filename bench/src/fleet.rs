//! `fleet`: one controller with 1,000 connected workers, simulated by the
//! benchmark itself ([`crate::sim_worker`]).
//!
//! Per repeat, two fresh `baton controller`s on the embedded store, both at
//! `--heartbeat-interval 5s --worker-lost-timeout 15s`:
//!
//! - **Controller A**, the fleet: the two DAGs are registered, the process
//!   is left to go idle, then its CPU over [`BASELINE_WINDOW`] and its RSS
//!   are read with **no worker**. Then `workers` simulated workers (1 slot
//!   each) connect; once all are registered and [`WARMUP`] more has passed,
//!   the controller's CPU (and the benchmark's own) over [`IDLE_WINDOW`] is
//!   read (**idle CPU**, % of one core), and its RSS again: (RSS − RSS with
//!   no worker) / workers = **bytes per worker**. Then the fan-out
//!   (`start` → 10,000 noop → `end`): tasks/s from the run record, as in
//!   `fanout`. Then **scale-up**: every worker now holds each noop for
//!   [`HOLD`]; a DAG of `workers + joins + 100` independent noops is
//!   triggered and, once every slot is busy (the rest stays queued),
//!   `joins` new workers (1 slot each) join one after the other, each on a
//!   connection of its own: time from just before its TCP connect to its
//!   first `Assign` (also: `Register` queued → `Assign`, and `Register`
//!   queued → `Registered`); p50 and p99 per repeat.
//! - **Controller B**: the same fan-out with 4 simulated workers holding
//!   the same slots in total (`workers / 4` each, rounded up).
//!
//! Odd repeats start with controller B, so that a drift of the machine's
//! load does not always favour the same side.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_common::client::BatonClient;
use serde_json::json;

use crate::procs::{Proc, connect_baton, cpu_time, free_port, memory, settle};
use crate::reference::compare;
use crate::report::{Figure, Goal, Report, number};
use crate::runs::{fanout_spec, register, run_seconds, trigger, wait_success};
use crate::sim_worker::{Counters, Fleet};
use crate::stats::percentile;

pub const SCENARIO: &str = "fleet";
pub const DEFAULT_WORKERS: u32 = 1_000;
pub const DEFAULT_JOINS: usize = 100;
const FANOUT_DAG: &str = "bench-fleet-fanout";
const QUEUE_DAG: &str = "bench-fleet-queued";
/// The heartbeat interval the issue asks about, and a lost timeout of three
/// intervals (the default ratio is 5; 2× is the least the controller
/// accepts).
const HEARTBEAT_INTERVAL: &str = "5s";
const HEARTBEAT: Duration = Duration::from_secs(5);
const WORKER_LOST_TIMEOUT: &str = "15s";
/// The controller's CPU with no worker is read over this long.
const BASELINE_WINDOW: Duration = Duration::from_secs(10);
/// After the last worker registered: one heartbeat interval and a bit, so
/// that every worker is past its first heartbeat and the connect burst is
/// over.
const WARMUP: Duration = Duration::from_secs(6);
/// The controller's CPU with the fleet connected and idle is read over
/// this long.
const IDLE_WINDOW: Duration = Duration::from_secs(20);
/// How long fleet workers hold each noop during scale-up: longer than the
/// joins take, so no slot frees up meanwhile.
const HOLD: Duration = Duration::from_secs(600);
/// Bounds on the waits.
const REGISTER_LIMIT: Duration = Duration::from_secs(120);
const BUSY_LIMIT: Duration = Duration::from_secs(120);
const JOIN_LIMIT: Duration = Duration::from_secs(10);
/// Pause between two joins.
const JOIN_GAP: Duration = Duration::from_millis(20);
const POLL: Duration = Duration::from_millis(5);
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Extra queued tasks beyond the slots of the fleet and the joiners.
const QUEUE_MARGIN: usize = 100;
pub const TARGET_IDLE_CPU_PERCENT: f64 = 5.0;
pub const TARGET_JOIN_P50_MS: f64 = 50.0;
/// tasks/s with the fleet ÷ tasks/s with 4 workers.
pub const TARGET_RATIO: f64 = 1.0;

/// The shape of the scenario.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub workers: u32,
    pub joins: usize,
    /// HTTP/2 connections the fleet's streams share; 0: one per worker.
    pub channels: usize,
    pub fanout_width: usize,
}

/// `width` noops without dependencies, as JSON.
fn flat_spec(dag_id: &str, width: usize) -> String {
    let tasks: Vec<serde_json::Value> = (0..width)
        .map(|index| json!({"id": format!("q{index:06}"), "kind": "noop"}))
        .collect();
    json!({"id": dag_id, "description": "baton-bench queued noops", "tasks": tasks}).to_string()
}

/// CPU time of a process in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    Ok(cpu_time(pid)?.as_secs_f64())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

/// Raises this process's soft limit of open files (inherited by the
/// controllers it starts) so that both ends of `connections` fit.
fn raise_open_files(connections: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = connections + 1024;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("cannot read RLIMIT_NOFILE")?;
    if soft >= wanted {
        return Ok(());
    }
    if hard < wanted {
        bail!("the open-file limit ({hard}) is too low for {connections} connections");
    }
    setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).context("cannot raise RLIMIT_NOFILE")
}

/// A fresh `baton controller` on the embedded store, at 5 s heartbeats.
async fn start_controller(
    binary: &Path,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(Proc, BatonClient, String)> {
    std::fs::create_dir_all(dir)?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let args: Vec<String> = vec![
        "controller".into(),
        "--listen".into(),
        addr.clone(),
        "--data-dir".into(),
        dir.join("data").to_string_lossy().into_owned(),
        "--heartbeat-interval".into(),
        HEARTBEAT_INTERVAL.into(),
        "--worker-lost-timeout".into(),
        WORKER_LOST_TIMEOUT.into(),
    ];
    let mut controller = Proc::spawn(name, binary, &args, &[], &dir.join(format!("{name}.log")))?;
    let client = connect_baton(&mut controller, &addr).await?;
    Ok((controller, client, format!("http://{addr}")))
}

/// One fan-out run: tasks/s, controller CPU-s and bench CPU-s during it.
struct FanoutRun {
    rate: f64,
    controller_cpu: f64,
    bench_cpu: f64,
}

async fn fanout_run(
    client: &mut BatonClient,
    controller: &mut Proc,
    fleet: &Fleet,
    tasks: usize,
) -> anyhow::Result<FanoutRun> {
    let bench = std::process::id();
    let controller_before = cpu_seconds(controller.pid())?;
    let bench_before = cpu_seconds(bench)?;
    let run_id = trigger(client, FANOUT_DAG).await?;
    let finished = wait_success(client, controller, &run_id, POLL, RUN_TIMEOUT, || {}).await?;
    let controller_cpu = cpu_seconds(controller.pid())? - controller_before;
    let bench_cpu = cpu_seconds(bench)? - bench_before;
    fleet.check()?;
    Ok(FanoutRun {
        rate: tasks as f64 / run_seconds(&finished.run)?,
        controller_cpu,
        bench_cpu,
    })
}

/// What controller A gave in one repeat.
struct FleetRound {
    connect_s: f64,
    baseline_cpu_percent: f64,
    idle_cpu_percent: f64,
    bench_idle_cpu_percent: f64,
    cpu_per_heartbeat_us: f64,
    heartbeats_per_s: f64,
    rss_empty: u64,
    rss_fleet: u64,
    fanout: FanoutRun,
    join_total_ms: Vec<f64>,
    join_register_ms: Vec<f64>,
    join_registered_ms: Vec<f64>,
}

async fn fleet_round(
    binary: &Path,
    dir: &Path,
    shape: Shape,
    tasks: usize,
    round: usize,
) -> anyhow::Result<FleetRound> {
    let (mut controller, mut client, addr) = start_controller(binary, dir, "controller-a").await?;
    let pid = controller.pid();
    let bench = std::process::id();
    register(&mut client, fanout_spec(FANOUT_DAG, shape.fanout_width)).await?;
    let queued = shape.workers as usize + shape.joins + QUEUE_MARGIN;
    register(&mut client, flat_spec(QUEUE_DAG, queued)).await?;
    settle(pid).await?;
    let before = cpu_seconds(pid)?;
    tokio::time::sleep(BASELINE_WINDOW).await;
    let baseline_cpu_percent = (cpu_seconds(pid)? - before) / BASELINE_WINDOW.as_secs_f64() * 100.0;
    let rss_empty = memory(pid)?.rss;

    let mut fleet = Fleet::new(&addr);
    if shape.channels > 0 {
        fleet = fleet.with_shared_channels(shape.channels).await?;
    }
    let connecting = Instant::now();
    for index in 0..shape.workers {
        fleet.spawn(format!("fleet-{round}-{index:05}"), 1);
    }
    let workers = u64::from(shape.workers);
    fleet
        .wait_for("every worker registered", REGISTER_LIMIT, |counters| {
            Counters::get(&counters.registered) >= workers
        })
        .await?;
    let connect_s = connecting.elapsed().as_secs_f64();
    let interval = Counters::get(&fleet.counters().heartbeat_interval_us);
    if interval != HEARTBEAT.as_micros() as u64 {
        bail!("the controller gave a heartbeat interval of {interval} µs, not {HEARTBEAT:?}");
    }
    tokio::time::sleep(WARMUP).await;
    controller.check_running()?;
    fleet.check()?;
    let controller_before = cpu_seconds(pid)?;
    let bench_before = cpu_seconds(bench)?;
    let heartbeats_before = Counters::get(&fleet.counters().heartbeats);
    tokio::time::sleep(IDLE_WINDOW).await;
    let window = IDLE_WINDOW.as_secs_f64();
    let controller_cpu = cpu_seconds(pid)? - controller_before;
    let bench_cpu = cpu_seconds(bench)? - bench_before;
    let heartbeats = Counters::get(&fleet.counters().heartbeats) - heartbeats_before;
    let rss_fleet = memory(pid)?.rss;
    fleet.check()?;
    let baseline_cpu = baseline_cpu_percent / 100.0 * window;
    let cpu_per_heartbeat_us =
        (controller_cpu - baseline_cpu).max(0.0) / heartbeats.max(1) as f64 * 1e6;

    let fanout = fanout_run(&mut client, &mut controller, &fleet, tasks).await?;
    settle(pid).await?;

    // Scale-up: every slot busy, tasks queued, then new workers join.
    fleet.set_hold(HOLD);
    let assigned_before = Counters::get(&fleet.counters().assigns);
    trigger(&mut client, QUEUE_DAG).await?;
    fleet
        .wait_for("every fleet slot busy", BUSY_LIMIT, |counters| {
            Counters::get(&counters.held) >= workers
                && Counters::get(&counters.assigns) - assigned_before >= workers
        })
        .await?;
    let mut join_total_ms = Vec::with_capacity(shape.joins);
    let mut join_register_ms = Vec::with_capacity(shape.joins);
    let mut join_registered_ms = Vec::with_capacity(shape.joins);
    for join in 0..shape.joins {
        let timeline = fleet
            .join(format!("join-{round}-{join:04}"), 1, JOIN_LIMIT)
            .await?;
        let ms = |from: tokio::time::Instant, to: tokio::time::Instant| {
            to.duration_since(from).as_secs_f64() * 1e3
        };
        join_total_ms.push(ms(timeline.connecting, timeline.first_assign));
        join_register_ms.push(ms(timeline.stream_opened, timeline.first_assign));
        join_registered_ms.push(ms(timeline.stream_opened, timeline.registered));
        tokio::time::sleep(JOIN_GAP).await;
    }
    fleet.check()?;
    fleet.stop().await;
    controller.stop().await;
    Ok(FleetRound {
        connect_s,
        baseline_cpu_percent,
        idle_cpu_percent: controller_cpu / window * 100.0,
        bench_idle_cpu_percent: bench_cpu / window * 100.0,
        cpu_per_heartbeat_us,
        heartbeats_per_s: heartbeats as f64 / window,
        rss_empty,
        rss_fleet,
        fanout,
        join_total_ms,
        join_register_ms,
        join_registered_ms,
    })
}

/// Controller B: the fan-out with 4 workers holding the fleet's slots.
async fn few_round(
    binary: &Path,
    dir: &Path,
    shape: Shape,
    tasks: usize,
    round: usize,
) -> anyhow::Result<FanoutRun> {
    let (mut controller, mut client, addr) = start_controller(binary, dir, "controller-b").await?;
    register(&mut client, fanout_spec(FANOUT_DAG, shape.fanout_width)).await?;
    let mut fleet = Fleet::new(&addr);
    for index in 0..4 {
        fleet.spawn(format!("few-{round}-{index}"), shape.workers.div_ceil(4));
    }
    fleet
        .wait_for("every worker registered", REGISTER_LIMIT, |counters| {
            Counters::get(&counters.registered) >= 4
        })
        .await?;
    settle(controller.pid()).await?;
    let run = fanout_run(&mut client, &mut controller, &fleet, tasks).await?;
    fleet.stop().await;
    controller.stop().await;
    Ok(run)
}

pub async fn run(
    binary: &Path,
    work: &Path,
    repeat: usize,
    shape: Shape,
    report: &mut Report,
) -> anyhow::Result<()> {
    let tasks = shape.fanout_width + 2;
    let few_slots = shape.workers.div_ceil(4);
    let connections = match shape.channels {
        0 => "one connection per worker (2 s pings, as `baton worker`)".to_string(),
        count => format!("{count} shared connections"),
    };
    println!(
        "== fleet: {} simulated workers × 1 slot ({connections}) on one baton controller, heartbeats {HEARTBEAT_INTERVAL}; fan-out of {} tasks vs 4 workers × {few_slots} slots; {} joins with every slot busy; {repeat} runs ==",
        shape.workers,
        number(tasks as f64),
        shape.joins
    );
    raise_open_files(u64::from(shape.workers) + shape.joins as u64)?;
    let mut figures: Vec<(&'static str, String, &'static str, Vec<f64>)> = Vec::new();
    let mut connect = Vec::new();
    let mut baseline = Vec::new();
    let mut idle = Vec::new();
    let mut bench_idle = Vec::new();
    let mut per_heartbeat = Vec::new();
    let mut heartbeat_rates = Vec::new();
    let mut rss_empty = Vec::new();
    let mut rss_fleet = Vec::new();
    let mut per_worker = Vec::new();
    let mut fleet_rates = Vec::new();
    let mut few_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut fleet_cpu = Vec::new();
    let mut few_cpu = Vec::new();
    let mut fleet_bench_cpu = Vec::new();
    let mut few_bench_cpu = Vec::new();
    let mut join_p50 = Vec::new();
    let mut join_p99 = Vec::new();
    let mut join_register_p50 = Vec::new();
    let mut join_registered_p50 = Vec::new();
    for round in 0..repeat {
        let dir = work.join(format!("fleet-{round}"));
        let (fleet, few) = if round % 2 == 1 {
            let few = few_round(binary, &dir.join("b"), shape, tasks, round).await?;
            let fleet = fleet_round(binary, &dir.join("a"), shape, tasks, round).await?;
            (fleet, few)
        } else {
            let fleet = fleet_round(binary, &dir.join("a"), shape, tasks, round).await?;
            let few = few_round(binary, &dir.join("b"), shape, tasks, round).await?;
            (fleet, few)
        };
        let bytes_per_worker =
            (fleet.rss_fleet as f64 - fleet.rss_empty as f64) / f64::from(shape.workers);
        let ratio = fleet.fanout.rate / few.rate;
        let p50 = percentile(&fleet.join_total_ms, 50.0);
        let p99 = percentile(&fleet.join_total_ms, 99.0);
        println!(
            "  run #{}: {} workers registered in {} s; controller CPU idle {} % of a core (no worker: {} %; {} heartbeats/s, {} µs each), bench {} %; RSS {} → {} MiB = {} bytes/worker; fan-out {} tasks/s ({} CPU-s controller, {} bench) vs 4 workers {} tasks/s ({} CPU-s, {} bench) = {}×; join → first Assign p50 {} ms, p99 {} ms, max {} ms (Register → Assign p50 {} ms, Register → Registered p50 {} ms)",
            round + 1,
            shape.workers,
            number(fleet.connect_s),
            number(fleet.idle_cpu_percent),
            number(fleet.baseline_cpu_percent),
            number(fleet.heartbeats_per_s),
            number(fleet.cpu_per_heartbeat_us),
            number(fleet.bench_idle_cpu_percent),
            number(mib(fleet.rss_empty)),
            number(mib(fleet.rss_fleet)),
            number(bytes_per_worker),
            number(fleet.fanout.rate),
            number(fleet.fanout.controller_cpu),
            number(fleet.fanout.bench_cpu),
            number(few.rate),
            number(few.controller_cpu),
            number(few.bench_cpu),
            crate::report::ratio(ratio),
            number(p50),
            number(p99),
            number(crate::stats::max(&fleet.join_total_ms)),
            number(percentile(&fleet.join_register_ms, 50.0)),
            number(percentile(&fleet.join_registered_ms, 50.0)),
        );
        connect.push(fleet.connect_s);
        baseline.push(fleet.baseline_cpu_percent);
        idle.push(fleet.idle_cpu_percent);
        bench_idle.push(fleet.bench_idle_cpu_percent);
        per_heartbeat.push(fleet.cpu_per_heartbeat_us);
        heartbeat_rates.push(fleet.heartbeats_per_s);
        rss_empty.push(mib(fleet.rss_empty));
        rss_fleet.push(mib(fleet.rss_fleet));
        per_worker.push(bytes_per_worker);
        fleet_rates.push(fleet.fanout.rate);
        few_rates.push(few.rate);
        ratios.push(ratio);
        fleet_cpu.push(fleet.fanout.controller_cpu);
        few_cpu.push(few.controller_cpu);
        fleet_bench_cpu.push(fleet.fanout.bench_cpu);
        few_bench_cpu.push(few.bench_cpu);
        join_p50.push(p50);
        join_p99.push(p99);
        join_register_p50.push(percentile(&fleet.join_register_ms, 50.0));
        join_registered_p50.push(percentile(&fleet.join_registered_ms, 50.0));
        // The data of this repeat is not needed any more.
        let _ = std::fs::remove_dir_all(&dir);
    }
    let workers = shape.workers;
    report.figures.push(
        Figure::new(
            SCENARIO,
            "idle_cpu_percent",
            format!("controller CPU, {workers} workers idle, 5 s heartbeats"),
            "% core",
            idle,
        )
        .goal(Goal::AtMost(TARGET_IDLE_CPU_PERCENT)),
    );
    figures.push((
        "idle_cpu_no_workers_percent",
        "controller CPU, no worker".into(),
        "% core",
        baseline,
    ));
    figures.push((
        "cpu_per_heartbeat_us",
        "controller CPU per heartbeat (above no-worker CPU)".into(),
        "µs",
        per_heartbeat,
    ));
    figures.push((
        "heartbeats_per_s",
        "heartbeats sent by the fleet".into(),
        "1/s",
        heartbeat_rates,
    ));
    figures.push((
        "bench_idle_cpu_percent",
        format!("benchmark's own CPU, {workers} workers idle"),
        "% core",
        bench_idle,
    ));
    figures.push((
        "connect_s",
        format!("{workers} workers connect → all registered"),
        "s",
        connect,
    ));
    figures.push((
        "rss_no_workers_mib",
        "controller RSS, no worker (2 DAGs registered)".into(),
        "MiB",
        rss_empty,
    ));
    figures.push((
        "rss_fleet_mib",
        format!("controller RSS, {workers} workers"),
        "MiB",
        rss_fleet,
    ));
    figures.push((
        "bytes_per_worker",
        "controller RSS per connected worker".into(),
        "bytes",
        per_worker,
    ));
    for (key, label, unit, samples) in figures.drain(..) {
        report
            .figures
            .push(Figure::new(SCENARIO, key, label, unit, samples));
    }
    report.figures.push(Figure::new(
        SCENARIO,
        "fleet_tasks_per_s",
        format!(
            "{} tasks / (ended_at − started_at), {workers} workers × 1 slot",
            number(tasks as f64)
        ),
        "tasks/s",
        fleet_rates,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "few_tasks_per_s",
        format!(
            "{} tasks / (ended_at − started_at), 4 workers × {few_slots} slots",
            number(tasks as f64)
        ),
        "tasks/s",
        few_rates,
    ));
    report.figures.push(
        Figure::new(
            SCENARIO,
            "tasks_per_s_ratio",
            format!("tasks/s with {workers} workers ÷ with 4"),
            "×",
            ratios,
        )
        .goal(Goal::AtLeast(TARGET_RATIO)),
    );
    figures.push((
        "fleet_run_controller_cpu_s",
        format!("controller CPU during the run, {workers} workers"),
        "CPU-s",
        fleet_cpu,
    ));
    figures.push((
        "few_run_controller_cpu_s",
        "controller CPU during the run, 4 workers".into(),
        "CPU-s",
        few_cpu,
    ));
    figures.push((
        "fleet_run_bench_cpu_s",
        format!("benchmark's own CPU during the run, {workers} workers"),
        "CPU-s",
        fleet_bench_cpu,
    ));
    figures.push((
        "few_run_bench_cpu_s",
        "benchmark's own CPU during the run, 4 workers".into(),
        "CPU-s",
        few_bench_cpu,
    ));
    for (key, label, unit, samples) in figures.drain(..) {
        report
            .figures
            .push(Figure::new(SCENARIO, key, label, unit, samples));
    }
    report.figures.push(
        Figure::new(
            SCENARIO,
            "join_p50_ms",
            "new worker: connect → first Assign p50 (all slots busy)",
            "ms",
            join_p50,
        )
        .goal(Goal::AtMost(TARGET_JOIN_P50_MS)),
    );
    report.figures.push(Figure::new(
        SCENARIO,
        "join_p99_ms",
        "new worker: connect → first Assign p99",
        "ms",
        join_p99,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "join_register_p50_ms",
        "new worker: Register sent → first Assign p50",
        "ms",
        join_register_p50,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "join_registered_p50_ms",
        "new worker: Register sent → Registered p50",
        "ms",
        join_registered_p50,
    ));
    report.notes.push(format!(
        "fleet: simulated workers in the benchmark process ({connections}); controllers at --heartbeat-interval {HEARTBEAT_INTERVAL} --worker-lost-timeout {WORKER_LOST_TIMEOUT}; {} joins per run",
        shape.joins
    ));
    if let Some(rate) = report.median(SCENARIO, "fleet_tasks_per_s") {
        let lines = compare(
            report,
            &format!(
                "fleet fan-out with {workers} workers {} tasks/s",
                number(rate)
            ),
            rate,
            true,
        );
        report.comparisons.extend(lines);
    }
    if let Some(p50) = report.median(SCENARIO, "join_register_p50_ms") {
        let lines: Vec<String> = compare(
            report,
            &format!("fleet join Register → first Assign p50 {} ms", number(p50)),
            p50,
            false,
        )
        .into_iter()
        .filter(|line| line.contains("embedded"))
        .collect();
        report.comparisons.extend(lines);
    }
    Ok(())
}
