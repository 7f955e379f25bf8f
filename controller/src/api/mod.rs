//! The gRPC services: thin adapters that validate a request, call the
//! scheduler (for changes) or the store (for reads), and convert the answer.
//! Every error goes through [`grpc`], the one mapping to `tonic::Status`.
//!
//! # Layout
//! - `dag`: `DagService`.
//! - `run`: `RunService`, including watch and log streams.
//! - `worker`: `WorkerService.Connect`, the worker stream.
//! - `cluster`: `ClusterService`, the cluster's status.
//! - `pool`: `PoolService`, pools.
//! - `schedule`: `BackfillService` and `EventService`: backfills, events,
//!   assets.
//!
//! Calls that change state, follow a run or a log, or need the scheduler go
//! to the leader: a follower answers them with `UNAVAILABLE` and the
//! leader's address (`ApiContext::leader`). Reads come from the store, so
//! any controller answers them.

pub mod cluster;
pub mod dag;
pub mod pool;
pub mod run;
pub mod schedule;
pub mod worker;

use std::pin::Pin;
use std::sync::Arc;

use baton_common::error::{ApiError, ApiResult};
use baton_common::ids::IdError;
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Response, Status};

use crate::config::ControllerConfig;
use crate::logs::LogStoreRef;
use crate::plan::PlanCache;
use crate::role::{LeaderTerm, Role};
use crate::store::{StoreError, StoreRef};

pub type GrpcResult<T> = Result<Response<T>, Status>;
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What every service reads from.
pub struct ApiContext {
    pub config: Arc<ControllerConfig>,
    pub store: StoreRef,
    pub plans: Arc<PlanCache>,
    pub logs: LogStoreRef,
    /// Leader or follower, as it changes.
    pub role: tokio::sync::watch::Receiver<Role>,
    /// Where clients and workers reach this controller.
    pub address: String,
    pub started_at: baton_common::time::Micros,
    /// Ends long-lived streams when the controller shuts down.
    pub shutdown: CancellationToken,
    /// The process's notification queue, whose counters metrics read.
    pub notifications: crate::notify::NotificationQueueRef,
}

impl ApiContext {
    /// The current leadership term, or `NotLeader` with the leader's address.
    pub fn leader(&self) -> ApiResult<LeaderTerm> {
        self.role.borrow().leader()
    }
}

pub type ApiContextRef = Arc<ApiContext>;

/// The one conversion from a handler's result to a gRPC answer.
pub fn grpc<T>(result: ApiResult<T>) -> GrpcResult<T> {
    result.map(Response::new).map_err(Status::from)
}

pub fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Unavailable(_) => ApiError::Unavailable(error.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Parses an id field, naming the field when it is invalid.
pub fn parse_id<T: std::str::FromStr<Err = IdError>>(field: &str, value: &str) -> ApiResult<T> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    value
        .parse()
        .map_err(|error: IdError| ApiError::invalid(field, error.reason))
}

/// A page size of 0 means the default; more than the maximum is an error.
pub fn page_size(field: &str, requested: u32) -> ApiResult<usize> {
    const DEFAULT: usize = 100;
    const MAX: u32 = 1_000;
    match requested {
        0 => Ok(DEFAULT),
        n if n > MAX => Err(ApiError::invalid(
            field,
            format!("{n} is over the maximum of {MAX}"),
        )),
        n => Ok(n as usize),
    }
}
