//! The behaviour every [`Store`] implementation must have, as one suite that
//! runs against each of them (the embedded store's unit tests call it; the
//! etcd store's tests call it against a real etcd).
//!
//! Each check works under its own fresh key prefix, so the suite can run
//! against a store that holds other data.

use super::{Batch, Conditional, Op, Precondition, Scan, Store};

fn fresh_prefix(name: &str) -> Vec<u8> {
    format!("conformance/{}/{name}/", uuid::Uuid::new_v4().simple()).into_bytes()
}

fn key(prefix: &[u8], suffix: &str) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(suffix.as_bytes());
    key
}

async fn put_all(store: &dyn Store, prefix: &[u8], suffixes: &[&str]) {
    let ops = suffixes
        .iter()
        .map(|s| Op::put(key(prefix, s), s.as_bytes().to_vec()))
        .collect();
    store
        .commit(Batch {
            ops,
            conditionals: vec![],
        })
        .await
        .expect("commit");
}

fn suffixes(prefix: &[u8], entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    entries
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
        .collect()
}

/// Runs every check; panics with a description of the first that fails.
pub async fn run_all(store: &dyn Store) {
    get_put_delete(store).await;
    scan_orders_limits_and_resumes(store).await;
    scan_stays_inside_the_prefix(store).await;
    delete_prefix_removes_only_the_prefix(store).await;
    batches_are_atomic_with_conditionals(store).await;
    preconditions_see_the_state_before_the_batch(store).await;
    large_values_round_trip(store).await;
    binary_values_round_trip(store).await;
    very_large_values_round_trip_through_get_and_scan(store).await;
    delete_prefix_removes_large_values(store).await;
    batches_at_the_bounds_commit(store).await;
}

async fn get_put_delete(store: &dyn Store) {
    let prefix = fresh_prefix("get_put_delete");
    let k = key(&prefix, "a");
    assert_eq!(store.get(&k).await.unwrap(), None, "a fresh key is absent");
    store
        .commit(Batch {
            ops: vec![Op::put(k.clone(), b"1".to_vec())],
            conditionals: vec![],
        })
        .await
        .unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(b"1".to_vec()));
    store
        .commit(Batch {
            ops: vec![Op::put(k.clone(), b"2".to_vec())],
            conditionals: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        store.get(&k).await.unwrap(),
        Some(b"2".to_vec()),
        "a put overwrites"
    );
    store
        .commit(Batch {
            ops: vec![Op::delete(k.clone())],
            conditionals: vec![],
        })
        .await
        .unwrap();
    assert_eq!(store.get(&k).await.unwrap(), None, "a delete removes");
    store
        .commit(Batch {
            ops: vec![Op::delete(k.clone())],
            conditionals: vec![],
        })
        .await
        .unwrap();
}

async fn scan_orders_limits_and_resumes(store: &dyn Store) {
    let prefix = fresh_prefix("scan");
    put_all(store, &prefix, &["c", "a", "e", "b", "d"]).await;
    let all = store.scan(Scan::prefix(prefix.clone())).await.unwrap();
    assert_eq!(
        suffixes(&prefix, &all),
        ["a", "b", "c", "d", "e"],
        "scan is in key order"
    );
    assert_eq!(all[0].1, b"a".to_vec(), "scan returns values");
    let first = store
        .scan(Scan::prefix(prefix.clone()).limit(2))
        .await
        .unwrap();
    assert_eq!(suffixes(&prefix, &first), ["a", "b"]);
    let next = store
        .scan(
            Scan::prefix(prefix.clone())
                .after(Some(first[1].0.clone()))
                .limit(2),
        )
        .await
        .unwrap();
    assert_eq!(suffixes(&prefix, &next), ["c", "d"], "after is exclusive");
    let reverse = store
        .scan(Scan::prefix(prefix.clone()).reverse().limit(2))
        .await
        .unwrap();
    assert_eq!(
        suffixes(&prefix, &reverse),
        ["e", "d"],
        "reverse scans from the end"
    );
    let reverse_next = store
        .scan(
            Scan::prefix(prefix.clone())
                .reverse()
                .after(Some(reverse[1].0.clone())),
        )
        .await
        .unwrap();
    assert_eq!(suffixes(&prefix, &reverse_next), ["c", "b", "a"]);
}

async fn scan_stays_inside_the_prefix(store: &dyn Store) {
    let prefix = fresh_prefix("bounds");
    let mut inner = prefix.clone();
    inner.extend_from_slice(b"in/");
    put_all(store, &prefix, &["in/1", "in/2", "in0", "im", "in"]).await;
    let found = store.scan(Scan::prefix(inner.clone())).await.unwrap();
    assert_eq!(
        suffixes(&inner, &found),
        ["1", "2"],
        "only keys under the prefix"
    );
    let empty = store
        .scan(Scan::prefix(key(&prefix, "zzz/")))
        .await
        .unwrap();
    assert!(empty.is_empty());
}

async fn delete_prefix_removes_only_the_prefix(store: &dyn Store) {
    let prefix = fresh_prefix("delete_prefix");
    put_all(store, &prefix, &["x/1", "x/2", "x0", "y/1"]).await;
    store
        .commit(Batch {
            ops: vec![Op::delete_prefix(key(&prefix, "x/"))],
            conditionals: vec![],
        })
        .await
        .unwrap();
    let left = store.scan(Scan::prefix(prefix.clone())).await.unwrap();
    assert_eq!(suffixes(&prefix, &left), ["x0", "y/1"]);
}

async fn batches_are_atomic_with_conditionals(store: &dyn Store) {
    let prefix = fresh_prefix("conditional");
    put_all(store, &prefix, &["taken"]).await;
    let outcome = store
        .commit(Batch {
            ops: vec![Op::put(key(&prefix, "plain"), b"p".to_vec())],
            conditionals: vec![
                Conditional {
                    preconditions: vec![Precondition::DoesNotExist(key(&prefix, "taken"))],
                    ops: vec![
                        Op::put(key(&prefix, "taken"), b"overwritten".to_vec()),
                        Op::put(key(&prefix, "t2"), vec![]),
                    ],
                },
                Conditional {
                    preconditions: vec![Precondition::DoesNotExist(key(&prefix, "free"))],
                    ops: vec![Op::put(key(&prefix, "free"), b"mine".to_vec())],
                },
            ],
        })
        .await
        .unwrap();
    assert_eq!(
        outcome.applied,
        [false, true],
        "each conditional reports whether it applied"
    );
    assert_eq!(
        store.get(&key(&prefix, "plain")).await.unwrap(),
        Some(b"p".to_vec())
    );
    assert_eq!(
        store.get(&key(&prefix, "taken")).await.unwrap(),
        Some(b"taken".to_vec()),
        "a failed condition writes nothing"
    );
    assert_eq!(
        store.get(&key(&prefix, "t2")).await.unwrap(),
        None,
        "a failed conditional applies none of its ops"
    );
    assert_eq!(
        store.get(&key(&prefix, "free")).await.unwrap(),
        Some(b"mine".to_vec())
    );
}

async fn preconditions_see_the_state_before_the_batch(store: &dyn Store) {
    let prefix = fresh_prefix("before");
    let outcome = store
        .commit(Batch {
            ops: vec![Op::put(key(&prefix, "created"), b"1".to_vec())],
            conditionals: vec![Conditional {
                preconditions: vec![Precondition::DoesNotExist(key(&prefix, "created"))],
                ops: vec![Op::put(key(&prefix, "other"), b"2".to_vec())],
            }],
        })
        .await
        .unwrap();
    assert_eq!(
        outcome.applied,
        [true],
        "the batch's own put is not visible to its preconditions"
    );
    assert_eq!(
        store.get(&key(&prefix, "other")).await.unwrap(),
        Some(b"2".to_vec())
    );
}

async fn large_values_round_trip(store: &dyn Store) {
    let prefix = fresh_prefix("large");
    let value: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let k = key(&prefix, "big");
    store
        .commit(Batch {
            ops: vec![Op::put(k.clone(), value.clone())],
            conditionals: vec![],
        })
        .await
        .unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(value));
}

/// Deterministic bytes that do not compress or repeat with a short period.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

async fn put_one(store: &dyn Store, key: Vec<u8>, value: Vec<u8>) {
    store
        .commit(Batch {
            ops: vec![Op::put(key, value)],
            conditionals: vec![],
        })
        .await
        .expect("commit");
}

async fn binary_values_round_trip(store: &dyn Store) {
    let prefix = fresh_prefix("binary");
    let values: [&[u8]; 5] = [b"", b"\0", b"\0\0\0\xff", b"\xff\xfe", b"\0baton\0"];
    for (index, value) in values.iter().enumerate() {
        put_one(store, key(&prefix, &format!("{index}")), value.to_vec()).await;
    }
    for (index, value) in values.iter().enumerate() {
        assert_eq!(
            store.get(&key(&prefix, &format!("{index}"))).await.unwrap(),
            Some(value.to_vec()),
            "value {index} round trips (an empty value is present, not absent)"
        );
    }
    let all = store.scan(Scan::prefix(prefix.clone())).await.unwrap();
    let scanned: Vec<Vec<u8>> = all.into_iter().map(|(_, v)| v).collect();
    let expected: Vec<Vec<u8>> = values.iter().map(|v| v.to_vec()).collect();
    assert_eq!(scanned, expected, "scan returns values as written");
}

async fn very_large_values_round_trip_through_get_and_scan(store: &dyn Store) {
    let prefix = fresh_prefix("very_large");
    let big = noise(4 * 1024 * 1024 + 17, 1);
    put_all(store, &prefix, &["a", "c"]).await;
    put_one(store, key(&prefix, "b"), big.clone()).await;
    assert_eq!(
        store.get(&key(&prefix, "b")).await.unwrap(),
        Some(big.clone())
    );
    let all = store.scan(Scan::prefix(prefix.clone())).await.unwrap();
    assert_eq!(suffixes(&prefix, &all), ["a", "b", "c"]);
    assert!(all[1].1 == big, "scan returns the large value whole");
    assert_eq!(all[2].1, b"c".to_vec());
    let reverse = store
        .scan(Scan::prefix(prefix.clone()).reverse().limit(2))
        .await
        .unwrap();
    assert_eq!(suffixes(&prefix, &reverse), ["c", "b"]);
    assert!(
        reverse[1].1 == big,
        "a reverse scan returns the large value whole"
    );
    let after = store
        .scan(
            Scan::prefix(prefix.clone())
                .after(Some(key(&prefix, "a")))
                .limit(1),
        )
        .await
        .unwrap();
    assert_eq!(suffixes(&prefix, &after), ["b"]);
    assert!(after[0].1 == big);

    // Large to large, large to small, small to large, then gone.
    let other = noise(3 * 1024 * 1024, 2);
    put_one(store, key(&prefix, "b"), other.clone()).await;
    assert!(store.get(&key(&prefix, "b")).await.unwrap() == Some(other.clone()));
    put_one(store, key(&prefix, "b"), b"small".to_vec()).await;
    assert_eq!(
        store.get(&key(&prefix, "b")).await.unwrap(),
        Some(b"small".to_vec())
    );
    put_one(store, key(&prefix, "b"), big.clone()).await;
    assert!(store.get(&key(&prefix, "b")).await.unwrap() == Some(big));
    store
        .commit(Batch {
            ops: vec![Op::delete(key(&prefix, "b"))],
            conditionals: vec![],
        })
        .await
        .unwrap();
    assert_eq!(store.get(&key(&prefix, "b")).await.unwrap(), None);
    let left = store.scan(Scan::prefix(prefix.clone())).await.unwrap();
    assert_eq!(suffixes(&prefix, &left), ["a", "c"]);
}

async fn delete_prefix_removes_large_values(store: &dyn Store) {
    let prefix = fresh_prefix("delete_large");
    let big = noise(1536 * 1024, 3);
    let conditional_big = noise(700 * 1024, 4);
    let outcome = store
        .commit(Batch {
            ops: vec![
                Op::put(key(&prefix, "x/1"), big.clone()),
                Op::put(key(&prefix, "x/2"), b"2".to_vec()),
                Op::put(key(&prefix, "y/1"), big.clone()),
            ],
            conditionals: vec![Conditional {
                preconditions: vec![Precondition::DoesNotExist(key(&prefix, "x/3"))],
                ops: vec![Op::put(key(&prefix, "x/3"), conditional_big.clone())],
            }],
        })
        .await
        .unwrap();
    assert_eq!(outcome.applied, [true]);
    assert!(
        store.get(&key(&prefix, "x/3")).await.unwrap() == Some(conditional_big),
        "a conditional's large value round trips"
    );
    store
        .commit(Batch {
            ops: vec![Op::delete_prefix(key(&prefix, "x/"))],
            conditionals: vec![],
        })
        .await
        .unwrap();
    let left = store.scan(Scan::prefix(prefix.clone())).await.unwrap();
    assert_eq!(suffixes(&prefix, &left), ["y/1"]);
    assert!(left[0].1 == big, "other large values are untouched");
    assert_eq!(store.get(&key(&prefix, "x/1")).await.unwrap(), None);
}

/// A batch as large as the store says it accepts, in operations (deletes,
/// puts and a conditional) and in bytes, commits (capped so the suite stays
/// quick on stores with very large bounds).
async fn batches_at_the_bounds_commit(store: &dyn Store) {
    let prefix = fresh_prefix("bounds_batch");
    let max_ops = store.max_batch_ops().min(256);
    assert!(
        max_ops >= 8,
        "a store must take batches of a few operations"
    );
    let deletes = max_ops / 2;
    let existing: Vec<String> = (0..deletes).map(|i| format!("old/{i:04}")).collect();
    let existing_refs: Vec<&str> = existing.iter().map(String::as_str).collect();
    put_all(store, &prefix, &existing_refs).await;
    let conditional = Conditional {
        preconditions: vec![Precondition::DoesNotExist(key(&prefix, "made"))],
        ops: vec![Op::put(key(&prefix, "made"), b"m".to_vec())],
    };
    let puts = max_ops - deletes - 3;
    let mut ops: Vec<Op> = existing
        .iter()
        .map(|k| Op::delete(key(&prefix, k)))
        .collect();
    ops.extend((0..puts).map(|i| Op::put(key(&prefix, &format!("new/{i:04}")), vec![b'v'; 8])));
    let batch = Batch {
        ops,
        conditionals: vec![conditional],
    };
    // A conditional counts as one plus its preconditions and operations.
    assert_eq!(
        batch.op_count(),
        max_ops,
        "the batch is exactly at the bound"
    );
    let outcome = store.commit(batch).await.unwrap();
    assert_eq!(outcome.applied, [true]);
    let left = store.scan(Scan::prefix(prefix.clone())).await.unwrap();
    assert_eq!(left.len(), puts + 1, "the deletes and puts all applied");
    assert!(
        left.iter()
            .all(|(k, _)| !k[prefix.len()..].starts_with(b"old/"))
    );

    let prefix = fresh_prefix("bounds_bytes");
    let max_bytes = store.max_batch_bytes().min(2 * 1024 * 1024);
    let pieces = 8;
    let value_len = (max_bytes - pieces * (prefix.len() + 1)) / pieces;
    let ops: Vec<Op> = (0..pieces)
        .map(|i| {
            Op::put(
                key(&prefix, &format!("{i}")),
                noise(value_len, 10 + i as u64),
            )
        })
        .collect();
    let total: usize = ops.iter().map(Op::size).sum();
    assert!(total <= store.max_batch_bytes(), "{total} bytes");
    store
        .commit(Batch {
            ops,
            conditionals: vec![],
        })
        .await
        .unwrap();
    let left = store.scan(Scan::prefix(prefix.clone())).await.unwrap();
    assert_eq!(left.len(), pieces);
    for (index, (_, value)) in left.iter().enumerate() {
        assert!(
            *value == noise(value_len, 10 + index as u64),
            "value {index}"
        );
    }
}
