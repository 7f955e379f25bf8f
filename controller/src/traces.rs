//! Run traces: the OpenTelemetry spans of runs and attempts, built from
//! their records and encoded for the process's [`SpanSink`] when the process
//! exports traces ([`ControllerConfig::traces`](crate::config::ControllerConfig)).
//! With it off, nothing here runs: no id is derived, no `traceparent` is
//! sent to workers.
//!
//! # Ids without state
//! A run is one trace whose id *is* the run id (a UUID is 128 bits, as a
//! trace id is). Span ids are derived too: the run span's from the run id,
//! an attempt span's from the attempt id (see [`derived_span_id`]). So every
//! controller (a new leader after a failover included) and every worker
//! agrees on the ids without storing anything,
//! and an attempt's `traceparent` can be sent with its `Assign` before its
//! span exists. Whether a run is sampled depends on its id alone
//! ([`run_sampling_id`], [`SpanSink::samples`]), so every leader agrees on
//! that too.
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
//! └── attempt              controller; dag_id, run_id, task_id, attempt, attempt_id, worker_id, outcome
//!     └── execute          worker: the execution, a child through Assign.traceparent; worker_id, outcome
//! ```

use baton_common::ids::{AttemptId, RunId};
use baton_common::pb::api::AttemptOutcome;
use baton_common::time::{Micros, micros_to_system_time};
use baton_common::traces::{
    AttemptIdentity, Attribute, Attributes, SpanRecord, attempt_attributes, status, traceparent,
};
use opentelemetry::trace::{SpanId, TraceId};
use sha2::{Digest, Sha256};

#[cfg(doc)]
use baton_common::traces::SpanSink;

/// The trace of a run: its id is the run id.
pub fn run_trace_id(run_id: RunId) -> TraceId {
    TraceId::from_bytes(*run_id.as_uuid().as_bytes())
}

/// The trace id the sampler decides a run on: 16 bytes of a SHA-256 of the
/// run id. The SDK's ratio sampler reads a trace id's low 8 bytes as a
/// uniform number, but those of a run id (a UUID v7) are not: they start
/// with the variant bits, always `10`, and a counter that keeps ids ordered
/// within a millisecond, so a ratio sampler given the run id itself keeps
/// no run below a ratio of 0.5 and all of them from 0.75.
pub fn run_sampling_id(run_id: RunId) -> TraceId {
    let digest = tagged_digest(b"baton sample", run_id.as_uuid().as_bytes());
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&digest[..16]);
    TraceId::from_bytes(bytes)
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

/// SHA-256 of a tag and an id: ids derived from one id for different
/// uses differ.
fn tagged_digest(tag: &[u8], id: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(tag)
        .chain_update([0])
        .chain_update(id)
        .finalize()
        .into()
}

/// A span id from a tag and a UUID: both halves of the UUID mixed with
/// SplitMix64's finalizer, a bijection, so two ids that share a half never
/// collide and others collide with a chance of 2⁻⁶⁴. It is computed twice
/// per attempt (its `traceparent`, its span), so it is a few
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

/// The W3C `traceparent` of an attempt's span, which its `Assign` carries
/// so that the worker's span of the execution is its child, sampled or not
/// as the run is.
pub fn attempt_traceparent(run_id: RunId, attempt_id: AttemptId, sampled: bool) -> String {
    traceparent(run_trace_id(run_id), attempt_span_id(attempt_id), sampled)
}

/// What an attempt's span says about it.
#[derive(Debug)]
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

/// What a run's span says about it.
#[derive(Debug)]
pub struct RunSpanFields<'a> {
    pub dag_id: &'a str,
    pub run_id: RunId,
    pub created_at: Micros,
    pub ended_at: Micros,
    pub state: &'static str,
    pub failed: bool,
    pub reason: Option<&'a str>,
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

/// A run's span, the root of its trace.
pub fn run_span(fields: RunSpanFields<'_>) -> SpanRecord<'_> {
    let mut attributes = Attributes::new();
    attributes.push(Attribute::str("dag_id", fields.dag_id));
    attributes.push(Attribute::uuid("run_id", *fields.run_id.as_uuid()));
    attributes.push(Attribute::str("state", fields.state));
    SpanRecord {
        trace_id: run_trace_id(fields.run_id),
        span_id: run_span_id(fields.run_id),
        parent_span_id: SpanId::INVALID,
        parent_is_remote: false,
        name: "run",
        start: micros_to_system_time(fields.created_at),
        end: micros_to_system_time(fields.ended_at.max(fields.created_at)),
        attributes,
        status: status(fields.failed, fields.reason),
    }
}

#[cfg(test)]
mod tests {
    use baton_common::traces::{AttributeValue, SpanStatus, sampled_parent};

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
        let traceparent = attempt_traceparent(run_id, attempt_id, true);
        assert_eq!(
            traceparent,
            format!(
                "00-{}-{}-01",
                run_id.as_uuid().simple(),
                attempt_span_id(attempt_id)
            )
        );
        assert_eq!(
            sampled_parent(&traceparent),
            Some((run_trace_id(run_id), attempt_span_id(attempt_id)))
        );
        assert_eq!(
            sampled_parent(&attempt_traceparent(run_id, attempt_id, false)),
            None
        );
    }

    #[test]
    fn a_ratio_sampler_keeps_that_share_of_runs() {
        use opentelemetry::trace::SpanKind;
        use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};

        for ratio in [0.1, 0.5, 0.9] {
            let sampler = Sampler::TraceIdRatioBased(ratio);
            let runs = 10_000;
            let kept = (0..runs)
                .filter(|_| {
                    let id = run_sampling_id(RunId::generate());
                    let result =
                        sampler.should_sample(None, id, "run", &SpanKind::Internal, &[], &[]);
                    result.decision == SamplingDecision::RecordAndSample
                })
                .count();
            let share = kept as f64 / f64::from(runs);
            // The binomial spread at 10,000 runs is at most 0.005.
            assert!(
                (share - ratio).abs() < 0.03,
                "ratio {ratio}: kept {share} of the runs"
            );
        }
    }

    #[test]
    fn an_attempt_span_is_a_child_of_its_run_span() {
        let run_id = RunId::generate();
        let attempt_id = AttemptId::generate();
        let run = run_span(RunSpanFields {
            dag_id: "etl",
            run_id,
            created_at: 1_000,
            ended_at: 9_000,
            state: "success",
            failed: false,
            reason: None,
        });
        let attempt = attempt_span(AttemptSpanFields {
            identity: AttemptIdentity {
                dag_id: "etl",
                run_id,
                task_id: "load",
                attempt: 2,
                attempt_id,
                worker_id: Some("w1"),
            },
            leased_at: 2_000,
            recorded_at: 3_000,
            outcome: AttemptOutcome::Failed,
            exit_code: Some(3),
            error: Some("exit code 3"),
        });
        assert_eq!(run.parent_span_id, SpanId::INVALID);
        assert_eq!(attempt.trace_id, run.trace_id);
        assert_eq!(attempt.parent_span_id, run.span_id);
        assert!(run.start <= attempt.start && attempt.end <= run.end);
        let attribute = |key: &str| {
            attempt
                .attributes
                .as_slice()
                .iter()
                .find(|attribute| attribute.key == key)
                .map(|attribute| attribute.value)
        };
        assert_eq!(attribute("task_id"), Some(AttributeValue::Str("load")));
        assert_eq!(attribute("attempt"), Some(AttributeValue::Int(2)));
        assert_eq!(attribute("exit_code"), Some(AttributeValue::Int(3)));
        assert_eq!(attribute("worker_id"), Some(AttributeValue::Str("w1")));
        assert_eq!(attempt.status, SpanStatus::Error("exit code 3"));
    }
}
