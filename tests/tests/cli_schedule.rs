//! The scheduling commands of the `baton` CLI against a running `baton dev`:
//! `baton backfill` of a daily DAG runs one run per interval (at most
//! `--max-active` at once) and exits 0 when all succeeded, a second
//! identical backfill creates nothing, `--dry-run` stores nothing, dates are
//! read in the DAG's time zone, Ctrl-C cancels a followed backfill; `baton
//! event emit` triggers the DAG listening to the event with the payload as
//! its params; `baton asset touch` triggers the DAG consuming the asset.
//! Every `-o json` output parses. Flag errors are reported before any call.

use std::time::Duration;

use baton_tests::api::bounded;
use baton_tests::pb::{
    BackfillState, GetBackfillRequest, ListRunsRequest, Run, RunState, RunTrigger,
};
use baton_tests::poll::{POLL_INTERVAL, poll_until};
use baton_tests::{Api, BatonProcess, CliOutput, Sandbox, micros, run_is_final};
use nix::sys::signal::Signal;
use regex::Regex;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const DAY_MICROS: i64 = 86_400_000_000;
/// 2025-01-01T00:00:00Z.
const JAN_1_2025_MICROS: i64 = 1_735_689_600_000_000;

/// A daily DAG whose schedule never reaches the backfilled range by itself:
/// without catchup it creates only the latest interval's run (today's).
const DAILY: &str = r#"
id: daily
description: one task per day
schedule: "@daily"
start_date: "2025-01-01"
catchup: false
tasks:
  - id: work
    command: sleep 0.3
  - id: done
    kind: noop
    depends_on: [work]
"#;

/// The stdout of a `-o json` command as JSON; panics showing the output if
/// it does not parse.
fn json_of(output: &CliOutput) -> Value {
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {output}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|item| {
            item.as_str()
                .unwrap_or_else(|| panic!("not a string: {item}"))
                .to_string()
        })
        .collect()
}

/// Every run of a DAG (its first 1000), newest first.
async fn runs_of(api: &mut Api, dag_id: &str) -> Vec<Run> {
    bounded(api.client.runs.list_runs(ListRunsRequest {
        dag_id: dag_id.to_string(),
        page_size: 1000,
        ..Default::default()
    }))
    .await
    .unwrap_or_else(|status| panic!("ListRuns({dag_id}): {status:?}\n{}", api.logs_tail()))
    .runs
}

fn trigger(run: &Run) -> RunTrigger {
    RunTrigger::try_from(run.trigger).unwrap_or(RunTrigger::Unspecified)
}

/// Waits until `dag_id` has `count` runs with `wanted` trigger, all final.
async fn wait_for_runs(api: &mut Api, dag_id: &str, wanted: RunTrigger, count: usize) -> Vec<Run> {
    let mut last = Vec::new();
    let found = poll_until(WAIT, POLL_INTERVAL, async || {
        let runs: Vec<Run> = runs_of(api, dag_id)
            .await
            .into_iter()
            .filter(|run| trigger(run) == wanted)
            .collect();
        if runs.len() >= count && runs.iter().all(run_is_final) {
            return Some(runs);
        }
        last = runs;
        None
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "{dag_id}: no {count} finished {wanted:?} run(s) within {WAIT:?}; last seen: {last:?}\n{}",
            api.logs_tail()
        )
    })
}

/// The backfill id of the line `backfill <id> of <dag> created: ...`.
fn created_backfill_id(output: &CliOutput) -> String {
    let pattern = Regex::new(r"(?m)^backfill (\S+) of \S+ created").expect("valid regex");
    pattern
        .captures(&output.stdout)
        .map(|captures| captures[1].to_string())
        .unwrap_or_else(|| panic!("no `backfill ID of DAG created` line in {output}"))
}

/// The most runs whose [created_at, ended_at) overlap at one instant.
fn most_at_once(runs: &[Run]) -> usize {
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for run in runs {
        edges.push((micros(run.created_at.as_ref()), 1));
        edges.push((micros(run.ended_at.as_ref()), -1));
    }
    // An end before a start at the same instant.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test]
async fn backfill_runs_each_interval_once_and_a_second_backfill_creates_nothing() {
    let mut sandbox = Sandbox::new("cli-backfill");
    let _dev = sandbox.start_dev(&["--slots", "4"]).await;
    let mut api = sandbox.api().await;
    let file = sandbox.write_file("daily.yaml", DAILY);
    sandbox
        .cli(&["dag", "apply", &file.to_string_lossy()])
        .await
        .assert_success();

    // The DAG's schedule shows in `dag show` and `dag list`.
    let shown = sandbox.cli(&["-o", "json", "dag", "show", "daily"]).await;
    shown.assert_success();
    let shown = json_of(&shown);
    assert_eq!(shown["dag"]["schedule"], "@daily", "{shown}");
    assert_eq!(shown["dag"]["timezone"], "UTC", "{shown}");
    assert_eq!(shown["dag"]["catchup"], false, "{shown}");
    assert_eq!(shown["tasks"][0]["kind"], "command", "{shown}");
    let listed = sandbox.cli(&["-o", "json", "dag", "list"]).await;
    listed.assert_success();
    assert_eq!(json_of(&listed)["dags"][0]["schedule"], "@daily");
    sandbox
        .cli(&["dag", "show", "daily"])
        .await
        .assert_success();

    // A dry run plans five intervals and stores nothing.
    let plan = sandbox
        .cli(&[
            "-o",
            "json",
            "backfill",
            "daily",
            "--from",
            "2025-01-01",
            "--to",
            "2025-01-05",
            "--dry-run",
        ])
        .await;
    plan.assert_success();
    let plan = json_of(&plan);
    assert_eq!(plan["backfill_id"], Value::Null, "{plan}");
    assert_eq!(plan["dry_run"], true, "{plan}");
    let planned: Vec<&Value> = plan["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .collect();
    assert_eq!(planned.len(), 5, "{plan}");
    for (day, interval) in planned.iter().enumerate() {
        assert_eq!(interval["action"], "create", "{plan}");
        assert_eq!(interval["run_id"], Value::Null, "{plan}");
        assert_eq!(
            interval["data_interval_start"],
            format!("2025-01-0{}T00:00:00Z", day + 1),
            "{plan}"
        );
    }
    let none = sandbox
        .cli(&["-o", "json", "backfill", "list", "--dag", "daily"])
        .await;
    none.assert_success();
    assert_eq!(json_of(&none)["backfills"], json!([]), "{none}");
    let backfill_runs = runs_of(&mut api, "daily")
        .await
        .into_iter()
        .filter(|run| trigger(run) == RunTrigger::Backfill)
        .count();
    assert_eq!(backfill_runs, 0, "a dry run created runs");

    // The backfill, in the issue's exact form, followed to its end.
    let backfilled = sandbox
        .cli(&[
            "backfill",
            "daily",
            "--from",
            "2025-01-01",
            "--to",
            "2025-01-05",
            "--max-active",
            "2",
        ])
        .await;
    backfilled.assert_success();
    let backfill_id = created_backfill_id(&backfilled);
    assert!(
        backfilled
            .stdout
            .contains(&format!("backfill {backfill_id} of daily completed")),
        "{backfilled}"
    );

    let show = sandbox
        .cli(&["-o", "json", "backfill", "show", &backfill_id])
        .await;
    show.assert_success();
    let show = json_of(&show);
    assert_eq!(show["state"], "completed", "{show}");
    assert_eq!(show["max_active"], 2, "{show}");
    let intervals = show["intervals"].as_array().expect("intervals");
    assert_eq!(intervals.len(), 5, "{show}");
    let mut run_ids = Vec::new();
    for interval in intervals {
        assert_eq!(interval["action"], "create", "{show}");
        assert_eq!(interval["run_state"], "success", "{show}");
        run_ids.push(interval["run_id"].as_str().expect("a run id").to_string());
    }
    let table = sandbox.cli(&["backfill", "show", &backfill_id]).await;
    table.assert_success();
    for run_id in &run_ids {
        assert!(
            table.stdout.contains(run_id.as_str()),
            "{run_id} missing from {table}"
        );
    }

    // Each run is the backfill's, for its interval; at most two at once.
    let runs: Vec<Run> = runs_of(&mut api, "daily")
        .await
        .into_iter()
        .filter(|run| trigger(run) == RunTrigger::Backfill)
        .collect();
    assert_eq!(runs.len(), 5, "{runs:?}");
    for run in &runs {
        assert_eq!(run.backfill_id, backfill_id, "{run:?}");
        assert_eq!(run.state, RunState::Success as i32, "{run:?}");
        assert!(run_ids.contains(&run.run_id), "{run:?} not in {run_ids:?}");
        let start = micros(run.data_interval_start.as_ref());
        assert_eq!(
            micros(run.data_interval_end.as_ref()) - start,
            DAY_MICROS,
            "{run:?}"
        );
        assert_eq!((start - JAN_1_2025_MICROS) % DAY_MICROS, 0, "{run:?}");
        assert!(
            (JAN_1_2025_MICROS..JAN_1_2025_MICROS + 5 * DAY_MICROS).contains(&start),
            "{run:?}"
        );
        assert_eq!(micros(run.logical_date.as_ref()), start, "{run:?}");
    }
    assert!(
        most_at_once(&runs) <= 2,
        "more than 2 runs at once: {runs:?}"
    );

    // `run show` and `run list` name the trigger.
    let run_show = sandbox
        .cli(&["-o", "json", "run", "show", &run_ids[0]])
        .await;
    run_show.assert_success();
    let run_show = json_of(&run_show);
    assert_eq!(run_show["trigger"], "backfill", "{run_show}");
    assert_eq!(run_show["backfill_id"], backfill_id.as_str(), "{run_show}");
    assert_ne!(run_show["data_interval_start"], Value::Null, "{run_show}");
    let run_list = sandbox.cli(&["run", "list", "--dag", "daily"]).await;
    run_list.assert_success();
    assert!(run_list.stdout.contains("backfill"), "{run_list}");

    // The same backfill again has nothing to do.
    let again = sandbox
        .cli(&[
            "-o",
            "json",
            "backfill",
            "daily",
            "--from",
            "2025-01-01",
            "--to",
            "2025-01-05",
            "--max-active",
            "2",
        ])
        .await;
    again.assert_success();
    let again = json_of(&again);
    assert_eq!(again["to_run"], 0, "{again}");
    let skipped = again["intervals"].as_array().expect("intervals");
    assert_eq!(skipped.len(), 5, "{again}");
    for interval in skipped {
        assert_eq!(interval["action"], "skip", "{again}");
        assert!(
            run_ids
                .iter()
                .any(|run_id| interval["run_id"] == run_id.as_str()),
            "{again}"
        );
    }
    let backfill_runs = runs_of(&mut api, "daily")
        .await
        .into_iter()
        .filter(|run| trigger(run) == RunTrigger::Backfill)
        .count();
    assert_eq!(backfill_runs, 5);
    let listed = sandbox
        .cli(&["-o", "json", "backfill", "list", "--dag", "daily"])
        .await;
    listed.assert_success();
    let listed = json_of(&listed);
    assert_eq!(
        listed["backfills"].as_array().expect("backfills").len(),
        2,
        "{listed}"
    );
    sandbox.cli(&["backfill", "list"]).await.assert_success();
}

#[tokio::test]
async fn backfill_dates_are_read_in_the_dags_time_zone() {
    let mut sandbox = Sandbox::new("cli-backfill-zone");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: paris
schedule: "@daily"
timezone: Europe/Paris
start_date: "2025-01-01"
catchup: false
tasks:
  - id: work
    kind: noop
"#,
    )
    .await;

    // Local midnights; clocks went forward on 2025-03-30 (a 23-hour day).
    let plan = sandbox
        .cli(&[
            "-o",
            "json",
            "backfill",
            "paris",
            "--from",
            "2025-03-29",
            "--to",
            "2025-03-31",
            "--dry-run",
        ])
        .await;
    plan.assert_success();
    let plan = json_of(&plan);
    let starts: Vec<&Value> = plan["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .map(|interval| &interval["data_interval_start"])
        .collect();
    assert_eq!(
        starts,
        [
            &json!("2025-03-28T23:00:00Z"),
            &json!("2025-03-29T23:00:00Z"),
            &json!("2025-03-30T22:00:00Z")
        ],
        "{plan}"
    );
    assert_eq!(plan["from"], "2025-03-28T23:00:00Z", "{plan}");
    assert_eq!(plan["to"], "2025-03-30T22:00:00Z", "{plan}");

    // The table shows the DAG's local times.
    let table = sandbox
        .cli(&[
            "backfill",
            "paris",
            "--from",
            "2025-03-29",
            "--to",
            "2025-03-31",
            "--dry-run",
        ])
        .await;
    table.assert_success();
    for local in ["2025-03-29T00:00:00+01:00", "2025-03-31T00:00:00+02:00"] {
        assert!(table.stdout.contains(local), "{local} missing from {table}");
    }

    // An RFC 3339 time with an offset is taken as is.
    let instant = sandbox
        .cli(&[
            "-o",
            "json",
            "backfill",
            "paris",
            "--from",
            "2025-03-28T23:00:00Z",
            "--to",
            "2025-03-29T23:00:00Z",
            "--dry-run",
        ])
        .await;
    instant.assert_success();
    assert_eq!(
        json_of(&instant)["intervals"]
            .as_array()
            .expect("intervals")
            .len(),
        2
    );

    // 02:30 did not exist in Paris on 2025-03-30.
    let gap = sandbox
        .cli(&[
            "backfill",
            "paris",
            "--from",
            "2025-03-30T02:30",
            "--to",
            "2025-03-31",
            "--dry-run",
        ])
        .await;
    gap.assert_failure();
    assert!(
        gap.stderr
            .contains("--from `2025-03-30T02:30` does not exist in Europe/Paris"),
        "{gap}"
    );
}

#[tokio::test]
async fn bad_flags_are_refused_before_any_call() {
    // No controller listens on the sandbox's port: every refusal below
    // happens before the CLI connects.
    let sandbox = Sandbox::new("cli-schedule-flags");
    let reversed = sandbox
        .cli(&[
            "backfill",
            "daily",
            "--from",
            "2025-01-05",
            "--to",
            "2025-01-01",
        ])
        .await;
    reversed.assert_failure();
    assert!(
        reversed
            .stderr
            .contains("--from `2025-01-05` is after --to `2025-01-01`"),
        "{reversed}"
    );
    let bad_date = sandbox
        .cli(&[
            "backfill",
            "daily",
            "--from",
            "2025-02-30",
            "--to",
            "2025-03-01",
        ])
        .await;
    bad_date.assert_failure();
    assert!(bad_date.stderr.contains("--from"), "{bad_date}");
    assert!(bad_date.stderr.contains("YYYY-MM-DD"), "{bad_date}");
    let bad_payload = sandbox
        .cli(&["event", "emit", "x", "--payload", "[1, 2]"])
        .await;
    bad_payload.assert_failure();
    assert!(bad_payload.stderr.contains("--payload"), "{bad_payload}");
    assert!(bad_payload.stderr.contains("JSON object"), "{bad_payload}");
    let bad_params = sandbox
        .cli(&[
            "backfill",
            "daily",
            "--from",
            "2025-01-01",
            "--to",
            "2025-01-02",
            "--params-json",
            "3",
        ])
        .await;
    bad_params.assert_failure();
    assert!(bad_params.stderr.contains("--params-json"), "{bad_params}");
    for output in [&reversed, &bad_date, &bad_payload, &bad_params] {
        assert!(
            !output.stderr.contains("controller"),
            "tried to reach the controller: {output}"
        );
    }
    // The controller is reached only when the flags are fine.
    let unreachable = sandbox
        .cli(&[
            "backfill",
            "daily",
            "--from",
            "2025-01-01",
            "--to",
            "2025-01-02",
        ])
        .await;
    unreachable.assert_failure();
    assert!(unreachable.stderr.contains("controller"), "{unreachable}");
}

#[tokio::test]
async fn ctrl_c_cancels_a_followed_backfill() {
    let mut sandbox = Sandbox::new("cli-backfill-interrupt");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: slow
schedule: "@daily"
start_date: "2025-01-01"
catchup: false
tasks:
  - id: wait
    command: sleep 30
"#,
    )
    .await;
    let args: Vec<String> = [
        "--addr",
        &sandbox.addr(),
        "backfill",
        "slow",
        "--from",
        "2025-01-01",
        "--to",
        "2025-01-10",
        "--max-active",
        "1",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut cli = BatonProcess::spawn("backfill-cli", sandbox.path(), &args);
    cli.wait_for_log(
        Regex::new(r"(?m)^backfill \S+ of slow created").expect("valid regex"),
        WAIT,
    )
    .await;
    let backfill_id = Regex::new(r"(?m)^backfill (\S+) of slow created")
        .expect("valid regex")
        .captures(&cli.log_contents())
        .map(|captures| captures[1].to_string())
        .expect("a backfill id");
    // Its first run is under way.
    let running = poll_until(WAIT, POLL_INTERVAL, async || {
        let runs = runs_of(&mut api, "slow").await;
        runs.into_iter()
            .find(|run| run.backfill_id == backfill_id && run.state == RunState::Running as i32)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no running run of backfill {backfill_id}\n{}",
            api.logs_tail()
        )
    });

    cli.signal(Signal::SIGINT);
    let status = cli.wait_exit(WAIT).await;
    assert!(
        !status.success(),
        "exited 0 after Ctrl-C\n{}",
        cli.log_tail()
    );
    let log = cli.log_contents();
    assert!(
        log.contains(&format!("interrupted: cancelling backfill {backfill_id}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("backfill {backfill_id} of slow cancelled")),
        "{log}"
    );

    // The backfill is cancelled, its run too, and no other run was created.
    let backfill = bounded(api.client.backfills.get_backfill(GetBackfillRequest {
        backfill_id: backfill_id.clone(),
    }))
    .await
    .expect("GetBackfill")
    .backfill
    .expect("a backfill");
    assert_eq!(
        backfill.state,
        BackfillState::Cancelled as i32,
        "{backfill:?}"
    );
    let view = api.wait_for_run(&running.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Cancelled, "{}", view.describe());
    let of_backfill: Vec<Run> = runs_of(&mut api, "slow")
        .await
        .into_iter()
        .filter(|run| run.backfill_id == backfill_id)
        .collect();
    assert_eq!(of_backfill.len(), 1, "{of_backfill:?}");
}

#[tokio::test]
async fn event_emit_triggers_the_listening_dag_with_the_payload_as_params() {
    let mut sandbox = Sandbox::new("cli-event");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register(
        r#"
id: on_orders
schedule:
  events: [orders_ready]
tasks:
  - id: echo
    command: echo "$BATON_PARAMS"
"#,
    )
    .await;

    let emitted = sandbox
        .cli(&[
            "-o",
            "json",
            "event",
            "emit",
            "orders_ready",
            "--payload",
            r#"{"day": "2025-01-31", "n": 3}"#,
            "-p",
            "region=eu",
        ])
        .await;
    emitted.assert_success();
    let emitted = json_of(&emitted);
    assert_eq!(emitted["created"], true, "{emitted}");
    assert_eq!(emitted["name"], "orders_ready", "{emitted}");
    let payload = json!({"day": "2025-01-31", "n": 3, "region": "eu"});
    assert_eq!(emitted["payload"], payload, "{emitted}");
    let event_id = emitted["event_id"]
        .as_str()
        .expect("an event id")
        .to_string();
    let run_ids = strings(&emitted["run_ids"]);
    assert_eq!(run_ids.len(), 1, "{emitted}");

    let view = api.wait_for_run(&run_ids[0], WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    assert_eq!(view.run.dag_id, "on_orders");
    let params: Value = serde_json::from_str(&view.run.params_json).expect("params are JSON");
    assert_eq!(params, payload);
    assert_eq!(trigger(&view.run), RunTrigger::Event);
    assert_eq!(view.run.trigger_detail, event_id);
    let shown = sandbox
        .cli(&["-o", "json", "run", "show", &run_ids[0]])
        .await;
    shown.assert_success();
    let shown = json_of(&shown);
    assert_eq!(shown["trigger"], "event", "{shown}");
    assert_eq!(shown["trigger_detail"], event_id.as_str(), "{shown}");
    assert_eq!(shown["params"], payload, "{shown}");

    // An idempotency key makes a second emit return the first event.
    let keyed = [
        "event",
        "emit",
        "orders_ready",
        "-p",
        "day=2025-02-01",
        "--idempotency-key",
        "k1",
    ];
    let first = sandbox.cli(&keyed).await;
    first.assert_success();
    assert!(first.stdout.contains("1 run(s) triggered"), "{first}");
    assert!(first.stdout.contains("on_orders"), "{first}");
    let second = sandbox.cli(&keyed).await;
    second.assert_success();
    assert!(second.stdout.contains("already emitted"), "{second}");
    let runs = wait_for_runs(&mut api, "on_orders", RunTrigger::Event, 2).await;
    assert_eq!(runs.len(), 2, "{runs:?}");

    let listed = sandbox
        .cli(&["-o", "json", "event", "list", "--name", "orders_ready"])
        .await;
    listed.assert_success();
    let listed = json_of(&listed);
    let events = listed["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "{listed}");
    // Newest first.
    assert_eq!(events[1]["event_id"], event_id.as_str(), "{listed}");
    assert_eq!(
        events[0]["payload"],
        json!({"day": "2025-02-01"}),
        "{listed}"
    );
    sandbox.cli(&["event", "list"]).await.assert_success();

    // An event nobody listens to triggers nothing, and says so.
    let unheard = sandbox.cli(&["event", "emit", "nobody_listens"]).await;
    unheard.assert_success();
    assert!(unheard.stdout.contains("0 run(s) triggered"), "{unheard}");
}

#[tokio::test]
async fn asset_touch_triggers_the_dag_consuming_it() {
    const URI: &str = "s3://warehouse/orders";
    let mut sandbox = Sandbox::new("cli-asset");
    let _dev = sandbox.start_dev(&[]).await;
    let mut api = sandbox.api().await;
    api.register(&format!(
        r#"
id: consumer
schedule:
  assets: ["{URI}"]
tasks:
  - id: report
    command: echo report
"#
    ))
    .await;
    api.register(&format!(
        r#"
id: producer
tasks:
  - id: load
    command: echo load
    outputs: ["{URI}"]
"#
    ))
    .await;
    let producer = sandbox
        .cli(&["-o", "json", "dag", "show", "producer"])
        .await;
    producer.assert_success();
    assert_eq!(
        json_of(&producer)["tasks"][0]["outputs"],
        json!([URI]),
        "{producer}"
    );

    let touched = sandbox.cli(&["-o", "json", "asset", "touch", URI]).await;
    touched.assert_success();
    let touched = json_of(&touched);
    assert_eq!(touched["uri"], URI, "{touched}");
    assert_eq!(touched["dag_id"], Value::Null, "{touched}");
    assert_ne!(touched["updated_at"], Value::Null, "{touched}");

    let runs = wait_for_runs(&mut api, "consumer", RunTrigger::Asset, 1).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run.state, RunState::Success as i32, "{run:?}");
    assert!(run.trigger_detail.contains(URI), "{run:?}");

    let shown = sandbox.cli(&["-o", "json", "asset", "show", URI]).await;
    shown.assert_success();
    let shown = json_of(&shown);
    assert_eq!(shown["uri"], URI, "{shown}");
    assert_eq!(shown["update_count"], 1, "{shown}");
    assert_eq!(strings(&shown["consumers"]), ["consumer"], "{shown}");
    assert_eq!(strings(&shown["producers"]), ["producer.load"], "{shown}");
    let updates = shown["updates"].as_array().expect("updates");
    assert_eq!(updates.len(), 1, "{shown}");
    assert_eq!(
        strings(&updates[0]["triggered_run_ids"]),
        std::slice::from_ref(&run.run_id),
        "{shown}"
    );
    let table = sandbox.cli(&["asset", "show", URI]).await;
    table.assert_success();
    assert!(table.stdout.contains("outside baton"), "{table}");
    assert!(table.stdout.contains(&run.run_id), "{table}");

    let listed = sandbox.cli(&["-o", "json", "asset", "list"]).await;
    listed.assert_success();
    let listed = json_of(&listed);
    let uris: Vec<&Value> = listed["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|asset| &asset["uri"])
        .collect();
    assert!(uris.contains(&&json!(URI)), "{listed}");
    sandbox.cli(&["asset", "list"]).await.assert_success();
}
