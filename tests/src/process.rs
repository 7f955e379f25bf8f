//! [`BatonProcess`]: one spawned `baton` process with its output in a log
//! file, signalled by its own PID; and [`PidFiles`], the task processes a
//! test records by PID to check that they are gone.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use regex::Regex;

use crate::binary::baton_bin;
use crate::poll::{POLL_INTERVAL, poll_until};

/// Lines of a log shown when a wait fails.
const TAIL_LINES: usize = 60;

/// A running `baton` process (or another program a test started with
/// [`BatonProcess::spawn_command`]). Dropping it SIGKILLs it (if it still runs)
/// and reaps it, so a failing test leaves no server behind.
#[derive(Debug)]
pub struct BatonProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    // Set once the exit status was collected, so that drop does not signal a
    // PID that may since have been reused.
    exit_status: Option<ExitStatus>,
}

/// Removes from `command` the `BATON_*` and `OTEL_*` variables it would
/// inherit from the tester's environment (a test that wants some sets them
/// on the command, and those stay).
pub(crate) fn scrub_inherited_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if (key_text.starts_with("BATON_") || key_text.starts_with("OTEL_"))
            && command.get_envs().all(|(set, _)| set != key.as_os_str())
        {
            command.env_remove(key);
        }
    }
}

impl BatonProcess {
    /// Starts `baton <args>` with `RUST_LOG=info` and `NO_COLOR=1`, stdout
    /// and stderr appended to `<log_dir>/<name>.log`, and no inherited
    /// `BATON_*` or `OTEL_*` variables.
    pub fn spawn(name: &str, log_dir: &Path, args: &[String]) -> Self {
        Self::spawn_with_env(name, log_dir, args, &[])
    }

    /// [`BatonProcess::spawn`] with these environment variables set too
    /// (names starting with `BATON_` included).
    pub fn spawn_with_env(
        name: &str,
        log_dir: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Self {
        let mut command = Command::new(baton_bin());
        command
            .args(args)
            .env("RUST_LOG", "info")
            // Plain text: log lines are matched by tests and read by people.
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(key, value)| (key, value)));
        Self::spawn_command(name, log_dir, command)
    }

    /// Starts any program the same way (for example an SDK worker in
    /// another language): stdout and stderr appended to
    /// `<log_dir>/<name>.log`, no standard input, no inherited `BATON_*` or
    /// `OTEL_*` variables (those set on `command` stay).
    pub fn spawn_command(name: &str, log_dir: &Path, mut command: Command) -> Self {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", log_path.display()));
        let stderr = log.try_clone().expect("cannot clone the log file handle");
        scrub_inherited_env(&mut command);
        command.stdin(Stdio::null()).stdout(log).stderr(stderr);
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
        Self {
            name: name.to_string(),
            child,
            log_path,
            exit_status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Sends `signal` to this process (by its PID, never by name).
    pub fn signal(&mut self, signal: Signal) {
        if self.try_exit_status().is_some() {
            panic!(
                "{} already exited; cannot send {signal}\n{}",
                self.name,
                self.log_tail()
            );
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pid fits i32"));
        kill(pid, signal).unwrap_or_else(|error| panic!("kill({pid}, {signal}): {error}"));
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self
                .child
                .try_wait()
                .unwrap_or_else(|error| panic!("cannot wait for {}: {error}", self.name));
        }
        self.exit_status
    }

    /// Waits for the process to exit, for at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let waited = poll_until(timeout, Duration::from_millis(20), async || {
            self.try_exit_status()
        })
        .await;
        match waited {
            Some(status) => status,
            None => panic!(
                "{} did not exit within {timeout:?}\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// Everything the process wrote so far.
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|error| format!("<cannot read {}: {error}>", self.log_path.display()))
    }

    /// The last lines of the log, labelled with the process name.
    pub fn log_tail(&self) -> String {
        format!(
            "--- last lines of {} ({}) ---\n{}",
            self.name,
            self.log_path.display(),
            tail(&self.log_contents(), TAIL_LINES)
        )
    }

    /// Waits until the log contains `pattern`; panics with the log if the
    /// process exits first or `timeout` passes.
    pub async fn wait_for_log(&mut self, pattern: impl Into<LogPattern>, timeout: Duration) {
        let pattern = pattern.into();
        let mut exited = None;
        let found = poll_until(timeout, POLL_INTERVAL, async || {
            if pattern.is_match(&self.log_contents()) {
                return Some(true);
            }
            if let Some(status) = self.try_exit_status() {
                exited = Some(status);
                // One last read: the line may have been written just before
                // the exit.
                return Some(pattern.is_match(&self.log_contents()));
            }
            None
        })
        .await;
        if found != Some(true) {
            let why = match exited {
                Some(status) => format!("exited ({status}) before"),
                None => format!("did not log within {timeout:?}"),
            };
            panic!("{} {why} {pattern}\n{}", self.name, self.log_tail());
        }
    }
}

impl Drop for BatonProcess {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What [`BatonProcess::wait_for_log`] looks for: a plain substring or a
/// regular expression.
#[derive(Debug, Clone)]
pub enum LogPattern {
    Substring(String),
    Regex(Regex),
}

impl LogPattern {
    pub fn is_match(&self, text: &str) -> bool {
        match self {
            LogPattern::Substring(needle) => text.contains(needle.as_str()),
            LogPattern::Regex(regex) => regex.is_match(text),
        }
    }
}

impl fmt::Display for LogPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogPattern::Substring(needle) => write!(f, "`{needle}`"),
            LogPattern::Regex(regex) => write!(f, "/{regex}/"),
        }
    }
}

impl From<&str> for LogPattern {
    fn from(needle: &str) -> Self {
        LogPattern::Substring(needle.to_string())
    }
}

impl From<Regex> for LogPattern {
    fn from(regex: Regex) -> Self {
        LogPattern::Regex(regex)
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a process with this PID exists and has not exited. A zombie
/// (exited, not yet reaped by its parent) counts as gone: it runs nothing.
pub fn process_is_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => false,
        // EPERM: it exists but belongs to someone else.
        Ok(()) | Err(_) => !is_zombie(pid),
    }
}

fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`; comm may contain spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

/// Files into which test tasks write the PIDs of the processes they start
/// (`echo $$ > "$PIDS"`). Dropping it SIGKILLs whatever recorded process
/// (with its process group) still runs, so that a failing test or a killed
/// worker leaves no `sleep 600` behind.
#[derive(Debug, Default)]
pub struct PidFiles {
    paths: Vec<PathBuf>,
}

impl PidFiles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tracks `path` (which need not exist yet) and returns it.
    pub fn track(&mut self, path: PathBuf) -> PathBuf {
        self.paths.push(path.clone());
        path
    }

    /// The PIDs recorded in `path` so far (complete lines only).
    pub fn read(path: &Path) -> Vec<i32> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .lines()
            .map(|line| {
                line.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: `{line}` is not a pid", path.display()))
            })
            .collect()
    }

    /// Every PID recorded in every tracked file.
    pub fn all(&self) -> Vec<i32> {
        self.paths
            .iter()
            .flat_map(|path| Self::read(path))
            .collect()
    }

    /// Waits until no recorded process is alive; panics listing the ones
    /// still running after `timeout`.
    pub async fn wait_all_gone(&self, timeout: Duration) {
        let pids = self.all();
        assert!(!pids.is_empty(), "no pid was recorded in {:?}", self.paths);
        let gone = poll_until(timeout, POLL_INTERVAL, async || {
            pids.iter().all(|&pid| !process_is_alive(pid)).then_some(())
        })
        .await;
        if gone.is_none() {
            let alive: Vec<String> = pids
                .iter()
                .filter(|&&pid| process_is_alive(pid))
                .map(|pid| format!("{pid} ({})", command_line(*pid)))
                .collect();
            panic!(
                "task processes still alive {timeout:?} after they should have been killed: {}",
                alive.join(", ")
            );
        }
    }
}

impl Drop for PidFiles {
    fn drop(&mut self) {
        for pid in self.all() {
            // Only what still looks like a test task: a PID reused by an
            // unrelated process is left alone.
            let command = command_line(pid);
            if !process_is_alive(pid) || !(command.contains("sleep") || command.starts_with("sh")) {
                continue;
            }
            // A task leads its own process group (the worker starts it so):
            // killing the group takes its children too.
            if process_group(pid) == Some(pid) {
                let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The process group of `pid`, from `/proc/<pid>/stat`.
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

fn command_line(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}
