//! `scale`: the scheduler's cost per task as the tasks active at once grow.
//!
//! One `baton dev --slots N` process with three fan-out DAGs (`start` →
//! width noops → `end`) of about 1,000, 10,000 and 100,000 tasks; each is run `repeat` times,
//! one run at a time, the process left to go idle in between. Per run:
//! µs per task = (`ended_at` − `started_at`) / tasks. With every middle
//! task ready at once, a cost that grew with the tasks in the system
//! (a scan, a sorted insert into a long list) would show as µs per task
//! growing with the width; the figure judged is the median at the widest
//! over the median at the narrowest (≤ 1.5: the cost is per event).

use std::time::Duration;

use crate::report::{Figure, Goal, Report, number};
use crate::runs::{fanout_spec, register, run_seconds, trigger, wait_success};
use crate::stats;
use crate::target::Target;

pub const SCENARIO: &str = "scale";
pub const CLUSTER_SCENARIO: &str = "cluster-scale";
/// Middle tasks of the three fan-outs (the widest makes 100,000 tasks with
/// `start` and `end`, the most a DAG may have).
pub const WIDTHS: [usize; 3] = [1_000, 10_000, 99_998];
const POLL: Duration = Duration::from_millis(5);
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Issue 8: µs per task at the widest over the narrowest.
pub const TARGET_GROWTH: f64 = 1.5;
/// The figures' keys, one per width.
const KEYS: [&str; 3] = ["us_per_task_1k", "us_per_task_10k", "us_per_task_100k"];

/// `scenario` names the figures: [`SCENARIO`] on `baton dev`,
/// [`CLUSTER_SCENARIO`] on a cluster.
pub async fn run(
    target: &mut Target,
    scenario: &'static str,
    repeat: usize,
    slots: u32,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "== {scenario}: µs per task of fan-outs of {} noops, {}, {repeat} runs each ==",
        WIDTHS.map(|width| number(width as f64)).join(" / "),
        target.describe(slots)
    );
    let mut client = target.client.clone();
    let mut medians = Vec::new();
    for (width, key) in WIDTHS.into_iter().zip(KEYS) {
        let dag_id = format!("bench-scale-{width}");
        register(&mut client, fanout_spec(&dag_id, width)).await?;
        let tasks = width + 2;
        let mut per_task = Vec::new();
        for round in 1..=repeat {
            let run_id = trigger(&mut client, &dag_id).await?;
            let finished =
                wait_success(&mut client, target, &run_id, POLL, RUN_TIMEOUT, || {}).await?;
            target.settle().await?;
            let micros = run_seconds(&finished.run)? * 1e6 / tasks as f64;
            println!(
                "  {} tasks, run #{round}: {} µs per task ({} tasks/s)",
                number(tasks as f64),
                number(micros),
                number(1e6 / micros)
            );
            per_task.push(micros);
        }
        medians.push(stats::median(&per_task));
        report.figures.push(Figure::new(
            scenario,
            key,
            format!("µs per task, {} tasks at once", number(width as f64)),
            "µs",
            per_task,
        ));
    }
    let growth = medians[medians.len() - 1] / medians[0];
    report.figures.push(
        Figure::new(
            scenario,
            "growth",
            format!(
                "µs per task, {} over {} tasks at once",
                number(WIDTHS[WIDTHS.len() - 1] as f64),
                number(WIDTHS[0] as f64)
            ),
            "×",
            vec![growth],
        )
        .goal(Goal::AtMost(TARGET_GROWTH)),
    );
    Ok(())
}
