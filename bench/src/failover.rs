//! `failover`: how long a cluster stops dispatching when its leader dies
//! (SIGKILL) or is stopped (SIGTERM, graceful handover).
//!
//! Per lease TTL (5 s, the default, then 2 s), a fresh set of
//! [`CONTROLLERS`] controllers (`--lease-ttl`, keys under
//! `/bench-failover-ttl<N>s`) and [`WORKERS`] workers on the etcd cluster.
//! The DAG is `start` → `width` noops → `end`. Per repeat, two trials, each
//! on a whole cluster (3 controllers, every worker connected and idle):
//!
//! 1. Trigger a run; poll it on the leader (every [`POLL`]) until
//!    [`SIGNAL_AFTER_SUCCESSES`] tasks succeeded, so that the leader is
//!    dispatching with thousands of ready tasks left.
//! 2. Read the leader (id, term) from `GetClusterStatus`, open an etcd
//!    watch on the run's task records (`<prefix>/tasks/<run>/`) and wait
//!    until etcd confirms it, then send the signal to the leader's PID; the
//!    wall clock read just before `kill(2)` is **t0**.
//! 3. The watch decodes every `TaskRecord` written. A record written by a
//!    later term (`leader_term` > the old leader's) whose `leased_at` ≥ t0
//!    and whose attempt id was never seen in a record of the old term is a
//!    lease by the new leader. The smallest such `leased_at` (kept over the
//!    [`LINGER`] after the first one arrived) is the **first dispatch**: the
//!    new leader's clock when it leased the task; the `Assign` goes out as
//!    soon as the batch holding the lease is committed, which is when the
//!    watch sees it (also reported). Same machine, same clock as t0.
//! 4. Meanwhile the two surviving controllers are asked `GetClusterStatus`
//!    directly (no leader following) every [`POLL`]; the first to answer
//!    with a later term gives **new leader visible** (and its
//!    `leader_since`). For SIGTERM, the old leader's exit is timed too.
//! 5. The run is left to finish (it must end `success`, and its tasks have
//!    no retries: a handover must cost no task an attempt), the first lease is checked against
//!    `ListTaskAttempts` (the API must report the same `leased_at`), the
//!    attempts that did not succeed are counted (leases returned unstarted,
//!    which use no retry, apart from failed attempts), the run's task
//!    records are read back from etcd as a new leader's recovery reads them
//!    (timed), and the stopped controller is restarted with the same id,
//!    port and data dir before the next trial.
//!
//! Trial 1 sends SIGKILL, trial 2 SIGTERM.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_common::client::BatonClient;
use baton_common::pb::api::{self, GetClusterStatusRequest, GetClusterStatusResponse};
use baton_common::pb::records::TaskRecord;
use baton_common::time::{Micros, now_micros, timestamp_opt_to_micros};
use etcd_client::{EventType, GetOptions, WatchOptions};
use nix::sys::signal::Signal;
use prost::Message as _;

use crate::cluster::{CONTROLLERS, Cluster, DEFAULT_TTL, OnCluster, WORKERS};
use crate::etcd::EtcdCluster;
use crate::report::{Figure, Goal, Report, number};
use crate::runs::{fanout_spec, register, trigger, wait_success, within};

const DAG_ID: &str = "bench-failover";
const POLL: Duration = Duration::from_millis(5);
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Tasks that must have succeeded before the signal.
pub const SIGNAL_AFTER_SUCCESSES: u32 = 1_000;
/// Bound on waiting for the new leader's first lease and status.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the watch keeps reading after the first lease by the new
/// leader, in case a smaller `leased_at` arrives later.
const LINGER: Duration = Duration::from_millis(500);
/// Keys per range request of the etcd store's scans (`SCAN_PAGE` in
/// `controller/src/store/etcd.rs`), which a new leader's recovery uses.
const RECOVERY_PAGE: i64 = 1_000;
/// Target: SIGKILL → first dispatch ≤ TTL + this, at the default TTL.
pub const KILL_TARGET_OVER_TTL: Duration = Duration::from_secs(1);
/// Target: SIGTERM → first dispatch.
pub const TERM_TARGET: Duration = Duration::from_millis(500);

/// The lease TTLs measured, with their scenario names.
pub const TTLS: [(&str, Duration); 2] = [
    ("failover-ttl5s", DEFAULT_TTL),
    ("failover-ttl2s", Duration::from_secs(2)),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Kill,
    Term,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Kill => "SIGKILL",
            Mode::Term => "SIGTERM",
        }
    }

    fn signal(self) -> Signal {
        match self {
            Mode::Kill => Signal::SIGKILL,
            Mode::Term => Signal::SIGTERM,
        }
    }
}

/// The new leader's first lease, as the etcd watch saw it.
#[derive(Debug, Clone)]
struct Lease {
    task_id: String,
    attempt_id: String,
    leased_at: Micros,
    term: i64,
    /// When the watch delivered the record (this process's clock).
    seen_at: Micros,
    revision: i64,
}

/// What one trial measured, in µs since the epoch.
struct Handover {
    signal_at: Micros,
    lease: Lease,
    /// Leases by the new leader found in the linger window.
    leases_seen: usize,
    status_at: Micros,
    status: GetClusterStatusResponse,
    /// SIGTERM only: when the old leader was seen gone.
    exit_at: Option<Micros>,
    /// After the run: reading its task records from etcd, (ms, keys) with
    /// [`RECOVERY_PAGE`] keys per request and in one request.
    scan: ((f64, usize), (f64, usize)),
    /// Attempts of the run that did not succeed.
    extra: ExtraAttempts,
}

/// Attempts of a run beyond one success per task.
#[derive(Clone, Copy, Default)]
struct ExtraAttempts {
    /// Leases the new leader returned to `ready` because the worker never
    /// received them (lost with the old leader); they use no retry.
    returned: usize,
    /// Attempts that failed and used one of the task's retries.
    failed: usize,
}

/// Samples of one mode at one TTL.
#[derive(Default)]
struct Samples {
    lease: Vec<f64>,
    commit: Vec<f64>,
    status: Vec<f64>,
    since: Vec<f64>,
    exit: Vec<f64>,
    paged_scan: Vec<f64>,
    whole_scan: Vec<f64>,
    returned: Vec<f64>,
    failed: Vec<f64>,
}

/// Always [`CONTROLLERS`] controllers, whatever `on` asks for: a failover
/// needs a standby.
pub async fn run(on: OnCluster<'_>, width: usize, report: &mut Report) -> anyhow::Result<()> {
    let OnCluster {
        binary,
        work,
        etcd,
        slots,
        repeat,
        ..
    } = on;
    for (scenario, ttl) in TTLS {
        run_ttl(
            binary, work, etcd, repeat, slots, width, scenario, ttl, report,
        )
        .await
        .context(scenario)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_ttl(
    binary: &Path,
    work: &Path,
    etcd: &EtcdCluster,
    repeat: usize,
    slots: u32,
    width: usize,
    scenario: &'static str,
    ttl: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!();
    println!(
        "== {scenario}: lease TTL {} s; etcd {} members, {CONTROLLERS} controllers, {WORKERS} workers × --slots {slots}; start → {} noop → end; per repeat one SIGKILL and one SIGTERM of the leader after {} tasks succeeded; {repeat} repeats ==",
        ttl.as_secs(),
        etcd.members.len(),
        number(width as f64),
        number(f64::from(SIGNAL_AFTER_SUCCESSES)),
    );
    let prefix = format!("/bench-{scenario}");
    let mut cluster = Cluster::start(
        binary,
        &work.join(scenario),
        etcd,
        &prefix,
        ttl,
        CONTROLLERS,
        WORKERS,
        slots,
    )
    .await?;
    register(&mut cluster.client, fanout_spec(DAG_ID, width)).await?;
    let mut kill = Samples::default();
    let mut term = Samples::default();
    for round in 0..repeat {
        for mode in [Mode::Kill, Mode::Term] {
            let handover = trial(&mut cluster, etcd, &prefix, mode).await?;
            let seconds = |at: Micros| (at - handover.signal_at) as f64 / 1e6;
            let since = timestamp_opt_to_micros(handover.status.leader_since.as_ref());
            let samples = match mode {
                Mode::Kill => &mut kill,
                Mode::Term => &mut term,
            };
            samples.lease.push(seconds(handover.lease.leased_at));
            samples.commit.push(seconds(handover.lease.seen_at));
            samples.status.push(seconds(handover.status_at));
            samples.since.push(seconds(since));
            if let Some(exit) = handover.exit_at {
                samples.exit.push(seconds(exit));
            }
            let ((paged_ms, keys), (whole_ms, _)) = handover.scan;
            samples.paged_scan.push(paged_ms);
            samples.returned.push(handover.extra.returned as f64);
            samples.failed.push(handover.extra.failed as f64);
            samples.whole_scan.push(whole_ms);
            println!(
                "  #{} {}: new leader {} (term {}): leader_since +{} s, first lease +{} s ({} attempt …{}, revision {}, {} leases in the first {} ms), its commit seen +{} s, status answered +{} s{}",
                round + 1,
                mode.name(),
                handover.status.leader_id,
                handover.lease.term,
                number(seconds(since)),
                number(seconds(handover.lease.leased_at)),
                handover.lease.task_id,
                short(&handover.lease.attempt_id),
                handover.lease.revision,
                handover.leases_seen,
                LINGER.as_millis(),
                number(seconds(handover.lease.seen_at)),
                number(seconds(handover.status_at)),
                match handover.exit_at {
                    Some(exit) => format!(", old leader exited +{} s", number(seconds(exit))),
                    None => String::new(),
                }
            );
            println!(
                "    after the run: {} leases returned unstarted, {} attempts failed; etcd range of its {keys} task records {} ms ({RECOVERY_PAGE} per request, as recovery reads them), {} ms in one request",
                handover.extra.returned,
                handover.extra.failed,
                number(paged_ms),
                number(whole_ms)
            );
        }
    }
    cluster.stop().await;
    let ttl_s = ttl.as_secs();
    let push = |report: &mut Report, key, label: String, samples: Vec<f64>, goal: Option<Goal>| {
        let mut figure = Figure::new(scenario, key, label, "s", samples);
        if let Some(goal) = goal {
            figure = figure.goal(goal);
        }
        report.figures.push(figure);
    };
    let kill_goal =
        (ttl == DEFAULT_TTL).then(|| Goal::AtMost((ttl + KILL_TARGET_OVER_TTL).as_secs_f64()));
    push(
        report,
        "kill_first_lease_s",
        format!("SIGKILL → first lease by new leader (leased_at), TTL {ttl_s} s"),
        kill.lease,
        kill_goal,
    );
    push(
        report,
        "kill_lease_committed_s",
        "SIGKILL → that lease committed (etcd watch)".into(),
        kill.commit,
        None,
    );
    push(
        report,
        "kill_leader_since_s",
        "SIGKILL → new leader's leader_since".into(),
        kill.since,
        None,
    );
    push(
        report,
        "kill_status_s",
        "SIGKILL → new leader answers GetClusterStatus".into(),
        kill.status,
        None,
    );
    push(
        report,
        "term_first_lease_s",
        format!("SIGTERM → first lease by new leader (leased_at), TTL {ttl_s} s"),
        term.lease,
        Some(Goal::AtMost(TERM_TARGET.as_secs_f64())),
    );
    push(
        report,
        "term_lease_committed_s",
        "SIGTERM → that lease committed (etcd watch)".into(),
        term.commit,
        None,
    );
    push(
        report,
        "term_leader_since_s",
        "SIGTERM → new leader's leader_since".into(),
        term.since,
        None,
    );
    push(
        report,
        "term_status_s",
        "SIGTERM → new leader answers GetClusterStatus".into(),
        term.status,
        None,
    );
    push(
        report,
        "term_exit_s",
        "SIGTERM → old leader exited".into(),
        term.exit,
        None,
    );
    for (key, label, samples) in [
        (
            "kill_returned_leases",
            "SIGKILL: leases returned unstarted (no retry used)",
            kill.returned,
        ),
        (
            "kill_failed_attempts",
            "SIGKILL: attempts failed (a retry used)",
            kill.failed,
        ),
        (
            "term_returned_leases",
            "SIGTERM: leases returned unstarted (no retry used)",
            term.returned,
        ),
        (
            "term_failed_attempts",
            "SIGTERM: attempts failed (a retry used)",
            term.failed,
        ),
    ] {
        report
            .figures
            .push(Figure::new(scenario, key, label, "tasks", samples));
    }
    let mut scans = kill.paged_scan;
    scans.extend(term.paged_scan);
    let mut wholes = kill.whole_scan;
    wholes.extend(term.whole_scan);
    report.figures.push(Figure::new(
        scenario,
        "scan_paged_ms",
        format!("etcd: read the run's task records, {RECOVERY_PAGE} per request"),
        "ms",
        scans,
    ));
    report.figures.push(Figure::new(
        scenario,
        "scan_whole_ms",
        "etcd: read the run's task records in one request",
        "ms",
        wholes,
    ));
    if ttl != DEFAULT_TTL {
        report.notes.push(format!(
            "{scenario}: SIGKILL → first lease is reported, not judged (TTL + 1 s would be {} s)",
            ttl_s + 1
        ));
    }
    Ok(())
}

/// The random end of a UUIDv7 (its start is a timestamp).
fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(12)..).unwrap_or(id)
}

/// One trial: trigger, signal the leader mid-run, measure the handover,
/// let the run finish, restart the stopped controller.
async fn trial(
    cluster: &mut Cluster,
    etcd: &EtcdCluster,
    prefix: &str,
    mode: Mode,
) -> anyhow::Result<Handover> {
    let status = cluster.wait_whole().await?;
    let mut leader_client = BatonClient::connect(&status.leader_address).await?;
    let run_id = trigger(&mut leader_client, DAG_ID).await?;
    wait_successes(&mut leader_client, &run_id, SIGNAL_AFTER_SUCCESSES).await?;
    // The leader right before the signal.
    let before = within(
        "GetClusterStatus",
        leader_client
            .cluster
            .get_cluster_status(GetClusterStatusRequest {}),
    )
    .await?
    .into_inner();
    let old = cluster.index_of(&before.leader_id)?;
    let old_term = before.leader_term;
    let mut survivors = Vec::new();
    for index in 0..cluster.controllers.len() {
        if index != old {
            survivors.push(cluster.direct_status_client(index).await?);
        }
    }
    let watch_key = format!("{prefix}/tasks/{run_id}/");
    let mut watch_client = etcd.client.clone();
    let mut stream = within(
        "etcd watch",
        watch_client.watch(watch_key.clone(), Some(WatchOptions::new().with_prefix())),
    )
    .await?;
    // Wait for etcd to confirm the watch, so no write after the signal is
    // missed; events that come first are kept for the consumer below.
    let mut early = Vec::new();
    loop {
        let message = within("etcd watch", stream.message())
            .await?
            .context("the etcd watch ended")?;
        let created = message.created();
        early.push(message);
        if created {
            break;
        }
    }
    let process = cluster.process_of(old)?;
    let signal_at = process.signal(mode.signal())?;
    let deadline = tokio::time::Instant::now() + HANDOVER_TIMEOUT;

    let watch = async {
        let mut old_attempts: HashSet<String> = HashSet::new();
        let mut first: Option<Lease> = None;
        let mut count = 0usize;
        let mut linger_until = deadline;
        let mut pending = early.into_iter();
        loop {
            let message = match pending.next() {
                Some(message) => message,
                None => match tokio::time::timeout_at(linger_until, stream.message()).await {
                    Ok(message) => message?.context("the etcd watch ended")?,
                    Err(_) => break,
                },
            };
            let seen_at = now_micros();
            for event in message.events() {
                if event.event_type() != EventType::Put {
                    continue;
                }
                let Some(kv) = event.kv() else { continue };
                let Ok(record) = TaskRecord::decode(kv.value()) else {
                    continue;
                };
                if record.leader_term <= old_term {
                    old_attempts.insert(record.attempt_id.clone());
                    continue;
                }
                let leased_at = timestamp_opt_to_micros(record.leased_at.as_ref());
                if leased_at < signal_at || old_attempts.contains(&record.attempt_id) {
                    continue;
                }
                count += 1;
                if first
                    .as_ref()
                    .is_none_or(|lease| leased_at < lease.leased_at)
                {
                    first = Some(Lease {
                        task_id: record.task_id.clone(),
                        attempt_id: record.attempt_id.clone(),
                        leased_at,
                        term: record.leader_term,
                        seen_at,
                        revision: kv.mod_revision(),
                    });
                }
            }
            if first.is_some() && linger_until == deadline {
                linger_until = tokio::time::Instant::now() + LINGER;
            }
        }
        anyhow::Ok((first, count))
    };
    let poll_status = async {
        let mut next = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline {
            for client in survivors.iter_mut() {
                let answer = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.get_cluster_status(GetClusterStatusRequest {}),
                )
                .await;
                if let Ok(Ok(response)) = answer {
                    let seen = now_micros();
                    let response = response.into_inner();
                    if response.leader_term > old_term {
                        return Some((seen, response));
                    }
                }
            }
            next += POLL;
            tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
        }
        None
    };
    let exit = async {
        if mode == Mode::Term {
            let gone = process.wait_exit(HANDOVER_TIMEOUT).await?;
            let elapsed = gone.elapsed().as_micros() as Micros;
            Some(now_micros() - elapsed)
        } else {
            None
        }
    };
    let (watched, seen, exit_at) = tokio::join!(watch, poll_status, exit);
    let (first, leases_seen) = watched?;
    let lease = first.with_context(|| {
        format!(
            "no lease by a new leader within {HANDOVER_TIMEOUT:?} of the {}",
            mode.name()
        )
    })?;
    let (status_at, status) = seen.with_context(|| {
        format!(
            "no new leader answered GetClusterStatus within {HANDOVER_TIMEOUT:?} of the {}",
            mode.name()
        )
    })?;
    if mode == Mode::Term && exit_at.is_none() {
        bail!("the old leader did not exit within {HANDOVER_TIMEOUT:?} of SIGTERM");
    }
    if status.leader_term != lease.term {
        bail!(
            "the first lease after the {} is of term {}, but the leader answering is of term {} (more than one handover?)",
            mode.name(),
            lease.term,
            status.leader_term
        );
    }
    // The run must still succeed; the old leader's process is gone, so it
    // is not checked while waiting.
    cluster.reap(old).await;
    let mut client = cluster.client.clone();
    wait_success(
        &mut client,
        cluster,
        &run_id,
        Duration::from_millis(20),
        RUN_TIMEOUT,
        || {},
    )
    .await?;
    check_with_api(&mut client, &run_id, &lease).await?;
    let extra = count_extra_attempts(&mut client, &run_id).await?;
    // What a new leader's recovery reads: this run's task records.
    let records = format!("{prefix}/tasks/{run_id}/");
    let paged = time_scan(etcd, &records, RECOVERY_PAGE).await?;
    let whole = time_scan(etcd, &records, 0).await?;
    cluster.restart_controller(old)?;
    Ok(Handover {
        signal_at,
        lease,
        leases_seen,
        status_at,
        status,
        exit_at,
        scan: (paged, whole),
        extra,
    })
}

/// Reads every key under `prefix` at one revision, `page` keys per range
/// request (0: all in one), as the etcd store's scan does; returns the
/// time taken (ms) and the keys read.
async fn time_scan(etcd: &EtcdCluster, prefix: &str, page: i64) -> anyhow::Result<(f64, usize)> {
    let mut client = etcd.client.clone();
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut start = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut keys = 0;
    let started = Instant::now();
    for _ in 0..100_000 {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(page)
            .with_revision(revision);
        let response = within("etcd range", client.get(start.clone(), Some(options))).await?;
        if revision == 0 {
            revision = response.header().map_or(0, |header| header.revision());
        }
        keys += response.kvs().len();
        let Some(last) = response.kvs().last() else {
            break;
        };
        if !response.more() {
            break;
        }
        start = last.key().to_vec();
        start.push(0);
    }
    Ok((started.elapsed().as_secs_f64() * 1e3, keys))
}

/// Polls `GetRun` on the leader until `count` tasks succeeded; fails if the
/// run ends first (the DAG is then too small to have work left).
async fn wait_successes(client: &mut BatonClient, run_id: &str, count: u32) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < RUN_TIMEOUT {
        let run = within(
            "GetRun",
            client.runs.get_run(api::GetRunRequest {
                run_id: run_id.to_string(),
                include_tasks: false,
            }),
        )
        .await?
        .into_inner()
        .run
        .context("GetRun returned no run")?;
        if baton_common::states::run_state_is_final(
            api::RunState::try_from(run.state).unwrap_or(api::RunState::Unspecified),
        ) {
            bail!("run {run_id} ended before {count} tasks succeeded; use a wider fan-out");
        }
        if run.task_counts.get("success").copied().unwrap_or(0) >= count {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("run {run_id}: {count} tasks did not succeed within {RUN_TIMEOUT:?}")
}

/// The API's record of the attempt must carry the `leased_at` the watch saw.
async fn check_with_api(
    client: &mut BatonClient,
    run_id: &str,
    lease: &Lease,
) -> anyhow::Result<()> {
    let attempts = within(
        "ListTaskAttempts",
        client
            .runs
            .list_task_attempts(api::ListTaskAttemptsRequest {
                run_id: run_id.to_string(),
                task_id: lease.task_id.clone(),
            }),
    )
    .await?
    .into_inner()
    .attempts;
    let attempt = attempts
        .iter()
        .find(|attempt| attempt.attempt_id == lease.attempt_id)
        .with_context(|| {
            format!(
                "ListTaskAttempts({run_id}, {}) has no attempt {}",
                lease.task_id, lease.attempt_id
            )
        })?;
    let leased_at = timestamp_opt_to_micros(attempt.leased_at.as_ref());
    if leased_at != lease.leased_at {
        bail!(
            "ListTaskAttempts says attempt {} of {} was leased at {leased_at} µs, the etcd watch saw {} µs",
            lease.attempt_id,
            lease.task_id,
            lease.leased_at
        );
    }
    Ok(())
}

/// The run's attempts beyond one success per task, by kind: a lease the
/// new leader returned because its worker never received it (the
/// controller records it as `worker_lost` with "never received the
/// assignment", and it uses no retry), or a failed attempt.
async fn count_extra_attempts(
    client: &mut BatonClient,
    run_id: &str,
) -> anyhow::Result<ExtraAttempts> {
    let response = within(
        "GetRun with tasks",
        client.runs.get_run(api::GetRunRequest {
            run_id: run_id.to_string(),
            include_tasks: true,
        }),
    )
    .await?
    .into_inner();
    let mut extra = ExtraAttempts::default();
    for task in response.tasks.iter().filter(|task| task.attempt > 1) {
        let attempts = within(
            "ListTaskAttempts",
            client
                .runs
                .list_task_attempts(api::ListTaskAttemptsRequest {
                    run_id: run_id.to_string(),
                    task_id: task.task_id.clone(),
                }),
        )
        .await?
        .into_inner()
        .attempts;
        for attempt in attempts {
            if attempt.outcome == api::AttemptOutcome::Succeeded as i32 {
                continue;
            }
            if attempt.error.contains("never received the assignment") {
                extra.returned += 1;
            } else {
                extra.failed += 1;
            }
        }
    }
    Ok(extra)
}
