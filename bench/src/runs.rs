//! The benchmark DAGs (as JSON specs of `noop` tasks) and the client calls a
//! scenario makes: register, trigger (one run, or many at once), and wait
//! for a run's final state by polling `GetRun` (without tasks), or for
//! many runs by polling `ListRuns` for any still active, at a fixed
//! interval.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_common::client::BatonClient;
use baton_common::pb::api::{self, RunState};
use baton_common::states::{run_state_is_final, run_state_name};
use baton_common::time::{Micros, timestamp_opt_to_micros};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::procs::Alive;
use crate::report::{Figure, Report, number};
use crate::stats;
use crate::target::Target;

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

/// `TriggerRun` calls in flight at once in [`trigger_many`].
const TRIGGERS_IN_FLIGHT: usize = 16;
/// `ListRuns`' largest page.
const LIST_PAGE: u32 = 1_000;

/// Triggers one run of each DAG in `dag_ids` (a DAG may appear many times),
/// [`TRIGGERS_IN_FLIGHT`] calls at a time; returns the runs' ids.
pub async fn trigger_many(
    client: &BatonClient,
    dag_ids: &[String],
) -> anyhow::Result<HashSet<String>> {
    let mut lanes = JoinSet::new();
    for lane in 0..TRIGGERS_IN_FLIGHT {
        let mut client = client.clone();
        let dags: Vec<String> = dag_ids
            .iter()
            .skip(lane)
            .step_by(TRIGGERS_IN_FLIGHT)
            .cloned()
            .collect();
        lanes.spawn(async move {
            let mut ids = Vec::with_capacity(dags.len());
            for dag_id in &dags {
                ids.push(trigger(&mut client, dag_id).await?);
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids = HashSet::with_capacity(dag_ids.len());
    while let Some(lane) = lanes.join_next().await {
        ids.extend(lane.context("a trigger task failed")??);
    }
    if ids.len() != dag_ids.len() {
        bail!(
            "{} runs triggered, {} ids returned",
            dag_ids.len(),
            ids.len()
        );
    }
    Ok(ids)
}

/// Asks every `interval` (`ListRuns`, one run per page) until no run of
/// `dag_id` (of any DAG when empty) is queued or running.
pub async fn wait_no_active_run(
    client: &mut BatonClient,
    process: &mut dyn Alive,
    dag_id: &str,
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let max_polls = (timeout.as_micros() / interval.as_micros().max(1)) as u32 + 1;
    for polls in 1..=max_polls {
        let request = api::ListRunsRequest {
            dag_id: dag_id.to_string(),
            states: vec![RunState::Queued as i32, RunState::Running as i32],
            page_size: 1,
            page_token: String::new(),
        };
        let page = within("ListRuns", client.runs.list_runs(request))
            .await?
            .into_inner();
        if page.runs.is_empty() {
            return Ok(());
        }
        if polls.is_multiple_of(100) {
            process.check_alive()?;
        }
        if started.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(interval).await;
    }
    bail!("runs were still active after {timeout:?}")
}

/// The records of the runs `ids` of `dag_id` (of any DAG when empty), all
/// of which must have succeeded.
pub async fn succeeded_runs(
    client: &mut BatonClient,
    dag_id: &str,
    ids: &HashSet<String>,
) -> anyhow::Result<Vec<api::Run>> {
    let mut runs = Vec::with_capacity(ids.len());
    let mut page_token = String::new();
    // Bounded by what the process holds: 100 times the runs asked about.
    for _ in 0..=ids.len() * 100 / LIST_PAGE as usize + 1 {
        let request = api::ListRunsRequest {
            dag_id: dag_id.to_string(),
            states: Vec::new(),
            page_size: LIST_PAGE,
            page_token: page_token.clone(),
        };
        let page = within("ListRuns", client.runs.list_runs(request))
            .await?
            .into_inner();
        runs.extend(
            page.runs
                .into_iter()
                .filter(|run| ids.contains(&run.run_id)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if runs.len() != ids.len() {
        bail!(
            "{} of the {} runs triggered are listed",
            runs.len(),
            ids.len()
        );
    }
    if let Some(run) = runs
        .iter()
        .find(|run| run.state != RunState::Success as i32)
    {
        let state = RunState::try_from(run.state).unwrap_or(RunState::Unspecified);
        bail!(
            "run {} ended {} ({})",
            run.run_id,
            run_state_name(state),
            run.reason
        );
    }
    Ok(runs)
}

/// Runs that overlapped: seconds from the first `created_at` to the last
/// `ended_at`, and each run's `ended_at` − `created_at` in ms.
pub fn overlapping_runs(runs: &[api::Run]) -> anyhow::Result<(f64, Vec<f64>)> {
    let mut first_created = i64::MAX;
    let mut last_ended = i64::MIN;
    let mut durations = Vec::with_capacity(runs.len());
    for run in runs {
        let created = micros(run.created_at.as_ref(), "run.created_at")?;
        let ended = micros(run.ended_at.as_ref(), "run.ended_at")?;
        first_created = first_created.min(created);
        last_ended = last_ended.max(ended);
        durations.push((ended - created) as f64 / 1e3);
    }
    if last_ended <= first_created {
        bail!("the runs ended ({last_ended}) before they were created ({first_created})");
    }
    Ok(((last_ended - first_created) as f64 / 1e6, durations))
}

/// How often [`Round::run`] asks whether runs are still active.
const ROUND_POLL: Duration = Duration::from_millis(10);

/// What one round of overlapping runs measured.
pub struct Round {
    pub triggered_s: f64,
    /// From the first run's `created_at` to the last one's `ended_at`.
    pub span_s: f64,
    /// Each run's `ended_at` − `created_at`.
    pub durations_ms: Vec<f64>,
}

impl Round {
    /// Triggers a run of each of `dag_ids` at once and waits until they
    /// all succeeded and the target is idle again.
    pub async fn run(
        target: &mut Target,
        dag_ids: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut client = target.client.clone();
        let started = Instant::now();
        let ids = trigger_many(&client, dag_ids).await?;
        let triggered_s = started.elapsed().as_secs_f64();
        // Any DAG: the rounds of one scenario do not overlap.
        wait_no_active_run(&mut client, target, "", ROUND_POLL, timeout).await?;
        target.settle().await?;
        let runs = succeeded_runs(&mut client, "", &ids).await?;
        let (span_s, durations_ms) = overlapping_runs(&runs)?;
        Ok(Self {
            triggered_s,
            span_s,
            durations_ms,
        })
    }

    pub fn p50_ms(&self) -> f64 {
        stats::percentile(&self.durations_ms, 50.0)
    }

    pub fn p99_ms(&self) -> f64 {
        stats::percentile(&self.durations_ms, 99.0)
    }
}

/// The rounds of a scenario of overlapping runs: the rate of what each
/// round did (runs or tasks per second), and its other figures.
pub struct Rounds {
    /// Runs triggered per round.
    runs: usize,
    rates: Vec<f64>,
    triggering: Vec<f64>,
    p50s: Vec<f64>,
    p99s: Vec<f64>,
}

impl Rounds {
    /// `repeat` [`Round`]s of a run of each of `dag_ids`, each counted as
    /// `work` `unit`s (runs, or tasks) done; prints each.
    pub async fn run(
        target: &mut Target,
        dag_ids: &[String],
        repeat: usize,
        timeout: Duration,
        work: usize,
        unit: &str,
    ) -> anyhow::Result<Self> {
        let mut rounds = Self {
            runs: dag_ids.len(),
            rates: Vec::new(),
            triggering: Vec::new(),
            p50s: Vec::new(),
            p99s: Vec::new(),
        };
        for round_number in 1..=repeat {
            let round = Round::run(target, dag_ids, timeout).await?;
            let rate = work as f64 / round.span_s;
            println!(
                "  round #{round_number}: {} {unit}/s (first created → last ended {} s), triggered in {} s; run created → ended p50 {} ms, p99 {} ms",
                number(rate),
                number(round.span_s),
                number(round.triggered_s),
                number(round.p50_ms()),
                number(round.p99_ms())
            );
            rounds.rates.push(rate);
            rounds.triggering.push(round.triggered_s);
            rounds.p50s.push(round.p50_ms());
            rounds.p99s.push(round.p99_ms());
        }
        Ok(rounds)
    }

    /// Adds the rounds' figures to the report: `rate` (a figure without
    /// samples: the rounds' rates become them) with its comparison with
    /// `target`'s references, then triggering time and run p50 / p99.
    pub fn report(self, report: &mut Report, target: &Target, mut rate: Figure) {
        let (scenario, key, unit) = (rate.scenario, rate.key, rate.unit);
        rate.samples = self.rates;
        report.figures.push(rate);
        target.compare_median(report, scenario, key, unit.trim_end_matches("/s"));
        report.figures.push(Figure::new(
            scenario,
            "trigger_s",
            format!("{} TriggerRun calls", number(self.runs as f64)),
            "s",
            self.triggering,
        ));
        report.figures.push(Figure::new(
            scenario,
            "run_p50_ms",
            "run created_at → ended_at p50",
            "ms",
            self.p50s,
        ));
        report.figures.push(Figure::new(
            scenario,
            "run_p99_ms",
            "run created_at → ended_at p99",
            "ms",
            self.p99s,
        ));
    }
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
