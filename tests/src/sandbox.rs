//! [`Sandbox`]: one test's temporary directory and controller port. It
//! starts `baton dev`, `baton controller` and `baton worker` with short
//! timings, waits until each is ready, and runs CLI commands against them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::api::Api;
use crate::binary::baton_bin;
use crate::dirs::{TestDir, free_port};
use crate::poll::{POLL_INTERVAL, poll_until};
use crate::process::{BatonProcess, tail};

/// Workers heartbeat this often in tests.
pub const HEARTBEAT_INTERVAL: &str = "200ms";
/// A worker silent this long is lost (and, after a controller restart, the
/// time workers have to re-announce their attempts).
pub const WORKER_LOST_TIMEOUT: &str = "1500ms";
/// Between SIGTERM and SIGKILL when a worker stops a task, unless a test
/// gives `--kill-grace` itself.
pub const DEFAULT_KILL_GRACE: &str = "2s";
/// How long a server may take to answer its health check as SERVING.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a CLI command may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// The health service that says a controller's scheduler is up.
pub const READY_SERVICE: &str = "baton.v1.RunService";

/// Attempts at starting a server on a fresh port when the one picked was
/// taken meanwhile.
const BIND_ATTEMPTS: usize = 3;

/// One test's world: a temporary directory holding data dirs and process
/// logs, and the port the controller listens on (kept across restarts).
#[derive(Debug)]
pub struct Sandbox {
    dir: TestDir,
    port: u16,
    // Whether a server already used `port`: a restart must keep it, a first
    // start may move to another if it was taken.
    port_used: bool,
    starts: HashMap<String, usize>,
    // Environment variables of every server started from now on.
    env: Vec<(String, String)>,
}

impl Sandbox {
    pub fn new(test_name: &str) -> Self {
        Self {
            dir: TestDir::new(test_name),
            port: free_port(),
            port_used: false,
            starts: HashMap::new(),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for every server (`dev`, `controller`,
    /// `worker`) started from now on, for example `RUST_LOG` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(set, _)| set != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// The test's temporary directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The controller's store and log directory.
    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// The port the controller listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The controller's address, `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes `contents` to `name` in the test directory.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        path
    }

    /// Starts `baton dev` (controller and in-process worker) on the sandbox's
    /// port and data dir, with short heartbeat and lost-worker timings (a
    /// `--worker-lost-timeout` in `extra_args` replaces the latter), and
    /// waits until it serves. Starting it again after a kill restarts it on
    /// the same port and data.
    pub async fn start_dev(&mut self, extra_args: &[&str]) -> BatonProcess {
        self.start_server("dev", extra_args).await
    }

    /// Starts `baton controller` (no worker) like [`Sandbox::start_dev`].
    pub async fn start_controller(&mut self, extra_args: &[&str]) -> BatonProcess {
        self.start_server("controller", extra_args).await
    }

    async fn start_server(&mut self, kind: &str, extra_args: &[&str]) -> BatonProcess {
        for _ in 0..BIND_ATTEMPTS {
            let mut args: Vec<String> = [
                kind,
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--data-dir",
                &self.data_dir().to_string_lossy(),
                "--heartbeat-interval",
                HEARTBEAT_INTERVAL,
            ]
            .iter()
            .map(ToString::to_string)
            .collect();
            if !extra_args.contains(&"--worker-lost-timeout") {
                args.extend([
                    "--worker-lost-timeout".to_string(),
                    WORKER_LOST_TIMEOUT.to_string(),
                ]);
            }
            args.extend(extra_args.iter().map(ToString::to_string));
            let name = self.log_name(kind);
            let mut process = BatonProcess::spawn_with_env(&name, self.path(), &args, &self.env);
            if wait_ready(&self.addr(), &mut process).await {
                self.port_used = true;
                return process;
            }
            let log = process.log_contents();
            if self.port_used || !log.contains("cannot listen on") {
                panic!(
                    "{name} exited before serving\n{}\n{}",
                    process.log_tail(),
                    self.logs_tail()
                );
            }
            // Another process took the port between our probe and the
            // server's bind: try a fresh one.
            self.port = free_port();
        }
        panic!("could not find a free port in {BIND_ATTEMPTS} attempts");
    }

    /// Starts `baton worker --id <id>` against the sandbox's controller (with
    /// its own work dir and a short kill grace) and waits until the
    /// controller accepted its registration.
    pub async fn start_worker(&mut self, id: &str, extra_args: &[&str]) -> BatonProcess {
        let addr = self.addr();
        self.start_worker_at(id, &addr, extra_args).await
    }

    /// Starts `baton worker --id <id>` that connects to `addr` (for example a
    /// [`crate::TcpProxy`] in front of the controller) and waits until it
    /// registered.
    pub async fn start_worker_at(
        &mut self,
        id: &str,
        addr: &str,
        extra_args: &[&str],
    ) -> BatonProcess {
        let work_dir = self.path().join(format!("work-{id}"));
        let mut args: Vec<String> = [
            "--addr",
            addr,
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
        let mut process = BatonProcess::spawn_with_env(&name, self.path(), &args, &self.env);
        process
            .wait_for_log("registered with the controller", READY_TIMEOUT)
            .await;
        process
    }

    /// A log name unique in the sandbox: `dev`, then `dev-2` after a restart.
    fn log_name(&mut self, base: &str) -> String {
        let count = self.starts.entry(base.to_string()).or_insert(0);
        *count += 1;
        if *count == 1 {
            base.to_string()
        } else {
            format!("{base}-{count}")
        }
    }

    /// A client of the sandbox's controller.
    pub async fn api(&self) -> Api {
        Api::connect(&self.addr(), self.path()).await
    }

    /// Runs `baton --addr <sandbox> <args>` to completion (at most
    /// [`CLI_TIMEOUT`]).
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let mut command = tokio::process::Command::new(baton_bin());
        crate::process::scrub_inherited_env(command.as_std_mut());
        command
            .arg("--addr")
            .arg(self.addr())
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(CLI_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "`baton {}` did not finish within {CLI_TIMEOUT:?}\n{}",
                    args.join(" "),
                    self.logs_tail()
                )
            })
            .expect("cannot run baton");
        CliOutput {
            args: args.iter().map(ToString::to_string).collect(),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The last lines of every process log in the sandbox.
    pub fn logs_tail(&self) -> String {
        logs_tail(self.path())
    }
}

/// The last lines of every `*.log` file in `dir`, for failure messages.
pub fn logs_tail(dir: &Path) -> String {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read(path)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            format!(
                "--- last lines of {} ---\n{}",
                path.display(),
                tail(&text, 40)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls the health check of [`READY_SERVICE`] until it answers SERVING
/// (true) or the process exits (false); panics after [`READY_TIMEOUT`].
pub(crate) async fn wait_ready(addr: &str, process: &mut BatonProcess) -> bool {
    let endpoint = Endpoint::from_shared(addr.to_string())
        .expect("valid address")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let ready = poll_until(READY_TIMEOUT, POLL_INTERVAL, async || {
        if process.try_exit_status().is_some() {
            return Some(false);
        }
        let channel = endpoint.connect().await.ok()?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: READY_SERVICE.to_string(),
            })
            .await
            .ok()?;
        (response.into_inner().status == ServingStatus::Serving as i32).then_some(true)
    })
    .await;
    match ready {
        Some(ready) => ready,
        None => panic!(
            "{} did not report {READY_SERVICE} SERVING within {READY_TIMEOUT:?}\n{}",
            process.name(),
            process.log_tail()
        ),
    }
}

/// What a CLI command printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics (showing the output) unless the command exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "expected success from {self}");
        self
    }

    /// Panics (showing the output) if the command exited 0.
    pub fn assert_failure(&self) -> &Self {
        assert!(!self.success(), "expected a failure from {self}");
        self
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`baton {}` ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}
