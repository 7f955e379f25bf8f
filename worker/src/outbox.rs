//! [`Outbox`]: every attempt the worker knows and what of it the controller
//! has not yet acknowledged — its log bytes past the acknowledged offset
//! (kept in the attempt's spool file, not in memory), its start, its result.
//!
//! The outbox is what makes the worker safe to disconnect, and, with the
//! spool, to restart: on every new stream ([`Outbox::stream_opened`]) it
//! starts over from the acknowledged offset of each attempt. Log bytes are
//! read back from the spool in pieces ([`Outbox::next_reads`], the reads run
//! off the worker's loop), at most [`Outbox::window`] bytes past the
//! acknowledged offset, so the memory an attempt takes is bounded whatever
//! it prints. Per attempt, on every stream, the order is the one the
//! protocol requires: `TaskStarted` for a running attempt, log chunks in
//! offset order, then `TaskResult` only once every log byte was sent
//! ([`Outbox::ready_results`]). An attempt is forgotten once its result and
//! all its log bytes are acknowledged, or once the controller calls it stale;
//! the caller then removes its spool.
//!
//! Nothing here scans every attempt per event: each event notes the
//! attempt it may have made readable or reportable, and
//! [`Outbox::next_reads`] and [`Outbox::ready_results`] look at those
//! only. A fan-out holds thousands of finished attempts awaiting their
//! acknowledgement, and every acknowledgement pumps the outbox.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use baton_common::ids::AttemptId;
use baton_common::pb::api::{self, worker_message::Message};
use baton_common::time;
use tracing::{debug, warn};

use crate::executor::{AttemptResult, MAX_CHUNK_BYTES, StopSignal};
use crate::spool::Recovered;

/// Largest piece of log read from a spool at once (a few chunks).
const READ_BYTES: u64 = 4 * MAX_CHUNK_BYTES as u64;

/// How far the acknowledged offset moves before it is noted in the spool
/// (a restarted worker resends from the last note).
const ACK_NOTE_BYTES: u64 = 1024 * 1024;

/// What the worker keeps about one attempt.
#[derive(Debug)]
struct AttemptEntry {
    /// When and as which process the attempt started, once it has.
    started: Option<(SystemTime, u32)>,
    /// The spooled log; `None` for an attempt that has no spool (refused
    /// before it ran), whose log is empty.
    log_path: Option<PathBuf>,
    /// The spooled log opened for reading, once something was read.
    reader: Option<Arc<File>>,
    /// Bytes of log spooled so far.
    log_end: u64,
    /// Next offset to send on the current stream.
    sent: u64,
    acked_log_offset: u64,
    /// The acknowledged offset last noted in the spool.
    noted_ack: u64,
    /// A read of the spool is in flight.
    reading: bool,
    /// Reading the spool failed; retried on the next stream.
    read_failed: bool,
    stop: StopSignal,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    Running,
    /// Finished; the result stays until the controller acknowledges it.
    Finished {
        result: Option<AttemptResult>,
        /// The result went out on the current stream.
        result_sent: bool,
    },
}

/// Every attempt the worker knows, by id (attempt ids are UUIDv7, so this
/// is also the order the controller created them in).
#[derive(Debug)]
pub(crate) struct Outbox {
    attempts: BTreeMap<AttemptId, AttemptEntry>,
    /// Log bytes of one attempt sent and not yet acknowledged, at most.
    window: u64,
    /// Counts streams, so reads started for a previous one are discarded.
    stream: u64,
    /// Attempts in [`Phase::Running`].
    running: usize,
    /// Attempts an event since the last [`Self::next_reads`] may have
    /// left with log to read (duplicates are harmless: a read in flight
    /// makes the second look skip it). Only kept while streaming: a new
    /// stream looks at every attempt.
    may_read: Vec<AttemptId>,
    /// The same for results to send, drained by [`Self::ready_results`].
    may_report: Vec<AttemptId>,
    /// A stream is open: messages sent now reach the controller (or are
    /// lost with the stream, and resent on the next).
    streaming: bool,
}

/// What an `Ack` changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckEffect {
    /// The attempt is not known (already forgotten, or never ours).
    Unknown,
    /// Acknowledgement recorded; the attempt is still kept. `note_acked`:
    /// the acknowledged offset to note in the spool.
    Kept { note_acked: Option<u64> },
    /// Everything is acknowledged; the attempt is forgotten.
    Forgotten,
    /// The controller called the attempt stale: it was stopped (if it still
    /// ran) and forgotten.
    Stale,
}

/// A piece of spooled log to read, off the worker's loop.
#[derive(Debug)]
pub(crate) struct ReadRequest {
    pub attempt_id: AttemptId,
    pub stream: u64,
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
}

impl ReadRequest {
    /// Reads the piece (blocking: run it on a blocking thread).
    pub(crate) fn read(&self) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let len = usize::try_from(self.len).unwrap_or(usize::MAX);
        let mut buffer = vec![0_u8; len];
        self.file.read_exact_at(&mut buffer, self.offset)?;
        Ok(buffer)
    }
}

impl Outbox {
    pub(crate) fn new(window: usize) -> Self {
        Self {
            attempts: BTreeMap::new(),
            window: u64::try_from(window).unwrap_or(u64::MAX).max(1),
            stream: 0,
            running: 0,
            may_read: Vec::new(),
            may_report: Vec::new(),
            streaming: false,
        }
    }

    /// Notes that an event may have given the attempt log to read or a
    /// result to send on the current stream.
    fn touch(&mut self, attempt_id: AttemptId) {
        if self.streaming {
            self.may_read.push(attempt_id);
            self.may_report.push(attempt_id);
        }
    }

    /// Starts tracking a new attempt whose log is spooled at `log_path`;
    /// false if the id is already known.
    pub(crate) fn insert(
        &mut self,
        attempt_id: AttemptId,
        stop: StopSignal,
        log_path: Option<PathBuf>,
    ) -> bool {
        if self.attempts.contains_key(&attempt_id) {
            return false;
        }
        let entry = AttemptEntry {
            started: None,
            log_path,
            reader: None,
            log_end: 0,
            sent: 0,
            acked_log_offset: 0,
            noted_ack: 0,
            reading: false,
            read_failed: false,
            stop,
            phase: Phase::Running,
        };
        self.attempts.insert(attempt_id, entry);
        self.running += 1;
        true
    }

    /// Takes back a finished attempt found in the spool after a restart.
    pub(crate) fn restore(&mut self, recovered: Recovered, log_path: PathBuf) {
        let Recovered {
            meta,
            mut result,
            log_len,
            acked,
        } = recovered;
        if result.log_bytes != log_len {
            warn!(attempt_id = %meta.attempt_id, reported = result.log_bytes, spooled = log_len, "spooled result and log disagree on the log size");
            result.log_bytes = log_len;
        }
        let entry = AttemptEntry {
            started: None,
            log_path: Some(log_path),
            reader: None,
            log_end: log_len,
            sent: acked,
            acked_log_offset: acked,
            noted_ack: acked,
            reading: false,
            read_failed: false,
            stop: StopSignal::default(),
            phase: Phase::Finished {
                result: Some(result),
                result_sent: false,
            },
        };
        if let Some(replaced) = self.attempts.insert(meta.attempt_id, entry)
            && matches!(replaced.phase, Phase::Running)
        {
            self.running -= 1;
        }
        self.touch(meta.attempt_id);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.attempts.is_empty()
    }

    /// Attempts known: running, or with something not yet acknowledged.
    pub(crate) fn len(&self) -> usize {
        self.attempts.len()
    }

    pub(crate) fn running_ids(&self) -> Vec<AttemptId> {
        self.attempts
            .iter()
            .filter(|(_, entry)| matches!(entry.phase, Phase::Running))
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) fn running_count(&self) -> usize {
        self.running
    }

    /// Attempts announced in `Register`: running, or finished with a result
    /// the controller has not acknowledged.
    pub(crate) fn announced_ids(&self) -> Vec<AttemptId> {
        self.attempts
            .iter()
            .filter(|(_, entry)| {
                matches!(
                    entry.phase,
                    Phase::Running
                        | Phase::Finished {
                            result: Some(_),
                            ..
                        }
                )
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Stops every running attempt because the worker drains: they report
    /// WORKER_DRAINED.
    pub(crate) fn stop_running(&self, reason: &str) {
        for entry in self.attempts.values() {
            if matches!(entry.phase, Phase::Running) {
                entry.stop.drain(reason);
            }
        }
    }

    /// Asks one running attempt to stop; false if it is not running here.
    pub(crate) fn stop(&self, attempt_id: AttemptId, reason: &str) -> bool {
        match self.attempts.get(&attempt_id) {
            Some(entry) if matches!(entry.phase, Phase::Running) => {
                entry.stop.stop(reason);
                true
            }
            _ => false,
        }
    }

    /// A new stream is open (its `Register` is queued): everything not
    /// acknowledged goes out again, from the acknowledged offsets. Returns
    /// the `TaskStarted` of running attempts; log chunks and results follow
    /// through [`Self::next_reads`] and [`Self::ready_results`].
    pub(crate) fn stream_opened(&mut self) -> Vec<api::WorkerMessage> {
        self.stream += 1;
        self.streaming = true;
        self.may_read.clear();
        self.may_read.extend(self.attempts.keys().copied());
        self.may_report.clone_from(&self.may_read);
        let mut messages = Vec::new();
        for (attempt_id, entry) in &mut self.attempts {
            entry.sent = entry.acked_log_offset;
            entry.reading = false;
            entry.read_failed = false;
            match &mut entry.phase {
                Phase::Running => {
                    if let Some((started_at, pid)) = entry.started {
                        messages.push(task_started_message(*attempt_id, started_at, pid));
                    }
                }
                Phase::Finished { result_sent, .. } => *result_sent = false,
            }
        }
        messages
    }

    /// The stream is gone: nothing is sent until the next one opens.
    pub(crate) fn stream_closed(&mut self) {
        self.streaming = false;
        self.may_read.clear();
        self.may_report.clear();
    }

    /// Records the start; returns the message to send.
    pub(crate) fn on_started(
        &mut self,
        attempt_id: AttemptId,
        started_at: SystemTime,
        pid: u32,
    ) -> Option<api::WorkerMessage> {
        let entry = self.attempts.get_mut(&attempt_id)?;
        entry.started = Some((started_at, pid));
        self.streaming
            .then(|| task_started_message(attempt_id, started_at, pid))
    }

    /// The spooled log of the attempt reaches `end`.
    pub(crate) fn on_log(&mut self, attempt_id: AttemptId, end: u64) {
        if let Some(entry) = self.attempts.get_mut(&attempt_id) {
            if end < entry.log_end {
                warn!(%attempt_id, end, known = entry.log_end, "spooled log shrank; ignored");
                return;
            }
            entry.log_end = end;
            self.touch(attempt_id);
        }
    }

    /// Keeps the result until it is acknowledged; it is sent once every
    /// log byte is ([`Self::ready_results`]).
    pub(crate) fn on_finished(&mut self, attempt_id: AttemptId, mut result: AttemptResult) {
        let Some(entry) = self.attempts.get_mut(&attempt_id) else {
            return;
        };
        if result.log_bytes != entry.log_end {
            warn!(%attempt_id, reported = result.log_bytes, kept = entry.log_end, "result and log disagree on the log size");
            result.log_bytes = entry.log_end;
        }
        if matches!(entry.phase, Phase::Running) {
            self.running -= 1;
        }
        entry.phase = Phase::Finished {
            result: Some(result),
            result_sent: false,
        };
        self.touch(attempt_id);
    }

    /// Reads of spooled log to start now: one per attempt at a time, within
    /// the window, only while a stream is open.
    pub(crate) fn next_reads(&mut self) -> Vec<ReadRequest> {
        if !self.streaming {
            return Vec::new();
        }
        let mut reads = Vec::new();
        let mut candidates = std::mem::take(&mut self.may_read);
        for attempt_id in &candidates {
            let Some(entry) = self.attempts.get_mut(attempt_id) else {
                continue;
            };
            if entry.reading || entry.read_failed || entry.sent >= entry.log_end {
                continue;
            }
            let in_flight = entry.sent.saturating_sub(entry.acked_log_offset);
            let room = self.window.saturating_sub(in_flight);
            if room == 0 {
                continue;
            }
            let file = match (&entry.reader, &entry.log_path) {
                (Some(file), _) => Arc::clone(file),
                (None, Some(path)) => match File::open(path) {
                    Ok(file) => {
                        let file = Arc::new(file);
                        entry.reader = Some(Arc::clone(&file));
                        file
                    }
                    Err(error) => {
                        warn!(%attempt_id, path = %path.display(), %error, "cannot open the spooled log");
                        entry.read_failed = true;
                        continue;
                    }
                },
                (None, None) => {
                    warn!(%attempt_id, "log bytes without a spool; ignored");
                    entry.read_failed = true;
                    continue;
                }
            };
            let len = (entry.log_end - entry.sent).min(room).min(READ_BYTES);
            entry.reading = true;
            reads.push(ReadRequest {
                attempt_id: *attempt_id,
                stream: self.stream,
                file,
                offset: entry.sent,
                len,
            });
        }
        // Keeps the allocation; nothing was noted meanwhile.
        candidates.clear();
        self.may_read = candidates;
        reads
    }

    /// A read finished: the log chunks to send (none when the read belongs
    /// to a stream that is gone, or failed).
    pub(crate) fn on_read(
        &mut self,
        attempt_id: AttemptId,
        stream: u64,
        offset: u64,
        read: std::io::Result<Vec<u8>>,
    ) -> Vec<api::WorkerMessage> {
        if stream != self.stream {
            return Vec::new();
        }
        let Some(entry) = self.attempts.get_mut(&attempt_id) else {
            return Vec::new();
        };
        entry.reading = false;
        // A failed read is not noted: it waits for the next stream, which
        // looks at every attempt.
        let data = match read {
            Ok(data) => data,
            Err(error) => {
                warn!(%attempt_id, offset, %error, "cannot read the spooled log; retrying on the next stream");
                entry.read_failed = true;
                return Vec::new();
            }
        };
        if offset != entry.sent || !self.streaming {
            // An acknowledgement moved `sent` meanwhile; read again.
            self.touch(attempt_id);
            return Vec::new();
        }
        entry.sent += data.len() as u64;
        // More log, or the result, may follow.
        self.touch(attempt_id);
        data.chunks(MAX_CHUNK_BYTES)
            .scan(offset, |next, piece| {
                let chunk_offset = *next;
                *next += piece.len() as u64;
                Some(log_chunk_message(attempt_id, chunk_offset, piece.to_vec()))
            })
            .collect()
    }

    /// Results whose log was all sent on the current stream and that were
    /// not sent on it yet.
    pub(crate) fn ready_results(&mut self) -> Vec<api::WorkerMessage> {
        if !self.streaming {
            return Vec::new();
        }
        let mut messages = Vec::new();
        let mut candidates = std::mem::take(&mut self.may_report);
        for attempt_id in &candidates {
            let Some(entry) = self.attempts.get_mut(attempt_id) else {
                continue;
            };
            if let Phase::Finished {
                result: Some(result),
                result_sent,
            } = &mut entry.phase
                && !*result_sent
                && entry.sent >= entry.log_end
            {
                *result_sent = true;
                messages.push(task_result_message(*attempt_id, result));
            }
        }
        candidates.clear();
        self.may_report = candidates;
        messages
    }

    /// Applies an acknowledgement from the controller.
    pub(crate) fn on_ack(&mut self, ack: &api::Ack, attempt_id: AttemptId) -> AckEffect {
        let Some(entry) = self.attempts.get_mut(&attempt_id) else {
            return AckEffect::Unknown;
        };
        if ack.stale {
            let reason = if ack.reason.is_empty() {
                "the controller no longer considers the attempt current".to_string()
            } else {
                format!("the attempt is stale: {}", ack.reason)
            };
            entry.stop.stop(reason);
            if matches!(entry.phase, Phase::Running) {
                self.running -= 1;
            }
            self.attempts.remove(&attempt_id);
            return AckEffect::Stale;
        }
        let mut note_acked = None;
        if ack.log_offset > entry.acked_log_offset {
            if ack.log_offset > entry.log_end {
                warn!(%attempt_id, acked = ack.log_offset, produced = entry.log_end, "log acknowledged past its end");
            }
            entry.acked_log_offset = ack.log_offset.min(entry.log_end);
            // The controller may have more than this stream sent (a
            // previous stream's bytes): carry on from there.
            entry.sent = entry.sent.max(entry.acked_log_offset);
            if entry.acked_log_offset >= entry.noted_ack + ACK_NOTE_BYTES {
                entry.noted_ack = entry.acked_log_offset;
                note_acked = Some(entry.acked_log_offset);
            }
        }
        if ack.result_recorded {
            match &mut entry.phase {
                Phase::Finished { result, .. } => *result = None,
                Phase::Running => {
                    debug!(%attempt_id, "result acknowledged before it was sent; ignored")
                }
            }
        }
        let done = matches!(entry.phase, Phase::Finished { result: None, .. })
            && entry.acked_log_offset >= entry.log_end;
        if done {
            self.attempts.remove(&attempt_id);
            AckEffect::Forgotten
        } else {
            // The window may have room again, or `sent` moved.
            self.touch(attempt_id);
            AckEffect::Kept { note_acked }
        }
    }
}

fn wrap(message: Message) -> api::WorkerMessage {
    api::WorkerMessage {
        message: Some(message),
    }
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    time::micros_to_timestamp(time::system_time_to_micros(time))
}

fn task_started_message(
    attempt_id: AttemptId,
    started_at: SystemTime,
    pid: u32,
) -> api::WorkerMessage {
    wrap(Message::TaskStarted(api::TaskStarted {
        attempt_id: attempt_id.to_string(),
        started_at: Some(timestamp(started_at)),
        pid,
    }))
}

fn log_chunk_message(attempt_id: AttemptId, offset: u64, data: Vec<u8>) -> api::WorkerMessage {
    wrap(Message::LogChunk(api::LogChunk {
        attempt_id: attempt_id.to_string(),
        offset,
        data,
    }))
}

fn task_result_message(attempt_id: AttemptId, result: &AttemptResult) -> api::WorkerMessage {
    wrap(Message::TaskResult(api::TaskResult {
        attempt_id: attempt_id.to_string(),
        outcome: result.outcome as i32,
        exit_code: result.exit_code,
        error: result.error.clone(),
        output_json: result.output_json.clone(),
        started_at: Some(timestamp(result.started_at)),
        ended_at: Some(timestamp(result.ended_at)),
        log_bytes: result.log_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use baton_common::pb::api::AttemptOutcome;

    use super::*;

    fn result(log_bytes: u64) -> AttemptResult {
        AttemptResult {
            log_bytes,
            ..AttemptResult::error_now(String::new(), log_bytes)
        }
    }

    fn ack(attempt_id: AttemptId, log_offset: u64, result_recorded: bool) -> api::Ack {
        api::Ack {
            attempt_id: attempt_id.to_string(),
            log_offset,
            result_recorded,
            stale: false,
            reason: String::new(),
        }
    }

    fn describe(messages: &[api::WorkerMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|message| match &message.message {
                Some(Message::LogChunk(chunk)) => {
                    format!("log {}+{}", chunk.offset, chunk.data.len())
                }
                Some(Message::TaskStarted(started)) => format!("started {}", started.pid),
                Some(Message::TaskResult(result)) => format!("result {}", result.log_bytes),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// Runs every read the outbox asks for, as the agent does, and returns
    /// what goes out, results last.
    fn pump(outbox: &mut Outbox) -> Vec<api::WorkerMessage> {
        let mut messages = Vec::new();
        for _ in 0..1000 {
            let reads = outbox.next_reads();
            if reads.is_empty() {
                break;
            }
            for read in reads {
                let data = read.read();
                messages.extend(outbox.on_read(read.attempt_id, read.stream, read.offset, data));
            }
        }
        messages.extend(outbox.ready_results());
        messages
    }

    fn spooled(dir: &tempfile::TempDir, bytes: usize) -> PathBuf {
        let path = dir.path().join(format!("log-{bytes}"));
        std::fs::write(&path, vec![b'x'; bytes]).unwrap();
        path
    }

    #[test]
    fn resends_from_the_acknowledged_offset_then_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::new(1 << 20);
        let id = AttemptId::generate();
        let log = spooled(&dir, 20);
        assert!(outbox.insert(id, StopSignal::default(), Some(log.clone())));
        assert!(
            !outbox.insert(id, StopSignal::default(), Some(log)),
            "duplicate ids are refused"
        );
        assert!(outbox.stream_opened().is_empty());
        assert_eq!(
            describe(
                &outbox
                    .on_started(id, SystemTime::now(), 42)
                    .into_iter()
                    .collect::<Vec<_>>()
            ),
            ["started 42"]
        );
        outbox.on_log(id, 10);
        assert_eq!(describe(&pump(&mut outbox)), ["log 0+10"]);
        outbox.on_log(id, 20);
        assert_eq!(describe(&pump(&mut outbox)), ["log 10+10"]);
        assert_eq!(outbox.announced_ids(), [id]);
        assert_eq!(outbox.running_ids(), [id]);

        assert_eq!(
            outbox.on_ack(&ack(id, 15, false), id),
            AckEffect::Kept { note_acked: None }
        );
        outbox.stream_closed();
        assert!(
            pump(&mut outbox).is_empty(),
            "nothing goes out without a stream"
        );
        assert_eq!(describe(&outbox.stream_opened()), ["started 42"]);
        assert_eq!(describe(&pump(&mut outbox)), ["log 15+5"]);

        outbox.on_finished(id, result(20));
        assert_eq!(describe(&pump(&mut outbox)), ["result 20"]);
        assert!(
            pump(&mut outbox).is_empty(),
            "a result goes out once per stream"
        );
        assert!(outbox.running_ids().is_empty());
        assert_eq!(outbox.announced_ids(), [id]);

        // The result is durable but not all the log yet: the attempt is no
        // longer announced, its log is still resent.
        assert_eq!(
            outbox.on_ack(&ack(id, 15, true), id),
            AckEffect::Kept { note_acked: None }
        );
        assert!(outbox.announced_ids().is_empty());
        outbox.stream_opened();
        assert_eq!(describe(&pump(&mut outbox)), ["log 15+5"]);
        assert_eq!(outbox.on_ack(&ack(id, 20, false), id), AckEffect::Forgotten);
        assert!(outbox.is_empty());
        assert_eq!(outbox.on_ack(&ack(id, 20, true), id), AckEffect::Unknown);
    }

    #[test]
    fn no_more_than_the_window_is_in_flight_and_results_wait_for_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let window = 2 * MAX_CHUNK_BYTES;
        let mut outbox = Outbox::new(window);
        let id = AttemptId::generate();
        let total = 5 * MAX_CHUNK_BYTES + 7;
        outbox.insert(id, StopSignal::default(), Some(spooled(&dir, total)));
        outbox.stream_opened();
        outbox.on_log(id, total as u64);
        outbox.on_finished(id, result(total as u64));
        let mut received = 0_u64;
        for _ in 0..10 {
            let messages = pump(&mut outbox);
            let mut in_flight = 0;
            for message in &messages {
                match &message.message {
                    Some(Message::LogChunk(chunk)) => {
                        assert_eq!(chunk.offset, received);
                        received += chunk.data.len() as u64;
                        in_flight += chunk.data.len();
                    }
                    Some(Message::TaskResult(_)) => {
                        assert_eq!(received, total as u64, "the result comes after the log");
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(in_flight <= window, "{in_flight} bytes in flight");
            outbox.on_ack(&ack(id, received, false), id);
            if received == total as u64 {
                break;
            }
        }
        assert_eq!(received, total as u64);
    }

    #[test]
    fn a_restored_attempt_resends_from_its_noted_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::new(1 << 20);
        let id = AttemptId::generate();
        let log = spooled(&dir, 100);
        let recovered = Recovered {
            meta: crate::spool::SpoolMeta {
                attempt_id: id,
                run_id: baton_common::ids::RunId::generate(),
                task_id: baton_common::ids::TaskId::new("t").unwrap(),
                attempt: 1,
            },
            result: result(100),
            log_len: 100,
            acked: 40,
        };
        outbox.restore(recovered, log);
        assert_eq!(outbox.announced_ids(), [id]);
        assert!(outbox.running_ids().is_empty());
        outbox.stream_opened();
        assert_eq!(describe(&pump(&mut outbox)), ["log 40+60", "result 100"]);
        // The controller had more than the note said.
        assert_eq!(outbox.on_ack(&ack(id, 100, true), id), AckEffect::Forgotten);
    }

    #[test]
    fn stale_stops_and_forgets() {
        let mut outbox = Outbox::new(1 << 20);
        let id = AttemptId::generate();
        let stop = StopSignal::default();
        outbox.insert(id, stop.clone(), None);
        let stale = api::Ack {
            stale: true,
            reason: "task cleared".into(),
            ..ack(id, 0, false)
        };
        assert_eq!(outbox.on_ack(&stale, id), AckEffect::Stale);
        assert!(stop.is_stopped());
        assert!(outbox.is_empty());
    }

    #[test]
    fn result_carries_the_spooled_log_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::new(1 << 20);
        let id = AttemptId::generate();
        outbox.insert(id, StopSignal::default(), Some(spooled(&dir, 7)));
        outbox.stream_opened();
        outbox.on_log(id, 7);
        outbox.on_finished(id, result(0));
        let messages = pump(&mut outbox);
        let Some(api::WorkerMessage {
            message: Some(Message::TaskResult(sent)),
        }) = messages.last()
        else {
            panic!("a result message")
        };
        assert_eq!(sent.log_bytes, 7);
        assert_eq!(sent.outcome, AttemptOutcome::Error as i32);
    }

    /// What goes out, by attempt, counted.
    fn sent_by_attempt(messages: &[api::WorkerMessage]) -> BTreeMap<String, Vec<String>> {
        let mut by_attempt: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for message in messages {
            let attempt_id = match &message.message {
                Some(Message::LogChunk(chunk)) => chunk.attempt_id.clone(),
                Some(Message::TaskResult(result)) => result.attempt_id.clone(),
                Some(Message::TaskStarted(started)) => started.attempt_id.clone(),
                other => panic!("unexpected message {other:?}"),
            };
            by_attempt
                .entry(attempt_id)
                .or_default()
                .extend(describe(std::slice::from_ref(message)));
        }
        by_attempt
    }

    /// Many attempts, their events interleaved as a fan-out's are: each
    /// result goes out exactly once per stream, after all its log, and the
    /// running count follows starts, ends and stale attempts.
    #[test]
    fn many_attempts_each_report_once_per_stream_whatever_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::new(8);
        outbox.stream_opened();
        let ids: Vec<AttemptId> = (0..40).map(|_| AttemptId::generate()).collect();
        for (index, id) in ids.iter().enumerate() {
            // Every third attempt has a spooled log of 12 bytes (more than
            // the window of 8), the others none (a noop's).
            let log = (index % 3 == 0).then(|| {
                let path = dir.path().join(format!("log-{index}"));
                std::fs::write(&path, [b'x'; 12]).unwrap();
                path
            });
            assert!(outbox.insert(*id, StopSignal::default(), log));
        }
        assert_eq!(outbox.running_count(), 40);
        let mut sent = Vec::new();
        // Finish them in reverse order, pumping after each event.
        for (index, id) in ids.iter().enumerate().rev() {
            let log_bytes = if index % 3 == 0 { 12 } else { 0 };
            if log_bytes > 0 {
                outbox.on_log(*id, log_bytes);
                sent.extend(pump(&mut outbox));
            }
            outbox.on_finished(*id, result(log_bytes));
            sent.extend(pump(&mut outbox));
        }
        assert_eq!(outbox.running_count(), 0);
        // The window holds back logged attempts' last 4 bytes and results
        // until their first 8 are acknowledged.
        let logged: Vec<AttemptId> = ids.iter().copied().step_by(3).collect();
        for id in &logged {
            assert_eq!(
                outbox.on_ack(&ack(*id, 8, false), *id),
                AckEffect::Kept { note_acked: None }
            );
            sent.extend(pump(&mut outbox));
        }
        let by_attempt = sent_by_attempt(&sent);
        assert_eq!(by_attempt.len(), 40);
        for (index, id) in ids.iter().enumerate() {
            let expected: &[&str] = if index % 3 == 0 {
                &["log 0+8", "log 8+4", "result 12"]
            } else {
                &["result 0"]
            };
            assert_eq!(by_attempt[&id.to_string()], expected, "attempt #{index}");
        }

        // A new stream resends every result not yet acknowledged, once.
        for id in ids.iter().skip(1).step_by(2) {
            outbox.on_ack(&ack(*id, 12, true), *id);
        }
        outbox.stream_closed();
        outbox.stream_opened();
        let resent = sent_by_attempt(&pump(&mut outbox));
        assert_eq!(resent.len(), 20);
        assert!(pump(&mut outbox).is_empty());

        // Stale attempts leave the running count too.
        let running = AttemptId::generate();
        outbox.insert(running, StopSignal::default(), None);
        assert_eq!(outbox.running_count(), 1);
        let stale = api::Ack {
            stale: true,
            ..ack(running, 0, false)
        };
        assert_eq!(outbox.on_ack(&stale, running), AckEffect::Stale);
        assert_eq!(outbox.running_count(), 0);
    }
}
