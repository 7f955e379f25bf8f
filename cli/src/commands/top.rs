//! `baton top`: a live view of the cluster, refreshed in place: the leader
//! and controllers, workers with their slots, queue depths, pools, and the
//! active runs with how many of their tasks are in each state.

use std::io::IsTerminal;
use std::time::Duration;

use baton_common::pb::api::{GetClusterStatusRequest, ListRunsRequest, RunState};
use clap::Args;

use super::Context;
use super::cluster::status_text;
use crate::Outcome;
use crate::output::{counts_line, elapsed, print_line, run_state, table};

/// Active runs listed, newest first.
const RUNS_SHOWN: u32 = 15;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between refreshes (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    interval: Duration,
    /// Print the view once and exit (for scripts; a view that is not a
    /// terminal is printed once per refresh without clearing).
    #[arg(long)]
    once: bool,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
        return Err(format!("{text} is out of range; refresh every 100ms to 1h"));
    }
    Ok(interval)
}

pub async fn run(args: TopArgs, context: &Context) -> anyhow::Result<Outcome> {
    let mut client = context.client().await?;
    let terminal = std::io::stdout().is_terminal();
    loop {
        let status = client
            .cluster
            .get_cluster_status(GetClusterStatusRequest {})
            .await?
            .into_inner();
        let runs = client
            .runs
            .list_runs(ListRunsRequest {
                states: vec![RunState::Running as i32, RunState::Queued as i32],
                page_size: RUNS_SHOWN,
                ..Default::default()
            })
            .await?
            .into_inner()
            .runs;
        let mut view = status_text(&status);
        let mut active = table(&["RUN", "DAG", "STATE", "RUNNING FOR", "TASKS"]);
        for run in &runs {
            active.add_row(vec![
                run.run_id.clone(),
                run.dag_id.clone(),
                baton_common::states::run_state_name(run_state(run)).to_string(),
                elapsed(run.started_at.as_ref(), run.ended_at.as_ref()),
                counts_line(run),
            ]);
        }
        view.push_str(&format!(
            "active runs (newest {RUNS_SHOWN}, of {}):\n{active}\n",
            status.active_runs
        ));
        if terminal && !args.once {
            // Home, then clear the screen: the view replaces the last one.
            print_line(format_args!("\x1b[H\x1b[2J{view}"));
        } else {
            print_line(view);
        }
        if args.once {
            return Ok(Outcome::Success);
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(Outcome::Success),
        }
    }
}
