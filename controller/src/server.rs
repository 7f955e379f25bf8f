//! Assembling and running a controller: the store, the log store, the
//! scheduler and the gRPC server (with health and reflection) on one port.

use std::sync::Arc;
use std::time::Duration;

use baton_common::client::MAX_MESSAGE_BYTES;
use baton_common::pb::FILE_DESCRIPTOR_SET;
use baton_common::pb::api::dag_service_server::DagServiceServer;
use baton_common::pb::api::run_service_server::RunServiceServer;
use baton_common::pb::api::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{error, info};

use crate::api::dag::DagApi;
use crate::api::run::RunApi;
use crate::api::worker::WorkerApi;
use crate::api::{ApiContext, ApiContextRef};
use crate::config::{ConfigError, ControllerConfig};
use crate::logs::LogStore;
use crate::plan::PlanCache;
use crate::scheduler::{Scheduler, SchedulerError, SchedulerParts};
use crate::store::StoreError;
use crate::store::embedded::EmbeddedStore;

/// How long open streams get to end after shutdown starts.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs a controller on `listener` until `shutdown` is cancelled (or the
/// scheduler fails, which cancels it). Returns after in-flight work was
/// stored and streams were closed.
pub async fn serve(
    listener: TcpListener,
    config: ControllerConfig,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    config.validate()?;
    let config = Arc::new(config);
    let store_path = config.store_path();
    let cache_bytes = config.store_cache_bytes;
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&store_path, cache_bytes))
        .await
        .map_err(|error| StoreError::Io(error.to_string()))??;
    info!(path = %store.path().display(), "embedded store opened");
    let store: crate::store::StoreRef = Arc::new(store);
    let plans = Arc::new(PlanCache::default());
    let logs = Arc::new(LogStore::new(config.log_dir()));
    let (scheduler, scheduler_task) = Scheduler::start(
        SchedulerParts {
            config: Arc::clone(&config),
            store: Arc::clone(&store),
            plans: Arc::clone(&plans),
            logs: Arc::clone(&logs),
        },
        shutdown.clone(),
    )
    .await?;
    let context: ApiContextRef = Arc::new(ApiContext {
        config: Arc::clone(&config),
        store,
        plans,
        logs,
        scheduler,
        shutdown: shutdown.clone(),
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<DagServiceServer<DagApi>>()
        .await;
    health_reporter
        .set_serving::<RunServiceServer<RunApi>>()
        .await;
    health_reporter
        .set_serving::<WorkerServiceServer<WorkerApi>>()
        .await;
    // Reflection describes every service on the port, health included, so
    // `grpcurl` can call any of them without proto files.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let address = listener.local_addr().ok();
    let server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            DagServiceServer::new(DagApi::new(Arc::clone(&context)))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            RunServiceServer::new(RunApi::new(Arc::clone(&context)))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            WorkerServiceServer::new(WorkerApi::new(Arc::clone(&context)))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            // Without nodelay, small messages (an Assign, an Ack) wait for the
            // peer's delayed ACK: ~40 ms per hop.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    if let Some(address) = address {
        info!(%address, controller_id = %config.controller_id, "controller serving");
    }

    let mut server = std::pin::pin!(server);
    let mut scheduler_task = std::pin::pin!(scheduler_task);
    let scheduler_result = tokio::select! {
        result = &mut server => {
            shutdown.cancel();
            let scheduler = scheduler_task.await;
            result?;
            flatten(scheduler)?;
            return Ok(());
        }
        result = &mut scheduler_task => {
            // The scheduler ended first: on shutdown or because it failed.
            if !shutdown.is_cancelled() {
                error!("scheduler stopped; shutting the controller down");
            }
            health_reporter.set_not_serving::<DagServiceServer<DagApi>>().await;
            health_reporter.set_not_serving::<RunServiceServer<RunApi>>().await;
            shutdown.cancel();
            result
        }
    };
    match tokio::time::timeout(SHUTDOWN_DEADLINE, &mut server).await {
        Ok(result) => result?,
        Err(_) => info!(
            "streams still open after {}s; stopping anyway",
            SHUTDOWN_DEADLINE.as_secs()
        ),
    }
    flatten(scheduler_result)
}

fn flatten(
    result: Result<Result<(), SchedulerError>, tokio::task::JoinError>,
) -> Result<(), ControllerError> {
    match result {
        Ok(inner) => inner.map_err(ControllerError::from),
        Err(join) => Err(ControllerError::Scheduler(SchedulerError::Recovery(
            format!("scheduler task panicked: {join}"),
        ))),
    }
}
