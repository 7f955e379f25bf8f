//! `etl-runs`: runs/s of many small runs triggered at once on `baton dev`.
//!
//! One `baton dev --slots N` process; the DAG has the shape of
//! `examples/etl.yaml` with `noop` tasks (two extracts in parallel →
//! transform → validate → load) and `max_active_runs` high enough for all
//! of them. Each round triggers [`RUNS`] runs as fast as the API takes
//! them (16 `TriggerRun` calls in flight), then asks every 10 ms
//! whether any run of the DAG is still queued or running. Per round, from
//! the run records: runs/s = runs / (latest `ended_at` − earliest
//! `created_at`), and the p50 and p99 of each run's `ended_at` −
//! `created_at`. Every run must succeed. Before the next round the process
//! is left to go idle.

use std::time::Duration;

use serde_json::json;

use crate::report::{Figure, Goal, Report, number};
use crate::runs::{Rounds, register};
use crate::target::Target;

pub const SCENARIO: &str = "etl-runs";
pub const CLUSTER_SCENARIO: &str = "cluster-etl-runs";
const DAG_ID: &str = "bench-etl";
/// Runs triggered per round.
pub const RUNS: usize = 1_000;
const ROUND_TIMEOUT: Duration = Duration::from_secs(600);
/// Issue 8's targets: on the embedded store, and on etcd with 3
/// controllers.
pub const TARGET_RUNS_PER_S: f64 = 1_000.0;
pub const CLUSTER_TARGET_RUNS_PER_S: f64 = 300.0;

/// The ETL shape of `examples/etl.yaml`, every task a noop, as JSON.
pub fn etl_spec(dag_id: &str, max_active_runs: usize) -> String {
    let noop =
        |id: &str, depends_on: &[&str]| json!({"id": id, "kind": "noop", "depends_on": depends_on});
    json!({
        "id": dag_id,
        "description": "baton-bench ETL shape",
        "max_active_runs": max_active_runs,
        "tasks": [
            noop("extract_orders", &[]),
            noop("extract_customers", &[]),
            noop("transform", &["extract_orders", "extract_customers"]),
            noop("validate", &["transform"]),
            noop("load", &["validate"]),
        ],
    })
    .to_string()
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
    println!(
        "== {scenario}: {} runs of the 5-noop ETL shape triggered at once, {}, {repeat} rounds ==",
        number(RUNS as f64),
        target.describe(slots)
    );
    register(&mut target.client, etl_spec(DAG_ID, RUNS)).await?;
    let dag_ids = vec![DAG_ID.to_string(); RUNS];
    let rounds = Rounds::run(target, &dag_ids, repeat, ROUND_TIMEOUT, RUNS, "runs").await?;
    let target_rate = if target.is_cluster() {
        CLUSTER_TARGET_RUNS_PER_S
    } else {
        TARGET_RUNS_PER_S
    };
    let label = format!(
        "{} runs / (last ended_at − first created_at)",
        number(RUNS as f64)
    );
    let rate = Figure::new(scenario, "runs_per_s", label, "runs/s", Vec::new());
    rounds.report(report, target, rate.goal(Goal::AtLeast(target_rate)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn the_spec_has_the_etl_shape() {
        let spec: Value = serde_json::from_str(&etl_spec("e", 1_000)).unwrap();
        assert_eq!(spec["max_active_runs"], 1_000);
        let tasks = spec["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 5);
        assert!(tasks.iter().all(|task| task["kind"] == "noop"));
        assert_eq!(
            tasks[2]["depends_on"],
            json!(["extract_orders", "extract_customers"])
        );
        assert_eq!(tasks[4]["depends_on"], json!(["validate"]));
    }
}
