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
//!
//! The spans of runs, attempts and executions are built by the controller
//! and the worker themselves and queued on the [`SpanSink`] this module
//! hands out; it feeds the same batch exporter as the `tracing` layer. Its
//! queue holds 65,536 spans unless `OTEL_BSP_MAX_QUEUE_SIZE` says
//! otherwise; what it cannot hold is dropped, never waited for.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use baton_common::traces::SpanSink;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanProcessor,
};
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

/// Spans the exporter's queue holds unless `OTEL_BSP_MAX_QUEUE_SIZE` says
/// otherwise: a 10,000-task fan-out makes 20,000 in well under a second,
/// more than the SDK's default of 2,048 holds. About 40 MiB when full.
const DEFAULT_QUEUE_SIZE: usize = 65_536;

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
/// both feed one batch exporter.
#[derive(Debug)]
struct TraceExport {
    provider: SdkTracerProvider,
    sink: SpanSink,
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

    /// Exports the spans still buffered, bounded in time. Call it while the
    /// async runtime still runs: the exporter's connection lives on it.
    pub fn shutdown(self) {
        if let Some(export) = self.exporter
            && let Err(error) = export.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
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
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("cannot create the OTLP span exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    // The builder reads the `OTEL_BSP_*` variables.
    let mut batching = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batching = batching.with_max_queue_size(DEFAULT_QUEUE_SIZE);
    }
    let mut processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batching.build())
        .build();
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|name| name.is_empty()) {
        resource = resource.with_service_name(role.service_name());
    }
    let resource = resource.build();
    processor.set_resource(&resource);
    let processor = Arc::new(processor);
    // The sampler `OTEL_TRACES_SAMPLER` names, as the provider reads it.
    let sampler = opentelemetry_sdk::trace::Config::default().sampler;
    let sink = SpanSink::new(
        Arc::clone(&processor) as Arc<dyn SpanProcessor>,
        sampler,
        role.service_name(),
    );
    let provider = SdkTracerProvider::builder()
        .with_span_processor(SharedProcessor(processor))
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(TraceExport { provider, sink })
}

/// The batch processor the provider shares with the [`SpanSink`]: one
/// queue, one exporter, one connection. The provider shuts it down.
#[derive(Debug)]
struct SharedProcessor(Arc<BatchSpanProcessor>);

impl SpanProcessor for SharedProcessor {
    fn on_start(
        &self,
        span: &mut opentelemetry_sdk::trace::Span,
        context: &opentelemetry::Context,
    ) {
        self.0.on_start(span, context);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    // The resource was set before the processor was shared; the provider's
    // is the same.
    fn set_resource(&mut self, _resource: &Resource) {}
}
