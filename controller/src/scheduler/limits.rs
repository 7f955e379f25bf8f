//! Concurrency limits on dispatch: pools (named global limits, stored under
//! `pools/`), a DAG's `max_active_tasks` and a task's `max_active`.
//!
//! An attempt takes a [`Hold`] when it is leased (or, after a failover,
//! when its run is recovered) and gives it back when its worker reports it
//! ended, the worker is lost, or the controller stops expecting it; so a
//! limit counts what may really be running, including an attempt being
//! killed. A ready task that a limit holds back waits here, parked under
//! that limit, and goes back to its ready queue when the limit frees: one
//! task per freed slot, so a release costs O(1) however many tasks wait.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use baton_common::ids::{AttemptId, DagId, PoolName, TaskId};
use baton_common::pb::records::PoolRecord;
use baton_common::spec::ResolvedTask;

use super::routing::ReadyItem;

/// A limit a ready task can wait on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Pool(PoolName),
    Dag(DagId),
    Task(DagId, TaskId),
}

/// What one attempt counts against.
#[derive(Debug)]
struct Hold {
    pool: Option<(PoolName, u32)>,
    dag: DagId,
    task: Option<(DagId, TaskId)>,
}

#[derive(Default)]
pub struct Limits {
    pub pools: BTreeMap<PoolName, PoolRecord>,
    pool_used: HashMap<PoolName, u32>,
    dag_active: HashMap<DagId, u32>,
    task_active: HashMap<(DagId, TaskId), u32>,
    holds: HashMap<AttemptId, Hold>,
    parked: HashMap<LimitKey, BinaryHeap<ReadyItem>>,
}

impl Limits {
    /// The limit that keeps a task of `dag_id` from starting now, if any.
    /// A pool that does not exist holds its tasks back until it is created.
    pub fn blocked_by(
        &self,
        dag_id: &DagId,
        task: &ResolvedTask,
        max_active_tasks: Option<u32>,
    ) -> Option<LimitKey> {
        if let Some(pool) = &task.pool {
            let fits = self.pools.get(pool).is_some_and(|record| {
                self.pool_used(pool).saturating_add(task.pool_slots) <= record.slots
            });
            if !fits {
                return Some(LimitKey::Pool(pool.clone()));
            }
        }
        if let Some(limit) = max_active_tasks
            && self.dag_active.get(dag_id).copied().unwrap_or(0) >= limit
        {
            return Some(LimitKey::Dag(dag_id.clone()));
        }
        if let Some(limit) = task.max_active {
            let key = (dag_id.clone(), task.id.clone());
            if self.task_active.get(&key).copied().unwrap_or(0) >= limit {
                return Some(LimitKey::Task(key.0, key.1));
            }
        }
        None
    }

    /// Counts a leased (or recovered) attempt against its limits.
    pub fn acquire(&mut self, attempt_id: AttemptId, dag_id: &DagId, task: &ResolvedTask) {
        if self.holds.contains_key(&attempt_id) {
            return;
        }
        let pool = task.pool.as_ref().map(|pool| {
            *self.pool_used.entry(pool.clone()).or_default() += task.pool_slots;
            (pool.clone(), task.pool_slots)
        });
        *self.dag_active.entry(dag_id.clone()).or_default() += 1;
        let task_key = task.max_active.map(|_| {
            let key = (dag_id.clone(), task.id.clone());
            *self.task_active.entry(key.clone()).or_default() += 1;
            key
        });
        self.holds.insert(
            attempt_id,
            Hold {
                pool,
                dag: dag_id.clone(),
                task: task_key,
            },
        );
    }

    /// Gives back what an attempt held; returns the limits that have room
    /// again and tasks waiting on them. Releasing twice is harmless.
    pub fn release(&mut self, attempt_id: &AttemptId) -> Vec<(LimitKey, u32)> {
        let Some(hold) = self.holds.remove(attempt_id) else {
            return Vec::new();
        };
        let mut freed = Vec::new();
        if let Some((pool, slots)) = hold.pool {
            if let Some(used) = self.pool_used.get_mut(&pool) {
                *used = used.saturating_sub(slots);
                if *used == 0 {
                    self.pool_used.remove(&pool);
                }
            }
            freed.push((LimitKey::Pool(pool), slots));
        }
        if let Some(active) = self.dag_active.get_mut(&hold.dag) {
            *active = active.saturating_sub(1);
            if *active == 0 {
                self.dag_active.remove(&hold.dag);
            }
        }
        freed.push((LimitKey::Dag(hold.dag), 1));
        if let Some(key) = hold.task {
            if let Some(active) = self.task_active.get_mut(&key) {
                *active = active.saturating_sub(1);
                if *active == 0 {
                    self.task_active.remove(&key);
                }
            }
            freed.push((LimitKey::Task(key.0, key.1), 1));
        }
        freed.retain(|(key, _)| self.parked.get(key).is_some_and(|heap| !heap.is_empty()));
        freed
    }

    pub fn pool_used(&self, pool: &PoolName) -> u32 {
        self.pool_used.get(pool).copied().unwrap_or(0)
    }

    pub fn park(&mut self, key: LimitKey, item: ReadyItem) {
        self.parked.entry(key).or_default().push(item);
    }

    /// Takes up to `count` of the best tasks waiting on `key` (at least one
    /// when any waits, so a task wider than the freed room is retried).
    pub fn unpark(&mut self, key: &LimitKey, count: u32) -> Vec<ReadyItem> {
        let Some(heap) = self.parked.get_mut(key) else {
            return Vec::new();
        };
        let mut items = Vec::new();
        for _ in 0..count.max(1) {
            match heap.pop() {
                Some(item) => items.push(item),
                None => break,
            }
        }
        if heap.is_empty() {
            self.parked.remove(key);
        }
        items
    }

    /// Everything waiting on `key`.
    pub fn unpark_all(&mut self, key: &LimitKey) -> Vec<ReadyItem> {
        self.parked
            .remove(key)
            .map(BinaryHeap::into_vec)
            .unwrap_or_default()
    }

    /// Every parked task, with the limit it waits on.
    pub fn parked(&self) -> impl Iterator<Item = (&LimitKey, &ReadyItem)> {
        self.parked
            .iter()
            .flat_map(|(key, heap)| heap.iter().map(move |item| (key, item)))
    }

    /// Forgets every count and parked task (not the pools): the scheduler
    /// starts over.
    pub fn clear(&mut self) {
        self.pool_used.clear();
        self.dag_active.clear();
        self.task_active.clear();
        self.holds.clear();
        self.parked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_common::spec::{SpecFormat, SpecLimits, parse_dag};

    fn task(yaml: &str) -> ResolvedTask {
        let dag = parse_dag(yaml, SpecFormat::Yaml, &SpecLimits::default()).expect("valid");
        dag.tasks.into_iter().next().expect("one task")
    }

    fn item(seq: u64) -> ReadyItem {
        ReadyItem {
            priority: 0,
            seq,
            run_id: baton_common::ids::RunId::generate(),
            index: 0,
            ready_at: 0,
        }
    }

    #[test]
    fn a_pool_admits_up_to_its_slots_and_frees_on_release() {
        let mut limits = Limits::default();
        let pool = PoolName::new("db").unwrap();
        limits.pools.insert(
            pool.clone(),
            PoolRecord {
                name: "db".into(),
                slots: 3,
                ..PoolRecord::default()
            },
        );
        let dag = DagId::new("d").unwrap();
        let wide =
            task("id: d\ntasks:\n  - id: t\n    kind: noop\n    pool: db\n    pool_slots: 2\n");
        let first = AttemptId::generate();
        assert_eq!(limits.blocked_by(&dag, &wide, None), None);
        limits.acquire(first, &dag, &wide);
        assert_eq!(limits.pool_used(&pool), 2);
        // 2 + 2 > 3.
        assert_eq!(
            limits.blocked_by(&dag, &wide, None),
            Some(LimitKey::Pool(pool.clone()))
        );
        limits.park(LimitKey::Pool(pool.clone()), item(1));
        let freed = limits.release(&first);
        assert_eq!(freed, vec![(LimitKey::Pool(pool.clone()), 2)]);
        assert_eq!(limits.pool_used(&pool), 0);
        assert_eq!(limits.unpark(&LimitKey::Pool(pool.clone()), 2).len(), 1);
        // Released twice: nothing more.
        assert!(limits.release(&first).is_empty());
    }

    #[test]
    fn dag_and_task_limits_count_across_runs() {
        let mut limits = Limits::default();
        let dag = DagId::new("d").unwrap();
        let capped = task("id: d\ntasks:\n  - id: t\n    kind: noop\n    max_active: 1\n");
        let attempt = AttemptId::generate();
        assert_eq!(limits.blocked_by(&dag, &capped, Some(5)), None);
        limits.acquire(attempt, &dag, &capped);
        assert_eq!(
            limits.blocked_by(&dag, &capped, Some(5)),
            Some(LimitKey::Task(dag.clone(), capped.id.clone()))
        );
        let other = task("id: d\ntasks:\n  - id: u\n    kind: noop\n");
        assert_eq!(limits.blocked_by(&dag, &other, Some(2)), None);
        assert_eq!(
            limits.blocked_by(&dag, &other, Some(1)),
            Some(LimitKey::Dag(dag.clone()))
        );
        limits.release(&attempt);
        assert_eq!(limits.blocked_by(&dag, &capped, Some(1)), None);
    }

    #[test]
    fn a_missing_pool_holds_its_tasks_back() {
        let limits = Limits::default();
        let dag = DagId::new("d").unwrap();
        let pooled = task("id: d\ntasks:\n  - id: t\n    kind: noop\n    pool: nowhere\n");
        assert!(matches!(
            limits.blocked_by(&dag, &pooled, None),
            Some(LimitKey::Pool(_))
        ));
    }
}
