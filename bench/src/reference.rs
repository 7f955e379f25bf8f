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
//!
//! Keys and values are shaped like the controller's task records: a ~50-byte
//! key and a [`VALUE_BYTES`]-byte value.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_controller::store::embedded::EmbeddedStore;
use baton_controller::store::{Batch, Op, Store as _};
use etcd_client::{Client as EtcdClient, Txn, TxnOp};

use crate::procs::{Proc, free_port};
use crate::report::{Figure, Report, number};
use crate::stats::percentile;

pub const SCENARIO: &str = "reference";
pub const ETCD: &str = "/usr/bin/etcd";

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
    let client_port = free_port()?;
    let peer_port = free_port()?;
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let data_dir = work.join("etcd-data");
    let args: Vec<String> = [
        "--name",
        "bench",
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        &format!("bench={peer_url}"),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let mut process = Proc::spawn("etcd", Path::new(ETCD), &args, &[], &work.join("etcd.log"))?;
    let version = std::process::Command::new(ETCD)
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default();
    println!("  {version}, pid {}, {client_url}", process.pid());
    let client = connect_etcd(&mut process, &client_url).await?;
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
                kv.put(key(round, "single", index), value.clone(), None),
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
                workers.spawn(async move {
                    for txn_index in 0..TXNS_PER_LEVEL / concurrency {
                        let ops: Vec<TxnOp> = (0..TXN_PUTS)
                            .map(|index| {
                                let part = format!("txn-c{concurrency}-l{lane}");
                                TxnOp::put(
                                    key(round, &part, txn_index * TXN_PUTS + index),
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
            "  etcd #{}: put p50 {} ms, p99 {} ms; txns of {TXN_PUTS} puts: {} (best {} puts/s at {best_concurrency} in flight)",
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
    }
    process.stop().await;
    report.figures.push(Figure::new(
        SCENARIO,
        "etcd_put_p50_ms",
        "etcd: single put p50",
        "ms",
        p50,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "etcd_put_p99_ms",
        "etcd: single put p99",
        "ms",
        p99,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "etcd_txn_puts_per_s",
        format!("etcd: best puts/s in txns of {TXN_PUTS}"),
        "puts/s",
        best,
    ));
    Ok(())
}

async fn connect_etcd(process: &mut Proc, url: &str) -> anyhow::Result<etcd_client::KvClient> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        process.check_running()?;
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let mut client = EtcdClient::connect([url], None).await?;
            client.status().await?;
            anyhow::Ok(client.kv_client())
        })
        .await;
        if let Ok(Ok(kv)) = attempt {
            return Ok(kv);
        }
        if Instant::now() > deadline {
            bail!("etcd at {url} did not answer within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Comparison lines of a scenario's figure with the reference figures that
/// were measured.
pub fn compare(report: &Report, what: &str, value: f64, unit_is_rate: bool) -> Vec<String> {
    let mut lines = Vec::new();
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
