//! Rebuilding scheduler state from the store alone: DAG metadata, and each
//! run as it was last durably recorded.
//!
//! Used at start-up for every active run, and later for a finished run that
//! a user clears tasks of. What the records cannot say (which worker still
//! runs an attempt) the scheduler learns when workers re-register; attempts
//! nobody re-announces within the recovery grace fail as `worker_lost`.

use std::sync::Arc;

use baton_common::error::ApiError;
use baton_common::ids::{AttemptId, DagId, RunId};
use baton_common::pb::api::{AttemptOutcome, RunState, TaskState};
use baton_common::pb::records::{DagMetaRecord, PoolRecord, RunRecord, TaskRecord};
use baton_common::states::task_state_is_final;

use super::state::RunEntry;
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
    let mut entry = RunEntry::new(
        run_id,
        Arc::clone(&plan),
        Arc::from(record.params_json.as_str()),
        micros(record.logical_date.as_ref()),
        (!record.idempotency_key.is_empty()).then(|| record.idempotency_key.clone()),
        micros(record.created_at.as_ref()),
    );
    entry.state = record_run_state(&record);
    entry.started_at = micros(record.started_at.as_ref());
    entry.ended_at = micros(record.ended_at.as_ref());
    entry.reason = (!record.reason.is_empty()).then(|| record.reason.clone());
    entry.dirty = false;
    for (key, value) in &task_entries {
        let task: TaskRecord = decode(key, value).map_err(internal)?;
        let Some(index) = plan.index_of(&task.task_id) else {
            return Err(ApiError::Internal(format!(
                "run {run_id} has a record for unknown task `{}`",
                task.task_id
            )));
        };
        restore_slot(&mut entry, index, &task);
    }
    // Waiting counts follow from the upstream states.
    for index in 0..plan.len() as u32 {
        let waiting = plan.upstream[index as usize]
            .iter()
            .filter(|&&up| entry.slot(up).state != TaskState::Success)
            .count();
        entry.tasks[index as usize].waiting = waiting as u32;
    }
    entry.dirty_tasks.clear();
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
}
