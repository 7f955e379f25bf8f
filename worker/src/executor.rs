//! Runs one attempt from start to result: spawns the task's process in its
//! own process group, turns its combined stdout and stderr into log chunks,
//! enforces the timeout, obeys a stop request, kills whatever is left of the
//! group when the main process ends, and builds the [`AttemptResult`]
//! (including the `$BATON_OUTPUT` file). Sensors run in `sensor`, on the
//! same log, stop signal and result.
//!
//! The executor knows nothing about the stream: it appends the output to
//! the attempt's spool file (`spool`) as it reads it, reports through
//! [`AttemptEvent`]s on a channel how far the spooled log reaches, and
//! stores the result in the spool before reporting it. The pipes are read
//! as fast as the task writes, whatever the controller acknowledges: the
//! disk, not memory, holds what is not yet sent.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use baton_common::ids::{AttemptId, DagId, RunId, TaskId};
use baton_common::pb::api::{self, AttemptOutcome};
use baton_common::time;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::sensor::{self, HttpClient, SensorSpec};
use crate::spool::SpoolWriter;

/// Largest read from the task's pipes, and largest log chunk sent.
pub(crate) const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// `$BATON_OUTPUT` limit when the assignment gives none.
pub(crate) const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 * 1024;

/// After the main process has exited and its group was killed, how long the
/// executor keeps reading the pipes. Only a process that left the group
/// (`setsid`) can keep them open that long.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Error of an attempt stopped because the worker drains (SIGTERM or the
/// controller's `Drain`) and its grace period ran out.
pub(crate) const SHUTDOWN_REASON: &str =
    "the worker was drained (shut down) before the attempt finished";

/// One attempt as the executor runs it, converted from `Assign`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttemptSpec {
    pub attempt_id: AttemptId,
    pub dag_id: DagId,
    pub run_id: RunId,
    pub task_id: TaskId,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Microseconds since the epoch; `None` when the controller sent none.
    pub logical_date: Option<time::Micros>,
    /// The run's data interval (start, end), in microseconds since the
    /// epoch: the logical date twice when the controller sent none (an older
    /// controller), `None` when it sent no logical date either.
    pub data_interval: Option<(time::Micros, time::Micros)>,
    /// A JSON object; `{}` when the run has no parameters.
    pub params_json: String,
    pub kind: TaskKind,
    pub timeout: Option<Duration>,
    pub max_output_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TaskKind {
    Command(CommandSpec),
    Noop,
    Sensor(SensorSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
}

/// Why an `Assign` cannot be run. With an attempt id the attempt is
/// reported as ERROR; without one it cannot be reported at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidAssign {
    pub attempt_id: Option<AttemptId>,
    pub reason: String,
}

impl AttemptSpec {
    pub(crate) fn from_assign(assign: api::Assign) -> Result<Self, InvalidAssign> {
        let attempt_id: AttemptId =
            assign
                .attempt_id
                .parse()
                .map_err(|error: baton_common::ids::IdError| InvalidAssign {
                    attempt_id: None,
                    reason: error.reason,
                })?;
        let invalid = |reason: String| InvalidAssign {
            attempt_id: Some(attempt_id),
            reason,
        };
        let dag_id = DagId::new(assign.dag_id).map_err(|error| invalid(error.reason))?;
        let run_id: RunId = assign
            .run_id
            .parse()
            .map_err(|error: baton_common::ids::IdError| invalid(error.reason))?;
        let task_id = TaskId::new(assign.task_id).map_err(|error| invalid(error.reason))?;
        let kind = match assign.kind {
            Some(api::assign::Kind::Command(command)) => {
                if command.argv.first().is_none_or(String::is_empty) {
                    return Err(invalid(
                        "the command task has no program (argv is empty)".to_string(),
                    ));
                }
                TaskKind::Command(CommandSpec {
                    argv: command.argv,
                    env: command.env.into_iter().collect(),
                    cwd: (!command.cwd.is_empty()).then(|| PathBuf::from(command.cwd)),
                })
            }
            Some(api::assign::Kind::Noop(_)) => TaskKind::Noop,
            Some(api::assign::Kind::Custom(custom)) => {
                return Err(invalid(format!(
                    "custom handler `{}` is served by SDK workers; this worker declares no handlers",
                    custom.handler
                )));
            }
            Some(api::assign::Kind::Sensor(sensor)) => TaskKind::Sensor(
                SensorSpec::from_proto(sensor).map_err(|error| invalid(error.to_string()))?,
            ),
            None => {
                return Err(invalid(
                    "the assignment names no task kind this worker knows".to_string(),
                ));
            }
        };
        let timestamp = |field: &str, value: Option<&prost_types::Timestamp>| {
            value
                .map(checked_timestamp)
                .transpose()
                .map_err(|reason| invalid(format!("{field}: {reason}")))
        };
        let logical_date = timestamp("logical_date", assign.logical_date.as_ref())?;
        let data_interval = match (
            timestamp("data_interval_start", assign.data_interval_start.as_ref())?,
            timestamp("data_interval_end", assign.data_interval_end.as_ref())?,
        ) {
            (Some(start), Some(end)) if start > end => {
                return Err(invalid(format!(
                    "data_interval_start {} is after data_interval_end {}",
                    format_logical_date(start),
                    format_logical_date(end)
                )));
            }
            (Some(start), Some(end)) => Some((start, end)),
            (None, None) => logical_date.map(|date| (date, date)),
            (Some(_), None) => {
                return Err(invalid(
                    "data_interval_start is set but data_interval_end is not".to_string(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "data_interval_end is set but data_interval_start is not".to_string(),
                ));
            }
        };
        let params_json = if assign.params_json.trim().is_empty() {
            "{}".to_string()
        } else {
            assign.params_json
        };
        Ok(Self {
            attempt_id,
            dag_id,
            run_id,
            task_id,
            attempt: assign.attempt,
            logical_date,
            data_interval,
            params_json,
            kind,
            timeout: assign.timeout.as_ref().map(time::duration_from_proto),
            max_output_bytes: if assign.max_output_bytes == 0 {
                DEFAULT_MAX_OUTPUT_BYTES
            } else {
                u64::from(assign.max_output_bytes)
            },
        })
    }
}

/// Earliest and latest instants RFC 3339 can write (years 1 to 9999), in
/// seconds since the epoch.
const RFC3339_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A timestamp from the controller, checked: its nanoseconds within a
/// second, its year between 1 and 9999.
pub(crate) fn checked_timestamp(
    timestamp: &prost_types::Timestamp,
) -> Result<time::Micros, String> {
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(format!(
            "nanos {} is outside 0..1000000000",
            timestamp.nanos
        ));
    }
    if !RFC3339_SECONDS.contains(&timestamp.seconds) {
        return Err(format!(
            "{} seconds since the epoch is outside the years 1 to 9999",
            timestamp.seconds
        ));
    }
    Ok(time::timestamp_to_micros(timestamp))
}

/// What an executor reports, in order: at most one `Started`, `Log`s with
/// growing ends, then (from the task that drives the executor) one
/// `Finished`, sent once the result is in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttemptEvent {
    Started {
        attempt_id: AttemptId,
        started_at: SystemTime,
        pid: u32,
    },
    /// The spooled log now holds `end` bytes.
    Log { attempt_id: AttemptId, end: u64 },
    Finished {
        attempt_id: AttemptId,
        result: AttemptResult,
    },
}

/// How an attempt ended, as `TaskResult` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttemptResult {
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    pub error: String,
    pub output_json: String,
    pub started_at: SystemTime,
    pub ended_at: SystemTime,
    /// Bytes of log the attempt produced; every one of them was spooled
    /// and reported in a `Log` event before the result.
    pub log_bytes: u64,
}

impl AttemptResult {
    /// An attempt that never got to run.
    pub(crate) fn error_now(error: String, log_bytes: u64) -> Self {
        let now = SystemTime::now();
        Self {
            outcome: AttemptOutcome::Error,
            exit_code: None,
            error,
            output_json: String::new(),
            started_at: now,
            ended_at: now,
            log_bytes,
        }
    }
}

/// A request to stop an attempt, with the reason and outcome its result will
/// carry: CANCELLED when the controller cancels it, WORKER_DRAINED when the
/// worker drains. The first request wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopSignal {
    inner: Arc<StopInner>,
}

#[derive(Debug, Default)]
struct StopInner {
    token: CancellationToken,
    reason: Mutex<Option<(AttemptOutcome, String)>>,
}

impl StopSignal {
    /// Cancels the attempt (the controller asked).
    pub(crate) fn stop(&self, reason: impl Into<String>) {
        self.stop_as(AttemptOutcome::Cancelled, reason.into());
    }

    /// Stops the attempt because the worker drains: the controller puts its
    /// task back to `ready` without using a retry.
    pub(crate) fn drain(&self, reason: impl Into<String>) {
        self.stop_as(AttemptOutcome::WorkerDrained, reason.into());
    }

    fn stop_as(&self, outcome: AttemptOutcome, reason: String) {
        {
            let mut slot = self
                .inner
                .reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some((outcome, reason));
            }
        }
        self.inner.token.cancel();
    }

    /// The outcome a stopped attempt reports.
    pub(crate) fn outcome(&self) -> AttemptOutcome {
        self.inner
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(AttemptOutcome::Cancelled, |(outcome, _)| *outcome)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Resolves with the reason once [`StopSignal::stop`] was called.
    pub(crate) async fn stopped(&self) -> String {
        self.inner.token.cancelled().await;
        self.reason()
    }

    fn reason(&self) -> String {
        self.inner
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, reason)| reason.clone())
            .unwrap_or_default()
    }
}

/// Everything an executor needs besides the spec.
#[derive(Debug)]
pub(crate) struct AttemptContext {
    pub kill_grace: Duration,
    pub events: mpsc::UnboundedSender<AttemptEvent>,
    /// Where the output and the result go; created by the caller.
    pub spool: SpoolWriter,
    pub stop: StopSignal,
    /// Shared by the worker's sensors (built on first use).
    pub http: HttpClient,
}

/// Runs the attempt to its end, stores its result in the spool and returns
/// it. `Started` and `Log` events are sent on the way; the caller sends
/// `Finished`.
pub(crate) async fn run_attempt(spec: &AttemptSpec, context: AttemptContext) -> AttemptResult {
    let (result, spool) = execute(spec, context).await;
    if let Err(error) = spool.finish(&result).await {
        // The result still goes out; only a restart of the worker before it
        // is acknowledged would lose it.
        warn!(%error, "cannot store the result in the spool");
    }
    result
}

async fn execute(spec: &AttemptSpec, context: AttemptContext) -> (AttemptResult, SpoolWriter) {
    match &spec.kind {
        TaskKind::Noop => {
            let started_at = SystemTime::now();
            send(
                &context.events,
                AttemptEvent::Started {
                    attempt_id: spec.attempt_id,
                    started_at,
                    pid: 0,
                },
            );
            let result = AttemptResult {
                outcome: AttemptOutcome::Succeeded,
                exit_code: None,
                error: String::new(),
                output_json: String::new(),
                started_at,
                ended_at: SystemTime::now(),
                log_bytes: 0,
            };
            (result, context.spool)
        }
        TaskKind::Command(command) => run_command(spec, command, context).await,
        TaskKind::Sensor(sensor_spec) => sensor::run_sensor(spec, sensor_spec, context).await,
    }
}

pub(crate) fn send(events: &mpsc::UnboundedSender<AttemptEvent>, event: AttemptEvent) {
    // The receiver only goes away when the worker stops, after every
    // executor has finished.
    if events.send(event).is_err() {
        debug!("attempt event dropped: the worker is stopping");
    }
}

/// Why the worker ended the process before it exited on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopCause {
    TimedOut(Duration),
    Stopped(String),
    /// The output could not be written to the spool.
    SpoolFailed(String),
}

async fn run_command(
    spec: &AttemptSpec,
    command: &CommandSpec,
    context: AttemptContext,
) -> (AttemptResult, SpoolWriter) {
    let AttemptContext {
        kill_grace,
        events,
        spool,
        stop,
        http: _,
    } = context;
    let slot_dir = spool.slot().dir().to_path_buf();
    let output_path = spool.output_path();
    let mut log = LogSink::new(spec.attempt_id, events.clone(), spool);
    let context = ProcessContext {
        slot_dir,
        output_path,
        kill_grace,
        events,
        stop,
    };
    let result = run_process(spec, command, &context, &mut log).await;
    (result, log.spool)
}

/// [`AttemptContext`] without the spool, which the [`LogSink`] owns.
struct ProcessContext {
    /// The attempt's spool slot, which holds its private files.
    slot_dir: PathBuf,
    /// `$BATON_OUTPUT`, in the slot.
    output_path: PathBuf,
    kill_grace: Duration,
    events: mpsc::UnboundedSender<AttemptEvent>,
    stop: StopSignal,
}

async fn fail_to_start(
    log: &mut LogSink,
    started_at: SystemTime,
    message: String,
) -> AttemptResult {
    warn!(error = %message, "attempt could not be started");
    log.push(format!("baton: {message}\n").as_bytes()).await;
    AttemptResult {
        started_at,
        ..AttemptResult::error_now(message, log.total())
    }
}

async fn run_process(
    spec: &AttemptSpec,
    command: &CommandSpec,
    context: &ProcessContext,
    log: &mut LogSink,
) -> AttemptResult {
    let started_at = SystemTime::now();
    if context.stop.is_stopped() {
        let reason = context.stop.reason();
        return AttemptResult {
            outcome: context.stop.outcome(),
            exit_code: None,
            error: reason,
            output_json: String::new(),
            started_at,
            ended_at: SystemTime::now(),
            log_bytes: 0,
        };
    }

    let output_path = &context.output_path;
    if let Some(cwd) = &command.cwd {
        match tokio::fs::metadata(cwd).await {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return fail_to_start(
                    log,
                    started_at,
                    format!("working directory `{}` is not a directory", cwd.display()),
                )
                .await;
            }
            Err(error) => {
                return fail_to_start(
                    log,
                    started_at,
                    format!("cannot use working directory `{}`: {error}", cwd.display()),
                )
                .await;
            }
        }
    }

    let program = &command.argv[0];
    let mut process = tokio::process::Command::new(program);
    process
        .args(&command.argv[1..])
        .envs(&command.env)
        .env("BATON_DAG_ID", spec.dag_id.as_str())
        .env("BATON_RUN_ID", spec.run_id.to_string())
        // A mapped instance `task[3]` runs as its task, with its index.
        .env("BATON_TASK_ID", spec.task_id.split_instance().0)
        .env("BATON_ATTEMPT", spec.attempt.to_string())
        .env("BATON_ATTEMPT_ID", spec.attempt_id.to_string())
        .env("BATON_PARAMS", &spec.params_json)
        .env("BATON_OUTPUT", output_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(micros) = spec.logical_date {
        process.env("BATON_LOGICAL_DATE", format_logical_date(micros));
    }
    if let (_, Some(map_index)) = spec.task_id.split_instance() {
        process.env("BATON_MAP_INDEX", map_index.to_string());
    }
    if let Some((start, end)) = spec.data_interval {
        process
            .env("BATON_DATA_INTERVAL_START", format_logical_date(start))
            .env("BATON_DATA_INTERVAL_END", format_logical_date(end));
    }
    if let Some(cwd) = &command.cwd {
        process.current_dir(cwd);
    }
    let mut child = match process.spawn() {
        Ok(child) => child,
        Err(error) => {
            let message = match &command.cwd {
                Some(cwd) => format!("cannot start `{program}` in `{}`: {error}", cwd.display()),
                None => format!("cannot start `{program}`: {error}"),
            };
            return fail_to_start(log, started_at, message).await;
        }
    };
    let Some(pid) = child.id() else {
        return fail_to_start(
            log,
            started_at,
            format!("`{program}` exited before its process id could be read"),
        )
        .await;
    };
    let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    let mut group = ProcessGroupGuard { pgid: Some(pgid) };
    if let Err(error) = crate::workdir::record_group(&context.slot_dir, pid) {
        // Only the clean-up after a killed worker depends on it.
        debug!(%error, "cannot record the attempt's process group");
    }
    info!(pid, program = %program, "attempt started");
    send(
        &context.events,
        AttemptEvent::Started {
            attempt_id: spec.attempt_id,
            started_at,
            pid,
        },
    );

    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut stdout_buffer = vec![0_u8; MAX_CHUNK_BYTES];
    let mut stderr_buffer = vec![0_u8; MAX_CHUNK_BYTES];
    // A timeout too long to represent is never reached.
    let timeout_at = spec
        .timeout
        .and_then(|timeout| Instant::now().checked_add(timeout));
    let mut exit: Option<io::Result<ExitStatus>> = None;
    let mut stop_cause: Option<StopCause> = None;
    let mut sigkill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;

    while exit.is_none() || stdout.is_some() || stderr.is_some() {
        if let Some(error) = log.failed.clone()
            && stop_cause.is_none()
            && exit.is_none()
        {
            warn!(%error, "stopping the attempt: its output cannot be kept");
            stop_cause = Some(StopCause::SpoolFailed(error));
            signal_group(pgid, Signal::SIGTERM);
            sigkill_at = Some(Instant::now() + context.kill_grace);
        }
        // Not biased: under a flood on one pipe the other still gets read.
        tokio::select! {
            reason = context.stop.stopped(), if stop_cause.is_none() && exit.is_none() => {
                info!(%reason, "stopping the attempt");
                stop_cause = Some(StopCause::Stopped(reason));
                signal_group(pgid, Signal::SIGTERM);
                sigkill_at = Some(Instant::now() + context.kill_grace);
            }
            () = sleep_until_opt(timeout_at), if stop_cause.is_none() && exit.is_none() => {
                let timeout = spec.timeout.unwrap_or_default();
                info!(timeout = %humantime::format_duration(timeout), "attempt timed out; stopping it");
                stop_cause = Some(StopCause::TimedOut(timeout));
                signal_group(pgid, Signal::SIGTERM);
                sigkill_at = Some(Instant::now() + context.kill_grace);
            }
            () = sleep_until_opt(sigkill_at), if exit.is_none() => {
                debug!("kill grace is over; sending SIGKILL to the process group");
                signal_group(pgid, Signal::SIGKILL);
                sigkill_at = None;
            }
            status = child.wait(), if exit.is_none() => {
                // Nothing of the attempt may outlive its main process.
                signal_group(pgid, Signal::SIGKILL);
                group.pgid = None;
                exit = Some(status);
                drain_until = Some(Instant::now() + OUTPUT_DRAIN_LIMIT);
            }
            read = read_pipe(&mut stdout, &mut stdout_buffer) => {
                match read {
                    Ok(0) => stdout = None,
                    Ok(count) => log.push(&stdout_buffer[..count]).await,
                    Err(error) => {
                        warn!(%error, "cannot read the task's stdout");
                        stdout = None;
                    }
                }
            }
            read = read_pipe(&mut stderr, &mut stderr_buffer) => {
                match read {
                    Ok(0) => stderr = None,
                    Ok(count) => log.push(&stderr_buffer[..count]).await,
                    Err(error) => {
                        warn!(%error, "cannot read the task's stderr");
                        stderr = None;
                    }
                }
            }
            () = sleep_until_opt(drain_until), if drain_until.is_some() => {
                warn!("the task's output is still open after its process group was killed \
                       (a process left the group); the rest of its output is not captured");
                stdout = None;
                stderr = None;
            }
        }
    }
    drop(group);

    let exit = match exit {
        Some(Ok(status)) => status,
        Some(Err(error)) => {
            let message = format!("cannot wait for `{program}`: {error}");
            return AttemptResult {
                started_at,
                ..AttemptResult::error_now(message, log.total())
            };
        }
        None => unreachable!("the loop ends only after the process exited"),
    };
    let mut result = AttemptResult {
        outcome: AttemptOutcome::Succeeded,
        exit_code: exit.code(),
        error: String::new(),
        output_json: String::new(),
        started_at,
        ended_at: SystemTime::now(),
        log_bytes: log.total(),
    };
    match stop_cause {
        Some(StopCause::TimedOut(timeout)) => {
            result.outcome = AttemptOutcome::TimedOut;
            result.error = format!("timed out after {}", humantime::format_duration(timeout));
        }
        Some(StopCause::Stopped(reason)) => {
            result.outcome = context.stop.outcome();
            result.error = reason;
        }
        Some(StopCause::SpoolFailed(error)) => {
            result.outcome = AttemptOutcome::Error;
            result.error = error;
        }
        None => match (exit.code(), exit.signal()) {
            (Some(0), _) => match read_output(output_path, spec.max_output_bytes).await {
                Ok(output_json) => result.output_json = output_json,
                Err(error) => {
                    result.outcome = AttemptOutcome::Error;
                    result.error = error;
                }
            },
            (Some(code), _) => {
                result.outcome = AttemptOutcome::Failed;
                result.error = format!("exited with status {code}");
            }
            (None, signal) => {
                result.outcome = AttemptOutcome::Failed;
                result.error = format!("killed by signal {}", signal_name(signal));
            }
        },
    }
    info!(outcome = result.outcome.as_str_name(), exit_code = ?result.exit_code, log_bytes = result.log_bytes, "attempt finished");
    result
}

/// The attempt's log as it is produced: appends output to the spool and
/// tells the agent how far the spooled log reaches.
pub(crate) struct LogSink {
    attempt_id: AttemptId,
    events: mpsc::UnboundedSender<AttemptEvent>,
    pub(crate) spool: SpoolWriter,
    /// Set when the spool could not be written; later output is dropped
    /// and the attempt is stopped as an error.
    pub(crate) failed: Option<String>,
}

impl LogSink {
    pub(crate) fn new(
        attempt_id: AttemptId,
        events: mpsc::UnboundedSender<AttemptEvent>,
        spool: SpoolWriter,
    ) -> Self {
        Self {
            attempt_id,
            events,
            spool,
            failed: None,
        }
    }

    /// Bytes of log produced (and spooled) so far.
    pub(crate) fn total(&self) -> u64 {
        self.spool.len()
    }

    pub(crate) async fn push(&mut self, data: &[u8]) {
        if data.is_empty() || self.failed.is_some() {
            return;
        }
        match self.spool.append(data).await {
            Ok(end) => send(
                &self.events,
                AttemptEvent::Log {
                    attempt_id: self.attempt_id,
                    end,
                },
            ),
            Err(error) => {
                self.failed = Some(format!(
                    "cannot write the task's output to the spool: {error}"
                ))
            }
        }
    }
}

/// Kills the attempt's process group if the executor is dropped before the
/// main process was reaped (the worker's task aborted), so no task process
/// outlives its attempt.
struct ProcessGroupGuard {
    pgid: Option<Pid>,
}

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

/// Signals every process of the group; a group that no longer exists is not
/// an error.
fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => {
            warn!(pgid = pgid.as_raw(), signal = signal.as_str(), %error, "cannot signal the process group")
        }
    }
}

async fn read_pipe<R: AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buffer: &mut [u8],
) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buffer).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Reads `$BATON_OUTPUT`: empty when the task wrote none, the trimmed JSON
/// text when it is valid, the reason for an ERROR outcome otherwise.
async fn read_output(path: &Path, limit: u64) -> Result<String, String> {
    let too_big = |size: u64| format!("output file is {size} bytes; the limit is {limit}");
    let metadata = match tokio::fs::metadata(path).await {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(error) => return Err(format!("cannot read the output file: {error}")),
    };
    if metadata.len() > limit {
        return Err(too_big(metadata.len()));
    }
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|error| format!("cannot read the output file: {error}"))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    // Read once: its space is given back now rather than when the slot is
    // next taken (which empties its output directory anyway).
    if let Err(error) = tokio::fs::remove_file(path).await {
        warn!(path = %path.display(), %error, "cannot remove the output file");
    }
    let text =
        String::from_utf8(bytes).map_err(|error| format!("output file is not UTF-8: {error}"))?;
    let text = text.trim();
    serde_json::from_str::<serde_json::Value>(text)
        .map_err(|error| format!("output file is not valid JSON: {error}"))?;
    Ok(text.to_string())
}

/// RFC 3339 in UTC with second precision, as `$BATON_LOGICAL_DATE` carries it.
fn format_logical_date(micros: time::Micros) -> String {
    // `format_micros` reserves zero for "unset".
    if micros == 0 {
        "1970-01-01T00:00:00Z".to_string()
    } else {
        time::format_micros(micros)
    }
}

fn signal_name(signal: Option<i32>) -> String {
    match signal {
        Some(number) => Signal::try_from(number).map_or_else(
            |_| format!("{number}"),
            |signal| signal.as_str().to_string(),
        ),
        None => "unknown".to_string(),
    }
}

/// Drives one attempt in a test, in the agent's and the controller's seat.
#[cfg(test)]
pub(crate) mod for_tests {
    use tokio::task::JoinHandle;

    use crate::spool::{Spool, SpoolSlot};

    use super::*;

    /// Every wait in these tests is bounded by this.
    pub(crate) const LIMIT: Duration = Duration::from_secs(30);

    pub(crate) fn spec(kind: TaskKind) -> AttemptSpec {
        AttemptSpec {
            attempt_id: AttemptId::generate(),
            dag_id: DagId::new("etl").unwrap(),
            run_id: RunId::generate(),
            task_id: TaskId::new("extract").unwrap(),
            attempt: 2,
            logical_date: Some(1_795_571_999_000_000),
            data_interval: Some((1_795_485_599_000_000, 1_795_571_999_000_000)),
            params_json: r#"{"day":"monday"}"#.to_string(),
            kind,
            timeout: None,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }

    pub(crate) fn shell(script: &str) -> TaskKind {
        TaskKind::Command(CommandSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::new(),
            cwd: None,
        })
    }

    /// One attempt running on its own task, with the test in the
    /// controller's seat: it sees the events and can acknowledge or stop.
    pub(crate) struct Running {
        pub(crate) events: mpsc::UnboundedReceiver<AttemptEvent>,
        pub(crate) stop: StopSignal,
        pub(crate) task: JoinHandle<AttemptResult>,
        /// Log bytes the test already took through [`next_event`].
        pub(crate) consumed_log: u64,
        pub(crate) slot: Arc<SpoolSlot>,
        pub(crate) work_dir: tempfile::TempDir,
    }

    pub(crate) async fn start(spec: AttemptSpec, kill_grace: Duration) -> Running {
        let work_dir = tempfile::tempdir().unwrap();
        let (events_sender, events) = mpsc::unbounded_channel();
        let stop = StopSignal::default();
        let attempt_id = spec.attempt_id;
        let meta = crate::spool::SpoolMeta {
            attempt_id,
            run_id: spec.run_id,
            task_id: spec.task_id.clone(),
            attempt: spec.attempt,
        };
        let slot = Spool::empty(work_dir.path()).take();
        let spool = SpoolWriter::create(Arc::clone(&slot), meta).await.unwrap();
        let context = AttemptContext {
            kill_grace,
            events: events_sender,
            spool,
            stop: stop.clone(),
            http: HttpClient::default(),
        };
        let task = tokio::spawn(async move { run_attempt(&spec, context).await });
        Running {
            events,
            stop,
            task,
            consumed_log: 0,
            slot,
            work_dir,
        }
    }

    /// Runs to completion; returns the result, the events and the log.
    pub(crate) async fn finish(
        mut running: Running,
    ) -> (AttemptResult, Vec<AttemptEvent>, Vec<u8>) {
        let result = tokio::time::timeout(LIMIT, &mut running.task)
            .await
            .expect("attempt ends in time")
            .unwrap();
        let mut events = Vec::new();
        while let Ok(event) = running.events.try_recv() {
            events.push(event);
        }
        let end = last_log_end(&events, running.consumed_log);
        let spooled = std::fs::read(running.slot.log_path()).expect("the log is spooled");
        assert_eq!(
            result.log_bytes, end,
            "log_bytes counts every byte reported"
        );
        assert_eq!(spooled.len() as u64, end, "every reported byte is spooled");
        if result.outcome == AttemptOutcome::Succeeded {
            assert_eq!(
                std::fs::read_dir(running.slot.output_dir())
                    .unwrap()
                    .count(),
                0,
                "the output file is read once and removed"
            );
        }
        let (_, recovered) = crate::spool::load(running.work_dir.path());
        assert_eq!(recovered.len(), 1, "the result is spooled");
        let micros = |time: SystemTime| time::system_time_to_micros(time);
        let spooled_result = &recovered[0].1.result;
        assert_eq!(
            (
                spooled_result.outcome,
                spooled_result.exit_code,
                &spooled_result.error,
                spooled_result.log_bytes
            ),
            (
                result.outcome,
                result.exit_code,
                &result.error,
                result.log_bytes
            )
        );
        assert_eq!(micros(spooled_result.ended_at), micros(result.ended_at));
        let log = spooled[running.consumed_log as usize..].to_vec();
        (result, events, log)
    }

    pub(crate) async fn run(spec: AttemptSpec) -> (AttemptResult, Vec<AttemptEvent>, Vec<u8>) {
        finish(start(spec, Duration::from_millis(500)).await).await
    }

    /// Where the spooled log ends after `events`, checking that the ends
    /// grow from `start` by at most a chunk at a time.
    pub(crate) fn last_log_end(events: &[AttemptEvent], start: u64) -> u64 {
        let mut last = start;
        for event in events {
            if let AttemptEvent::Log { end, .. } = event {
                assert!(*end > last, "ends grow");
                assert!(*end - last <= MAX_CHUNK_BYTES as u64, "one read at a time");
                last = *end;
            }
        }
        last
    }

    pub(crate) fn started_pid(events: &[AttemptEvent]) -> u32 {
        match events.first() {
            Some(AttemptEvent::Started { pid, .. }) => *pid,
            other => panic!("the first event is Started, not {other:?}"),
        }
    }

    pub(crate) async fn next_event(running: &mut Running) -> AttemptEvent {
        let event = tokio::time::timeout(LIMIT, running.events.recv())
            .await
            .expect("event in time")
            .expect("an event");
        if let AttemptEvent::Log { end, .. } = &event {
            assert!(*end > running.consumed_log);
            running.consumed_log = *end;
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::for_tests::*;
    use super::*;

    /// Processes of the group that are still alive (zombies excluded: an
    /// orphan's reaping is up to init).
    fn live_group_members(pgid: u32) -> Vec<u32> {
        let mut members = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return members;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid pgrp ...`; comm may hold spaces.
            let Some(after_comm) = stat.rfind(')').map(|end| &stat[end + 1..]) else {
                continue;
            };
            let fields: Vec<&str> = after_comm.split_whitespace().collect();
            if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
                members.push(pid);
            }
        }
        members
    }

    async fn assert_group_gone(pgid: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let members = live_group_members(pgid);
            if members.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processes {members:?} of group {pgid} outlived the attempt"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn captures_stdout_and_stderr_into_one_log_with_offsets() {
        let script =
            "echo out; echo err >&2; head -c 200000 /dev/zero | tr '\\0' x; echo; echo end";
        let (result, events, log) = run(spec(shell(script))).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
        assert_eq!(result.exit_code, Some(0));
        assert!(result.error.is_empty());
        assert!(started_pid(&events) > 0);
        let text = String::from_utf8(log).unwrap();
        // The two pipes are read as their bytes arrive, so where the
        // stderr line lands among stdout's chunks depends on scheduling;
        // each stream's own bytes stay in order and whole.
        assert_eq!(text.matches("err\n").count(), 1, "{:?}", &text[..20]);
        assert_eq!(
            text.replacen("err\n", "", 1),
            format!("out\n{}\nend\n", "x".repeat(200_000)),
            "stdout in order"
        );
        assert_eq!(result.log_bytes, 8 + 200_000 + 1 + 4);
        let reads = events
            .iter()
            .filter(|event| matches!(event, AttemptEvent::Log { .. }))
            .count();
        assert!(
            reads >= 4,
            "200 kB of output is read at most 64 KiB at a time, got {reads}"
        );
    }

    #[tokio::test]
    async fn slow_output_is_flushed_while_the_task_runs() {
        let mut running = start(
            spec(shell("echo first; sleep 2; echo second")),
            Duration::from_millis(500),
        )
        .await;
        assert!(matches!(
            next_event(&mut running).await,
            AttemptEvent::Started { .. }
        ));
        let begun = Instant::now();
        match next_event(&mut running).await {
            AttemptEvent::Log { end, .. } => assert_eq!(end, 6, "first\\n"),
            other => panic!("expected the first line, got {other:?}"),
        }
        assert!(
            begun.elapsed() < Duration::from_secs(1),
            "flushed after {:?}",
            begun.elapsed()
        );
        let (result, _, log) = finish(running).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded);
        assert_eq!(
            log, b"second\n",
            "the rest of the log after the first chunk"
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        // The shell and both sleeps ignore SIGTERM (an ignored signal stays
        // ignored across exec), so only the SIGKILL after the grace ends them.
        let mut spec = spec(shell("trap '' TERM; sleep 600 & sleep 600"));
        spec.timeout = Some(Duration::from_secs(1));
        let begun = Instant::now();
        let (result, events, _) = run(spec).await;
        let elapsed = begun.elapsed();
        assert_eq!(result.outcome, AttemptOutcome::TimedOut, "{result:?}");
        assert_eq!(result.error, "timed out after 1s");
        assert_eq!(result.exit_code, None);
        assert!(
            elapsed >= Duration::from_millis(1_500),
            "SIGKILL came after the grace, not before: {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        let pgid = started_pid(&events);
        assert_group_gone(pgid).await;
        assert_eq!(
            killpg(Pid::from_raw(pgid as i32), None)
                .err()
                .unwrap_or(Errno::ESRCH),
            Errno::ESRCH
        );
    }

    #[tokio::test]
    async fn a_timeout_too_long_to_represent_is_no_limit() {
        let mut spec = spec(shell("echo done"));
        spec.timeout = Some(Duration::MAX);
        let (result, _, log) = run(spec).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
        assert_eq!(log, b"done\n");
    }

    #[tokio::test]
    async fn stop_kills_the_group_and_reports_cancelled() {
        let mut running = start(spec(shell("sleep 600 & sleep 600")), Duration::from_secs(5)).await;
        let pgid = match next_event(&mut running).await {
            AttemptEvent::Started { pid, .. } => pid,
            other => panic!("expected Started, got {other:?}"),
        };
        let begun = Instant::now();
        running.stop.stop("cancelled: run cancelled by alice");
        running.stop.stop("a second reason is ignored");
        let (result, _, _) = finish(running).await;
        assert_eq!(result.outcome, AttemptOutcome::Cancelled);
        assert_eq!(result.error, "cancelled: run cancelled by alice");
        assert!(
            begun.elapsed() < Duration::from_secs(4),
            "SIGTERM was enough: {:?}",
            begun.elapsed()
        );
        assert_group_gone(pgid).await;
    }

    #[tokio::test]
    async fn processes_left_behind_by_the_main_process_are_killed() {
        let (result, events, log) = run(spec(shell("sleep 600 & echo spawned"))).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded);
        assert_eq!(log, b"spawned\n");
        assert_group_gone(started_pid(&events)).await;
    }

    #[tokio::test]
    async fn non_zero_exit_and_signals_fail() {
        let (result, _, _) = run(spec(shell("echo oops >&2; exit 3"))).await;
        assert_eq!(result.outcome, AttemptOutcome::Failed);
        assert_eq!(result.exit_code, Some(3));
        assert_eq!(result.error, "exited with status 3");

        let (result, _, _) = run(spec(shell("kill -KILL $$"))).await;
        assert_eq!(result.outcome, AttemptOutcome::Failed);
        assert_eq!(result.exit_code, None);
        assert_eq!(result.error, "killed by signal SIGKILL");
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_an_error_in_result_and_log() {
        let missing = TaskKind::Command(CommandSpec {
            argv: vec!["baton-no-such-program".into()],
            env: BTreeMap::new(),
            cwd: None,
        });
        let (result, events, log) = run(spec(missing)).await;
        assert_eq!(result.outcome, AttemptOutcome::Error);
        assert!(
            result.error.contains("`baton-no-such-program`"),
            "{}",
            result.error
        );
        assert!(
            result.error.contains("No such file or directory"),
            "{}",
            result.error
        );
        assert!(
            !events
                .iter()
                .any(|event| matches!(event, AttemptEvent::Started { .. }))
        );
        assert!(String::from_utf8(log).unwrap().contains(&result.error));

        let bad_cwd = TaskKind::Command(CommandSpec {
            argv: vec!["true".into()],
            env: BTreeMap::new(),
            cwd: Some(PathBuf::from("/baton/no/such/dir")),
        });
        let (result, _, log) = run(spec(bad_cwd)).await;
        assert_eq!(result.outcome, AttemptOutcome::Error);
        assert!(
            result.error.contains("`/baton/no/such/dir`"),
            "{}",
            result.error
        );
        assert!(!log.is_empty());
    }

    #[tokio::test]
    async fn the_task_sees_its_identity_in_the_environment() {
        let mut env = BTreeMap::new();
        env.insert("GREETING".to_string(), "hello".to_string());
        env.insert("BATON_DAG_ID".to_string(), "cannot-override".to_string());
        let script = "printf '%s\\n' \"$BATON_DAG_ID\" \"$BATON_RUN_ID\" \"$BATON_TASK_ID\" \"$BATON_ATTEMPT\" \
                      \"$BATON_ATTEMPT_ID\" \"$BATON_LOGICAL_DATE\" \"$BATON_DATA_INTERVAL_START\" \"$BATON_DATA_INTERVAL_END\" \"$BATON_PARAMS\" \"$BATON_OUTPUT\" \"$GREETING\" \
                      \"$(pwd)\"; test -d \"$(dirname \"$BATON_OUTPUT\")\" && test ! -e \"$BATON_OUTPUT\" && echo ready";
        let cwd = tempfile::tempdir().unwrap();
        let kind = TaskKind::Command(CommandSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env,
            cwd: Some(cwd.path().to_path_buf()),
        });
        let spec = spec(kind);
        let running = start(spec.clone(), Duration::from_millis(500)).await;
        let output_path = running
            .slot
            .output_dir()
            .join(format!("{}.json", spec.attempt_id));
        let (result, _, log) = finish(running).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
        let text = String::from_utf8(log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let expected = [
            "etl".to_string(),
            spec.run_id.to_string(),
            "extract".to_string(),
            "2".to_string(),
            spec.attempt_id.to_string(),
            "2026-11-25T01:59:59Z".to_string(),
            "2026-11-24T01:59:59Z".to_string(),
            "2026-11-25T01:59:59Z".to_string(),
            r#"{"day":"monday"}"#.to_string(),
            output_path.display().to_string(),
            "hello".to_string(),
            cwd.path().canonicalize().unwrap().display().to_string(),
            "ready".to_string(),
        ];
        assert_eq!(lines, expected);
    }

    #[tokio::test]
    async fn output_file_is_checked_and_returned() {
        let (result, _, _) = run(spec(shell(
            "printf '  {\"rows\": 42}\\n' > \"$BATON_OUTPUT\"",
        )))
        .await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
        assert_eq!(result.output_json, r#"{"rows": 42}"#);

        let mut too_big = spec(shell("echo '[1, 2, 3, 4, 5, 6, 7]' > \"$BATON_OUTPUT\""));
        too_big.max_output_bytes = 10;
        let (result, _, _) = run(too_big).await;
        assert_eq!(result.outcome, AttemptOutcome::Error);
        assert_eq!(result.error, "output file is 22 bytes; the limit is 10");
        assert!(result.output_json.is_empty());

        let (result, _, _) = run(spec(shell("echo '{rows: 42' > \"$BATON_OUTPUT\""))).await;
        assert_eq!(result.outcome, AttemptOutcome::Error);
        assert!(
            result
                .error
                .starts_with("output file is not valid JSON: key must be a string"),
            "{}",
            result.error
        );

        // Output of a failed attempt is not read.
        let (result, _, _) = run(spec(shell("echo nope > \"$BATON_OUTPUT\"; exit 1"))).await;
        assert_eq!(result.outcome, AttemptOutcome::Failed);
        assert!(result.output_json.is_empty());
    }

    #[tokio::test]
    async fn a_flood_of_output_goes_to_the_spool_without_waiting_for_anyone() {
        // Nobody acknowledges anything here: the task still runs to its end
        // at disk speed, and every byte is in the spool in order.
        const LINES: usize = 200_000;
        let script = format!("seq 1 {LINES}");
        let (result, _, log) = run(spec(shell(&script))).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded, "{result:?}");
        let expected: String = (1..=LINES).map(|line| format!("{line}\n")).collect();
        assert_eq!(log.len(), expected.len());
        assert!(
            log == expected.as_bytes(),
            "the spooled log is what the task printed"
        );
    }

    #[tokio::test]
    async fn noop_succeeds_at_once() {
        let (result, events, log) = run(spec(TaskKind::Noop)).await;
        assert_eq!(result.outcome, AttemptOutcome::Succeeded);
        assert_eq!(started_pid(&events), 0);
        assert!(log.is_empty());
    }

    #[test]
    fn assignments_are_checked_before_they_run() {
        let attempt_id = AttemptId::generate();
        let assign = api::Assign {
            attempt_id: attempt_id.to_string(),
            dag_id: "etl".into(),
            run_id: RunId::generate().to_string(),
            task_id: "load".into(),
            attempt: 1,
            logical_date: None,
            params_json: String::new(),
            kind: Some(api::assign::Kind::Command(api::CommandTask {
                argv: vec!["true".into()],
                env: Default::default(),
                cwd: String::new(),
            })),
            timeout: Some(time::duration_to_proto(Duration::from_secs(3))),
            max_output_bytes: 0,
            data_interval_start: None,
            data_interval_end: None,
            map_index: None,
            ..Default::default()
        };
        let spec = AttemptSpec::from_assign(assign.clone()).unwrap();
        assert_eq!(spec.params_json, "{}");
        assert_eq!(spec.data_interval, None, "no logical date, no interval");
        assert_eq!(spec.max_output_bytes, DEFAULT_MAX_OUTPUT_BYTES);
        assert_eq!(spec.timeout, Some(Duration::from_secs(3)));
        assert!(matches!(&spec.kind, TaskKind::Command(command) if command.cwd.is_none()));

        let empty = api::Assign {
            kind: Some(api::assign::Kind::Command(api::CommandTask::default())),
            ..assign.clone()
        };
        let error = AttemptSpec::from_assign(empty).unwrap_err();
        assert_eq!(error.attempt_id, Some(attempt_id));
        assert!(error.reason.contains("argv is empty"));

        let no_id = api::Assign {
            attempt_id: "x".into(),
            ..assign.clone()
        };
        assert_eq!(
            AttemptSpec::from_assign(no_id).unwrap_err().attempt_id,
            None
        );

        // The data interval: given, or the logical date for an older
        // controller; half of one, an inverted one or a timestamp that is
        // not one are refused with the field named.
        let day = |seconds: i64| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let dated = api::Assign {
            logical_date: day(1_704_153_600),
            data_interval_start: day(1_704_067_200),
            data_interval_end: day(1_704_153_600),
            ..assign.clone()
        };
        let spec = AttemptSpec::from_assign(dated.clone()).unwrap();
        assert_eq!(
            spec.data_interval,
            Some((1_704_067_200_000_000, 1_704_153_600_000_000))
        );
        let older = api::Assign {
            data_interval_start: None,
            data_interval_end: None,
            ..dated.clone()
        };
        assert_eq!(
            AttemptSpec::from_assign(older).unwrap().data_interval,
            Some((1_704_153_600_000_000, 1_704_153_600_000_000))
        );
        let refused = |assign: api::Assign| {
            let error = AttemptSpec::from_assign(assign).unwrap_err();
            assert_eq!(error.attempt_id, Some(attempt_id));
            error.reason
        };
        assert_eq!(
            refused(api::Assign {
                data_interval_end: None,
                ..dated.clone()
            }),
            "data_interval_start is set but data_interval_end is not"
        );
        assert_eq!(
            refused(api::Assign {
                data_interval_start: day(1_704_153_601),
                ..dated.clone()
            }),
            "data_interval_start 2024-01-02T00:00:01Z is after data_interval_end 2024-01-02T00:00:00Z"
        );
        assert_eq!(
            refused(api::Assign {
                data_interval_end: Some(prost_types::Timestamp {
                    seconds: 1_704_153_600,
                    nanos: -1
                }),
                ..dated.clone()
            }),
            "data_interval_end: nanos -1 is outside 0..1000000000"
        );
        assert_eq!(
            refused(api::Assign {
                logical_date: day(i64::MAX),
                ..dated
            }),
            "logical_date: 9223372036854775807 seconds since the epoch is outside the years 1 to 9999"
        );

        // Sensors are checked the same way (see `sensor`'s tests for each
        // field).
        let sensor = |condition| api::Assign {
            kind: Some(api::assign::Kind::Sensor(api::SensorTask {
                condition,
                poke_interval: None,
                reschedule: false,
                deadline: None,
            })),
            ..assign.clone()
        };
        let spec = AttemptSpec::from_assign(sensor(Some(api::sensor_task::Condition::File(
            api::FileCondition {
                path: "/data/_SUCCESS".into(),
            },
        ))))
        .unwrap();
        assert!(matches!(spec.kind, TaskKind::Sensor(_)));
        assert_eq!(
            refused(sensor(None)),
            "sensor.condition: is missing (file or http)"
        );
    }
}
