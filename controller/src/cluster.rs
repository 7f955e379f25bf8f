//! Cluster mode: a controller replica on etcd. It registers itself, tracks
//! who leads, campaigns, and while it leads runs a scheduler whose every
//! write is fenced on its election key; it steps down at once when the
//! lease is lost, a write is fenced out or etcd cannot be reached, and
//! campaigns again. On graceful shutdown the leader stores what it decided,
//! then resigns so a follower leads at once.

use std::sync::Arc;
use std::time::Duration;

use baton_common::time::now_micros;
use etcd_client::PutOptions;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::cluster::Membership;
use crate::config::ControllerConfig;
use crate::election::{self, Candidate, ElectionError, LeaderInfo};
use crate::logs::LogStoreRef;
use crate::notify::NotificationQueueRef;
use crate::plan::PlanCache;
use crate::role::{LeaderTerm, Role};
use crate::scheduler::{Scheduler, SchedulerParts};
use crate::store::etcd::{EtcdConfig, EtcdStore};
use crate::store::{StoreError, StoreRef, keys};

/// TTL of a controller's membership lease (its `controllers/<id>` key).
const MEMBERSHIP_TTL: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach etcd: {0}")]
    Store(#[from] StoreError),
}

/// Connects to etcd and returns the (unfenced) store for reads, and the
/// future that drives this replica until `shutdown`.
pub async fn start(
    config: Arc<ControllerConfig>,
    address: String,
    plans: Arc<PlanCache>,
    logs: LogStoreRef,
    notifications: NotificationQueueRef,
    role: watch::Sender<Role>,
    shutdown: CancellationToken,
) -> Result<
    (
        StoreRef,
        impl Future<Output = Result<(), ClusterError>> + Send,
    ),
    ClusterError,
> {
    let cluster = config
        .cluster
        .clone()
        .expect("cluster mode has cluster settings");
    let etcd = EtcdStore::connect(EtcdConfig {
        endpoints: cluster.etcd_endpoints.clone(),
        prefix: cluster.etcd_prefix.clone(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
    })
    .await?;
    info!(endpoints = ?cluster.etcd_endpoints, prefix = etcd.prefix(), "connected to etcd");
    let store: StoreRef = Arc::new(etcd.clone());
    let candidate = Candidate {
        name: etcd.absolute_key(keys::LEADER.as_bytes()),
        info: LeaderInfo {
            controller_id: config.controller_id.clone(),
            address: address.clone(),
            term: 0,
        },
        ttl: cluster.lease_ttl,
    };
    let (leader_sender, leader) = watch::channel(None);
    tokio::spawn(election::track_leader(
        etcd.clone(),
        candidate.name.clone(),
        leader_sender,
        shutdown.clone(),
    ));
    tokio::spawn(follow_leader_while_following(
        leader,
        config.controller_id.clone(),
        role.clone(),
        shutdown.clone(),
    ));
    let member = Membership {
        controller_id: config.controller_id.clone(),
        address,
        started_at: now_micros(),
    };
    tokio::spawn(keep_membership(
        etcd.clone(),
        etcd.absolute_key(&keys::controller(&config.controller_id)),
        member,
        shutdown.clone(),
    ));
    let shared = TermShared {
        plans,
        logs,
        notifications,
    };
    let driver = drive(config, etcd, candidate, shared, role, shutdown);
    Ok((store, driver))
}

/// While this replica follows, its role names the current leader. Its own
/// election key, still there for a moment after it stepped down, does not
/// count: callers must not be sent back here.
async fn follow_leader_while_following(
    mut leader: watch::Receiver<Option<LeaderInfo>>,
    own_id: String,
    role: watch::Sender<Role>,
    shutdown: CancellationToken,
) {
    loop {
        let current = leader
            .borrow_and_update()
            .clone()
            .filter(|info| info.controller_id != own_id);
        role.send_if_modified(|role| match role {
            Role::Follower { leader } if *leader != current => {
                *leader = current.clone();
                true
            }
            _ => false,
        });
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// What every term's scheduler shares with the rest of the process, and
/// keeps across terms.
struct TermShared {
    plans: Arc<PlanCache>,
    logs: LogStoreRef,
    notifications: NotificationQueueRef,
}

/// Campaigns, leads, steps down, campaigns again, until `shutdown`.
async fn drive(
    config: Arc<ControllerConfig>,
    etcd: EtcdStore,
    candidate: Candidate,
    shared: TermShared,
    role: watch::Sender<Role>,
    shutdown: CancellationToken,
) -> Result<(), ClusterError> {
    let TermShared {
        plans,
        logs,
        notifications,
    } = shared;
    let mut backoff = Duration::from_millis(100);
    loop {
        let elected = match election::campaign(&etcd, &candidate, &shutdown).await {
            Ok(elected) => elected,
            Err(ElectionError::Cancelled) => return Ok(()),
            Err(error) => {
                warn!(%error, "campaign failed; trying again");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let term = elected.term;
        info!(term, controller_id = %config.controller_id, "elected leader; recovering state from etcd");
        let abort = CancellationToken::new();
        let lost = elected.lost();
        let parts = SchedulerParts {
            config: Arc::clone(&config),
            store: Arc::new(etcd.fenced(elected.fence.clone(), abort.clone())),
            plans: Arc::clone(&plans),
            logs: Arc::clone(&logs),
            notifications: Arc::clone(&notifications),
            term,
            lease: Some(elected.clock.clone()),
        };
        let started = tokio::select! {
            started = Scheduler::start(parts, shutdown.clone(), abort.clone()) => started,
            () = lost.cancelled() => {
                abort.cancel();
                warn!(term, "lease lost while recovering; stepping down");
                elected.release();
                continue;
            }
        };
        let (scheduler, mut task) = match started {
            Ok(started) => started,
            Err(error) => {
                abort.cancel();
                warn!(term, %error, "cannot recover as leader; stepping down");
                elected.release();
                continue;
            }
        };
        let ended = CancellationToken::new();
        role.send_replace(Role::Leader(LeaderTerm {
            scheduler,
            term,
            since: now_micros(),
            ended: ended.clone(),
        }));
        info!(term, "leading");
        let outcome = tokio::select! {
            result = &mut task => Outcome::SchedulerEnded(result),
            () = lost.cancelled() => Outcome::LeaseLost,
            () = shutdown.cancelled() => Outcome::Shutdown,
        };
        match outcome {
            Outcome::Shutdown => {
                // Store what was decided, then hand over at once.
                let result = task.await;
                ended.cancel();
                role.send_replace(Role::Follower { leader: None });
                if let Ok(Err(error)) = result {
                    warn!(term, %error, "scheduler stopped with an error while shutting down");
                }
                elected.resign().await;
                return Ok(());
            }
            Outcome::LeaseLost => {
                abort.cancel();
                let _ = task.await;
                ended.cancel();
                role.send_replace(Role::Follower { leader: None });
                warn!(term, "stepped down: the leader lease could not be renewed");
                elected.release();
            }
            Outcome::SchedulerEnded(result) => {
                abort.cancel();
                ended.cancel();
                role.send_replace(Role::Follower { leader: None });
                match result {
                    Ok(Ok(())) if shutdown.is_cancelled() => {
                        elected.resign().await;
                        return Ok(());
                    }
                    Ok(Ok(())) => warn!(term, "stepped down: the scheduler stopped"),
                    Ok(Err(error)) => warn!(term, %error, "stepped down"),
                    Err(join) => warn!(term, %join, "stepped down: the scheduler task failed"),
                }
                elected.release();
            }
        }
    }
}

enum Outcome {
    SchedulerEnded(Result<Result<(), crate::scheduler::SchedulerError>, tokio::task::JoinError>),
    LeaseLost,
    Shutdown,
}

/// Keeps `controllers/<id>` alive for as long as the controller runs, under
/// a lease of its own, and deletes it on shutdown.
async fn keep_membership(
    etcd: EtcdStore,
    key: Vec<u8>,
    member: Membership,
    shutdown: CancellationToken,
) {
    let value = serde_json::to_vec(&member).unwrap_or_default();
    let period = Duration::from_secs(MEMBERSHIP_TTL as u64 / 3);
    while !shutdown.is_cancelled() {
        let mut client = etcd.client();
        let registered = async {
            let lease = client.lease_grant(MEMBERSHIP_TTL, None).await?.id();
            client
                .put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await?;
            let (keeper, responses) = client.lease_keep_alive(lease).await?;
            Ok::<_, etcd_client::Error>((lease, keeper, responses))
        };
        let (lease, mut keeper, mut responses) =
            match tokio::time::timeout(Duration::from_secs(5), registered).await {
                Ok(Ok(registered)) => registered,
                outcome => {
                    etcd.client_failed();
                    debug!(?outcome, "cannot register the controller yet");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            };
        loop {
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = shutdown.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
                    return;
                }
            }
            let renewed = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            match tokio::time::timeout(period, renewed).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {}
                // Expired or broken: register again (through another member).
                _ => {
                    etcd.client_failed();
                    break;
                }
            }
        }
    }
}
