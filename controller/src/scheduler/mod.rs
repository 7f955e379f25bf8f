//! The scheduler: the single owner of active runs, ready queues and
//! connected workers, and the only writer of the store.
//!
//! It is an actor. API handlers and worker streams send it [`Command`]s
//! through a [`SchedulerHandle`]; it applies each to its in-memory state at
//! once, collects the resulting writes and effects (messages to workers,
//! replies to callers, watch events), and hands the writes to the store as
//! one batch while the previous batch is not in flight (group commit). Only
//! when a batch is durable are its effects carried out, so nothing is seen
//! before it is stored. Scheduling is event-driven: a completion touches
//! only its downstream tasks, and no loop scans all tasks or all runs.
//!
//! # Layout
//! - `state`: runs and task slots, and the declared state machines.
//! - `workers`: connected workers, their slots and leased attempts.
//! - `routing`: which worker may take a ready task, ready heaps by route.
//! - `rules`: trigger rules as a pure function of the upstream's counts.
//! - `limits`: pools, `max_active_tasks`, `max_active`, and the tasks they
//!   hold back.
//! - `actor`: the event loop and the handling of every command.
//! - `flush`: turning dirty state into a batch, and effects.
//! - `history`: a run's changes as history events, with their causes.
//! - `recovery`: rebuilding active runs from the store.
//! - `timers`: the wall-clock timer queue (schedules, SLAs, time sensors).
//! - `views`: records and API views of the scheduler's state.

mod actor;
mod flush;
pub mod history;
pub mod limits;
pub mod recovery;
pub mod routing;
pub mod rules;
pub mod state;
mod timers;
pub mod views;
mod workers;

use std::sync::Arc;

use baton_common::error::{ApiError, ApiResult};
use baton_common::ids::{DagId, PoolName, RunId, TaskId};
use baton_common::pb::api::{
    self as api, AssetUpdate, Backfill, ControllerMessage, Event, PoolInfo, Register,
    worker_message,
};
use baton_common::pb::records::{DagMetaRecord, RunRecord};
use baton_common::time::Micros;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

pub use actor::{DEFAULT_MAX_ACTIVE_RUNS, ExternalObservation, Scheduler, next_scheduled_interval};
pub use state::WatchSender;

use crate::plan::{DagPlan, PlanRef};
use crate::store::StoreError;

/// The outbound half of a worker's stream.
pub type WorkerSender = mpsc::UnboundedSender<Result<ControllerMessage, Status>>;

pub(crate) type Reply<T> = oneshot::Sender<ApiResult<T>>;

/// A validated DAG version, ready to be stored.
pub struct NewDagVersion {
    pub dag_id: DagId,
    pub description: String,
    pub schedule: Option<String>,
    pub canonical_json: String,
    pub digest: String,
    /// Compiled with version 0; the scheduler sets the version it assigns.
    pub plan: DagPlan,
}

/// What `RegisterDag` did.
#[derive(Debug, Clone)]
pub struct Registered {
    pub meta: DagMetaRecord,
    pub version: u32,
    pub created: bool,
}

pub struct TriggerRequest {
    pub plan: PlanRef,
    pub params_json: String,
    pub logical_date: Micros,
    pub idempotency_key: Option<String>,
}

/// A message from a worker's stream, validated at the edge.
pub enum WorkerEvent {
    Connected {
        register: Register,
        sender: WorkerSender,
    },
    Message(worker_message::Message),
    Disconnected,
}

pub enum Command {
    RegisterDag {
        version: Box<NewDagVersion>,
        reply: Reply<Registered>,
    },
    SetPaused {
        dag_id: DagId,
        paused: bool,
        reply: Reply<DagMetaRecord>,
    },
    DeleteDag {
        dag_id: DagId,
        reply: Reply<()>,
    },
    PurgeRuns {
        dag_id: DagId,
        run_ids: Vec<RunId>,
        reply: Reply<u32>,
    },
    TriggerRun {
        request: Box<TriggerRequest>,
        reply: Reply<(RunRecord, bool)>,
    },
    CancelRun {
        run_id: RunId,
        reason: String,
        reply: Reply<RunRecord>,
    },
    RetryTask {
        run_id: RunId,
        task_id: TaskId,
        include_downstream: bool,
        include_upstream: bool,
        reply: Reply<(RunRecord, Vec<String>)>,
    },
    /// Sets a task's state by hand (success, failed or skipped).
    MarkTask {
        run_id: RunId,
        task_id: TaskId,
        state: api::TaskState,
        reason: String,
        reply: Reply<(RunRecord, api::TaskInstance)>,
    },
    Watch {
        run_id: RunId,
        sender: WatchSender,
        reply: oneshot::Sender<bool>,
    },
    Worker {
        conn_id: u64,
        event: WorkerEvent,
    },
    Status {
        reply: oneshot::Sender<SchedulerStatus>,
    },
    DrainWorker {
        worker_id: String,
        grace: Option<std::time::Duration>,
        reply: Reply<u32>,
    },
    Pool {
        change: PoolChange,
        reply: Reply<Option<PoolInfo>>,
    },
    ListPools {
        reply: oneshot::Sender<Vec<PoolInfo>>,
    },
    /// Internal: a finished run was read back from the store.
    RunLoaded {
        run_id: RunId,
        result: Result<Option<recovery::LoadedRun>, ApiError>,
    },
    EmitEvent {
        name: String,
        payload: serde_json::Map<String, serde_json::Value>,
        idempotency_key: Option<String>,
        reply: Reply<(Event, bool)>,
    },
    RecordAssetUpdate {
        uri: String,
        reply: Reply<AssetUpdate>,
    },
    /// A backfill planned by the API (intervals and their actions).
    CreateBackfill {
        backfill: Box<Backfill>,
        params_json: String,
        plan: PlanRef,
        reply: Reply<Backfill>,
    },
    CancelBackfill {
        backfill_id: String,
        reply: Reply<Backfill>,
    },
    /// Internal: what a store read found for an external-task sensor.
    ExternalObserved {
        run_id: RunId,
        index: crate::plan::TaskIndex,
        attempt: u32,
        observation: Result<ExternalObservation, String>,
    },
    /// Internal: the finished run an interval a backfill wanted already had.
    BackfillIntervalFound {
        backfill_id: Arc<str>,
        position: usize,
        found: Option<(RunId, api::RunState)>,
    },
    /// Internal: a backfill reruns a failed run (read back first if needed).
    ClearForBackfill {
        run_id: RunId,
    },
}

/// A change to the pools, validated by the API.
#[derive(Debug, Clone)]
pub enum PoolChange {
    Create {
        name: PoolName,
        slots: u32,
        description: String,
    },
    Update {
        name: PoolName,
        slots: Option<u32>,
        description: Option<String>,
    },
    Delete {
        name: PoolName,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A batch could not be stored: the in-memory state is ahead of the
    /// store and must not be used any further.
    #[error("cannot store scheduler state: {0}")]
    Store(#[from] StoreError),
    #[error("cannot recover scheduler state: {0}")]
    Recovery(String),
    /// The leader's lease could not be confirmed in time: its decisions are
    /// not acted on, and the controller steps down.
    #[error("the leader lease lapsed")]
    LeaseLapsed,
}

/// What the scheduler knows of workers and queues, for `cluster status`.
#[derive(Debug, Clone, Default)]
pub struct SchedulerStatus {
    pub workers: Vec<baton_common::pb::api::WorkerInfo>,
    pub queues: Vec<baton_common::pb::api::QueueInfo>,
    pub pools: Vec<PoolInfo>,
    pub active_runs: u32,
}

/// How API handlers and worker streams talk to the scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    sender: mpsc::Sender<Command>,
}

fn gone() -> ApiError {
    ApiError::Unavailable(
        "the scheduler is not running (the controller is shutting down or lost its store)".into(),
    )
}

impl SchedulerHandle {
    pub(crate) fn new(sender: mpsc::Sender<Command>) -> Self {
        Self { sender }
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> ApiResult<T> {
        let (reply, receiver) = oneshot::channel();
        self.sender.send(make(reply)).await.map_err(|_| gone())?;
        receiver.await.map_err(|_| gone())?
    }

    /// Sends a worker event; false when the scheduler is gone.
    pub async fn worker_event(&self, conn_id: u64, event: WorkerEvent) -> bool {
        self.sender
            .send(Command::Worker { conn_id, event })
            .await
            .is_ok()
    }

    pub async fn register_dag(&self, version: NewDagVersion) -> ApiResult<Registered> {
        self.ask(|reply| Command::RegisterDag {
            version: Box::new(version),
            reply,
        })
        .await
    }

    pub async fn set_paused(&self, dag_id: DagId, paused: bool) -> ApiResult<DagMetaRecord> {
        self.ask(|reply| Command::SetPaused {
            dag_id,
            paused,
            reply,
        })
        .await
    }

    pub async fn delete_dag(&self, dag_id: DagId) -> ApiResult<()> {
        self.ask(|reply| Command::DeleteDag { dag_id, reply }).await
    }

    pub async fn purge_runs(&self, dag_id: DagId, run_ids: Vec<RunId>) -> ApiResult<u32> {
        self.ask(|reply| Command::PurgeRuns {
            dag_id,
            run_ids,
            reply,
        })
        .await
    }

    pub async fn trigger_run(&self, request: TriggerRequest) -> ApiResult<(RunRecord, bool)> {
        self.ask(|reply| Command::TriggerRun {
            request: Box::new(request),
            reply,
        })
        .await
    }

    pub async fn cancel_run(&self, run_id: RunId, reason: String) -> ApiResult<RunRecord> {
        self.ask(|reply| Command::CancelRun {
            run_id,
            reason,
            reply,
        })
        .await
    }

    pub async fn retry_task(
        &self,
        run_id: RunId,
        task_id: TaskId,
        include_downstream: bool,
        include_upstream: bool,
    ) -> ApiResult<(RunRecord, Vec<String>)> {
        self.ask(|reply| Command::RetryTask {
            run_id,
            task_id,
            include_downstream,
            include_upstream,
            reply,
        })
        .await
    }

    pub async fn mark_task(
        &self,
        run_id: RunId,
        task_id: TaskId,
        state: api::TaskState,
        reason: String,
    ) -> ApiResult<(RunRecord, api::TaskInstance)> {
        self.ask(|reply| Command::MarkTask {
            run_id,
            task_id,
            state,
            reason,
            reply,
        })
        .await
    }

    /// Asks a connected worker to drain; answers how many attempts it runs.
    pub async fn drain_worker(
        &self,
        worker_id: String,
        grace: Option<std::time::Duration>,
    ) -> ApiResult<u32> {
        self.ask(|reply| Command::DrainWorker {
            worker_id,
            grace,
            reply,
        })
        .await
    }

    /// Creates, resizes or deletes a pool; answers the pool as it is now
    /// (`None` after a delete).
    pub async fn change_pool(&self, change: PoolChange) -> ApiResult<Option<PoolInfo>> {
        self.ask(|reply| Command::Pool { change, reply }).await
    }

    pub async fn list_pools(&self) -> ApiResult<Vec<PoolInfo>> {
        let (reply, receiver) = oneshot::channel();
        self.sender
            .send(Command::ListPools { reply })
            .await
            .map_err(|_| gone())?;
        receiver.await.map_err(|_| gone())
    }

    pub async fn status(&self) -> ApiResult<SchedulerStatus> {
        let (reply, receiver) = oneshot::channel();
        self.sender
            .send(Command::Status { reply })
            .await
            .map_err(|_| gone())?;
        receiver.await.map_err(|_| gone())
    }

    pub async fn emit_event(
        &self,
        name: String,
        payload: serde_json::Map<String, serde_json::Value>,
        idempotency_key: Option<String>,
    ) -> ApiResult<(Event, bool)> {
        self.ask(|reply| Command::EmitEvent {
            name,
            payload,
            idempotency_key,
            reply,
        })
        .await
    }

    pub async fn record_asset_update(&self, uri: String) -> ApiResult<AssetUpdate> {
        self.ask(|reply| Command::RecordAssetUpdate { uri, reply })
            .await
    }

    pub async fn create_backfill(
        &self,
        backfill: Backfill,
        params_json: String,
        plan: PlanRef,
    ) -> ApiResult<Backfill> {
        self.ask(|reply| Command::CreateBackfill {
            backfill: Box::new(backfill),
            params_json,
            plan,
            reply,
        })
        .await
    }

    pub async fn cancel_backfill(&self, backfill_id: String) -> ApiResult<Backfill> {
        self.ask(|reply| Command::CancelBackfill { backfill_id, reply })
            .await
    }

    /// Registers a watcher; false when the run is not active (the caller
    /// then serves it from the store).
    pub async fn watch(&self, run_id: RunId, sender: WatchSender) -> ApiResult<bool> {
        let (reply, receiver) = oneshot::channel();
        self.sender
            .send(Command::Watch {
                run_id,
                sender,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        receiver.await.map_err(|_| gone())
    }
}

/// Shared pieces the scheduler is built from.
pub struct SchedulerParts {
    pub config: Arc<crate::config::ControllerConfig>,
    /// Fenced on the leader's election key in cluster mode.
    pub store: crate::store::StoreRef,
    pub plans: Arc<crate::plan::PlanCache>,
    pub logs: crate::logs::LogStoreRef,
    /// Where notifications go once the change they report is durable.
    pub notifications: crate::notify::NotificationQueueRef,
    /// The leader's term, written into every record (0 on the embedded store).
    pub term: i64,
    /// Whether the leader's lease is still trusted (cluster mode).
    pub lease: Option<crate::election::LeaseClock>,
}
