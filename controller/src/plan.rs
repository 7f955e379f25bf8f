//! [`DagPlan`]: one DAG version compiled for scheduling, and the cache that
//! shares plans between runs and API reads.
//!
//! A plan holds the resolved tasks in file order with both edge directions
//! as index lists, so that a completion reaches its downstream tasks in
//! O(out-degree) and a run's per-task state is a plain vector indexed like
//! the plan. Per-task lists are [`IndexLists`]: one vector of entries and an
//! end offset per list, since a 100,000-task plan is held for as long as the
//! DAG is registered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use baton_common::error::ApiError;
use baton_common::ids::{DagId, TaskId};
use baton_common::pb::records::DagVersionRecord;
use std::time::Duration;

use baton_common::spec::{
    self, DagTrigger, Notifier, ParamsSpec, ResolvedTask, SensorCondition, SpecFormat, SpecLimits,
    TaskKind, TriggerRule, ValidatedDag,
};
use baton_common::template;
use baton_common::timetable::Timetable;

use crate::scheduler::routing::{Route, intern_routes};
use crate::store::{Store, StoreError, get_record, keys};

/// Index of a task within its plan.
pub type TaskIndex = u32;

#[derive(Debug)]
pub struct DagPlan {
    pub dag_id: DagId,
    pub version: u32,
    pub tasks: Vec<ResolvedTask>,
    /// `upstream[i]`: tasks that task `i` depends on.
    pub upstream: IndexLists,
    /// `downstream[i]`: tasks that depend on task `i`.
    pub downstream: IndexLists,
    /// `routes[i]`: what a worker must offer to take task `i`.
    pub routes: Vec<Arc<Route>>,
    /// Tasks of the DAG leased or running at once, across its runs.
    pub max_active_tasks: Option<u32>,
    /// When the DAG runs and what its runs take.
    pub settings: DagSettings,
    /// `template_reads[i]`: tasks whose output the templated fields of
    /// task `i` read (upstream of it, as validation checks), so that
    /// rendering looks only at those.
    pub template_reads: IndexLists,
    /// `expression_reads[i]`: the same for its `run_if` and `map_over`,
    /// apart, so that rendering each mapped instance does not copy the
    /// list its task went over.
    pub expression_reads: IndexLists,
    /// Tasks with an `sla`.
    pub sla_tasks: Vec<TaskIndex>,
    /// Sensors the controller evaluates itself (time, delta, external).
    pub controller_sensor_tasks: Vec<TaskIndex>,
    /// Tasks that decide when a run starts: those without upstream, and
    /// those whose trigger rule is `always`.
    pub starters: Vec<TaskIndex>,
    /// The tasks' `baton_tasks_finished_total` counters, once metrics
    /// counted one of them.
    pub finished_counters: crate::metrics::PlanCounters,
    by_id: HashMap<TaskId, TaskIndex>,
}

/// What a DAG version says about its runs as a whole.
#[derive(Debug)]
pub struct DagSettings {
    pub trigger: DagTrigger,
    pub timezone: chrono_tz::Tz,
    pub catchup: bool,
    pub max_active_runs: u32,
    pub params: ParamsSpec,
    /// A run must finish within this after its data interval ends.
    pub sla: Option<Duration>,
    /// The DAG's own notifiers; empty means the controller's defaults.
    pub notify: Vec<Notifier>,
}

impl DagSettings {
    pub fn timetable(&self) -> Option<&Timetable> {
        match &self.trigger {
            DagTrigger::Timetable(timetable) => Some(timetable),
            _ => None,
        }
    }
}

impl DagPlan {
    pub fn compile(version: u32, dag: ValidatedDag) -> Self {
        let (template_reads, expression_reads) = template_reads(&dag.tasks);
        let by_id = dag
            .tasks
            .iter()
            .enumerate()
            .map(|(index, task)| (task.id.clone(), index as TaskIndex))
            .collect();
        let upstream = IndexLists::from_lists(
            dag.tasks
                .iter()
                .map(|task| task.depends_on.iter().map(|&up| up as TaskIndex)),
        );
        let downstream = upstream.reversed();
        Self {
            dag_id: dag.dag_id,
            version,
            routes: intern_routes(&dag.tasks),
            max_active_tasks: dag.max_active_tasks,
            settings: DagSettings {
                trigger: dag.trigger,
                timezone: dag.timezone,
                catchup: dag.catchup,
                max_active_runs: dag.max_active_runs,
                params: dag.params,
                sla: dag.sla,
                notify: dag.notify,
            },
            template_reads,
            expression_reads,
            starters: dag
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, task)| {
                    task.depends_on.is_empty() || task.trigger_rule == TriggerRule::Always
                })
                .map(|(index, _)| index as TaskIndex)
                .collect(),
            controller_sensor_tasks: dag
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, task)| {
                    matches!(&task.kind, TaskKind::Sensor(sensor) if !sensor.condition.runs_on_worker())
                })
                .map(|(index, _)| index as TaskIndex)
                .collect(),
            sla_tasks: dag
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, task)| task.sla.is_some())
                .map(|(index, _)| index as TaskIndex)
                .collect(),
            tasks: dag.tasks,
            upstream,
            downstream,
            finished_counters: crate::metrics::PlanCounters::default(),
            by_id,
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn index_of(&self, task_id: &str) -> Option<TaskIndex> {
        self.by_id.get(task_id).copied()
    }

    pub fn task(&self, index: TaskIndex) -> &ResolvedTask {
        &self.tasks[index as usize]
    }

    /// Every task upstream of `start`, directly or not, each once, in index
    /// order (without `start`).
    pub fn upstream_closure(&self, start: TaskIndex) -> Vec<TaskIndex> {
        let mut upstream = ancestors(&self.tasks, self.task(start));
        upstream.sort_unstable();
        upstream
    }

    /// `start` and every task downstream of it, each once, in index order.
    pub fn downstream_closure(&self, start: TaskIndex) -> Vec<TaskIndex> {
        let mut seen = vec![false; self.len()];
        let mut stack = vec![start];
        seen[start as usize] = true;
        while let Some(index) = stack.pop() {
            for &next in &self.downstream[index as usize] {
                if !seen[next as usize] {
                    seen[next as usize] = true;
                    stack.push(next);
                }
            }
        }
        (0..self.len() as TaskIndex)
            .filter(|&i| seen[i as usize])
            .collect()
    }
}

/// One list of task indices per task, all in one vector: where a vector per
/// task costs 24 bytes and a heap block for each non-empty list, this costs
/// the lists' entries and 8 bytes per list. `lists[i]` is list `i`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IndexLists {
    /// `ends[i]`: where list `i` ends in `entries` (it starts where list
    /// `i - 1` ends).
    ends: Vec<usize>,
    entries: Vec<TaskIndex>,
}

impl IndexLists {
    pub fn from_lists<L: IntoIterator<Item = TaskIndex>>(
        lists: impl IntoIterator<Item = L>,
    ) -> Self {
        let mut built = Self::default();
        for list in lists {
            built.push(list);
        }
        built.shrink_to_fit();
        built
    }

    /// Adds the next list.
    fn push(&mut self, list: impl IntoIterator<Item = TaskIndex>) {
        self.entries.extend(list);
        self.ends.push(self.entries.len());
    }

    fn shrink_to_fit(&mut self) {
        self.ends.shrink_to_fit();
        self.entries.shrink_to_fit();
    }

    /// The lists where list `j` holds every `i` whose list here holds `j`,
    /// in increasing `i` (upstream lists give downstream lists); as many
    /// lists as here, since entries index the same tasks.
    fn reversed(&self) -> Self {
        let mut ends = vec![0usize; self.len()];
        for &entry in &self.entries {
            ends[entry as usize] += 1;
        }
        let mut total = 0;
        for end in &mut ends {
            total += *end;
            *end = total;
        }
        // Filled back to front so that each list comes out in increasing order.
        let mut next = ends.clone();
        let mut entries = vec![0; total];
        for from in (0..self.len()).rev() {
            for &to in self[from].iter().rev() {
                next[to as usize] -= 1;
                entries[next[to as usize]] = from as TaskIndex;
            }
        }
        Self { ends, entries }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// No lists at all (not: every list empty).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl std::ops::Index<usize> for IndexLists {
    type Output = [TaskIndex];

    fn index(&self, list: usize) -> &[TaskIndex] {
        let start = match list {
            0 => 0,
            _ => self.ends[list - 1],
        };
        &self.entries[start..self.ends[list]]
    }
}

/// For each task, the tasks whose outputs its templated fields read, and
/// those its expressions (`run_if`, `map_over`) read: those they name, or
/// every task upstream of it when one picks a task by a computed name.
fn template_reads(tasks: &[ResolvedTask]) -> (IndexLists, IndexLists) {
    let by_id: HashMap<&str, TaskIndex> = tasks
        .iter()
        .enumerate()
        .map(|(index, task)| (task.id.as_str(), index as TaskIndex))
        .collect();
    let reads = |task: &ResolvedTask, refs: Vec<template::TemplateRefs>| {
        let mut reads = Vec::new();
        let mut any = false;
        for refs in refs {
            any |= refs.reads_any_task;
            reads.extend(
                refs.task_outputs
                    .iter()
                    .filter_map(|id| by_id.get(id.as_str()).copied()),
            );
        }
        if any {
            reads = ancestors(tasks, task);
        }
        reads.sort_unstable();
        reads.dedup();
        reads
    };
    let mut field_reads = IndexLists::default();
    let mut expression_reads = IndexLists::default();
    for task in tasks {
        let expressions = task
            .run_if
            .iter()
            .chain(task.map_over.as_ref().map(|map| &map.expression))
            .filter_map(|expression| template::check_expression(expression).ok())
            .collect();
        let fields = if task.templated {
            templated_fields(task)
                .into_iter()
                .filter_map(|(_, source)| template::check(source).ok())
                .collect()
        } else {
            Vec::new()
        };
        field_reads.push(reads(task, fields));
        expression_reads.push(reads(task, expressions));
    }
    field_reads.shrink_to_fit();
    expression_reads.shrink_to_fit();
    (field_reads, expression_reads)
}

/// Every task upstream of `task`, directly or not.
fn ancestors(tasks: &[ResolvedTask], task: &ResolvedTask) -> Vec<TaskIndex> {
    let mut seen = vec![false; tasks.len()];
    let mut stack: Vec<usize> = task.depends_on.clone();
    let mut found = Vec::new();
    while let Some(index) = stack.pop() {
        if std::mem::replace(&mut seen[index], true) {
            continue;
        }
        found.push(index as TaskIndex);
        stack.extend(tasks[index].depends_on.iter().copied());
    }
    found
}

/// The fields of a task that templates may appear in, with their paths as
/// errors name them.
pub fn templated_fields(task: &ResolvedTask) -> Vec<(String, &str)> {
    let mut fields = Vec::new();
    match &task.kind {
        TaskKind::Command(command) => {
            for (position, arg) in command.argv.iter().enumerate() {
                fields.push((format!("command[{position}]"), arg.as_str()));
            }
            for (name, value) in &command.env {
                fields.push((format!("env.{name}"), value.as_str()));
            }
            if let Some(cwd) = &command.cwd {
                fields.push(("cwd".to_string(), cwd.as_str()));
            }
        }
        TaskKind::Sensor(sensor) => match &sensor.condition {
            SensorCondition::File { path } => {
                fields.push(("sensor.file".to_string(), path.as_str()))
            }
            SensorCondition::Http { url, .. } => {
                fields.push(("sensor.http.url".to_string(), url.as_str()))
            }
            _ => {}
        },
        TaskKind::Noop | TaskKind::Custom(_) => {}
    }
    fields
}

pub type PlanRef = Arc<DagPlan>;

/// Plans by DAG version, shared by the scheduler and the API handlers.
/// The latest version of each DAG registered here is held, and so are the
/// most recently read plans (a follower serving `GetRun` of the same run
/// again must not parse its DAG again), up to [`RECENT_TASKS`] tasks in all;
/// other versions are held weakly, as long as a run or a caller uses them.
#[derive(Default)]
pub struct PlanCache {
    plans: Mutex<HashMap<(DagId, u32), std::sync::Weak<DagPlan>>>,
    latest: Mutex<HashMap<DagId, PlanRef>>,
    recent: Mutex<std::collections::VecDeque<PlanRef>>,
}

/// Tasks the recently read plans may hold in all.
pub const RECENT_TASKS: usize = 250_000;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("version {version} of dag `{dag_id}` not found")]
    MissingVersion { dag_id: DagId, version: u32 },
    #[error("stored spec of dag `{dag_id}` version {version} no longer validates: {reason}")]
    InvalidStoredSpec {
        dag_id: DagId,
        version: u32,
        reason: String,
    },
}

impl From<PlanError> for ApiError {
    fn from(error: PlanError) -> Self {
        match error {
            PlanError::MissingVersion { .. } => ApiError::FailedPrecondition(error.to_string()),
            // Unreachable store: retryable, as for any other read.
            PlanError::Store(StoreError::Unavailable(message)) => {
                ApiError::Unavailable(format!("store unavailable: {message}"))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl PlanCache {
    /// Keeps `plan` among the recently read ones, dropping the oldest beyond
    /// the task budget.
    fn touch(&self, plan: &PlanRef) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        recent.retain(|held| !Arc::ptr_eq(held, plan));
        recent.push_front(Arc::clone(plan));
        let mut tasks = 0;
        let mut keep = 0;
        for held in recent.iter() {
            if keep > 0 && tasks + held.len() > RECENT_TASKS {
                break;
            }
            tasks += held.len();
            keep += 1;
        }
        recent.truncate(keep);
    }

    fn cached(&self, dag_id: &DagId, version: u32) -> Option<PlanRef> {
        let plans = self
            .plans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        plans
            .get(&(dag_id.clone(), version))
            .and_then(std::sync::Weak::upgrade)
    }

    /// Remembers the plan of a newly registered latest version.
    pub fn set_latest(&self, plan: PlanRef) {
        self.insert(&plan);
        let mut latest = self
            .latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        latest.insert(plan.dag_id.clone(), plan);
    }

    /// Stops holding a deleted DAG's latest plan.
    pub fn forget_latest(&self, dag_id: &DagId) {
        let mut latest = self
            .latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        latest.remove(dag_id);
    }

    fn insert(&self, plan: &PlanRef) {
        let mut plans = self
            .plans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        plans.retain(|_, weak| weak.strong_count() > 0);
        plans.insert((plan.dag_id.clone(), plan.version), Arc::downgrade(plan));
    }

    /// The plan of a DAG version, compiled from the store when no one holds
    /// it.
    pub async fn get(
        &self,
        store: &dyn Store,
        dag_id: &DagId,
        version: u32,
    ) -> Result<PlanRef, PlanError> {
        if let Some(plan) = self.cached(dag_id, version) {
            self.touch(&plan);
            return Ok(plan);
        }
        let record: DagVersionRecord = get_record(store, &keys::dag_version(dag_id, version))
            .await?
            .ok_or_else(|| PlanError::MissingVersion {
                dag_id: dag_id.clone(),
                version,
            })?;
        let dag_id_owned = dag_id.clone();
        let plan = tokio::task::spawn_blocking(move || {
            spec::parse_dag(&record.spec_json, SpecFormat::Json, &SpecLimits::UNLIMITED)
                .map(|dag| DagPlan::compile(version, dag))
                .map_err(|errors| PlanError::InvalidStoredSpec {
                    dag_id: dag_id_owned,
                    version,
                    reason: errors.to_string(),
                })
        })
        .await
        .map_err(|error| {
            PlanError::Store(StoreError::Io(format!("plan task failed: {error}")))
        })??;
        let plan = Arc::new(plan);
        self.insert(&plan);
        self.touch(&plan);
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{Batch, Op};

    async fn store_with_version(
        dir: &std::path::Path,
        dag_id: &DagId,
        tasks: usize,
    ) -> EmbeddedStore {
        let store = EmbeddedStore::open(&dir.join("plans.redb"), 4 << 20).unwrap();
        let spec = serde_json::json!({
            "id": dag_id.as_str(),
            "tasks": (0..tasks).map(|i| serde_json::json!({"id": format!("t{i}"), "kind": "noop"})).collect::<Vec<_>>(),
        });
        let record = DagVersionRecord {
            dag_id: dag_id.to_string(),
            version: 1,
            spec_json: spec.to_string(),
            ..DagVersionRecord::default()
        };
        store
            .commit(Batch {
                ops: vec![Op::put(
                    keys::dag_version(dag_id, 1),
                    record.encode_to_vec(),
                )],
                conditionals: vec![],
            })
            .await
            .unwrap();
        store
    }

    #[test]
    fn a_plan_lists_each_tasks_upstream_and_downstream_in_file_order() {
        // a → c, b → c, a → d, c → e, d → e; f stands alone.
        let spec = serde_json::json!({
            "id": "edges",
            "tasks": [
                {"id": "a", "kind": "noop"},
                {"id": "b", "kind": "noop"},
                {"id": "c", "kind": "noop", "depends_on": ["b", "a"]},
                {"id": "d", "kind": "noop", "depends_on": ["a"]},
                {"id": "e", "kind": "noop", "depends_on": ["d", "c"]},
                {"id": "f", "kind": "noop"},
            ],
        });
        let dag =
            spec::parse_dag(&spec.to_string(), SpecFormat::Json, &SpecLimits::default()).unwrap();
        let plan = DagPlan::compile(1, dag);
        let lists = |lists: &IndexLists| {
            (0..lists.len())
                .map(|i| lists[i].to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lists(&plan.upstream),
            vec![vec![], vec![], vec![1, 0], vec![0], vec![3, 2], vec![]],
            "as written"
        );
        assert_eq!(
            lists(&plan.downstream),
            vec![vec![2, 3], vec![2], vec![4], vec![4], vec![], vec![]],
            "in file order"
        );
        assert_eq!(plan.starters, vec![0, 1, 5]);
        assert_eq!(plan.downstream_closure(0), vec![0, 2, 3, 4]);
        assert_eq!(plan.upstream_closure(4), vec![0, 1, 2, 3]);
        assert!(plan.template_reads[4].is_empty() && plan.expression_reads[4].is_empty());
    }

    #[test]
    fn index_lists_keep_empty_lists_and_their_order() {
        let lists = IndexLists::from_lists([vec![], vec![7, 3], vec![], vec![0]]);
        assert_eq!(lists.len(), 4);
        assert!(lists[0].is_empty() && lists[2].is_empty());
        assert_eq!(&lists[1], &[7, 3]);
        assert_eq!(&lists[3], &[0]);
        assert!(IndexLists::from_lists(Vec::<Vec<TaskIndex>>::new()).is_empty());
    }

    #[tokio::test]
    async fn a_plan_read_once_is_not_parsed_again_while_recent() {
        let dir = tempfile::tempdir().unwrap();
        let dag_id = DagId::new("d").unwrap();
        let store = store_with_version(dir.path(), &dag_id, 3).await;
        let cache = PlanCache::default();
        let first = cache.get(&store, &dag_id, 1).await.unwrap();
        let address = Arc::as_ptr(&first);
        drop(first);
        let second = cache.get(&store, &dag_id, 1).await.unwrap();
        assert_eq!(
            Arc::as_ptr(&second),
            address,
            "served from the cache, not parsed again"
        );
        assert_eq!(second.len(), 3);
    }

    #[test]
    fn recent_plans_stay_within_the_task_budget() {
        let cache = PlanCache::default();
        let plan = |id: &str, tasks: usize| {
            let spec = serde_json::json!({
                "id": id,
                "tasks": (0..tasks).map(|i| serde_json::json!({"id": format!("t{i}"), "kind": "noop"})).collect::<Vec<_>>(),
            });
            let dag = spec::parse_dag(&spec.to_string(), SpecFormat::Json, &SpecLimits::UNLIMITED)
                .unwrap();
            Arc::new(DagPlan::compile(1, dag))
        };
        let big = plan("big", RECENT_TASKS / 2 + 1);
        cache.touch(&big);
        cache.touch(&plan("small", 10));
        cache.touch(&plan("other", RECENT_TASKS / 2));
        let recent = cache.recent.lock().unwrap();
        let ids: Vec<&str> = recent.iter().map(|plan| plan.dag_id.as_str()).collect();
        assert_eq!(
            ids,
            ["other", "small"],
            "the oldest plan beyond the budget is let go"
        );
    }
}
