//! API behaviours users build on: DAG versioning by content, idempotent
//! triggers, retrying a task of a finished run, the WatchRun stream,
//! ListRuns filters and pagination, deleting a DAG with its history, and
//! NOT_FOUND answers that name what was not found.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use baton_tests::pb::{
    AttemptOutcome, DeleteDagRequest, GetDagRequest, GetRunRequest, ListRunsRequest,
    ListTaskAttemptsRequest, PauseDagRequest, ReadTaskLogRequest, RetryTaskRequest, RunState,
    TaskState, TriggerRunRequest, UnpauseDagRequest, WatchRunRequest, watch_run_response,
};
use baton_tests::{Api, Sandbox, task_state};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn same_spec_keeps_its_version_and_a_changed_spec_gets_the_next() {
    let mut sandbox = Sandbox::new("versions");
    let _controller = sandbox.start_controller(&[]).await;
    let mut api = sandbox.api().await;
    let first = "id: versioned\ntasks:\n  - id: a\n    command: echo one\n";
    // The same DAG written differently: a comment, flow style, quoting.
    let reformatted = "# same dag\nid: \"versioned\"\ntasks: [{id: a, command: 'echo one'}]\n";
    let changed = "id: versioned\ntasks:\n  - id: a\n    command: echo two\n";

    let registered = api.register(first).await;
    assert_eq!((registered.version, registered.created), (1, true));
    let again = api.register(first).await;
    assert_eq!(
        (again.version, again.created),
        (1, false),
        "the same spec twice"
    );
    let same = api.register(reformatted).await;
    assert_eq!(
        (same.version, same.created),
        (1, false),
        "the same spec, formatted differently"
    );
    let next = api.register(changed).await;
    assert_eq!((next.version, next.created), (2, true), "a changed spec");
    let dag = api.get_dag("versioned").await;
    assert_eq!(dag.dag.expect("dag").latest_version, 2);
    let version = dag.version.expect("version");
    assert_eq!(version.version, 2);
    assert!(
        version.spec_json.contains("echo two"),
        "{}",
        version.spec_json
    );

    // A run uses the latest version.
    let run = api.trigger("versioned").await;
    assert_eq!(run.dag_version, 2);
}

#[tokio::test]
async fn trigger_with_the_same_idempotency_key_returns_the_same_run() {
    let mut sandbox = Sandbox::new("idempotency");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register("id: once\ntasks:\n  - id: a\n    kind: noop\n")
        .await;
    let request = TriggerRunRequest {
        dag_id: "once".to_string(),
        idempotency_key: "nightly-2026-11-25".to_string(),
        ..Default::default()
    };

    let first = api
        .try_trigger(request.clone())
        .await
        .expect("first trigger");
    let second = api
        .try_trigger(request.clone())
        .await
        .expect("second trigger");
    let first_run = first.run.expect("run");
    let second_run = second.run.expect("run");
    assert!(first.created);
    assert!(!second.created, "the key matched: no new run");
    assert_eq!(first_run.run_id, second_run.run_id);
    assert_eq!(second_run.idempotency_key, "nightly-2026-11-25");

    // Still the same run after it finished.
    api.wait_for_run(&first_run.run_id, WAIT).await;
    let third = api.try_trigger(request).await.expect("third trigger");
    assert!(!third.created);
    assert_eq!(third.run.expect("run").run_id, first_run.run_id);

    let other = api
        .try_trigger(TriggerRunRequest {
            dag_id: "once".to_string(),
            idempotency_key: "nightly-2026-11-26".to_string(),
            ..Default::default()
        })
        .await
        .expect("trigger with another key");
    assert!(other.created);
    assert_ne!(other.run.expect("run").run_id, first_run.run_id);

    // Concurrent triggers with one new key create one run between them.
    let mut triggers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut client = api.client.clone();
        triggers.spawn(async move {
            client
                .runs
                .trigger_run(TriggerRunRequest {
                    dag_id: "once".to_string(),
                    idempotency_key: "concurrent".to_string(),
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let mut run_ids = HashSet::new();
    let mut created = 0;
    while let Some(joined) = tokio::time::timeout(WAIT, triggers.join_next())
        .await
        .expect("concurrent triggers answered in time")
    {
        let response = joined.expect("trigger task").expect("TriggerRun");
        created += usize::from(response.created);
        run_ids.insert(response.run.expect("run").run_id);
    }
    assert_eq!(run_ids.len(), 1, "one run for one key: {run_ids:?}");
    assert_eq!(created, 1, "exactly one trigger created it");
}

#[tokio::test]
async fn retry_task_reruns_the_cleared_task_and_its_downstream_only() {
    let mut sandbox = Sandbox::new("retry-task");
    let _dev = sandbox.start_dev(&["--slots", "4"]).await;
    let mut api = sandbox.api().await;
    let marker = sandbox.path().join("marker");
    let dag = format!(
        r#"
id: gated
tasks:
  - id: independent
    command: echo independent
  - id: gate
    command: 'test -f "$MARKER"'
    env:
      MARKER: "{}"
  - id: after_gate
    command: echo after
    depends_on: [gate]
  - id: last
    kind: noop
    depends_on: [after_gate, independent]
"#,
        marker.display()
    );
    api.register(&dag).await;
    let run = api.trigger("gated").await;
    let failed = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(failed.state(), RunState::Failed, "{}", failed.describe());
    assert_eq!(failed.task_state("gate"), TaskState::Failed);
    assert_eq!(failed.task_state("after_gate"), TaskState::UpstreamFailed);
    assert_eq!(failed.task_state("last"), TaskState::UpstreamFailed);
    assert_eq!(failed.task_state("independent"), TaskState::Success);
    let independent_attempt = failed.task("independent").attempt_id.clone();

    std::fs::write(&marker, "go").expect("create the marker");
    let response = api
        .client
        .runs
        .retry_task(RetryTaskRequest {
            run_id: run.run_id.clone(),
            task_id: "gate".to_string(),
            exclude_downstream: false,
            include_upstream: false,
        })
        .await
        .expect("RetryTask")
        .into_inner();
    assert_eq!(response.cleared_task_ids, ["gate", "after_gate", "last"]);
    let reopened = response.run.expect("run");
    assert_eq!(reopened.state, RunState::Running as i32, "{reopened:?}");

    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    for task in &view.tasks {
        assert_eq!(task_state(task), TaskState::Success, "{}", view.describe());
    }
    let gate = api.attempts(&run.run_id, "gate").await;
    let outcomes: Vec<i32> = gate.iter().map(|attempt| attempt.outcome).collect();
    assert_eq!(
        outcomes,
        [
            AttemptOutcome::Failed as i32,
            AttemptOutcome::Succeeded as i32
        ],
        "{gate:?}"
    );
    assert_eq!(view.task("gate").attempt, 2);
    for task_id in ["after_gate", "last"] {
        let attempts = api.attempts(&run.run_id, task_id).await;
        assert_eq!(attempts.len(), 1, "{task_id}: {attempts:?}");
        assert_eq!(attempts[0].outcome, AttemptOutcome::Succeeded as i32);
    }
    // The task that was not cleared did not run again.
    let independent = api.attempts(&run.run_id, "independent").await;
    assert_eq!(independent.len(), 1, "{independent:?}");
    assert_eq!(independent[0].attempt_id, independent_attempt);
}

#[tokio::test]
async fn watch_run_streams_a_snapshot_then_changes_then_the_final_run() {
    let mut sandbox = Sandbox::new("watch");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register(
        "id: watched\ntasks:\n  - id: first\n    command: echo first\n  - id: second\n    command: echo second\n    depends_on: [first]\n",
    )
    .await;
    // Paused, the run stays QUEUED until the watch is open: every change
    // after the snapshot is then seen on the stream.
    api.client
        .dags
        .pause_dag(PauseDagRequest {
            dag_id: "watched".to_string(),
        })
        .await
        .expect("PauseDag");
    let run = api.trigger("watched").await;
    assert_eq!(run.state, RunState::Queued as i32);

    let mut stream = api
        .client
        .runs
        .watch_run(WatchRunRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("WatchRun")
        .into_inner();
    let next = async |stream: &mut tonic::Streaming<_>| {
        tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a watch message in time")
            .expect("the watch does not fail")
    };
    let first: Option<baton_tests::pb::WatchRunResponse> = next(&mut stream).await;
    let Some(watch_run_response::Event::Snapshot(snapshot)) = first.and_then(|m| m.event) else {
        panic!("the first message is not a snapshot");
    };
    let snapshot_run = snapshot.run.expect("snapshot run");
    assert_eq!(snapshot_run.run_id, run.run_id);
    assert_eq!(snapshot_run.state, RunState::Queued as i32);
    assert_eq!(snapshot.tasks.len(), 2);
    for task in &snapshot.tasks {
        assert_eq!(task_state(task), TaskState::Pending, "{task:?}");
    }

    api.client
        .dags
        .unpause_dag(UnpauseDagRequest {
            dag_id: "watched".to_string(),
        })
        .await
        .expect("UnpauseDag");

    let mut task_states: HashMap<String, Vec<TaskState>> = HashMap::new();
    let mut run_states = Vec::new();
    let mut ended = false;
    for _ in 0..1000 {
        let Some(message) = next(&mut stream).await else {
            ended = true;
            break;
        };
        match message.event {
            Some(watch_run_response::Event::Task(task)) => task_states
                .entry(task.task_id.clone())
                .or_default()
                .push(task_state(&task)),
            Some(watch_run_response::Event::Run(update)) => {
                assert!(
                    run_states.last() != Some(&RunState::Success),
                    "an event after the final run event"
                );
                run_states.push(RunState::try_from(update.state).unwrap());
            }
            other => panic!("unexpected message after the snapshot: {other:?}"),
        }
    }
    assert!(ended, "the stream did not end after the final run event");
    assert_eq!(
        run_states.last(),
        Some(&RunState::Success),
        "the last run event is the final state: {run_states:?}"
    );
    assert!(
        run_states.contains(&RunState::Running),
        "the run went RUNNING: {run_states:?}"
    );
    let order = [
        TaskState::Pending,
        TaskState::Ready,
        TaskState::Leased,
        TaskState::Running,
        TaskState::Success,
    ];
    for task_id in ["first", "second"] {
        let states = task_states
            .get(task_id)
            .unwrap_or_else(|| panic!("no event for {task_id}: {task_states:?}"));
        assert_eq!(
            states.last(),
            Some(&TaskState::Success),
            "{task_id}: {states:?}"
        );
        let ranks: Vec<usize> = states
            .iter()
            .map(|state| {
                order
                    .iter()
                    .position(|s| s == state)
                    .expect("a normal state")
            })
            .collect();
        assert!(
            ranks.windows(2).all(|pair| pair[0] < pair[1]),
            "{task_id}: states out of order or repeated: {states:?}"
        );
    }
}

#[tokio::test]
async fn list_runs_filters_by_dag_and_state_and_paginates() {
    let mut sandbox = Sandbox::new("list-runs");
    let _dev = sandbox.start_dev(&["--slots", "4"]).await;
    let mut api = sandbox.api().await;
    api.register("id: good\ntasks:\n  - id: a\n    kind: noop\n")
        .await;
    api.register("id: bad\ntasks:\n  - id: a\n    command: exit 1\n")
        .await;

    // Triggered one after another, so newest first is the reverse order.
    let mut triggered = Vec::new();
    for dag_id in ["good", "bad", "good", "bad", "good"] {
        let run = api.trigger(dag_id).await;
        api.wait_for_run(&run.run_id, WAIT).await;
        triggered.push((dag_id, run.run_id));
    }
    let newest_first = |dag: Option<&str>| -> Vec<String> {
        triggered
            .iter()
            .rev()
            .filter(|(dag_id, _)| dag.is_none_or(|dag| dag == *dag_id))
            .map(|(_, run_id)| run_id.clone())
            .collect()
    };

    let mut list = async |dag_id: &str, states: &[RunState], page_size: u32| {
        let mut ids = Vec::new();
        let mut page_sizes = Vec::new();
        let mut page_token = String::new();
        for _ in 0..100 {
            let response = api
                .client
                .runs
                .list_runs(ListRunsRequest {
                    dag_id: dag_id.to_string(),
                    states: states.iter().map(|state| *state as i32).collect(),
                    page_size,
                    page_token: page_token.clone(),
                })
                .await
                .expect("ListRuns")
                .into_inner();
            page_sizes.push(response.runs.len());
            for run in &response.runs {
                if !dag_id.is_empty() {
                    assert_eq!(run.dag_id, dag_id, "{run:?}");
                }
                if !states.is_empty() {
                    let state = RunState::try_from(run.state).unwrap();
                    assert!(states.contains(&state), "{run:?}");
                }
            }
            ids.extend(response.runs.into_iter().map(|run| run.run_id));
            if response.next_page_token.is_empty() {
                return (ids, page_sizes);
            }
            page_token = response.next_page_token;
        }
        panic!("ListRuns did not reach its last page in 100 pages");
    };

    let (all, _) = list("", &[], 0).await;
    assert_eq!(all, newest_first(None));
    let (good, _) = list("good", &[], 0).await;
    assert_eq!(good, newest_first(Some("good")));
    let (failed, _) = list("", &[RunState::Failed], 0).await;
    assert_eq!(failed, newest_first(Some("bad")));
    let (none, _) = list("good", &[RunState::Failed], 0).await;
    assert!(none.is_empty(), "{none:?}");
    let (finished, _) = list("", &[RunState::Success, RunState::Failed], 0).await;
    assert_eq!(finished, newest_first(None));

    let (paged, page_sizes) = list("", &[], 2).await;
    assert_eq!(page_sizes, [2, 2, 1]);
    assert_eq!(paged, newest_first(None));
    assert_eq!(
        paged.iter().collect::<HashSet<_>>().len(),
        5,
        "no run twice"
    );
    let (paged_good, page_sizes) = list("good", &[RunState::Success], 2).await;
    assert_eq!(page_sizes, [2, 1]);
    assert_eq!(paged_good, newest_first(Some("good")));
}

async fn delete_dag(api: &mut Api, dag_id: &str) -> Result<u32, tonic::Status> {
    api.client
        .dags
        .delete_dag(DeleteDagRequest {
            dag_id: dag_id.to_string(),
        })
        .await
        .map(|response| response.into_inner().deleted_runs)
}

#[tokio::test]
async fn delete_dag_waits_for_active_runs_then_deletes_the_history() {
    let mut sandbox = Sandbox::new("delete-dag");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register("id: doomed\ntasks:\n  - id: a\n    kind: noop\n")
        .await;
    let finished = api.trigger("doomed").await;
    api.wait_for_run(&finished.run_id, WAIT).await;
    // Paused, the second run stays QUEUED: active.
    api.client
        .dags
        .pause_dag(PauseDagRequest {
            dag_id: "doomed".to_string(),
        })
        .await
        .expect("PauseDag");
    let queued = api.trigger("doomed").await;

    let refused = delete_dag(&mut api, "doomed")
        .await
        .expect_err("a DAG with an active run is not deleted");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert_eq!(
        api.get_dag("doomed").await.dag.expect("dag").dag_id,
        "doomed"
    );

    api.client
        .dags
        .unpause_dag(UnpauseDagRequest {
            dag_id: "doomed".to_string(),
        })
        .await
        .expect("UnpauseDag");
    api.wait_for_run(&queued.run_id, WAIT).await;
    let deleted_runs = delete_dag(&mut api, "doomed").await.expect("DeleteDag");
    assert_eq!(deleted_runs, 2);

    let missing = api
        .client
        .dags
        .get_dag(GetDagRequest {
            dag_id: "doomed".to_string(),
            version: 0,
        })
        .await
        .expect_err("the DAG is gone");
    assert_eq!(missing.code(), Code::NotFound, "{missing}");
    for run_id in [&finished.run_id, &queued.run_id] {
        let missing = api
            .client
            .runs
            .get_run(GetRunRequest {
                run_id: run_id.clone(),
                include_tasks: false,
            })
            .await
            .expect_err("the run is gone with its DAG");
        assert_eq!(missing.code(), Code::NotFound, "{missing}");
    }
    let runs = api
        .client
        .runs
        .list_runs(ListRunsRequest::default())
        .await
        .expect("ListRuns")
        .into_inner()
        .runs;
    assert!(runs.is_empty(), "{runs:?}");
}

/// A RetryTask refused for a task the DAG does not have changes nothing: the
/// finished run stays finished, and its DAG can still be deleted.
#[tokio::test]
async fn refused_retry_task_leaves_the_finished_run_alone() {
    let mut sandbox = Sandbox::new("retry-unknown-task");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register("id: done\ntasks:\n  - id: a\n    kind: noop\n")
        .await;
    let run = api.trigger("done").await;
    api.wait_for_run(&run.run_id, WAIT).await;

    let refused = api
        .client
        .runs
        .retry_task(RetryTaskRequest {
            run_id: run.run_id.clone(),
            task_id: "no_such_task".to_string(),
            exclude_downstream: false,
            include_upstream: false,
        })
        .await
        .expect_err("an unknown task cannot be retried");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("task_id"), "{refused}");
    let view = api.get_run(&run.run_id).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());

    let deleted = delete_dag(&mut api, "done").await.unwrap_or_else(|status| {
        panic!(
            "DeleteDag after a refused RetryTask: {:?}: {}",
            status.code(),
            status.message()
        )
    });
    assert_eq!(deleted, 1);
}

#[tokio::test]
async fn unknown_dags_runs_and_tasks_are_not_found_and_named() {
    let mut sandbox = Sandbox::new("not-found");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register("id: known\ntasks:\n  - id: a\n    kind: noop\n")
        .await;
    let run = api.trigger("known").await;
    api.wait_for_run(&run.run_id, WAIT).await;
    let unknown_run = "01a2108c-1d03-7689-b931-b7d7f14db70b";

    let mut statuses = vec![
        (
            "TriggerRun of an unknown dag",
            api.try_trigger(TriggerRunRequest {
                dag_id: "unknown_dag".to_string(),
                ..Default::default()
            })
            .await
            .expect_err("unknown dag"),
            "dag `unknown_dag` not found",
        ),
        (
            "GetRun of an unknown run",
            api.client
                .runs
                .get_run(GetRunRequest {
                    run_id: unknown_run.to_string(),
                    include_tasks: true,
                })
                .await
                .expect_err("unknown run"),
            "run `01a2108c-1d03-7689-b931-b7d7f14db70b` not found",
        ),
    ];
    statuses.push((
        "ListTaskAttempts of an unknown task",
        api.client
            .runs
            .list_task_attempts(ListTaskAttemptsRequest {
                run_id: run.run_id.clone(),
                task_id: "unknown_task".to_string(),
            })
            .await
            .expect_err("unknown task"),
        "task `unknown_task` ",
    ));
    statuses.push((
        "ReadTaskLog of an unknown task",
        api.client
            .runs
            .read_task_log(ReadTaskLogRequest {
                run_id: run.run_id.clone(),
                task_id: "unknown_task".to_string(),
                ..Default::default()
            })
            .await
            .expect_err("unknown task"),
        "task `unknown_task` ",
    ));
    let mut failures = Vec::new();
    for (what, status, expected) in &statuses {
        if status.code() != Code::NotFound || !status.message().contains(expected) {
            failures.push(format!(
                "{what}: expected NOT_FOUND with `{expected}`, got {:?}: {}",
                status.code(),
                status.message()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
