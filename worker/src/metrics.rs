//! [`WorkerMetrics`]: the worker agent's own Prometheus metrics
//! (`baton_agent_…`), what `baton worker --metrics-listen` serves and what
//! `baton dev` adds to its controller's `/metrics`.
//!
//! The agent's event loop records into atomics as things happen (an
//! attempt starts or ends, the stream registers or drops, log bytes go
//! out); a scrape only encodes them. The controller's view of the fleet is
//! its own `baton_worker_…` metrics; these say what one worker sees, so the
//! names differ and both can be served on one endpoint.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use baton_common::pb::api::AttemptOutcome;
use baton_common::states::outcome_name;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    worker_id: String,
    version: &'static str,
}

/// Attempt outcomes (`AttemptOutcome`'s values are 0 to 8).
const OUTCOMES: usize = 9;

/// Every metric of one worker agent.
pub struct WorkerMetrics {
    registry: Registry,
    slots: Gauge,
    running: Gauge,
    finished: Family<OutcomeLabels, Counter>,
    /// `finished`'s counter of each outcome, by the outcome's number, taken
    /// from the family at its first use: looking it up there at every
    /// attempt's end hashed its label each time.
    finished_by_outcome: [OnceLock<Counter>; OUTCOMES],
    duration: Histogram,
    connected: Gauge,
    registrations: Counter,
    draining: Gauge,
    held: Gauge,
    log_bytes_sent: Counter<u64, AtomicU64>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WorkerMetrics")
            .finish_non_exhaustive()
    }
}

impl WorkerMetrics {
    /// The metrics of the worker `worker_id` with `slots` slots, all zero.
    pub fn new(worker_id: &str, slots: u32) -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            slots: Gauge::default(),
            running: Gauge::default(),
            finished: Family::default(),
            finished_by_outcome: Default::default(),
            // 1 ms to about 9 hours, as the controller's task durations.
            duration: Histogram::new(exponential_buckets(0.001, 2.5, 18)),
            connected: Gauge::default(),
            registrations: Counter::default(),
            draining: Gauge::default(),
            held: Gauge::default(),
            log_bytes_sent: Counter::default(),
        };
        metrics.slots.set(i64::from(slots));
        metrics.registry.register(
            "baton_agent",
            "The worker's identity and version",
            Info::new(IdentityLabels {
                worker_id: worker_id.to_string(),
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        metrics.registry.register(
            "baton_agent_slots",
            "Attempts this worker runs at once, at most",
            metrics.slots.clone(),
        );
        metrics.registry.register(
            "baton_agent_running_attempts",
            "Attempts running on this worker (noops end at once and are not counted)",
            metrics.running.clone(),
        );
        metrics.registry.register(
            "baton_agent_attempts_finished",
            "Attempts this worker ran to an end, by outcome",
            metrics.finished.clone(),
        );
        metrics.registry.register(
            "baton_agent_attempt_duration_seconds",
            "Time from an attempt's start to its end on this worker",
            metrics.duration.clone(),
        );
        metrics.registry.register(
            "baton_agent_connected",
            "1 while the worker is registered with a leading controller",
            metrics.connected.clone(),
        );
        metrics.registry.register(
            "baton_agent_registrations",
            "Times the worker registered with a controller (reconnections are this minus one)",
            metrics.registrations.clone(),
        );
        metrics.registry.register(
            "baton_agent_draining",
            "1 once the worker drains (takes no new work)",
            metrics.draining.clone(),
        );
        metrics.registry.register(
            "baton_agent_unacknowledged_attempts",
            "Attempts running, or ended with a result or log the controller has not acknowledged",
            metrics.held.clone(),
        );
        metrics.registry.register(
            "baton_agent_log_sent_bytes",
            "Bytes of attempts' logs sent to the controller (resends included)",
            metrics.log_bytes_sent.clone(),
        );
        metrics
    }

    /// Appends the metrics' OpenMetrics families to `text`, without the
    /// closing `# EOF`: for an endpoint that serves other metrics too.
    pub fn encode_families(&self, text: &mut String) {
        let mark = text.len();
        if prometheus_client::encoding::text::encode_registry(text, &self.registry).is_err() {
            text.truncate(mark);
        }
    }

    /// The OpenMetrics text of every metric, `# EOF` included.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        self.encode_families(&mut text);
        text.push_str("# EOF\n");
        text
    }

    pub(crate) fn attempt_started(&self) {
        self.running.inc();
    }

    /// An attempt ended; `ran`: it was counted as running (not a noop, nor
    /// an assignment refused before it ran).
    pub(crate) fn attempt_finished(
        &self,
        outcome: AttemptOutcome,
        started_at: SystemTime,
        ended_at: SystemTime,
        ran: bool,
    ) {
        if ran {
            self.running.dec();
        }
        let from_family = || {
            self.finished
                .get_or_create(&OutcomeLabels {
                    outcome: outcome_name(outcome),
                })
                .clone()
        };
        match self.finished_by_outcome.get(outcome as usize) {
            Some(counter) => counter.get_or_init(from_family).inc(),
            None => from_family().inc(),
        };
        let seconds = ended_at
            .duration_since(started_at)
            .map(|duration| duration.as_secs_f64())
            .unwrap_or(0.0);
        self.duration.observe(seconds);
    }

    pub(crate) fn registered(&self) {
        self.connected.set(1);
        self.registrations.inc();
    }

    pub(crate) fn disconnected(&self) {
        self.connected.set(0);
    }

    pub(crate) fn draining(&self) {
        self.draining.set(1);
    }

    pub(crate) fn held(&self, attempts: usize) {
        self.held.set(i64::try_from(attempts).unwrap_or(i64::MAX));
    }

    pub(crate) fn log_sent(&self, bytes: usize) {
        self.log_bytes_sent.inc_by(bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn encodes_what_was_recorded_and_ends_with_eof() {
        let metrics = WorkerMetrics::new("w-1", 8);
        metrics.registered();
        metrics.attempt_started();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        metrics.attempt_finished(
            AttemptOutcome::Failed,
            start,
            start + Duration::from_millis(1500),
            true,
        );
        // The second through the counter kept from the first.
        for _ in 0..2 {
            metrics.attempt_finished(AttemptOutcome::Succeeded, start, start, false);
        }
        metrics.log_sent(42);
        let text = metrics.encode();
        for line in [
            "baton_agent_info{worker_id=\"w-1\",version=",
            "baton_agent_slots 8\n",
            "baton_agent_running_attempts 0\n",
            "baton_agent_attempts_finished_total{outcome=\"failed\"} 1\n",
            "baton_agent_attempts_finished_total{outcome=\"succeeded\"} 2\n",
            "baton_agent_attempt_duration_seconds_count 3\n",
            "baton_agent_attempt_duration_seconds_sum 1.5\n",
            "baton_agent_connected 1\n",
            "baton_agent_registrations_total 1\n",
            "baton_agent_log_sent_bytes_total 42\n",
        ] {
            assert!(text.contains(line), "`{line}` missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);

        let mut families = String::new();
        metrics.encode_families(&mut families);
        assert!(!families.contains("# EOF"), "{families}");
    }
}
