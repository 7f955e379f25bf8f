//! Baton's shared layer, used by the controller, the worker and the CLI.
//!
//! # Layout
//! - `pb`: the generated gRPC types and stubs of `proto/` (`baton.v1` for
//!   the API, `baton.store.v1` for store records) and the descriptor set for
//!   reflection.
//! - `ids`: identifier newtypes (`DagId`, `TaskId`, `RunId`, `AttemptId`,
//!   `WorkerId`, `EventName`, `AssetUri`) and the rules a valid identifier
//!   follows.
//! - `spec`: the DAG file model, its parsing from YAML or JSON and its
//!   validation (unknown fields, ids, dependencies, cycles, limits,
//!   schedules, params, sensors, templates).
//! - `timetable`: schedules (`cron` in a time zone, `every`) as fire
//!   instants and data intervals, correct across clock changes; dates and
//!   time zones as DAG files write them.
//! - `template`: rendering of templated task fields (`{{ ds }}`,
//!   `{{ params.x }}`, `{{ tasks.extract.output.rows }}`) with undefined
//!   names refused, and the static check run at registration.
//! - `error`: [`error::ApiError`], the one mapping from domain errors to
//!   `tonic::Status`.
//! - `time`: conversions between `SystemTime`, `Duration` and their protobuf
//!   forms.
//! - `states`: names of run and task states as users type and read them.
//! - `client`: the typed client the CLI, the worker and tests use.
//! - `http`: the outgoing HTTP client (sensors, notifications).
//! - `metrics_http`: the `/metrics` endpoint the controller and the worker
//!   serve to Prometheus.
//! - `traces`: the spans of runs, attempts and executions, built from their
//!   records and queued for the OTLP exporter; the W3C trace context an
//!   `Assign` carries.

pub mod client;
pub mod error;
pub mod http;
pub mod ids;
pub mod metrics_http;
pub mod pb;
pub mod spec;
pub mod states;
pub mod template;
pub mod time;
pub mod timetable;
pub mod traces;
