//! [`WallTimers`]: the time-ordered queue of everything the scheduler must
//! do at a wall-clock instant (a schedule's next fire, an SLA deadline, a
//! time sensor), one entry per key.
//!
//! Only the earliest instant is waited on, so the cost of a wake-up is
//! O(log n) in the number of timers, never a scan of them. Inserting a key
//! that is already queued moves it: there are never two timers for one
//! key, so a handler cannot run twice for the same thing.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use baton_common::time::Micros;

#[derive(Debug)]
pub struct WallTimers<K> {
    by_time: BTreeSet<(Micros, K)>,
    by_key: HashMap<K, Micros>,
}

impl<K> Default for WallTimers<K> {
    fn default() -> Self {
        Self {
            by_time: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> WallTimers<K> {
    /// Queues `key` for `at`, replacing its earlier time if it had one.
    pub fn insert(&mut self, key: K, at: Micros) {
        if let Some(previous) = self.by_key.insert(key.clone(), at) {
            self.by_time.remove(&(previous, key.clone()));
        }
        self.by_time.insert((at, key));
    }

    pub fn remove(&mut self, key: &K) {
        if let Some(at) = self.by_key.remove(key) {
            self.by_time.remove(&(at, key.clone()));
        }
    }

    /// The earliest queued instant.
    pub fn earliest(&self) -> Option<Micros> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Takes every key due at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: Micros) -> Vec<K> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            let (_, key) = self.by_time.pop_first().expect("checked first");
            self.by_key.remove(&key);
            due.push(key);
        }
        due
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_come_out_in_time_order_once() {
        let mut timers = WallTimers::default();
        timers.insert("b", 20);
        timers.insert("a", 10);
        timers.insert("c", 30);
        // Moving a key replaces its time; it is not queued twice.
        timers.insert("c", 15);
        assert_eq!(timers.len(), 3);
        assert_eq!(timers.earliest(), Some(10));
        assert_eq!(timers.pop_due(9), Vec::<&str>::new());
        assert_eq!(timers.pop_due(20), vec!["a", "c", "b"]);
        assert!(timers.is_empty());
        timers.insert("d", 5);
        timers.remove(&"d");
        assert_eq!(timers.pop_due(100), Vec::<&str>::new());
        assert_eq!(timers.earliest(), None);
    }
}
