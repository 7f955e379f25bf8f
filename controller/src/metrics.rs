//! The controller's Prometheus metrics and the `/metrics` endpoint that
//! serves them (OpenMetrics text, `prometheus-client`).
//!
//! Counters and histograms of what the scheduler did are fed from the
//! changes a batch stores (`observe_changes`, called when a batch is cut,
//! so a metric never counts what was not stored), and from the store's
//! commits. What describes the present (queue depths, oldest ready age,
//! workers and free slots, pools, active runs, leadership, freshness) is
//! read when Prometheus scrapes, from the scheduler's status (what
//! `GetClusterStatus` answers about workers, queues and pools, without its
//! store read), so it is never stale. Scrapes take turns. Nothing is recorded unless the endpoint
//! was started (`--metrics-listen`): metrics off cost nothing.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use baton_common::metrics_http::MetricsSection;
use baton_common::pb::api::{AttemptOutcome, RunState, TaskState};
use baton_common::states::{
    FINAL_TASK_STATES, final_task_state_index, outcome_name, run_state_name, task_state_is_final,
    task_state_name,
};
use baton_common::time::{Micros, duration_from_proto, now_micros};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::ApiContextRef;
use crate::scheduler::SchedulerStatus;
use crate::scheduler::state::{Change, Changed, RunEntry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskStateLabels {
    dag_id: String,
    task_id: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    dag_id: String,
    task_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    dag_id: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DagLabels {
    dag_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunStateLabels {
    dag_id: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller_id: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The `baton_tasks_finished_total` counters of a plan's tasks, made on
/// first use and held by the plan ([`DagPlan::finished_counters`]), so that
/// every run of a DAG version shares them. A fan-out's runs end each task
/// once: looking it up in the family instead (two label strings allocated,
/// hashed and compared in a map with a series per task and state) was most
/// of what the metrics cost per task. They are the family's own counters,
/// so a scrape sees what they count. Empty while metrics are off.
///
/// [`DagPlan::finished_counters`]: crate::plan::DagPlan::finished_counters
#[derive(Debug, Default)]
pub struct PlanCounters {
    tasks: OnceLock<Box<[TaskCounters]>>,
}

/// One task's counters, by final state ([`final_task_state_index`]).
#[derive(Debug, Default)]
struct TaskCounters([OnceLock<Counter>; FINAL_TASK_STATES]);

fn seconds_buckets() -> Histogram {
    // 1 ms to about 9 hours.
    Histogram::new(exponential_buckets(0.001, 2.5, 18))
}

/// Every metric of the controller.
pub struct ControllerMetrics {
    registry: Registry,
    tasks_finished: Family<TaskStateLabels, Counter>,
    task_retries: Family<TaskLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    task_duration: Family<DagLabels, Histogram, fn() -> Histogram>,
    scheduling_delay: Family<DagLabels, Histogram, fn() -> Histogram>,
    runs_finished: Family<RunStateLabels, Counter>,
    store_commit_seconds: Histogram,
    store_batch_operations: Histogram,
    last_success: Family<DagLabels, FloatGauge>,
    seconds_since_success: Family<DagLabels, FloatGauge>,
    /// Last successful run's end per DAG (µs), for both freshness gauges.
    last_success_at: Mutex<HashMap<String, Micros>>,
    queue_ready: Family<QueueLabels, Gauge>,
    queue_limited: Family<QueueLabels, Gauge>,
    queue_running: Family<QueueLabels, Gauge>,
    queue_oldest_ready_age: Family<QueueLabels, FloatGauge>,
    queue_workers: Family<QueueLabels, Gauge>,
    queue_free_slots: Family<QueueLabels, Gauge>,
    pool_slots: Family<PoolLabels, Gauge>,
    pool_used: Family<PoolLabels, Gauge>,
    pool_queued: Family<PoolLabels, Gauge>,
    workers_connected: Gauge,
    worker_slots: Gauge,
    worker_free_slots: Gauge,
    runs_active: Gauge,
    leader: Family<ControllerLabels, Gauge>,
    notifications: Family<NotificationLabels, Counter>,
    notification_failed_posts: Counter,
    /// Held by one scrape at a time (see [`ControllerMetrics::render`]).
    render_turn: Mutex<()>,
}

static METRICS: OnceLock<Arc<ControllerMetrics>> = OnceLock::new();

/// The metrics, once the endpoint started them; `None` when metrics are
/// off, and then nothing is recorded.
pub fn metrics() -> Option<&'static ControllerMetrics> {
    METRICS.get().map(Arc::as_ref)
}

/// Turns metrics on for this process (idempotent).
pub fn enable() -> &'static ControllerMetrics {
    METRICS.get_or_init(|| Arc::new(ControllerMetrics::new()))
}

impl ControllerMetrics {
    fn new() -> Self {
        let mut metrics = Self {
            tasks_finished: Family::default(),
            task_retries: Family::default(),
            attempts: Family::default(),
            task_duration: Family::new_with_constructor(seconds_buckets),
            scheduling_delay: Family::new_with_constructor(seconds_buckets),
            runs_finished: Family::default(),
            store_commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            store_batch_operations: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            last_success: Family::default(),
            seconds_since_success: Family::default(),
            last_success_at: Mutex::new(HashMap::new()),
            queue_ready: Family::default(),
            queue_limited: Family::default(),
            queue_running: Family::default(),
            queue_oldest_ready_age: Family::default(),
            queue_workers: Family::default(),
            queue_free_slots: Family::default(),
            pool_slots: Family::default(),
            pool_used: Family::default(),
            pool_queued: Family::default(),
            workers_connected: Gauge::default(),
            worker_slots: Gauge::default(),
            worker_free_slots: Gauge::default(),
            runs_active: Gauge::default(),
            leader: Family::default(),
            notifications: Family::default(),
            notification_failed_posts: Counter::default(),
            render_turn: Mutex::new(()),
            registry: Registry::default(),
        };
        metrics.registry.register(
            "baton_tasks_finished",
            "Tasks (and mapped instances) that reached a final state, by DAG, task and state",
            metrics.tasks_finished.clone(),
        );
        metrics.registry.register(
            "baton_task_retries",
            "Failed attempts that were retried, by DAG and task",
            metrics.task_retries.clone(),
        );
        metrics.registry.register(
            "baton_attempts",
            "Attempts that ended, by DAG and outcome",
            metrics.attempts.clone(),
        );
        metrics.registry.register(
            "baton_task_duration_seconds",
            "Time from an attempt's start to its end, by DAG",
            metrics.task_duration.clone(),
        );
        metrics.registry.register(
            "baton_task_scheduling_delay_seconds",
            "Time from a task being ready to its attempt running, by DAG",
            metrics.scheduling_delay.clone(),
        );
        metrics.registry.register(
            "baton_runs_finished",
            "Runs that ended, by DAG and state",
            metrics.runs_finished.clone(),
        );
        metrics.registry.register(
            "baton_store_commit_duration_seconds",
            "Time the store took to commit one batch (one transaction)",
            metrics.store_commit_seconds.clone(),
        );
        metrics.registry.register(
            "baton_store_batch_operations",
            "Operations in one committed batch",
            metrics.store_batch_operations.clone(),
        );
        metrics.registry.register(
            "baton_dag_last_success_timestamp_seconds",
            "When the DAG's last successful run ended (Unix time), since this controller leads",
            metrics.last_success.clone(),
        );
        metrics.registry.register(
            "baton_dag_seconds_since_last_success",
            "Seconds since the DAG's last successful run ended (freshness)",
            metrics.seconds_since_success.clone(),
        );
        metrics.registry.register(
            "baton_queue_ready_tasks",
            "Ready tasks waiting for a worker, by queue (held back by limits included)",
            metrics.queue_ready.clone(),
        );
        metrics.registry.register(
            "baton_queue_limited_tasks",
            "Ready tasks held back by a pool or a concurrency limit, by queue",
            metrics.queue_limited.clone(),
        );
        metrics.registry.register(
            "baton_queue_running_tasks",
            "Attempts leased or running, by queue",
            metrics.queue_running.clone(),
        );
        metrics.registry.register(
            "baton_queue_oldest_ready_age_seconds",
            "How long the queue's oldest ready task has waited",
            metrics.queue_oldest_ready_age.clone(),
        );
        metrics.registry.register(
            "baton_queue_workers",
            "Connected workers serving the queue",
            metrics.queue_workers.clone(),
        );
        metrics.registry.register(
            "baton_queue_free_slots",
            "Free slots of the workers serving the queue",
            metrics.queue_free_slots.clone(),
        );
        metrics.registry.register(
            "baton_pool_slots",
            "A pool's size",
            metrics.pool_slots.clone(),
        );
        metrics.registry.register(
            "baton_pool_used_slots",
            "A pool's slots held by leased or running attempts",
            metrics.pool_used.clone(),
        );
        metrics.registry.register(
            "baton_pool_queued_tasks",
            "Ready tasks waiting for a slot of the pool",
            metrics.pool_queued.clone(),
        );
        metrics.registry.register(
            "baton_workers_connected",
            "Workers connected to the leader",
            metrics.workers_connected.clone(),
        );
        metrics.registry.register(
            "baton_worker_slots",
            "Slots of the connected workers",
            metrics.worker_slots.clone(),
        );
        metrics.registry.register(
            "baton_worker_free_slots",
            "Free slots of the connected workers",
            metrics.worker_free_slots.clone(),
        );
        metrics.registry.register(
            "baton_runs_active",
            "Runs queued or running",
            metrics.runs_active.clone(),
        );
        metrics.registry.register(
            "baton_controller_leader",
            "1 on the controller that leads, 0 on a follower",
            metrics.leader.clone(),
        );
        metrics.registry.register(
            "baton_notifications",
            "Notifications by result: delivered, failed (after their last attempt), dropped (queue full or shutdown)",
            metrics.notifications.clone(),
        );
        metrics.registry.register(
            "baton_notification_failed_posts",
            "Webhook POSTs that failed (retried or not)",
            metrics.notification_failed_posts.clone(),
        );
        metrics
    }

    /// Counts what a batch stores of a run: tasks that ended, retries,
    /// attempts' durations and outcomes, scheduling delays, runs that ended.
    ///
    /// Called once per run per batch: the DAG's histograms are looked up
    /// once for all its changes, and attempts are counted by outcome before
    /// they are added, so that a wide batch costs one label lookup per
    /// task that ended, not one per metric it touches.
    pub fn observe_changes(&self, entry: &mut RunEntry, changes: &[Change]) {
        let dag_id = entry.dag_id.as_str();
        let dag = DagLabels {
            dag_id: dag_id.to_string(),
        };
        let mut delay: Option<Histogram> = None;
        let mut duration: Option<Histogram> = None;
        let mut attempts_by_outcome: Vec<(&'static str, u64)> = Vec::new();
        for change in changes {
            match &change.what {
                Changed::Task {
                    index, from, to, ..
                } => {
                    let index = *index;
                    let slot = entry.slot(index);
                    if *to == TaskState::Ready {
                        entry.tasks[index as usize].ready_at = change.at;
                        continue;
                    }
                    let begins_running = *to == TaskState::Running
                        || (*from == TaskState::Leased && task_state_is_final(*to));
                    if begins_running && slot.ready_at > 0 {
                        delay
                            .get_or_insert_with(|| {
                                self.scheduling_delay.get_or_create(&dag).clone()
                            })
                            .observe(seconds(change.at - slot.ready_at));
                        entry.tasks[index as usize].ready_at = 0;
                    }
                    let slot = entry.slot(index);
                    let task_id = || entry.task(index).id.to_string();
                    let attempt_ended = matches!(from, TaskState::Leased | TaskState::Running)
                        && slot.outcome != AttemptOutcome::Unspecified
                        && !matches!(to, TaskState::Running | TaskState::Leased);
                    if attempt_ended {
                        let outcome = outcome_name(slot.outcome);
                        match attempts_by_outcome
                            .iter_mut()
                            .find(|(counted, _)| *counted == outcome)
                        {
                            Some((_, count)) => *count += 1,
                            None => attempts_by_outcome.push((outcome, 1)),
                        }
                        if slot.started_at > 0 && slot.ended_at >= slot.started_at {
                            duration
                                .get_or_insert_with(|| {
                                    self.task_duration.get_or_create(&dag).clone()
                                })
                                .observe(seconds(slot.ended_at - slot.started_at));
                        }
                    }
                    if *to == TaskState::UpForRetry {
                        self.task_retries
                            .get_or_create(&TaskLabels {
                                dag_id: dag_id.to_string(),
                                task_id: task_id(),
                            })
                            .inc();
                    } else if let Some(state) = final_task_state_index(*to) {
                        // A mapped instance counts as its task.
                        let task = entry.plan_index(index) as usize;
                        let tasks = entry.plan.finished_counters.tasks.get_or_init(|| {
                            (0..entry.plan.len())
                                .map(|_| TaskCounters::default())
                                .collect()
                        });
                        tasks[task].0[state]
                            .get_or_init(|| {
                                self.tasks_finished
                                    .get_or_create(&TaskStateLabels {
                                        dag_id: dag_id.to_string(),
                                        task_id: task_id(),
                                        state: task_state_name(*to),
                                    })
                                    .clone()
                            })
                            .inc();
                    }
                }
                Changed::Run { to, .. } => {
                    if !baton_common::states::run_state_is_final(*to) {
                        continue;
                    }
                    self.runs_finished
                        .get_or_create(&RunStateLabels {
                            dag_id: dag_id.to_string(),
                            state: run_state_name(*to),
                        })
                        .inc();
                    // Both freshness gauges are set from this at scrape time.
                    if *to == RunState::Success
                        && let Ok(mut last) = self.last_success_at.lock()
                    {
                        last.insert(dag_id.to_string(), change.at);
                    }
                }
                Changed::SlaMiss { .. } => {}
            }
        }
        for (outcome, count) in attempts_by_outcome {
            self.attempts
                .get_or_create(&AttemptLabels {
                    dag_id: dag_id.to_string(),
                    outcome,
                })
                .inc_by(count);
        }
    }

    /// One batch committed in `took`, with `operations` operations.
    pub fn observe_commit(&self, took: Duration, operations: usize) {
        self.store_commit_seconds.observe(took.as_secs_f64());
        self.store_batch_operations.observe(operations as f64);
    }

    /// The present, read at scrape time: the leader's status (`None` on a
    /// follower), and whether this controller leads.
    fn set_present(&self, controller_id: &str, status: Option<&SchedulerStatus>) {
        self.leader.clear();
        self.leader
            .get_or_create(&ControllerLabels {
                controller_id: controller_id.to_string(),
            })
            .set(i64::from(status.is_some()));
        for family in [
            &self.queue_ready,
            &self.queue_limited,
            &self.queue_running,
            &self.queue_workers,
            &self.queue_free_slots,
        ] {
            family.clear();
        }
        self.queue_oldest_ready_age.clear();
        for family in [&self.pool_slots, &self.pool_used, &self.pool_queued] {
            family.clear();
        }
        self.seconds_since_success.clear();
        let Some(status) = status else {
            self.workers_connected.set(0);
            self.worker_slots.set(0);
            self.worker_free_slots.set(0);
            self.runs_active.set(0);
            return;
        };
        for queue in &status.queues {
            let labels = QueueLabels {
                queue: queue.queue.clone(),
            };
            self.queue_ready
                .get_or_create(&labels)
                .set(i64::from(queue.ready));
            self.queue_limited
                .get_or_create(&labels)
                .set(i64::from(queue.limited));
            self.queue_running
                .get_or_create(&labels)
                .set(i64::from(queue.running));
            self.queue_workers
                .get_or_create(&labels)
                .set(i64::from(queue.workers));
            self.queue_free_slots
                .get_or_create(&labels)
                .set(i64::from(queue.free_slots));
            let age = queue
                .oldest_ready_age
                .as_ref()
                .map_or(0.0, |age| duration_from_proto(age).as_secs_f64());
            self.queue_oldest_ready_age.get_or_create(&labels).set(age);
        }
        for pool in &status.pools {
            let labels = PoolLabels {
                pool: pool.name.clone(),
            };
            self.pool_slots
                .get_or_create(&labels)
                .set(i64::from(pool.slots));
            self.pool_used
                .get_or_create(&labels)
                .set(i64::from(pool.used_slots));
            self.pool_queued
                .get_or_create(&labels)
                .set(i64::from(pool.queued));
        }
        let connected = status.workers.iter().filter(|worker| worker.connected);
        let (mut count, mut slots, mut free) = (0, 0, 0);
        for worker in connected {
            count += 1;
            slots += i64::from(worker.slots);
            free += i64::from(worker.free_slots);
        }
        self.workers_connected.set(count);
        self.worker_slots.set(slots);
        self.worker_free_slots.set(free);
        self.runs_active.set(i64::from(status.active_runs));
        let now = now_micros();
        if let Ok(last) = self.last_success_at.lock() {
            for (dag_id, at) in last.iter() {
                let labels = DagLabels {
                    dag_id: dag_id.clone(),
                };
                self.last_success.get_or_create(&labels).set(seconds(*at));
                self.seconds_since_success
                    .get_or_create(&labels)
                    .set(seconds(now - at));
            }
        }
    }

    /// Brings the notification counters up to the notifier's own.
    fn set_notifications(&self, counters: &crate::notify::NotificationCounters) {
        for (result, total) in [
            ("delivered", counters.delivered()),
            ("failed", counters.failed()),
            ("dropped", counters.dropped()),
        ] {
            let counter = self
                .notifications
                .get_or_create(&NotificationLabels { result });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        let posts = counters.failed_attempts();
        self.notification_failed_posts
            .inc_by(posts.saturating_sub(self.notification_failed_posts.get()));
    }

    /// One scrape: the present, the notification counters, then the
    /// OpenMetrics text of every metric and `extra`'s families. Scrapes
    /// take turns, since each sets what the next one reads (two at once
    /// would add the notifications' increase twice).
    pub fn render(
        &self,
        controller_id: &str,
        status: Option<&SchedulerStatus>,
        notifications: &crate::notify::NotificationCounters,
        extra: Option<&MetricsSection>,
    ) -> String {
        let _turn = self
            .render_turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.set_present(controller_id, status);
        self.set_notifications(notifications);
        self.encode(extra)
    }

    /// The OpenMetrics text of every metric, then `extra`'s families.
    fn encode(&self, extra: Option<&MetricsSection>) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut text, &self.registry).is_err() {
            text.clear();
        }
        if let Some(extra) = extra {
            extra.encode(&mut text);
        }
        text.push_str("# EOF\n");
        text
    }
}

fn seconds(micros: Micros) -> f64 {
    micros.max(0) as f64 / 1e6
}

/// Serves `/metrics` until `shutdown`: what the scheduler counted, and the
/// present read from the leader's status at each scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    context: ApiContextRef,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let render: baton_common::metrics_http::Render = Arc::new(move || {
        let context = Arc::clone(&context);
        Box::pin(async move {
            let Some(metrics) = metrics() else {
                return String::new();
            };
            // A follower (or a leader that cannot answer) reports no leader
            // status: the present belongs to the leader's /metrics.
            let status = match context.leader() {
                Ok(term) => term.scheduler.status().await.ok(),
                Err(_) => None,
            };
            metrics.render(
                &context.config.controller_id,
                status.as_ref(),
                context.notifications.counters(),
                context.config.extra_metrics.as_ref(),
            )
        })
    });
    if let Err(error) = baton_common::metrics_http::serve(listener, render, shutdown).await {
        tracing::error!(%error, "the metrics endpoint stopped");
    }
}
