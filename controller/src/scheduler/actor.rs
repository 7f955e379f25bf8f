//! The scheduler's event loop and the handling of every command: DAG
//! registration, run life cycle, dispatch, worker results, retries, worker
//! loss, watchers.
//!
//! Each handler changes in-memory state and records the writes and effects
//! that follow; `flush` turns them into a batch, and effects run when the
//! batch is durable. Handlers never await, so the loop never blocks on one
//! caller.
//!
//! # Layout
//! - this module: the loop, DAGs, runs, dispatch, attempts, workers, group
//!   commit.
//! - `admission`: `max_active_runs` and queued runs.
//! - `schedules`: cron and `every` schedules, interval runs.
//! - `backfills`: backfills over a range of intervals.
//! - `triggers`: events and assets.
//! - `sensors`: sensor outcomes, and the sensors the controller evaluates.
//! - `deadlines`: the wall-clock timers and SLA deadlines.
//! - `assignments`: a task's `Assign`, with its templates rendered.
//! - `dependencies`: trigger rules, branches, `run_if`, the run's outcome.
//! - `mapping`: `map_over` expansion and the expressions tasks evaluate.
//! - `marking`: tasks set succeeded, failed or skipped by hand.
//! - `notifications`: run and task events handed to the notifiers after
//!   their batch commits.

mod admission;
mod assignments;
mod backfills;
mod deadlines;
mod dependencies;
mod mapping;
mod marking;
mod notifications;
mod schedules;
pub(super) mod sensors;
mod triggers;

pub use admission::DEFAULT_MAX_ACTIVE_RUNS;
pub use schedules::next_scheduled_interval;
pub use sensors::ExternalObservation;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use baton_common::error::{ApiError, FieldViolation};
use baton_common::ids::{AttemptId, DagId, HandlerName, PoolName, QueueName, RunId, TaskId};
use baton_common::pb::api::{
    self as api, Ack, AttemptOutcome, Cancel, ControllerMessage, RunSnapshot, RunState, TaskResult,
    TaskState, WatchRunResponse, controller_message, watch_run_response, worker_message,
};
use baton_common::pb::records::{
    AssetOutput, AssetRecord, DagMetaRecord, DagTriggerKind, DagVersionRecord, IdempotencyRecord,
    IntervalRecord, PoolRecord, RunHistoryRecord, RunRecord,
};
use baton_common::spec::DagTrigger;
use baton_common::time::{
    Micros, duration_to_proto, micros_to_timestamp_opt, now_micros, timestamp_opt_to_micros,
};
use futures::StreamExt;
use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;
use tracing::{debug, debug_span, error, info, warn};

use super::flush::{CreateKey, Effect, InFlight, Pending, dedupe_ops, spawn_commit};
use super::history;
use super::limits::{LimitKey, Limits};
use super::recovery::{self, LoadedRun};
use super::routing::{ReadyItem, ReadyQueues};
use super::state::{Ended, RunEntry, RunOrigin, WatchSender};
use super::timers::WallTimers;
use super::views::{self, run_record, task_record};
use super::workers::{Connection, Workers};
use super::{
    Command, NewDagVersion, PoolChange, Registered, SchedulerError, SchedulerHandle,
    SchedulerParts, TriggerRequest, WorkerEvent, WorkerSender,
};
use crate::logs::{LogCommand, LogKey, LogWriter};
use crate::plan::{PlanRef, TaskIndex};
use crate::store::{
    BatchOutcome, Conditional, Op, Precondition, StoreError, StoreResult, get_record, keys,
};
use crate::traces::{RunSpanFields, run_sampling_id, run_span};
use baton_common::traces::{AttemptIdentity, AttemptSpanFields, EncodedSpans};

/// Commands taken from the queue per loop turn before flushing, so that a
/// burst shares one batch without delaying the batch indefinitely.
const MAX_COMMANDS_PER_TURN: usize = 4096;
/// Room a watcher's channel keeps for the final "fell behind" error.
const WATCH_RESERVE: usize = 1;

/// A run creation waiting for its conditional write.
struct PendingCreate {
    entry: RunEntry,
    waiters: Vec<super::Reply<(RunRecord, bool)>>,
}

/// Work a handler leaves for after it returns, so that reactions to a run's
/// end do not nest (a run that ends as soon as it starts would otherwise
/// start the next queued run from inside the first one's end, and so on).
pub(super) enum Deferred {
    /// Start the DAG's queued runs and evaluate its schedule.
    Admit(DagId),
    AdvanceBackfill(Arc<str>),
}

/// An event with an idempotency key waiting for its conditional write,
/// with the runs it creates.
struct PendingEvent {
    event: api::Event,
    entries: Vec<RunEntry>,
    waiters: Vec<super::Reply<(api::Event, bool)>>,
}

pub struct Scheduler {
    parts: SchedulerParts,
    /// Where run and attempt spans go; `None` when traces are off, and then
    /// no trace id or context is derived at all.
    traces: Option<baton_common::traces::SpanSink>,
    /// The emptied span buffer of the last stored batch, for the batch
    /// after the one that collects spans now: with batches pipelined, the
    /// pending buffer is rarely empty when a batch is stored, and one that
    /// starts empty grows by copying.
    spare_spans: EncodedSpans,
    log_writer: mpsc::UnboundedSender<LogCommand>,
    commands: mpsc::Receiver<Command>,
    self_sender: mpsc::Sender<Command>,
    dags: HashMap<DagId, DagMetaRecord>,
    runs: HashMap<RunId, RunEntry>,
    /// Attempts in progress (leased or running) and where they belong.
    attempts: HashMap<AttemptId, (RunId, TaskIndex)>,
    /// Active runs created with an idempotency key.
    active_keys: HashMap<CreateKey, RunId>,
    pending_creates: HashMap<CreateKey, PendingCreate>,
    /// Finished runs being read back, with the commands waiting for them.
    loading: HashMap<RunId, Vec<Command>>,
    ready: ReadyQueues,
    /// Pools and concurrency limits, and the ready tasks they hold back.
    limits: Limits,
    /// Ready tasks of paused DAGs, dispatched on unpause.
    parked: HashMap<DagId, Vec<ReadyItem>>,
    ready_seq: u64,
    /// History records this leader wrote (part of their keys).
    history_seq: u64,
    workers: Workers,
    retry_timers: DelayQueue<(RunId, TaskIndex, u32)>,
    pending: Pending,
    new_watchers: Vec<(RunId, WatchSender)>,
    in_flight: Option<InFlight>,
    dispatch_needed: bool,
    /// Per DAG: running runs and queued ones (`max_active_runs`).
    dag_runs: HashMap<DagId, admission::DagRuns>,
    /// Per DAG: runs whose conditional creation is in flight.
    creating: HashMap<DagId, u32>,
    /// DAGs with a cron or `every` schedule.
    schedules: HashMap<DagId, schedules::ScheduleState>,
    /// Per DAG: the end of its schedule's latest interval with a run.
    schedule_positions: HashMap<DagId, Micros>,
    /// What happens at a wall-clock instant, earliest first.
    wall_timers: WallTimers<deadlines::WallTimer>,
    /// The sleep for the earliest wall timer, and that timer's instant.
    wall_sleep: Option<(Micros, crate::clock::Sleep)>,
    /// Latest plans of DAGs triggered by events or assets.
    trigger_plans: HashMap<DagId, PlanRef>,
    /// DAGs listening to each event name.
    event_listeners: HashMap<String, BTreeSet<DagId>>,
    pending_events: HashMap<CreateKey, PendingEvent>,
    /// DAGs consuming each asset, and the assets each such DAG lists.
    asset_consumers: HashMap<String, BTreeSet<DagId>>,
    asset_inputs: HashMap<DagId, Vec<String>>,
    /// Per consuming DAG: assets updated since its last asset-triggered
    /// run, with their first update.
    asset_queues: HashMap<DagId, BTreeMap<String, Micros>>,
    /// Every asset that was ever updated.
    assets: HashMap<String, AssetRecord>,
    backfills: HashMap<Arc<str>, backfills::BackfillState>,
    backfill_by_dag: HashMap<DagId, Arc<str>>,
    /// Runs a backfill waits for: its id and the interval's position.
    backfill_runs: HashMap<RunId, (Arc<str>, usize)>,
    dirty_backfills: BTreeSet<Arc<str>>,
    /// Backfills that ended in this batch, for the replies that show them.
    ended_backfills: HashMap<Arc<str>, api::Backfill>,
    /// External-task sensors waiting, by the DAG and interval start they
    /// watch.
    external_waiters: HashMap<(DagId, Micros), Vec<sensors::ExternalWaiter>>,
    renderer: baton_common::template::Renderer,
    deferred: std::collections::VecDeque<Deferred>,
}

type CommitResult = StoreResult<BatchOutcome>;

async fn wait_in_flight(in_flight: &mut Option<InFlight>) -> CommitResult {
    match in_flight {
        Some(batch) => (&mut batch.done).await.unwrap_or_else(|_| {
            Err(StoreError::Io(
                "the commit task ended without an answer".into(),
            ))
        }),
        None => std::future::pending().await,
    }
}

async fn wait_wall_sleep(sleep: &mut Option<(Micros, crate::clock::Sleep)>) {
    match sleep {
        Some((_, sleep)) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

fn message(inner: controller_message::Message) -> ControllerMessage {
    ControllerMessage {
        message: Some(inner),
    }
}

fn stale_ack(attempt_id: &str, reason: &str) -> ControllerMessage {
    message(controller_message::Message::Ack(Ack {
        attempt_id: attempt_id.to_string(),
        stale: true,
        reason: reason.to_string(),
        ..Ack::default()
    }))
}

fn is_open(state: TaskState) -> bool {
    matches!(state, TaskState::Leased | TaskState::Running)
}

impl Scheduler {
    /// Recovers state from the store, then starts the loop. Returns once the
    /// scheduler is ready to serve.
    /// `shutdown` stops it gracefully (what was decided is stored first);
    /// `abort` stops it at once, storing nothing more (leadership was lost).
    pub async fn start(
        parts: SchedulerParts,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) -> Result<(SchedulerHandle, JoinHandle<Result<(), SchedulerError>>), SchedulerError> {
        let (sender, commands) = mpsc::channel(16_384);
        let (log_writer, log_task) =
            LogWriter::spawn(Arc::clone(&parts.logs), shutdown.child_token());
        // Leader-only, like the scheduler: it ends with the term.
        let retention_stop = CancellationToken::new();
        let retention_task = parts.config.log_retention.map(|keep| {
            tokio::spawn(crate::logs::run_retention(
                Arc::clone(&parts.logs),
                Arc::clone(&parts.store),
                crate::logs::Retention::new(keep),
                retention_stop.clone(),
            ))
        });
        let traces = parts.config.traces.clone();
        let mut scheduler = Scheduler {
            parts,
            traces,
            spare_spans: EncodedSpans::default(),
            log_writer,
            commands,
            self_sender: sender.clone(),
            dags: HashMap::new(),
            runs: HashMap::new(),
            attempts: HashMap::new(),
            active_keys: HashMap::new(),
            pending_creates: HashMap::new(),
            loading: HashMap::new(),
            ready: ReadyQueues::default(),
            limits: Limits::default(),
            parked: HashMap::new(),
            ready_seq: 0,
            history_seq: 0,
            workers: Workers::default(),
            retry_timers: DelayQueue::new(),
            pending: Pending::default(),
            new_watchers: Vec::new(),
            in_flight: None,
            dispatch_needed: false,
            dag_runs: HashMap::new(),
            creating: HashMap::new(),
            schedules: HashMap::new(),
            schedule_positions: HashMap::new(),
            wall_timers: WallTimers::default(),
            wall_sleep: None,
            trigger_plans: HashMap::new(),
            event_listeners: HashMap::new(),
            pending_events: HashMap::new(),
            asset_consumers: HashMap::new(),
            asset_inputs: HashMap::new(),
            asset_queues: HashMap::new(),
            assets: HashMap::new(),
            backfills: HashMap::new(),
            backfill_by_dag: HashMap::new(),
            backfill_runs: HashMap::new(),
            dirty_backfills: BTreeSet::new(),
            ended_backfills: HashMap::new(),
            external_waiters: HashMap::new(),
            renderer: baton_common::template::Renderer::new(),
            deferred: std::collections::VecDeque::new(),
        };
        scheduler.recover().await?;
        let handle = tokio::spawn(async move {
            let result = scheduler.run(shutdown, abort).await;
            retention_stop.cancel();
            drop(scheduler);
            let _ = log_task.await;
            if let Some(task) = retention_task {
                let _ = task.await;
            }
            result
        });
        Ok((SchedulerHandle::new(sender), handle))
    }

    async fn recover(&mut self) -> Result<(), SchedulerError> {
        let store = Arc::clone(&self.parts.store);
        for record in recovery::load_pools(store.as_ref()).await? {
            match PoolName::new(record.name.clone()) {
                Ok(name) => {
                    self.limits.pools.insert(name, record);
                }
                Err(error) => {
                    warn!(pool = %record.name, %error, "ignoring a stored pool with an invalid name")
                }
            }
        }
        let mut schedules = Vec::new();
        for meta in recovery::load_dags(store.as_ref()).await? {
            let Ok(dag_id) = DagId::new(meta.dag_id.clone()) else {
                continue;
            };
            let kind =
                DagTriggerKind::try_from(meta.trigger_kind).unwrap_or(DagTriggerKind::Manual);
            if kind != DagTriggerKind::Manual {
                // Runs these DAGs trigger use their latest version.
                let plan = self
                    .parts
                    .plans
                    .get(store.as_ref(), &dag_id, meta.latest_version)
                    .await
                    .map_err(|error| SchedulerError::Recovery(error.to_string()))?;
                self.parts.plans.set_latest(Arc::clone(&plan));
                if kind == DagTriggerKind::Timetable {
                    let registered_at = timestamp_opt_to_micros(meta.created_at.as_ref());
                    schedules.push((dag_id.clone(), plan.clone(), registered_at));
                }
                self.index_dag_triggers(&meta, Some(&plan));
            }
            self.dags.insert(dag_id, meta);
        }
        self.schedule_positions = recovery::load_schedule_positions(store.as_ref()).await?;
        for record in recovery::load_assets(store.as_ref()).await? {
            self.assets.insert(record.uri.clone(), record);
        }
        for (dag_id, uri, first) in recovery::load_asset_queues(store.as_ref()).await? {
            self.asset_queues
                .entry(dag_id)
                .or_default()
                .insert(uri, first);
        }
        let run_ids = recovery::load_active_run_ids(store.as_ref()).await?;
        let grace_deadline = Instant::now() + self.parts.config.recovery_grace;
        let mut open_attempts = 0usize;
        for run_id in &run_ids {
            let loaded = recovery::load_run(store.as_ref(), &self.parts.plans, *run_id)
                .await
                .map_err(|error| SchedulerError::Recovery(error.to_string()))?;
            let Some(LoadedRun { entry }) = loaded else {
                warn!(%run_id, "active index names a run that does not exist; dropping the index entry");
                self.pending.ops.push(Op::delete(keys::active(run_id)));
                continue;
            };
            open_attempts += entry
                .tasks
                .iter()
                .filter(|slot| is_open(slot.state))
                .count();
            self.install_run(entry, Some(grace_deadline));
        }
        // Queued runs start where their DAG has room, once every run is in.
        let with_runs: Vec<DagId> = self.dag_runs.keys().cloned().collect();
        self.deferred
            .extend(with_runs.into_iter().map(Deferred::Admit));
        let backfills = recovery::load_active_backfills(store.as_ref()).await?;
        for record in backfills {
            let Some(backfill) = &record.backfill else {
                continue;
            };
            let Ok(dag_id) = DagId::new(backfill.dag_id.clone()) else {
                continue;
            };
            let Some(meta) = self.dags.get(&dag_id) else {
                continue;
            };
            let plan = self
                .parts
                .plans
                .get(store.as_ref(), &dag_id, meta.latest_version)
                .await
                .map_err(|error| SchedulerError::Recovery(error.to_string()))?;
            let intervals =
                recovery::load_backfill_intervals(store.as_ref(), &backfill.backfill_id).await?;
            let referenced: Vec<RunId> = intervals
                .iter()
                .filter_map(|interval| interval.run_id.parse().ok())
                .filter(|run_id| !self.runs.contains_key(run_id))
                .collect();
            let finished = recovery::load_run_states(store.as_ref(), referenced).await?;
            self.resume_backfill(record, intervals, plan, &finished);
        }
        let scheduled = schedules.len();
        for (dag_id, plan, registered_at) in schedules {
            self.follow_schedule(&dag_id, &plan, registered_at);
        }
        self.drain_deferred();
        info!(
            dags = self.dags.len(),
            scheduled,
            active_runs = run_ids.len(),
            open_attempts,
            backfills = self.backfills.len(),
            "scheduler state recovered"
        );
        Ok(())
    }

    async fn run(
        &mut self,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) -> Result<(), SchedulerError> {
        let period = self
            .parts
            .config
            .heartbeat_interval
            .min(Duration::from_secs(1));
        let mut liveness = tokio::time::interval(period);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            self.arm_wall_sleep();
            tokio::select! {
                biased;
                () = abort.cancelled() => {
                    // Not the leader any more: drop everything, store nothing.
                    info!("scheduler aborted");
                    return Ok(());
                }
                () = shutdown.cancelled() => break,
                result = wait_in_flight(&mut self.in_flight) => self.on_committed(result)?,
                command = self.commands.recv() => {
                    let Some(command) = command else { break };
                    self.handle(command);
                    for _ in 0..MAX_COMMANDS_PER_TURN {
                        match self.commands.try_recv() {
                            Ok(command) => self.handle(command),
                            Err(_) => break,
                        }
                    }
                }
                Some(expired) = self.retry_timers.next(), if !self.retry_timers.is_empty() => {
                    let (run_id, index, attempt) = expired.into_inner();
                    self.on_retry_due(run_id, index, attempt);
                }
                () = wait_wall_sleep(&mut self.wall_sleep) => {
                    self.wall_sleep = None;
                    self.on_wall_timers();
                }
                _ = liveness.tick() => self.check_liveness(),
            }
            self.drain_deferred();
            self.dispatch();
            self.flush();
        }
        // Store what was decided before stopping, so that every reply already
        // promised goes out and nothing decided is lost.
        if self.in_flight.is_some() {
            let result = wait_in_flight(&mut self.in_flight).await;
            self.on_committed(result)?;
        }
        self.flush();
        if self.in_flight.is_some() {
            let result = wait_in_flight(&mut self.in_flight).await;
            self.on_committed(result)?;
        }
        for worker in self.workers.drain_all() {
            drop(worker.conn);
        }
        info!("scheduler stopped");
        Ok(())
    }

    /// Runs the work handlers left for after them, including what that work
    /// leaves in turn.
    fn drain_deferred(&mut self) {
        while let Some(work) = self.deferred.pop_front() {
            match work {
                Deferred::Admit(dag_id) => {
                    self.start_queued(&dag_id);
                    self.evaluate_schedule(&dag_id);
                }
                Deferred::AdvanceBackfill(id) => self.advance_backfill(&id),
            }
        }
    }

    /// Keeps the sleep of the loop on the earliest wall timer.
    fn arm_wall_sleep(&mut self) {
        let earliest = self.wall_timers.earliest();
        if self.wall_sleep.as_ref().map(|(at, _)| *at) == earliest {
            return;
        }
        self.wall_sleep = earliest.map(|at| {
            (
                at,
                self.parts
                    .config
                    .clock
                    .sleep_until(schedules::to_datetime(at)),
            )
        });
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::RegisterDag { version, reply } => {
                let result = self.register_dag(*version);
                self.reply_after_commit(reply, result);
            }
            Command::SetPaused {
                dag_id,
                paused,
                reply,
            } => {
                let result = self.set_paused(&dag_id, paused);
                self.reply_after_commit(reply, result);
            }
            Command::DeleteDag { dag_id, reply } => {
                let result = self.delete_dag(&dag_id);
                self.reply_after_commit(reply, result);
            }
            Command::PurgeRuns {
                dag_id,
                run_ids,
                reply,
            } => {
                let result = self.purge_runs(&dag_id, &run_ids);
                self.reply_after_commit(reply, result);
            }
            Command::TriggerRun { request, reply } => self.trigger_run(*request, reply),
            Command::CancelRun {
                run_id,
                reason,
                reply,
            } => {
                let result = self.cancel_run(run_id, &reason);
                self.reply_after_commit(reply, result);
            }
            command @ Command::RetryTask { .. } => self.retry_task(command),
            command @ Command::MarkTask { .. } => self.mark_task(command),
            Command::Watch {
                run_id,
                sender,
                reply,
            } => {
                // A finished run is served from the store by the caller.
                let active = self
                    .runs
                    .get(&run_id)
                    .is_some_and(|entry| !baton_common::states::run_state_is_final(entry.state));
                if active {
                    self.new_watchers.push((run_id, sender));
                }
                let _ = reply.send(active);
            }
            Command::Worker { conn_id, event } => self.on_worker_event(conn_id, event),
            Command::RunLoaded { run_id, result } => self.on_run_loaded(run_id, result),
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::ListPools { reply } => {
                let _ = reply.send(self.pool_infos());
            }
            Command::Pool { change, reply } => {
                let result = self.change_pool(change);
                self.reply_after_commit(reply, result);
            }
            Command::DrainWorker {
                worker_id,
                grace,
                reply,
            } => {
                // Nothing to store: the drain is between controller and worker.
                let _ = reply.send(self.drain_worker(&worker_id, grace));
            }
            Command::EmitEvent {
                name,
                payload,
                idempotency_key,
                reply,
            } => self.emit_event(name, payload, idempotency_key, reply),
            Command::RecordAssetUpdate { uri, reply } => {
                let update = self.record_asset_update(&uri, None);
                self.reply_after_commit(reply, Ok(update));
            }
            Command::CreateBackfill {
                backfill,
                params_json,
                plan,
                reply,
            } => self.create_backfill(*backfill, params_json, plan, reply),
            Command::CancelBackfill { backfill_id, reply } => {
                let result = self.cancel_backfill(&backfill_id);
                self.reply_after_commit(reply, result);
            }
            Command::ExternalObserved {
                run_id,
                index,
                attempt,
                observation,
            } => self.on_external_observed(run_id, index, attempt, observation),
            Command::BackfillIntervalFound {
                backfill_id,
                position,
                found,
            } => self.on_backfill_interval_found(backfill_id, position, found),
            Command::ClearForBackfill { run_id } => {
                if self.runs.contains_key(&run_id) {
                    self.clear_unsuccessful(run_id);
                } else {
                    self.load_run_then(run_id, Command::ClearForBackfill { run_id });
                }
            }
        }
    }

    /// Reads a finished run back from the store; `command` runs once it is
    /// in memory (with the others waiting for the same run).
    fn load_run_then(&mut self, run_id: RunId, command: Command) {
        if let Some(waiting) = self.loading.get_mut(&run_id) {
            waiting.push(command);
            return;
        }
        self.loading.insert(run_id, vec![command]);
        let store = Arc::clone(&self.parts.store);
        let plans = Arc::clone(&self.parts.plans);
        let sender = self.self_sender.clone();
        tokio::spawn(async move {
            let result = recovery::load_run(store.as_ref(), &plans, run_id).await;
            let _ = sender.send(Command::RunLoaded { run_id, result }).await;
        });
    }

    /// Replies once the current batch is durable (at once for errors, which
    /// change nothing).
    fn reply_after_commit<T: Send + 'static>(
        &mut self,
        reply: super::Reply<T>,
        result: Result<T, ApiError>,
    ) {
        match result {
            Ok(value) => self.pending.effects.push(Effect::Reply(Box::new(move || {
                let _ = reply.send(Ok(value));
            }))),
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Workers, queues (with the signals an autoscaler needs), pools and
    /// active runs as they are now. Not on the hot path: it walks ready and
    /// parked tasks and open attempts.
    fn status(&self) -> super::SchedulerStatus {
        let resources = |r: baton_common::spec::Resources| api::Resources {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
        };
        let mut workers: Vec<api::WorkerInfo> = self
            .workers
            .iter()
            .map(|worker| api::WorkerInfo {
                worker_id: worker.id.to_string(),
                hostname: worker.hostname.clone(),
                queues: worker.queues.iter().map(ToString::to_string).collect(),
                labels: worker.labels.clone(),
                slots: worker.slots,
                free_slots: worker.free_slots(),
                running: worker.leased.len() as u32,
                connected: worker.conn.is_some(),
                draining: worker.draining,
                version: worker.version.clone(),
                resources: Some(resources(worker.resources)),
                free_resources: Some(resources(worker.free_resources())),
                handlers: worker.handlers.iter().map(ToString::to_string).collect(),
                runs_commands: worker.runs_commands,
            })
            .collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        let now = now_micros();
        let mut queues: HashMap<String, (api::QueueInfo, i64)> = HashMap::new();
        fn queue_of<'a>(
            queues: &'a mut HashMap<String, (api::QueueInfo, i64)>,
            queue: &QueueName,
        ) -> &'a mut (api::QueueInfo, i64) {
            queues.entry(queue.to_string()).or_insert_with(|| {
                (
                    api::QueueInfo {
                        queue: queue.to_string(),
                        ..Default::default()
                    },
                    i64::MAX,
                )
            })
        }
        // Ready tasks, in their queues or parked on a limit; the heaps may
        // hold entries that went stale, so only live ones count.
        let live = |item: &ReadyItem| {
            self.runs
                .get(&item.run_id)
                .filter(|entry| entry.slot(item.index).state == TaskState::Ready)
                .map(|entry| entry.task(item.index).queue.clone())
        };
        for (_, heap) in self.ready.iter() {
            for item in heap.iter() {
                if let Some(queue) = live(item) {
                    let (info, oldest) = queue_of(&mut queues, &queue);
                    info.ready += 1;
                    *oldest = (*oldest).min(item.ready_at);
                }
            }
        }
        for (_, item) in self.limits.parked() {
            if let Some(queue) = live(item) {
                let (info, oldest) = queue_of(&mut queues, &queue);
                info.ready += 1;
                info.limited += 1;
                *oldest = (*oldest).min(item.ready_at);
            }
        }
        for items in self.parked.values() {
            for item in items {
                if let Some(queue) = live(item) {
                    let (info, _) = queue_of(&mut queues, &queue);
                    info.ready += 1;
                    info.limited += 1;
                }
            }
        }
        for &(run_id, index) in self.attempts.values() {
            if let Some(entry) = self.runs.get(&run_id) {
                queue_of(&mut queues, &entry.task(index).queue).0.running += 1;
            }
        }
        for worker in self.workers.iter() {
            if worker.conn.is_none() {
                continue;
            }
            for queue in &worker.queues {
                let (info, _) = queue_of(&mut queues, queue);
                info.workers += 1;
                info.free_slots += worker.free_slots();
            }
        }
        let mut queues: Vec<api::QueueInfo> = queues
            .into_values()
            .map(|(mut info, oldest)| {
                if oldest != i64::MAX {
                    info.oldest_ready_age = Some(duration_to_proto(Duration::from_micros(
                        now.saturating_sub(oldest).max(0) as u64,
                    )));
                }
                info
            })
            .collect();
        queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        let active_runs = self
            .runs
            .values()
            .filter(|entry| !baton_common::states::run_state_is_final(entry.state))
            .count() as u32;
        super::SchedulerStatus {
            workers,
            queues,
            pools: self.pool_infos(),
            active_runs,
        }
    }

    fn pool_info(&self, record: &PoolRecord) -> api::PoolInfo {
        let name = PoolName::new(record.name.clone());
        api::PoolInfo {
            name: record.name.clone(),
            slots: record.slots,
            description: record.description.clone(),
            used_slots: name.as_ref().map_or(0, |name| self.limits.pool_used(name)),
            queued: name.as_ref().map_or(0, |name| self.pool_queued(name)),
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }

    /// Ready tasks waiting for a pool (parked entries of tasks that moved
    /// on since, by a cancel or a clear, are not counted).
    fn pool_queued(&self, pool: &PoolName) -> u32 {
        self.limits
            .parked()
            .filter(|(key, item)| {
                matches!(key, LimitKey::Pool(name) if name == pool)
                    && self
                        .runs
                        .get(&item.run_id)
                        .is_some_and(|entry| entry.slot(item.index).state == TaskState::Ready)
            })
            .count() as u32
    }

    fn pool_infos(&self) -> Vec<api::PoolInfo> {
        self.limits
            .pools
            .values()
            .map(|record| self.pool_info(record))
            .collect()
    }

    // ----- Pools and workers (admin) -----

    fn change_pool(&mut self, change: PoolChange) -> Result<Option<api::PoolInfo>, ApiError> {
        let now = micros_to_timestamp_opt(now_micros());
        let name = match &change {
            PoolChange::Create { name, .. }
            | PoolChange::Update { name, .. }
            | PoolChange::Delete { name } => name.clone(),
        };
        match change {
            PoolChange::Create {
                name,
                slots,
                description,
            } => {
                if self.limits.pools.contains_key(&name) {
                    return Err(ApiError::AlreadyExists(format!(
                        "pool `{name}` already exists; use UpdatePool (`baton pool set`) to resize it"
                    )));
                }
                let record = PoolRecord {
                    name: name.to_string(),
                    slots,
                    description,
                    created_at: now,
                    updated_at: now,
                };
                self.pending
                    .ops
                    .push(Op::put(keys::pool(&name), record.encode_to_vec()));
                info!(pool = %name, slots, "pool created");
                self.limits.pools.insert(name.clone(), record);
            }
            PoolChange::Update {
                name,
                slots,
                description,
            } => {
                let record = self
                    .limits
                    .pools
                    .get_mut(&name)
                    .ok_or_else(|| ApiError::not_found("pool", &name))?;
                if let Some(slots) = slots {
                    record.slots = slots;
                }
                if let Some(description) = description {
                    record.description = description;
                }
                record.updated_at = now;
                self.pending
                    .ops
                    .push(Op::put(keys::pool(&name), record.encode_to_vec()));
                info!(pool = %name, slots = record.slots, "pool updated");
            }
            PoolChange::Delete { name } => {
                if !self.limits.pools.contains_key(&name) {
                    return Err(ApiError::not_found("pool", &name));
                }
                let used = self.limits.pool_used(&name);
                let queued = self.pool_queued(&name);
                if used > 0 || queued > 0 {
                    return Err(ApiError::FailedPrecondition(format!(
                        "pool `{name}` is in use ({used} slots taken, {queued} tasks waiting); \
                         delete it once its tasks are done"
                    )));
                }
                self.pending.ops.push(Op::delete(keys::pool(&name)));
                self.limits.pools.remove(&name);
                info!(pool = %name, "pool deleted");
                return Ok(None);
            }
        }
        // Created or grown: tasks waiting on the pool may fit now (each is
        // checked again, and parked again if it still does not).
        for item in self.limits.unpark_all(&LimitKey::Pool(name.clone())) {
            self.push_ready(item);
        }
        Ok(self
            .limits
            .pools
            .get(&name)
            .map(|record| self.pool_info(record)))
    }

    fn drain_worker(&mut self, worker_id: &str, grace: Option<Duration>) -> Result<u32, ApiError> {
        let worker = self
            .workers
            .get_mut(worker_id)
            .filter(|worker| worker.conn.is_some())
            .ok_or_else(|| ApiError::not_found("connected worker", worker_id))?;
        worker.draining = true;
        let running = worker.leased.len() as u32;
        if let Some(sender) = worker.sender() {
            let _ = sender.send(Ok(message(controller_message::Message::Drain(
                api::Drain {
                    grace: grace.map(duration_to_proto),
                },
            ))));
        }
        info!(worker = %worker_id, running, "worker asked to drain");
        Ok(running)
    }

    fn touch(&mut self, run_id: RunId) {
        self.pending.dirty_runs.push(run_id);
    }

    // ----- DAGs -----

    fn register_dag(&mut self, version: NewDagVersion) -> Result<Registered, ApiError> {
        let NewDagVersion {
            dag_id,
            description,
            schedule,
            canonical_json,
            digest,
            mut plan,
        } = version;
        // A task naming a pool that does not exist would wait forever.
        let missing: Vec<FieldViolation> = plan
            .tasks
            .iter()
            .enumerate()
            .filter_map(|(position, task)| {
                let pool = task.pool.as_ref()?;
                (!self.limits.pools.contains_key(pool)).then(|| {
                    FieldViolation::new(
                        format!("tasks[{position}].pool"),
                        format!("pool `{pool}` does not exist; create it first (`baton pool create {pool} --slots N`)"),
                    )
                })
            })
            .take(20)
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::InvalidArgument(missing));
        }
        // Runs a schedule or an asset creates get the params' defaults.
        if matches!(
            plan.settings.trigger,
            DagTrigger::Timetable(_) | DagTrigger::Assets(_)
        ) && let Err(violations) = plan.settings.params.resolve(&serde_json::Map::new())
        {
            return Err(ApiError::InvalidArgument(
                violations
                    .into_iter()
                    .map(|violation| {
                        FieldViolation::new(
                            format!("spec.params.{}", violation.field),
                            format!(
                                "a DAG with a schedule needs a default for every param ({})",
                                violation.reason
                            ),
                        )
                    })
                    .collect(),
            ));
        }
        let now = now_micros();
        let previous = self.dags.get(&dag_id);
        if let Some(meta) = previous
            && meta.latest_digest == digest
        {
            // The same version. A record written before it said what its
            // schedule listens to gets that now, so the DAG is scheduled.
            let mut refreshed = meta.clone();
            set_scheduling_fields(&mut refreshed, &plan);
            if refreshed == *meta {
                return Ok(Registered {
                    meta: meta.clone(),
                    version: meta.latest_version,
                    created: false,
                });
            }
            plan.version = meta.latest_version;
            let plan = Arc::new(plan);
            self.parts.plans.set_latest(Arc::clone(&plan));
            self.pending
                .ops
                .push(Op::put(keys::dag(&dag_id), refreshed.encode_to_vec()));
            info!(%dag_id, version = refreshed.latest_version, "dag record brought up to date");
            self.dags.insert(dag_id.clone(), refreshed.clone());
            self.index_dag_triggers(&refreshed, Some(&plan));
            self.follow_schedule(
                &dag_id,
                &plan,
                timestamp_opt_to_micros(refreshed.created_at.as_ref()),
            );
            // `max_active_runs` may have grown.
            self.deferred.push_back(Deferred::Admit(dag_id.clone()));
            return Ok(Registered {
                version: refreshed.latest_version,
                meta: refreshed,
                created: false,
            });
        }
        let version = previous.map_or(1, |meta| meta.latest_version + 1);
        let mut meta = DagMetaRecord {
            dag_id: dag_id.to_string(),
            latest_version: version,
            paused: previous.is_some_and(|meta| meta.paused),
            created_at: previous
                .map_or_else(|| micros_to_timestamp_opt(now), |meta| meta.created_at),
            updated_at: micros_to_timestamp_opt(now),
            description,
            schedule: schedule.unwrap_or_default(),
            task_count: plan.len() as u32,
            latest_digest: digest.clone(),
            ..DagMetaRecord::default()
        };
        set_scheduling_fields(&mut meta, &plan);
        let record = DagVersionRecord {
            dag_id: dag_id.to_string(),
            version,
            spec_json: canonical_json,
            digest,
            created_at: micros_to_timestamp_opt(now),
        };
        self.pending.ops.push(Op::put(
            keys::dag_version(&dag_id, version),
            record.encode_to_vec(),
        ));
        self.pending
            .ops
            .push(Op::put(keys::dag(&dag_id), meta.encode_to_vec()));
        plan.version = version;
        let plan = Arc::new(plan);
        self.parts.plans.set_latest(Arc::clone(&plan));
        info!(%dag_id, version, "dag version registered");
        self.dags.insert(dag_id.clone(), meta.clone());
        self.index_dag_triggers(&meta, Some(&plan));
        self.follow_schedule(
            &dag_id,
            &plan,
            timestamp_opt_to_micros(meta.created_at.as_ref()),
        );
        // `max_active_runs` may have grown.
        self.deferred.push_back(Deferred::Admit(dag_id.clone()));
        Ok(Registered {
            meta,
            version,
            created: true,
        })
    }

    fn set_paused(&mut self, dag_id: &DagId, paused: bool) -> Result<DagMetaRecord, ApiError> {
        let meta = self
            .dags
            .get_mut(dag_id)
            .ok_or_else(|| ApiError::not_found("dag", dag_id))?;
        if meta.paused == paused {
            return Ok(meta.clone());
        }
        meta.paused = paused;
        meta.updated_at = micros_to_timestamp_opt(now_micros());
        let meta = meta.clone();
        self.pending
            .ops
            .push(Op::put(keys::dag(dag_id), meta.encode_to_vec()));
        info!(%dag_id, paused, "dag pause state changed");
        if !paused {
            if let Some(parked) = self.parked.remove(dag_id) {
                for item in parked {
                    self.push_ready(item);
                }
            }
            self.start_queued(dag_id);
        }
        // Paused: its schedule stops; unpaused: it goes on (with catchup,
        // from where it stopped; without, from the latest interval).
        self.evaluate_schedule(dag_id);
        Ok(meta)
    }

    fn delete_dag(&mut self, dag_id: &DagId) -> Result<(), ApiError> {
        if !self.dags.contains_key(dag_id) {
            return Err(ApiError::not_found("dag", dag_id));
        }
        let active = self
            .runs
            .values()
            .filter(|entry| &entry.dag_id == dag_id)
            .count()
            + self
                .pending_creates
                .keys()
                .filter(|key| key.dag_id() == Some(dag_id))
                .count();
        if active > 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "dag `{dag_id}` has {active} active run(s); cancel them or wait for them to finish before deleting it"
            )));
        }
        let events_in_flight = self
            .pending_events
            .values()
            .any(|pending| pending.entries.iter().any(|entry| &entry.dag_id == dag_id));
        if events_in_flight {
            return Err(ApiError::Unavailable(format!(
                "an event is creating a run of dag `{dag_id}`; try again"
            )));
        }
        if let Some(backfill) = self.backfill_by_dag.get(dag_id) {
            return Err(ApiError::FailedPrecondition(format!(
                "dag `{dag_id}` has backfill {backfill} running; cancel it before deleting the dag"
            )));
        }
        self.dags.remove(dag_id);
        self.parked.remove(dag_id);
        self.parts.plans.forget_latest(dag_id);
        self.schedules.remove(dag_id);
        self.wall_timers
            .remove(&deadlines::WallTimer::Schedule(dag_id.clone()));
        self.unindex_dag_triggers(dag_id);
        for uri in self
            .asset_queues
            .remove(dag_id)
            .unwrap_or_default()
            .into_keys()
        {
            self.pending
                .ops
                .push(Op::delete(keys::asset_queue_entry(dag_id, &uri)));
        }
        self.schedule_positions.remove(dag_id);
        self.pending
            .ops
            .push(Op::delete(keys::schedule_position(dag_id)));
        self.pending
            .ops
            .push(Op::delete_prefix(keys::intervals(dag_id)));
        self.pending.ops.push(Op::delete(keys::dag(dag_id)));
        self.pending
            .ops
            .push(Op::delete_prefix(keys::dag_versions(dag_id)));
        self.pending
            .ops
            .push(Op::delete_prefix(keys::idempotency_prefix(dag_id)));
        info!(%dag_id, "dag deleted");
        Ok(())
    }

    /// Deletes the records of finished runs (of a deleted DAG). Active runs
    /// are kept.
    fn purge_runs(&mut self, dag_id: &DagId, run_ids: &[RunId]) -> Result<u32, ApiError> {
        let mut purged = 0;
        for run_id in run_ids {
            if self.runs.contains_key(run_id) || self.loading.contains_key(run_id) {
                continue;
            }
            self.pending.ops.push(Op::delete(keys::run(run_id)));
            self.pending
                .ops
                .push(Op::delete_prefix(keys::tasks(run_id)));
            self.pending
                .ops
                .push(Op::delete_prefix(keys::run_attempts(run_id)));
            self.pending
                .ops
                .push(Op::delete_prefix(keys::history(run_id)));
            self.pending.ops.push(Op::delete(keys::active(run_id)));
            self.pending
                .ops
                .push(Op::delete(keys::dag_run(dag_id, run_id)));
            purged += 1;
        }
        Ok(purged)
    }

    // ----- Runs -----

    fn trigger_run(&mut self, request: TriggerRequest, reply: super::Reply<(RunRecord, bool)>) {
        let TriggerRequest {
            plan,
            params_json,
            logical_date,
            idempotency_key,
        } = request;
        let dag_id = plan.dag_id.clone();
        let Some(meta) = self.dags.get(&dag_id) else {
            let _ = reply.send(Err(ApiError::not_found("dag", &dag_id)));
            return;
        };
        if meta.latest_version != plan.version {
            let _ = reply.send(Err(ApiError::Unavailable(format!(
                "dag `{dag_id}` changed to version {} while the run was being created; trigger again",
                meta.latest_version
            ))));
            return;
        }
        let now = now_micros();
        let logical_date = if logical_date == 0 { now } else { logical_date };
        let entry = RunEntry::new(
            RunId::generate(),
            plan,
            Arc::from(params_json),
            RunOrigin::manual(logical_date, idempotency_key),
            now,
        );
        self.create_run(entry, Some(reply));
    }

    /// Stores and starts a new run. A run with an idempotency key, or one
    /// that owns a data interval, is created only if nothing holds that
    /// claim yet (a conditional write); otherwise `reply` gets the run that
    /// holds it, with `created: false`.
    /// Returns the run that holds the claim (this one, or the one that
    /// already held it or is being created for it).
    pub(super) fn create_run(
        &mut self,
        entry: RunEntry,
        reply: Option<super::Reply<(RunRecord, bool)>>,
    ) -> RunId {
        let dag_id = entry.dag_id.clone();
        let run_id = entry.run_id;
        let Some(claim) = RunClaim::of(&entry) else {
            self.pending
                .ops
                .push(Op::put(keys::dag_run(&dag_id, &run_id), Vec::new()));
            self.pending
                .ops
                .push(Op::put(keys::active(&run_id), Vec::new()));
            self.install_run(entry, None);
            self.start_run(run_id);
            info!(%dag_id, %run_id, "run created");
            if let Some(reply) = reply {
                let record = run_record(&self.runs[&run_id]);
                self.reply_after_commit(reply, Ok((record, true)));
            }
            return run_id;
        };
        if let Some(&existing) = self.active_keys.get(&claim.create_key()) {
            if let Some(reply) = reply {
                let record = run_record(&self.runs[&existing]);
                self.reply_after_commit(reply, Ok((record, false)));
            }
            return existing;
        }
        if let Some(pending) = self.pending_creates.get_mut(&claim.create_key()) {
            pending.waiters.extend(reply);
            return pending.entry.run_id;
        }
        let (claim_key, claim_value) = claim.record(&entry);
        let conditional = Conditional {
            preconditions: vec![Precondition::DoesNotExist(claim_key.clone())],
            ops: vec![
                Op::put(claim_key, claim_value),
                Op::put(
                    keys::run(&run_id),
                    RunRecord {
                        leader_term: self.parts.term,
                        ..run_record(&entry)
                    }
                    .encode_to_vec(),
                ),
                Op::put(keys::dag_run(&dag_id, &run_id), Vec::new()),
                Op::put(keys::active(&run_id), Vec::new()),
            ],
        };
        let claim = claim.create_key();
        self.note_creating(&dag_id, true);
        self.pending.conditionals.push((conditional, claim.clone()));
        self.pending_creates.insert(
            claim,
            PendingCreate {
                entry,
                waiters: reply.into_iter().collect(),
            },
        );
        run_id
    }

    /// Installs and starts a run whose conditional creation was stored (its
    /// record was in that write, so it is not dirty until it changes).
    pub(super) fn install_created(&mut self, entry: RunEntry) {
        let run_id = entry.run_id;
        self.install_run(entry, None);
        if let Some(installed) = self.runs.get_mut(&run_id) {
            installed.dirty = false;
        }
        self.start_run(run_id);
    }

    /// Finishes a conditional run creation once its write returned.
    fn finish_create(&mut self, key: CreateKey, applied: bool) {
        if matches!(key, CreateKey::Event(..)) {
            self.finish_event(key, applied);
            return;
        }
        let Some(PendingCreate { entry, waiters }) = self.pending_creates.remove(&key) else {
            return;
        };
        self.note_creating(&entry.dag_id, false);
        let origin = entry.origin.clone();
        let entry_run_id = entry.run_id;
        if applied {
            let run_id = entry.run_id;
            info!(dag_id = %entry.dag_id, %run_id, trigger = ?origin.trigger, "run created");
            self.install_created(entry);
            self.cancel_if_backfill_cancelled(run_id);
            let record = run_record(&self.runs[&run_id]);
            for (index, waiter) in waiters.into_iter().enumerate() {
                let record = record.clone();
                self.reply_after_commit(waiter, Ok((record, index == 0)));
            }
            return;
        }
        // The claim was taken before: whoever asked learns which run holds it.
        if let CreateKey::Interval(dag_id, start) = &key {
            info!(%dag_id, interval_start = *start, "the interval already has a run");
            self.on_interval_taken(dag_id.clone(), &origin);
            // A backfill that counted on this run follows the one that
            // holds the interval.
            if let Some((backfill_id, _)) = self.backfill_runs.get(&entry_run_id).cloned() {
                self.on_backfill_interval_taken(&backfill_id, dag_id.clone(), *start);
            }
        }
        if waiters.is_empty() {
            return;
        }
        let store = Arc::clone(&self.parts.store);
        tokio::spawn(async move {
            let result = existing_run_for_key(store.as_ref(), &key).await;
            for waiter in waiters {
                let _ = waiter.send(result.clone().map(|record| (record, false)));
            }
        });
    }

    /// Puts a run in memory (new, recovered or reloaded) and queues what can
    /// proceed. `grace_deadline` is set when recovering after a restart.
    fn install_run(&mut self, mut entry: RunEntry, grace_deadline: Option<Instant>) {
        let run_id = entry.run_id;
        entry.traced = self.sampled(run_id);
        let lost_at = grace_deadline
            .unwrap_or_else(|| Instant::now() + self.parts.config.worker_lost_timeout);
        if let Some(claim) = RunClaim::of(&entry) {
            self.active_keys.insert(claim.create_key(), run_id);
        }
        let mut ready = Vec::new();
        let mut retries = Vec::new();
        let mut pending = Vec::new();
        let mut controller_sensors = Vec::new();
        for (index, slot) in entry.tasks.iter().enumerate() {
            let index = index as TaskIndex;
            match slot.state {
                TaskState::Ready => ready.push(index),
                TaskState::UpForRetry | TaskState::UpForReschedule => {
                    retries.push((index, slot.attempt, slot.next_attempt_at))
                }
                TaskState::Running
                    if slot.worker.is_none()
                        && sensors::runs_on_controller(&entry.task(index).kind) =>
                {
                    controller_sensors.push(index)
                }
                TaskState::Pending => pending.push(index),
                TaskState::Leased | TaskState::Running => {
                    if let (Some(attempt_id), Some(worker)) = (slot.attempt_id, &slot.worker) {
                        self.attempts.insert(attempt_id, (run_id, index));
                        let task = entry.task(index);
                        let worker = self.workers.entry(worker, lost_at);
                        worker.hold(attempt_id, task.resources);
                        // Counted before any new lease, so that a limit is
                        // not exceeded while workers re-announce.
                        self.limits.acquire(attempt_id, &entry.dag_id, task);
                        self.parts.logs.open_attempt(LogKey {
                            run_id,
                            task_id: entry.task_id(index),
                            attempt: slot.attempt,
                        });
                    }
                }
                _ => {}
            }
        }
        let running = entry.state == RunState::Running;
        let final_run = baton_common::states::run_state_is_final(entry.state);
        let (dag_id, logical_date, state) =
            (entry.dag_id.clone(), entry.logical_date(), entry.state);
        self.runs.insert(run_id, entry);
        if final_run {
            return;
        }
        self.track_run_state(&dag_id, run_id, logical_date, RunState::Unspecified, state);
        // A queued run can miss its SLA too.
        self.arm_deadlines(run_id);
        for index in controller_sensors {
            self.resume_controller_sensor(run_id, index);
        }
        for index in ready {
            self.queue_ready(run_id, index);
        }
        let now = now_micros();
        for (index, attempt, due) in retries {
            let delay = Duration::from_micros(due.saturating_sub(now).max(0) as u64);
            self.retry_timers.insert((run_id, index, attempt), delay);
        }
        if running {
            // Read back from the store: pending tasks decide on what their
            // upstream did meanwhile.
            let decided: Vec<TaskIndex> = pending
                .into_iter()
                .filter_map(|index| self.decide(run_id, index))
                .collect();
            self.tasks_ended(run_id, decided);
        }
    }

    fn cancel_run(&mut self, run_id: RunId, reason: &str) -> Result<RunRecord, ApiError> {
        let Some(entry) = self.runs.get(&run_id) else {
            return Err(ApiError::FailedPrecondition(format!(
                "run {run_id} is not active; it already finished"
            )));
        };
        if baton_common::states::run_state_is_final(entry.state) {
            return Err(ApiError::FailedPrecondition(format!(
                "run {run_id} already finished ({})",
                baton_common::states::run_state_name(entry.state)
            )));
        }
        let reason = if reason.is_empty() {
            "cancelled by user".to_string()
        } else {
            reason.to_string()
        };
        let count = entry.tasks.len() as TaskIndex;
        for index in 0..count {
            let state = self.runs[&run_id].slot(index).state;
            if baton_common::states::task_state_is_final(state) {
                continue;
            }
            self.cancel_open_attempt(run_id, index, &reason);
            let entry = self.runs.get_mut(&run_id).expect("checked above");
            entry.set_state(index, TaskState::Cancelled);
            let slot = entry.slot_mut(index);
            if slot.error.is_none() {
                slot.error = Some(reason.clone().into_boxed_str());
            }
            if slot.ended_at == 0 {
                slot.ended_at = now_micros();
            }
        }
        info!(%run_id, %reason, "run cancelled");
        self.finish_run(run_id, RunState::Cancelled, Some(reason));
        Ok(run_record(&self.runs[&run_id]))
    }

    fn retry_task(&mut self, command: Command) {
        let Command::RetryTask { run_id, .. } = command else {
            return;
        };
        if !self.runs.contains_key(&run_id) {
            // A finished run: read it back first; commands for it wait.
            self.load_run_then(run_id, command);
            return;
        }
        let Command::RetryTask {
            task_id,
            include_downstream,
            include_upstream,
            reply,
            ..
        } = command
        else {
            return;
        };
        let result = self.clear_tasks(run_id, &task_id, include_downstream, include_upstream);
        self.reply_on_run(run_id, reply, result);
    }

    /// Replies to a request on a run once the batch is durable. One that
    /// failed changed nothing: a finished run read back for it does not
    /// stay in memory.
    fn reply_on_run<T: Send + 'static>(
        &mut self,
        run_id: RunId,
        reply: super::Reply<T>,
        result: Result<T, ApiError>,
    ) {
        if result.is_err()
            && self
                .runs
                .get(&run_id)
                .is_some_and(|entry| baton_common::states::run_state_is_final(entry.state))
        {
            self.pending.effects.push(Effect::DropRun(run_id));
        }
        self.reply_after_commit(reply, result);
    }

    fn on_run_loaded(&mut self, run_id: RunId, result: Result<Option<LoadedRun>, ApiError>) {
        let waiting = self.loading.remove(&run_id).unwrap_or_default();
        let error = match result {
            Ok(Some(loaded)) => {
                if !self.runs.contains_key(&run_id) {
                    self.install_run(loaded.entry, None);
                }
                None
            }
            Ok(None) => Some(ApiError::not_found("run", run_id)),
            Err(error) => Some(error),
        };
        for command in waiting {
            match (&error, command) {
                (Some(error), Command::RetryTask { reply, .. }) => {
                    let _ = reply.send(Err(error.clone()));
                }
                (Some(error), Command::MarkTask { reply, .. }) => {
                    let _ = reply.send(Err(error.clone()));
                }
                (Some(error), Command::ClearForBackfill { run_id }) => {
                    warn!(%run_id, %error, "cannot read back a run the backfill reruns");
                    self.on_backfill_run_ended(run_id);
                }
                (Some(_), _) => {}
                (None, command) => self.handle(command),
            }
        }
    }

    /// Clears a task (and its downstream) so it runs again.
    fn clear_tasks(
        &mut self,
        run_id: RunId,
        task_id: &TaskId,
        include_downstream: bool,
        include_upstream: bool,
    ) -> Result<(RunRecord, Vec<String>), ApiError> {
        let entry = self
            .runs
            .get(&run_id)
            .ok_or_else(|| ApiError::not_found("run", run_id))?;
        let plan = Arc::clone(&entry.plan);
        let mut start = self.task_of_request(run_id, task_id)?;
        if let Some(instance) = self.runs[&run_id].instance(start) {
            if !include_upstream {
                self.check_instance_expanded(run_id, instance, "clear")?;
                let names = self.clear_instance(run_id, start, instance, include_downstream);
                info!(%run_id, %task_id, cleared = names.len(), "tasks cleared");
                return Ok((run_record(&self.runs[&run_id]), names));
            }
            // With its upstream cleared, the list is made again: the whole
            // mapped task runs again.
            start = instance.parent;
        }
        let mut cleared = if include_downstream {
            plan.downstream_closure(start)
        } else {
            vec![start]
        };
        if include_upstream {
            cleared.extend(plan.upstream_closure(start));
            cleared.sort_unstable();
            cleared.dedup();
        }
        let names = self.clear_set(run_id, &cleared);
        info!(%run_id, %task_id, cleared = cleared.len(), "tasks cleared");
        Ok((run_record(&self.runs[&run_id]), names))
    }

    /// Clears a set of tasks of a run at once (in index order) so they run
    /// again, reopening the run if it finished; returns their ids. Cleared
    /// together, a task's cleared upstream is pending when it is evaluated,
    /// whatever the order of the file.
    pub(super) fn clear_set(&mut self, run_id: RunId, cleared: &[TaskIndex]) -> Vec<String> {
        let Some(entry) = self.runs.get(&run_id) else {
            return Vec::new();
        };
        let plan = Arc::clone(&entry.plan);
        let cleared = cleared.to_vec();
        let in_set: HashSet<TaskIndex> = cleared.iter().copied().collect();
        // A cleared mapped task runs its instances again.
        let instances: Vec<TaskIndex> = cleared
            .iter()
            .filter_map(|index| entry.mapped.get(index))
            .flat_map(|group| group.first..group.first + group.len)
            .collect();
        for &index in cleared.iter().chain(&instances) {
            self.cancel_open_attempt(run_id, index, "task cleared by user");
        }
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return Vec::new();
        };
        for index in &cleared {
            entry.map_items.remove(index);
        }
        // Downstream tasks outside the set no longer count how a cleared
        // task ended.
        for &index in &cleared {
            if let Some(how) = Ended::of(entry.slot(index).state) {
                for &down in &plan.downstream[index as usize] {
                    if !in_set.contains(&down) {
                        entry.tasks[down as usize].count_upstream(how, false);
                    }
                }
            }
        }
        for &index in cleared.iter().chain(&instances) {
            entry.set_state(index, TaskState::Pending);
            entry.slot_mut(index).reset_for_rerun();
        }
        for &index in &cleared {
            entry.recount_group(index);
            entry.recount_upstream(index);
        }
        self.reopen_run(run_id);
        self.touch(run_id);
        let decided: Vec<TaskIndex> = cleared
            .iter()
            .filter_map(|&index| self.decide(run_id, index))
            .collect();
        self.tasks_ended(run_id, decided);
        cleared
            .iter()
            .map(|&index| plan.task(index).id.to_string())
            .collect()
    }

    /// A finished run whose tasks were cleared or marked runs again.
    pub(super) fn reopen_run(&mut self, run_id: RunId) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        if !baton_common::states::run_state_is_final(entry.state) {
            return;
        }
        let from = entry.state;
        entry.set_run_state(RunState::Running);
        entry.ended_at = 0;
        entry.reason = None;
        if entry.started_at == 0 {
            entry.started_at = now_micros();
        }
        let (dag_id, logical_date) = (entry.dag_id.clone(), entry.logical_date());
        self.pending
            .ops
            .push(Op::put(keys::active(&run_id), Vec::new()));
        self.track_run_state(&dag_id, run_id, logical_date, from, RunState::Running);
        self.arm_deadlines(run_id);
        self.touch(run_id);
    }

    fn finish_run(&mut self, run_id: RunId, state: RunState, reason: Option<String>) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let from = entry.state;
        if !entry.set_run_state(state) {
            return;
        }
        entry.ended_at = now_micros();
        entry.reason = reason;
        let duration_ms = (entry.ended_at - entry.started_at.max(entry.created_at)) / 1_000;
        info!(dag_id = %entry.dag_id, %run_id, state = baton_common::states::run_state_name(state), duration_ms, "run finished");
        if entry.traced
            && let Some(traces) = &self.traces
        {
            let span = run_span(RunSpanFields {
                dag_id: entry.dag_id.as_str(),
                run_id,
                created_at: entry.created_at,
                ended_at: entry.ended_at,
                state: baton_common::states::run_state_name(state),
                failed: state == RunState::Failed,
                reason: entry.reason.as_deref(),
            });
            traces.encode(&span, &mut self.pending.spans);
        }
        let (dag_id, logical_date) = (entry.dag_id.clone(), entry.logical_date());
        self.pending.ops.push(Op::delete(keys::active(&run_id)));
        self.touch(run_id);
        self.pending.effects.push(Effect::DropRun(run_id));
        self.notify_run_ended(run_id);
        self.track_run_state(&dag_id, run_id, logical_date, from, state);
        self.on_run_ended(&dag_id, run_id);
    }

    /// A task of the run reached a final state: sensors watching the run
    /// may be satisfied now.
    fn on_task_ended(&mut self, run_id: RunId) {
        self.on_external_run_changed(run_id);
    }

    /// A task succeeded (its state is set): its outputs are recorded and
    /// its downstream move on.
    fn task_succeeded(&mut self, run_id: RunId, index: TaskIndex) {
        self.record_task_outputs(run_id, index);
        self.task_ended(run_id, index);
    }

    // ----- Dispatch -----

    fn queue_ready(&mut self, run_id: RunId, index: TaskIndex) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        let task = entry.task(index);
        self.ready_seq += 1;
        let item = ReadyItem {
            priority: task.priority,
            seq: self.ready_seq,
            run_id,
            index,
            ready_at: now_micros(),
        };
        self.push_ready(item);
    }

    fn push_ready(&mut self, item: ReadyItem) {
        let Some(entry) = self.runs.get(&item.run_id) else {
            return;
        };
        if sensors::runs_on_controller(&entry.task(item.index).kind) {
            if entry.slot(item.index).state != TaskState::Ready || entry.state != RunState::Running
            {
                // Cleared, cancelled or started meanwhile (parked twice).
                return;
            }
            // No worker and no slot: it starts now, unless its DAG is
            // paused (then with the DAG's other parked tasks).
            if self.dags.get(&entry.dag_id).is_some_and(|meta| meta.paused) {
                self.parked
                    .entry(entry.dag_id.clone())
                    .or_default()
                    .push(item);
            } else {
                self.start_controller_sensor(item.run_id, item.index);
            }
            return;
        }
        let route = &entry.plan.routes[entry.plan_index(item.index) as usize];
        self.ready.push(route, item);
        self.dispatch_needed = true;
    }

    /// Leases ready tasks to workers that can take them: across routes, the
    /// best waiting task (priority, then age) that some worker can take
    /// goes first. A task a limit holds back is parked on that limit.
    fn dispatch(&mut self) {
        if !self.dispatch_needed {
            return;
        }
        self.dispatch_needed = false;
        if !self.workers.has_free_slots() {
            return;
        }
        let mut routes = self.ready.routes();
        loop {
            // The route whose best task is best among routes a worker can
            // take now; routes no worker can take drop out for this turn.
            let mut best: Option<(usize, Arc<str>, ReadyItem)> = None;
            let mut position = 0;
            while position < routes.len() {
                let Some(&top) = self.ready.peek(&routes[position]) else {
                    routes.swap_remove(position);
                    continue;
                };
                if best.as_ref().is_some_and(|(_, _, item)| *item >= top) {
                    position += 1;
                    continue;
                }
                match self.workers.best_for(&routes[position]) {
                    Some(worker_id) => {
                        best = Some((position, worker_id, top));
                        position += 1;
                    }
                    None => {
                        routes.swap_remove(position);
                    }
                }
            }
            let Some((position, worker_id, _)) = best else {
                break;
            };
            let Some(item) = self.ready.pop(&routes[position]) else {
                continue;
            };
            let Some(entry) = self.runs.get(&item.run_id) else {
                continue;
            };
            if entry.slot(item.index).state != TaskState::Ready || entry.state != RunState::Running
            {
                continue;
            }
            if self.dags.get(&entry.dag_id).is_some_and(|meta| meta.paused) {
                self.parked
                    .entry(entry.dag_id.clone())
                    .or_default()
                    .push(item);
                continue;
            }
            let task = entry.task(item.index);
            if let Some(limit) =
                self.limits
                    .blocked_by(&entry.dag_id, task, entry.plan.max_active_tasks)
            {
                self.limits.park(limit, item);
                continue;
            }
            self.lease(item.run_id, item.index, &worker_id);
        }
    }

    /// Gives back what an attempt held (its worker's slot and resources,
    /// its pool and concurrency counts) and sends tasks that waited on the
    /// freed limits back to their ready queues.
    fn release_attempt(&mut self, attempt_id: &AttemptId, worker_id: Option<&str>) {
        if let Some(worker) = worker_id.and_then(|id| self.workers.get_mut(id))
            && worker.release(attempt_id)
        {
            self.dispatch_needed = true;
        }
        for (key, room) in self.limits.release(attempt_id) {
            for item in self.limits.unpark(&key, room) {
                self.push_ready(item);
            }
        }
    }

    fn lease(&mut self, run_id: RunId, index: TaskIndex, worker_id: &Arc<str>) {
        let Some(sender) = self
            .workers
            .get(worker_id)
            .and_then(|worker| worker.sender().cloned())
        else {
            return;
        };
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        let attempt = entry.slot(index).attempt + 1;
        let sensor_deadline = if sensors::sensor_of(&entry.task(index).kind).is_some() {
            self.sensor_deadline_for(run_id, index)
        } else {
            0
        };
        let kind = match self.assignment_kind(run_id, index, attempt, sensor_deadline) {
            Ok(kind) => kind,
            Err(error) => {
                self.fail_before_start(run_id, index, error);
                self.task_ended(run_id, index);
                return;
            }
        };
        let Some(worker) = self.workers.get_mut(worker_id) else {
            return;
        };
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let attempt_id = AttemptId::generate();
        let trace_context = self
            .traces
            .is_some()
            .then(|| crate::traces::attempt_trace_context(run_id, attempt_id, entry.traced));
        let now = now_micros();
        entry.set_state(index, TaskState::Leased);
        entry
            .slot_mut(index)
            .begin_attempt(attempt_id, Some(Arc::clone(worker_id)), now);
        let task = entry.task(index);
        let task_id = entry.task_id(index);
        worker.hold(attempt_id, task.resources);
        self.limits.acquire(attempt_id, &entry.dag_id, task);
        self.attempts.insert(attempt_id, (run_id, index));
        debug!(dag_id = %entry.dag_id, %run_id, %task_id, attempt, %attempt_id, worker = %worker_id, "task leased");
        let assign = api::Assign {
            attempt_id: attempt_id.to_string(),
            dag_id: entry.dag_id.to_string(),
            run_id: run_id.to_string(),
            task_id: task_id.to_string(),
            attempt,
            logical_date: micros_to_timestamp_opt(entry.origin.logical_date),
            params_json: entry.params_json.to_string(),
            kind: Some(kind),
            timeout: task.timeout.map(duration_to_proto),
            max_output_bytes: self.parts.config.limits.max_output_bytes as u32,
            data_interval_start: micros_to_timestamp_opt(entry.origin.data_interval_start),
            data_interval_end: micros_to_timestamp_opt(entry.origin.data_interval_end),
            map_index: entry.instance(index).map(|instance| instance.map_index),
            trace_context,
        };
        let log_key = LogKey {
            run_id,
            task_id,
            attempt,
        };
        self.touch(run_id);
        self.pending.effects.push(Effect::OpenLog(log_key));
        self.pending.effects.push(Effect::Send {
            to: sender,
            message: message(controller_message::Message::Assign(assign)),
        });
    }

    // ----- Attempts ending -----

    /// Cancels the task's attempt if one is leased or running (the task is
    /// being cancelled, cleared or marked); its worker is told to stop.
    pub(super) fn cancel_open_attempt(&mut self, run_id: RunId, index: TaskIndex, reason: &str) {
        if self
            .runs
            .get(&run_id)
            .is_some_and(|entry| is_open(entry.slot(index).state))
        {
            self.end_attempt_by_controller(run_id, index, AttemptOutcome::Cancelled, reason, true);
        }
    }

    /// Ends the current attempt of an open task on the controller's own
    /// decision (cancel, clear, worker lost): records the attempt and, when
    /// `tell_worker`, asks the worker to kill it. The task's state is left to
    /// the caller.
    fn end_attempt_by_controller(
        &mut self,
        run_id: RunId,
        index: TaskIndex,
        outcome: AttemptOutcome,
        reason: &str,
        tell_worker: bool,
    ) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let now = now_micros();
        let slot = entry.slot_mut(index);
        let Some(attempt_id) = slot.attempt_id else {
            return;
        };
        slot.outcome = outcome;
        slot.ended_at = now;
        slot.error = Some(reason.to_string().into_boxed_str());
        let worker_id = slot.worker.clone();
        self.attempts.remove(&attempt_id);
        self.record_attempt_end(run_id, index, 0);
        self.touch(run_id);
        // A worker still holding the attempt gives it back when it reports
        // it stopped; otherwise nobody runs it and its limits are free now.
        let held = worker_id
            .as_deref()
            .and_then(|id| self.workers.get(id))
            .is_some_and(|worker| worker.leased.contains_key(&attempt_id));
        if !held {
            self.release_attempt(&attempt_id, None);
        }
        if tell_worker
            && let Some(sender) = worker_id
                .as_deref()
                .and_then(|id| self.workers.get(id))
                .and_then(|w| w.sender().cloned())
        {
            self.pending.effects.push(Effect::Send {
                to: sender,
                message: message(controller_message::Message::Cancel(Cancel {
                    attempt_id: attempt_id.to_string(),
                    reason: reason.to_string(),
                })),
            });
        }
    }

    /// Queues the spans of what a stored batch (or, with nothing to store,
    /// the last round) ended.
    fn export_spans(&self, spans: &mut EncodedSpans) {
        if let Some(traces) = &self.traces
            && !spans.is_empty()
        {
            traces.export_encoded(spans);
        }
    }

    /// Whether the spans of this run are to be exported: traces are on and
    /// the sampler keeps it. Asked once per run ([`RunEntry::traced`]).
    fn sampled(&self, run_id: RunId) -> bool {
        self.traces
            .as_ref()
            .is_some_and(|traces| traces.samples(run_sampling_id(run_id)))
    }

    /// Writes the record of the task's current attempt, which just ended,
    /// and seals its log.
    fn record_attempt_end(&mut self, run_id: RunId, index: TaskIndex, log_bytes: u64) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        let attempt = entry.slot(index).attempt;
        let task_id = entry.task_id(index);
        let mut record = views::attempt_record(entry, index, log_bytes);
        record.leader_term = self.parts.term;
        if entry.traced
            && let Some(traces) = &self.traces
        {
            let slot = entry.slot(index);
            if let Some(attempt_id) = slot.attempt_id {
                let fields = AttemptSpanFields {
                    identity: AttemptIdentity {
                        dag_id: entry.dag_id.as_str(),
                        run_id,
                        task_id: task_id.as_str(),
                        attempt,
                        attempt_id,
                        worker_id: slot.worker.as_deref(),
                    },
                    leased_at: slot.leased_at,
                    recorded_at: slot.ended_at.max(now_micros()),
                    outcome: slot.outcome,
                    exit_code: slot.exit_code,
                    error: slot.error.as_deref(),
                };
                traces.encode_attempt(&fields, &mut self.pending.spans);
            }
        }
        self.pending.ops.push(Op::put(
            keys::attempt(&run_id, task_id.as_str(), attempt),
            record.encode_to_vec(),
        ));
        self.pending.effects.push(Effect::Log(LogCommand::Seal {
            key: LogKey {
                run_id,
                task_id,
                attempt,
            },
        }));
    }

    /// After a failed attempt: another attempt after the backoff, or the
    /// task fails and its downstream cannot run.
    fn after_failed_attempt(&mut self, run_id: RunId, index: TaskIndex) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let task = entry.task(index);
        let retry = task.retry;
        let max_attempts = entry.slot(index).max_attempts(task.retries);
        let attempt = entry.slot(index).attempt;
        if attempt < max_attempts {
            let failed_since_clear = attempt - entry.slot(index).attempt_base;
            let delay = retry.delay_for(failed_since_clear, rand::rng().random::<f64>());
            entry.set_state(index, TaskState::UpForRetry);
            entry.slot_mut(index).next_attempt_at = now_micros() + delay.as_micros() as Micros;
            self.retry_timers.insert((run_id, index, attempt), delay);
            info!(dag_id = %entry.dag_id, %run_id, task_id = %entry.task(index).id, attempt, delay_ms = delay.as_millis() as u64, "task up for retry");
        } else {
            entry.set_state(index, TaskState::Failed);
            info!(dag_id = %entry.dag_id, %run_id, task_id = %entry.task_id(index), attempt, "task failed");
            self.touch(run_id);
            // Before the task's end moves its downstream (and maybe ends
            // the run): the notifications go out in that order.
            self.notify_retry_exhausted(run_id, index);
            self.task_ended(run_id, index);
        }
        self.touch(run_id);
    }

    fn on_retry_due(&mut self, run_id: RunId, index: TaskIndex, attempt: u32) {
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        let slot = entry.slot(index);
        if !matches!(
            slot.state,
            TaskState::UpForRetry | TaskState::UpForReschedule
        ) || slot.attempt != attempt
            || entry.state != RunState::Running
        {
            return;
        }
        entry.set_state(index, TaskState::Ready);
        entry.slot_mut(index).next_attempt_at = 0;
        self.touch(run_id);
        self.queue_ready(run_id, index);
    }

    // ----- Workers -----

    fn on_worker_event(&mut self, conn_id: u64, event: WorkerEvent) {
        match event {
            WorkerEvent::Connected { register, sender } => {
                self.on_worker_connected(conn_id, register, sender)
            }
            WorkerEvent::Disconnected => {
                if let Some(id) = self.workers.detach(conn_id) {
                    info!(worker = %id, "worker disconnected");
                }
            }
            WorkerEvent::Message(message) => {
                let lost_timeout = self.parts.config.worker_lost_timeout;
                let Some(worker) = self.workers.by_conn_mut(conn_id) else {
                    return;
                };
                worker.lost_at = Instant::now() + lost_timeout;
                let worker_id = Arc::clone(&worker.id);
                let Some(sender) = worker.sender().cloned() else {
                    return;
                };
                match message {
                    worker_message::Message::Heartbeat(heartbeat) => {
                        if worker.draining != heartbeat.draining {
                            worker.draining = heartbeat.draining;
                            info!(worker = %worker_id, draining = heartbeat.draining, "worker drain state changed");
                        }
                    }
                    worker_message::Message::TaskStarted(started) => {
                        self.on_task_started(&worker_id, &sender, started)
                    }
                    worker_message::Message::LogChunk(chunk) => self.on_log_chunk(&sender, chunk),
                    worker_message::Message::TaskResult(result) => {
                        self.on_task_result(&worker_id, &sender, result)
                    }
                    worker_message::Message::Register(_) => {
                        let _ = sender.send(Err(tonic::Status::invalid_argument(
                            "register: sent twice on one stream",
                        )));
                        self.workers.detach(conn_id);
                    }
                }
            }
        }
    }

    fn on_worker_connected(&mut self, conn_id: u64, register: api::Register, sender: WorkerSender) {
        let now = Instant::now();
        let lost_at = now + self.parts.config.worker_lost_timeout;
        let worker = self.workers.entry(&register.worker_id, lost_at);
        worker.hostname = register.hostname.clone();
        worker.version = register.version.clone();
        worker.labels = register.labels.clone();
        worker.queues = register
            .queues
            .iter()
            .filter_map(|queue| QueueName::new(queue.clone()).ok())
            .collect();
        worker.slots = register.slots;
        worker.resources = register
            .resources
            .map(|offered| baton_common::spec::Resources {
                cpu_millis: offered.cpu_millis,
                memory_bytes: offered.memory_bytes,
            })
            .unwrap_or_default();
        worker.runs_commands = register.runs_commands;
        worker.runs_sensors = register.runs_sensors;
        worker.handlers = register
            .handlers
            .iter()
            .filter_map(|handler| HandlerName::new(handler.clone()).ok())
            .collect();
        worker.lost_at = lost_at;
        worker.draining = false;
        let worker_id = Arc::clone(&worker.id);
        self.workers.attach(
            &worker_id,
            Connection {
                conn_id,
                sender: sender.clone(),
            },
        );
        let _ = sender.send(Ok(message(controller_message::Message::Registered(
            api::Registered {
                controller_id: self.parts.config.controller_id.clone(),
                heartbeat_interval: Some(duration_to_proto(self.parts.config.heartbeat_interval)),
            },
        ))));
        info!(worker = %worker_id, hostname = %register.hostname, slots = register.slots, queues = ?register.queues, "worker connected");
        // Reconcile what the worker says it holds with what the store says.
        let announced: HashSet<AttemptId> = register
            .attempt_ids
            .iter()
            .filter_map(|id| id.parse().ok())
            .collect();
        for attempt_id in &announced {
            let current = self.attempts.get(attempt_id).and_then(|&(run_id, index)| {
                self.runs.get(&run_id).and_then(|entry| {
                    let slot = entry.slot(index);
                    (slot.attempt_id == Some(*attempt_id)
                        && slot.worker.as_deref() == Some(&*worker_id))
                    .then(|| entry.task(index).resources)
                })
            });
            if let Some(worker) = self.workers.get_mut(&worker_id) {
                // A stale attempt still takes a slot until the worker
                // reports it stopped.
                worker.hold(*attempt_id, current.unwrap_or_default());
            }
            if current.is_none() {
                let _ = sender.send(Ok(message(controller_message::Message::Cancel(Cancel {
                    attempt_id: attempt_id.to_string(),
                    reason: "stale attempt: the controller no longer expects it".into(),
                }))));
            }
        }
        let missing: Vec<AttemptId> = self
            .workers
            .get(&worker_id)
            .map(|worker| {
                worker
                    .leased
                    .keys()
                    .filter(|id| !announced.contains(id))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for attempt_id in missing {
            self.release_attempt(&attempt_id, Some(&worker_id));
            let never_started = self
                .attempts
                .get(&attempt_id)
                .is_some_and(|&(run_id, index)| {
                    self.runs
                        .get(&run_id)
                        .is_some_and(|entry| entry.slot(index).state == TaskState::Leased)
                });
            if never_started {
                self.return_unstarted_lease(attempt_id, &worker_id);
            } else {
                let reason =
                    format!("worker `{worker_id}` reconnected without the attempt (it restarted)");
                self.fail_lost_attempt(attempt_id, &reason);
            }
        }
        self.dispatch_needed = true;
    }

    /// An attempt leased to a worker that reconnected without it and never
    /// reported it started (the assignment was lost with the previous
    /// leader or stream): it never ran, so the task is ready again at once
    /// and the attempt does not count against its retries.
    fn return_unstarted_lease(&mut self, attempt_id: AttemptId, worker_id: &str) {
        let Some(&(run_id, index)) = self.attempts.get(&attempt_id) else {
            return;
        };
        let reason =
            format!("worker `{worker_id}` never received the assignment; the task is ready again");
        if let Some(entry) = self.runs.get(&run_id) {
            info!(dag_id = %entry.dag_id, %run_id, task_id = %entry.task_id(index), attempt = entry.slot(index).attempt, %attempt_id, "{reason}");
        }
        self.end_attempt_by_controller(run_id, index, AttemptOutcome::WorkerLost, &reason, false);
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        entry.slot_mut(index).attempt_base += 1;
        if entry.set_state(index, TaskState::Ready) {
            self.touch(run_id);
            self.queue_ready(run_id, index);
        }
    }

    /// Fails a current attempt as `worker_lost`, retrying if allowed.
    fn fail_lost_attempt(&mut self, attempt_id: AttemptId, reason: &str) {
        let Some(&(run_id, index)) = self.attempts.get(&attempt_id) else {
            return;
        };
        if let Some(entry) = self.runs.get(&run_id) {
            warn!(dag_id = %entry.dag_id, %run_id, task_id = %entry.task_id(index), attempt = entry.slot(index).attempt, %attempt_id, %reason, "attempt lost");
        }
        self.end_attempt_by_controller(run_id, index, AttemptOutcome::WorkerLost, reason, false);
        self.after_failed_attempt(run_id, index);
    }

    fn check_liveness(&mut self) {
        let now = Instant::now();
        for worker_id in self.workers.expired(now) {
            let Some(worker) = self.workers.remove(&worker_id) else {
                continue;
            };
            let timeout = humantime::format_duration(self.parts.config.worker_lost_timeout);
            warn!(worker = %worker_id, attempts = worker.leased.len(), "worker lost: no message for {timeout}");
            if let Some(conn) = &worker.conn {
                let _ = conn.sender.send(Err(tonic::Status::unavailable(
                    "declared lost: no heartbeat in time; reconnect",
                )));
            }
            let reason = format!("worker `{worker_id}` lost: no heartbeat for {timeout}");
            self.dispatch_needed = true;
            for attempt_id in worker.leased.into_keys() {
                self.release_attempt(&attempt_id, None);
                self.fail_lost_attempt(attempt_id, &reason);
            }
        }
    }

    fn on_task_started(
        &mut self,
        worker_id: &Arc<str>,
        sender: &WorkerSender,
        started: api::TaskStarted,
    ) {
        let Ok(attempt_id) = started.attempt_id.parse::<AttemptId>() else {
            return;
        };
        let Some(&(run_id, index)) = self.attempts.get(&attempt_id) else {
            let _ = sender.send(Ok(message(controller_message::Message::Cancel(Cancel {
                attempt_id: started.attempt_id,
                reason: "stale attempt".into(),
            }))));
            return;
        };
        let Some(entry) = self.runs.get_mut(&run_id) else {
            return;
        };
        if entry.slot(index).worker.as_deref() != Some(&**worker_id)
            || entry.slot(index).state != TaskState::Leased
        {
            return;
        }
        entry.set_state(index, TaskState::Running);
        let started_at = timestamp_opt_to_micros(started.started_at.as_ref());
        entry.slot_mut(index).started_at = if started_at == 0 {
            now_micros()
        } else {
            started_at
        };
        self.touch(run_id);
    }

    fn on_log_chunk(&mut self, sender: &WorkerSender, chunk: api::LogChunk) {
        let attempt_id = chunk.attempt_id.parse::<AttemptId>().ok();
        let target = attempt_id.and_then(|id| self.attempts.get(&id).copied());
        let (Some(attempt_id), Some((run_id, index))) = (attempt_id, target) else {
            let _ = sender.send(Ok(stale_ack(
                &chunk.attempt_id,
                "log for an attempt that is not current",
            )));
            return;
        };
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        let key = LogKey {
            run_id,
            task_id: entry.task_id(index),
            attempt: entry.slot(index).attempt,
        };
        let _ = self.log_writer.send(LogCommand::Append {
            key,
            attempt_id,
            offset: chunk.offset,
            data: chunk.data,
            ack: sender.clone(),
        });
    }

    fn on_task_result(&mut self, worker_id: &Arc<str>, sender: &WorkerSender, result: TaskResult) {
        let Ok(attempt_id) = result.attempt_id.parse::<AttemptId>() else {
            return;
        };
        // Whatever the attempt's fate, the worker no longer runs it.
        self.release_attempt(&attempt_id, Some(worker_id));
        let current = self
            .attempts
            .get(&attempt_id)
            .copied()
            .filter(|&(run_id, index)| {
                self.runs.get(&run_id).is_some_and(|entry| {
                    let slot = entry.slot(index);
                    slot.attempt_id == Some(attempt_id)
                        && slot.worker.as_deref() == Some(&**worker_id)
                        && is_open(slot.state)
                })
            });
        let Some((run_id, index)) = current else {
            let _ = sender.send(Ok(stale_ack(
                &result.attempt_id,
                "result for an attempt that is not current",
            )));
            return;
        };
        self.attempts.remove(&attempt_id);
        let max_output = self.parts.config.limits.max_output_bytes;
        let entry = self.runs.get_mut(&run_id).expect("checked above");
        let task_id = entry.task_id(index);
        let mut outcome =
            AttemptOutcome::try_from(result.outcome).unwrap_or(AttemptOutcome::Unspecified);
        let mut error = result.error;
        let mut output = None;
        if outcome == AttemptOutcome::Succeeded && !result.output_json.is_empty() {
            match validate_output(&result.output_json, max_output) {
                Ok(()) => output = Some(result.output_json.into_boxed_str()),
                Err(reason) => {
                    outcome = AttemptOutcome::Error;
                    error = reason;
                }
            }
        }
        if outcome == AttemptOutcome::Unspecified {
            outcome = AttemptOutcome::Error;
            error = "the worker reported no outcome".into();
        }
        // A branch's output must name direct downstream tasks; otherwise
        // the attempt failed.
        let mut chosen = None;
        if outcome == AttemptOutcome::Succeeded && entry.task(index).branch {
            let plan_index = entry.plan_index(index);
            match self.branch_choice(run_id, plan_index, output.as_deref()) {
                Ok(tasks) => chosen = Some(tasks),
                Err(reason) => {
                    outcome = AttemptOutcome::Error;
                    error = reason;
                }
            }
        }
        let entry = self.runs.get_mut(&run_id).expect("checked above");
        if outcome == AttemptOutcome::Rescheduled && !sensors::reschedules(&entry.task(index).kind)
        {
            outcome = AttemptOutcome::Error;
            error =
                "the worker reported `rescheduled` for a task that is not a reschedule-mode sensor"
                    .into();
        }
        let now = now_micros();
        let slot = entry.slot_mut(index);
        let started_at = timestamp_opt_to_micros(result.started_at.as_ref());
        if started_at != 0 {
            slot.started_at = started_at;
        }
        let ended_at = timestamp_opt_to_micros(result.ended_at.as_ref());
        slot.ended_at = if ended_at == 0 { now } else { ended_at };
        slot.exit_code = result.exit_code;
        slot.outcome = outcome;
        slot.error = (!error.is_empty()).then(|| error.into_boxed_str());
        slot.output = output;
        let attempt = slot.attempt;
        // For the debug lines below, at their level: the fields of a span
        // are formatted for the log as it is made, whether or not a line
        // uses them, which was about 3 % of a fan-out's CPU at `info`, and
        // a traced process checked each layer's filter on every enter, exit
        // and close as well. Lines at `info` and above name the attempt, or
        // the run they are about, themselves. Not exported (the attempt's
        // own span is).
        let span = debug_span!("task_result", dag_id = %entry.dag_id, %run_id, task_id = %task_id, attempt);
        let _guard = span.enter();
        self.record_attempt_end(run_id, index, result.log_bytes);
        self.pending.effects.push(Effect::Send {
            to: sender.clone(),
            message: message(controller_message::Message::Ack(Ack {
                attempt_id: attempt_id.to_string(),
                result_recorded: true,
                ..Ack::default()
            })),
        });
        self.touch(run_id);
        if outcome == AttemptOutcome::WorkerDrained {
            // The worker went away on purpose (scale-down): the task runs
            // again elsewhere, and this attempt uses none of its retries.
            let entry = self.runs.get_mut(&run_id).expect("checked above");
            info!(dag_id = %entry.dag_id, %run_id, task_id = %entry.task_id(index), attempt, "attempt stopped by a worker drain; the task is ready again");
            entry.slot_mut(index).attempt_base += 1;
            if entry.set_state(index, TaskState::Ready) {
                self.queue_ready(run_id, index);
            }
        } else if outcome == AttemptOutcome::Succeeded {
            let entry = self.runs.get_mut(&run_id).expect("checked above");
            entry.set_state(index, TaskState::Success);
            debug!("task succeeded");
            let mut ended = match chosen {
                Some(chosen) => self.skip_unchosen(run_id, index, &chosen),
                None => Vec::new(),
            };
            self.record_task_outputs(run_id, index);
            ended.push(index);
            self.tasks_ended(run_id, ended);
        } else if outcome == AttemptOutcome::Rescheduled {
            self.reschedule_sensor(run_id, index);
        } else if outcome == AttemptOutcome::TimedOut && self.is_sensor_deadline(run_id, index) {
            self.sensor_timed_out(run_id, index);
        } else {
            debug!(outcome = ?outcome, "attempt failed");
            self.after_failed_attempt(run_id, index);
        }
    }

    // ----- Group commit -----

    /// Cuts a batch from what changed, unless one is in flight.
    fn flush(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        if !self.pending.has_writes() && self.dirty_backfills.is_empty() {
            // Nothing to store and nothing in flight: the state is durable,
            // so effects and new watchers can be served now.
            let effects = std::mem::take(&mut self.pending.effects);
            self.deliver_snapshots(Vec::new());
            for effect in effects {
                self.apply(effect);
            }
            let mut spans = std::mem::take(&mut self.pending.spans);
            self.export_spans(&mut spans);
            self.pending.spans = spans;
            return;
        }
        let mut ops = std::mem::take(&mut self.pending.ops);
        ops.extend(self.backfill_ops());
        let mut watch_effects = Vec::new();
        let term = self.parts.term;
        let dirty_runs = std::mem::take(&mut self.pending.dirty_runs);
        for run_id in dirty_runs {
            let Some(entry) = self.runs.get_mut(&run_id) else {
                continue;
            };
            let watching = !entry.watchers.is_empty();
            let dirty_tasks = std::mem::take(&mut entry.dirty_tasks);
            for index in dirty_tasks {
                entry.tasks[index as usize].dirty = false;
                let mut record = task_record(entry, index);
                record.leader_term = term;
                ops.push(Op::put(
                    keys::task(&run_id, &record.task_id),
                    record.encode_to_vec(),
                ));
                if watching {
                    let event = WatchRunResponse {
                        event: Some(watch_run_response::Event::Task(views::task_view(record))),
                    };
                    for watcher in &entry.watchers {
                        watch_effects.push(Effect::Watch {
                            to: watcher.clone(),
                            event: event.clone(),
                        });
                    }
                }
            }
            if !entry.changes.is_empty() {
                let changes = std::mem::take(&mut entry.changes);
                if let Some(metrics) = crate::metrics::metrics() {
                    metrics.observe_changes(entry, &changes);
                }
                let mut events = history::events(entry, changes, &self.parts.config.controller_id)
                    .into_iter()
                    .peekable();
                while events.peek().is_some() {
                    let chunk: Vec<_> = events.by_ref().take(history::EVENTS_PER_RECORD).collect();
                    self.history_seq = self.history_seq.wrapping_add(1);
                    let at = timestamp_opt_to_micros(chunk[0].at.as_ref());
                    let record = RunHistoryRecord { events: chunk };
                    ops.push(Op::put(
                        keys::history_batch(&run_id, at, term, self.history_seq),
                        record.encode_to_vec(),
                    ));
                }
            }
            if entry.dirty {
                entry.dirty = false;
                let mut record = run_record(entry);
                record.leader_term = term;
                ops.push(Op::put(keys::run(&run_id), record.encode_to_vec()));
                if watching {
                    let event = WatchRunResponse {
                        event: Some(watch_run_response::Event::Run(views::run_view(&record))),
                    };
                    for watcher in &entry.watchers {
                        watch_effects.push(Effect::Watch {
                            to: watcher.clone(),
                            event: event.clone(),
                        });
                    }
                }
            }
        }
        let ops = dedupe_ops(ops);
        // Watch events go first so a watcher sees a run's last change before
        // the run is dropped from memory.
        let mut effects = watch_effects;
        self.deliver_snapshots_into(&mut effects);
        effects.append(&mut self.pending.effects);
        let (conditionals, creates): (Vec<Conditional>, Vec<CreateKey>) =
            std::mem::take(&mut self.pending.conditionals)
                .into_iter()
                .unzip();
        let op_count = ops.len();
        let done = spawn_commit(Arc::clone(&self.parts.store), ops, conditionals);
        self.in_flight = Some(InFlight {
            done,
            effects,
            spans: std::mem::replace(
                &mut self.pending.spans,
                std::mem::take(&mut self.spare_spans),
            ),
            creates,
            ops: op_count,
        });
    }

    /// Snapshots for new watchers, built from state that is about to be (or
    /// already is) durable.
    fn deliver_snapshots_into(&mut self, effects: &mut Vec<Effect>) {
        for (run_id, watcher) in std::mem::take(&mut self.new_watchers) {
            let Some(entry) = self.runs.get(&run_id) else {
                continue;
            };
            let tasks = (0..entry.tasks.len() as TaskIndex)
                .map(|index| views::task_view(task_record(entry, index)))
                .collect();
            let snapshot = RunSnapshot {
                run: Some(views::run_view(&run_record(entry))),
                tasks,
            };
            effects.push(Effect::Watch {
                to: watcher.clone(),
                event: WatchRunResponse {
                    event: Some(watch_run_response::Event::Snapshot(snapshot)),
                },
            });
            effects.push(Effect::AddWatcher {
                run_id,
                to: watcher,
            });
        }
    }

    fn deliver_snapshots(&mut self, mut effects: Vec<Effect>) {
        self.deliver_snapshots_into(&mut effects);
        for effect in effects {
            self.apply(effect);
        }
    }

    fn on_committed(&mut self, result: CommitResult) -> Result<(), SchedulerError> {
        let Some(batch) = self.in_flight.take() else {
            return Ok(());
        };
        // A batch stored while this controller led is fine; acting on it is
        // not if the lease may have lapsed meanwhile (a long pause).
        if let Some(lease) = &self.parts.lease
            && !lease.is_valid()
        {
            return Err(SchedulerError::LeaseLapsed);
        }
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                error!(%error, ops = batch.ops, "cannot store a batch; the scheduler stops (restart to recover from the store)");
                return Err(SchedulerError::Store(error));
            }
        };
        for effect in batch.effects {
            self.apply(effect);
        }
        let mut spans = batch.spans;
        self.export_spans(&mut spans);
        // Its memory serves a later batch's spans.
        if self.pending.spans.is_empty() {
            self.pending.spans = spans;
        } else {
            self.spare_spans = spans;
        }
        for (key, applied) in batch.creates.into_iter().zip(outcome.applied) {
            self.finish_create(key, applied);
        }
        Ok(())
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Send { to, message } => {
                // A closed stream means the worker is gone; its entry handles that.
                let _ = to.send(Ok(message));
            }
            Effect::Reply(reply) => reply(),
            Effect::Watch { to, event } => {
                let is_final = matches!(&event.event, Some(watch_run_response::Event::Run(run)) if baton_common::states::run_state_is_final(RunState::try_from(run.state).unwrap_or(RunState::Unspecified)));
                if to.capacity() <= WATCH_RESERVE {
                    let _ = to.try_send(Err(tonic::Status::resource_exhausted(
                        "watcher fell behind; watch the run again",
                    )));
                    self.remove_watcher(&to);
                } else {
                    let _ = to.try_send(Ok(event));
                }
                if is_final {
                    self.remove_watcher(&to);
                }
            }
            Effect::AddWatcher { run_id, to } => {
                if let Some(entry) = self.runs.get_mut(&run_id)
                    && !baton_common::states::run_state_is_final(entry.state)
                {
                    entry.watchers.push(to);
                }
            }
            Effect::OpenLog(key) => self.parts.logs.open_attempt(key),
            Effect::Notify {
                targets,
                notification,
            } => self.parts.notifications.submit(targets, *notification),
            Effect::Log(command) => {
                let _ = self.log_writer.send(command);
            }
            Effect::DropRun(run_id) => {
                let finished = self.runs.get(&run_id).is_some_and(|entry| {
                    baton_common::states::run_state_is_final(entry.state)
                        && !entry.dirty
                        && entry.dirty_tasks.is_empty()
                });
                if finished && let Some(entry) = self.runs.remove(&run_id) {
                    self.disarm_deadlines(run_id, &entry.plan.sla_tasks);
                    self.disarm_controller_sensors(&entry);
                    if let Some(claim) = RunClaim::of(&entry) {
                        self.active_keys.remove(&claim.create_key());
                    }
                    for slot in &entry.tasks {
                        if let Some(attempt_id) = slot.attempt_id {
                            self.attempts.remove(&attempt_id);
                        }
                    }
                }
            }
        }
    }

    fn remove_watcher(&mut self, watcher: &WatchSender) {
        for entry in self.runs.values_mut() {
            entry
                .watchers
                .retain(|existing| !existing.same_channel(watcher));
        }
    }
}

/// The fields of a DAG's record copied from its latest version's schedule,
/// so that a new leader knows them without parsing every spec.
fn set_scheduling_fields(meta: &mut DagMetaRecord, plan: &crate::plan::DagPlan) {
    meta.max_active_runs = plan.settings.max_active_runs;
    meta.timezone = plan.settings.timezone.name().to_string();
    meta.catchup = plan.settings.catchup;
    meta.trigger_kind = trigger_kind(&plan.settings.trigger) as i32;
    meta.trigger_names = match &plan.settings.trigger {
        DagTrigger::Events(names) => names.iter().map(ToString::to_string).collect(),
        DagTrigger::Assets(uris) => uris.iter().map(ToString::to_string).collect(),
        DagTrigger::Manual | DagTrigger::Timetable(_) => Vec::new(),
    };
    meta.outputs = plan
        .tasks
        .iter()
        .flat_map(|task| {
            task.outputs.iter().map(|uri| AssetOutput {
                task_id: task.id.to_string(),
                uri: uri.to_string(),
            })
        })
        .collect();
}

fn trigger_kind(trigger: &DagTrigger) -> DagTriggerKind {
    match trigger {
        DagTrigger::Manual => DagTriggerKind::Manual,
        DagTrigger::Timetable(_) => DagTriggerKind::Timetable,
        DagTrigger::Events(_) => DagTriggerKind::Events,
        DagTrigger::Assets(_) => DagTriggerKind::Assets,
    }
}

/// Checks a task's output: JSON, within the size limit.
fn validate_output(output: &str, max_bytes: usize) -> Result<(), String> {
    if output.len() > max_bytes {
        return Err(format!(
            "output is {} bytes; the limit is {max_bytes}",
            output.len()
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(output)
        .map(|_| ())
        .map_err(|error| format!("output is not valid JSON: {error}"))
}

/// What a new run must claim before it exists: its idempotency key, or the
/// data interval it runs.
enum RunClaim {
    Idempotency(DagId, String),
    Interval(DagId, Micros),
}

impl RunClaim {
    fn of(entry: &RunEntry) -> Option<RunClaim> {
        if let Some(key) = &entry.origin.idempotency_key {
            return Some(RunClaim::Idempotency(entry.dag_id.clone(), key.clone()));
        }
        entry
            .origin
            .claims_interval()
            .then(|| RunClaim::Interval(entry.dag_id.clone(), entry.origin.data_interval_start))
    }

    fn create_key(&self) -> CreateKey {
        match self {
            RunClaim::Idempotency(dag_id, key) => {
                CreateKey::Idempotency(dag_id.clone(), key.clone())
            }
            RunClaim::Interval(dag_id, start) => CreateKey::Interval(dag_id.clone(), *start),
        }
    }

    /// The key that holds the claim and its value, naming `entry`.
    fn record(&self, entry: &RunEntry) -> (Vec<u8>, Vec<u8>) {
        match self {
            RunClaim::Idempotency(dag_id, key) => (
                keys::idempotency(dag_id, key),
                IdempotencyRecord {
                    run_id: entry.run_id.to_string(),
                    idempotency_key: key.clone(),
                }
                .encode_to_vec(),
            ),
            RunClaim::Interval(dag_id, start) => (
                keys::interval(dag_id, *start),
                IntervalRecord {
                    run_id: entry.run_id.to_string(),
                    data_interval_end: micros_to_timestamp_opt(entry.origin.data_interval_end),
                }
                .encode_to_vec(),
            ),
        }
    }
}

async fn existing_run_for_key(
    store: &dyn crate::store::Store,
    key: &CreateKey,
) -> Result<RunRecord, ApiError> {
    let internal = |error: StoreError| ApiError::Internal(error.to_string());
    let run_id = match key {
        CreateKey::Idempotency(dag_id, key) => {
            let record: IdempotencyRecord = get_record(store, &keys::idempotency(dag_id, key))
                .await
                .map_err(internal)?
                .ok_or_else(|| ApiError::Internal("idempotency key vanished".into()))?;
            record.run_id
        }
        CreateKey::Interval(dag_id, start) => {
            let record: IntervalRecord = get_record(store, &keys::interval(dag_id, *start))
                .await
                .map_err(internal)?
                .ok_or_else(|| ApiError::Internal("interval record vanished".into()))?;
            record.run_id
        }
        CreateKey::Event(..) => {
            return Err(ApiError::Internal("an event key names no run".into()));
        }
    };
    let run_id: RunId = run_id
        .parse()
        .map_err(|error: baton_common::ids::IdError| ApiError::Internal(error.reason))?;
    get_record(store, &keys::run(&run_id))
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found("run", run_id))
}
