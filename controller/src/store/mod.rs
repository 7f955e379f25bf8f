//! The [`Store`] abstraction: an ordered key-value space with atomic batches,
//! and its implementations.
//!
//! The scheduler is the only writer. It hands the store one [`Batch`] at a
//! time (group commit) and acts on the batch's effects only after `commit`
//! returns, which is what makes every transition durable before it is
//! visible. Reads (the API's `Get*`/`List*`) go to the store directly and so
//! see only durable state.
//!
//! # Layout
//! - `keys`: the key layout and typed key builders.
//! - `embedded`: the redb implementation (one file, one process).
//! - `etcd`: the etcd implementation (cluster mode): prefix layout,
//!   chunked large values, fenced transactions.
//! - `conformance`: the behaviour every implementation must have, as a
//!   test suite run against each of them.

pub mod conformance;
pub mod embedded;
pub mod etcd;
pub mod keys;

use std::sync::Arc;

use async_trait::async_trait;

/// A write inside a batch. A key appears in at most one operation of a batch
/// (etcd refuses a transaction that touches a key twice); `DeletePrefix`
/// ranges must not overlap other operations' keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
    DeletePrefix { prefix: Vec<u8> },
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: Vec<u8>) -> Self {
        Op::Put {
            key: key.into(),
            value,
        }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete { key: key.into() }
    }

    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Op::DeletePrefix {
            prefix: prefix.into(),
        }
    }

    /// The key it writes, or the prefix it deletes.
    pub fn target(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
            Op::DeletePrefix { prefix } => prefix,
        }
    }

    /// Bytes this operation adds to a request, for bounding batch size.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::DeletePrefix { prefix } => prefix.len(),
        }
    }
}

/// A condition on the state before the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    DoesNotExist(Vec<u8>),
}

/// Operations applied only when every precondition holds; other parts of
/// the batch are applied either way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conditional {
    pub preconditions: Vec<Precondition>,
    pub ops: Vec<Op>,
}

/// One atomic write: all of `ops` and each conditional whose preconditions
/// held, or nothing. Preconditions are evaluated against the state before
/// the batch.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub ops: Vec<Op>,
    pub conditionals: Vec<Conditional>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.conditionals.is_empty()
    }

    /// Operations as etcd counts them against its per-transaction limit: a
    /// conditional is a nested transaction (one) plus its compares and
    /// operations.
    pub fn op_count(&self) -> usize {
        self.ops.len()
            + self
                .conditionals
                .iter()
                .map(|c| 1 + c.ops.len() + c.preconditions.len())
                .sum::<usize>()
    }
}

/// What a committed batch did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    /// For each conditional of the batch, in order: whether it was applied.
    pub applied: Vec<bool>,
}

/// Keys under a prefix, in key order (or reverse order), after an optional
/// exclusive start key, at most `limit` of them (0 means no limit).
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub prefix: Vec<u8>,
    pub after: Option<Vec<u8>>,
    pub limit: usize,
    pub reverse: bool,
}

impl Scan {
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    pub fn after(mut self, key: Option<Vec<u8>>) -> Self {
        self.after = key;
        self
    }

    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the request; a write
    /// certainly did not apply and may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write was sent but its outcome is unknown: the writer must reload
    /// its state from the store (or step down), never guess.
    #[error("store write outcome unknown: {0}")]
    Indeterminate(String),
    /// A stored value could not be decoded.
    #[error("corrupt value at `{key}`: {reason}")]
    Corrupt { key: String, reason: String },
    /// The local store failed (disk full, I/O error).
    #[error("store i/o error: {0}")]
    Io(String),
    /// The write was refused because the writer is no longer the leader
    /// (its fencing token is stale); nothing was applied. The writer must
    /// step down at once.
    #[error("write refused: no longer the leader ({0})")]
    Fenced(String),
}

impl StoreError {
    /// Whether the same request may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// Whether a failed write may nevertheless have been applied.
    pub fn write_may_have_applied(&self) -> bool {
        matches!(self, StoreError::Indeterminate(_))
    }

    pub fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_string(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The controller's durable state. See the module docs for the contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;

    async fn scan(&self, scan: Scan) -> StoreResult<Vec<KeyValue>>;

    /// Applies a batch atomically and durably (it survives a crash once this
    /// returns `Ok`).
    async fn commit(&self, batch: Batch) -> StoreResult<BatchOutcome>;

    /// Most operations one batch may hold (a conditional counts as one plus
    /// its preconditions and operations); the scheduler splits larger
    /// flushes into consecutive batches.
    fn max_batch_ops(&self) -> usize;

    /// Most bytes of keys and values one batch may hold; a single value
    /// larger than this is still accepted (stores split it themselves).
    fn max_batch_bytes(&self) -> usize;

    /// Short name for logs and `cluster status` (`embedded`, `etcd`).
    fn kind(&self) -> &'static str;
}

pub type StoreRef = Arc<dyn Store>;

/// The smallest key greater than every key that starts with `prefix`, or
/// `None` when there is none (a prefix of only `0xff` bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Decodes a protobuf value read from `key`.
pub fn decode<M: prost::Message + Default>(key: &[u8], value: &[u8]) -> StoreResult<M> {
    M::decode(value).map_err(|error| StoreError::corrupt(key, error))
}

/// Reads and decodes one record.
pub async fn get_record<M: prost::Message + Default>(
    store: &dyn Store,
    key: &[u8],
) -> StoreResult<Option<M>> {
    match store.get(key).await? {
        Some(value) => decode(key, &value).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"runs/"), Some(b"runs0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
