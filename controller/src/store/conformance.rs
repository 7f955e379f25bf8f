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
