//! The process's log lines and traces: one `tracing` subscriber with a
//! formatter (`--log-format text|json`, levels from `RUST_LOG`) and, for the
//! server commands when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, an OpenTelemetry layer
//! that exports spans over OTLP/gRPC.
//!
//! Without the variable no OpenTelemetry layer, provider or exporter exists,
//! and the controller and worker are told not to derive or carry trace
//! context: traces cost nothing when off.
//!
//! The exporter reads the standard `OTEL_*` variables itself (endpoint,
//! headers, timeout, `OTEL_BSP_*` batching); `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` name the process, `baton-controller`,
//! `baton-worker` or `baton-dev` by default.

use std::time::Duration;

use anyhow::Context as _;
use baton_controller::traces::DerivedIdGenerator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::LogFormat;

/// Longest wait for the last spans to be exported when the process stops
/// (the collector may be gone).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which server a process runs, for its default service name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Controller,
    Worker,
    Dev,
}

impl Role {
    fn service_name(self) -> &'static str {
        match self {
            Role::Controller => "baton-controller",
            Role::Worker => "baton-worker",
            Role::Dev => "baton-dev",
        }
    }
}

/// The installed trace exporter, if any; flushed by [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (so the controller should export run and
    /// attempt spans, and the worker join them).
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered, bounded in time. Call it while the
    /// async runtime still runs: the exporter's connection lives on it.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(%error, "cannot export the last spans");
        }
    }
}

/// Whether the environment asks for an OTLP trace exporter.
fn otlp_endpoint_set() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

/// Installs the process's subscriber. `server` is the role of a server
/// command (client commands log warnings only and never export traces).
/// Must run inside the async runtime's context: the exporter's channel is
/// created on it.
pub fn init(format: LogFormat, server: Option<Role>) -> anyhow::Result<Telemetry> {
    let default_level = if server.is_some() { "info" } else { "warn" };
    let env_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let Some(role) = server.filter(|_| otlp_endpoint_set()) else {
        // Off: the filter is global, so a disabled event or span is not
        // even built.
        tracing_subscriber::registry()
            .with(env_filter)
            .with(log_lines(format))
            .try_init()
            .context("cannot install the log subscriber")?;
        return Ok(Telemetry { provider: None });
    };
    let provider = tracer_provider(role)?;
    // RUST_LOG filters the log lines only. Exported are Baton's own spans
    // and their events, never those of the libraries below (the
    // exporter's own gRPC calls among them). The scheduler's spans are not:
    // it exports the spans of runs and attempts itself, built from their
    // records once stored (`traces`); its tracing spans are for log lines.
    let exported = Targets::new()
        .with_target("baton_controller", LevelFilter::INFO)
        .with_target("baton_controller::scheduler", LevelFilter::OFF)
        .with_target("baton_worker", LevelFilter::INFO);
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("baton"))
        .with_filter(exported);
    tracing_subscriber::registry()
        .with(log_lines(format).with_filter(env_filter))
        .with(otel_layer)
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The formatter of log lines on stderr.
fn log_lines<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer.with_target(false).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
}

fn tracer_provider(role: Role) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("cannot create the OTLP span exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|name| name.is_empty()) {
        resource = resource.with_service_name(role.service_name());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // Run and attempt spans get ids derived from run and attempt ids.
        .with_id_generator(DerivedIdGenerator::default())
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}
