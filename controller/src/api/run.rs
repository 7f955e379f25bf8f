//! `RunService`: triggering, reading, cancelling and retrying runs, and the
//! watch and log streams.

use std::sync::Arc;

use baton_common::error::{ApiError, ApiResult, FieldViolation};
use baton_common::ids::{DagId, RunId, TaskId};
use baton_common::pb::api::run_service_server::RunService;
use baton_common::pb::api::{
    CancelRunRequest, CancelRunResponse, GetRunEventsRequest, GetRunEventsResponse, GetRunRequest,
    GetRunResponse, ListRunsRequest, ListRunsResponse, ListTaskAttemptsRequest,
    ListTaskAttemptsResponse, ReadTaskLogRequest, ReadTaskLogResponse, RetryTaskRequest,
    RetryTaskResponse, Run, RunSnapshot, RunState, TaskInstance, TaskState, TriggerRunRequest,
    TriggerRunResponse, WatchRunRequest, WatchRunResponse, watch_run_response,
};
use baton_common::pb::records::{
    AttemptRecord, DagMetaRecord, RunHistoryRecord, RunRecord, TaskRecord,
};
use baton_common::time::timestamp_to_micros;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{ApiContextRef, GrpcResult, ResponseStream, grpc, page_size, parse_id, store_error};
use crate::logs::LogKey;
use crate::plan::{DagPlan, PlanRef};
use crate::scheduler::TriggerRequest;
use crate::scheduler::views::{
    open_attempt_view, record_run_state, record_task_state, run_view, task_views,
};
use crate::store::{Scan, decode, get_record, keys};

/// Longest idempotency key and cancel reason, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 200;
const MAX_REASON: usize = 1_000;
/// Bytes per log message.
const LOG_CHUNK: usize = 64 * 1024;
/// Events a watcher may fall behind by before it is cut off.
const WATCH_BUFFER: usize = 16_384;

pub struct RunApi {
    context: ApiContextRef,
}

impl RunApi {
    pub fn new(context: ApiContextRef) -> Self {
        Self { context }
    }

    async fn run_record(&self, run_id: &RunId) -> ApiResult<RunRecord> {
        get_record(self.context.store.as_ref(), &keys::run(run_id))
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("run", run_id))
    }

    async fn plan_of(&self, record: &RunRecord) -> ApiResult<PlanRef> {
        let dag_id =
            DagId::new(record.dag_id.clone()).map_err(|error| ApiError::Internal(error.reason))?;
        Ok(self
            .context
            .plans
            .get(self.context.store.as_ref(), &dag_id, record.dag_version)
            .await?)
    }

    async fn task_records(&self, run_id: &RunId) -> ApiResult<Vec<TaskRecord>> {
        let entries = self
            .context
            .store
            .scan(Scan::prefix(keys::tasks(run_id)))
            .await
            .map_err(store_error)?;
        entries
            .iter()
            .map(|(key, value)| decode::<TaskRecord>(key, value).map_err(store_error))
            .collect()
    }

    async fn tasks_of(&self, run_id: &RunId, record: &RunRecord) -> ApiResult<Vec<TaskInstance>> {
        let plan = self.plan_of(record).await?;
        Ok(task_views(&plan, self.task_records(run_id).await?))
    }

    async fn trigger(&self, request: TriggerRunRequest) -> ApiResult<TriggerRunResponse> {
        // Followers send the caller to the leader before doing any work.
        self.context.leader()?;
        let dag_id = parse_id::<DagId>("dag_id", &request.dag_id)?;
        let params = parse_json_object(
            "params_json",
            &request.params_json,
            self.context.config.limits.max_params_bytes,
        )?;
        let idempotency_key = validate_idempotency_key(&request.idempotency_key)?;
        let logical_date = match &request.logical_date {
            None => 0,
            Some(timestamp) => {
                if !(0..=253_402_300_799).contains(&timestamp.seconds)
                    || !(0..1_000_000_000).contains(&timestamp.nanos)
                {
                    return Err(ApiError::invalid(
                        "logical_date",
                        "must be between 1970-01-01 and 9999-12-31",
                    ));
                }
                timestamp_to_micros(timestamp)
            }
        };
        let meta: DagMetaRecord = get_record(self.context.store.as_ref(), &keys::dag(&dag_id))
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("dag", &dag_id))?;
        let plan = self
            .context
            .plans
            .get(self.context.store.as_ref(), &dag_id, meta.latest_version)
            .await?;
        let params_json = resolve_params(&plan, "params_json", &params)?;
        let (record, created) = self
            .context
            .leader()?
            .scheduler
            .trigger_run(TriggerRequest {
                plan,
                params_json,
                logical_date,
                idempotency_key,
            })
            .await?;
        Ok(TriggerRunResponse {
            run: Some(run_view(&record)),
            created,
        })
    }

    async fn get(&self, request: GetRunRequest) -> ApiResult<GetRunResponse> {
        let run_id = parse_id::<RunId>("run_id", &request.run_id)?;
        let record = self.run_record(&run_id).await?;
        let tasks = if request.include_tasks {
            self.tasks_of(&run_id, &record).await?
        } else {
            Vec::new()
        };
        Ok(GetRunResponse {
            run: Some(run_view(&record)),
            tasks,
        })
    }

    async fn list(&self, request: ListRunsRequest) -> ApiResult<ListRunsResponse> {
        let limit = page_size("page_size", request.page_size)?;
        let dag_id = if request.dag_id.is_empty() {
            None
        } else {
            Some(parse_id::<DagId>("dag_id", &request.dag_id)?)
        };
        let mut states = Vec::with_capacity(request.states.len());
        for (index, state) in request.states.iter().enumerate() {
            match RunState::try_from(*state) {
                Ok(RunState::Unspecified) | Err(_) => {
                    return Err(ApiError::invalid(
                        format!("states[{index}]"),
                        format!("{state} is not a run state"),
                    ));
                }
                Ok(state) => states.push(state as i32),
            }
        }
        let mut after = if request.page_token.is_empty() {
            None
        } else {
            let last: RunId = request.page_token.parse().map_err(|_| {
                ApiError::invalid("page_token", "is not a token returned by ListRuns")
            })?;
            Some(match &dag_id {
                Some(dag_id) => keys::dag_run(dag_id, &last),
                None => keys::run(&last),
            })
        };
        let prefix = match &dag_id {
            Some(dag_id) => keys::dag_runs(dag_id),
            None => keys::RUNS.as_bytes().to_vec(),
        };
        let mut runs: Vec<Run> = Vec::with_capacity(limit);
        let mut more = false;
        // Keep reading pages of the index until the page of matches is full.
        'pages: loop {
            let batch = self
                .context
                .store
                .scan(
                    Scan::prefix(prefix.clone())
                        .after(after.clone())
                        .limit(limit + 1)
                        .reverse(),
                )
                .await
                .map_err(store_error)?;
            let exhausted = batch.len() <= limit;
            for (key, value) in &batch {
                after = Some(key.clone());
                let record: RunRecord = match &dag_id {
                    Some(_) => {
                        let Some(run_id) = keys::parse_run_id(key) else {
                            continue;
                        };
                        match get_record(self.context.store.as_ref(), &keys::run(&run_id))
                            .await
                            .map_err(store_error)?
                        {
                            Some(record) => record,
                            None => continue,
                        }
                    }
                    None => decode(key, value).map_err(store_error)?,
                };
                if !states.is_empty() && !states.contains(&record.state) {
                    continue;
                }
                if runs.len() == limit {
                    more = true;
                    break 'pages;
                }
                runs.push(run_view(&record));
            }
            if exhausted {
                break;
            }
        }
        let next_page_token = if more {
            runs.last()
                .map(|run| run.run_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListRunsResponse {
            runs,
            next_page_token,
        })
    }

    async fn cancel(&self, request: CancelRunRequest) -> ApiResult<CancelRunResponse> {
        // Followers send the caller to the leader before doing any work.
        self.context.leader()?;
        let run_id = parse_id::<RunId>("run_id", &request.run_id)?;
        if request.reason.len() > MAX_REASON {
            return Err(ApiError::invalid(
                "reason",
                format!(
                    "is {} bytes; the limit is {MAX_REASON}",
                    request.reason.len()
                ),
            ));
        }
        let record = self.run_record(&run_id).await?;
        if baton_common::states::run_state_is_final(record_run_state(&record)) {
            return Err(ApiError::FailedPrecondition(format!(
                "run {run_id} already finished ({})",
                baton_common::states::run_state_name(record_run_state(&record))
            )));
        }
        let record = self
            .context
            .leader()?
            .scheduler
            .cancel_run(run_id, request.reason)
            .await?;
        Ok(CancelRunResponse {
            run: Some(run_view(&record)),
        })
    }

    async fn retry(&self, request: RetryTaskRequest) -> ApiResult<RetryTaskResponse> {
        // Followers send the caller to the leader before doing any work.
        self.context.leader()?;
        let run_id = parse_id::<RunId>("run_id", &request.run_id)?;
        let task_id = parse_id::<TaskId>("task_id", &request.task_id)?;
        self.run_record(&run_id).await?;
        let (record, cleared) = self
            .context
            .leader()?
            .scheduler
            .retry_task(
                run_id,
                task_id,
                !request.exclude_downstream,
                request.include_upstream,
            )
            .await?;
        Ok(RetryTaskResponse {
            run: Some(run_view(&record)),
            cleared_task_ids: cleared,
        })
    }

    async fn mark(
        &self,
        request: baton_common::pb::api::MarkTaskRequest,
    ) -> ApiResult<baton_common::pb::api::MarkTaskResponse> {
        self.context.leader()?;
        let run_id = parse_id::<RunId>("run_id", &request.run_id)?;
        let task_id = parse_id::<TaskId>("task_id", &request.task_id)?;
        let state = TaskState::try_from(request.state)
            .ok()
            .filter(|&state| crate::scheduler::state::markable(state))
            .ok_or_else(|| ApiError::invalid("state", "must be SUCCESS, FAILED or SKIPPED"))?;
        if request.reason.chars().count() > MAX_REASON {
            return Err(ApiError::invalid(
                "reason",
                format!("is longer than {MAX_REASON} characters"),
            ));
        }
        self.run_record(&run_id).await?;
        let (record, task) = self
            .context
            .leader()?
            .scheduler
            .mark_task(run_id, task_id, state, request.reason)
            .await?;
        Ok(baton_common::pb::api::MarkTaskResponse {
            run: Some(run_view(&record)),
            task: Some(task),
        })
    }

    async fn watch(&self, request: WatchRunRequest) -> ApiResult<ResponseStream<WatchRunResponse>> {
        let term = self.context.leader()?;
        let run_id: RunId = parse_id::<RunId>("run_id", &request.run_id)?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        if !term.scheduler.watch(run_id, sender.clone()).await? {
            // Not active: the stored run is final (or does not exist).
            let record = self.run_record(&run_id).await?;
            let tasks = self.tasks_of(&run_id, &record).await?;
            let run = run_view(&record);
            let snapshot = RunSnapshot {
                run: Some(run.clone()),
                tasks,
            };
            let _ = sender
                .send(Ok(WatchRunResponse {
                    event: Some(watch_run_response::Event::Snapshot(snapshot)),
                }))
                .await;
            let _ = sender
                .send(Ok(WatchRunResponse {
                    event: Some(watch_run_response::Event::Run(run)),
                }))
                .await;
        }
        drop(sender);
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }

    /// A page of the run's history. The page token names the history
    /// record before the one to resume in, and how many events of that one
    /// were already given.
    async fn events(&self, request: GetRunEventsRequest) -> ApiResult<GetRunEventsResponse> {
        let run_id = parse_id::<RunId>("run_id", &request.run_id)?;
        let task_id = match request.task_id.as_str() {
            "" => None,
            text => Some(parse_id::<TaskId>("task_id", text)?),
        };
        let page_size = page_size("page_size", request.page_size)?;
        let (after, mut skip) = parse_events_token(&run_id, &request.page_token)?;
        let records = self
            .context
            .store
            .scan(
                Scan::prefix(keys::history(&run_id))
                    .after(after)
                    .limit(page_size + 1),
            )
            .await
            .map_err(store_error)?;
        if records.is_empty() {
            // The run must exist: a typo is not an empty history. (A run's
            // history goes with it, so one that has some exists.)
            self.run_record(&run_id).await?;
        }
        let mut events = Vec::new();
        let mut previous: Option<&[u8]> = None;
        for (key, value) in &records {
            let record: RunHistoryRecord = decode(key, value).map_err(store_error)?;
            for (position, event) in record.events.into_iter().enumerate().skip(skip) {
                if events.len() == page_size {
                    return Ok(GetRunEventsResponse {
                        events,
                        next_page_token: events_token(previous, position),
                    });
                }
                if task_id
                    .as_ref()
                    .is_none_or(|task_id| event.task_id == task_id.as_str())
                {
                    events.push(event);
                }
            }
            skip = 0;
            previous = Some(key);
        }
        let next_page_token = if records.len() > page_size {
            // Records left unread: resume after the last one read.
            events_token(previous, 0)
        } else {
            String::new()
        };
        Ok(GetRunEventsResponse {
            events,
            next_page_token,
        })
    }

    async fn attempts(
        &self,
        request: ListTaskAttemptsRequest,
    ) -> ApiResult<ListTaskAttemptsResponse> {
        let run_id = parse_id::<RunId>("run_id", &request.run_id)?;
        let task_id = parse_id::<TaskId>("task_id", &request.task_id)?;
        let record = self.run_record(&run_id).await?;
        let plan = self.plan_of(&record).await?;
        if plan.index_of(task_id.split_instance().0).is_none() {
            return Err(ApiError::not_found_in(
                "task",
                &task_id,
                format_args!("run {run_id}"),
            ));
        }
        let entries = self
            .context
            .store
            .scan(Scan::prefix(keys::task_attempts(&run_id, task_id.as_str())))
            .await
            .map_err(store_error)?;
        let mut attempts = Vec::with_capacity(entries.len() + 1);
        for (key, value) in &entries {
            let record: AttemptRecord = decode(key, value).map_err(store_error)?;
            attempts.extend(record.attempt);
        }
        let task: Option<TaskRecord> = get_record(
            self.context.store.as_ref(),
            &keys::task(&run_id, task_id.as_str()),
        )
        .await
        .map_err(store_error)?;
        if let Some(open) = task.as_ref().and_then(open_attempt_view)
            && attempts
                .iter()
                .all(|attempt| attempt.attempt != open.attempt)
        {
            attempts.push(open);
        }
        Ok(ListTaskAttemptsResponse { attempts })
    }

    async fn read_log(
        &self,
        request: ReadTaskLogRequest,
    ) -> ApiResult<ResponseStream<ReadTaskLogResponse>> {
        // Stored logs are in the shared log store, so any controller reads
        // them; following a running attempt needs the leader, which sees
        // its chunks arrive, and ends with its term.
        let term = if request.follow {
            Some(self.context.leader()?)
        } else {
            None
        };
        let run_id = parse_id::<RunId>("run_id", &request.run_id)?;
        let task_id = parse_id::<TaskId>("task_id", &request.task_id)?;
        let record = self.run_record(&run_id).await?;
        let plan = self.plan_of(&record).await?;
        if plan.index_of(task_id.split_instance().0).is_none() {
            return Err(ApiError::not_found_in(
                "task",
                &task_id,
                format_args!("run {run_id}"),
            ));
        }
        let task: Option<TaskRecord> = get_record(
            self.context.store.as_ref(),
            &keys::task(&run_id, task_id.as_str()),
        )
        .await
        .map_err(store_error)?;
        let latest = task.as_ref().map_or(0, |task| task.attempt);
        if latest == 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "task `{task_id}` has not started an attempt yet"
            )));
        }
        let attempt = if request.attempt == 0 {
            latest
        } else {
            request.attempt
        };
        if attempt > latest {
            return Err(ApiError::invalid(
                "attempt",
                format!("task `{task_id}` has {latest} attempt(s)"),
            ));
        }
        let key = LogKey {
            run_id,
            task_id,
            attempt,
        };
        let logs = Arc::clone(&self.context.logs);
        let shutdown = term.map_or_else(CancellationToken::new, |term| term.ended.clone());
        let follow = request.follow
            && task.as_ref().is_some_and(|task| {
                attempt == latest
                    && matches!(
                        record_task_state(task),
                        TaskState::Leased | TaskState::Running
                    )
            });
        let (sender, receiver) = mpsc::channel(8);
        let mut offset = request.offset;
        tokio::spawn(async move {
            // Subscribe before reading, so no append is missed in between.
            let mut progress = if follow { logs.follow(&key) } else { None };
            let mut cursor = logs.cursor(key);
            loop {
                let data = match cursor.read(offset, LOG_CHUNK).await {
                    Ok(data) => data,
                    Err(error) => {
                        let _ = sender
                            .send(Err(Status::internal(format!("cannot read log: {error}"))))
                            .await;
                        return;
                    }
                };
                if !data.is_empty() {
                    let len = data.len() as u64;
                    let message = ReadTaskLogResponse {
                        attempt,
                        offset,
                        data,
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        return;
                    }
                    offset += len;
                    continue;
                }
                let Some(watch) = progress.as_mut() else {
                    return;
                };
                if watch.borrow().sealed && offset >= watch.borrow().len {
                    return;
                }
                tokio::select! {
                    changed = watch.changed() => if changed.is_err() { progress = None },
                    () = sender.closed() => return,
                    () = shutdown.cancelled() => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }
}

/// Run parameters: a JSON object within the size limit; empty means `{}`.
/// Reads a JSON object field (params, an event payload): empty means `{}`.
pub(crate) fn parse_json_object(
    field: &str,
    text: &str,
    max_bytes: usize,
) -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    if text.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    if text.len() > max_bytes {
        return Err(ApiError::invalid(
            field,
            format!("is {} bytes; the limit is {max_bytes}", text.len()),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::invalid(
            field,
            format!("must be a JSON object, not {}", json_kind(&other)),
        )),
        Err(error) => Err(ApiError::invalid(
            field,
            format!("is not valid JSON: {error}"),
        )),
    }
}

/// Checks run params against the DAG's declared params, filling in their
/// defaults; errors name `<field>.<param>`.
pub(crate) fn resolve_params(
    plan: &DagPlan,
    field: &str,
    given: &serde_json::Map<String, serde_json::Value>,
) -> ApiResult<String> {
    plan.settings
        .params
        .resolve(given)
        .map(|params| serde_json::Value::Object(params).to_string())
        .map_err(|violations| {
            ApiError::InvalidArgument(
                violations
                    .into_iter()
                    .map(|violation| {
                        FieldViolation::new(
                            format!("{field}.{}", violation.field),
                            violation.reason,
                        )
                    })
                    .collect(),
            )
        })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn validate_idempotency_key(key: &str) -> ApiResult<Option<String>> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::invalid(
            "idempotency_key",
            format!("is {} bytes; the limit is {MAX_IDEMPOTENCY_KEY}", key.len()),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "idempotency_key",
            "must not contain control characters",
        ));
    }
    Ok(Some(key.to_string()))
}

#[tonic::async_trait]
impl RunService for RunApi {
    type WatchRunStream = ResponseStream<WatchRunResponse>;
    type ReadTaskLogStream = ResponseStream<ReadTaskLogResponse>;

    #[instrument(skip_all, fields(dag_id = %request.get_ref().dag_id))]
    async fn trigger_run(
        &self,
        request: Request<TriggerRunRequest>,
    ) -> GrpcResult<TriggerRunResponse> {
        grpc(self.trigger(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(run_id = %request.get_ref().run_id))]
    async fn get_run(&self, request: Request<GetRunRequest>) -> GrpcResult<GetRunResponse> {
        grpc(self.get(request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn list_runs(&self, request: Request<ListRunsRequest>) -> GrpcResult<ListRunsResponse> {
        grpc(self.list(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(run_id = %request.get_ref().run_id))]
    async fn cancel_run(
        &self,
        request: Request<CancelRunRequest>,
    ) -> GrpcResult<CancelRunResponse> {
        grpc(self.cancel(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(run_id = %request.get_ref().run_id, task_id = %request.get_ref().task_id))]
    async fn retry_task(
        &self,
        request: Request<RetryTaskRequest>,
    ) -> GrpcResult<RetryTaskResponse> {
        grpc(self.retry(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(run_id = %request.get_ref().run_id, task_id = %request.get_ref().task_id))]
    async fn mark_task(
        &self,
        request: Request<baton_common::pb::api::MarkTaskRequest>,
    ) -> GrpcResult<baton_common::pb::api::MarkTaskResponse> {
        grpc(self.mark(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(run_id = %request.get_ref().run_id))]
    async fn watch_run(
        &self,
        request: Request<WatchRunRequest>,
    ) -> GrpcResult<Self::WatchRunStream> {
        grpc(self.watch(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(run_id = %request.get_ref().run_id))]
    async fn get_run_events(
        &self,
        request: Request<GetRunEventsRequest>,
    ) -> GrpcResult<GetRunEventsResponse> {
        grpc(self.events(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(run_id = %request.get_ref().run_id, task_id = %request.get_ref().task_id))]
    async fn list_task_attempts(
        &self,
        request: Request<ListTaskAttemptsRequest>,
    ) -> GrpcResult<ListTaskAttemptsResponse> {
        grpc(self.attempts(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(run_id = %request.get_ref().run_id, task_id = %request.get_ref().task_id))]
    async fn read_task_log(
        &self,
        request: Request<ReadTaskLogRequest>,
    ) -> Result<Response<Self::ReadTaskLogStream>, Status> {
        grpc(self.read_log(request.into_inner()).await)
    }
}

/// `<key of the record before>|<events already given of the next>`.
fn events_token(previous: Option<&[u8]>, given: usize) -> String {
    let previous = previous.map(String::from_utf8_lossy).unwrap_or_default();
    format!("{previous}|{given}")
}

fn parse_events_token(run_id: &RunId, token: &str) -> ApiResult<(Option<Vec<u8>>, usize)> {
    if token.is_empty() {
        return Ok((None, 0));
    }
    let invalid = || {
        ApiError::invalid(
            "page_token",
            "is not a page token of this run's events; pass next_page_token as it was answered",
        )
    };
    let (previous, given) = token.rsplit_once('|').ok_or_else(invalid)?;
    let given: usize = given.parse().map_err(|_| invalid())?;
    if previous.is_empty() {
        return Ok((None, given));
    }
    if !previous.as_bytes().starts_with(&keys::history(run_id)) {
        return Err(invalid());
    }
    Ok((Some(previous.as_bytes().to_vec()), given))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_must_be_a_json_object_within_the_limit() {
        let parse = |text: &str, max: usize| parse_json_object("params_json", text, max);
        assert!(parse("", 100).unwrap().is_empty());
        assert_eq!(parse(r#"{"a": 1}"#, 100).unwrap()["a"], 1);
        let error = parse("[1]", 100).unwrap_err().to_string();
        assert_eq!(error, "params_json: must be a JSON object, not an array");
        let error = parse("{", 100).unwrap_err().to_string();
        assert!(
            error.starts_with("params_json: is not valid JSON"),
            "{error}"
        );
        let error = parse(r#"{"a": "0123456789"}"#, 10).unwrap_err().to_string();
        assert!(error.contains("the limit is 10"), "{error}");
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert_eq!(validate_idempotency_key("").unwrap(), None);
        assert_eq!(
            validate_idempotency_key("daily-2026-11-25")
                .unwrap()
                .as_deref(),
            Some("daily-2026-11-25")
        );
        assert!(validate_idempotency_key(&"k".repeat(201)).is_err());
        assert!(validate_idempotency_key("a\nb").is_err());
    }
}
