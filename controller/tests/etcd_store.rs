//! The etcd store against a real etcd: the conformance suite, fencing,
//! chunked values, paging, an etcd restart and a lost response.
//!
//! Each test starts its own etcd (see `etcd_harness`) and works under its
//! own prefix. Without etcd the tests are skipped, unless `CI=true`.

mod etcd_harness;

use std::time::Duration;

use baton_controller::store::etcd::{CHUNK_HEADER_MAGIC, EtcdConfig, EtcdStore, Fence};
use baton_controller::store::{
    Batch, Conditional, Op, Precondition, Scan, Store, StoreError, conformance,
};
use etcd_client::GetOptions;
use etcd_harness::{CuttingProxy, Etcd};
use tokio_util::sync::CancellationToken;

fn config(endpoint: String) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint],
        prefix: format!("/baton-test-{}/", uuid::Uuid::new_v4().simple()),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
    }
}

async fn connect(etcd: &Etcd) -> EtcdStore {
    EtcdStore::connect(config(etcd.endpoint()))
        .await
        .expect("connect to etcd")
}

fn put(key: &str, value: impl Into<Vec<u8>>) -> Op {
    Op::put(key.as_bytes().to_vec(), value.into())
}

fn batch(ops: Vec<Op>) -> Batch {
    Batch {
        ops,
        conditionals: vec![],
    }
}

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

/// Raw etcd keys under an absolute prefix.
async fn raw_keys(store: &EtcdStore, absolute_prefix: &[u8]) -> Vec<Vec<u8>> {
    let mut client = store.client();
    client
        .get(
            absolute_prefix.to_vec(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("raw range")
        .kvs()
        .iter()
        .map(|kv| kv.key().to_vec())
        .collect()
}

async fn raw_value(store: &EtcdStore, key: &[u8]) -> Option<Vec<u8>> {
    let mut client = store.client();
    client
        .get(store.absolute_key(key), None)
        .await
        .expect("raw get")
        .kvs()
        .first()
        .map(|kv| kv.value().to_vec())
}

/// The raw chunk keys of one relative key (its escaped form has no `/`).
async fn chunk_keys(store: &EtcdStore, escaped_key: &str) -> Vec<Vec<u8>> {
    let prefix = store.absolute_key(format!("chunks/{escaped_key}/").as_bytes());
    raw_keys(store, &prefix).await
}

#[tokio::test]
async fn etcd_store_passes_the_conformance_suite() {
    let Some(etcd) = Etcd::start("etcd_store_passes_the_conformance_suite").await else {
        return;
    };
    let store = connect(&etcd).await;
    assert_eq!(store.kind(), "etcd");
    let started = std::time::Instant::now();
    conformance::run_all(&store).await;
    eprintln!("conformance suite on etcd: {:?}", started.elapsed());
    // Nothing the suite wrote is visible outside the prefix.
    let outside = raw_keys(&store, b"/").await;
    assert!(
        outside
            .iter()
            .all(|key| key.starts_with(store.prefix().as_bytes())),
        "every key lives under the prefix"
    );
}

#[tokio::test]
async fn keys_live_under_the_normalized_prefix() {
    let Some(etcd) = Etcd::start("keys_live_under_the_normalized_prefix").await else {
        return;
    };
    let store = connect(&etcd).await;
    assert!(!store.prefix().ends_with('/'), "{}", store.prefix());
    assert_eq!(
        store.absolute_key(b"runs/1"),
        format!("{}/runs/1", store.prefix()).into_bytes()
    );
    store.commit(batch(vec![put("runs/1", "r")])).await.unwrap();
    assert_eq!(raw_value(&store, b"runs/1").await, Some(b"r".to_vec()));
    let scanned = store.scan(Scan::prefix(b"runs/".to_vec())).await.unwrap();
    assert_eq!(
        scanned,
        vec![(b"runs/1".to_vec(), b"r".to_vec())],
        "relative keys"
    );
    let refused = store
        .commit(batch(vec![put("chunks/x", "v")]))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Io(ref message) if message.contains("reserves")),
        "{refused}"
    );
}

#[tokio::test]
async fn connect_fails_as_unavailable_naming_the_endpoints() {
    // No etcd needed: nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut config = config(endpoint.clone());
    config.connect_timeout = Duration::from_millis(500);
    let error = EtcdStore::connect(config).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Unavailable(ref message) if message.contains(&endpoint)),
        "{error}"
    );
}

#[tokio::test]
async fn a_fenced_store_writes_only_while_its_election_key_lives() {
    let Some(etcd) = Etcd::start("a_fenced_store_writes_only_while_its_election_key_lives").await
    else {
        return;
    };
    let store = connect(&etcd).await;
    let mut client = store.client();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let election = store.absolute_key(b"leader");
    let campaign = client
        .campaign(election.clone(), "me", lease)
        .await
        .unwrap();
    let leader = campaign.leader().expect("leader key").clone();
    let fence = Fence {
        key: leader.key().to_vec(),
        create_revision: leader.rev(),
    };
    let fenced = store.fenced(fence.clone(), CancellationToken::new());
    fenced
        .commit(batch(vec![put("runs/a", "1")]))
        .await
        .expect("the leader writes");
    assert_eq!(store.get(b"runs/a").await.unwrap(), Some(b"1".to_vec()));

    // Leadership lost, then the same key created again (same lease, so the
    // same name) with a new create revision.
    client
        .resign(Some(etcd_client::ResignOptions::new().with_leader(leader)))
        .await
        .unwrap();
    let again = client.campaign(election, "me", lease).await.unwrap();
    let new_leader = again.leader().expect("leader key").clone();
    assert_eq!(
        new_leader.key(),
        fence.key.as_slice(),
        "same key, recreated"
    );
    assert_ne!(new_leader.rev(), fence.create_revision);

    let big = noise(700 * 1024, 9);
    let refused = fenced
        .commit(Batch {
            ops: vec![put("runs/a", "2"), put("runs/b", "new")],
            conditionals: vec![Conditional {
                preconditions: vec![Precondition::DoesNotExist(b"runs/c".to_vec())],
                ops: vec![put("runs/c", "c")],
            }],
        })
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Fenced(_)), "{refused}");
    assert!(!refused.write_may_have_applied() && !refused.is_retryable());
    let refused_chunks = fenced
        .commit(batch(vec![put("dag_versions/big", big)]))
        .await
        .unwrap_err();
    assert!(
        matches!(refused_chunks, StoreError::Fenced(_)),
        "chunk writes are fenced too: {refused_chunks}"
    );
    assert_eq!(
        store.get(b"runs/a").await.unwrap(),
        Some(b"1".to_vec()),
        "untouched"
    );
    assert_eq!(store.get(b"runs/b").await.unwrap(), None);
    assert_eq!(store.get(b"runs/c").await.unwrap(), None);
    assert_eq!(store.get(b"dag_versions/big").await.unwrap(), None);
    assert!(chunk_keys(&store, "dag_versions%2Fbig").await.is_empty());

    let current = store.fenced(
        Fence {
            key: new_leader.key().to_vec(),
            create_revision: new_leader.rev(),
        },
        CancellationToken::new(),
    );
    current
        .commit(batch(vec![put("runs/a", "3")]))
        .await
        .expect("the new term writes");
    assert_eq!(store.get(b"runs/a").await.unwrap(), Some(b"3".to_vec()));

    let never = store.fenced(
        Fence {
            key: store.absolute_key(b"leader/none"),
            create_revision: 1,
        },
        CancellationToken::new(),
    );
    let refused = never
        .commit(batch(vec![put("runs/a", "4")]))
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Fenced(_)), "{refused}");
}

#[tokio::test]
async fn large_values_are_chunked_and_cleaned_up() {
    let Some(etcd) = Etcd::start("large_values_are_chunked_and_cleaned_up").await else {
        return;
    };
    let store = connect(&etcd).await;
    let big = noise(4 * 1024 * 1024, 1);
    let started = std::time::Instant::now();
    store
        .commit(batch(vec![
            put("dag_versions/etl/1", big.clone()),
            put("dag_versions/etl/2", "small"),
        ]))
        .await
        .unwrap();
    let put_time = started.elapsed();
    let started = std::time::Instant::now();
    assert!(store.get(b"dag_versions/etl/1").await.unwrap() == Some(big.clone()));
    let get_time = started.elapsed();
    eprintln!("4 MiB value: put {put_time:?}, get {get_time:?}");

    let header = raw_value(&store, b"dag_versions/etl/1").await.unwrap();
    assert!(
        header.starts_with(CHUNK_HEADER_MAGIC) && header.len() < 100,
        "a header is stored"
    );
    assert_eq!(
        chunk_keys(&store, "dag_versions%2Fetl%2F1").await.len(),
        8,
        "4 MiB in 512 KiB chunks"
    );

    let scanned = store
        .scan(Scan::prefix(b"dag_versions/etl/".to_vec()))
        .await
        .unwrap();
    assert_eq!(scanned.len(), 2);
    assert!(scanned[0].1 == big && scanned[1].1 == b"small");
    let everything = store.scan(Scan::prefix(Vec::new())).await.unwrap();
    assert!(
        everything
            .iter()
            .all(|(key, _)| !key.starts_with(b"chunks/")),
        "scans never show chunks"
    );
    assert_eq!(everything.len(), 2);
    assert!(
        store
            .scan(Scan::prefix(b"chunks/".to_vec()))
            .await
            .unwrap()
            .is_empty()
    );

    // Overwriting drops the old chunk set.
    let other = noise(1024 * 1024 + 1, 2);
    store
        .commit(batch(vec![put("dag_versions/etl/1", other.clone())]))
        .await
        .unwrap();
    assert!(store.get(b"dag_versions/etl/1").await.unwrap() == Some(other));
    assert_eq!(
        chunk_keys(&store, "dag_versions%2Fetl%2F1").await.len(),
        3,
        "only the new set"
    );

    // Delete removes the chunks too.
    store
        .commit(batch(vec![Op::delete(b"dag_versions/etl/1".to_vec())]))
        .await
        .unwrap();
    assert!(
        chunk_keys(&store, "dag_versions%2Fetl%2F1")
            .await
            .is_empty()
    );

    // DeletePrefix removes the chunks of every key under it, and only those.
    store
        .commit(batch(vec![
            put("dag_versions/a/1", big.clone()),
            put("dag_versions/a/2", noise(600 * 1024, 3)),
            put("dag_versions/ab/1", big.clone()),
        ]))
        .await
        .unwrap();
    store
        .commit(batch(vec![Op::delete_prefix(b"dag_versions/a/".to_vec())]))
        .await
        .unwrap();
    let chunks = raw_keys(&store, &store.absolute_key(b"chunks/")).await;
    assert!(
        chunks
            .iter()
            .all(|key| key.starts_with(&store.absolute_key(b"chunks/dag_versions%2Fab%2F1/"))),
        "only dag_versions/ab/1 keeps chunks: {:?}",
        chunks
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    );
    assert!(store.get(b"dag_versions/ab/1").await.unwrap() == Some(big.clone()));

    // A small value that looks like a header is stored chunked, so it is
    // never taken for one.
    let mut lookalike = CHUNK_HEADER_MAGIC.to_vec();
    lookalike.extend_from_slice(&[0; 44]);
    store
        .commit(batch(vec![put("runs/odd", lookalike.clone())]))
        .await
        .unwrap();
    assert_eq!(
        store.get(b"runs/odd").await.unwrap(),
        Some(lookalike.clone())
    );
    assert_ne!(raw_value(&store, b"runs/odd").await, Some(lookalike));

    // A batch of many values under the chunk threshold but over one etcd
    // request is accepted (the largest are chunked).
    let values: Vec<Vec<u8>> = (0..5).map(|i| noise(400 * 1024, 20 + i)).collect();
    store
        .commit(batch(
            values
                .iter()
                .enumerate()
                .map(|(i, value)| put(&format!("many/{i}"), value.clone()))
                .collect(),
        ))
        .await
        .unwrap();
    let many = store.scan(Scan::prefix(b"many/".to_vec())).await.unwrap();
    assert!(many.iter().map(|(_, v)| v).eq(values.iter()));

    // A missing chunk is reported, not papered over.
    let chunks = chunk_keys(&store, "dag_versions%2Fab%2F1").await;
    let mut client = store.client();
    client.delete(chunks[3].clone(), None).await.unwrap();
    let error = store.get(b"dag_versions/ab/1").await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
}

#[tokio::test]
async fn scans_page_forward_and_backward() {
    let Some(etcd) = Etcd::start("scans_page_forward_and_backward").await else {
        return;
    };
    let store = connect(&etcd).await;
    let keys: Vec<String> = (0..300).map(|i| format!("tasks/r/{i:04}")).collect();
    for chunk in keys.chunks(100) {
        store
            .commit(batch(chunk.iter().map(|k| put(k, k.clone())).collect()))
            .await
            .unwrap();
    }
    store
        .commit(batch(vec![
            put("tasks/q", "before"),
            put("tasks/s", "after"),
        ]))
        .await
        .unwrap();
    let all = store
        .scan(Scan::prefix(b"tasks/r/".to_vec()))
        .await
        .unwrap();
    assert!(
        all.iter()
            .map(|(k, _)| k.as_slice())
            .eq(keys.iter().map(|k| k.as_bytes()))
    );
    assert!(all.iter().all(|(k, v)| k == v));
    let reverse = store
        .scan(Scan::prefix(b"tasks/r/".to_vec()).reverse())
        .await
        .unwrap();
    assert!(
        reverse
            .iter()
            .map(|(k, _)| k.as_slice())
            .eq(keys.iter().rev().map(|k| k.as_bytes()))
    );

    for reverse in [false, true] {
        let mut pages = Vec::new();
        let mut after = None;
        for _ in 0..100 {
            let mut scan = Scan::prefix(b"tasks/r/".to_vec())
                .after(after.clone())
                .limit(70);
            if reverse {
                scan = scan.reverse();
            }
            let page = store.scan(scan).await.unwrap();
            assert!(page.len() <= 70);
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            pages.extend(page.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()));
        }
        let expected: Vec<String> = if reverse {
            keys.iter().rev().cloned().collect()
        } else {
            keys.clone()
        };
        assert_eq!(
            pages, expected,
            "paging (reverse: {reverse}) visits every key once"
        );
    }

    // An `after` outside the prefix never widens the scan.
    let before = store
        .scan(
            Scan::prefix(b"tasks/r/".to_vec())
                .after(Some(b"tasks/a".to_vec()))
                .limit(1),
        )
        .await
        .unwrap();
    assert_eq!(before[0].0, keys[0].as_bytes());
    let past = store
        .scan(Scan::prefix(b"tasks/r/".to_vec()).after(Some(b"tasks/z".to_vec())))
        .await
        .unwrap();
    assert!(past.is_empty());
    let past_reverse = store
        .scan(
            Scan::prefix(b"tasks/r/".to_vec())
                .reverse()
                .after(Some(b"tasks/z".to_vec()))
                .limit(1),
        )
        .await
        .unwrap();
    assert_eq!(past_reverse[0].0, keys[299].as_bytes());
}

#[tokio::test]
async fn a_full_batch_with_deletes_cleans_chunks_after_committing() {
    let Some(etcd) = Etcd::start("a_full_batch_with_deletes_cleans_chunks_after_committing").await
    else {
        return;
    };
    let store = connect(&etcd).await;
    store
        .commit(batch(vec![put("big", noise(600 * 1024, 5))]))
        .await
        .unwrap();
    let olds: Vec<String> = (0..63).map(|i| format!("old/{i:03}")).collect();
    store
        .commit(batch(olds.iter().map(|k| put(k, "o")).collect()))
        .await
        .unwrap();
    // 64 deletes + 61 puts + a conditional (one, plus its precondition and
    // op) = the 128 operations the store allows; with a chunk cleanup per
    // delete it would not fit etcd's budget, so cleanup follows the batch.
    let mut ops: Vec<Op> = olds
        .iter()
        .map(|k| Op::delete(k.as_bytes().to_vec()))
        .collect();
    ops.push(Op::delete(b"big".to_vec()));
    ops.extend((0..61).map(|i| put(&format!("new/{i:03}"), "n")));
    let full = Batch {
        ops,
        conditionals: vec![Conditional {
            preconditions: vec![Precondition::DoesNotExist(b"made".to_vec())],
            ops: vec![put("made", "m")],
        }],
    };
    assert_eq!(full.op_count(), store.max_batch_ops());
    let outcome = store.commit(full).await.unwrap();
    assert_eq!(outcome.applied, [true]);
    assert!(
        store
            .scan(Scan::prefix(b"old/".to_vec()))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .scan(Scan::prefix(b"new/".to_vec()))
            .await
            .unwrap()
            .len(),
        61
    );
    assert_eq!(store.get(b"big").await.unwrap(), None);
    assert!(
        chunk_keys(&store, "big").await.is_empty(),
        "chunks cleaned after the batch"
    );
}

#[tokio::test]
async fn a_lost_response_is_resolved_by_resending() {
    let Some(etcd) = Etcd::start("a_lost_response_is_resolved_by_resending").await else {
        return;
    };
    let proxy = CuttingProxy::start(etcd.client_address()).await;
    let store = EtcdStore::connect(config(proxy.endpoint())).await.unwrap();
    store
        .commit(batch(vec![put("idem/taken", "someone else")]))
        .await
        .unwrap();
    proxy.cut_next_response();
    let outcome = store
        .commit(Batch {
            ops: vec![put("runs/plain", "p")],
            conditionals: vec![
                Conditional {
                    preconditions: vec![Precondition::DoesNotExist(b"idem/mine".to_vec())],
                    ops: vec![put("idem/mine", "run-1"), put("runs/1", "r1")],
                },
                Conditional {
                    preconditions: vec![Precondition::DoesNotExist(b"idem/taken".to_vec())],
                    ops: vec![put("idem/taken", "run-2"), put("runs/2", "r2")],
                },
            ],
        })
        .await
        .expect("the resend answers");
    assert_eq!(proxy.cuts(), 1, "the first response was lost");
    assert_eq!(
        outcome.applied,
        [true, false],
        "the lost attempt applied the first conditional; the second never held"
    );
    assert_eq!(store.get(b"runs/plain").await.unwrap(), Some(b"p".to_vec()));
    assert_eq!(store.get(b"runs/1").await.unwrap(), Some(b"r1".to_vec()));
    assert_eq!(store.get(b"runs/2").await.unwrap(), None);
    assert_eq!(
        store.get(b"idem/taken").await.unwrap(),
        Some(b"someone else".to_vec())
    );
    // The lost attempt did apply (the plain put ran twice) and the resend's
    // conditional did not (its put ran once): the outcome came from reading
    // the conditional's write back.
    let version = |key: &'static [u8]| {
        let store = store.clone();
        async move {
            let mut client = store.client();
            let response = client.get(store.absolute_key(key), None).await.unwrap();
            response.kvs()[0].version()
        }
    };
    assert_eq!(version(b"runs/plain").await, 2, "applied by both attempts");
    assert_eq!(
        version(b"idem/mine").await,
        1,
        "applied by the lost attempt only"
    );
}

#[tokio::test]
async fn a_commit_while_etcd_restarts_is_never_silently_lost() {
    let Some(mut etcd) = Etcd::start("a_commit_while_etcd_restarts_is_never_silently_lost").await
    else {
        return;
    };
    let store = connect(&etcd).await;
    store
        .commit(batch(vec![put("runs/before", "b")]))
        .await
        .unwrap();

    etcd.kill();
    let writer = store.clone();
    let commit = tokio::spawn(async move {
        writer
            .commit(Batch {
                ops: vec![put("runs/during", "d")],
                conditionals: vec![Conditional {
                    preconditions: vec![Precondition::DoesNotExist(b"idem/during".to_vec())],
                    ops: vec![put("idem/during", "run-d")],
                }],
            })
            .await
    });
    // Let the commit find etcd down before it comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart().await;
    let result = tokio::time::timeout(Duration::from_secs(30), commit)
        .await
        .expect("the commit answers within its deadline")
        .unwrap();
    let during = store.get(b"runs/during").await.unwrap();
    match &result {
        Ok(outcome) => {
            assert_eq!(outcome.applied, [true]);
            assert_eq!(
                during,
                Some(b"d".to_vec()),
                "a commit that succeeded is stored"
            );
            assert_eq!(
                store.get(b"idem/during").await.unwrap(),
                Some(b"run-d".to_vec())
            );
        }
        Err(StoreError::Unavailable(_)) => {
            assert_eq!(during, None, "unavailable means not applied")
        }
        Err(StoreError::Indeterminate(_)) => {}
        Err(other) => panic!("unexpected error: {other}"),
    }
    eprintln!("commit across an etcd restart: {result:?}");
    assert_eq!(
        store.get(b"runs/before").await.unwrap(),
        Some(b"b".to_vec()),
        "what was committed before the kill survives it"
    );

    // With etcd down, cancelling the stop token ends a fenced commit's
    // retries at once.
    let mut client = store.client();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let campaign = client
        .campaign(store.absolute_key(b"leader"), "me", lease)
        .await
        .unwrap();
    let leader = campaign.leader().unwrap();
    let stop = CancellationToken::new();
    let fenced = store.fenced(
        Fence {
            key: leader.key().to_vec(),
            create_revision: leader.rev(),
        },
        stop.clone(),
    );
    etcd.kill();
    // A read fails once the client has seen the connection go; from then
    // on requests certainly are not sent.
    let read = store.get(b"runs/before").await.unwrap_err();
    assert!(matches!(read, StoreError::Unavailable(_)), "{read}");
    let commit =
        tokio::spawn(async move { fenced.commit(batch(vec![put("runs/late", "l")])).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled_at = std::time::Instant::now();
    stop.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), commit)
        .await
        .expect("a stopped commit answers promptly")
        .unwrap();
    eprintln!(
        "stopped commit answered {:?} after cancel: {result:?}",
        cancelled_at.elapsed()
    );
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "never sent, so certainly not applied: {result:?}"
    );
    etcd.restart().await;
    assert_eq!(
        store.get(b"runs/before").await.unwrap(),
        Some(b"b".to_vec())
    );
}
