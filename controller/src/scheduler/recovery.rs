//! Rebuilding scheduler state from the store alone: DAG metadata, and each
//! run as it was last durably recorded.
//!
//! Used at start-up for every active run, and later for a finished run that
//! a user clears tasks of. What the records cannot say (which worker still
//! runs an attempt) the scheduler learns when workers re-register; attempts
//! nobody re-announces within the recovery grace fail as `worker_lost`.

use std::sync::Arc;

use baton_common::error::ApiError;
use baton_common::ids::{AttemptId, DagId, RunId, TaskId};
use baton_common::pb::api::{AttemptOutcome, BackfillInterval, RunState, RunTrigger, TaskState};
use baton_common::pb::records::{
    AssetQueueRecord, AssetRecord, BackfillRecord, DagMetaRecord, PoolRecord, RunRecord,
    SchedulePositionRecord, TaskRecord,
};
use baton_common::states::task_state_is_final;

use super::state::{RunEntry, RunOrigin};
use super::views::{micros, record_run_state, record_task_state};
use crate::plan::PlanCache;
use crate::store::{Scan, Store, StoreError, StoreResult, decode, get_record, keys};

/// A run read back from the store, ready to be installed.
pub struct LoadedRun {
    pub entry: RunEntry,
}

/// Every DAG's metadata.
pub async fn load_dags(store: &dyn Store) -> StoreResult<Vec<DagMetaRecord>> {
    let entries = store.scan(Scan::prefix(keys::DAGS)).await?;
    entries
        .iter()
        .map(|(key, value)| decode::<DagMetaRecord>(key, value))
        .collect()
}

/// Every pool.
pub async fn load_pools(store: &dyn Store) -> StoreResult<Vec<PoolRecord>> {
    let entries = store.scan(Scan::prefix(keys::POOLS)).await?;
    entries
        .iter()
        .map(|(key, value)| decode::<PoolRecord>(key, value))
        .collect()
}

/// Ids of the runs that have not finished.
pub async fn load_active_run_ids(store: &dyn Store) -> StoreResult<Vec<RunId>> {
    let entries = store.scan(Scan::prefix(keys::ACTIVE)).await?;
    Ok(entries
        .iter()
        .filter_map(|(key, _)| keys::parse_run_id(key))
        .collect())
}

/// Reads one run and its task records; `None` when the run does not exist.
pub async fn load_run(
    store: &dyn Store,
    plans: &PlanCache,
    run_id: RunId,
) -> Result<Option<LoadedRun>, ApiError> {
    let internal = |error: StoreError| ApiError::Internal(error.to_string());
    let Some(record): Option<RunRecord> = get_record(store, &keys::run(&run_id))
        .await
        .map_err(internal)?
    else {
        return Ok(None);
    };
    let dag_id = DagId::new(record.dag_id.clone()).map_err(|error| {
        ApiError::Internal(format!("run {run_id} names an invalid dag: {error}"))
    })?;
    let plan = plans.get(store, &dag_id, record.dag_version).await?;
    let task_entries = store
        .scan(Scan::prefix(keys::tasks(&run_id)))
        .await
        .map_err(internal)?;
    let logical_date = micros(record.logical_date.as_ref());
    let interval_or_logical = |timestamp: Option<&prost_types::Timestamp>| match micros(timestamp) {
        0 => logical_date,
        value => value,
    };
    let origin = RunOrigin {
        logical_date,
        data_interval_start: interval_or_logical(record.data_interval_start.as_ref()),
        data_interval_end: interval_or_logical(record.data_interval_end.as_ref()),
        trigger: match RunTrigger::try_from(record.trigger) {
            Ok(RunTrigger::Unspecified) | Err(_) => RunTrigger::Manual,
            Ok(trigger) => trigger,
        },
        trigger_detail: (!record.trigger_detail.is_empty())
            .then(|| record.trigger_detail.clone().into_boxed_str()),
        backfill_id: (!record.backfill_id.is_empty())
            .then(|| Arc::from(record.backfill_id.as_str())),
        idempotency_key: (!record.idempotency_key.is_empty())
            .then(|| record.idempotency_key.clone()),
    };
    let mut entry = RunEntry::new(
        run_id,
        Arc::clone(&plan),
        Arc::from(record.params_json.as_str()),
        origin,
        micros(record.created_at.as_ref()),
    );
    entry.sla_misses = record.sla_misses.clone();
    entry.state = record_run_state(&record);
    entry.started_at = micros(record.started_at.as_ref());
    entry.ended_at = micros(record.ended_at.as_ref());
    entry.reason = (!record.reason.is_empty()).then(|| record.reason.clone());
    entry.dirty = false;
    let mut instance_records = Vec::new();
    for (key, value) in &task_entries {
        let task: TaskRecord = decode(key, value).map_err(internal)?;
        let unknown = || {
            ApiError::Internal(format!(
                "run {run_id} has a record for unknown task `{}`",
                task.task_id
            ))
        };
        let id = TaskId::new(task.task_id.clone()).map_err(|_| unknown())?;
        let (name, map_index) = id.split_instance();
        let index = plan.index_of(name).ok_or_else(unknown)?;
        match map_index {
            Some(map_index) => instance_records.push((index, map_index, task)),
            None => {
                restore_slot(&mut entry, index, &task);
                // An expanded mapped task: its instances come back too.
                if let Some(len) = task.map_length {
                    entry.add_instances(index, len);
                }
            }
        }
    }
    for (parent, map_index, task) in &instance_records {
        let Some(group) = entry.mapped.get(parent) else {
            return Err(ApiError::Internal(format!(
                "run {run_id} has a record for instance `{}` of a task that was not expanded",
                task.task_id
            )));
        };
        if *map_index >= group.len {
            return Err(ApiError::Internal(format!(
                "run {run_id} has a record for instance `{}` past its task's {} instances",
                task.task_id, group.len
            )));
        }
        let index = group.first + map_index;
        restore_slot(&mut entry, index, task);
    }
    // Instances are made ready with their expansion; one whose record was
    // not stored yet is ready too. The groups count what their instances did.
    let parents: Vec<(u32, u32, u32)> = entry
        .mapped
        .iter()
        .map(|(&parent, group)| (parent, group.first, group.len))
        .collect();
    for (parent, first, len) in parents {
        if entry.slot(parent).state == TaskState::Running {
            for index in first..first + len {
                if entry.slot(index).state == TaskState::Pending {
                    entry.set_state(index, TaskState::Ready);
                }
            }
        }
        entry.recount_group(parent);
    }
    // What each task's trigger rule decides on follows from its upstream.
    for index in 0..plan.len() as u32 {
        entry.recount_upstream(index);
    }
    entry.dirty_tasks.clear();
    // Its history is in the store already; loading it changed nothing.
    entry.changes.clear();
    for slot in &mut entry.tasks {
        slot.dirty = false;
    }
    if entry.state == RunState::Unspecified {
        return Err(ApiError::Internal(format!("run {run_id} has no state")));
    }
    Ok(Some(LoadedRun { entry }))
}

fn restore_slot(entry: &mut RunEntry, index: u32, record: &TaskRecord) {
    let state = record_task_state(record);
    let from = entry.tasks[index as usize].state;
    entry.counts[from as usize] -= 1;
    entry.counts[state as usize] += 1;
    if task_state_is_final(state) {
        entry.unfinished -= 1;
    }
    let slot = &mut entry.tasks[index as usize];
    slot.state = state;
    slot.attempt = record.attempt;
    slot.attempt_base = record.attempt_base;
    slot.attempt_id = record.attempt_id.parse::<AttemptId>().ok();
    slot.worker = (!record.worker_id.is_empty()).then(|| Arc::from(record.worker_id.as_str()));
    slot.leased_at = micros(record.leased_at.as_ref());
    slot.started_at = micros(record.started_at.as_ref());
    slot.ended_at = micros(record.ended_at.as_ref());
    slot.next_attempt_at = micros(record.next_attempt_at.as_ref());
    slot.exit_code = record.exit_code;
    slot.outcome = AttemptOutcome::try_from(record.outcome).unwrap_or(AttemptOutcome::Unspecified);
    slot.error = (!record.error.is_empty()).then(|| record.error.clone().into_boxed_str());
    slot.output =
        (!record.output_json.is_empty()).then(|| record.output_json.clone().into_boxed_str());
    slot.sensor_deadline = micros(record.sensor_deadline.as_ref());
}

/// Where each DAG's schedule stands: the end of its latest scheduled
/// interval with a run.
pub async fn load_schedule_positions(
    store: &dyn Store,
) -> StoreResult<std::collections::HashMap<DagId, i64>> {
    let entries = store.scan(Scan::prefix(keys::SCHEDULE_POSITIONS)).await?;
    let mut positions = std::collections::HashMap::with_capacity(entries.len());
    for (key, value) in &entries {
        let record: SchedulePositionRecord = decode(key, value)?;
        if let Some(dag_id) = keys::parse_dag_id(key) {
            positions.insert(dag_id, micros(record.last_interval_end.as_ref()));
        }
    }
    Ok(positions)
}

/// Where one DAG's schedule stands.
pub async fn schedule_position(store: &dyn Store, dag_id: &DagId) -> StoreResult<Option<i64>> {
    let record: Option<SchedulePositionRecord> =
        get_record(store, &keys::schedule_position(dag_id)).await?;
    Ok(record.map(|record| micros(record.last_interval_end.as_ref())))
}

/// Every asset that was updated.
pub async fn load_assets(store: &dyn Store) -> StoreResult<Vec<AssetRecord>> {
    let entries = store.scan(Scan::prefix(keys::ASSETS)).await?;
    entries
        .iter()
        .map(|(key, value)| decode::<AssetRecord>(key, value))
        .collect()
}

/// Asset updates queued for the DAGs consuming them: (DAG, URI, first
/// update).
pub async fn load_asset_queues(store: &dyn Store) -> StoreResult<Vec<(DagId, String, i64)>> {
    let entries = store.scan(Scan::prefix(keys::ASSET_QUEUE)).await?;
    let mut queued = Vec::with_capacity(entries.len());
    for (key, value) in &entries {
        let record: AssetQueueRecord = decode(key, value)?;
        let Some(dag_id) = keys::parse_asset_queue_dag(key) else {
            continue;
        };
        queued.push((dag_id, record.uri, micros(record.first_updated_at.as_ref())));
    }
    Ok(queued)
}

/// The records of backfills that have not ended.
pub async fn load_active_backfills(store: &dyn Store) -> StoreResult<Vec<BackfillRecord>> {
    let entries = store.scan(Scan::prefix(keys::ACTIVE_BACKFILLS)).await?;
    let mut records = Vec::with_capacity(entries.len());
    for (key, _) in &entries {
        let id = keys::last_segment(key).to_string();
        if let Some(record) = get_record::<BackfillRecord>(store, &keys::backfill(&id)).await? {
            records.push(record);
        }
    }
    Ok(records)
}

/// The intervals of a backfill, in position order.
pub async fn load_backfill_intervals(
    store: &dyn Store,
    backfill_id: &str,
) -> StoreResult<Vec<BackfillInterval>> {
    let entries = store
        .scan(Scan::prefix(keys::backfill_intervals(backfill_id)))
        .await?;
    entries
        .iter()
        .map(|(key, value)| decode::<BackfillInterval>(key, value))
        .collect()
}

/// How the given runs ended (those that exist and have a state).
pub async fn load_run_states(
    store: &dyn Store,
    run_ids: impl IntoIterator<Item = RunId>,
) -> StoreResult<std::collections::HashMap<RunId, RunState>> {
    let mut states = std::collections::HashMap::new();
    for run_id in run_ids {
        if let Some(record) = get_record::<RunRecord>(store, &keys::run(&run_id)).await? {
            states.insert(run_id, record_run_state(&record));
        }
    }
    Ok(states)
}
