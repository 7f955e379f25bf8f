//! The log store: each attempt's combined output as immutable segment
//! objects in an object store (the `object_store` crate: a local directory
//! by default; S3, GCS or Azure by configuration), the writer task that
//! turns the chunks workers send into segments, and the cursors that read
//! them back.
//!
//! Object layout, under the configured prefix:
//!
//! ```text
//! <run>/<task>/<attempt>/<offset:020>   bytes [offset, offset + size) of the attempt's log
//! ```
//!
//! Object stores cannot append, so the [`LogWriter`] buffers an attempt's
//! chunks and puts them as one new segment when [`SEGMENT_BYTES`] have
//! gathered, when the oldest buffered byte is [`SEGMENT_LINGER`] old, or when
//! the attempt ends. An attempt's bytes are acknowledged to the worker only
//! after the segment holding them was put (durable before acknowledged: a
//! new leader finds every acknowledged byte), and bytes the store already
//! has are skipped, so a worker may resend from any offset up to what was
//! acknowledged. When the attempt ends ("seal"), its segments are compacted
//! into one object named for offset 0 (which replaces the first segment
//! atomically) and the others are deleted. Readers ([`LogCursor`]) list the
//! segments and range-read them; segments may overlap while a compaction
//! runs, and a segment deleted under a reader is found again by listing
//! anew. Any controller can read, leader or not, since the objects are all
//! there is; followers of a running attempt (`baton logs -f`) watch its
//! length through a `watch` channel that lives on the leader while the
//! attempt is open.
//!
//! Logs are not scheduler state, so they do not go through the store: the
//! scheduler checks that a chunk belongs to a current attempt and hands it
//! to the writer.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_common::ids::{AttemptId, RunId, TaskId};
use baton_common::pb::api::{Ack, ControllerMessage, controller_message};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::scheduler::WorkerSender;

/// A segment is put once this much of an attempt's log is buffered.
pub const SEGMENT_BYTES: usize = 1024 * 1024;

/// Buffered log is put at the latest this long after its first byte came,
/// so slow output reaches followers (and is acknowledged) soon.
pub const SEGMENT_LINGER: Duration = Duration::from_millis(200);

/// After a failed put, how long the writer waits before it tries again
/// (the bytes stay buffered; the worker keeps them too).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// On shutdown, how long buffered logs may take to be put.
const SHUTDOWN_FLUSH_LIMIT: Duration = Duration::from_secs(5);

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

/// Why the log store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("invalid log store url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot create the log directory `{}`: {source}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log store: {0}")]
    Object(#[from] object_store::Error),
}

/// One piece of an attempt's log as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub size: u64,
    location: ObjectPath,
}

impl Segment {
    fn end(&self) -> u64 {
        self.offset + self.size
    }
}

/// Where logs live and who is following them.
pub struct LogStore {
    objects: Arc<dyn ObjectStore>,
    /// Every object lives under this prefix (empty: the store's root).
    prefix: ObjectPath,
    /// Said in logs and errors: the URL or directory.
    location: String,
    /// The directory of a local store, whose emptied run directories are
    /// removed too (object stores have no directories to leave behind).
    local_dir: Option<PathBuf>,
    open: Mutex<HashMap<LogKey, watch::Sender<LogProgress>>>,
}

pub type LogStoreRef = Arc<LogStore>;

impl std::fmt::Debug for LogStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LogStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Logs in `objects` under `prefix`; `location` names them in messages.
    pub fn new(objects: Arc<dyn ObjectStore>, prefix: ObjectPath, location: String) -> Self {
        Self {
            objects,
            prefix,
            location,
            local_dir: None,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Logs in a local directory, created if missing.
    pub fn local(dir: &std::path::Path) -> Result<Self, LogStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| LogStoreError::Directory {
            path: dir.to_path_buf(),
            source,
        })?;
        let objects = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            local_dir: Some(dir.to_path_buf()),
            ..Self::new(
                Arc::new(objects),
                ObjectPath::default(),
                dir.display().to_string(),
            )
        })
    }

    /// Logs at a URL: `file:///path`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` (cloud stores take
    /// their credentials and settings from the environment, as
    /// `object_store`'s `from_env` builders read them), or `memory:///`
    /// (tests). See [`check_url`].
    pub fn open_url(url: &str) -> Result<Self, LogStoreError> {
        let parsed = check_url(url)?;
        let invalid = |reason: String| LogStoreError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let (scheme, path) = object_store::ObjectStoreScheme::parse(&parsed)
            .map_err(|error| invalid(error.to_string()))?;
        let prefix = ObjectPath::parse(path).map_err(|error| invalid(error.to_string()))?;
        let objects: Arc<dyn ObjectStore> = match scheme {
            object_store::ObjectStoreScheme::Local => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| invalid("not an absolute local path".to_string()))?;
                return Self::local(&dir).map(|store| Self {
                    location: url.to_string(),
                    ..store
                });
            }
            object_store::ObjectStoreScheme::Memory => {
                Arc::new(object_store::memory::InMemory::new())
            }
            #[cfg(feature = "s3")]
            object_store::ObjectStoreScheme::AmazonS3 => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()?,
            ),
            #[cfg(feature = "gcs")]
            object_store::ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()?,
            ),
            #[cfg(feature = "azure")]
            object_store::ObjectStoreScheme::MicrosoftAzure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()?,
            ),
            #[allow(unreachable_patterns)] // reachable when a cloud feature is off
            other => {
                return Err(invalid(format!(
                    "{other:?} is not supported by this build (see check_url)"
                )));
            }
        };
        Ok(Self::new(objects, prefix, url.to_string()))
    }

    /// The URL or directory the logs are in.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn child(base: &ObjectPath, part: &str) -> ObjectPath {
        base.clone().join(part)
    }

    fn run_prefix(&self, run_id: &RunId) -> ObjectPath {
        Self::child(&self.prefix, &run_id.to_string())
    }

    fn attempt_prefix(&self, key: &LogKey) -> ObjectPath {
        Self::child(
            &Self::child(&self.run_prefix(&key.run_id), key.task_id.as_str()),
            &key.attempt.to_string(),
        )
    }

    fn segment_path(&self, key: &LogKey, offset: u64) -> ObjectPath {
        Self::child(&self.attempt_prefix(key), &format!("{offset:020}"))
    }

    /// The attempt's segments in offset order (empty when it wrote nothing).
    pub async fn segments(&self, key: &LogKey) -> Result<Vec<Segment>, object_store::Error> {
        let prefix = self.attempt_prefix(key);
        let listed: Vec<_> = self.objects.list(Some(&prefix)).try_collect().await?;
        let mut segments: Vec<Segment> = listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                if name.len() != 20 {
                    return None;
                }
                let offset = name.parse().ok()?;
                Some(Segment {
                    offset,
                    size: meta.size,
                    location: meta.location,
                })
            })
            .collect();
        segments.sort_by_key(|segment| (segment.offset, std::cmp::Reverse(segment.size)));
        Ok(segments)
    }

    /// Bytes of the attempt's log that are stored.
    pub async fn stored_len(&self, key: &LogKey) -> Result<u64, object_store::Error> {
        Ok(contiguous_end(&self.segments(key).await?))
    }

    /// A reader of one attempt's log.
    pub fn cursor(self: &Arc<Self>, key: LogKey) -> LogCursor {
        LogCursor {
            store: Arc::clone(self),
            key,
            segments: Vec::new(),
        }
    }

    /// Reads up to `max` bytes from `offset`, across segments; empty at the
    /// end of the log or when the attempt wrote nothing.
    pub async fn read(
        self: &Arc<Self>,
        key: &LogKey,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, object_store::Error> {
        let mut cursor = self.cursor(key.clone());
        let mut data = Vec::new();
        while data.len() < max {
            let piece = cursor
                .read(offset + data.len() as u64, max - data.len())
                .await?;
            if piece.is_empty() {
                break;
            }
            data.extend_from_slice(&piece);
        }
        Ok(data)
    }

    /// Deletes every log of a run.
    pub async fn remove_run(&self, run_id: &RunId) -> Result<usize, object_store::Error> {
        let prefix = self.run_prefix(run_id);
        let locations = self
            .objects
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let deleted: Vec<ObjectPath> = self
            .objects
            .delete_stream(locations)
            .or_else(|error| async move {
                match error {
                    // Gone meanwhile: what we wanted.
                    object_store::Error::NotFound { .. } => Ok(ObjectPath::default()),
                    other => Err(other),
                }
            })
            .try_collect()
            .await?;
        if let Some(dir) = &self.local_dir {
            match tokio::fs::remove_dir_all(dir.join(run_id.to_string())).await {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    warn!(%run_id, %error, "cannot remove an emptied log directory");
                }
                _ => {}
            }
        }
        Ok(deleted.len())
    }

    /// The runs that have logs, in id (creation) order.
    pub async fn runs_with_logs(&self) -> Result<Vec<RunId>, object_store::Error> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listed = self.objects.list_with_delimiter(prefix).await?;
        let mut runs: Vec<RunId> = listed
            .common_prefixes
            .iter()
            .filter_map(|path| path.filename()?.parse().ok())
            .collect();
        runs.sort();
        Ok(runs)
    }

    async fn put_segment(
        &self,
        key: &LogKey,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), object_store::Error> {
        self.objects
            .put(&self.segment_path(key, offset), PutPayload::from(data))
            .await
            .map(|_| ())
    }

    /// Rewrites an ended attempt's segments as one object (named for offset
    /// 0, replacing the first segment in one put) and deletes the rest.
    /// Returns the log's length. Memory stays bounded: segments are copied
    /// one at a time through a multipart upload.
    pub async fn compact(&self, key: &LogKey) -> Result<u64, object_store::Error> {
        let segments = self.segments(key).await?;
        let len = contiguous_end(&segments);
        if segments.len() <= 1 {
            return Ok(len);
        }
        let target = self.segment_path(key, 0);
        let upload = self.objects.put_multipart(&target).await?;
        let mut writer = WriteMultipart::new(upload);
        let mut position = 0_u64;
        for segment in &segments {
            if segment.end() <= position {
                continue;
            }
            if segment.offset > position {
                break;
            }
            writer.wait_for_capacity(2).await?;
            let bytes = self
                .objects
                .get_range(&segment.location, position - segment.offset..segment.size)
                .await?;
            position += bytes.len() as u64;
            writer.write(&bytes);
        }
        writer.finish().await?;
        for segment in segments.iter().filter(|segment| segment.location != target) {
            match self.objects.delete(&segment.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(len)
    }

    fn open_entries(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<LogKey, watch::Sender<LogProgress>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks an attempt's log as open (the attempt was leased), so followers
    /// wait for its output instead of ending at once. No I/O.
    pub fn open_attempt(&self, key: LogKey) {
        self.open_entries()
            .entry(key)
            .or_insert_with(|| watch::channel(LogProgress::default()).0);
    }

    /// Follows an open attempt's log; `None` when the attempt is not open
    /// (it ended, or never started, or this controller does not lead).
    pub fn follow(&self, key: &LogKey) -> Option<watch::Receiver<LogProgress>> {
        self.open_entries().get(key).map(watch::Sender::subscribe)
    }

    fn progress(&self, key: &LogKey, len: u64) {
        if let Some(sender) = self.open_entries().get(key) {
            sender.send_replace(LogProgress { len, sealed: false });
        }
    }

    /// The attempt ended: followers read to the end and stop.
    fn seal(&self, key: &LogKey, len: Option<u64>) {
        if let Some(sender) = self.open_entries().remove(key) {
            let len = len.unwrap_or_else(|| sender.borrow().len);
            sender.send_replace(LogProgress { len, sealed: true });
        }
    }
}

/// Checks a log store URL without opening it: a URL whose scheme this build
/// supports (`file`, `memory`; `s3`/`s3a`, `gs`, `az`/`abfs`/`abfss`/`azure`
/// with the controller's `s3`, `gcs` and `azure` features).
pub fn check_url(url: &str) -> Result<url::Url, LogStoreError> {
    let invalid = |reason: String| LogStoreError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let parsed = url::Url::parse(url).map_err(|error| invalid(error.to_string()))?;
    let (scheme, _) = object_store::ObjectStoreScheme::parse(&parsed)
        .map_err(|error| invalid(error.to_string()))?;
    let feature = match scheme {
        object_store::ObjectStoreScheme::Local => {
            if parsed.to_file_path().is_err() {
                return Err(invalid(
                    "a file URL needs an absolute path: file:///var/lib/baton/logs".to_string(),
                ));
            }
            None
        }
        object_store::ObjectStoreScheme::Memory => None,
        object_store::ObjectStoreScheme::AmazonS3 => (!cfg!(feature = "s3")).then_some("s3"),
        object_store::ObjectStoreScheme::GoogleCloudStorage => {
            (!cfg!(feature = "gcs")).then_some("gcs")
        }
        object_store::ObjectStoreScheme::MicrosoftAzure => {
            (!cfg!(feature = "azure")).then_some("azure")
        }
        other => {
            return Err(invalid(format!(
                "{other:?} URLs are not supported; use file://, s3://, gs:// or az://"
            )));
        }
    };
    if let Some(feature) = feature {
        return Err(invalid(format!(
            "this controller was built without the `{feature}` feature (cargo build --features baton-controller/{feature})"
        )));
    }
    Ok(parsed)
}

/// Where the log is contiguous from 0 up to.
fn contiguous_end(segments: &[Segment]) -> u64 {
    let mut end = 0;
    for segment in segments {
        if segment.offset > end {
            break;
        }
        end = end.max(segment.end());
    }
    end
}

/// Reads one attempt's log, remembering its segments between reads and
/// listing again only when it reaches past them (or a segment vanished in
/// a compaction).
pub struct LogCursor {
    store: LogStoreRef,
    key: LogKey,
    segments: Vec<Segment>,
}

impl LogCursor {
    /// Up to `max` bytes from `offset`; empty at the end of what is stored.
    pub async fn read(&mut self, offset: u64, max: usize) -> Result<Vec<u8>, object_store::Error> {
        let mut listed = false;
        for _ in 0..3 {
            let found = self
                .segments
                .iter()
                .find(|segment| segment.offset <= offset && offset < segment.end())
                .cloned();
            let Some(segment) = found else {
                if listed {
                    return Ok(Vec::new());
                }
                self.segments = self.store.segments(&self.key).await?;
                listed = true;
                continue;
            };
            let start = offset - segment.offset;
            let end = segment.size.min(start + max as u64);
            match self
                .store
                .objects
                .get_range(&segment.location, start..end)
                .await
            {
                Ok(bytes) => return Ok(bytes.to_vec()),
                Err(object_store::Error::NotFound { .. }) => {
                    // Compacted away meanwhile.
                    self.segments = self.store.segments(&self.key).await?;
                    listed = true;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(Vec::new())
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
    /// The attempt ended: put what is buffered, compact, release followers.
    Seal { key: LogKey },
}

/// An attempt's log while the writer has it.
#[derive(Default)]
struct OpenLog {
    /// Bytes durably stored; `None` until listed (the first chunk after a
    /// restart or failover may resend bytes an earlier leader stored).
    stored: Option<u64>,
    /// Offset of `buffer[0]`.
    buffer_start: u64,
    buffer: Vec<u8>,
    /// When the oldest buffered byte came.
    buffered_since: Option<Instant>,
    /// The worker to acknowledge once buffered bytes are stored.
    waiting: Option<(AttemptId, WorkerSender)>,
    /// A listing, put or compaction of this log is in flight.
    busy: bool,
    retry_at: Option<Instant>,
    seal: bool,
}

impl OpenLog {
    fn next_offset(&self) -> u64 {
        self.buffer_start + self.buffer.len() as u64
    }
}

/// What an I/O job of the writer reports.
enum JobDone {
    Listed {
        key: LogKey,
        stored: Result<u64, object_store::Error>,
    },
    Put {
        key: LogKey,
        offset: u64,
        data: Vec<u8>,
        result: Result<(), object_store::Error>,
    },
    Sealed {
        key: LogKey,
        len: Result<u64, object_store::Error>,
    },
}

/// Turns chunks into segments: one task owns every open log; puts of
/// different attempts run concurrently, those of one attempt one at a time.
pub struct LogWriter {
    store: LogStoreRef,
    logs: HashMap<LogKey, OpenLog>,
    /// Logs that may have work to start.
    dirty: HashSet<LogKey>,
    jobs: JoinSet<JobDone>,
    /// Put whatever is buffered at once (shutting down).
    draining: bool,
}

impl LogWriter {
    pub fn spawn(
        store: LogStoreRef,
        shutdown: CancellationToken,
    ) -> (
        mpsc::UnboundedSender<LogCommand>,
        tokio::task::JoinHandle<()>,
    ) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let writer = LogWriter {
            store,
            logs: HashMap::new(),
            dirty: HashSet::new(),
            jobs: JoinSet::new(),
            draining: false,
        };
        let handle = tokio::spawn(writer.run(receiver, shutdown));
        (sender, handle)
    }

    async fn run(
        mut self,
        mut receiver: mpsc::UnboundedReceiver<LogCommand>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(SEGMENT_LINGER / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => match done {
                    Ok(done) => self.on_job_done(done),
                    Err(error) => warn!(%error, "a log store job failed"),
                },
                command = receiver.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = tick.tick() => self.mark_lingering(),
            }
            self.start_jobs();
        }
        // Take what is already queued, put every buffered byte, bounded.
        while let Ok(command) = receiver.try_recv() {
            self.handle(command);
        }
        self.draining = true;
        self.dirty.extend(self.logs.keys().cloned());
        let deadline = Instant::now() + SHUTDOWN_FLUSH_LIMIT;
        loop {
            self.start_jobs();
            if self.jobs.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, self.jobs.join_next()).await {
                Ok(Some(Ok(done))) => self.on_job_done(done),
                Ok(Some(Err(error))) => warn!(%error, "a log store job failed"),
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        "buffered task logs were not stored in time; workers resend them to the next leader"
                    );
                    self.jobs.shutdown().await;
                    break;
                }
            }
        }
    }

    fn handle(&mut self, command: LogCommand) {
        match command {
            LogCommand::Append {
                key,
                attempt_id,
                offset,
                data,
                ack,
            } => self.append(key, attempt_id, offset, data, ack),
            LogCommand::Seal { key } => match self.logs.get_mut(&key) {
                Some(log) => {
                    log.seal = true;
                    self.dirty.insert(key);
                }
                // Nothing was written through this writer: no I/O.
                None => self.store.seal(&key, None),
            },
        }
    }

    fn append(
        &mut self,
        key: LogKey,
        attempt_id: AttemptId,
        offset: u64,
        data: Vec<u8>,
        ack: WorkerSender,
    ) {
        let log = self.logs.entry(key.clone()).or_default();
        if log.stored.is_none() && log.buffer.is_empty() && !log.busy {
            log.buffer_start = offset;
        }
        let end = offset + data.len() as u64;
        if let Some(stored) = log.stored
            && end <= stored
        {
            // A resend of stored bytes.
            send_ack(&ack, attempt_id, stored);
            return;
        }
        let next = log.next_offset();
        if offset > next {
            // Bytes before `offset` never arrived: keep nothing past the gap
            // and acknowledge nothing new, so the worker resends from what
            // is stored after its next reconnect.
            warn!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, expected = next, offset, "gap in task log; chunk dropped");
            return;
        }
        if end > next {
            log.buffer
                .extend_from_slice(&data[usize::try_from(next - offset).unwrap_or(0)..]);
            log.buffered_since.get_or_insert_with(Instant::now);
        }
        log.waiting = Some((attempt_id, ack));
        self.dirty.insert(key);
    }

    fn mark_lingering(&mut self) {
        let now = Instant::now();
        for (key, log) in &self.logs {
            let lingered = log
                .buffered_since
                .is_some_and(|since| now.duration_since(since) >= SEGMENT_LINGER);
            let retry = log.retry_at.is_some_and(|at| at <= now);
            if lingered || retry {
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Starts the I/O that dirty logs need, one job per log at a time.
    fn start_jobs(&mut self) {
        let now = Instant::now();
        for key in std::mem::take(&mut self.dirty) {
            let Some(log) = self.logs.get_mut(&key) else {
                continue;
            };
            if log.busy || log.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            log.retry_at = None;
            let store = Arc::clone(&self.store);
            let Some(stored) = log.stored else {
                log.busy = true;
                self.jobs.spawn(async move {
                    let stored = store.stored_len(&key).await;
                    JobDone::Listed { key, stored }
                });
                continue;
            };
            let lingered = log
                .buffered_since
                .is_some_and(|since| now.duration_since(since) >= SEGMENT_LINGER);
            if !log.buffer.is_empty()
                && (log.buffer.len() >= SEGMENT_BYTES || lingered || log.seal || self.draining)
            {
                debug_assert_eq!(log.buffer_start, stored);
                let offset = log.buffer_start;
                let data = std::mem::take(&mut log.buffer);
                log.buffer_start += data.len() as u64;
                log.buffered_since = None;
                log.busy = true;
                self.jobs.spawn(async move {
                    let result = store.put_segment(&key, offset, data.clone()).await;
                    JobDone::Put {
                        key,
                        offset,
                        data,
                        result,
                    }
                });
            } else if log.buffer.is_empty() && log.seal && !self.draining {
                log.busy = true;
                self.jobs.spawn(async move {
                    let len = store.compact(&key).await;
                    JobDone::Sealed { key, len }
                });
            }
        }
    }

    fn on_job_done(&mut self, done: JobDone) {
        match done {
            JobDone::Listed { key, stored } => {
                let Some(log) = self.logs.get_mut(&key) else {
                    return;
                };
                log.busy = false;
                match stored {
                    Ok(stored) => {
                        log.stored = Some(stored);
                        let next = log.next_offset();
                        if stored >= next {
                            log.buffer.clear();
                            log.buffered_since = None;
                        } else if stored >= log.buffer_start {
                            log.buffer
                                .drain(..usize::try_from(stored - log.buffer_start).unwrap_or(0));
                        } else {
                            warn!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, stored, received_from = log.buffer_start, "gap in task log; buffered bytes dropped");
                            log.buffer.clear();
                            log.buffered_since = None;
                        }
                        log.buffer_start = stored;
                        if log.buffer.is_empty()
                            && let Some((attempt_id, ack)) = log.waiting.take()
                        {
                            send_ack(&ack, attempt_id, stored);
                        }
                        self.store.progress(&key, stored);
                    }
                    Err(error) => {
                        warn!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, %error, location = %self.store.location(), "cannot list task log segments; retrying");
                        log.retry_at = Some(Instant::now() + RETRY_AFTER);
                    }
                }
                self.dirty.insert(key);
            }
            JobDone::Put {
                key,
                offset,
                mut data,
                result,
            } => {
                let Some(log) = self.logs.get_mut(&key) else {
                    return;
                };
                log.busy = false;
                match result {
                    Ok(()) => {
                        let stored = offset + data.len() as u64;
                        log.stored = Some(stored);
                        self.store.progress(&key, stored);
                        // Everything the waiting worker sent is stored once
                        // nothing is buffered behind it; otherwise the next
                        // put acknowledges it (an ack now keeps its window
                        // moving).
                        if let Some((attempt_id, ack)) = &log.waiting {
                            send_ack(ack, *attempt_id, stored);
                            if log.buffer.is_empty() {
                                log.waiting = None;
                            }
                        }
                    }
                    Err(error) => {
                        warn!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, %error, location = %self.store.location(), "cannot store a task log segment; retrying");
                        // Put the bytes back in front of what came since.
                        data.append(&mut log.buffer);
                        log.buffer = data;
                        log.buffer_start = offset;
                        log.buffered_since.get_or_insert_with(Instant::now);
                        log.retry_at = Some(Instant::now() + RETRY_AFTER);
                    }
                }
                self.dirty.insert(key);
            }
            JobDone::Sealed { key, len } => {
                let Some(log) = self.logs.remove(&key) else {
                    return;
                };
                let len = match len {
                    Ok(len) => len,
                    Err(error) => {
                        // Segments stay as they are; readers handle them.
                        warn!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, %error, "cannot compact a task log");
                        log.stored.unwrap_or_default()
                    }
                };
                debug!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, len, "task log sealed");
                self.store.seal(&key, Some(len));
            }
        }
    }
}

fn send_ack(ack: &WorkerSender, attempt_id: AttemptId, log_offset: u64) {
    let _ = ack.send(Ok(ControllerMessage {
        message: Some(controller_message::Message::Ack(Ack {
            attempt_id: attempt_id.to_string(),
            log_offset,
            ..Ack::default()
        })),
    }));
}

/// Logs that outlive their runs are deleted by the leader: see
/// [`expire_logs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Logs of runs that ended longer ago than this are deleted.
    pub keep: Duration,
    /// How often the leader looks.
    pub interval: Duration,
}

impl Retention {
    /// Looks a tenth of `keep` apart, between a second and an hour.
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
            interval: (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        }
    }
}

/// When a run ended, as the store says: `Some(micros)` for a finished run,
/// `None` while it runs; a run the store does not know has ended at 0.
pub type RunEndLookup<'a> = &'a (
        dyn Fn(RunId) -> futures::future::BoxFuture<'a, Result<Option<i64>, String>> + Send + Sync
    );

/// One pass of retention: deletes the logs of every run that ended before
/// `cutoff_micros` (and of runs the store no longer knows). Returns how
/// many runs' logs were deleted.
pub async fn expire_logs(
    store: &LogStore,
    run_ended_at: RunEndLookup<'_>,
    cutoff_micros: i64,
    cancel: &CancellationToken,
) -> Result<usize, object_store::Error> {
    let mut expired = 0;
    for run_id in store.runs_with_logs().await? {
        if cancel.is_cancelled() {
            break;
        }
        let ended_at = match run_ended_at(run_id).await {
            Ok(ended_at) => ended_at,
            Err(error) => {
                warn!(%run_id, %error, "cannot read the run for log retention; kept");
                continue;
            }
        };
        if ended_at.is_some_and(|ended_at| ended_at < cutoff_micros) {
            let objects = store.remove_run(&run_id).await?;
            info!(%run_id, objects, "task logs past their retention deleted");
            expired += 1;
        }
    }
    Ok(expired)
}

/// The leader's retention loop: every [`Retention::interval`], deletes the
/// logs of runs that ended more than [`Retention::keep`] ago, until
/// `cancel` (the end of the leadership term, or shutdown).
pub async fn run_retention(
    logs: LogStoreRef,
    store: crate::store::StoreRef,
    retention: Retention,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(retention.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let keep = i64::try_from(retention.keep.as_micros()).unwrap_or(i64::MAX);
        let cutoff = baton_common::time::now_micros().saturating_sub(keep);
        let lookup =
            |run_id: RunId| -> futures::future::BoxFuture<'_, Result<Option<i64>, String>> {
                let store = Arc::clone(&store);
                Box::pin(async move { run_ended_at(store.as_ref(), run_id).await })
            };
        let pass = expire_logs(&logs, &lookup, cutoff, &cancel);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            result = pass => match result {
                Ok(0) => {}
                Ok(runs) => info!(runs, "log retention pass done"),
                Err(error) => warn!(%error, location = %logs.location(), "log retention pass failed; trying again later"),
            },
        }
    }
}

/// When a run ended per the store: `None` while it is not finished; a run
/// the store does not know (its DAG was deleted) counts as ended long ago.
async fn run_ended_at(
    store: &dyn crate::store::Store,
    run_id: RunId,
) -> Result<Option<i64>, String> {
    let record: Option<baton_common::pb::records::RunRecord> =
        crate::store::get_record(store, &crate::store::keys::run(&run_id))
            .await
            .map_err(|error| error.to_string())?;
    let Some(record) = record else {
        return Ok(Some(0));
    };
    let state = baton_common::pb::api::RunState::try_from(record.state)
        .unwrap_or(baton_common::pb::api::RunState::Unspecified);
    if !baton_common::states::run_state_is_final(state) {
        return Ok(None);
    }
    Ok(Some(
        record
            .ended_at
            .as_ref()
            .map_or(0, baton_common::time::timestamp_to_micros),
    ))
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

    fn stores() -> Vec<(LogStoreRef, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LogStore::local(dir.path()).unwrap());
        let memory = Arc::new(LogStore::open_url("memory:///logs").unwrap());
        vec![(local, Some(dir)), (memory, None)]
    }

    async fn next_ack(
        acks: &mut mpsc::UnboundedReceiver<Result<ControllerMessage, tonic::Status>>,
    ) -> u64 {
        let message = tokio::time::timeout(Duration::from_secs(10), acks.recv())
            .await
            .expect("an ack in time")
            .unwrap()
            .unwrap();
        let Some(controller_message::Message::Ack(ack)) = message.message else {
            panic!("expected ack")
        };
        ack.log_offset
    }

    #[tokio::test]
    async fn resent_and_overlapping_bytes_are_skipped_and_followers_see_the_seal() {
        for (store, _dir) in stores() {
            let shutdown = CancellationToken::new();
            let (writer, handle) = LogWriter::spawn(Arc::clone(&store), shutdown.clone());
            let key = key();
            store.open_attempt(key.clone());
            let mut follower = store.follow(&key).expect("open attempt is followable");
            let (ack_sender, mut acks) = mpsc::unbounded_channel();
            let attempt_id = AttemptId::generate();
            let append = |offset: u64, data: &str| LogCommand::Append {
                key: key.clone(),
                attempt_id,
                offset,
                data: data.as_bytes().to_vec(),
                ack: ack_sender.clone(),
            };
            writer.send(append(0, "hello ")).unwrap();
            assert_eq!(next_ack(&mut acks).await, 6, "acknowledged once stored");
            writer.send(append(0, "hello ")).unwrap();
            assert_eq!(next_ack(&mut acks).await, 6, "a resend changes nothing");
            writer.send(append(6, "world")).unwrap();
            writer.send(append(3, "lo world!")).unwrap();
            writer.send(append(20, "gap")).unwrap();
            assert_eq!(next_ack(&mut acks).await, 12);
            assert_eq!(store.read(&key, 0, 100).await.unwrap(), b"hello world!");
            assert_eq!(store.read(&key, 6, 3).await.unwrap(), b"wor");
            assert_eq!(store.read(&key, 12, 3).await.unwrap(), b"");
            writer.send(append(12, " bye")).unwrap();
            assert_eq!(next_ack(&mut acks).await, 16);
            assert!(store.segments(&key).await.unwrap().len() >= 2);
            writer.send(LogCommand::Seal { key: key.clone() }).unwrap();
            tokio::time::timeout(Duration::from_secs(10), follower.wait_for(|p| p.sealed))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(follower.borrow().len, 16);
            let segments = store.segments(&key).await.unwrap();
            assert_eq!(segments.len(), 1, "sealed logs are compacted: {segments:?}");
            assert_eq!(store.read(&key, 0, 100).await.unwrap(), b"hello world! bye");
            assert!(
                store.follow(&key).is_none(),
                "a sealed attempt is no longer open"
            );
            shutdown.cancel();
            handle.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_new_writer_finds_what_an_earlier_one_stored() {
        for (store, _dir) in stores() {
            let key = key();
            let attempt_id = AttemptId::generate();
            let (ack_sender, mut acks) = mpsc::unbounded_channel();
            let shutdown = CancellationToken::new();
            let (writer, handle) = LogWriter::spawn(Arc::clone(&store), shutdown.clone());
            writer
                .send(LogCommand::Append {
                    key: key.clone(),
                    attempt_id,
                    offset: 0,
                    data: b"0123456789".to_vec(),
                    ack: ack_sender.clone(),
                })
                .unwrap();
            assert_eq!(next_ack(&mut acks).await, 10);
            shutdown.cancel();
            handle.await.unwrap();

            // A new leader: the worker resends from an older offset.
            let shutdown = CancellationToken::new();
            let (writer, handle) = LogWriter::spawn(Arc::clone(&store), shutdown.clone());
            writer
                .send(LogCommand::Append {
                    key: key.clone(),
                    attempt_id,
                    offset: 4,
                    data: b"456789abc".to_vec(),
                    ack: ack_sender.clone(),
                })
                .unwrap();
            assert_eq!(next_ack(&mut acks).await, 13);
            assert_eq!(store.read(&key, 0, 100).await.unwrap(), b"0123456789abc");
            assert_eq!(store.stored_len(&key).await.unwrap(), 13);
            shutdown.cancel();
            handle.await.unwrap();
        }
    }

    #[tokio::test]
    async fn large_logs_are_segmented_read_in_ranges_and_compacted() {
        for (store, _dir) in stores() {
            let key = key();
            let attempt_id = AttemptId::generate();
            let (ack_sender, mut acks) = mpsc::unbounded_channel();
            let shutdown = CancellationToken::new();
            let (writer, handle) = LogWriter::spawn(Arc::clone(&store), shutdown.clone());
            let expected: Vec<u8> = (0..3 * SEGMENT_BYTES + 1234)
                .map(|index| (index % 251) as u8)
                .collect();
            // A segment-sized piece at a time, each acknowledged before the
            // next is sent, as a worker with a small window would.
            for (index, piece) in expected.chunks(SEGMENT_BYTES).enumerate() {
                let start = index * SEGMENT_BYTES;
                for (chunk_index, chunk) in piece.chunks(64 * 1024).enumerate() {
                    writer
                        .send(LogCommand::Append {
                            key: key.clone(),
                            attempt_id,
                            offset: (start + chunk_index * 64 * 1024) as u64,
                            data: chunk.to_vec(),
                            ack: ack_sender.clone(),
                        })
                        .unwrap();
                }
                let end = (start + piece.len()) as u64;
                let mut acked = 0;
                for _ in 0..100 {
                    acked = next_ack(&mut acks).await;
                    if acked == end {
                        break;
                    }
                }
                assert_eq!(acked, end);
            }
            let segments = store.segments(&key).await.unwrap();
            assert!(segments.len() >= 3, "{} segments", segments.len());
            let mut cursor = store.cursor(key.clone());
            let mut read = Vec::new();
            for _ in 0..1000 {
                let data = cursor.read(read.len() as u64, 100_000).await.unwrap();
                if data.is_empty() {
                    break;
                }
                read.extend_from_slice(&data);
            }
            assert!(read == expected, "read back what was written");
            assert_eq!(store.compact(&key).await.unwrap(), expected.len() as u64);
            assert_eq!(store.segments(&key).await.unwrap().len(), 1);
            // The cursor's segments were compacted away under it.
            let tail = cursor.read(2 * SEGMENT_BYTES as u64 + 5, 10).await.unwrap();
            assert_eq!(
                tail,
                expected[2 * SEGMENT_BYTES + 5..2 * SEGMENT_BYTES + 15]
            );
            shutdown.cancel();
            handle.await.unwrap();
        }
    }

    #[tokio::test]
    async fn retention_deletes_the_logs_of_runs_that_ended_before_the_cutoff() {
        for (store, _dir) in stores() {
            let old = key();
            let recent = key();
            let running = key();
            let unknown = key();
            for key in [&old, &recent, &running, &unknown] {
                store.put_segment(key, 0, b"x".to_vec()).await.unwrap();
            }
            let ended: HashMap<RunId, Option<i64>> = [
                (old.run_id, Some(1_000)),
                (recent.run_id, Some(5_000)),
                (running.run_id, None),
            ]
            .into_iter()
            .collect();
            let lookup =
                |run_id: RunId| -> futures::future::BoxFuture<'_, Result<Option<i64>, String>> {
                    let value = ended.get(&run_id).copied().unwrap_or(Some(0));
                    Box::pin(async move { Ok(value) })
                };
            let expired = expire_logs(&store, &lookup, 2_000, &CancellationToken::new())
                .await
                .unwrap();
            assert_eq!(expired, 2);
            assert_eq!(store.stored_len(&old).await.unwrap(), 0);
            assert_eq!(store.stored_len(&unknown).await.unwrap(), 0);
            assert_eq!(store.stored_len(&recent).await.unwrap(), 1);
            assert_eq!(store.stored_len(&running).await.unwrap(), 1);
            let mut left = store.runs_with_logs().await.unwrap();
            left.sort();
            let mut expected = vec![recent.run_id, running.run_id];
            expected.sort();
            assert_eq!(left, expected);
            store.remove_run(&recent.run_id).await.unwrap();
            assert_eq!(store.stored_len(&recent).await.unwrap(), 0);
        }
    }

    /// The log store on S3, as served by moto (`python3 -m moto.server`,
    /// PyPI `moto[server]`) on a free loopback port. Without moto the test
    /// is skipped, except under `CI=true`, where it fails.
    #[cfg(feature = "s3")]
    #[tokio::test]
    async fn s3_segments_acknowledgements_compaction_and_removal() {
        use std::io::{Read, Write};

        struct Moto(std::process::Child);
        impl Drop for Moto {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // deploy/test.sh installs moto in a virtualenv and names its python.
        let python = std::env::var("BATON_MOTO_PYTHON").unwrap_or_else(|_| "python3".into());
        let spawned = std::process::Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut moto = match spawned {
            Ok(child) => Moto(child),
            Err(error) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "{python} -m moto.server cannot start under CI=true (deploy/test.sh installs it): {error}"
                );
                eprintln!("skipped: cannot start moto ({error})");
                return;
            }
        };
        // Ready when it answers; a missing module makes python exit.
        let mut ready = false;
        for _ in 0..150 {
            if let Ok(Some(status)) = moto.0.try_wait() {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "moto.server exited ({status}) under CI=true: pip install 'moto[server]'"
                );
                eprintln!("skipped: moto is not installed");
                return;
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                // Create the bucket (moto does not check signatures).
                let request = format!(
                    "PUT /baton HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).unwrap();
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "moto did not answer on port {port}");

        let objects = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("baton")
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .build()
            .unwrap();
        let store = Arc::new(LogStore::new(
            Arc::new(objects),
            ObjectPath::from("prod/logs"),
            "s3://baton/prod/logs".to_string(),
        ));
        let key = key();
        let attempt_id = AttemptId::generate();
        let (ack_sender, mut acks) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let (writer, handle) = LogWriter::spawn(Arc::clone(&store), shutdown.clone());
        store.open_attempt(key.clone());
        let mut follower = store.follow(&key).unwrap();
        let expected: Vec<u8> = (0..SEGMENT_BYTES + 70_000)
            .map(|index| (index % 253) as u8)
            .collect();
        let mut sent = 0;
        for chunk in expected.chunks(64 * 1024) {
            writer
                .send(LogCommand::Append {
                    key: key.clone(),
                    attempt_id,
                    offset: sent as u64,
                    data: chunk.to_vec(),
                    ack: ack_sender.clone(),
                })
                .unwrap();
            sent += chunk.len();
            // Resent bytes are skipped.
            writer
                .send(LogCommand::Append {
                    key: key.clone(),
                    attempt_id,
                    offset: 0,
                    data: expected[..10].to_vec(),
                    ack: ack_sender.clone(),
                })
                .unwrap();
        }
        let mut acked = 0;
        for _ in 0..200 {
            acked = next_ack(&mut acks).await;
            if acked == expected.len() as u64 {
                break;
            }
        }
        assert_eq!(acked, expected.len() as u64);
        assert_eq!(
            store.read(&key, 0, expected.len() + 10).await.unwrap(),
            expected
        );
        writer.send(LogCommand::Seal { key: key.clone() }).unwrap();
        tokio::time::timeout(Duration::from_secs(30), follower.wait_for(|p| p.sealed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.segments(&key).await.unwrap().len(), 1, "compacted");
        assert_eq!(store.read(&key, 5, 7).await.unwrap(), expected[5..12]);
        assert_eq!(store.runs_with_logs().await.unwrap(), [key.run_id]);
        store.remove_run(&key.run_id).await.unwrap();
        assert!(store.runs_with_logs().await.unwrap().is_empty());
        shutdown.cancel();
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn runs_end_as_the_store_says() {
        use baton_common::pb::api::RunState;
        use baton_common::pb::records::RunRecord;
        use prost::Message;

        use crate::store::{Batch, Op, Store, keys};

        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::embedded::EmbeddedStore::open(&dir.path().join("s.redb"), 1 << 20)
                .unwrap();
        let finished = RunId::generate();
        let running = RunId::generate();
        let record = |state: RunState, ended_at: i64| RunRecord {
            state: state as i32,
            ended_at: baton_common::time::micros_to_timestamp_opt(ended_at),
            ..RunRecord::default()
        };
        store
            .commit(Batch {
                ops: vec![
                    Op::put(
                        keys::run(&finished),
                        record(RunState::Failed, 7_000_000).encode_to_vec(),
                    ),
                    Op::put(
                        keys::run(&running),
                        record(RunState::Running, 0).encode_to_vec(),
                    ),
                ],
                conditionals: Vec::new(),
            })
            .await
            .unwrap();
        assert_eq!(run_ended_at(&store, finished).await, Ok(Some(7_000_000)));
        assert_eq!(run_ended_at(&store, running).await, Ok(None));
        assert_eq!(
            run_ended_at(&store, RunId::generate()).await,
            Ok(Some(0)),
            "a run the store forgot has ended"
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("file:///var/lib/baton/logs").is_ok());
        assert!(check_url("memory:///").is_ok());
        let error = check_url("not a url").unwrap_err().to_string();
        assert!(
            error.contains("invalid log store url `not a url`"),
            "{error}"
        );
        let error = check_url("ftp://host/logs").unwrap_err().to_string();
        assert!(error.contains("ftp://host/logs"), "{error}");
        if !cfg!(feature = "s3") {
            let error = check_url("s3://bucket/logs").unwrap_err().to_string();
            assert!(error.contains("`s3` feature"), "{error}");
        }
    }
}
