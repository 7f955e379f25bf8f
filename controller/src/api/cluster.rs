//! `ClusterService`: the leader, the controllers, the workers and the
//! queues, as the leader sees them.

use baton_common::error::ApiResult;
use baton_common::pb::api::cluster_service_server::ClusterService;
use baton_common::pb::api::{ControllerInfo, GetClusterStatusRequest, GetClusterStatusResponse};
use baton_common::time::micros_to_timestamp_opt;
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
}
