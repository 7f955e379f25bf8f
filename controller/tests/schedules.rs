//! Schedules driven by a manual clock: a controller in this process on the
//! embedded store, whose wall clock the test moves, so days of cron fires
//! (daylight-saving changes included) take milliseconds.
//!
//! No worker connects, so runs stay queued or running; what is checked is
//! which runs the schedule creates, when, and for which data interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_common::client::{BatonClient, endpoint};
use baton_common::pb::api::{
    ListRunsRequest, RegisterDagRequest, Run, RunTrigger, UnpauseDagRequest,
};
use baton_common::time::timestamp_opt_to_micros;
use baton_controller::ControllerConfig;
use baton_controller::clock::{Clock, ManualClock};
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn micros_text(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A controller serving on loopback with a manual clock.
struct Controller {
    clock: Arc<ManualClock>,
    client: BatonClient,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Controller {
    async fn start(now: DateTime<Utc>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(now);
        let mut config = ControllerConfig::new(dir.path());
        config.clock = clock.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                baton_controller::serve(listener, config, shutdown)
                    .await
                    .expect("controller serves");
            }
        });
        let channel = endpoint(&format!("http://{addr}"))
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        Self {
            clock,
            client: BatonClient::from_channel(channel),
            shutdown,
            task,
            _dir: dir,
        }
    }

    async fn register(&mut self, yaml: &str) {
        self.client
            .dags
            .register_dag(RegisterDagRequest {
                spec: yaml.to_string(),
                ..RegisterDagRequest::default()
            })
            .await
            .unwrap_or_else(|status| panic!("register: {status}"));
    }

    async fn runs(&mut self, dag_id: &str) -> Vec<Run> {
        let mut runs = self
            .client
            .runs
            .list_runs(ListRunsRequest {
                dag_id: dag_id.to_string(),
                page_size: 1000,
                ..ListRunsRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
            .runs;
        runs.sort_by_key(|run| timestamp_opt_to_micros(run.data_interval_start.as_ref()));
        runs
    }

    /// Interval starts of the DAG's runs, in order.
    async fn starts(&mut self, dag_id: &str) -> Vec<String> {
        self.runs(dag_id)
            .await
            .iter()
            .map(|run| micros_text(timestamp_opt_to_micros(run.data_interval_start.as_ref())))
            .collect()
    }

    /// Moves the clock to `to` in steps, letting the scheduler react at
    /// each.
    async fn advance_to(&mut self, to: DateTime<Utc>, step: Duration) {
        let step = chrono::Duration::from_std(step).unwrap();
        while self.clock.now() < to {
            let next = (self.clock.now() + step).min(to);
            self.clock.set(next);
            // The scheduler reacts to the clock on its own task.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn wait_for_runs(&mut self, dag_id: &str, expected: usize) -> Vec<Run> {
        for _ in 0..500 {
            let runs = self.runs(dag_id).await;
            if runs.len() >= expected {
                return runs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let starts = self.starts(dag_id).await;
        panic!(
            "dag `{dag_id}` has {} runs, expected {expected}: {starts:?}",
            starts.len()
        );
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn dag(id: &str, schedule: &str, extra: &str) -> String {
    format!(
        "id: {id}\nschedule: \"{schedule}\"\n{extra}\nmax_active_runs: 1000\ntasks:\n  - id: t\n    kind: noop\n"
    )
}

#[tokio::test]
async fn cron_in_berlin_fires_at_the_right_instants_across_both_daylight_saving_changes() {
    let mut controller = Controller::start(at("2026-03-27T22:00:00Z")).await;
    let spring = "timezone: Europe/Berlin\nstart_date: 2026-03-28\nend_date: 2026-03-30T23:59:00+02:00\ncatchup: true";
    let autumn = "timezone: Europe/Berlin\nstart_date: 2026-10-24\nend_date: 2026-10-26T23:59:00+01:00\ncatchup: true";
    controller
        .register(&dag("daily-spring", "30 2 * * *", spring))
        .await;
    controller
        .register(&dag("hourly-spring", "0 * * * *", spring))
        .await;
    controller
        .register(&dag("daily-autumn", "30 2 * * *", autumn))
        .await;
    controller
        .register(&dag("hourly-autumn", "0 * * * *", autumn))
        .await;
    controller.register(&dag("macro", "@daily", spring)).await;
    controller
        .register(&dag("macro-cron", "0 0 * * *", spring))
        .await;

    // A run is created when its interval ends: the interval of 28 March
    // 02:30 CET ends at the next fire, 29 March 03:00 CEST (01:00 UTC).
    controller
        .advance_to(at("2026-03-29T00:59:59Z"), Duration::from_secs(600))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(controller.starts("daily-spring").await.is_empty());
    controller
        .advance_to(at("2026-03-29T01:00:00Z"), Duration::from_secs(600))
        .await;
    let first = controller.wait_for_runs("daily-spring", 1).await;
    assert_eq!(
        micros_text(timestamp_opt_to_micros(
            first[0].data_interval_start.as_ref()
        )),
        "2026-03-28T01:30:00Z"
    );
    controller
        .advance_to(at("2026-03-31T06:00:00Z"), Duration::from_secs(600))
        .await;
    // 02:30 does not exist on 29 March: it fires when the clock jumps, at
    // 03:00 CEST (01:00 UTC); the next days at 02:30 CEST (00:30 UTC). A
    // run is created at its interval's end, so the last one (30 March) is
    // there once 31 March 02:30 CEST passed.
    let daily = controller.wait_for_runs("daily-spring", 3).await;
    let starts: Vec<String> = daily
        .iter()
        .map(|run| micros_text(timestamp_opt_to_micros(run.data_interval_start.as_ref())))
        .collect();
    assert_eq!(
        starts,
        [
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z"
        ]
    );
    for run in &daily {
        assert_eq!(run.trigger, RunTrigger::Scheduled as i32);
        assert_eq!(run.logical_date, run.data_interval_start);
    }
    let ends: Vec<String> = daily
        .iter()
        .map(|run| micros_text(timestamp_opt_to_micros(run.data_interval_end.as_ref())))
        .collect();
    assert_eq!(
        ends,
        [
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z",
            "2026-03-31T00:30:00Z"
        ],
        "each interval ends where the next starts"
    );
    // Hourly: 24 fires on the 28th (CET), 23 on the 29th (the skipped
    // hour), 24 on the 30th; all one hour apart in absolute time.
    let hourly = controller.runs("hourly-spring").await;
    let starts: Vec<i64> = hourly
        .iter()
        .map(|run| timestamp_opt_to_micros(run.data_interval_start.as_ref()))
        .collect();
    assert_eq!(
        starts.len(),
        24 + 23 + 24,
        "{:?}",
        starts.iter().map(|s| micros_text(*s)).collect::<Vec<_>>()
    );
    assert_eq!(micros_text(starts[0]), "2026-03-27T23:00:00Z");
    assert!(
        starts
            .windows(2)
            .all(|pair| pair[1] - pair[0] == 3_600_000_000),
        "hourly fires are an hour apart, none missing, none doubled"
    );
    // A macro is its cron.
    let macro_starts = controller.starts("macro").await;
    assert_eq!(macro_starts, controller.starts("macro-cron").await);
    assert_eq!(macro_starts.len(), 3, "{macro_starts:?}");

    // Nothing is scheduled between the two windows: jump.
    controller.clock.set(at("2026-10-23T12:00:00Z"));
    controller
        .advance_to(at("2026-10-27T06:00:00Z"), Duration::from_secs(600))
        .await;
    // 25 October: 02:30 happens twice; a fixed-time job fires once, at the
    // first (CEST, 00:30 UTC).
    let daily = controller.wait_for_runs("daily-autumn", 3).await;
    let starts: Vec<String> = daily
        .iter()
        .map(|run| micros_text(timestamp_opt_to_micros(run.data_interval_start.as_ref())))
        .collect();
    assert_eq!(
        starts,
        [
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z"
        ]
    );
    // Hourly on 25 October: 25 fires (the repeated hour fires twice, at
    // two real instants), still one hour apart.
    let hourly = controller.runs("hourly-autumn").await;
    let starts: Vec<i64> = hourly
        .iter()
        .map(|run| timestamp_opt_to_micros(run.data_interval_start.as_ref()))
        .collect();
    assert_eq!(starts.len(), 24 + 25 + 24);
    assert_eq!(micros_text(starts[0]), "2026-10-23T22:00:00Z");
    assert!(
        starts
            .windows(2)
            .all(|pair| pair[1] - pair[0] == 3_600_000_000)
    );
    controller.stop().await;
}

#[tokio::test]
async fn catchup_creates_every_missed_interval_in_order_and_without_it_only_the_latest() {
    let now = at("2026-06-10T12:00:00Z");
    let mut controller = Controller::start(now).await;
    // Start date five daily intervals back: 5 June to 9 June have ended.
    let start = "start_date: 2026-06-05";
    controller
        .register(&dag(
            "with-catchup",
            "@daily",
            &format!("{start}\ncatchup: true"),
        ))
        .await;
    controller
        .register(&dag(
            "without-catchup",
            "@daily",
            &format!("{start}\ncatchup: false"),
        ))
        .await;
    let runs = controller.wait_for_runs("with-catchup", 5).await;
    let intervals: Vec<(String, String)> = runs
        .iter()
        .map(|run| {
            (
                micros_text(timestamp_opt_to_micros(run.data_interval_start.as_ref())),
                micros_text(timestamp_opt_to_micros(run.data_interval_end.as_ref())),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = (5..=9)
        .map(|day| {
            (
                format!("2026-06-{day:02}T00:00:00Z"),
                format!("2026-06-{:02}T00:00:00Z", day + 1),
            )
        })
        .collect();
    assert_eq!(intervals, expected);
    // Created in order: run ids are time-ordered (UUIDv7).
    let mut by_creation = runs.clone();
    by_creation.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    assert_eq!(
        by_creation
            .iter()
            .map(|run| run.run_id.clone())
            .collect::<Vec<_>>(),
        runs.iter()
            .map(|run| run.run_id.clone())
            .collect::<Vec<_>>(),
        "runs were created in interval order"
    );
    let latest = controller.wait_for_runs("without-catchup", 1).await;
    assert_eq!(latest.len(), 1);
    assert_eq!(
        micros_text(timestamp_opt_to_micros(
            latest[0].data_interval_start.as_ref()
        )),
        "2026-06-09T00:00:00Z"
    );
    // Nothing more until the next interval ends; then exactly one more each.
    controller
        .advance_to(at("2026-06-11T00:00:01Z"), Duration::from_secs(3600))
        .await;
    assert_eq!(controller.wait_for_runs("with-catchup", 6).await.len(), 6);
    assert_eq!(
        controller.wait_for_runs("without-catchup", 2).await.len(),
        2
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_paused_dag_creates_nothing_and_catches_up_on_unpause_by_its_setting() {
    let mut controller = Controller::start(at("2026-06-10T12:00:00Z")).await;
    controller
        .register(&dag(
            "later",
            "@daily",
            "start_date: 2026-06-09\ncatchup: true",
        ))
        .await;
    controller.wait_for_runs("later", 1).await;
    controller
        .client
        .dags
        .pause_dag(baton_common::pb::api::PauseDagRequest {
            dag_id: "later".into(),
        })
        .await
        .unwrap();
    controller
        .advance_to(at("2026-06-13T12:00:00Z"), Duration::from_secs(3600))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        controller.runs("later").await.len(),
        1,
        "paused: no new run"
    );
    controller
        .client
        .dags
        .unpause_dag(UnpauseDagRequest {
            dag_id: "later".into(),
        })
        .await
        .unwrap();
    let runs = controller.wait_for_runs("later", 4).await;
    let starts: BTreeMap<String, ()> = runs
        .iter()
        .map(|run| {
            (
                micros_text(timestamp_opt_to_micros(run.data_interval_start.as_ref())),
                (),
            )
        })
        .collect();
    assert_eq!(
        starts.keys().cloned().collect::<Vec<_>>(),
        [
            "2026-06-09T00:00:00Z",
            "2026-06-10T00:00:00Z",
            "2026-06-11T00:00:00Z",
            "2026-06-12T00:00:00Z"
        ]
    );
    controller.stop().await;
}
