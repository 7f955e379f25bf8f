//! Cron and `every` schedules: which data interval a DAG runs next, and
//! creating its run when the interval ends.
//!
//! Each scheduled DAG has one entry in the wall-clock timer queue, at the
//! end of the next interval to run; nothing polls. A run owns its interval
//! (`intervals/<dag>/<start>`, created only if absent), so an interval has
//! one run whoever creates it: this leader, a leader that took over at the
//! fire time, or a backfill. Where the schedule stands (the end of its
//! latest scheduled interval) is kept per DAG in `schedule_positions/`,
//! written after the run it follows from; backfills do not move it.

use baton_common::ids::{DagId, RunId};
use baton_common::pb::api::RunTrigger;
use baton_common::pb::records::SchedulePositionRecord;
use baton_common::time::{Micros, micros_to_timestamp_opt};
use baton_common::timetable::{Interval, Timetable};
use chrono::{DateTime, Utc};
use prost::Message;
use tracing::{info, warn};

use super::Scheduler;
use super::deadlines::WallTimer;
use crate::plan::PlanRef;
use crate::scheduler::state::{RunEntry, RunOrigin};
use crate::store::{Op, keys};

/// Most runs one evaluation creates (catching up after a long pause is
/// bounded by `max_active_runs` first; this bounds a DAG allowing more).
const MAX_RUNS_PER_EVALUATION: usize = 1_000;

/// A DAG with a cron or `every` schedule.
#[derive(Debug)]
pub(super) struct ScheduleState {
    /// The latest version's plan: its timetable, catchup and params.
    pub plan: PlanRef,
    /// When the DAG was first registered: without a `start_date`, the
    /// schedule starts with the first interval after this.
    pub registered_at: Micros,
}

pub(super) fn to_datetime(micros: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The interval a schedule runs next, given the end of the latest interval
/// that has a run. With catchup, intervals follow one another from the
/// start date; without, a schedule that fell behind (new, paused, or its
/// leader was down) jumps to the latest complete interval. `None` once the
/// schedule is past its end date.
pub fn next_scheduled_interval(
    timetable: &Timetable,
    catchup: bool,
    last_end: Option<DateTime<Utc>>,
    registered_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<Interval> {
    let candidate = match last_end {
        Some(end) => timetable.first_interval_from(end),
        None => match timetable.start_date() {
            Some(start) => timetable.first_interval_from(start),
            None => timetable.first_interval_from(registered_at),
        },
    };
    if catchup || (last_end.is_none() && timetable.start_date().is_none()) {
        return candidate;
    }
    match (candidate, timetable.latest_complete_interval(now)) {
        (Some(next), Some(latest)) if latest.start > next.start => Some(latest),
        (candidate, _) => candidate,
    }
}

impl Scheduler {
    /// Starts following (or stops following) a DAG's schedule after it was
    /// registered or recovered with `plan` as its latest version.
    pub(super) fn follow_schedule(
        &mut self,
        dag_id: &DagId,
        plan: &PlanRef,
        registered_at: Micros,
    ) {
        if plan.settings.timetable().is_none() {
            self.schedules.remove(dag_id);
            self.wall_timers
                .remove(&WallTimer::Schedule(dag_id.clone()));
            return;
        }
        self.schedules.insert(
            dag_id.clone(),
            ScheduleState {
                plan: plan.clone(),
                registered_at,
            },
        );
        self.evaluate_schedule(dag_id);
    }

    /// Moves a schedule's position forward to `end` (never back); stored
    /// in this batch, after its run (see `commit_in_batches`).
    fn advance_position(&mut self, dag_id: &DagId, end: Micros) {
        let position = self.schedule_positions.entry(dag_id.clone()).or_insert(end);
        if *position > end {
            return;
        }
        *position = end;
        self.pending.ops.push(Op::put(
            keys::schedule_position(dag_id),
            SchedulePositionRecord {
                last_interval_end: micros_to_timestamp_opt(end),
            }
            .encode_to_vec(),
        ));
    }

    /// Creates the runs of the DAG's schedule that are due, as far as
    /// `max_active_runs` allows, and queues a timer for the next one.
    /// Called when its timer fires, when it is registered or unpaused, and
    /// when one of its runs ends.
    pub(super) fn evaluate_schedule(&mut self, dag_id: &DagId) {
        let timer = WallTimer::Schedule(dag_id.clone());
        let Some(state) = self.schedules.get(dag_id) else {
            return;
        };
        let plan = state.plan.clone();
        let Some(timetable) = plan.settings.timetable() else {
            return;
        };
        if self.dags.get(dag_id).is_none_or(|meta| meta.paused) {
            // Unpausing evaluates again; nothing fires meanwhile.
            self.wall_timers.remove(&timer);
            return;
        }
        let max = self.max_active_runs(dag_id);
        for _ in 0..MAX_RUNS_PER_EVALUATION {
            let Some(state) = self.schedules.get(dag_id) else {
                return;
            };
            let now = self.parts.config.clock.now();
            let next = next_scheduled_interval(
                timetable,
                plan.settings.catchup,
                self.schedule_positions
                    .get(dag_id)
                    .copied()
                    .map(to_datetime),
                to_datetime(state.registered_at),
                now,
            );
            let Some(interval) = next else {
                self.wall_timers.remove(&timer);
                return;
            };
            if interval.end > now {
                self.wall_timers
                    .insert(timer, interval.end.timestamp_micros());
                return;
            }
            if self.active_run_count(dag_id) >= max {
                // A run ending evaluates again.
                self.wall_timers.remove(&timer);
                return;
            }
            if self
                .create_interval_run(&plan, interval, RunTrigger::Scheduled, None)
                .is_none()
            {
                // Its params have no defaults (registration refuses that).
                self.wall_timers.remove(&timer);
                return;
            }
        }
        // More due than one evaluation creates: go on at the next turn.
        self.wall_timers
            .insert(timer, self.parts.config.clock.now_micros());
    }

    /// Creates the run of one data interval (scheduled or backfill), with
    /// the params' defaults (or `params_json`, already validated). Returns
    /// the run that holds (or will hold) the interval: the new one, or the
    /// one already created or being created for it; `None` when the params
    /// cannot be resolved.
    pub(super) fn create_interval_run(
        &mut self,
        plan: &PlanRef,
        interval: Interval,
        trigger: RunTrigger,
        backfill: Option<(&std::sync::Arc<str>, &std::sync::Arc<str>)>,
    ) -> Option<RunId> {
        let dag_id = plan.dag_id.clone();
        let params_json = match backfill {
            Some((_, params)) => params.clone(),
            None => match plan.settings.params.resolve(&serde_json::Map::new()) {
                Ok(params) => std::sync::Arc::from(serde_json::Value::Object(params).to_string()),
                Err(violations) => {
                    warn!(%dag_id, ?violations, "cannot create the scheduled run: a param has no default");
                    return None;
                }
            },
        };
        let (start, end) = (
            interval.start.timestamp_micros(),
            interval.end.timestamp_micros(),
        );
        let mut origin = RunOrigin::interval(start, end, trigger);
        origin.backfill_id = backfill.map(|(id, _)| id.clone());
        let entry = RunEntry::new(
            RunId::generate(),
            plan.clone(),
            params_json,
            origin,
            baton_common::time::now_micros(),
        );
        info!(%dag_id, run_id = %entry.run_id, interval_start = %interval.start, interval_end = %interval.end, ?trigger, "creating the run of a data interval");
        let holder = self.create_run(entry, None);
        if trigger == RunTrigger::Scheduled {
            self.advance_position(&dag_id, end);
        }
        Some(holder)
    }

    /// The interval a run was being created for already had a run.
    pub(super) fn on_interval_taken(&mut self, dag_id: DagId, origin: &RunOrigin) {
        if origin.trigger == RunTrigger::Scheduled {
            self.advance_position(&dag_id, origin.data_interval_end);
            // Its place is free again: the next interval may be due.
            self.evaluate_schedule(&dag_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn daily(start: Option<&str>) -> Timetable {
        Timetable::cron("0 0 * * *", chrono_tz::UTC, start.map(at), None).unwrap()
    }

    #[test]
    fn catchup_runs_every_interval_from_the_start_date_in_order() {
        let timetable = daily(Some("2026-01-01T00:00:00Z"));
        let now = at("2026-01-06T12:00:00Z");
        let registered = at("2026-01-06T10:00:00Z");
        let mut last_end = None;
        let mut starts = Vec::new();
        while let Some(next) = next_scheduled_interval(&timetable, true, last_end, registered, now)
        {
            if next.end > now {
                assert_eq!(next.start, at("2026-01-06T00:00:00Z"), "the next to fire");
                break;
            }
            starts.push(next.start);
            last_end = Some(next.end);
        }
        let expected: Vec<_> = (1..=5)
            .map(|day| at(&format!("2026-01-0{day}T00:00:00Z")))
            .collect();
        assert_eq!(starts, expected);
    }

    #[test]
    fn without_catchup_only_the_latest_complete_interval_runs() {
        let timetable = daily(Some("2026-01-01T00:00:00Z"));
        let now = at("2026-01-06T12:00:00Z");
        let registered = at("2026-01-06T10:00:00Z");
        let first = next_scheduled_interval(&timetable, false, None, registered, now).unwrap();
        assert_eq!(first.start, at("2026-01-05T00:00:00Z"));
        let next =
            next_scheduled_interval(&timetable, false, Some(first.end), registered, now).unwrap();
        assert_eq!(next.start, at("2026-01-06T00:00:00Z"));
        assert!(next.end > now, "waits for the next fire");
        // Paused for three days: resumes with the latest interval only.
        let later = at("2026-01-09T01:00:00Z");
        let resumed =
            next_scheduled_interval(&timetable, false, Some(next.start), registered, later)
                .unwrap();
        assert_eq!(resumed.start, at("2026-01-08T00:00:00Z"));
    }

    #[test]
    fn without_a_start_date_the_schedule_starts_after_registration() {
        let timetable = daily(None);
        let registered = at("2026-01-06T10:00:00Z");
        for catchup in [true, false] {
            let first =
                next_scheduled_interval(&timetable, catchup, None, registered, registered).unwrap();
            assert_eq!(first.start, at("2026-01-07T00:00:00Z"), "catchup {catchup}");
        }
    }

    #[test]
    fn every_schedules_follow_their_period() {
        let timetable = Timetable::every(
            Duration::from_secs(2),
            chrono_tz::UTC,
            Some(at("2026-01-01T00:00:00Z")),
            None,
        )
        .unwrap();
        let now = at("2026-01-01T00:00:07Z");
        let first = next_scheduled_interval(&timetable, true, None, now, now).expect("an interval");
        assert_eq!(
            (first.start, first.end),
            (at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:02Z"))
        );
        let latest = next_scheduled_interval(&timetable, false, None, now, now).unwrap();
        assert_eq!(latest.start, at("2026-01-01T00:00:04Z"));
    }
}
