//! Data-aware triggers: events and assets.
//!
//! An event creates one run of every DAG whose schedule lists its name,
//! with its payload as the params (checked against each DAG's params
//! first: a payload one of them refuses stores nothing). With an
//! idempotency key the event and its runs are one conditional write.
//!
//! An asset update (a task listing it in `outputs` succeeded, or an API
//! call) is recorded with its history, and queued for every DAG whose
//! schedule lists the asset. When a DAG's queue holds every asset it
//! lists, its run is created and the queue emptied in the same batch
//! (Airflow's dataset semantics). Everything is a reaction to the update:
//! nothing polls.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use baton_common::error::{ApiError, FieldViolation};
use baton_common::ids::{DagId, RunId};
use baton_common::pb::api::{AssetUpdate, Event, RunTrigger};
use baton_common::pb::records::{
    AssetQueueRecord, AssetRecord, AssetUpdateRecord, DagMetaRecord, DagTriggerKind,
    EventKeyRecord, EventRecord, RunRecord,
};
use baton_common::time::{Micros, micros_to_timestamp_opt, now_micros};
use prost::Message;
use tracing::{info, warn};
use uuid::Uuid;

use super::{PendingEvent, Scheduler};
use crate::plan::{PlanRef, TaskIndex};
use crate::scheduler::Reply;
use crate::scheduler::flush::CreateKey;
use crate::scheduler::state::{RunEntry, RunOrigin};
use crate::scheduler::views::run_record;
use crate::store::{Conditional, Op, Precondition, Store, StoreError, get_record, keys};

impl Scheduler {
    /// Indexes what a DAG's schedule listens to, from its record, and keeps
    /// the plan its triggered runs use.
    pub(super) fn index_dag_triggers(&mut self, meta: &DagMetaRecord, plan: Option<&PlanRef>) {
        let Ok(dag_id) = DagId::new(meta.dag_id.clone()) else {
            return;
        };
        self.unindex_dag_triggers(&dag_id);
        let kind = DagTriggerKind::try_from(meta.trigger_kind).unwrap_or(DagTriggerKind::Manual);
        match kind {
            DagTriggerKind::Events => {
                for name in &meta.trigger_names {
                    self.event_listeners
                        .entry(name.clone())
                        .or_default()
                        .insert(dag_id.clone());
                }
            }
            DagTriggerKind::Assets => {
                for uri in &meta.trigger_names {
                    self.asset_consumers
                        .entry(uri.clone())
                        .or_default()
                        .insert(dag_id.clone());
                }
                self.asset_inputs
                    .insert(dag_id.clone(), meta.trigger_names.clone());
            }
            DagTriggerKind::Manual | DagTriggerKind::Timetable => {}
        }
        if matches!(kind, DagTriggerKind::Events | DagTriggerKind::Assets)
            && let Some(plan) = plan
        {
            self.trigger_plans.insert(dag_id.clone(), plan.clone());
        }
        // Queued updates of assets the DAG no longer lists are dropped.
        let listed: BTreeSet<&String> = match kind {
            DagTriggerKind::Assets => meta.trigger_names.iter().collect(),
            _ => BTreeSet::new(),
        };
        if let Some(queue) = self.asset_queues.get_mut(&dag_id) {
            let dropped: Vec<String> = queue
                .keys()
                .filter(|uri| !listed.contains(uri))
                .cloned()
                .collect();
            for uri in dropped {
                queue.remove(&uri);
                self.pending
                    .ops
                    .push(Op::delete(keys::asset_queue_entry(&dag_id, &uri)));
            }
            if queue.is_empty() {
                self.asset_queues.remove(&dag_id);
            }
        }
    }

    pub(super) fn unindex_dag_triggers(&mut self, dag_id: &DagId) {
        self.event_listeners.retain(|_, dags| {
            dags.remove(dag_id);
            !dags.is_empty()
        });
        self.asset_consumers.retain(|_, dags| {
            dags.remove(dag_id);
            !dags.is_empty()
        });
        self.asset_inputs.remove(dag_id);
        self.trigger_plans.remove(dag_id);
    }

    /// `EmitEvent`: one run per DAG listening to `name`.
    pub(super) fn emit_event(
        &mut self,
        name: String,
        payload: serde_json::Map<String, serde_json::Value>,
        idempotency_key: Option<String>,
        reply: Reply<(Event, bool)>,
    ) {
        if let Some(key) = &idempotency_key
            && let Some(pending) = self
                .pending_events
                .get_mut(&CreateKey::Event(name.clone(), key.clone()))
        {
            pending.waiters.push(reply);
            return;
        }
        let now = now_micros();
        let event_id = Uuid::now_v7().to_string();
        let listeners: Vec<DagId> = self
            .event_listeners
            .get(&name)
            .map(|dags| dags.iter().cloned().collect())
            .unwrap_or_default();
        // A keyed event and its runs are one conditional write, which must
        // fit in one store transaction (etcd: 128 operations).
        let max_ops = self.parts.store.max_batch_ops();
        let most_runs = max_ops.saturating_sub(4) / 3;
        if idempotency_key.is_some() && listeners.len() > most_runs {
            let _ = reply.send(Err(ApiError::FailedPrecondition(format!(
                "event `{name}` is listened to by {} dags; an event with an idempotency key can trigger at most {most_runs} (one store transaction); emit it without a key",
                listeners.len()
            ))));
            return;
        }
        let mut violations = Vec::new();
        let mut entries = Vec::new();
        for dag_id in &listeners {
            let Some(plan) = self.trigger_plans.get(dag_id) else {
                warn!(%dag_id, event = %name, "a dag listening to the event has no plan in memory");
                continue;
            };
            match plan.settings.params.resolve(&payload) {
                Ok(params) => {
                    let mut origin = RunOrigin::manual(now, None);
                    origin.trigger = RunTrigger::Event;
                    origin.trigger_detail = Some(event_id.clone().into_boxed_str());
                    entries.push(RunEntry::new(
                        RunId::generate(),
                        plan.clone(),
                        Arc::from(serde_json::Value::Object(params).to_string()),
                        origin,
                        now,
                    ));
                }
                Err(refused) => violations.extend(refused.into_iter().map(|violation| {
                    FieldViolation::new(
                        format!("payload_json.{}", violation.field),
                        format!("dag `{dag_id}`: {}", violation.reason),
                    )
                })),
            }
        }
        if !violations.is_empty() {
            let _ = reply.send(Err(ApiError::InvalidArgument(violations)));
            return;
        }
        let event = Event {
            event_id: event_id.clone(),
            name: name.clone(),
            payload_json: serde_json::Value::Object(payload).to_string(),
            emitted_at: micros_to_timestamp_opt(now),
            run_ids: entries
                .iter()
                .map(|entry| entry.run_id.to_string())
                .collect(),
        };
        let record = EventRecord {
            event: Some(event.clone()),
            idempotency_key: idempotency_key.clone().unwrap_or_default(),
        };
        info!(event = %name, %event_id, runs = entries.len(), "event emitted");
        match idempotency_key {
            None => {
                self.pending
                    .ops
                    .push(Op::put(keys::event(&event_id), record.encode_to_vec()));
                for entry in entries {
                    self.create_run(entry, None);
                }
                self.reply_after_commit(reply, Ok((event, true)));
            }
            Some(key) => {
                let event_key = keys::event_key(&name, &key);
                let mut ops = vec![
                    Op::put(
                        event_key.clone(),
                        EventKeyRecord {
                            event_id: event_id.clone(),
                        }
                        .encode_to_vec(),
                    ),
                    Op::put(keys::event(&event_id), record.encode_to_vec()),
                ];
                for entry in &entries {
                    ops.push(Op::put(
                        keys::run(&entry.run_id),
                        RunRecord {
                            leader_term: self.parts.term,
                            ..run_record(entry)
                        }
                        .encode_to_vec(),
                    ));
                    ops.push(Op::put(
                        keys::dag_run(&entry.dag_id, &entry.run_id),
                        Vec::new(),
                    ));
                    ops.push(Op::put(keys::active(&entry.run_id), Vec::new()));
                }
                let create = CreateKey::Event(name, key);
                self.pending.conditionals.push((
                    Conditional {
                        preconditions: vec![Precondition::DoesNotExist(event_key)],
                        ops,
                    },
                    create.clone(),
                ));
                self.pending_events.insert(
                    create,
                    PendingEvent {
                        event,
                        entries,
                        waiters: vec![reply],
                    },
                );
            }
        }
    }

    /// An event's conditional write returned.
    pub(super) fn finish_event(&mut self, key: CreateKey, applied: bool) {
        let Some(PendingEvent {
            event,
            entries,
            waiters,
        }) = self.pending_events.remove(&key)
        else {
            return;
        };
        if applied {
            for entry in entries {
                self.install_created(entry);
            }
            for (index, waiter) in waiters.into_iter().enumerate() {
                self.reply_after_commit(waiter, Ok((event.clone(), index == 0)));
            }
            return;
        }
        let CreateKey::Event(name, idempotency_key) = key else {
            return;
        };
        let store = Arc::clone(&self.parts.store);
        tokio::spawn(async move {
            let result = existing_event(store.as_ref(), &name, &idempotency_key).await;
            for waiter in waiters {
                let _ = waiter.send(result.clone().map(|event| (event, false)));
            }
        });
    }

    /// A task succeeded: the assets it lists in `outputs` were updated.
    pub(super) fn record_task_outputs(&mut self, run_id: RunId, index: TaskIndex) {
        let Some(entry) = self.runs.get(&run_id) else {
            return;
        };
        // A mapped task updates its assets once, when it succeeds as a whole.
        if entry.instance(index).is_some() {
            return;
        }
        let task = entry.task(index);
        if task.outputs.is_empty() {
            return;
        }
        let source = (entry.dag_id.clone(), run_id, task.id.to_string());
        let outputs: Vec<String> = task.outputs.iter().map(ToString::to_string).collect();
        for uri in outputs {
            self.record_asset_update(&uri, Some(source.clone()));
        }
    }

    /// Records one update of an asset and creates the runs it completes
    /// the trigger of.
    pub(super) fn record_asset_update(
        &mut self,
        uri: &str,
        source: Option<(DagId, RunId, String)>,
    ) -> AssetUpdate {
        let now = now_micros();
        let record = self
            .assets
            .entry(uri.to_string())
            .or_insert_with(|| AssetRecord {
                uri: uri.to_string(),
                ..AssetRecord::default()
            });
        record.update_count += 1;
        record.last_updated_at = micros_to_timestamp_opt(now);
        self.pending
            .ops
            .push(Op::put(keys::asset(uri), record.encode_to_vec()));
        let mut update = AssetUpdate {
            uri: uri.to_string(),
            updated_at: micros_to_timestamp_opt(now),
            ..AssetUpdate::default()
        };
        if let Some((dag_id, run_id, task_id)) = source {
            update.dag_id = dag_id.to_string();
            update.run_id = run_id.to_string();
            update.task_id = task_id;
        }
        let consumers: Vec<DagId> = self
            .asset_consumers
            .get(uri)
            .map(|dags| dags.iter().cloned().collect())
            .unwrap_or_default();
        for dag_id in consumers {
            let queue = self.asset_queues.entry(dag_id.clone()).or_default();
            if !queue.contains_key(uri) {
                queue.insert(uri.to_string(), now);
                self.pending.ops.push(Op::put(
                    keys::asset_queue_entry(&dag_id, uri),
                    AssetQueueRecord {
                        uri: uri.to_string(),
                        first_updated_at: micros_to_timestamp_opt(now),
                    }
                    .encode_to_vec(),
                ));
            }
            if let Some(run_id) = self.trigger_asset_run(&dag_id, now) {
                update.triggered_run_ids.push(run_id.to_string());
            }
        }
        info!(%uri, triggered = update.triggered_run_ids.len(), "asset updated");
        self.pending.ops.push(Op::put(
            keys::asset_update(uri, &Uuid::now_v7().to_string()),
            AssetUpdateRecord {
                update: Some(update.clone()),
            }
            .encode_to_vec(),
        ));
        update
    }

    /// Creates the DAG's asset-triggered run if every asset it lists was
    /// updated since its last one.
    fn trigger_asset_run(&mut self, dag_id: &DagId, now: Micros) -> Option<RunId> {
        let inputs = self.asset_inputs.get(dag_id)?;
        let queue: &BTreeMap<String, Micros> = self.asset_queues.get(dag_id)?;
        if !inputs.iter().all(|uri| queue.contains_key(uri)) {
            return None;
        }
        let first = queue.values().copied().min().unwrap_or(now);
        let detail = inputs.join(", ");
        let Some(plan) = self.trigger_plans.get(dag_id).cloned() else {
            warn!(%dag_id, "a dag consuming assets has no plan in memory");
            return None;
        };
        let params = match plan.settings.params.resolve(&serde_json::Map::new()) {
            Ok(params) => params,
            Err(violations) => {
                warn!(%dag_id, ?violations, "cannot create the asset-triggered run: a param has no default");
                return None;
            }
        };
        // One delete per entry, not the DAG's prefix: the entry that
        // completed the queue may be put in this same batch.
        for uri in self
            .asset_queues
            .remove(dag_id)
            .unwrap_or_default()
            .into_keys()
        {
            self.pending
                .ops
                .push(Op::delete(keys::asset_queue_entry(dag_id, &uri)));
        }
        let origin = RunOrigin {
            logical_date: now,
            data_interval_start: first,
            data_interval_end: now,
            trigger: RunTrigger::Asset,
            trigger_detail: Some(detail.into_boxed_str()),
            backfill_id: None,
            idempotency_key: None,
        };
        let entry = RunEntry::new(
            RunId::generate(),
            plan,
            Arc::from(serde_json::Value::Object(params).to_string()),
            origin,
            now,
        );
        let run_id = entry.run_id;
        info!(%dag_id, %run_id, "every asset the dag consumes was updated; run created");
        self.create_run(entry, None);
        Some(run_id)
    }
}

async fn existing_event(
    store: &dyn Store,
    name: &str,
    idempotency_key: &str,
) -> Result<Event, ApiError> {
    let internal = |error: StoreError| ApiError::Internal(error.to_string());
    let key: EventKeyRecord = get_record(store, &keys::event_key(name, idempotency_key))
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::Internal("event key vanished".into()))?;
    let record: EventRecord = get_record(store, &keys::event(&key.event_id))
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::Internal("event record vanished".into()))?;
    record
        .event
        .ok_or_else(|| ApiError::Internal("event record is empty".into()))
}
