//! Run traces: the OpenTelemetry spans of runs and attempts, built from
//! their records and queued on the process's [`SpanSink`] when the process
//! exports traces ([`ControllerConfig::traces`](crate::config::ControllerConfig)).
//! With it off, nothing here runs: no id is derived, no trace context is
//! sent to workers. An attempt's span and the derived ids are
//! `baton_common::traces`': the exporter builds an attempt's span from the
//! record the scheduler queues ([`SpanSink::encode_attempt`]).
//!
//! # Ids without state
//! A run is one trace whose id *is* the run id (a UUID is 128 bits, as a
//! trace id is). Span ids are derived too: the run span's from the run id,
//! an attempt span's from the attempt id ([`run_span_id`],
//! [`attempt_span_id`]: SplitMix64's finalizer over the UUID and a tag). So every
//! controller (a new leader after a failover included) and every worker
//! agrees on the ids without storing anything,
//! and an attempt's trace context can be sent with its `Assign` before its
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
//!     └── execute          worker: the execution, a child through Assign.trace_context; worker_id, outcome
//! ```

use baton_common::ids::{AttemptId, RunId};
use baton_common::pb::api::TraceContext;
use baton_common::time::{Micros, micros_to_system_time};
use baton_common::traces::{
    Attribute, Attributes, SpanRecord, attempt_span_id, run_span_id, run_trace_id, status,
    trace_context,
};
use opentelemetry::trace::{SpanId, TraceId};
use sha2::{Digest, Sha256};

#[cfg(doc)]
use baton_common::traces::SpanSink;

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

/// The W3C trace context of an attempt's span, which its `Assign` carries
/// so that the worker's span of the execution is its child, sampled or not
/// as the run is.
pub fn attempt_trace_context(run_id: RunId, attempt_id: AttemptId, sampled: bool) -> TraceContext {
    trace_context(run_trace_id(run_id), attempt_span_id(attempt_id), sampled)
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
    use baton_common::pb::api::AttemptOutcome;
    use baton_common::traces::{
        AttemptIdentity, AttemptSpanFields, AttributeValue, SpanStatus, attempt_span,
        sampled_parent,
    };

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
        let context = attempt_trace_context(run_id, attempt_id, true);
        let run_uuid = run_id.as_uuid().as_u128();
        assert_eq!(context.trace_id_high, (run_uuid >> 64) as u64);
        assert_eq!(context.trace_id_low, run_uuid as u64);
        assert_eq!(
            format!("{:016x}", context.parent_id),
            attempt_span_id(attempt_id).to_string()
        );
        assert_eq!(context.trace_flags, 1);
        assert_eq!(
            sampled_parent(&context),
            Some((run_trace_id(run_id), attempt_span_id(attempt_id)))
        );
        assert_eq!(
            sampled_parent(&attempt_trace_context(run_id, attempt_id, false)),
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
