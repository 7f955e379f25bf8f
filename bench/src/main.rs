//! Baton's benchmark runner: starts real `baton` processes (and etcd, when
//! installed) on free loopback ports with temp data dirs, drives them over
//! gRPC, and prints the medians (with min and max) of repeated runs beside
//! the stores' own cost measured in the same invocation.
//!
//! ```text
//! cargo run --release -p baton-bench -- <fanout|command|etl-runs|mixed|scale|chain|map|memory|observability|fleet|reference|cluster-…|cluster|all> \
//!     [--repeat 5] [--slots 256] [--json PATH]
//! ```
//!
//! See `bench/README.md` for what each scenario measures and how.
// A benchmark's job is to print its figures.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod chain;
mod cluster;
mod cluster_chain;
mod cluster_fanout;
mod etcd;
mod etl_runs;
mod failover;
mod fanout;
mod fleet;
mod map;
mod memory;
mod mixed;
mod observability;
mod procs;
mod reference;
mod report;
mod runs;
mod scale;
mod sim_worker;
mod stats;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::TypedValueParser as _;
use clap::{Parser, ValueEnum};

use crate::report::{Machine, Report};
use crate::target::Target;

const DEFAULT_FANOUT_WIDTH: usize = 10_000;
const DEFAULT_CHAIN_LENGTH: usize = 1_000;
const DEFAULT_MEMORY_WIDTH: usize = 100_000;
const DEFAULT_MAP_WIDTH: usize = map::MAX_WIDTH;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Tasks/s of a 1 → 10,000 → 1 noop run on `baton dev`.
    Fanout,
    /// Tasks/s of a 1 → 2,000 → 1 run of `command: ["true"]` tasks on
    /// `baton dev` (a process spawned per task).
    Command,
    /// Runs/s of 1,000 runs of the 5-task ETL shape (noops) triggered at
    /// once on `baton dev`.
    EtlRuns,
    /// Tasks/s of one run each of 100 DAGs of 100 noops with random
    /// dependencies, triggered at once on `baton dev`.
    Mixed,
    /// µs per task of fan-outs of 1,000, 10,000 and 100,000 noops on
    /// `baton dev`: flat when the cost is per event.
    Scale,
    /// Hop latency along a 1,000-noop chain on `baton dev`.
    Chain,
    /// Dynamic fan-out on `baton dev`: a list output of 10,000 items mapped
    /// into 10,000 noop instances, list ended → all dispatched.
    Map,
    /// Peak RSS of a controller running a 1 → 100,000 → 1 noop run.
    Memory,
    /// Fan-out tasks/s on `baton dev` with Prometheus metrics scraped and
    /// OTLP traces exported, against both off, alternating in one run.
    Observability,
    /// 1,000 simulated workers on one controller: idle CPU at 5 s
    /// heartbeats, memory per worker, fan-out tasks/s against 4 workers,
    /// and a new worker's connect → first assignment.
    Fleet,
    /// The embedded store's and etcd's own latency and throughput (etcd:
    /// one member, and the cluster the cluster scenarios use).
    Reference,
    /// Tasks/s of a 1 → 10,000 → 1 noop run on 3 controllers + 4 workers
    /// over a 3-member etcd cluster.
    ClusterFanout,
    /// Hop latency along a 1,000-noop chain on the same cluster shape.
    ClusterChain,
    /// SIGKILL / SIGTERM of the leader mid-run → first dispatch by the new
    /// leader, at lease TTL 5 s and 2 s.
    Failover,
    /// `command` on 3 controllers (`--controllers`) + 4 workers over the
    /// etcd cluster.
    ClusterCommand,
    /// `etl-runs` on the same cluster shape.
    ClusterEtlRuns,
    /// `mixed` on the same cluster shape.
    ClusterMixed,
    /// `scale` on the same cluster shape.
    ClusterScale,
    /// `map` on the same cluster shape.
    ClusterMap,
    /// Peak RSS of the leader (and of the standbys) of a fresh cluster of
    /// the same shape running a 1 → 99,998 → 1 noop run (100,000 tasks).
    ClusterMemory,
    /// cluster-fanout, cluster-chain, failover, cluster-command,
    /// cluster-etl-runs, cluster-mixed, cluster-scale, cluster-map,
    /// cluster-memory.
    Cluster,
    /// reference, fanout, command, etl-runs, mixed, scale, chain, map,
    /// memory, observability, fleet, then every cluster scenario, then one
    /// summary.
    All,
}

#[derive(Debug, Parser)]
#[command(name = "baton-bench", about = "Benchmarks of real `baton` processes")]
struct Args {
    scenario: Scenario,
    /// Runs (or rounds, for reference) per scenario; figures are medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Worker slots (`baton dev --slots`, `baton worker --slots`).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    slots: u32,
    /// Also write every figure, the machine and the command to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Use the existing `target/release/baton` as it is, without first
    /// running `cargo build --release -p baton-cli --bin baton` (which is a
    /// no-op when the binary is up to date). It is still built when missing.
    #[arg(long)]
    no_build: bool,
    /// Keep the temp directory (data dirs and process logs) for inspection.
    #[arg(long)]
    keep_temp: bool,
    /// `observability` with every process's metrics and traces off (an A/A
    /// test): what it reports as overheads is the spread between identical
    /// processes, the measurement's floor.
    #[arg(long)]
    observability_identical: bool,
    /// Slots of each of the 4 workers of the cluster scenarios.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    worker_slots: u32,
    /// Controllers of every cluster scenario but failover (1 measures etcd
    /// without standbys).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5).map(|v| v as usize))]
    controllers: usize,
    /// Members of the etcd cluster of the cluster scenarios (3 is what users
    /// deploy).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5).map(|v| v as usize))]
    etcd_members: usize,
    /// Parallel noops of `fanout`, `observability`, `cluster-fanout` and
    /// `failover` (targets apply to the default only).
    #[arg(long, default_value_t = DEFAULT_FANOUT_WIDTH, value_parser = clap::value_parser!(u64).range(1..=200_000).map(|v| v as usize))]
    fanout_width: usize,
    /// Noops of `chain` and `cluster-chain` (targets apply to the default
    /// only).
    #[arg(long, default_value_t = DEFAULT_CHAIN_LENGTH, value_parser = clap::value_parser!(u64).range(2..=100_000).map(|v| v as usize))]
    chain_length: usize,
    /// Items of `map`'s list, so mapped instances (targets apply to the
    /// default only; 10,000 is the default `max_map_length`).
    #[arg(long, default_value_t = DEFAULT_MAP_WIDTH, value_parser = clap::value_parser!(u64).range(1..=map::MAX_WIDTH as u64).map(|v| v as usize))]
    map_width: usize,
    /// Parallel noops of `memory` (targets apply to the default only);
    /// `cluster-memory` runs at most 99,998 (the default task limit).
    #[arg(long, default_value_t = DEFAULT_MEMORY_WIDTH, value_parser = clap::value_parser!(u64).range(1..=199_998).map(|v| v as usize))]
    memory_width: usize,
    /// Simulated workers (1 slot each) of `fleet` (targets apply to the
    /// default only).
    #[arg(long, default_value_t = fleet::DEFAULT_WORKERS, value_parser = clap::value_parser!(u32).range(4..=10_000))]
    fleet_workers: u32,
    /// HTTP/2 connections the `fleet` workers' streams share; 0: one per
    /// worker, as real workers.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000).map(|v| v as usize))]
    fleet_channels: usize,
    /// Workers that join, one after the other, with every slot busy, per
    /// `fleet` run.
    #[arg(long, default_value_t = fleet::DEFAULT_JOINS, value_parser = clap::value_parser!(u64).range(1..=1_000).map(|v| v as usize))]
    fleet_joins: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The benchmark's own work (polling, sampling) stays on one thread so
    // that it takes as little as possible from the processes it measures.
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(args) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; stopped the processes started")),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Awaits one scenario and keeps its error, if any, in `failures` under
/// `name`: the scenarios after it still run.
/// The scenarios written against a [`Target`]: on `baton dev`, and (but
/// `fanout`, whose cluster variant measures more) on a cluster.
#[derive(Debug, Clone, Copy)]
enum OnTarget {
    Fanout,
    Command,
    EtlRuns,
    Mixed,
    Scale,
    Map,
}

impl OnTarget {
    fn name(self, cluster: bool) -> &'static str {
        match (self, cluster) {
            (Self::Fanout, _) => fanout::SCENARIO,
            (Self::Command, false) => fanout::COMMAND_SCENARIO,
            (Self::Command, true) => fanout::CLUSTER_COMMAND_SCENARIO,
            (Self::EtlRuns, false) => etl_runs::SCENARIO,
            (Self::EtlRuns, true) => etl_runs::CLUSTER_SCENARIO,
            (Self::Mixed, false) => mixed::SCENARIO,
            (Self::Mixed, true) => mixed::CLUSTER_SCENARIO,
            (Self::Scale, false) => scale::SCENARIO,
            (Self::Scale, true) => scale::CLUSTER_SCENARIO,
            (Self::Map, false) => map::SCENARIO,
            (Self::Map, true) => map::CLUSTER_SCENARIO,
        }
    }

    /// Starts `target`, runs the scenario on it and stops it.
    async fn run(
        self,
        target: impl std::future::Future<Output = anyhow::Result<Target>>,
        args: &Args,
        slots: u32,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let mut target = target.await?;
        let cluster = target.is_cluster();
        let name = self.name(cluster);
        let repeat = args.repeat as usize;
        let target = &mut target;
        let result = match self {
            Self::Fanout => {
                let shape = fanout::noops();
                fanout::run(target, repeat, slots, args.fanout_width, shape, report).await
            }
            Self::Command => {
                let shape = if cluster {
                    fanout::cluster_commands()
                } else {
                    fanout::commands()
                };
                fanout::run(target, repeat, slots, fanout::COMMAND_WIDTH, shape, report).await
            }
            Self::EtlRuns => etl_runs::run(target, name, repeat, slots, report).await,
            Self::Mixed => mixed::run(target, name, repeat, slots, report).await,
            Self::Scale => scale::run(target, name, repeat, slots, report).await,
            Self::Map => map::run(target, name, repeat, slots, args.map_width, report).await,
        };
        target.stop().await;
        result
    }
}

async fn record(
    failures: &mut Vec<String>,
    name: &str,
    scenario: impl std::future::Future<Output = anyhow::Result<()>>,
) {
    if let Err(error) = scenario.await {
        failures.push(format!("{name}: {error:#}"));
    }
}

/// Starts the etcd cluster, measures its reference, then runs the wanted
/// cluster scenarios on it, and stops it.
async fn cluster_scenarios(
    args: &Args,
    binary: &std::path::Path,
    work: &std::path::Path,
    repeat: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    if args.scenario == Scenario::Reference && !std::path::Path::new(etcd::ETCD).exists() {
        // Already noted by the single-member reference.
        return Ok(());
    }
    let mut etcd = etcd::EtcdCluster::start(work, "etcd-cluster", args.etcd_members).await?;
    let result = async {
        reference::cluster(&etcd, repeat, report).await?;
        let wanted = |scenario| {
            args.scenario == scenario
                || args.scenario == Scenario::All
                || args.scenario == Scenario::Cluster
        };
        let on_cluster = cluster::OnCluster {
            binary,
            work,
            etcd: &etcd,
            controllers: args.controllers,
            slots: args.worker_slots,
            repeat,
        };
        let mut failures = Vec::new();
        if wanted(Scenario::ClusterFanout) {
            println!();
            let scenario = cluster_fanout::run(on_cluster, args.fanout_width, report);
            record(&mut failures, cluster_fanout::SCENARIO, scenario).await;
        }
        if wanted(Scenario::ClusterChain) {
            println!();
            let scenario = cluster_chain::run(on_cluster, args.chain_length, report);
            record(&mut failures, cluster_chain::SCENARIO, scenario).await;
        }
        if wanted(Scenario::Failover) {
            let scenario = failover::run(on_cluster, args.fanout_width, report);
            record(&mut failures, "failover", scenario).await;
        }
        for (scenario, on) in [
            (Scenario::ClusterCommand, OnTarget::Command),
            (Scenario::ClusterEtlRuns, OnTarget::EtlRuns),
            (Scenario::ClusterMixed, OnTarget::Mixed),
            (Scenario::ClusterScale, OnTarget::Scale),
            (Scenario::ClusterMap, OnTarget::Map),
        ] {
            if wanted(scenario) {
                println!();
                let name = on.name(true);
                let target = Target::cluster(on_cluster, name);
                let result = on.run(target, args, args.worker_slots, report);
                record(&mut failures, name, result).await;
            }
        }
        if wanted(Scenario::ClusterMemory) {
            println!();
            let width = args.memory_width.min(memory::CLUSTER_MAX_WIDTH);
            let scenario = memory::run_cluster(on_cluster, width, report);
            record(&mut failures, memory::CLUSTER_SCENARIO, scenario).await;
        }
        if args.etcd_members != 3 {
            report.notes.push(format!(
                "cluster scenarios ran on {} etcd member(s), not the 3 users deploy",
                args.etcd_members
            ));
        }
        if args.controllers != cluster::CONTROLLERS {
            report.notes.push(format!(
                "cluster scenarios but failover ran with {} controller(s); the etcd targets are set for {}",
                args.controllers,
                cluster::CONTROLLERS
            ));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(failures.join("; ")))
        }
    }
    .await;
    etcd.stop().await;
    result
}

/// Runs the scenarios; `Ok(false)` when one of them failed.
async fn run(args: Args) -> anyhow::Result<bool> {
    let machine = Machine::detect();
    let command = format!(
        "cargo run --release -p baton-bench -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let binary = procs::baton_binary(args.no_build)?;
    let built = std::fs::metadata(&binary)
        .and_then(|meta| meta.modified())
        .map(|time| {
            chrono::DateTime::<chrono::Utc>::from(time)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .unwrap_or_default();
    let temp = tempfile::Builder::new().prefix("baton-bench-").tempdir()?;
    let work = temp.path().to_path_buf();
    let load_start = report::loadavg();
    println!("machine: {}", machine.describe());
    println!("load:    {load_start} (1, 5, 15 min) before the first measurement");
    println!("baton:   {} (built {built})", binary.display());
    println!("temp:    {}", work.display());
    println!("command: {command}");
    println!();

    let repeat = args.repeat as usize;
    let mut report = Report::default();
    let mut failures = Vec::new();
    // Every scenario's figures are printed beside the stores' own cost,
    // measured in the same invocation.
    record(
        &mut failures,
        reference::SCENARIO,
        reference::run(&work, repeat, &mut report),
    )
    .await;
    let wanted = |scenario| args.scenario == scenario || args.scenario == Scenario::All;
    for (scenario, on) in [
        (Scenario::Fanout, OnTarget::Fanout),
        (Scenario::Command, OnTarget::Command),
        (Scenario::EtlRuns, OnTarget::EtlRuns),
        (Scenario::Mixed, OnTarget::Mixed),
        (Scenario::Scale, OnTarget::Scale),
    ] {
        if wanted(scenario) {
            println!();
            let name = on.name(false);
            let target = Target::dev(&binary, &work, name, args.slots);
            let result = on.run(target, &args, args.slots, &mut report);
            record(&mut failures, name, result).await;
        }
    }
    if wanted(Scenario::Chain) {
        println!();
        let scenario = chain::run(
            &binary,
            &work,
            repeat,
            args.slots,
            args.chain_length,
            &mut report,
        );
        record(&mut failures, chain::SCENARIO, scenario).await;
    }
    if wanted(Scenario::Map) {
        println!();
        let target = Target::dev(&binary, &work, map::SCENARIO, args.slots);
        let scenario = OnTarget::Map.run(target, &args, args.slots, &mut report);
        record(&mut failures, map::SCENARIO, scenario).await;
    }
    if wanted(Scenario::Memory) {
        println!();
        let scenario = memory::run(
            &binary,
            &work,
            repeat,
            args.slots,
            args.memory_width,
            &mut report,
        );
        record(&mut failures, memory::SCENARIO, scenario).await;
    }
    if wanted(Scenario::Observability) {
        println!();
        let scenario = observability::run(
            &binary,
            &work,
            repeat,
            args.slots,
            args.fanout_width,
            args.observability_identical,
            &mut report,
        );
        record(&mut failures, observability::SCENARIO, scenario).await;
    }
    if wanted(Scenario::Fleet) {
        println!();
        let shape = fleet::Shape {
            workers: args.fleet_workers,
            joins: args.fleet_joins,
            channels: args.fleet_channels,
            fanout_width: args.fanout_width,
        };
        let scenario = fleet::run(&binary, &work, repeat, shape, &mut report);
        record(&mut failures, fleet::SCENARIO, scenario).await;
    }
    let cluster_wanted = matches!(
        args.scenario,
        Scenario::ClusterFanout
            | Scenario::ClusterChain
            | Scenario::Failover
            | Scenario::ClusterCommand
            | Scenario::ClusterEtlRuns
            | Scenario::ClusterMixed
            | Scenario::ClusterScale
            | Scenario::ClusterMap
            | Scenario::ClusterMemory
            | Scenario::Cluster
            | Scenario::All
    );
    if cluster_wanted || args.scenario == Scenario::Reference {
        println!();
        let scenarios = cluster_scenarios(&args, &binary, &work, repeat, &mut report);
        record(&mut failures, "cluster", scenarios).await;
    }
    let failover_scenarios: Vec<&str> = failover::TTLS.iter().map(|(name, _)| *name).collect();
    let mut sized: Vec<(&str, bool)> = vec![
        (fanout::SCENARIO, args.fanout_width != DEFAULT_FANOUT_WIDTH),
        (chain::SCENARIO, args.chain_length != DEFAULT_CHAIN_LENGTH),
        (map::SCENARIO, args.map_width != DEFAULT_MAP_WIDTH),
        (map::CLUSTER_SCENARIO, args.map_width != DEFAULT_MAP_WIDTH),
        (memory::SCENARIO, args.memory_width != DEFAULT_MEMORY_WIDTH),
        (
            memory::CLUSTER_SCENARIO,
            args.memory_width < memory::CLUSTER_MAX_WIDTH,
        ),
        (
            observability::SCENARIO,
            args.fanout_width != DEFAULT_FANOUT_WIDTH,
        ),
        (
            fleet::SCENARIO,
            args.fanout_width != DEFAULT_FANOUT_WIDTH
                || args.fleet_workers != fleet::DEFAULT_WORKERS,
        ),
        (
            cluster_fanout::SCENARIO,
            args.fanout_width != DEFAULT_FANOUT_WIDTH,
        ),
        (
            cluster_chain::SCENARIO,
            args.chain_length != DEFAULT_CHAIN_LENGTH,
        ),
    ];
    for scenario in &failover_scenarios {
        sized.push((scenario, args.fanout_width != DEFAULT_FANOUT_WIDTH));
    }
    for (scenario, custom) in sized {
        if custom && report.figures.iter().any(|f| f.scenario == scenario) {
            for figure in report.figures.iter_mut().filter(|f| f.scenario == scenario) {
                figure.goal = None;
            }
            report.notes.push(format!(
                "{scenario}: non-default size, so its target is not judged"
            ));
        }
    }

    let load_end = report::loadavg();
    println!();
    println!(
        "== summary: medians of {repeat} runs each; {} ==",
        machine.describe()
    );
    println!("load average (1, 5, 15 min): {load_start} at the start, {load_end} at the end");
    println!("{}", report.table());
    if !report.comparisons.is_empty() {
        println!("beside the stores' own cost (measured above, same run):");
        for line in &report.comparisons {
            println!("  {line}");
        }
    }
    for line in &report.notes {
        println!("note: {line}");
    }
    let targets = report.targets();
    if !targets.is_empty() {
        println!("targets:");
        for line in &targets {
            println!("  {line}");
        }
    }
    for failure in &failures {
        println!("FAILED {failure}");
    }
    if let Some(path) = &args.json {
        let mut document = report.to_json(&machine, &command);
        document["repeat"] = repeat.into();
        document["slots"] = args.slots.into();
        document["map_width"] = args.map_width.into();
        document["worker_slots"] = args.worker_slots.into();
        document["etcd_members"] = args.etcd_members.into();
        document["fleet_workers"] = args.fleet_workers.into();
        document["fleet_channels"] = args.fleet_channels.into();
        document["fleet_joins"] = args.fleet_joins.into();
        document["baton_binary"] = binary.display().to_string().into();
        document["failures"] = failures.clone().into();
        document["loadavg_start"] = load_start.clone().into();
        document["loadavg_end"] = load_end.clone().into();
        std::fs::write(path, serde_json::to_string_pretty(&document)? + "\n")?;
        println!("figures written to {}", path.display());
    }
    if args.keep_temp {
        let kept = temp.keep();
        println!("kept {}", kept.display());
    }
    Ok(failures.is_empty())
}
