//! Baton's worker agent: it connects to the controller over one
//! bidirectional gRPC stream, runs the attempts it is assigned, and reports
//! their start, logs and results until the controller has acknowledged them.
//!
//! [`run`] is the whole public surface besides [`WorkerConfig`] and
//! [`WorkerMetrics`]: the CLI builds a config (and the metrics it serves,
//! if any), passes a shutdown token, and awaits `run`.
//!
//! # Layout
//! - `config`: [`WorkerConfig`], its defaults and its validation.
//! - `agent`: the worker's one event loop: controller messages, attempt
//!   events, heartbeats, draining and shutdown; the only owner of the
//!   outbox.
//! - `connection`: the stream to the controller (`Register` first, then the
//!   resent backlog), following the leader when a follower redirects, and
//!   reconnecting with jittered exponential backoff across the configured
//!   controllers.
//! - `outbox`: every known attempt and what of it is not yet acknowledged
//!   (log bytes, start, result), and the messages that (re)send it, read
//!   back from the spool within a window.
//! - `spool`: each attempt's output, identity and result on local disk
//!   in a reused slot (`spool/<slot>/`) until acknowledged; found again
//!   after a restart.
//! - `workdir`: the worker's locked directory, and killing the process
//!   groups a worker that was killed left behind.
//! - `executor`: runs one attempt: a `command` in its own process group
//!   (output capture with backpressure, timeout, cancel, kill of the whole
//!   group, `$BATON_OUTPUT`), a `noop`, or hands a sensor to `sensor`.
//! - `metrics`: [`WorkerMetrics`], the worker's own Prometheus metrics.
//! - `sensor`: sensor attempts: checks a file (or glob) or HTTP condition
//!   in poke mode (until it holds or the deadline passes, holding the slot)
//!   or reschedule mode (once), one log line per poke.
//!
//! # Guarantees
//! - Per attempt, every log byte is sent (in order, numbered by offset)
//!   before the result, on every stream, and kept on disk until
//!   acknowledged, also across a restart of the worker with the same id on
//!   the same work dir (for attempts that finished before it stopped).
//!   Memory per attempt is bounded by the send window, not by its output.
//! - No process of an attempt outlives it: the process group is killed when
//!   the main process exits, times out, is cancelled, or its executor is
//!   dropped.
//! - When [`run`] returns, no task of the worker is left running.

pub mod config;
pub mod metrics;

mod agent;
mod connection;
mod executor;
mod outbox;
mod sensor;
mod spool;
mod workdir;

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;
pub use metrics::WorkerMetrics;

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("cannot create the work directory `{}`: {source}", path.display())]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the worker until `shutdown` is cancelled or the controller asks it
/// to drain: it then takes no new work, lets running attempts finish for the
/// drain grace, cancels what remains, waits briefly for the last results to
/// be acknowledged, and returns `Ok`.
///
/// Losing the controller is not an error: the worker reconnects with backoff
/// for as long as it runs, and its attempts keep running meanwhile.
///
/// `metrics`: what the worker records into, when the process serves them.
pub async fn run(
    mut config: WorkerConfig,
    metrics: Option<Arc<WorkerMetrics>>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    config.validate()?;
    let work_dir = config.work_dir.clone();
    let worker_id = config.worker_id.to_string();
    let (own, (spool, recovered)) = tokio::task::spawn_blocking(move || {
        workdir::WorkDir::acquire(&work_dir, &worker_id).map(|own| {
            let spool = spool::load(own.root());
            (own, spool)
        })
    })
    .await
    .map_err(|error| WorkerError::WorkDir {
        path: config.work_dir.clone(),
        source: std::io::Error::other(error),
    })??;
    // Attempts keep their files under the worker's own, locked directory.
    config.work_dir = own.root().to_path_buf();
    let result = agent::Agent::new(config, spool, recovered, metrics)
        .run(shutdown)
        .await;
    drop(own);
    result
}
