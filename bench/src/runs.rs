//! The benchmark DAGs (as JSON specs of `noop` tasks) and the client calls a
//! scenario makes: register, trigger, and wait for a run's final state by
//! polling `GetRun` (without tasks) at a fixed interval.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_common::client::BatonClient;
use baton_common::pb::api::{self, RunState};
use baton_common::states::{run_state_is_final, run_state_name};
use baton_common::time::{Micros, timestamp_opt_to_micros};
use serde_json::{Value, json};

use crate::procs::Alive;

/// Bound on one API call (registering a 100,000-task spec included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Awaits an API call for at most [`CALL_TIMEOUT`].
pub async fn within<T, E>(what: &str, call: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.with_context(|| format!("{what} failed")),
        Err(_) => bail!("{what} did not answer within {CALL_TIMEOUT:?}"),
    }
}

/// `start` → `width` parallel noops → `end`, as JSON.
pub fn fanout_spec(dag_id: &str, width: usize) -> String {
    fanout_spec_of(dag_id, width, &json!({"kind": "noop"}))
}

/// `start` → `width` tasks with this body (`kind`, `command`...) → `end`,
/// as JSON; `start` and `end` are noops.
pub fn fanout_spec_of(dag_id: &str, width: usize, body: &Value) -> String {
    let ids: Vec<String> = (0..width).map(|index| format!("n{index:06}")).collect();
    let mut tasks = Vec::with_capacity(width + 2);
    tasks.push(json!({"id": "start", "kind": "noop"}));
    for id in &ids {
        let mut task = body.clone();
        task["id"] = json!(id);
        task["depends_on"] = json!(["start"]);
        tasks.push(task);
    }
    tasks.push(json!({"id": "end", "kind": "noop", "depends_on": ids}));
    json!({"id": dag_id, "description": "baton-bench fan-out", "tasks": tasks}).to_string()
}

/// The task ids of [`chain_spec`], in order.
pub fn chain_ids(length: usize) -> Vec<String> {
    (0..length).map(|index| format!("c{index:05}")).collect()
}

/// `length` noops in a line, as JSON.
pub fn chain_spec(dag_id: &str, length: usize) -> String {
    let ids = chain_ids(length);
    let tasks: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| match index {
            0 => json!({"id": id, "kind": "noop"}),
            _ => json!({"id": id, "kind": "noop", "depends_on": [ids[index - 1]]}),
        })
        .collect();
    json!({"id": dag_id, "description": "baton-bench chain", "tasks": tasks}).to_string()
}

/// Registers a JSON spec; returns the version.
pub async fn register(client: &mut BatonClient, spec: String) -> anyhow::Result<u32> {
    let request = api::RegisterDagRequest {
        spec,
        format: api::SpecFormat::Json as i32,
        validate_only: false,
    };
    let response = within("RegisterDag", client.dags.register_dag(request))
        .await?
        .into_inner();
    Ok(response.version)
}

/// Triggers a run; returns its id.
pub async fn trigger(client: &mut BatonClient, dag_id: &str) -> anyhow::Result<String> {
    let request = api::TriggerRunRequest {
        dag_id: dag_id.to_string(),
        ..Default::default()
    };
    let response = within("TriggerRun", client.runs.trigger_run(request))
        .await?
        .into_inner();
    let run = response.run.context("TriggerRun returned no run")?;
    Ok(run.run_id)
}

/// A run in a final state, and when the benchmark saw it.
pub struct Finished {
    pub run: api::Run,
    pub observed: Instant,
}

/// Polls `GetRun` (without tasks) every `interval` until the run is final,
/// calling `on_poll` after each poll. Fails when a process of `process`
/// exits, when `timeout` passes, or when the run ends in any state but
/// success.
pub async fn wait_success(
    client: &mut BatonClient,
    process: &mut dyn Alive,
    run_id: &str,
    interval: Duration,
    timeout: Duration,
    mut on_poll: impl FnMut(),
) -> anyhow::Result<Finished> {
    let started = Instant::now();
    let max_polls = (timeout.as_micros() / interval.as_micros().max(1)) as u32 + 1;
    let mut next = tokio::time::Instant::now();
    for polls in 1..=max_polls {
        let request = api::GetRunRequest {
            run_id: run_id.to_string(),
            include_tasks: false,
        };
        let run = within("GetRun", client.runs.get_run(request))
            .await?
            .into_inner()
            .run
            .context("GetRun returned no run")?;
        let observed = Instant::now();
        on_poll();
        let state = RunState::try_from(run.state).unwrap_or(RunState::Unspecified);
        if run_state_is_final(state) {
            if state != RunState::Success {
                bail!(
                    "run {run_id} ended {} ({})",
                    run_state_name(state),
                    run.reason
                );
            }
            return Ok(Finished { run, observed });
        }
        if polls.is_multiple_of(50) {
            process.check_alive()?;
        }
        if started.elapsed() > timeout {
            break;
        }
        next += interval;
        tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
    }
    bail!("run {run_id} did not finish within {timeout:?}")
}

/// Microseconds of a timestamp that must be set.
pub fn micros(timestamp: Option<&prost_types::Timestamp>, what: &str) -> anyhow::Result<Micros> {
    match timestamp_opt_to_micros(timestamp) {
        0 => bail!("{what} is not set"),
        value => Ok(value),
    }
}

/// `ended_at − started_at` of a finished run, in seconds.
pub fn run_seconds(run: &api::Run) -> anyhow::Result<f64> {
    let started = micros(run.started_at.as_ref(), "run.started_at")?;
    let ended = micros(run.ended_at.as_ref(), "run.ended_at")?;
    if ended <= started {
        bail!("run.ended_at ({ended}) is not after run.started_at ({started})");
    }
    Ok((ended - started) as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_have_the_expected_shape() {
        let fanout: Value = serde_json::from_str(&fanout_spec("f", 3)).unwrap();
        let tasks = fanout["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 5);
        assert_eq!(tasks[4]["depends_on"].as_array().unwrap().len(), 3);
        assert_eq!(
            tasks[1],
            json!({"id": "n000000", "kind": "noop", "depends_on": ["start"]})
        );
        let command: Value =
            serde_json::from_str(&fanout_spec_of("f", 2, &json!({"command": ["true"]}))).unwrap();
        assert_eq!(
            command["tasks"][2],
            json!({"id": "n000001", "command": ["true"], "depends_on": ["start"]})
        );
        assert_eq!(command["tasks"][3]["kind"], "noop");
        let chain: Value = serde_json::from_str(&chain_spec("c", 3)).unwrap();
        let tasks = chain["tasks"].as_array().unwrap();
        assert_eq!(tasks[2]["depends_on"][0], "c00001");
        assert!(tasks[0].get("depends_on").is_none());
    }
}
