//! Assembling and running a controller: the store, the log store, the
//! leadership driver (a single controller on the embedded store, or a
//! replica of a cluster on etcd) and the gRPC server, with health and
//! reflection, on one port.

use std::sync::Arc;
use std::time::Duration;

use baton_common::client::MAX_MESSAGE_BYTES;
use baton_common::pb::FILE_DESCRIPTOR_SET;
use baton_common::pb::api::backfill_service_server::BackfillServiceServer;
use baton_common::pb::api::cluster_service_server::ClusterServiceServer;
use baton_common::pb::api::dag_service_server::DagServiceServer;
use baton_common::pb::api::event_service_server::EventServiceServer;
use baton_common::pb::api::pool_service_server::PoolServiceServer;
use baton_common::pb::api::run_service_server::RunServiceServer;
use baton_common::pb::api::worker_service_server::WorkerServiceServer;
use baton_common::time::now_micros;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{error, info};

use crate::api::cluster::ClusterApi;
use crate::api::dag::DagApi;
use crate::api::pool::PoolApi;
use crate::api::run::RunApi;
use crate::api::schedule::ScheduleApi;
use crate::api::worker::WorkerApi;
use crate::api::{ApiContext, ApiContextRef};
use crate::cluster::{self, ClusterError};
use crate::config::{ConfigError, ControllerConfig};
use crate::logs::LogStore;
use crate::notify::NotificationQueue;
use crate::plan::PlanCache;
use crate::role::{LeaderTerm, Role};
use crate::scheduler::{Scheduler, SchedulerError, SchedulerParts};
use crate::store::embedded::EmbeddedStore;
use crate::store::{StoreError, StoreRef};

/// How long open streams get to end after shutdown starts.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot open the log store: {0}")]
    Logs(#[from] crate::logs::LogStoreError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("a controller task failed: {0}")]
    Task(String),
    #[error("cannot serve metrics: {0}")]
    Metrics(String),
}

/// Runs a controller on `listener` until `shutdown` is cancelled (or its
/// scheduler fails on the embedded store, which cancels it). Returns after
/// in-flight work was stored, leadership resigned and streams closed.
pub async fn serve(
    listener: TcpListener,
    config: ControllerConfig,
    shutdown: CancellationToken,
) -> Result<(), ControllerError> {
    config.validate()?;
    let config = Arc::new(config);
    let local = listener.local_addr().map_err(|error| {
        ControllerError::Task(format!("cannot read the bound address: {error}"))
    })?;
    let address = match &config.cluster {
        Some(cluster) => cluster.advertise_address.clone(),
        None => format!("http://{local}"),
    };
    let plans = Arc::new(PlanCache::default());
    let logs = Arc::new(match &config.log_url {
        Some(url) => LogStore::open_url(url)?,
        None => LogStore::local(&config.log_dir())?,
    });
    info!(location = %logs.location(), retention = ?config.log_retention.map(humantime::format_duration), "task log store opened");
    let (role_sender, role) = watch::channel(Role::Follower { leader: None });
    // One queue for the process: every term's scheduler submits to it, and
    // deliveries in progress survive a step-down (what they report was
    // committed).
    let notify_shutdown = CancellationToken::new();
    let (notifications, notify_task) = NotificationQueue::start(
        config.notify.delivery.clone(),
        config.notify.default_notifiers()?,
        notify_shutdown.clone(),
    );
    let _notify_drop_guard = notify_shutdown.clone().drop_guard();

    // The store every replica reads, and the driver that makes this
    // controller lead (and stop leading).
    let (store, driver): (StoreRef, _) = match &config.cluster {
        None => {
            let store_path = config.store_path();
            let cache_bytes = config.store_cache_bytes;
            let store =
                tokio::task::spawn_blocking(move || EmbeddedStore::open(&store_path, cache_bytes))
                    .await
                    .map_err(|error| StoreError::Io(error.to_string()))??;
            info!(path = %store.path().display(), "embedded store opened");
            let store: StoreRef = Arc::new(store);
            let parts = SchedulerParts {
                config: Arc::clone(&config),
                store: Arc::clone(&store),
                plans: Arc::clone(&plans),
                logs: Arc::clone(&logs),
                notifications: Arc::clone(&notifications),
                term: 0,
                lease: None,
            };
            // Recover before serving, so the first request finds a leader.
            let ended = CancellationToken::new();
            let (scheduler, task) =
                Scheduler::start(parts, shutdown.clone(), CancellationToken::new()).await?;
            role_sender.send_replace(Role::Leader(LeaderTerm {
                scheduler,
                term: 0,
                since: now_micros(),
                ended: ended.clone(),
            }));
            let driver: std::pin::Pin<
                Box<dyn Future<Output = Result<(), ControllerError>> + Send>,
            > = Box::pin(drive_single(task, ended, role_sender));
            (store, driver)
        }
        Some(_) => {
            let (store, driver) = cluster::start(
                Arc::clone(&config),
                address.clone(),
                Arc::clone(&plans),
                Arc::clone(&logs),
                Arc::clone(&notifications),
                role_sender,
                shutdown.clone(),
            )
            .await?;
            let driver: std::pin::Pin<
                Box<dyn Future<Output = Result<(), ControllerError>> + Send>,
            > = Box::pin(async move { driver.await.map_err(ControllerError::from) });
            (store, driver)
        }
    };
    let context: ApiContextRef = Arc::new(ApiContext {
        config: Arc::clone(&config),
        store,
        plans,
        logs,
        role: role.clone(),
        address: address.clone(),
        started_at: now_micros(),
        shutdown: shutdown.clone(),
        notifications,
    });

    if let Some(address) = config.metrics_listen {
        let listener = TcpListener::bind(address).await.map_err(|error| {
            ControllerError::Metrics(format!("metrics_listen {address}: {error}"))
        })?;
        crate::metrics::enable();
        tokio::spawn(crate::metrics::serve(
            listener,
            Arc::clone(&context),
            shutdown.clone(),
        ));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(health_reporter, role, shutdown.clone()));
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
        .add_service(ClusterServiceServer::new(ClusterApi::new(Arc::clone(
            &context,
        ))))
        .add_service(PoolServiceServer::new(PoolApi::new(Arc::clone(&context))))
        .add_service(BackfillServiceServer::new(ScheduleApi::new(Arc::clone(
            &context,
        ))))
        .add_service(EventServiceServer::new(ScheduleApi::new(Arc::clone(
            &context,
        ))))
        .serve_with_incoming_shutdown(
            // Without nodelay, small messages (an Assign, an Ack) wait for the
            // peer's delayed ACK: ~40 ms per hop.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    info!(%local, %address, controller_id = %config.controller_id, "controller serving");

    let mut server = std::pin::pin!(server);
    let mut driver = driver;
    let driver_result = tokio::select! {
        result = &mut server => {
            shutdown.cancel();
            let driven = driver.await;
            stop_notifications(notify_shutdown, notify_task).await;
            result?;
            return driven;
        }
        result = &mut driver => {
            // The driver ended first: on shutdown, or because it failed.
            if !shutdown.is_cancelled() {
                error!("the controller cannot go on; shutting down");
            }
            shutdown.cancel();
            result
        }
    };
    // The scheduler stored what it decided: what it could notify is queued.
    stop_notifications(notify_shutdown, notify_task).await;
    match tokio::time::timeout(SHUTDOWN_DEADLINE, &mut server).await {
        Ok(result) => result?,
        Err(_) => info!(
            "streams still open after {}s; stopping anyway",
            SHUTDOWN_DEADLINE.as_secs()
        ),
    }
    driver_result
}

/// Stops notification delivery: queued and unfinished deliveries are
/// dropped and counted (the delivery task logs how many).
async fn stop_notifications(
    notify_shutdown: CancellationToken,
    notify_task: tokio::task::JoinHandle<()>,
) {
    notify_shutdown.cancel();
    if let Err(error) = notify_task.await {
        error!(%error, "notification delivery task panicked");
    }
}

/// A single controller on the embedded store: it leads from start to end.
/// A scheduler failure (the store failed) ends the controller.
async fn drive_single(
    task: tokio::task::JoinHandle<Result<(), SchedulerError>>,
    ended: CancellationToken,
    role: watch::Sender<Role>,
) -> Result<(), ControllerError> {
    let result = task.await;
    ended.cancel();
    role.send_replace(Role::Follower { leader: None });
    match result {
        Ok(inner) => inner.map_err(ControllerError::from),
        Err(join) => Err(ControllerError::Task(format!(
            "scheduler task panicked: {join}"
        ))),
    }
}

/// Keeps the health service in step with the role: the process is always
/// SERVING; WorkerService and ClusterService only on the leader (followers
/// answer them with a redirect); DagService, RunService, BackfillService and
/// EventService everywhere (any replica answers reads and sends writes to
/// the leader).
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    mut role: watch::Receiver<Role>,
    shutdown: CancellationToken,
) {
    reporter.set_serving::<DagServiceServer<DagApi>>().await;
    reporter.set_serving::<RunServiceServer<RunApi>>().await;
    reporter
        .set_serving::<BackfillServiceServer<ScheduleApi>>()
        .await;
    reporter
        .set_serving::<EventServiceServer<ScheduleApi>>()
        .await;
    loop {
        let leader = role.borrow_and_update().is_leader();
        if leader {
            reporter
                .set_serving::<WorkerServiceServer<WorkerApi>>()
                .await;
            reporter
                .set_serving::<ClusterServiceServer<ClusterApi>>()
                .await;
            reporter.set_serving::<PoolServiceServer<PoolApi>>().await;
        } else {
            reporter
                .set_not_serving::<WorkerServiceServer<WorkerApi>>()
                .await;
            reporter
                .set_not_serving::<ClusterServiceServer<ClusterApi>>()
                .await;
            reporter
                .set_not_serving::<PoolServiceServer<PoolApi>>()
                .await;
        }
        tokio::select! {
            changed = role.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
    reporter.set_not_serving::<DagServiceServer<DagApi>>().await;
    reporter.set_not_serving::<RunServiceServer<RunApi>>().await;
}
