//! The spans Baton builds from its own records (a run, an attempt, a
//! worker's execution of an attempt), encoded in the OTLP wire format where
//! they end and queued for the process's exporter, with the ids, times and
//! attributes they must have.
//!
//! These are most of a process's spans (two per attempt), so they skip
//! everything the SDK does for a span: no `Span` object, no id generator, no
//! context, no `SpanData` with its attribute vector and strings. A span is
//! borrowed fields ([`SpanRecord`]) written as protobuf into a chunk of the
//! [`SpanQueue`], which the exporter sends as it is. Nothing here runs when
//! traces are off: whoever would export holds no [`SpanSink`].
//!
//! # Sampling whole runs
//! A run is a trace. Every span of it is kept or dropped together: the
//! controller asks the process's sampler (`OTEL_TRACES_SAMPLER`) once per
//! run, as if for the root of a trace, about an id derived from the run
//! id; the standard samplers decide on that id alone, so every controller
//! agrees. A worker follows the sampled flag of the trace context its
//! `Assign` carries.
//!
//! # Layout
//! - `otlp`: the wire format of spans, scopes, resources and requests.
//! - `queue`: the bounded queue of encoded spans the exporter drains.

mod attempt;
mod otlp;
mod queue;
mod record;

use std::fmt;
use std::sync::Arc;

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, SamplingDecision, ShouldSample,
};

pub use attempt::{AttemptSpanFields, attempt_span, attempt_span_id, run_span_id, run_trace_id};
pub use otlp::{Attribute, AttributeValue, EncodedResource, SpanRecord, SpanStatus};
pub use queue::{Chunk, EncodedSpans, QueueLimits, QueueProcessor, SpanQueue};

use crate::ids::{AttemptId, RunId};
use crate::pb::api::{self, AttemptOutcome};
use crate::states::{outcome_is_failure, outcome_name};

/// The instrumentation scope of the controller's spans.
pub const CONTROLLER_SCOPE: &str = "baton-controller";
/// The instrumentation scope of the worker's spans.
pub const WORKER_SCOPE: &str = "baton-worker";

/// Where the spans a process builds itself go: its span queue, with its
/// sampler and the instrumentation scope that names the component. Cheap
/// to clone.
#[derive(Clone)]
pub struct SpanSink {
    queue: Arc<SpanQueue>,
    sampler: Arc<dyn ShouldSample>,
    scope: Arc<queue::ScopeQueue>,
}

impl fmt::Debug for SpanSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SpanSink")
            .field("scope", &self.scope.name())
            .finish_non_exhaustive()
    }
}

impl SpanSink {
    /// `scope` names the component whose spans go through this sink.
    pub fn new(queue: Arc<SpanQueue>, sampler: Box<dyn ShouldSample>, scope: &'static str) -> Self {
        Self {
            scope: queue.scope(scope, ""),
            queue,
            sampler: Arc::from(sampler),
        }
    }

    /// The same queue and sampler, for another component of the process
    /// (`baton dev`'s worker).
    pub fn with_scope(&self, scope: &'static str) -> Self {
        Self {
            scope: self.queue.scope(scope, ""),
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

    /// Queues the span for export; never blocks (what the queue cannot hold
    /// is dropped). Callers check [`SpanSink::samples`] first.
    pub fn export(&self, span: &SpanRecord<'_>) {
        self.queue.push(&self.scope, &span.message());
    }

    /// Encodes the span into `spans`, to be queued later with
    /// [`SpanSink::export_encoded`] of this sink (the controller's spans
    /// wait for the batch that stores what they describe).
    pub fn encode(&self, span: &SpanRecord<'_>, spans: &mut EncodedSpans) {
        if !spans.push(&span.message()) {
            self.queue.count_dropped(1);
        }
    }

    /// Queues the worker's span of an execution ([`execution_span`], with a
    /// span id drawn now), as [`SpanSink::export`] does.
    pub fn export_execution(&self, fields: &ExecutionSpanFields<'_>) {
        let span_id = RandomIdGenerator::default().new_span_id();
        self.queue.push_execution(&self.scope, fields, span_id);
    }

    /// Encodes the controller's span of an attempt into `spans`, as
    /// [`SpanSink::encode`] does.
    pub fn encode_attempt(&self, fields: &AttemptSpanFields<'_>, spans: &mut EncodedSpans) {
        if !spans.push_attempt(fields) {
            self.queue.count_dropped(1);
        }
    }

    /// Queues spans encoded by [`SpanSink::encode`] and
    /// [`SpanSink::encode_attempt`]; `spans` is left empty, with its
    /// capacity.
    pub fn export_encoded(&self, spans: &mut EncodedSpans) {
        self.queue.push_encoded(&self.scope, spans);
    }
}

/// At most this many attributes on a span built from a record.
const MAX_ATTRIBUTES: usize = 8;

/// The attributes of a span built from a record, on the stack.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    items: [Attribute<'a>; MAX_ATTRIBUTES],
    len: usize,
}

impl<'a> Attributes<'a> {
    pub const fn new() -> Self {
        Self {
            items: [Attribute::int("", 0); MAX_ATTRIBUTES],
            len: 0,
        }
    }

    /// Adds an attribute. Baton's spans have at most eight; a ninth would
    /// be a bug here, and is left out rather than failing the export.
    pub fn push(&mut self, attribute: Attribute<'a>) {
        debug_assert!(self.len < MAX_ATTRIBUTES, "too many span attributes");
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = attribute;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[Attribute<'a>] {
        &self.items[..self.len]
    }
}

impl Default for Attributes<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// What names an attempt, on the controller's span of it and the worker's
/// alike.
#[derive(Debug, Clone, Copy)]
pub struct AttemptIdentity<'a> {
    pub dag_id: &'a str,
    pub run_id: RunId,
    pub task_id: &'a str,
    pub attempt: u32,
    pub attempt_id: AttemptId,
    pub worker_id: Option<&'a str>,
}

/// The attributes naming an attempt and how it ended (`outcome`,
/// `exit_code`), and the span's status: an error, with the attempt's error,
/// when it failed for a reason of its own.
pub fn attempt_attributes<'a>(
    identity: &AttemptIdentity<'a>,
    outcome: AttemptOutcome,
    exit_code: Option<i32>,
    error: Option<&'a str>,
) -> (Attributes<'a>, SpanStatus<'a>) {
    let mut attributes = Attributes::new();
    attributes.push(Attribute::str("dag_id", identity.dag_id));
    attributes.push(Attribute::uuid("run_id", *identity.run_id.as_uuid()));
    attributes.push(Attribute::str("task_id", identity.task_id));
    attributes.push(Attribute::int("attempt", i64::from(identity.attempt)));
    attributes.push(Attribute::uuid(
        "attempt_id",
        *identity.attempt_id.as_uuid(),
    ));
    push_outcome(&mut attributes, identity.worker_id, outcome, exit_code);
    (attributes, status(outcome_is_failure(outcome), error))
}

/// What a worker's span of an execution says: its parent (the
/// controller's span of the attempt, from the `Assign`'s trace context),
/// its times, who ran it and how it ended.
#[derive(Debug, Clone, Copy)]
pub struct ExecutionSpanFields<'a> {
    pub trace_id: TraceId,
    pub parent_span_id: SpanId,
    pub start: std::time::SystemTime,
    pub end: std::time::SystemTime,
    pub worker_id: &'a str,
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    pub error: Option<&'a str>,
}

/// The worker's `execute` span, a child of another process's span, with
/// `span_id` (random, drawn by [`SpanSink::export_execution`]). Its
/// attributes are what the worker adds to its parent, which names the
/// attempt (dag, run, task, attempt and attempt ids).
/// Repeating those on the child would add about half its bytes to every
/// trace for no question a trace view cannot already answer.
pub fn execution_span(fields: ExecutionSpanFields<'_>, span_id: SpanId) -> SpanRecord<'_> {
    let mut attributes = Attributes::new();
    push_outcome(
        &mut attributes,
        Some(fields.worker_id),
        fields.outcome,
        fields.exit_code,
    );
    SpanRecord {
        trace_id: fields.trace_id,
        span_id,
        parent_span_id: fields.parent_span_id,
        parent_is_remote: true,
        name: "execute",
        start: fields.start,
        end: fields.end,
        attributes,
        status: status(outcome_is_failure(fields.outcome), fields.error),
    }
}

/// Who ran an attempt and how it ended.
fn push_outcome<'a>(
    attributes: &mut Attributes<'a>,
    worker_id: Option<&'a str>,
    outcome: AttemptOutcome,
    exit_code: Option<i32>,
) {
    if let Some(worker_id) = worker_id {
        attributes.push(Attribute::str("worker_id", worker_id));
    }
    attributes.push(Attribute::str("outcome", outcome_name(outcome)));
    if let Some(exit_code) = exit_code {
        attributes.push(Attribute::int("exit_code", i64::from(exit_code)));
    }
}

/// A span's status: an error with its description, or unset.
pub fn status(failed: bool, description: Option<&str>) -> SpanStatus<'_> {
    if failed {
        SpanStatus::Error(description.unwrap_or_default())
    } else {
        SpanStatus::Unset
    }
}

/// The W3C trace context of a span, for an `Assign`: its trace and span
/// ids, and whether the trace is sampled, as the numbers a version-00
/// `traceparent` spells in hex (tested against the SDK's propagator).
/// Numbers, not the header's text: the controller writes one per dispatch
/// and the worker reads one per assignment, and hex text cost them more
/// than the execution's span (formatted, allocated, sent, decoded as UTF-8
/// and parsed).
pub fn trace_context(trace_id: TraceId, span_id: SpanId, sampled: bool) -> api::TraceContext {
    let trace_id = u128::from_be_bytes(trace_id.to_bytes());
    api::TraceContext {
        trace_id_high: (trace_id >> 64) as u64,
        trace_id_low: trace_id as u64,
        parent_id: u64::from_be_bytes(span_id.to_bytes()),
        trace_flags: if sampled { SAMPLED_FLAG } else { 0 },
        trace_state: String::new(),
    }
}

/// W3C `trace-flags`' `sampled` bit.
const SAMPLED_FLAG: u32 = 1;

/// The parent span a trace context names, when it is valid (ids not all
/// zeros, flags one byte) and sampled; `None` otherwise.
pub fn sampled_parent(context: &api::TraceContext) -> Option<(TraceId, SpanId)> {
    let trace_id = u128::from(context.trace_id_high) << 64 | u128::from(context.trace_id_low);
    let valid = trace_id != 0 && context.parent_id != 0 && context.trace_flags <= 0xff;
    (valid && context.trace_flags & SAMPLED_FLAG != 0).then(|| {
        (
            TraceId::from_bytes(trace_id.to_be_bytes()),
            SpanId::from_bytes(context.parent_id.to_be_bytes()),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{
        Event, Link, SpanContext, Status, TraceContextExt, TraceFlags, TraceState,
    };
    use opentelemetry::{Context, InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::{Span, status};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{Sampler, SpanData, SpanEvents, SpanLinks, SpanProcessor};
    use prost::Message as _;

    use super::*;

    const LIMITS: QueueLimits = QueueLimits {
        max_queued: 100,
        max_batch: 10,
    };

    fn resource() -> EncodedResource {
        EncodedResource::new(
            &Resource::builder_empty()
                .with_service_name("baton-test")
                .build(),
        )
    }

    /// Every chunk the queue holds, as the requests the exporter would send.
    fn requests(queue: &SpanQueue) -> Vec<ExportTraceServiceRequest> {
        let mut requests = Vec::new();
        let mut buf = Vec::new();
        while let Some(chunk) = queue.take(true) {
            queue.request(&chunk, &resource(), &mut buf);
            requests.push(ExportTraceServiceRequest::decode(buf.as_slice()).unwrap());
            queue.recycle(chunk);
        }
        requests
    }

    /// The spans of the requests, with their scope names.
    fn spans(requests: &[ExportTraceServiceRequest]) -> Vec<(String, Span)> {
        requests
            .iter()
            .flat_map(|request| &request.resource_spans)
            .flat_map(|resource_spans| &resource_spans.scope_spans)
            .flat_map(|scope_spans| {
                let scope = scope_spans.scope.as_ref().unwrap().name.clone();
                scope_spans
                    .spans
                    .iter()
                    .map(move |span| (scope.clone(), span.clone()))
            })
            .collect()
    }

    fn attribute(span: &Span, key: &str) -> Option<any_value::Value> {
        span.attributes
            .iter()
            .find(|attribute| attribute.key == key)
            .and_then(|attribute| attribute.value.clone()?.value)
    }

    #[test]
    fn trace_context_spells_what_the_w3c_propagator_writes_and_reads_back() {
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
            let written = trace_context(trace_id, span_id, sampled);
            // The header the proto's comment spells from the numbers.
            let spelled = format!(
                "00-{:016x}{:016x}-{:016x}-{:02x}",
                written.trace_id_high, written.trace_id_low, written.parent_id, written.trace_flags
            );
            assert_eq!(headers.get("traceparent"), Some(&spelled));
            assert_eq!(written.trace_state, "");
            let parent = sampled_parent(&written);
            assert_eq!(parent, sampled.then_some((trace_id, span_id)));
        }
    }

    #[test]
    fn an_invalid_or_unsampled_trace_context_names_no_parent() {
        let valid = trace_context(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            true,
        );
        assert!(sampled_parent(&valid).is_some());
        type Change = fn(&mut api::TraceContext);
        let cases: [(&str, Change); 6] = [
            ("unset", |context| *context = api::TraceContext::default()),
            ("trace id all zeros", |context| {
                context.trace_id_high = 0;
                context.trace_id_low = 0;
            }),
            ("parent id all zeros", |context| context.parent_id = 0),
            ("not sampled", |context| context.trace_flags = 0),
            ("flags wider than a byte", |context| {
                context.trace_flags = 0x101
            }),
            ("unknown flags without sampled", |context| {
                context.trace_flags = 0x02
            }),
        ];
        for (case, change) in cases {
            let mut context = valid.clone();
            change(&mut context);
            assert_eq!(sampled_parent(&context), None, "{case}");
        }
        // Only one half of the trace id zero is still a valid id, and
        // flags W3C has not defined yet are ignored.
        let still_valid: [Change; 3] = [
            |context| context.trace_id_high = 0,
            |context| context.trace_id_low = 0,
            |context| context.trace_flags = 0xff,
        ];
        for change in still_valid {
            let mut context = valid.clone();
            change(&mut context);
            assert!(sampled_parent(&context).is_some(), "{context:?}");
        }
    }

    #[test]
    fn a_span_record_reaches_the_request_with_its_ids_times_attributes_and_scope() {
        let queue = SpanQueue::new(LIMITS);
        let sink = SpanSink::new(queue.clone(), Box::new(Sampler::AlwaysOn), "baton-test");
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let run_id = RunId::generate();
        let attempt_id = AttemptId::generate();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        assert!(sink.samples(trace_id));
        let identity = AttemptIdentity {
            dag_id: "etl",
            run_id,
            task_id: "load",
            attempt: 2,
            attempt_id,
            worker_id: Some("w1"),
        };
        // A negative int64 and a message past 127 bytes take varints of
        // more than one byte.
        let error = format!("killed: {}", "x".repeat(300));
        let (attributes, status) =
            attempt_attributes(&identity, AttemptOutcome::Failed, Some(-9), Some(&error));
        sink.with_scope("baton-other").export(&SpanRecord {
            trace_id,
            span_id: SpanId::from_bytes(7u64.to_be_bytes()),
            parent_span_id: SpanId::from_bytes(3u64.to_be_bytes()),
            parent_is_remote: true,
            name: "execute",
            start,
            // Before the start: clamped to it.
            end: start - Duration::from_secs(1),
            attributes,
            status,
        });
        let requests = requests(&queue);
        let [(scope, span)] = spans(&requests).try_into().unwrap();
        assert_eq!(scope, "baton-other");
        let resource = requests[0].resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
        assert_eq!(span.trace_id, trace_id.to_bytes());
        assert_eq!(span.span_id, 7u64.to_be_bytes());
        assert_eq!(span.parent_span_id, 3u64.to_be_bytes());
        // Sampled, with a remote parent.
        assert_eq!(span.flags, 0x301);
        assert_eq!(span.name, "execute");
        assert_eq!(span.kind, 1);
        assert_eq!(span.start_time_unix_nano, 10_000_000_000);
        assert_eq!(span.end_time_unix_nano, 10_000_000_000);
        let text = |value: &str| Some(any_value::Value::StringValue(value.to_string()));
        assert_eq!(attribute(&span, "dag_id"), text("etl"));
        assert_eq!(attribute(&span, "run_id"), text(&run_id.to_string()));
        assert_eq!(attribute(&span, "task_id"), text("load"));
        assert_eq!(
            attribute(&span, "attempt"),
            Some(any_value::Value::IntValue(2))
        );
        assert_eq!(
            attribute(&span, "attempt_id"),
            text(&attempt_id.to_string())
        );
        assert_eq!(attribute(&span, "worker_id"), text("w1"));
        assert_eq!(attribute(&span, "outcome"), text("failed"));
        assert_eq!(
            attribute(&span, "exit_code"),
            Some(any_value::Value::IntValue(-9))
        );
        let status = span.status.unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, error);
    }

    /// An SDK span with a value of every kind, an event and a link.
    fn sdk_span(index: u64) -> SpanData {
        let context = |trace: u128, span: u64| {
            SpanContext::new(
                TraceId::from_bytes(trace.to_be_bytes()),
                SpanId::from_bytes(span.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::from_key_value([("vendor", "x")]).unwrap(),
            )
        };
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + index);
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "retrying",
            start + Duration::from_millis(1),
            vec![KeyValue::new("delay_s", 1.5)],
            2,
        ));
        let mut links = SpanLinks::default();
        links.links.push(Link::with_context(context(9, 9)));
        SpanData {
            span_context: context(0xabc, 100 + index),
            parent_span_id: SpanId::from_bytes(5u64.to_be_bytes()),
            parent_span_is_remote: false,
            span_kind: opentelemetry::trace::SpanKind::Server,
            name: "TriggerRun".into(),
            start_time: start,
            end_time: start + Duration::from_millis(3),
            attributes: vec![
                KeyValue::new("text", "value"),
                KeyValue::new("count", -7_i64),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("flag", true),
                KeyValue::new(
                    "list",
                    opentelemetry::Value::Array(opentelemetry::Array::String(vec![
                        "a".into(),
                        "b".into(),
                    ])),
                ),
                KeyValue::new("empty", ""),
            ],
            dropped_attributes_count: 1,
            events,
            links,
            status: Status::error("refused"),
            instrumentation_scope: InstrumentationScope::builder("baton")
                .with_version("1.2")
                .build(),
        }
    }

    #[test]
    fn an_sdk_span_is_encoded_as_the_otlp_crate_converts_it() {
        let queue = SpanQueue::new(LIMITS);
        let span = sdk_span(0);
        queue.processor().on_end(span.clone());
        let requests = requests(&queue);
        let scope_spans = &requests[0].resource_spans[0].scope_spans[0];
        let scope = scope_spans.scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("baton", "1.2")
        );
        assert_eq!(scope_spans.spans, vec![Span::from(span)]);
    }

    #[test]
    fn batons_and_the_sdks_spans_of_one_scope_share_a_request_in_the_order_they_ended() {
        let queue = SpanQueue::new(LIMITS);
        let sink = SpanSink {
            scope: queue.scope("baton", "1.2"),
            queue: queue.clone(),
            sampler: Arc::new(Sampler::AlwaysOn),
        };
        let sdk = sdk_span(0);
        sink.export(&plain_record(1));
        queue.processor().on_end(sdk.clone());
        let mut encoded = EncodedSpans::default();
        sink.encode(&plain_record(2), &mut encoded);
        sink.encode(&plain_record(3), &mut encoded);
        sink.export_encoded(&mut encoded);
        assert!(encoded.is_empty());
        let requests = requests(&queue);
        assert_eq!(requests.len(), 1);
        let spans: Vec<Span> = spans(&requests)
            .into_iter()
            .map(|(scope, span)| {
                assert_eq!(scope, "baton");
                span
            })
            .collect();
        assert_eq!(spans.len(), 4);
        assert_eq!(spans[1], Span::from(sdk));
        for (span, index) in [(&spans[0], 1u64), (&spans[2], 2), (&spans[3], 3)] {
            assert_eq!(span.span_id, index.to_be_bytes());
            assert_eq!(span.name, "attempt");
        }
    }

    #[test]
    fn attempt_and_execution_records_reach_the_request_as_the_spans_of_their_fields() {
        let identity = AttemptIdentity {
            dag_id: "etl",
            run_id: RunId::generate(),
            task_id: "load",
            attempt: 2,
            attempt_id: AttemptId::generate(),
            worker_id: Some("w1"),
        };
        let attempt = AttemptSpanFields {
            identity,
            leased_at: 1_700_000_000_000_000,
            recorded_at: 1_700_000_000_250_000,
            outcome: AttemptOutcome::Failed,
            exit_code: Some(3),
            error: Some("exit code 3"),
        };
        let execution = ExecutionSpanFields {
            trace_id: run_trace_id(identity.run_id),
            parent_span_id: attempt_span_id(identity.attempt_id),
            start: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_010_000),
            end: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_200_000),
            worker_id: "w1",
            outcome: AttemptOutcome::Failed,
            exit_code: Some(3),
            error: Some("exit code 3"),
        };
        // As records, the way the scheduler and the worker queue them.
        let queue = SpanQueue::new(LIMITS);
        let sink = SpanSink::new(queue.clone(), Box::new(Sampler::AlwaysOn), "baton-test");
        let mut pending = EncodedSpans::default();
        sink.encode_attempt(&attempt, &mut pending);
        sink.export_encoded(&mut pending);
        sink.export_execution(&execution);
        let recorded = spans(&requests(&queue));
        // As the spans built from the same fields, queued whole.
        let built_queue = SpanQueue::new(LIMITS);
        let built_sink = SpanSink::new(
            built_queue.clone(),
            Box::new(Sampler::AlwaysOn),
            "baton-test",
        );
        built_sink.export(&attempt_span(attempt));
        built_sink.export(&execution_span(execution, SpanId::from_bytes([9; 8])));
        let mut built = spans(&requests(&built_queue));
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[0], built[0]);
        // The execution's span id is drawn: all else is the same.
        assert_ne!(recorded[1].1.span_id, [0; 8]);
        built[1].1.span_id.clone_from(&recorded[1].1.span_id);
        assert_eq!(recorded[1], built[1]);
        assert_eq!(recorded[1].1.parent_span_id, recorded[0].1.span_id);
    }

    #[test]
    fn spans_queued_together_fill_the_last_chunk_then_new_ones_in_order() {
        let queue = SpanQueue::new(QueueLimits {
            max_queued: 100,
            max_batch: 4,
        });
        let sink = SpanSink::new(queue.clone(), Box::new(Sampler::AlwaysOn), "baton-test");
        for index in 1..=3 {
            sink.export(&plain_record(index));
        }
        let mut later = EncodedSpans::default();
        for index in 4..=10 {
            sink.encode(&plain_record(index), &mut later);
        }
        sink.export_encoded(&mut later);
        assert_eq!(queue.queued(), 10);
        let mut sizes = Vec::new();
        let mut ids = Vec::new();
        while let Some(chunk) = queue.take(true) {
            sizes.push(chunk.spans());
            let mut buf = Vec::new();
            queue.request(&chunk, &resource(), &mut buf);
            let request = ExportTraceServiceRequest::decode(buf.as_slice()).unwrap();
            ids.extend(
                spans(&[request])
                    .into_iter()
                    .map(|(_, span)| u64::from_be_bytes(span.span_id.try_into().unwrap())),
            );
            queue.recycle(chunk);
        }
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(ids, (1..=10).collect::<Vec<u64>>());
    }

    /// A span with an id and nothing else.
    fn plain_record(index: u64) -> SpanRecord<'static> {
        SpanRecord {
            trace_id: TraceId::from_bytes(1u128.to_be_bytes()),
            span_id: SpanId::from_bytes(index.to_be_bytes()),
            parent_span_id: SpanId::INVALID,
            parent_is_remote: false,
            name: "attempt",
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            attributes: Attributes::new(),
            status: SpanStatus::Unset,
        }
    }

    #[tokio::test]
    async fn half_a_queue_calls_for_an_export_before_the_schedule() {
        let queue = SpanQueue::new(QueueLimits {
            max_queued: 20,
            max_batch: 4,
        });
        let sink = SpanSink::new(queue.clone(), Box::new(Sampler::AlwaysOn), "baton-test");
        let called = async || {
            tokio::time::timeout(Duration::from_millis(20), queue.filled())
                .await
                .is_ok()
        };
        for index in 1..10 {
            sink.export(&plain_record(index));
        }
        assert!(!called().await, "9 of 20 spans queued");
        sink.export(&plain_record(10));
        assert!(called().await, "10 of 20 spans queued");
        // Once per crossing.
        sink.export(&plain_record(11));
        assert!(!called().await, "11 of 20 spans queued");
    }

    #[test]
    fn chunks_hold_one_request_each_and_a_full_queue_drops_and_counts() {
        let queue = SpanQueue::new(QueueLimits {
            max_queued: 25,
            max_batch: 10,
        });
        let controller = SpanSink::new(
            queue.clone(),
            Box::new(Sampler::AlwaysOn),
            "baton-controller",
        );
        let worker = controller.with_scope("baton-worker");
        // Half of them encoded first and queued together, as the
        // controller does once a batch is stored.
        let mut later = EncodedSpans::default();
        for index in 1..=30 {
            if index % 2 == 0 {
                worker.export(&plain_record(index));
            } else {
                controller.encode(&plain_record(index), &mut later);
            }
        }
        assert_eq!(later.len(), 15);
        controller.export_encoded(&mut later);
        assert!(later.is_empty());
        assert_eq!(queue.queued(), 25);
        assert_eq!(queue.dropped(), 5);
        // Each scope has its own chunks: the controller's ten admitted
        // spans fill one, the worker's fifteen one and a half. Whole ones
        // go first; the rest only when partial ones are taken.
        let ids = |requests: &[ExportTraceServiceRequest]| -> Vec<(String, u64)> {
            spans(requests)
                .into_iter()
                .map(|(scope, span)| (scope, u64::from_be_bytes(span.span_id.try_into().unwrap())))
                .collect()
        };
        let scoped = |scope: &str, ids: std::ops::RangeInclusive<u64>| -> Vec<(String, u64)> {
            ids.step_by(2).map(|id| (scope.to_string(), id)).collect()
        };
        let mut whole = Vec::new();
        while let Some(chunk) = queue.take(false) {
            let mut buf = Vec::new();
            queue.request(&chunk, &resource(), &mut buf);
            whole.push(ExportTraceServiceRequest::decode(buf.as_slice()).unwrap());
            queue.recycle(chunk);
        }
        // The controller's last five (21 to 29) were dropped.
        let mut expected = scoped("baton-controller", 1..=19);
        expected.extend(scoped("baton-worker", 2..=20));
        assert_eq!(ids(&whole), expected);
        assert_eq!(queue.queued(), 5);
        let rest = requests(&queue);
        assert_eq!(ids(&rest), scoped("baton-worker", 22..=30));
        assert_eq!(queue.queued(), 0);
    }

    #[test]
    fn a_ratio_sampler_keeps_or_drops_a_whole_trace() {
        let sink = SpanSink::new(
            SpanQueue::new(LIMITS),
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
