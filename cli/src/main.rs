//! `baton`: the one binary. It runs a controller, a worker, or both in one
//! process (`baton dev`), and is the client for DAGs, runs and logs.
//!
//! # Layout
//! - `main.rs`: arguments, the runtime, exit codes.
//! - `telemetry/`: log lines (`--log-format`, `RUST_LOG`) and the
//!   OpenTelemetry trace exporter of the server commands (`export.rs`).
//! - `commands/server.rs`: `dev`, `controller`, `worker`, signal handling.
//! - `commands/dag.rs`, `commands/run.rs`, `commands/task.rs`,
//!   `commands/logs.rs`, `commands/pool.rs`, `commands/cluster.rs`: the
//!   client of DAGs, runs, task states set by hand, logs, pools and the
//!   cluster.
//! - `commands/backfill.rs`, `commands/event.rs`, `commands/asset.rs`: the
//!   client of scheduling beyond a DAG's own schedule: backfills, events,
//!   assets.
//! - `commands/params.rs`, `commands/dates.rs`: run parameters and dates as
//!   typed on the command line (dates in a DAG's time zone).
//! - `output.rs`: tables for people and JSON for scripts.

mod commands;
mod malloc;
mod output;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::{asset, backfill, cluster, dag, event, logs, pool, run, server, task, top};

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: a fast, distributed workflow orchestrator"
)]
struct Cli {
    /// Address of the controller (any replica).
    #[arg(long, global = true, env = "BATON_ADDR", default_value = baton_common::client::DEFAULT_ADDR)]
    addr: String,
    /// Output format of client commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table, env = "BATON_OUTPUT_FORMAT")]
    output: OutputFormat,
    /// Format of the process's own log lines (on stderr): `json` is one
    /// object per line with the fields of the event and its spans (dag_id,
    /// run_id, task_id, attempt, ...); levels come from RUST_LOG.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BATON_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a controller and a worker in one process on the embedded store.
    Dev(server::DevArgs),
    /// Run a controller.
    Controller(server::ControllerArgs),
    /// Run a worker that takes tasks from a controller (or, with `drain`,
    /// drain a running one).
    Worker(server::WorkerArgs),
    /// Create, resize and delete pools (global concurrency limits).
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Validate, register and manage DAGs.
    #[command(subcommand)]
    Dag(dag::DagCommand),
    /// Trigger, follow, cancel and retry runs.
    #[command(subcommand)]
    Run(run::RunCommand),
    /// Set a task's state by hand (mark it success, failed or skipped).
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Run a DAG's schedule over a past date range (one run per data
    /// interval); list, show and cancel backfills.
    ///
    /// A backfill creates one run for each data interval of the DAG's
    /// schedule whose start (logical date) lies in [--from, --to]. Intervals
    /// that already have a run are skipped (--rerun-failed runs the failed
    /// ones again), so backfilling a range twice creates nothing new. The
    /// command follows the backfill until every run ended and exits 0 only
    /// if all of them succeeded; Ctrl-C cancels the backfill and its
    /// unfinished runs (--detach returns at once instead).
    Backfill(backfill::BackfillArgs),
    /// Emit events that trigger the DAGs listening to them; list events.
    #[command(subcommand)]
    Event(event::EventCommand),
    /// See assets (datasets) with their producers, consumers and updates;
    /// record an update made outside Baton.
    #[command(subcommand)]
    Asset(asset::AssetCommand),
    /// Print (and follow) the log of a task's attempt.
    Logs(logs::LogsArgs),
    /// See the cluster: leader, controllers, workers, queues.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// A live view of the cluster, refreshed in place: leader, workers and
    /// slots, queue depths, pools, and the active runs with their tasks'
    /// states.
    Top(top::TopArgs),
}

impl Command {
    /// The server this command runs, if it runs one.
    fn server_role(&self) -> Option<telemetry::Role> {
        match self {
            Command::Dev(_) => Some(telemetry::Role::Dev),
            Command::Controller(_) => Some(telemetry::Role::Controller),
            Command::Worker(args) if args.is_server() => Some(telemetry::Role::Worker),
            _ => None,
        }
    }
}

/// What a command wants the process to exit with, besides errors.
pub enum Outcome {
    Success,
    /// The command worked but reports a failure (a run that failed, a DAG
    /// that does not validate).
    Failure,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime starts any thread.
    let refused_malloc_settings = match cli.command {
        Command::Dev(_) | Command::Controller(_) => malloc::tune_for_controller(),
        _ => Vec::new(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The trace exporter's connection is created on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        match telemetry::init(cli.log_format, cli.command.server_role()) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::FAILURE;
            }
        }
    };
    for setting in refused_malloc_settings {
        tracing::warn!(
            setting,
            "glibc refused this malloc setting; its default stays"
        );
    }
    let controller_traces = telemetry.span_sink(baton_common::traces::CONTROLLER_SCOPE);
    let worker_traces = telemetry.span_sink(baton_common::traces::WORKER_SCOPE);
    let context = commands::Context {
        addr: cli.addr,
        output: cli.output,
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => server::dev(args, controller_traces, worker_traces).await,
            Command::Controller(args) => server::controller(args, controller_traces).await,
            Command::Worker(args) => server::worker(args, &context, worker_traces).await,
            Command::Dag(command) => dag::run(command, &context).await,
            Command::Run(command) => run::run(command, &context).await,
            Command::Task(command) => task::run(command, &context).await,
            Command::Backfill(args) => backfill::run(args, &context).await,
            Command::Event(command) => event::run(command, &context).await,
            Command::Asset(command) => asset::run(command, &context).await,
            Command::Logs(args) => logs::run(args, &context).await,
            Command::Cluster(command) => cluster::run(command, &context).await,
            Command::Top(args) => top::run(args, &context).await,
            Command::Pool(command) => pool::run(command, &context).await,
        }
    });
    // Spans still buffered go out before the runtime (and with it the
    // exporter's connection) stops.
    runtime.block_on(telemetry.shutdown());
    // Streams and background tasks are not waited for once the command is done.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failure) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {}", commands::describe(&error));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command, OutputFormat};
    use crate::commands::run::RunCommand;
    use crate::commands::task::{MarkState, TaskCommand};

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(argv)
    }

    /// Every subcommand's arguments are consistent (clap checks names,
    /// conflicts and defaults only when a command is built).
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Global options may sit between `backfill` and its subcommand, as
    /// they may for every other command.
    #[test]
    fn global_options_mix_with_both_backfill_forms() {
        for argv in [
            ["baton", "backfill", "-o", "json", "list"].as_slice(),
            &["baton", "-o", "json", "backfill", "list"],
            &["baton", "backfill", "list", "-o", "json"],
            &[
                "baton",
                "backfill",
                "-o",
                "json",
                "etl",
                "--from",
                "2026-01-01",
                "--to",
                "2026-01-02",
            ],
            &[
                "baton",
                "backfill",
                "etl",
                "--from",
                "2026-01-01",
                "--to",
                "2026-01-02",
                "-o",
                "json",
            ],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|error| panic!("{argv:?}: {error}"));
            assert_eq!(cli.output, OutputFormat::Json, "{argv:?}");
            assert!(matches!(cli.command, Command::Backfill(_)), "{argv:?}");
        }
    }

    #[test]
    fn task_mark_takes_a_state_and_a_reason() {
        let cli = parse(&[
            "baton",
            "task",
            "mark",
            "RUN",
            "per-file[3]",
            "--state",
            "success",
            "--reason",
            "fixed upstream",
        ])
        .unwrap();
        let Command::Task(TaskCommand::Mark {
            run_id,
            task,
            state,
            reason,
        }) = cli.command
        else {
            panic!("{:?}", cli.command);
        };
        assert_eq!(run_id, "RUN");
        assert_eq!(task, "per-file[3]");
        assert_eq!(state, MarkState::Success);
        assert_eq!(reason.as_deref(), Some("fixed upstream"));
        for state in ["failed", "skipped"] {
            parse(&["baton", "task", "mark", "RUN", "load", "--state", state]).unwrap();
        }
        for argv in [
            ["baton", "task", "mark", "RUN", "load", "--state", "running"].as_slice(),
            &["baton", "task", "mark", "RUN", "load"],
            &[
                "baton", "task", "mark", "RUN", "load[x]", "--state", "failed",
            ],
        ] {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
        let error = parse(&["baton", "task", "mark", "RUN", "load", "--state", "done"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("success, failed, skipped"), "{error}");
    }

    #[test]
    fn run_retry_clears_upstream_and_downstream_on_request() {
        let retry = |argv: &[&str]| match parse(argv).unwrap().command {
            Command::Run(RunCommand::Retry {
                task_id,
                no_downstream,
                upstream,
                ..
            }) => (task_id, no_downstream, upstream),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            retry(&["baton", "run", "retry", "RUN", "load"]),
            ("load".to_string(), false, false)
        );
        assert_eq!(
            retry(&[
                "baton",
                "run",
                "retry",
                "RUN",
                "load[2]",
                "--upstream",
                "--no-downstream"
            ]),
            ("load[2]".to_string(), true, true)
        );
        assert!(parse(&["baton", "run", "retry", "RUN", "load[]"]).is_err());
    }

    #[test]
    fn run_show_lists_every_instance_on_request() {
        for (argv, expected) in [
            (["baton", "run", "show", "RUN"].as_slice(), false),
            (&["baton", "run", "show", "RUN", "--instances"], true),
        ] {
            match parse(argv).unwrap().command {
                Command::Run(RunCommand::Show { instances, .. }) => {
                    assert_eq!(instances, expected, "{argv:?}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
