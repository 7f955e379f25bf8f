//! [`WebhookReceiver`]: an HTTP server on 127.0.0.1 that notification
//! tests point notifiers at. It records every request (headers, JSON body,
//! the status it answered, when it arrived) and answers from a script: the
//! given statuses in order, then 200. [`WebhookReceiver::silent`] accepts
//! connections and never answers, like a receiver that hangs.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::poll::{POLL_INTERVAL, poll_until};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON (a string holding the text when it is not JSON).
    pub body: serde_json::Value,
    /// The status the receiver answered with.
    pub answered: u16,
    pub received_at: SystemTime,
}

#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Vec<ReceivedRequest>>,
    /// Statuses still to answer with, in order; 200 after them.
    script: Mutex<VecDeque<u16>>,
    connections: AtomicUsize,
}

/// An HTTP receiver of notifications on a free loopback port; stopped when
/// dropped.
#[derive(Debug)]
pub struct WebhookReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl WebhookReceiver {
    /// Answers the first requests with `statuses`, in order, and every
    /// later one with 200.
    pub async fn start(statuses: &[u16]) -> Self {
        let listener = bind().await;
        let addr = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared::default());
        shared
            .script
            .lock()
            .expect("script lock")
            .extend(statuses.iter().copied());
        let router = Router::new()
            .fallback(record)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// Accepts every connection and never answers (nor closes it).
    pub async fn silent() -> Self {
        let listener = bind().await;
        let addr = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared::default());
        let counted = Arc::clone(&shared);
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counted.connections.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// Connections accepted by a [`WebhookReceiver::silent`] receiver.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` requests arrived; panics after
    /// `timeout` with what did arrive.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<ReceivedRequest> {
        let found = poll_until(timeout, POLL_INTERVAL, async || {
            let requests = self.requests();
            (requests.len() >= count).then_some(requests)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "webhook receiver: timed out after {timeout:?} waiting for {count} requests; got {:#?}",
                self.requests()
            )
        })
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("cannot bind a loopback port for the webhook receiver")
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let answered = shared
        .script
        .lock()
        .expect("script lock")
        .pop_front()
        .unwrap_or(200);
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    let headers = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    shared
        .requests
        .lock()
        .expect("requests lock")
        .push(ReceivedRequest {
            method: method.to_string(),
            path: uri.path().to_string(),
            headers,
            body,
            answered,
            received_at: SystemTime::now(),
        });
    StatusCode::from_u16(answered).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
