//! Cluster mode, the quick scenarios: a real etcd, three `baton controller`
//! replicas (lease TTL 2 s) and `baton worker`s on loopback.
//!
//! - Graceful handover: SIGTERM to the leader while a run is in progress.
//!   It exits 0 (after resigning), and a follower leads within 1 s of the
//!   signal, measured by polling `GetClusterStatus` on the followers every
//!   20 ms until one answers it as leader with a higher term. The run
//!   completes under the new leader, each task's success recorded once.
//! - A worker given only a follower's address is redirected to the leader:
//!   the leader lists it as connected, and it runs the task of the queue
//!   only it serves.
//!
//! The other cluster scenarios (failover by SIGKILL, a deposed leader's
//! writes, etcd faults) are in `cluster_failover.rs` and
//! `cluster_etcd_faults.rs`. Without etcd these tests are skipped, or fail
//! under `CI=true` (`baton_tests::etcd::etcd_binary`).

use std::fmt::Write as _;
use std::time::Duration;

use baton_tests::cluster::describe_status;
use baton_tests::pb::RunState;
use baton_tests::{ClusterBuilder, run_is_final, task_count};
use nix::sys::signal::Signal;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(60);
/// The promise of a graceful handover.
const HANDOVER_BOUND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn sigterm_hands_leadership_to_a_follower_within_a_second() {
    let Some(mut cluster) = ClusterBuilder::new("graceful-handover")
        .build_and_start()
        .await
    else {
        return;
    };
    let addrs = cluster.addrs();
    let _worker = cluster.start_worker("w1", &addrs, &["--slots", "4"]).await;
    let mut api = cluster.api().await;
    api.register(&handover_dag()).await;
    let (leader, before) = cluster.leader(WAIT).await;
    eprintln!("before: {}", describe_status(&before));
    let run = api.trigger("handover").await;
    api.poll_run(
        &run.run_id,
        "a task done",
        WAIT,
        Duration::from_millis(50),
        |run| task_count(run, "success") >= 1,
    )
    .await;

    let mut old_leader = cluster.take_controller(leader);
    let followers = cluster.others(leader);
    let signalled = Instant::now();
    old_leader.signal(Signal::SIGTERM);
    let after = cluster
        .wait_for_status(
            "a follower to lead after SIGTERM to the leader",
            &followers,
            Duration::from_secs(10),
            Duration::from_millis(20),
            |status| status.leader_term > before.leader_term,
        )
        .await;
    let handover = signalled.elapsed();
    eprintln!(
        "handover took {handover:?}; after: {}",
        describe_status(&after)
    );
    let exit = old_leader.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "{exit}\n{}", old_leader.log_tail());
    assert!(
        old_leader.log_contents().contains("resigned leadership"),
        "{}",
        old_leader.log_tail()
    );
    assert_ne!(after.leader_id, before.leader_id);
    assert!(
        handover <= HANDOVER_BOUND,
        "a follower led {handover:?} after SIGTERM to the leader (bound {HANDOVER_BOUND:?})\n{}",
        cluster.logs_tail()
    );

    let done = api
        .poll_run(
            &run.run_id,
            "the run to end",
            WAIT,
            Duration::from_millis(100),
            run_is_final,
        )
        .await;
    let view = api.get_run(&run.run_id).await;
    assert_eq!(
        view.state(),
        RunState::Success,
        "{done:?}\n{}",
        view.describe()
    );
    api.check_each_task_succeeded_once(&view)
        .await
        .assert_no_problems("after a graceful handover");
}

#[tokio::test]
async fn a_worker_given_only_a_follower_is_redirected_to_the_leader() {
    let Some(mut cluster) = ClusterBuilder::new("worker-redirect")
        .build_and_start()
        .await
    else {
        return;
    };
    let (leader, _) = cluster.leader(WAIT).await;
    let follower = cluster.others(leader)[0];
    let follower_addr = cluster.controller_addr(follower);
    let leader_addr = cluster.controller_addr(leader);
    let mut worker = cluster
        .start_worker(
            "special-worker",
            &follower_addr,
            &["--slots", "1", "--queue", "special"],
        )
        .await;
    assert!(
        worker
            .log_contents()
            .contains(&format!("redirected to the leader at {leader_addr}")),
        "{}",
        worker.log_tail()
    );
    let status = cluster
        .wait_for_status(
            "the leader to list special-worker as connected",
            &[leader],
            WAIT,
            Duration::from_millis(50),
            |status| {
                status.workers.iter().any(|worker| {
                    worker.worker_id == "special-worker"
                        && worker.connected
                        && worker.queues.iter().any(|queue| queue == "special")
                })
            },
        )
        .await;
    eprintln!("{}", describe_status(&status));

    let mut api = cluster.api().await;
    api.register(
        r#"
id: special
tasks:
  - id: on_special
    command: "true"
    queue: special
"#,
    )
    .await;
    let run = api.trigger("special").await;
    api.poll_run(
        &run.run_id,
        "the run to end",
        WAIT,
        Duration::from_millis(50),
        run_is_final,
    )
    .await;
    let view = api.get_run(&run.run_id).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(view.task("on_special").worker_id, "special-worker");
    api.check_each_task_succeeded_once(&view)
        .await
        .assert_no_problems("on the redirected worker");
    // Still there, still served by the same worker process.
    assert!(worker.try_exit_status().is_none(), "{}", worker.log_tail());
}

/// One task, then 12 in parallel after it: with 4 slots the run is still
/// busy when the leader is signalled.
fn handover_dag() -> String {
    let mut yaml = String::from(
        "id: handover\ndefault_args:\n  retries: 3\n  retry_delay: 200ms\ntasks:\n  - id: first\n    command: sleep 0.3\n",
    );
    for part in 0..12 {
        writeln!(
            yaml,
            "  - id: part{part:02}\n    command: sleep 0.3\n    depends_on: [first]"
        )
        .expect("writing to a String");
    }
    yaml
}
