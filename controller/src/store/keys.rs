//! The store's key layout; the only place that builds or parses keys.
//!
//! Keys are UTF-8 paths relative to the store's prefix (the etcd store puts
//! its configurable prefix in front; the embedded store uses them as they
//! are). Values are protobuf records from `proto/baton/store/v1`.
//!
//! | key | value | written |
//! |---|---|---|
//! | `dags/<dag>` | `DagMetaRecord` | register, pause, unpause |
//! | `dag_versions/<dag>/<version:010>` | `DagVersionRecord` | register (new version) |
//! | `runs/<run>` | `RunRecord` | every run change, at most once per batch |
//! | `dag_runs/<dag>/<run>` | empty | run created (index of a DAG's runs) |
//! | `active/<run>` | empty | run created; deleted when it ends |
//! | `tasks/<run>/<task>` | `TaskRecord` | every task change, at most once per batch |
//! | `attempts/<run>/<task>/<attempt:05>` | `AttemptRecord` | an attempt ended |
//! | `history/<run>/<µs:020>.<term:010>.<seq:010>` | `RunHistoryRecord` | every batch that changed the run or its tasks (their changes, in order) |
//! | `idem/<dag>/<sha256(key)>` | `IdempotencyRecord` | run created with a key |
//! | `pools/<pool>` | `PoolRecord` | pool created, resized, deleted |
//! | `intervals/<dag>/<start µs:020>` | `IntervalRecord` | run of a data interval created (scheduled, backfill) |
//! | `schedule_positions/<dag>` | `SchedulePositionRecord` | a scheduled run created (or found taken) |
//! | `backfills/<backfill>` | `BackfillRecord` (counts, cursor) | backfill created, progressed, ended |
//! | `backfill_intervals/<backfill>/<position:06>` | `BackfillInterval` | an interval of a backfill planned or changed |
//! | `active_backfills/<backfill>` | empty | backfill created; deleted when it ends |
//! | `events/<event>` | `EventRecord` | event emitted |
//! | `event_keys/<name>/<sha256(key)>` | `EventKeyRecord` | event emitted with an idempotency key |
//! | `assets/<sha256(uri)>` | `AssetRecord` | asset updated |
//! | `asset_updates/<sha256(uri)>/<update>` | `AssetUpdateRecord` | asset updated |
//! | `asset_queue/<dag>/<sha256(uri)>` | `AssetQueueRecord` | an asset a DAG consumes updated; deleted when the DAG's run is created |
//! | `leader/<lease>` | leader's id and address (JSON) | etcd election (cluster mode) |
//! | `controllers/<id>` | a controller's id, address, start (JSON) | each controller, under its own lease |
//!
//! DAG metadata and versions live under different prefixes so that listing
//! DAGs never reads specs, and run records apart from task records so that
//! listing runs never reads tasks. Run ids are UUIDv7, so `runs/` and
//! `dag_runs/<dag>/` sort by creation time. A task without a record is
//! pending and was never attempted, so creating a run writes one key per run,
//! not one per task.

use baton_common::ids::{DagId, PoolName, RunId, TaskId};
use baton_common::time::Micros;
use sha2::{Digest, Sha256};

pub const DAGS: &str = "dags/";
pub const POOLS: &str = "pools/";
pub const RUNS: &str = "runs/";
pub const BACKFILLS: &str = "backfills/";
pub const BACKFILL_INTERVALS: &str = "backfill_intervals/";
pub const SCHEDULE_POSITIONS: &str = "schedule_positions/";
pub const ACTIVE_BACKFILLS: &str = "active_backfills/";
pub const EVENTS: &str = "events/";
pub const ASSETS: &str = "assets/";
pub const ASSET_QUEUE: &str = "asset_queue/";
pub const ACTIVE: &str = "active/";
/// Cluster mode: one key per running controller (`controllers/<id>`, JSON),
/// bound to that controller's lease; the election lives under `leader/`.
pub const CONTROLLERS: &str = "controllers/";
pub const LEADER: &str = "leader";

pub fn controller(controller_id: &str) -> Vec<u8> {
    format!("controllers/{controller_id}").into_bytes()
}

pub fn pool(pool: &PoolName) -> Vec<u8> {
    format!("{POOLS}{pool}").into_bytes()
}

pub fn dag(dag_id: &DagId) -> Vec<u8> {
    format!("dags/{dag_id}").into_bytes()
}

pub fn dag_versions(dag_id: &DagId) -> Vec<u8> {
    format!("dag_versions/{dag_id}/").into_bytes()
}

pub fn dag_version(dag_id: &DagId, version: u32) -> Vec<u8> {
    format!("dag_versions/{dag_id}/{version:010}").into_bytes()
}

pub fn run(run_id: &RunId) -> Vec<u8> {
    format!("runs/{run_id}").into_bytes()
}

pub fn dag_runs(dag_id: &DagId) -> Vec<u8> {
    format!("dag_runs/{dag_id}/").into_bytes()
}

pub fn dag_run(dag_id: &DagId, run_id: &RunId) -> Vec<u8> {
    format!("dag_runs/{dag_id}/{run_id}").into_bytes()
}

pub fn active(run_id: &RunId) -> Vec<u8> {
    format!("active/{run_id}").into_bytes()
}

pub fn tasks(run_id: &RunId) -> Vec<u8> {
    format!("tasks/{run_id}/").into_bytes()
}

pub fn task(run_id: &RunId, task_id: &str) -> Vec<u8> {
    format!("tasks/{run_id}/{task_id}").into_bytes()
}

pub fn run_attempts(run_id: &RunId) -> Vec<u8> {
    format!("attempts/{run_id}/").into_bytes()
}

pub fn task_attempts(run_id: &RunId, task_id: &str) -> Vec<u8> {
    format!("attempts/{run_id}/{task_id}/").into_bytes()
}

pub fn attempt(run_id: &RunId, task_id: &str, attempt: u32) -> Vec<u8> {
    format!("attempts/{run_id}/{task_id}/{attempt:05}").into_bytes()
}

/// A run's history records, in the order written.
pub fn history(run_id: &RunId) -> Vec<u8> {
    format!("history/{run_id}/").into_bytes()
}

/// One batch's changes of a run: ordered by the time of its first change,
/// then the leader's term and the leader's count of history records.
pub fn history_batch(run_id: &RunId, at: Micros, term: i64, seq: u64) -> Vec<u8> {
    format!(
        "history/{run_id}/{:020}.{:010}.{seq:010}",
        at.max(0),
        term.max(0)
    )
    .into_bytes()
}

pub fn idempotency_prefix(dag_id: &DagId) -> Vec<u8> {
    format!("idem/{dag_id}/").into_bytes()
}

/// Idempotency keys are user text of any shape, so they are hashed into the
/// key.
pub fn idempotency(dag_id: &DagId, idempotency_key: &str) -> Vec<u8> {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    format!("idem/{dag_id}/{}", hex::encode(digest)).into_bytes()
}

/// Interval starts are microseconds since the epoch, zero-padded so that
/// keys sort by time (negative starts, before 1970, are not schedulable).
pub fn interval(dag_id: &DagId, start: Micros) -> Vec<u8> {
    format!("intervals/{dag_id}/{:020}", start.max(0)).into_bytes()
}

pub fn intervals(dag_id: &DagId) -> Vec<u8> {
    format!("intervals/{dag_id}/").into_bytes()
}

/// The interval start of an `intervals/<dag>/<start>` key.
pub fn parse_interval_start(key: &[u8]) -> Option<Micros> {
    last_segment(key).parse().ok()
}

/// Where a DAG's schedule stands: the end of its latest scheduled interval.
pub fn schedule_position(dag_id: &DagId) -> Vec<u8> {
    format!("{SCHEDULE_POSITIONS}{dag_id}").into_bytes()
}

pub fn backfill(backfill_id: &str) -> Vec<u8> {
    format!("{BACKFILLS}{backfill_id}").into_bytes()
}

pub fn backfill_intervals(backfill_id: &str) -> Vec<u8> {
    format!("{BACKFILL_INTERVALS}{backfill_id}/").into_bytes()
}

pub fn backfill_interval(backfill_id: &str, position: usize) -> Vec<u8> {
    format!("{BACKFILL_INTERVALS}{backfill_id}/{position:06}").into_bytes()
}

pub fn active_backfill(backfill_id: &str) -> Vec<u8> {
    format!("{ACTIVE_BACKFILLS}{backfill_id}").into_bytes()
}

pub fn event(event_id: &str) -> Vec<u8> {
    format!("{EVENTS}{event_id}").into_bytes()
}

/// Like idempotency keys, event keys are user text and hashed.
pub fn event_key(name: &str, idempotency_key: &str) -> Vec<u8> {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    format!("event_keys/{name}/{}", hex::encode(digest)).into_bytes()
}

/// URIs hold `/`, `:` and any other character, so they are hashed into keys.
pub fn asset_hash(uri: &str) -> String {
    hex::encode(Sha256::digest(uri.as_bytes()))
}

pub fn asset(uri: &str) -> Vec<u8> {
    format!("{ASSETS}{}", asset_hash(uri)).into_bytes()
}

pub fn asset_updates(uri: &str) -> Vec<u8> {
    format!("asset_updates/{}/", asset_hash(uri)).into_bytes()
}

pub fn asset_update(uri: &str, update_id: &str) -> Vec<u8> {
    format!("asset_updates/{}/{update_id}", asset_hash(uri)).into_bytes()
}

pub fn asset_queue_entry(dag_id: &DagId, uri: &str) -> Vec<u8> {
    format!("{ASSET_QUEUE}{dag_id}/{}", asset_hash(uri)).into_bytes()
}

/// The DAG of an `asset_queue/<dag>/<hash>` key.
pub fn parse_asset_queue_dag(key: &[u8]) -> Option<DagId> {
    let text = std::str::from_utf8(key).ok()?;
    let rest = text.strip_prefix(ASSET_QUEUE)?;
    DagId::new(rest.split('/').next()?).ok()
}

/// The last path segment of a key, as text.
pub fn last_segment(key: &[u8]) -> &str {
    let text = std::str::from_utf8(key).unwrap_or("");
    text.rsplit('/').next().unwrap_or("")
}

/// The run id of an `active/<run>`, `runs/<run>` or `dag_runs/<dag>/<run>` key.
pub fn parse_run_id(key: &[u8]) -> Option<RunId> {
    last_segment(key).parse().ok()
}

/// The DAG id of a `dags/<dag>` key.
pub fn parse_dag_id(key: &[u8]) -> Option<DagId> {
    DagId::new(last_segment(key)).ok()
}

/// The task id of a `tasks/<run>/<task>` key.
pub fn parse_task_id(key: &[u8]) -> Option<TaskId> {
    TaskId::new(last_segment(key)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_their_ids() {
        let dag_id = DagId::new("etl").unwrap();
        let run_id = RunId::generate();
        assert_eq!(parse_run_id(&run(&run_id)), Some(run_id));
        assert_eq!(parse_run_id(&dag_run(&dag_id, &run_id)), Some(run_id));
        assert_eq!(parse_dag_id(&dag(&dag_id)), Some(dag_id.clone()));
        assert_eq!(
            parse_task_id(&task(&run_id, "load")).unwrap().as_str(),
            "load"
        );
        assert_eq!(dag_version(&dag_id, 7), b"dag_versions/etl/0000000007");
        assert!(attempt(&run_id, "load", 3).ends_with(b"/load/00003"));
    }

    #[test]
    fn intervals_sort_by_time_and_parse_back() {
        let dag_id = DagId::new("d").unwrap();
        let early = interval(&dag_id, 999_999);
        let late = interval(&dag_id, 1_000_000);
        assert!(early < late);
        assert!(late.starts_with(&intervals(&dag_id)));
        assert_eq!(parse_interval_start(&late), Some(1_000_000));
    }

    #[test]
    fn versions_sort_numerically() {
        let dag_id = DagId::new("d").unwrap();
        assert!(dag_version(&dag_id, 9) < dag_version(&dag_id, 10));
    }

    #[test]
    fn idempotency_keys_are_hashed_per_dag() {
        let a = DagId::new("a").unwrap();
        let b = DagId::new("b").unwrap();
        assert_ne!(
            idempotency(&a, "k/1 with spaces"),
            idempotency(&b, "k/1 with spaces")
        );
        assert!(idempotency(&a, "x").starts_with(&idempotency_prefix(&a)));
    }
}
