//! The typed client for the Baton API, used by the CLI, the worker and tests.
//!
//! Addresses may be given with or without a scheme (`127.0.0.1:7070` means
//! `http://127.0.0.1:7070`). Message size limits are raised to
//! [`MAX_MESSAGE_BYTES`] so that large DAG specs and run snapshots fit.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::pb::api::dag_service_client::DagServiceClient;
use crate::pb::api::run_service_client::RunServiceClient;
use crate::pb::api::worker_service_client::WorkerServiceClient;

/// Largest gRPC message either side accepts (DAG specs are limited well
/// below this by the controller's configuration).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Metadata key of the `UNAVAILABLE` status a follower controller answers
/// leader-only calls with: the leader's address (`http://host:port`),
/// absent while no leader is known.
pub const LEADER_METADATA_KEY: &str = "baton-leader";

/// Default address of a controller (and of `baton dev`).
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";

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

/// Opens a channel to a controller.
pub async fn connect_channel(addr: &str) -> Result<Channel, ClientError> {
    endpoint(addr)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })
}

/// Clients of every user-facing service over one channel.
#[derive(Debug, Clone)]
pub struct BatonClient {
    pub dags: DagServiceClient<Channel>,
    pub runs: RunServiceClient<Channel>,
}

impl BatonClient {
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        Ok(Self::from_channel(connect_channel(addr).await?))
    }

    pub fn from_channel(channel: Channel) -> Self {
        Self {
            dags: DagServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            runs: RunServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        }
    }
}

/// The worker's client for its stream.
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
}
