//! [`Agent`]: the worker's one event loop. It owns the [`Outbox`], the
//! [`Link`], the executor tasks and the HTTP client sensors share, and reacts to four sources: controller
//! messages, attempt events from the executors, the heartbeat timer and the
//! drain timers.
//!
//! Only this loop touches the outbox, and executors report through one
//! channel, so an attempt's events are seen in the order the executor
//! produced them. Log bytes are read back from the attempts' spools on
//! blocking threads (a fifth source: finished reads), within the outbox's
//! window, and an attempt's result goes out only after its last log byte.
//! At start the loop takes over the finished, unacknowledged attempts a
//! previous run of this worker left in the spool.
//!
//! Draining (controller `Drain` or the shutdown token): announce it in a
//! heartbeat at once, keep running what runs (and what is still assigned),
//! cancel what remains at the grace deadline, wait a bounded time for the
//! last results to be acknowledged, then stop.

use std::collections::HashMap;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use baton_common::ids::AttemptId;
use baton_common::pb::api::{self, controller_message, worker_message};
use baton_common::time;
use baton_common::traces::{ExecutionSpanFields, SpanSink, sampled_parent};
use futures::FutureExt;
use opentelemetry::trace::{SpanId, TraceId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::WorkerError;
use crate::config::WorkerConfig;
use crate::connection::{Link, LinkEvent};
use crate::executor::{
    self, AttemptContext, AttemptEvent, AttemptResult, AttemptSpec, SHUTDOWN_REASON, StopSignal,
    TaskKind,
};
use crate::metrics::WorkerMetrics;
use crate::outbox::{AckEffect, Outbox};
use crate::sensor::HttpClient;
use crate::spool::{Recovered, Spool, SpoolMeta, SpoolSlot, SpoolWriter};

/// Heartbeat interval when `Registered` carries none.
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Longest drain grace honoured, whatever the controller asks.
const MAX_DRAIN_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// After the last attempt finished while draining: how long to wait for the
/// controller to acknowledge the remaining results.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(5);

/// How long the controller gets to end the stream after the worker closed
/// its side.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Extra time executors get, beyond the kill grace, to finish once they are
/// told to stop, before their tasks are aborted (which kills their process
/// groups too).
const EXECUTOR_EXIT_SLACK: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Draining {
    /// When attempts still running are cancelled.
    deadline: Instant,
    cancelled_remaining: bool,
    /// Set once nothing runs: when the worker stops even if results are
    /// still unacknowledged.
    give_up_at: Option<Instant>,
}

/// A read of spooled log that finished.
struct ReadDone {
    attempt_id: AttemptId,
    stream: u64,
    offset: u64,
    data: io::Result<Vec<u8>>,
}

pub(crate) struct Agent {
    config: Arc<WorkerConfig>,
    outbox: Outbox,
    link: Link,
    events: mpsc::UnboundedSender<AttemptEvent>,
    event_receiver: mpsc::UnboundedReceiver<AttemptEvent>,
    reads: mpsc::UnboundedSender<ReadDone>,
    read_receiver: mpsc::UnboundedReceiver<ReadDone>,
    /// Every executor task, including those of attempts already forgotten
    /// (stale ones being killed), so none outlives the agent.
    executors: JoinSet<()>,
    /// The HTTP client every sensor attempt shares.
    http: HttpClient,
    /// Set once the controller accepted `Register` on the current stream.
    heartbeat: Option<tokio::time::Interval>,
    draining: Option<Draining>,
    shutdown_seen: bool,
    /// Recorded into when the process serves metrics.
    metrics: Option<Arc<WorkerMetrics>>,
    /// Where attempts that run something keep their output and result.
    spool: Arc<Spool>,
    /// The spool slot of each attempt the outbox keeps that has one.
    spooled: HashMap<AttemptId, Arc<SpoolSlot>>,
}

impl Agent {
    /// `recovered`: finished attempts found in the spool, whose log and
    /// result the controller may not have, with their slots.
    pub(crate) fn new(
        config: WorkerConfig,
        spool: Arc<Spool>,
        recovered: Vec<(Arc<SpoolSlot>, Recovered)>,
        metrics: Option<Arc<WorkerMetrics>>,
    ) -> Self {
        let (events, event_receiver) = mpsc::unbounded_channel();
        let (reads, read_receiver) = mpsc::unbounded_channel();
        let link = Link::new(config.controller_addrs(), config.reconnect_max_backoff);
        let mut outbox = Outbox::new(config.max_unacked_log_bytes);
        let mut spooled = HashMap::new();
        for (slot, attempt) in recovered {
            let attempt_id = attempt.meta.attempt_id;
            info!(%attempt_id, run_id = %attempt.meta.run_id, task_id = %attempt.meta.task_id, attempt = attempt.meta.attempt,
                log_bytes = attempt.log_len, acked = attempt.acked, "resuming a finished attempt from the spool");
            outbox.restore(attempt, slot.log_path());
            spooled.insert(attempt_id, slot);
        }
        Self {
            config: Arc::new(config),
            outbox,
            link,
            events,
            event_receiver,
            reads,
            read_receiver,
            executors: JoinSet::new(),
            http: HttpClient::default(),
            heartbeat: None,
            draining: None,
            shutdown_seen: false,
            metrics,
            spool,
            spooled,
        }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        info!(
            worker_id = %self.config.worker_id,
            controller = %self.config.controller_addr,
            slots = self.config.slots,
            "worker starting"
        );
        loop {
            if self.finished_draining() {
                break;
            }
            let drain_deadline = self
                .draining
                .filter(|draining| !draining.cancelled_remaining)
                .map(|draining| draining.deadline);
            let give_up_at = self.draining.and_then(|draining| draining.give_up_at);
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !self.shutdown_seen => {
                    self.shutdown_seen = true;
                    info!("shutdown requested");
                    self.begin_draining(self.config.drain_grace);
                }
                _ = tick(&mut self.heartbeat) => self.send_heartbeat(),
                () = sleep_until_opt(drain_deadline) => {
                    let running = self.outbox.running_count();
                    if running > 0 {
                        warn!(running, "drain grace is over; cancelling the attempts still running");
                    }
                    self.outbox.stop_running(SHUTDOWN_REASON);
                    if let Some(draining) = &mut self.draining {
                        draining.cancelled_remaining = true;
                    }
                }
                () = sleep_until_opt(give_up_at) => {
                    warn!("stopping with results the controller has not acknowledged");
                    break;
                }
                event = self.link.next() => self.on_link_event(event),
                Some(event) = self.event_receiver.recv() => self.on_attempt_event(event),
                Some(done) = self.read_receiver.recv() => {
                    for message in self.outbox.on_read(done.attempt_id, done.stream, done.offset, done.data) {
                        if let (Some(metrics), Some(worker_message::Message::LogChunk(chunk))) = (&self.metrics, &message.message) {
                            metrics.log_sent(chunk.data.len());
                        }
                        self.link.send(message);
                    }
                    self.pump();
                }
                Some(joined) = self.executors.join_next(), if !self.executors.is_empty() => {
                    if let Err(error) = joined {
                        error!(%error, "an executor task failed");
                    }
                }
            }
            if let Some(metrics) = &self.metrics {
                metrics.held(self.outbox.len());
            }
        }
        self.stop_executors().await;
        self.link.close(CLOSE_WAIT).await;
        info!("worker stopped");
        Ok(())
    }

    /// Nothing runs any more and the controller has everything (or the
    /// wait for it is over).
    fn finished_draining(&mut self) -> bool {
        let Some(draining) = &mut self.draining else {
            return false;
        };
        if self.outbox.running_count() > 0 {
            return false;
        }
        if self.outbox.is_empty() {
            return true;
        }
        if draining.give_up_at.is_none() {
            info!(
                "every attempt finished; waiting for the controller to acknowledge the last results"
            );
            draining.give_up_at = Some(Instant::now() + FINAL_ACK_WAIT);
        }
        false
    }

    fn begin_draining(&mut self, grace: Duration) {
        // A grace from the controller too long to add to an instant would
        // panic the loop.
        let deadline = Instant::now() + grace.min(MAX_DRAIN_GRACE);
        match &mut self.draining {
            Some(draining) => {
                if !draining.cancelled_remaining && deadline < draining.deadline {
                    draining.deadline = deadline;
                }
            }
            None => {
                info!(grace = %humantime::format_duration(grace), running = self.outbox.running_count(), "draining: taking no new work");
                if let Some(metrics) = &self.metrics {
                    metrics.draining();
                }
                self.draining = Some(Draining {
                    deadline,
                    cancelled_remaining: false,
                    give_up_at: None,
                });
                self.send_heartbeat();
            }
        }
    }

    fn send_heartbeat(&self) {
        if self.heartbeat.is_none() {
            // Not registered on this stream yet; `Registered` triggers one.
            return;
        }
        let running = self.outbox.running_ids();
        let running_count = u32::try_from(running.len()).unwrap_or(u32::MAX);
        let draining = self.draining.is_some();
        let heartbeat = api::Heartbeat {
            free_slots: if draining {
                0
            } else {
                self.config.slots.saturating_sub(running_count)
            },
            running_attempt_ids: running.iter().map(ToString::to_string).collect(),
            draining,
        };
        self.link.send(api::WorkerMessage {
            message: Some(worker_message::Message::Heartbeat(heartbeat)),
        });
    }

    fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::ReadyToConnect => {
                let mut opening = vec![self.register_message()];
                opening.extend(self.outbox.stream_opened());
                self.link.open(opening);
                self.pump();
            }
            LinkEvent::Connected => {}
            LinkEvent::Disconnected => {
                if let Some(metrics) = &self.metrics {
                    metrics.disconnected();
                }
                self.heartbeat = None;
                self.outbox.stream_closed();
            }
            LinkEvent::Message(message) => match message.message {
                Some(message) => self.on_controller_message(message),
                None => debug!("empty controller message ignored"),
            },
        }
    }

    fn register_message(&self) -> api::WorkerMessage {
        let config = &self.config;
        let register = api::Register {
            worker_id: config.worker_id.to_string(),
            hostname: config.hostname.clone(),
            queues: config.queues.iter().map(ToString::to_string).collect(),
            labels: config
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            slots: config.slots,
            attempt_ids: self
                .outbox
                .announced_ids()
                .iter()
                .map(ToString::to_string)
                .collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            resources: Some(api::Resources {
                cpu_millis: config.resources.cpu_millis,
                memory_bytes: config.resources.memory_bytes,
            }),
            // Custom kinds are served by SDK workers; this one runs commands
            // and pokes sensors.
            handlers: Vec::new(),
            runs_commands: true,
            runs_sensors: true,
        };
        api::WorkerMessage {
            message: Some(worker_message::Message::Register(register)),
        }
    }

    fn on_controller_message(&mut self, message: controller_message::Message) {
        match message {
            controller_message::Message::Registered(registered) => {
                let interval = registered
                    .heartbeat_interval
                    .as_ref()
                    .map(time::duration_from_proto)
                    .filter(|interval| !interval.is_zero())
                    .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
                info!(controller = %self.link.controller_addr(), controller_id = %registered.controller_id, heartbeat_interval = ?interval, "registered with the controller");
                self.link.on_registered();
                if let Some(metrics) = &self.metrics {
                    metrics.registered();
                }
                // The first tick fires at once: the controller hears from
                // the worker (and whether it drains) right away.
                let mut heartbeat = tokio::time::interval(interval);
                heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
                self.heartbeat = Some(heartbeat);
            }
            controller_message::Message::Assign(assign) => self.on_assign(assign),
            controller_message::Message::Cancel(cancel) => {
                let Some(attempt_id) = parse_attempt_id(&cancel.attempt_id, "cancel") else {
                    return;
                };
                let reason = if cancel.reason.is_empty() {
                    "cancelled by the controller".to_string()
                } else {
                    format!("cancelled: {}", cancel.reason)
                };
                if self.outbox.stop(attempt_id, &reason) {
                    info!(%attempt_id, %reason, "cancelling attempt");
                } else {
                    debug!(%attempt_id, "cancel for an attempt that is not running here; ignored");
                }
            }
            controller_message::Message::Ack(ack) => {
                let Some(attempt_id) = parse_attempt_id(&ack.attempt_id, "ack") else {
                    return;
                };
                match self.outbox.on_ack(&ack, attempt_id) {
                    AckEffect::Unknown => {
                        debug!(%attempt_id, "ack for an unknown attempt; ignored")
                    }
                    AckEffect::Kept { note_acked } => {
                        if let Some(offset) = note_acked
                            && let Some(slot) = self.spooled.get(&attempt_id)
                        {
                            slot.write_acked(offset);
                        }
                    }
                    AckEffect::Forgotten => {
                        debug!(%attempt_id, "attempt fully acknowledged");
                        self.forget_spool(attempt_id);
                    }
                    AckEffect::Stale => {
                        info!(%attempt_id, reason = %ack.reason, "attempt is stale; stopped and forgotten");
                        self.forget_spool(attempt_id);
                    }
                }
                self.pump();
            }
            controller_message::Message::Drain(drain) => {
                let grace = drain
                    .grace
                    .as_ref()
                    .map(time::duration_from_proto)
                    .filter(|grace| !grace.is_zero())
                    .unwrap_or(self.config.drain_grace);
                info!("the controller asked the worker to drain");
                self.begin_draining(grace);
            }
        }
    }

    fn on_assign(&mut self, mut assign: api::Assign) {
        let trace_context = assign.trace_context.take();
        let spec = match AttemptSpec::from_assign(assign) {
            Ok(spec) => spec,
            Err(invalid) => {
                let Some(attempt_id) = invalid.attempt_id else {
                    warn!(reason = %invalid.reason, "assignment without a valid attempt id; ignored");
                    return;
                };
                warn!(%attempt_id, reason = %invalid.reason, "invalid assignment; reporting it as an error");
                if self.outbox.insert(attempt_id, StopSignal::default(), None) {
                    let result = AttemptResult::error_now(
                        format!("invalid assignment: {}", invalid.reason),
                        0,
                    );
                    self.count_finished(&result, false);
                    self.outbox.on_finished(attempt_id, result);
                    self.pump();
                }
                return;
            }
        };
        let attempt_id = spec.attempt_id;
        let stop = StopSignal::default();
        if matches!(spec.kind, TaskKind::Noop) {
            self.run_noop(&spec, trace_context.as_ref(), stop);
            return;
        }
        let slot = self.spool.take();
        if !self
            .outbox
            .insert(attempt_id, stop.clone(), Some(slot.log_path()))
        {
            debug!(%attempt_id, "duplicate assignment ignored");
            return;
        }
        self.spooled.insert(attempt_id, Arc::clone(&slot));
        let trace = self.execution_trace(trace_context.as_ref(), &spec);
        if let Some(metrics) = &self.metrics {
            metrics.attempt_started();
        }
        let running = self.outbox.running_count();
        if running > self.config.slots as usize {
            warn!(%attempt_id, running, slots = self.config.slots, "more attempts assigned than slots; running it anyway");
        }
        if self.draining.is_some() {
            info!(%attempt_id, "assignment received while draining; running it");
        }
        let span = self.execute_span(&spec);
        let kill_grace = self.config.kill_grace;
        let events = self.events.clone();
        let http = self.http.clone();
        // `execution_trace` gives a trace only when there is a sink; the
        // sink and worker id are cloned for traced attempts only.
        let trace = trace.and_then(|trace| {
            let sink = self.config.traces.clone()?;
            Some((trace, sink, self.config.worker_id.clone()))
        });
        self.executors.spawn(async move {
            let finished = async move {
                let meta = SpoolMeta {
                    attempt_id,
                    run_id: spec.run_id,
                    task_id: spec.task_id.clone(),
                    attempt: spec.attempt,
                };
                let spool = match SpoolWriter::create(slot, meta).await {
                    Ok(spool) => spool,
                    Err(error) => {
                        error!(%error, "cannot create the attempt's spool; reporting the attempt as an error");
                        let result = AttemptResult::error_now(
                            format!("the worker cannot spool the attempt's output: {error}"),
                            0,
                        );
                        return (result, events);
                    }
                };
                let context = AttemptContext {
                    kill_grace,
                    events: events.clone(),
                    spool,
                    stop,
                    http,
                };
                let result = match AssertUnwindSafe(executor::run_attempt(&spec, context))
                    .catch_unwind()
                    .await
                {
                    Ok(result) => result,
                    Err(_) => {
                        error!("the executor panicked; reporting the attempt as an error");
                        // The outbox corrects `log_bytes` to what it kept.
                        AttemptResult::error_now(
                            "the worker failed while running the attempt".to_string(),
                            0,
                        )
                    }
                };
                (result, events)
            }
            .instrument(span)
            .await;
            let (result, events) = finished;
            // Exported before the result goes out, so that it ends within
            // the controller's span of the attempt.
            if let Some((trace, sink, worker_id)) = trace {
                trace.export(&sink, worker_id.as_str(), &result);
            }
            // Fails only when the agent is gone, and then nobody waits.
            let _ = events.send(AttemptEvent::Finished { attempt_id, result });
        });
    }

    fn on_attempt_event(&mut self, event: AttemptEvent) {
        match event {
            AttemptEvent::Started {
                attempt_id,
                started_at,
                pid,
            } => {
                if let Some(message) = self.outbox.on_started(attempt_id, started_at, pid) {
                    self.link.send(message);
                }
            }
            AttemptEvent::Log { attempt_id, end } => self.outbox.on_log(attempt_id, end),
            AttemptEvent::Finished { attempt_id, result } => {
                self.count_finished(&result, true);
                self.outbox.on_finished(attempt_id, result)
            }
        }
        self.pump();
    }

    /// Starts the reads of spooled log the outbox wants, and sends the
    /// results whose log has all been sent.
    fn pump(&mut self) {
        for read in self.outbox.next_reads() {
            let reads = self.reads.clone();
            // Short and bounded (one piece of a file); its answer is
            // dropped if the worker stopped meanwhile.
            tokio::task::spawn_blocking(move || {
                let data = read.read();
                let _ = reads.send(ReadDone {
                    attempt_id: read.attempt_id,
                    stream: read.stream,
                    offset: read.offset,
                    data,
                });
            });
        }
        for message in self.outbox.ready_results() {
            self.link.send(message);
        }
    }

    /// A noop succeeds at once and is kept in memory only: no spool, no
    /// process, and no `TaskStarted` (the result carries its start). Should
    /// the worker die before the controller acknowledges the result, the
    /// controller never saw the attempt start, so it gives the task back
    /// without using a retry; a noop is cheap to run again.
    fn run_noop(
        &mut self,
        spec: &AttemptSpec,
        trace_context: Option<&api::TraceContext>,
        stop: StopSignal,
    ) {
        let attempt_id = spec.attempt_id;
        if !self.outbox.insert(attempt_id, stop, None) {
            debug!(%attempt_id, "duplicate assignment ignored");
            return;
        }
        let trace = self.execution_trace(trace_context, spec);
        // No `execute` span: a noop logs one debug line, and a span's
        // fields would be formatted for the log even with no line written.
        debug!(dag_id = %spec.dag_id, run_id = %spec.run_id, task_id = %spec.task_id, attempt = spec.attempt, %attempt_id, "noop attempt succeeded");
        let now = std::time::SystemTime::now();
        let result = AttemptResult {
            outcome: api::AttemptOutcome::Succeeded,
            exit_code: None,
            error: String::new(),
            output_json: String::new(),
            started_at: now,
            ended_at: now,
            log_bytes: 0,
        };
        // Exported before the result goes out, so that it ends within the
        // controller's span of the attempt.
        if let Some(trace) = trace
            && let Some(sink) = &self.config.traces
        {
            trace.export(sink, self.config.worker_id.as_str(), &result);
        }
        self.count_finished(&result, false);
        self.outbox.on_finished(attempt_id, result);
        self.pump();
    }

    /// Counts an attempt's end in the metrics; `ran`: it was counted as
    /// running when it started.
    fn count_finished(&self, result: &AttemptResult, ran: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.attempt_finished(result.outcome, result.started_at, result.ended_at, ran);
        }
    }

    /// The log span of an attempt's execution: its lines carry the
    /// attempt's identity.
    fn execute_span(&self, spec: &AttemptSpec) -> tracing::Span {
        info_span!(
            "execute",
            dag_id = %spec.dag_id,
            run_id = %spec.run_id,
            task_id = %spec.task_id,
            attempt = spec.attempt,
            attempt_id = %spec.attempt_id,
            worker_id = %self.config.worker_id,
        )
    }

    /// The trace span of the execution about to start, when traces are on
    /// and the controller sampled the run (a valid, sampled trace context).
    /// Made only for an attempt that runs here, not for a duplicate
    /// assignment or an invalid one.
    fn execution_trace(
        &self,
        trace_context: Option<&api::TraceContext>,
        spec: &AttemptSpec,
    ) -> Option<ExecutionTrace> {
        self.config.traces.as_ref()?;
        let trace_context = trace_context?;
        let Some((trace_id, parent_span_id)) = sampled_parent(trace_context) else {
            debug!(attempt_id = %spec.attempt_id, ?trace_context, "no valid, sampled trace context; the execution is not traced");
            return None;
        };
        Some(ExecutionTrace {
            trace_id,
            parent_span_id,
            start: std::time::SystemTime::now(),
        })
    }

    /// Marks a forgotten attempt's spool slot as such, off the loop; the
    /// slot is free once that is done and the attempt no longer runs.
    fn forget_spool(&mut self, attempt_id: AttemptId) {
        if let Some(slot) = self.spooled.remove(&attempt_id) {
            tokio::task::spawn_blocking(move || slot.forget());
        }
    }

    /// Stops every executor still alive (stale attempts being killed, or
    /// all of them when the final wait ran out) and waits for them, bounded;
    /// aborting an executor kills its process group.
    async fn stop_executors(&mut self) {
        self.outbox.stop_running(SHUTDOWN_REASON);
        let limit = self.config.kill_grace + EXECUTOR_EXIT_SLACK;
        let wait = async {
            while let Some(joined) = self.executors.join_next().await {
                if let Err(error) = joined {
                    error!(%error, "an executor task failed");
                }
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            warn!("executors did not stop in time; aborting them");
            self.executors.shutdown().await;
        }
    }
}

/// The worker's span of one execution, from its start until its result.
struct ExecutionTrace {
    trace_id: TraceId,
    /// The controller's span of the attempt.
    parent_span_id: SpanId,
    start: std::time::SystemTime,
}

impl ExecutionTrace {
    /// Exports the span, ending when the result did, with who ran the
    /// attempt and how it ended (its parent names the attempt).
    fn export(self, sink: &SpanSink, worker_id: &str, result: &AttemptResult) {
        sink.export_execution(&ExecutionSpanFields {
            trace_id: self.trace_id,
            parent_span_id: self.parent_span_id,
            start: self.start,
            // The clock may step back between the two readings.
            end: result.ended_at.max(self.start),
            worker_id,
            outcome: result.outcome,
            exit_code: result.exit_code,
            error: Some(&result.error),
        });
    }
}

fn parse_attempt_id(value: &str, what: &str) -> Option<AttemptId> {
    match value.parse() {
        Ok(attempt_id) => Some(attempt_id),
        Err(error) => {
            warn!(%error, message = what, "controller message with an invalid attempt id ignored");
            None
        }
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) -> Instant {
    match interval {
        Some(interval) => interval.tick().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
