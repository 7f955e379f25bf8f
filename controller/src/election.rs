//! Leader election on etcd: a lease kept alive by its own task, a campaign
//! through etcd's election API, and the fencing token it yields; plus
//! tracking who the leader is, for followers.
//!
//! A controller counts as leader only while its lease is known to be alive:
//! [`LeaseClock`] says so until two thirds of the TTL after the last
//! keep-alive that etcd acknowledged was sent. The keep-alive task renews
//! every third of the TTL; when no renewal succeeds within that window (etcd
//! unreachable, lease expired), it cancels [`Elected::lost`] and the
//! controller steps down at once. The election key's create revision is the
//! fencing token every leader transaction compares, and the leader's term.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, GetOptions, LeaderKey, ResignOptions, SortOrder, SortTarget, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::store::etcd::{EtcdStore, Fence};

/// How long an etcd request of the election may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Who leads, as written in the election key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub controller_id: String,
    pub address: String,
    /// The election key's create revision (filled in from etcd, not stored).
    #[serde(skip)]
    pub term: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the lease expired before the campaign ended")]
    LeaseLost,
    #[error("the campaign was cancelled")]
    Cancelled,
}

async fn bounded<T>(
    future: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ElectionError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, future).await {
        Ok(result) => result.map_err(ElectionError::from),
        Err(_) => Err(ElectionError::Timeout(REQUEST_TIMEOUT)),
    }
}

/// Whether the lease can still be trusted, from the controller's own clock.
/// Cheap to check anywhere (the scheduler checks it before acting on a
/// committed batch), so a controller resumed after a long pause knows at
/// once that it may no longer lead, before any task notices.
#[derive(Clone, Debug)]
pub struct LeaseClock {
    origin: Instant,
    /// Microseconds after `origin` until which the lease is trusted.
    valid_until: Arc<AtomicU64>,
    window: Duration,
}

impl LeaseClock {
    fn new(ttl: Duration) -> Self {
        Self {
            origin: Instant::now(),
            valid_until: Arc::new(AtomicU64::new(0)),
            window: ttl * 2 / 3,
        }
    }

    /// etcd acknowledged a keep-alive sent at `sent`: the lease lives at least
    /// a TTL from then; trust it for two thirds of that.
    fn renewed(&self, sent: Instant) {
        let until = (sent + self.window)
            .saturating_duration_since(self.origin)
            .as_micros() as u64;
        self.valid_until.fetch_max(until, Ordering::AcqRel);
    }

    pub fn is_valid(&self) -> bool {
        let now = Instant::now()
            .saturating_duration_since(self.origin)
            .as_micros() as u64;
        now < self.valid_until.load(Ordering::Acquire)
    }
}

/// Settings of one controller's candidacy.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Absolute election name, e.g. `/baton/leader`.
    pub name: Vec<u8>,
    pub info: LeaderInfo,
    pub ttl: Duration,
}

/// Leadership won: the fencing token, the lease, and its keep-alive.
pub struct Elected {
    pub fence: Fence,
    pub term: i64,
    pub clock: LeaseClock,
    lease_id: i64,
    leader_key: LeaderKey,
    lost: CancellationToken,
    keepalive: JoinHandle<()>,
    etcd: EtcdStore,
}

impl Elected {
    /// Cancelled when the lease can no longer be trusted.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Gives leadership up on purpose (graceful shutdown): deletes the
    /// election key and revokes the lease so a follower leads at once.
    pub async fn resign(self) {
        self.keepalive.abort();
        let mut client = self.etcd.client();
        let options = ResignOptions::new().with_leader(self.leader_key.clone());
        match bounded(client.resign(Some(options))).await {
            Ok(_) => info!(term = self.term, "resigned leadership"),
            Err(error) => warn!(term = self.term, %error, "cannot resign; the lease will expire"),
        }
        if let Err(error) = bounded(client.lease_revoke(self.lease_id)).await {
            warn!(%error, "cannot revoke the leader lease; it will expire");
        }
        self.keepalive.abort();
    }

    /// After a step-down: revokes the lease in the background, so that if
    /// etcd is reachable again another controller need not wait for expiry.
    pub fn release(self) {
        self.keepalive.abort();
        let etcd = self.etcd.clone();
        let lease_id = self.lease_id;
        tokio::spawn(async move {
            for attempt in 0..10u32 {
                let mut client = etcd.client();
                match bounded(client.lease_revoke(lease_id)).await {
                    Ok(_) => return debug!(lease_id, "stale leader lease revoked"),
                    // Gone already (expired): nothing to do.
                    Err(ElectionError::Etcd(etcd_client::Error::GRpcStatus(status)))
                        if status.code() == tonic::Code::NotFound =>
                    {
                        return;
                    }
                    Err(error) => {
                        etcd.client_failed();
                        debug!(lease_id, attempt, %error, "cannot revoke the stale lease yet");
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

impl Drop for Elected {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// Campaigns until elected, `cancel` fires, or the lease cannot be kept.
pub async fn campaign(
    etcd: &EtcdStore,
    candidate: &Candidate,
    cancel: &CancellationToken,
) -> Result<Elected, ElectionError> {
    let result = campaign_once(etcd, candidate, cancel).await;
    if matches!(
        result,
        Err(ElectionError::Etcd(_) | ElectionError::Timeout(_))
    ) {
        // The next campaign goes to another etcd member.
        etcd.client_failed();
    }
    result
}

async fn campaign_once(
    etcd: &EtcdStore,
    candidate: &Candidate,
    cancel: &CancellationToken,
) -> Result<Elected, ElectionError> {
    let mut client = etcd.client();
    let ttl_seconds = candidate.ttl.as_secs().max(1) as i64;
    let lease_id = bounded(client.lease_grant(ttl_seconds, None)).await?.id();
    let clock = LeaseClock::new(candidate.ttl);
    let lost = CancellationToken::new();
    // Count as a candidate only once a first keep-alive succeeded.
    let sent = Instant::now();
    let (mut keeper, mut responses) = bounded(client.lease_keep_alive(lease_id)).await?;
    bounded(keeper.keep_alive()).await?;
    match bounded(responses.message()).await? {
        Some(response) if response.ttl() > 0 => clock.renewed(sent),
        _ => return Err(ElectionError::LeaseLost),
    }
    let keepalive = tokio::spawn(keep_alive(
        etcd.clone(),
        lease_id,
        candidate.ttl,
        clock.clone(),
        lost.clone(),
        keeper,
        responses,
    ));
    let value = serde_json::to_vec(&candidate.info).unwrap_or_default();
    let campaign = client.campaign(candidate.name.clone(), value, lease_id);
    let response = tokio::select! {
        response = campaign => response,
        () = cancel.cancelled() => {
            keepalive.abort();
            let _ = bounded(client.lease_revoke(lease_id)).await;
            return Err(ElectionError::Cancelled);
        }
        () = lost.cancelled() => {
            keepalive.abort();
            return Err(ElectionError::LeaseLost);
        }
    };
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            keepalive.abort();
            let _ = bounded(client.lease_revoke(lease_id)).await;
            return Err(error.into());
        }
    };
    let Some(leader_key) = response.leader().cloned() else {
        keepalive.abort();
        return Err(ElectionError::LeaseLost);
    };
    if !clock.is_valid() {
        keepalive.abort();
        return Err(ElectionError::LeaseLost);
    }
    let fence = Fence {
        key: leader_key.key().to_vec(),
        create_revision: leader_key.rev(),
    };
    Ok(Elected {
        term: fence.create_revision,
        fence,
        clock,
        lease_id,
        leader_key,
        lost,
        keepalive,
        etcd: etcd.clone(),
    })
}

/// Renews the lease every third of its TTL. A renewal that fails is tried
/// again at once on another etcd member (a member that died must not cost
/// the lease); `lost` is cancelled when no renewal succeeds within the
/// trusted window, or etcd says the lease expired.
async fn keep_alive(
    etcd: EtcdStore,
    lease_id: i64,
    ttl: Duration,
    clock: LeaseClock,
    lost: CancellationToken,
    mut keeper: etcd_client::LeaseKeeper,
    mut responses: etcd_client::LeaseKeepAliveStream,
) {
    let period = ttl / 3;
    // Several tries fit in the trusted window.
    let try_timeout = (ttl / 8).max(Duration::from_millis(100));
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next.into()).await;
        loop {
            let sent = Instant::now();
            let renewal = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            match tokio::time::timeout(try_timeout, renewal).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {
                    clock.renewed(sent);
                    next = sent + period;
                    break;
                }
                Ok(Ok(Some(_))) => {
                    warn!(lease_id, "leader lease expired");
                    lost.cancel();
                    return;
                }
                outcome => {
                    debug!(
                        lease_id,
                        ?outcome,
                        "lease renewal failed; trying another etcd member"
                    );
                    etcd.client_failed();
                    let mut client = etcd.client();
                    if let Ok(Ok((new_keeper, new_responses))) =
                        tokio::time::timeout(try_timeout, client.lease_keep_alive(lease_id)).await
                    {
                        keeper = new_keeper;
                        responses = new_responses;
                    }
                }
            }
            if !clock.is_valid() {
                warn!(
                    lease_id,
                    "no lease renewal within the trusted window; stepping down"
                );
                lost.cancel();
                return;
            }
        }
    }
}

/// Keeps `leader` up to date with the current leader (the election key with
/// the lowest create revision), or `None` while there is none.
pub async fn track_leader(
    etcd: EtcdStore,
    name: Vec<u8>,
    leader: watch::Sender<Option<LeaderInfo>>,
    stop: CancellationToken,
) {
    let mut prefix = name;
    prefix.push(b'/');
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let result = tokio::select! {
            result = follow_leader(etcd.client(), &prefix, &leader) => result,
            () = stop.cancelled() => return,
        };
        if let Err(error) = result {
            etcd.client_failed();
            debug!(%error, "leader tracking interrupted; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn follow_leader(
    mut client: Client,
    prefix: &[u8],
    leader: &watch::Sender<Option<LeaderInfo>>,
) -> Result<(), ElectionError> {
    loop {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let response = bounded(client.get(prefix, Some(options))).await?;
        let current = response.kvs().first().and_then(|kv| {
            let mut info: LeaderInfo = serde_json::from_slice(kv.value()).ok()?;
            info.term = kv.create_revision();
            Some(info)
        });
        leader.send_if_modified(|known| {
            let changed = *known != current;
            *known = current.clone();
            changed
        });
        let revision = response.header().map_or(0, |header| header.revision());
        let mut events = bounded(
            client.watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        // Any change under the prefix may change the leader: read it again.
        // The first answer only confirms the watch was created; it is not
        // a change.
        loop {
            match events.message().await? {
                Some(response) if response.created() && response.events().is_empty() => continue,
                Some(_) => break,
                None => return Ok(()),
            }
        }
    }
}
