//! [`LeaderFollowingChannel`]: a gRPC transport that finds the leader among
//! controller replicas by itself.
//!
//! A follower answers a leader-only call at once with `UNAVAILABLE` and the
//! leader's address in the [`LEADER_METADATA_KEY`] metadata, which tonic
//! sends as a *trailers-only* response: the status sits in the response
//! headers. Each call is therefore buffered (unary and server-streaming
//! requests are one message) and its response headers are looked at:
//!
//! - `UNAVAILABLE` naming a leader other than the replica asked: the channel
//!   moves to the leader and resends the request at once. At most
//!   [`MAX_REDIRECTS_IN_A_ROW`] in a row, so that two replicas pointing at
//!   each other cannot bounce a call forever.
//! - `UNAVAILABLE` naming no leader (an election is in progress, or the
//!   replica is shutting down), or the replica refusing the connection: the
//!   channel moves to the next configured address and resends; after each
//!   round over every address it waits, 100 ms doubling up to 1 s.
//! - Anything else, including an error after the request may have reached
//!   a server, is the answer and is returned as it is.
//!
//! Resending is safe because in these cases the request was not served: a
//! refused connection sent nothing, and the controller answers
//! `UNAVAILABLE` only before doing anything. Retries are bounded by
//! [`MAX_TRIES`] and the retry budget ([`DEFAULT_RETRY_BUDGET`]); then the
//! last answer is returned.
//!
//! What a call learns (the current address, one channel per address) is
//! shared by every clone, so the next call goes straight to the leader.
//! Channels to learned addresses connect lazily.
//!
//! Client-streaming calls must not use this channel: their request is never
//! complete, so it cannot be buffered.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Channel;
use tower_service::Service;
use tracing::debug;

use super::{ClientError, LEADER_METADATA_KEY, canonical_addr, endpoint, parse_addrs};

/// The boxed error of [`LeaderFollowingChannel`], as tonic's clients expect.
pub type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How long one call may keep retrying while no leader answers.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(10);

/// Most sends of one call, redirects included.
pub const MAX_TRIES: u32 = 20;

/// Redirects followed at once, one after the other; more means the replicas
/// disagree about the leader, and the call waits before trying again.
pub const MAX_REDIRECTS_IN_A_ROW: u32 = 5;

/// First wait after every address failed; it doubles up to
/// [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Longest wait between two rounds: an election takes seconds, and a user
/// is waiting.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The `grpc-status` of `UNAVAILABLE`.
const UNAVAILABLE_STATUS: &[u8] = b"14";

/// Stands for the address of a channel handed to
/// [`LeaderFollowingChannel::from_channel`]: it is never dialed by name.
const GIVEN_CHANNEL: &str = "(given channel)";

/// A `tower` service over channels to every controller replica that sends
/// each call to the leader. See the module docs for the rules.
#[derive(Clone)]
pub struct LeaderFollowingChannel {
    shared: Arc<Shared>,
    retry_budget: Duration,
}

struct Shared {
    /// Configured addresses (canonical), tried in turn when no leader is
    /// known; never empty.
    configured: Vec<String>,
    state: Mutex<State>,
}

struct State {
    /// Where the next call goes: the leader as last learned, or the
    /// configured address being tried.
    current: String,
    /// One channel per address ever used; a channel reconnects by itself.
    channels: HashMap<String, Channel>,
}

impl LeaderFollowingChannel {
    /// A channel over `addrs` (comma-separated) that connects on first use,
    /// starting with the first address.
    pub fn lazy(addrs: &str) -> Result<Self, ClientError> {
        let configured = parse_addrs(addrs)?;
        Ok(Self::with_state(configured, None))
    }

    /// Connects to the first reachable address of `addrs`
    /// (comma-separated), which calls go to first; the others are dialed
    /// when needed. Fails when none is reachable.
    pub async fn connect(addrs: &str) -> Result<Self, ClientError> {
        let configured = parse_addrs(addrs)?;
        let mut last_error = None;
        for addr in &configured {
            match endpoint(addr)?.connect().await {
                Ok(channel) => {
                    let open = Some((addr.clone(), channel));
                    return Ok(Self::with_state(configured, open));
                }
                Err(error) => {
                    debug!(controller = %addr, %error, "controller unreachable; trying the next");
                    last_error = Some(error);
                }
            }
        }
        match last_error {
            Some(source) => Err(ClientError::Connect {
                addr: configured.join(","),
                source,
            }),
            None => unreachable!("parse_addrs returns at least one address"),
        }
    }

    /// Calls go over `channel` until a follower redirects them; it is also
    /// where calls return after a leader fails.
    pub fn from_channel(channel: Channel) -> Self {
        let open = Some((GIVEN_CHANNEL.to_string(), channel));
        Self::with_state(vec![GIVEN_CHANNEL.to_string()], open)
    }

    fn with_state(configured: Vec<String>, open: Option<(String, Channel)>) -> Self {
        let current = match &open {
            Some((addr, _)) => addr.clone(),
            None => configured[0].clone(),
        };
        Self {
            shared: Arc::new(Shared {
                configured,
                state: Mutex::new(State {
                    current,
                    channels: open.into_iter().collect(),
                }),
            }),
            retry_budget: DEFAULT_RETRY_BUDGET,
        }
    }

    /// How long one call keeps retrying while no leader answers (default
    /// [`DEFAULT_RETRY_BUDGET`]).
    pub fn with_retry_budget(mut self, budget: Duration) -> Self {
        self.retry_budget = budget;
        self
    }

    /// The address the next call goes to.
    pub fn current_addr(&self) -> String {
        self.shared.state().current.clone()
    }

    /// Sends one buffered request, following redirects and retrying as the
    /// module docs say.
    async fn send(self, request: http::Request<Body>) -> Result<http::Response<Body>, StdError> {
        let (parts, body) = request.into_parts();
        let body: Bytes = body.collect().await?.to_bytes();
        let started = Instant::now();
        let mut delay = FIRST_RETRY_DELAY;
        let mut tries = 0;
        let mut redirects_in_a_row = 0;
        let mut failures_since_wait = 0;
        loop {
            let (addr, channel) = self.shared.current_channel()?;
            let request =
                http::Request::from_parts(parts.clone(), Body::new(Full::new(body.clone())));
            let answer = call(channel, request).await;
            tries += 1;
            let verdict = judge(&answer, &addr);
            if let Verdict::Leader(leader) = &verdict
                && redirects_in_a_row < MAX_REDIRECTS_IN_A_ROW
                && tries < MAX_TRIES
            {
                debug!(from = %addr, %leader, "redirected to the leader");
                redirects_in_a_row += 1;
                self.shared.move_to(&addr, leader.clone());
                continue;
            }
            if matches!(verdict, Verdict::Final) || tries >= MAX_TRIES {
                return answer.map_err(Into::into);
            }
            // No leader here: ask the next replica, and wait after a round.
            debug!(controller = %addr, ?verdict, "no leader answered; trying the next controller");
            let next = self.shared.next_configured(&addr);
            self.shared.move_to(&addr, next);
            failures_since_wait += 1;
            if failures_since_wait >= self.shared.configured.len() {
                if started.elapsed() + delay > self.retry_budget {
                    return answer.map_err(Into::into);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                failures_since_wait = 0;
                redirects_in_a_row = 0;
            }
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // change is one assignment.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current address and its channel, dialed lazily the first time.
    fn current_channel(&self) -> Result<(String, Channel), ClientError> {
        let mut state = self.state();
        let addr = state.current.clone();
        if let Some(channel) = state.channels.get(&addr) {
            return Ok((addr, channel.clone()));
        }
        let channel = endpoint(&addr)?.connect_lazy();
        state.channels.insert(addr.clone(), channel.clone());
        Ok((addr, channel))
    }

    /// Moves to `to`, unless another call already moved away from `from`
    /// (it knows at least as much).
    fn move_to(&self, from: &str, to: String) {
        let mut state = self.state();
        if state.current == from {
            state.current = to;
        }
    }

    /// The configured address after `addr`, or the first one when `addr`
    /// is not configured (a leader that failed).
    fn next_configured(&self, addr: &str) -> String {
        let index = self
            .configured
            .iter()
            .position(|configured| configured == addr)
            .map_or(0, |index| (index + 1) % self.configured.len());
        self.configured[index].clone()
    }
}

impl fmt::Debug for LeaderFollowingChannel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("LeaderFollowingChannel")
            .field("configured", &self.shared.configured)
            .field("current", &self.current_addr())
            .field("retry_budget", &self.retry_budget)
            .finish()
    }
}

impl Service<http::Request<Body>> for LeaderFollowingChannel {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    /// Always ready: each call waits for its own channel.
    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

async fn call(
    mut channel: Channel,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, tonic::transport::Error> {
    poll_fn(|context| channel.poll_ready(context)).await?;
    channel.call(request).await
}

/// What an answer means for the call.
#[derive(Debug)]
enum Verdict {
    /// The caller gets it.
    Final,
    /// A follower named the leader, another replica.
    Leader(String),
    /// Nobody served it and nobody named a leader: try elsewhere.
    NoLeader,
}

fn judge(answer: &Result<http::Response<Body>, tonic::transport::Error>, addr: &str) -> Verdict {
    let response = match answer {
        Ok(response) => response,
        Err(error) if is_connect_error(error) => return Verdict::NoLeader,
        Err(_) => return Verdict::Final,
    };
    let headers = response.headers();
    let unavailable = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == UNAVAILABLE_STATUS);
    if !unavailable {
        return Verdict::Final;
    }
    let leader = headers
        .get(LEADER_METADATA_KEY)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.trim().is_empty())
        .map(canonical_addr)
        .filter(|leader| endpoint(leader).is_ok());
    match leader {
        Some(leader) if leader != addr => Verdict::Leader(leader),
        _ => Verdict::NoLeader,
    }
}

/// Whether the request certainly never left: the connection could not be
/// made (refused, unreachable, timed out).
fn is_connect_error(error: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(addrs: &str) -> LeaderFollowingChannel {
        LeaderFollowingChannel::lazy(addrs).expect("valid addresses")
    }

    fn trailers_only(status: &str, leader: Option<&str>) -> http::Response<Body> {
        let mut response = http::Response::builder().header("grpc-status", status);
        if let Some(leader) = leader {
            response = response.header(LEADER_METADATA_KEY, leader);
        }
        response.body(Body::empty()).expect("valid response")
    }

    #[test]
    fn only_unavailable_headers_are_redirects_or_retries() {
        let here = "http://127.0.0.1:7070";
        let judged = |response| judge(&Ok(response), here);
        assert!(matches!(
            judged(trailers_only("14", Some("127.0.0.1:7071"))),
            Verdict::Leader(leader) if leader == "http://127.0.0.1:7071"
        ));
        assert!(matches!(
            judged(trailers_only("14", Some("http://127.0.0.1:7070/"))),
            Verdict::NoLeader
        ));
        assert!(matches!(
            judged(trailers_only("14", None)),
            Verdict::NoLeader
        ));
        assert!(matches!(
            judged(trailers_only("5", Some("127.0.0.1:7071"))),
            Verdict::Final
        ));
        assert!(matches!(
            judged(http::Response::new(Body::empty())),
            Verdict::Final
        ));
    }

    #[test]
    fn failed_addresses_rotate_through_the_configured_ones() {
        let channel = channel("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3");
        let shared = &channel.shared;
        assert_eq!(channel.current_addr(), "http://127.0.0.1:1");
        assert_eq!(
            shared.next_configured("http://127.0.0.1:1"),
            "http://127.0.0.1:2"
        );
        assert_eq!(
            shared.next_configured("http://127.0.0.1:3"),
            "http://127.0.0.1:1"
        );
        assert_eq!(
            shared.next_configured("http://10.0.0.9:7070"),
            "http://127.0.0.1:1"
        );
        // A move is dropped when another call moved first.
        shared.move_to("http://127.0.0.1:1", "http://10.0.0.9:7070".into());
        shared.move_to("http://127.0.0.1:1", "http://127.0.0.1:2".into());
        assert_eq!(channel.current_addr(), "http://10.0.0.9:7070");
    }
}
