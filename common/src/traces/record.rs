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
//! Three forms, each little endian:
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
//!   worker id and error (4 each), then those strings;
//! - any other [`SpanRecord`] (a run's span): trace id (16 bytes), span id
//!   (8), parent span id (8), start and end in nanoseconds (8 each, the end
//!   no earlier than the start), flags (1: bit 0 the parent is remote, bit
//!   1 the status is an error), the number of attributes (1), the name and
//!   the status's description (each a 4-byte length and its bytes), then
//!   each attribute: its key (a 4-byte length and its bytes), its kind (1:
//!   string, integer or UUID) and its value (a 4-byte length and its bytes,
//!   8 bytes, or 16 bytes).

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, TraceId};
use uuid::Uuid;

use super::otlp::{Attribute, AttributeValue, SpanRecord, SpanStatus, unix_nanos};
use super::{AttemptIdentity, AttemptSpanFields, Attributes, ExecutionSpanFields};
use crate::ids::{AttemptId, RunId};
use crate::pb::api::AttemptOutcome;

/// Bytes before the name: ids, times, flags and the attribute count.
const FIXED_LEN: usize = 16 + 8 + 8 + 8 + 8 + 1 + 1;

const PARENT_IS_REMOTE: u8 = 1;
const STATUS_ERROR: u8 = 2;

const KIND_STR: u8 = 0;
const KIND_INT: u8 = 1;
const KIND_UUID: u8 = 2;

/// Bytes of a length before a string.
const LEN_BYTES: usize = 4;

/// Bytes the record of `span` takes.
pub(crate) fn record_len(span: &SpanRecord<'_>) -> usize {
    FIXED_LEN
        + LEN_BYTES
        + span.name.len()
        + LEN_BYTES
        + status_description(span.status).len()
        + span
            .attributes
            .as_slice()
            .iter()
            .map(attribute_len)
            .sum::<usize>()
}

fn attribute_len(attribute: &Attribute<'_>) -> usize {
    LEN_BYTES
        + attribute.key.len()
        + 1
        + match attribute.value {
            AttributeValue::Str(value) => LEN_BYTES + value.len(),
            AttributeValue::Int(_) => 8,
            AttributeValue::Uuid(_) => 16,
        }
}

fn status_description<'a>(status: SpanStatus<'a>) -> &'a str {
    match status {
        SpanStatus::Unset => "",
        SpanStatus::Error(description) => description,
    }
}

/// Appends the record of `span` ([`record_len`] bytes) to `buf`. Strings
/// of 4 GiB or more cannot be said by their length; callers check
/// [`record_len`] first.
pub(crate) fn write_record(span: &SpanRecord<'_>, buf: &mut Vec<u8>) {
    let start = unix_nanos(span.start);
    let end = unix_nanos(span.end).max(start);
    let mut flags = 0;
    if span.parent_is_remote {
        flags |= PARENT_IS_REMOTE;
    }
    if matches!(span.status, SpanStatus::Error(_)) {
        flags |= STATUS_ERROR;
    }
    let attributes = span.attributes.as_slice();
    let mut fixed = [0; FIXED_LEN];
    fixed[..16].copy_from_slice(&span.trace_id.to_bytes());
    fixed[16..24].copy_from_slice(&span.span_id.to_bytes());
    fixed[24..32].copy_from_slice(&span.parent_span_id.to_bytes());
    fixed[32..40].copy_from_slice(&start.to_le_bytes());
    fixed[40..48].copy_from_slice(&end.to_le_bytes());
    fixed[48] = flags;
    // At most eight: `Attributes` holds no more.
    fixed[49] = attributes.len() as u8;
    buf.extend_from_slice(&fixed);
    put_str(span.name, buf);
    put_str(status_description(span.status), buf);
    for attribute in attributes {
        put_str(attribute.key, buf);
        match attribute.value {
            AttributeValue::Str(value) => {
                buf.push(KIND_STR);
                put_str(value, buf);
            }
            AttributeValue::Int(value) => {
                buf.push(KIND_INT);
                buf.extend_from_slice(&value.to_le_bytes());
            }
            AttributeValue::Uuid(value) => {
                buf.push(KIND_UUID);
                buf.extend_from_slice(value.as_bytes());
            }
        }
    }
}

fn put_str(text: &str, buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(text.len() as u32).to_le_bytes());
    buf.extend_from_slice(text.as_bytes());
}

/// The span a record written by [`write_record`] holds; `None` if the
/// bytes are not such a record.
pub(crate) fn read_record(bytes: &[u8]) -> Option<SpanRecord<'_>> {
    let (fixed, rest) = bytes.split_first_chunk::<FIXED_LEN>()?;
    let mut reader = Reader(rest);
    let array = |range: std::ops::Range<usize>| &fixed[range];
    let trace_id = TraceId::from_bytes(array(0..16).try_into().ok()?);
    let span_id = SpanId::from_bytes(array(16..24).try_into().ok()?);
    let parent_span_id = SpanId::from_bytes(array(24..32).try_into().ok()?);
    let start = u64::from_le_bytes(array(32..40).try_into().ok()?);
    let end = u64::from_le_bytes(array(40..48).try_into().ok()?);
    let flags = fixed[48];
    let count = usize::from(fixed[49]);
    let name = reader.str()?;
    let description = reader.str()?;
    let mut attributes = Attributes::new();
    for _ in 0..count {
        let key = reader.str()?;
        let value = match reader.take::<1>()? {
            [KIND_STR] => AttributeValue::Str(reader.str()?),
            [KIND_INT] => AttributeValue::Int(i64::from_le_bytes(reader.take()?)),
            [KIND_UUID] => AttributeValue::Uuid(Uuid::from_bytes(reader.take()?)),
            _ => return None,
        };
        attributes.push(Attribute { key, value });
    }
    if !reader.0.is_empty() {
        return None;
    }
    let time = |nanos| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos);
    Some(SpanRecord {
        trace_id,
        span_id,
        parent_span_id,
        parent_is_remote: flags & PARENT_IS_REMOTE != 0,
        name,
        start: time(start),
        end: time(end),
        attributes,
        status: if flags & STATUS_ERROR != 0 {
            SpanStatus::Error(description)
        } else {
            SpanStatus::Unset
        },
    })
}

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

    /// A string: its length, then its bytes.
    fn str(&mut self) -> Option<&'a str> {
        let len = u32::from_le_bytes(self.take()?) as usize;
        self.text(len)
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

    fn record<'a>(status: SpanStatus<'a>, attributes: Attributes<'a>) -> SpanRecord<'a> {
        SpanRecord {
            trace_id: TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            span_id: SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            parent_span_id: SpanId::from_hex("53995c3f42cd8ad8").unwrap(),
            parent_is_remote: true,
            name: "attempt",
            start: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            end: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_001_000_000_001),
            attributes,
            status,
        }
    }

    fn written(span: &SpanRecord<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        write_record(span, &mut buf);
        assert_eq!(buf.len(), record_len(span));
        buf
    }

    #[test]
    fn a_record_reads_back_as_the_span_it_was_written_from() {
        let mut attributes = Attributes::new();
        attributes.push(Attribute::str("dag_id", "etl"));
        attributes.push(Attribute::uuid("run_id", Uuid::from_u128(0x0123_4567_89ab)));
        attributes.push(Attribute::int("attempt", 3));
        attributes.push(Attribute::int("exit_code", -1));
        attributes.push(Attribute::str("task_id", ""));
        for status in [SpanStatus::Unset, SpanStatus::Error("exit 1: no such file")] {
            let span = record(status, attributes);
            let buf = written(&span);
            let read = read_record(&buf).expect("a record");
            assert_eq!(read.trace_id, span.trace_id);
            assert_eq!(read.span_id, span.span_id);
            assert_eq!(read.parent_span_id, span.parent_span_id);
            assert!(read.parent_is_remote);
            assert_eq!(read.name, "attempt");
            assert_eq!((read.start, read.end), (span.start, span.end));
            assert_eq!(read.attributes.as_slice(), span.attributes.as_slice());
            assert_eq!(read.status, status);
        }
    }

    #[test]
    fn an_end_before_the_start_reads_back_as_the_start() {
        let mut span = record(SpanStatus::Unset, Attributes::new());
        span.parent_is_remote = false;
        span.end = span.start - Duration::from_secs(1);
        let read_span = written(&span);
        let read = read_record(&read_span).unwrap();
        assert_eq!(read.end, span.start);
        assert!(!read.parent_is_remote);
    }

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
        }
    }

    #[test]
    fn bytes_that_are_not_a_whole_record_read_as_none() {
        let mut attributes = Attributes::new();
        attributes.push(Attribute::str("dag_id", "etl"));
        let buf = written(&record(SpanStatus::Unset, attributes));
        for len in 0..buf.len() {
            assert!(read_record(&buf[..len]).is_none(), "cut at {len}");
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert!(read_record(&longer).is_none());
        let mut bad_kind = buf;
        let kind_at = bad_kind.len() - LEN_BYTES - "etl".len() - 1;
        bad_kind[kind_at] = 9;
        assert!(read_record(&bad_kind).is_none());
    }
}
