//! Cluster mode, etcd faults: three `baton controller` replicas (lease TTL
//! 2 s) and two `baton worker`s of 4 slots on loopback, running 300 short
//! tasks (`retries: 3`) when etcd fails.
//!
//! - etcd (one member) is SIGKILLed mid-run, stays down 5 s and is started
//!   again on the same data dir and ports. The leader distrusts its lease
//!   and steps down; once etcd is back a leader is elected again (a higher
//!   term), no controller exits, and the run completes SUCCESS with every
//!   task's success recorded exactly once.
//! - One member of a 3-member etcd is SIGKILLed mid-run: a member that is
//!   *not* etcd's raft leader (found with etcd's status API), so a quorum
//!   stays and no raft election happens. The controllers have all three
//!   endpoints. The run completes SUCCESS and the Baton leader never
//!   changes: the same controller answers as leader with the same term
//!   throughout, and it never logs a step-down.

use std::fmt::Write as _;
use std::time::Duration;

use baton_tests::cluster::describe_status;
use baton_tests::pb::RunState;
use baton_tests::{ClusterBuilder, ClusterSandbox, run_is_final, task_count};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);
const TASKS: usize = 300;
/// Tasks done before etcd is hurt.
const DONE_BEFORE_FAULT: u32 = 60;
/// The run must end within this after the fault.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long etcd stays down.
const OUTAGE: Duration = Duration::from_secs(5);

fn dag() -> String {
    let mut yaml =
        String::from("id: steady\ndefault_args:\n  retries: 3\n  retry_delay: 200ms\ntasks:\n");
    for part in 0..TASKS {
        writeln!(yaml, "  - id: part{part:03}\n    command: sleep 0.05")
            .expect("writing to a String");
    }
    yaml
}

/// Starts two workers, registers and triggers the run, and waits until
/// [`DONE_BEFORE_FAULT`] tasks are done; returns the workers and the run id.
async fn start_run(
    cluster: &mut ClusterSandbox,
) -> (Vec<baton_tests::BatonProcess>, baton_tests::Api, String) {
    let addrs = cluster.addrs();
    let mut workers = Vec::new();
    for id in ["w1", "w2"] {
        workers.push(cluster.start_worker(id, &addrs, &["--slots", "4"]).await);
    }
    let mut api = cluster.api().await;
    api.register(&dag()).await;
    let run = api.trigger("steady").await;
    let before = api
        .poll_run(
            &run.run_id,
            &format!("{DONE_BEFORE_FAULT} tasks done"),
            WAIT,
            Duration::from_millis(50),
            |run| task_count(run, "success") >= DONE_BEFORE_FAULT || run_is_final(run),
        )
        .await;
    assert!(
        !run_is_final(&before),
        "the run ended before the fault: {before:?}"
    );
    (workers, api, run.run_id)
}

/// Waits for the run to end, then checks it succeeded with each task's
/// success recorded once.
async fn assert_run_succeeded_once(api: &mut baton_tests::Api, run_id: &str, context: &str) {
    let done = api
        .poll_run(
            run_id,
            "the run to end",
            RUN_TIMEOUT,
            Duration::from_millis(100),
            run_is_final,
        )
        .await;
    let view = api.get_run(run_id).await;
    assert_eq!(view.tasks.len(), TASKS);
    assert_eq!(
        view.state(),
        RunState::Success,
        "{context}: {done:?}\n{}",
        view.describe()
    );
    let check = api.check_each_task_succeeded_once(&view).await;
    eprintln!(
        "{context}: {} attempts, retried: {:?}",
        check.attempts, check.retried
    );
    check.assert_no_problems(context);
}

#[tokio::test]
async fn run_completes_after_etcd_is_down_for_five_seconds() {
    let Some(mut cluster) = ClusterBuilder::new("etcd-outage").build_and_start().await else {
        return;
    };
    let (mut workers, mut api, run_id) = start_run(&mut cluster).await;
    let (_, before) = cluster.leader(WAIT).await;

    let etcd = cluster.etcd().member(0);
    let etcd_pid = etcd.pid();
    etcd.kill();
    let killed_at = Instant::now();
    // The scenario: etcd stays down this long.
    tokio::time::sleep(OUTAGE).await;
    cluster.etcd().member(0).restart().await;
    let restarted_after = killed_at.elapsed();
    let (_, after) = cluster.leader(WAIT).await;
    eprintln!(
        "etcd (pid {etcd_pid}) down {restarted_after:?}; before: {}; after ({:?} after the kill): {}",
        describe_status(&before),
        killed_at.elapsed(),
        describe_status(&after)
    );
    assert!(
        after.leader_term > before.leader_term,
        "the leader kept term {} through a {OUTAGE:?} etcd outage (its lease cannot have been renewed)",
        before.leader_term
    );

    assert_run_succeeded_once(&mut api, &run_id, "after the etcd outage").await;
    for index in 0..cluster.controller_count() {
        let controller = cluster.controller(index);
        assert!(
            controller.try_exit_status().is_none(),
            "{} exited during the etcd outage\n{}",
            controller.name(),
            controller.log_tail()
        );
    }
    for worker in &mut workers {
        assert!(worker.try_exit_status().is_none(), "{}", worker.log_tail());
    }
}

#[tokio::test]
async fn run_goes_on_under_the_same_leader_when_one_of_three_etcd_members_dies() {
    let Some(mut cluster) = ClusterBuilder::new("etcd-member-killed")
        .with_etcd_members(3)
        .build_and_start()
        .await
    else {
        return;
    };
    let (_workers, mut api, run_id) = start_run(&mut cluster).await;
    let (leader, before) = cluster.leader(WAIT).await;

    let raft_leader = cluster.etcd().raft_leader(WAIT).await;
    let victim = (raft_leader + 1) % cluster.etcd().len();
    let member = cluster.etcd().member(victim);
    eprintln!(
        "killing etcd member {} (pid {}); raft leader is e{raft_leader}; Baton leader: {}",
        member.name(),
        member.pid(),
        describe_status(&before)
    );
    member.kill();

    // Until the run ends, the same controller answers as leader, same term.
    // A call that times out on a busy machine is not a change of leader; a
    // refusal (not the leader) or another term is.
    let mut answers = 0;
    let mut slow_answers = 0;
    let mut changes = Vec::new();
    let ended =
        baton_tests::poll::poll_until(RUN_TIMEOUT, Duration::from_millis(100), async || {
            match cluster.status_at(leader).await {
                Ok(status) if status.leader_term == before.leader_term => answers += 1,
                Ok(status) => changes.push(describe_status(&status)),
                Err(status) if status.code() == tonic::Code::DeadlineExceeded => slow_answers += 1,
                Err(status) => changes.push(format!(
                    "{} refused: {:?} {}",
                    before.leader_id,
                    status.code(),
                    status.message()
                )),
            }
            match api.try_get_run(&run_id, false).await {
                Ok(view) if run_is_final(&view.run) => Some(()),
                _ => None,
            }
        })
        .await;
    assert!(
        ended.is_some(),
        "the run did not end within {RUN_TIMEOUT:?}"
    );
    changes.truncate(10);
    eprintln!("the leader answered {answers} times as leader ({slow_answers} calls timed out)");

    let (_, after) = cluster.leader(WAIT).await;
    assert_eq!(
        (after.leader_id.as_str(), after.leader_term),
        (before.leader_id.as_str(), before.leader_term),
        "the Baton leader changed when an etcd follower member died: {}\nseen meanwhile: {changes:#?}",
        describe_status(&after)
    );
    assert!(
        changes.is_empty(),
        "the leader was interrupted ({answers} good answers, first changes): {changes:#?}"
    );
    let log = cluster.controller(leader).log_contents();
    assert!(
        !log.contains("stepped down"),
        "{}",
        cluster.controller(leader).log_tail()
    );
    assert_run_succeeded_once(&mut api, &run_id, "after an etcd member died").await;
}
