//! The worker against a controller played by the test: a small
//! `WorkerService` on 127.0.0.1 that hands each stream to the test, which
//! then speaks the protocol message by message. A controller may also play
//! a follower, which refuses streams like a real one does: `UNAVAILABLE`
//! with the leader's address in the `baton-leader` metadata when it knows
//! it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_common::client::LEADER_METADATA_KEY;
use baton_common::ids::{AttemptId, RunId};
use baton_common::pb::api::worker_message::Message as FromWorker;
use baton_common::pb::api::worker_service_server::{WorkerService, WorkerServiceServer};
use baton_common::pb::api::{self, AttemptOutcome, controller_message::Message as ToWorker};
use baton_common::time;
use baton_worker::{WorkerConfig, WorkerError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

type Outbound = mpsc::UnboundedSender<Result<api::ControllerMessage, Status>>;

/// What a test controller does with a new stream.
#[derive(Debug, Clone)]
enum Role {
    /// Hands it to the test.
    Leader,
    /// Refuses it, naming the leader (`http://host:port`) when it knows it.
    Follower(Option<String>),
}

/// Hands every stream a worker opens to the test, or refuses it.
struct TestController {
    streams: mpsc::UnboundedSender<(Streaming<api::WorkerMessage>, Outbound)>,
    role: Arc<Mutex<Role>>,
    refused: Arc<AtomicUsize>,
}

impl TestController {
    fn refuse(&self) -> Result<(), Status> {
        let role = self.role.lock().expect("role lock").clone();
        let Role::Follower(leader) = role else {
            return Ok(());
        };
        self.refused.fetch_add(1, Ordering::SeqCst);
        let Some(leader) = leader else {
            return Err(Status::unavailable(
                "not the leader; no leader is elected yet; retry shortly",
            ));
        };
        let mut status = Status::unavailable(format!("not the leader; the leader is at {leader}"));
        status.metadata_mut().insert(
            LEADER_METADATA_KEY,
            leader.parse().expect("an ascii address"),
        );
        Err(status)
    }
}

#[tonic::async_trait]
impl WorkerService for TestController {
    type ConnectStream = UnboundedReceiverStream<Result<api::ControllerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<api::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        self.refuse()?;
        let (outbound, receiver) = mpsc::unbounded_channel();
        self.streams
            .send((request.into_inner(), outbound))
            .map_err(|_| Status::unavailable("the test is over"))?;
        Ok(Response::new(UnboundedReceiverStream::new(receiver)))
    }
}

/// The test's controller: a server on a free loopback port.
struct Controller {
    addr: String,
    streams: mpsc::UnboundedReceiver<(Streaming<api::WorkerMessage>, Outbound)>,
    role: Arc<Mutex<Role>>,
    /// Streams refused as a follower.
    refused: Arc<AtomicUsize>,
    stop: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Controller {
    async fn start() -> Self {
        Self::start_as(Role::Leader).await
    }

    async fn start_as(role: Role) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (sender, streams) = mpsc::unbounded_channel();
        let role = Arc::new(Mutex::new(role));
        let refused = Arc::new(AtomicUsize::new(0));
        let service = TestController {
            streams: sender,
            role: role.clone(),
            refused: refused.clone(),
        };
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(WorkerServiceServer::new(service))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        Self {
            addr,
            streams,
            role,
            refused,
            stop,
            server,
        }
    }

    /// The address a controller advertises as the leader's.
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_role(&self, role: Role) {
        *self.role.lock().expect("role lock") = role;
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Waits until the controller has refused `count` streams in all.
    async fn wait_refused(&self, count: usize) {
        tokio::time::timeout(LIMIT, async {
            while self.refused() < count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the worker tries this controller in time");
    }

    /// The next stream a worker opens.
    async fn accept(&mut self) -> Session {
        let (inbound, outbound) = tokio::time::timeout(LIMIT, self.streams.recv())
            .await
            .expect("the worker connects in time")
            .expect("server up");
        Session { inbound, outbound }
    }

    async fn stop(self) {
        self.stop.cancel();
        let stopped = tokio::time::timeout(LIMIT, self.server)
            .await
            .expect("server stops in time");
        stopped.expect("server task").expect("server ran");
    }
}

/// One stream, seen from the controller's side.
struct Session {
    inbound: Streaming<api::WorkerMessage>,
    outbound: Outbound,
}

impl Session {
    async fn recv(&mut self) -> FromWorker {
        let message = tokio::time::timeout(LIMIT, self.inbound.message())
            .await
            .expect("a message in time")
            .expect("the stream is healthy")
            .expect("the stream is open");
        message.message.expect("a message body")
    }

    /// The next message that is not a heartbeat.
    async fn recv_work(&mut self) -> FromWorker {
        loop {
            match self.recv().await {
                FromWorker::Heartbeat(_) => continue,
                other => return other,
            }
        }
    }

    async fn recv_heartbeat(&mut self) -> api::Heartbeat {
        loop {
            if let FromWorker::Heartbeat(heartbeat) = self.recv().await {
                return heartbeat;
            }
        }
    }

    async fn recv_draining_heartbeat(&mut self) -> api::Heartbeat {
        loop {
            let heartbeat = self.recv_heartbeat().await;
            if heartbeat.draining {
                return heartbeat;
            }
        }
    }

    /// Waits for the worker to close its side of the stream.
    async fn expect_end(&mut self) {
        loop {
            let message = tokio::time::timeout(LIMIT, self.inbound.message())
                .await
                .expect("the stream ends in time");
            match message.expect("the stream is healthy") {
                None => return,
                Some(api::WorkerMessage {
                    message: Some(FromWorker::Heartbeat(_)),
                }) => {}
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Asserts that nothing but heartbeats arrives for `quiet`.
    async fn expect_only_heartbeats(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(message) = tokio::time::timeout_at(deadline, self.inbound.message()).await {
            let message = message
                .expect("healthy")
                .expect("open")
                .message
                .expect("body");
            assert!(
                matches!(message, FromWorker::Heartbeat(_)),
                "unexpected {message:?}"
            );
        }
    }

    /// Takes a Register that announces no attempt, accepts it, and sees
    /// nothing but heartbeats for a while.
    async fn register_announcing_nothing(&mut self) {
        let register = self.expect_register().await;
        assert!(
            register.attempt_ids.is_empty(),
            "{:?}",
            register.attempt_ids
        );
        self.register_ok();
        self.expect_only_heartbeats(Duration::from_millis(400))
            .await;
    }

    async fn expect_register(&mut self) -> api::Register {
        match self.recv().await {
            FromWorker::Register(register) => register,
            other => panic!("Register must come first, got {other:?}"),
        }
    }

    fn send(&self, message: ToWorker) {
        self.outbound
            .send(Ok(api::ControllerMessage {
                message: Some(message),
            }))
            .expect("the stream is open");
    }

    /// Ends the stream with an error, as a controller that steps down does.
    fn fail(self, status: Status) {
        let _ = self.outbound.send(Err(status));
    }

    fn register_ok(&self) {
        self.send(ToWorker::Registered(api::Registered {
            controller_id: "test-controller".into(),
            heartbeat_interval: Some(time::duration_to_proto(Duration::from_millis(100))),
        }));
    }

    /// Receives one attempt's messages up to its result; returns the log
    /// (checking that offsets continue from `from`), the pid of the
    /// TaskStarted seen (0 for a task that runs in the worker), and the
    /// result.
    async fn recv_until_result(
        &mut self,
        attempt_id: AttemptId,
        from: u64,
    ) -> (Vec<u8>, Option<u32>, api::TaskResult) {
        let mut log = Vec::new();
        let mut started = None;
        loop {
            match self.recv_work().await {
                FromWorker::TaskStarted(message) => {
                    assert_eq!(message.attempt_id, attempt_id.to_string());
                    assert!(message.started_at.is_some());
                    assert!(
                        log.is_empty() || from > 0,
                        "TaskStarted comes before the log of a first stream"
                    );
                    started = Some(message.pid);
                }
                FromWorker::LogChunk(chunk) => {
                    assert_eq!(chunk.attempt_id, attempt_id.to_string());
                    assert_eq!(
                        chunk.offset,
                        from + log.len() as u64,
                        "chunks are contiguous"
                    );
                    log.extend_from_slice(&chunk.data);
                }
                FromWorker::TaskResult(result) => {
                    assert_eq!(result.attempt_id, attempt_id.to_string());
                    return (log, started, result);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn assign(attempt_id: AttemptId, script: &str) -> ToWorker {
    ToWorker::Assign(assign_kind(
        attempt_id,
        api::assign::Kind::Command(api::CommandTask {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: Default::default(),
            cwd: String::new(),
        }),
    ))
}

/// An assignment of a daily run's task: logical date 2024-01-02, data
/// interval the day before.
fn assign_kind(attempt_id: AttemptId, kind: api::assign::Kind) -> api::Assign {
    let day = |seconds: i64| Some(prost_types::Timestamp { seconds, nanos: 0 });
    api::Assign {
        attempt_id: attempt_id.to_string(),
        dag_id: "etl".into(),
        run_id: RunId::generate().to_string(),
        task_id: "extract".into(),
        attempt: 1,
        logical_date: day(1_704_153_600),
        params_json: "{}".into(),
        kind: Some(kind),
        timeout: None,
        max_output_bytes: 0,
        data_interval_start: day(1_704_067_200),
        data_interval_end: day(1_704_153_600),
        map_index: None,
        ..Default::default()
    }
}

/// A sensor waiting for `path`.
fn file_sensor(path: &str, reschedule: bool) -> api::assign::Kind {
    api::assign::Kind::Sensor(api::SensorTask {
        condition: Some(api::sensor_task::Condition::File(api::FileCondition {
            path: path.into(),
        })),
        poke_interval: Some(time::duration_to_proto(Duration::from_secs(600))),
        reschedule,
        deadline: None,
    })
}

fn ack(attempt_id: AttemptId, log_offset: u64, result_recorded: bool) -> ToWorker {
    ToWorker::Ack(api::Ack {
        attempt_id: attempt_id.to_string(),
        log_offset,
        result_recorded,
        stale: false,
        reason: String::new(),
    })
}

fn start_worker(
    addr: &str,
    work_dir: &std::path::Path,
    tune: impl FnOnce(&mut WorkerConfig),
) -> (
    WorkerConfig,
    CancellationToken,
    JoinHandle<Result<(), WorkerError>>,
) {
    let mut config = WorkerConfig::new(addr, work_dir);
    config.slots = 2;
    config.reconnect_max_backoff = Duration::from_millis(200);
    config.kill_grace = Duration::from_secs(2);
    config.labels.insert("zone".into(), "test".into());
    tune(&mut config);
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(baton_worker::run(config.clone(), None, shutdown.clone()));
    (config, shutdown, worker)
}

async fn join_worker(worker: JoinHandle<Result<(), WorkerError>>) {
    let result = tokio::time::timeout(LIMIT, worker)
        .await
        .expect("the worker stops in time");
    result
        .expect("worker task")
        .expect("the worker stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_results_are_resent_after_reconnecting() {
    let mut controller = Controller::start().await;
    let work_dir = tempfile::tempdir().expect("temp dir");
    let (config, shutdown, worker) = start_worker(&controller.addr, work_dir.path(), |_| {});

    // First stream: Register first, then heartbeats once registered.
    let mut session = controller.accept().await;
    let register = session.expect_register().await;
    assert_eq!(register.worker_id, config.worker_id.to_string());
    assert_eq!(register.hostname, config.hostname);
    assert_eq!(register.queues, ["default"]);
    assert_eq!(
        register.labels.get("zone").map(String::as_str),
        Some("test")
    );
    assert_eq!(register.slots, 2);
    assert_eq!(register.version, env!("CARGO_PKG_VERSION"));
    assert!(register.attempt_ids.is_empty());
    session.register_ok();
    let heartbeat = session.recv_heartbeat().await;
    assert_eq!(heartbeat.free_slots, 2);
    assert!(heartbeat.running_attempt_ids.is_empty() && !heartbeat.draining);

    // An attempt runs and reports start, log and result in order.
    let attempt_id = AttemptId::generate();
    let script = "echo hello; echo world >&2; printf '{\"rows\": 3}' > \"$BATON_OUTPUT\"";
    session.send(assign(attempt_id, script));
    session.send(assign(attempt_id, script)); // a duplicate is ignored
    let (log, started, result) = session.recv_until_result(attempt_id, 0).await;
    assert!(started.is_some_and(|pid| pid > 0), "{started:?}");
    let text = String::from_utf8(log.clone()).expect("utf-8 log");
    assert!(
        text == "hello\nworld\n" || text == "world\nhello\n",
        "{text:?}"
    );
    assert_eq!(
        result.outcome,
        AttemptOutcome::Succeeded as i32,
        "{result:?}"
    );
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.output_json, r#"{"rows": 3}"#);
    assert_eq!(result.log_bytes, log.len() as u64);

    // Acknowledge part of the log but not the result, then cut the stream.
    session.send(ack(attempt_id, 3, false));
    drop(session);

    // Second stream: the attempt is announced, the unacknowledged log is
    // resent from offset 3, then the result.
    let mut session = controller.accept().await;
    let register = session.expect_register().await;
    assert_eq!(register.attempt_ids, [attempt_id.to_string()]);
    let (resent, started, resent_result) = session.recv_until_result(attempt_id, 3).await;
    assert!(started.is_none(), "a finished attempt is not started again");
    assert_eq!(resent, &log[3..]);
    assert_eq!(resent_result, result);
    session.register_ok();
    session.send(ack(attempt_id, result.log_bytes, true));
    // Acknowledged: not sent again on this stream, nor after reconnecting.
    session
        .expect_only_heartbeats(Duration::from_millis(400))
        .await;
    drop(session);

    let mut session = controller.accept().await;
    session.register_announcing_nothing().await;

    // Shutdown with nothing running: a draining heartbeat, then `run` ends.
    shutdown.cancel();
    let heartbeat = session.recv_draining_heartbeat().await;
    assert_eq!(heartbeat.free_slots, 0);
    session.expect_end().await;
    drop(session);
    join_worker(worker).await;
    // The attempt's slot keeps neither its output file nor its log.
    let spool = work_dir
        .path()
        .join("workers")
        .join(config.worker_id.as_str())
        .join("spool");
    for slot in spool.read_dir().expect("spool dir").flatten() {
        let slot = slot.path();
        let outputs = std::fs::read_dir(slot.join("out")).expect("out").count();
        assert_eq!(outputs, 0, "{}", slot.display());
        let log = std::fs::metadata(slot.join("log")).expect("log").len();
        assert_eq!(log, 0, "{}", slot.display());
    }

    // Started again with the same id: the acknowledged attempt is not
    // announced or sent again.
    let worker_id = config.worker_id.clone();
    let (_, shutdown, worker) = start_worker(&controller.addr, work_dir.path(), |config| {
        config.worker_id = worker_id;
    });
    let mut session = controller.accept().await;
    session.register_announcing_nothing().await;
    shutdown.cancel();
    session.recv_draining_heartbeat().await;
    session.expect_end().await;
    drop(session);
    join_worker(worker).await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noop_is_answered_with_its_result_alone_and_spools_nothing() {
    let mut controller = Controller::start().await;
    let work_dir = tempfile::tempdir().expect("temp dir");
    let (config, shutdown, worker) = start_worker(&controller.addr, work_dir.path(), |_| {});
    let mut session = controller.accept().await;
    session.expect_register().await;
    session.register_ok();
    session.recv_heartbeat().await;

    let attempt_id = AttemptId::generate();
    session.send(ToWorker::Assign(assign_kind(
        attempt_id,
        api::assign::Kind::Noop(api::NoopTask {}),
    )));
    match session.recv_work().await {
        FromWorker::TaskResult(result) => {
            assert_eq!(result.attempt_id, attempt_id.to_string());
            assert_eq!(result.outcome, AttemptOutcome::Succeeded as i32);
            assert!(result.started_at.is_some(), "the result carries the start");
            assert_eq!(result.log_bytes, 0);
        }
        other => panic!("a noop answers with its result alone, not {other:?}"),
    }
    let spool = work_dir
        .path()
        .join("workers")
        .join(config.worker_id.as_str())
        .join("spool");
    let spooled = spool.read_dir().map(|entries| entries.count()).unwrap_or(0);
    assert_eq!(spooled, 0, "a noop writes nothing to the spool");
    // Not acknowledged: after a reconnect it is announced and resent.
    drop(session);
    let mut session = controller.accept().await;
    let register = session.expect_register().await;
    assert_eq!(register.attempt_ids, [attempt_id.to_string()]);
    session.register_ok();
    let (_, started, result) = session.recv_until_result(attempt_id, 0).await;
    assert!(started.is_none());
    assert_eq!(result.outcome, AttemptOutcome::Succeeded as i32);
    session.send(ack(attempt_id, 0, true));
    session
        .expect_only_heartbeats(Duration::from_millis(300))
        .await;
    shutdown.cancel();
    session.recv_draining_heartbeat().await;
    session.expect_end().await;
    drop(session);
    join_worker(worker).await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stale_and_drain_stop_running_attempts() {
    let mut controller = Controller::start().await;
    let work_dir = tempfile::tempdir().expect("temp dir");
    let (_, shutdown, worker) = start_worker(&controller.addr, work_dir.path(), |config| {
        config.drain_grace = Duration::from_millis(300);
    });
    let mut session = controller.accept().await;
    session.expect_register().await;
    session.register_ok();

    // Cancel: the attempt is killed and reported CANCELLED with the reason.
    let cancelled = AttemptId::generate();
    session.send(assign(cancelled, "echo going; sleep 600"));
    assert!(matches!(
        session.recv_work().await,
        FromWorker::TaskStarted(_)
    ));
    session.send(ToWorker::Cancel(api::Cancel {
        attempt_id: cancelled.to_string(),
        reason: "run cancelled".into(),
    }));
    let (_, _, result) = session.recv_until_result(cancelled, 0).await;
    assert_eq!(result.outcome, AttemptOutcome::Cancelled as i32);
    assert_eq!(result.error, "cancelled: run cancelled");
    session.send(ack(cancelled, result.log_bytes, true));

    // Stale: killed and forgotten, no result.
    let stale = AttemptId::generate();
    session.send(assign(stale, "sleep 600"));
    assert!(matches!(
        session.recv_work().await,
        FromWorker::TaskStarted(_)
    ));
    session.send(ToWorker::Ack(api::Ack {
        attempt_id: stale.to_string(),
        log_offset: 0,
        result_recorded: false,
        stale: true,
        reason: "task cleared".into(),
    }));
    session
        .expect_only_heartbeats(Duration::from_millis(500))
        .await;
    let heartbeat = session.recv_heartbeat().await;
    assert!(heartbeat.running_attempt_ids.is_empty(), "{heartbeat:?}");

    // Shutdown with an attempt running: draining heartbeat, then after the
    // drain grace the attempt is stopped as WORKER_DRAINED (so the
    // controller re-queues it without using a retry) and its result
    // acknowledged.
    let remaining = AttemptId::generate();
    session.send(assign(remaining, "sleep 600"));
    assert!(matches!(
        session.recv_work().await,
        FromWorker::TaskStarted(_)
    ));
    shutdown.cancel();
    let heartbeat = session.recv_draining_heartbeat().await;
    assert_eq!(heartbeat.running_attempt_ids, [remaining.to_string()]);
    let (_, _, result) = session.recv_until_result(remaining, 0).await;
    assert_eq!(result.outcome, AttemptOutcome::WorkerDrained as i32);
    assert_eq!(
        result.error,
        "the worker was drained (shut down) before the attempt finished"
    );
    session.send(ack(remaining, result.log_bytes, true));
    session.expect_end().await;
    drop(session);
    join_worker(worker).await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_from_the_controller_lets_running_attempts_finish() {
    let mut controller = Controller::start().await;
    let work_dir = tempfile::tempdir().expect("temp dir");
    let (_, _shutdown, worker) = start_worker(&controller.addr, work_dir.path(), |_| {});
    let mut session = controller.accept().await;
    session.expect_register().await;
    session.register_ok();

    let attempt_id = AttemptId::generate();
    session.send(assign(attempt_id, "sleep 0.5; echo finished"));
    assert!(matches!(
        session.recv_work().await,
        FromWorker::TaskStarted(_)
    ));
    session.send(ToWorker::Drain(api::Drain {
        grace: Some(time::duration_to_proto(Duration::from_secs(10))),
    }));
    session.recv_draining_heartbeat().await;
    let (log, _, result) = session.recv_until_result(attempt_id, 0).await;
    assert_eq!(
        result.outcome,
        AttemptOutcome::Succeeded as i32,
        "{result:?}"
    );
    assert_eq!(log, b"finished\n");
    session.send(ack(attempt_id, result.log_bytes, true));
    session.expect_end().await;
    drop(session);
    join_worker(worker).await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_given_a_follower_registers_with_the_leader() {
    let mut leader = Controller::start().await;
    let mut follower = Controller::start_as(Role::Follower(Some(leader.url()))).await;
    let work_dir = tempfile::tempdir().expect("temp dir");
    let (config, shutdown, worker) = start_worker(&follower.addr, work_dir.path(), |config| {
        // A redirect does not wait for the backoff.
        config.reconnect_max_backoff = Duration::from_secs(60);
    });

    let mut session = leader.accept().await;
    let register = session.expect_register().await;
    assert_eq!(register.worker_id, config.worker_id.to_string());
    session.register_ok();
    session.recv_heartbeat().await;
    assert_eq!(follower.refused(), 1);
    assert!(
        follower.streams.try_recv().is_err(),
        "the follower accepted no stream"
    );

    // Work flows on the leader's stream.
    let attempt_id = AttemptId::generate();
    session.send(assign(attempt_id, "echo led"));
    let (log, _, result) = session.recv_until_result(attempt_id, 0).await;
    assert_eq!(log, b"led\n");
    session.send(ack(attempt_id, result.log_bytes, true));

    shutdown.cancel();
    session.recv_draining_heartbeat().await;
    session.expect_end().await;
    drop(session);
    join_worker(worker).await;
    assert_eq!(
        follower.refused(),
        1,
        "no stream went to the follower again"
    );
    follower.stop().await;
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_re_registers_with_the_next_leader_and_resends_its_results() {
    let mut first = Controller::start().await;
    let mut second = Controller::start_as(Role::Follower(Some(first.url()))).await;
    let work_dir = tempfile::tempdir().expect("temp dir");
    let addrs = format!("{},{}", second.addr, first.addr);
    let (_, shutdown, worker) = start_worker(&addrs, work_dir.path(), |config| {
        // While no leader is known the worker retries within a second
        // whatever the configured maximum.
        config.reconnect_max_backoff = Duration::from_secs(60);
    });

    // Redirected from the second controller to the leader.
    let mut session = first.accept().await;
    session.expect_register().await;
    session.register_ok();
    let attempt_id = AttemptId::generate();
    session.send(assign(attempt_id, "echo before the election"));
    let (log, _, result) = session.recv_until_result(attempt_id, 0).await;
    assert_eq!(result.outcome, AttemptOutcome::Succeeded as i32);
    // The log is acknowledged, the result is not.
    session.send(ack(attempt_id, 7, false));
    session.recv_heartbeat().await;
    let refused_before = second.refused();

    // The leader steps down and goes away; an election is in progress.
    second.set_role(Role::Follower(None));
    session.fail(Status::unavailable(
        "not the leader; no leader is elected yet; retry shortly",
    ));
    first.stop().await;
    second.wait_refused(refused_before + 1).await;

    // The second controller wins the election: the worker registers there,
    // announces its attempt and resends what was not acknowledged.
    second.set_role(Role::Leader);
    let elected = tokio::time::Instant::now();
    let mut session = second.accept().await;
    assert!(
        elected.elapsed() < Duration::from_secs(5),
        "{:?}",
        elected.elapsed()
    );
    let register = session.expect_register().await;
    assert_eq!(register.attempt_ids, [attempt_id.to_string()]);
    let (resent, started, resent_result) = session.recv_until_result(attempt_id, 7).await;
    assert!(started.is_none());
    assert_eq!(resent, &log[7..]);
    assert_eq!(resent_result, result);
    session.register_ok();
    session.send(ack(attempt_id, result.log_bytes, true));
    session
        .expect_only_heartbeats(Duration::from_millis(300))
        .await;

    shutdown.cancel();
    session.recv_draining_heartbeat().await;
    session.expect_end().await;
    drop(session);
    join_worker(worker).await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_are_poked_and_commands_see_the_data_interval() {
    let mut controller = Controller::start().await;
    let work_dir = tempfile::tempdir().expect("temp dir");
    let (_, shutdown, worker) = start_worker(&controller.addr, work_dir.path(), |_| {});
    let mut session = controller.accept().await;
    let register = session.expect_register().await;
    assert!(
        register.runs_commands && register.runs_sensors,
        "{register:?}"
    );
    session.register_ok();

    // A command gets the run's data interval next to its logical date.
    let command = AttemptId::generate();
    session.send(assign(
        command,
        "echo \"$BATON_LOGICAL_DATE $BATON_DATA_INTERVAL_START $BATON_DATA_INTERVAL_END\"",
    ));
    let (log, _, result) = session.recv_until_result(command, 0).await;
    assert_eq!(
        result.outcome,
        AttemptOutcome::Succeeded as i32,
        "{result:?}"
    );
    assert_eq!(
        String::from_utf8(log).expect("utf-8"),
        "2024-01-02T00:00:00Z 2024-01-01T00:00:00Z 2024-01-02T00:00:00Z\n"
    );
    session.send(ack(command, result.log_bytes, true));

    // Reschedule mode: one poke, RESCHEDULED while the file is missing,
    // SUCCEEDED in a later attempt once it is there.
    let path = work_dir.path().join("_SUCCESS").display().to_string();
    let waiting = AttemptId::generate();
    session.send(ToWorker::Assign(assign_kind(
        waiting,
        file_sensor(&path, true),
    )));
    let (log, started, result) = session.recv_until_result(waiting, 0).await;
    assert_eq!(started, Some(0), "a sensor runs in the worker");
    assert_eq!(
        result.outcome,
        AttemptOutcome::Rescheduled as i32,
        "{result:?}"
    );
    assert_eq!(
        result.error,
        format!("condition not met yet: file {path}: not found")
    );
    assert_eq!(log, format!("poke 1: file {path}: not found\n").as_bytes());
    assert_eq!(result.log_bytes, log.len() as u64);
    assert!(result.output_json.is_empty() && result.exit_code.is_none());
    session.send(ack(waiting, result.log_bytes, true));

    std::fs::write(&path, b"").expect("write the file");
    let met = AttemptId::generate();
    session.send(ToWorker::Assign(assign_kind(met, file_sensor(&path, true))));
    let (log, _, result) = session.recv_until_result(met, 0).await;
    assert_eq!(
        result.outcome,
        AttemptOutcome::Succeeded as i32,
        "{result:?}"
    );
    assert_eq!(
        log,
        format!("poke 1: file {path}: found; condition met\n").as_bytes()
    );
    session.send(ack(met, result.log_bytes, true));

    // Poke mode holds the slot until cancelled.
    let missing = work_dir.path().join("never").display().to_string();
    let poking = AttemptId::generate();
    session.send(ToWorker::Assign(assign_kind(
        poking,
        file_sensor(&missing, false),
    )));
    assert!(matches!(
        session.recv_work().await,
        FromWorker::TaskStarted(_)
    ));
    match session.recv_work().await {
        FromWorker::LogChunk(chunk) => assert_eq!(
            chunk.data,
            format!("poke 1: file {missing}: not found\n").as_bytes()
        ),
        other => panic!("expected the first poke's line, got {other:?}"),
    }
    let heartbeat = session.recv_heartbeat().await;
    assert_eq!(heartbeat.running_attempt_ids, [poking.to_string()]);
    assert_eq!(heartbeat.free_slots, 1);
    let cancelled_at = tokio::time::Instant::now();
    session.send(ToWorker::Cancel(api::Cancel {
        attempt_id: poking.to_string(),
        reason: "run cancelled".into(),
    }));
    let (_, _, result) = session.recv_until_result(poking, 0).await;
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(result.outcome, AttemptOutcome::Cancelled as i32);
    assert_eq!(result.error, "cancelled: run cancelled");
    session.send(ack(poking, result.log_bytes, true));

    // Bad input is an ERROR result naming the field, and the worker goes on.
    let bad_glob = AttemptId::generate();
    session.send(ToWorker::Assign(assign_kind(
        bad_glob,
        file_sensor("/data/[2024", true),
    )));
    let (_, _, result) = session.recv_until_result(bad_glob, 0).await;
    assert_eq!(result.outcome, AttemptOutcome::Error as i32);
    assert!(
        result.error.starts_with(
            "invalid assignment: sensor.file.path: `/data/[2024` is not a valid glob pattern"
        ),
        "{}",
        result.error
    );
    session.send(ack(bad_glob, result.log_bytes, true));
    let inverted = AttemptId::generate();
    let mut assignment = assign_kind(inverted, api::assign::Kind::Noop(api::NoopTask {}));
    std::mem::swap(
        &mut assignment.data_interval_start,
        &mut assignment.data_interval_end,
    );
    session.send(ToWorker::Assign(assignment));
    let (_, _, result) = session.recv_until_result(inverted, 0).await;
    assert_eq!(result.outcome, AttemptOutcome::Error as i32);
    assert_eq!(
        result.error,
        "invalid assignment: data_interval_start 2024-01-02T00:00:00Z is after \
         data_interval_end 2024-01-01T00:00:00Z"
    );
    session.send(ack(inverted, result.log_bytes, true));

    shutdown.cancel();
    session.recv_draining_heartbeat().await;
    session.expect_end().await;
    drop(session);
    join_worker(worker).await;
    controller.stop().await;
}

#[tokio::test]
async fn invalid_config_is_refused_before_connecting() {
    let mut config = WorkerConfig::new("127.0.0.1:1", "/nonexistent");
    config.slots = 0;
    let error = baton_worker::run(config, None, CancellationToken::new())
        .await
        .expect_err("invalid");
    assert!(
        matches!(error, WorkerError::InvalidConfig { field: "slots", .. }),
        "{error}"
    );
}
