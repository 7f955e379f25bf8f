//! The attempt spool: each attempt's combined output, its identity and,
//! once it finished, its result, on the worker's local disk until the
//! controller has acknowledged all of them.
//!
//! Layout, under the worker's own directory (`<work_dir>/workers/<id>/`):
//!
//! ```text
//! spool/<attempt_id>/meta.json    identity (run, task, attempt number), written when the attempt starts
//! spool/<attempt_id>/log          every byte the task printed, appended as it is read from the pipes
//! spool/<attempt_id>/result.json  the result, written (tmp + fsync + rename) after the log was synced
//! spool/<attempt_id>/acked        the log offset the controller acknowledged last (a hint, never synced)
//! ```
//!
//! The log file is the only copy of the output the worker keeps: chunks are
//! read back from it to be sent, so the memory an attempt needs does not
//! grow with what it prints. A worker killed (SIGKILL) and started again
//! with the same id on the same work dir [`load`]s the finished attempts
//! (those with a `result.json`) and sends their log from the `acked` hint
//! (the controller skips bytes it already has) and then their result.
//! Attempts without a result were still running when the worker died: their
//! processes are killed by the work dir's reaper and their spool is removed,
//! as the controller fails them as `worker_lost`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use baton_common::ids::{AttemptId, RunId, TaskId};
use baton_common::pb::api::AttemptOutcome;
use baton_common::time::{self, micros_to_system_time};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::executor::AttemptResult;

const SPOOL_DIR: &str = "spool";
const META_FILE: &str = "meta.json";
const LOG_FILE: &str = "log";
const RESULT_FILE: &str = "result.json";
const ACKED_FILE: &str = "acked";

/// `spool/<attempt_id>` under the worker's directory.
pub(crate) fn attempt_spool_dir(worker_root: &Path, attempt_id: AttemptId) -> PathBuf {
    worker_root.join(SPOOL_DIR).join(attempt_id.to_string())
}

/// The attempt's spooled log.
pub(crate) fn log_path(worker_root: &Path, attempt_id: AttemptId) -> PathBuf {
    attempt_spool_dir(worker_root, attempt_id).join(LOG_FILE)
}

/// Who an attempt is, as `meta.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpoolMeta {
    pub attempt_id: AttemptId,
    pub run_id: RunId,
    pub task_id: TaskId,
    pub attempt: u32,
}

/// `result.json`: the result and the start, in plain fields.
#[derive(Debug, Serialize, Deserialize)]
struct SpooledResult {
    /// `AttemptOutcome` by name, so the file outlives renumbering.
    outcome: String,
    exit_code: Option<i32>,
    error: String,
    output_json: String,
    started_at_micros: i64,
    ended_at_micros: i64,
    log_bytes: u64,
}

/// Writes an attempt's spool while it runs.
#[derive(Debug)]
pub(crate) struct SpoolWriter {
    dir: PathBuf,
    log: tokio::fs::File,
    len: u64,
}

impl SpoolWriter {
    /// Creates the attempt's directory, its `meta.json` and an empty log.
    pub(crate) async fn create(worker_root: &Path, meta: &SpoolMeta) -> io::Result<Self> {
        let dir = attempt_spool_dir(worker_root, meta.attempt_id);
        tokio::fs::create_dir_all(&dir).await?;
        let text = serde_json::to_vec(meta).map_err(io::Error::other)?;
        let meta_dir = dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&meta_dir, META_FILE, &text, true))
            .await
            .map_err(io::Error::other)??;
        let log = tokio::fs::File::create(dir.join(LOG_FILE)).await?;
        Ok(Self { dir, log, len: 0 })
    }

    /// Bytes spooled so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends output; once this returns the bytes are readable from the
    /// log file by the sender. Returns the new length.
    pub(crate) async fn append(&mut self, data: &[u8]) -> io::Result<u64> {
        self.log.write_all(data).await?;
        // tokio's file writes in the background; flushing hands the bytes
        // to the OS, so a reader of the file sees them.
        self.log.flush().await?;
        self.len += data.len() as u64;
        Ok(self.len)
    }

    /// The attempt ended: syncs the log, then stores the result atomically
    /// (a `result.json` is never there without every log byte it counts).
    pub(crate) async fn finish(mut self, result: &AttemptResult) -> io::Result<()> {
        self.log.flush().await?;
        self.log.sync_data().await?;
        let spooled = SpooledResult {
            outcome: result.outcome.as_str_name().to_string(),
            exit_code: result.exit_code,
            error: result.error.clone(),
            output_json: result.output_json.clone(),
            started_at_micros: time::system_time_to_micros(result.started_at),
            ended_at_micros: time::system_time_to_micros(result.ended_at),
            log_bytes: result.log_bytes,
        };
        let text = serde_json::to_vec(&spooled).map_err(io::Error::other)?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir, RESULT_FILE, &text, true))
            .await
            .map_err(io::Error::other)?
    }
}

/// A finished attempt found in the spool at start-up.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub meta: SpoolMeta,
    pub result: AttemptResult,
    /// Bytes in the log file.
    pub log_len: u64,
    /// The last acknowledged offset the worker noted (0 when unknown).
    pub acked: u64,
}

/// Reads the spool after a restart: finished attempts are returned (in
/// attempt id order); the spool of attempts that were still running, or
/// that cannot be read, is removed.
pub(crate) fn load(worker_root: &Path) -> Vec<Recovered> {
    let Ok(entries) = std::fs::read_dir(worker_root.join(SPOOL_DIR)) else {
        return Vec::new();
    };
    let mut recovered = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        match load_one(&dir) {
            Ok(Some(attempt)) => recovered.push(attempt),
            Ok(None) => {
                info!(path = %dir.display(), "dropping the spool of an attempt that was running when the worker stopped");
                remove_dir(&dir);
            }
            Err(error) => {
                warn!(path = %dir.display(), %error, "dropping an unreadable attempt spool");
                remove_dir(&dir);
            }
        }
    }
    recovered.sort_by_key(|attempt| attempt.meta.attempt_id);
    recovered
}

fn load_one(dir: &Path) -> io::Result<Option<Recovered>> {
    let result_text = match std::fs::read(dir.join(RESULT_FILE)) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let meta: SpoolMeta =
        serde_json::from_slice(&std::fs::read(dir.join(META_FILE))?).map_err(io::Error::other)?;
    let spooled: SpooledResult = serde_json::from_slice(&result_text).map_err(io::Error::other)?;
    let log_len = match std::fs::metadata(dir.join(LOG_FILE)) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(error),
    };
    let acked = std::fs::read_to_string(dir.join(ACKED_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0_u64)
        .min(log_len);
    let outcome = AttemptOutcome::from_str_name(&spooled.outcome).unwrap_or(AttemptOutcome::Error);
    let result = AttemptResult {
        outcome,
        exit_code: spooled.exit_code,
        error: spooled.error,
        output_json: spooled.output_json,
        started_at: micros_to_system_time(spooled.started_at_micros),
        ended_at: micros_to_system_time(spooled.ended_at_micros),
        log_bytes: spooled.log_bytes,
    };
    Ok(Some(Recovered {
        meta,
        result,
        log_len,
        acked,
    }))
}

/// Notes the acknowledged log offset, so a restarted worker resends less.
/// Not synced: a stale value only means more bytes are resent (and skipped
/// by the controller).
pub(crate) fn write_acked(worker_root: &Path, attempt_id: AttemptId, offset: u64) {
    let dir = attempt_spool_dir(worker_root, attempt_id);
    if let Err(error) = write_atomically(&dir, ACKED_FILE, offset.to_string().as_bytes(), false) {
        warn!(%attempt_id, %error, "cannot note the acknowledged log offset");
    }
}

/// Removes an attempt's spool (everything was acknowledged, or the attempt
/// is stale).
pub(crate) fn remove(worker_root: &Path, attempt_id: AttemptId) {
    remove_dir(&attempt_spool_dir(worker_root, attempt_id));
}

fn remove_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir)
        && error.kind() != io::ErrorKind::NotFound
    {
        warn!(path = %dir.display(), %error, "cannot remove an attempt spool");
    }
}

/// Writes `dir/name` through a temporary file and a rename, so a reader
/// sees the old or the new content, never a part; with `sync` the file and
/// the directory are synced so the new content survives a machine crash.
fn write_atomically(dir: &Path, name: &str, contents: &[u8], sync: bool) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(contents)?;
    if sync {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    if sync {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SpoolMeta {
        SpoolMeta {
            attempt_id: AttemptId::generate(),
            run_id: RunId::generate(),
            task_id: TaskId::new("extract").unwrap(),
            attempt: 3,
        }
    }

    #[tokio::test]
    async fn finished_attempts_are_found_again_and_running_ones_dropped() {
        let root = tempfile::tempdir().unwrap();
        let finished = meta();
        let mut writer = SpoolWriter::create(root.path(), &finished).await.unwrap();
        assert_eq!(writer.append(b"hello ").await.unwrap(), 6);
        assert_eq!(writer.append(b"world\n").await.unwrap(), 12);
        let result = AttemptResult {
            outcome: AttemptOutcome::Failed,
            exit_code: Some(3),
            error: "exited with status 3".into(),
            output_json: String::new(),
            started_at: micros_to_system_time(1_000_000),
            ended_at: micros_to_system_time(2_000_000),
            log_bytes: 12,
        };
        writer.finish(&result).await.unwrap();
        write_acked(root.path(), finished.attempt_id, 6);

        let running = meta();
        let mut writer = SpoolWriter::create(root.path(), &running).await.unwrap();
        writer.append(b"partial").await.unwrap();

        let recovered = load(root.path());
        assert_eq!(recovered.len(), 1, "{recovered:?}");
        let attempt = &recovered[0];
        assert_eq!(attempt.meta, finished);
        assert_eq!(attempt.result, result);
        assert_eq!(attempt.log_len, 12);
        assert_eq!(attempt.acked, 6);
        assert_eq!(
            std::fs::read(log_path(root.path(), finished.attempt_id)).unwrap(),
            b"hello world\n"
        );
        assert!(
            !attempt_spool_dir(root.path(), running.attempt_id).exists(),
            "the spool of a running attempt is dropped"
        );
        remove(root.path(), finished.attempt_id);
        assert!(load(root.path()).is_empty());
    }
}
