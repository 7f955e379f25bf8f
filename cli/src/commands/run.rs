//! `baton run`: trigger runs, list and show them (mapped instances under
//! their task), follow them live, cancel them, clear tasks (with their
//! downstream and/or upstream), list attempts.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_common::client::BatonClient;
use baton_common::pb::api::{
    CancelRunRequest, GetRunEventsRequest, GetRunRequest, ListRunsRequest, ListTaskAttemptsRequest,
    RetryTaskRequest, Run, RunState, TaskInstance, TaskState, TriggerRunRequest, WatchRunRequest,
    watch_run_response,
};
use baton_common::states::{parse_run_state, run_state_is_final, task_state_name};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use tonic::Code;

use super::params::{merge, parse_json_object, parse_param};
use super::task::parse_task;
use super::{Context, describe_status};
use crate::Outcome;
use crate::output::{
    attempt_json, counts_line, elapsed, event_cause, event_states, event_time_text, final_count,
    print_json, print_line, run_detail_lines, run_event_json, run_json, run_row, run_state,
    run_summary, table, task_json, task_listing, task_row, task_state,
};

/// Events asked for per GetRunEvents call (the API's most).
const EVENTS_PAGE: u32 = 1_000;

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of the latest version of a DAG.
    Trigger {
        dag_id: String,
        /// Run parameter as key=value; the value is read as JSON when it is
        /// valid JSON (3, true, [1,2]), else as a string. Repeat for several.
        #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
        params: Vec<(String, Value)>,
        /// All parameters as one JSON object (merged under --param).
        #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
        params_json: Option<Map<String, Value>>,
        /// Logical date (RFC 3339, e.g. 2026-11-25T00:00:00Z); now by default.
        #[arg(long)]
        logical_date: Option<String>,
        /// Returns the existing run if this DAG was already triggered with the key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the run until it ends; exit non-zero unless it succeeds.
        #[arg(long)]
        wait: bool,
    },
    /// List runs, newest first, with what triggered each (manual,
    /// scheduled, backfill, event, asset).
    List {
        /// Only runs of this DAG.
        #[arg(long)]
        dag: Option<String>,
        /// Only runs in this state (queued, running, success, failed,
        /// cancelled); repeat for several.
        #[arg(long = "state")]
        states: Vec<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show a run (data interval, trigger, missed SLAs) and its tasks
    /// (sensors waiting for their next poke show when it is). A mapped task
    /// sums up its instances' states; its failed and retrying instances
    /// (`task[3]`) are listed under it.
    Show {
        run_id: String,
        /// List every mapped instance, not only the failed and retrying
        /// ones (`-o json` always has them all).
        #[arg(long)]
        instances: bool,
    },
    /// Follow a run live until it ends; exit non-zero unless it succeeds.
    Watch { run_id: String },
    /// Cancel a run: stop its running tasks and cancel the rest.
    Cancel {
        run_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Clear a task and its downstream tasks so they run again (Airflow's
    /// "Clear"); the scheduler takes them up at once.
    Retry {
        run_id: String,
        /// The task, or one mapped instance of it as `task[3]`.
        #[arg(value_parser = parse_task)]
        task_id: String,
        /// Clear only this task, not its downstream tasks.
        #[arg(long)]
        no_downstream: bool,
        /// Also clear every task upstream of it, transitively, so they run
        /// again first.
        #[arg(long)]
        upstream: bool,
        /// Follow the run until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// List a run's history: every change of the run and of its tasks, and
    /// its SLA misses, oldest first, with their cause and actor.
    Events {
        run_id: String,
        /// Only this task's events (or a mapped instance's, `task[3]`).
        #[arg(long = "task", value_parser = parse_task)]
        task_id: Option<String>,
    },
    /// List a task's attempts (a sensor's pokes that found its condition
    /// unmet show as `rescheduled`).
    Attempts {
        run_id: String,
        /// The task, or one mapped instance of it as `task[3]`.
        #[arg(value_parser = parse_task)]
        task_id: String,
    },
}

pub async fn run(command: RunCommand, context: &Context) -> anyhow::Result<Outcome> {
    let mut client = context.client().await?;
    match command {
        RunCommand::Trigger {
            dag_id,
            params,
            params_json: base,
            logical_date,
            idempotency_key,
            wait,
        } => {
            let logical_date = match logical_date {
                None => None,
                Some(text) => {
                    let parsed = chrono::DateTime::parse_from_rfc3339(&text)
                        .with_context(|| format!("--logical-date `{text}` is not RFC 3339 (e.g. 2026-11-25T00:00:00Z)"))?;
                    Some(prost_types::Timestamp {
                        seconds: parsed.timestamp(),
                        nanos: parsed.timestamp_subsec_nanos() as i32,
                    })
                }
            };
            let request = TriggerRunRequest {
                dag_id,
                params_json: merge(base, params),
                logical_date,
                idempotency_key: idempotency_key.unwrap_or_default(),
            };
            let response = client.runs.trigger_run(request).await?.into_inner();
            let run = response.run.unwrap_or_default();
            if wait {
                if !context.json() {
                    print_line(format_args!(
                        "run {} of {} v{} {}",
                        run.run_id,
                        run.dag_id,
                        run.dag_version,
                        if response.created {
                            "created"
                        } else {
                            "already existed (same idempotency key)"
                        }
                    ));
                }
                return watch(&mut client, &run.run_id, context).await;
            }
            if context.json() {
                let mut value = run_json(&run);
                value["created"] = Value::Bool(response.created);
                print_json(&value);
            } else {
                print_line(format_args!(
                    "{} ({})",
                    run_summary(&run),
                    if response.created {
                        "created"
                    } else {
                        "existing run for this idempotency key"
                    }
                ));
                print_line(&run.run_id);
            }
            Ok(Outcome::Success)
        }
        RunCommand::List {
            dag,
            states,
            limit,
            page_token,
        } => {
            let mut parsed = Vec::with_capacity(states.len());
            for state in &states {
                let state = parse_run_state(state).with_context(|| {
                    format!("--state `{state}` is not one of queued, running, success, failed, cancelled")
                })?;
                parsed.push(state as i32);
            }
            let response = client
                .runs
                .list_runs(ListRunsRequest {
                    dag_id: dag.unwrap_or_default(),
                    states: parsed,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if context.json() {
                print_json(&json!({
                    "runs": response.runs.iter().map(run_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                }));
            } else {
                let mut out = table(&[
                    "RUN", "DAG", "VERSION", "STATE", "TRIGGER", "CREATED", "DURATION", "TASKS",
                ]);
                for run in &response.runs {
                    out.add_row(run_row(run));
                }
                print_line(out);
                if !response.next_page_token.is_empty() {
                    print_line(format_args!(
                        "more: --page-token {}",
                        response.next_page_token
                    ));
                }
            }
            Ok(Outcome::Success)
        }
        RunCommand::Show { run_id, instances } => {
            let response = client
                .runs
                .get_run(GetRunRequest {
                    run_id,
                    include_tasks: true,
                })
                .await?
                .into_inner();
            let run = response.run.unwrap_or_default();
            if context.json() {
                let mut value = run_json(&run);
                value["tasks"] = Value::Array(response.tasks.iter().map(task_json).collect());
                print_json(&value);
            } else {
                print_line(run_summary(&run));
                for line in run_detail_lines(&run) {
                    print_line(line);
                }
                let listing = task_listing(&response.tasks, instances);
                print_rows(listing.rows);
                if listing.hidden_instances > 0 {
                    print_line(format_args!(
                        "{} mapped instances not listed; --instances lists them all",
                        listing.hidden_instances
                    ));
                }
            }
            Ok(Outcome::Success)
        }
        RunCommand::Watch { run_id } => watch(&mut client, &run_id, context).await,
        RunCommand::Cancel { run_id, reason } => {
            let run = client
                .runs
                .cancel_run(CancelRunRequest {
                    run_id,
                    reason: reason.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .run
                .unwrap_or_default();
            if context.json() {
                print_json(&run_json(&run));
            } else {
                print_line(run_summary(&run));
            }
            Ok(Outcome::Success)
        }
        RunCommand::Retry {
            run_id,
            task_id,
            no_downstream,
            upstream,
            wait,
        } => {
            let response = client
                .runs
                .retry_task(RetryTaskRequest {
                    run_id: run_id.clone(),
                    task_id,
                    exclude_downstream: no_downstream,
                    include_upstream: upstream,
                })
                .await?
                .into_inner();
            if wait {
                return watch(&mut client, &run_id, context).await;
            }
            let run = response.run.unwrap_or_default();
            if context.json() {
                let mut value = run_json(&run);
                value["cleared_task_ids"] = json!(response.cleared_task_ids);
                print_json(&value);
            } else {
                print_line(format_args!(
                    "cleared {}: {}",
                    response.cleared_task_ids.len(),
                    response.cleared_task_ids.join(", ")
                ));
                print_line(run_summary(&run));
            }
            Ok(Outcome::Success)
        }
        RunCommand::Events { run_id, task_id } => {
            let mut events = Vec::new();
            let mut page_token = String::new();
            loop {
                let response = client
                    .runs
                    .get_run_events(GetRunEventsRequest {
                        run_id: run_id.clone(),
                        task_id: task_id.clone().unwrap_or_default(),
                        page_size: EVENTS_PAGE,
                        page_token,
                    })
                    .await?
                    .into_inner();
                events.extend(response.events);
                if response.next_page_token.is_empty() {
                    break;
                }
                page_token = response.next_page_token;
            }
            if context.json() {
                print_json(&Value::Array(events.iter().map(run_event_json).collect()));
            } else {
                let mut out = table(&[
                    "AT", "TASK", "ATTEMPT", "FROM", "TO", "CAUSE", "ACTOR", "DETAIL",
                ]);
                for event in &events {
                    let (from, to) = event_states(event);
                    let (task, attempt) = if event.task_id.is_empty() {
                        ("(run)".to_string(), String::new())
                    } else {
                        (event.task_id.clone(), event.attempt.to_string())
                    };
                    out.add_row(vec![
                        event_time_text(event.at.as_ref()),
                        task,
                        attempt,
                        from.to_string(),
                        to.to_string(),
                        event_cause(event).to_string(),
                        event.actor.clone(),
                        event.detail.clone(),
                    ]);
                }
                print_line(out);
            }
            Ok(Outcome::Success)
        }
        RunCommand::Attempts { run_id, task_id } => {
            let response = client
                .runs
                .list_task_attempts(ListTaskAttemptsRequest { run_id, task_id })
                .await?
                .into_inner();
            if context.json() {
                print_json(&Value::Array(
                    response.attempts.iter().map(attempt_json).collect(),
                ));
            } else {
                let mut out = table(&[
                    "ATTEMPT", "WORKER", "STARTED", "DURATION", "OUTCOME", "EXIT", "ERROR",
                ]);
                for attempt in &response.attempts {
                    let value = attempt_json(attempt);
                    out.add_row(vec![
                        attempt.attempt.to_string(),
                        attempt.worker_id.clone(),
                        value["started_at"].as_str().unwrap_or("-").to_string(),
                        elapsed(attempt.started_at.as_ref(), attempt.ended_at.as_ref()),
                        value["outcome"].as_str().unwrap_or("-").to_string(),
                        attempt
                            .exit_code
                            .map(|code| code.to_string())
                            .unwrap_or_else(|| "-".into()),
                        attempt.error.clone(),
                    ]);
                }
                print_line(out);
            }
            Ok(Outcome::Success)
        }
    }
}

fn print_tasks(tasks: &[TaskInstance]) {
    print_rows(tasks.iter().map(task_row).collect());
}

fn print_rows(rows: Vec<Vec<String>>) {
    let mut out = table(&["TASK", "STATE", "ATTEMPT", "STARTED", "DURATION", "DETAIL"]);
    for row in rows {
        out.add_row(row);
    }
    print_line(out);
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Follows a run until it ends, re-watching when the stream breaks (a
/// controller restart, a watcher that fell behind). Exits non-zero unless
/// the run succeeds.
pub async fn watch(
    client: &mut BatonClient,
    run_id: &str,
    context: &Context,
) -> anyhow::Result<Outcome> {
    const MAX_REWATCHES: u32 = 120;
    let mut tasks: HashMap<String, TaskInstance> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut bar: Option<ProgressBar> = None;
    let mut run = Run::default();
    let mut rewatches = 0;
    loop {
        let stream = client
            .runs
            .watch_run(WatchRunRequest {
                run_id: run_id.to_string(),
            })
            .await;
        let mut stream = match stream {
            Ok(stream) => stream.into_inner(),
            Err(status) if rewatch_worthy(&status) && rewatches < MAX_REWATCHES => {
                rewatches += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) if rewatch_worthy(&status) => break,
                Err(status) => return Err(status.into()),
            };
            match message.event {
                Some(watch_run_response::Event::Snapshot(snapshot)) => {
                    run = snapshot.run.unwrap_or_default();
                    order = snapshot
                        .tasks
                        .iter()
                        .map(|task| task.task_id.clone())
                        .collect();
                    tasks = snapshot
                        .tasks
                        .into_iter()
                        .map(|task| (task.task_id.clone(), task))
                        .collect();
                    let bar = bar.get_or_insert_with(|| progress_bar(u64::from(run.task_total)));
                    bar.set_position(u64::from(final_count(&run)));
                    bar.set_message(counts_line(&run));
                }
                Some(watch_run_response::Event::Task(task)) => {
                    let state = task_state(&task);
                    if matches!(state, TaskState::Failed | TaskState::UpForRetry) {
                        let line = format!(
                            "task {} attempt {}: {}{}",
                            task.task_id,
                            task.attempt,
                            task_state_name(state),
                            if task.error.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", task.error)
                            }
                        );
                        match &bar {
                            Some(bar) if !bar.is_hidden() => bar.println(line),
                            _ => eprintln!("{line}"),
                        }
                    }
                    tasks.insert(task.task_id.clone(), task);
                }
                Some(watch_run_response::Event::Run(update)) => {
                    run = update;
                    if let Some(bar) = &bar {
                        bar.set_position(u64::from(final_count(&run)));
                        bar.set_message(counts_line(&run));
                    }
                }
                None => {}
            }
        }
        if run_state_is_final(run_state(&run)) {
            break;
        }
        rewatches += 1;
        if rewatches > MAX_REWATCHES {
            bail!("lost the watch of run {run_id} too many times");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let state = run_state(&run);
    if context.json() {
        let mut value = run_json(&run);
        value["tasks"] = Value::Array(
            order
                .iter()
                .filter_map(|id| tasks.get(id))
                .map(task_json)
                .collect(),
        );
        print_json(&value);
    } else {
        print_line(run_summary(&run));
        let unsuccessful: Vec<TaskInstance> = order
            .iter()
            .filter_map(|id| tasks.get(id))
            .filter(|task| task_state(task) != TaskState::Success)
            .cloned()
            .collect();
        if !unsuccessful.is_empty() && unsuccessful.len() <= 50 {
            print_tasks(&unsuccessful);
        }
    }
    Ok(if state == RunState::Success {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}

fn rewatch_worthy(status: &tonic::Status) -> bool {
    let again = matches!(
        status.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::Cancelled | Code::Unknown
    );
    if again {
        tracing::debug!(status = %describe_status(status), "watch interrupted; watching again");
    }
    again
}
