//! [`Link`]: the worker's one stream to the controller, reopened with
//! exponential backoff whenever it fails or ends, and moved to the leader
//! when a follower answers.
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
//! Which controller: any replica accepts the stream, but only the leader
//! serves it; a follower refuses it with `UNAVAILABLE` and the leader's
//! address in [`client::LEADER_METADATA_KEY`] (absent during an election).
//! - A refusal naming the leader: the next try goes there at once, without
//!   backoff, at most [`MAX_REDIRECTS_IN_A_ROW`] times in a row (two
//!   controllers that disagree about the leader cannot make the worker spin;
//!   further redirects wait for the backoff).
//! - Any other failure: the next try goes to the next address of the
//!   rotation, the last known leader first, then the configured addresses in
//!   order. A registered stream that fails or ends is retried on the same
//!   controller first (it may only have restarted, or know the new leader).
//! - While no leader is known (the registered stream was lost, or a
//!   controller said none is elected), the backoff is capped at
//!   [`NO_LEADER_MAX_BACKOFF`] for [`NO_LEADER_WINDOW`]: an election takes
//!   seconds and workers must be back quickly.
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

/// How often the worker pings the controller's connection, and how long it
/// waits for the answer before it counts the connection as dead.
const CONTROLLER_PING_INTERVAL: Duration = Duration::from_secs(2);
const CONTROLLER_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// First reconnect delay; it doubles after each failed try.
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait for the TCP connection plus the stream's response headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Redirects followed at once, one after the other, before they wait for
/// the backoff like any other failure.
pub(crate) const MAX_REDIRECTS_IN_A_ROW: u32 = 3;

/// Largest reconnect delay while no leader is known.
pub(crate) const NO_LEADER_MAX_BACKOFF: Duration = Duration::from_millis(250);

/// How long after losing the leader the short backoff applies; a cluster
/// without a leader for longer is down, and the configured backoff spares
/// it.
pub(crate) const NO_LEADER_WINDOW: Duration = Duration::from_secs(60);

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<Streaming<api::ControllerMessage>, Failure>> + Send>>;

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

/// Why a stream could not be opened or was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The controller answered `UNAVAILABLE`: it is not the leader (naming
    /// the leader when it knows it) or cannot serve now.
    NotLeader {
        leader: Option<String>,
        error: String,
    },
    /// Unreachable, timed out, refused for another reason, or the stream
    /// ended.
    Other(String),
}

impl Failure {
    fn from_status(context: &str, status: &tonic::Status) -> Self {
        let error = format!("{context}: {status}");
        if status.code() != tonic::Code::Unavailable {
            return Failure::Other(error);
        }
        let leader = status
            .metadata()
            .get(client::LEADER_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| client::parse_addrs(value).ok())
            .and_then(|addrs| addrs.into_iter().next());
        Failure::NotLeader { leader, error }
    }

    fn error(&self) -> &str {
        match self {
            Failure::NotLeader { error, .. } | Failure::Other(error) => error,
        }
    }
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
    /// The configured controller addresses (with a scheme), in order.
    configured: Vec<String>,
    /// The controller the worker last registered with or was redirected
    /// to: first in the rotation after a failure.
    last_leader: Option<String>,
    /// Where the current (or next) stream goes.
    target: String,
    max_backoff: Duration,
    /// Delay before the next try after a failure.
    backoff: Duration,
    /// Redirects followed without backoff since the last registration.
    redirects_in_a_row: u32,
    /// Since when no leader is known; `None` while one is.
    leader_lost_at: Option<Instant>,
    /// The current stream was accepted with `Registered`: losing it means
    /// losing the leader.
    registered: bool,
    state: LinkState,
}

impl Link {
    /// A link to the controllers at `configured` (addresses with a scheme,
    /// as [`client::parse_addrs`] returns them; a validated config has at
    /// least one). The first try goes to the first address.
    pub(crate) fn new(configured: Vec<String>, max_backoff: Duration) -> Self {
        let target = configured.first().cloned().unwrap_or_default();
        Self {
            configured,
            last_leader: None,
            target,
            max_backoff,
            backoff: INITIAL_BACKOFF,
            redirects_in_a_row: 0,
            leader_lost_at: None,
            registered: false,
            state: LinkState::Waiting {
                until: Instant::now(),
            },
        }
    }

    /// The controller of the current (or next) stream.
    pub(crate) fn controller_addr(&self) -> &str {
        &self.target
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
                    info!(controller = %self.target, "connected to the controller");
                    let outbound = outbound.clone();
                    self.state = LinkState::Connected { outbound, inbound };
                    LinkEvent::Connected
                }
                Err(failure) => {
                    self.on_failure(failure);
                    LinkEvent::Disconnected
                }
            },
            LinkState::Connected { inbound, .. } => match inbound.next().await {
                Some(Ok(message)) => LinkEvent::Message(message),
                Some(Err(status)) => {
                    self.on_failure(Failure::from_status("the stream failed", &status));
                    LinkEvent::Disconnected
                }
                None => {
                    self.on_failure(Failure::Other(
                        "the controller closed the stream".to_string(),
                    ));
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
        let controller_addr = self.target.clone();
        let connect = async move {
            // Frequent HTTP/2 pings: a controller that froze (paused, cut
            // off) is noticed within seconds, so the worker moves on to the
            // new leader instead of waiting on a dead stream.
            let channel = client::endpoint(&controller_addr)
                .map_err(|error| Failure::Other(error.to_string()))?
                .http2_keep_alive_interval(CONTROLLER_PING_INTERVAL)
                .keep_alive_timeout(CONTROLLER_PING_TIMEOUT)
                .connect()
                .await
                .map_err(|error| {
                    Failure::Other(format!("cannot connect to {controller_addr}: {error}"))
                })?;
            let mut worker_client = client::worker_client(channel);
            let response = worker_client
                .connect(UnboundedReceiverStream::new(receiver))
                .await
                .map_err(|status| {
                    Failure::from_status("the controller refused the stream", &status)
                })?;
            Ok(response.into_inner())
        };
        let connect = async move {
            tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::Other(format!(
                        "no answer within {}",
                        humantime::format_duration(CONNECT_TIMEOUT)
                    )))
                })
        };
        debug!(controller = %self.target, "connecting to the controller");
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

    /// The controller accepted `Register`: it leads, and the next failure
    /// starts the backoff from the beginning.
    pub(crate) fn on_registered(&mut self) {
        self.backoff = INITIAL_BACKOFF;
        self.redirects_in_a_row = 0;
        self.leader_lost_at = None;
        self.registered = true;
        self.last_leader = Some(self.target.clone());
    }

    /// Chooses the next controller and when to try it.
    fn on_failure(&mut self, failure: Failure) {
        let was_registered = std::mem::take(&mut self.registered);
        let failed = self.target.clone();
        match &failure {
            Failure::NotLeader {
                leader: Some(leader),
                ..
            } if *leader != failed => {
                self.last_leader = Some(leader.clone());
                self.target = leader.clone();
                if self.redirects_in_a_row < MAX_REDIRECTS_IN_A_ROW {
                    self.redirects_in_a_row += 1;
                    info!(controller = %failed, leader = %leader, "redirected to the leader at {leader}");
                    self.state = LinkState::Waiting {
                        until: Instant::now(),
                    };
                    return;
                }
                warn!(controller = %failed, leader = %leader, redirects = self.redirects_in_a_row, "controllers disagree about the leader; waiting before following the redirect");
            }
            _ => {
                if was_registered || matches!(failure, Failure::NotLeader { .. }) {
                    // The leader went away or stepped down, or an election
                    // is in progress: a new leader is expected soon.
                    self.leader_lost_at.get_or_insert_with(Instant::now);
                }
                if !was_registered {
                    self.target = self.next_in_rotation(&failed);
                }
                // Else the lost leader is tried first: it may only have
                // restarted, or know the new leader by then.
            }
        }
        let delay = jittered(self.backoff.min(self.backoff_cap()));
        warn!(controller = %failed, error = %failure.error(), retry_in = ?delay, next = %self.target, "disconnected from the controller");
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        self.state = LinkState::Waiting {
            until: Instant::now() + delay,
        };
    }

    /// Upper bound of the next delay: short while no leader is known.
    fn backoff_cap(&self) -> Duration {
        match self.leader_lost_at {
            Some(since) if since.elapsed() < NO_LEADER_WINDOW => {
                self.max_backoff.min(NO_LEADER_MAX_BACKOFF)
            }
            _ => self.max_backoff,
        }
    }

    /// The address after `failed` in the rotation: the last known leader,
    /// then the configured addresses; the first one when `failed` is not
    /// in it.
    fn next_in_rotation(&self, failed: &str) -> String {
        let mut rotation: Vec<&String> = self.last_leader.iter().collect();
        rotation.extend(
            self.configured
                .iter()
                .filter(|addr| Some(*addr) != self.last_leader.as_ref()),
        );
        match rotation.iter().position(|addr| *addr == failed) {
            Some(index) => rotation[(index + 1) % rotation.len()].clone(),
            None => rotation
                .first()
                .map_or_else(|| failed.to_string(), |addr| (*addr).clone()),
        }
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

    fn addr(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    /// How long the link waits before its next try.
    fn wait(link: &Link) -> Duration {
        match &link.state {
            LinkState::Waiting { until } => until.saturating_duration_since(Instant::now()),
            _ => panic!("the link is not waiting"),
        }
    }

    fn redirect(leader: u16) -> Failure {
        Failure::NotLeader {
            leader: Some(addr(leader)),
            error: "not the leader".into(),
        }
    }

    fn refused() -> Failure {
        Failure::Other("connection refused".into())
    }

    #[tokio::test]
    async fn redirects_are_followed_at_once_a_few_times_in_a_row() {
        let mut link = Link::new(vec![addr(1), addr(2)], Duration::from_secs(30));
        link.backoff = Duration::from_secs(8);
        for leader in [3, 1, 3] {
            link.on_failure(redirect(leader));
            assert_eq!(link.controller_addr(), addr(leader));
            assert_eq!(wait(&link), Duration::ZERO);
        }
        // A fourth redirect in a row waits for the backoff.
        link.on_failure(redirect(1));
        assert_eq!(link.controller_addr(), addr(1));
        assert!(wait(&link) >= Duration::from_secs(3), "{:?}", wait(&link));
        // Registering resets the count.
        link.on_registered();
        link.on_failure(redirect(3));
        assert_eq!(wait(&link), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_lost_leader_is_retried_first_then_every_configured_address() {
        let mut link = Link::new(vec![addr(1), addr(2)], Duration::from_secs(30));
        link.on_failure(redirect(3));
        link.on_registered();
        assert!(link.leader_lost_at.is_none());
        link.on_failure(refused());
        assert_eq!(link.controller_addr(), addr(3), "the leader is tried first");
        assert!(link.leader_lost_at.is_some());
        let mut tried = Vec::new();
        for _ in 0..4 {
            link.on_failure(refused());
            tried.push(link.controller_addr().to_string());
        }
        assert_eq!(tried, [addr(1), addr(2), addr(3), addr(1)]);
        // No leader elected: the next address, and never a long wait.
        link.backoff = Duration::from_secs(20);
        link.on_failure(Failure::NotLeader {
            leader: None,
            error: "no leader is elected yet".into(),
        });
        assert_eq!(link.controller_addr(), addr(2));
        assert!(wait(&link) <= NO_LEADER_MAX_BACKOFF, "{:?}", wait(&link));
    }

    #[tokio::test]
    async fn the_configured_backoff_applies_while_a_leader_is_known() {
        let mut link = Link::new(vec![addr(1)], Duration::from_secs(30));
        link.backoff = Duration::from_secs(8);
        link.on_failure(refused());
        assert_eq!(link.controller_addr(), addr(1));
        assert!(wait(&link) >= Duration::from_secs(3), "{:?}", wait(&link));
        // Long after the leader was lost, the configured backoff is back.
        if let Some(long_ago) =
            Instant::now().checked_sub(NO_LEADER_WINDOW + Duration::from_secs(1))
        {
            link.leader_lost_at = Some(long_ago);
            link.backoff = Duration::from_secs(8);
            link.on_failure(refused());
            assert!(wait(&link) >= Duration::from_secs(3), "{:?}", wait(&link));
        }
    }

    #[test]
    fn unavailable_statuses_name_the_leader() {
        let mut status = tonic::Status::unavailable("not the leader");
        status.metadata_mut().insert(
            client::LEADER_METADATA_KEY,
            "http://127.0.0.1:7071".parse().expect("ascii"),
        );
        match Failure::from_status("refused", &status) {
            Failure::NotLeader { leader, error } => {
                assert_eq!(leader.as_deref(), Some("http://127.0.0.1:7071"));
                assert!(error.starts_with("refused: "), "{error}");
            }
            other => panic!("{other:?}"),
        }
        let status = tonic::Status::unavailable("no leader is elected yet");
        assert!(matches!(
            Failure::from_status("refused", &status),
            Failure::NotLeader { leader: None, .. }
        ));
        let status = tonic::Status::permission_denied("bad token");
        assert!(matches!(
            Failure::from_status("refused", &status),
            Failure::Other(_)
        ));
    }

    #[tokio::test]
    async fn backoff_doubles_up_to_the_maximum_and_resets() {
        // Nothing listens on port 1 of loopback: every try fails at once.
        let mut link = Link::new(
            vec!["http://127.0.0.1:1".to_string()],
            Duration::from_millis(400),
        );
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
