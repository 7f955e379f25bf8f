//! Where a ready task may run: its [`Route`] (queue, worker labels, custom
//! handler, resources), the ready heaps keyed by route, and the choice of
//! a worker for a route.
//!
//! Tasks with the same route wait in one heap, highest priority first, so
//! a task no connected worker can take (a label nobody has, resources no
//! worker offers) never blocks tasks of other routes behind it. Routes are
//! interned per plan, with their hash computed once, so queueing a ready
//! task costs one hash lookup however many labels it needs.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use baton_common::ids::{HandlerName, QueueName, RunId};
use baton_common::spec::{ResolvedTask, Resources, TaskKind};

use super::workers::{WorkerEntry, Workers};
use crate::plan::TaskIndex;

/// A ready task waiting for a worker: highest priority first, then oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyItem {
    pub priority: i32,
    pub seq: u64,
    pub run_id: RunId,
    pub index: TaskIndex,
    /// When it became ready, in µs since the epoch (for the oldest-ready age).
    pub ready_at: i64,
}

impl Ord for ReadyItem {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ReadyItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a worker must offer to take a task.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    hash: u64,
    pub queue: QueueName,
    pub labels: BTreeMap<String, String>,
    pub handler: Option<HandlerName>,
    /// A `command` task: only workers that run processes take it.
    pub command: bool,
    /// A sensor a worker pokes (a file or an HTTP endpoint): only workers
    /// that run sensors take it.
    pub sensor: bool,
    pub resources: Resources,
}

impl Hash for Route {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Route {
    pub fn of(task: &ResolvedTask) -> Self {
        let handler = match &task.kind {
            TaskKind::Custom(custom) => Some(custom.handler.clone()),
            _ => None,
        };
        let command = matches!(task.kind, TaskKind::Command(_));
        let sensor =
            matches!(&task.kind, TaskKind::Sensor(sensor) if sensor.condition.runs_on_worker());
        let mut hasher = DefaultHasher::new();
        task.queue.hash(&mut hasher);
        task.labels.hash(&mut hasher);
        handler.hash(&mut hasher);
        command.hash(&mut hasher);
        sensor.hash(&mut hasher);
        task.resources.cpu_millis.hash(&mut hasher);
        task.resources.memory_bytes.hash(&mut hasher);
        Self {
            hash: hasher.finish(),
            queue: task.queue.clone(),
            labels: task.labels.clone(),
            handler,
            command,
            sensor,
            resources: task.resources,
        }
    }

    /// Whether `worker` could ever take tasks of this route (ignoring how
    /// busy it is now).
    pub fn matches(&self, worker: &WorkerEntry) -> bool {
        worker.serves(&self.queue)
            && (!self.command || worker.runs_commands)
            && (!self.sensor || worker.runs_sensors)
            && self
                .labels
                .iter()
                .all(|(key, value)| worker.labels.get(key) == Some(value))
            && self
                .handler
                .as_ref()
                .is_none_or(|handler| worker.handlers.iter().any(|served| served == handler))
    }

    /// Whether `worker` can take one more task of this route now.
    pub fn fits(&self, worker: &WorkerEntry) -> bool {
        worker.free_slots() > 0
            && self.matches(worker)
            && self.resources.fits_in(&worker.free_resources())
    }
}

/// One route per distinct task route of a plan, shared by its tasks.
pub fn intern_routes(tasks: &[ResolvedTask]) -> Vec<Arc<Route>> {
    let mut seen: HashMap<Arc<Route>, ()> = HashMap::new();
    tasks
        .iter()
        .map(|task| {
            let route = Route::of(task);
            match seen.get_key_value(&route) {
                Some((existing, ())) => Arc::clone(existing),
                None => {
                    let route = Arc::new(route);
                    seen.insert(Arc::clone(&route), ());
                    route
                }
            }
        })
        .collect()
}

/// Ready tasks by route.
#[derive(Default)]
pub struct ReadyQueues {
    heaps: HashMap<Arc<Route>, BinaryHeap<ReadyItem>>,
}

impl ReadyQueues {
    pub fn push(&mut self, route: &Arc<Route>, item: ReadyItem) {
        match self.heaps.get_mut(route) {
            Some(heap) => heap.push(item),
            None => {
                let mut heap = BinaryHeap::new();
                heap.push(item);
                self.heaps.insert(Arc::clone(route), heap);
            }
        }
    }

    /// Routes with waiting tasks.
    pub fn routes(&self) -> Vec<Arc<Route>> {
        self.heaps
            .iter()
            .filter(|(_, heap)| !heap.is_empty())
            .map(|(route, _)| Arc::clone(route))
            .collect()
    }

    pub fn peek(&self, route: &Route) -> Option<&ReadyItem> {
        self.heaps.get(route).and_then(BinaryHeap::peek)
    }

    /// Takes the best item of a route; forgets the route once it is empty,
    /// so routes of finished plans do not pile up.
    pub fn pop(&mut self, route: &Route) -> Option<ReadyItem> {
        let heap = self.heaps.get_mut(route)?;
        let item = heap.pop();
        if heap.is_empty() {
            self.heaps.remove(route);
        }
        item
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<Route>, &BinaryHeap<ReadyItem>)> {
        self.heaps.iter()
    }

    pub fn clear(&mut self) {
        self.heaps.clear();
    }
}

impl Workers {
    /// The worker that can take a task of `route` now with the most free
    /// slots: the first of the queue's workers with free slots (most free
    /// first) that fits, so O(log workers) when the route asks nothing
    /// beyond its queue.
    pub fn best_for(&mut self, route: &Route) -> Option<Arc<str>> {
        self.with_free_slots(&route.queue)
            .find(|entry| route.fits(entry))
            .map(|entry| Arc::clone(&entry.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_common::ids::AttemptId;
    use baton_common::spec::{SpecFormat, SpecLimits, parse_dag};
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use crate::scheduler::workers::Connection;

    fn route(task_yaml: &str) -> Route {
        let text = format!("id: d\ntasks:\n  - id: t\n    kind: noop\n{task_yaml}");
        let dag = parse_dag(&text, SpecFormat::Yaml, &SpecLimits::default()).expect("valid");
        Route::of(&dag.tasks[0])
    }

    fn connect(workers: &mut Workers, id: &str, slots: u32, queues: &[&str], cpu_millis: u64) {
        let (sender, _receiver) = mpsc::unbounded_channel();
        let entry = workers.entry(id, Instant::now());
        entry.slots = slots;
        entry.queues = queues.iter().map(|q| QueueName::new(*q).unwrap()).collect();
        entry.resources = Resources {
            cpu_millis,
            memory_bytes: 1 << 30,
        };
        entry.labels.insert("zone".into(), format!("{id}-zone"));
        entry.runs_commands = true;
        entry.runs_sensors = true;
        workers.attach(
            id,
            Connection {
                conn_id: id.len() as u64 + u64::from(slots) * 100,
                sender,
            },
        );
    }

    #[test]
    fn the_fitting_worker_with_the_most_free_slots_is_chosen() {
        let mut workers = Workers::default();
        connect(&mut workers, "a", 2, &["default"], 4000);
        connect(&mut workers, "b", 3, &["default", "gpu"], 1000);
        let plain = route("");
        assert_eq!(workers.best_for(&plain).as_deref(), Some("b"));
        // b takes two: a has more free slots now.
        for _ in 0..2 {
            workers
                .get_mut("b")
                .unwrap()
                .hold(AttemptId::generate(), Resources::default());
        }
        assert_eq!(workers.best_for(&plain).as_deref(), Some("a"));
        // Only b serves gpu; only a has the label; only a has 2 cores.
        assert_eq!(
            workers.best_for(&route("    queue: gpu\n")).as_deref(),
            Some("b")
        );
        assert_eq!(
            workers
                .best_for(&route("    labels: {zone: a-zone}\n"))
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            workers
                .best_for(&route("    resources: {cpu: 2}\n"))
                .as_deref(),
            Some("a")
        );
        assert_eq!(workers.best_for(&route("    resources: {cpu: 8}\n")), None);
        // A draining worker takes nothing; a removed one is gone.
        workers.get_mut("a").unwrap().draining = true;
        assert_eq!(workers.best_for(&plain).as_deref(), Some("b"));
        workers.remove("b");
        assert_eq!(workers.best_for(&plain), None);
        assert!(!workers.has_free_slots());
    }
}
