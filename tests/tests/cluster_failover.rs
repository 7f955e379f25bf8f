//! Cluster mode, leader failures: a real etcd, three `baton controller`
//! replicas (lease TTL 2 s, recovery grace 3 s) and `baton worker`s on
//! loopback.
//!
//! - The leader is SIGKILLed three times during a run of 2,000 tasks (ten
//!   chains of ten, 1,899 in parallel, a join), each time after more tasks
//!   are done: a follower leads with a higher term, the killed controller
//!   comes back as a follower (same flags), and the run completes SUCCESS
//!   within a bound, every task's success recorded exactly once. Its tasks
//!   have no retries: a failover costs no task an attempt.
//! - A deposed leader cannot write: the leader is SIGSTOPped for 3×TTL while
//!   tasks run; another controller leads; the old one is resumed, says it
//!   stepped down and is listed as a follower. etcd's history (read back
//!   from revision 1) shows that every run, task and attempt record put
//!   carries the term of the controller leading at that revision: in
//!   particular none carries the old term after the old leader's election
//!   key was deleted. The run ends SUCCESS, each success recorded once.
//!
//! Why the boundary is the old key's deletion, not the new term: a term is
//! the create revision of its controller's election key, and a follower
//! creates its key when it starts campaigning, long before it leads. So the
//! new term is *lower* than the revisions of the old leader's last
//! legitimate writes; leadership passes when the old key is deleted (its
//! lease expired), which is what the old leader's fence compares.

use std::fmt::Write as _;
use std::time::Duration;

use baton_tests::cluster::{ETCD_PREFIX, LEASE_TTL, describe_status};
use baton_tests::pb::{RunState, TaskState};
use baton_tests::{ClusterBuilder, StoreHistory, run_is_final, task_count, task_state};
use nix::sys::signal::Signal;
use regex::Regex;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);
/// How long a follower may take to lead after the leader died: the lease
/// TTL, the campaign and the recovery of 2,000 tasks from etcd, on a busy
/// machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);

const CHAINS: usize = 10;
const CHAIN_LENGTH: usize = 10;
const PARALLEL: usize = 1_899;
/// Chains, parallel tasks and the join.
const TASKS: usize = CHAINS * CHAIN_LENGTH + PARALLEL + 1;
const KILLS: usize = 3;
/// The big run must end within this, failovers included.
const BIG_RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// No retries: a failover must cost no task an attempt. Tasks running
/// on workers are re-announced to the new leader; leases whose assignment
/// died with the old leader go back to ready without counting.
fn big_dag() -> String {
    let mut yaml = String::from("id: failover\ntasks:\n");
    let mut tails = Vec::new();
    for chain in 0..CHAINS {
        for link in 0..CHAIN_LENGTH {
            let id = format!("chain{chain}_{link}");
            write!(yaml, "  - id: {id}\n    command: sleep 0.01\n").expect("writing to a String");
            if link > 0 {
                writeln!(yaml, "    depends_on: [chain{chain}_{}]", link - 1)
                    .expect("writing to a String");
            }
            if link == CHAIN_LENGTH - 1 {
                tails.push(id);
            }
        }
    }
    for part in 0..PARALLEL {
        writeln!(yaml, "  - id: part{part:04}\n    command: sleep 0.01")
            .expect("writing to a String");
    }
    writeln!(
        yaml,
        "  - id: join\n    command: sleep 0.01\n    depends_on: [{}]",
        tails.join(", ")
    )
    .expect("writing to a String");
    yaml
}

#[tokio::test]
async fn run_of_2000_tasks_survives_the_leader_killed_three_times() {
    let Some(mut cluster) = ClusterBuilder::new("leader-killed").build_and_start().await else {
        return;
    };
    let addrs = cluster.addrs();
    let mut workers = Vec::new();
    for id in ["w1", "w2", "w3"] {
        workers.push(cluster.start_worker(id, &addrs, &["--slots", "4"]).await);
    }
    let mut api = cluster.api().await;
    api.register(&big_dag()).await;
    let run = api.trigger("failover").await;
    let started = Instant::now();

    let mut failovers = Vec::new();
    for kill in 1..=KILLS {
        // Kill k waits for k/5 of the tasks: the run is busy at every kill
        // and the new leader made progress since the last one.
        let threshold = (kill * TASKS / 5) as u32;
        let before_kill = api
            .poll_run(
                &run.run_id,
                &format!("{threshold} tasks done before kill {kill}"),
                BIG_RUN_TIMEOUT.saturating_sub(started.elapsed()),
                Duration::from_millis(200),
                |run| task_count(run, "success") >= threshold || run_is_final(run),
            )
            .await;
        assert!(
            !run_is_final(&before_kill),
            "the run ended before kill {kill}: {before_kill:?}"
        );
        let (leader, before) = cluster.leader(WAIT).await;
        let killed_at = Instant::now();
        cluster.kill_controller(leader).await;
        let after = cluster
            .wait_for_status(
                &format!(
                    "a follower to lead after kill {kill} of {}",
                    before.leader_id
                ),
                &cluster.others(leader),
                FAILOVER_TIMEOUT,
                Duration::from_millis(50),
                |status| status.leader_term > before.leader_term,
            )
            .await;
        let failover = killed_at.elapsed();
        cluster.restart_as_follower(leader, WAIT).await;
        eprintln!(
            "kill {kill} at {} tasks done: {} (term {}) -> {} (term {}) in {failover:?}",
            task_count(&before_kill, "success"),
            before.leader_id,
            before.leader_term,
            after.leader_id,
            after.leader_term
        );
        failovers.push((before.leader_id, after.leader_id, failover));
    }

    let done = api
        .poll_run(
            &run.run_id,
            "the run to end",
            BIG_RUN_TIMEOUT.saturating_sub(started.elapsed()),
            Duration::from_millis(200),
            run_is_final,
        )
        .await;
    let took = started.elapsed();
    let view = api.get_run(&run.run_id).await;
    assert_eq!(view.tasks.len(), TASKS);
    let not_successful: Vec<String> = view
        .tasks
        .iter()
        .filter(|task| task_state(task) != TaskState::Success)
        .map(|task| format!("{} {:?} {}", task.task_id, task_state(task), task.error))
        .take(20)
        .collect();
    assert_eq!(
        view.state(),
        RunState::Success,
        "{done:?}\nfirst tasks not SUCCESS: {not_successful:#?}"
    );
    let checking = Instant::now();
    let check = api.check_each_task_succeeded_once(&view).await;
    eprintln!(
        "run of {TASKS} tasks took {took:?} with failovers {failovers:?}; {} attempts listed in {:?}, {} tasks retried: {:?}",
        check.attempts,
        checking.elapsed(),
        check.retried.len(),
        check.retried.iter().take(10).collect::<Vec<_>>()
    );
    check.assert_no_problems("after three leader kills");
    for worker in &mut workers {
        assert!(worker.try_exit_status().is_none(), "{}", worker.log_tail());
    }
}

/// 16 tasks of 3 s, then 8 short ones after them: with 2 workers of 4 slots,
/// tasks run at the SIGSTOP and the run goes on after the SIGCONT.
fn slow_dag() -> String {
    let mut yaml =
        String::from("id: slow\ndefault_args:\n  retries: 3\n  retry_delay: 200ms\ntasks:\n");
    for part in 0..16 {
        writeln!(yaml, "  - id: slow{part:02}\n    command: sleep 3").expect("writing to a String");
    }
    for part in 0..8 {
        writeln!(
            yaml,
            "  - id: after{part}\n    command: sleep 0.2\n    depends_on: [slow{:02}, slow{:02}]",
            2 * part,
            2 * part + 1
        )
        .expect("writing to a String");
    }
    yaml
}

#[tokio::test]
async fn a_leader_stopped_past_its_lease_writes_nothing_after_it_is_deposed() {
    let Some(mut cluster) = ClusterBuilder::new("deposed-leader")
        .build_and_start()
        .await
    else {
        return;
    };
    let addrs = cluster.addrs();
    let _w1 = cluster.start_worker("w1", &addrs, &["--slots", "4"]).await;
    let _w2 = cluster.start_worker("w2", &addrs, &["--slots", "4"]).await;
    let mut api = cluster.api().await;
    api.register(&slow_dag()).await;
    let run = api.trigger("slow").await;
    api.wait_until(&run.run_id, "tasks running", WAIT, |view| {
        view.tasks
            .iter()
            .filter(|task| task_state(task) == TaskState::Running)
            .count()
            >= 4
    })
    .await;

    let (leader, before) = cluster.leader(WAIT).await;
    let old_id = before.leader_id.clone();
    let followers = cluster.others(leader);
    // While the leader is stopped, calls must not go to it.
    let mut api = cluster.api_of(&followers).await;
    let stopped_at = Instant::now();
    cluster.controller(leader).signal(Signal::SIGSTOP);
    let after = cluster
        .wait_for_status(
            "another controller to lead while the leader is stopped",
            &followers,
            LEASE_TTL * 3 + FAILOVER_TIMEOUT,
            Duration::from_millis(50),
            |status| status.leader_term > before.leader_term,
        )
        .await;
    eprintln!(
        "{} (term {}) stopped; {} leads (term {}) after {:?}",
        old_id,
        before.leader_term,
        after.leader_id,
        after.leader_term,
        stopped_at.elapsed()
    );
    // The scenario: stopped for three lease TTLs in all.
    tokio::time::sleep_until(stopped_at + LEASE_TTL * 3).await;
    cluster.controller(leader).signal(Signal::SIGCONT);
    cluster
        .controller(leader)
        .wait_for_log(
            Regex::new("stepped down|stepping down").expect("valid regex"),
            WAIT,
        )
        .await;

    let done = api
        .poll_run(
            &run.run_id,
            "the run to end",
            Duration::from_secs(60),
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
    let check = api.check_each_task_succeeded_once(&view).await;
    eprintln!("{} attempts; retried: {:#?}", check.attempts, check.retried);
    check.assert_no_problems("after the leader was stopped and resumed");

    // The old leader is alive, a follower, and listed as one.
    assert!(
        cluster.controller(leader).try_exit_status().is_none(),
        "{}",
        cluster.controller(leader).log_tail()
    );
    let listed = cluster
        .wait_for_status(
            &format!("the leader to list {old_id} as a follower"),
            &followers,
            WAIT,
            Duration::from_millis(50),
            |status| {
                status.leader_term == after.leader_term
                    && status
                        .controllers
                        .iter()
                        .any(|controller| controller.controller_id == old_id && !controller.leader)
            },
        )
        .await;
    eprintln!("{}", describe_status(&listed));
    let refused = cluster
        .status_at(leader)
        .await
        .expect_err("the old leader answered GetClusterStatus as a leader");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // etcd's history: who wrote what, and under which term.
    let mut client = cluster.etcd().client().await;
    let history = StoreHistory::read(&mut client, ETCD_PREFIX).await;
    let old_key = history
        .election_key(before.leader_term)
        .unwrap_or_else(|| panic!("no election key of term {}", before.leader_term));
    let deposed_at = old_key.deleted.unwrap_or_else(|| {
        panic!(
            "the election key of term {} was never deleted",
            before.leader_term
        )
    });
    eprintln!(
        "{} record puts up to revision {}; old term {} (key deleted at revision {deposed_at}), new term {}",
        history.records.len(),
        history.last_revision,
        before.leader_term,
        after.leader_term
    );
    let late: Vec<String> = history
        .puts_with_term(before.leader_term)
        .filter(|put| put.revision > deposed_at)
        .map(|put| format!("{} at revision {}", put.key, put.revision))
        .collect();
    assert!(
        late.is_empty(),
        "the deposed leader (term {}) wrote after its key was deleted at revision {deposed_at}: {late:#?}",
        before.leader_term
    );
    let unfenced: Vec<String> = history
        .records
        .iter()
        .filter_map(|put| {
            let leading = history.leader_at(put.revision).map(|key| key.created);
            (leading != Some(put.term)).then(|| {
                format!(
                    "{} at revision {} carries term {}, but the leader then was {leading:?}",
                    put.key, put.revision, put.term
                )
            })
        })
        .take(20)
        .collect();
    assert!(
        unfenced.is_empty(),
        "records written by a controller that did not lead: {unfenced:#?}"
    );
    // The check saw both terms at work.
    assert!(
        history.puts_with_term(before.leader_term).count() > 0,
        "no record of the old term {}",
        before.leader_term
    );
    assert!(
        history
            .puts_with_term(after.leader_term)
            .any(|put| put.revision > deposed_at),
        "no record of the new term {} after revision {deposed_at}",
        after.leader_term
    );
}
