//! Harness for Baton's integration tests: real `baton` processes (`dev`,
//! `controller`, `worker`) on free loopback ports with temporary data
//! directories, driven over real gRPC and through the real CLI. The tests
//! themselves live in `tests/tests/`, one file per area; run them with
//! `cargo nextest run -p baton-tests` or `cargo test -p baton-tests`.
//!
//! Every wait in the harness is bounded in time and in rounds and polls
//! observable state (a health check, a log line, a run's state); none sleeps
//! a fixed time hoping that something happened meanwhile. A wait that runs out
//! panics with what it waited for and the tail of every process log.
//!
//! Environment:
//! - `BATON_BIN`: the `baton` binary to test, used as is. By default the one
//!   next to the test executable (`target/<profile>/baton`), built with
//!   `cargo build -p baton-cli --bin baton` (same profile) when it does not
//!   exist or is older than a source file of the product.
//! - `BATON_KEEP_TEST_DIR=1`: keep each test's temporary directory (data dirs
//!   and process logs) and print its path. A failing test keeps its
//!   directory anyway.
//! - `BATON_ETCD_BIN`: the etcd binary of cluster tests (default: `etcd` on
//!   `PATH`, else `/usr/bin/etcd`). Without one they are skipped, or fail
//!   under `CI=true`.
//!
//! # Layout
//! - [`binary`]: finding (or building) the `baton` binary.
//! - [`dirs`]: temporary test directories and free ports.
//! - [`process`]: [`BatonProcess`], one spawned `baton` process with its log
//!   file, signals by PID and bounded waits; helpers for the task processes
//!   tests record by PID.
//! - [`sandbox`]: [`Sandbox`], one test's directory and port, which starts
//!   `baton dev`, `baton controller` and `baton worker` and runs CLI commands.
//! - [`proxy`]: [`TcpProxy`], a TCP proxy tests run themselves to partition
//!   a process from the controller and heal the partition.
//! - [`api`]: [`Api`], the typed client with the helpers tests share
//!   (register, trigger, wait for a run, list attempts, check that each
//!   task succeeded once); every call has a deadline.
//! - [`etcd`]: [`EtcdCluster`], a real etcd of one or three members, each
//!   stopped, killed and restarted by PID; [`etcd::etcd_binary`] alone
//!   decides whether a missing etcd fails (`CI=true`) or skips a test.
//! - [`cluster`]: [`ClusterSandbox`] (built by [`ClusterBuilder`]): etcd,
//!   `baton controller` replicas in cluster mode and `baton worker`s, with
//!   direct per-controller `GetClusterStatus` to see who leads.
//! - [`python`]: [`PythonSdk`], the Python SDK in a cached virtualenv with
//!   stubs generated from `proto/`, running its scripts by PID;
//!   [`PythonSdk::setup`] alone decides whether a missing Python fails
//!   (`CI=true`) or skips a test.
//! - [`history`]: [`StoreHistory`], the store's history read back from
//!   etcd: every record put with its leader term, every election key.
//! - [`otlp`]: [`OtlpCollector`], an OTLP/gRPC trace receiver (from the
//!   opentelemetry-proto definitions) that keeps the spans processes export.
//! - [`poll`]: the one bounded polling loop every wait goes through.
//! - [`webhook`]: [`WebhookReceiver`], an HTTP server on loopback that
//!   records the notifications it gets and answers from a script (or never).
//! - [`reference_model`]: how trigger rules, branches and the run's outcome
//!   decide every task's final state, written independently of the
//!   controller so that tests can compare the real scheduler against it.

pub mod api;
pub mod binary;
pub mod cluster;
pub mod dirs;
pub mod etcd;
pub mod history;
pub mod otlp;
pub mod poll;
pub mod process;
pub mod proxy;
pub mod python;
pub mod reference_model;
pub mod sandbox;
pub mod webhook;

pub use api::{
    Api, RunView, SuccessCheck, micros, run_is_final, run_state, task_count, task_state,
};
pub use cluster::{ClusterBuilder, ClusterSandbox};
pub use etcd::EtcdCluster;
pub use history::StoreHistory;
pub use otlp::{CollectedSpan, OtlpCollector};
pub use process::{BatonProcess, LogPattern, PidFiles};
pub use proxy::TcpProxy;
pub use python::PythonSdk;
pub use sandbox::{CliOutput, Sandbox};
pub use webhook::{ReceivedRequest, WebhookReceiver};

/// Generated API types, re-exported so tests need one import path.
pub use baton_common::pb::api as pb;
