//! `chain`: latency from one task's end to the next task's start on
//! `baton dev`.
//!
//! The DAG is `length` noops in a line. Per run, from `GetRun{include_tasks:
//! true}`: hop i = `started_at`(task i+1) − `ended_at`(task i) over the
//! `length − 1` hops (protobuf Timestamps, microsecond precision; both are
//! the worker's clock, which in `baton dev` is the controller's process), its
//! p50 and p99, and (`run.ended_at` − `run.started_at`) / `length`. The run's
//! completion is seen by polling `GetRun` without tasks every [`POLL`].

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use baton_common::pb::api;

use crate::procs::{settle, start_dev};
use crate::reference::compare;
use crate::report::{Figure, Goal, Report, number};
use crate::runs::{
    chain_ids, chain_spec, micros, register, run_seconds, trigger, wait_success, within,
};
use crate::stats::percentile;

pub const SCENARIO: &str = "chain";
const DAG_ID: &str = "bench-chain";
const POLL: Duration = Duration::from_millis(5);
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
pub const TARGET_HOP_P50_MS: f64 = 1.0;

/// hop i = `started_at`(task i+1) − `ended_at`(task i), in ms, for the
/// tasks `ids` (in chain order) of a `GetRun{include_tasks: true}` answer.
pub fn hop_latencies(response: &api::GetRunResponse, ids: &[String]) -> anyhow::Result<Vec<f64>> {
    let tasks: HashMap<&str, &api::TaskInstance> = response
        .tasks
        .iter()
        .map(|task| (task.task_id.as_str(), task))
        .collect();
    let mut hops = Vec::with_capacity(ids.len().saturating_sub(1));
    for pair in ids.windows(2) {
        let before = tasks
            .get(pair[0].as_str())
            .with_context(|| format!("task {} missing from GetRun", pair[0]))?;
        let after = tasks
            .get(pair[1].as_str())
            .with_context(|| format!("task {} missing from GetRun", pair[1]))?;
        let ended = micros(before.ended_at.as_ref(), "task ended_at")?;
        let started = micros(after.started_at.as_ref(), "task started_at")?;
        hops.push((started - ended) as f64 / 1e3);
    }
    Ok(hops)
}

pub async fn run(
    binary: &Path,
    work: &Path,
    repeat: usize,
    slots: u32,
    length: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "== chain: {} noop in a line, baton dev --slots {slots}, {repeat} runs ==",
        number(length as f64)
    );
    let (mut dev, mut client) = start_dev(binary, work, "chain", slots).await?;
    register(&mut client, chain_spec(DAG_ID, length)).await?;
    let ids = chain_ids(length);
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut per_task = Vec::new();
    for round in 0..repeat {
        let run_id = trigger(&mut client, DAG_ID).await?;
        let finished =
            wait_success(&mut client, &mut dev, &run_id, POLL, RUN_TIMEOUT, || {}).await?;
        // Runs do not overlap with work left over from the previous one.
        settle(dev.pid()).await?;
        let request = api::GetRunRequest {
            run_id: run_id.clone(),
            include_tasks: true,
        };
        let response = within("GetRun with tasks", client.runs.get_run(request))
            .await?
            .into_inner();
        let hops = hop_latencies(&response, &ids)?;
        let (p50, p99) = (percentile(&hops, 50.0), percentile(&hops, 99.0));
        let seconds = run_seconds(&finished.run)?;
        let per = seconds * 1e3 / length as f64;
        println!(
            "  run #{}: hop p50 {} ms, p99 {} ms, min {} ms, max {} ms; run {} s = {} ms per task",
            round + 1,
            number(p50),
            number(p99),
            number(crate::stats::min(&hops)),
            number(crate::stats::max(&hops)),
            number(seconds),
            number(per)
        );
        p50s.push(p50);
        p99s.push(p99);
        per_task.push(per);
    }
    let stop = dev.stop().await;
    println!(
        "  baton dev stopped in {} ms",
        number(stop.as_secs_f64() * 1e3)
    );
    report.figures.push(
        Figure::new(
            SCENARIO,
            "hop_p50_ms",
            "hop p50: started_at(i+1) − ended_at(i)",
            "ms",
            p50s,
        )
        .goal(Goal::AtMost(TARGET_HOP_P50_MS)),
    );
    report
        .figures
        .push(Figure::new(SCENARIO, "hop_p99_ms", "hop p99", "ms", p99s));
    report.figures.push(Figure::new(
        SCENARIO,
        "run_per_task_ms",
        format!("(ended_at − started_at) / {length}"),
        "ms",
        per_task,
    ));
    if let Some(p50) = report.median(SCENARIO, "hop_p50_ms") {
        let lines = compare(
            report,
            &format!("chain hop p50 {} ms", number(p50)),
            p50,
            false,
        );
        report.comparisons.extend(lines);
    }
    Ok(())
}
