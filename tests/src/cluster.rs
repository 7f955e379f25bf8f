//! [`ClusterSandbox`]: one test's Baton cluster on loopback: etcd (one or
//! three members, [`EtcdCluster`]), `baton controller` replicas in cluster
//! mode with short timings sharing one task-log directory, and `baton
//! worker`s, each on free ports with its data in the test's directory.
//! Controllers are killed, terminated, stopped and restarted (same flags,
//! same port, same data dir) by their own PIDs.
//!
//! Leadership is observed through `GetClusterStatus` sent *directly* to one
//! controller over a channel of its own with a short deadline: a leader
//! answers it, a follower refuses it with `UNAVAILABLE`. So a poll never
//! waits on a controller that is stopped or dead, and never depends on the
//! client's own leader following.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use baton_common::pb::api::GetClusterStatusRequest;
use baton_common::pb::api::GetClusterStatusResponse;
use baton_common::pb::api::cluster_service_client::ClusterServiceClient;
use baton_common::time::now_micros;
use nix::sys::signal::Signal;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::api::Api;
use crate::dirs::{TestDir, free_port};
use crate::etcd::EtcdCluster;
use crate::poll::poll_until;
use crate::process::BatonProcess;
use crate::sandbox::{
    DEFAULT_KILL_GRACE, HEARTBEAT_INTERVAL, READY_TIMEOUT, WORKER_LOST_TIMEOUT, logs_tail,
    wait_ready,
};

/// TTL of the leader's lease: how long a dead leader holds leadership.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// After a new leader is elected, how long workers have to re-announce the
/// attempts the store says they hold.
pub const RECOVERY_GRACE: &str = "3s";
/// The etcd prefix of every key (each test has its own etcd).
pub const ETCD_PREFIX: &str = "/baton";
/// Deadline of one direct `GetClusterStatus`.
const STATUS_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a leader may take to be elected when a cluster starts.
const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at starting a controller on a fresh port when the one picked
/// was taken meanwhile.
const BIND_ATTEMPTS: usize = 3;

/// Builds a [`ClusterSandbox`]: by default one etcd member and three
/// controllers.
#[derive(Debug)]
pub struct ClusterBuilder {
    test_name: String,
    etcd_members: usize,
    controllers: usize,
}

impl ClusterBuilder {
    pub fn new(test_name: &str) -> Self {
        Self {
            test_name: test_name.to_string(),
            etcd_members: 1,
            controllers: 3,
        }
    }

    pub fn with_etcd_members(mut self, members: usize) -> Self {
        self.etcd_members = members;
        self
    }

    pub fn with_controllers(mut self, controllers: usize) -> Self {
        self.controllers = controllers;
        self
    }

    /// Starts etcd, then every controller (`c1`, `c2`, …, each waited on
    /// until it serves), then waits until one of them leads. `None` when
    /// the test is skipped because etcd is missing (see
    /// [`crate::etcd::etcd_binary`]).
    pub async fn build_and_start(self) -> Option<ClusterSandbox> {
        let dir = TestDir::new(&self.test_name);
        let etcd = EtcdCluster::start(&self.test_name, dir.path(), self.etcd_members).await?;
        let controllers = (1..=self.controllers)
            .map(|number| ControllerSlot::new(format!("c{number}")))
            .collect();
        let mut cluster = ClusterSandbox {
            controllers,
            etcd,
            starts: HashMap::new(),
            dir,
        };
        std::fs::create_dir_all(cluster.task_log_dir()).expect("cannot create the task log dir");
        for index in 0..self.controllers {
            cluster.start_controller(index).await;
        }
        cluster.leader(FIRST_LEADER_TIMEOUT).await;
        Some(cluster)
    }
}

/// One controller replica: its identity, port and data dir stay the same
/// across restarts.
#[derive(Debug)]
struct ControllerSlot {
    id: String,
    port: u16,
    // Whether a process already used `port`: a restart must keep it.
    port_used: bool,
    process: Option<BatonProcess>,
    // For direct status calls, with their own deadline.
    channel: Channel,
}

impl ControllerSlot {
    fn new(id: String) -> Self {
        let port = free_port();
        Self {
            id,
            port,
            port_used: false,
            process: None,
            channel: status_channel(port),
        }
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn status_channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("valid address")
        .connect_timeout(STATUS_CALL_TIMEOUT)
        .timeout(STATUS_CALL_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy()
}

/// One test's cluster. Dropping it SIGKILLs every controller, then etcd,
/// then removes the directory (unless `BATON_KEEP_TEST_DIR=1`).
#[derive(Debug)]
pub struct ClusterSandbox {
    // Fields drop in this order: controllers before etcd, the directory last.
    controllers: Vec<ControllerSlot>,
    etcd: EtcdCluster,
    starts: HashMap<String, usize>,
    dir: TestDir,
}

impl ClusterSandbox {
    /// The test's directory: data dirs and every process log.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The task-log directory every controller shares (`--log-dir`).
    pub fn task_log_dir(&self) -> PathBuf {
        self.path().join("task-logs")
    }

    pub fn etcd(&mut self) -> &mut EtcdCluster {
        &mut self.etcd
    }

    pub fn controller_count(&self) -> usize {
        self.controllers.len()
    }

    pub fn controller_id(&self, index: usize) -> &str {
        &self.controllers[index].id
    }

    pub fn controller_addr(&self, index: usize) -> String {
        self.controllers[index].addr()
    }

    /// The index of the controller with this id; panics if there is none.
    pub fn index_of(&self, controller_id: &str) -> usize {
        self.controllers
            .iter()
            .position(|slot| slot.id == controller_id)
            .unwrap_or_else(|| panic!("no controller `{controller_id}` in the cluster"))
    }

    /// Every controller's address, comma-separated (as `--addr` takes them).
    pub fn addrs(&self) -> String {
        let all: Vec<usize> = (0..self.controllers.len()).collect();
        self.addrs_of(&all)
    }

    /// The addresses of these controllers, comma-separated.
    pub fn addrs_of(&self, indexes: &[usize]) -> String {
        indexes
            .iter()
            .map(|&index| self.controller_addr(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The indexes of every controller but `excluded`.
    pub fn others(&self, excluded: usize) -> Vec<usize> {
        (0..self.controllers.len())
            .filter(|&index| index != excluded)
            .collect()
    }

    /// The running process of a controller; panics if it is not running.
    pub fn controller(&mut self, index: usize) -> &mut BatonProcess {
        let slot = &mut self.controllers[index];
        slot.process
            .as_mut()
            .unwrap_or_else(|| panic!("controller {} is not running", slot.id))
    }

    /// The arguments of `baton controller` for this replica: the same at
    /// every (re)start.
    fn controller_args(&self, index: usize) -> Vec<String> {
        let slot = &self.controllers[index];
        let data_dir = self.path().join(format!("data-{}", slot.id));
        [
            "controller",
            "--id",
            &slot.id,
            "--listen",
            &format!("127.0.0.1:{}", slot.port),
            "--advertise-address",
            &slot.addr(),
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--log-dir",
            &self.task_log_dir().to_string_lossy(),
            "--etcd",
            &self.etcd.endpoints(),
            "--etcd-prefix",
            ETCD_PREFIX,
            "--lease-ttl",
            &format!("{}s", LEASE_TTL.as_secs()),
            "--heartbeat-interval",
            HEARTBEAT_INTERVAL,
            "--worker-lost-timeout",
            WORKER_LOST_TIMEOUT,
            "--recovery-grace",
            RECOVERY_GRACE,
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    /// Starts (or restarts, on the same port and data dir) controller
    /// `index` and waits until it serves (as a follower or the leader).
    pub async fn start_controller(&mut self, index: usize) {
        assert!(
            self.controllers[index].process.is_none(),
            "controller {} is already running",
            self.controllers[index].id
        );
        for _ in 0..BIND_ATTEMPTS {
            let args = self.controller_args(index);
            let name = self.log_name(&format!("controller-{}", self.controllers[index].id));
            let mut process = BatonProcess::spawn(&name, self.path(), &args);
            let addr = self.controller_addr(index);
            if wait_ready(&addr, &mut process).await {
                let slot = &mut self.controllers[index];
                slot.port_used = true;
                slot.process = Some(process);
                return;
            }
            let slot = &mut self.controllers[index];
            if slot.port_used || !process.log_contents().contains("cannot listen on") {
                panic!(
                    "{name} exited before serving\n{}\n{}",
                    process.log_tail(),
                    self.logs_tail()
                );
            }
            // Another process took the port between our probe and the bind.
            slot.port = free_port();
            slot.channel = status_channel(slot.port);
        }
        panic!("could not find a free port in {BIND_ATTEMPTS} attempts");
    }

    /// SIGKILLs controller `index` (by its PID) and reaps it.
    pub async fn kill_controller(&mut self, index: usize) -> ExitStatus {
        let mut process = self.take_controller(index);
        process.signal(Signal::SIGKILL);
        process.wait_exit(Duration::from_secs(10)).await
    }

    /// Hands the running process of controller `index` to the test (to
    /// signal it and wait for its exit); the slot can be started again.
    pub fn take_controller(&mut self, index: usize) -> BatonProcess {
        let slot = &mut self.controllers[index];
        slot.process
            .take()
            .unwrap_or_else(|| panic!("controller {} is not running", slot.id))
    }

    /// `GetClusterStatus` sent to controller `index` only, with a short
    /// deadline: the leader answers it, a follower refuses it.
    pub async fn status_at(&self, index: usize) -> Result<GetClusterStatusResponse, Status> {
        let mut client = ClusterServiceClient::new(self.controllers[index].channel.clone());
        let call = client.get_cluster_status(GetClusterStatusRequest {});
        match tokio::time::timeout(STATUS_CALL_TIMEOUT, call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {STATUS_CALL_TIMEOUT:?}"
            ))),
        }
    }

    /// Polls the controllers `candidates` (one status call each per round,
    /// every `interval`) until one answers `GetClusterStatus` with a status
    /// `accept` takes; returns it. Panics with what was seen last and the
    /// logs after `timeout`.
    pub async fn wait_for_status(
        &self,
        what: &str,
        candidates: &[usize],
        timeout: Duration,
        interval: Duration,
        accept: impl Fn(&GetClusterStatusResponse) -> bool,
    ) -> GetClusterStatusResponse {
        let mut seen: Vec<String> = Vec::new();
        let found = poll_until(timeout, interval, async || {
            seen.clear();
            for &index in candidates {
                match self.status_at(index).await {
                    Ok(status) if accept(&status) => return Some(status),
                    Ok(status) => seen.push(format!(
                        "{}: leads (term {}), not yet what is waited for: {}",
                        self.controllers[index].id,
                        status.leader_term,
                        describe_status(&status)
                    )),
                    Err(status) => seen.push(format!(
                        "{}: {:?} {} (leader: {:?})",
                        self.controllers[index].id,
                        status.code(),
                        status.message(),
                        status.metadata().get("baton-leader")
                    )),
                }
            }
            None
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last answers:\n{}\n{}",
                seen.join("\n"),
                self.logs_tail()
            )
        })
    }

    /// Waits until some running controller leads; returns its index and the
    /// status it answered.
    pub async fn leader(&self, timeout: Duration) -> (usize, GetClusterStatusResponse) {
        let running: Vec<usize> = (0..self.controllers.len())
            .filter(|&index| self.controllers[index].process.is_some())
            .collect();
        let status = self
            .wait_for_status(
                "a leader",
                &running,
                timeout,
                Duration::from_millis(50),
                |_| true,
            )
            .await;
        (self.index_of(&status.leader_id), status)
    }

    /// Restarts controller `index` (after a kill or an exit) with the same
    /// flags, and waits until the leader lists it, started anew, as a
    /// follower; returns that status.
    pub async fn restart_as_follower(
        &mut self,
        index: usize,
        timeout: Duration,
    ) -> GetClusterStatusResponse {
        let restarted_after = now_micros();
        self.start_controller(index).await;
        let id = self.controllers[index].id.clone();
        let others = self.others(index);
        self.wait_for_status(
            &format!("the leader to list {id} again, as a follower"),
            &others,
            timeout,
            Duration::from_millis(50),
            |status| {
                status.controllers.iter().any(|controller| {
                    controller.controller_id == id
                        && !controller.leader
                        && crate::api::micros(controller.started_at.as_ref()) >= restarted_after
                })
            },
        )
        .await
    }

    /// Starts `baton worker --id <id>` connecting to `addrs` (one or several
    /// controller addresses), with its own work dir and a short kill grace,
    /// and waits until a controller accepted its registration.
    pub async fn start_worker(
        &mut self,
        id: &str,
        addrs: &str,
        extra_args: &[&str],
    ) -> BatonProcess {
        let work_dir = self.path().join(format!("work-{id}"));
        let mut args: Vec<String> = [
            "--addr",
            addrs,
            "worker",
            "--id",
            id,
            "--work-dir",
            &work_dir.to_string_lossy(),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if !extra_args.contains(&"--kill-grace") {
            args.extend(["--kill-grace".to_string(), DEFAULT_KILL_GRACE.to_string()]);
        }
        args.extend(extra_args.iter().map(ToString::to_string));
        let name = self.log_name(&format!("worker-{id}"));
        let mut process = BatonProcess::spawn(&name, self.path(), &args);
        process
            .wait_for_log("registered with the controller", READY_TIMEOUT)
            .await;
        process
    }

    /// A client of the cluster through every controller address: reads go
    /// to the first reachable one, writes follow it to the leader.
    pub async fn api(&self) -> Api {
        Api::connect_cluster(&self.addrs(), self.path()).await
    }

    /// A client that only knows the controllers `indexes`.
    pub async fn api_of(&self, indexes: &[usize]) -> Api {
        Api::connect_cluster(&self.addrs_of(indexes), self.path()).await
    }

    /// A log name unique in the cluster: `controller-c1`, then
    /// `controller-c1-2` after a restart.
    fn log_name(&mut self, base: &str) -> String {
        let count = self.starts.entry(base.to_string()).or_insert(0);
        *count += 1;
        if *count == 1 {
            base.to_string()
        } else {
            format!("{base}-{count}")
        }
    }

    /// The last lines of every process log (etcd's included).
    pub fn logs_tail(&self) -> String {
        logs_tail(self.path())
    }
}

/// The leader, its term and the controllers, on one line.
pub fn describe_status(status: &GetClusterStatusResponse) -> String {
    let controllers: Vec<String> = status
        .controllers
        .iter()
        .map(|controller| {
            format!(
                "{}{}",
                controller.controller_id,
                if controller.leader { "*" } else { "" }
            )
        })
        .collect();
    let workers: Vec<String> = status
        .workers
        .iter()
        .map(|worker| {
            format!(
                "{}({})",
                worker.worker_id,
                if worker.connected {
                    "connected"
                } else {
                    "disconnected"
                }
            )
        })
        .collect();
    format!(
        "leader {} term {} at {}; controllers [{}]; workers [{}]; {} active runs",
        status.leader_id,
        status.leader_term,
        status.leader_address,
        controllers.join(", "),
        workers.join(", "),
        status.active_runs
    )
}
