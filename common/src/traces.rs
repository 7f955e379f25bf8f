//! The spans Baton builds from its own records (a run, an attempt, a
//! worker's execution of an attempt) and hands straight to the process's
//! OpenTelemetry span processor, with the ids, times and attributes they
//! must have.
//!
//! These are most of a process's spans (two per attempt), so they skip
//! what the SDK's tracer does for a span it builds: no `Span` object, no
//! id generator, no context; one [`SpanData`] per span, queued for the
//! batch exporter, which converts, encodes and sends it on its own
//! threads. Nothing here runs when traces are off: whoever would export
//! holds no [`SpanSink`].
//!
//! # Sampling whole runs
//! A run is a trace. Every span of it is kept or dropped together: the
//! controller asks the process's sampler (`OTEL_TRACES_SAMPLER`) once per
//! run, as if for the root of a trace, about an id derived from the run
//! id; the standard samplers decide on that id alone, so every controller
//! agrees. A worker follows the sampled flag of the trace context its
//! `Assign` carries.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};

use crate::ids::{AttemptId, RunId};
use crate::pb::api::AttemptOutcome;
use crate::states::{outcome_is_failure, outcome_name};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{
    SamplingDecision, ShouldSample, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};

/// The instrumentation scope of the controller's spans.
pub const CONTROLLER_SCOPE: &str = "baton-controller";
/// The instrumentation scope of the worker's spans.
pub const WORKER_SCOPE: &str = "baton-worker";

/// Where the spans a process builds itself go: its span processor (the
/// batch exporter), with its sampler and the instrumentation scope that
/// names the component. Cheap to clone.
#[derive(Clone)]
pub struct SpanSink {
    processor: Arc<dyn SpanProcessor>,
    sampler: Arc<dyn ShouldSample>,
    scope: InstrumentationScope,
}

impl fmt::Debug for SpanSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SpanSink")
            .field("scope", &self.scope.name())
            .finish_non_exhaustive()
    }
}

/// A span whose subject has ended: everything it says.
#[derive(Debug)]
pub struct BuiltSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// [`SpanId::INVALID`] for the root of a trace.
    pub parent_span_id: SpanId,
    /// The parent was made by another process (the worker's execution
    /// span, whose parent is the controller's).
    pub parent_is_remote: bool,
    pub name: &'static str,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
}

impl SpanSink {
    /// `scope` names the component whose spans go through this sink.
    pub fn new(
        processor: Arc<dyn SpanProcessor>,
        sampler: Box<dyn ShouldSample>,
        scope: &'static str,
    ) -> Self {
        Self {
            processor,
            sampler: Arc::from(sampler),
            scope: InstrumentationScope::builder(scope).build(),
        }
    }

    /// The same processor and sampler, for another component of the
    /// process (`baton dev`'s worker).
    pub fn with_scope(&self, scope: &'static str) -> Self {
        Self {
            scope: InstrumentationScope::builder(scope).build(),
            ..self.clone()
        }
    }

    /// Whether the spans of this trace are kept: the sampler's decision
    /// for a root span of it.
    pub fn samples(&self, trace_id: TraceId) -> bool {
        let result =
            self.sampler
                .should_sample(None, trace_id, "run", &SpanKind::Internal, &[], &[]);
        matches!(result.decision, SamplingDecision::RecordAndSample)
    }

    /// Queues the span for export; never blocks (the processor drops what
    /// its queue cannot hold). Callers check [`SpanSink::samples`] first,
    /// before building the span.
    pub fn export(&self, span: BuiltSpan) {
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                span.trace_id,
                span.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: span.parent_span_id,
            parent_span_is_remote: span.parent_is_remote,
            span_kind: SpanKind::Internal,
            name: span.name.into(),
            start_time: span.start,
            end_time: span.end.max(span.start),
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: span.status,
            instrumentation_scope: self.scope.clone(),
        });
    }
}

/// The attributes naming an attempt, on the controller's span of it and
/// the worker's alike.
pub fn attempt_attributes(
    dag_id: &str,
    run_id: RunId,
    task_id: &str,
    attempt: u32,
    attempt_id: AttemptId,
    worker_id: Option<&str>,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(8);
    attributes.extend([
        KeyValue::new("dag_id", dag_id.to_string()),
        KeyValue::new("run_id", run_id.to_string()),
        KeyValue::new("task_id", task_id.to_string()),
        KeyValue::new("attempt", i64::from(attempt)),
        KeyValue::new("attempt_id", attempt_id.to_string()),
    ]);
    if let Some(worker_id) = worker_id {
        attributes.push(KeyValue::new("worker_id", worker_id.to_string()));
    }
    attributes
}

/// Adds how an attempt ended to its span's attributes (`outcome`,
/// `exit_code`) and gives the span's status: an error, with the attempt's
/// error, when it failed for a reason of its own.
pub fn attempt_outcome(
    attributes: &mut Vec<KeyValue>,
    outcome: AttemptOutcome,
    exit_code: Option<i32>,
    error: Option<&str>,
) -> Status {
    attributes.push(KeyValue::new("outcome", outcome_name(outcome)));
    if let Some(exit_code) = exit_code {
        attributes.push(KeyValue::new("exit_code", i64::from(exit_code)));
    }
    status(outcome_is_failure(outcome), error)
}

/// A span's status: an error with its description, or unset.
pub fn status(failed: bool, description: Option<&str>) -> Status {
    if failed {
        Status::error(description.unwrap_or_default().to_string())
    } else {
        Status::Unset
    }
}

/// The W3C `traceparent` of a span: version 00, its trace and span ids,
/// and whether the trace is sampled. Written directly, once per dispatch:
/// it is the same text the W3C propagator writes.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> String {
    let flags = if sampled { "01" } else { "00" };
    format!("00-{trace_id}-{span_id}-{flags}")
}

/// The parent a `traceparent` names, when it is valid (version 00, ids not
/// all zeros) and sampled; `None` otherwise.
pub fn sampled_parent(traceparent: &str) -> Option<(TraceId, SpanId)> {
    let mut parts = traceparent.split('-');
    let (Some("00"), Some(trace_id), Some(span_id), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID && flags & 1 == 1)
        .then_some((trace_id, span_id))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry::Context;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{Sampler, Span};

    use super::*;

    /// Keeps what it is given.
    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<SpanData>>);

    impl SpanProcessor for Kept {
        fn on_start(&self, _span: &mut Span, _cx: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    #[test]
    fn traceparent_is_what_the_w3c_propagator_writes_and_reads_back() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        for sampled in [true, false] {
            let flags = if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let context = Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                span_id,
                flags,
                true,
                TraceState::NONE,
            ));
            let mut headers = std::collections::HashMap::new();
            TraceContextPropagator::new().inject_context(&context, &mut headers);
            let written = traceparent(trace_id, span_id, sampled);
            assert_eq!(headers.get("traceparent"), Some(&written));
            let parent = sampled_parent(&written);
            assert_eq!(parent, sampled.then_some((trace_id, span_id)));
        }
    }

    #[test]
    fn a_malformed_or_unsampled_traceparent_names_no_parent() {
        for text in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(sampled_parent(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_span_goes_to_the_processor_with_its_ids_times_and_scope() {
        let kept = Arc::new(Kept::default());
        let sink = SpanSink::new(kept.clone(), Box::new(Sampler::AlwaysOn), "baton-test");
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10);
        assert!(sink.samples(trace_id));
        sink.with_scope("baton-other").export(BuiltSpan {
            trace_id,
            span_id: SpanId::from_bytes(7u64.to_be_bytes()),
            parent_span_id: SpanId::from_bytes(3u64.to_be_bytes()),
            parent_is_remote: true,
            name: "execute",
            start,
            // Before the start: clamped to it.
            end: start - std::time::Duration::from_secs(1),
            attributes: vec![KeyValue::new("task_id", "load")],
            status: status(true, Some("exit code 2")),
        });
        let spans = kept.0.lock().unwrap();
        let [span] = spans.as_slice() else {
            panic!("one span expected: {spans:?}");
        };
        assert_eq!(span.span_context.trace_id(), trace_id);
        assert_eq!(
            span.span_context.span_id(),
            SpanId::from_bytes(7u64.to_be_bytes())
        );
        assert!(span.span_context.is_sampled());
        assert_eq!(span.parent_span_id, SpanId::from_bytes(3u64.to_be_bytes()));
        assert!(span.parent_span_is_remote);
        assert_eq!(span.name, "execute");
        assert_eq!(span.end_time, start);
        assert_eq!(span.instrumentation_scope.name(), "baton-other");
        assert_eq!(span.status, Status::error("exit code 2"));
    }

    #[test]
    fn a_ratio_sampler_keeps_or_drops_a_whole_trace() {
        let sink = SpanSink::new(
            Arc::new(Kept::default()),
            Box::new(Sampler::TraceIdRatioBased(0.5)),
            "baton-test",
        );
        // The ratio sampler keeps a trace id whose low 8 bytes, as a number,
        // are below half of the range.
        let kept = TraceId::from_hex("ffffffffffffffff0000000000000001").unwrap();
        let dropped = TraceId::from_hex("0000000000000000ffffffffffffff00").unwrap();
        for _ in 0..3 {
            assert!(sink.samples(kept));
            assert!(!sink.samples(dropped));
        }
    }
}
