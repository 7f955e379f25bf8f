//! `DagService`: registering, reading, pausing and deleting DAGs.

use baton_common::error::{ApiError, ApiResult};
use baton_common::ids::{DagId, RunId};
use baton_common::pb::api::dag_service_server::DagService;
use baton_common::pb::api::{
    Dag, DagVersion, DeleteDagRequest, DeleteDagResponse, GetDagRequest, GetDagResponse,
    ListDagsRequest, ListDagsResponse, PauseDagRequest, PauseDagResponse, RegisterDagRequest,
    RegisterDagResponse, SpecFormat, UnpauseDagRequest, UnpauseDagResponse,
};
use baton_common::pb::records::{DagMetaRecord, DagTriggerKind, DagVersionRecord};
use baton_common::spec::{self, SpecFormat as Format};
use baton_common::time::{micros_to_timestamp_opt, now_micros, timestamp_opt_to_micros};
use tonic::{Request, Status};
use tracing::{info, instrument};

use super::{ApiContext, ApiContextRef, GrpcResult, grpc, page_size, parse_id, store_error};
use crate::plan::DagPlan;
use crate::scheduler::views::{dag_view, task_summary};
use crate::scheduler::{NewDagVersion, next_scheduled_interval, recovery};
use crate::store::{Scan, decode, get_record, keys};

pub struct DagApi {
    context: ApiContextRef,
}

/// A DAG as the API shows it: its record, and for a cron or `every`
/// schedule the next interval it will run (read from the store, so any
/// controller answers).
pub(crate) async fn dag_with_schedule(
    context: &ApiContext,
    meta: &DagMetaRecord,
) -> ApiResult<Dag> {
    let mut dag = dag_view(meta);
    if DagTriggerKind::try_from(meta.trigger_kind) != Ok(DagTriggerKind::Timetable) {
        return Ok(dag);
    }
    let dag_id = DagId::new(meta.dag_id.clone())
        .map_err(|error| ApiError::Internal(format!("a stored dag has an invalid id: {error}")))?;
    let store = context.store.as_ref();
    let plan = context
        .plans
        .get(store, &dag_id, meta.latest_version)
        .await?;
    let Some(timetable) = plan.settings.timetable() else {
        return Ok(dag);
    };
    let last_end = recovery::schedule_position(store, &dag_id)
        .await
        .map_err(store_error)?;
    let to_datetime = |micros: i64| {
        chrono::DateTime::from_timestamp_micros(micros).unwrap_or(chrono::DateTime::UNIX_EPOCH)
    };
    let next = next_scheduled_interval(
        timetable,
        plan.settings.catchup,
        last_end.map(to_datetime),
        to_datetime(timestamp_opt_to_micros(meta.created_at.as_ref())),
        context.config.clock.now(),
    );
    if let Some(next) = next {
        dag.next_data_interval_start = micros_to_timestamp_opt(next.start.timestamp_micros());
        dag.next_data_interval_end = micros_to_timestamp_opt(next.end.timestamp_micros());
    }
    Ok(dag)
}

impl DagApi {
    pub fn new(context: ApiContextRef) -> Self {
        Self { context }
    }

    async fn meta(&self, dag_id: &DagId) -> ApiResult<DagMetaRecord> {
        get_record(self.context.store.as_ref(), &keys::dag(dag_id))
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("dag", dag_id))
    }

    async fn register(&self, request: RegisterDagRequest) -> ApiResult<RegisterDagResponse> {
        if !request.validate_only {
            self.context.leader()?;
        }
        if request.spec.trim().is_empty() {
            return Err(ApiError::invalid(
                "spec",
                "is required: the DAG document as YAML or JSON",
            ));
        }
        let format = match SpecFormat::try_from(request.format) {
            Ok(SpecFormat::Unspecified) => Format::Detect,
            Ok(SpecFormat::Yaml) => Format::Yaml,
            Ok(SpecFormat::Json) => Format::Json,
            Err(_) => {
                return Err(ApiError::invalid(
                    "format",
                    format!("{} is not a known format", request.format),
                ));
            }
        };
        let limits = self.context.config.limits.spec.clone();
        let spec_text = request.spec;
        let version = tokio::task::spawn_blocking(move || -> ApiResult<NewDagVersion> {
            let mut dag = spec::parse_dag(&spec_text, format, &limits)?;
            drop(spec_text);
            check_notifier_secrets(&dag.notify)?;
            let canonical_json = std::mem::take(&mut dag.canonical_json);
            let digest = std::mem::take(&mut dag.digest);
            Ok(NewDagVersion {
                dag_id: dag.dag_id.clone(),
                description: dag.description.clone(),
                schedule: dag.schedule.clone(),
                canonical_json,
                digest,
                plan: DagPlan::compile(0, dag),
            })
        })
        .await
        .map_err(|error| ApiError::Internal(format!("validation task failed: {error}")))??;

        if request.validate_only {
            let existing = get_record::<DagMetaRecord>(
                self.context.store.as_ref(),
                &keys::dag(&version.dag_id),
            )
            .await
            .map_err(store_error)?;
            let now = micros_to_timestamp_opt(now_micros());
            let (would_be, dag) = match existing {
                Some(meta) if meta.latest_digest == version.digest => {
                    (meta.latest_version, dag_view(&meta))
                }
                Some(meta) => (meta.latest_version + 1, dag_view(&meta)),
                None => (
                    1,
                    Dag {
                        dag_id: version.dag_id.to_string(),
                        latest_version: 0,
                        description: version.description.clone(),
                        schedule: version.schedule.clone().unwrap_or_default(),
                        paused: false,
                        task_count: version.plan.len() as u32,
                        created_at: now,
                        updated_at: now,
                        ..Dag::default()
                    },
                ),
            };
            return Ok(RegisterDagResponse {
                dag: Some(dag),
                version: would_be,
                created: false,
            });
        }
        let registered = self
            .context
            .leader()?
            .scheduler
            .register_dag(version)
            .await?;
        // Stored already: a failed read of the next interval must not turn
        // the answer into an error.
        let dag = match dag_with_schedule(&self.context, &registered.meta).await {
            Ok(dag) => dag,
            Err(error) => {
                tracing::warn!(dag_id = %registered.meta.dag_id, %error, "cannot compute the next interval of a registered dag");
                dag_view(&registered.meta)
            }
        };
        Ok(RegisterDagResponse {
            dag: Some(dag),
            version: registered.version,
            created: registered.created,
        })
    }

    async fn get(&self, request: GetDagRequest) -> ApiResult<GetDagResponse> {
        let dag_id = parse_id::<DagId>("dag_id", &request.dag_id)?;
        let meta = self.meta(&dag_id).await?;
        let version = if request.version == 0 {
            meta.latest_version
        } else {
            request.version
        };
        let record: DagVersionRecord = get_record(
            self.context.store.as_ref(),
            &keys::dag_version(&dag_id, version),
        )
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::not_found_in("version", version, format_args!("dag `{dag_id}`"))
        })?;
        let plan = self
            .context
            .plans
            .get(self.context.store.as_ref(), &dag_id, version)
            .await?;
        let tasks = plan
            .tasks
            .iter()
            .map(|task| task_summary(&plan, task))
            .collect();
        Ok(GetDagResponse {
            dag: Some(dag_with_schedule(&self.context, &meta).await?),
            version: Some(DagVersion {
                dag_id: dag_id.to_string(),
                version,
                spec_json: record.spec_json,
                digest: record.digest,
                created_at: record.created_at,
                tasks,
            }),
        })
    }

    async fn list(&self, request: ListDagsRequest) -> ApiResult<ListDagsResponse> {
        let limit = page_size("page_size", request.page_size)?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            let last = DagId::new(request.page_token.clone()).map_err(|_| {
                ApiError::invalid("page_token", "is not a token returned by ListDags")
            })?;
            Some(keys::dag(&last))
        };
        let entries = self
            .context
            .store
            .scan(Scan::prefix(keys::DAGS).after(after).limit(limit + 1))
            .await
            .map_err(store_error)?;
        let more = entries.len() > limit;
        let mut dags = Vec::with_capacity(limit);
        for (key, value) in entries.iter().take(limit) {
            let meta = decode::<DagMetaRecord>(key, value).map_err(store_error)?;
            dags.push(dag_with_schedule(&self.context, &meta).await?);
        }
        let next_page_token = if more {
            dags.last()
                .map(|dag| dag.dag_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListDagsResponse {
            dags,
            next_page_token,
        })
    }

    async fn delete(&self, request: DeleteDagRequest) -> ApiResult<DeleteDagResponse> {
        self.context.leader()?;
        let dag_id = parse_id::<DagId>("dag_id", &request.dag_id)?;
        self.context
            .leader()?
            .scheduler
            .delete_dag(dag_id.clone())
            .await?;
        // The DAG is gone, so no new run can start: delete its finished runs
        // page by page.
        let mut deleted_runs = 0;
        let mut after = None;
        loop {
            let page = self
                .context
                .store
                .scan(
                    Scan::prefix(keys::dag_runs(&dag_id))
                        .after(after.clone())
                        .limit(256),
                )
                .await
                .map_err(store_error)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let run_ids: Vec<RunId> = page
                .iter()
                .filter_map(|(key, _)| keys::parse_run_id(key))
                .collect();
            deleted_runs += self
                .context
                .leader()?
                .scheduler
                .purge_runs(dag_id.clone(), run_ids.clone())
                .await?;
            for run_id in &run_ids {
                if let Err(error) = self.context.logs.remove_run(run_id).await {
                    tracing::warn!(%run_id, %error, "cannot delete run logs");
                }
            }
        }
        info!(%dag_id, deleted_runs, "dag and its runs deleted");
        Ok(DeleteDagResponse { deleted_runs })
    }
}

#[tonic::async_trait]
impl DagService for DagApi {
    #[instrument(skip_all)]
    async fn register_dag(
        &self,
        request: Request<RegisterDagRequest>,
    ) -> GrpcResult<RegisterDagResponse> {
        grpc(self.register(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(dag_id = %request.get_ref().dag_id))]
    async fn get_dag(&self, request: Request<GetDagRequest>) -> GrpcResult<GetDagResponse> {
        grpc(self.get(request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn list_dags(&self, request: Request<ListDagsRequest>) -> GrpcResult<ListDagsResponse> {
        grpc(self.list(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(dag_id = %request.get_ref().dag_id))]
    async fn pause_dag(&self, request: Request<PauseDagRequest>) -> GrpcResult<PauseDagResponse> {
        let result = async {
            let dag_id = parse_id::<DagId>("dag_id", &request.get_ref().dag_id)?;
            let meta = self
                .context
                .leader()?
                .scheduler
                .set_paused(dag_id, true)
                .await?;
            Ok(PauseDagResponse {
                dag: Some(dag_view(&meta)),
            })
        };
        grpc(result.await)
    }

    #[instrument(skip_all, fields(dag_id = %request.get_ref().dag_id))]
    async fn unpause_dag(
        &self,
        request: Request<UnpauseDagRequest>,
    ) -> GrpcResult<UnpauseDagResponse> {
        let result = async {
            let dag_id = parse_id::<DagId>("dag_id", &request.get_ref().dag_id)?;
            let meta = self
                .context
                .leader()?
                .scheduler
                .set_paused(dag_id, false)
                .await?;
            Ok(UnpauseDagResponse {
                dag: Some(dag_view(&meta)),
            })
        };
        grpc(result.await)
    }

    #[instrument(skip_all, fields(dag_id = %request.get_ref().dag_id))]
    async fn delete_dag(
        &self,
        request: Request<DeleteDagRequest>,
    ) -> Result<tonic::Response<DeleteDagResponse>, Status> {
        grpc(self.delete(request.into_inner()).await)
    }
}

/// A secret header's environment variable must be set on the controller,
/// or every notification of the DAG would fail; a document cannot check
/// that by itself (`baton dag validate` runs elsewhere).
fn check_notifier_secrets(notifiers: &[spec::Notifier]) -> ApiResult<()> {
    let violations = crate::notify::missing_secrets(notifiers, "spec.notify");
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(violations))
    }
}
