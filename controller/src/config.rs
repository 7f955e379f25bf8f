//! The controller's configuration: the versioned TOML file, its validation,
//! and the typed [`ControllerConfig`] the rest of the crate reads.
//!
//! Sources in order of precedence: command-line flags (and their `BATON_*`
//! environment variables, handled by the CLI), the file given with
//! `--config`, then the defaults below. `deploy/controller.example.toml`
//! documents every key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_common::error::FieldViolation;
use baton_common::spec::{Notifier, NotifierSource, NotifierSpec, SpecLimits, resolve_notifiers};
use serde::Deserialize;

use crate::clock::{ClockRef, SystemClock};
use crate::notify::DeliverySettings;

/// Settings of one controller process.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Where the embedded store file and the task logs live.
    pub data_dir: PathBuf,
    /// Identity reported to workers and in logs.
    pub controller_id: String,
    /// How often workers send heartbeats.
    pub heartbeat_interval: Duration,
    /// A worker silent this long is declared lost and its attempts fail as
    /// `worker_lost`.
    pub worker_lost_timeout: Duration,
    /// After a restart, how long workers have to re-announce the attempts the
    /// store says they hold before those attempts fail as `worker_lost`.
    pub recovery_grace: Duration,
    /// Memory the embedded store may use to cache pages of its file.
    pub store_cache_bytes: usize,
    /// Where task logs are written (`<data_dir>/logs` by default) when no
    /// [`Self::log_url`] is set.
    pub log_dir: Option<PathBuf>,
    /// The log store as a URL (`file:///path`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`); wins over
    /// `log_dir`. In a cluster every controller must use the same store, so
    /// any new leader has the logs of earlier attempts.
    pub log_url: Option<String>,
    /// Logs of runs that ended longer ago than this are deleted by the
    /// leader; `None` keeps them until their DAG is deleted.
    pub log_retention: Option<Duration>,
    /// Cluster mode: state in etcd, one leader among the controllers. `None`
    /// runs a single controller on the embedded store.
    pub cluster: Option<ClusterConfig>,
    pub limits: Limits,
    /// How notifications are delivered, and the notifiers of DAGs that
    /// declare none.
    pub notify: NotifyConfig,
    /// The wall clock schedules, SLAs and time sensors follow: the
    /// machine's, except in tests that drive time by hand.
    pub clock: ClockRef,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when `None`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// More metrics served on that endpoint after the controller's own
    /// (those of `baton dev`'s in-process worker).
    pub extra_metrics: Option<baton_common::metrics_http::MetricsSection>,
    /// Where to export the spans of runs and attempts (`traces`); with it,
    /// each attempt's trace context is sent to its worker. `None` unless
    /// the process installed an exporter: nothing is derived or sent then.
    pub traces: Option<baton_common::traces::SpanSink>,
}

/// Settings of cluster mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://host:2379`), any member.
    pub etcd_endpoints: Vec<String>,
    /// Every key lives under this prefix, so clusters can share an etcd.
    pub etcd_prefix: String,
    /// TTL of the leader's lease: a leader that cannot renew it within this
    /// long steps down, and a follower takes over when it expires.
    pub lease_ttl: Duration,
    /// The address clients and workers reach this controller at; followers
    /// send callers here when this controller leads.
    pub advertise_address: String,
}

impl ClusterConfig {
    pub fn new(etcd_endpoints: Vec<String>, advertise_address: String) -> Self {
        Self {
            etcd_endpoints,
            etcd_prefix: "/baton".into(),
            lease_ttl: Duration::from_secs(5),
            advertise_address,
        }
    }
}

/// The `[notify]` section: delivery settings and default notifiers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NotifyConfig {
    pub delivery: DeliverySettings,
    /// As written; [`NotifyConfig::default_notifiers`] checks and resolves
    /// them.
    pub defaults: Vec<NotifierSpec>,
}

impl NotifyConfig {
    /// The default notifiers, checked; the error names the first bad field
    /// (`notify.default[0].url`).
    pub fn default_notifiers(&self) -> Result<Vec<Notifier>, ConfigError> {
        let notifiers =
            resolve_notifiers(&self.defaults, "notify.default", NotifierSource::ConfigFile)
                .map_err(|violations| {
                    let first = violations.into_iter().next().unwrap_or_else(|| {
                        FieldViolation::new("notify.default", "invalid notifiers")
                    });
                    ConfigError::Invalid {
                        field: first.field,
                        reason: first.reason,
                    }
                })?;
        if let Some(missing) = crate::notify::missing_secrets(&notifiers, "notify.default")
            .into_iter()
            .next()
        {
            return Err(ConfigError::Invalid {
                field: missing.field,
                reason: missing.reason,
            });
        }
        Ok(notifiers)
    }
}

/// Bounds on what users and workers may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub spec: SpecLimits,
    /// Size of a run's parameters (JSON text).
    pub max_params_bytes: usize,
    /// Size of a task's output (JSON written to `$BATON_OUTPUT`).
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            spec: SpecLimits::default(),
            max_params_bytes: 1024 * 1024,
            max_output_bytes: 64 * 1024,
        }
    }
}

impl ControllerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            controller_id: default_controller_id(),
            heartbeat_interval: Duration::from_secs(2),
            worker_lost_timeout: Duration::from_secs(10),
            recovery_grace: Duration::from_secs(10),
            store_cache_bytes: 64 * 1024 * 1024,
            log_dir: None,
            log_url: None,
            log_retention: None,
            cluster: None,
            limits: Limits::default(),
            notify: NotifyConfig::default(),
            clock: Arc::new(SystemClock),
            metrics_listen: None,
            extra_metrics: None,
            traces: None,
        }
    }

    /// Applies the settings a config file sets.
    pub fn apply_file(&mut self, file: ConfigFile) {
        if let Some(data_dir) = file.controller.data_dir {
            self.data_dir = data_dir;
        }
        if let Some(id) = file.controller.id {
            self.controller_id = id;
        }
        if let Some(log_dir) = file.controller.log_dir {
            self.log_dir = Some(log_dir);
        }
        if let Some(url) = file.logs.url {
            self.log_url = Some(url);
        }
        if let Some(retention) = file.logs.retention {
            self.log_retention = Some(retention.into());
        }
        let cluster = file.cluster;
        if let Some(endpoints) = cluster.etcd_endpoints {
            let advertise = cluster.advertise_address.clone().unwrap_or_default();
            let mut settings = self
                .cluster
                .take()
                .unwrap_or_else(|| ClusterConfig::new(Vec::new(), advertise));
            settings.etcd_endpoints = endpoints;
            self.cluster = Some(settings);
        }
        if let Some(settings) = &mut self.cluster {
            if let Some(prefix) = cluster.etcd_prefix {
                settings.etcd_prefix = prefix;
            }
            if let Some(ttl) = cluster.lease_ttl {
                settings.lease_ttl = ttl.into();
            }
            if let Some(address) = cluster.advertise_address {
                settings.advertise_address = address;
            }
        }
        let scheduler = file.scheduler;
        if let Some(value) = scheduler.heartbeat_interval {
            self.heartbeat_interval = value.into();
        }
        if let Some(value) = scheduler.worker_lost_timeout {
            self.worker_lost_timeout = value.into();
        }
        if let Some(value) = scheduler.recovery_grace {
            self.recovery_grace = value.into();
        }
        if let Some(value) = file.store.cache_bytes {
            self.store_cache_bytes = value;
        }
        let limits = file.limits;
        if let Some(value) = limits.max_tasks_per_dag {
            self.limits.spec.max_tasks = value;
        }
        if let Some(value) = limits.max_spec_bytes {
            self.limits.spec.max_spec_bytes = value;
        }
        if let Some(value) = limits.max_dependencies {
            self.limits.spec.max_dependencies = value;
        }
        if let Some(value) = limits.max_params_bytes {
            self.limits.max_params_bytes = value;
        }
        if let Some(value) = limits.max_output_bytes {
            self.limits.max_output_bytes = value;
        }
        let notify = file.notify;
        let delivery = &mut self.notify.delivery;
        if let Some(value) = notify.queue_capacity {
            delivery.queue_capacity = value;
        }
        if let Some(value) = notify.max_concurrent {
            delivery.max_concurrent = value;
        }
        if let Some(value) = notify.attempt_timeout {
            delivery.attempt_timeout = value.into();
        }
        if let Some(value) = notify.max_attempts {
            delivery.max_attempts = value;
        }
        if let Some(value) = notify.retry_delay {
            delivery.retry_delay = value.into();
        }
        if let Some(value) = notify.max_retry_delay {
            delivery.max_retry_delay = value.into();
        }
        if !notify.default.is_empty() {
            self.notify.defaults = notify.default;
        }
    }

    /// Checks the settings against each other; the error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| {
            Err(ConfigError::Invalid {
                field: field.to_string(),
                reason,
            })
        };
        if self.heartbeat_interval < Duration::from_millis(50) {
            return invalid(
                "scheduler.heartbeat_interval",
                "must be at least 50ms".into(),
            );
        }
        if self.worker_lost_timeout < self.heartbeat_interval * 2 {
            return invalid(
                "scheduler.worker_lost_timeout",
                format!(
                    "must be at least twice heartbeat_interval ({}), or every worker would be declared lost",
                    humantime::format_duration(self.heartbeat_interval)
                ),
            );
        }
        if self.limits.spec.max_tasks == 0 {
            return invalid("limits.max_tasks_per_dag", "must be at least 1".into());
        }
        if self.limits.spec.max_spec_bytes < 1024 {
            return invalid("limits.max_spec_bytes", "must be at least 1024".into());
        }
        if self.limits.max_output_bytes > 16 * 1024 * 1024 {
            return invalid(
                "limits.max_output_bytes",
                "must be at most 16 MiB; outputs are meant to be small".into(),
            );
        }
        if let Some(cluster) = &self.cluster {
            if cluster.etcd_endpoints.is_empty() {
                return invalid(
                    "cluster.etcd_endpoints",
                    "at least one etcd endpoint is needed".into(),
                );
            }
            if cluster
                .etcd_endpoints
                .iter()
                .any(|endpoint| endpoint.trim().is_empty())
            {
                return invalid("cluster.etcd_endpoints", "an endpoint is empty".into());
            }
            let prefix = cluster.etcd_prefix.trim_end_matches('/');
            if !prefix.starts_with('/') || prefix.len() < 2 || prefix.contains("//") {
                return invalid(
                    "cluster.etcd_prefix",
                    format!(
                        "`{}` must be an absolute path like /baton",
                        cluster.etcd_prefix
                    ),
                );
            }
            if cluster.lease_ttl < Duration::from_secs(2)
                || cluster.lease_ttl > Duration::from_secs(600)
            {
                return invalid(
                    "cluster.lease_ttl",
                    "must be between 2s and 10m (etcd grants leases in whole seconds)".into(),
                );
            }
            if cluster.lease_ttl.subsec_nanos() != 0 {
                return invalid("cluster.lease_ttl", "must be whole seconds".into());
            }
            if cluster.advertise_address.is_empty() {
                return invalid(
                    "cluster.advertise_address",
                    "is required in cluster mode: the address clients and workers reach this controller at".into(),
                );
            }
        }
        if self.store_cache_bytes < 1024 * 1024 {
            return invalid("store.cache_bytes", "must be at least 1 MiB".into());
        }
        if self.controller_id.is_empty() {
            return invalid("controller.id", "must not be empty".into());
        }
        if let Some(url) = &self.log_url
            && let Err(error) = crate::logs::check_url(url)
        {
            return invalid("logs.url", error.to_string());
        }
        let delivery = &self.notify.delivery;
        if !(1..=1_000_000).contains(&delivery.queue_capacity) {
            return invalid(
                "notify.queue_capacity",
                "must be between 1 and 1000000".into(),
            );
        }
        if !(1..=1_000).contains(&delivery.max_concurrent) {
            return invalid("notify.max_concurrent", "must be between 1 and 1000".into());
        }
        if delivery.attempt_timeout < Duration::from_millis(100)
            || delivery.attempt_timeout > Duration::from_secs(300)
        {
            return invalid(
                "notify.attempt_timeout",
                "must be between 100ms and 5m".into(),
            );
        }
        if !(1..=100).contains(&delivery.max_attempts) {
            return invalid("notify.max_attempts", "must be between 1 and 100".into());
        }
        if delivery.retry_delay < Duration::from_millis(10) {
            return invalid("notify.retry_delay", "must be at least 10ms".into());
        }
        if delivery.max_retry_delay < delivery.retry_delay {
            return invalid(
                "notify.max_retry_delay",
                format!(
                    "must be at least retry_delay ({})",
                    humantime::format_duration(delivery.retry_delay)
                ),
            );
        }
        self.notify.default_notifiers()?;
        if let Some(retention) = self.log_retention
            && retention < Duration::from_secs(60)
        {
            return invalid(
                "logs.retention",
                format!(
                    "is {}; it must be at least 1m (logs of runs that ended longer ago are deleted)",
                    humantime::format_duration(retention)
                ),
            );
        }
        Ok(())
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("baton.redb")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.log_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("logs"))
    }
}

fn default_controller_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "controller".to_string());
    format!("{host}-{}", std::process::id())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// The config file as written. Every key is optional; unknown keys are
/// errors so that a typo is never silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Format version of the file; only `1` exists.
    pub version: u32,
    #[serde(default)]
    pub controller: ControllerSection,
    #[serde(default)]
    pub scheduler: SchedulerSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub logs: LogsSection,
    #[serde(default)]
    pub notify: NotifySection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    pub queue_capacity: Option<usize>,
    pub max_concurrent: Option<usize>,
    pub attempt_timeout: Option<humantime_serde_compat::Duration>,
    pub max_attempts: Option<u32>,
    pub retry_delay: Option<humantime_serde_compat::Duration>,
    pub max_retry_delay: Option<humantime_serde_compat::Duration>,
    /// Notifiers of DAGs that declare none (`[[notify.default]]`).
    #[serde(default)]
    pub default: Vec<NotifierSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsSection {
    pub url: Option<String>,
    pub retention: Option<humantime_serde_compat::Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub cache_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    pub id: Option<String>,
    pub listen: Option<String>,
    /// `host:port` to serve Prometheus metrics on.
    pub metrics_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub etcd_endpoints: Option<Vec<String>>,
    pub etcd_prefix: Option<String>,
    pub lease_ttl: Option<humantime_serde_compat::Duration>,
    pub advertise_address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    pub heartbeat_interval: Option<humantime_serde_compat::Duration>,
    pub worker_lost_timeout: Option<humantime_serde_compat::Duration>,
    pub recovery_grace: Option<humantime_serde_compat::Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_tasks_per_dag: Option<usize>,
    pub max_spec_bytes: Option<usize>,
    pub max_dependencies: Option<usize>,
    pub max_params_bytes: Option<usize>,
    pub max_output_bytes: Option<usize>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        if file.version != 1 {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "version = {} is not supported; this controller reads version = 1",
                    file.version
                ),
            });
        }
        Ok(file)
    }
}

/// Durations in the config file are humantime strings (`"2s"`, `"1m 30s"`).
pub mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};

    #[derive(Debug, Clone, Copy)]
    pub struct Duration(pub std::time::Duration);

    impl From<Duration> for std::time::Duration {
        fn from(value: Duration) -> Self {
            value.0
        }
    }

    impl<'de> Deserialize<'de> for Duration {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = String::deserialize(deserializer)?;
            humantime::parse_duration(&text)
                .map(Duration)
                .map_err(|error| {
                    serde::de::Error::custom(format!("invalid duration `{text}`: {error}"))
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_settings_apply_and_validate() {
        let file = ConfigFile::parse(
            Path::new("c.toml"),
            "version = 1\n[scheduler]\nheartbeat_interval = \"500ms\"\nworker_lost_timeout = \"3s\"\n[limits]\nmax_tasks_per_dag = 10\n",
        )
        .unwrap();
        let mut config = ControllerConfig::new("/tmp/x");
        config.apply_file(file);
        assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(config.limits.spec.max_tasks, 10);
        config.validate().unwrap();
    }

    #[test]
    fn the_shipped_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/controller.example.toml");
        let file = ConfigFile::load(&path).unwrap();
        assert_eq!(file.controller.listen.as_deref(), Some("127.0.0.1:7070"));
        let mut config = ControllerConfig::new("/tmp/x");
        config.apply_file(file);
        config.validate().unwrap();
        assert_eq!(
            config.limits,
            Limits::default(),
            "the example documents the defaults"
        );
        assert_eq!(config.worker_lost_timeout, Duration::from_secs(10));
        assert_eq!(
            config.notify,
            NotifyConfig::default(),
            "the example documents the notify defaults"
        );
        assert_eq!(
            config.store_cache_bytes,
            ControllerConfig::new("/tmp/x").store_cache_bytes
        );
    }

    #[test]
    fn cluster_settings_apply_and_are_checked() {
        let file = ConfigFile::parse(
            Path::new("c.toml"),
            "version = 1\n[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl = \"3s\"\nadvertise_address = \"http://10.0.0.1:7070\"\n",
        )
        .unwrap();
        let mut config = ControllerConfig::new("/tmp/x");
        config.apply_file(file);
        let cluster = config.cluster.clone().unwrap();
        assert_eq!(cluster.lease_ttl, Duration::from_secs(3));
        assert_eq!(cluster.etcd_prefix, "/baton");
        config.validate().unwrap();
        config.cluster.as_mut().unwrap().lease_ttl = Duration::from_millis(2500);
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("whole seconds")
        );
        config.cluster.as_mut().unwrap().lease_ttl = Duration::from_secs(5);
        config.cluster.as_mut().unwrap().etcd_prefix = "baton".into();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("config cluster.etcd_prefix")
        );
    }

    #[test]
    fn unknown_keys_and_versions_are_refused() {
        let error = ConfigFile::parse(
            Path::new("c.toml"),
            "version = 1\n[scheduler]\nheartbeat = \"1s\"\n",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `heartbeat`"),
            "{error}"
        );
        let error = ConfigFile::parse(Path::new("c.toml"), "version = 2\n").unwrap_err();
        assert!(
            error.to_string().contains("version = 2 is not supported"),
            "{error}"
        );
    }

    #[test]
    fn log_settings_apply_and_are_checked() {
        let file = ConfigFile::parse(
            Path::new("c.toml"),
            "version = 1\n[logs]\nurl = \"file:///var/lib/baton/logs\"\nretention = \"30d\"\n",
        )
        .unwrap();
        let mut config = ControllerConfig::new("/tmp/x");
        config.apply_file(file);
        assert_eq!(
            config.log_url.as_deref(),
            Some("file:///var/lib/baton/logs")
        );
        assert_eq!(config.log_retention, Some(Duration::from_secs(30 * 86_400)));
        config.validate().unwrap();

        config.log_url = Some("bucket/logs".into());
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("config logs.url: "), "{error}");
        config.log_url = None;
        config.log_retention = Some(Duration::from_secs(1));
        let error = config.validate().unwrap_err().to_string();
        assert!(error.starts_with("config logs.retention: "), "{error}");

        let error = ConfigFile::parse(
            Path::new("c.toml"),
            "version = 1\n[logs]\nretention = \"thirty days\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("invalid duration `thirty days`"), "{error}");
        assert!(error.contains("retention"), "{error}");
    }

    #[test]
    fn a_lost_timeout_shorter_than_two_heartbeats_is_refused() {
        let mut config = ControllerConfig::new("/tmp/x");
        config.worker_lost_timeout = Duration::from_secs(3);
        let error = config.validate().unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("config scheduler.worker_lost_timeout"),
            "{error}"
        );
    }

    #[test]
    fn notify_settings_apply_and_default_notifiers_are_checked() {
        let file = ConfigFile::parse(
            Path::new("c.toml"),
            "version = 1\n[notify]\nmax_attempts = 3\nretry_delay = \"200ms\"\n[[notify.default]]\nurl = \"https://hooks.example.com/x\"\non = [\"run_failed\"]\nformat = \"slack\"\nsecret_header = { name = \"X-Secret\", value = \"abc\" }\n",
        )
        .unwrap();
        let mut config = ControllerConfig::new("/tmp/x");
        config.apply_file(file);
        config.validate().unwrap();
        assert_eq!(config.notify.delivery.max_attempts, 3);
        assert_eq!(
            config.notify.delivery.retry_delay,
            Duration::from_millis(200)
        );
        let notifiers = config.notify.default_notifiers().unwrap();
        assert_eq!(notifiers[0].format, baton_common::spec::NotifyFormat::Slack);

        config.notify.defaults[0].url = "not a url".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("config notify.default[0].url: "),
            "{error}"
        );
        config.notify.defaults.clear();
        config.notify.delivery.max_retry_delay = Duration::from_millis(100);
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("config notify.max_retry_delay: "),
            "{error}"
        );

        let error = ConfigFile::parse(
            Path::new("c.toml"),
            "version = 1\n[[notify.default]]\nurll = \"https://x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("unknown field `urll`"), "{error}");
    }
}
