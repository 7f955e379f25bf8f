//! Run traces: the OpenTelemetry spans of runs and attempts, exported when
//! the process installed an OTLP exporter and set
//! [`ControllerConfig::export_traces`](crate::config::ControllerConfig).
//! With it off, nothing here runs: no id is derived, no `traceparent` is
//! sent to workers.
//!
//! # Ids without state
//! A run is one trace whose id *is* the run id (a UUID is 128 bits, as a
//! trace id is). Span ids are derived too: the run span's from the run id,
//! an attempt span's from the attempt id (the first 8 bytes of a SHA-256 of
//! a tag and the id). So every controller (a new leader after a failover
//! included) and every worker agrees on the ids without storing anything,
//! and an attempt's `traceparent` can be sent with its `Assign` before its
//! span exists.
//!
//! # Spans are exported once durable
//! The controller exports a span when what it describes has ended and that
//! end is stored: an attempt's span after the batch holding its attempt
//! record committed (start = lease, end = when the controller recorded the
//! end, so that it encloses the worker's span), the run's span after the
//! batch holding its final state committed (start = creation, end = end).
//! Start and end are explicit times from the records, so it does not matter
//! which leader saw the start. A run cleared after it ended and finishing
//! again exports its run span again, with the same id and the later end.
//!
//! ```text
//! run                      root; trace id = run id; dag_id, run_id, state
//! └── attempt              controller; dag_id, run_id, task_id, attempt, worker_id, outcome
//!     └── execute          worker: the execution, a child through Assign.traceparent
//! ```
//!
//! The SDK draws every id from its tracer provider's `IdGenerator`. A span
//! built here announces the ids it must have on its own thread just before
//! it is built, and [`DerivedIdGenerator`] (which the process installs in
//! its provider) hands them out; every other span gets random ids.

use std::cell::Cell;
use std::time::SystemTime;

use baton_common::ids::{AttemptId, RunId};
use baton_common::time::{Micros, micros_to_system_time};
use opentelemetry::trace::{
    Span, SpanBuilder, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use sha2::{Digest, Sha256};
use tracing::warn;

/// The instrumentation scope of the controller's spans.
const SCOPE: &str = "baton-controller";

thread_local! {
    // Ids the next span built on this thread must have (see the module doc).
    static ANNOUNCED_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
    static ANNOUNCED_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The tracer provider's id generator: the ids announced by [`RunTracer`]
/// for the span it is building, random ids for every other span.
#[derive(Debug, Default)]
pub struct DerivedIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for DerivedIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        ANNOUNCED_TRACE_ID
            .take()
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        ANNOUNCED_SPAN_ID
            .take()
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

/// The trace of a run: its id is the run id.
pub fn run_trace_id(run_id: RunId) -> TraceId {
    TraceId::from_bytes(*run_id.as_uuid().as_bytes())
}

/// The span id of a run's own span (the root of its trace).
pub fn run_span_id(run_id: RunId) -> SpanId {
    derived_span_id(b"baton run", run_id.as_uuid().as_bytes())
}

/// The span id of the controller's span of an attempt.
pub fn attempt_span_id(attempt_id: AttemptId) -> SpanId {
    derived_span_id(b"baton attempt", attempt_id.as_uuid().as_bytes())
}

fn derived_span_id(tag: &[u8], id: &[u8]) -> SpanId {
    let digest = Sha256::new()
        .chain_update(tag)
        .chain_update([0])
        .chain_update(id)
        .finalize();
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&digest[..8]);
    if bytes == [0; 8] {
        // All zeros is the invalid span id.
        bytes[7] = 1;
    }
    SpanId::from_bytes(bytes)
}

/// The W3C `traceparent` of an attempt's span, which its `Assign` carries
/// so that the worker's span of the execution is its child: version 00,
/// the run's trace id, the attempt's span id, sampled. Written directly,
/// once per dispatch: it is the same text the W3C propagator writes.
pub fn attempt_traceparent(run_id: RunId, attempt_id: AttemptId) -> String {
    format!(
        "00-{}-{}-01",
        run_trace_id(run_id),
        attempt_span_id(attempt_id)
    )
}

/// A span whose subject ended, waiting for its record to be durable.
#[derive(Debug)]
pub struct FinishedSpan {
    builder: SpanBuilder,
    /// Set for a root span; a child takes its parent's.
    trace_id: Option<TraceId>,
    span_id: SpanId,
    parent: Option<SpanContext>,
    end: SystemTime,
    status: Status,
}

/// What an attempt's span says about it.
#[derive(Debug)]
pub struct AttemptSpanFields<'a> {
    pub dag_id: &'a str,
    pub run_id: RunId,
    pub task_id: &'a str,
    pub attempt: u32,
    pub attempt_id: AttemptId,
    pub worker_id: Option<&'a str>,
    pub leased_at: Micros,
    /// When the controller recorded the end: at or after the end the worker
    /// reported, so the span encloses the worker's.
    pub recorded_at: Micros,
    pub outcome: &'a str,
    pub failed: bool,
    pub exit_code: Option<i32>,
    pub error: Option<&'a str>,
}

/// What a run's span says about it.
#[derive(Debug)]
pub struct RunSpanFields<'a> {
    pub dag_id: &'a str,
    pub run_id: RunId,
    pub created_at: Micros,
    pub ended_at: Micros,
    pub state: &'a str,
    pub failed: bool,
    pub reason: Option<&'a str>,
}

impl FinishedSpan {
    /// The controller's span of an attempt that ended, a child of its run's
    /// span.
    pub fn attempt(fields: AttemptSpanFields<'_>) -> Self {
        let mut attributes = vec![
            KeyValue::new("dag_id", fields.dag_id.to_string()),
            KeyValue::new("run_id", fields.run_id.to_string()),
            KeyValue::new("task_id", fields.task_id.to_string()),
            KeyValue::new("attempt", i64::from(fields.attempt)),
            KeyValue::new("attempt_id", fields.attempt_id.to_string()),
            KeyValue::new("outcome", fields.outcome.to_string()),
        ];
        if let Some(worker_id) = fields.worker_id {
            attributes.push(KeyValue::new("worker_id", worker_id.to_string()));
        }
        if let Some(exit_code) = fields.exit_code {
            attributes.push(KeyValue::new("exit_code", i64::from(exit_code)));
        }
        let start = if fields.leased_at > 0 {
            fields.leased_at
        } else {
            fields.recorded_at
        };
        Self {
            builder: SpanBuilder::from_name("attempt")
                .with_start_time(micros_to_system_time(start))
                .with_attributes(attributes),
            trace_id: None,
            span_id: attempt_span_id(fields.attempt_id),
            parent: Some(SpanContext::new(
                run_trace_id(fields.run_id),
                run_span_id(fields.run_id),
                TraceFlags::SAMPLED,
                true,
                TraceState::NONE,
            )),
            end: micros_to_system_time(fields.recorded_at.max(start)),
            status: status(fields.failed, fields.error),
        }
    }

    /// A run's span, the root of its trace.
    pub fn run(fields: RunSpanFields<'_>) -> Self {
        let attributes = vec![
            KeyValue::new("dag_id", fields.dag_id.to_string()),
            KeyValue::new("run_id", fields.run_id.to_string()),
            KeyValue::new("state", fields.state.to_string()),
        ];
        Self {
            builder: SpanBuilder::from_name("run")
                .with_start_time(micros_to_system_time(fields.created_at))
                .with_attributes(attributes),
            trace_id: Some(run_trace_id(fields.run_id)),
            span_id: run_span_id(fields.run_id),
            parent: None,
            end: micros_to_system_time(fields.ended_at.max(fields.created_at)),
            status: status(fields.failed, fields.reason),
        }
    }
}

fn status(failed: bool, description: Option<&str>) -> Status {
    if failed {
        Status::error(description.unwrap_or_default().to_string())
    } else {
        Status::Unset
    }
}

/// Exports finished spans through the process's global tracer provider.
#[derive(Debug)]
pub struct RunTracer {
    tracer: global::BoxedTracer,
    // Whether a span already came out with other ids than announced (the
    // provider lacks `DerivedIdGenerator`); said once.
    warned: Cell<bool>,
}

impl Default for RunTracer {
    fn default() -> Self {
        Self {
            tracer: global::tracer(SCOPE),
            warned: Cell::new(false),
        }
    }
}

impl RunTracer {
    pub fn export(&self, finished: FinishedSpan) {
        let parent = match finished.parent {
            Some(parent) => Context::new().with_remote_span_context(parent),
            None => Context::new(),
        };
        ANNOUNCED_SPAN_ID.set(Some(finished.span_id));
        ANNOUNCED_TRACE_ID.set(finished.trace_id);
        let mut span = self.tracer.build_with_context(finished.builder, &parent);
        // Whatever the generator did not take must not leak into the next span.
        ANNOUNCED_SPAN_ID.set(None);
        ANNOUNCED_TRACE_ID.set(None);
        if span.span_context().span_id() != finished.span_id && !self.warned.replace(true) {
            warn!(
                "the tracer provider does not use the derived span ids; run traces will not nest"
            );
        }
        span.set_status(finished.status);
        span.end_with_timestamp(finished.end);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    #[test]
    fn ids_derive_from_the_run_and_attempt_ids() {
        let run_id = RunId::generate();
        let attempt_id = AttemptId::generate();
        assert_eq!(
            run_trace_id(run_id).to_string(),
            run_id.as_uuid().simple().to_string()
        );
        assert_eq!(run_span_id(run_id), run_span_id(run_id));
        assert_ne!(run_span_id(run_id), attempt_span_id(attempt_id));
        assert_ne!(run_span_id(run_id), SpanId::INVALID);
        let traceparent = attempt_traceparent(run_id, attempt_id);
        assert_eq!(
            traceparent,
            format!(
                "00-{}-{}-01",
                run_id.as_uuid().simple(),
                attempt_span_id(attempt_id)
            )
        );
        // What the W3C propagator writes for the same remote parent.
        let context = Context::new().with_remote_span_context(SpanContext::new(
            run_trace_id(run_id),
            attempt_span_id(attempt_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        ));
        let mut headers = std::collections::HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut headers);
        assert_eq!(headers.get("traceparent"), Some(&traceparent));
        assert_eq!(headers.get("tracestate"), Some(&String::new()));
    }
}
