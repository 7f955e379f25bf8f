//! `memory`: peak resident memory of a controller holding one very wide run.
//!
//! Per repeat, a fresh `baton controller` (embedded store, temp data dir,
//! config raising `max_tasks_per_dag` and `max_spec_bytes`) and a separate
//! `baton worker --slots N` process. The DAG is 1 → `width` noops → 1. The
//! controller's `/proc/<pid>/status` is read: `VmRSS` once idle (after the
//! worker connected), after registration, every [`POLL`] while the run runs,
//! and once it is idle again after the run ended (see
//! [`settle`](crate::procs::settle)); `VmHWM` (the process's peak, covering the
//! registration of the spec and the whole run) at the end. Then a second
//! run on the same controller shows whether the first run's memory is
//! reused (`VmRSS` and `VmHWM` after it); the per-run figures are read
//! before it.
//!
//! `cluster-memory`: per repeat, a fresh cluster on the etcd cluster
//! (`--controllers` controllers, keys under `/bench-cluster-memory-<n>`, 4
//! workers) runs 1 → 99,998 noops → 1 (100,000 tasks, the default
//! `max_tasks_per_dag`); the leader's `VmRSS` is read as above and its
//! `VmHWM` at the end, with the highest `VmHWM` among the standbys (which
//! only follow the leader and serve reads).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::OnCluster;
use crate::procs::{Proc, connect_baton, free_port, memory, settle};
use crate::report::{Figure, Goal, Report, number};
use crate::runs::{fanout_spec, register, run_seconds, trigger, wait_success};
use crate::target::Target;

pub const SCENARIO: &str = "memory";
pub const CLUSTER_SCENARIO: &str = "cluster-memory";
/// Middle noops of `cluster-memory` at most: with `start` and `end`, the
/// default `max_tasks_per_dag` (its controllers run with the defaults).
pub const CLUSTER_MAX_WIDTH: usize = 99_998;
const DAG_ID: &str = "bench-memory";
const POLL: Duration = Duration::from_millis(20);
const SETTLE: Duration = Duration::from_secs(1);
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
pub const TARGET_PEAK_MIB: f64 = 200.0;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

pub async fn run(
    binary: &Path,
    work: &Path,
    repeat: usize,
    slots: u32,
    width: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let tasks = width + 2;
    println!(
        "== memory: 1 → {} noop → 1 ({} tasks), baton controller + baton worker --slots {slots}, fresh controller per run, {repeat} runs ==",
        number(width as f64),
        number(tasks as f64)
    );
    let spec = fanout_spec(DAG_ID, width);
    let spec_bytes = spec.len();
    let mut idle = Vec::new();
    let mut registered_rss = Vec::new();
    let mut register_ms = Vec::new();
    let mut sampled_max = Vec::new();
    let mut peak = Vec::new();
    let mut after = Vec::new();
    let mut busy = Vec::new();
    let mut busy_cpu = Vec::new();
    let mut rates = Vec::new();
    let mut second_rss = Vec::new();
    let mut second_hwm = Vec::new();
    let mut worker_peak = Vec::new();
    let mut stops = Vec::new();
    for round in 0..repeat {
        let dir = work.join(format!("memory-{round}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "version = 1\n\n[limits]\nmax_tasks_per_dag = 200000\nmax_spec_bytes = {}\n",
                (spec_bytes * 2).max(64 * 1024 * 1024)
            ),
        )?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let controller_args: Vec<String> = vec![
            "controller".into(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            dir.join("data").to_string_lossy().into_owned(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
        ];
        let mut controller = Proc::spawn(
            "baton controller",
            binary,
            &controller_args,
            &[],
            &dir.join("controller.log"),
        )?;
        let mut client = connect_baton(&mut controller, &addr).await?;
        let worker_args: Vec<String> = vec![
            "--addr".into(),
            format!("http://{addr}"),
            "worker".into(),
            "--slots".into(),
            slots.to_string(),
            "--id".into(),
            format!("bench-worker-{round}"),
            "--work-dir".into(),
            dir.join("work").to_string_lossy().into_owned(),
        ];
        let mut worker = Proc::spawn(
            "baton worker",
            binary,
            &worker_args,
            &[],
            &dir.join("worker.log"),
        )?;
        tokio::time::sleep(SETTLE).await;
        worker.check_running()?;
        let pid = controller.pid();
        let idle_rss = memory(pid)?.rss;
        let started = Instant::now();
        register(&mut client, spec.clone()).await?;
        let register_time = started.elapsed().as_secs_f64() * 1e3;
        let registered = memory(pid)?.rss;
        let run_id = trigger(&mut client, DAG_ID).await?;
        let mut max_rss = registered;
        let finished = wait_success(
            &mut client,
            &mut controller,
            &run_id,
            POLL,
            RUN_TIMEOUT,
            || {
                if let Ok(now) = memory(pid) {
                    max_rss = max_rss.max(now.rss);
                }
            },
        )
        .await?;
        let end = memory(pid)?;
        let settled = settle(pid).await?;
        let later = memory(pid)?.rss;
        let rate = tasks as f64 / run_seconds(&finished.run)?;
        // A second run on the same controller (started once it is idle): if per-run state is dropped
        // when a run ends, its memory is reused and the peak barely moves.
        let run_id = trigger(&mut client, DAG_ID).await?;
        wait_success(
            &mut client,
            &mut controller,
            &run_id,
            POLL,
            RUN_TIMEOUT,
            || {},
        )
        .await?;
        let second = memory(pid)?;
        let worker_hwm = memory(worker.pid())?.hwm;
        worker.stop().await;
        let stop = controller.stop().await;
        println!(
            "  run #{}: controller RSS idle {} MiB, after RegisterDag {} MiB ({} ms), max sampled {} MiB, VmHWM {} MiB, idle again {} MiB; busy {} s ({} CPU-s) after the run ended; {} tasks/s; after a second run: RSS {} MiB, VmHWM {} MiB; worker VmHWM {} MiB; controller exited {} ms after SIGTERM",
            round + 1,
            number(mib(idle_rss)),
            number(mib(registered)),
            number(register_time),
            number(mib(max_rss)),
            number(mib(end.hwm)),
            number(mib(later)),
            number(settled.busy.as_secs_f64()),
            number(settled.cpu.as_secs_f64()),
            number(rate),
            number(mib(second.rss)),
            number(mib(second.hwm)),
            number(mib(worker_hwm)),
            number(stop.as_secs_f64() * 1e3),
        );
        idle.push(mib(idle_rss));
        registered_rss.push(mib(registered));
        register_ms.push(register_time);
        sampled_max.push(mib(max_rss));
        peak.push(mib(end.hwm));
        after.push(mib(later));
        busy.push(settled.busy.as_secs_f64());
        busy_cpu.push(settled.cpu.as_secs_f64());
        rates.push(rate);
        second_rss.push(mib(second.rss));
        second_hwm.push(mib(second.hwm));
        worker_peak.push(mib(worker_hwm));
        stops.push(stop.as_secs_f64() * 1e3);
        // The data of this repeat is not needed any more.
        let _ = std::fs::remove_dir_all(&dir);
    }
    report.figures.push(
        Figure::new(
            SCENARIO,
            "peak_rss_mib",
            "controller peak RSS (VmHWM)",
            "MiB",
            peak,
        )
        .goal(Goal::AtMost(TARGET_PEAK_MIB)),
    );
    report.figures.push(Figure::new(
        SCENARIO,
        "idle_rss_mib",
        "controller RSS idle after start",
        "MiB",
        idle,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "registered_rss_mib",
        "controller RSS after RegisterDag",
        "MiB",
        registered_rss,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "run_max_rss_mib",
        "controller RSS max sampled during run",
        "MiB",
        sampled_max,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "after_rss_mib",
        "controller RSS once idle after the run",
        "MiB",
        after,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "busy_after_run_s",
        "controller busy after run reported success",
        "s",
        busy,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "cpu_after_run_s",
        "controller CPU used after run reported success",
        "CPU-s",
        busy_cpu,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "second_run_rss_mib",
        "controller RSS after a 2nd run (same process)",
        "MiB",
        second_rss,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "second_run_peak_rss_mib",
        "controller VmHWM after a 2nd run (same process)",
        "MiB",
        second_hwm,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "register_ms",
        format!("RegisterDag of {} MiB spec", number(mib(spec_bytes as u64))),
        "ms",
        register_ms,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "tasks_per_s",
        format!(
            "{} tasks / (ended_at − started_at), separate worker",
            number(tasks as f64)
        ),
        "tasks/s",
        rates,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "worker_peak_rss_mib",
        "worker peak RSS (VmHWM)",
        "MiB",
        worker_peak,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "controller_stop_ms",
        "controller exit after SIGTERM",
        "ms",
        stops,
    ));
    if let (Some(peak), Some(idle)) = (
        report.median(SCENARIO, "peak_rss_mib"),
        report.median(SCENARIO, "idle_rss_mib"),
    ) {
        report.comparisons.push(format!(
            "memory peak {} MiB = idle {} MiB + {} bytes per task of the {}-task run",
            number(peak),
            number(idle),
            number((peak - idle) * 1024.0 * 1024.0 / tasks as f64),
            number(tasks as f64)
        ));
    }
    Ok(())
}

/// `cluster-memory` (see the module's doc): `width` middle noops, at most
/// [`CLUSTER_MAX_WIDTH`].
pub async fn run_cluster(
    on: OnCluster<'_>,
    width: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let OnCluster { work, repeat, .. } = on;
    let tasks = width + 2;
    println!(
        "== {CLUSTER_SCENARIO}: 1 → {} noop → 1 ({} tasks); {}, a fresh cluster per run ==",
        number(width as f64),
        number(tasks as f64),
        on.describe()
    );
    let spec = fanout_spec(DAG_ID, width);
    let mut idle = Vec::new();
    let mut registered_rss = Vec::new();
    let mut peak = Vec::new();
    let mut standby_peak = Vec::new();
    let mut rates = Vec::new();
    for round in 0..repeat {
        let name = format!("{CLUSTER_SCENARIO}-{round}");
        let mut target = Target::cluster(on, &name).await?;
        let measured = async {
            let pids = target.controller_pids().await?;
            let leader = pids[0];
            let mut client = target.client.clone();
            let idle_rss = memory(leader)?.rss;
            register(&mut client, spec.clone()).await?;
            let registered = memory(leader)?.rss;
            let run_id = trigger(&mut client, DAG_ID).await?;
            let finished =
                wait_success(&mut client, &mut target, &run_id, POLL, RUN_TIMEOUT, || {}).await?;
            if target.controller_pids().await?[0] != leader {
                anyhow::bail!("the leader changed during the run; its peak would not be the run's");
            }
            let end = memory(leader)?;
            let standby_hwm = pids[1..]
                .iter()
                .map(|&pid| memory(pid).map(|memory| memory.hwm))
                .collect::<anyhow::Result<Vec<_>>>()?
                .into_iter()
                .max();
            let rate = tasks as f64 / run_seconds(&finished.run)?;
            anyhow::Ok((idle_rss, registered, end.hwm, standby_hwm, rate))
        }
        .await;
        target.stop().await;
        let (idle_rss, registered, hwm, standby_hwm, rate) = measured?;
        println!(
            "  run #{}: leader RSS idle {} MiB, after RegisterDag {} MiB, VmHWM {} MiB; standbys' highest VmHWM {}; {} tasks/s",
            round + 1,
            number(mib(idle_rss)),
            number(mib(registered)),
            number(mib(hwm)),
            standby_hwm.map_or_else(
                || "— (none)".to_string(),
                |hwm| format!("{} MiB", number(mib(hwm)))
            ),
            number(rate),
        );
        idle.push(mib(idle_rss));
        registered_rss.push(mib(registered));
        peak.push(mib(hwm));
        if let Some(hwm) = standby_hwm {
            standby_peak.push(mib(hwm));
        }
        rates.push(rate);
        // The data of this repeat is not needed any more.
        let _ = std::fs::remove_dir_all(work.join(&name));
    }
    report.figures.push(
        Figure::new(
            CLUSTER_SCENARIO,
            "peak_rss_mib",
            "leader peak RSS (VmHWM)",
            "MiB",
            peak,
        )
        .goal(Goal::AtMost(TARGET_PEAK_MIB)),
    );
    report.figures.push(Figure::new(
        CLUSTER_SCENARIO,
        "idle_rss_mib",
        "leader RSS idle after start",
        "MiB",
        idle,
    ));
    report.figures.push(Figure::new(
        CLUSTER_SCENARIO,
        "registered_rss_mib",
        "leader RSS after RegisterDag",
        "MiB",
        registered_rss,
    ));
    if !standby_peak.is_empty() {
        report.figures.push(Figure::new(
            CLUSTER_SCENARIO,
            "standby_peak_rss_mib",
            "standbys' highest peak RSS (VmHWM)",
            "MiB",
            standby_peak,
        ));
    }
    report.figures.push(Figure::new(
        CLUSTER_SCENARIO,
        "tasks_per_s",
        format!("{} tasks / (ended_at − started_at)", number(tasks as f64)),
        "tasks/s",
        rates,
    ));
    Ok(())
}
