//! Conversions between the scheduler's in-memory state, the store records
//! and the API views. Records are what is written; views are built from
//! records, so what a client sees is exactly what is durable.

use std::collections::HashMap;

use baton_common::pb::api::{
    Attempt, AttemptOutcome, Dag, Run, RunState, RunTrigger, TaskInstance, TaskState, TaskSummary,
};
use baton_common::pb::records::{AttemptRecord, DagMetaRecord, RunRecord, TaskRecord};
use baton_common::spec::ResolvedTask;
use baton_common::states::task_state_name;
use baton_common::time::{duration_to_proto, micros_to_timestamp_opt, timestamp_opt_to_micros};

use super::state::RunEntry;
use crate::plan::{DagPlan, TaskIndex};

const STATES: [TaskState; 12] = [
    TaskState::Unspecified,
    TaskState::Pending,
    TaskState::Ready,
    TaskState::Leased,
    TaskState::Running,
    TaskState::Success,
    TaskState::Failed,
    TaskState::UpstreamFailed,
    TaskState::Skipped,
    TaskState::Cancelled,
    TaskState::UpForRetry,
    TaskState::UpForReschedule,
];

pub fn counts_map(counts: &[u32; 12]) -> HashMap<String, u32> {
    STATES
        .iter()
        .zip(counts)
        .filter(|(_, count)| **count > 0)
        .map(|(state, count)| (task_state_name(*state).to_string(), *count))
        .collect()
}

pub fn run_record(entry: &RunEntry) -> RunRecord {
    RunRecord {
        run_id: entry.run_id.to_string(),
        dag_id: entry.dag_id.to_string(),
        dag_version: entry.plan.version,
        state: entry.state as i32,
        params_json: entry.params_json.to_string(),
        logical_date: micros_to_timestamp_opt(entry.origin.logical_date),
        idempotency_key: entry.origin.idempotency_key.clone().unwrap_or_default(),
        created_at: micros_to_timestamp_opt(entry.created_at),
        started_at: micros_to_timestamp_opt(entry.started_at),
        ended_at: micros_to_timestamp_opt(entry.ended_at),
        reason: entry.reason.clone().unwrap_or_default(),
        task_counts: counts_map(&entry.counts),
        task_total: entry.tasks.len() as u32,
        // Stamped by the scheduler when it writes the record.
        leader_term: 0,
        data_interval_start: micros_to_timestamp_opt(entry.origin.data_interval_start),
        data_interval_end: micros_to_timestamp_opt(entry.origin.data_interval_end),
        trigger: entry.origin.trigger as i32,
        trigger_detail: entry
            .origin
            .trigger_detail
            .as_deref()
            .unwrap_or_default()
            .to_string(),
        backfill_id: entry
            .origin
            .backfill_id
            .as_deref()
            .unwrap_or_default()
            .to_string(),
        sla_misses: entry.sla_misses.clone(),
    }
}

pub fn run_view(record: &RunRecord) -> Run {
    Run {
        run_id: record.run_id.clone(),
        dag_id: record.dag_id.clone(),
        dag_version: record.dag_version,
        state: record.state,
        params_json: record.params_json.clone(),
        logical_date: record.logical_date,
        idempotency_key: record.idempotency_key.clone(),
        created_at: record.created_at,
        started_at: record.started_at,
        ended_at: record.ended_at,
        task_counts: record.task_counts.clone(),
        task_total: record.task_total,
        reason: record.reason.clone(),
        data_interval_start: record.data_interval_start.or(record.logical_date),
        data_interval_end: record.data_interval_end.or(record.logical_date),
        // Runs recorded before triggers were recorded were manual.
        trigger: if record.trigger == 0 {
            RunTrigger::Manual as i32
        } else {
            record.trigger
        },
        trigger_detail: record.trigger_detail.clone(),
        backfill_id: record.backfill_id.clone(),
        sla_misses: record.sla_misses.clone(),
    }
}

pub fn task_record(entry: &RunEntry, index: TaskIndex) -> TaskRecord {
    let slot = entry.slot(index);
    let task = entry.task(index);
    TaskRecord {
        task_id: entry.task_id(index).to_string(),
        state: slot.state as i32,
        attempt: slot.attempt,
        max_attempts: slot.max_attempts(task.retries),
        attempt_id: slot.attempt_id.map(|id| id.to_string()).unwrap_or_default(),
        worker_id: slot.worker.as_deref().unwrap_or_default().to_string(),
        leased_at: micros_to_timestamp_opt(slot.leased_at),
        started_at: micros_to_timestamp_opt(slot.started_at),
        ended_at: micros_to_timestamp_opt(slot.ended_at),
        exit_code: slot.exit_code,
        outcome: slot.outcome as i32,
        error: slot.error.as_deref().unwrap_or_default().to_string(),
        next_attempt_at: micros_to_timestamp_opt(slot.next_attempt_at),
        output_json: slot.output.as_deref().unwrap_or_default().to_string(),
        attempt_base: slot.attempt_base,
        leader_term: 0,
        sensor_deadline: micros_to_timestamp_opt(slot.sensor_deadline),
        map_index: entry.instance(index).map(|instance| instance.map_index),
        map_length: entry.mapped.get(&index).map(|group| group.len),
    }
}

pub fn task_view(record: TaskRecord) -> TaskInstance {
    TaskInstance {
        task_id: record.task_id,
        state: record.state,
        attempt: record.attempt,
        max_attempts: record.max_attempts,
        attempt_id: record.attempt_id,
        worker_id: record.worker_id,
        started_at: record.started_at,
        ended_at: record.ended_at,
        exit_code: record.exit_code,
        outcome: record.outcome,
        error: record.error,
        next_attempt_at: record.next_attempt_at,
        output_json: record.output_json,
        sensor_deadline: record.sensor_deadline,
        map_index: record.map_index,
        map_length: record.map_length,
    }
}

/// A task that has no record: pending, never attempted.
pub fn pending_task_view(task: &ResolvedTask) -> TaskInstance {
    TaskInstance {
        task_id: task.id.to_string(),
        state: TaskState::Pending as i32,
        max_attempts: task.retries + 1,
        ..TaskInstance::default()
    }
}

/// Every task of a run, from the records found in the store, in file order, each mapped task followed by its
/// instances in index order.
pub fn task_views(plan: &DagPlan, records: Vec<TaskRecord>) -> Vec<TaskInstance> {
    let mut views: Vec<Option<TaskInstance>> = vec![None; plan.len()];
    let mut instances: HashMap<u32, Vec<TaskInstance>> = HashMap::new();
    for record in records {
        let id = match baton_common::ids::TaskId::new(record.task_id.clone()) {
            Ok(id) => id,
            Err(_) => continue,
        };
        let (task, map_index) = id.split_instance();
        let Some(index) = plan.index_of(task) else {
            continue;
        };
        match map_index {
            None => views[index as usize] = Some(task_view(record)),
            Some(_) => instances.entry(index).or_default().push(task_view(record)),
        }
    }
    let mut all = Vec::with_capacity(plan.len());
    for (index, view) in views.into_iter().enumerate() {
        all.push(view.unwrap_or_else(|| pending_task_view(&plan.tasks[index])));
        if let Some(mut mapped) = instances.remove(&(index as u32)) {
            mapped.sort_by_key(|instance| instance.map_index);
            all.extend(mapped);
        }
    }
    all
}

/// The record of an attempt that ended, from the task's current state.
pub fn attempt_record(entry: &RunEntry, index: TaskIndex, log_bytes: u64) -> AttemptRecord {
    let slot = entry.slot(index);
    AttemptRecord {
        attempt: Some(Attempt {
            attempt: slot.attempt,
            attempt_id: slot.attempt_id.map(|id| id.to_string()).unwrap_or_default(),
            worker_id: slot.worker.as_deref().unwrap_or_default().to_string(),
            leased_at: micros_to_timestamp_opt(slot.leased_at),
            started_at: micros_to_timestamp_opt(slot.started_at),
            ended_at: micros_to_timestamp_opt(slot.ended_at),
            outcome: slot.outcome as i32,
            exit_code: slot.exit_code,
            error: slot.error.as_deref().unwrap_or_default().to_string(),
            log_bytes,
        }),
        leader_term: 0,
    }
}

/// The current attempt of a task that has not ended yet, as an attempt
/// view (for listing attempts).
pub fn open_attempt_view(record: &TaskRecord) -> Option<Attempt> {
    let open = matches!(
        TaskState::try_from(record.state),
        Ok(TaskState::Leased | TaskState::Running)
    );
    open.then(|| Attempt {
        attempt: record.attempt,
        attempt_id: record.attempt_id.clone(),
        worker_id: record.worker_id.clone(),
        leased_at: record.leased_at,
        started_at: record.started_at,
        ended_at: None,
        outcome: AttemptOutcome::Unspecified as i32,
        exit_code: None,
        error: String::new(),
        log_bytes: 0,
    })
}

pub fn dag_view(meta: &DagMetaRecord) -> Dag {
    Dag {
        dag_id: meta.dag_id.clone(),
        latest_version: meta.latest_version,
        description: meta.description.clone(),
        schedule: meta.schedule.clone(),
        paused: meta.paused,
        task_count: meta.task_count,
        created_at: meta.created_at,
        updated_at: meta.updated_at,
        timezone: if meta.timezone.is_empty() {
            "UTC".to_string()
        } else {
            meta.timezone.clone()
        },
        catchup: meta.catchup,
        max_active_runs: if meta.max_active_runs == 0 {
            crate::scheduler::DEFAULT_MAX_ACTIVE_RUNS
        } else {
            meta.max_active_runs
        },
        // Filled by the API for scheduled DAGs (it reads the store).
        next_data_interval_start: None,
        next_data_interval_end: None,
    }
}

pub fn task_summary(plan: &DagPlan, task: &ResolvedTask) -> TaskSummary {
    TaskSummary {
        task_id: task.id.to_string(),
        kind: task.kind.name().to_string(),
        depends_on: task
            .depends_on
            .iter()
            .map(|&index| plan.tasks[index].id.to_string())
            .collect(),
        queue: task.queue.to_string(),
        priority: task.priority,
        retries: task.retries,
        timeout: task.timeout.map(duration_to_proto),
        outputs: task.outputs.iter().map(ToString::to_string).collect(),
        trigger_rule: task.trigger_rule.name().to_string(),
        branch: task.branch,
        run_if: task.run_if.clone().unwrap_or_default(),
        map_over: task
            .map_over
            .as_ref()
            .map(|map| map.expression.clone())
            .unwrap_or_default(),
    }
}

/// The state a record says a run is in.
pub fn record_run_state(record: &RunRecord) -> RunState {
    RunState::try_from(record.state).unwrap_or(RunState::Unspecified)
}

pub fn record_task_state(record: &TaskRecord) -> TaskState {
    TaskState::try_from(record.state).unwrap_or(TaskState::Unspecified)
}

/// Microseconds of an optional record timestamp (0 when unset).
pub fn micros(timestamp: Option<&prost_types::Timestamp>) -> i64 {
    timestamp_opt_to_micros(timestamp)
}
