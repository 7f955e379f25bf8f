//! [`EtcdCluster`]: a real etcd (from the distribution's `etcd-server`
//! package) of one or three members on free loopback ports, with data dirs
//! and logs in the test's directory; each member is stopped, killed and
//! restarted (same data dir, same ports) by its own PID.
//!
//! Whether a missing etcd fails or skips a test is decided in one place,
//! [`etcd_binary`]: under `CI=true` it fails, otherwise the test says it is
//! skipped and returns. `BATON_ETCD_BIN` picks another etcd binary than the
//! one on `PATH` or at `/usr/bin/etcd`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::dirs::free_port;
use crate::poll::poll_until;
use crate::process::tail;

/// How long etcd may take to answer after it is started.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one probe or admin request to etcd may take.
const ETCD_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts at starting etcd on fresh ports when one picked was taken.
const BIND_ATTEMPTS: usize = 3;

/// The etcd binary, or `None` (after saying so on stderr) when it is missing
/// and the test is skipped. Under `CI=true` a missing etcd fails the test:
/// this function is the only place that decides.
pub fn etcd_binary(test: &str) -> Option<PathBuf> {
    if let Some(chosen) = std::env::var_os("BATON_ETCD_BIN") {
        let chosen = PathBuf::from(chosen);
        assert!(
            chosen.is_file(),
            "BATON_ETCD_BIN={} is not a file",
            chosen.display()
        );
        return Some(chosen);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    let found = on_path.or_else(|| {
        let packaged = PathBuf::from("/usr/bin/etcd");
        packaged.is_file().then_some(packaged)
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|value| value == "true") {
            panic!(
                "{test}: etcd-server is required when CI=true (no `etcd` on PATH or at /usr/bin/etcd); install the distribution's etcd-server package"
            );
        }
        eprintln!("{test}: skipped, etcd not found (install etcd-server; with CI=true this fails)");
    }
    found
}

/// One etcd member: its ports and data dir stay the same across restarts.
#[derive(Debug)]
pub struct EtcdMember {
    name: String,
    binary: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// `name=peer-url,...` of every member, and the cluster token.
    initial_cluster: String,
    token: String,
    child: Option<Child>,
}

impl EtcdMember {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The PID of the running process; panics when it is not running.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("etcd member {} is not running", self.name))
    }

    /// Whether the process was started and has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", self.log_path.display()));
        let client = self.endpoint();
        let peer = self.peer_url();
        let child = Command::new(&self.binary)
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot clone the etcd log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", self.binary.display()));
        self.child = Some(child);
    }

    /// Sends `signal` to the member's process, by its PID.
    pub fn signal(&mut self, signal: Signal) {
        assert!(
            self.is_running(),
            "etcd member {} is not running; cannot send {signal}",
            self.name
        );
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pid fits i32"));
        kill(pid, signal).unwrap_or_else(|error| panic!("kill({pid}, {signal}): {error}"));
    }

    /// SIGKILLs the member (by its PID) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the member and waits (at most `timeout`) for it to exit;
    /// SIGKILLs it if it does not.
    pub async fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if !self.is_running() {
            self.child = None;
            return None;
        }
        self.signal(Signal::SIGTERM);
        let child = self.child.as_mut().expect("running member has a child");
        let status = poll_until(timeout, Duration::from_millis(20), async || {
            child.try_wait().ok().flatten()
        })
        .await;
        if status.is_none() {
            eprintln!(
                "etcd member {} ignored SIGTERM for {timeout:?}; killing it",
                self.name
            );
        }
        self.kill();
        status
    }

    /// Starts the member again on its data dir and ports, and waits until it
    /// answers (a lone member of a 3-member cluster answers only once a
    /// quorum is up again).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(
            self.wait_ready().await,
            "etcd member {} did not come back within {ETCD_READY_TIMEOUT:?}\n{}",
            self.name,
            self.log_tail()
        );
    }

    /// Whether the member answers a read before [`ETCD_READY_TIMEOUT`]
    /// (false when it exits first).
    async fn wait_ready(&mut self) -> bool {
        let endpoint = self.endpoint();
        let ready = poll_until(ETCD_READY_TIMEOUT, Duration::from_millis(100), async || {
            if !self.is_running() {
                return Some(false);
            }
            answers(&endpoint).await.then_some(true)
        })
        .await;
        ready == Some(true)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            tail(&text, 40)
        )
    }

    /// The member's own id and the id of the raft leader it knows.
    pub async fn raft_status(&self) -> Option<(u64, u64)> {
        let endpoint = self.endpoint();
        let status = async {
            let mut client = connect(&[endpoint]).await?;
            client.status().await
        };
        match tokio::time::timeout(ETCD_CALL_TIMEOUT, status).await {
            Ok(Ok(status)) => Some((
                status.header().map_or(0, |header| header.member_id()),
                status.leader(),
            )),
            _ => None,
        }
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// etcd of one or more members, all on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// Starts `size` members with data dirs and logs (`etcd-<name>.log`) in
    /// `dir` and waits until every one answers; `None` when the test is
    /// skipped because etcd is missing (see [`etcd_binary`]).
    pub async fn start(test: &str, dir: &Path, size: usize) -> Option<Self> {
        assert!(size > 0, "an etcd cluster has at least one member");
        let binary = etcd_binary(test)?;
        for attempt in 1..=BIND_ATTEMPTS {
            let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
            let names: Vec<String> = (0..size).map(|index| format!("e{index}")).collect();
            let initial_cluster = names
                .iter()
                .zip(&ports)
                .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut members: Vec<EtcdMember> = names
                .iter()
                .zip(&ports)
                .map(|(name, &(client_port, peer_port))| EtcdMember {
                    name: name.clone(),
                    binary: binary.clone(),
                    data_dir: dir.join(format!("etcd-{name}-try{attempt}")),
                    log_path: dir.join(format!("etcd-{name}.log")),
                    client_port,
                    peer_port,
                    initial_cluster: initial_cluster.clone(),
                    token: format!("baton-test-{}", ports[0].0),
                    child: None,
                })
                .collect();
            for member in &mut members {
                member.spawn();
            }
            let mut ready = true;
            for member in &mut members {
                ready &= member.wait_ready().await;
            }
            if ready {
                let cluster = Self { members };
                eprintln!("{test}: etcd at {}", cluster.endpoints());
                return Some(cluster);
            }
            let bind_failed = members.iter().any(|member| {
                std::fs::read_to_string(&member.log_path)
                    .is_ok_and(|log| log.contains("address already in use"))
            });
            let logs: Vec<String> = members.iter().map(EtcdMember::log_tail).collect();
            drop(members);
            if !bind_failed {
                panic!("{test}: etcd did not start\n{}", logs.join("\n"));
            }
        }
        panic!("{test}: etcd found no free ports in {BIND_ATTEMPTS} attempts");
    }

    /// Client endpoints, comma-separated (as `baton controller --etcd` takes
    /// them).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(EtcdMember::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member(&mut self, index: usize) -> &mut EtcdMember {
        &mut self.members[index]
    }

    /// A client of every member.
    pub async fn client(&self) -> etcd_client::Client {
        let endpoints: Vec<String> = self.members.iter().map(EtcdMember::endpoint).collect();
        match tokio::time::timeout(ETCD_CALL_TIMEOUT, connect(&endpoints)).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => panic!("cannot connect to etcd at {endpoints:?}: {error}"),
            Err(_) => panic!("connecting to etcd at {endpoints:?} took over {ETCD_CALL_TIMEOUT:?}"),
        }
    }

    /// The index of the member the running members agree is the raft leader,
    /// polled until they agree (at most `timeout`).
    pub async fn raft_leader(&mut self, timeout: Duration) -> usize {
        let found = poll_until(timeout, Duration::from_millis(100), async || {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for member in &mut self.members {
                if !member.is_running() {
                    ids.push(None);
                    continue;
                }
                let (id, leader) = member.raft_status().await?;
                ids.push(Some(id));
                leaders.push(leader);
            }
            let leader = *leaders.first()?;
            if leader == 0 || leaders.iter().any(|&other| other != leader) {
                return None;
            }
            ids.iter().position(|&id| id == Some(leader))
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "etcd members did not agree on a raft leader within {timeout:?}\n{}",
                self.logs_tail()
            )
        })
    }

    pub fn logs_tail(&self) -> String {
        self.members
            .iter()
            .map(EtcdMember::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn connect(endpoints: &[String]) -> Result<etcd_client::Client, etcd_client::Error> {
    // No per-request timeout: it would also cut long watches. Callers bound
    // their calls themselves.
    let options =
        etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
    etcd_client::Client::connect(endpoints, Some(options)).await
}

/// Whether etcd at `endpoint` answers a (linearizable) read in time.
async fn answers(endpoint: &str) -> bool {
    let probe = async {
        let mut client = connect(&[endpoint.to_string()]).await?;
        client.get("/", None).await
    };
    matches!(
        tokio::time::timeout(ETCD_CALL_TIMEOUT, probe).await,
        Ok(Ok(_))
    )
}
