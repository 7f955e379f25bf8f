//! A Baton cluster for the cluster scenarios: `baton controller`s in cluster
//! mode on an [`EtcdCluster`] this benchmark started, and `baton worker`s
//! that follow the leader, all on free loopback ports with data under the
//! temp directory, as `deploy/local-cluster.sh` starts them:
//!
//! ```text
//! baton controller --id bench-c<i> --listen 127.0.0.1:P --advertise-address http://127.0.0.1:P
//!     --data-dir D/c<i> --log-dir D/task-logs --etcd E1,E2,E3 --etcd-prefix /<scenario>
//!     --lease-ttl <ttl>
//! baton --addr A1,A2,A3 worker --id bench-w<j> --slots N --work-dir D/w<j>
//! ```
//!
//! Each scenario uses its own etcd prefix, so it starts on an empty store.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_common::client::{BatonClient, MAX_MESSAGE_BYTES, connect_channel};
use baton_common::pb::api::cluster_service_client::ClusterServiceClient;
use baton_common::pb::api::{GetClusterStatusRequest, GetClusterStatusResponse};
use tonic::transport::Channel;

use crate::etcd::EtcdCluster;
use crate::procs::{Alive, Proc, cpu_time, free_port};
use crate::runs::within;

/// Controller replicas of every cluster scenario.
pub const CONTROLLERS: usize = 3;
/// Worker processes of every cluster scenario.
pub const WORKERS: usize = 4;
/// The default leader lease TTL (`baton controller --lease-ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// Bound on waiting for a cluster to be whole (a leader, every controller
/// registered, every worker connected to the leader).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a cluster scenario runs with: the `baton` binary, the temp
/// directory, the etcd cluster, the controllers (`--controllers`) and
/// worker slots (`--worker-slots`) asked for, and the runs per scenario.
#[derive(Clone, Copy)]
pub struct OnCluster<'a> {
    pub binary: &'a Path,
    pub work: &'a Path,
    pub etcd: &'a EtcdCluster,
    pub controllers: usize,
    pub slots: u32,
    pub repeat: usize,
}

impl OnCluster<'_> {
    /// The shape, for a scenario's heading.
    pub fn describe(&self) -> String {
        format!(
            "etcd {} members, {} controllers (lease TTL {} s), {WORKERS} workers × --slots {}; {} runs",
            self.etcd.members.len(),
            self.controllers,
            DEFAULT_TTL.as_secs(),
            self.slots,
            self.repeat
        )
    }

    /// Starts the shape on the etcd cluster, at the default lease TTL,
    /// with its files under `<work>/<name>` and its keys under `prefix`.
    pub async fn start(&self, name: &str, prefix: &str) -> anyhow::Result<Cluster> {
        Cluster::start(
            self.binary,
            &self.work.join(name),
            self.etcd,
            prefix,
            DEFAULT_TTL,
            self.controllers,
            WORKERS,
            self.slots,
        )
        .await
    }
}

/// One controller replica; `process` is `None` while it is down.
pub struct Controller {
    pub id: String,
    /// `http://127.0.0.1:P`: what it advertises and what clients use.
    pub address: String,
    listen: String,
    data_dir: PathBuf,
    log: PathBuf,
    /// How many times it was started (its log files are numbered).
    starts: u32,
    pub process: Option<Proc>,
}

/// How controllers are started.
struct Settings {
    binary: PathBuf,
    etcd_endpoints: String,
    prefix: String,
    ttl: Duration,
    log_dir: PathBuf,
}

pub struct Cluster {
    settings: Settings,
    pub controllers: Vec<Controller>,
    pub workers: Vec<Proc>,
    /// A client of every controller: calls reach the leader.
    pub client: BatonClient,
}

impl Cluster {
    /// Starts `controllers` controllers on `etcd` (keys under `prefix`,
    /// leader lease `ttl`) and `workers` workers of `slots` slots each, and
    /// waits until it is whole ([`Cluster::wait_whole`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        binary: &Path,
        dir: &Path,
        etcd: &EtcdCluster,
        prefix: &str,
        ttl: Duration,
        controllers: usize,
        workers: usize,
        slots: u32,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let settings = Settings {
            binary: binary.to_path_buf(),
            etcd_endpoints: etcd.endpoints_arg(),
            prefix: prefix.to_string(),
            ttl,
            log_dir: dir.join("task-logs"),
        };
        std::fs::create_dir_all(&settings.log_dir)?;
        let mut replicas = Vec::new();
        for index in 0..controllers {
            let port = free_port()?;
            let mut controller = Controller {
                id: format!("bench-c{index}"),
                address: format!("http://127.0.0.1:{port}"),
                listen: format!("127.0.0.1:{port}"),
                data_dir: dir.join(format!("c{index}")),
                log: dir.join(format!("controller-{index}")),
                starts: 0,
                process: None,
            };
            spawn_controller(&settings, &mut controller)?;
            replicas.push(controller);
        }
        let addrs = join_addrs(&replicas);
        let client = connect(&addrs, &mut replicas).await?;
        let mut cluster = Self {
            settings,
            controllers: replicas,
            workers: Vec::new(),
            client,
        };
        for index in 0..workers {
            let args: Vec<String> = vec![
                "--addr".into(),
                addrs.clone(),
                "worker".into(),
                "--id".into(),
                format!("bench-w{index}"),
                "--slots".into(),
                slots.to_string(),
                "--work-dir".into(),
                dir.join(format!("w{index}")).to_string_lossy().into_owned(),
            ];
            cluster.workers.push(Proc::spawn(
                &format!("baton worker bench-w{index}"),
                binary,
                &args,
                &[],
                &dir.join(format!("worker-{index}.log")),
            )?);
        }
        cluster.wait_whole().await?;
        Ok(cluster)
    }

    /// Restarts controller `index` with the same id, port and data dir.
    pub fn restart_controller(&mut self, index: usize) -> anyhow::Result<()> {
        spawn_controller(&self.settings, &mut self.controllers[index])
    }

    /// The leader's view of the cluster (the client follows the leader).
    pub async fn status(&mut self) -> anyhow::Result<GetClusterStatusResponse> {
        Ok(within(
            "GetClusterStatus",
            self.client
                .cluster
                .get_cluster_status(GetClusterStatusRequest {}),
        )
        .await?
        .into_inner())
    }

    /// Waits until a leader answers, lists every running controller as a
    /// member, and has every worker connected (not draining) with all its
    /// slots free. Returns the leader's status.
    pub async fn wait_whole(&mut self) -> anyhow::Result<GetClusterStatusResponse> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let running = self
            .controllers
            .iter()
            .filter(|controller| controller.process.is_some())
            .count();
        let mut last;
        loop {
            self.check_alive()?;
            match tokio::time::timeout(
                Duration::from_secs(5),
                self.client
                    .cluster
                    .get_cluster_status(GetClusterStatusRequest {}),
            )
            .await
            {
                Ok(Ok(response)) => {
                    let status = response.into_inner();
                    let connected = status
                        .workers
                        .iter()
                        .filter(|worker| {
                            worker.connected
                                && !worker.draining
                                && worker.free_slots == worker.slots
                        })
                        .count();
                    if status.controllers.len() == running && connected == self.workers.len() {
                        return Ok(status);
                    }
                    last = format!(
                        "leader {}: {} controllers, {connected} idle connected workers",
                        status.leader_id,
                        status.controllers.len()
                    );
                }
                Ok(Err(error)) => last = error.to_string(),
                Err(_) => last = "GetClusterStatus timed out".into(),
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster was not whole within {READY_TIMEOUT:?} ({running} controllers and {} workers expected; last: {last})",
                    self.workers.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the controller with this id.
    pub fn index_of(&self, controller_id: &str) -> anyhow::Result<usize> {
        self.controllers
            .iter()
            .position(|controller| controller.id == controller_id)
            .with_context(|| format!("no controller has the id `{controller_id}`"))
    }

    /// The leader's process (from its status).
    pub fn process_of(&mut self, index: usize) -> anyhow::Result<&mut Proc> {
        let controller = &mut self.controllers[index];
        controller
            .process
            .as_mut()
            .with_context(|| format!("controller {} is not running", controller.id))
    }

    /// A client of one controller only (no leader following), for
    /// `GetClusterStatus` straight from that replica.
    pub async fn direct_status_client(
        &self,
        index: usize,
    ) -> anyhow::Result<ClusterServiceClient<Channel>> {
        let channel = connect_channel(&self.controllers[index].address).await?;
        Ok(ClusterServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Stops a controller (SIGTERM, or only waits if it was signalled
    /// already) and forgets its process; returns how long that took.
    pub async fn reap(&mut self, index: usize) -> Duration {
        match self.controllers[index].process.take() {
            Some(mut process) => process.stop().await,
            None => Duration::ZERO,
        }
    }

    /// PIDs by role, for CPU accounting: (name, pid).
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut pids: Vec<(String, u32)> = self
            .controllers
            .iter()
            .filter_map(|controller| {
                controller
                    .process
                    .as_ref()
                    .map(|process| (controller.id.clone(), process.pid()))
            })
            .collect();
        for (index, worker) in self.workers.iter().enumerate() {
            pids.push((format!("bench-w{index}"), worker.pid()));
        }
        pids
    }

    /// Workers first (they drain), then followers, then the leader; prints
    /// how long each controller took to exit after SIGTERM.
    pub async fn stop(&mut self) {
        for worker in &mut self.workers {
            worker.stop().await;
        }
        let leader = match self.status().await {
            Ok(status) => self.index_of(&status.leader_id).ok(),
            Err(_) => None,
        };
        let mut order: Vec<usize> = (0..self.controllers.len())
            .filter(|index| Some(*index) != leader)
            .collect();
        order.extend(leader);
        let mut stopped = Vec::new();
        for index in order {
            let took = self.reap(index).await;
            stopped.push(format!(
                "{}{} {} s",
                self.controllers[index].id,
                if Some(index) == leader {
                    " (leader)"
                } else {
                    ""
                },
                crate::report::number(took.as_secs_f64())
            ));
        }
        println!("  controllers exited after SIGTERM: {}", stopped.join(", "));
    }
}

fn join_addrs(controllers: &[Controller]) -> String {
    controllers
        .iter()
        .map(|controller| controller.address.clone())
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts a controller (its log file numbered by how often it started).
fn spawn_controller(settings: &Settings, controller: &mut Controller) -> anyhow::Result<()> {
    if controller.process.is_some() {
        bail!("controller {} is already running", controller.id);
    }
    let args: Vec<String> = vec![
        "controller".into(),
        "--id".into(),
        controller.id.clone(),
        "--listen".into(),
        controller.listen.clone(),
        "--advertise-address".into(),
        controller.address.clone(),
        "--data-dir".into(),
        controller.data_dir.to_string_lossy().into_owned(),
        "--log-dir".into(),
        settings.log_dir.to_string_lossy().into_owned(),
        "--etcd".into(),
        settings.etcd_endpoints.clone(),
        "--etcd-prefix".into(),
        settings.prefix.clone(),
        "--lease-ttl".into(),
        format!("{}s", settings.ttl.as_secs()),
    ];
    controller.starts += 1;
    let log = controller
        .log
        .with_extension(format!("{}.log", controller.starts));
    controller.process = Some(Proc::spawn(
        &format!("baton controller {}", controller.id),
        &settings.binary,
        &args,
        &[],
        &log,
    )?);
    Ok(())
}

/// A client of every controller, once one of them answers
/// `GetClusterStatus` as the leader.
async fn connect(addrs: &str, controllers: &mut [Controller]) -> anyhow::Result<BatonClient> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        for controller in controllers.iter_mut() {
            if let Some(process) = &mut controller.process {
                process.check_running()?;
            }
        }
        if let Ok(mut client) = BatonClient::connect(addrs).await {
            let probe = tokio::time::timeout(
                Duration::from_secs(5),
                client
                    .cluster
                    .get_cluster_status(GetClusterStatusRequest {}),
            )
            .await;
            if let Ok(Ok(_)) = probe {
                return Ok(client);
            }
        }
        if Instant::now() > deadline {
            bail!("no controller of {addrs} answered as leader within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Alive for Cluster {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for controller in &mut self.controllers {
            if let Some(process) = &mut controller.process {
                process.check_running()?;
            }
        }
        for worker in &mut self.workers {
            worker.check_running()?;
        }
        Ok(())
    }
}

/// CPU time of each process now, to print what a run cost each of them.
pub fn cpu_snapshot(pids: &[(String, u32)]) -> Vec<(String, Duration)> {
    pids.iter()
        .map(|(name, pid)| (name.clone(), cpu_time(*pid).unwrap_or_default()))
        .collect()
}

/// "name 1.23, name 0.45" CPU-s between two snapshots of the same processes.
pub fn cpu_used(before: &[(String, Duration)], after: &[(String, Duration)]) -> String {
    before
        .iter()
        .zip(after)
        .map(|((name, start), (_, end))| {
            format!(
                "{name} {}",
                crate::report::number(end.saturating_sub(*start).as_secs_f64())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
