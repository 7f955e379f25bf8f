//! The processes a benchmark starts: locating (or building) the release
//! `baton` binary, free loopback ports, starting a process with its output in
//! a log file, waiting until it serves, reading its memory from `/proc`, and
//! stopping it by its own PID (SIGTERM, then SIGKILL after a bounded wait).
//!
//! A [`Proc`] stops its process when dropped, so an error or an interrupt
//! never leaves one behind.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_common::client::BatonClient;
use baton_common::pb::api;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(20);
/// How long a process may take to serve after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ lives in the workspace")
        .to_path_buf()
}

/// `<workspace>/target/release/baton`. Unless `skip_build`, first runs
/// `cargo build --release -p baton-cli --bin baton` (a no-op when the binary
/// is up to date), so that the figures are those of the current sources; if
/// that build fails while a binary exists, says so and uses the binary.
pub fn baton_binary(skip_build: bool) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let binary = root.join("target").join("release").join("baton");
    if !skip_build || !binary.exists() {
        eprintln!("cargo build --release -p baton-cli --bin baton ...");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "baton-cli", "--bin", "baton"])
            .current_dir(&root)
            .status()
            .context("cannot run cargo build")?;
        if !status.success() {
            if !binary.exists() {
                bail!("cargo build --release -p baton-cli --bin baton failed ({status})");
            }
            eprintln!(
                "warning: the build failed ({status}); measuring the existing {}, which may not match the sources",
                binary.display()
            );
        }
    }
    if !binary.exists() {
        bail!("{} does not exist after the build", binary.display());
    }
    Ok(binary)
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A process this benchmark started. Stopped on [`Proc::stop`] or on drop.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Proc {
    /// Starts `program args`, stdout and stderr appended to `log`. `BATON_*`
    /// and `RUST_LOG` variables of this process are not passed on, so the
    /// child runs with its defaults plus `envs`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("BATON_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command.envs(envs.iter().copied());
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (with the end of the log) when the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.stopped = true;
            bail!(
                "{} (pid {}) exited unexpectedly ({status}); end of {}:\n{}",
                self.name,
                self.child.id(),
                self.log.display(),
                log_tail(&self.log, 4096)
            );
        }
        Ok(())
    }

    /// SIGTERM, up to [`TERM_GRACE`] for the exit, then SIGKILL. Returns how
    /// long the stop took. Waits asynchronously, so that this process's own
    /// connections to the child keep being served (a graceful server waits
    /// for its clients to close). Idempotent.
    pub async fn stop(&mut self) -> Duration {
        let started = Instant::now();
        if !self.terminate() {
            // Already signalled: make sure it is gone (and reaped).
            if self.wait_exit(TERM_GRACE).await.is_none() {
                self.kill();
            }
            return started.elapsed();
        }
        let deadline = started + TERM_GRACE;
        while Instant::now() < deadline {
            if self.exited() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill();
        started.elapsed()
    }

    /// Sends SIGTERM unless the process already exited; false when there is
    /// nothing to stop.
    fn terminate(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        self.stopped = true;
        if self.exited() {
            return false;
        }
        // The child is not reaped yet, so the PID is still ours.
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        true
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)) | Err(_))
    }

    /// Sends `signal` (SIGKILL, SIGTERM) to the process by its PID, unless it
    /// already exited, and from then on counts it as stopped (a later
    /// [`Proc::stop`] or drop only waits for it). Returns the wall-clock time
    /// (µs since the epoch, the clock the controllers stamp records with)
    /// read just before the `kill(2)` call.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<baton_common::time::Micros> {
        if self.exited() {
            bail!("{} (pid {}) already exited", self.name, self.child.id());
        }
        self.stopped = true;
        let at = baton_common::time::now_micros();
        // The child is not reaped yet, so the PID is still ours.
        kill(Pid::from_raw(self.child.id() as i32), signal)
            .with_context(|| format!("cannot signal {} (pid {})", self.name, self.child.id()))?;
        Ok(at)
    }

    /// Waits (asynchronously, polling every 2 ms) for the process to exit,
    /// at most `limit`; returns when it was seen gone, or `None`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.exited() {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }

    fn kill(&mut self) {
        eprintln!(
            "warning: {} (pid {}) did not exit within {:?} of SIGTERM; sending SIGKILL",
            self.name,
            self.child.id(),
            TERM_GRACE
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a wait on a run checks now and then: that the processes it needs
/// still run.
pub trait Alive {
    /// Fails (with the end of the log) when a process that should run has
    /// exited.
    fn check_alive(&mut self) -> anyhow::Result<()>;
}

impl Alive for Proc {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.check_running()
    }
}

impl Drop for Proc {
    /// The fallback when a scenario ends early (an error or an interrupt):
    /// the same stop, waiting on this thread.
    fn drop(&mut self) {
        if !self.terminate() {
            if !self.exited() {
                // Signalled earlier and still there: SIGKILL it.
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
            return;
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

/// The last `bytes` bytes of a log file, for error messages.
pub fn log_tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log)");
    };
    let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(bytes)));
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).into_owned()
}

/// Connects to a `baton` controller at `addr` once it answers `ListDags`,
/// failing if `process` exits or [`START_TIMEOUT`] passes.
pub async fn connect_baton(process: &mut Proc, addr: &str) -> anyhow::Result<BatonClient> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        process.check_running()?;
        if let Ok(mut client) = BatonClient::connect(addr).await {
            let request = api::ListDagsRequest {
                page_size: 1,
                ..Default::default()
            };
            let probe =
                tokio::time::timeout(Duration::from_secs(5), client.dags.list_dags(request)).await;
            if let Ok(Ok(_)) = probe {
                return Ok(client);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} at {addr} did not answer within {START_TIMEOUT:?}",
                process.name
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `baton dev --slots N` on a free port with its data under `work`
/// (named after the scenario) and connects to it.
pub async fn start_dev(
    binary: &Path,
    work: &Path,
    scenario: &str,
    slots: u32,
) -> anyhow::Result<(Proc, BatonClient)> {
    start_dev_with(binary, work, scenario, slots, &[], &[]).await
}

/// [`start_dev`] with more arguments and environment variables.
pub async fn start_dev_with(
    binary: &Path,
    work: &Path,
    scenario: &str,
    slots: u32,
    extra_args: &[String],
    envs: &[(&str, &str)],
) -> anyhow::Result<(Proc, BatonClient)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let data_dir = work.join(format!("{scenario}-data"));
    let mut args: Vec<String> = vec![
        "dev".into(),
        "--listen".into(),
        addr.clone(),
        "--data-dir".into(),
        data_dir.to_string_lossy().into_owned(),
        "--slots".into(),
        slots.to_string(),
    ];
    args.extend_from_slice(extra_args);
    let log = work.join(format!("{scenario}.log"));
    let mut dev = Proc::spawn("baton dev", binary, &args, envs, &log)?;
    let client = connect_baton(&mut dev, &addr).await?;
    Ok((dev, client))
}

/// Resident memory figures of a process, from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the peak resident size since the process started.
    pub hwm: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("{path} has no {name}"))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{path}: cannot read `{line}`"))?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
    })
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which may hold spaces) start with the
    // state, field 3; utime and stime are fields 14 and 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("{path}: cannot read field {}", index + 3))
    };
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&value| value > 0)
        .unwrap_or(100) as f64;
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / per_second))
}

/// The time each live thread of a process has run, in nanoseconds, from
/// `/proc/<pid>/task/<tid>/schedstat`: finer than [`cpu_time`]'s clock
/// ticks (10 ms, about 3 % of a 10,000-task run's CPU), so that a few
/// percent between runs is seen. A thread that exits is gone from the
/// next snapshot, so compare snapshots with [`ThreadTimes::since`] only.
#[derive(Debug, Clone, Default)]
pub struct ThreadTimes(std::collections::HashMap<u32, u64>);

impl ThreadTimes {
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let dir = format!("/proc/{pid}/task");
        let mut times = std::collections::HashMap::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
            let entry = entry.with_context(|| format!("cannot list {dir}"))?;
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
            else {
                continue;
            };
            // A thread that exited since the listing has no time to add.
            let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
                continue;
            };
            let ran: u64 = text
                .split_whitespace()
                .next()
                .and_then(|field| field.parse().ok())
                .with_context(|| format!("{dir}/{tid}/schedstat: no run time in `{text}`"))?;
            times.insert(tid, ran);
        }
        Ok(Self(times))
    }

    /// CPU time the process's threads used since `earlier`: each live
    /// thread's growth, a thread started since counting whole. A thread
    /// that exited in between is left out, with what little it ran
    /// meanwhile (the runtime's blocking threads exit after 10 s idle).
    pub fn since(&self, earlier: &ThreadTimes) -> Duration {
        let nanos = self
            .0
            .iter()
            .map(|(tid, ran)| ran.saturating_sub(earlier.0.get(tid).copied().unwrap_or(0)))
            .sum();
        Duration::from_nanos(nanos)
    }
}

/// A process counts as idle once its CPU time grew by at most [`IDLE_CPU`]
/// over [`QUIET`]; it is watched for at most [`SETTLE_LIMIT`].
const QUIET: Duration = Duration::from_millis(500);
const IDLE_CPU: Duration = Duration::from_millis(20);
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// What a process did until it went idle (see [`settle`]).
pub struct Settled {
    /// From the call until the start of the first quiet window.
    pub busy: Duration,
    /// CPU time used in that span.
    pub cpu: Duration,
}

/// Waits until a process's CPU time grows by at most [`IDLE_CPU`] over
/// [`QUIET`] (sampled every 50 ms, for at most [`SETTLE_LIMIT`]); heartbeats
/// cost less than that.
pub async fn settle(pid: u32) -> anyhow::Result<Settled> {
    settle_above(pid, Duration::ZERO).await
}

/// CPU time a process used over one [`QUIET`] window: its floor when it
/// never goes quite idle (a cluster controller renews leases and tracks the
/// leader), for [`settle_above`].
pub async fn quiet_cpu(pid: u32) -> anyhow::Result<Duration> {
    let first = cpu_time(pid)?;
    tokio::time::sleep(QUIET).await;
    Ok(cpu_time(pid)?.saturating_sub(first))
}

/// [`settle`] for a process whose CPU time grows by `floor` per [`QUIET`]
/// even when it has nothing to do: idle is at most `floor` + [`IDLE_CPU`].
pub async fn settle_above(pid: u32, floor: Duration) -> anyhow::Result<Settled> {
    let started = Instant::now();
    let first = cpu_time(pid)?;
    let mut samples = vec![(started, first)];
    while started.elapsed() < SETTLE_LIMIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = (Instant::now(), cpu_time(pid)?);
        samples.push(now);
        let window_start = samples
            .iter()
            .rev()
            .find(|(at, _)| now.0.duration_since(*at) >= QUIET)
            .copied();
        if let Some((at, cpu)) = window_start
            && now.1.saturating_sub(cpu) <= IDLE_CPU + floor
        {
            return Ok(Settled {
                busy: at.duration_since(started),
                cpu: cpu.saturating_sub(first),
            });
        }
    }
    bail!("pid {pid} was still busy {SETTLE_LIMIT:?} later")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_times_count_a_thread_that_started_and_ran_since() {
        let pid = std::process::id();
        let before = ThreadTimes::read(pid).expect("this process's threads");
        let spin = std::thread::spawn(|| {
            let started = Instant::now();
            let mut sum = 0u64;
            while started.elapsed() < Duration::from_millis(200) {
                sum = std::hint::black_box(sum.wrapping_add(1));
            }
            // Still alive when read, so its time is counted.
            std::thread::sleep(Duration::from_millis(300));
            sum
        });
        std::thread::sleep(Duration::from_millis(250));
        let used = ThreadTimes::read(pid)
            .expect("this process's threads")
            .since(&before);
        spin.join().expect("the spinning thread");
        // It spun 200 ms; a loaded machine may have run it less, never
        // nothing, and the reader's threads ran little besides.
        assert!(
            used >= Duration::from_millis(20) && used < Duration::from_secs(2),
            "{used:?}"
        );
        assert_eq!(ThreadTimes::default().since(&before), Duration::ZERO);
    }
}
