//! The log store: each attempt's combined output as one file under the data
//! directory, `logs/<run>/<task>/<attempt>.log`, and the writer task that
//! appends the chunks workers send.
//!
//! Logs are not scheduler state, so they do not go through the store: the
//! scheduler checks that a chunk belongs to a current attempt and hands it
//! to the [`LogWriter`], which appends it, skipping bytes it already has
//! (workers resend from the last acknowledged offset after a reconnect), and
//! then acknowledges the new length to the worker. Followers (`baton logs
//! -f`) watch an attempt's length through a `watch` channel that lives
//! while the attempt is open.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use baton_common::ids::{AttemptId, RunId, TaskId};
use baton_common::pb::api::{Ack, ControllerMessage, controller_message};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::scheduler::WorkerSender;

/// Identifies one attempt's log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogKey {
    pub run_id: RunId,
    pub task_id: TaskId,
    pub attempt: u32,
}

/// What followers of an attempt's log see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogProgress {
    pub len: u64,
    /// The attempt ended and every byte it produced is stored.
    pub sealed: bool,
}

/// Where logs live and who is following them.
pub struct LogStore {
    dir: PathBuf,
    open: Mutex<HashMap<LogKey, watch::Sender<LogProgress>>>,
}

pub type LogStoreRef = Arc<LogStore>;

impl LogStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn path(&self, key: &LogKey) -> PathBuf {
        self.dir
            .join(key.run_id.to_string())
            .join(key.task_id.as_str())
            .join(format!("{}.log", key.attempt))
    }

    fn open_entries(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<LogKey, watch::Sender<LogProgress>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks an attempt's log as open (the attempt was leased), so followers
    /// wait for its output instead of ending at once. No I/O: followers read
    /// the file itself; the length here only grows with appends.
    pub fn open_attempt(&self, key: LogKey) {
        self.open_entries()
            .entry(key)
            .or_insert_with(|| watch::channel(LogProgress::default()).0);
    }

    /// Follows an open attempt's log; `None` when the attempt is not open
    /// (it ended, or never started).
    pub fn follow(&self, key: &LogKey) -> Option<watch::Receiver<LogProgress>> {
        self.open_entries().get(key).map(watch::Sender::subscribe)
    }

    fn progress(&self, key: &LogKey, len: u64) {
        if let Some(sender) = self.open_entries().get(key) {
            sender.send_replace(LogProgress { len, sealed: false });
        }
    }

    /// The attempt ended: followers read to the end and stop. `len` is the
    /// final length when the writer knows it (it had the file open).
    fn seal(&self, key: &LogKey, len: Option<u64>) {
        if let Some(sender) = self.open_entries().remove(key) {
            let len = len.unwrap_or_else(|| sender.borrow().len);
            sender.send_replace(LogProgress { len, sealed: true });
        }
    }

    /// Reads up to `max` bytes from `offset`; empty at the end of the log or
    /// when the attempt wrote nothing.
    pub async fn read(&self, key: &LogKey, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let mut file = match tokio::fs::File::open(self.path(key)).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        file.seek(SeekFrom::Start(offset)).await?;
        let mut buffer = Vec::with_capacity(max.min(1 << 20));
        (&mut file)
            .take(max as u64)
            .read_to_end(&mut buffer)
            .await?;
        Ok(buffer)
    }

    /// Deletes every log of a run.
    pub async fn remove_run(&self, run_id: &RunId) -> std::io::Result<()> {
        match tokio::fs::remove_dir_all(self.dir.join(run_id.to_string())).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

/// Work for the [`LogWriter`].
pub enum LogCommand {
    Append {
        key: LogKey,
        attempt_id: AttemptId,
        offset: u64,
        data: Vec<u8>,
        ack: WorkerSender,
    },
    /// The attempt ended: flush its file to disk and release followers.
    Seal { key: LogKey },
}

struct OpenLog {
    file: tokio::fs::File,
    len: u64,
}

/// Appends chunks in arrival order; one task owns every open file.
pub struct LogWriter {
    store: LogStoreRef,
    files: HashMap<LogKey, OpenLog>,
}

impl LogWriter {
    pub fn spawn(
        store: LogStoreRef,
        shutdown: CancellationToken,
    ) -> (
        mpsc::UnboundedSender<LogCommand>,
        tokio::task::JoinHandle<()>,
    ) {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let mut writer = LogWriter {
            store,
            files: HashMap::new(),
        };
        let handle = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    command = receiver.recv() => match command {
                        Some(command) => writer.handle(command).await,
                        None => break,
                    },
                    () = shutdown.cancelled() => {
                        // Take what is already queued, then stop.
                        while let Ok(command) = receiver.try_recv() {
                            writer.handle(command).await;
                        }
                        break;
                    }
                }
            }
            for (_, mut log) in writer.files.drain() {
                let _ = log.file.flush().await;
            }
        });
        (sender, handle)
    }

    async fn handle(&mut self, command: LogCommand) {
        match command {
            LogCommand::Append {
                key,
                attempt_id,
                offset,
                data,
                ack,
            } => {
                match self.append(&key, offset, &data).await {
                    Ok(len) => {
                        let _ = ack.send(Ok(ControllerMessage {
                            message: Some(controller_message::Message::Ack(Ack {
                                attempt_id: attempt_id.to_string(),
                                log_offset: len,
                                ..Ack::default()
                            })),
                        }));
                    }
                    // Not acknowledged: the worker keeps the bytes and sends
                    // them again after its next reconnect.
                    Err(error) => {
                        warn!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, %error, "cannot append task log")
                    }
                }
            }
            LogCommand::Seal { key } => {
                // An attempt that wrote nothing has no file: nothing to sync.
                let len = match self.files.remove(&key) {
                    Some(log) => {
                        if let Err(error) = log.file.sync_all().await {
                            warn!(run_id = %key.run_id, task_id = %key.task_id, %error, "cannot sync task log");
                        }
                        Some(log.len)
                    }
                    None => None,
                };
                self.store.seal(&key, len);
            }
        }
    }

    /// Appends the part of `data` past what is stored; returns the new
    /// length.
    async fn append(&mut self, key: &LogKey, offset: u64, data: &[u8]) -> std::io::Result<u64> {
        if !self.files.contains_key(key) {
            let path = self.store.path(key);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await?;
            let len = file.metadata().await?.len();
            self.files.insert(key.clone(), OpenLog { file, len });
        }
        let log = self
            .files
            .get_mut(key)
            .ok_or_else(|| std::io::Error::other("log vanished"))?;
        let end = offset + data.len() as u64;
        if end <= log.len {
            return Ok(log.len);
        }
        let fresh = if offset >= log.len {
            if offset > log.len {
                // Bytes before `offset` never arrived; keep what did arrive
                // rather than refuse it, and say so.
                warn!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, expected = log.len, offset, "gap in task log");
            }
            data
        } else {
            &data[(log.len - offset) as usize..]
        };
        log.file.write_all(fresh).await?;
        log.file.flush().await?;
        log.len = log.len.max(offset) + fresh.len() as u64;
        let len = log.len;
        self.store.progress(key, len);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LogKey {
        LogKey {
            run_id: RunId::generate(),
            task_id: TaskId::new("t").unwrap(),
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn resent_bytes_are_skipped_and_followers_see_the_seal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::new(dir.path()));
        let shutdown = CancellationToken::new();
        let (writer, handle) = LogWriter::spawn(Arc::clone(&store), shutdown.clone());
        let key = key();
        store.open_attempt(key.clone());
        let mut follower = store.follow(&key).expect("open attempt is followable");
        let (ack_sender, mut acks) = mpsc::unbounded_channel();
        let attempt_id = AttemptId::generate();
        for (offset, data) in [(0, "hello "), (0, "hello "), (6, "world"), (3, "lo world!")] {
            writer
                .send(LogCommand::Append {
                    key: key.clone(),
                    attempt_id,
                    offset,
                    data: data.as_bytes().to_vec(),
                    ack: ack_sender.clone(),
                })
                .unwrap();
        }
        writer.send(LogCommand::Seal { key: key.clone() }).unwrap();
        let mut offsets = Vec::new();
        for _ in 0..4 {
            let message = acks.recv().await.unwrap().unwrap();
            let Some(controller_message::Message::Ack(ack)) = message.message else {
                panic!("expected ack")
            };
            offsets.push(ack.log_offset);
        }
        assert_eq!(offsets, [6, 6, 11, 12]);
        follower.wait_for(|progress| progress.sealed).await.unwrap();
        assert_eq!(follower.borrow().len, 12);
        assert_eq!(store.read(&key, 0, 100).await.unwrap(), b"hello world!");
        assert_eq!(store.read(&key, 6, 3).await.unwrap(), b"wor");
        assert!(
            store.follow(&key).is_none(),
            "a sealed attempt is no longer open"
        );
        shutdown.cancel();
        handle.await.unwrap();
    }
}
