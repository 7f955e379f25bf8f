//! Spans as the span queue holds them until the exporter sends them: their
//! fields copied as they are, to be written as OTLP `Span`s on the
//! exporter's thread.
//!
//! Baton ends two spans per attempt, on the scheduler's and the worker's
//! own threads, which are the critical path of a run. Building and writing
//! the OTLP message there (eight attributes with their keys, each nested
//! message's length before its bytes, two UUIDs as text, times converted)
//! took several times the instructions of copying the fields, so the span's
//! thread only copies them, and the exporter's thread, which sends once a
//! burst is over, builds and writes the message.
//!
//! Two forms, each little endian:
//! - an attempt ([`AttemptSpanFields`], the controller's span of it): run
//!   id and attempt id (16 bytes each), attempt number (4), leased and
//!   recorded times in microseconds (8 each), outcome and exit code (4
//!   each), flags (1: bit 0 an exit code, bit 1 a worker, bit 2 an error),
//!   the lengths of the DAG id, task id, worker id and error (4 each), then
//!   those strings;
//! - an execution ([`ExecutionSpanFields`], the worker's span): trace id
//!   (16), its own span id (8, drawn as the record is written), parent span
//!   id (8), start and end in nanoseconds since the Unix epoch (8 each),
//!   outcome and exit code (4 each), flags (as above), the lengths of the
//!   worker id and error (4 each), then those strings.
//!
//! A run's span, one per run, is queued as its message.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, TraceId};
use uuid::Uuid;

use super::otlp::unix_nanos;
use super::{AttemptIdentity, AttemptSpanFields, ExecutionSpanFields};
use crate::ids::{AttemptId, RunId};
use crate::pb::api::AttemptOutcome;

/// Bytes of a length before a string.
const LEN_BYTES: usize = 4;

/// The bytes of a record not read yet.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (taken, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*taken)
    }

    /// An attempt's outcome, exit code (0 when it has none) and the flags
    /// after them.
    fn outcome(&mut self) -> Option<(AttemptOutcome, i32, u8)> {
        let outcome = AttemptOutcome::try_from(i32::from_le_bytes(self.take()?)).ok()?;
        let exit_code = i32::from_le_bytes(self.take()?);
        let [flags] = self.take()?;
        Some((outcome, exit_code, flags))
    }

    /// `len` bytes of text.
    fn text(&mut self, len: usize) -> Option<&'a str> {
        let (text, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        std::str::from_utf8(text).ok()
    }
}

const HAS_EXIT_CODE: u8 = 1;
const HAS_WORKER: u8 = 2;
const HAS_ERROR: u8 = 4;

/// Bytes of an attempt record before its strings.
const ATTEMPT_FIXED_LEN: usize = 16 + 16 + 4 + 8 + 8 + 4 + 4 + 1 + 4 * LEN_BYTES;

/// Bytes the record of an attempt's span takes.
pub(crate) fn attempt_record_len(fields: &AttemptSpanFields<'_>) -> usize {
    let identity = &fields.identity;
    ATTEMPT_FIXED_LEN
        + identity.dag_id.len()
        + identity.task_id.len()
        + identity.worker_id.map_or(0, str::len)
        + fields.error.map_or(0, str::len)
}

/// Appends the record of an attempt's span ([`attempt_record_len`] bytes).
pub(crate) fn write_attempt_record(fields: &AttemptSpanFields<'_>, buf: &mut Vec<u8>) {
    let identity = &fields.identity;
    let worker_id = identity.worker_id.unwrap_or_default();
    let error = fields.error.unwrap_or_default();
    let mut fixed = [0; ATTEMPT_FIXED_LEN];
    fixed[..16].copy_from_slice(identity.run_id.as_uuid().as_bytes());
    fixed[16..32].copy_from_slice(identity.attempt_id.as_uuid().as_bytes());
    fixed[32..36].copy_from_slice(&identity.attempt.to_le_bytes());
    fixed[36..44].copy_from_slice(&fields.leased_at.to_le_bytes());
    fixed[44..52].copy_from_slice(&fields.recorded_at.to_le_bytes());
    fixed[52..56].copy_from_slice(&(fields.outcome as i32).to_le_bytes());
    fixed[56..60].copy_from_slice(&fields.exit_code.unwrap_or_default().to_le_bytes());
    fixed[60] = flags(
        fields.exit_code.is_some(),
        identity.worker_id.is_some(),
        fields.error.is_some(),
    );
    let strings = [identity.dag_id, identity.task_id, worker_id, error];
    for (slot, text) in fixed[61..].chunks_exact_mut(LEN_BYTES).zip(strings) {
        slot.copy_from_slice(&(text.len() as u32).to_le_bytes());
    }
    buf.extend_from_slice(&fixed);
    put_strings(&strings, buf);
}

/// The attempt span's fields a record written by [`write_attempt_record`]
/// holds; `None` if the bytes are not such a record.
pub(crate) fn read_attempt_record(bytes: &[u8]) -> Option<AttemptSpanFields<'_>> {
    let (fixed, rest) = bytes.split_first_chunk::<ATTEMPT_FIXED_LEN>()?;
    let mut fields = Reader(fixed);
    let run_id = RunId::from_uuid(Uuid::from_bytes(fields.take()?));
    let attempt_id = AttemptId::from_uuid(Uuid::from_bytes(fields.take()?));
    let attempt = u32::from_le_bytes(fields.take()?);
    let leased_at = i64::from_le_bytes(fields.take()?);
    let recorded_at = i64::from_le_bytes(fields.take()?);
    let (outcome, exit_code, flags) = fields.outcome()?;
    let [dag_id, task_id, worker_id, error] = read_strings(&mut fields, rest)?;
    Some(AttemptSpanFields {
        identity: AttemptIdentity {
            dag_id,
            run_id,
            task_id,
            attempt,
            attempt_id,
            worker_id: (flags & HAS_WORKER != 0).then_some(worker_id),
        },
        leased_at,
        recorded_at,
        outcome,
        exit_code: (flags & HAS_EXIT_CODE != 0).then_some(exit_code),
        error: (flags & HAS_ERROR != 0).then_some(error),
    })
}

/// Bytes of an execution record before its strings.
const EXECUTION_FIXED_LEN: usize = 16 + 8 + 8 + 8 + 8 + 4 + 4 + 1 + 2 * LEN_BYTES;

/// Bytes the record of a worker's execution span takes.
pub(crate) fn execution_record_len(fields: &ExecutionSpanFields<'_>) -> usize {
    EXECUTION_FIXED_LEN + fields.worker_id.len() + fields.error.map_or(0, str::len)
}

/// Appends the record of a worker's execution span with its span id
/// ([`execution_record_len`] bytes).
pub(crate) fn write_execution_record(
    fields: &ExecutionSpanFields<'_>,
    span_id: SpanId,
    buf: &mut Vec<u8>,
) {
    let error = fields.error.unwrap_or_default();
    let mut fixed = [0; EXECUTION_FIXED_LEN];
    fixed[..16].copy_from_slice(&fields.trace_id.to_bytes());
    fixed[16..24].copy_from_slice(&span_id.to_bytes());
    fixed[24..32].copy_from_slice(&fields.parent_span_id.to_bytes());
    fixed[32..40].copy_from_slice(&unix_nanos(fields.start).to_le_bytes());
    fixed[40..48].copy_from_slice(&unix_nanos(fields.end).to_le_bytes());
    fixed[48..52].copy_from_slice(&(fields.outcome as i32).to_le_bytes());
    fixed[52..56].copy_from_slice(&fields.exit_code.unwrap_or_default().to_le_bytes());
    fixed[56] = flags(fields.exit_code.is_some(), true, fields.error.is_some());
    let strings = [fields.worker_id, error];
    for (slot, text) in fixed[57..].chunks_exact_mut(LEN_BYTES).zip(strings) {
        slot.copy_from_slice(&(text.len() as u32).to_le_bytes());
    }
    buf.extend_from_slice(&fixed);
    put_strings(&strings, buf);
}

/// The execution span's fields and span id a record written by
/// [`write_execution_record`] holds; `None` if the bytes are not such a
/// record.
pub(crate) fn read_execution_record(bytes: &[u8]) -> Option<(ExecutionSpanFields<'_>, SpanId)> {
    let (fixed, rest) = bytes.split_first_chunk::<EXECUTION_FIXED_LEN>()?;
    let mut fields = Reader(fixed);
    let trace_id = TraceId::from_bytes(fields.take()?);
    let span_id = SpanId::from_bytes(fields.take()?);
    let parent_span_id = SpanId::from_bytes(fields.take()?);
    let start = u64::from_le_bytes(fields.take()?);
    let end = u64::from_le_bytes(fields.take()?);
    let (outcome, exit_code, flags) = fields.outcome()?;
    let [worker_id, error] = read_strings(&mut fields, rest)?;
    let time = |nanos| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos);
    let fields = ExecutionSpanFields {
        trace_id,
        parent_span_id,
        start: time(start),
        end: time(end),
        worker_id,
        outcome,
        exit_code: (flags & HAS_EXIT_CODE != 0).then_some(exit_code),
        error: (flags & HAS_ERROR != 0).then_some(error),
    };
    Some((fields, span_id))
}

fn flags(exit_code: bool, worker: bool, error: bool) -> u8 {
    let mut flags = 0;
    if exit_code {
        flags |= HAS_EXIT_CODE;
    }
    if worker {
        flags |= HAS_WORKER;
    }
    if error {
        flags |= HAS_ERROR;
    }
    flags
}

/// Appends the strings whose lengths the fixed part holds; empty ones cost
/// nothing.
fn put_strings(strings: &[&str], buf: &mut Vec<u8>) {
    for text in strings {
        if !text.is_empty() {
            buf.extend_from_slice(text.as_bytes());
        }
    }
}

/// The `N` strings after a fixed part whose remaining bytes (in `lengths`)
/// are their lengths; `None` unless they take exactly `rest`.
fn read_strings<'a, const N: usize>(
    lengths: &mut Reader<'_>,
    rest: &'a [u8],
) -> Option<[&'a str; N]> {
    let mut strings = [""; N];
    let mut rest = Reader(rest);
    for text in &mut strings {
        let len = u32::from_le_bytes(lengths.take()?) as usize;
        *text = rest.text(len)?;
    }
    (lengths.0.is_empty() && rest.0.is_empty()).then_some(strings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt_fields<'a>(
        worker_id: Option<&'a str>,
        error: Option<&'a str>,
        exit_code: Option<i32>,
    ) -> AttemptSpanFields<'a> {
        AttemptSpanFields {
            identity: AttemptIdentity {
                dag_id: "etl",
                run_id: RunId::generate(),
                task_id: "load",
                attempt: 3,
                attempt_id: AttemptId::generate(),
                worker_id,
            },
            leased_at: 1_700_000_000_000_001,
            recorded_at: 1_700_000_000_500_000,
            outcome: AttemptOutcome::Failed,
            exit_code,
            error,
        }
    }

    #[test]
    fn an_attempt_record_reads_back_as_the_fields_it_was_written_from() {
        for (worker_id, error, exit_code) in [
            (Some("w1"), Some("exit code 3"), Some(3)),
            (None, None, None),
            (Some(""), Some(""), Some(-1)),
        ] {
            let fields = attempt_fields(worker_id, error, exit_code);
            let mut buf = Vec::new();
            write_attempt_record(&fields, &mut buf);
            assert_eq!(buf.len(), attempt_record_len(&fields));
            let read = read_attempt_record(&buf).expect("an attempt record");
            assert_eq!(format!("{read:?}"), format!("{fields:?}"));
            for len in 0..buf.len() {
                assert!(read_attempt_record(&buf[..len]).is_none(), "cut at {len}");
            }
            buf.push(0);
            assert!(read_attempt_record(&buf).is_none(), "a byte too many");
        }
    }

    #[test]
    fn an_execution_record_reads_back_with_its_span_id() {
        for (error, exit_code) in [(Some("killed"), Some(137)), (None, None)] {
            let fields = ExecutionSpanFields {
                trace_id: TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                parent_span_id: SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                start: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
                end: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_001_000_000_001),
                worker_id: "w1",
                outcome: AttemptOutcome::Failed,
                exit_code,
                error,
            };
            let span_id = SpanId::from_hex("53995c3f42cd8ad8").unwrap();
            let mut buf = Vec::new();
            write_execution_record(&fields, span_id, &mut buf);
            assert_eq!(buf.len(), execution_record_len(&fields));
            let (read, read_span_id) = read_execution_record(&buf).expect("an execution record");
            assert_eq!(read_span_id, span_id);
            assert_eq!(format!("{read:?}"), format!("{fields:?}"));
            for len in 0..buf.len() {
                assert!(read_execution_record(&buf[..len]).is_none(), "cut at {len}");
            }
            buf.push(0);
            assert!(read_execution_record(&buf).is_none(), "a byte too many");
        }
    }
}
