//! Finding the `baton` binary under test, building it once if it is missing
//! or older than the product's sources.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// Directories and files of the workspace the `baton` binary is built from.
const PRODUCT_SOURCES: [&str; 7] = [
    "cli",
    "common",
    "controller",
    "worker",
    "proto",
    "Cargo.toml",
    "Cargo.lock",
];

/// The `baton` binary: `$BATON_BIN`, else `target/<profile>/baton` beside the
/// running test executable, built with cargo (same profile) when missing or
/// older than a source file of the product (`cargo test -p baton-tests` does
/// not build other packages' binaries). Concurrent test processes may all
/// try to build; cargo's lock on the target directory serializes them.
pub fn baton_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(locate_or_build)
}

fn locate_or_build() -> PathBuf {
    if let Some(path) = std::env::var_os("BATON_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "BATON_BIN={} does not name a file",
            path.display()
        );
        return path;
    }
    let profile_dir = profile_dir();
    let binary = profile_dir.join("baton");
    let built_at = std::fs::metadata(&binary).and_then(|metadata| metadata.modified());
    match built_at {
        Ok(built_at) if newest_source() <= built_at => return binary,
        _ => build(&profile_dir),
    }
    assert!(
        binary.is_file(),
        "cargo built baton-cli but {} does not exist",
        binary.display()
    );
    binary
}

/// `target/<profile>`: test executables live in `target/<profile>/deps`.
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test executable");
    let deps = exe.parent().expect("test executable has no directory");
    let dir = if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().expect("deps has no parent")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// The repository's root (scripts and fixtures live under it).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

/// Modification time of the newest product source file (bounded walk).
fn newest_source() -> SystemTime {
    const MAX_ENTRIES: usize = 100_000;
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut pending: Vec<PathBuf> = PRODUCT_SOURCES
        .iter()
        .map(|name| workspace_root().join(name))
        .collect();
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        seen += 1;
        if seen > MAX_ENTRIES {
            break;
        }
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.filter_map(Result::ok).map(|entry| entry.path()));
            }
        } else if let Ok(modified) = metadata.modified() {
            newest = newest.max(modified);
        }
    }
    newest
}

fn build(profile_dir: &Path) {
    let workspace = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "-p", "baton-cli", "--bin", "baton"]);
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(other) => {
            command.args(["--profile", other]);
        }
        None => panic!("unexpected target directory {}", profile_dir.display()),
    }
    if let Some(target_dir) = profile_dir.parent() {
        command.arg("--target-dir").arg(target_dir);
    }
    eprintln!("building baton: {command:?}");
    let status = command.status().expect("cannot run cargo");
    assert!(status.success(), "cargo build of baton failed: {status}");
}
