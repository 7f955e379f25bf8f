//! `map`: dynamic fan-out (`map_over`) on `baton dev`; `cluster-map`: the
//! same on a cluster (each controller's and worker's clock is this
//! machine's).
//!
//! One `baton dev --slots N` process (or the cluster); the DAG is `list` (a command writing
//! `{"items": [0, 1, …, width − 1]}` as its output) → `each` (a `noop`
//! with `map_over: tasks.list.output.items`, so `width` instances `each[i]`)
//! → `sum` (a `noop` fan-in). Runs are triggered one at a time; once a run
//! succeeded, one `GetRun{include_tasks: true}` gives every task's and
//! instance's `started_at` and `ended_at` (the worker's clock, which in
//! `baton dev` is the controller's process). Per run:
//!
//! - **dispatch** = the latest `started_at` among the instances −
//!   `list.ended_at`: expanding the list into `width` instances and
//!   dispatching every one of them (target ≤ 1 s at 10,000);
//! - list ended → the first instance started;
//! - the last instance ended → `sum` started;
//! - the run's `ended_at − started_at`.
//!
//! Before the next run the process is left to go idle.

use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_common::pb::api;
use serde_json::json;

use crate::report::{Figure, Goal, Report, number};
use crate::runs::{micros, register, run_seconds, trigger, wait_success, within};
use crate::target::Target;

pub const SCENARIO: &str = "map";
pub const CLUSTER_SCENARIO: &str = "cluster-map";
const DAG_ID: &str = "bench-map";
const LIST: &str = "list";
const MAPPED: &str = "each";
const FAN_IN: &str = "sum";
const POLL: Duration = Duration::from_millis(5);
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
pub const TARGET_DISPATCH_S: f64 = 1.0;
/// The default `max_map_length` of a mapped task.
pub const MAX_WIDTH: usize = 10_000;

/// `list` → `each` (`map_over` the list's `width` items) → `sum`, as JSON.
/// The list's output is `{"items": [0, …, width − 1]}`, 48,902 bytes at
/// 10,000 items (outputs are capped at 64 KiB by default), and 10,000 is
/// the default `max_map_length`, so `width` is at most [`MAX_WIDTH`].
pub fn map_spec(dag_id: &str, width: usize) -> String {
    let last = width.saturating_sub(1);
    let command =
        format!("printf '{{\"items\": [%s]}}' \"$(seq -s, 0 {last})\" > \"$BATON_OUTPUT\"");
    json!({
        "id": dag_id,
        "description": "baton-bench map",
        "tasks": [
            {"id": LIST, "command": command},
            {
                "id": MAPPED,
                "kind": "noop",
                "depends_on": [LIST],
                "map_over": format!("tasks.{LIST}.output.items"),
            },
            {"id": FAN_IN, "kind": "noop", "depends_on": [MAPPED]},
        ],
    })
    .to_string()
}

/// What one run's tasks show, in microseconds of the worker's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapTimes {
    pub list_ended: i64,
    pub first_instance_started: i64,
    pub last_instance_started: i64,
    pub last_instance_ended: i64,
    pub fan_in_started: i64,
}

/// Reads [`MapTimes`] from a `GetRun{include_tasks: true}` answer, checking
/// that every one of the `width` instances `each[i]` is there and
/// succeeded.
pub fn map_times(response: &api::GetRunResponse, width: usize) -> anyhow::Result<MapTimes> {
    let find = |task_id: &str| {
        response
            .tasks
            .iter()
            .find(|task| task.task_id == task_id)
            .with_context(|| format!("task {task_id} missing from GetRun"))
    };
    let list_ended = micros(find(LIST)?.ended_at.as_ref(), "list.ended_at")?;
    let fan_in_started = micros(find(FAN_IN)?.started_at.as_ref(), "sum.started_at")?;
    let prefix = format!("{MAPPED}[");
    let mut seen = vec![false; width];
    let mut first_started = i64::MAX;
    let mut last_started = i64::MIN;
    let mut last_ended = i64::MIN;
    for task in response
        .tasks
        .iter()
        .filter(|task| task.task_id.starts_with(&prefix))
    {
        let index = task
            .map_index
            .with_context(|| format!("{} has no map_index", task.task_id))?
            as usize;
        if index >= width || seen[index] {
            bail!("unexpected or repeated instance {}", task.task_id);
        }
        seen[index] = true;
        if task.state != api::TaskState::Success as i32 {
            bail!("{} did not succeed (state {})", task.task_id, task.state);
        }
        let started = micros(task.started_at.as_ref(), "instance started_at")?;
        let ended = micros(task.ended_at.as_ref(), "instance ended_at")?;
        first_started = first_started.min(started);
        last_started = last_started.max(started);
        last_ended = last_ended.max(ended);
    }
    let found = seen.iter().filter(|seen| **seen).count();
    if found != width {
        bail!("GetRun shows {found} instances of {MAPPED}; the list has {width} items");
    }
    Ok(MapTimes {
        list_ended,
        first_instance_started: first_started,
        last_instance_started: last_started,
        last_instance_ended: last_ended,
        fan_in_started,
    })
}

/// `scenario` names the figures: [`SCENARIO`] on `baton dev`,
/// [`CLUSTER_SCENARIO`] on a cluster.
pub async fn run(
    target: &mut Target,
    scenario: &'static str,
    repeat: usize,
    slots: u32,
    width: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "== {scenario}: list → {} mapped noop instances → sum, {}, {repeat} runs ==",
        number(width as f64),
        target.describe(slots)
    );
    let mut client = target.client.clone();
    register(&mut client, map_spec(DAG_ID, width)).await?;
    let mut dispatch = Vec::new();
    let mut first = Vec::new();
    let mut fan_in = Vec::new();
    let mut runs = Vec::new();
    for round in 0..repeat {
        let run_id = trigger(&mut client, DAG_ID).await?;
        let finished = wait_success(&mut client, target, &run_id, POLL, RUN_TIMEOUT, || {}).await?;
        // Runs do not overlap with work left over from the previous one.
        target.settle().await?;
        let request = api::GetRunRequest {
            run_id: run_id.clone(),
            include_tasks: true,
        };
        let response = within("GetRun with tasks", client.runs.get_run(request))
            .await?
            .into_inner();
        let times = map_times(&response, width)?;
        let dispatch_s = (times.last_instance_started - times.list_ended) as f64 / 1e6;
        let first_ms = (times.first_instance_started - times.list_ended) as f64 / 1e3;
        let fan_in_ms = (times.fan_in_started - times.last_instance_ended) as f64 / 1e3;
        let seconds = run_seconds(&finished.run)?;
        println!(
            "  run #{}: list ended → last instance started {} s (first {} ms); last instance ended → sum started {} ms; run {} s",
            round + 1,
            number(dispatch_s),
            number(first_ms),
            number(fan_in_ms),
            number(seconds)
        );
        dispatch.push(dispatch_s);
        first.push(first_ms);
        fan_in.push(fan_in_ms);
        runs.push(seconds);
    }
    let dispatch = Figure::new(
        scenario,
        "dispatch_s",
        format!(
            "list ended → last of {} instances started",
            number(width as f64)
        ),
        "s",
        dispatch,
    );
    // The target was set for `baton dev`; on a cluster the figure is shown.
    report.figures.push(match target.is_cluster() {
        false => dispatch.goal(Goal::AtMost(TARGET_DISPATCH_S)),
        true => dispatch,
    });
    report.figures.push(Figure::new(
        scenario,
        "first_instance_ms",
        "list ended → first instance started",
        "ms",
        first,
    ));
    report.figures.push(Figure::new(
        scenario,
        "fan_in_ms",
        "last instance ended → sum started",
        "ms",
        fan_in,
    ));
    report.figures.push(Figure::new(
        scenario,
        "run_s",
        "run ended_at − started_at",
        "s",
        runs,
    ));
    if let Some(seconds) = report.median(scenario, "dispatch_s")
        && seconds > 0.0
    {
        let rate = width as f64 / seconds;
        let lines = target.compare(
            report,
            &format!("{scenario} dispatch {} instances/s", number(rate)),
            rate,
            true,
        );
        report.comparisons.extend(lines);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_common::time::micros_to_timestamp;

    #[test]
    fn the_spec_maps_the_list_output_into_noop_instances() {
        let spec: serde_json::Value = serde_json::from_str(&map_spec("m", 10_000)).unwrap();
        let tasks = spec["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[1]["kind"], "noop");
        assert_eq!(tasks[1]["map_over"], "tasks.list.output.items");
        assert_eq!(tasks[2]["depends_on"][0], "each");
        let command = tasks[0]["command"].as_str().unwrap();
        assert!(command.contains("seq -s, 0 9999"), "{command}");
    }

    fn instance(
        task_id: &str,
        map_index: Option<u32>,
        started: i64,
        ended: i64,
    ) -> api::TaskInstance {
        api::TaskInstance {
            task_id: task_id.to_string(),
            state: api::TaskState::Success as i32,
            map_index,
            started_at: Some(micros_to_timestamp(started)),
            ended_at: Some(micros_to_timestamp(ended)),
            ..Default::default()
        }
    }

    #[test]
    fn times_come_from_the_list_the_instances_and_the_fan_in() {
        let response = api::GetRunResponse {
            run: None,
            tasks: vec![
                instance("list", None, 1_000, 2_000),
                instance("each", None, 0, 0),
                instance("each[0]", Some(0), 2_500, 2_600),
                instance("each[1]", Some(1), 2_200, 3_900),
                instance("each[2]", Some(2), 3_000, 3_100),
                instance("sum", None, 4_000, 4_100),
            ],
        };
        let times = map_times(&response, 3).unwrap();
        assert_eq!(
            times,
            MapTimes {
                list_ended: 2_000,
                first_instance_started: 2_200,
                last_instance_started: 3_000,
                last_instance_ended: 3_900,
                fan_in_started: 4_000,
            }
        );
        let error = map_times(&response, 4).unwrap_err().to_string();
        assert!(error.contains("3 instances"), "{error}");
    }
}
