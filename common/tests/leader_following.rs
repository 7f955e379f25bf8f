//! [`BatonClient`] against controller replicas played by the test: small
//! `RunService` servers on 127.0.0.1 that either answer (the leader) or
//! refuse like a follower does, with `UNAVAILABLE` and the leader's address
//! in the `baton-leader` metadata when they know it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_common::client::{BatonClient, LEADER_METADATA_KEY, LeaderFollowingChannel, MAX_TRIES};
use baton_common::pb::api::run_service_server::{RunService, RunServiceServer};
use baton_common::pb::api::{
    CancelRunRequest, CancelRunResponse, GetRunEventsRequest, GetRunEventsResponse, GetRunRequest,
    GetRunResponse, ListRunsRequest, ListRunsResponse, ListTaskAttemptsRequest,
    ListTaskAttemptsResponse, ReadTaskLogRequest, ReadTaskLogResponse, RetryTaskRequest,
    RetryTaskResponse, Run, TriggerRunRequest, TriggerRunResponse, WatchRunRequest,
    WatchRunResponse,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
enum Role {
    Leader,
    /// Knows the leader's address, or not (an election is in progress).
    Follower(Option<String>),
}

type Stream<T> = tokio_stream::Iter<std::vec::IntoIter<Result<T, Status>>>;

struct TestRuns {
    name: &'static str,
    role: Arc<Mutex<Role>>,
    calls: Arc<AtomicUsize>,
}

impl TestRuns {
    /// Counts the call and refuses it unless this replica leads.
    fn gate(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let role = self.role.lock().expect("role lock").clone();
        match role {
            Role::Leader => Ok(()),
            Role::Follower(None) => Err(Status::unavailable(
                "not the leader; no leader is elected yet; retry shortly",
            )),
            Role::Follower(Some(leader)) => {
                let mut status =
                    Status::unavailable(format!("not the leader; the leader is at {leader}"));
                status
                    .metadata_mut()
                    .insert(LEADER_METADATA_KEY, leader.parse().expect("ascii address"));
                Err(status)
            }
        }
    }
}

#[tonic::async_trait]
impl RunService for TestRuns {
    type WatchRunStream = Stream<WatchRunResponse>;
    type ReadTaskLogStream = Stream<ReadTaskLogResponse>;

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<GetRunResponse>, Status> {
        self.gate()?;
        let run_id = request.into_inner().run_id;
        if run_id == "missing" {
            return Err(Status::not_found(format!("run `{run_id}` not found")));
        }
        Ok(Response::new(GetRunResponse {
            run: Some(Run {
                run_id: format!("{}/{run_id}", self.name),
                ..Run::default()
            }),
            tasks: Vec::new(),
        }))
    }

    async fn read_task_log(
        &self,
        request: Request<ReadTaskLogRequest>,
    ) -> Result<Response<Self::ReadTaskLogStream>, Status> {
        self.gate()?;
        let request = request.into_inner();
        let chunks: Vec<Result<ReadTaskLogResponse, Status>> = (0..3u64)
            .map(|index| {
                Ok(ReadTaskLogResponse {
                    attempt: 1,
                    offset: request.offset + index,
                    data: format!("{}:{}:{index}\n", self.name, request.task_id).into_bytes(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(chunks)))
    }

    async fn trigger_run(
        &self,
        _: Request<TriggerRunRequest>,
    ) -> Result<Response<TriggerRunResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_runs(
        &self,
        _: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn cancel_run(
        &self,
        _: Request<CancelRunRequest>,
    ) -> Result<Response<CancelRunResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn retry_task(
        &self,
        _: Request<RetryTaskRequest>,
    ) -> Result<Response<RetryTaskResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn mark_task(
        &self,
        _: Request<baton_common::pb::api::MarkTaskRequest>,
    ) -> Result<Response<baton_common::pb::api::MarkTaskResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn watch_run(
        &self,
        _: Request<WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_task_attempts(
        &self,
        _: Request<ListTaskAttemptsRequest>,
    ) -> Result<Response<ListTaskAttemptsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_run_events(
        &self,
        _: Request<GetRunEventsRequest>,
    ) -> Result<Response<GetRunEventsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// One replica: a server on a free loopback port.
struct Replica {
    /// `http://127.0.0.1:<port>`, as a controller advertises itself.
    addr: String,
    role: Arc<Mutex<Role>>,
    calls: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Replica {
    async fn start(name: &'static str, role: Role) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = format!("http://{}", listener.local_addr().expect("local addr"));
        let role = Arc::new(Mutex::new(role));
        let calls = Arc::new(AtomicUsize::new(0));
        let service = TestRuns {
            name,
            role: role.clone(),
            calls: calls.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RunServiceServer::new(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self {
            addr,
            role,
            calls,
            stop: Some(stop),
            server,
        }
    }

    fn set_role(&self, role: Role) {
        *self.role.lock().expect("role lock") = role;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Stops serving; the port refuses connections afterwards.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stopped = tokio::time::timeout(LIMIT, &mut self.server)
            .await
            .expect("server stops in time");
        stopped.expect("server task").expect("server ran");
    }
}

/// A loopback address nothing listens on (it was free a moment ago).
async fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    format!("http://{addr}")
}

async fn get_run(client: &mut BatonClient, run_id: &str) -> Result<Run, Status> {
    let request = GetRunRequest {
        run_id: run_id.into(),
        include_tasks: false,
    };
    let response = tokio::time::timeout(LIMIT, client.runs.get_run(request))
        .await
        .expect("an answer in time")?;
    Ok(response.into_inner().run.expect("a run"))
}

async fn read_log(client: &mut BatonClient, task_id: &str) -> Result<String, Status> {
    let request = ReadTaskLogRequest {
        run_id: "r".into(),
        task_id: task_id.into(),
        ..ReadTaskLogRequest::default()
    };
    tokio::time::timeout(LIMIT, async {
        let mut stream = client.runs.read_task_log(request).await?.into_inner();
        let mut log = String::new();
        while let Some(chunk) = stream.next().await {
            log.push_str(&String::from_utf8(chunk?.data).expect("utf-8"));
        }
        Ok(log)
    })
    .await
    .expect("the log in time")
}

#[tokio::test]
async fn unary_and_streaming_calls_follow_the_leader() {
    let leader = Replica::start("leader", Role::Leader).await;
    let follower = Replica::start("follower", Role::Follower(Some(leader.addr.clone()))).await;
    // Without a scheme, as users type it.
    let follower_addr = follower.addr.trim_start_matches("http://").to_string();

    let mut client = BatonClient::connect(&follower_addr)
        .await
        .expect("connects");
    let run = get_run(&mut client, "r1")
        .await
        .expect("the leader answers");
    assert_eq!(run.run_id, "leader/r1");
    assert_eq!((follower.calls(), leader.calls()), (1, 1));
    assert_eq!(client.transport().current_addr(), leader.addr);

    // Clones share what was learned: the next call goes to the leader at once.
    let mut clone = client.clone();
    let run = get_run(&mut clone, "r2").await.expect("the leader answers");
    assert_eq!(run.run_id, "leader/r2");
    assert_eq!((follower.calls(), leader.calls()), (1, 2));

    // A server-streaming call from a fresh client is redirected too, and
    // its whole stream comes from the leader.
    let mut client = BatonClient::connect(&follower_addr)
        .await
        .expect("connects");
    let log = read_log(&mut client, "extract")
        .await
        .expect("the leader streams");
    assert_eq!(
        log,
        "leader:extract:0\nleader:extract:1\nleader:extract:2\n"
    );
    assert_eq!((follower.calls(), leader.calls()), (2, 3));

    follower.stop().await;
    leader.stop().await;
}

#[tokio::test]
async fn calls_wait_for_an_election_to_end() {
    let leader = Replica::start("leader", Role::Leader).await;
    let follower = Replica::start("follower", Role::Follower(None)).await;
    let mut client = BatonClient::connect(&follower.addr)
        .await
        .expect("connects");

    // The follower learns the leader while the call is retrying.
    let role = follower.role.clone();
    let calls = follower.calls.clone();
    let leader_addr = leader.addr.clone();
    let elect = tokio::spawn(async move {
        let deadline = Instant::now() + LIMIT;
        while calls.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        *role.lock().expect("role lock") = Role::Follower(Some(leader_addr));
    });
    let started = Instant::now();
    let run = get_run(&mut client, "r1")
        .await
        .expect("the leader answers");
    assert_eq!(run.run_id, "leader/r1");
    assert!(follower.calls() >= 3, "{}", follower.calls());
    assert_eq!(leader.calls(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    elect.await.expect("elect task");

    follower.stop().await;
    leader.stop().await;
}

#[tokio::test]
async fn retries_are_bounded_when_no_leader_appears() {
    let follower = Replica::start("follower", Role::Follower(None)).await;
    let transport = LeaderFollowingChannel::connect(&follower.addr)
        .await
        .expect("connects")
        .with_retry_budget(Duration::from_millis(600));
    let mut client = BatonClient::new(transport);
    let started = Instant::now();
    let status = get_run(&mut client, "r1").await.expect_err("no leader");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no leader"), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let calls = follower.calls();
    assert!((2..=MAX_TRIES as usize).contains(&calls), "{calls}");

    // Two replicas naming each other cannot bounce a call forever.
    let first = Replica::start("first", Role::Leader).await;
    let second = Replica::start("second", Role::Follower(Some(first.addr.clone()))).await;
    first.set_role(Role::Follower(Some(second.addr.clone())));
    let transport = LeaderFollowingChannel::connect(&first.addr)
        .await
        .expect("connects")
        .with_retry_budget(Duration::from_secs(1));
    let mut client = BatonClient::new(transport);
    let status = get_run(&mut client, "r1").await.expect_err("no leader");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let calls = first.calls() + second.calls();
    assert!(calls <= MAX_TRIES as usize, "{calls}");

    follower.stop().await;
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn dead_addresses_are_skipped() {
    let leader = Replica::start("leader", Role::Leader).await;
    let dead = dead_addr().await;
    let addrs = format!("{dead},{}", leader.addr);

    // Connecting skips the dead address.
    let mut client = BatonClient::connect(&addrs).await.expect("connects");
    assert_eq!(client.transport().current_addr(), leader.addr);
    let run = get_run(&mut client, "r1")
        .await
        .expect("the leader answers");
    assert_eq!(run.run_id, "leader/r1");

    // So does a call that tries it first.
    let mut client = BatonClient::new(LeaderFollowingChannel::lazy(&addrs).expect("valid"));
    assert_eq!(client.transport().current_addr(), dead);
    let run = get_run(&mut client, "r2")
        .await
        .expect("the leader answers");
    assert_eq!(run.run_id, "leader/r2");
    assert_eq!(client.transport().current_addr(), leader.addr);

    // Nothing reachable: connecting fails and names the addresses.
    let error = BatonClient::connect(&dead).await.expect_err("unreachable");
    assert!(error.to_string().contains(&dead), "{error}");

    leader.stop().await;
}

#[tokio::test]
async fn a_new_leader_takes_over_when_the_old_one_goes_away() {
    let first = Replica::start("first", Role::Leader).await;
    let second = Replica::start("second", Role::Follower(Some(first.addr.clone()))).await;
    let mut client = BatonClient::connect(&format!("{},{}", second.addr, first.addr))
        .await
        .expect("connects");
    let run = get_run(&mut client, "r1")
        .await
        .expect("the leader answers");
    assert_eq!(run.run_id, "first/r1");

    first.stop().await;
    second.set_role(Role::Leader);
    let run = get_run(&mut client, "r2")
        .await
        .expect("the new leader answers");
    assert_eq!(run.run_id, "second/r2");
    assert_eq!(client.transport().current_addr(), second.addr);

    second.stop().await;
}

#[tokio::test]
async fn other_errors_are_returned_at_once() {
    let leader = Replica::start("leader", Role::Leader).await;
    let follower = Replica::start("follower", Role::Follower(Some(leader.addr.clone()))).await;

    let mut client = BatonClient::connect(&leader.addr).await.expect("connects");
    let status = get_run(&mut client, "missing")
        .await
        .expect_err("not found");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "run `missing` not found");
    assert_eq!(leader.calls(), 1);

    // Through a follower: one redirect, then the leader's answer as is.
    let mut client = BatonClient::connect(&follower.addr)
        .await
        .expect("connects");
    let status = get_run(&mut client, "missing")
        .await
        .expect_err("not found");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!((follower.calls(), leader.calls()), (1, 2));

    // A client over a given channel follows redirects as well.
    let channel = baton_common::client::connect_channel(&follower.addr)
        .await
        .expect("connects");
    let mut client = BatonClient::from_channel(channel);
    let run = get_run(&mut client, "r1")
        .await
        .expect("the leader answers");
    assert_eq!(run.run_id, "leader/r1");

    follower.stop().await;
    leader.stop().await;
}
