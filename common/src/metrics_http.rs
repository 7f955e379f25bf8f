//! The HTTP endpoint Prometheus scrapes (`GET /metrics`), shared by the
//! controller and the worker: each gives the function that renders its
//! metrics when scraped. Other paths answer 404.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// OpenMetrics text, what `prometheus-client` encodes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders the metrics' text when Prometheus scrapes.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Metrics of another part of the process served on the same endpoint
/// (`baton dev`'s in-process worker on its controller's): appends their
/// OpenMetrics families, without `# EOF`, to the text being rendered.
#[derive(Clone)]
pub struct MetricsSection(Arc<dyn Fn(&mut String) + Send + Sync>);

impl MetricsSection {
    pub fn new(encode: impl Fn(&mut String) + Send + Sync + 'static) -> Self {
        Self(Arc::new(encode))
    }

    /// Appends the section's families to `text`.
    pub fn encode(&self, text: &mut String) {
        (self.0)(text);
    }
}

impl std::fmt::Debug for MetricsSection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("MetricsSection")
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app =
        Router::new().route(
            "/metrics",
            get(move || {
                let render = Arc::clone(&render);
                async move {
                    ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], render().await).into_response()
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
