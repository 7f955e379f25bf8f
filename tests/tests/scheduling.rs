//! Scheduling against a real `baton dev`: templates rendered at dispatch,
//! typed params, backfills, events, assets, sensors and SLA misses.
//!
//! - Templates: a command, its env and a sensor path render `ds`, `ts`,
//!   the data interval, `run_id`, params and an upstream's output; an
//!   undefined name fails the task with an error naming it (no retry).
//! - Params: trigger-time overrides are checked against their declarations
//!   and defaults filled in; a bad one is refused naming it, nothing stored.
//! - Backfill of 30 daily intervals with `max_active: 3` never has more than
//!   3 runs active (checked from the runs' recorded start and end); an
//!   identical backfill creates nothing; `rerun_failed` reruns exactly the
//!   failed intervals, in the same runs.
//! - Events: a DAG listening to an event runs once per event with the
//!   payload as its params; a payload its params refuse stores nothing.
//! - Assets: a DAG consuming two assets runs once both were updated (by a
//!   producer task and by the API), and the update history shows it.
//! - Sensors: a file sensor in poke mode and one in reschedule mode (its
//!   pokes give the slot back and use no retry), an external-task sensor, a
//!   delta sensor, and a soft-fail sensor whose timeout skips it and its
//!   downstream.
//! - SLA: a run and a task that outlive their `sla` get a miss recorded.

use std::time::Duration;

use baton_tests::pb::{
    AttemptOutcome, BackfillAction, BackfillState, CreateBackfillRequest, EmitEventRequest,
    GetAssetRequest, GetBackfillRequest, ListRunsRequest, RecordAssetUpdateRequest, Run, RunState,
    RunTrigger, TaskState, TriggerRunRequest,
};
use baton_tests::{Api, Sandbox, micros};
use chrono::{DateTime, Utc};

const WAIT: Duration = Duration::from_secs(60);

fn timestamp(text: &str) -> prost_types::Timestamp {
    let micros = DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
        .timestamp_micros();
    baton_common::time::micros_to_timestamp(micros)
}

fn rfc3339(micros_value: i64) -> String {
    DateTime::from_timestamp_micros(micros_value)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn runs_of(api: &mut Api, dag_id: &str) -> Vec<Run> {
    let mut runs = api
        .client
        .runs
        .list_runs(ListRunsRequest {
            dag_id: dag_id.to_string(),
            page_size: 1000,
            ..ListRunsRequest::default()
        })
        .await
        .expect("list runs")
        .into_inner()
        .runs;
    runs.sort_by_key(|run| micros(run.data_interval_start.as_ref()));
    runs
}

/// Waits until `dag_id` has a run and returns the first.
async fn wait_for_runs(api: &mut Api, dag_id: &str) -> Run {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(run) = runs_of(api, dag_id).await.into_iter().next() {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dag `{dag_id}` has no run after {WAIT:?}\n{}",
            api.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `dag_id` has `count` runs and all of them ended.
async fn wait_for_finished_runs(api: &mut Api, dag_id: &str, count: usize) -> Vec<Run> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let runs = runs_of(api, dag_id).await;
        if runs.len() >= count && runs.iter().all(baton_tests::run_is_final) {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dag `{dag_id}`: {} runs, {} finished, after {WAIT:?}\n{}",
            runs.len(),
            runs.iter()
                .filter(|run| baton_tests::run_is_final(run))
                .count(),
            api.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn output(view: &baton_tests::RunView, task_id: &str) -> serde_json::Value {
    serde_json::from_str(&view.task(task_id).output_json)
        .unwrap_or_else(|error| panic!("{task_id} output: {error}\n{}", view.describe()))
}

const TEMPLATES: &str = r#"
id: templates
timezone: Europe/Berlin
params:
  table: {type: string, default: orders}
  limit: {type: integer, default: 10, minimum: 1, maximum: 100}
tasks:
  - id: count
    command: 'echo "{\"rows\": 42, \"table\": \"{{ params.table }}\"}" > "$BATON_OUTPUT"'
  - id: report
    depends_on: count
    command:
      - sh
      - -c
      - 'printf "%s\n" "$1" > "$BATON_OUTPUT"'
      - sh
      - '{"ds": "{{ ds }}", "ds_nodash": "{{ ds_nodash }}", "ts": "{{ ts }}", "start": "{{ data_interval_start }}", "end": "{{ data_interval_end }}", "run_id": "{{ run_id }}", "limit": {{ params.limit }}, "rows": {{ tasks.count.output.rows }}, "env": "{{ dag_id }}"}'
    env:
      FROM_TEMPLATE: "{{ params.table }}-{{ ds_nodash }}"
  - id: env-check
    depends_on: count
    command: 'test "$FROM_TEMPLATE" = "orders-20260301"'
    env:
      FROM_TEMPLATE: "{{ params.table }}-{{ ds_nodash }}"
  - id: undefined
    depends_on: count
    retries: 3
    command: [echo, "{{ tasks.count.output.missing }}"]
"#;

#[tokio::test]
async fn templates_render_run_values_and_an_undefined_name_fails_the_task_naming_it() {
    let mut sandbox = Sandbox::new("templates");
    let _dev = sandbox.start_dev(&["--slots", "4"]).await;
    let mut api = sandbox.api().await;
    api.register(TEMPLATES).await;
    // 1 March 2026 at 23:30 UTC is already 2 March in Berlin: `ds` is the
    // calendar date in the DAG's time zone.
    let logical = "2026-02-28T23:30:00Z";
    let response = api
        .try_trigger(TriggerRunRequest {
            dag_id: "templates".into(),
            params_json: r#"{"limit": 7}"#.into(),
            logical_date: Some(timestamp(logical)),
            ..TriggerRunRequest::default()
        })
        .await
        .expect("trigger");
    let run = response.run.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&run.params_json).unwrap(),
        serde_json::json!({"table": "orders", "limit": 7}),
        "defaults filled in beside the override"
    );
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Failed, "{}", view.describe());
    let report = output(&view, "report");
    assert_eq!(report["ds"], "2026-03-01");
    assert_eq!(report["ds_nodash"], "20260301");
    assert_eq!(report["ts"], "2026-02-28T23:30:00+00:00");
    assert_eq!(report["start"], "2026-02-28T23:30:00+00:00");
    assert_eq!(report["end"], "2026-02-28T23:30:00+00:00");
    assert_eq!(report["run_id"], run.run_id.as_str());
    assert_eq!(report["limit"], 7);
    assert_eq!(report["rows"], 42, "an upstream's output");
    assert_eq!(report["env"], "templates");
    assert_eq!(view.task_state("env-check"), TaskState::Success);
    let undefined = view.task("undefined");
    assert_eq!(view.task_state("undefined"), TaskState::Failed);
    assert!(
        undefined.error.contains("command[1]")
            && undefined.error.contains("tasks.count.output.missing"),
        "the error names the field and the undefined variable: {}",
        undefined.error
    );
    assert_eq!(undefined.attempt, 1, "a template error is not retried");
    assert_eq!(undefined.outcome, AttemptOutcome::Error as i32);

    // A template reading a param the DAG does not declare is refused at
    // registration.
    let status = api
        .try_register(&TEMPLATES.replace("tasks.count.output.missing", "params.nope"))
        .await
        .expect_err("undeclared param");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("params.nope"), "{status:?}");

    // A param outside its declaration is refused, naming it; nothing runs.
    let before = runs_of(&mut api, "templates").await.len();
    let status = api
        .try_trigger(TriggerRunRequest {
            dag_id: "templates".into(),
            params_json: r#"{"limit": 1000, "colour": "red"}"#.into(),
            ..TriggerRunRequest::default()
        })
        .await
        .expect_err("out-of-range param");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("params_json.limit"), "{status:?}");
    assert!(
        status.message().contains("params_json.colour"),
        "{status:?}"
    );
    assert_eq!(runs_of(&mut api, "templates").await.len(), before);
}

const DAILY: &str = r#"
id: daily
schedule: "@daily"
start_date: 2026-01-01
# Without catchup the schedule itself runs only the latest day, after the
# backfilled range.
catchup: false
max_active_runs: 16
tasks:
  # Listed before its upstream: a rerun clears both at once.
  - id: report
    kind: noop
    depends_on: work
  - id: work
    # 7 and 21 January fail on their first attempt only.
    command: 'sleep 0.3; if [ "$BATON_ATTEMPT" = 1 ] && { [ "{{ ds }}" = 2026-01-07 ] || [ "{{ ds }}" = 2026-01-21 ]; }; then exit 1; fi'
"#;

/// The runs of the backfilled range (the schedule's own run of the latest
/// day is left out).
async fn january_runs(api: &mut Api) -> Vec<Run> {
    runs_of(api, "daily")
        .await
        .into_iter()
        .filter(|run| {
            micros(run.data_interval_start.as_ref())
                < micros(Some(&timestamp("2026-02-01T00:00:00Z")))
        })
        .collect()
}

async fn backfill(api: &mut Api, rerun_failed: bool) -> baton_tests::pb::Backfill {
    let created = api
        .client
        .backfills
        .create_backfill(CreateBackfillRequest {
            dag_id: "daily".into(),
            from: Some(timestamp("2026-01-01T00:00:00Z")),
            to: Some(timestamp("2026-01-30T00:00:00Z")),
            max_active: 3,
            rerun_failed,
            ..CreateBackfillRequest::default()
        })
        .await
        .unwrap_or_else(|status| panic!("backfill: {status}\n{}", api.logs_tail()))
        .into_inner()
        .backfill
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let backfill = api
            .client
            .backfills
            .get_backfill(GetBackfillRequest {
                backfill_id: created.backfill_id.clone(),
            })
            .await
            .expect("get backfill")
            .into_inner()
            .backfill
            .unwrap();
        if backfill.state() != BackfillState::Running {
            return backfill;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backfill still running after {WAIT:?}: {backfill:?}\n{}",
            api.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_backfill_keeps_to_max_active_skips_what_ran_and_reruns_only_failed_intervals() {
    let mut sandbox = Sandbox::new("backfill");
    let _dev = sandbox.start_dev(&["--slots", "16"]).await;
    let mut api = sandbox.api().await;
    api.register(DAILY).await;

    let first = backfill(&mut api, false).await;
    assert_eq!(first.state(), BackfillState::Completed, "{first:?}");
    assert_eq!((first.total, first.to_run), (30, 30));
    assert_eq!((first.succeeded, first.failed), (28, 2));
    let runs = january_runs(&mut api).await;
    assert_eq!(runs.len(), 30, "one run per interval");
    let mut events: Vec<(i64, i32)> = Vec::new();
    for run in &runs {
        assert_eq!(run.trigger, RunTrigger::Backfill as i32);
        assert_eq!(run.backfill_id, first.backfill_id);
        events.push((micros(run.started_at.as_ref()), 1));
        events.push((micros(run.ended_at.as_ref()), -1));
    }
    // Ends before starts at the same instant: a run that ended freed its
    // place.
    events.sort();
    let (mut active, mut peak) = (0, 0);
    for (_, change) in events {
        active += change;
        peak = peak.max(active);
    }
    assert!(peak <= 3, "{peak} runs were active at once (max_active 3)");
    assert_eq!(peak, 3, "the backfill used its 3 places");
    let failed: Vec<String> = runs
        .iter()
        .filter(|run| run.state == RunState::Failed as i32)
        .map(|run| rfc3339(micros(run.data_interval_start.as_ref())))
        .collect();
    assert_eq!(failed, ["2026-01-07T00:00:00Z", "2026-01-21T00:00:00Z"]);

    let second = backfill(&mut api, false).await;
    assert_eq!(second.state(), BackfillState::Completed);
    assert_eq!((second.to_run, second.skipped), (0, 30), "{second:?}");
    assert_eq!(january_runs(&mut api).await.len(), 30, "nothing created");

    let rerun = backfill(&mut api, true).await;
    let reran: Vec<String> = rerun
        .intervals
        .iter()
        .filter(|interval| interval.action() == BackfillAction::Rerun)
        .map(|interval| rfc3339(micros(interval.data_interval_start.as_ref())))
        .collect();
    assert_eq!(reran, ["2026-01-07T00:00:00Z", "2026-01-21T00:00:00Z"]);
    assert_eq!((rerun.succeeded, rerun.failed), (2, 0), "{rerun:?}");
    let after = january_runs(&mut api).await;
    assert_eq!(after.len(), 30, "reruns reuse the interval's run");
    for (before, now) in runs.iter().zip(&after) {
        assert_eq!(before.run_id, now.run_id);
        assert_eq!(now.state, RunState::Success as i32, "{now:?}");
        let attempts = api.attempts(&now.run_id, "work").await.len();
        let was_failed = before.state == RunState::Failed as i32;
        assert_eq!(attempts, if was_failed { 2 } else { 1 }, "{now:?}");
        assert_eq!(api.attempts(&now.run_id, "report").await.len(), 1);
    }

    // Cancelling a backfill as a whole: its unfinished runs are cancelled,
    // nothing more is created, and it ends CANCELLED.
    api.register(
        &DAILY
            .replace("id: daily", "id: slow-daily")
            .replace("sleep 0.3", "sleep 30"),
    )
    .await;
    let started = api
        .client
        .backfills
        .create_backfill(CreateBackfillRequest {
            dag_id: "slow-daily".into(),
            from: Some(timestamp("2026-01-01T00:00:00Z")),
            to: Some(timestamp("2026-01-10T00:00:00Z")),
            max_active: 2,
            ..CreateBackfillRequest::default()
        })
        .await
        .expect("backfill")
        .into_inner()
        .backfill
        .unwrap();
    let cancelled = api
        .client
        .backfills
        .cancel_backfill(baton_tests::pb::CancelBackfillRequest {
            backfill_id: started.backfill_id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .backfill
        .unwrap();
    assert_eq!(cancelled.state(), BackfillState::Cancelled, "{cancelled:?}");
    let runs: Vec<Run> = runs_of(&mut api, "slow-daily")
        .await
        .into_iter()
        .filter(|run| run.backfill_id == started.backfill_id)
        .collect();
    assert_eq!(runs.len(), 2, "max_active runs were created, no more");
    for run in &runs {
        let view = api.wait_for_run(&run.run_id, WAIT).await;
        assert_eq!(view.state(), RunState::Cancelled, "{}", view.describe());
    }
    let stored = api
        .client
        .backfills
        .get_backfill(GetBackfillRequest {
            backfill_id: started.backfill_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .backfill
        .unwrap();
    assert_eq!(stored.state(), BackfillState::Cancelled);
    assert_eq!(stored.intervals.len(), 10);

    // A range without intervals, and one beyond the limit, are refused.
    let status = api
        .client
        .backfills
        .create_backfill(CreateBackfillRequest {
            dag_id: "daily".into(),
            from: Some(timestamp("2026-01-10T00:00:00Z")),
            to: Some(timestamp("2026-01-05T00:00:00Z")),
            ..CreateBackfillRequest::default()
        })
        .await
        .expect_err("from after to");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("from"), "{status:?}");
}

const LISTENER: &str = r#"
id: on-orders
schedule: {events: [orders.loaded]}
params:
  batch: {type: integer}
  region: {type: string, default: eu}
tasks:
  - id: echo
    command: 'echo "{\"batch\": {{ params.batch }}, \"region\": \"{{ params.region }}\"}" > "$BATON_OUTPUT"'
"#;

const PRODUCER: &str = r#"
id: producer
tasks:
  - id: write
    kind: noop
    outputs: ["s3://lake/orders"]
"#;

const CONSUMER: &str = r#"
id: consumer
schedule: {assets: ["s3://lake/orders", "warehouse.customers"]}
tasks:
  - id: join
    kind: noop
"#;

#[tokio::test]
async fn events_and_assets_trigger_the_dags_listening_to_them() {
    let mut sandbox = Sandbox::new("events-assets");
    let _dev = sandbox.start_dev(&["--slots", "4"]).await;
    let mut api = sandbox.api().await;
    api.register(LISTENER).await;
    api.register(PRODUCER).await;
    api.register(CONSUMER).await;

    let emitted = api
        .client
        .events
        .emit_event(EmitEventRequest {
            name: "orders.loaded".into(),
            payload_json: r#"{"batch": 17}"#.into(),
            idempotency_key: "batch-17".into(),
        })
        .await
        .expect("emit")
        .into_inner();
    assert!(emitted.created);
    let event = emitted.event.unwrap();
    assert_eq!(event.run_ids.len(), 1);
    let view = api.wait_for_run(&event.run_ids[0], WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(view.run.trigger, RunTrigger::Event as i32);
    assert_eq!(view.run.trigger_detail, event.event_id);
    assert_eq!(
        output(&view, "echo"),
        serde_json::json!({"batch": 17, "region": "eu"})
    );
    // The same key again: the same event, nothing new.
    let again = api
        .client
        .events
        .emit_event(EmitEventRequest {
            name: "orders.loaded".into(),
            payload_json: r#"{"batch": 17}"#.into(),
            idempotency_key: "batch-17".into(),
        })
        .await
        .expect("emit again")
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.event.unwrap().event_id, event.event_id);
    // A payload the listener's params refuse: refused, nothing stored.
    let status = api
        .client
        .events
        .emit_event(EmitEventRequest {
            name: "orders.loaded".into(),
            payload_json: r#"{"batch": "seventeen"}"#.into(),
            ..EmitEventRequest::default()
        })
        .await
        .expect_err("bad payload");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("payload_json.batch"),
        "{status:?}"
    );
    assert!(status.message().contains("on-orders"), "{status:?}");
    assert_eq!(runs_of(&mut api, "on-orders").await.len(), 1);

    // One of the two assets updated: the consumer waits.
    let producer = api.trigger("producer").await;
    api.wait_for_run(&producer.run_id, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(runs_of(&mut api, "consumer").await.is_empty());
    // The second, updated outside Baton: the consumer runs, once.
    let update = api
        .client
        .events
        .record_asset_update(RecordAssetUpdateRequest {
            uri: "warehouse.customers".into(),
        })
        .await
        .expect("asset update")
        .into_inner()
        .update
        .unwrap();
    assert_eq!(update.triggered_run_ids.len(), 1, "{update:?}");
    let consumer_runs = wait_for_finished_runs(&mut api, "consumer", 1).await;
    assert_eq!(consumer_runs.len(), 1);
    assert_eq!(consumer_runs[0].trigger, RunTrigger::Asset as i32);
    assert_eq!(consumer_runs[0].run_id, update.triggered_run_ids[0]);
    // Another update of one asset alone does not trigger it again.
    let producer = api.trigger("producer").await;
    api.wait_for_run(&producer.run_id, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs_of(&mut api, "consumer").await.len(), 1);

    let asset = api
        .client
        .events
        .get_asset(GetAssetRequest {
            uri: "s3://lake/orders".into(),
            ..GetAssetRequest::default()
        })
        .await
        .expect("get asset")
        .into_inner();
    let info = asset.asset.unwrap();
    assert_eq!(info.update_count, 2);
    assert_eq!(info.producers, ["producer.write"]);
    assert_eq!(info.consumers, ["consumer"]);
    assert_eq!(asset.updates.len(), 2);
    assert_eq!(asset.updates[0].run_id, producer.run_id, "newest first");
    assert_eq!(asset.updates[0].task_id, "write");
}

#[tokio::test]
async fn sensors_wait_for_files_other_runs_and_time_and_soft_fail_skips() {
    let mut sandbox = Sandbox::new("sensors");
    let _dev = sandbox.start_dev(&["--slots", "8"]).await;
    let mut api = sandbox.api().await;
    let flag_dir = sandbox.path().join("flags");
    std::fs::create_dir_all(&flag_dir).unwrap();
    let dag = format!(
        r#"
id: sensors
tasks:
  - id: wait-file
    kind: sensor
    sensor:
      file: "{dir}/{{{{ ds }}}}.ready"
      poke_interval: 200ms
      timeout: 60s
  - id: wait-file-reschedule
    kind: sensor
    sensor:
      file: "{dir}/other.ready"
      poke_interval: 200ms
      timeout: 60s
      mode: reschedule
  - id: wait-time
    kind: sensor
    sensor:
      delta: 1s
  - id: never
    kind: sensor
    sensor:
      file: "{dir}/never"
      poke_interval: 100ms
      timeout: 1s
      soft_fail: true
  - id: after-never
    kind: noop
    depends_on: never
  - id: done
    kind: noop
    depends_on: [wait-file, wait-file-reschedule, wait-time]
"#,
        dir = flag_dir.display()
    );
    api.register(&dag).await;
    let run = api.trigger("sensors").await;
    let ds = rfc3339(micros(run.logical_date.as_ref()))[..10].to_string();
    // Both file sensors poke, the reschedule one between attempts.
    let view = api
        .wait_until(
            &run.run_id,
            "the reschedule sensor to give its slot back",
            WAIT,
            |view| view.task("wait-file-reschedule").attempt >= 2,
        )
        .await;
    assert_eq!(view.task_state("wait-file"), TaskState::Running);
    std::fs::write(flag_dir.join(format!("{ds}.ready")), b"").unwrap();
    std::fs::write(flag_dir.join("other.ready"), b"").unwrap();
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    for task in ["wait-file", "wait-file-reschedule", "wait-time", "done"] {
        assert_eq!(view.task_state(task), TaskState::Success, "{task}");
    }
    assert_eq!(view.task("wait-file").attempt, 1, "poke mode: one attempt");
    let attempts = api.attempts(&run.run_id, "wait-file-reschedule").await;
    let (last, pokes) = attempts.split_last().unwrap();
    assert!(!pokes.is_empty());
    assert!(
        pokes
            .iter()
            .all(|attempt| attempt.outcome == AttemptOutcome::Rescheduled as i32),
        "{attempts:?}"
    );
    assert_eq!(last.outcome, AttemptOutcome::Succeeded as i32);
    let wait_time = view.task("wait-time");
    assert!(
        micros(wait_time.ended_at.as_ref()) - micros(run.data_interval_end.as_ref()) >= 1_000_000,
        "the delta sensor waited 1 s past the interval's end"
    );
    assert!(
        wait_time.worker_id.is_empty(),
        "evaluated by the controller"
    );
    assert_eq!(view.task_state("never"), TaskState::Skipped);
    assert_eq!(view.task_state("after-never"), TaskState::Skipped);

    // An external-task sensor waits for the other DAG's run of the same
    // interval, which does not exist yet when it starts. Each DAG's
    // schedule (one interval, catchup off) creates its run at registration.
    api.register(
        r#"
id: downstream-dag
schedule: "@daily"
start_date: 2026-01-01
end_date: 2026-01-01
tasks:
  - id: wait-upstream
    kind: sensor
    sensor:
      external_task: {dag: upstream-dag, task: slow}
      timeout: 60s
"#,
    )
    .await;
    let waiting = wait_for_runs(&mut api, "downstream-dag").await;
    api.wait_until(
        &waiting.run_id,
        "the external sensor to wait",
        WAIT,
        |view| view.task_state("wait-upstream") == TaskState::Running,
    )
    .await;
    api.register(
        r#"
id: upstream-dag
schedule: "@daily"
start_date: 2026-01-01
end_date: 2026-01-01
tasks:
  - id: slow
    command: [sleep, "1"]
"#,
    )
    .await;
    let upstream = wait_for_finished_runs(&mut api, "upstream-dag", 1).await;
    let downstream = wait_for_finished_runs(&mut api, "downstream-dag", 1).await;
    assert_eq!(
        downstream[0].state,
        RunState::Success as i32,
        "{downstream:?}"
    );
    let view = api.get_run(&downstream[0].run_id).await;
    assert!(
        micros(view.task("wait-upstream").ended_at.as_ref())
            >= micros(upstream[0].ended_at.as_ref()) - 1_000_000,
        "the sensor ended after the upstream task did"
    );
}

#[tokio::test]
async fn a_run_and_a_task_that_outlive_their_sla_record_a_miss() {
    let mut sandbox = Sandbox::new("sla");
    let _dev = sandbox.start_dev(&["--slots", "2"]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: slow
sla: 1s
tasks:
  - id: quick
    kind: noop
    sla: 10s
  - id: sleepy
    command: [sleep, "3"]
    sla: 2s
"#,
    )
    .await;
    let run = api.trigger("slow").await;
    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success);
    let misses: Vec<(&str, i64)> = view
        .run
        .sla_misses
        .iter()
        .map(|miss| {
            (
                miss.task_id.as_str(),
                micros(miss.deadline.as_ref()) - micros(run.data_interval_end.as_ref()),
            )
        })
        .collect();
    assert_eq!(
        misses,
        [("", 1_000_000), ("sleepy", 2_000_000)],
        "{:?}",
        view.run.sla_misses
    );
    for miss in &view.run.sla_misses {
        assert!(micros(miss.detected_at.as_ref()) >= micros(miss.deadline.as_ref()));
    }
}

#[tokio::test]
async fn the_scheduled_example_registers_and_plans_one_run_per_berlin_morning() {
    let mut sandbox = Sandbox::new("example-schedule");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/daily-sales.yaml");
    let spec = std::fs::read_to_string(&example).expect("examples/daily-sales.yaml");
    let dag = api.register(&spec).await.dag.unwrap();
    assert_eq!(dag.timezone, "Europe/Berlin");
    assert_eq!(dag.max_active_runs, 3);
    assert!(dag.next_data_interval_end.is_some(), "{dag:?}");
    // 06:00 in Berlin is 05:00 UTC in winter: one interval per morning.
    let plan = api
        .client
        .backfills
        .create_backfill(CreateBackfillRequest {
            dag_id: "daily-sales".into(),
            from: Some(timestamp("2026-11-02T00:00:00Z")),
            to: Some(timestamp("2026-11-04T23:00:00Z")),
            dry_run: true,
            ..CreateBackfillRequest::default()
        })
        .await
        .expect("dry run")
        .into_inner()
        .backfill
        .unwrap();
    let starts: Vec<String> = plan
        .intervals
        .iter()
        .map(|interval| rfc3339(micros(interval.data_interval_start.as_ref())))
        .collect();
    assert_eq!(
        starts,
        [
            "2026-11-02T05:00:00Z",
            "2026-11-03T05:00:00Z",
            "2026-11-04T05:00:00Z"
        ]
    );
    assert!(plan.backfill_id.is_empty(), "a dry run stores nothing");
    assert!(
        plan.intervals
            .iter()
            .all(|interval| interval.action() == BackfillAction::Create)
    );
}
