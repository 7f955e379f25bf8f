//! [`PythonSdk`]: the Python SDK (`sdk/python`) ready to run: a virtualenv
//! with its pinned grpcio and grpcio-tools from PyPI, cached in
//! `target/python-sdk-venv` so that reruns are quick, and the gRPC stubs
//! generated from `proto/` (again whenever the protos change). Both are
//! done, one process at a time, by
//! `sdk/python/setup-venv.sh`, the same script the README's test command
//! runs.
//!
//! Whether a missing Python fails or skips a test is decided in one place,
//! [`PythonSdk::setup`]: under `CI=true` it fails, otherwise the test says it
//! is skipped and returns (like the etcd tests).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::binary::{profile_dir, workspace_root};
use crate::process::BatonProcess;

/// Creating the virtualenv and installing grpcio-tools from PyPI on a fresh
/// machine; a rerun only regenerates the stubs.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct PythonSdk {
    /// The virtualenv's interpreter.
    python: PathBuf,
    /// `sdk/python`: scripts run from here, and it is the `PYTHONPATH`.
    sdk_dir: PathBuf,
}

impl PythonSdk {
    /// Sets the SDK up, or returns `None` (after saying so on stderr) when
    /// `python3` with `venv` is missing and `CI` is not `true`.
    pub async fn setup(test: &str) -> Option<Self> {
        if let Err(reason) = python_with_venv() {
            if std::env::var("CI").is_ok_and(|value| value == "true") {
                panic!(
                    "{test}: python3 with venv and pip is required when CI=true ({reason}); install python3-venv and python3-pip"
                );
            }
            eprintln!(
                "{test}: skipped, {reason} (install python3-venv and python3-pip; with CI=true this fails)"
            );
            return None;
        }
        let sdk_dir = workspace_root().join("sdk").join("python");
        let venv = profile_dir()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(profile_dir)
            .join("python-sdk-venv");
        let mut command = tokio::process::Command::new(sdk_dir.join("setup-venv.sh"));
        command.arg(&venv).stdin(Stdio::null()).kill_on_drop(true);
        let output = tokio::time::timeout(SETUP_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| {
                panic!("{test}: setup-venv.sh did not finish within {SETUP_TIMEOUT:?}")
            })
            .unwrap_or_else(|error| panic!("{test}: cannot run setup-venv.sh: {error}"));
        assert!(
            output.status.success(),
            "{test}: setup-venv.sh failed ({})\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Some(Self {
            python: venv.join("bin").join("python"),
            sdk_dir,
        })
    }

    /// `python <args>` in `sdk/python` with the SDK importable and
    /// unbuffered output.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.python);
        command
            .args(args)
            .current_dir(&self.sdk_dir)
            .env("PYTHONPATH", &self.sdk_dir)
            .env("PYTHONUNBUFFERED", "1");
        command
    }

    /// Starts a long-running Python program (for example an SDK worker),
    /// its output in `<log_dir>/<name>.log`; stopped by PID like any
    /// [`BatonProcess`].
    pub fn spawn(&self, name: &str, log_dir: &Path, args: &[&str]) -> BatonProcess {
        BatonProcess::spawn_command(name, log_dir, self.command(args))
    }

    /// Runs a Python program to completion, for at most `timeout`.
    pub async fn run(&self, args: &[&str], timeout: Duration) -> Output {
        let mut command = tokio::process::Command::from(self.command(args));
        command.stdin(Stdio::null()).kill_on_drop(true);
        tokio::time::timeout(timeout, command.output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "`python {}` did not finish within {timeout:?}",
                    args.join(" ")
                )
            })
            .unwrap_or_else(|error| panic!("cannot run python: {error}"))
    }
}

/// Whether `python3` can create a virtualenv with pip (Debian splits
/// `ensurepip` into `python3-venv`).
fn python_with_venv() -> Result<(), String> {
    let output = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("python3 not found ({error})"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "python3 cannot create virtualenvs: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
