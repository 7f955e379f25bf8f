//! [`OtlpCollector`]: an OTLP/gRPC trace receiver the tests run themselves
//! (the `TraceService` of the opentelemetry-proto definitions, served by
//! tonic on a free loopback port). It keeps every span it is sent, flattened
//! into [`CollectedSpan`]s, for tests to wait on and inspect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::poll::{POLL_INTERVAL, poll_until};

/// One exported span, with the ids as lowercase hex (as in `traceparent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedSpan {
    /// The exporting process's `service.name` resource attribute.
    pub service_name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// Attributes as strings (integers in decimal).
    pub attributes: BTreeMap<String, String>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

impl CollectedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Mutex<Vec<CollectedSpan>>,
    /// The value of the `x-baton-test` header of each request (empty when
    /// absent).
    test_headers: Mutex<Vec<String>>,
}

/// The service: appends what it is sent to the shared [`Received`].
#[derive(Debug)]
struct Receiver(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let test_header = request
            .metadata()
            .get(TEST_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.0
            .test_headers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(test_header);
        let mut collected = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .map(value_text)
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                collected.push(CollectedSpan {
                    service_name: service_name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|attribute| (attribute.key.clone(), value_text(attribute)))
                        .collect(),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                });
            }
        }
        self.0
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(collected);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn value_text(attribute: &KeyValue) -> String {
    match attribute
        .value
        .as_ref()
        .and_then(|AnyValue { value }| value.as_ref())
    {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The request header the collector records ([`OtlpCollector::test_headers`]).
pub const TEST_HEADER: &str = "x-baton-test";

/// A running OTLP trace receiver (it accepts gzip); stops when dropped.
#[derive(Debug)]
pub struct OtlpCollector {
    endpoint: String,
    received: Arc<Received>,
    // Dropping it stops the server.
    _stop: oneshot::Sender<()>,
}

impl OtlpCollector {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the OTLP collector");
        let address = listener.local_addr().expect("collector address");
        let received = Arc::new(Received::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(Receiver(Arc::clone(&received)))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                eprintln!("the OTLP collector stopped: {error}");
            }
        });
        Self {
            endpoint: format!("http://{address}"),
            received,
            _stop: stop,
        }
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.received
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The [`TEST_HEADER`] of every request so far, in order.
    pub fn test_headers(&self) -> Vec<String> {
        self.received
            .test_headers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The spans received once `done` holds for them, waiting at most
    /// `timeout`; `None` if it never did.
    pub async fn wait_for_spans(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[CollectedSpan]) -> bool,
    ) -> Option<Vec<CollectedSpan>> {
        poll_until(timeout, POLL_INTERVAL, async || {
            let spans = self.spans();
            done(&spans).then_some(spans)
        })
        .await
    }
}
