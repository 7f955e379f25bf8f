//! Baton's controller: keeps DAG and run state in a store, schedules ready
//! tasks onto connected workers, and serves the gRPC API.
//!
//! # Layout
//! - `config`: the controller's settings and config file.
//! - `clock`: the wall clock schedules follow, and a manual one for tests.
//! - `store`: the `Store` trait, the key layout, the embedded (redb) and
//!   etcd implementations and the conformance suite.
//! - `plan`: DAG versions compiled for scheduling, and their cache.
//! - `scheduler`: the actor that owns active runs and workers and is the
//!   store's only writer (group commit, durable before visible).
//! - `logs`: the task log store over `object_store` (segments, compaction,
//!   retention), its writer and its readers.
//! - `api`: the gRPC services, thin adapters over the scheduler and store.
//! - `election`: leader election on etcd, the lease clock and leader
//!   tracking.
//! - `cluster`: cluster mode: membership, campaigning, leading with a
//!   fenced store, stepping down.
//! - `notify`: notifications: the bounded queue from the scheduler, webhook
//!   delivery with retries, the bodies, the delivery counters.
//! - `role`: leader or follower, as the API sees it.
//! - `server`: assembling it all and serving on one port.
//! - `metrics`: Prometheus metrics and their `/metrics` endpoint.
//! - `traces`: OpenTelemetry spans of runs and attempts, with ids derived
//!   from run and attempt ids.

pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod election;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod role;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod traces;

pub use config::ControllerConfig;
pub use server::{ControllerError, serve};
