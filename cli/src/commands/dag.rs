//! `baton dag`: validate files offline, register them, and manage DAGs.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use baton_common::pb::api::{
    Dag, DeleteDagRequest, GetDagRequest, ListDagsRequest, PauseDagRequest, RegisterDagRequest,
    SpecFormat, UnpauseDagRequest,
};
use baton_common::spec::{self, SpecFormat as Format, SpecLimits};
use clap::Subcommand;
use serde_json::json;

use super::dates::zone_or_utc;
use super::{Context, describe_status};
use crate::Outcome;
use crate::output::{
    dag_json, flow_text, print_json, print_line, table, task_summary_json, zoned_time_text,
};

#[derive(Debug, Subcommand)]
pub enum DagCommand {
    /// Check DAG files without a controller; exits non-zero if one is invalid.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Most tasks a DAG may have (the controller's limit may differ).
        #[arg(long)]
        max_tasks: Option<usize>,
        /// Largest DAG file, in bytes.
        #[arg(long)]
        max_spec_bytes: Option<usize>,
    },
    /// Register DAG files; a changed file becomes a new version, an unchanged
    /// one keeps its version.
    Apply {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Validate against the controller and report the version, storing
        /// nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List DAGs with their schedule, when the schedule runs next (in the
    /// DAG's time zone) and whether they are paused.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue from the token a previous page printed.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show a DAG (schedule, time zone, catchup, next data interval, active
    /// runs) and the tasks of one of its versions (kind, outputs, and under
    /// FLOW: trigger rule, branch, run_if, map_over).
    Show {
        dag_id: String,
        /// Version to show (the latest by default).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Stop dispatching the DAG's tasks; new runs stay queued.
    Pause { dag_id: String },
    /// Resume dispatching the DAG's tasks.
    Unpause { dag_id: String },
    /// Delete a DAG, its versions and its finished runs.
    Delete {
        dag_id: String,
        /// Confirm: run history is deleted too.
        #[arg(long)]
        yes: bool,
    },
}

fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|ext| ext.to_str()) {
        Some("json") => Format::Json,
        Some("yaml" | "yml") => Format::Yaml,
        _ => Format::Detect,
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub async fn run(command: DagCommand, context: &Context) -> anyhow::Result<Outcome> {
    match command {
        DagCommand::Validate {
            files,
            max_tasks,
            max_spec_bytes,
        } => {
            let mut limits = SpecLimits::default();
            if let Some(max) = max_tasks {
                limits.max_tasks = max;
            }
            if let Some(max) = max_spec_bytes {
                limits.max_spec_bytes = max;
            }
            validate(&files, &limits, context)
        }
        DagCommand::Apply { files, dry_run } => apply(&files, dry_run, context).await,
        DagCommand::List { limit, page_token } => {
            let mut client = context.client().await?;
            let response = client
                .dags
                .list_dags(ListDagsRequest {
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if context.json() {
                print_json(&json!({
                    "dags": response.dags.iter().map(dag_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                }));
            } else {
                let mut out = table(&[
                    "DAG",
                    "VERSION",
                    "TASKS",
                    "SCHEDULE",
                    "NEXT RUN",
                    "PAUSED",
                    "DESCRIPTION",
                ]);
                for dag in &response.dags {
                    out.add_row(vec![
                        dag.dag_id.clone(),
                        format!("v{}", dag.latest_version),
                        dag.task_count.to_string(),
                        dag.schedule.clone(),
                        zoned_time_text(
                            dag.next_data_interval_end.as_ref(),
                            zone_or_utc(&dag.timezone),
                        ),
                        if dag.paused {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        dag.description.clone(),
                    ]);
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
        DagCommand::Show { dag_id, version } => {
            let mut client = context.client().await?;
            let response = client
                .dags
                .get_dag(GetDagRequest {
                    dag_id,
                    version: version.unwrap_or(0),
                })
                .await?
                .into_inner();
            let dag = response.dag.unwrap_or_default();
            let version = response.version.unwrap_or_default();
            if context.json() {
                let spec: serde_json::Value =
                    serde_json::from_str(&version.spec_json).unwrap_or_default();
                print_json(&json!({
                    "dag": dag_json(&dag),
                    "version": version.version,
                    "digest": version.digest,
                    "spec": spec,
                    "tasks": version.tasks.iter().map(task_summary_json).collect::<Vec<_>>(),
                }));
            } else {
                print_line(format_args!(
                    "dag {} version {} of {}{}{}",
                    dag.dag_id,
                    version.version,
                    dag.latest_version,
                    if dag.paused { " (paused)" } else { "" },
                    if dag.description.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", dag.description)
                    }
                ));
                for line in schedule_lines(&dag) {
                    print_line(line);
                }
                // The FLOW column (trigger rule, branch, run_if, map_over)
                // only when some task has one.
                let flows: Vec<String> = version.tasks.iter().map(flow_text).collect();
                let with_flow = flows.iter().any(|flow| !flow.is_empty());
                let mut headers = vec![
                    "TASK",
                    "KIND",
                    "DEPENDS ON",
                    "QUEUE",
                    "PRIORITY",
                    "RETRIES",
                    "TIMEOUT",
                    "OUTPUTS",
                ];
                if with_flow {
                    headers.push("FLOW");
                }
                let mut out = table(&headers);
                for (task, flow) in version.tasks.iter().zip(flows) {
                    let mut row = vec![
                        task.task_id.clone(),
                        task.kind.clone(),
                        task.depends_on.join(", "),
                        task.queue.clone(),
                        task.priority.to_string(),
                        task.retries.to_string(),
                        task.timeout
                            .as_ref()
                            .map(|d| {
                                humantime::format_duration(baton_common::time::duration_from_proto(
                                    d,
                                ))
                                .to_string()
                            })
                            .unwrap_or_else(|| "-".into()),
                        task.outputs.join(", "),
                    ];
                    if with_flow {
                        row.push(flow);
                    }
                    out.add_row(row);
                }
                print_line(out);
            }
            Ok(Outcome::Success)
        }
        DagCommand::Pause { dag_id } => {
            let mut client = context.client().await?;
            let dag = client
                .dags
                .pause_dag(PauseDagRequest { dag_id })
                .await?
                .into_inner()
                .dag
                .unwrap_or_default();
            report_dag(context, &dag, "paused");
            Ok(Outcome::Success)
        }
        DagCommand::Unpause { dag_id } => {
            let mut client = context.client().await?;
            let dag = client
                .dags
                .unpause_dag(UnpauseDagRequest { dag_id })
                .await?
                .into_inner()
                .dag
                .unwrap_or_default();
            report_dag(context, &dag, "unpaused");
            Ok(Outcome::Success)
        }
        DagCommand::Delete { dag_id, yes } => {
            if !yes {
                bail!(
                    "deleting dag `{dag_id}` also deletes its versions and run history; pass --yes to confirm"
                );
            }
            let mut client = context.client().await?;
            let response = client
                .dags
                .delete_dag(DeleteDagRequest {
                    dag_id: dag_id.clone(),
                })
                .await?
                .into_inner();
            if context.json() {
                print_json(
                    &json!({ "dag_id": dag_id, "deleted": true, "deleted_runs": response.deleted_runs }),
                );
            } else {
                print_line(format_args!(
                    "dag {dag_id} deleted with {} finished run(s)",
                    response.deleted_runs
                ));
            }
            Ok(Outcome::Success)
        }
    }
}

/// What `dag show` says about the DAG's schedule, in the DAG's time zone.
fn schedule_lines(dag: &Dag) -> Vec<String> {
    let zone = zone_or_utc(&dag.timezone);
    let mut lines = Vec::new();
    if dag.schedule.is_empty() {
        lines.push("schedule: none (runs only when triggered)".to_string());
    } else {
        lines.push(format!(
            "schedule: {} ({}), catchup: {}",
            dag.schedule,
            zone,
            if dag.catchup { "yes" } else { "no" }
        ));
    }
    if dag.next_data_interval_end.is_some() {
        lines.push(format!(
            "next run: data interval {} to {}, created at {}",
            zoned_time_text(dag.next_data_interval_start.as_ref(), zone),
            zoned_time_text(dag.next_data_interval_end.as_ref(), zone),
            zoned_time_text(dag.next_data_interval_end.as_ref(), zone),
        ));
    }
    if dag.max_active_runs != 0 {
        lines.push(format!("max active runs: {}", dag.max_active_runs));
    }
    lines
}

fn report_dag(context: &Context, dag: &Dag, what: &str) {
    if context.json() {
        print_json(&dag_json(dag));
    } else {
        print_line(format_args!("dag {} {what}", dag.dag_id));
    }
}

fn validate(files: &[PathBuf], limits: &SpecLimits, context: &Context) -> anyhow::Result<Outcome> {
    let mut all_valid = true;
    let mut results = Vec::new();
    for path in files {
        let text = read(path)?;
        match spec::parse_dag(&text, format_of(path), limits) {
            Ok(dag) => {
                results.push(json!({ "file": path, "valid": true, "dag_id": dag.dag_id.as_str(), "tasks": dag.tasks.len(), "digest": dag.digest }));
                if !context.json() {
                    print_line(format_args!(
                        "{}: valid: dag `{}` with {} task(s)",
                        path.display(),
                        dag.dag_id,
                        dag.tasks.len()
                    ));
                }
            }
            Err(errors) => {
                all_valid = false;
                let problems: Vec<serde_json::Value> = errors
                    .0
                    .iter()
                    .map(|v| json!({ "field": v.field, "reason": v.reason }))
                    .collect();
                results.push(json!({ "file": path, "valid": false, "errors": problems }));
                if !context.json() {
                    eprintln_lines(path, &errors.to_string());
                }
            }
        }
    }
    if context.json() {
        print_json(&serde_json::Value::Array(results));
    }
    Ok(if all_valid {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}

fn eprintln_lines(path: &Path, message: &str) {
    eprintln!("{}: invalid:", path.display());
    for line in message.lines() {
        eprintln!("  {line}");
    }
}

async fn apply(files: &[PathBuf], dry_run: bool, context: &Context) -> anyhow::Result<Outcome> {
    let mut client = context.client().await?;
    let mut all_ok = true;
    let mut results = Vec::new();
    for path in files {
        let spec = read(path)?;
        let format = match format_of(path) {
            Format::Json => SpecFormat::Json,
            Format::Yaml => SpecFormat::Yaml,
            Format::Detect => SpecFormat::Unspecified,
        };
        let request = RegisterDagRequest {
            spec,
            format: format as i32,
            validate_only: dry_run,
        };
        match client.dags.register_dag(request).await {
            Ok(response) => {
                let response = response.into_inner();
                let dag = response.dag.unwrap_or_default();
                let what = match (dry_run, response.created) {
                    (true, _) if dag.latest_version == response.version => "valid, unchanged",
                    (true, _) => "valid, would be a new version",
                    (false, true) => "registered",
                    (false, false) => "unchanged",
                };
                results.push(json!({ "file": path, "dag_id": dag.dag_id, "version": response.version, "created": response.created, "dry_run": dry_run }));
                if !context.json() {
                    print_line(format_args!(
                        "{}: dag `{}` version {}: {what}",
                        path.display(),
                        dag.dag_id,
                        response.version
                    ));
                }
            }
            Err(status) => {
                all_ok = false;
                results.push(json!({ "file": path, "error": status.message(), "code": format!("{:?}", status.code()) }));
                if !context.json() {
                    eprintln!("{}: {}", path.display(), describe_status(&status));
                }
            }
        }
    }
    if context.json() {
        print_json(&serde_json::Value::Array(results));
    }
    Ok(if all_ok {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}
