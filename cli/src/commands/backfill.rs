//! `baton backfill`: one run per data interval of a DAG's schedule over a
//! date range (`BackfillService`), followed live until every run ended;
//! `list`, `show` and `cancel` backfills.
//!
//! `baton backfill DAG --from DATE --to DATE` and `baton backfill create DAG
//! ...` are the same command: the short form reads like Airflow's `dags
//! backfill`, the long one reaches a DAG named like a subcommand.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use baton_common::client::BatonClient;
use baton_common::pb::api::{
    Backfill, BackfillAction, BackfillInterval, BackfillState, CancelBackfillRequest,
    CreateBackfillRequest, GetBackfillRequest, GetDagRequest, ListBackfillsRequest, RunState,
};
use baton_common::states::{run_state_is_final, run_state_name};
use baton_common::time::micros_to_timestamp;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tonic::Code;

use super::dates::{DateArg, check_order, check_resolved_order, zone, zone_or_utc};
use super::params::{merge, parse_json_object, parse_param};
use super::{Context, describe_status};
use crate::Outcome;
use crate::output::{
    elapsed, print_json, print_line, table, text_or_null, time_json, time_text, zoned_time_text,
};

/// How often a followed backfill is read again.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Deadline of each call while following (and of the cancel on Ctrl-C).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed reads in a row (controller restarting, leader changing) before
/// following gives up; the backfill itself goes on.
const MAX_FAILED_POLLS: u32 = 60;
/// Failed intervals listed after a followed backfill ends.
const MAX_FAILED_LISTED: usize = 50;

const EXAMPLES: &str = "\
Examples:
  baton backfill etl --from 2026-01-01 --to 2026-01-31
  baton backfill etl --from 2026-01-01 --to 2026-01-31 --dry-run
  baton backfill etl --from 2026-01-01T06:00 --to 2026-01-07T06:00 --max-active 4 --reverse
  baton backfill etl --from 2026-01-01T00:00:00Z --to 2026-01-07T00:00:00Z --rerun-failed
  baton backfill etl --from 2026-01-01 --to 2026-01-31 -p full=true --detach
  baton backfill list --dag etl
  baton backfill show BACKFILL_ID
  baton backfill cancel BACKFILL_ID";

/// The arguments of `baton backfill` (its help is on the variant of
/// `Command` in `main.rs`): a subcommand, or those of `create` directly.
#[derive(Debug, Args)]
#[command(
    subcommand_negates_reqs = true,
    arg_required_else_help = true,
    override_usage = "baton backfill <DAG> --from <DATE> --to <DATE> [OPTIONS]\n       baton backfill <COMMAND>",
    after_help = EXAMPLES
)]
pub struct BackfillArgs {
    #[command(subcommand)]
    command: Option<BackfillCommand>,
    #[command(flatten)]
    create: Option<CreateArgs>,
}

#[derive(Debug, Subcommand)]
enum BackfillCommand {
    /// Create a backfill (the same as `baton backfill DAG --from ... --to
    /// ...`; this form reaches a DAG named like a subcommand).
    #[command(after_help = EXAMPLES)]
    Create(CreateArgs),
    /// List backfills, newest first.
    List {
        /// Only backfills of this DAG.
        #[arg(long)]
        dag: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue from the token a previous page printed.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show a backfill with every interval, what it does with it and its
    /// run's state.
    Show { backfill_id: String },
    /// Cancel a backfill as a whole: intervals without a run get none, and
    /// its unfinished runs are cancelled.
    Cancel { backfill_id: String },
}

#[derive(Debug, Clone, Args)]
struct CreateArgs {
    /// The DAG to backfill; it needs a cron (or `every`) schedule.
    #[arg(value_name = "DAG")]
    dag_id: String,
    /// First logical date (data interval start) to cover. YYYY-MM-DD or
    /// YYYY-MM-DDTHH:MM[:SS] is read in the DAG's time zone, RFC 3339 with
    /// `Z` or an offset is taken as is. A local time that occurs twice
    /// (clocks going back) means the first of the two; one that does not
    /// exist (clocks going forward) is refused.
    #[arg(long, value_name = "DATE", value_parser = DateArg::parse)]
    from: DateArg,
    /// Last logical date to cover, inclusive (same forms as --from).
    #[arg(long, value_name = "DATE", value_parser = DateArg::parse)]
    to: DateArg,
    /// Runs of the backfill unfinished at once, 1-1000 (default: the DAG's
    /// max_active_runs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_active: Option<u32>,
    /// Run the newest interval first.
    #[arg(long)]
    reverse: bool,
    /// Run again the intervals whose run failed (clearing its tasks that
    /// did not succeed); otherwise every interval that has a run is skipped.
    #[arg(long)]
    rerun_failed: bool,
    /// Print the plan (each interval: create, skip or rerun) and store
    /// nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run parameter as key=value for every run created; the value is read
    /// as JSON when it is valid JSON (3, true, [1,2]), else as a string.
    /// Repeat for several.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    params: Vec<(String, Value)>,
    /// All parameters as one JSON object (merged under --param).
    #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
    params_json: Option<Map<String, Value>>,
    /// Return once the backfill is created instead of following it (while
    /// following, Ctrl-C cancels the backfill).
    #[arg(long, conflicts_with = "dry_run")]
    detach: bool,
}

pub async fn run(args: BackfillArgs, context: &Context) -> anyhow::Result<Outcome> {
    let command = match (args.command, args.create) {
        (Some(command), _) => command,
        (None, Some(create)) => BackfillCommand::Create(create),
        (None, None) => {
            bail!("name a DAG with --from and --to, or a subcommand (see `baton backfill --help`)")
        }
    };
    match command {
        BackfillCommand::Create(create) => create_backfill(create, context).await,
        BackfillCommand::List {
            dag,
            limit,
            page_token,
        } => {
            let mut client = context.client().await?;
            let response = client
                .backfills
                .list_backfills(ListBackfillsRequest {
                    dag_id: dag.unwrap_or_default(),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if context.json() {
                print_json(&json!({
                    "backfills": response.backfills.iter().map(|backfill| backfill_json(backfill, false)).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                }));
            } else {
                let mut out = table(&[
                    "BACKFILL", "DAG", "STATE", "FROM", "TO", "RUNS", "SKIPPED", "CREATED",
                ]);
                for backfill in &response.backfills {
                    out.add_row(vec![
                        backfill.backfill_id.clone(),
                        backfill.dag_id.clone(),
                        state_name(backfill_state(backfill)).to_string(),
                        time_text(backfill.from.as_ref()),
                        time_text(backfill.to.as_ref()),
                        Progress::of(backfill).line(),
                        backfill.skipped.to_string(),
                        time_text(backfill.created_at.as_ref()),
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
        BackfillCommand::Show { backfill_id } => {
            let mut client = context.client().await?;
            let backfill = client
                .backfills
                .get_backfill(GetBackfillRequest { backfill_id })
                .await?
                .into_inner()
                .backfill
                .unwrap_or_default();
            if context.json() {
                print_json(&backfill_json(&backfill, true));
            } else {
                let zone = dag_zone_for_display(&mut client, &backfill.dag_id).await;
                print_line(summary(&backfill));
                print_line(format_args!(
                    "range: {} to {} ({zone}), at most {} run(s) at once{}{}",
                    zoned_time_text(backfill.from.as_ref(), zone),
                    zoned_time_text(backfill.to.as_ref(), zone),
                    backfill.max_active,
                    if backfill.reverse {
                        ", newest first"
                    } else {
                        ""
                    },
                    if backfill.rerun_failed {
                        ", rerunning failed runs"
                    } else {
                        ""
                    },
                ));
                print_intervals(&backfill.intervals, zone);
            }
            Ok(Outcome::Success)
        }
        BackfillCommand::Cancel { backfill_id } => {
            let mut client = context.client().await?;
            let backfill = client
                .backfills
                .cancel_backfill(CancelBackfillRequest { backfill_id })
                .await?
                .into_inner()
                .backfill
                .unwrap_or_default();
            if context.json() {
                print_json(&backfill_json(&backfill, true));
            } else {
                print_line(summary(&backfill));
            }
            Ok(Outcome::Success)
        }
    }
}

/// Checks what needs no controller (the range's order when the forms
/// allow, see [`check_order`]); clap checked every value already.
fn check_args(args: &CreateArgs) -> anyhow::Result<()> {
    check_order(&args.from, &args.to)
}

async fn create_backfill(args: CreateArgs, context: &Context) -> anyhow::Result<Outcome> {
    check_args(&args)?;
    let mut client = context.client().await?;
    let dag = client
        .dags
        .get_dag(GetDagRequest {
            dag_id: args.dag_id.clone(),
            version: 0,
        })
        .await?
        .into_inner()
        .dag
        .unwrap_or_default();
    let zone = if args.from.is_local() || args.to.is_local() {
        zone(&args.dag_id, &dag.timezone)?
    } else {
        zone_or_utc(&dag.timezone)
    };
    let from = args.from.resolve("--from", zone)?;
    let to = args.to.resolve("--to", zone)?;
    check_resolved_order(&args.from, from, &args.to, to)?;
    let request = CreateBackfillRequest {
        dag_id: args.dag_id.clone(),
        from: Some(timestamp(from)),
        to: Some(timestamp(to)),
        max_active: args.max_active.unwrap_or(0),
        reverse: args.reverse,
        rerun_failed: args.rerun_failed,
        dry_run: args.dry_run,
        params_json: merge(args.params_json, args.params),
    };
    let backfill = client
        .backfills
        .create_backfill(request)
        .await?
        .into_inner()
        .backfill
        .unwrap_or_default();
    if args.dry_run {
        print_plan(&backfill, zone, context);
        return Ok(Outcome::Success);
    }
    if args.detach {
        if context.json() {
            print_json(&backfill_json(&backfill, true));
        } else {
            print_line(created_line(&backfill, zone));
            print_line(format_args!(
                "see it with `baton backfill show {0}`, cancel it with `baton backfill cancel {0}`",
                backfill.backfill_id
            ));
        }
        return Ok(Outcome::Success);
    }
    // Listening before saying that the backfill exists, so that a Ctrl-C
    // from then on cancels it.
    let mut sigint = signal(SignalKind::interrupt()).context("failed to listen for Ctrl-C")?;
    let interrupt = async move {
        if sigint.recv().await.is_none() {
            // No more signals can come: never interrupted.
            std::future::pending::<()>().await;
        }
    };
    if !context.json() {
        print_line(created_line(&backfill, zone));
    }
    follow(&mut client, backfill, interrupt, context).await
}

fn timestamp(instant: DateTime<Utc>) -> prost_types::Timestamp {
    micros_to_timestamp(instant.timestamp_micros())
}

/// Follows a backfill until it is completed or cancelled, reading it every
/// [`POLL_INTERVAL`] with a progress bar; `interrupt` (Ctrl-C) cancels it.
/// Exits 0 only when every run of the backfill succeeded.
async fn follow(
    client: &mut BatonClient,
    backfill: Backfill,
    interrupt: impl Future<Output = ()>,
    context: &Context,
) -> anyhow::Result<Outcome> {
    let bar = progress_bar(Progress::of(&backfill).to_run);
    let end = wait_for_end(client, backfill, interrupt, POLL_INTERVAL, &bar).await;
    bar.finish_and_clear();
    match end? {
        FollowEnd::Ended(backfill) => {
            report_end(&backfill, context);
            Ok(outcome(&backfill))
        }
        FollowEnd::Interrupted(backfill) => {
            report_end(&backfill, context);
            Ok(Outcome::Failure)
        }
    }
}

/// How following a backfill ended.
#[derive(Debug)]
enum FollowEnd {
    /// Completed, or cancelled by someone else: the backfill as last read.
    Ended(Backfill),
    /// Interrupted and cancelled by this command: the backfill as the
    /// cancel answered it.
    Interrupted(Backfill),
}

/// Reads the backfill every `poll_interval` until it is no longer running,
/// riding out up to [`MAX_FAILED_POLLS`] transient failures in a row. When
/// `interrupt` completes first, cancels the backfill.
async fn wait_for_end(
    client: &mut BatonClient,
    mut backfill: Backfill,
    interrupt: impl Future<Output = ()>,
    poll_interval: Duration,
    bar: &ProgressBar,
) -> anyhow::Result<FollowEnd> {
    let backfill_id = backfill.backfill_id.clone();
    tokio::pin!(interrupt);
    let mut failed_polls = 0;
    while backfill_state(&backfill) == BackfillState::Running {
        let progress = Progress::of(&backfill);
        bar.set_position(u64::from(progress.finished()));
        bar.set_message(progress.counts());
        tokio::select! {
            biased;
            () = &mut interrupt => {
                bar.finish_and_clear();
                return cancel_on_interrupt(client, &backfill_id).await.map(FollowEnd::Interrupted);
            }
            polled = poll(client, &backfill_id, poll_interval) => match polled {
                Ok(latest) => {
                    backfill = latest;
                    failed_polls = 0;
                }
                Err(status) if is_transient(&status) && failed_polls < MAX_FAILED_POLLS => {
                    failed_polls += 1;
                    tracing::debug!(status = %describe_status(&status), "reading the backfill failed; trying again");
                }
                Err(status) => bail!(
                    "stopped following backfill {backfill_id}: {}; the backfill goes on (`baton backfill show {backfill_id}`)",
                    describe_status(&status)
                ),
            }
        }
    }
    Ok(FollowEnd::Ended(backfill))
}

async fn poll(
    client: &mut BatonClient,
    backfill_id: &str,
    poll_interval: Duration,
) -> Result<Backfill, tonic::Status> {
    tokio::time::sleep(poll_interval).await;
    let call = client.backfills.get_backfill(GetBackfillRequest {
        backfill_id: backfill_id.to_string(),
    });
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(response) => Ok(response?.into_inner().backfill.unwrap_or_default()),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

async fn cancel_on_interrupt(
    client: &mut BatonClient,
    backfill_id: &str,
) -> anyhow::Result<Backfill> {
    eprintln!("interrupted: cancelling backfill {backfill_id} and its unfinished runs");
    let call = client.backfills.cancel_backfill(CancelBackfillRequest {
        backfill_id: backfill_id.to_string(),
    });
    let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {CALL_TIMEOUT:?}"
        ))),
    };
    match result {
        Ok(response) => Ok(response.into_inner().backfill.unwrap_or_default()),
        Err(status) => Err(anyhow!(
            "interrupted, but cancelling backfill {backfill_id} failed: {}; cancel it with `baton backfill cancel {backfill_id}`",
            describe_status(&status)
        )),
    }
}

/// What a finished (or cancelled) backfill prints.
fn report_end(backfill: &Backfill, context: &Context) {
    if context.json() {
        print_json(&backfill_json(backfill, true));
        return;
    }
    print_line(summary(backfill));
    let unsuccessful: Vec<BackfillInterval> = backfill
        .intervals
        .iter()
        .filter(|interval| {
            action(interval) != BackfillAction::Skip
                && !interval.run_id.is_empty()
                && interval_run_state(interval) != RunState::Success
        })
        .cloned()
        .collect();
    if !unsuccessful.is_empty() {
        print_line(format_args!(
            "runs that did not succeed{}:",
            if unsuccessful.len() > MAX_FAILED_LISTED {
                format!(" (first {MAX_FAILED_LISTED} of {})", unsuccessful.len())
            } else {
                String::new()
            }
        ));
        let shown = &unsuccessful[..unsuccessful.len().min(MAX_FAILED_LISTED)];
        print_intervals(shown, Tz::UTC);
    }
}

/// Success only for a completed backfill whose every run succeeded (one
/// that had nothing to run succeeded too).
fn outcome(backfill: &Backfill) -> Outcome {
    let progress = Progress::of(backfill);
    if backfill_state(backfill) == BackfillState::Completed
        && progress.failed == 0
        && progress.succeeded == progress.to_run
    {
        Outcome::Success
    } else {
        Outcome::Failure
    }
}

fn progress_bar(total: u32) -> ProgressBar {
    let bar = ProgressBar::new(u64::from(total));
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs of a backfill (intervals created or rerun) by how they stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    to_run: u32,
    succeeded: u32,
    /// Finished otherwise: failed or cancelled.
    failed: u32,
    active: u32,
}

impl Progress {
    /// From the intervals when the backfill has them (GetBackfill,
    /// CreateBackfill), else from its counts (ListBackfills).
    fn of(backfill: &Backfill) -> Self {
        if backfill.intervals.is_empty() {
            return Self {
                to_run: backfill.to_run,
                succeeded: backfill.succeeded,
                failed: backfill.failed,
                active: backfill.active,
            };
        }
        let mut progress = Self::default();
        for interval in &backfill.intervals {
            if action(interval) == BackfillAction::Skip {
                continue;
            }
            progress.to_run += 1;
            let state = interval_run_state(interval);
            if state == RunState::Success {
                progress.succeeded += 1;
            } else if run_state_is_final(state) {
                progress.failed += 1;
            } else if !interval.run_id.is_empty() {
                progress.active += 1;
            }
        }
        progress
    }

    fn finished(&self) -> u32 {
        self.succeeded + self.failed
    }

    fn counts(&self) -> String {
        format!(
            "{} succeeded, {} failed, {} active",
            self.succeeded, self.failed, self.active
        )
    }

    /// `3/5 done: 2 succeeded, 1 failed, 2 active`.
    fn line(&self) -> String {
        format!(
            "{}/{} done: {}",
            self.finished(),
            self.to_run,
            self.counts()
        )
    }
}

fn backfill_state(backfill: &Backfill) -> BackfillState {
    BackfillState::try_from(backfill.state).unwrap_or(BackfillState::Unspecified)
}

fn state_name(state: BackfillState) -> &'static str {
    match state {
        BackfillState::Unspecified => "-",
        BackfillState::Running => "running",
        BackfillState::Completed => "completed",
        BackfillState::Cancelled => "cancelled",
    }
}

fn action(interval: &BackfillInterval) -> BackfillAction {
    BackfillAction::try_from(interval.action).unwrap_or(BackfillAction::Unspecified)
}

fn action_name(action: BackfillAction) -> &'static str {
    match action {
        BackfillAction::Unspecified => "-",
        BackfillAction::Create => "create",
        BackfillAction::Skip => "skip",
        BackfillAction::Rerun => "rerun",
    }
}

fn interval_run_state(interval: &BackfillInterval) -> RunState {
    RunState::try_from(interval.run_state).unwrap_or(RunState::Unspecified)
}

/// Intervals by action: (create, skip, rerun).
fn action_counts(intervals: &[BackfillInterval]) -> (usize, usize, usize) {
    let count = |wanted| {
        intervals
            .iter()
            .filter(|interval| action(interval) == wanted)
            .count()
    };
    (
        count(BackfillAction::Create),
        count(BackfillAction::Skip),
        count(BackfillAction::Rerun),
    )
}

/// `backfill ID of etl completed: 5/5 runs done: 5 succeeded, ... (12.3s)`.
fn summary(backfill: &Backfill) -> String {
    let progress = Progress::of(backfill);
    format!(
        "backfill {} of {} {}: {}/{} runs done: {}; {} of {} interval(s) skipped ({})",
        backfill.backfill_id,
        backfill.dag_id,
        state_name(backfill_state(backfill)),
        progress.finished(),
        progress.to_run,
        progress.counts(),
        backfill.skipped,
        backfill.total,
        elapsed(backfill.created_at.as_ref(), backfill.ended_at.as_ref()),
    )
}

fn created_line(backfill: &Backfill, zone: Tz) -> String {
    let (create, skip, rerun) = action_counts(&backfill.intervals);
    format!(
        "backfill {} of {} created: {} interval(s) from {} to {}: {create} to create, {rerun} to rerun, {skip} skipped",
        backfill.backfill_id,
        backfill.dag_id,
        backfill.total,
        zoned_time_text(backfill.from.as_ref(), zone),
        zoned_time_text(backfill.to.as_ref(), zone),
    )
}

fn print_plan(backfill: &Backfill, zone: Tz, context: &Context) {
    if context.json() {
        let mut value = backfill_json(backfill, true);
        value["dry_run"] = Value::Bool(true);
        print_json(&value);
        return;
    }
    let (create, skip, rerun) = action_counts(&backfill.intervals);
    print_line(format_args!(
        "dry run: backfill of {} from {} to {} ({zone}): {} interval(s): {create} to create, {rerun} to rerun, {skip} to skip; nothing was stored",
        backfill.dag_id,
        zoned_time_text(backfill.from.as_ref(), zone),
        zoned_time_text(backfill.to.as_ref(), zone),
        backfill.intervals.len(),
    ));
    print_intervals(&backfill.intervals, zone);
}

fn print_intervals(intervals: &[BackfillInterval], zone: Tz) {
    let mut out = table(&["#", "START", "END", "ACTION", "RUN", "STATE"]);
    for (index, interval) in intervals.iter().enumerate() {
        out.add_row(vec![
            (index + 1).to_string(),
            zoned_time_text(interval.data_interval_start.as_ref(), zone),
            zoned_time_text(interval.data_interval_end.as_ref(), zone),
            action_name(action(interval)).to_string(),
            if interval.run_id.is_empty() {
                "-".into()
            } else {
                interval.run_id.clone()
            },
            match interval_run_state(interval) {
                RunState::Unspecified => "-".into(),
                state => run_state_name(state).to_string(),
            },
        ]);
    }
    print_line(out);
}

/// The DAG's time zone to show a backfill's times in; UTC when the DAG is
/// gone or the zone unknown (showing is no reason to fail).
async fn dag_zone_for_display(client: &mut BatonClient, dag_id: &str) -> Tz {
    match client
        .dags
        .get_dag(GetDagRequest {
            dag_id: dag_id.to_string(),
            version: 0,
        })
        .await
    {
        Ok(response) => zone_or_utc(&response.into_inner().dag.unwrap_or_default().timezone),
        Err(_) => Tz::UTC,
    }
}

fn backfill_json(backfill: &Backfill, with_intervals: bool) -> Value {
    let mut value = json!({
        "backfill_id": text_or_null(&backfill.backfill_id),
        "dag_id": backfill.dag_id,
        "from": time_json(backfill.from.as_ref()),
        "to": time_json(backfill.to.as_ref()),
        "max_active": backfill.max_active,
        "reverse": backfill.reverse,
        "rerun_failed": backfill.rerun_failed,
        "state": match backfill_state(backfill) {
            BackfillState::Unspecified => Value::Null,
            state => Value::String(state_name(state).to_string()),
        },
        "created_at": time_json(backfill.created_at.as_ref()),
        "ended_at": time_json(backfill.ended_at.as_ref()),
        "total": backfill.total,
        "skipped": backfill.skipped,
        "to_run": backfill.to_run,
        "succeeded": backfill.succeeded,
        "failed": backfill.failed,
        "active": backfill.active,
    });
    if with_intervals {
        value["intervals"] = backfill.intervals.iter().map(interval_json).collect();
    }
    value
}

fn interval_json(interval: &BackfillInterval) -> Value {
    json!({
        "data_interval_start": time_json(interval.data_interval_start.as_ref()),
        "data_interval_end": time_json(interval.data_interval_end.as_ref()),
        "action": action_name(action(interval)),
        "run_id": text_or_null(&interval.run_id),
        "run_state": match interval_run_state(interval) {
            RunState::Unspecified => Value::Null,
            state => Value::String(run_state_name(state).to_string()),
        },
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `baton backfill ...` alone, as the binary's parser nests it.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        Backfill(BackfillArgs),
    }

    fn parse(args: &[&str]) -> Result<BackfillArgs, clap::Error> {
        let mut argv = vec!["baton", "backfill"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Top::Backfill(args) => args,
        })
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        match parse(args).unwrap_or_else(|error| panic!("{args:?}: {error}")) {
            BackfillArgs {
                command: Some(BackfillCommand::Create(create)),
                ..
            }
            | BackfillArgs {
                command: None,
                create: Some(create),
            } => create,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn the_short_and_the_long_form_create_the_same_backfill() {
        let flags = [
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-05",
            "--max-active",
            "2",
            "--reverse",
            "--rerun-failed",
            "-p",
            "n=3",
            "--param",
            "s=x",
            "--params-json",
            r#"{"a": 1}"#,
        ];
        let short: Vec<&str> = ["etl"].iter().chain(flags.iter()).copied().collect();
        let long: Vec<&str> = ["create", "etl"]
            .iter()
            .chain(flags.iter())
            .copied()
            .collect();
        let short = create_args(&short);
        let long = create_args(&long);
        assert_eq!(format!("{short:?}"), format!("{long:?}"));
        assert_eq!(short.dag_id, "etl");
        assert_eq!(short.max_active, Some(2));
        assert!(short.reverse && short.rerun_failed && !short.dry_run && !short.detach);
        assert_eq!(
            merge(short.params_json, short.params),
            r#"{"a":1,"n":3,"s":"x"}"#
        );
        // The flags may come before the DAG, too.
        let before = create_args(&[
            "--dry-run",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
            "etl",
        ]);
        assert_eq!(before.dag_id, "etl");
        assert!(before.dry_run);
    }

    #[test]
    fn subcommands_parse_beside_the_short_form() {
        assert!(matches!(
            parse(&["list", "--dag", "etl"]).unwrap().command,
            Some(BackfillCommand::List { dag: Some(ref dag), .. }) if dag == "etl"
        ));
        assert!(matches!(
            parse(&["list"]).unwrap().command,
            Some(BackfillCommand::List { dag: None, .. })
        ));
        assert!(matches!(
            parse(&["show", "b1"]).unwrap().command,
            Some(BackfillCommand::Show { ref backfill_id }) if backfill_id == "b1"
        ));
        assert!(matches!(
            parse(&["cancel", "b1"]).unwrap().command,
            Some(BackfillCommand::Cancel { ref backfill_id }) if backfill_id == "b1"
        ));
        // A DAG named like a subcommand is reached with `create`.
        assert_eq!(
            create_args(&[
                "create",
                "list",
                "--from",
                "2026-01-01",
                "--to",
                "2026-01-02"
            ])
            .dag_id,
            "list"
        );
    }

    #[test]
    fn missing_or_bad_flags_are_refused_naming_the_flag() {
        let error = |args: &[&str]| parse(args).unwrap_err().to_string();
        let missing = error(&["etl", "--from", "2026-01-01"]);
        assert!(missing.contains("--to"), "{missing}");
        let bad_date = error(&["etl", "--from", "2026-01-32", "--to", "2026-02-01"]);
        assert!(bad_date.contains("--from"), "{bad_date}");
        assert!(bad_date.contains("YYYY-MM-DD"), "{bad_date}");
        let bad_json = error(&[
            "etl",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
            "--params-json",
            "[1]",
        ]);
        assert!(bad_json.contains("--params-json"), "{bad_json}");
        assert!(bad_json.contains("JSON object"), "{bad_json}");
        let bad_param = error(&[
            "etl",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
            "-p",
            "x",
        ]);
        assert!(bad_param.contains("--param"), "{bad_param}");
        for max_active in ["0", "1001", "two"] {
            let bad = error(&[
                "etl",
                "--from",
                "2026-01-01",
                "--to",
                "2026-01-02",
                "--max-active",
                max_active,
            ]);
            assert!(bad.contains("--max-active"), "{max_active}: {bad}");
        }
        let both = error(&[
            "etl",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
            "--dry-run",
            "--detach",
        ]);
        assert!(
            both.contains("--detach") && both.contains("--dry-run"),
            "{both}"
        );
        // Flags of the short form do not mix with subcommands.
        assert!(parse(&["list", "--from", "2026-01-01"]).is_err());
    }

    #[test]
    fn from_after_to_is_refused_before_any_call() {
        let args = create_args(&["etl", "--from", "2026-01-05", "--to", "2026-01-01"]);
        let error = check_args(&args).unwrap_err().to_string();
        assert!(
            error.contains("--from `2026-01-05` is after --to `2026-01-01`"),
            "{error}"
        );
        let same_day = create_args(&["etl", "--from", "2026-01-05", "--to", "2026-01-05"]);
        assert!(check_args(&same_day).is_ok());
    }

    fn interval(day: i64, action: BackfillAction, run_state: RunState) -> BackfillInterval {
        BackfillInterval {
            data_interval_start: Some(micros_to_timestamp(day * 86_400_000_000)),
            data_interval_end: Some(micros_to_timestamp((day + 1) * 86_400_000_000)),
            action: action as i32,
            run_id: if run_state == RunState::Unspecified {
                String::new()
            } else {
                format!("run-{day}")
            },
            run_state: run_state as i32,
        }
    }

    #[test]
    fn progress_counts_the_runs_of_the_backfill_and_not_skipped_intervals() {
        let backfill = Backfill {
            state: BackfillState::Running as i32,
            intervals: vec![
                interval(0, BackfillAction::Skip, RunState::Failed),
                interval(1, BackfillAction::Create, RunState::Success),
                interval(2, BackfillAction::Create, RunState::Failed),
                interval(3, BackfillAction::Rerun, RunState::Running),
                interval(4, BackfillAction::Create, RunState::Queued),
                interval(5, BackfillAction::Create, RunState::Unspecified),
            ],
            ..Backfill::default()
        };
        let progress = Progress::of(&backfill);
        assert_eq!(
            progress,
            Progress {
                to_run: 5,
                succeeded: 1,
                failed: 1,
                active: 2
            }
        );
        assert_eq!(progress.line(), "2/5 done: 1 succeeded, 1 failed, 2 active");
        assert_eq!(action_counts(&backfill.intervals), (4, 1, 1));
    }

    #[test]
    fn only_a_completed_backfill_whose_runs_all_succeeded_exits_zero() {
        let completed = |intervals| Backfill {
            state: BackfillState::Completed as i32,
            intervals,
            ..Backfill::default()
        };
        let all_good = completed(vec![
            interval(0, BackfillAction::Create, RunState::Success),
            // A failed run the backfill skipped is not one of its runs.
            interval(1, BackfillAction::Skip, RunState::Failed),
        ]);
        assert!(matches!(outcome(&all_good), Outcome::Success));
        let one_failed = completed(vec![
            interval(0, BackfillAction::Create, RunState::Success),
            interval(1, BackfillAction::Rerun, RunState::Failed),
        ]);
        assert!(matches!(outcome(&one_failed), Outcome::Failure));
        let nothing_to_do = completed(vec![interval(0, BackfillAction::Skip, RunState::Success)]);
        assert!(matches!(outcome(&nothing_to_do), Outcome::Success));
        let cancelled = Backfill {
            state: BackfillState::Cancelled as i32,
            ..all_good.clone()
        };
        assert!(matches!(outcome(&cancelled), Outcome::Failure));
        // Without intervals (a list entry), the counts decide.
        let counted = Backfill {
            state: BackfillState::Completed as i32,
            to_run: 3,
            succeeded: 3,
            ..Backfill::default()
        };
        assert!(matches!(outcome(&counted), Outcome::Success));
    }

    #[test]
    fn json_names_states_and_actions_like_the_tables() {
        let backfill = Backfill {
            dag_id: "etl".into(),
            state: BackfillState::Completed as i32,
            intervals: vec![interval(1, BackfillAction::Create, RunState::Success)],
            ..Backfill::default()
        };
        let value = backfill_json(&backfill, true);
        assert_eq!(value["backfill_id"], Value::Null);
        assert_eq!(value["state"], "completed");
        assert_eq!(value["intervals"][0]["action"], "create");
        assert_eq!(value["intervals"][0]["run_state"], "success");
        assert_eq!(
            value["intervals"][0]["data_interval_start"],
            "1970-01-02T00:00:00Z"
        );
        assert!(backfill_json(&backfill, false).get("intervals").is_none());
    }

    /// A `BackfillService` on loopback with one backfill of `runs` runs:
    /// each `GetBackfill` finishes the next run (those in `failing` fail)
    /// after answering `unavailable` `outages` times; the backfill completes
    /// once every run finished. `CancelBackfill` cancels it.
    mod follow {
        use std::sync::{Arc, Mutex};

        use baton_common::pb::api::backfill_service_server::{
            BackfillService, BackfillServiceServer,
        };
        use baton_common::pb::api::{
            CancelBackfillResponse, CreateBackfillResponse, GetBackfillResponse,
            ListBackfillsResponse,
        };
        use tokio::net::TcpListener;
        use tokio::sync::{Notify, oneshot};
        use tokio_stream::wrappers::TcpListenerStream;
        use tonic::{Request, Response, Status};

        use super::*;

        const FAST_POLL: Duration = Duration::from_millis(5);
        /// Every wait of these tests is bounded by this.
        const LIMIT: Duration = Duration::from_secs(20);

        #[derive(Debug, Default)]
        struct Script {
            backfill: Backfill,
            failing: Vec<usize>,
            outages: usize,
            /// Every read answers NOT_FOUND.
            gone: bool,
            gets: usize,
            cancels: usize,
        }

        #[derive(Clone)]
        struct Scripted {
            script: Arc<Mutex<Script>>,
            /// Notified after the second successful read.
            read_twice: Arc<Notify>,
        }

        #[tonic::async_trait]
        impl BackfillService for Scripted {
            async fn create_backfill(
                &self,
                _: Request<CreateBackfillRequest>,
            ) -> Result<Response<CreateBackfillResponse>, Status> {
                Err(Status::unimplemented("not scripted"))
            }

            async fn get_backfill(
                &self,
                _: Request<GetBackfillRequest>,
            ) -> Result<Response<GetBackfillResponse>, Status> {
                let mut script = self.script.lock().expect("script lock");
                if script.gone {
                    return Err(Status::not_found("backfill `b1` not found"));
                }
                if script.outages > 0 {
                    script.outages -= 1;
                    return Err(Status::unavailable("restarting"));
                }
                script.gets += 1;
                if script.gets == 2 {
                    self.read_twice.notify_one();
                }
                let failing = script.failing.clone();
                let backfill = &mut script.backfill;
                if backfill.state == BackfillState::Running as i32 {
                    let next = backfill
                        .intervals
                        .iter()
                        .position(|interval| interval.run_state == RunState::Running as i32);
                    match next {
                        Some(index) => {
                            backfill.intervals[index].run_state = if failing.contains(&index) {
                                RunState::Failed as i32
                            } else {
                                RunState::Success as i32
                            };
                        }
                        None => backfill.state = BackfillState::Completed as i32,
                    }
                }
                Ok(Response::new(GetBackfillResponse {
                    backfill: Some(backfill.clone()),
                }))
            }

            async fn list_backfills(
                &self,
                _: Request<ListBackfillsRequest>,
            ) -> Result<Response<ListBackfillsResponse>, Status> {
                Err(Status::unimplemented("not scripted"))
            }

            async fn cancel_backfill(
                &self,
                _: Request<CancelBackfillRequest>,
            ) -> Result<Response<CancelBackfillResponse>, Status> {
                let mut script = self.script.lock().expect("script lock");
                script.cancels += 1;
                let backfill = &mut script.backfill;
                backfill.state = BackfillState::Cancelled as i32;
                for interval in &mut backfill.intervals {
                    if interval.run_state == RunState::Running as i32 {
                        interval.run_state = RunState::Cancelled as i32;
                    }
                }
                Ok(Response::new(CancelBackfillResponse {
                    backfill: Some(backfill.clone()),
                }))
            }
        }

        struct Server {
            client: BatonClient,
            scripted: Scripted,
            _stop: oneshot::Sender<()>,
        }

        async fn serve(runs: usize, failing: Vec<usize>, outages: usize) -> Server {
            let backfill = Backfill {
                backfill_id: "b1".into(),
                dag_id: "etl".into(),
                state: BackfillState::Running as i32,
                intervals: (0..runs)
                    .map(|day| interval(day as i64 + 1, BackfillAction::Create, RunState::Running))
                    .collect(),
                ..Backfill::default()
            };
            let scripted = Scripted {
                script: Arc::new(Mutex::new(Script {
                    backfill,
                    failing,
                    outages,
                    ..Script::default()
                })),
                read_twice: Arc::new(Notify::new()),
            };
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let addr = format!("http://{}", listener.local_addr().expect("local addr"));
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(BackfillServiceServer::new(scripted.clone()))
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                        let _ = stopped.await;
                    }),
            );
            let client = BatonClient::connect(&addr).await.expect("connect");
            Server {
                client,
                scripted,
                _stop: stop,
            }
        }

        async fn follow_scripted(
            server: &mut Server,
            interrupt: impl Future<Output = ()>,
        ) -> anyhow::Result<FollowEnd> {
            let first = server
                .scripted
                .script
                .lock()
                .expect("lock")
                .backfill
                .clone();
            let bar = ProgressBar::hidden();
            tokio::time::timeout(
                LIMIT,
                wait_for_end(&mut server.client, first, interrupt, FAST_POLL, &bar),
            )
            .await
            .expect("following ended in time")
        }

        #[tokio::test]
        async fn following_reads_until_completed_and_succeeds_when_every_run_did() {
            let mut server = serve(3, vec![], 2).await;
            let end = follow_scripted(&mut server, std::future::pending())
                .await
                .unwrap();
            let FollowEnd::Ended(backfill) = end else {
                panic!("not ended: {end:?}");
            };
            assert_eq!(backfill_state(&backfill), BackfillState::Completed);
            assert!(matches!(outcome(&backfill), Outcome::Success));
            let script = server.scripted.script.lock().expect("lock");
            // One read per finished run, one that sees it completed; the
            // two outages were ridden out.
            assert_eq!(script.gets, 4);
            assert_eq!(script.cancels, 0);
        }

        #[tokio::test]
        async fn a_failed_run_makes_the_backfill_fail() {
            let mut server = serve(3, vec![1], 0).await;
            let end = follow_scripted(&mut server, std::future::pending())
                .await
                .unwrap();
            let FollowEnd::Ended(backfill) = end else {
                panic!("not ended: {end:?}");
            };
            assert_eq!(
                Progress::of(&backfill),
                Progress {
                    to_run: 3,
                    succeeded: 2,
                    failed: 1,
                    active: 0
                }
            );
            assert!(matches!(outcome(&backfill), Outcome::Failure));
        }

        #[tokio::test]
        async fn an_interrupt_cancels_the_backfill_as_a_whole() {
            let mut server = serve(10, vec![], 0).await;
            let read_twice = server.scripted.read_twice.clone();
            let end = follow_scripted(&mut server, async move { read_twice.notified().await })
                .await
                .unwrap();
            let FollowEnd::Interrupted(backfill) = end else {
                panic!("not interrupted: {end:?}");
            };
            assert_eq!(backfill_state(&backfill), BackfillState::Cancelled);
            let progress = Progress::of(&backfill);
            assert_eq!(
                (progress.succeeded, progress.active),
                (2, 0),
                "{progress:?}"
            );
            let script = server.scripted.script.lock().expect("lock");
            assert_eq!(script.cancels, 1);
            assert_eq!(script.gets, 2);
        }

        #[tokio::test]
        async fn following_stops_on_an_error_that_is_not_transient() {
            let mut server = serve(3, vec![], 0).await;
            server.scripted.script.lock().expect("lock").gone = true;
            let error = follow_scripted(&mut server, std::future::pending())
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains("stopped following backfill b1"), "{error}");
            assert!(error.contains("not found"), "{error}");
            assert!(error.contains("baton backfill show b1"), "{error}");
        }
    }
}
