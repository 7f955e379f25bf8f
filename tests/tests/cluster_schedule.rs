//! A schedule across leader failovers: a DAG scheduled `every: 2s` with
//! catchup on a real etcd and three `baton controller` replicas (lease TTL
//! 2 s). The leader is killed with SIGKILL exactly at a fire time, twice;
//! afterwards every interval from the first run on has exactly one run: the
//! new leader created the ones missed while nobody led, and the interval
//! the old leader was creating when it died was neither lost nor doubled.
//!
//! Also on etcd: asset-triggered runs, and a backfill that goes on after
//! its leader is killed.
//!
//! Without etcd this test is skipped, or fails under `CI=true`
//! (`baton_tests::etcd::etcd_binary`).

use std::collections::BTreeMap;
use std::time::Duration;

use baton_tests::pb::{
    BackfillState, CreateBackfillRequest, GetBackfillRequest, ListRunsRequest, Run, RunTrigger,
};
use baton_tests::{Api, ClusterBuilder, micros};
use chrono::Utc;

const WAIT: Duration = Duration::from_secs(60);
const PERIOD_MICROS: i64 = 2_000_000;

const DAG: &str = r#"
id: every-two-seconds
schedule: {every: 2s}
catchup: true
max_active_runs: 100
tasks:
  - id: tick
    kind: noop
"#;

async fn scheduled_runs(api: &mut Api) -> Vec<Run> {
    let mut runs = api
        .client
        .runs
        .list_runs(ListRunsRequest {
            dag_id: "every-two-seconds".into(),
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

/// Waits until the schedule has created the run whose interval ends at or
/// after `end` (microseconds).
async fn wait_for_interval_end(api: &mut Api, end: i64) -> Vec<Run> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let runs = scheduled_runs(api).await;
        if runs
            .last()
            .is_some_and(|run| micros(run.data_interval_end.as_ref()) >= end)
        {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no run for the interval ending at {end} within {WAIT:?}; {} runs\n{}",
            runs.len(),
            api.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_leader_killed_at_a_fire_time_neither_misses_nor_doubles_a_scheduled_run() {
    let Some(mut cluster) = ClusterBuilder::new("schedule-failover")
        .build_and_start()
        .await
    else {
        return;
    };
    let addrs = cluster.addrs();
    let _worker = cluster.start_worker("w1", &addrs, &["--slots", "8"]).await;
    let mut api = cluster.api().await;
    api.register(DAG).await;
    let runs = wait_for_interval_end(&mut api, 0).await;
    let first_end = micros(runs[0].data_interval_end.as_ref());
    let mut last_end = wait_for_interval_end(&mut api, first_end + PERIOD_MICROS).await;

    for round in 1..=2 {
        let (leader, before) = cluster.leader(WAIT).await;
        // The next fire time after the latest run: kill the leader at it.
        let latest = micros(last_end.last().unwrap().data_interval_end.as_ref());
        let now = Utc::now().timestamp_micros();
        let fire = latest + PERIOD_MICROS * ((now - latest) / PERIOD_MICROS + 1);
        // Round 1 just before the fire time (the leader may be sleeping
        // towards it), round 2 at it (it may be creating the run).
        let aim = fire - if round == 1 { 3_000 } else { 0 };
        let wait = Duration::from_micros((aim - Utc::now().timestamp_micros()).max(0) as u64);
        tokio::time::sleep(wait).await;
        let killed_at = Utc::now().timestamp_micros();
        let exit = cluster.kill_controller(leader).await;
        eprintln!(
            "round {round}: killed leader {} ({exit}) {} µs from the fire time",
            before.leader_id,
            killed_at - fire
        );
        cluster
            .wait_for_status(
                "a new leader",
                &cluster.others(leader),
                WAIT,
                Duration::from_millis(50),
                |status| status.leader_term > before.leader_term,
            )
            .await;
        // A few fires after the new leader took over.
        last_end = wait_for_interval_end(&mut api, fire + 3 * PERIOD_MICROS).await;
        cluster.start_controller(leader).await;
    }

    let runs = scheduled_runs(&mut api).await;
    let mut by_start: BTreeMap<i64, Vec<&Run>> = BTreeMap::new();
    for run in &runs {
        assert_eq!(run.trigger, RunTrigger::Scheduled as i32, "{run:?}");
        by_start
            .entry(micros(run.data_interval_start.as_ref()))
            .or_default()
            .push(run);
    }
    let doubled: Vec<_> = by_start
        .iter()
        .filter(|(_, runs)| runs.len() > 1)
        .map(|(start, runs)| {
            (
                start,
                runs.iter().map(|run| &run.run_id).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert!(doubled.is_empty(), "intervals with two runs: {doubled:?}");
    let starts: Vec<i64> = by_start.keys().copied().collect();
    let gaps: Vec<_> = starts
        .windows(2)
        .filter(|pair| pair[1] - pair[0] != PERIOD_MICROS)
        .collect();
    assert!(
        gaps.is_empty(),
        "intervals missing between runs: {gaps:?} (starts {starts:?})"
    );
    for run in &runs {
        assert_eq!(
            micros(run.data_interval_end.as_ref()) - micros(run.data_interval_start.as_ref()),
            PERIOD_MICROS
        );
        assert_eq!(run.logical_date, run.data_interval_start);
    }
    assert!(runs.len() >= 8, "{} runs", runs.len());
}

const PRODUCER: &str = r#"
id: producer
tasks:
  - id: write
    kind: noop
    outputs: ["s3://lake/orders"]
"#;

const CONSUMER: &str = r#"
id: consumer
schedule: {assets: ["s3://lake/orders"]}
tasks:
  - id: read
    kind: noop
"#;

const DAILY: &str = r#"
id: daily
schedule: "@daily"
start_date: 2026-01-01
catchup: false
tasks:
  - id: work
    command: [sleep, "0.4"]
"#;

async fn runs_of(api: &mut Api, dag_id: &str) -> Vec<Run> {
    api.client
        .runs
        .list_runs(ListRunsRequest {
            dag_id: dag_id.into(),
            page_size: 1000,
            ..ListRunsRequest::default()
        })
        .await
        .expect("list runs")
        .into_inner()
        .runs
}

/// On etcd, an asset update and the run it triggers are stored in one
/// transaction with the consumer's queue emptied (no overlapping keys); and
/// a backfill goes on after its leader is killed, with every interval run
/// once and its counts exact.
#[tokio::test]
async fn assets_trigger_runs_and_a_backfill_survives_its_leader_on_etcd() {
    let Some(mut cluster) = ClusterBuilder::new("schedule-etcd").build_and_start().await else {
        return;
    };
    let addrs = cluster.addrs();
    let _worker = cluster.start_worker("w1", &addrs, &["--slots", "8"]).await;
    let mut api = cluster.api().await;
    api.register(PRODUCER).await;
    api.register(CONSUMER).await;
    for round in 1..=2 {
        let run = api.trigger("producer").await;
        api.wait_for_run(&run.run_id, WAIT).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while runs_of(&mut api, "consumer").await.len() < round {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the consumer did not run after update {round}\n{}",
                cluster.logs_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let consumer = runs_of(&mut api, "consumer").await;
    assert_eq!(consumer.len(), 2);
    assert!(
        consumer
            .iter()
            .all(|run| run.trigger == RunTrigger::Asset as i32)
    );

    api.register(DAILY).await;
    let created = api
        .client
        .backfills
        .create_backfill(CreateBackfillRequest {
            dag_id: "daily".into(),
            from: Some(baton_common::time::micros_to_timestamp(
                chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                    .unwrap()
                    .timestamp_micros(),
            )),
            to: Some(baton_common::time::micros_to_timestamp(
                chrono::DateTime::parse_from_rfc3339("2026-01-20T00:00:00Z")
                    .unwrap()
                    .timestamp_micros(),
            )),
            max_active: 2,
            ..CreateBackfillRequest::default()
        })
        .await
        .unwrap_or_else(|status| panic!("backfill: {status}\n{}", cluster.logs_tail()))
        .into_inner()
        .backfill
        .unwrap();
    let get = async |api: &mut Api| {
        api.client
            .backfills
            .get_backfill(GetBackfillRequest {
                backfill_id: created.backfill_id.clone(),
            })
            .await
            .map(|response| response.into_inner().backfill.unwrap())
    };
    // Some intervals done, most not: kill the leader.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(backfill) = get(&mut api).await
            && backfill.succeeded >= 4
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backfill did not progress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (leader, _) = cluster.leader(WAIT).await;
    cluster.kill_controller(leader).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let done = loop {
        if let Ok(backfill) = get(&mut api).await
            && backfill.state() != BackfillState::Running
        {
            break backfill;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backfill did not end after the failover\n{}",
            cluster.logs_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done.state(), BackfillState::Completed, "{done:?}");
    assert_eq!(
        (done.succeeded, done.failed, done.active),
        (20, 0, 0),
        "{done:?}"
    );
    let january: Vec<Run> = runs_of(&mut api, "daily")
        .await
        .into_iter()
        .filter(|run| run.trigger == RunTrigger::Backfill as i32)
        .collect();
    let mut starts: Vec<i64> = january
        .iter()
        .map(|run| micros(run.data_interval_start.as_ref()))
        .collect();
    starts.sort_unstable();
    starts.dedup();
    assert_eq!(starts.len(), 20, "one run per interval: {january:?}");
    assert_eq!(january.len(), 20, "no interval ran twice");
    assert!(
        done.intervals
            .iter()
            .all(|interval| interval.run_state == baton_tests::pb::RunState::Success as i32)
    );
}
