//! [`Outbox`]: every attempt the worker knows and what of it the controller
//! has not yet acknowledged — its log bytes past the acknowledged offset,
//! its start, its result.
//!
//! The outbox is what makes the worker safe to disconnect: after a new
//! stream is registered, [`Outbox::resend_messages`] replays everything
//! unacknowledged, per attempt in the order the protocol requires (log
//! chunks, then `TaskStarted` for a running attempt, then `TaskResult`), so
//! every log byte before a result reaches the controller before the result.
//! An attempt is forgotten once its result and all its log bytes are
//! acknowledged, or once the controller calls it stale.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use baton_common::ids::AttemptId;
use baton_common::pb::api::{self, worker_message::Message};
use baton_common::time;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::executor::{AttemptResult, StopSignal};

/// What the worker keeps about one attempt.
#[derive(Debug)]
struct AttemptEntry {
    /// When and as which process the attempt started, once it has.
    started: Option<(SystemTime, u32)>,
    /// Unacknowledged log as `(offset, bytes)`, contiguous, starting at or
    /// before `acked_log_offset` (the first chunk may be partly acknowledged).
    log: VecDeque<(u64, Vec<u8>)>,
    /// Bytes of log produced so far.
    log_end: u64,
    acked_log_offset: u64,
    /// Tells the executor about acknowledgements, which lift its
    /// backpressure.
    ack_sender: watch::Sender<u64>,
    stop: StopSignal,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    Running,
    /// Finished; the result stays until the controller acknowledges it.
    Finished {
        result: Option<AttemptResult>,
    },
}

/// Every attempt the worker knows, by id (attempt ids are UUIDv7, so this
/// is also the order the controller created them in).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    attempts: BTreeMap<AttemptId, AttemptEntry>,
}

/// What an `Ack` changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckEffect {
    /// The attempt is not known (already forgotten, or never ours).
    Unknown,
    /// Acknowledgement recorded; the attempt is still kept.
    Kept,
    /// Everything is acknowledged; the attempt is forgotten.
    Forgotten,
    /// The controller called the attempt stale: it was stopped (if it still
    /// ran) and forgotten.
    Stale,
}

impl Outbox {
    /// Starts tracking a new attempt; false if the id is already known.
    pub(crate) fn insert(
        &mut self,
        attempt_id: AttemptId,
        stop: StopSignal,
        ack_sender: watch::Sender<u64>,
    ) -> bool {
        if self.attempts.contains_key(&attempt_id) {
            return false;
        }
        let entry = AttemptEntry {
            started: None,
            log: VecDeque::new(),
            log_end: 0,
            acked_log_offset: 0,
            ack_sender,
            stop,
            phase: Phase::Running,
        };
        self.attempts.insert(attempt_id, entry);
        true
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.attempts.is_empty()
    }

    pub(crate) fn running_ids(&self) -> Vec<AttemptId> {
        self.attempts
            .iter()
            .filter(|(_, entry)| matches!(entry.phase, Phase::Running))
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) fn running_count(&self) -> usize {
        self.attempts
            .values()
            .filter(|entry| matches!(entry.phase, Phase::Running))
            .count()
    }

    /// Attempts announced in `Register`: running, or finished with a result
    /// the controller has not acknowledged.
    pub(crate) fn announced_ids(&self) -> Vec<AttemptId> {
        self.attempts
            .iter()
            .filter(|(_, entry)| {
                matches!(
                    entry.phase,
                    Phase::Running | Phase::Finished { result: Some(_) }
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

    /// Records the start; returns the message to send.
    pub(crate) fn on_started(
        &mut self,
        attempt_id: AttemptId,
        started_at: SystemTime,
        pid: u32,
    ) -> Option<api::WorkerMessage> {
        let entry = self.attempts.get_mut(&attempt_id)?;
        entry.started = Some((started_at, pid));
        Some(task_started_message(attempt_id, started_at, pid))
    }

    /// Keeps a log chunk until it is acknowledged; returns the message to
    /// send.
    pub(crate) fn on_log(
        &mut self,
        attempt_id: AttemptId,
        offset: u64,
        data: Vec<u8>,
    ) -> Option<api::WorkerMessage> {
        let entry = self.attempts.get_mut(&attempt_id)?;
        if offset != entry.log_end {
            // The executor numbers chunks contiguously; a gap is a bug.
            warn!(%attempt_id, offset, expected = entry.log_end, "log chunk out of order");
        }
        entry.log_end = offset + data.len() as u64;
        let message = log_chunk_message(attempt_id, offset, data.clone());
        if entry.log_end > entry.acked_log_offset {
            entry.log.push_back((offset, data));
        }
        Some(message)
    }

    /// Keeps the result until it is acknowledged; returns the message to
    /// send.
    pub(crate) fn on_finished(
        &mut self,
        attempt_id: AttemptId,
        mut result: AttemptResult,
    ) -> Option<api::WorkerMessage> {
        let entry = self.attempts.get_mut(&attempt_id)?;
        if result.log_bytes != entry.log_end {
            warn!(%attempt_id, reported = result.log_bytes, kept = entry.log_end, "result and log disagree on the log size");
            result.log_bytes = entry.log_end;
        }
        let message = task_result_message(attempt_id, &result);
        entry.phase = Phase::Finished {
            result: Some(result),
        };
        Some(message)
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
            self.attempts.remove(&attempt_id);
            return AckEffect::Stale;
        }
        if ack.log_offset > entry.acked_log_offset {
            if ack.log_offset > entry.log_end {
                warn!(%attempt_id, acked = ack.log_offset, produced = entry.log_end, "log acknowledged past its end");
            }
            entry.acked_log_offset = ack.log_offset.min(entry.log_end);
            while let Some((offset, data)) = entry.log.front() {
                if offset + data.len() as u64 <= entry.acked_log_offset {
                    entry.log.pop_front();
                } else {
                    break;
                }
            }
            entry.ack_sender.send_replace(entry.acked_log_offset);
        }
        if ack.result_recorded {
            match &mut entry.phase {
                Phase::Finished { result } => *result = None,
                Phase::Running => {
                    debug!(%attempt_id, "result acknowledged before it was sent; ignored")
                }
            }
        }
        let done = matches!(entry.phase, Phase::Finished { result: None })
            && entry.acked_log_offset >= entry.log_end;
        if done {
            self.attempts.remove(&attempt_id);
            AckEffect::Forgotten
        } else {
            AckEffect::Kept
        }
    }

    /// Everything unacknowledged, to send after `Register` on a new stream.
    pub(crate) fn resend_messages(&self) -> Vec<api::WorkerMessage> {
        let mut messages = Vec::new();
        for (attempt_id, entry) in &self.attempts {
            for (offset, data) in &entry.log {
                // The first chunk may be partly acknowledged.
                let skip = entry.acked_log_offset.saturating_sub(*offset);
                let skip = usize::try_from(skip).unwrap_or(usize::MAX).min(data.len());
                if skip < data.len() {
                    messages.push(log_chunk_message(
                        *attempt_id,
                        offset + skip as u64,
                        data[skip..].to_vec(),
                    ));
                }
            }
            match &entry.phase {
                Phase::Running => {
                    if let Some((started_at, pid)) = entry.started {
                        messages.push(task_started_message(*attempt_id, started_at, pid));
                    }
                }
                Phase::Finished {
                    result: Some(result),
                } => messages.push(task_result_message(*attempt_id, result)),
                Phase::Finished { result: None } => {}
            }
        }
        messages
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

    #[test]
    fn resends_from_the_acknowledged_offset_then_the_result() {
        let mut outbox = Outbox::default();
        let id = AttemptId::generate();
        let (ack_sender, mut ack_receiver) = watch::channel(0);
        assert!(outbox.insert(id, StopSignal::default(), ack_sender.clone()));
        assert!(
            !outbox.insert(id, StopSignal::default(), ack_sender),
            "duplicate ids are refused"
        );
        outbox.on_started(id, SystemTime::now(), 42);
        outbox.on_log(id, 0, vec![b'a'; 10]);
        outbox.on_log(id, 10, vec![b'b'; 10]);
        assert_eq!(
            describe(&outbox.resend_messages()),
            ["log 0+10", "log 10+10", "started 42"]
        );
        assert_eq!(outbox.announced_ids(), [id]);
        assert_eq!(outbox.running_ids(), [id]);

        assert_eq!(outbox.on_ack(&ack(id, 15, false), id), AckEffect::Kept);
        assert_eq!(*ack_receiver.borrow_and_update(), 15);
        assert_eq!(
            describe(&outbox.resend_messages()),
            ["log 15+5", "started 42"]
        );

        outbox.on_finished(id, result(20));
        assert_eq!(
            describe(&outbox.resend_messages()),
            ["log 15+5", "result 20"]
        );
        assert!(outbox.running_ids().is_empty());
        assert_eq!(outbox.announced_ids(), [id]);

        // The result is durable but not all the log yet: the attempt is no
        // longer announced, its log is still resent.
        assert_eq!(outbox.on_ack(&ack(id, 15, true), id), AckEffect::Kept);
        assert!(outbox.announced_ids().is_empty());
        assert_eq!(describe(&outbox.resend_messages()), ["log 15+5"]);
        assert_eq!(outbox.on_ack(&ack(id, 20, false), id), AckEffect::Forgotten);
        assert!(outbox.is_empty());
        assert_eq!(outbox.on_ack(&ack(id, 20, true), id), AckEffect::Unknown);
    }

    #[test]
    fn stale_stops_and_forgets() {
        let mut outbox = Outbox::default();
        let id = AttemptId::generate();
        let stop = StopSignal::default();
        outbox.insert(id, stop.clone(), watch::channel(0).0);
        outbox.on_log(id, 0, b"x".to_vec());
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
    fn result_carries_the_kept_log_size() {
        let mut outbox = Outbox::default();
        let id = AttemptId::generate();
        outbox.insert(id, StopSignal::default(), watch::channel(0).0);
        outbox.on_log(id, 0, vec![0; 7]);
        let Some(api::WorkerMessage {
            message: Some(Message::TaskResult(sent)),
        }) = outbox.on_finished(id, result(0))
        else {
            panic!("a result message")
        };
        assert_eq!(sent.log_bytes, 7);
        assert_eq!(sent.outcome, AttemptOutcome::Error as i32);
    }
}
