//! etcd for the benchmarks: `/usr/bin/etcd` (Debian package `etcd-server`)
//! started as a 1- or 3-member cluster on free loopback ports with data dirs
//! under the temp directory, the same command line as
//! `deploy/local-cluster.sh`, and a client connected to every member.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use etcd_client::Client as EtcdClient;

use crate::procs::{Alive, Proc, free_port};

pub const ETCD: &str = "/usr/bin/etcd";
/// How long a member may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `etcd --version`'s first line, or "".
pub fn version() -> String {
    std::process::Command::new(ETCD)
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// A running etcd cluster this benchmark started.
pub struct EtcdCluster {
    pub members: Vec<Proc>,
    /// Client URLs, one per member (`http://127.0.0.1:P`).
    pub endpoints: Vec<String>,
    /// A client of every member.
    pub client: EtcdClient,
}

impl EtcdCluster {
    /// Starts `members` members named `<name>0..` with data dirs
    /// `<work>/<name>-<i>` and logs `<work>/<name>-<i>.log`, and waits until
    /// every member answers `Status` and the cluster has a leader.
    pub async fn start(work: &Path, name: &str, members: usize) -> anyhow::Result<Self> {
        if !Path::new(ETCD).exists() {
            bail!("{ETCD} not found (Debian package `etcd-server`)");
        }
        let mut clients = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..members {
            clients.push(format!("http://127.0.0.1:{}", free_port()?));
            peers.push(format!("http://127.0.0.1:{}", free_port()?));
        }
        let initial_cluster = peers
            .iter()
            .enumerate()
            .map(|(index, peer)| format!("{name}{index}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs: Vec<Proc> = Vec::new();
        for index in 0..members {
            let data_dir = work.join(format!("{name}-{index}"));
            let args: Vec<String> = [
                "--name",
                &format!("{name}{index}"),
                "--data-dir",
                &data_dir.to_string_lossy(),
                "--listen-client-urls",
                &clients[index],
                "--advertise-client-urls",
                &clients[index],
                "--listen-peer-urls",
                &peers[index],
                "--initial-advertise-peer-urls",
                &peers[index],
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &format!("baton-bench-{name}"),
            ]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
            procs.push(Proc::spawn(
                &format!("etcd {name}{index}"),
                Path::new(ETCD),
                &args,
                &[],
                &work.join(format!("{name}-{index}.log")),
            )?);
        }
        let client = connect(&mut procs, &clients).await?;
        Ok(Self {
            members: procs,
            endpoints: clients,
            client,
        })
    }

    /// The endpoints as `baton controller --etcd` takes them.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints.join(",")
    }

    pub fn describe(&self) -> String {
        let pids: Vec<String> = self
            .members
            .iter()
            .map(|member| member.pid().to_string())
            .collect();
        format!(
            "{} member{} at {} (pids {})",
            self.members.len(),
            if self.members.len() == 1 { "" } else { "s" },
            self.endpoints_arg(),
            pids.join(", ")
        )
    }

    /// etcd's current revision: every write transaction (a leader's batch
    /// is one) adds one.
    pub async fn revision(&self) -> anyhow::Result<i64> {
        let mut client = self.client.clone();
        let status = tokio::time::timeout(Duration::from_secs(30), client.status())
            .await
            .map_err(|_| anyhow::anyhow!("etcd status did not answer within 30 s"))??;
        Ok(status.header().map_or(0, |header| header.revision()))
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Proc::pid).collect()
    }

    pub async fn stop(&mut self) {
        for member in &mut self.members {
            member.stop().await;
        }
    }
}

/// A client of every member, once each member answers `Status` with a raft
/// leader known.
async fn connect(members: &mut [Proc], endpoints: &[String]) -> anyhow::Result<EtcdClient> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        for member in members.iter_mut() {
            member.check_running()?;
        }
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            for endpoint in endpoints {
                let mut client = EtcdClient::connect([endpoint], None).await?;
                let status = client.status().await?;
                if status.leader() == 0 {
                    anyhow::bail!("{endpoint} has no raft leader yet");
                }
            }
            anyhow::Ok(EtcdClient::connect(endpoints, None).await?)
        })
        .await;
        if let Ok(Ok(client)) = attempt {
            return Ok(client);
        }
        if Instant::now() > deadline {
            bail!(
                "etcd at {} did not answer within {START_TIMEOUT:?}",
                endpoints.join(",")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Alive for EtcdCluster {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for member in &mut self.members {
            member.check_running()?;
        }
        Ok(())
    }
}
