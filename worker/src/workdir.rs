//! The worker's own directory, `<work_dir>/workers/<worker_id>/`, and the
//! clean-up of what a killed worker left behind.
//!
//! A worker holds an exclusive lock on its directory's `lock` file for as
//! long as it runs, and records each running attempt's process group (pid
//! and start time) in the attempt's spool slot, `spool/<slot>/group`. A
//! worker killed with SIGKILL cannot kill its tasks' process groups, so the
//! next worker that starts on the same work dir does it: every worker
//! directory whose lock it can take belongs to a worker that is gone; the
//! groups recorded there whose leader still has the recorded start time in
//! the recorded boot (so the pid was not reused, and a group recorded by an
//! attempt that ended long ago, before a reboot included, is left alone)
//! are killed, and the directory is removed; a
//! worker restarted with its own id does the same in its own spool, which
//! it then reads for finished attempts. A second worker with the same id on
//! the same work dir is refused. Workers take turns (`workers/.lock`) to
//! create, lock and clean up, so two starting together never take each
//! other's directory for abandoned.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::WorkerError;
use crate::spool::{GROUP_FILE, spool_dir, write_in_place};

/// Where a worker of an earlier version recorded its attempts' groups.
const LEGACY_ATTEMPTS_DIR: &str = "attempts";

/// The locked directory of a running worker.
pub(crate) struct WorkDir {
    root: PathBuf,
    _lock: Flock<File>,
}

impl WorkDir {
    /// Takes this worker's directory under `work_dir`, after killing what
    /// workers that are gone left running there.
    pub(crate) fn acquire(work_dir: &Path, worker_id: &str) -> Result<Self, WorkerError> {
        let workers = work_dir.join("workers");
        let root = workers.join(worker_id);
        let io_error = |path: &Path, source: io::Error| WorkerError::WorkDir {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&workers).map_err(|source| io_error(&workers, source))?;
        // Workers starting together take turns: without this, one could find
        // another's directory between its creation and its lock, take it
        // for abandoned and remove it.
        let turn_path = workers.join(".lock");
        let turn = File::create(&turn_path).map_err(|source| io_error(&turn_path, source))?;
        let _turn = Flock::lock(turn, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_error(&turn_path, io::Error::from(errno)))?;
        std::fs::create_dir_all(spool_dir(&root)).map_err(|source| io_error(&root, source))?;
        let lock_path = root.join("lock");
        let file = File::create(&lock_path).map_err(|source| io_error(&lock_path, source))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(WorkerError::InvalidConfig {
                    field: "worker_id",
                    reason: format!(
                        "a worker `{worker_id}` already runs with the work dir `{}`",
                        work_dir.display()
                    ),
                });
            }
            Err((_, errno)) => return Err(io_error(&lock_path, io::Error::from(errno))),
        };
        // Our own leftovers first (a previous run of this worker, whose
        // spool the worker reads next), then other workers that are gone.
        kill_leftover_groups(&root);
        if let Ok(entries) = std::fs::read_dir(&workers) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path != root && path.is_dir() {
                    reap_if_abandoned(&path);
                }
            }
        }
        Ok(Self { root, _lock: lock })
    }

    /// Where this worker's attempts keep their files.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
}

/// Cleans up another worker's directory if that worker is gone.
fn reap_if_abandoned(dir: &Path) {
    let Ok(file) = File::options()
        .read(true)
        .write(true)
        .open(dir.join("lock"))
    else {
        return;
    };
    // Held by a running worker: not ours to touch.
    let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return;
    };
    kill_leftover_groups(dir);
    if let Err(error) = std::fs::remove_dir_all(dir) {
        warn!(path = %dir.display(), %error, "cannot remove an abandoned worker directory");
    }
    drop(lock);
}

/// Kills the process groups a worker that is gone left running: those its
/// spool slots record, and those an earlier version recorded.
fn kill_leftover_groups(worker_dir: &Path) {
    kill_recorded_groups(&spool_dir(worker_dir));
    sweep_legacy_attempts(worker_dir);
}

/// A worker of an earlier version recorded groups in
/// `attempts/<attempt_id>/group`: kills them, and removes the directory.
fn sweep_legacy_attempts(worker_dir: &Path) {
    let attempts = worker_dir.join(LEGACY_ATTEMPTS_DIR);
    if attempts.is_dir() {
        kill_recorded_groups(&attempts);
        if let Err(error) = std::fs::remove_dir_all(&attempts) {
            warn!(path = %attempts.display(), %error, "cannot remove an earlier version's attempt directories");
        }
    }
}

/// Kills the process groups recorded in the directories of `parent` (the
/// slots of a spool) whose leader still runs.
fn kill_recorded_groups(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if let Some(record) = read_group(&dir.join(GROUP_FILE))
            && record.leader_still_runs()
        {
            let pgid = record.pgid;
            match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
                Ok(()) => {
                    info!(pgid, attempt = %dir.display(), "killed a process group left by a worker that is gone")
                }
                Err(Errno::ESRCH) => {}
                Err(error) => warn!(pgid, %error, "cannot kill a leftover process group"),
            }
        }
    }
}

/// Records the process group an attempt's process leads in its spool
/// slot, so it can be killed even if this worker is not there to do it.
/// The record stays after the attempt: its leader's start time, and the
/// boot it ran in, tell it from a later process with the same pid.
pub(crate) fn record_group(slot_dir: &Path, pid: u32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    let start_time =
        process_start_time(pid).ok_or_else(|| io::Error::other("process already gone"))?;
    let boot = boot_id().unwrap_or("-");
    write_in_place(
        &slot_dir.join(GROUP_FILE),
        format!("{pid} {start_time} {boot}\n").as_bytes(),
        false,
    )
}

/// A recorded process group.
#[derive(Debug, PartialEq, Eq)]
struct GroupRecord {
    pgid: i32,
    /// Its leader's start, in clock ticks since boot.
    start_time: u64,
    /// The boot it was recorded in; `None` in an earlier version's record.
    boot: Option<String>,
}

impl GroupRecord {
    /// Whether the recorded leader is the process running now under that
    /// pid: same start time, and (a start time repeats across boots) the
    /// same boot.
    fn leader_still_runs(&self) -> bool {
        let same_boot = match (&self.boot, boot_id()) {
            (Some(recorded), Some(now)) => recorded == now,
            _ => true,
        };
        same_boot && process_start_time(self.pgid) == Some(self.start_time)
    }
}

fn read_group(path: &Path) -> Option<GroupRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let pgid = parts.next()?.parse().ok()?;
    let start_time = parts.next()?.parse().ok()?;
    let boot = parts.next().map(str::to_string);
    Some(GroupRecord {
        pgid,
        start_time,
        boot,
    })
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> Option<&'static str> {
    static BOOT_ID: OnceLock<Option<String>> = OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_string())
        })
        .as_deref()
}

/// The start time of a process in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), which tells a process from a later one that reused
/// its pid.
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;

    fn alive(pid: i32) -> bool {
        // A zombie still answers kill(0); it counts as gone.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                !stat[stat.rfind(')').unwrap() + 1..]
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    }

    /// A process group of two sleeps, as a task's would be.
    fn spawn_group() -> std::process::Child {
        Command::new("sh")
            .args(["-c", "sleep 600 & sleep 600"])
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// Waits up to 5 s for the group's leader to be gone; whether it is
    /// still alive then.
    fn alive_after_waiting(child: &mut std::process::Child) -> bool {
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let _ = child.wait();
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        alive(pid)
    }

    #[test]
    fn a_gone_workers_process_groups_are_killed_and_its_directory_removed() {
        let work_dir = tempfile::tempdir().unwrap();
        // A worker that was SIGKILLed: its directory exists, unlocked, with
        // a running process group recorded.
        let dead = work_dir.path().join("workers").join("dead");
        let attempt = spool_dir(&dead).join("0");
        std::fs::create_dir_all(&attempt).unwrap();
        File::create(dead.join("lock")).unwrap();
        let mut child = spawn_group();
        record_group(&attempt, child.id()).unwrap();

        let live = WorkDir::acquire(work_dir.path(), "new").unwrap();
        assert!(
            !alive_after_waiting(&mut child),
            "the leftover group is killed"
        );
        assert!(!dead.exists(), "the gone worker's directory is removed");
        assert!(spool_dir(live.root()).is_dir());
    }

    #[test]
    fn a_running_workers_directory_is_left_alone_and_its_id_cannot_be_reused() {
        let work_dir = tempfile::tempdir().unwrap();
        let first = WorkDir::acquire(work_dir.path(), "w1").unwrap();
        std::fs::create_dir_all(spool_dir(first.root()).join("0")).unwrap();
        let _second = WorkDir::acquire(work_dir.path(), "w2").unwrap();
        assert!(
            spool_dir(first.root()).join("0").exists(),
            "a live worker's spool stays"
        );
        let error = WorkDir::acquire(work_dir.path(), "w1")
            .err()
            .expect("same id twice");
        assert!(error.to_string().contains("already runs"), "{error}");
    }

    #[test]
    fn workers_starting_together_keep_their_own_directories() {
        let work_dir = tempfile::tempdir().unwrap();
        let started: Vec<WorkDir> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let path = work_dir.path();
                    scope.spawn(move || WorkDir::acquire(path, &format!("w{i}")).unwrap())
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap())
                .collect()
        });
        for workdir in &started {
            assert!(
                spool_dir(workdir.root()).is_dir(),
                "{} kept",
                workdir.root().display()
            );
        }
    }

    #[test]
    fn a_reused_pid_or_a_record_of_another_boot_is_not_taken_for_the_leader() {
        let dir = tempfile::tempdir().unwrap();
        let own = std::process::id() as i32;
        let start_time = process_start_time(own).unwrap();
        let record = |text: String| {
            std::fs::write(dir.path().join(GROUP_FILE), text).unwrap();
            read_group(&dir.path().join(GROUP_FILE)).unwrap()
        };
        let boot = boot_id().expect("this boot's id");
        let current = record(format!("{own} {start_time} {boot}\n"));
        assert_eq!(current.boot.as_deref(), Some(boot));
        assert!(current.leader_still_runs(), "this process, this boot");
        assert!(
            !record(format!("{own} 1 {boot}\n")).leader_still_runs(),
            "the start time differs: the pid was reused"
        );
        assert!(
            !record(format!(
                "{own} {start_time} 00000000-0000-0000-0000-000000000000\n"
            ))
            .leader_still_runs(),
            "recorded in another boot, where start times repeat"
        );
        assert!(
            record(format!("{own} {start_time}\n")).leader_still_runs(),
            "an earlier version's record, without a boot, is judged by its start time"
        );
    }

    #[test]
    fn groups_an_earlier_version_recorded_are_killed_and_their_directories_removed() {
        let work_dir = tempfile::tempdir().unwrap();
        let root = work_dir.path().join("workers").join("w1");
        let attempt = root.join(LEGACY_ATTEMPTS_DIR).join("a1");
        std::fs::create_dir_all(&attempt).unwrap();
        let mut child = spawn_group();
        let pid = child.id() as i32;
        let start_time = process_start_time(pid).unwrap();
        // The earlier format: pid and start time only.
        std::fs::write(attempt.join(GROUP_FILE), format!("{pid} {start_time}\n")).unwrap();

        let own = WorkDir::acquire(work_dir.path(), "w1").unwrap();
        assert!(
            !alive_after_waiting(&mut child),
            "the earlier version's group is killed"
        );
        assert!(!own.root().join(LEGACY_ATTEMPTS_DIR).exists());
    }
}
