//! `reference`: what the stores themselves cost on this machine, measured in
//! the same run as the scenarios so that their figures can be read as
//! multiples of it.
//!
//! - Embedded store ([`EmbeddedStore`], redb with immediate durability, on
//!   the temp directory's disk): latency of `commit` of a one-put batch over
//!   [`COMMITS`] sequential commits (p50, p99), and puts/s when committing
//!   [`BATCHES`] sequential batches of [`BATCH_PUTS`] puts.
//! - etcd (`/usr/bin/etcd`, when installed), one member on loopback ports
//!   with a temp data dir: latency of [`COMMITS`] sequential single puts
//!   (p50, p99), and the best puts/s over [`TXN_CONCURRENCY`] of
//!   transactions of [`TXN_PUTS`] puts each (etcd's default `max-txn-ops`).
//! - the same on the etcd cluster (3 members by default) that the cluster
//!   scenarios then run on ([`cluster`]), through a client of every member.
//!
//! Keys and values are shaped like the controller's task records: a ~50-byte
//! key and a [`VALUE_BYTES`]-byte value.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use baton_controller::store::embedded::EmbeddedStore;
use baton_controller::store::{Batch, Op, Store as _};
use etcd_client::{CompactionOptions, Compare, CompareOp, KvClient, Txn, TxnOp};

use crate::etcd::{self, ETCD, EtcdCluster};
use crate::report::{Figure, Report, number};
use crate::stats::percentile;

pub const SCENARIO: &str = "reference";
/// Keys of the figures measured on the cluster the cluster scenarios use.
pub const ETCD_CLUSTER_PUT_P50: &str = "etcd_cluster_put_p50_ms";
pub const ETCD_CLUSTER_TXN_RATE: &str = "etcd_cluster_txn_puts_per_s";
pub const ETCD_CLUSTER_FENCED_P50: &str = "etcd_cluster_fenced_txn_p50_ms";
/// Puts of the fenced transaction ([`measure_fenced`]).
const FENCED_PUTS: usize = 4;

const COMMITS: usize = 1_000;
const BATCHES: usize = 20;
const BATCH_PUTS: usize = 1_000;
const TXN_PUTS: usize = 128;
/// Transactions per concurrency level and repeat.
const TXNS_PER_LEVEL: usize = 512;
const TXN_CONCURRENCY: [usize; 4] = [1, 4, 16, 64];
const VALUE_BYTES: usize = 160;
/// Bound on any one store request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A key shaped like a task record's. etcd rounds reuse the same keys (a
/// put of an existing key costs etcd what a new one does: a new revision),
/// so that the store holds ~66 k keys however many rounds ran.
fn key(repeat: usize, part: &str, index: usize) -> Vec<u8> {
    format!("runs/0190b7a2-bench-{repeat:02}-{part}/t/task_{index:07}/state").into_bytes()
}

fn value() -> Vec<u8> {
    (0..VALUE_BYTES).map(|index| (index % 251) as u8).collect()
}

pub async fn run(work: &Path, repeat: usize, report: &mut Report) -> anyhow::Result<()> {
    println!("== reference: the stores' own cost on this machine ==");
    embedded(work, repeat, report).await?;
    if Path::new(ETCD).exists() {
        etcd(work, repeat, report).await?;
    } else {
        let note =
            format!("etcd reference skipped: {ETCD} not found (Debian package `etcd-server`)");
        println!("{note}");
        report.notes.push(note);
    }
    Ok(())
}

async fn embedded(work: &Path, repeat: usize, report: &mut Report) -> anyhow::Result<()> {
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut rate = Vec::new();
    let value = value();
    for round in 0..repeat {
        // The controller's default cache size, so the reference matches it.
        let cache_bytes = baton_controller::ControllerConfig::new(work).store_cache_bytes;
        let store =
            EmbeddedStore::open(&work.join(format!("reference-{round}.redb")), cache_bytes)?;
        let mut latencies = Vec::with_capacity(COMMITS);
        for index in 0..COMMITS {
            let batch = Batch {
                ops: vec![Op::put(key(round, "single", index), value.clone())],
                ..Batch::default()
            };
            let started = Instant::now();
            tokio::time::timeout(REQUEST_TIMEOUT, store.commit(batch))
                .await
                .context("embedded commit timed out")??;
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let started = Instant::now();
        for batch_index in 0..BATCHES {
            let ops = (0..BATCH_PUTS)
                .map(|index| {
                    Op::put(
                        key(round, "batch", batch_index * BATCH_PUTS + index),
                        value.clone(),
                    )
                })
                .collect();
            tokio::time::timeout(
                REQUEST_TIMEOUT,
                store.commit(Batch {
                    ops,
                    ..Batch::default()
                }),
            )
            .await
            .context("embedded commit timed out")??;
        }
        let puts_per_s = (BATCHES * BATCH_PUTS) as f64 / started.elapsed().as_secs_f64();
        let (round_p50, round_p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
        println!(
            "  embedded #{}: 1-put commit p50 {} ms, p99 {} ms; batches of {BATCH_PUTS}: {} puts/s",
            round + 1,
            number(round_p50),
            number(round_p99),
            number(puts_per_s)
        );
        p50.push(round_p50);
        p99.push(round_p99);
        rate.push(puts_per_s);
    }
    report.figures.push(Figure::new(
        SCENARIO,
        "embedded_commit_p50_ms",
        "embedded: 1-put commit p50",
        "ms",
        p50,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "embedded_commit_p99_ms",
        "embedded: 1-put commit p99",
        "ms",
        p99,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "embedded_batch_puts_per_s",
        format!("embedded: puts/s in batches of {BATCH_PUTS}"),
        "puts/s",
        rate,
    ));
    Ok(())
}

async fn etcd(work: &Path, repeat: usize, report: &mut Report) -> anyhow::Result<()> {
    let mut cluster = EtcdCluster::start(work, "etcd", 1).await?;
    println!("  {}, {}", etcd::version(), cluster.describe());
    let measured = measure_etcd(&cluster.client.kv_client(), repeat, "etcd").await;
    cluster.stop().await;
    let (p50, p99, best) = measured?;
    push_etcd_figures(report, "etcd", "etcd", p50, p99, best);
    Ok(())
}

/// The same measurement on the etcd cluster the cluster scenarios then use,
/// through a client of every member (as the controllers connect). The
/// history is compacted afterwards.
pub async fn cluster(etcd: &EtcdCluster, repeat: usize, report: &mut Report) -> anyhow::Result<()> {
    let members = etcd.members.len();
    println!(
        "== reference: etcd cluster of {members} member{} ({}) ==",
        if members == 1 { "" } else { "s" },
        etcd.describe()
    );
    let (p50, p99, best) = measure_etcd(&etcd.client.kv_client(), repeat, "cluster").await?;
    let label = format!("etcd, {members} members");
    push_etcd_figures(report, "etcd_cluster", &label, p50, p99, best);
    let fenced = measure_fenced(&etcd.client.kv_client(), repeat).await?;
    report.figures.push(Figure::new(
        SCENARIO,
        ETCD_CLUSTER_FENCED_P50,
        format!("{label}: fenced txn (1 compare + {FENCED_PUTS} puts) p50"),
        "ms",
        fenced,
    ));
    // The measurement compacted after each of its rounds; the fenced one
    // wrote more revisions of its ~66 k keys since. Compacting drops them
    // so that the scenarios start on a store of about that size, not on its
    // history. The keys stay (outside the scenarios' prefixes).
    let started = Instant::now();
    let mut client = etcd.client.clone();
    let revision = within_request(client.status())
        .await?
        .header()
        .map_or(0, |header| header.revision());
    compact_history(&mut client.kv_client(), revision).await?;
    println!(
        "  compacted etcd at revision {revision} in {} s",
        number(started.elapsed().as_secs_f64())
    );
    Ok(())
}

/// Per round, p50 of [`COMMITS`] sequential transactions shaped like a
/// leader's batch of one chain hop: a compare on a key's create revision
/// (the leader's fence) and [`FENCED_PUTS`] puts (the ended task, its
/// attempt, the next task's lease, the run record).
async fn measure_fenced(client: &KvClient, repeat: usize) -> anyhow::Result<Vec<f64>> {
    let mut kv = client.clone();
    let fence_key = b"bench-fence".to_vec();
    within_request(kv.put(fence_key.clone(), b"leader".to_vec(), None)).await?;
    let fence = within_request(kv.get(fence_key.clone(), None))
        .await?
        .kvs()
        .first()
        .map_or(0, |pair| pair.create_revision());
    let value = value();
    let mut p50 = Vec::new();
    for round in 0..repeat {
        let mut latencies = Vec::with_capacity(COMMITS);
        for index in 0..COMMITS {
            let ops: Vec<TxnOp> = (0..FENCED_PUTS)
                .map(|part| {
                    TxnOp::put(
                        key(0, &format!("fenced-{part}"), index),
                        value.clone(),
                        None,
                    )
                })
                .collect();
            let txn = Txn::new()
                .when([Compare::create_revision(
                    fence_key.clone(),
                    CompareOp::Equal,
                    fence,
                )])
                .and_then(ops);
            let started = Instant::now();
            let response = within_request(kv.txn(txn)).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
            if !response.succeeded() {
                anyhow::bail!("the fenced transaction's compare failed");
            }
        }
        let round_p50 = percentile(&latencies, 50.0);
        println!(
            "  fenced #{}: txn of 1 compare + {FENCED_PUTS} puts p50 {} ms, p99 {} ms",
            round + 1,
            number(round_p50),
            number(percentile(&latencies, 99.0))
        );
        p50.push(round_p50);
    }
    Ok(p50)
}

/// Latencies (ms) of [`COMMITS`] sequential single puts, as in the
/// reference, under keys of their own (`tag`).
pub async fn put_latencies(client: &KvClient, tag: &str) -> anyhow::Result<Vec<f64>> {
    let mut kv = client.clone();
    let value = value();
    let mut latencies = Vec::with_capacity(COMMITS);
    for index in 0..COMMITS {
        let started = Instant::now();
        within_request(kv.put(key(0, tag, index), value.clone(), None)).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(latencies)
}

/// An etcd request, bounded by 120 s.
async fn within_request<T>(
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(Duration::from_secs(120), request).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("an etcd request did not answer within 120 s"),
    }
}

fn push_etcd_figures(
    report: &mut Report,
    tag: &str,
    label: &str,
    p50: Vec<f64>,
    p99: Vec<f64>,
    best: Vec<f64>,
) {
    let (p50_key, p99_key, rate_key) = match tag {
        "etcd" => ("etcd_put_p50_ms", "etcd_put_p99_ms", "etcd_txn_puts_per_s"),
        _ => (
            ETCD_CLUSTER_PUT_P50,
            "etcd_cluster_put_p99_ms",
            ETCD_CLUSTER_TXN_RATE,
        ),
    };
    report.figures.push(Figure::new(
        SCENARIO,
        p50_key,
        format!("{label}: single put p50"),
        "ms",
        p50,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        p99_key,
        format!("{label}: single put p99"),
        "ms",
        p99,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        rate_key,
        format!("{label}: best puts/s in txns of {TXN_PUTS}"),
        "puts/s",
        best,
    ));
}

/// Per round: p50 and p99 of [`COMMITS`] sequential single puts, and the
/// best puts/s over the [`TXN_CONCURRENCY`] levels of transactions of
/// [`TXN_PUTS`] puts.
async fn measure_etcd(
    client: &KvClient,
    repeat: usize,
    tag: &str,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let value = value();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut best = Vec::new();
    for round in 0..repeat {
        let mut kv = client.clone();
        let mut latencies = Vec::with_capacity(COMMITS);
        for index in 0..COMMITS {
            let started = Instant::now();
            tokio::time::timeout(
                REQUEST_TIMEOUT,
                kv.put(
                    key(round, &format!("{tag}-single"), index),
                    value.clone(),
                    None,
                ),
            )
            .await
            .context("etcd put timed out")??;
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let mut rates = Vec::new();
        for &concurrency in &TXN_CONCURRENCY {
            let started = Instant::now();
            let mut workers = tokio::task::JoinSet::new();
            for lane in 0..concurrency {
                let mut kv = client.clone();
                let value = value.clone();
                let part = format!("{tag}-txn-l{lane}");
                workers.spawn(async move {
                    for txn_index in 0..TXNS_PER_LEVEL / concurrency {
                        let ops: Vec<TxnOp> = (0..TXN_PUTS)
                            .map(|index| {
                                TxnOp::put(
                                    key(0, &part, txn_index * TXN_PUTS + index),
                                    value.clone(),
                                    None,
                                )
                            })
                            .collect();
                        tokio::time::timeout(REQUEST_TIMEOUT, kv.txn(Txn::new().and_then(ops)))
                            .await
                            .context("etcd txn timed out")??;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(result) = workers.join_next().await {
                result??;
            }
            let puts = (TXNS_PER_LEVEL / concurrency) * concurrency * TXN_PUTS;
            rates.push((concurrency, puts as f64 / started.elapsed().as_secs_f64()));
        }
        let (best_concurrency, best_rate) = rates
            .iter()
            .copied()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("at least one level");
        let (round_p50, round_p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
        println!(
            "  {tag} #{}: put p50 {} ms, p99 {} ms; txns of {TXN_PUTS} puts: {} (best {} puts/s at {best_concurrency} in flight)",
            round + 1,
            number(round_p50),
            number(round_p99),
            rates
                .iter()
                .map(|(concurrency, rate)| format!(
                    "{concurrency} in flight {} puts/s",
                    number(*rate)
                ))
                .collect::<Vec<_>>()
                .join(", "),
            number(best_rate)
        );
        p50.push(round_p50);
        p99.push(round_p99);
        best.push(best_rate);
        // Each round writes ~260 k revisions: without compacting them, a
        // long series (40 rounds) fills etcd's 2 GiB backend quota and
        // the next write fails with "database space exceeded". Compacted
        // between rounds, outside what is timed, the space is reused.
        let revision = within_request(kv.get(key(round, &format!("{tag}-single"), 0), None))
            .await?
            .header()
            .map_or(0, |header| header.revision());
        compact_history(&mut kv, revision).await?;
    }
    Ok((p50, p99, best))
}

/// Drops etcd's history up to `revision` (none at 0) and frees its space.
async fn compact_history(kv: &mut KvClient, revision: i64) -> anyhow::Result<()> {
    if revision > 0 {
        within_request(kv.compact(revision, Some(CompactionOptions::new().with_physical())))
            .await?;
    }
    Ok(())
}

/// Comparison lines of a scenario's figure with the reference figures that
/// were measured: the embedded store and single-member etcd.
pub fn compare(report: &Report, what: &str, value: f64, unit_is_rate: bool) -> Vec<String> {
    let pairs: &[(&str, &str)] = if unit_is_rate {
        &[
            ("embedded_batch_puts_per_s", "embedded batched puts/s"),
            ("etcd_txn_puts_per_s", "etcd batched-txn puts/s"),
        ]
    } else {
        &[
            ("embedded_commit_p50_ms", "embedded commit p50"),
            ("etcd_put_p50_ms", "etcd put p50"),
        ]
    };
    compare_with(report, what, value, pairs)
}

/// Comparison lines of a cluster scenario's figure with the reference
/// measured on the same etcd cluster.
pub fn compare_cluster(report: &Report, what: &str, value: f64, unit_is_rate: bool) -> Vec<String> {
    let pairs: &[(&str, &str)] = if unit_is_rate {
        &[(ETCD_CLUSTER_TXN_RATE, "etcd-cluster batched-txn puts/s")]
    } else {
        &[
            (ETCD_CLUSTER_PUT_P50, "etcd-cluster put p50"),
            (ETCD_CLUSTER_FENCED_P50, "etcd-cluster fenced-txn p50"),
        ]
    };
    compare_with(report, what, value, pairs)
}

fn compare_with(report: &Report, what: &str, value: f64, pairs: &[(&str, &str)]) -> Vec<String> {
    let mut lines = Vec::new();
    for (key, name) in pairs {
        if let Some(reference) = report.median(SCENARIO, key) {
            lines.push(format!(
                "{what} = {} × {name} ({})",
                crate::report::ratio(value / reference),
                number(reference)
            ));
        }
    }
    lines
}
