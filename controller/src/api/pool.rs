//! `PoolService`: validation of pool requests at the edge, then the
//! scheduler (the leader) applies them and stores them.

use baton_common::error::{ApiError, ApiResult, FieldViolation};
use baton_common::ids::{PoolName, validate_name};
use baton_common::pb::api::pool_service_server::PoolService;
use baton_common::pb::api::{
    CreatePoolRequest, CreatePoolResponse, DeletePoolRequest, DeletePoolResponse, GetPoolRequest,
    GetPoolResponse, ListPoolsRequest, ListPoolsResponse, PoolInfo, UpdatePoolRequest,
    UpdatePoolResponse,
};
use tonic::Request;
use tracing::instrument;

use super::{ApiContextRef, GrpcResult, grpc};
use crate::scheduler::PoolChange;

/// Largest pool; far above any cluster's slots.
pub const MAX_POOL_SLOTS: u32 = 1_000_000;
/// Longest pool description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;

pub struct PoolApi {
    context: ApiContextRef,
}

fn pool_name(name: &str) -> ApiResult<PoolName> {
    validate_name(PoolName::WHAT, name)
        .and_then(|()| PoolName::new(name))
        .map_err(|error| ApiError::InvalidArgument(vec![FieldViolation::new("name", error.reason)]))
}

fn check_slots(slots: u32, violations: &mut Vec<FieldViolation>) {
    if slots > MAX_POOL_SLOTS {
        violations.push(FieldViolation::new(
            "slots",
            format!("slots is {slots}; the limit is {MAX_POOL_SLOTS}"),
        ));
    }
}

fn check_description(description: &str, violations: &mut Vec<FieldViolation>) {
    if description.len() > MAX_DESCRIPTION_BYTES {
        violations.push(FieldViolation::new(
            "description",
            format!(
                "the description is {} bytes; the limit is {MAX_DESCRIPTION_BYTES}",
                description.len()
            ),
        ));
    }
}

/// `name` first (its error alone when it is bad), then everything else.
fn validated<T>(
    name: &str,
    check: impl FnOnce(&mut Vec<FieldViolation>),
    build: impl FnOnce(PoolName) -> T,
) -> ApiResult<T> {
    let name = pool_name(name)?;
    let mut violations = Vec::new();
    check(&mut violations);
    if violations.is_empty() {
        Ok(build(name))
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}

impl PoolApi {
    pub fn new(context: ApiContextRef) -> Self {
        Self { context }
    }

    async fn change(&self, change: PoolChange) -> ApiResult<Option<PoolInfo>> {
        let term = self.context.leader()?;
        term.scheduler.change_pool(change).await
    }

    async fn get(&self, name: &str) -> ApiResult<PoolInfo> {
        let name = pool_name(name)?;
        let term = self.context.leader()?;
        term.scheduler
            .list_pools()
            .await?
            .into_iter()
            .find(|pool| pool.name == name.as_str())
            .ok_or_else(|| ApiError::not_found("pool", &name))
    }
}

fn present(pool: Option<PoolInfo>) -> ApiResult<PoolInfo> {
    pool.ok_or_else(|| ApiError::Internal("the scheduler answered no pool".into()))
}

#[tonic::async_trait]
impl PoolService for PoolApi {
    #[instrument(skip_all, fields(pool = %request.get_ref().name))]
    async fn create_pool(
        &self,
        request: Request<CreatePoolRequest>,
    ) -> GrpcResult<CreatePoolResponse> {
        let request = request.into_inner();
        let result = async {
            let change = validated(
                &request.name,
                |violations| {
                    check_slots(request.slots, violations);
                    check_description(&request.description, violations);
                },
                |name| PoolChange::Create {
                    name,
                    slots: request.slots,
                    description: request.description.clone(),
                },
            )?;
            let pool = present(self.change(change).await?)?;
            Ok(CreatePoolResponse { pool: Some(pool) })
        }
        .await;
        grpc(result)
    }

    #[instrument(skip_all, fields(pool = %request.get_ref().name))]
    async fn update_pool(
        &self,
        request: Request<UpdatePoolRequest>,
    ) -> GrpcResult<UpdatePoolResponse> {
        let request = request.into_inner();
        let result = async {
            let change = validated(
                &request.name,
                |violations| {
                    if let Some(slots) = request.slots {
                        check_slots(slots, violations);
                    }
                    if let Some(description) = &request.description {
                        check_description(description, violations);
                    }
                    if request.slots.is_none() && request.description.is_none() {
                        violations.push(FieldViolation::new(
                            "slots",
                            "nothing to change: give `slots` and/or `description`",
                        ));
                    }
                },
                |name| PoolChange::Update {
                    name,
                    slots: request.slots,
                    description: request.description.clone(),
                },
            )?;
            let pool = present(self.change(change).await?)?;
            Ok(UpdatePoolResponse { pool: Some(pool) })
        }
        .await;
        grpc(result)
    }

    #[instrument(skip_all, fields(pool = %request.get_ref().name))]
    async fn delete_pool(
        &self,
        request: Request<DeletePoolRequest>,
    ) -> GrpcResult<DeletePoolResponse> {
        let request = request.into_inner();
        let result = async {
            let name = pool_name(&request.name)?;
            self.change(PoolChange::Delete { name }).await?;
            Ok(DeletePoolResponse {})
        }
        .await;
        grpc(result)
    }

    #[instrument(skip_all, fields(pool = %request.get_ref().name))]
    async fn get_pool(&self, request: Request<GetPoolRequest>) -> GrpcResult<GetPoolResponse> {
        let result = self
            .get(&request.get_ref().name)
            .await
            .map(|pool| GetPoolResponse { pool: Some(pool) });
        grpc(result)
    }

    #[instrument(skip_all)]
    async fn list_pools(
        &self,
        _request: Request<ListPoolsRequest>,
    ) -> GrpcResult<ListPoolsResponse> {
        let result = async {
            let term = self.context.leader()?;
            let pools = term.scheduler.list_pools().await?;
            Ok(ListPoolsResponse { pools })
        }
        .await;
        grpc(result)
    }
}
