//! `BackfillService` and `EventService`: backfills over a date range,
//! events, and assets with their update history.
//!
//! A backfill is planned here, from the store (which intervals of the
//! range have a run, and how it ended); the scheduler stores and drives
//! it. Reads come from the store, so any controller answers them.

use baton_common::error::{ApiError, ApiResult};
use baton_common::ids::{AssetUri, DagId, EventName, RunId};
use baton_common::pb::api::backfill_service_server::BackfillService;
use baton_common::pb::api::event_service_server::EventService;
use baton_common::pb::api::{
    Asset, AssetUpdate, Backfill, BackfillAction, BackfillInterval, BackfillState,
    CancelBackfillRequest, CancelBackfillResponse, CreateBackfillRequest, CreateBackfillResponse,
    EmitEventRequest, EmitEventResponse, GetAssetRequest, GetAssetResponse, GetBackfillRequest,
    GetBackfillResponse, ListAssetsRequest, ListAssetsResponse, ListBackfillsRequest,
    ListBackfillsResponse, ListEventsRequest, ListEventsResponse, RecordAssetUpdateRequest,
    RecordAssetUpdateResponse, RunState,
};
use baton_common::pb::records::{
    AssetRecord, AssetUpdateRecord, BackfillRecord, DagMetaRecord, DagTriggerKind, EventRecord,
    IntervalRecord, RunRecord,
};
use baton_common::time::{micros_to_timestamp_opt, timestamp_to_micros};
use chrono::{DateTime, Utc};
use tonic::Request;
use tracing::instrument;

use super::run::{parse_json_object, resolve_params};
use super::{ApiContextRef, GrpcResult, grpc, page_size, parse_id, store_error};
use crate::scheduler::recovery;
use crate::scheduler::views::record_run_state;
use crate::store::{Scan, Store, decode, get_record, keys};

/// Most intervals one backfill covers.
pub const MAX_BACKFILL_INTERVALS: usize = 10_000;
/// Most runs of a backfill unfinished at once.
pub const MAX_BACKFILL_ACTIVE: u32 = 1_000;
/// Most bytes of an event payload.
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most characters of an event's idempotency key.
const MAX_EVENT_KEY_CHARS: usize = 200;

pub struct ScheduleApi {
    context: ApiContextRef,
}

fn timestamp_field(
    field: &str,
    timestamp: Option<&prost_types::Timestamp>,
) -> ApiResult<DateTime<Utc>> {
    let Some(timestamp) = timestamp else {
        return Err(ApiError::invalid(field, "is required"));
    };
    if !(0..=253_402_300_799).contains(&timestamp.seconds)
        || !(0..1_000_000_000).contains(&timestamp.nanos)
    {
        return Err(ApiError::invalid(
            field,
            "must be between 1970-01-01 and 9999-12-31",
        ));
    }
    DateTime::from_timestamp_micros(timestamp_to_micros(timestamp))
        .ok_or_else(|| ApiError::invalid(field, "is not a valid instant"))
}

fn decode_error(error: crate::store::StoreError) -> ApiError {
    store_error(error)
}

impl ScheduleApi {
    pub fn new(context: ApiContextRef) -> Self {
        Self { context }
    }

    fn store(&self) -> &dyn Store {
        self.context.store.as_ref()
    }

    async fn meta(&self, dag_id: &DagId) -> ApiResult<DagMetaRecord> {
        get_record(self.store(), &keys::dag(dag_id))
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("dag", dag_id))
    }

    /// Plans a backfill: the range's intervals, and for each what is to be
    /// done given the run it has (if any).
    async fn create_backfill(
        &self,
        request: CreateBackfillRequest,
    ) -> ApiResult<CreateBackfillResponse> {
        if !request.dry_run {
            self.context.leader()?;
        }
        let dag_id = parse_id::<DagId>("dag_id", &request.dag_id)?;
        let from = timestamp_field("from", request.from.as_ref())?;
        let to = timestamp_field("to", request.to.as_ref())?;
        if from > to {
            return Err(ApiError::invalid(
                "from",
                format!(
                    "{} is after `to` ({}); the range goes from the earliest logical date to the latest",
                    from.to_rfc3339(),
                    to.to_rfc3339()
                ),
            ));
        }
        if request.max_active > MAX_BACKFILL_ACTIVE {
            return Err(ApiError::invalid(
                "max_active",
                format!(
                    "{} is over the maximum of {MAX_BACKFILL_ACTIVE}",
                    request.max_active
                ),
            ));
        }
        let params = parse_json_object(
            "params_json",
            &request.params_json,
            self.context.config.limits.max_params_bytes,
        )?;
        let meta = self.meta(&dag_id).await?;
        let plan = self
            .context
            .plans
            .get(self.store(), &dag_id, meta.latest_version)
            .await?;
        let params_json = resolve_params(&plan, "params_json", &params)?;
        let Some(timetable) = plan.settings.timetable() else {
            return Err(ApiError::FailedPrecondition(format!(
                "dag `{dag_id}` has no cron or `every` schedule, so it has no intervals to backfill"
            )));
        };
        // Only intervals that have ended: later ones are the schedule's, and
        // their data may not exist yet.
        let now = self.context.config.clock.now();
        let mut intervals = timetable
            .intervals_starting_in(from, to.min(now), MAX_BACKFILL_INTERVALS)
            .map_err(|reason| ApiError::invalid("to", reason))?;
        intervals.retain(|interval| interval.end <= now);
        if intervals.is_empty() {
            return Err(ApiError::invalid(
                "from",
                format!(
                    "no interval of dag `{dag_id}`'s schedule that has ended starts between {} and {} (within its start and end dates)",
                    from.to_rfc3339(),
                    to.to_rfc3339()
                ),
            ));
        }
        let existing = self
            .interval_runs(&dag_id, from.timestamp_micros(), to.timestamp_micros())
            .await?;
        let mut planned: Vec<BackfillInterval> = Vec::with_capacity(intervals.len());
        for interval in &intervals {
            let start = interval.start.timestamp_micros();
            let (action, run_id, run_state) = match existing.get(&start) {
                None => (BackfillAction::Create, String::new(), RunState::Unspecified),
                Some((run_id, state)) => {
                    let action = if request.rerun_failed && *state == RunState::Failed {
                        BackfillAction::Rerun
                    } else {
                        BackfillAction::Skip
                    };
                    (action, run_id.to_string(), *state)
                }
            };
            planned.push(BackfillInterval {
                data_interval_start: micros_to_timestamp_opt(start),
                data_interval_end: micros_to_timestamp_opt(interval.end.timestamp_micros()),
                action: action as i32,
                run_id,
                run_state: run_state as i32,
            });
        }
        if request.reverse {
            planned.reverse();
        }
        let max_active = match request.max_active {
            0 => crate::scheduler::views::dag_view(&meta).max_active_runs,
            n => n,
        };
        let total = planned.len() as u32;
        let skipped = planned
            .iter()
            .filter(|interval| interval.action() == BackfillAction::Skip)
            .count() as u32;
        let backfill = Backfill {
            dag_id: dag_id.to_string(),
            from: request.from,
            to: request.to,
            max_active,
            reverse: request.reverse,
            rerun_failed: request.rerun_failed,
            total,
            skipped,
            to_run: total - skipped,
            intervals: planned,
            ..Backfill::default()
        };
        if request.dry_run {
            return Ok(CreateBackfillResponse {
                backfill: Some(backfill),
            });
        }
        let backfill = self
            .context
            .leader()?
            .scheduler
            .create_backfill(backfill, params_json, plan)
            .await?;
        Ok(CreateBackfillResponse {
            backfill: Some(backfill),
        })
    }

    /// The runs of the DAG's intervals starting in `[from, to]`, by start,
    /// with their states.
    async fn interval_runs(
        &self,
        dag_id: &DagId,
        from: i64,
        to: i64,
    ) -> ApiResult<std::collections::HashMap<i64, (RunId, RunState)>> {
        let prefix = keys::intervals(dag_id);
        // Keys sort by start: begin just before `from`.
        let after = (from > 0).then(|| keys::interval(dag_id, from - 1));
        let mut found = std::collections::HashMap::new();
        let mut after = after;
        loop {
            let page = self
                .store()
                .scan(
                    Scan::prefix(prefix.clone())
                        .after(after.clone())
                        .limit(1_000),
                )
                .await
                .map_err(store_error)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let mut past = false;
            for (key, value) in &page {
                let Some(start) = keys::parse_interval_start(key) else {
                    continue;
                };
                if start > to {
                    past = true;
                    break;
                }
                let record: IntervalRecord = decode(key, value).map_err(decode_error)?;
                let Ok(run_id) = record.run_id.parse::<RunId>() else {
                    continue;
                };
                let state = match get_record::<RunRecord>(self.store(), &keys::run(&run_id))
                    .await
                    .map_err(store_error)?
                {
                    Some(run) => record_run_state(&run),
                    // Being created right now: it will have a run.
                    None => RunState::Queued,
                };
                found.insert(start, (run_id, state));
            }
            if past || page.len() < 1_000 {
                break;
            }
        }
        Ok(found)
    }

    async fn get_backfill(&self, request: GetBackfillRequest) -> ApiResult<GetBackfillResponse> {
        let record = self.backfill_record(&request.backfill_id).await?;
        let mut backfill = record.backfill.unwrap_or_default();
        backfill.intervals = recovery::load_backfill_intervals(self.store(), &request.backfill_id)
            .await
            .map_err(store_error)?;
        Ok(GetBackfillResponse {
            backfill: Some(backfill),
        })
    }

    async fn backfill_record(&self, backfill_id: &str) -> ApiResult<BackfillRecord> {
        if backfill_id.is_empty() {
            return Err(ApiError::invalid("backfill_id", "is required"));
        }
        if uuid::Uuid::parse_str(backfill_id).is_err() {
            return Err(ApiError::invalid(
                "backfill_id",
                format!("`{backfill_id}` is not a backfill id (a UUID)"),
            ));
        }
        get_record(self.store(), &keys::backfill(backfill_id))
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("backfill", backfill_id))
    }

    async fn list_backfills(
        &self,
        request: ListBackfillsRequest,
    ) -> ApiResult<ListBackfillsResponse> {
        let limit = page_size("page_size", request.page_size)?;
        let dag_filter = if request.dag_id.is_empty() {
            None
        } else {
            Some(parse_id::<DagId>("dag_id", &request.dag_id)?)
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            if uuid::Uuid::parse_str(&request.page_token).is_err() {
                return Err(ApiError::invalid(
                    "page_token",
                    "is not a token returned by ListBackfills",
                ));
            }
            Some(keys::backfill(&request.page_token))
        };
        let (mut backfills, next_page_token) =
            scan_newest_first(self.store(), keys::BACKFILLS, after, limit, |key, value| {
                let record: BackfillRecord = decode(key, value)?;
                Ok(record.backfill.filter(|backfill| {
                    dag_filter
                        .as_ref()
                        .is_none_or(|dag_id| backfill.dag_id == dag_id.as_str())
                }))
            })
            .await?;
        for backfill in &mut backfills {
            backfill.intervals.clear();
        }
        Ok(ListBackfillsResponse {
            backfills,
            next_page_token,
        })
    }

    async fn cancel_backfill(
        &self,
        request: CancelBackfillRequest,
    ) -> ApiResult<CancelBackfillResponse> {
        self.context.leader()?;
        let record = self.backfill_record(&request.backfill_id).await?;
        let state = record
            .backfill
            .as_ref()
            .map_or(BackfillState::Unspecified, Backfill::state);
        if state != BackfillState::Running {
            return Err(ApiError::FailedPrecondition(format!(
                "backfill {} already ended ({})",
                request.backfill_id,
                match state {
                    BackfillState::Completed => "completed",
                    BackfillState::Cancelled => "cancelled",
                    _ => "unknown state",
                }
            )));
        }
        let backfill = self
            .context
            .leader()?
            .scheduler
            .cancel_backfill(request.backfill_id)
            .await?;
        Ok(CancelBackfillResponse {
            backfill: Some(backfill),
        })
    }

    async fn emit_event(&self, request: EmitEventRequest) -> ApiResult<EmitEventResponse> {
        self.context.leader()?;
        let name = EventName::new(request.name.clone())
            .map_err(|error| ApiError::invalid("name", error.reason))?;
        let payload = parse_json_object(
            "payload_json",
            &request.payload_json,
            MAX_EVENT_PAYLOAD_BYTES,
        )?;
        let idempotency_key = match request.idempotency_key.as_str() {
            "" => None,
            key if key.chars().count() > MAX_EVENT_KEY_CHARS => {
                return Err(ApiError::invalid(
                    "idempotency_key",
                    format!("is longer than {MAX_EVENT_KEY_CHARS} characters"),
                ));
            }
            key if key.chars().any(char::is_control) => {
                return Err(ApiError::invalid(
                    "idempotency_key",
                    "must not contain control characters",
                ));
            }
            key => Some(key.to_string()),
        };
        let (event, created) = self
            .context
            .leader()?
            .scheduler
            .emit_event(name.to_string(), payload, idempotency_key)
            .await?;
        Ok(EmitEventResponse {
            event: Some(event),
            created,
        })
    }

    async fn list_events(&self, request: ListEventsRequest) -> ApiResult<ListEventsResponse> {
        let limit = page_size("page_size", request.page_size)?;
        let name_filter = if request.name.is_empty() {
            None
        } else {
            Some(
                EventName::new(request.name.clone())
                    .map_err(|error| ApiError::invalid("name", error.reason))?,
            )
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            if uuid::Uuid::parse_str(&request.page_token).is_err() {
                return Err(ApiError::invalid(
                    "page_token",
                    "is not a token returned by ListEvents",
                ));
            }
            Some(keys::event(&request.page_token))
        };
        let (events, next_page_token) =
            scan_newest_first(self.store(), keys::EVENTS, after, limit, |key, value| {
                let record: EventRecord = decode(key, value)?;
                Ok(record.event.filter(|event| {
                    name_filter
                        .as_ref()
                        .is_none_or(|name| event.name == name.as_str())
                }))
            })
            .await?;
        Ok(ListEventsResponse {
            events,
            next_page_token,
        })
    }

    /// Producers and consumers of every asset the DAGs name, from the DAG
    /// records.
    async fn asset_links(&self) -> ApiResult<std::collections::BTreeMap<String, Asset>> {
        let entries = self
            .store()
            .scan(Scan::prefix(keys::DAGS))
            .await
            .map_err(store_error)?;
        let mut assets: std::collections::BTreeMap<String, Asset> = Default::default();
        for (key, value) in &entries {
            let meta: DagMetaRecord = decode(key, value).map_err(store_error)?;
            for output in &meta.outputs {
                let asset = assets.entry(output.uri.clone()).or_default();
                asset
                    .producers
                    .push(format!("{}.{}", meta.dag_id, output.task_id));
            }
            if DagTriggerKind::try_from(meta.trigger_kind) == Ok(DagTriggerKind::Assets) {
                for uri in &meta.trigger_names {
                    assets
                        .entry(uri.clone())
                        .or_default()
                        .consumers
                        .push(meta.dag_id.clone());
                }
            }
        }
        for (uri, asset) in &mut assets {
            asset.uri = uri.clone();
        }
        Ok(assets)
    }

    async fn list_assets(&self, request: ListAssetsRequest) -> ApiResult<ListAssetsResponse> {
        let limit = page_size("page_size", request.page_size)?;
        let mut assets = self.asset_links().await?;
        let updated = self
            .store()
            .scan(Scan::prefix(keys::ASSETS))
            .await
            .map_err(store_error)?;
        for (key, value) in &updated {
            let record: AssetRecord = decode(key, value).map_err(store_error)?;
            let asset = assets.entry(record.uri.clone()).or_default();
            asset.uri = record.uri;
            asset.last_updated_at = record.last_updated_at;
            asset.update_count = record.update_count;
        }
        let mut page: Vec<Asset> = assets
            .into_values()
            .filter(|asset| request.page_token.is_empty() || asset.uri > request.page_token)
            .take(limit + 1)
            .collect();
        let next_page_token = if page.len() > limit {
            page.truncate(limit);
            page.last()
                .map(|asset| asset.uri.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListAssetsResponse {
            assets: page,
            next_page_token,
        })
    }

    async fn get_asset(&self, request: GetAssetRequest) -> ApiResult<GetAssetResponse> {
        let uri = AssetUri::new(request.uri.clone())
            .map_err(|error| ApiError::invalid("uri", error.reason))?;
        let limit = page_size("page_size", request.page_size)?;
        let mut asset = self
            .asset_links()
            .await?
            .remove(uri.as_str())
            .unwrap_or_default();
        asset.uri = uri.to_string();
        let record: Option<AssetRecord> = get_record(self.store(), &keys::asset(uri.as_str()))
            .await
            .map_err(store_error)?;
        if let Some(record) = &record {
            asset.last_updated_at = record.last_updated_at;
            asset.update_count = record.update_count;
        }
        if record.is_none() && asset.producers.is_empty() && asset.consumers.is_empty() {
            return Err(ApiError::not_found("asset", uri));
        }
        let after = if request.page_token.is_empty() {
            None
        } else {
            if uuid::Uuid::parse_str(&request.page_token).is_err() {
                return Err(ApiError::invalid(
                    "page_token",
                    "is not a token returned by GetAsset",
                ));
            }
            Some(keys::asset_update(uri.as_str(), &request.page_token))
        };
        let prefix = keys::asset_updates(uri.as_str());
        let page = self
            .store()
            .scan(Scan::prefix(prefix).after(after).reverse().limit(limit + 1))
            .await
            .map_err(store_error)?;
        let more = page.len() > limit;
        let mut updates: Vec<AssetUpdate> = Vec::with_capacity(limit);
        let mut last_key = None;
        for (key, value) in page.iter().take(limit) {
            let record: AssetUpdateRecord = decode(key, value).map_err(store_error)?;
            updates.extend(record.update);
            last_key = Some(keys::last_segment(key).to_string());
        }
        Ok(GetAssetResponse {
            asset: Some(asset),
            updates,
            next_page_token: if more {
                last_key.unwrap_or_default()
            } else {
                String::new()
            },
        })
    }

    async fn record_asset_update(
        &self,
        request: RecordAssetUpdateRequest,
    ) -> ApiResult<RecordAssetUpdateResponse> {
        self.context.leader()?;
        let uri = AssetUri::new(request.uri.clone())
            .map_err(|error| ApiError::invalid("uri", error.reason))?;
        let update = self
            .context
            .leader()?
            .scheduler
            .record_asset_update(uri.to_string())
            .await?;
        Ok(RecordAssetUpdateResponse {
            update: Some(update),
        })
    }
}

/// Records under `prefix` (keys ending in a UUIDv7, so in time order),
/// newest first, after the key `after`, that `keep` accepts; at most
/// `limit`, and the token of the next page. Filtered out records do not
/// count, so a page is read on until full or the prefix ends.
async fn scan_newest_first<T>(
    store: &dyn Store,
    prefix: &str,
    after: Option<Vec<u8>>,
    limit: usize,
    mut keep: impl FnMut(&[u8], &[u8]) -> crate::store::StoreResult<Option<T>>,
) -> ApiResult<(Vec<T>, String)> {
    const PAGE: usize = 1_000;
    let mut found = Vec::with_capacity(limit);
    let mut after = after;
    let mut last_kept: Option<String> = None;
    loop {
        let page = store
            .scan(
                Scan::prefix(prefix.as_bytes().to_vec())
                    .after(after.clone())
                    .reverse()
                    .limit(PAGE),
            )
            .await
            .map_err(store_error)?;
        let Some((last, _)) = page.last() else {
            return Ok((found, String::new()));
        };
        after = Some(last.clone());
        for (key, value) in &page {
            if found.len() == limit {
                // One more exists: the page ends at the last kept record.
                return Ok((found, last_kept.unwrap_or_default()));
            }
            if let Some(item) = keep(key, value).map_err(store_error)? {
                found.push(item);
                last_kept = Some(keys::last_segment(key).to_string());
            }
        }
        if page.len() < PAGE {
            return Ok((found, String::new()));
        }
    }
}

#[tonic::async_trait]
impl BackfillService for ScheduleApi {
    #[instrument(skip_all, fields(dag_id = %request.get_ref().dag_id))]
    async fn create_backfill(
        &self,
        request: Request<CreateBackfillRequest>,
    ) -> GrpcResult<CreateBackfillResponse> {
        grpc(ScheduleApi::create_backfill(self, request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn get_backfill(
        &self,
        request: Request<GetBackfillRequest>,
    ) -> GrpcResult<GetBackfillResponse> {
        grpc(ScheduleApi::get_backfill(self, request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn list_backfills(
        &self,
        request: Request<ListBackfillsRequest>,
    ) -> GrpcResult<ListBackfillsResponse> {
        grpc(ScheduleApi::list_backfills(self, request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn cancel_backfill(
        &self,
        request: Request<CancelBackfillRequest>,
    ) -> GrpcResult<CancelBackfillResponse> {
        grpc(ScheduleApi::cancel_backfill(self, request.into_inner()).await)
    }
}

#[tonic::async_trait]
impl EventService for ScheduleApi {
    #[instrument(skip_all, fields(event = %request.get_ref().name))]
    async fn emit_event(
        &self,
        request: Request<EmitEventRequest>,
    ) -> GrpcResult<EmitEventResponse> {
        grpc(ScheduleApi::emit_event(self, request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> GrpcResult<ListEventsResponse> {
        grpc(ScheduleApi::list_events(self, request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn list_assets(
        &self,
        request: Request<ListAssetsRequest>,
    ) -> GrpcResult<ListAssetsResponse> {
        grpc(ScheduleApi::list_assets(self, request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn get_asset(&self, request: Request<GetAssetRequest>) -> GrpcResult<GetAssetResponse> {
        grpc(ScheduleApi::get_asset(self, request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn record_asset_update(
        &self,
        request: Request<RecordAssetUpdateRequest>,
    ) -> GrpcResult<RecordAssetUpdateResponse> {
        grpc(ScheduleApi::record_asset_update(self, request.into_inner()).await)
    }
}
