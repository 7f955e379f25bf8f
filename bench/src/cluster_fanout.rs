//! `cluster-fanout`: throughput of one wide run on a cluster.
//!
//! `--controllers` controllers (3 by default) on the etcd cluster (keys under
//! `/bench-cluster-fanout`, default lease TTL) and [`WORKERS`] workers of N
//! slots each. The DAG is `start` → `width` noops → `end`. Runs are
//! triggered one at a time, each once the cluster is whole again (every
//! worker connected with all slots free). Per run: tasks/s = (width + 2) /
//! (`run.ended_at` − `run.started_at`) from the run record, and the wall time
//! from `TriggerRun` to the poll (`GetRun` without tasks to the leader, every
//! [`POLL`]) that first saw the run final. The CPU time each process used
//! from the trigger to the success being seen is printed. Before the next
//! run, the leader is left to go idle.

use std::time::{Duration, Instant};

use baton_common::client::BatonClient;

use crate::cluster::{OnCluster, WORKERS, cpu_snapshot, cpu_used};
use crate::procs::{quiet_cpu, settle_above};
use crate::reference::compare_cluster;
use crate::report::{Figure, Goal, Report, number};
use crate::runs::{fanout_spec, register, run_seconds, trigger, wait_success};

pub const SCENARIO: &str = "cluster-fanout";
const DAG_ID: &str = "bench-cluster-fanout";
const POLL: Duration = Duration::from_millis(5);
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Issue 8: fan-out of 10,000 on etcd with 3 controllers.
pub const TARGET_TASKS_PER_S: f64 = 5_000.0;

pub async fn run(on: OnCluster<'_>, width: usize, report: &mut Report) -> anyhow::Result<()> {
    let OnCluster {
        etcd,
        controllers,
        slots,
        repeat,
        ..
    } = on;
    let tasks = width + 2;
    println!(
        "== cluster-fanout: start → {} noop → end ({} tasks); {} ==",
        number(width as f64),
        number(tasks as f64),
        on.describe()
    );
    let mut cluster = on.start("cluster-fanout", "/bench-cluster-fanout").await?;
    let registered = Instant::now();
    register(&mut cluster.client, fanout_spec(DAG_ID, width)).await?;
    println!(
        "  registered in {} ms",
        number(registered.elapsed().as_secs_f64() * 1e3)
    );
    let mut rates = Vec::new();
    let mut walls = Vec::new();
    // A controller of a cluster is never quite idle (leases, leader
    // tracking): what it uses with nothing to do is the floor of "idle".
    let status = cluster.wait_whole().await?;
    let leader = cluster.index_of(&status.leader_id)?;
    let floor = quiet_cpu(cluster.process_of(leader)?.pid()).await?;
    println!(
        "  leader {} with nothing to do: {} ms CPU per 500 ms",
        status.leader_id,
        number(floor.as_secs_f64() * 1e3)
    );
    for round in 0..repeat {
        let status = cluster.wait_whole().await?;
        let leader = cluster.index_of(&status.leader_id)?;
        let leader_pid = cluster.process_of(leader)?.pid();
        // Polls go to the leader itself, which answers from memory.
        let mut client = BatonClient::connect(&status.leader_address).await?;
        let mut pids = cluster.pids();
        for (index, pid) in etcd.pids().into_iter().enumerate() {
            pids.push((format!("etcd{index}"), pid));
        }
        let before = cpu_snapshot(&pids);
        let revision = etcd.revision().await?;
        let triggered = Instant::now();
        let run_id = trigger(&mut client, DAG_ID).await?;
        let finished =
            wait_success(&mut client, &mut cluster, &run_id, POLL, RUN_TIMEOUT, || {}).await?;
        let wall = finished.observed.duration_since(triggered).as_secs_f64();
        let after = cpu_snapshot(&pids);
        let txns = etcd.revision().await? - revision;
        let seconds = run_seconds(&finished.run)?;
        let rate = tasks as f64 / seconds;
        println!(
            "  run #{}: {} tasks/s (ended_at − started_at {} s), wall {} s; leader {} (pid {leader_pid}); {txns} etcd write txns ({} tasks per txn); CPU-s from trigger to success seen: {}",
            round + 1,
            number(rate),
            number(seconds),
            number(wall),
            status.leader_id,
            number(tasks as f64 / txns.max(1) as f64),
            cpu_used(&before, &after)
        );
        settle_above(leader_pid, floor).await?;
        rates.push(rate);
        walls.push(wall);
    }
    cluster.stop().await;
    report.figures.push(
        Figure::new(
            SCENARIO,
            "tasks_per_s",
            format!("{} tasks / (ended_at − started_at)", number(tasks as f64)),
            "tasks/s",
            rates,
        )
        .goal(Goal::AtLeast(TARGET_TASKS_PER_S)),
    );
    report.figures.push(Figure::new(
        SCENARIO,
        "wall_s",
        "wall: trigger → completion seen",
        "s",
        walls,
    ));
    report.notes.push(format!(
        "{SCENARIO}: etcd {} members, {controllers} controllers, {WORKERS} workers × --slots {slots}",
        etcd.members.len()
    ));
    if let Some(rate) = report.median(SCENARIO, "tasks_per_s") {
        let lines = compare_cluster(
            report,
            &format!("cluster-fanout {} tasks/s", number(rate)),
            rate,
            true,
        );
        report.comparisons.extend(lines);
    }
    Ok(())
}
