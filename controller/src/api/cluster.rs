//! `ClusterService`: the leader, the controllers, the workers and the
//! queues, as the leader sees them.

use std::time::Duration;

use baton_common::error::{ApiError, ApiResult, FieldViolation};
use baton_common::ids::{WorkerId, validate_name};
use baton_common::pb::api::cluster_service_server::ClusterService;
use baton_common::pb::api::{
    ControllerInfo, DrainWorkerRequest, DrainWorkerResponse, GetClusterStatusRequest,
    GetClusterStatusResponse,
};
use baton_common::time::{duration_from_proto, micros_to_timestamp_opt};
use serde::{Deserialize, Serialize};
use tonic::Request;
use tracing::instrument;

use super::{ApiContextRef, GrpcResult, grpc, store_error};
use crate::store::{Scan, keys};

/// What a controller writes about itself under `controllers/<id>` (cluster
/// mode; the key lives as long as the controller's membership lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub controller_id: String,
    pub address: String,
    pub started_at: i64,
}

/// Longest drain grace a caller may ask for.
const MAX_DRAIN_GRACE: Duration = Duration::from_secs(24 * 3600);

pub struct ClusterApi {
    context: ApiContextRef,
}

impl ClusterApi {
    pub fn new(context: ApiContextRef) -> Self {
        Self { context }
    }

    async fn status(&self) -> ApiResult<GetClusterStatusResponse> {
        let term = self.context.leader()?;
        let scheduler = term.scheduler.status().await?;
        let config = &self.context.config;
        let members = self
            .context
            .store
            .scan(Scan::prefix(keys::CONTROLLERS))
            .await
            .map_err(store_error)?;
        let mut controllers: Vec<ControllerInfo> = members
            .iter()
            .filter_map(|(_, value)| serde_json::from_slice::<Membership>(value).ok())
            .map(|member| ControllerInfo {
                leader: member.controller_id == config.controller_id,
                controller_id: member.controller_id,
                address: member.address,
                started_at: micros_to_timestamp_opt(member.started_at),
            })
            .collect();
        if controllers.is_empty() {
            // The embedded store: this controller is the only one.
            controllers.push(ControllerInfo {
                controller_id: config.controller_id.clone(),
                address: self.context.address.clone(),
                leader: true,
                started_at: micros_to_timestamp_opt(self.context.started_at),
            });
        }
        controllers.sort_by(|a, b| a.controller_id.cmp(&b.controller_id));
        Ok(GetClusterStatusResponse {
            store: self.context.store.kind().to_string(),
            leader_id: config.controller_id.clone(),
            leader_address: self.context.address.clone(),
            leader_term: term.term,
            leader_since: micros_to_timestamp_opt(term.since),
            controllers,
            workers: scheduler.workers,
            queues: scheduler.queues,
            active_runs: scheduler.active_runs,
            pools: scheduler.pools,
        })
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    #[instrument(skip_all)]
    async fn get_cluster_status(
        &self,
        _request: Request<GetClusterStatusRequest>,
    ) -> GrpcResult<GetClusterStatusResponse> {
        grpc(self.status().await)
    }

    #[instrument(skip_all, fields(worker = %request.get_ref().worker_id))]
    async fn drain_worker(
        &self,
        request: Request<DrainWorkerRequest>,
    ) -> GrpcResult<DrainWorkerResponse> {
        let request = request.into_inner();
        let result = async {
            let mut violations = Vec::new();
            if let Err(error) = validate_name(WorkerId::WHAT, &request.worker_id) {
                violations.push(FieldViolation::new("worker_id", error.reason));
            }
            let grace = request.grace.as_ref().map(duration_from_proto);
            if let Some(proto) = &request.grace
                && (proto.seconds < 0
                    || proto.nanos < 0
                    || grace.is_some_and(|g| g > MAX_DRAIN_GRACE))
            {
                violations.push(FieldViolation::new("grace", "grace must be from 0 to 24h"));
            }
            if !violations.is_empty() {
                return Err(ApiError::InvalidArgument(violations));
            }
            let term = self.context.leader()?;
            let running = term
                .scheduler
                .drain_worker(request.worker_id, grace)
                .await?;
            Ok(DrainWorkerResponse { running })
        }
        .await;
        grpc(result)
    }
}
