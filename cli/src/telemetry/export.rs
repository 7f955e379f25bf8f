//! The OTLP/gRPC exporter: drains the process's [`SpanQueue`] and sends
//! each chunk as one `TraceService/Export` request, on a thread of its own
//! at a lower priority than the process's other threads, configured by the
//! standard `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*` variables.
//!
//! The spans are already in the wire format, so a request is the resource
//! and scope headers around bytes copied from the queue; nothing is decoded
//! or converted. Every schedule delay (`OTEL_BSP_SCHEDULE_DELAY`) the
//! exporter sends the spans queued at that moment, one request per chunk
//! (at most `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans, of one scope), one
//! request in flight at a time, the scopes in turn; spans that arrive
//! meanwhile wait for the next round. It does not wait for the delay once
//! half the queue is used, so that a burst is sent before the queue can
//! overflow. Unlike the SDK's batch processor it does not send each batch
//! as soon as it is whole, and when the delay ends in the middle of a burst
//! (a request's worth of spans queued in 50 ms) it waits for the burst to
//! end, at most one more delay: a burst of work (a 10,000-task fan-out ends
//! 20,000 spans in under a second) is not slowed by exporting its own spans
//! on the same cores. A request that fails is logged and its spans
//! dropped, as the SDK's batch processor does: the collector's outage must
//! not grow the process's memory.
//!
//! A malformed variable stops the process at start with its name, where
//! the OpenTelemetry configuration says to log it and use the default: a
//! server that exports nothing, or somewhere else, because of a typo is
//! worse than one that does not start. `OTEL_EXPORTER_OTLP_PROTOCOL` other
//! than `grpc` is refused the same way (an `http/protobuf` collector does
//! not answer gRPC).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_common::traces::{Chunk, EncodedResource, QueueLimits, SpanQueue};
use bytes::{Buf, BufMut};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};

/// The gRPC method that receives spans.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The collector's address when no variable names one (the OTLP default).
const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

/// What the exporter reads from the environment, validated.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub endpoint: String,
    pub headers: MetadataMap,
    /// The longest a request may take (`OTEL_EXPORTER_OTLP_TIMEOUT`,
    /// bounded by `OTEL_BSP_EXPORT_TIMEOUT`); `None` when both are 0 (no
    /// limit, as the OpenTelemetry configuration says of 0).
    pub timeout: Option<Duration>,
    pub compression: Option<CompressionEncoding>,
    pub schedule_delay: Duration,
    pub limits: QueueLimits,
}

impl ExportConfig {
    /// Reads the variables through `var` (the process environment in
    /// production). An empty variable counts as unset; a malformed one is
    /// an error naming it.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        // The traces-specific variable wins over the generic one.
        let pick = |traces: &'static str, generic: &'static str| {
            var(traces)
                .map(|value| (traces, value))
                .or_else(|| var(generic).map(|value| (generic, value)))
        };
        if let Some((name, protocol)) = pick(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) && protocol.trim() != "grpc"
        {
            bail!("{name}: `{protocol}` is not supported; Baton exports over OTLP/gRPC (`grpc`)");
        }
        let endpoint = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ) {
            Some((name, endpoint)) => parse_endpoint(name, endpoint.trim())?,
            None => DEFAULT_ENDPOINT.to_string(),
        };
        let mut headers = MetadataMap::new();
        // Generic headers first, so the traces-specific ones replace them.
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(list) = var(name) {
                parse_headers(name, &list, &mut headers)?;
            }
        }
        let millis = |name: &'static str, value: Option<String>, default: u64| match value {
            Some(value) => value
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .with_context(|| {
                    format!("{name}: `{value}` is not a whole number of milliseconds")
                }),
            None => Ok(Duration::from_millis(default)),
        };
        // 0 is no limit.
        let limit = |duration: Duration| (!duration.is_zero()).then_some(duration);
        let (timeout_name, timeout) = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            Some((name, value)) => (name, Some(value)),
            None => ("OTEL_EXPORTER_OTLP_TIMEOUT", None),
        };
        let request_timeout = millis(timeout_name, timeout, 10_000)?;
        let export_timeout = millis(
            "OTEL_BSP_EXPORT_TIMEOUT",
            var("OTEL_BSP_EXPORT_TIMEOUT"),
            30_000,
        )?;
        let compression = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ) {
            None => None,
            Some((name, value)) => match value.trim() {
                "gzip" => Some(CompressionEncoding::Gzip),
                "none" => None,
                other => bail!("{name}: `{other}` is not a supported compression (gzip or none)"),
            },
        };
        let count = |name: &'static str, default: usize| match var(name) {
            Some(value) => value
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|count| *count > 0)
                .with_context(|| format!("{name}: `{value}` is not a positive whole number")),
            None => Ok(default),
        };
        let max_queued = count("OTEL_BSP_MAX_QUEUE_SIZE", QueueLimits::DEFAULT.max_queued)?;
        // A batch larger than the queue is the queue (as the SDK does).
        let max_batch = count(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            QueueLimits::DEFAULT.max_batch,
        )?
        .min(max_queued);
        Ok(Self {
            endpoint,
            headers,
            timeout: match (limit(request_timeout), limit(export_timeout)) {
                (Some(request), Some(export)) => Some(request.min(export)),
                (request, export) => request.or(export),
            },
            compression,
            // 0 is as soon as possible: every millisecond.
            schedule_delay: millis(
                "OTEL_BSP_SCHEDULE_DELAY",
                var("OTEL_BSP_SCHEDULE_DELAY"),
                5_000,
            )?
            .max(Duration::from_millis(1)),
            limits: QueueLimits {
                max_queued,
                max_batch,
            },
        })
    }
}

fn parse_endpoint(name: &str, endpoint: &str) -> anyhow::Result<String> {
    let uri: tonic::codegen::http::Uri = endpoint
        .parse()
        .with_context(|| format!("{name}: `{endpoint}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => bail!(
            "{name}: `{endpoint}`: TLS is not built into Baton's exporter; use http:// (a collector on the host or a sidecar)"
        ),
        _ => bail!("{name}: `{endpoint}` must start with http://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("{name}: `{endpoint}` names no host");
    }
    Ok(endpoint.to_string())
}

/// `key=value` pairs separated by commas, values percent-encoded (the W3C
/// baggage format the OTLP variables use).
fn parse_headers(name: &str, list: &str, headers: &mut MetadataMap) -> anyhow::Result<()> {
    for pair in list.split(',').filter(|pair| !pair.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("{name}: `{}` is not key=value", pair.trim());
        };
        let key = key.trim().to_ascii_lowercase();
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .with_context(|| format!("{name}: the value of `{key}` is not UTF-8"))?;
        let key = AsciiMetadataKey::from_bytes(key.as_bytes())
            .with_context(|| format!("{name}: `{key}` is not a valid header name"))?;
        let value = AsciiMetadataValue::try_from(value.as_ref())
            .with_context(|| format!("{name}: the value of `{key}` is not a valid header value"))?;
        headers.insert(key, value);
    }
    Ok(())
}

/// The running exporter: stopped by [`Exporter::shutdown`].
#[derive(Debug)]
pub struct Exporter {
    stop: CancellationToken,
    /// Sent once the thread has sent what it could and stopped.
    finished: oneshot::Receiver<()>,
}

impl Exporter {
    /// Starts the exporter on a thread of its own, with its own runtime, at
    /// a lower priority ([`EXPORT_NICE`]). The connection is made when the
    /// first request goes.
    pub fn spawn(
        queue: Arc<SpanQueue>,
        resource: EncodedResource,
        config: ExportConfig,
    ) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .with_context(|| format!("cannot use the OTLP endpoint `{}`", config.endpoint))?;
        if let Some(timeout) = config.timeout {
            endpoint = endpoint.connect_timeout(timeout).timeout(timeout);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the trace exporter's runtime")?;
        let stop = CancellationToken::new();
        let (done, finished) = oneshot::channel();
        let export_stop = stop.clone();
        std::thread::Builder::new()
            .name(EXPORT_THREAD.to_string())
            .spawn(move || {
                lower_priority();
                runtime.block_on(async move {
                    // The connection's tasks live on this thread's runtime.
                    let channel = endpoint.connect_lazy();
                    let mut client = tonic::client::Grpc::new(channel);
                    if let Some(encoding) = config.compression {
                        client = client.send_compressed(encoding);
                    }
                    Export {
                        queue,
                        resource,
                        config,
                        client,
                        health: Health::default(),
                    }
                    .run(export_stop)
                    .await;
                });
                // Nobody waits when the process did not stop it.
                let _ = done.send(());
            })
            .context("cannot start the trace exporter's thread")?;
        Ok(Self { stop, finished })
    }

    /// Sends what is queued and stops, waiting at most `timeout` (the
    /// collector may be gone; the thread is then left to the process's
    /// exit, its requests bounded by their own timeout).
    pub async fn shutdown(self, timeout: Duration) {
        self.stop.cancel();
        match tokio::time::timeout(timeout, self.finished).await {
            Ok(Ok(())) => {}
            // Its end was never sent: the thread panicked.
            Ok(Err(_)) => tracing::error!("the trace exporter failed"),
            Err(_) => tracing::warn!(
                timeout_s = timeout.as_secs_f64(),
                "the last spans were not all exported in time"
            ),
        }
    }
}

/// The exporter thread's name (`/proc/PID/task/*/comm`, `top -H`).
const EXPORT_THREAD: &str = "baton-otlp";

/// The exporter thread's nice value, above the default 0 of the threads
/// that schedule and run tasks: on busy cores a burst's own export waits
/// for them instead of slowing them, and sends once they idle. Not the
/// lowest: under sustained load it still gets about a tenth of a busy
/// core's time next to one thread at 0, several times what sending a
/// fan-out's spans takes, so the queue does not fill and drop spans.
const EXPORT_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`EXPORT_NICE`]. On Linux a
/// nice value is a thread's own (`PRIO_PROCESS` with id 0 names the calling
/// thread), so the rest of the process keeps its own.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: `setpriority` takes no pointers; it only changes the calling
    // thread's nice value, which raising needs no privilege for.
    #[allow(unsafe_code)]
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, EXPORT_NICE) };
    if result != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the trace exporter's priority; it runs at the process's"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// How long the exporter watches the queue for spans still arriving in a
/// burst, before it sends on its schedule.
const BURST_PROBE: Duration = Duration::from_millis(50);

/// Returns once spans no longer arrive in a burst: a [`BURST_PROBE`] in
/// which fewer than one request's worth (`max_batch`) of spans were queued.
/// At most `limit` later, and at once when half the queue is used or the
/// exporter stops. A burst is the process at work (a fan-out ends tens of
/// thousands of spans a second): sending its spans meanwhile would take
/// cores from it, and the exporter and its collector together cost it more
/// than a tenth of its throughput on two cores; right after it they cost
/// it nothing. Steadier traffic (under a request's worth per probe, about
/// 10,000 spans a second with the default batch) does not wait. Only the
/// exporter takes from the queue, so what `queued` grew by during a probe
/// is what arrived.
async fn burst_over(queue: &SpanQueue, limit: Duration, stop: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + limit;
    let burst = queue.limits().max_batch;
    loop {
        let before = queue.queued();
        if before == 0 || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = queue.filled() => return,
            () = tokio::time::sleep(BURST_PROBE) => {}
        }
        if queue.queued().saturating_sub(before) < burst {
            return;
        }
    }
}

/// Whether the collector took the last request, for logging the start and
/// end of an outage once each.
#[derive(Debug, Default)]
struct Health {
    failing: bool,
    lost_spans: u64,
    dropped_reported: u64,
}

struct Export {
    queue: Arc<SpanQueue>,
    resource: EncodedResource,
    config: ExportConfig,
    client: tonic::client::Grpc<Channel>,
    health: Health,
}

impl Export {
    async fn run(mut self, stop: CancellationToken) {
        let mut schedule = tokio::time::interval(self.config.schedule_delay);
        schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        schedule.reset();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.queue.filled() => {}
                _ = schedule.tick() => {
                    burst_over(&self.queue, self.config.schedule_delay, &stop).await;
                }
            }
            self.send_queued().await;
        }
        self.send_queued().await;
        let left = self.queue.queued();
        if left > 0 || self.health.lost_spans > 0 {
            tracing::warn!(
                unsent = left,
                lost_to_failed_requests = self.health.lost_spans,
                "spans not exported when the exporter stopped"
            );
        }
    }

    /// Sends the spans queued when called, whole chunks and partial ones;
    /// not those that arrive meanwhile (a round ends even while spans keep
    /// coming, and leaves them to the next, in whole chunks).
    async fn send_queued(&mut self) {
        let mut budget = self.queue.queued();
        while budget > 0
            && let Some(chunk) = self.queue.take(true)
        {
            budget = budget.saturating_sub(chunk.spans());
            self.send(chunk).await;
        }
        let dropped = self.queue.dropped();
        if dropped > self.health.dropped_reported {
            tracing::warn!(
                spans = dropped - self.health.dropped_reported,
                max_queue_size = self.queue.limits().max_queued,
                "spans dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE)"
            );
            self.health.dropped_reported = dropped;
        }
    }

    async fn send(&mut self, chunk: Chunk) {
        let spans = chunk.spans();
        let mut body = Vec::new();
        self.queue.request(&chunk, &self.resource, &mut body);
        self.queue.recycle(chunk);
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.config.headers.clone();
        if let Some(timeout) = self.config.timeout {
            request.set_timeout(timeout);
        }
        let client = &mut self.client;
        let call = async {
            client
                .ready()
                .await
                .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
            client.unary(request, path, RawCodec).await
        };
        let outcome = match self.config.timeout {
            Some(timeout) => tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded(
                        "the collector did not answer in time",
                    ))
                }),
            None => call.await,
        };
        match outcome {
            Ok(response) => {
                if let Some(partial) = response.into_inner().partial_success
                    && partial.rejected_spans > 0
                {
                    tracing::warn!(
                        rejected = partial.rejected_spans,
                        message = partial.error_message,
                        "the collector rejected spans"
                    );
                }
                if self.health.failing {
                    tracing::info!(
                        lost_spans = self.health.lost_spans,
                        "the trace collector takes spans again"
                    );
                    self.health = Health {
                        dropped_reported: self.health.dropped_reported,
                        ..Health::default()
                    };
                }
            }
            Err(status) => {
                if !self.health.failing {
                    tracing::warn!(
                        endpoint = self.config.endpoint,
                        code = ?status.code(),
                        error = status.message(),
                        spans,
                        "cannot export spans; they are dropped until the collector answers"
                    );
                    self.health.failing = true;
                }
                self.health.lost_spans += spans as u64;
            }
        }
    }
}

/// Sends a request's bytes as they are and decodes the response.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        let response = ExportTraceServiceResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|error| tonic::Status::internal(format!("undecodable response: {error}")))?;
        Ok(Some(response))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::SystemTime;

    use baton_common::traces::{Attributes, SpanRecord, SpanSink, status};
    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_sdk::trace::Sampler;
    use tokio::time::Instant;

    use super::*;

    /// A queue of 10,000 spans sent 10 to a request, and a sink onto it.
    fn burst_queue() -> (Arc<SpanQueue>, SpanSink) {
        let queue = SpanQueue::new(QueueLimits {
            max_queued: 10_000,
            max_batch: 10,
        });
        let sink = SpanSink::new(queue.clone(), Box::new(Sampler::AlwaysOn), "baton-test");
        (queue, sink)
    }

    fn end_spans(sink: &SpanSink, count: usize) {
        for _ in 0..count {
            sink.export(&SpanRecord {
                trace_id: TraceId::from_bytes([1; 16]),
                span_id: SpanId::from_bytes([2; 8]),
                parent_span_id: SpanId::INVALID,
                parent_is_remote: false,
                name: "attempt",
                start: SystemTime::UNIX_EPOCH,
                end: SystemTime::UNIX_EPOCH,
                attributes: Attributes::new(),
                status: status(false, None),
            });
        }
    }

    /// Ends `per_tick` spans every 10 ms, `ticks` times.
    fn burst(sink: SpanSink, per_tick: usize, ticks: u32) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for _ in 0..ticks {
                tokio::time::sleep(Duration::from_millis(10)).await;
                end_spans(&sink, per_tick);
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_or_quiet_queue_is_sent_without_waiting_for_a_burst() {
        let (queue, sink) = burst_queue();
        let stop = CancellationToken::new();
        let started = Instant::now();
        burst_over(&queue, Duration::from_secs(5), &stop).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "nothing queued");
        // A trickle: fewer than a request's worth in a probe.
        end_spans(&sink, 3);
        let trickle = burst(sink, 1, 100);
        burst_over(&queue, Duration::from_secs(5), &stop).await;
        assert_eq!(started.elapsed(), BURST_PROBE);
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_export_waits_for_a_burst_to_end_at_most_the_limit() {
        let (queue, sink) = burst_queue();
        let stop = CancellationToken::new();
        // 300 ms of 4 spans every 10 ms: 20 a probe, two requests' worth.
        let started = Instant::now();
        let short = burst(sink.clone(), 4, 30);
        end_spans(&sink, 1);
        burst_over(&queue, Duration::from_secs(5), &stop).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300)
                && waited <= Duration::from_millis(300) + 2 * BURST_PROBE,
            "waited {waited:?} for a 300 ms burst"
        );
        short.await.unwrap();

        // A burst that goes on: sent after the limit anyway.
        let started = Instant::now();
        let endless = burst(sink, 4, 1_000);
        burst_over(&queue, Duration::from_secs(1), &stop).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(1) + BURST_PROBE,
            "waited {waited:?} with a limit of 1 s"
        );
        endless.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_queue_or_a_stop_ends_the_wait_at_once() {
        let (queue, sink) = burst_queue();
        let stop = CancellationToken::new();
        end_spans(&sink, 1);
        // 1,000 spans every 10 ms: half the queue (5,000) after 50 ms.
        let started = Instant::now();
        let heavy = burst(sink.clone(), 1_000, 100);
        burst_over(&queue, Duration::from_secs(5), &stop).await;
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        heavy.abort();

        let started = Instant::now();
        let endless = burst(sink, 4, 1_000);
        let stopper = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(120)).await;
                stop.cancel();
            })
        };
        burst_over(&queue, Duration::from_secs(5), &stop).await;
        assert_eq!(started.elapsed(), Duration::from_millis(120));
        stopper.await.unwrap();
        endless.abort();
    }

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<ExportConfig> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        ExportConfig::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_are_the_otlp_ones_with_baton_s_queue() {
        let config = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap();
        assert_eq!(config.endpoint, "http://localhost:4317");
        assert!(config.headers.is_empty());
        assert_eq!(config.timeout, Some(Duration::from_secs(10)));
        assert_eq!(config.compression, None);
        assert_eq!(config.schedule_delay, Duration::from_secs(5));
        assert_eq!(
            config.limits,
            QueueLimits {
                max_queued: 65_536,
                max_batch: 512
            }
        );
    }

    #[test]
    fn traces_variables_win_over_the_generic_ones() {
        let config = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-team=data,x-key=generic"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-key=a%20b%3Dc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000"),
        ])
        .unwrap();
        assert_eq!(config.endpoint, "http://traces:4317");
        assert_eq!(config.headers.get("x-team").unwrap(), "data");
        assert_eq!(config.headers.get("x-key").unwrap(), "a b=c");
        assert_eq!(config.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(config.compression, Some(CompressionEncoding::Gzip));
        assert_eq!(config.schedule_delay, Duration::from_millis(250));
        // The batch is at most the queue.
        assert_eq!(
            config.limits,
            QueueLimits {
                max_queued: 100,
                max_batch: 100
            }
        );
    }

    #[test]
    fn zero_is_no_time_limit_and_the_shortest_schedule() {
        let zero_timeout = config(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ])
        .unwrap();
        // The batch processor's own bound (30 s) still applies.
        assert_eq!(zero_timeout.timeout, Some(Duration::from_secs(30)));
        assert_eq!(zero_timeout.schedule_delay, Duration::from_millis(1));
        let no_limit = config(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "0"),
        ])
        .unwrap();
        assert_eq!(no_limit.timeout, None);
    }

    #[test]
    fn a_malformed_variable_is_refused_by_name() {
        for (name, value, expected) in [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "collector:4317",
                "must start with http://",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://collector:4317",
                "TLS",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://", "not a URL"),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "http/protobuf",
                "not supported",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key", "not key=value"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "bad key=1",
                "not a valid header name",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "milliseconds"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5", "milliseconds"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip or none"),
            ("OTEL_BSP_SCHEDULE_DELAY", "1.5", "milliseconds"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "-1", "positive whole number"),
            (
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                "many",
                "positive whole number",
            ),
            ("OTEL_BSP_EXPORT_TIMEOUT", "soon", "milliseconds"),
        ] {
            let error = format!("{:#}", config(&[(name, value)]).unwrap_err());
            assert!(
                error.starts_with(name) && error.contains(expected),
                "{name}={value}: {error}"
            );
        }
    }
}
