//! Sensor tasks: the worker checks a condition (a file exists, an HTTP
//! endpoint answers with an accepted status) and the attempt succeeds as
//! soon as it holds.
//!
//! A **poke** checks the condition once and writes one line to the
//! attempt's log (the same spooled, offset-numbered log as a command's
//! output), for example `poke 3: file /data/_SUCCESS: not found`.
//!
//! - **Poke mode**: poke, and while the condition does not hold, sleep the
//!   poke interval and poke again, holding the slot, until it holds
//!   (SUCCEEDED) or the sensor's deadline passes (TIMED_OUT). The last poke
//!   happens at the deadline.
//! - **Reschedule mode**: poke once: SUCCEEDED when it holds, TIMED_OUT when
//!   the deadline has passed, RESCHEDULED otherwise (the controller pokes
//!   again later, on this worker or another).
//!
//! In both modes the attempt's `timeout`, a cancel and a drain stop the
//! sensor at once, even in the middle of a poke, with the outcomes a
//! command gets (TIMED_OUT, CANCELLED, WORKER_DRAINED).
//!
//! Conditions:
//! - **file**: the path exists on the worker's machine (a dangling symlink
//!   does not count). A path holding `*`, `?` or `[` is a glob pattern,
//!   matched with shell rules (`*` and `?` match neither `/` nor a leading
//!   `.`); it holds when at least one path matches. A relative path is
//!   relative to the worker's working directory, where a command task
//!   without `cwd` runs too. The check runs on a blocking thread; a stopped
//!   sensor does not wait for it.
//! - **http**: one `GET` or `HEAD` request, bounded by `request_timeout`;
//!   holds when the answer's status is one of `statuses`. Redirects are not
//!   followed (the status is the URL's own answer), the body is not read,
//!   and connection errors, timeouts and other statuses mean "not yet". The
//!   URL is logged without its credentials and query, which may hold
//!   secrets. HTTPS verifies the server against the system's CA
//!   certificates, through rustls.
//!
//! The deadline is a wall-clock instant; it is turned into a monotonic one
//! when the attempt starts, so a clock step during the attempt does not
//! move it.

use std::path::Path;
use std::time::{Duration, SystemTime};

use baton_common::error::error_chain;
use baton_common::http::LazyClient;
use baton_common::pb::api::{self, AttemptOutcome};
use baton_common::time;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::executor::{
    AttemptContext, AttemptEvent, AttemptResult, AttemptSpec, LogSink, checked_timestamp, send,
    sleep_until_opt,
};
use crate::spool::SpoolWriter;

/// Time between pokes in poke mode when the assignment gives none.
pub(crate) const DEFAULT_POKE_INTERVAL: Duration = Duration::from_secs(60);

/// Longest an HTTP poke waits for an answer when the assignment gives no
/// `request_timeout`.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest file path or URL accepted.
const MAX_CONDITION_BYTES: usize = 8 * 1024;

/// Most accepted statuses an HTTP condition may list.
const MAX_STATUSES: usize = 100;

/// Glob rules: those of a shell.
const GLOB_OPTIONS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// A sensor as the worker runs it, checked from `Assign.sensor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SensorSpec {
    pub condition: Condition,
    pub mode: SensorMode,
    /// When the sensor gives up (microseconds since the epoch); `None`:
    /// only the attempt's timeout, a cancel or a drain stop it.
    pub deadline: Option<time::Micros>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SensorMode {
    /// Poke until the condition holds, holding the slot.
    Poke { interval: Duration },
    /// Poke once; RESCHEDULED when the condition does not hold yet.
    Reschedule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Condition {
    File(FileCondition),
    Http(HttpCondition),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileCondition {
    pub path: String,
    /// The path holds `*`, `?` or `[` and is a valid glob pattern.
    pub is_pattern: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpCondition {
    pub url: reqwest::Url,
    pub method: HttpMethod,
    /// Accepted statuses, sorted, without duplicates.
    pub statuses: Vec<u16>,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpMethod {
    Get,
    Head,
}

impl HttpMethod {
    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
        }
    }
}

/// Why `Assign.sensor` cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sensor.{field}: {reason}")]
pub(crate) struct InvalidSensor {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidSensor {
    InvalidSensor {
        field,
        reason: reason.into(),
    }
}

/// A positive duration from the proto; `None` when unset.
fn positive_duration(
    field: &'static str,
    duration: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, InvalidSensor> {
    let Some(duration) = duration else {
        return Ok(None);
    };
    let value = time::duration_from_proto(duration);
    if value.is_zero() {
        return Err(invalid(field, "must be positive"));
    }
    Ok(Some(value))
}

impl SensorSpec {
    pub(crate) fn from_proto(sensor: api::SensorTask) -> Result<Self, InvalidSensor> {
        let condition = match sensor.condition {
            Some(api::sensor_task::Condition::File(file)) => {
                Condition::File(FileCondition::from_proto(file)?)
            }
            Some(api::sensor_task::Condition::Http(http)) => {
                Condition::Http(HttpCondition::from_proto(http)?)
            }
            None => return Err(invalid("condition", "is missing (file or http)")),
        };
        let mode = if sensor.reschedule {
            SensorMode::Reschedule
        } else {
            let interval = positive_duration("poke_interval", sensor.poke_interval.as_ref())?
                .unwrap_or(DEFAULT_POKE_INTERVAL);
            SensorMode::Poke { interval }
        };
        let deadline = sensor
            .deadline
            .as_ref()
            .map(checked_timestamp)
            .transpose()
            .map_err(|reason| invalid("deadline", reason))?;
        Ok(Self {
            condition,
            mode,
            deadline,
        })
    }
}

impl FileCondition {
    fn from_proto(file: api::FileCondition) -> Result<Self, InvalidSensor> {
        let path = file.path;
        if path.is_empty() {
            return Err(invalid("file.path", "is empty"));
        }
        if path.len() > MAX_CONDITION_BYTES {
            return Err(invalid(
                "file.path",
                format!(
                    "is {} bytes; the limit is {MAX_CONDITION_BYTES}",
                    path.len()
                ),
            ));
        }
        if path.contains('\0') {
            return Err(invalid("file.path", "contains a NUL character"));
        }
        let is_pattern = path.contains(['*', '?', '[']);
        if is_pattern && let Err(error) = glob::Pattern::new(&path) {
            return Err(invalid(
                "file.path",
                format!("`{path}` is not a valid glob pattern: {error}"),
            ));
        }
        Ok(Self { path, is_pattern })
    }
}

impl HttpCondition {
    fn from_proto(http: api::HttpCondition) -> Result<Self, InvalidSensor> {
        if http.url.len() > MAX_CONDITION_BYTES {
            return Err(invalid(
                "http.url",
                format!(
                    "is {} bytes; the limit is {MAX_CONDITION_BYTES}",
                    http.url.len()
                ),
            ));
        }
        let url = reqwest::Url::parse(&http.url)
            .map_err(|error| invalid("http.url", format!("is not a valid URL: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                "http.url",
                format!("scheme `{}` is not http or https", url.scheme()),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("http.url", "has no host"));
        }
        let method = match http.method.to_ascii_uppercase().as_str() {
            // Unset in an older controller's message.
            "" | "GET" => HttpMethod::Get,
            "HEAD" => HttpMethod::Head,
            other => {
                return Err(invalid(
                    "http.method",
                    format!("`{other}` is not GET or HEAD"),
                ));
            }
        };
        if http.statuses.is_empty() {
            return Err(invalid("http.statuses", "lists no status"));
        }
        if http.statuses.len() > MAX_STATUSES {
            return Err(invalid(
                "http.statuses",
                format!(
                    "lists {} statuses; the limit is {MAX_STATUSES}",
                    http.statuses.len()
                ),
            ));
        }
        let mut statuses = Vec::with_capacity(http.statuses.len());
        for status in http.statuses {
            match u16::try_from(status) {
                Ok(status @ 100..=599) => statuses.push(status),
                _ => {
                    return Err(invalid(
                        "http.statuses",
                        format!("{status} is not an HTTP status (100 to 599)"),
                    ));
                }
            }
        }
        statuses.sort_unstable();
        statuses.dedup();
        let request_timeout =
            positive_duration("http.request_timeout", http.request_timeout.as_ref())?
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        Ok(Self {
            url,
            method,
            statuses,
            request_timeout,
        })
    }
}

impl Condition {
    /// What the poke lines name: the path, or the method and the URL
    /// without credentials or query.
    fn describe(&self) -> String {
        match self {
            Self::File(file) => format!("file {}", file.path),
            Self::Http(http) => format!("{} {}", http.method.as_str(), redacted_url(&http.url)),
        }
    }
}

/// The URL as it may be logged: no user, password, query or fragment.
fn redacted_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    // Only URLs that cannot have credentials refuse these.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    let mut text = shown.to_string();
    if had_query {
        text.push_str("?…");
    }
    text
}

/// The worker's HTTP client for sensors, built on the first HTTP poke (it
/// loads the system's CA certificates) and shared by every attempt, so
/// connections are reused across pokes.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient(LazyClient);

impl Default for HttpClient {
    fn default() -> Self {
        Self(LazyClient::new(concat!(
            "baton-worker/",
            env!("CARGO_PKG_VERSION")
        )))
    }
}

impl HttpClient {
    async fn prober(&self) -> Result<&baton_common::http::HttpClient, &str> {
        self.0
            .get(|built| {
                // Plain HTTP still works; HTTPS fails to verify any server.
                if let Ok(baton_common::http::HttpClient {
                    tls_problem: Some(error),
                    ..
                }) = built
                {
                    warn!(%error, "no CA certificates found; HTTPS sensors cannot succeed");
                }
            })
            .await
    }
}

/// What one poke found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Poke {
    met: bool,
    /// What was seen, for the log line (`not found`, `503 Service
    /// Unavailable`).
    detail: String,
}

impl Poke {
    fn met(detail: impl Into<String>) -> Self {
        Self {
            met: true,
            detail: detail.into(),
        }
    }

    fn not_met(detail: impl Into<String>) -> Self {
        Self {
            met: false,
            detail: detail.into(),
        }
    }
}

async fn poke(condition: &Condition, http: &HttpClient) -> Poke {
    match condition {
        Condition::File(file) => {
            let file = file.clone();
            tokio::task::spawn_blocking(move || check_file(&file))
                .await
                .unwrap_or_else(|error| Poke::not_met(format!("cannot check: {error}")))
        }
        Condition::Http(condition) => match http.prober().await {
            Ok(prober) => check_http(condition, prober).await,
            Err(error) => Poke::not_met(error.to_string()),
        },
    }
}

/// Blocking: looks at the file system (a pattern may walk directories).
fn check_file(file: &FileCondition) -> Poke {
    if !file.is_pattern {
        return match Path::new(&file.path).try_exists() {
            Ok(true) => Poke::met("found"),
            Ok(false) => Poke::not_met("not found"),
            Err(error) => Poke::not_met(format!("cannot check: {error}")),
        };
    }
    let paths = match glob::glob_with(&file.path, GLOB_OPTIONS) {
        Ok(paths) => paths,
        // Checked when the assignment was read.
        Err(error) => return Poke::not_met(format!("invalid pattern: {error}")),
    };
    let mut unreadable = 0_usize;
    let mut first_error = None;
    for entry in paths {
        match entry {
            Ok(path) => return Poke::met(format!("matches {}", path.display())),
            Err(error) => {
                unreadable += 1;
                first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    match first_error {
        None => Poke::not_met("no match"),
        Some(error) => Poke::not_met(format!(
            "no match ({unreadable} unreadable, first: {error})"
        )),
    }
}

async fn check_http(condition: &HttpCondition, prober: &baton_common::http::HttpClient) -> Poke {
    let method = match condition.method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Head => reqwest::Method::HEAD,
    };
    let request = prober
        .client
        .request(method, condition.url.clone())
        .timeout(condition.request_timeout);
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let seen = status.to_string();
            if condition.statuses.contains(&status.as_u16()) {
                Poke::met(seen)
            } else {
                Poke::not_met(seen)
            }
        }
        Err(error) if error.is_timeout() => Poke::not_met(format!(
            "no answer within {}",
            humantime::format_duration(condition.request_timeout)
        )),
        Err(error) => {
            // Without the URL, which may hold secrets.
            let mut detail = error_chain(&error.without_url());
            if condition.url.scheme() == "https"
                && let Some(problem) = &prober.tls_problem
            {
                detail.push_str(&format!(
                    " (the worker cannot verify HTTPS servers: {problem})"
                ));
            }
            Poke::not_met(detail)
        }
    }
}

/// How the poke loop ended.
#[derive(Debug)]
enum Ending {
    Met,
    /// The condition did not hold by the sensor's deadline.
    DeadlinePassed,
    /// Reschedule mode: not yet; the controller pokes again later.
    NotYet(String),
    /// The attempt's `timeout` ran out.
    TimedOut(Duration),
    /// Cancel or drain.
    Stopped(String),
    /// The log could not be written.
    SpoolFailed(String),
}

/// Runs a sensor attempt to its end: pokes, writes one log line per poke,
/// and returns the result (never any output) with the spool.
pub(crate) async fn run_sensor(
    spec: &AttemptSpec,
    sensor: &SensorSpec,
    context: AttemptContext,
) -> (AttemptResult, SpoolWriter) {
    let AttemptContext {
        events,
        spool,
        stop,
        http,
        ..
    } = context;
    let mut log = LogSink::new(spec.attempt_id, events.clone(), spool);
    let started_at = SystemTime::now();
    let result = |outcome: AttemptOutcome, error: String, log: &LogSink| AttemptResult {
        outcome,
        exit_code: None,
        error,
        output_json: String::new(),
        started_at,
        ended_at: SystemTime::now(),
        log_bytes: log.total(),
    };
    if stop.is_stopped() {
        let outcome = stop.outcome();
        let reason = stop.stopped().await;
        return (result(outcome, reason, &log), log.spool);
    }
    send(
        &events,
        AttemptEvent::Started {
            attempt_id: spec.attempt_id,
            started_at,
            pid: 0,
        },
    );
    let description = sensor.condition.describe();
    info!(condition = %description, mode = ?sensor.mode, "sensor started");

    // Instants too far away to represent are never reached.
    let now = Instant::now();
    let timeout_at = spec.timeout.and_then(|timeout| now.checked_add(timeout));
    // Monotonic from here on: a clock step does not move it.
    let deadline_at = sensor.deadline.and_then(|deadline| {
        let left = u64::try_from(deadline.saturating_sub(time::now_micros())).unwrap_or(0);
        now.checked_add(Duration::from_micros(left))
    });
    let mut pokes: u32 = 0;
    let ending = loop {
        pokes = pokes.saturating_add(1);
        let found = tokio::select! {
            biased;
            reason = stop.stopped() => break Ending::Stopped(reason),
            () = sleep_until_opt(timeout_at) => break Ending::TimedOut(spec.timeout.unwrap_or_default()),
            found = poke(&sensor.condition, &http) => found,
        };
        let line = if found.met {
            format!(
                "poke {pokes}: {description}: {}; condition met\n",
                found.detail
            )
        } else {
            format!("poke {pokes}: {description}: {}\n", found.detail)
        };
        log.push(line.as_bytes()).await;
        if let Some(error) = log.failed.clone() {
            break Ending::SpoolFailed(error);
        }
        if found.met {
            break Ending::Met;
        }
        if deadline_at.is_some_and(|deadline| Instant::now() >= deadline) {
            break Ending::DeadlinePassed;
        }
        let interval = match sensor.mode {
            SensorMode::Reschedule => {
                break Ending::NotYet(format!("{description}: {}", found.detail));
            }
            SensorMode::Poke { interval } => interval,
        };
        // The last poke happens at the deadline.
        let next = match (Instant::now().checked_add(interval), deadline_at) {
            (Some(next), Some(deadline)) => Some(next.min(deadline)),
            (next, deadline) => next.or(deadline),
        };
        tokio::select! {
            biased;
            reason = stop.stopped() => break Ending::Stopped(reason),
            () = sleep_until_opt(timeout_at) => break Ending::TimedOut(spec.timeout.unwrap_or_default()),
            () = sleep_until_opt(next) => {}
        }
    };
    let pokes_text = if pokes == 1 {
        "1 poke".to_string()
    } else {
        format!("{pokes} pokes")
    };
    let result = match ending {
        Ending::Met => result(AttemptOutcome::Succeeded, String::new(), &log),
        Ending::DeadlinePassed => result(
            AttemptOutcome::TimedOut,
            format!(
                "sensor timed out after {pokes_text}: its condition did not hold by its deadline {}",
                time::format_micros(sensor.deadline.unwrap_or_default())
            ),
            &log,
        ),
        Ending::NotYet(seen) => result(
            AttemptOutcome::Rescheduled,
            format!("condition not met yet: {seen}"),
            &log,
        ),
        Ending::TimedOut(timeout) => result(
            AttemptOutcome::TimedOut,
            format!("timed out after {}", humantime::format_duration(timeout)),
            &log,
        ),
        Ending::Stopped(reason) => result(stop.outcome(), reason, &log),
        Ending::SpoolFailed(error) => result(AttemptOutcome::Error, error, &log),
    };
    info!(
        outcome = result.outcome.as_str_name(),
        pokes,
        log_bytes = result.log_bytes,
        "sensor finished"
    );
    (result, log.spool)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::RawQuery;
    use axum::http::{Method, StatusCode};
    use axum::routing::any;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::executor::TaskKind;
    use crate::executor::for_tests::{Running, finish, next_event, run, spec, start};

    fn sensor_spec(condition: Condition, mode: SensorMode) -> AttemptSpec {
        spec(TaskKind::Sensor(SensorSpec {
            condition,
            mode,
            deadline: None,
        }))
    }

    fn file(path: &Path) -> Condition {
        let path = path.display().to_string();
        Condition::File(FileCondition {
            is_pattern: path.contains(['*', '?', '[']),
            path,
        })
    }

    fn http(url: &str, method: HttpMethod, statuses: &[u16]) -> Condition {
        Condition::Http(HttpCondition {
            url: reqwest::Url::parse(url).unwrap(),
            method,
            statuses: statuses.to_vec(),
            request_timeout: Duration::from_secs(5),
        })
    }

    fn poke_every(interval: Duration) -> SensorMode {
        SensorMode::Poke { interval }
    }

    /// The log's lines so far (what the test took with [`next_event`]).
    fn log_so_far(running: &Running) -> String {
        let log = std::fs::read(running.slot.log_path()).unwrap();
        String::from_utf8(log[..running.consumed_log as usize].to_vec()).unwrap()
    }

    /// Waits for the `Started` event (a sensor has no process) and then the
    /// first poke's line.
    async fn first_poke(running: &mut Running) -> String {
        match next_event(running).await {
            AttemptEvent::Started { pid, .. } => assert_eq!(pid, 0, "sensors run in the worker"),
            other => panic!("expected Started, got {other:?}"),
        }
        assert!(matches!(
            next_event(running).await,
            AttemptEvent::Log { .. }
        ));
        log_so_far(running)
    }

    /// A tiny HTTP server on 127.0.0.1, aborted when dropped.
    struct TestServer {
        addr: SocketAddr,
        task: JoinHandle<()>,
    }

    impl TestServer {
        async fn start(router: Router) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                axum::serve(listener, router).await.unwrap();
            });
            Self { addr, task }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[tokio::test]
    async fn a_file_sensor_in_poke_mode_succeeds_once_the_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("2024-01-01").join("_SUCCESS");
        let spec = sensor_spec(file(&path), poke_every(Duration::from_millis(50)));
        let mut running = start(spec, Duration::from_millis(500)).await;
        let first = first_poke(&mut running).await;
        assert_eq!(
            first,
            format!("poke 1: file {}: not found\n", path.display())
        );

        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        let (result, events, rest) = finish(running).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
        assert_eq!(
            (
                result.exit_code,
                result.error.as_str(),
                result.output_json.as_str()
            ),
            (None, "", "")
        );
        assert!(
            !events
                .iter()
                .any(|event| matches!(event, AttemptEvent::Started { .. })),
            "started once"
        );
        let log = first + &String::from_utf8(rest).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        let pokes = lines.len();
        assert!(pokes >= 2, "{log}");
        for (index, line) in lines[..pokes - 1].iter().enumerate() {
            assert_eq!(
                *line,
                format!("poke {}: file {}: not found", index + 1, path.display())
            );
        }
        assert_eq!(
            lines[pokes - 1],
            format!(
                "poke {pokes}: file {}: found; condition met",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn reschedule_mode_pokes_once_then_succeeds_in_a_later_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = dir.path().join("*").join("_SUCCESS");
        let condition = file(&pattern);
        // Hidden directories do not match `*`, like in a shell.
        std::fs::create_dir_all(dir.path().join(".staging")).unwrap();
        std::fs::write(dir.path().join(".staging").join("_SUCCESS"), b"").unwrap();
        std::fs::create_dir_all(dir.path().join("2024-01-01")).unwrap();

        let (result, _, log) = run(sensor_spec(condition.clone(), SensorMode::Reschedule)).await;
        assert_eq!(result.outcome, AttemptOutcome::Rescheduled, "{result:?}");
        let line = format!("file {}: no match", pattern.display());
        assert_eq!(result.error, format!("condition not met yet: {line}"));
        assert_eq!(String::from_utf8(log).unwrap(), format!("poke 1: {line}\n"));

        let success = dir.path().join("2024-01-01").join("_SUCCESS");
        std::fs::write(&success, b"").unwrap();
        let (result, _, log) = run(sensor_spec(condition, SensorMode::Reschedule)).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
        assert!(result.error.is_empty());
        assert_eq!(
            String::from_utf8(log).unwrap(),
            format!(
                "poke 1: file {}: matches {}; condition met\n",
                pattern.display(),
                success.display()
            )
        );
    }

    #[test]
    fn globs_match_like_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a").join("b")).unwrap();
        std::fs::write(root.join("a").join("b").join("part-7.csv"), b"").unwrap();
        let check = |pattern: PathBuf| {
            let Condition::File(condition) = file(&pattern) else {
                unreachable!()
            };
            assert!(condition.is_pattern, "{}", pattern.display());
            check_file(&condition)
        };
        assert!(check(root.join("a/b/part-[0-9].csv")).met);
        assert!(check(root.join("*/b/part-?.csv")).met);
        assert!(
            check(root.join("a/*.csv")).detail == "no match",
            "`*` stops at `/`"
        );
        assert!(!check(root.join("a/b/part-[!7].csv")).met);
        // A path without pattern characters is looked up as it is.
        let Condition::File(plain) = file(&root.join("a/b")) else {
            unreachable!()
        };
        assert!(!plain.is_pattern);
        assert_eq!(check_file(&plain), Poke::met("found"));
    }

    #[tokio::test]
    async fn the_deadline_times_the_sensor_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("never");
        let mut poking = sensor_spec(file(&path), poke_every(Duration::from_millis(50)));
        let TaskKind::Sensor(sensor) = &mut poking.kind else {
            unreachable!()
        };
        let deadline = time::now_micros() + 400_000;
        sensor.deadline = Some(deadline);
        let begun = Instant::now();
        let (result, _, log) = run(poking).await;
        let elapsed = begun.elapsed();
        assert_eq!(result.outcome, AttemptOutcome::TimedOut, "{result:?}");
        let log = String::from_utf8(log).unwrap();
        let pokes = log.lines().count();
        assert!(pokes >= 2, "{log}");
        assert_eq!(
            result.error,
            format!(
                "sensor timed out after {pokes} pokes: its condition did not hold by its deadline {}",
                time::format_micros(deadline)
            )
        );
        assert!(
            log.ends_with(&format!(
                "poke {pokes}: file {}: not found\n",
                path.display()
            )),
            "{log}"
        );
        assert!(
            elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(10),
            "the last poke is at the deadline: {elapsed:?}"
        );

        // Reschedule mode: a poke past the deadline ends the sensor.
        let mut late = sensor_spec(file(&path), SensorMode::Reschedule);
        let TaskKind::Sensor(sensor) = &mut late.kind else {
            unreachable!()
        };
        sensor.deadline = Some(time::now_micros() - 1_000_000);
        let (result, _, log) = run(late).await;
        assert_eq!(result.outcome, AttemptOutcome::TimedOut, "{result:?}");
        assert!(
            result.error.starts_with("sensor timed out after 1 poke: "),
            "{}",
            result.error
        );
        assert_eq!(log.iter().filter(|byte| **byte == b'\n').count(), 1);

        // Met at the last poke wins over the deadline.
        std::fs::write(&path, b"").unwrap();
        let mut met = sensor_spec(file(&path), SensorMode::Reschedule);
        let TaskKind::Sensor(sensor) = &mut met.kind else {
            unreachable!()
        };
        sensor.deadline = Some(time::now_micros() - 1_000_000);
        let (result, _, _) = run(met).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
    }

    #[tokio::test]
    async fn the_attempt_timeout_stops_a_poke_loop() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sensor_spec(
            file(&dir.path().join("never")),
            poke_every(Duration::from_secs(600)),
        );
        spec.timeout = Some(Duration::from_millis(300));
        let begun = Instant::now();
        let (result, _, log) = run(spec).await;
        assert_eq!(result.outcome, AttemptOutcome::TimedOut, "{result:?}");
        assert_eq!(result.error, "timed out after 300ms");
        assert!(
            begun.elapsed() < Duration::from_secs(5),
            "{:?}",
            begun.elapsed()
        );
        assert_eq!(log.iter().filter(|byte| **byte == b'\n').count(), 1);

        // Limits too far away to represent are never reached (and do not
        // panic the attempt).
        let mut spec = sensor_spec(file(dir.path()), poke_every(Duration::from_secs(u64::MAX)));
        spec.timeout = Some(Duration::MAX);
        let TaskKind::Sensor(sensor) = &mut spec.kind else {
            unreachable!()
        };
        sensor.deadline = Some(i64::MAX);
        let (result, _, _) = run(spec).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
    }

    #[tokio::test]
    async fn cancel_and_drain_stop_a_poke_loop_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let condition = file(&dir.path().join("never"));

        // Cancelled while it sleeps between pokes.
        let spec = sensor_spec(condition.clone(), poke_every(Duration::from_secs(600)));
        let mut running = start(spec, Duration::from_millis(500)).await;
        first_poke(&mut running).await;
        let begun = Instant::now();
        running.stop.stop("cancelled: run cancelled by alice");
        let (result, _, log) = finish(running).await;
        assert!(
            begun.elapsed() < Duration::from_secs(2),
            "{:?}",
            begun.elapsed()
        );
        assert_eq!(result.outcome, AttemptOutcome::Cancelled);
        assert_eq!(result.error, "cancelled: run cancelled by alice");
        assert!(log.is_empty(), "no poke after the cancel");

        // Drained.
        let spec = sensor_spec(condition, poke_every(Duration::from_secs(600)));
        let mut running = start(spec, Duration::from_millis(500)).await;
        first_poke(&mut running).await;
        running.stop.drain("the worker drains");
        let (result, _, _) = finish(running).await;
        assert_eq!(result.outcome, AttemptOutcome::WorkerDrained);
        assert_eq!(result.error, "the worker drains");

        // Cancelled in the middle of a poke: an HTTP request that gets no
        // answer.
        let server = TestServer::start(
            Router::new().route("/hang", any(std::future::pending::<StatusCode>)),
        )
        .await;
        let Condition::Http(mut hanging) = http(&server.url("/hang"), HttpMethod::Get, &[200])
        else {
            unreachable!()
        };
        hanging.request_timeout = Duration::from_secs(600);
        let spec = sensor_spec(
            Condition::Http(hanging),
            poke_every(Duration::from_secs(600)),
        );
        let mut running = start(spec, Duration::from_millis(500)).await;
        assert!(matches!(
            next_event(&mut running).await,
            AttemptEvent::Started { .. }
        ));
        let begun = Instant::now();
        running.stop.stop("cancelled");
        let (result, _, log) = finish(running).await;
        assert!(
            begun.elapsed() < Duration::from_secs(2),
            "{:?}",
            begun.elapsed()
        );
        assert_eq!(result.outcome, AttemptOutcome::Cancelled);
        assert!(log.is_empty());
    }

    #[tokio::test]
    async fn an_http_sensor_succeeds_once_the_endpoint_answers_an_accepted_status() {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let answered = Arc::new(AtomicUsize::new(0));
        let server = TestServer::start(Router::new().route(
            "/ready",
            any(move |method: Method, RawQuery(query): RawQuery| {
                let seen = seen.clone();
                let answered = answered.clone();
                async move {
                    seen.lock().unwrap().push((method, query));
                    if answered.fetch_add(1, Ordering::SeqCst) < 2 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        ))
        .await;
        // Credentials and the query reach the server but not the log.
        let url = format!("http://alice:secret@{}/ready?token=abc", server.addr);
        let spec = sensor_spec(
            http(&url, HttpMethod::Get, &[200, 204]),
            poke_every(Duration::from_millis(20)),
        );
        let (result, _, log) = run(spec).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
        assert_eq!(result.output_json, "");
        let shown = format!("GET http://{}/ready?…", server.addr);
        assert_eq!(
            String::from_utf8(log).unwrap(),
            format!(
                "poke 1: {shown}: 503 Service Unavailable\n\
                 poke 2: {shown}: 503 Service Unavailable\n\
                 poke 3: {shown}: 200 OK; condition met\n"
            )
        );
        let requests = requests.lock().unwrap().clone();
        assert_eq!(
            requests,
            vec![(Method::GET, Some("token=abc".to_string())); 3],
            "one request per poke"
        );
    }

    #[tokio::test]
    async fn head_requests_and_endpoints_that_do_not_answer() {
        let methods = Arc::new(Mutex::new(Vec::new()));
        let seen = methods.clone();
        let server = TestServer::start(
            Router::new()
                .route(
                    "/object",
                    any(move |method: Method| {
                        let seen = seen.clone();
                        async move {
                            seen.lock().unwrap().push(method);
                            StatusCode::OK
                        }
                    }),
                )
                .route("/hang", any(std::future::pending::<StatusCode>)),
        )
        .await;

        let (result, _, log) = run(sensor_spec(
            http(&server.url("/object"), HttpMethod::Head, &[200]),
            SensorMode::Reschedule,
        ))
        .await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
        assert_eq!(
            String::from_utf8(log).unwrap(),
            format!(
                "poke 1: HEAD {}: 200 OK; condition met\n",
                server.url("/object")
            )
        );
        assert_eq!(*methods.lock().unwrap(), [Method::HEAD]);

        // A status that is not listed.
        let (result, _, _) = run(sensor_spec(
            http(&server.url("/object"), HttpMethod::Get, &[204]),
            SensorMode::Reschedule,
        ))
        .await;
        assert_eq!(result.outcome, AttemptOutcome::Rescheduled, "{result:?}");
        assert_eq!(
            result.error,
            format!(
                "condition not met yet: GET {}: 200 OK",
                server.url("/object")
            )
        );

        // No answer within the request timeout.
        let Condition::Http(mut slow) = http(&server.url("/hang"), HttpMethod::Get, &[200]) else {
            unreachable!()
        };
        slow.request_timeout = Duration::from_millis(200);
        let (result, _, log) =
            run(sensor_spec(Condition::Http(slow), SensorMode::Reschedule)).await;
        assert_eq!(result.outcome, AttemptOutcome::Rescheduled, "{result:?}");
        assert_eq!(
            String::from_utf8(log).unwrap(),
            format!(
                "poke 1: GET {}: no answer within 200ms\n",
                server.url("/hang")
            )
        );

        // HTTPS to a server that speaks plain HTTP: the handshake fails.
        let url = format!("https://{}/object", server.addr);
        let (result, _, log) = run(sensor_spec(
            http(&url, HttpMethod::Get, &[200]),
            SensorMode::Reschedule,
        ))
        .await;
        assert_eq!(result.outcome, AttemptOutcome::Rescheduled, "{result:?}");
        let log = String::from_utf8(log).unwrap();
        assert!(
            log.starts_with(&format!("poke 1: GET {url}: error sending request")),
            "{log}"
        );

        // Nobody listening.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let url = format!("http://{closed}/");
        let (result, _, log) = run(sensor_spec(
            http(&url, HttpMethod::Get, &[200]),
            SensorMode::Reschedule,
        ))
        .await;
        assert_eq!(result.outcome, AttemptOutcome::Rescheduled, "{result:?}");
        let log = String::from_utf8(log).unwrap();
        assert!(
            log.starts_with(&format!("poke 1: GET {url}: error sending request")),
            "{log}"
        );
        assert!(log.to_lowercase().contains("connection refused"), "{log}");
    }

    #[test]
    fn sensor_assignments_are_checked() {
        let file_sensor = |path: &str| api::SensorTask {
            condition: Some(api::sensor_task::Condition::File(api::FileCondition {
                path: path.into(),
            })),
            poke_interval: None,
            reschedule: false,
            deadline: None,
        };
        let http_sensor = |url: &str, method: &str, statuses: Vec<u32>| api::SensorTask {
            condition: Some(api::sensor_task::Condition::Http(api::HttpCondition {
                url: url.into(),
                method: method.into(),
                statuses,
                request_timeout: None,
            })),
            poke_interval: Some(time::duration_to_proto(Duration::from_secs(5))),
            reschedule: true,
            deadline: Some(time::micros_to_timestamp(1_704_153_600_000_000)),
        };

        let spec = SensorSpec::from_proto(file_sensor("data/*.csv")).unwrap();
        assert_eq!(
            spec,
            SensorSpec {
                condition: Condition::File(FileCondition {
                    path: "data/*.csv".into(),
                    is_pattern: true
                }),
                mode: SensorMode::Poke {
                    interval: DEFAULT_POKE_INTERVAL
                },
                deadline: None,
            }
        );
        let spec = SensorSpec::from_proto(http_sensor(
            "https://example.com/x",
            "head",
            vec![204, 200, 204],
        ))
        .unwrap();
        assert_eq!(spec.mode, SensorMode::Reschedule);
        assert_eq!(spec.deadline, Some(1_704_153_600_000_000));
        let Condition::Http(condition) = spec.condition else {
            unreachable!()
        };
        assert_eq!(
            (
                condition.method,
                condition.statuses,
                condition.request_timeout
            ),
            (HttpMethod::Head, vec![200, 204], DEFAULT_REQUEST_TIMEOUT)
        );

        let refused =
            |sensor: api::SensorTask| SensorSpec::from_proto(sensor).unwrap_err().to_string();
        assert_eq!(refused(file_sensor("")), "sensor.file.path: is empty");
        assert_eq!(
            refused(file_sensor("/data/[2024")),
            "sensor.file.path: `/data/[2024` is not a valid glob pattern: \
             Pattern syntax error near position 6: invalid range pattern"
        );
        assert_eq!(
            refused(file_sensor("/data/\0")),
            "sensor.file.path: contains a NUL character"
        );
        assert_eq!(
            refused(api::SensorTask {
                poke_interval: Some(time::duration_to_proto(Duration::ZERO)),
                ..file_sensor("/data")
            }),
            "sensor.poke_interval: must be positive"
        );
        assert_eq!(
            refused(api::SensorTask {
                deadline: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 1_000_000_000
                }),
                ..file_sensor("/data")
            }),
            "sensor.deadline: nanos 1000000000 is outside 0..1000000000"
        );
        assert_eq!(
            refused(http_sensor("ftp://example.com/x", "GET", vec![200])),
            "sensor.http.url: scheme `ftp` is not http or https"
        );
        assert_eq!(
            refused(http_sensor("not a url", "GET", vec![200])),
            "sensor.http.url: is not a valid URL: relative URL without a base"
        );
        assert_eq!(
            refused(http_sensor("http://example.com/", "POST", vec![200])),
            "sensor.http.method: `POST` is not GET or HEAD"
        );
        assert_eq!(
            refused(http_sensor("http://example.com/", "GET", vec![])),
            "sensor.http.statuses: lists no status"
        );
        assert_eq!(
            refused(http_sensor("http://example.com/", "GET", vec![200, 600])),
            "sensor.http.statuses: 600 is not an HTTP status (100 to 599)"
        );
        let mut zero_timeout = http_sensor("http://example.com/", "GET", vec![200]);
        if let Some(api::sensor_task::Condition::Http(http)) = &mut zero_timeout.condition {
            http.request_timeout = Some(time::duration_to_proto(Duration::ZERO));
        }
        assert_eq!(
            refused(zero_timeout),
            "sensor.http.request_timeout: must be positive"
        );
        assert_eq!(
            refused(api::SensorTask {
                condition: None,
                ..file_sensor("/data")
            }),
            "sensor.condition: is missing (file or http)"
        );
    }
}
