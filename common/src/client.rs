//! The typed client for the Baton API, used by the CLI, the worker and tests.
//!
//! Addresses may be given with or without a scheme (`127.0.0.1:7070` means
//! `http://127.0.0.1:7070`), and [`BatonClient::connect`] takes several,
//! separated by commas: any controller replica will do, the client finds the
//! leader itself. Message size limits are raised to [`MAX_MESSAGE_BYTES`] so
//! that large DAG specs and run snapshots fit.
//!
//! # Layout
//! - this module: addresses, endpoints, [`BatonClient`] and the worker's
//!   client.
//! - `leader_following`: [`LeaderFollowingChannel`], the transport of
//!   [`BatonClient`] that resends a call to the leader when a follower
//!   answers it, and retries while no leader is known.

mod leader_following;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::pb::api::backfill_service_client::BackfillServiceClient;
use crate::pb::api::cluster_service_client::ClusterServiceClient;
use crate::pb::api::dag_service_client::DagServiceClient;
use crate::pb::api::event_service_client::EventServiceClient;
use crate::pb::api::pool_service_client::PoolServiceClient;
use crate::pb::api::run_service_client::RunServiceClient;
use crate::pb::api::worker_service_client::WorkerServiceClient;

pub use leader_following::{
    DEFAULT_RETRY_BUDGET, LeaderFollowingChannel, MAX_REDIRECTS_IN_A_ROW, MAX_TRIES, StdError,
};

/// Largest gRPC message either side accepts (DAG specs are limited well
/// below this by the controller's configuration).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Metadata key of the `UNAVAILABLE` status a follower controller answers
/// leader-only calls with: the leader's address (`http://host:port`),
/// absent while no leader is known.
pub const LEADER_METADATA_KEY: &str = "baton-leader";

/// Default address of a controller (and of `baton dev`).
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";

/// The `DagService` client of [`BatonClient`].
pub type DagClient = DagServiceClient<LeaderFollowingChannel>;

/// The `RunService` client of [`BatonClient`].
pub type RunClient = RunServiceClient<LeaderFollowingChannel>;

/// The `ClusterService` client of [`BatonClient`].
pub type ClusterClient = ClusterServiceClient<LeaderFollowingChannel>;

/// The `PoolService` client of [`BatonClient`].
pub type PoolClient = PoolServiceClient<LeaderFollowingChannel>;

/// The `BackfillService` client of [`BatonClient`].
pub type BackfillClient = BackfillServiceClient<LeaderFollowingChannel>;

/// The `EventService` client of [`BatonClient`] (events and assets).
pub type EventClient = EventServiceClient<LeaderFollowingChannel>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid controller address `{addr}`: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("cannot connect to the controller at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Adds `http://` when the address has no scheme.
pub fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// The one spelling of an address used to compare them: with a scheme, no
/// surrounding spaces and no trailing slash.
fn canonical_addr(addr: &str) -> String {
    normalize_addr(addr.trim())
        .trim_end_matches('/')
        .to_string()
}

/// Splits a comma-separated list of controller addresses
/// (`127.0.0.1:7070,127.0.0.1:7071`) into canonical addresses (with a
/// scheme), in order and without duplicates. Every entry must be a valid
/// address; an empty entry is an error.
pub fn parse_addrs(addrs: &str) -> Result<Vec<String>, ClientError> {
    let mut parsed: Vec<String> = Vec::new();
    for addr in addrs.split(',') {
        if addr.trim().is_empty() {
            return Err(ClientError::InvalidAddress {
                addr: addrs.to_string(),
                reason: "the list has an empty address (addresses are separated by commas)"
                    .to_string(),
            });
        }
        let addr = canonical_addr(addr);
        endpoint(&addr)?;
        if !parsed.contains(&addr) {
            parsed.push(addr);
        }
    }
    Ok(parsed)
}

pub fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    let normalized = normalize_addr(addr);
    Endpoint::from_shared(normalized)
        .map(|endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        })
        .map_err(|error| ClientError::InvalidAddress {
            addr: addr.to_string(),
            reason: error.to_string(),
        })
}

/// Opens a channel to one controller.
pub async fn connect_channel(addr: &str) -> Result<Channel, ClientError> {
    endpoint(addr)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })
}

/// Clients of every user-facing service over one [`LeaderFollowingChannel`]:
/// every call reaches the leader whichever replica it was sent to. Clones
/// share the channel and what it learned about the leader.
#[derive(Debug, Clone)]
pub struct BatonClient {
    pub dags: DagClient,
    pub runs: RunClient,
    pub cluster: ClusterClient,
    pub pools: PoolClient,
    pub backfills: BackfillClient,
    pub events: EventClient,
    transport: LeaderFollowingChannel,
}

impl BatonClient {
    /// Connects to the first reachable controller of `addrs`, a
    /// comma-separated list of addresses of controller replicas. Fails when
    /// none is reachable.
    pub async fn connect(addrs: &str) -> Result<Self, ClientError> {
        Ok(Self::new(LeaderFollowingChannel::connect(addrs).await?))
    }

    /// A client over an open channel; redirects to the leader are followed
    /// on channels of their own.
    pub fn from_channel(channel: Channel) -> Self {
        Self::new(LeaderFollowingChannel::from_channel(channel))
    }

    pub fn new(transport: LeaderFollowingChannel) -> Self {
        Self {
            dags: DagServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            runs: RunServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            cluster: ClusterServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            pools: PoolServiceClient::new(transport.clone()),
            // A backfill's intervals (GetBackfill) and a page of asset
            // updates can be large.
            backfills: BackfillServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            events: EventServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            transport,
        }
    }

    /// The shared transport, to build clients of other services that follow
    /// the leader too (unary and server-streaming calls only).
    pub fn transport(&self) -> &LeaderFollowingChannel {
        &self.transport
    }
}

/// The worker's client for its stream. `Connect` is client-streaming, so it
/// cannot go through a [`LeaderFollowingChannel`]: the worker follows the
/// leader itself.
pub fn worker_client(channel: Channel) -> WorkerServiceClient<Channel> {
    WorkerServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_without_scheme_use_http() {
        assert_eq!(normalize_addr("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(normalize_addr("https://baton:443"), "https://baton:443");
        assert!(endpoint("127.0.0.1:7070").is_ok());
    }

    #[test]
    fn address_lists_are_split_normalized_and_deduplicated() {
        assert_eq!(
            parse_addrs("127.0.0.1:7070").unwrap(),
            ["http://127.0.0.1:7070"]
        );
        assert_eq!(
            parse_addrs(" 127.0.0.1:7070, http://127.0.0.1:7071/,127.0.0.1:7070").unwrap(),
            ["http://127.0.0.1:7070", "http://127.0.0.1:7071"]
        );
        for bad in ["", " ", "127.0.0.1:7070,", "a:1,,b:2"] {
            let error = parse_addrs(bad).unwrap_err();
            assert!(
                error.to_string().contains("empty address"),
                "{bad:?}: {error}"
            );
        }
        assert!(matches!(
            parse_addrs("127.0.0.1:7070,http://[::1"),
            Err(ClientError::InvalidAddress { .. })
        ));
    }
}
