//! The ids that tie a run's spans together, derived from Baton's own ids,
//! and the controller's span of an attempt, built from what the controller
//! records about it.
//!
//! They live here rather than in the controller because the exporter
//! builds an attempt's span from its queued record (`record`), so that the
//! scheduler only copies the record's fields.

use opentelemetry::trace::{SpanId, TraceId};

use super::otlp::SpanRecord;
use super::{AttemptIdentity, attempt_attributes};
use crate::ids::{AttemptId, RunId};
use crate::pb::api::AttemptOutcome;
use crate::time::{Micros, micros_to_system_time};

/// The trace of a run: its id is the run id.
pub fn run_trace_id(run_id: RunId) -> TraceId {
    TraceId::from_bytes(*run_id.as_uuid().as_bytes())
}

/// The span id of a run's own span (the root of its trace).
pub fn run_span_id(run_id: RunId) -> SpanId {
    derived_span_id(RUN_SPAN_TAG, run_id.as_uuid())
}

/// The span id of the controller's span of an attempt.
pub fn attempt_span_id(attempt_id: AttemptId) -> SpanId {
    derived_span_id(ATTEMPT_SPAN_TAG, attempt_id.as_uuid())
}

/// Tags that keep a run's and an attempt's span ids apart ("baton-ru",
/// "baton-at").
const RUN_SPAN_TAG: u64 = 0x6261_746f_6e2d_7275;
const ATTEMPT_SPAN_TAG: u64 = 0x6261_746f_6e2d_6174;

/// A span id from a tag and a UUID: both halves of the UUID mixed with
/// SplitMix64's finalizer, a bijection, so two ids that share a half never
/// collide and others collide with a chance of 2⁻⁶⁴. It is computed twice
/// per attempt (its `Assign`'s trace context, its span), so it is a few
/// multiplications rather than a SHA-256; span ids need to be unique in
/// their trace, not unpredictable.
fn derived_span_id(tag: u64, id: &uuid::Uuid) -> SpanId {
    let (high, low) = id.as_u64_pair();
    let mixed = splitmix64(splitmix64(high ^ tag) ^ low);
    // All zeros is the invalid span id.
    SpanId::from_bytes(mixed.max(1).to_be_bytes())
}

fn splitmix64(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// What an attempt's span says about it.
#[derive(Debug, Clone, Copy)]
pub struct AttemptSpanFields<'a> {
    pub identity: AttemptIdentity<'a>,
    pub leased_at: Micros,
    /// When the controller recorded the end: at or after the end the worker
    /// reported, so the span encloses the worker's.
    pub recorded_at: Micros,
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    pub error: Option<&'a str>,
}

/// The controller's span of an attempt that ended, a child of its run's
/// span.
pub fn attempt_span(fields: AttemptSpanFields<'_>) -> SpanRecord<'_> {
    let identity = fields.identity;
    let (attributes, status) =
        attempt_attributes(&identity, fields.outcome, fields.exit_code, fields.error);
    let start = if fields.leased_at > 0 {
        fields.leased_at
    } else {
        fields.recorded_at
    };
    SpanRecord {
        trace_id: run_trace_id(identity.run_id),
        span_id: attempt_span_id(identity.attempt_id),
        parent_span_id: run_span_id(identity.run_id),
        parent_is_remote: false,
        name: "attempt",
        start: micros_to_system_time(start),
        end: micros_to_system_time(fields.recorded_at.max(start)),
        attributes,
        status,
    }
}
