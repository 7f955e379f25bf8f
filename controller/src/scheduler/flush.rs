//! Group commit: what the scheduler has changed since the last batch, how it
//! becomes one store batch, and the effects that wait for that batch.
//!
//! Task and run records are not written when they change. A change marks the
//! task (and its run) dirty; when the previous batch has returned, the
//! scheduler cuts: every dirty record is encoded once, with its latest
//! state, into the next batch, together with the explicit operations
//! (attempt records, index keys) and the effects collected since the last
//! cut. So a task that is leased and started within one batch window is
//! written once, and effects never run before the state they reveal is
//! durable.

use std::collections::HashMap;

use baton_common::ids::{DagId, RunId};
use baton_common::pb::api::{ControllerMessage, WatchRunResponse};
use baton_common::time::Micros;
use baton_common::traces::EncodedSpans;
use tokio::sync::oneshot;

use super::WatchSender;
use super::WorkerSender;
use crate::logs::{LogCommand, LogKey};
use crate::store::{Batch, BatchOutcome, Conditional, Op, StoreRef, StoreResult};

/// Something to do once the batch it belongs to is durable.
pub enum Effect {
    Send {
        to: WorkerSender,
        message: ControllerMessage,
    },
    Reply(Box<dyn FnOnce() + Send>),
    Watch {
        to: WatchSender,
        event: WatchRunResponse,
    },
    /// Start sending this run's changes to a watcher (after its snapshot).
    AddWatcher {
        run_id: RunId,
        to: WatchSender,
    },
    OpenLog(LogKey),
    Log(LogCommand),
    /// The run ended in this batch: drop it from memory unless it was
    /// reopened meanwhile.
    DropRun(RunId),
    /// Tell these notifiers (`crate::notify`): submitted without waiting.
    Notify {
        targets: Vec<baton_common::spec::Notifier>,
        notification: Box<crate::notify::Notification>,
    },
}

/// What a conditional write claims: at most one run per idempotency key or
/// per data interval of a DAG, at most one event per event key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CreateKey {
    Idempotency(DagId, String),
    /// A DAG and the start of a data interval (microseconds).
    Interval(DagId, Micros),
    /// An event name and its idempotency key.
    Event(String, String),
}

impl CreateKey {
    pub fn dag_id(&self) -> Option<&DagId> {
        match self {
            CreateKey::Idempotency(dag_id, _) | CreateKey::Interval(dag_id, _) => Some(dag_id),
            CreateKey::Event(..) => None,
        }
    }
}

/// Everything collected since the last cut.
#[derive(Default)]
pub struct Pending {
    pub ops: Vec<Op>,
    pub conditionals: Vec<(Conditional, CreateKey)>,
    pub effects: Vec<Effect>,
    /// The spans of attempts and runs that ended (only when traces are
    /// on), exported once what they describe is stored.
    pub spans: EncodedSpans,
    pub dirty_runs: Vec<RunId>,
}

impl Pending {
    pub fn has_writes(&self) -> bool {
        !self.ops.is_empty() || !self.conditionals.is_empty() || !self.dirty_runs.is_empty()
    }
}

/// A batch on its way to the store.
pub struct InFlight {
    pub done: oneshot::Receiver<StoreResult<BatchOutcome>>,
    pub effects: Vec<Effect>,
    pub spans: EncodedSpans,
    pub creates: Vec<CreateKey>,
    pub ops: usize,
}

/// Keeps the last operation on each key: a key may appear only once in a
/// batch, and the last write is the state to keep. An operation on a key
/// that a later `DeletePrefix` covers is dropped (the delete supersedes it).
/// The scheduler never puts a key after deleting its prefix in the same
/// batch (etcd refuses a transaction with such an overlap); debug builds
/// check that.
pub fn dedupe_ops(ops: Vec<Op>) -> Vec<Op> {
    if ops.len() < 2 {
        return ops;
    }
    let ops = drop_superseded_by_prefixes(ops);
    let mut last: HashMap<Vec<u8>, usize> = HashMap::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        last.insert(op.target().to_vec(), index);
    }
    if last.len() == ops.len() {
        return ops;
    }
    ops.into_iter()
        .enumerate()
        .filter(|(index, op)| last.get(op.target()) == Some(index))
        .map(|(_, op)| op)
        .collect()
}

/// Drops operations whose key a later `DeletePrefix` of the batch covers.
fn drop_superseded_by_prefixes(ops: Vec<Op>) -> Vec<Op> {
    let prefixes: Vec<(usize, Vec<u8>)> = ops
        .iter()
        .enumerate()
        .filter_map(|(index, op)| match op {
            Op::DeletePrefix { prefix } => Some((index, prefix.clone())),
            _ => None,
        })
        .collect();
    if prefixes.is_empty() {
        return ops;
    }
    ops.into_iter()
        .enumerate()
        .filter(|(index, op)| {
            if matches!(op, Op::DeletePrefix { .. }) {
                return true;
            }
            let key = op.target();
            let covered_later = prefixes
                .iter()
                .any(|(at, prefix)| at > index && key.starts_with(prefix));
            let covered_earlier = prefixes
                .iter()
                .any(|(at, prefix)| at < index && key.starts_with(prefix));
            debug_assert!(
                !covered_earlier || covered_later,
                "key {:?} written after a prefix delete that covers it in one batch",
                String::from_utf8_lossy(key)
            );
            !covered_later
        })
        .map(|(_, op)| op)
        .collect()
}

/// Commits `ops` and `conditionals` in batches of at most the store's
/// operation limit, in order, and reports the combined outcome. The caller
/// acts on none of it until this returns.
pub fn spawn_commit(
    store: StoreRef,
    ops: Vec<Op>,
    conditionals: Vec<Conditional>,
) -> oneshot::Receiver<StoreResult<BatchOutcome>> {
    let (done, receiver) = oneshot::channel();
    tokio::spawn(async move {
        let result = commit_in_batches(store, ops, conditionals).await;
        let _ = done.send(result);
    });
    receiver
}

async fn commit_in_batches(
    store: StoreRef,
    ops: Vec<Op>,
    conditionals: Vec<Conditional>,
) -> StoreResult<BatchOutcome> {
    let max_ops = store.max_batch_ops().max(1);
    let max_bytes = store.max_batch_bytes().max(1);
    let conditional_ops = |c: &Conditional| 1 + c.ops.len() + c.preconditions.len();
    let conditional_bytes = |c: &Conditional| c.ops.iter().map(Op::size).sum::<usize>();
    let total_ops = ops.len() + conditionals.iter().map(conditional_ops).sum::<usize>();
    let total_bytes = ops.iter().map(Op::size).sum::<usize>()
        + conditionals.iter().map(conditional_bytes).sum::<usize>();
    if total_ops <= max_ops && total_bytes <= max_bytes {
        return timed_commit(&store, Batch { ops, conditionals }).await;
    }
    // Consecutive batches, in order, each within both bounds (an operation
    // larger than the byte bound goes alone). Conditionals (run creations)
    // first: a plain operation that follows from one (a schedule's position
    // after its run) must never be stored without it, should the
    // controller stop between two batches.
    let mut batch = Batch::default();
    let (mut batch_ops, mut batch_bytes) = (0, 0);
    let mut applied = Vec::with_capacity(conditionals.len());
    for conditional in conditionals {
        let (ops, bytes) = (
            conditional_ops(&conditional),
            conditional_bytes(&conditional),
        );
        if batch_ops > 0 && (batch_ops + ops > max_ops || batch_bytes + bytes > max_bytes) {
            applied.extend(
                timed_commit(&store, std::mem::take(&mut batch))
                    .await?
                    .applied,
            );
            (batch_ops, batch_bytes) = (0, 0);
        }
        batch_ops += ops;
        batch_bytes += bytes;
        batch.conditionals.push(conditional);
    }
    for op in ops {
        let size = op.size();
        if batch_ops > 0 && (batch_ops + 1 > max_ops || batch_bytes + size > max_bytes) {
            applied.extend(
                timed_commit(&store, std::mem::take(&mut batch))
                    .await?
                    .applied,
            );
            (batch_ops, batch_bytes) = (0, 0);
        }
        batch_ops += 1;
        batch_bytes += size;
        batch.ops.push(op);
    }
    if !batch.is_empty() {
        applied.extend(timed_commit(&store, batch).await?.applied);
    }
    Ok(BatchOutcome { applied })
}

/// One store transaction, its time and size counted when metrics are on.
async fn timed_commit(store: &StoreRef, batch: Batch) -> StoreResult<BatchOutcome> {
    let Some(metrics) = crate::metrics::metrics() else {
        return store.commit(batch).await;
    };
    let operations = batch.op_count();
    let started = std::time::Instant::now();
    let outcome = store.commit(batch).await;
    if outcome.is_ok() {
        metrics.observe_commit(started.elapsed(), operations);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{KeyValue, Precondition, Scan, Store};

    /// The embedded store with small batch bounds, counting its commits.
    struct SmallBatches {
        inner: EmbeddedStore,
        commits: AtomicUsize,
    }

    #[async_trait]
    impl Store for SmallBatches {
        async fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
            self.inner.get(key).await
        }
        async fn scan(&self, scan: Scan) -> StoreResult<Vec<KeyValue>> {
            self.inner.scan(scan).await
        }
        async fn commit(&self, batch: Batch) -> StoreResult<BatchOutcome> {
            assert!(
                batch.op_count() <= self.max_batch_ops(),
                "batch over the op bound"
            );
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.inner.commit(batch).await
        }
        fn max_batch_ops(&self) -> usize {
            3
        }
        fn max_batch_bytes(&self) -> usize {
            64
        }
        fn kind(&self) -> &'static str {
            "small"
        }
    }

    #[tokio::test]
    async fn large_flushes_are_split_within_the_bounds_and_keep_conditional_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SmallBatches {
            inner: EmbeddedStore::open(&dir.path().join("s.redb"), 4 << 20).unwrap(),
            commits: AtomicUsize::new(0),
        });
        store
            .commit(Batch {
                ops: vec![Op::put(b"taken".to_vec(), vec![])],
                conditionals: vec![],
            })
            .await
            .unwrap();
        let ops: Vec<Op> = (0..7)
            .map(|i| Op::put(format!("k{i}").into_bytes(), vec![b'v'; 10]))
            .collect();
        let big = Op::put(b"big".to_vec(), vec![b'x'; 200]);
        let conditional = |key: &str| Conditional {
            preconditions: vec![Precondition::DoesNotExist(key.as_bytes().to_vec())],
            ops: vec![Op::put(format!("{key}-made").into_bytes(), vec![])],
        };
        let mut all = ops;
        all.push(big);
        let outcome = spawn_commit(
            store.clone(),
            all,
            vec![conditional("taken"), conditional("free")],
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            outcome.applied,
            [false, true],
            "outcomes in order across batches"
        );
        assert!(
            store.commits.load(Ordering::Relaxed) >= 5,
            "split into several batches"
        );
        for i in 0..7 {
            assert!(
                store
                    .get(format!("k{i}").as_bytes())
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        assert_eq!(
            store.get(b"big").await.unwrap().map(|v| v.len()),
            Some(200),
            "an op over the byte bound goes alone"
        );
        assert!(store.get(b"free-made").await.unwrap().is_some());
        assert!(store.get(b"taken-made").await.unwrap().is_none());
    }

    #[test]
    fn a_later_prefix_delete_supersedes_the_writes_it_covers() {
        let ops = vec![
            Op::put(b"queue/a/1".to_vec(), b"1".to_vec()),
            Op::put(b"other".to_vec(), b"1".to_vec()),
            Op::delete_prefix(b"queue/a/".to_vec()),
        ];
        assert_eq!(
            dedupe_ops(ops),
            vec![
                Op::put(b"other".to_vec(), b"1".to_vec()),
                Op::delete_prefix(b"queue/a/".to_vec())
            ]
        );
    }

    #[test]
    fn dedupe_keeps_the_last_operation_per_key() {
        let ops = vec![
            Op::put(b"a".to_vec(), b"1".to_vec()),
            Op::put(b"b".to_vec(), b"1".to_vec()),
            Op::delete(b"a".to_vec()),
            Op::put(b"c".to_vec(), b"1".to_vec()),
        ];
        assert_eq!(
            dedupe_ops(ops),
            vec![
                Op::put(b"b".to_vec(), b"1".to_vec()),
                Op::delete(b"a".to_vec()),
                Op::put(b"c".to_vec(), b"1".to_vec())
            ]
        );
    }
}
