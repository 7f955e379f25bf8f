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
//! The exporter (`export`) reads the standard `OTEL_*` variables (endpoint,
//! headers, timeout, compression, `OTEL_BSP_*` batching) and refuses a
//! malformed one by name; `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
//! name the process, `baton-controller`, `baton-worker` or `baton-dev` by
//! default.
//!
//! The spans of runs, attempts and executions are built by the controller
//! and the worker themselves and encoded onto the [`SpanSink`] this module
//! hands out; the `tracing` layer's spans are encoded onto the same queue
//! by its span processor. The queue holds 65,536 spans unless
//! `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise; what it cannot hold is
//! dropped, never waited for.

mod export;

use std::time::Duration;

use anyhow::Context as _;
use baton_common::traces::{EncodedResource, SpanQueue, SpanSink};
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
    exporter: Option<TraceExport>,
}

/// A tracer provider and the sink of the spans the process builds itself:
/// both feed one queue, which one exporter drains.
#[derive(Debug)]
struct TraceExport {
    provider: SdkTracerProvider,
    sink: SpanSink,
    exporter: export::Exporter,
}

impl Telemetry {
    /// Where a component (`scope`) exports the spans it builds itself: the
    /// controller its run and attempt spans, the worker its execution
    /// spans. `None` when traces are off.
    pub fn span_sink(&self, scope: &'static str) -> Option<SpanSink> {
        self.exporter
            .as_ref()
            .map(|export| export.sink.with_scope(scope))
    }

    /// Exports the spans still queued, bounded in time (the exporter's
    /// thread sends them; this waits for it).
    pub async fn shutdown(self) {
        if let Some(export) = self.exporter {
            // Ends the tracer; its spans are already queued.
            if let Err(error) = export.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(%error, "cannot shut the tracer provider down");
            }
            export.exporter.shutdown(SHUTDOWN_TIMEOUT).await;
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
    .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()))
}

/// Installs the process's subscriber. `server` is the role of a server
/// command (client commands log warnings only and never export traces).
/// The exporter, when traces are exported, starts a thread of its own.
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
        return Ok(Telemetry { exporter: None });
    };
    let export = trace_export(role)?;
    let provider = &export.provider;
    // RUST_LOG filters the log lines only. Exported through this layer are
    // the controller's API calls and their events, never the spans of the
    // libraries below (the exporter's own gRPC calls among them). Runs,
    // attempts and executions are not: the scheduler and the worker build
    // those spans from their records (`baton_common::traces`); their
    // `tracing` spans are for log lines.
    let exported = Targets::new()
        .with_target("baton_controller", LevelFilter::INFO)
        .with_target("baton_controller::scheduler", LevelFilter::OFF);
    // A span carries its own fields only: not the source location, thread,
    // target or busy and idle times the layer adds by default (eight more
    // attributes on every span, each converted and encoded). Nothing reads
    // the current OpenTelemetry context (spans nest through `tracing`), so
    // entering a span does not activate it.
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("baton"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(exported);
    tracing_subscriber::registry()
        .with(log_lines(format).with_filter(env_filter))
        .with(otel_layer)
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok(Telemetry {
        exporter: Some(export),
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

fn trace_export(role: Role) -> anyhow::Result<TraceExport> {
    let config = export::ExportConfig::from_vars(|name| std::env::var(name).ok())
        .context("cannot export traces")?;
    // `OTEL_SERVICE_NAME` or a `service.name` in `OTEL_RESOURCE_ATTRIBUTES`
    // names the process; without either the SDK says `unknown_service`,
    // and the role's name is used instead.
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let resource = if named {
        detected
    } else {
        Resource::builder()
            .with_service_name(role.service_name())
            .build()
    };
    let queue = SpanQueue::new(config.limits);
    // The sampler `OTEL_TRACES_SAMPLER` names, as the provider reads it.
    let sampler = opentelemetry_sdk::trace::Config::default().sampler;
    let sink = SpanSink::new(queue.clone(), sampler, role.service_name());
    let exporter = export::Exporter::spawn(queue.clone(), EncodedResource::new(&resource), config)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(queue.processor())
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(TraceExport {
        provider,
        sink,
        exporter,
    })
}
