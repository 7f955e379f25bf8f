//! The scheduler's view of workers: who is connected, what they serve, which
//! attempts each holds, and when each is declared lost.
//!
//! A worker's free slots (and free resources) are what it advertised minus
//! the attempts the controller has leased to it and not yet seen end, so
//! the count is right even before the worker's next heartbeat, and a worker
//! is never given more than it offers. An entry outlives its stream:
//! a worker that reconnects within the lost timeout keeps its attempts.
//!
//! Workers with free slots are indexed per queue by how many they have, so
//! finding the worker for a ready task costs O(log workers) for a task with
//! no extra constraints, not a scan of every worker. Every mutable access
//! to an entry marks it dirty, and the index is brought up to date before it
//! is read, so no code path can forget to update it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use baton_common::ids::{AttemptId, HandlerName, QueueName};
use baton_common::spec::Resources;
use tokio::time::Instant;

use super::WorkerSender;

/// One live stream of a worker.
pub struct Connection {
    pub conn_id: u64,
    pub sender: WorkerSender,
}

pub struct WorkerEntry {
    pub id: Arc<str>,
    pub conn: Option<Connection>,
    pub hostname: String,
    pub version: String,
    pub labels: std::collections::HashMap<String, String>,
    pub queues: Vec<QueueName>,
    pub slots: u32,
    /// What the worker offers to tasks that declare resources.
    pub resources: Resources,
    /// Custom task kinds the worker serves.
    pub handlers: Vec<HandlerName>,
    /// Whether it runs `command` tasks (SDK workers do not).
    pub runs_commands: bool,
    /// Whether it pokes `sensor` tasks (SDK workers do not).
    pub runs_sensors: bool,
    /// Attempts leased to this worker whose end the worker has not
    /// reported, with the resources each holds.
    pub leased: HashMap<AttemptId, Resources>,
    /// Sum of the resources of `leased`.
    pub used: Resources,
    /// The worker is declared lost when this passes without a message.
    pub lost_at: Instant,
    pub draining: bool,
}

impl WorkerEntry {
    pub fn free_slots(&self) -> u32 {
        if self.conn.is_none() || self.draining {
            return 0;
        }
        self.slots.saturating_sub(self.leased.len() as u32)
    }

    pub fn free_resources(&self) -> Resources {
        Resources {
            cpu_millis: self
                .resources
                .cpu_millis
                .saturating_sub(self.used.cpu_millis),
            memory_bytes: self
                .resources
                .memory_bytes
                .saturating_sub(self.used.memory_bytes),
        }
    }

    /// Records an attempt leased to the worker.
    pub fn hold(&mut self, attempt_id: AttemptId, resources: Resources) {
        if self.leased.insert(attempt_id, resources).is_none() {
            self.used.cpu_millis += resources.cpu_millis;
            self.used.memory_bytes += resources.memory_bytes;
        }
    }

    /// Forgets an attempt the worker no longer runs; false when it did not
    /// hold it.
    pub fn release(&mut self, attempt_id: &AttemptId) -> bool {
        match self.leased.remove(attempt_id) {
            Some(resources) => {
                self.used.cpu_millis = self.used.cpu_millis.saturating_sub(resources.cpu_millis);
                self.used.memory_bytes = self
                    .used
                    .memory_bytes
                    .saturating_sub(resources.memory_bytes);
                true
            }
            None => false,
        }
    }

    pub fn serves(&self, queue: &QueueName) -> bool {
        self.queues.iter().any(|served| served == queue)
    }

    pub fn sender(&self) -> Option<&WorkerSender> {
        self.conn.as_ref().map(|conn| &conn.sender)
    }
}

#[derive(Default)]
pub struct Workers {
    by_id: HashMap<Arc<str>, WorkerEntry>,
    by_conn: HashMap<u64, Arc<str>>,
    /// Per queue: workers serving it that have free slots, by free slots.
    free_index: HashMap<QueueName, BTreeSet<(u32, Arc<str>)>>,
    /// What `free_index` holds for each worker: its free slots and queues.
    indexed: HashMap<Arc<str>, (u32, Vec<QueueName>)>,
    /// Workers changed since the index was last brought up to date.
    dirty: HashSet<Arc<str>>,
}

impl Workers {
    pub fn get(&self, id: &str) -> Option<&WorkerEntry> {
        self.by_id.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut WorkerEntry> {
        let entry = self.by_id.get_mut(id)?;
        self.dirty.insert(Arc::clone(&entry.id));
        Some(entry)
    }

    /// The worker whose current stream is `conn_id`.
    pub fn by_conn_mut(&mut self, conn_id: u64) -> Option<&mut WorkerEntry> {
        let id = self.by_conn.get(&conn_id)?;
        let entry = self.by_id.get_mut(id)?;
        if entry
            .conn
            .as_ref()
            .is_none_or(|conn| conn.conn_id != conn_id)
        {
            return None;
        }
        self.dirty.insert(Arc::clone(&entry.id));
        Some(entry)
    }

    /// Inserts or returns the entry for `id` (created disconnected).
    pub fn entry(&mut self, id: &str, lost_at: Instant) -> &mut WorkerEntry {
        if !self.by_id.contains_key(id) {
            let id: Arc<str> = Arc::from(id);
            self.by_id.insert(
                Arc::clone(&id),
                WorkerEntry {
                    id,
                    conn: None,
                    hostname: String::new(),
                    version: String::new(),
                    labels: std::collections::HashMap::new(),
                    queues: Vec::new(),
                    slots: 0,
                    resources: Resources::default(),
                    handlers: Vec::new(),
                    runs_commands: false,
                    runs_sensors: false,
                    leased: HashMap::new(),
                    used: Resources::default(),
                    lost_at,
                    draining: false,
                },
            );
        }
        let entry = self.by_id.get_mut(id).expect("inserted above");
        self.dirty.insert(Arc::clone(&entry.id));
        entry
    }

    /// Attaches a new stream to a worker, replacing (and so ending) the
    /// previous one.
    pub fn attach(&mut self, id: &str, conn: Connection) {
        let conn_id = conn.conn_id;
        if let Some(entry) = self.by_id.get_mut(id) {
            self.dirty.insert(Arc::clone(&entry.id));
            if let Some(old) = entry.conn.replace(conn) {
                self.by_conn.remove(&old.conn_id);
            }
            self.by_conn.insert(conn_id, Arc::clone(&entry.id));
        }
    }

    /// Forgets a stream that ended; the worker entry stays until it is
    /// declared lost or reconnects.
    pub fn detach(&mut self, conn_id: u64) -> Option<Arc<str>> {
        let id = self.by_conn.remove(&conn_id)?;
        let entry = self.by_id.get_mut(&id)?;
        self.dirty.insert(Arc::clone(&id));
        if entry
            .conn
            .as_ref()
            .is_some_and(|conn| conn.conn_id == conn_id)
        {
            entry.conn = None;
        }
        Some(id)
    }

    pub fn remove(&mut self, id: &str) -> Option<WorkerEntry> {
        let entry = self.by_id.remove(id)?;
        if let Some(conn) = &entry.conn {
            self.by_conn.remove(&conn.conn_id);
        }
        self.unindex(&entry.id);
        self.dirty.remove(&entry.id);
        Some(entry)
    }

    fn unindex(&mut self, id: &Arc<str>) {
        if let Some((free, queues)) = self.indexed.remove(id) {
            for queue in queues {
                if let Some(set) = self.free_index.get_mut(&queue) {
                    set.remove(&(free, Arc::clone(id)));
                    if set.is_empty() {
                        self.free_index.remove(&queue);
                    }
                }
            }
        }
    }

    /// Brings the free-slot index up to date with the entries changed since.
    fn reindex(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            self.unindex(&id);
            let Some(entry) = self.by_id.get(&id) else {
                continue;
            };
            let free = entry.free_slots();
            if free == 0 {
                continue;
            }
            for queue in &entry.queues {
                self.free_index
                    .entry(queue.clone())
                    .or_default()
                    .insert((free, Arc::clone(&id)));
            }
            self.indexed.insert(id, (free, entry.queues.clone()));
        }
    }

    /// Workers serving `queue` with free slots, most free first.
    pub fn with_free_slots(&mut self, queue: &QueueName) -> impl Iterator<Item = &WorkerEntry> {
        self.reindex();
        self.free_index
            .get(queue)
            .into_iter()
            .flat_map(|set| set.iter().rev())
            .filter_map(|(_, id)| self.by_id.get(id))
    }

    /// Workers whose lost deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<Arc<str>> {
        self.by_id
            .values()
            .filter(|entry| entry.lost_at <= now)
            .map(|entry| Arc::clone(&entry.id))
            .collect()
    }

    pub fn has_free_slots(&mut self) -> bool {
        self.reindex();
        !self.indexed.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.by_id.values()
    }

    pub fn drain_all(&mut self) -> Vec<WorkerEntry> {
        self.by_conn.clear();
        self.free_index.clear();
        self.indexed.clear();
        self.dirty.clear();
        self.by_id.drain().map(|(_, entry)| entry).collect()
    }
}
