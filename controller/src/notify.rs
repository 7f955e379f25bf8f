//! Notifications: the webhook POSTs that tell people a run failed or
//! succeeded, a task used up its retries, or an SLA was missed.
//!
//! This module owns the bounded queue between the scheduler and the
//! network, the delivery task that drains it, the body of each format and
//! the delivery counters. Properties it keeps:
//! - **never blocks scheduling**: the scheduler hands a notification over
//!   with [`NotificationQueue::submit`], a `try_send` on a bounded channel;
//!   when the queue is full the notification is dropped, counted and
//!   logged, and the scheduler goes on.
//! - **only what is durable**: the scheduler submits from an effect that
//!   runs after the batch holding the state change committed (see
//!   `scheduler/actor/notifications.rs`), so a leader that loses its term
//!   before the commit sends nothing for that change.
//! - **bounded work**: at most `max_concurrent` deliveries at once, each
//!   attempt bounded by `attempt_timeout`, at most `max_attempts` attempts
//!   with doubling delays; a receiver that never answers costs one slot for
//!   `max_attempts × attempt_timeout` plus the delays, nothing more.
//! - **at least once**: a receiver that stored a notification but whose
//!   answer was lost gets it again; the body's `id` (also sent as the
//!   `X-Baton-Notification-Id` header) is the same on every attempt, so it
//!   can tell.
//!
//! Secrets: a secret header's value is read from the controller's
//! environment at each delivery (or written in its config file); it is
//! never logged. URLs are logged without path or query, since incoming
//! webhook URLs (Slack's) carry their secret in the path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_common::error::{FieldViolation, error_chain};
use baton_common::http::{HttpClient, LazyClient};
use baton_common::spec::{Notifier, NotifyEvent, NotifyFormat, SecretValue};
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How deliveries are made; set in the config file's `[notify]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Deliveries waiting to be sent; past that, new ones are dropped.
    pub queue_capacity: usize,
    /// Deliveries in progress at once (each holds a connection).
    pub max_concurrent: usize,
    /// One POST, from connecting to the answer's status.
    pub attempt_timeout: Duration,
    /// POSTs per delivery, the first included.
    pub max_attempts: u32,
    /// Before the second attempt; doubled after each failed attempt.
    pub retry_delay: Duration,
    /// Cap on the delay between attempts.
    pub max_retry_delay: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            queue_capacity: 1_024,
            max_concurrent: 8,
            attempt_timeout: Duration::from_secs(10),
            max_attempts: 5,
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(60),
        }
    }
}

/// What happened to notifications since the controller started. Read by
/// metrics; every count only grows.
#[derive(Debug, Default)]
pub struct NotificationCounters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    failed_attempts: AtomicU64,
}

impl NotificationCounters {
    /// Deliveries a receiver accepted (answered 2xx).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Deliveries given up after their last attempt, or that could not be
    /// sent at all (a secret's environment variable is not set).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Deliveries never attempted: the queue was full, or the controller
    /// shut down before they were done.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// POSTs that failed (an error status, no answer in time, a connection
    /// error), whether the delivery was retried or not.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }
}

/// One notification: what happened, for one run. Serialized as is, it is
/// the `json` format's body (documented field by field in
/// `docs/dag-reference.md`, "Notifications").
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// The same on every attempt and for every receiver of this event.
    pub id: String,
    pub event: NotifyEvent,
    pub dag_id: String,
    pub run_id: String,
    /// The run's state when the event happened.
    pub state: &'static str,
    /// Why the run ended as it did; `null` while it runs or after a success.
    pub reason: Option<String>,
    /// What created the run: `manual`, `scheduled`, `backfill`, `event`, `asset`.
    pub trigger: &'static str,
    pub logical_date: String,
    pub data_interval_start: String,
    pub data_interval_end: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// From start (or creation) to end; `null` while the run runs.
    pub duration_seconds: Option<f64>,
    /// Tasks of the run in state `failed`, in DAG order, at most
    /// [`MAX_LISTED_TASKS`].
    pub failed_tasks: Vec<TaskSummary>,
    /// Failed tasks not listed for lack of room.
    pub failed_tasks_omitted: u32,
    /// `retry_exhausted`: the task whose last attempt failed.
    pub task: Option<TaskSummary>,
    /// `sla_missed`: which deadline was missed.
    pub sla: Option<SlaSummary>,
    /// Everything above in a few sentences, for people (the `slack`
    /// format's text); no links.
    pub description: String,
}

/// Most tasks a notification lists.
pub const MAX_LISTED_TASKS: usize = 20;

/// Longest error message quoted in a description, in bytes.
const MAX_DESCRIBED_ERROR_BYTES: usize = 200;

impl Notification {
    /// What happened, in a few sentences for people: the event, the run,
    /// why, the failed tasks with their last attempt, and the times.
    pub fn describe(&self) -> String {
        let run = format!("run {} of DAG {}", self.run_id, self.dag_id);
        let mut text = match (self.event, &self.task, &self.sla) {
            (NotifyEvent::RunFailed, ..) => match &self.reason {
                Some(reason) => format!("Baton: {run} failed: {reason}."),
                None => format!("Baton: {run} failed."),
            },
            (NotifyEvent::RunSucceeded, ..) => format!("Baton: {run} succeeded."),
            (NotifyEvent::RetryExhausted, Some(task), _) => format!(
                "Baton: task {} of {run} failed on its last attempt ({} of {}) and will not be retried: {}.",
                task.task_id,
                task.attempt,
                task.max_attempts,
                attempt_detail(task)
            ),
            (NotifyEvent::SlaMissed, task, Some(sla)) => {
                let what = match task {
                    Some(task) => format!("task {} of {run}", task.task_id),
                    None => run.clone(),
                };
                format!(
                    "Baton: {what} missed its SLA of {}: it had not finished by {} (noticed at {}).",
                    humantime::format_duration(Duration::from_secs_f64(sla.sla_seconds)),
                    sla.deadline,
                    sla.detected_at
                )
            }
            (event, ..) => format!("Baton: {run}: {event}."),
        };
        if !self.failed_tasks.is_empty() {
            let listed: Vec<String> = self
                .failed_tasks
                .iter()
                .map(|task| {
                    format!(
                        "{} (attempt {} of {}: {})",
                        task.task_id,
                        task.attempt,
                        task.max_attempts,
                        attempt_detail(task)
                    )
                })
                .collect();
            text.push_str(&format!(" Failed tasks: {}", listed.join("; ")));
            if self.failed_tasks_omitted > 0 {
                text.push_str(&format!(" and {} more", self.failed_tasks_omitted));
            }
            text.push('.');
        }
        text.push_str(&format!(
            " Run state {}; logical date {}; triggered {}; created {}",
            self.state, self.logical_date, self.trigger, self.created_at
        ));
        if let Some(started_at) = &self.started_at {
            text.push_str(&format!(", started {started_at}"));
        }
        if let Some(ended_at) = &self.ended_at {
            text.push_str(&format!(", ended {ended_at}"));
        }
        if let Some(seconds) = self.duration_seconds {
            text.push_str(&format!(
                " after {}",
                baton_common::time::format_duration(Duration::from_secs_f64(seconds))
            ));
        }
        text.push('.');
        text
    }
}

/// How a task's latest attempt ended, for a description.
fn attempt_detail(task: &TaskSummary) -> String {
    let mut parts = Vec::new();
    if let Some(outcome) = task.outcome {
        parts.push(outcome.to_string());
    }
    // The error usually says how the process exited; the code alone only
    // when there is no error text.
    if let (Some(code), None) = (task.exit_code, &task.error) {
        parts.push(format!("exit code {code}"));
    }
    if let Some(error) = &task.error {
        parts.push(baton_common::error::shorten(
            error.clone(),
            MAX_DESCRIBED_ERROR_BYTES,
        ));
    }
    if parts.is_empty() {
        task.state.to_string()
    } else {
        parts.join(", ")
    }
}

/// A task as a notification shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    /// `task`, or `task[i]` for a mapped instance.
    pub task_id: String,
    pub state: &'static str,
    /// Number of its latest attempt (1 for the first).
    pub attempt: u32,
    /// Attempts it was allowed since it was last cleared.
    pub max_attempts: u32,
    /// How its latest attempt ended (`failed`, `timed_out`, `worker_lost`, ...).
    pub outcome: Option<&'static str>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub ended_at: Option<String>,
}

/// A missed SLA.
#[derive(Debug, Clone, Serialize)]
pub struct SlaSummary {
    /// `null` for the run's own SLA.
    pub task_id: Option<String>,
    pub sla_seconds: f64,
    pub deadline: String,
    pub detected_at: String,
}

/// The scheduler's side of notifications: hands deliveries to the delivery
/// task without waiting, and counts what becomes of them.
#[derive(Debug)]
pub struct NotificationQueue {
    sender: mpsc::Sender<Delivery>,
    counters: Arc<NotificationCounters>,
    /// Notifiers of DAGs that declare none.
    defaults: Vec<Notifier>,
}

pub type NotificationQueueRef = Arc<NotificationQueue>;

/// One notification for one notifier.
#[derive(Debug)]
struct Delivery {
    notifier: Notifier,
    notification: Arc<Notification>,
}

impl NotificationQueue {
    /// Starts the delivery task; it stops when `shutdown` is cancelled,
    /// dropping (and counting) what it has not delivered.
    pub fn start(
        settings: DeliverySettings,
        defaults: Vec<Notifier>,
        shutdown: CancellationToken,
    ) -> (NotificationQueueRef, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
        let counters = Arc::new(NotificationCounters::default());
        let task = tokio::spawn(run_deliveries(
            receiver,
            settings,
            Arc::clone(&counters),
            shutdown,
        ));
        let queue = Arc::new(Self {
            sender,
            counters,
            defaults,
        });
        (queue, task)
    }

    pub fn counters(&self) -> &NotificationCounters {
        &self.counters
    }

    /// The notifiers told of `event` for a DAG with these notifiers of its
    /// own (the controller's defaults when it has none).
    pub fn targets(&self, dag_notifiers: &[Notifier], event: NotifyEvent) -> Vec<Notifier> {
        let notifiers = if dag_notifiers.is_empty() {
            &self.defaults
        } else {
            dag_notifiers
        };
        notifiers
            .iter()
            .filter(|notifier| notifier.wants(event))
            .cloned()
            .collect()
    }

    /// Queues one delivery per target without waiting: when the queue is
    /// full the delivery is dropped, counted and logged.
    pub fn submit(&self, targets: Vec<Notifier>, notification: Notification) {
        let notification = Arc::new(notification);
        for notifier in targets {
            let delivery = Delivery {
                notifier,
                notification: Arc::clone(&notification),
            };
            if let Err(error) = self.sender.try_send(delivery) {
                let why = match error {
                    mpsc::error::TrySendError::Full(_) => "the notification queue is full",
                    mpsc::error::TrySendError::Closed(_) => "notifications are shutting down",
                };
                NotificationCounters::add(&self.counters.dropped, 1);
                warn!(
                    dag_id = %notification.dag_id,
                    run_id = %notification.run_id,
                    event = notification.event.name(),
                    "notification dropped: {why}"
                );
            }
        }
    }
}

async fn run_deliveries(
    mut receiver: mpsc::Receiver<Delivery>,
    settings: DeliverySettings,
    counters: Arc<NotificationCounters>,
    shutdown: CancellationToken,
) {
    // Built for the first notification: it reads the system's CA
    // certificates, which a controller that never notifies need not do.
    let client = LazyClient::new(concat!("baton-controller/", env!("CARGO_PKG_VERSION")));
    let settings = Arc::new(settings);
    let slots = Arc::new(Semaphore::new(settings.max_concurrent.max(1)));
    let mut in_flight = JoinSet::new();
    loop {
        let delivery = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            delivery = receiver.recv() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
        };
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                NotificationCounters::add(&counters.dropped, 1);
                break;
            }
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        while in_flight.try_join_next().is_some() {}
        let client = match client.get(log_client_built).await {
            Ok(built) => built.client.clone(),
            Err(error) => {
                NotificationCounters::add(&counters.failed, 1);
                warn!(
                    dag_id = %delivery.notification.dag_id,
                    run_id = %delivery.notification.run_id,
                    %error,
                    "notification not delivered: no HTTP client"
                );
                continue;
            }
        };
        let settings = Arc::clone(&settings);
        let counters = Arc::clone(&counters);
        let shutdown = shutdown.clone();
        in_flight.spawn(async move {
            deliver(&client, &settings, &counters, &shutdown, delivery).await;
            drop(permit);
        });
    }
    // Shutting down: what is queued is not sent; deliveries in progress
    // end at their next wait (they watch the same token).
    receiver.close();
    let mut queued = 0;
    while receiver.try_recv().is_ok() {
        queued += 1;
    }
    NotificationCounters::add(&counters.dropped, queued);
    while in_flight.join_next().await.is_some() {}
    if queued > 0 {
        warn!(
            queued,
            "notifications not delivered: the controller is shutting down"
        );
    }
}

/// Logs, once, what building the notifier's HTTP client found.
fn log_client_built(built: &Result<HttpClient, String>) {
    match built {
        // Plain HTTP still works; HTTPS fails to verify any receiver.
        Ok(HttpClient {
            tls_problem: Some(error),
            ..
        }) => {
            warn!(%error, "no CA certificates found; notifications to https URLs cannot be delivered");
        }
        Ok(_) => {}
        Err(error) => {
            warn!(%error, "cannot build the HTTP client; notifications will not be delivered");
        }
    }
}

/// Posts one notification to one notifier, retrying with doubling delays.
async fn deliver(
    client: &reqwest::Client,
    settings: &DeliverySettings,
    counters: &NotificationCounters,
    shutdown: &CancellationToken,
    delivery: Delivery,
) {
    let Delivery {
        notifier,
        notification,
    } = delivery;
    let event = notification.event.name();
    let url = redacted_url(&notifier.url);
    let give_up = |attempts: u32, error: &str| {
        NotificationCounters::add(&counters.failed, 1);
        warn!(
            dag_id = %notification.dag_id,
            run_id = %notification.run_id,
            event,
            %url,
            attempts,
            %error,
            "notification not delivered"
        );
    };
    let secret = match secret_header(&notifier) {
        Ok(secret) => secret,
        Err(error) => return give_up(0, &error),
    };
    let body = match body(notifier.format, &notification) {
        Ok(body) => body,
        Err(error) => return give_up(0, &error),
    };
    let mut delay = settings.retry_delay;
    let mut last_error = String::new();
    let mut attempts = 0;
    while attempts < settings.max_attempts.max(1) {
        attempts += 1;
        let mut request = client
            .post(notifier.url.clone())
            .timeout(settings.attempt_timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("x-baton-event", event)
            .header("x-baton-notification-id", notification.id.as_str())
            .body(body.clone());
        if let Some((name, value)) = &secret {
            request = request.header(name.clone(), value.clone());
        }
        let sent = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                NotificationCounters::add(&counters.dropped, 1);
                return;
            }
            sent = request.send() => sent,
        };
        let retryable = match sent {
            Ok(response) if response.status().is_success() => {
                NotificationCounters::add(&counters.delivered, 1);
                info!(
                    dag_id = %notification.dag_id,
                    run_id = %notification.run_id,
                    event,
                    %url,
                    attempts,
                    "notification delivered"
                );
                return;
            }
            Ok(response) => {
                let status = response.status();
                last_error = format!("the receiver answered {status}");
                // A 4xx other than these says the request itself is wrong:
                // sending it again would not help.
                status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            Err(error) if error.is_timeout() => {
                last_error = format!(
                    "no answer within {}",
                    humantime::format_duration(settings.attempt_timeout)
                );
                true
            }
            Err(error) => {
                last_error = error_chain(&error);
                true
            }
        };
        NotificationCounters::add(&counters.failed_attempts, 1);
        if !retryable || attempts >= settings.max_attempts {
            break;
        }
        debug!(
            dag_id = %notification.dag_id,
            run_id = %notification.run_id,
            event,
            %url,
            attempts,
            error = %last_error,
            delay_ms = delay.as_millis() as u64,
            "notification attempt failed; retrying"
        );
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                NotificationCounters::add(&counters.dropped, 1);
                return;
            }
            () = tokio::time::sleep(delay) => {}
        }
        delay = delay.saturating_mul(2).min(settings.max_retry_delay);
    }
    give_up(attempts, &last_error);
}

/// The secret header's name and value, read now (an environment variable
/// may be set or rotated while the controller runs).
fn secret_header(notifier: &Notifier) -> Result<Option<(HeaderName, HeaderValue)>, String> {
    let Some(header) = &notifier.secret_header else {
        return Ok(None);
    };
    let name = HeaderName::from_bytes(header.name.as_bytes())
        .map_err(|_| format!("`{}` is not a valid header name", header.name))?;
    let value = match &header.value {
        SecretValue::Env(variable) => std::env::var(variable).map_err(|_| {
            format!(
                "the secret header's environment variable {variable} is not set on the controller"
            )
        })?,
        SecretValue::Literal(value) => value.clone(),
    };
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| format!("the value of {} cannot be sent in a header", header.name))?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

/// Whether a secret header's environment variable is missing on this
/// controller: the problem as a reason, for registration to refuse.
/// [`missing_secret`] of each notifier listed at `path`, as violations of
/// `{path}[i].secret_header.value_env`.
pub fn missing_secrets(notifiers: &[Notifier], path: &str) -> Vec<FieldViolation> {
    notifiers
        .iter()
        .enumerate()
        .filter_map(|(position, notifier)| {
            missing_secret(notifier).map(|reason| {
                FieldViolation::new(
                    format!("{path}[{position}].secret_header.value_env"),
                    reason,
                )
            })
        })
        .collect()
}

pub fn missing_secret(notifier: &Notifier) -> Option<String> {
    let header = notifier.secret_header.as_ref()?;
    match &header.value {
        SecretValue::Env(variable) if std::env::var_os(variable).is_none() => Some(format!(
            "the environment variable {variable} is not set on the controller"
        )),
        _ => None,
    }
}

/// The request body of `format`.
pub fn body(format: NotifyFormat, notification: &Notification) -> Result<Vec<u8>, String> {
    let encoded = match format {
        NotifyFormat::Json => serde_json::to_vec(notification),
        NotifyFormat::Slack => serde_json::to_vec(&serde_json::json!({
            "text": notification.description,
        })),
    };
    encoded.map_err(|error| format!("cannot encode the notification: {error}"))
}

/// Scheme, host and port only: incoming-webhook URLs carry their secret in
/// the path.
fn redacted_url(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification() -> Notification {
        Notification {
            id: "n1".into(),
            event: NotifyEvent::RunFailed,
            dag_id: "etl".into(),
            run_id: "r1".into(),
            state: "failed",
            reason: Some("task `a` failed".into()),
            trigger: "manual",
            logical_date: "2026-01-01T00:00:00.000Z".into(),
            data_interval_start: "2026-01-01T00:00:00.000Z".into(),
            data_interval_end: "2026-01-01T00:00:00.000Z".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            started_at: None,
            ended_at: None,
            duration_seconds: None,
            failed_tasks: Vec::new(),
            failed_tasks_omitted: 0,
            task: None,
            sla: None,
            description: "Run r1 of DAG etl failed".into(),
        }
    }

    #[test]
    fn slack_bodies_hold_only_the_text() {
        let body = body(NotifyFormat::Slack, &notification()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"text": "Run r1 of DAG etl failed"})
        );
        let json: serde_json::Value =
            serde_json::from_slice(&super::body(NotifyFormat::Json, &notification()).unwrap())
                .unwrap();
        assert_eq!(json["event"], "run_failed");
        assert_eq!(json["started_at"], serde_json::Value::Null);
    }

    #[test]
    fn logged_urls_keep_no_path_or_query() {
        let url = url::Url::parse("https://hooks.slack.com/services/T0/B0/secret?x=1").unwrap();
        assert_eq!(redacted_url(&url), "https://hooks.slack.com/…");
        let url = url::Url::parse("http://127.0.0.1:8080/hook").unwrap();
        assert_eq!(redacted_url(&url), "http://127.0.0.1:8080/…");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let settings = DeliverySettings {
            queue_capacity: 1,
            max_concurrent: 1,
            ..DeliverySettings::default()
        };
        // No delivery task: nothing leaves the queue.
        let (sender, _receiver) = mpsc::channel(settings.queue_capacity);
        let queue = NotificationQueue {
            sender,
            counters: Arc::default(),
            defaults: Vec::new(),
        };
        let notifier = baton_common::spec::resolve_notifiers(
            &[baton_common::spec::NotifierSpec {
                url: "http://127.0.0.1:9/hook".into(),
                ..Default::default()
            }],
            "notify",
            baton_common::spec::NotifierSource::DagFile,
        )
        .unwrap();
        queue.submit(vec![notifier[0].clone(); 3], notification());
        assert_eq!(queue.counters().dropped(), 2);
    }

    /// A receiver on loopback answering every request with `status`;
    /// returns its URL and the number of requests it got.
    async fn receiver(status: u16) -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&received);
        let router = axum::Router::new().fallback(move || {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (url, received)
    }

    fn notifier_for(url: &str, secret_env: Option<&str>) -> Notifier {
        let spec = baton_common::spec::NotifierSpec {
            url: url.into(),
            secret_header: secret_env.map(|variable| baton_common::spec::SecretHeaderSpec {
                name: "X-Secret".into(),
                value_env: Some(variable.into()),
                value: None,
            }),
            ..Default::default()
        };
        baton_common::spec::resolve_notifiers(
            &[spec],
            "notify",
            baton_common::spec::NotifierSource::DagFile,
        )
        .unwrap()
        .remove(0)
    }

    async fn settled(queue: &NotificationQueue) {
        for _ in 0..200 {
            let counters = queue.counters();
            if counters.delivered() + counters.failed() + counters.dropped() > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no delivery ended within 2s: {:?}", queue.counters());
    }

    fn quick() -> DeliverySettings {
        DeliverySettings {
            retry_delay: Duration::from_millis(10),
            max_retry_delay: Duration::from_millis(20),
            attempt_timeout: Duration::from_secs(1),
            max_attempts: 4,
            ..DeliverySettings::default()
        }
    }

    #[tokio::test]
    async fn a_client_error_is_final_and_a_server_error_is_retried_to_the_limit() {
        let shutdown = CancellationToken::new();
        let (queue, task) = NotificationQueue::start(quick(), Vec::new(), shutdown.clone());
        let (url, received) = receiver(400).await;
        queue.submit(vec![notifier_for(&url, None)], notification());
        settled(&queue).await;
        assert_eq!(received.load(Ordering::SeqCst), 1, "400 is not retried");
        assert_eq!(queue.counters().failed(), 1);
        assert_eq!(queue.counters().failed_attempts(), 1);

        let (url, received) = receiver(503).await;
        queue.submit(vec![notifier_for(&url, None)], notification());
        for _ in 0..200 {
            if queue.counters().failed() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(queue.counters().failed(), 2);
        assert_eq!(received.load(Ordering::SeqCst), 4, "503 is retried");
        assert_eq!(queue.counters().failed_attempts(), 5);
        assert_eq!(queue.counters().delivered(), 0);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_secret_variable_fails_without_sending() {
        let shutdown = CancellationToken::new();
        let (queue, task) = NotificationQueue::start(quick(), Vec::new(), shutdown.clone());
        let (url, received) = receiver(200).await;
        let notifier = notifier_for(&url, Some("BATON_TEST_SECRET_THAT_IS_NEVER_SET"));
        assert!(missing_secret(&notifier).is_some());
        queue.submit(vec![notifier], notification());
        settled(&queue).await;
        assert_eq!(queue.counters().failed(), 1);
        assert_eq!(received.load(Ordering::SeqCst), 0);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn default_notifiers_apply_only_to_dags_without_their_own() {
        let (sender, _receiver) = mpsc::channel(1);
        let default = notifier_for("https://default.example/h", None);
        let queue = NotificationQueue {
            sender,
            counters: Arc::default(),
            defaults: vec![default.clone()],
        };
        assert_eq!(queue.targets(&[], NotifyEvent::RunFailed), [default]);
        assert!(queue.targets(&[], NotifyEvent::RunSucceeded).is_empty());
        let own = notifier_for("https://own.example/h", None);
        assert_eq!(
            queue.targets(std::slice::from_ref(&own), NotifyEvent::SlaMissed),
            [own]
        );
    }
}
