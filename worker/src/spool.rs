//! The attempt spool: each attempt's combined output and, once it
//! finished, its result, on the worker's local disk until the controller
//! has acknowledged both; and the attempt's private files while it runs.
//!
//! The spool is a set of numbered slots, each a directory reused from one
//! attempt to the next, under the worker's own directory
//! (`<work_dir>/workers/<id>/`):
//!
//! ```text
//! spool/<slot>/log          every byte the task printed, appended as it is read from the pipes
//! spool/<slot>/result.json  `running`, then the attempt's identity and result, written (and synced) after the log was synced
//! spool/<slot>/acked        the log offset the controller acknowledged last (a hint, never synced),
//!                           or `forgotten` once the controller has everything
//! spool/<slot>/group        the process group of the attempt's command (see `workdir`)
//! spool/<slot>/out/         holds `$BATON_OUTPUT`, `out/<attempt_id>.json`, read and removed when
//!                           the command exits; emptied when the slot is taken again
//! ```
//!
//! Files are rewritten in place, never created and removed per attempt:
//! allocating and freeing inodes for every attempt made ext4 search ever
//! longer past recently freed ones, and each run of short commands slower
//! than the last. The small files are not cut to zero and written again,
//! which makes ext4 write them out at once (the log is, when it is
//! emptied). The task's own file has a name of its attempt in a directory
//! of its own, so that a task may put other files beside it and a process
//! an earlier attempt left behind cannot write this attempt's output. A slot is taken by one attempt at a time
//! and goes back to the free list once the attempt is both forgotten (the
//! controller acknowledged all of it, or called it stale) and no longer
//! running.
//!
//! The log file is the only copy of the output the worker keeps: chunks are
//! read back from it to be sent, so the memory an attempt needs does not
//! grow with what it prints. A worker killed (SIGKILL) and started again
//! with the same id on the same work dir [`load`]s the finished attempts
//! (slots with a `result.json` that are not marked forgotten) and sends
//! their log from the `acked` hint (the controller skips bytes it already
//! has) and then their result. Attempts without a result were still running
//! when the worker died: their processes are killed by the work dir's
//! reaper and their slots are freed, as the controller fails them as
//! `worker_lost`. A `result.json` cut short by a crash of the machine reads
//! as no result, the same as a crash just before it was written.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use baton_common::ids::{AttemptId, RunId, TaskId};
use baton_common::pb::api::AttemptOutcome;
use baton_common::time::{self, micros_to_system_time};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tracing::warn;

use crate::executor::AttemptResult;

const SPOOL_DIR: &str = "spool";
const LOG_FILE: &str = "log";
const RESULT_FILE: &str = "result.json";
const ACKED_FILE: &str = "acked";
/// File in a slot naming the process group of the attempt's command.
pub(crate) const GROUP_FILE: &str = "group";
/// The directory of `$BATON_OUTPUT` in a slot.
const OUTPUT_DIR: &str = "out";
/// What `acked` holds once the controller has all of the attempt.
const FORGOTTEN: &str = "forgotten";
/// What `result.json` holds while its attempt runs.
const NO_RESULT: &[u8] = b"running";

/// `spool` under the worker's directory.
pub(crate) fn spool_dir(worker_root: &Path) -> PathBuf {
    worker_root.join(SPOOL_DIR)
}

/// The worker's spool: which of its slots are free.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    slots: Mutex<FreeSlots>,
}

#[derive(Debug, Default)]
struct FreeSlots {
    free: Vec<u32>,
    /// Slots `0..next` exist or were handed out.
    next: u32,
}

impl Spool {
    /// A spool whose slots `0..next` are free but `busy`.
    fn new(dir: PathBuf, next: u32, busy: &[u32]) -> Arc<Self> {
        // Popped from the end: at start-up the lowest numbers go first;
        // afterwards the slot freed last is reused first.
        let free = (0..next)
            .rev()
            .filter(|index| !busy.contains(index))
            .collect();
        Arc::new(Self {
            dir,
            slots: Mutex::new(FreeSlots { free, next }),
        })
    }

    /// An empty spool under the worker's directory.
    #[cfg(test)]
    pub(crate) fn empty(worker_root: &Path) -> Arc<Self> {
        Self::new(spool_dir(worker_root), 0, &[])
    }

    /// Takes a free slot, or a new one when none is free. Its files are
    /// made ready by [`SpoolWriter::create`].
    pub(crate) fn take(self: &Arc<Self>) -> Arc<SpoolSlot> {
        let index = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.free.pop().unwrap_or_else(|| {
                slots.next += 1;
                slots.next - 1
            })
        };
        self.slot(index)
    }

    fn slot(self: &Arc<Self>, index: u32) -> Arc<SpoolSlot> {
        Arc::new(SpoolSlot {
            spool: Arc::clone(self),
            index,
            dir: self.dir.join(index.to_string()),
            retired: AtomicBool::new(false),
        })
    }

    /// Slots free now.
    #[cfg(test)]
    pub(crate) fn free_count(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .free
            .len()
    }
}

/// One slot of the spool, shared by whoever still uses it: the agent until
/// the attempt is forgotten, the executor until it ended. The slot is free
/// again when the last of them lets go.
#[derive(Debug)]
pub(crate) struct SpoolSlot {
    spool: Arc<Spool>,
    index: u32,
    dir: PathBuf,
    /// Its files could not be made ready: it does not go back to the free
    /// list.
    retired: AtomicBool,
}

impl SpoolSlot {
    /// The slot's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The spooled log.
    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// The directory that holds `$BATON_OUTPUT`.
    pub(crate) fn output_dir(&self) -> PathBuf {
        self.dir.join(OUTPUT_DIR)
    }

    /// Notes the acknowledged log offset, so a restarted worker resends
    /// less. Not synced: a stale value only means more bytes are resent
    /// (and skipped by the controller).
    pub(crate) fn write_acked(&self, offset: u64) {
        if let Err(error) = write_in_place(
            &self.dir.join(ACKED_FILE),
            offset.to_string().as_bytes(),
            false,
        ) {
            warn!(slot = self.index, %error, "cannot note the acknowledged log offset");
        }
    }

    /// The controller has everything of the attempt (or called it stale):
    /// marks the slot so that a restarted worker does not send it again,
    /// and gives the log's space back. Blocking.
    pub(crate) fn forget(&self) {
        let forgotten = write_in_place(&self.dir.join(ACKED_FILE), FORGOTTEN.as_bytes(), false)
            .and_then(|()| {
                File::options()
                    .write(true)
                    .open(self.log_path())?
                    .set_len(0)
            });
        if let Err(error) = forgotten {
            warn!(slot = self.index, %error, "cannot clear a forgotten attempt's spool");
        }
    }
}

impl Drop for SpoolSlot {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        self.spool
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .free
            .push(self.index);
    }
}

/// Who an attempt is, as its `result.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpoolMeta {
    pub attempt_id: AttemptId,
    pub run_id: RunId,
    pub task_id: TaskId,
    pub attempt: u32,
}

/// `result.json`: the identity, the result and the start, in plain fields.
#[derive(Debug, Serialize, Deserialize)]
struct SpooledResult {
    #[serde(flatten)]
    meta: SpoolMeta,
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
    slot: Arc<SpoolSlot>,
    meta: SpoolMeta,
    log: tokio::fs::File,
    len: u64,
}

impl SpoolWriter {
    /// Makes the slot ready for the attempt: no result, no acknowledged
    /// offset, an empty output directory, an empty log. A slot that
    /// cannot be made ready (a task changed what it holds) is made anew;
    /// failing that, it is retired.
    pub(crate) async fn create(slot: Arc<SpoolSlot>, meta: SpoolMeta) -> io::Result<Self> {
        let dir = slot.dir.clone();
        let index = slot.index;
        let prepared = tokio::task::spawn_blocking(move || {
            prepare(&dir).or_else(|error| {
                warn!(slot = index, %error, "cannot reuse a spool slot; making it anew");
                std::fs::remove_dir_all(&dir)?;
                prepare(&dir)
            })
        })
        .await
        .map_err(io::Error::other)?;
        let log = match prepared {
            Ok(log) => log,
            Err(error) => {
                slot.retired.store(true, Ordering::Relaxed);
                return Err(error);
            }
        };
        Ok(Self {
            slot,
            meta,
            log: tokio::fs::File::from_std(log),
            len: 0,
        })
    }

    /// The slot the attempt writes in.
    pub(crate) fn slot(&self) -> &SpoolSlot {
        &self.slot
    }

    /// `$BATON_OUTPUT`: named after the attempt, in the slot's output
    /// directory.
    pub(crate) fn output_path(&self) -> PathBuf {
        self.slot
            .output_dir()
            .join(format!("{}.json", self.meta.attempt_id))
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

    /// The attempt ended: syncs the log, then stores the result (a
    /// `result.json` is never there without every log byte it counts).
    pub(crate) async fn finish(mut self, result: &AttemptResult) -> io::Result<()> {
        self.log.flush().await?;
        if self.len > 0 {
            self.log.sync_data().await?;
        }
        let spooled = SpooledResult {
            meta: self.meta,
            outcome: result.outcome.as_str_name().to_string(),
            exit_code: result.exit_code,
            error: result.error.clone(),
            output_json: result.output_json.clone(),
            started_at_micros: time::system_time_to_micros(result.started_at),
            ended_at_micros: time::system_time_to_micros(result.ended_at),
            log_bytes: result.log_bytes,
        };
        let text = serde_json::to_vec(&spooled).map_err(io::Error::other)?;
        let path = self.slot.dir.join(RESULT_FILE);
        tokio::task::spawn_blocking(move || write_in_place(&path, &text, true))
            .await
            .map_err(io::Error::other)?
    }
}

/// Empties a slot's files for a new attempt, creating them (and the
/// slot) on its first use; returns the log, open for writing.
fn prepare(dir: &Path) -> io::Result<File> {
    let new = match std::fs::create_dir(dir) {
        Ok(()) => true,
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => false,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            true
        }
        Err(error) => return Err(error),
    };
    // The result first: a worker that dies in between finds no result,
    // whatever `acked` says. The group file keeps the last attempt's
    // record until this one's process starts: harmless, as the reaper
    // checks the recorded start time.
    write_in_place(&dir.join(RESULT_FILE), NO_RESULT, false)?;
    write_in_place(&dir.join(ACKED_FILE), b"0", false)?;
    empty_output_dir(&dir.join(OUTPUT_DIR))?;
    // Empty already when the last attempt was forgotten.
    let log = File::create(dir.join(LOG_FILE))?;
    if new {
        // Once per slot: the names of its files survive a machine crash.
        File::open(dir)?.sync_all()?;
    }
    Ok(log)
}

/// Leaves `out` an empty directory: whatever an earlier attempt's task
/// left there, or put in its place, goes.
fn empty_output_dir(out: &Path) -> io::Result<()> {
    match std::fs::read_dir(out) {
        Ok(entries) => {
            for entry in entries {
                remove_path(&entry?.path())?;
            }
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => std::fs::create_dir(out),
        Err(error) if error.kind() == io::ErrorKind::NotADirectory => {
            std::fs::remove_file(out)?;
            std::fs::create_dir(out)
        }
        Err(error) => Err(error),
    }
}

/// A finished attempt found in the spool at start-up.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub meta: SpoolMeta,
    pub result: AttemptResult,
    /// Bytes of the attempt's log in the log file.
    pub log_len: u64,
    /// The last acknowledged offset the worker noted (0 when unknown).
    pub acked: u64,
}

/// Reads the spool after a restart: the spool, with the slots of finished
/// attempts taken and returned with them (in attempt id order); every
/// other slot is free. What is not a slot is removed.
pub(crate) fn load(worker_root: &Path) -> (Arc<Spool>, Vec<(Arc<SpoolSlot>, Recovered)>) {
    let dir = spool_dir(worker_root);
    let mut next = 0;
    let mut finished = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(index) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            warn!(path = %path.display(), "removing what is not a spool slot");
            if let Err(error) = remove_path(&path)
                && error.kind() != io::ErrorKind::NotFound
            {
                warn!(path = %path.display(), %error, "cannot remove it");
            }
            continue;
        };
        next = next.max(index.saturating_add(1));
        match load_one(&path) {
            Ok(Some(attempt)) => finished.push((index, attempt)),
            Ok(None) => {}
            Err(error) => {
                warn!(path = %path.display(), %error, "dropping an unreadable attempt spool");
            }
        }
    }
    let busy: Vec<u32> = finished.iter().map(|(index, _)| *index).collect();
    let spool = Spool::new(dir, next, &busy);
    let mut recovered: Vec<_> = finished
        .into_iter()
        .map(|(index, attempt)| (spool.slot(index), attempt))
        .collect();
    recovered.sort_by_key(|(_, attempt)| attempt.meta.attempt_id);
    (spool, recovered)
}

/// The finished attempt a slot holds, if any.
fn load_one(dir: &Path) -> io::Result<Option<Recovered>> {
    let result_text = match std::fs::read(dir.join(RESULT_FILE)) {
        Ok(text) if !text.is_empty() && text != NO_RESULT => text,
        Ok(_) => return Ok(None),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let acked = std::fs::read_to_string(dir.join(ACKED_FILE)).unwrap_or_default();
    if acked.trim() == FORGOTTEN {
        return Ok(None);
    }
    let spooled: SpooledResult = serde_json::from_slice(&result_text).map_err(io::Error::other)?;
    let log_len = match std::fs::metadata(dir.join(LOG_FILE)) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(error),
    };
    // Past what the result counts is an earlier attempt's log that a crash
    // of the machine brought back (an empty log is not synced).
    let log_len = log_len.min(spooled.log_bytes);
    let acked = acked.trim().parse().unwrap_or(0_u64).min(log_len);
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
        meta: spooled.meta,
        result,
        log_len,
        acked,
    }))
}

/// Removes a file, or a directory with what it holds.
fn remove_path(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Replaces the content of `path` in place (no new inode); with `sync` it
/// survives a crash of the machine once this returns. A crash while it
/// writes can leave it cut short or mixed with what it held: readers treat
/// what does not parse as absent. `contents` must not be empty.
pub(crate) fn write_in_place(path: &Path, contents: &[u8], sync: bool) -> io::Result<()> {
    // Overwritten, then cut to length, never cut to zero first: ext4
    // writes out at once a file cut to zero and written again.
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all(contents)?;
    file.set_len(contents.len() as u64)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn meta() -> SpoolMeta {
        SpoolMeta {
            attempt_id: AttemptId::generate(),
            run_id: RunId::generate(),
            task_id: TaskId::new("extract").unwrap(),
            attempt: 3,
        }
    }

    /// A slot of `spool` made ready for an attempt `meta`.
    async fn started(spool: &Arc<Spool>, meta: SpoolMeta) -> (Arc<SpoolSlot>, SpoolWriter) {
        let slot = spool.take();
        let writer = SpoolWriter::create(Arc::clone(&slot), meta).await.unwrap();
        (slot, writer)
    }

    fn failed(log_bytes: u64) -> AttemptResult {
        AttemptResult {
            outcome: AttemptOutcome::Failed,
            exit_code: Some(3),
            error: "exited with status 3".into(),
            output_json: String::new(),
            started_at: micros_to_system_time(1_000_000),
            ended_at: micros_to_system_time(2_000_000),
            log_bytes,
        }
    }

    #[tokio::test]
    async fn finished_attempts_are_found_again_and_running_ones_dropped() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::empty(root.path());
        let finished = meta();
        let (finished_slot, mut writer) = started(&spool, finished.clone()).await;
        assert_eq!(writer.append(b"hello ").await.unwrap(), 6);
        assert_eq!(writer.append(b"world\n").await.unwrap(), 12);
        writer.finish(&failed(12)).await.unwrap();
        finished_slot.write_acked(6);

        let (running_slot, mut writer) = started(&spool, meta()).await;
        writer.append(b"partial").await.unwrap();
        // A worker killed now: nothing of it runs on.
        drop((writer, finished_slot, running_slot, spool));

        let (spool, recovered) = load(root.path());
        assert_eq!(recovered.len(), 1, "{recovered:?}");
        let (slot, attempt) = &recovered[0];
        assert_eq!(attempt.meta, finished);
        assert_eq!(attempt.result, failed(12));
        assert_eq!(attempt.log_len, 12);
        assert_eq!(attempt.acked, 6);
        assert_eq!(std::fs::read(slot.log_path()).unwrap(), b"hello world\n");
        assert_eq!(spool.free_count(), 1, "the running attempt's slot is free");

        // Acknowledged: not found again, and its log's space is given back.
        slot.forget();
        assert_eq!(std::fs::metadata(slot.log_path()).unwrap().len(), 0);
        drop(recovered);
        assert_eq!(spool.free_count(), 2);
        let (_, recovered) = load(root.path());
        assert!(recovered.is_empty(), "{recovered:?}");
    }

    #[tokio::test]
    async fn a_slot_is_free_once_forgotten_and_ended_and_reused_in_place() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::empty(root.path());
        let (slot, mut writer) = started(&spool, meta()).await;
        writer.append(b"output\n").await.unwrap();
        let first_output = writer.output_path();
        std::fs::write(&first_output, "{}").unwrap();
        // What a task may leave beside its output.
        std::fs::write(slot.output_dir().join("rows.tmp"), "1,2").unwrap();
        let inodes_of = |slot: &SpoolSlot| {
            [LOG_FILE, RESULT_FILE, ACKED_FILE]
                .map(|name| std::fs::metadata(slot.dir().join(name)).unwrap().ino())
        };
        let inodes = inodes_of(&slot);

        // Called stale while it still runs: the agent forgets it first.
        slot.forget();
        drop(slot);
        assert_eq!(spool.free_count(), 0, "still held by the running attempt");
        // The stopped attempt stores its result after it was forgotten.
        writer.finish(&failed(7)).await.unwrap();
        let (_, recovered) = load(root.path());
        assert!(
            recovered.is_empty(),
            "a forgotten attempt is not sent again"
        );
        assert_eq!(spool.free_count(), 1, "free once the attempt ended too");

        let again = spool.take();
        assert_eq!(spool.free_count(), 0);
        let writer = SpoolWriter::create(Arc::clone(&again), meta())
            .await
            .unwrap();
        assert_eq!(writer.slot().dir(), again.dir(), "the same slot");
        assert_eq!(
            inodes_of(&again),
            inodes,
            "files are reused, not created again"
        );
        let read = |name: &str| std::fs::read(again.dir().join(name)).unwrap();
        assert_eq!(read(LOG_FILE), b"", "an empty log for the new attempt");
        assert_eq!(read(RESULT_FILE), NO_RESULT, "no result yet");
        assert_eq!(read(ACKED_FILE), b"0", "nothing acknowledged yet");
        assert_ne!(
            writer.output_path(),
            first_output,
            "named after its attempt"
        );
        assert_eq!(
            std::fs::read_dir(again.output_dir()).unwrap().count(),
            0,
            "nothing of the last attempt's output directory is left"
        );
        let (_, recovered) = load(root.path());
        assert!(recovered.is_empty(), "a new attempt has no result yet");
    }

    #[tokio::test]
    async fn a_slot_a_task_broke_is_made_anew() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::empty(root.path());
        let (slot, writer) = started(&spool, meta()).await;
        // The task removed its output directory and put a file there.
        std::fs::remove_dir(slot.output_dir()).unwrap();
        std::fs::write(slot.output_dir(), "not a directory").unwrap();
        writer.finish(&failed(0)).await.unwrap();
        slot.forget();
        drop(slot);
        let (again, writer) = started(&spool, meta()).await;
        assert!(again.output_dir().is_dir());
        std::fs::write(writer.output_path(), "{}").unwrap();
        // A directory where the result goes: reading it fails, so the slot
        // is removed and made again.
        drop(writer);
        std::fs::remove_file(again.dir().join(RESULT_FILE)).unwrap();
        std::fs::create_dir(again.dir().join(RESULT_FILE)).unwrap();
        drop(again);
        let (third, _writer) = started(&spool, meta()).await;
        assert!(third.dir().join(RESULT_FILE).is_file());
        assert_eq!(spool.free_count(), 0);
    }

    #[tokio::test]
    async fn what_cannot_be_read_is_no_result_and_what_is_no_slot_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::empty(root.path());
        let (slot, writer) = started(&spool, meta()).await;
        writer.finish(&failed(0)).await.unwrap();
        // Cut short by a crash of the machine.
        let text = std::fs::read(slot.dir().join(RESULT_FILE)).unwrap();
        std::fs::write(slot.dir().join(RESULT_FILE), &text[..text.len() / 2]).unwrap();
        let stray = spool_dir(root.path()).join("0193a2b4-not-a-slot");
        std::fs::create_dir_all(&stray).unwrap();
        drop((slot, spool));

        let (spool, recovered) = load(root.path());
        assert!(recovered.is_empty(), "{recovered:?}");
        assert_eq!(spool.free_count(), 1);
        assert!(!stray.exists());
        let (first, second) = (spool.take(), spool.take());
        assert_eq!(first.dir(), spool_dir(root.path()).join("0"));
        assert_eq!(second.dir(), spool_dir(root.path()).join("1"));
    }

    #[tokio::test]
    async fn a_log_longer_than_its_result_counts_is_cut_to_the_count() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::empty(root.path());
        let (slot, writer) = started(&spool, meta()).await;
        writer.finish(&failed(0)).await.unwrap();
        // An earlier attempt's unsynced truncation undone by a crash.
        std::fs::write(slot.log_path(), b"an earlier attempt's log").unwrap();
        drop((slot, spool));
        let (_, recovered) = load(root.path());
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].1.log_len, 0);
    }
}
