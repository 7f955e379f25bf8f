//! `cluster-chain`: latency from one task's end to the next task's start on
//! a cluster.
//!
//! The same cluster shape as `cluster-fanout` (keys under
//! `/bench-cluster-chain`). The DAG is `length` noops in a line. Per run,
//! from `GetRun{include_tasks: true}` on the leader: hop i =
//! `started_at`(task i+1) − `ended_at`(task i) over the `length − 1` hops,
//! its p50 and p99, and (`run.ended_at` − `run.started_at`) / `length`. Both
//! ends of a hop are stamped by workers (`TaskStarted`, `TaskResult`) on the
//! same machine clock.
//!
//! Each hop is also split at the next task's lease: an etcd watch on the
//! run's task records (opened before the trigger) gives each task's
//! `leased_at` (the leader's clock when it decided the lease) and when the
//! write holding it reached the watch (≈ the batch's commit). Before the
//! runs, the single-put latency of the reference is measured again with the
//! controllers and workers running idle, and each run counts etcd's write
//! transactions (revisions) it took.
//!
//! Target: hop p50 ≤ [`TARGET_PUT_MULTIPLE`] × the single-put p50 of the
//! same etcd cluster, measured before (reference).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_common::client::BatonClient;
use baton_common::pb::api;
use baton_common::pb::records::TaskRecord;
use baton_common::time::{Micros, now_micros, timestamp_opt_to_micros};
use etcd_client::WatchOptions;
use prost::Message as _;
use tokio::sync::oneshot;

use crate::chain::hop_latencies;
use crate::cluster::OnCluster;
use crate::etcd::EtcdCluster;
use crate::procs::{quiet_cpu, settle_above};
use crate::reference::{self, ETCD_CLUSTER_PUT_P50, compare_cluster, put_latencies};
use crate::report::{Figure, Goal, Report, number};
use crate::runs::{
    chain_ids, chain_spec, micros, register, run_seconds, trigger, wait_success, within,
};
use crate::stats::percentile;

pub const SCENARIO: &str = "cluster-chain";
const DAG_ID: &str = "bench-cluster-chain";
/// The etcd prefix of the scenario's controllers.
const PREFIX: &str = "/bench-cluster-chain";
const POLL: Duration = Duration::from_millis(5);
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the lease watch keeps reading after the run ended and no event
/// came.
const WATCH_DRAIN: Duration = Duration::from_millis(300);
/// Target: hop p50 ≤ this × etcd-cluster single put p50.
pub const TARGET_PUT_MULTIPLE: f64 = 2.0;

/// When each task was leased (`leased_at` of its record: the leader's clock
/// when it decided the lease) and when the etcd write holding the lease was
/// delivered to this process's watch on the run's task records (≈ when the
/// batch committed; the leader sends the `Assign` once it has the answer).
struct LeaseSeen {
    leased_at: Micros,
    seen_at: Micros,
}

/// Watches `<PREFIX>/tasks/` (confirmed before it returns) and collects,
/// per task, the first record written with a `leased_at`, until `stop`
/// fires and no event came for [`WATCH_DRAIN`].
async fn watch_leases(
    etcd: &EtcdCluster,
) -> anyhow::Result<(
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<HashMap<String, LeaseSeen>>>,
)> {
    let mut client = etcd.client.clone();
    let mut stream = within(
        "etcd watch",
        client.watch(
            format!("{PREFIX}/tasks/"),
            Some(WatchOptions::new().with_prefix()),
        ),
    )
    .await?;
    let mut early = Vec::new();
    loop {
        let message = within("etcd watch", stream.message())
            .await?
            .context("the etcd watch ended")?;
        let created = message.created();
        early.push(message);
        if created {
            break;
        }
    }
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _client = client;
        let mut seen: HashMap<String, LeaseSeen> = HashMap::new();
        let mut pending = early.into_iter();
        let mut draining = false;
        loop {
            let message = match pending.next() {
                Some(message) => Some(message),
                None if draining => {
                    match tokio::time::timeout(WATCH_DRAIN, stream.message()).await {
                        Ok(message) => message?,
                        Err(_) => None,
                    }
                }
                None => tokio::select! {
                    message = stream.message() => message?,
                    _ = &mut stopped => {
                        draining = true;
                        continue;
                    }
                },
            };
            let Some(message) = message else { break };
            let seen_at = now_micros();
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(record) = TaskRecord::decode(kv.value()) else {
                    continue;
                };
                let leased_at = timestamp_opt_to_micros(record.leased_at.as_ref());
                if leased_at > 0 {
                    seen.entry(record.task_id)
                        .or_insert(LeaseSeen { leased_at, seen_at });
                }
            }
        }
        anyhow::Ok(seen)
    });
    Ok((stop, task))
}

/// Per hop i → i+1, in ms: ended_at(i) → leased_at(i+1) (the result
/// reaching the leader, the success handled and the next task leased),
/// leased_at(i+1) → the lease's write seen by the watch (the batch's etcd
/// transaction), and that → started_at(i+1) (the `Assign` reaching a
/// worker and the worker starting the task).
fn split_hops(
    seen: &HashMap<String, LeaseSeen>,
    response: &api::GetRunResponse,
    ids: &[String],
) -> anyhow::Result<[Vec<f64>; 3]> {
    let tasks: HashMap<&str, &api::TaskInstance> = response
        .tasks
        .iter()
        .map(|task| (task.task_id.as_str(), task))
        .collect();
    let mut parts: [Vec<f64>; 3] = Default::default();
    for pair in ids.windows(2) {
        let (Some(before), Some(after), Some(lease)) = (
            tasks.get(pair[0].as_str()),
            tasks.get(pair[1].as_str()),
            seen.get(&pair[1]),
        ) else {
            bail!("task {} or the lease of {} was not seen", pair[0], pair[1]);
        };
        let ended = micros(before.ended_at.as_ref(), "task ended_at")?;
        let started = micros(after.started_at.as_ref(), "task started_at")?;
        parts[0].push((lease.leased_at - ended) as f64 / 1e3);
        parts[1].push((lease.seen_at - lease.leased_at) as f64 / 1e3);
        parts[2].push((started - lease.seen_at) as f64 / 1e3);
    }
    Ok(parts)
}

pub async fn run(on: OnCluster<'_>, length: usize, report: &mut Report) -> anyhow::Result<()> {
    let OnCluster { etcd, repeat, .. } = on;
    println!(
        "== cluster-chain: {} noop in a line; {} ==",
        number(length as f64),
        on.describe()
    );
    let mut cluster = on.start("cluster-chain", PREFIX).await?;
    register(&mut cluster.client, chain_spec(DAG_ID, length)).await?;
    let ids = chain_ids(length);
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut per_task = Vec::new();
    let mut split_p50s: [Vec<f64>; 3] = Default::default();
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
    // The same single-put latency as the reference, now with the
    // controllers and workers running but idle: what the etcd cluster gives
    // while the cluster itself adds its background load.
    let mut busy_puts = Vec::new();
    for _ in 0..repeat {
        let latencies = put_latencies(&etcd.client.kv_client(), "with-controllers").await?;
        busy_puts.push(percentile(&latencies, 50.0));
    }
    println!(
        "  etcd-cluster single put p50 with the controllers and workers idle: {} ms (medians of {} × 1,000 puts: {})",
        number(crate::stats::median(&busy_puts)),
        busy_puts.len(),
        busy_puts
            .iter()
            .map(|value| number(*value))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for round in 0..repeat {
        let status = cluster.wait_whole().await?;
        let leader = cluster.index_of(&status.leader_id)?;
        let leader_pid = cluster.process_of(leader)?.pid();
        let mut client = BatonClient::connect(&status.leader_address).await?;
        let revision = etcd.revision().await?;
        let (stop_watch, watcher) = watch_leases(etcd).await?;
        let run_id = trigger(&mut client, DAG_ID).await?;
        let finished =
            wait_success(&mut client, &mut cluster, &run_id, POLL, RUN_TIMEOUT, || {}).await?;
        let _ = stop_watch.send(());
        let seen = watcher.await??;
        settle_above(leader_pid, floor).await?;
        let txns = etcd.revision().await? - revision;
        let request = api::GetRunRequest {
            run_id: run_id.clone(),
            include_tasks: true,
        };
        let response = within("GetRun with tasks", client.runs.get_run(request))
            .await?
            .into_inner();
        let hops = hop_latencies(&response, &ids)?;
        let parts = split_hops(&seen, &response, &ids)?;
        let workers_used = response
            .tasks
            .iter()
            .map(|task| task.worker_id.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let (p50, p99) = (percentile(&hops, 50.0), percentile(&hops, 99.0));
        let seconds = run_seconds(&finished.run)?;
        let per = seconds * 1e3 / length as f64;
        println!(
            "  run #{}: hop p50 {} ms, p99 {} ms, min {} ms, max {} ms; run {} s = {} ms per task; leader {}, {workers_used} workers used; {txns} etcd write txns ({} per task)",
            round + 1,
            number(p50),
            number(p99),
            number(crate::stats::min(&hops)),
            number(crate::stats::max(&hops)),
            number(seconds),
            number(per),
            status.leader_id,
            number(txns as f64 / length as f64)
        );
        println!(
            "    hop split: ended_at(i) → leased_at(i+1) p50 {} ms (p99 {}); → lease committed (etcd watch) p50 {} ms (p99 {}); → started_at(i+1) p50 {} ms (p99 {})",
            number(percentile(&parts[0], 50.0)),
            number(percentile(&parts[0], 99.0)),
            number(percentile(&parts[1], 50.0)),
            number(percentile(&parts[1], 99.0)),
            number(percentile(&parts[2], 50.0)),
            number(percentile(&parts[2], 99.0)),
        );
        p50s.push(p50);
        p99s.push(p99);
        per_task.push(per);
        for (samples, part) in split_p50s.iter_mut().zip(&parts) {
            samples.push(percentile(part, 50.0));
        }
    }
    cluster.stop().await;
    let mut figure = Figure::new(
        SCENARIO,
        "hop_p50_ms",
        "hop p50: started_at(i+1) − ended_at(i)",
        "ms",
        p50s,
    );
    match report.median(reference::SCENARIO, ETCD_CLUSTER_PUT_P50) {
        Some(put) => {
            figure = figure.goal(Goal::AtMost(TARGET_PUT_MULTIPLE * put));
            report.notes.push(format!(
                "{SCENARIO}: target = {TARGET_PUT_MULTIPLE} × etcd-cluster put p50 ({} ms) = {} ms",
                number(put),
                number(TARGET_PUT_MULTIPLE * put)
            ));
        }
        None => report.notes.push(format!(
            "{SCENARIO}: no etcd-cluster reference, so its target is not judged"
        )),
    }
    report.figures.push(figure);
    report
        .figures
        .push(Figure::new(SCENARIO, "hop_p99_ms", "hop p99", "ms", p99s));
    report.figures.push(Figure::new(
        SCENARIO,
        "etcd_put_p50_controllers_idle_ms",
        "etcd-cluster put p50, cluster running idle",
        "ms",
        busy_puts,
    ));
    let [to_lease, to_commit, to_start] = split_p50s;
    for (key, label, samples) in [
        (
            "hop_to_lease_p50_ms",
            "hop part p50: ended_at(i) → leased_at(i+1)",
            to_lease,
        ),
        (
            "hop_to_commit_p50_ms",
            "hop part p50: leased_at(i+1) → lease committed (etcd watch)",
            to_commit,
        ),
        (
            "hop_to_start_p50_ms",
            "hop part p50: lease committed → started_at(i+1)",
            to_start,
        ),
    ] {
        report
            .figures
            .push(Figure::new(SCENARIO, key, label, "ms", samples));
    }
    report.figures.push(Figure::new(
        SCENARIO,
        "run_per_task_ms",
        format!("(ended_at − started_at) / {length}"),
        "ms",
        per_task,
    ));
    if let Some(p50) = report.median(SCENARIO, "hop_p50_ms") {
        let lines = compare_cluster(
            report,
            &format!("cluster-chain hop p50 {} ms", number(p50)),
            p50,
            false,
        );
        report.comparisons.extend(lines);
    }
    Ok(())
}
