//! `mixed`: many different DAGs running at once on `baton dev`.
//!
//! [`DAGS`] DAGs of [`TASKS`] noops each, with random dependencies drawn
//! from a fixed seed per DAG (each task after the first depends on up to
//! three earlier ones, so every DAG is acyclic and its shape differs from
//! the others'). Each round triggers one run of every DAG at once and waits
//! until all succeeded, as `etl-runs` does. Per round: tasks/s = all tasks
//! / (latest `ended_at` − earliest `created_at`), and the p50 and p99 of
//! each run's `ended_at` − `created_at`.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

use crate::report::{Figure, Report, number};
use crate::runs::{Rounds, register};
use crate::target::Target;

pub const SCENARIO: &str = "mixed";
pub const CLUSTER_SCENARIO: &str = "cluster-mixed";
pub const DAGS: usize = 100;
pub const TASKS: usize = 100;
/// Most upstreams a task draws.
const MAX_UPSTREAMS: usize = 3;
const ROUND_TIMEOUT: Duration = Duration::from_secs(600);

/// `tasks` noops, each after the first depending on 0 to
/// [`MAX_UPSTREAMS`] distinct earlier ones drawn from `seed`, as JSON.
pub fn random_spec(dag_id: &str, tasks: usize, seed: u64) -> String {
    let mut random = StdRng::seed_from_u64(seed);
    let ids: Vec<String> = (0..tasks).map(|index| format!("t{index:03}")).collect();
    let tasks: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let wanted = random.random_range(0..=MAX_UPSTREAMS.min(index));
            let mut upstreams: Vec<usize> = Vec::with_capacity(wanted);
            // Bounded: at most `index` distinct values exist to draw.
            for _ in 0..wanted * 8 {
                if upstreams.len() == wanted {
                    break;
                }
                let upstream = random.random_range(0..index);
                if !upstreams.contains(&upstream) {
                    upstreams.push(upstream);
                }
            }
            upstreams.sort_unstable();
            let depends_on: Vec<&String> =
                upstreams.iter().map(|&upstream| &ids[upstream]).collect();
            json!({"id": id, "kind": "noop", "depends_on": depends_on})
        })
        .collect();
    json!({"id": dag_id, "description": "baton-bench random DAG", "tasks": tasks}).to_string()
}

/// `scenario` names the figures: [`SCENARIO`] on `baton dev`,
/// [`CLUSTER_SCENARIO`] on a cluster.
pub async fn run(
    target: &mut Target,
    scenario: &'static str,
    repeat: usize,
    slots: u32,
    report: &mut Report,
) -> anyhow::Result<()> {
    let all_tasks = DAGS * TASKS;
    println!(
        "== {scenario}: one run each of {DAGS} DAGs of {TASKS} noops with random dependencies, at once, {}, {repeat} rounds ==",
        target.describe(slots)
    );
    let dag_ids: Vec<String> = (0..DAGS)
        .map(|index| format!("bench-mixed-{index:03}"))
        .collect();
    for (seed, dag_id) in dag_ids.iter().enumerate() {
        register(&mut target.client, random_spec(dag_id, TASKS, seed as u64)).await?;
    }
    let rounds = Rounds::run(target, &dag_ids, repeat, ROUND_TIMEOUT, all_tasks, "tasks").await?;
    let label = format!(
        "{} tasks in {DAGS} runs / (last ended_at − first created_at)",
        number(all_tasks as f64)
    );
    let rate = Figure::new(scenario, "tasks_per_s", label, "tasks/s", Vec::new());
    rounds.report(report, target, rate);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_dags_are_acyclic_differ_by_seed_and_repeat_by_seed() {
        let spec: Value = serde_json::from_str(&random_spec("r", 100, 7)).unwrap();
        let tasks = spec["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 100);
        let mut edges = 0;
        for (index, task) in tasks.iter().enumerate() {
            let upstreams = task["depends_on"].as_array().unwrap();
            assert!(upstreams.len() <= MAX_UPSTREAMS);
            edges += upstreams.len();
            for upstream in upstreams {
                let upstream: usize = upstream.as_str().unwrap()[1..].parse().unwrap();
                assert!(upstream < index, "only earlier tasks, so no cycle");
            }
        }
        assert!(edges > 50, "dependencies were drawn: {edges}");
        assert_eq!(random_spec("r", 100, 7), random_spec("r", 100, 7));
        assert_ne!(random_spec("r", 100, 7), random_spec("r", 100, 8));
    }
}
