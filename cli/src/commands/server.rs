//! `baton dev`, `baton controller` and `baton worker`: the long-running
//! processes, and their shutdown on SIGTERM or Ctrl-C (a second signal
//! exits at once).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_common::client::normalize_addr;
use baton_common::ids::{QueueName, WorkerId};
use baton_common::traces::SpanSink;
use baton_controller::ControllerConfig;
use baton_controller::config::{ClusterConfig, ConfigFile};
use baton_worker::{WorkerConfig, WorkerMetrics};
use clap::{Args, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Context;
use crate::Outcome;
use crate::output::print_line;

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "BATON_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the store file and task logs.
    #[arg(long, env = "BATON_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Config file (TOML); flags override it. See deploy/controller.example.toml.
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
    /// Identity of this controller in logs and worker messages.
    #[arg(long = "id", env = "BATON_CONTROLLER_ID")]
    controller_id: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address; off
    /// unless given.
    #[arg(long, env = "BATON_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How often workers send heartbeats (e.g. 2s).
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// A worker silent this long is declared lost (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    worker_lost_timeout: Option<Duration>,
    /// After a restart, how long workers have to re-announce running attempts.
    #[arg(long, value_parser = humantime::parse_duration)]
    recovery_grace: Option<Duration>,
    /// Directory for task logs (default: <data-dir>/logs). In a cluster, a
    /// directory all controllers share lets any leader serve older logs.
    #[arg(long, env = "BATON_LOG_DIR", conflicts_with = "log_url")]
    log_dir: Option<PathBuf>,
    /// Task log store as a URL, instead of --log-dir: file:///path,
    /// s3://bucket/prefix, gs://bucket/prefix or az://container/prefix
    /// (cloud stores read their credentials from the usual environment
    /// variables, e.g. AWS_ACCESS_KEY_ID, AWS_REGION, AWS_ENDPOINT).
    #[arg(long, env = "BATON_LOG_URL")]
    log_url: Option<String>,
    /// Delete the logs of runs that ended longer ago than this (e.g. 30d);
    /// kept until their DAG is deleted by default.
    #[arg(long, env = "BATON_LOG_RETENTION", value_parser = humantime::parse_duration)]
    log_retention: Option<Duration>,
    /// Cluster mode: etcd endpoints (comma-separated), e.g.
    /// http://127.0.0.1:2379. Without it the controller runs alone on the
    /// embedded store.
    #[arg(long = "etcd", env = "BATON_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Prefix of every key in etcd.
    #[arg(long, env = "BATON_ETCD_PREFIX")]
    etcd_prefix: Option<String>,
    /// TTL of the leader's lease (whole seconds): how long a dead leader
    /// holds leadership before a follower takes over.
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_ttl: Option<Duration>,
    /// Address clients and workers reach this controller at (cluster mode;
    /// default: http://<listen address>).
    #[arg(long, env = "BATON_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    #[command(subcommand)]
    action: Option<WorkerAction>,
    /// Identity of the worker, stable across restarts (a random id by default).
    #[arg(long = "id", env = "BATON_WORKER_ID")]
    worker_id: Option<String>,
    /// Attempts run at once (default: the number of cores).
    #[arg(long, env = "BATON_WORKER_SLOTS")]
    slots: Option<u32>,
    /// Queue to take tasks from; repeat for several.
    #[arg(long = "queue", env = "BATON_WORKER_QUEUES", value_delimiter = ',')]
    queues: Vec<String>,
    /// Label to advertise, as key=value; repeat for several.
    #[arg(long = "label", value_parser = parse_key_value)]
    labels: Vec<(String, String)>,
    /// Directory for attempts' scratch files ($BATON_OUTPUT).
    #[arg(long, env = "BATON_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// CPU offered to tasks that declare `resources.cpu`: cores (`4`,
    /// `0.5`) or millicores (`500m`). Default: this machine's cores.
    #[arg(long, env = "BATON_WORKER_CPU", value_parser = parse_cpu_flag)]
    cpu: Option<u64>,
    /// Memory offered to tasks that declare `resources.memory`: bytes or
    /// with a unit (`8Gi`, `512Mi`, `16G`). Default: this machine's memory.
    #[arg(long, env = "BATON_WORKER_MEMORY", value_parser = parse_memory_flag)]
    memory: Option<u64>,
    /// Between SIGTERM and SIGKILL when a task is stopped.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    kill_grace: Duration,
    /// On shutdown or `baton worker drain` without `--grace`: how long
    /// running tasks may finish before they are stopped and re-queued.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    drain_grace: Duration,
    /// Serve the worker's Prometheus metrics (`GET /metrics`,
    /// `baton_agent_…`) on this address; off unless given.
    #[arg(long, env = "BATON_WORKER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

/// What `baton worker <action>` does instead of running a worker.
#[derive(Debug, Subcommand)]
pub enum WorkerAction {
    /// Drain a connected worker: it takes nothing new, its running tasks
    /// get the grace period to finish, then what still runs is stopped and
    /// re-queued (no retry used), and the worker exits.
    Drain {
        /// The worker's id (see `baton cluster status`).
        worker_id: String,
        /// How long running tasks may take (default: the worker's
        /// `--drain-grace`).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
    },
}

impl WorkerArgs {
    /// False for `baton worker drain`, a client command.
    pub fn is_server(&self) -> bool {
        self.action.is_none()
    }
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory for the store file, task logs and task scratch files.
    #[arg(long, env = "BATON_DATA_DIR", default_value = ".baton")]
    data_dir: PathBuf,
    /// Serve Prometheus metrics (`GET /metrics`) on this address: the
    /// controller's, and the in-process worker's (`baton_agent_…`); off
    /// unless given.
    #[arg(long, env = "BATON_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Config file (TOML) for the controller, as for `baton controller`;
    /// flags override it, and its cluster settings are refused (dev runs
    /// alone on the embedded store).
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
    /// Attempts the in-process worker runs at once (default: the number of cores).
    #[arg(long)]
    slots: Option<u32>,
    /// Queues the in-process worker serves.
    #[arg(long = "queue", value_delimiter = ',', default_value = "default")]
    queues: Vec<String>,
    /// How often the worker heartbeats.
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// A worker silent this long is declared lost.
    #[arg(long, value_parser = humantime::parse_duration)]
    worker_lost_timeout: Option<Duration>,
    /// After a restart, how long workers have to re-announce running attempts.
    #[arg(long, value_parser = humantime::parse_duration)]
    recovery_grace: Option<Duration>,
    /// Do not start the in-process worker (connect `baton worker`s instead).
    #[arg(long)]
    no_worker: bool,
}

fn parse_cpu_flag(text: &str) -> Result<u64, String> {
    baton_common::spec::parse_cpu(&baton_common::spec::Quantity::Text(text.to_string()))
}

fn parse_memory_flag(text: &str) -> Result<u64, String> {
    baton_common::spec::parse_memory(&baton_common::spec::Quantity::Text(text.to_string()))
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not key=value")),
    }
}

/// A token cancelled on the first SIGTERM or SIGINT; a second one exits.
fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received; shutting down"),
            _ = interrupt.recv() => info!("interrupt received; shutting down"),
        }
        cancel.cancel();
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        warn!("second signal: exiting at once");
        std::process::exit(130);
    });
    Ok(token)
}

/// An address of the config file's `[controller]` section (`field`),
/// checked.
fn file_address(field: &str, address: Option<&str>) -> anyhow::Result<Option<SocketAddr>> {
    address
        .map(|address| {
            address
                .parse()
                .with_context(|| format!("config controller.{field}: `{address}` is not host:port"))
        })
        .transpose()
}

/// The config file's `controller.metrics_listen`, checked.
fn file_metrics_listen(file: &ConfigFile) -> anyhow::Result<Option<SocketAddr>> {
    file_address("metrics_listen", file.controller.metrics_listen.as_deref())
}

async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))
}

/// Runs a controller; `traces`: where to export run and attempt spans (when
/// the process installed an OTLP exporter).
pub async fn controller(args: ControllerArgs, traces: Option<SpanSink>) -> anyhow::Result<Outcome> {
    let mut listen = args.listen;
    let mut config = ControllerConfig::new(PathBuf::from("/var/lib/baton"));
    if let Some(path) = &args.config {
        let file = ConfigFile::load(path)?;
        if listen.is_none() {
            listen = file_address("listen", file.controller.listen.as_deref())?;
        }
        config.metrics_listen = file_metrics_listen(&file)?;
        config.apply_file(file);
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(id) = args.controller_id {
        config.controller_id = id;
    }
    if let Some(address) = args.metrics_listen {
        config.metrics_listen = Some(address);
    }
    if let Some(log_dir) = args.log_dir {
        config.log_dir = Some(log_dir);
        config.log_url = None;
    }
    if let Some(log_url) = args.log_url {
        config.log_url = Some(log_url);
    }
    if let Some(retention) = args.log_retention {
        config.log_retention = Some(retention);
    }
    apply_timings(
        &mut config,
        args.heartbeat_interval,
        args.worker_lost_timeout,
        args.recovery_grace,
    );
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070)));
    if !args.etcd_endpoints.is_empty() {
        let cluster = config
            .cluster
            .get_or_insert_with(|| ClusterConfig::new(Vec::new(), String::new()));
        cluster.etcd_endpoints = args
            .etcd_endpoints
            .iter()
            .map(|endpoint| normalize_addr(endpoint.trim()))
            .collect();
    }
    if let Some(cluster) = &mut config.cluster {
        if let Some(prefix) = args.etcd_prefix {
            cluster.etcd_prefix = prefix;
        }
        if let Some(ttl) = args.lease_ttl {
            cluster.lease_ttl = ttl;
        }
        if let Some(address) = args.advertise_address {
            cluster.advertise_address = normalize_addr(&address);
        }
        if cluster.advertise_address.is_empty() {
            if listen.ip().is_unspecified() {
                bail!(
                    "--advertise-address is required when listening on {listen}: workers and clients need an address to reach this controller"
                );
            }
            cluster.advertise_address = format!("http://{listen}");
        }
    }
    config.traces = traces;
    config.validate()?;
    let shutdown = shutdown_on_signal()?;
    let listener = bind(listen).await?;
    baton_controller::serve(listener, config, shutdown).await?;
    Ok(Outcome::Success)
}

fn apply_timings(
    config: &mut ControllerConfig,
    heartbeat: Option<Duration>,
    lost: Option<Duration>,
    grace: Option<Duration>,
) {
    if let Some(value) = heartbeat {
        config.heartbeat_interval = value;
    }
    if let Some(value) = lost {
        config.worker_lost_timeout = value;
    }
    if let Some(value) = grace {
        config.recovery_grace = value;
    }
}

fn worker_config(
    args: WorkerArgs,
    addr: &str,
    traces: Option<SpanSink>,
) -> anyhow::Result<WorkerConfig> {
    let work_dir = args
        .work_dir
        .unwrap_or_else(|| std::env::temp_dir().join("baton-worker"));
    let mut config = WorkerConfig::new(addr, work_dir);
    if let Some(id) = args.worker_id {
        config.worker_id = WorkerId::new(id).map_err(|error| anyhow::anyhow!("--id: {error}"))?;
    }
    if let Some(slots) = args.slots {
        config.slots = slots;
    }
    if !args.queues.is_empty() {
        config.queues = args
            .queues
            .into_iter()
            .map(|queue| QueueName::new(queue).map_err(|error| anyhow::anyhow!("--queue: {error}")))
            .collect::<anyhow::Result<_>>()?;
    }
    config.labels = args.labels.into_iter().collect::<BTreeMap<_, _>>();
    if let Some(cpu_millis) = args.cpu {
        config.resources.cpu_millis = cpu_millis;
    }
    if let Some(memory_bytes) = args.memory {
        config.resources.memory_bytes = memory_bytes;
    }
    config.kill_grace = args.kill_grace;
    config.drain_grace = args.drain_grace;
    config.traces = traces;
    config.validate()?;
    Ok(config)
}

/// Runs a worker (or drains one); `traces`: where to export the spans of
/// executions, which join their runs' traces (when the process installed
/// an OTLP exporter).
pub async fn worker(
    mut args: WorkerArgs,
    context: &Context,
    traces: Option<SpanSink>,
) -> anyhow::Result<Outcome> {
    if let Some(WorkerAction::Drain { worker_id, grace }) = args.action.take() {
        let mut client = context.client().await?;
        let response = client
            .cluster
            .drain_worker(baton_common::pb::api::DrainWorkerRequest {
                worker_id: worker_id.clone(),
                grace: grace.map(baton_common::time::duration_to_proto),
            })
            .await?
            .into_inner();
        if context.json() {
            crate::output::print_json(&serde_json::json!({
                "worker_id": worker_id,
                "running": response.running,
            }));
        } else {
            print_line(format_args!(
                "worker {worker_id} is draining ({} tasks running)",
                response.running
            ));
        }
        return Ok(Outcome::Success);
    }
    let metrics_listen = args.metrics_listen;
    let config = worker_config(args, &context.addr, traces)?;
    let shutdown = shutdown_on_signal()?;
    let Some(address) = metrics_listen else {
        baton_worker::run(config, None, shutdown).await?;
        return Ok(Outcome::Success);
    };
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("--metrics-listen {address}: cannot listen"))?;
    let metrics = Arc::new(WorkerMetrics::new(config.worker_id.as_str(), config.slots));
    let render: baton_common::metrics_http::Render = {
        let metrics = Arc::clone(&metrics);
        Arc::new(move || {
            let text = metrics.encode();
            Box::pin(async move { text })
        })
    };
    // The endpoint outlives the worker's drain, so the last scrapes see it.
    let endpoint_stop = CancellationToken::new();
    let endpoint = tokio::spawn(baton_common::metrics_http::serve(
        listener,
        render,
        endpoint_stop.clone(),
    ));
    let result = baton_worker::run(config, Some(metrics), shutdown).await;
    endpoint_stop.cancel();
    match endpoint.await {
        Ok(Err(error)) => warn!(%error, "the metrics endpoint stopped"),
        Err(error) => warn!(%error, "the metrics endpoint panicked"),
        Ok(Ok(())) => {}
    }
    result?;
    Ok(Outcome::Success)
}

/// Runs a controller and a worker in one process; `traces` and
/// `worker_traces`: where to export run and attempt spans, and the worker's
/// execution spans under them.
pub async fn dev(
    args: DevArgs,
    traces: Option<SpanSink>,
    worker_traces: Option<SpanSink>,
) -> anyhow::Result<Outcome> {
    let data_dir = std::path::absolute(&args.data_dir).unwrap_or(args.data_dir.clone());
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let mut config = ControllerConfig::new(&data_dir);
    if let Some(path) = &args.config {
        let file = ConfigFile::load(path)?;
        if file.cluster.etcd_endpoints.is_some() {
            bail!(
                "config cluster.etcd_endpoints: baton dev runs alone on the embedded store; use `baton controller` for cluster mode"
            );
        }
        config.metrics_listen = file_metrics_listen(&file)?;
        config.apply_file(file);
        // `--data-dir` (with its default) wins over the file.
        config.data_dir = data_dir.clone();
    }
    config.controller_id = "dev".into();
    if let Some(address) = args.metrics_listen {
        config.metrics_listen = Some(address);
    }
    config.traces = traces;
    apply_timings(
        &mut config,
        args.heartbeat_interval,
        args.worker_lost_timeout,
        args.recovery_grace,
    );
    if args.recovery_grace.is_none() {
        // The in-process worker re-registers at once after a restart; other
        // workers get the usual time.
        config.recovery_grace = config.worker_lost_timeout;
    }
    config.validate()?;
    let listener = bind(args.listen).await?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let shutdown = shutdown_on_signal()?;
    let worker_config = if args.no_worker {
        None
    } else {
        let mut worker_config =
            WorkerConfig::new(format!("http://{address}"), data_dir.join("work"));
        // A stable id: after a restart the controller knows at once that the
        // previous process's attempts are gone.
        worker_config.worker_id = WorkerId::new("dev-worker").expect("valid id");
        worker_config.drain_grace = Duration::from_secs(10);
        worker_config.traces = worker_traces;
        if let Some(slots) = args.slots {
            worker_config.slots = slots;
        }
        worker_config.queues = args
            .queues
            .into_iter()
            .map(|queue| QueueName::new(queue).map_err(|error| anyhow::anyhow!("--queue: {error}")))
            .collect::<anyhow::Result<_>>()?;
        worker_config.validate()?;
        Some(worker_config)
    };
    // The in-process worker's metrics are served beside the controller's.
    let worker_metrics = match &worker_config {
        Some(worker_config) if config.metrics_listen.is_some() => {
            let metrics = Arc::new(WorkerMetrics::new(
                worker_config.worker_id.as_str(),
                worker_config.slots,
            ));
            let section = Arc::clone(&metrics);
            config.extra_metrics = Some(baton_common::metrics_http::MetricsSection::new(
                move |text| section.encode_families(text),
            ));
            Some(metrics)
        }
        _ => None,
    };
    // The worker drains first (its results still reach the controller);
    // the controller stops after it.
    let controller_shutdown = CancellationToken::new();
    let mut controller = tokio::spawn(baton_controller::serve(
        listener,
        config,
        controller_shutdown.clone(),
    ));
    print_line(format_args!(
        "baton dev: controller listening on http://{address} (data in {}); set BATON_ADDR=http://{address} in other shells",
        data_dir.display()
    ));
    let worker = worker_config.map(|worker_config| {
        tokio::spawn(baton_worker::run(
            worker_config,
            worker_metrics,
            shutdown.clone(),
        ))
    });
    let controller_result = tokio::select! {
        result = &mut controller => {
            shutdown.cancel();
            stop_worker(worker).await;
            result
        }
        () = shutdown.cancelled() => {
            stop_worker(worker).await;
            controller_shutdown.cancel();
            controller.await
        }
    };
    if let Err(error) = controller_result.context("controller task panicked")? {
        bail!(error);
    }
    Ok(Outcome::Success)
}

async fn stop_worker(
    worker: Option<tokio::task::JoinHandle<Result<(), baton_worker::WorkerError>>>,
) {
    let Some(worker) = worker else { return };
    match tokio::time::timeout(Duration::from_secs(20), worker).await {
        Ok(Ok(Err(error))) => warn!(%error, "worker stopped with an error"),
        Ok(Err(error)) => warn!(%error, "worker task panicked"),
        Err(_) => warn!("worker did not stop in time"),
        Ok(Ok(Ok(()))) => {}
    }
}
