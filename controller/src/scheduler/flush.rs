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
}

/// Identifies a run creation that is conditional on an idempotency key.
pub type CreateKey = (DagId, String);

/// Everything collected since the last cut.
#[derive(Default)]
pub struct Pending {
    pub ops: Vec<Op>,
    pub conditionals: Vec<(Conditional, CreateKey)>,
    pub effects: Vec<Effect>,
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
    pub creates: Vec<CreateKey>,
    pub ops: usize,
}

/// Keeps the last operation on each key: a key may appear only once in a
/// batch, and the last write is the state to keep.
pub fn dedupe_ops(ops: Vec<Op>) -> Vec<Op> {
    if ops.len() < 2 {
        return ops;
    }
    let mut last: HashMap<Vec<u8>, usize> = HashMap::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        let key = match op {
            Op::Put { key, .. } | Op::Delete { key } => key,
            Op::DeletePrefix { prefix } => prefix,
        };
        last.insert(key.clone(), index);
    }
    if last.len() == ops.len() {
        return ops;
    }
    ops.into_iter()
        .enumerate()
        .filter(|(index, op)| {
            let key = match op {
                Op::Put { key, .. } | Op::Delete { key } => key,
                Op::DeletePrefix { prefix } => prefix,
            };
            last.get(key) == Some(index)
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
    let max = store.max_batch_ops().max(1);
    let total = ops.len()
        + conditionals
            .iter()
            .map(|c| c.ops.len() + c.preconditions.len())
            .sum::<usize>();
    if total <= max {
        return store.commit(Batch { ops, conditionals }).await;
    }
    let mut applied = Vec::with_capacity(conditionals.len());
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let chunk: Vec<Op> = ops.by_ref().take(max).collect();
        store
            .commit(Batch {
                ops: chunk,
                conditionals: Vec::new(),
            })
            .await?;
    }
    for conditional in conditionals {
        let outcome = store
            .commit(Batch {
                ops: Vec::new(),
                conditionals: vec![conditional],
            })
            .await?;
        applied.extend(outcome.applied);
    }
    Ok(BatchOutcome { applied })
}

#[cfg(test)]
mod tests {
    use super::*;

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
