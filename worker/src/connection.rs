//! [`Link`]: the worker's one stream to the controller, reopened with
//! exponential backoff whenever it fails or ends.
//!
//! States: *waiting* (backoff before the next try; the first try is
//! immediate) → *connecting* (the outbound channel already holds `Register`
//! and everything the outbox resends, so messages produced meanwhile queue
//! behind them in order) → *connected* → back to *waiting* on any error or
//! end of stream. Outbound messages go through an unbounded `mpsc` into a
//! `ReceiverStream`; its memory is bounded by the outbox, which holds every
//! byte that is queued there until the controller acknowledges it. The
//! backoff starts at 100 ms, doubles up to the configured maximum, is
//! jittered, and is reset once the controller answers `Registered`.
//!
//! [`Link::next`] is cancel-safe, so the worker's loop can `select!` on it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use baton_common::client;
use baton_common::pb::api;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codec::Streaming;
use tracing::{debug, info, warn};

/// First reconnect delay; it doubles after each failed try.
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait for the TCP connection plus the stream's response headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<Streaming<api::ControllerMessage>, String>> + Send>>;

enum LinkState {
    Waiting {
        until: Instant,
    },
    Connecting {
        outbound: mpsc::UnboundedSender<api::WorkerMessage>,
        connect: ConnectFuture,
    },
    Connected {
        outbound: mpsc::UnboundedSender<api::WorkerMessage>,
        inbound: Streaming<api::ControllerMessage>,
    },
}

/// What happened on the link.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// The backoff is over: call [`Link::open`] with the opening messages.
    ReadyToConnect,
    /// The stream is open (the controller may still refuse `Register`).
    Connected,
    Message(api::ControllerMessage),
    /// The stream failed or ended; the link waits, then asks to reconnect.
    Disconnected,
}

pub(crate) struct Link {
    controller_addr: String,
    max_backoff: Duration,
    /// Delay before the next try after a failure.
    backoff: Duration,
    state: LinkState,
}

impl Link {
    pub(crate) fn new(controller_addr: String, max_backoff: Duration) -> Self {
        Self {
            controller_addr,
            max_backoff,
            backoff: INITIAL_BACKOFF,
            state: LinkState::Waiting {
                until: Instant::now(),
            },
        }
    }

    /// The next event. Cancel-safe: a call dropped before it completes
    /// loses nothing.
    pub(crate) async fn next(&mut self) -> LinkEvent {
        match &mut self.state {
            LinkState::Waiting { until } => {
                sleep_until(*until).await;
                LinkEvent::ReadyToConnect
            }
            LinkState::Connecting { outbound, connect } => match connect.as_mut().await {
                Ok(inbound) => {
                    info!(controller = %self.controller_addr, "connected to the controller");
                    let outbound = outbound.clone();
                    self.state = LinkState::Connected { outbound, inbound };
                    LinkEvent::Connected
                }
                Err(error) => {
                    self.disconnect(&error);
                    LinkEvent::Disconnected
                }
            },
            LinkState::Connected { inbound, .. } => match inbound.next().await {
                Some(Ok(message)) => LinkEvent::Message(message),
                Some(Err(status)) => {
                    self.disconnect(&format!("the stream failed: {status}"));
                    LinkEvent::Disconnected
                }
                None => {
                    self.disconnect("the controller closed the stream");
                    LinkEvent::Disconnected
                }
            },
        }
    }

    /// Opens a new stream whose first messages are `opening` (`Register`
    /// first). Only valid after [`LinkEvent::ReadyToConnect`].
    pub(crate) fn open(&mut self, opening: Vec<api::WorkerMessage>) {
        let (outbound, receiver) = mpsc::unbounded_channel();
        for message in opening {
            // The receiver is alive: it is right here.
            let _ = outbound.send(message);
        }
        let controller_addr = self.controller_addr.clone();
        let connect = async move {
            let channel = client::connect_channel(&controller_addr)
                .await
                .map_err(|error| error.to_string())?;
            let mut worker_client = client::worker_client(channel);
            let response = worker_client
                .connect(UnboundedReceiverStream::new(receiver))
                .await
                .map_err(|status| format!("the controller refused the stream: {status}"))?;
            Ok(response.into_inner())
        };
        let connect = async move {
            tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {}",
                        humantime::format_duration(CONNECT_TIMEOUT)
                    ))
                })
        };
        debug!(controller = %self.controller_addr, "connecting to the controller");
        self.state = LinkState::Connecting {
            outbound,
            connect: Box::pin(connect),
        };
    }

    /// Queues a message on the current stream; dropped when there is none
    /// (the outbox resends what matters after the next `Register`).
    pub(crate) fn send(&self, message: api::WorkerMessage) {
        match &self.state {
            LinkState::Connecting { outbound, .. } | LinkState::Connected { outbound, .. } => {
                // A closed channel means the stream is gone; `next` reports it.
                let _ = outbound.send(message);
            }
            LinkState::Waiting { .. } => {}
        }
    }

    /// Ends the stream politely: the outbound side is closed once what is
    /// queued has been sent, then the controller gets up to `limit` to end
    /// its side (messages it sends meanwhile are ignored).
    pub(crate) async fn close(self, limit: Duration) {
        let LinkState::Connected {
            outbound,
            mut inbound,
        } = self.state
        else {
            return;
        };
        drop(outbound);
        let drained = tokio::time::timeout(limit, async {
            while let Some(Ok(message)) = inbound.next().await {
                debug!(
                    ?message,
                    "controller message after the worker stopped; ignored"
                );
            }
        });
        if drained.await.is_err() {
            debug!("the controller did not close the stream; dropping it");
        }
    }

    /// The controller accepted `Register`: the next failure starts the
    /// backoff from the beginning.
    pub(crate) fn on_registered(&mut self) {
        self.backoff = INITIAL_BACKOFF;
    }

    fn disconnect(&mut self, error: &str) {
        let delay = jittered(self.backoff);
        warn!(controller = %self.controller_addr, %error, retry_in = ?delay, "disconnected from the controller");
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        self.state = LinkState::Waiting {
            until: Instant::now() + delay,
        };
    }
}

/// A delay between half and all of `backoff`, so that workers cut off
/// together do not reconnect together.
fn jittered(backoff: Duration) -> Duration {
    let millis = u64::try_from(backoff.as_millis())
        .unwrap_or(u64::MAX)
        .max(2);
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_all() {
        for _ in 0..100 {
            let delay = jittered(Duration::from_millis(800));
            assert!(
                delay >= Duration::from_millis(400) && delay <= Duration::from_millis(800),
                "{delay:?}"
            );
        }
    }

    #[tokio::test]
    async fn backoff_doubles_up_to_the_maximum_and_resets() {
        // Nothing listens on port 1 of loopback: every try fails at once.
        let mut link = Link::new("127.0.0.1:1".to_string(), Duration::from_millis(400));
        let mut backoffs = Vec::new();
        for _ in 0..4 {
            let event = tokio::time::timeout(Duration::from_secs(10), link.next())
                .await
                .expect("ready in time");
            assert!(matches!(event, LinkEvent::ReadyToConnect), "{event:?}");
            link.open(Vec::new());
            let event = tokio::time::timeout(Duration::from_secs(15), link.next())
                .await
                .expect("fails in time");
            assert!(matches!(event, LinkEvent::Disconnected), "{event:?}");
            backoffs.push(link.backoff);
        }
        let millis: Vec<u128> = backoffs.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [200, 400, 400, 400]);
        link.on_registered();
        assert_eq!(link.backoff, INITIAL_BACKOFF);
    }
}
