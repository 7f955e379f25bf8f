//! [`WorkerConfig`]: what a worker needs to know to serve a controller, its
//! defaults and its validation.
//!
//! The CLI builds the config (flags, file, environment) and hands it to
//! [`crate::run`], which validates it before doing anything else.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use baton_common::ids::{QueueName, WorkerId};
use baton_common::spec::Resources;

use crate::WorkerError;

/// Most attempts one worker may run at once (the protocol's limit).
pub const MAX_SLOTS: u32 = 10_000;

/// Smallest accepted [`WorkerConfig::max_unacked_log_bytes`]: one full log
/// chunk, so that a chunk never waits for its own acknowledgement.
pub const MIN_UNACKED_LOG_BYTES: usize = 64 * 1024;

/// The queue a worker serves when none is configured.
pub const DEFAULT_QUEUE: &str = "default";

/// How a worker connects, what it serves and how it treats the processes it
/// runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Addresses of controller replicas (`host:port` or URLs), separated by
    /// commas: `10.0.0.1:7070,10.0.0.2:7070`. Any replica will do, since a
    /// follower redirects the worker to the leader; listing several lets the
    /// worker find a new leader when the one it knows goes away and is not
    /// replaced at the same address.
    pub controller_addr: String,
    /// Identity announced in `Register`. It must be unique among the workers
    /// connected at once: a second stream with the same id replaces the first.
    pub worker_id: WorkerId,
    /// Shown by `cluster status`; not used for routing.
    pub hostname: String,
    /// Queues this worker takes tasks from; at least one.
    pub queues: Vec<QueueName>,
    /// Free-form labels announced in `Register`.
    pub labels: BTreeMap<String, String>,
    /// Attempts run at once; the controller assigns no more than this.
    pub slots: u32,
    /// Compute offered to tasks that declare `resources`: the controller
    /// never leases more than this at once. Defaults to this machine's
    /// cores and memory.
    pub resources: Resources,
    /// The worker keeps its files in `<work_dir>/workers/<worker_id>/`
    /// (locked while it runs); each attempt takes a slot `spool/<n>/`
    /// there, reused from attempt to attempt, for its log, result, output
    /// file and process group record, kept until the controller
    /// acknowledged the log and result. A worker started again
    /// with the same id on the same work dir resends what its previous run
    /// left unacknowledged. Several workers may share a work dir.
    pub work_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL when an attempt's process group is
    /// killed (timeout, cancel, shutdown).
    pub kill_grace: Duration,
    /// On shutdown or `Drain` without a grace period: how long running
    /// attempts may finish before they are cancelled.
    pub drain_grace: Duration,
    /// Upper bound of the reconnect backoff, which starts at 100 ms and
    /// doubles. While no leader is known (the worker just lost its
    /// controller, or an election is in progress) the bound is 1 s at most,
    /// so that workers are back soon after a new leader is elected.
    pub reconnect_max_backoff: Duration,
    /// Per attempt: log bytes sent to the controller and not yet
    /// acknowledged, at most (the send window). The output itself waits in
    /// the attempt's spool on disk, so this bounds the memory an attempt's
    /// log takes, not what the task may print. The controller acknowledges
    /// a segment (up to 1 MiB) at a time: a window below that slows sending
    /// down to one segment per linger period.
    pub max_unacked_log_bytes: usize,
    /// Where to export each attempt's `execute` span, a child of the
    /// controller's span of the attempt (the W3C trace context its `Assign`
    /// carries), so it joins the run's trace; only for a run the controller
    /// samples. Set by the process when it exports traces; `None`, the
    /// context is not even parsed.
    pub traces: Option<baton_common::traces::SpanSink>,
}

impl WorkerConfig {
    /// A config with defaults: a fresh UUID as worker id, this machine's
    /// hostname, the `default` queue, one slot per available CPU, 5 s kill
    /// grace, 60 s drain grace, 5 s maximum reconnect backoff and 16 MiB of
    /// unacknowledged log per attempt.
    pub fn new(controller_addr: impl Into<String>, work_dir: impl Into<PathBuf>) -> Self {
        let slots = std::thread::available_parallelism()
            .map(|count| {
                u32::try_from(count.get())
                    .unwrap_or(MAX_SLOTS)
                    .min(MAX_SLOTS)
            })
            .unwrap_or(1);
        Self {
            controller_addr: controller_addr.into(),
            worker_id: generate_worker_id(),
            hostname: local_hostname(),
            queues: vec![default_queue()],
            labels: BTreeMap::new(),
            slots,
            resources: Resources {
                cpu_millis: u64::from(slots) * 1000,
                memory_bytes: total_memory_bytes(),
            },
            work_dir: work_dir.into(),
            kill_grace: Duration::from_secs(5),
            drain_grace: Duration::from_secs(60),
            reconnect_max_backoff: Duration::from_secs(5),
            max_unacked_log_bytes: 16 * 1024 * 1024,
            traces: None,
        }
    }

    /// The addresses of [`Self::controller_addr`], each with a scheme, in
    /// order and without duplicates; empty when it is invalid (which
    /// [`Self::validate`] reports).
    pub fn controller_addrs(&self) -> Vec<String> {
        baton_common::client::parse_addrs(&self.controller_addr).unwrap_or_default()
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), WorkerError> {
        let invalid =
            |field: &'static str, reason: String| WorkerError::InvalidConfig { field, reason };
        if self.controller_addr.trim().is_empty() {
            return Err(invalid("controller_addr", "must not be empty".to_string()));
        }
        if let Err(error) = baton_common::client::parse_addrs(&self.controller_addr) {
            return Err(invalid("controller_addr", error.to_string()));
        }
        if !(1..=MAX_SLOTS).contains(&self.slots) {
            return Err(invalid(
                "slots",
                format!("is {}; it must be between 1 and {MAX_SLOTS}", self.slots),
            ));
        }
        if self.queues.is_empty() {
            return Err(invalid(
                "queues",
                "at least one queue is required".to_string(),
            ));
        }
        for (index, queue) in self.queues.iter().enumerate() {
            if self.queues[..index].contains(queue) {
                return Err(invalid(
                    "queues",
                    format!("queue `{queue}` is listed twice"),
                ));
            }
        }
        for key in self.labels.keys() {
            if key.is_empty() {
                return Err(invalid(
                    "labels",
                    "label names must not be empty".to_string(),
                ));
            }
        }
        if self.work_dir.as_os_str().is_empty() {
            return Err(invalid("work_dir", "must not be empty".to_string()));
        }
        if self.reconnect_max_backoff < Duration::from_millis(100) {
            return Err(invalid(
                "reconnect_max_backoff",
                "must be at least 100ms".to_string(),
            ));
        }
        if self.max_unacked_log_bytes < MIN_UNACKED_LOG_BYTES {
            return Err(invalid(
                "max_unacked_log_bytes",
                format!(
                    "is {}; it must be at least {MIN_UNACKED_LOG_BYTES}",
                    self.max_unacked_log_bytes
                ),
            ));
        }
        Ok(())
    }
}

fn default_queue() -> QueueName {
    match QueueName::new(DEFAULT_QUEUE) {
        Ok(queue) => queue,
        Err(error) => unreachable!("`{DEFAULT_QUEUE}` is a valid queue name: {error}"),
    }
}

/// A random UUID: unique among the workers of a cluster, so two workers on
/// one host never replace each other's stream.
fn generate_worker_id() -> WorkerId {
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    match WorkerId::new(id) {
        Ok(id) => id,
        Err(error) => unreachable!("a hyphenated UUID is a valid worker id: {error}"),
    }
}

/// The kernel's hostname, or `unknown` when it cannot be read.
fn local_hostname() -> String {
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            return name.to_string();
        }
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// `MemTotal` of `/proc/meminfo` in bytes; 0 when it cannot be read (then
/// only tasks that declare no memory fit this worker unless `--memory` is
/// given).
fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = WorkerConfig::new("127.0.0.1:7070", "/tmp/baton-worker");
        config.validate().expect("defaults validate");
        assert!(config.slots >= 1);
        assert_eq!(config.queues, vec![default_queue()]);
        assert!(!config.hostname.is_empty());
        assert_ne!(config.worker_id, WorkerConfig::new("x:1", "/tmp").worker_id);
    }

    #[test]
    fn several_controller_addresses_are_accepted() {
        let config = WorkerConfig::new("127.0.0.1:7070, 127.0.0.1:7071", "/tmp/w");
        config.validate().expect("a list validates");
        assert_eq!(
            config.controller_addrs(),
            ["http://127.0.0.1:7070", "http://127.0.0.1:7071"]
        );
    }

    #[test]
    fn validation_names_the_field() {
        let field_of = |config: WorkerConfig| match config.validate() {
            Err(WorkerError::InvalidConfig { field, .. }) => field,
            other => panic!("expected an invalid config, got {other:?}"),
        };
        let base = WorkerConfig::new("127.0.0.1:7070", "/tmp/w");
        assert_eq!(
            field_of(WorkerConfig {
                slots: 0,
                ..base.clone()
            }),
            "slots"
        );
        assert_eq!(
            field_of(WorkerConfig {
                slots: MAX_SLOTS + 1,
                ..base.clone()
            }),
            "slots"
        );
        assert_eq!(
            field_of(WorkerConfig {
                queues: vec![],
                ..base.clone()
            }),
            "queues"
        );
        let twice = vec![default_queue(), default_queue()];
        assert_eq!(
            field_of(WorkerConfig {
                queues: twice,
                ..base.clone()
            }),
            "queues"
        );
        assert_eq!(
            field_of(WorkerConfig {
                controller_addr: " ".into(),
                ..base.clone()
            }),
            "controller_addr"
        );
        assert_eq!(
            field_of(WorkerConfig {
                work_dir: PathBuf::new(),
                ..base.clone()
            }),
            "work_dir"
        );
        assert_eq!(
            field_of(WorkerConfig {
                max_unacked_log_bytes: 10,
                ..base.clone()
            }),
            "max_unacked_log_bytes"
        );
        for addrs in [
            "127.0.0.1:7070,",
            "127.0.0.1:7070,,127.0.0.1:7071",
            "http://[::1",
        ] {
            assert_eq!(
                field_of(WorkerConfig {
                    controller_addr: addrs.into(),
                    ..base.clone()
                }),
                "controller_addr",
                "{addrs}"
            );
        }
        let error = WorkerConfig { slots: 0, ..base }.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid worker configuration: slots: is 0; it must be between 1 and 10000"
        );
    }
}
