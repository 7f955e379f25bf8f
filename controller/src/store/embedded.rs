//! The embedded store: one redb file, for `baton dev` and single-controller
//! deployments.
//!
//! Every batch is one redb write transaction with immediate durability (it is
//! on disk when `commit` returns). redb allows one writer at a time and holds
//! an exclusive lock on the file, so a second controller cannot open the same
//! data directory: the file lock is this store's fence. All calls run on
//! tokio's blocking pool because redb does synchronous I/O.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Batch, BatchOutcome, KeyValue, Op, Precondition, Scan, Store, StoreError, StoreResult,
    prefix_end,
};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// The redb-backed [`Store`].
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`, with at most
    /// `cache_bytes` of pages cached in memory.
    pub fn open(path: &Path, cache_bytes: usize) -> StoreResult<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| {
                StoreError::Io(format!("cannot create {}: {error}", parent.display()))
            })?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|error| match error {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                    "{} is already open in another process (one controller per data directory)",
                    path.display()
                )),
                other => StoreError::Io(format!("cannot open {}: {other}", path.display())),
            })?;
        let txn = db.begin_write().map_err(io_error)?;
        txn.open_table(KV).map_err(io_error)?;
        txn.commit().map_err(io_error)?;
        Ok(Self {
            db: Arc::new(db),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|error| StoreError::Io(format!("store task failed: {error}")))?
    }
}

fn io_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

fn apply(table: &mut redb::Table<&[u8], &[u8]>, op: &Op) -> StoreResult<()> {
    match op {
        Op::Put { key, value } => {
            table
                .insert(key.as_slice(), value.as_slice())
                .map_err(io_error)?;
        }
        Op::Delete { key } => {
            table.remove(key.as_slice()).map_err(io_error)?;
        }
        Op::DeletePrefix { prefix } => {
            let upper = prefix_end(prefix);
            let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (
                Bound::Included(prefix.as_slice()),
                upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            );
            table
                .retain_in::<&[u8], _>(bounds, |_, _| false)
                .map_err(io_error)?;
        }
    }
    Ok(())
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(io_error)?;
            let table = txn.open_table(KV).map_err(io_error)?;
            Ok(table
                .get(key.as_slice())
                .map_err(io_error)?
                .map(|value| value.value().to_vec()))
        })
        .await
    }

    async fn scan(&self, scan: Scan) -> StoreResult<Vec<KeyValue>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(io_error)?;
            let table = txn.open_table(KV).map_err(io_error)?;
            let upper = prefix_end(&scan.prefix);
            let (lower, upper): (Bound<&[u8]>, Bound<&[u8]>) = match (&scan.after, scan.reverse) {
                (Some(after), false) => (
                    Bound::Excluded(after.as_slice()),
                    upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
                ),
                (Some(after), true) => (
                    Bound::Included(scan.prefix.as_slice()),
                    Bound::Excluded(after.as_slice()),
                ),
                (None, _) => (
                    Bound::Included(scan.prefix.as_slice()),
                    upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
                ),
            };
            let range = table.range::<&[u8]>((lower, upper)).map_err(io_error)?;
            let limit = if scan.limit == 0 {
                usize::MAX
            } else {
                scan.limit
            };
            let entries: Box<dyn Iterator<Item = _>> = if scan.reverse {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            let mut out = Vec::new();
            for entry in entries {
                if out.len() >= limit {
                    break;
                }
                let (key, value) = entry.map_err(io_error)?;
                let key = key.value();
                // An `after` key outside the prefix must not widen the scan.
                if key.starts_with(&scan.prefix) {
                    out.push((key.to_vec(), value.value().to_vec()));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn commit(&self, batch: Batch) -> StoreResult<BatchOutcome> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(io_error)?;
            let mut applied = Vec::with_capacity(batch.conditionals.len());
            {
                let mut table = txn.open_table(KV).map_err(io_error)?;
                // Preconditions see the state before the batch.
                for conditional in &batch.conditionals {
                    let mut holds = true;
                    for precondition in &conditional.preconditions {
                        match precondition {
                            Precondition::DoesNotExist(key) => {
                                if table.get(key.as_slice()).map_err(io_error)?.is_some() {
                                    holds = false;
                                }
                            }
                        }
                    }
                    applied.push(holds);
                }
                for op in &batch.ops {
                    apply(&mut table, op)?;
                }
                for (conditional, holds) in batch.conditionals.iter().zip(&applied) {
                    if *holds {
                        for op in &conditional.ops {
                            apply(&mut table, op)?;
                        }
                    }
                }
            }
            txn.commit()
                .map_err(|error| StoreError::Io(format!("commit failed: {error}")))?;
            Ok(BatchOutcome { applied })
        })
        .await
    }

    fn max_batch_ops(&self) -> usize {
        // One redb transaction holds any number of writes; this bound only
        // keeps a single commit's latency (and memory) predictable.
        65_536
    }

    fn max_batch_bytes(&self) -> usize {
        256 * 1024 * 1024
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_CACHE: usize = 4 * 1024 * 1024;

    #[tokio::test]
    async fn embedded_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("baton.redb"), TEST_CACHE).unwrap();
        super::super::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.redb");
        let _first = EmbeddedStore::open(&path, TEST_CACHE).unwrap();
        let error = EmbeddedStore::open(&path, TEST_CACHE)
            .err()
            .expect("second open must fail");
        assert!(error.to_string().contains("already open"), "{error}");
    }

    #[tokio::test]
    async fn writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.redb");
        {
            let store = EmbeddedStore::open(&path, TEST_CACHE).unwrap();
            store
                .commit(Batch {
                    ops: vec![Op::put(b"k".to_vec(), b"v".to_vec())],
                    conditionals: vec![],
                })
                .await
                .unwrap();
        }
        let store = EmbeddedStore::open(&path, TEST_CACHE).unwrap();
        assert_eq!(store.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    }
}
