//! Simulated workers: lightweight `WorkerService.Connect` clients that the
//! benchmark runs in its own process, so that one controller can be driven
//! by a fleet of 1,000 workers without 1,000 `baton worker` processes.
//!
//! Each one speaks the protocol as `baton worker` does (see
//! `worker/src/agent.rs` and `worker/src/connection.rs`):
//! - it opens `Connect` with `Register` already queued (the controller
//!   answers the stream's headers only after it read `Register`), with a
//!   unique id, queue `default` and its slots;
//! - on `Registered` it heartbeats at once, then every
//!   `Registered.heartbeat_interval` (free slots and the attempts it holds);
//! - on `Assign` of a noop it sends `TaskResult` (`SUCCEEDED`, `log_bytes`
//!   0) at once, as `baton worker` does (no `TaskStarted`), or `TaskStarted`
//!   and the result after holding the attempt for the fleet's current hold
//!   time (to keep slots busy); any other kind is answered `FAILED`;
//! - on `Cancel` of an attempt it holds it answers `CANCELLED`;
//! - acknowledgements are counted and otherwise ignored (nothing is kept
//!   for a resend: a simulated worker never reconnects).
//!
//! Transport: by default every worker has its own HTTP/2 connection with
//! the real worker's keepalive pings (every 2 s), as a real fleet would;
//! [`Fleet::with_shared_channels`] multiplexes the streams over a few
//! connections instead. Either way the controller sees one stream per
//! worker.
//!
//! A worker runs until the fleet is stopped, its stream ends, or
//! [`MAX_LIFETIME`] passes; a stream that ends or fails before the fleet is
//! stopped is counted (and its error kept) in [`Counters`], so a scenario
//! can fail when the controller dropped a worker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_common::client;
use baton_common::pb::api::{self, controller_message, worker_message};
use baton_common::time::{Micros, duration_from_proto, micros_to_timestamp, now_micros};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The real worker's keepalive ping settings (`worker/src/connection.rs`).
const PING_INTERVAL: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for the connection plus the stream's response headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Heartbeat interval when `Registered` carries none (as `baton worker`).
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// No simulated worker outlives this, whatever the scenario does.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Connections being opened (and streams registering) at once.
const CONNECT_CONCURRENCY: usize = 64;
/// How long [`Fleet::stop`] waits for the workers' tasks to end.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// The queue every simulated worker serves.
pub const QUEUE: &str = "default";

/// What the fleet's workers saw and did, summed over all of them.
#[derive(Debug, Default)]
pub struct Counters {
    pub registered: AtomicU64,
    pub heartbeats: AtomicU64,
    pub assigns: AtomicU64,
    pub results: AtomicU64,
    pub acks: AtomicU64,
    pub cancels: AtomicU64,
    /// Attempts currently held (assigned, result not sent yet).
    pub held: AtomicU64,
    /// Streams that ended or failed before the fleet was stopped.
    pub lost: AtomicU64,
    /// The heartbeat interval the controller gave last, in µs.
    pub heartbeat_interval_us: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|error| error.clone())
    }

    fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    fn sub(counter: &AtomicU64, value: u64) {
        counter.fetch_sub(value, Ordering::Relaxed);
    }

    fn lose(&self, error: String) {
        Self::add(&self.lost, 1);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }
}

/// When a joining worker's stream went through its first steps; from
/// [`Fleet::join`].
#[derive(Debug, Clone, Copy)]
pub struct JoinTimeline {
    /// Just before its connection was opened.
    pub connecting: Instant,
    /// Connection up; `Register` queued and the stream being opened.
    pub stream_opened: Instant,
    /// `Registered` received.
    pub registered: Instant,
    /// First `Assign` received.
    pub first_assign: Instant,
}

/// State every worker of the fleet shares.
#[derive(Debug, Default)]
struct Shared {
    counters: Counters,
    /// How long a worker holds each noop before its result, in ms.
    hold_ms: AtomicU64,
}

/// A set of simulated workers connected to one controller.
pub struct Fleet {
    addr: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// Connections streams are multiplexed over; empty: one per worker.
    channels: Vec<Channel>,
    next_channel: usize,
    connecting: Arc<Semaphore>,
}

impl Fleet {
    /// An empty fleet for the controller at `addr` (`http://host:port`);
    /// each worker will open its own connection.
    pub fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_string(),
            shared: Arc::new(Shared::default()),
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
            channels: Vec::new(),
            next_channel: 0,
            connecting: Arc::new(Semaphore::new(CONNECT_CONCURRENCY)),
        }
    }

    /// Workers spawned from now on share `count` connections (round robin).
    pub async fn with_shared_channels(mut self, count: usize) -> anyhow::Result<Self> {
        for _ in 0..count {
            self.channels.push(connect_channel(&self.addr).await?);
        }
        Ok(self)
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// From now on, every noop assigned is held this long before its result
    /// is sent (zero: answered at once).
    pub fn set_hold(&self, hold: Duration) {
        let millis = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
        self.shared.hold_ms.store(millis, Ordering::Relaxed);
    }

    /// Starts a worker `worker_id` with `slots`; it connects in the
    /// background.
    pub fn spawn(&mut self, worker_id: String, slots: u32) {
        let channel = if self.channels.is_empty() {
            None
        } else {
            let channel = self.channels[self.next_channel % self.channels.len()].clone();
            self.next_channel += 1;
            Some(channel)
        };
        let worker = SimWorker {
            worker_id,
            slots,
            addr: self.addr.clone(),
            shared: Arc::clone(&self.shared),
            stop: self.stop.clone(),
            connecting: Some(Arc::clone(&self.connecting)),
        };
        self.tasks.spawn(worker.run(channel, None));
    }

    /// Starts one more worker on a connection of its own, opened now, and
    /// waits (at most `limit`) for its first `Assign`.
    pub async fn join(
        &mut self,
        worker_id: String,
        slots: u32,
        limit: Duration,
    ) -> anyhow::Result<JoinTimeline> {
        let (sender, receiver) = oneshot::channel();
        let worker = SimWorker {
            worker_id: worker_id.clone(),
            slots,
            addr: self.addr.clone(),
            shared: Arc::clone(&self.shared),
            stop: self.stop.clone(),
            connecting: None,
        };
        self.tasks.spawn(worker.run(None, Some(sender)));
        match tokio::time::timeout(limit, receiver).await {
            Ok(Ok(timeline)) => Ok(timeline),
            Ok(Err(_)) => bail!(
                "joining worker {worker_id} ended before its first assignment: {}",
                self.counters()
                    .last_error()
                    .unwrap_or_else(|| "no error recorded".into())
            ),
            Err(_) => bail!("joining worker {worker_id} got no assignment within {limit:?}"),
        }
    }

    /// Waits until `predicate` holds on the counters, checking every 10 ms
    /// for at most `limit`; fails early when a stream was lost.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        predicate: impl Fn(&Counters) -> bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let polls = limit.as_millis() / 10 + 1;
        for _ in 0..polls {
            if predicate(self.counters()) {
                return Ok(started.elapsed());
            }
            self.check()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("simulated workers: {what} did not happen within {limit:?}")
    }

    /// Fails when a worker's stream ended or failed.
    pub fn check(&self) -> anyhow::Result<()> {
        let lost = Counters::get(&self.counters().lost);
        if lost > 0 {
            bail!(
                "{lost} simulated worker stream(s) ended; last error: {}",
                self.counters()
                    .last_error()
                    .unwrap_or_else(|| "none recorded".into())
            );
        }
        Ok(())
    }

    /// Ends every worker's stream and waits (boundedly) for their tasks.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let deadline = Instant::now() + STOP_WAIT;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.tasks.abort_all();
    }
}

/// A connection with the real worker's settings.
async fn connect_channel(addr: &str) -> anyhow::Result<Channel> {
    let endpoint = client::endpoint(addr)?
        .http2_keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT);
    tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .with_context(|| format!("no connection to {addr} within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("cannot connect to {addr}"))
}

/// An attempt held until `release`.
struct Held {
    release: Instant,
    attempt_id: String,
    started_at: Micros,
}

struct SimWorker {
    worker_id: String,
    slots: u32,
    addr: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Bounds the connections opened at once while a fleet connects; none
    /// for a joining worker, which is timed.
    connecting: Option<Arc<Semaphore>>,
}

impl SimWorker {
    async fn run(self, channel: Option<Channel>, joined: Option<oneshot::Sender<JoinTimeline>>) {
        let stop = self.stop.clone();
        let shared = Arc::clone(&self.shared);
        let worker_id = self.worker_id.clone();
        let outcome = tokio::select! {
            outcome = self.serve(channel, joined) => outcome,
            () = stop.cancelled() => Ok(()),
        };
        if let Err(error) = outcome
            && !stop.is_cancelled()
        {
            shared.counters.lose(format!("{worker_id}: {error:#}"));
        }
    }

    async fn serve(
        self,
        channel: Option<Channel>,
        mut joined: Option<oneshot::Sender<JoinTimeline>>,
    ) -> anyhow::Result<()> {
        let counters = &self.shared.counters;
        let connecting = Instant::now();
        let permit = match &self.connecting {
            Some(semaphore) => Some(Arc::clone(semaphore).acquire_owned().await?),
            None => None,
        };
        let channel = match channel {
            Some(channel) => channel,
            None => connect_channel(&self.addr).await?,
        };
        let stream_opened = Instant::now();
        let (outbound, receiver) = mpsc::unbounded_channel();
        let register = api::Register {
            worker_id: self.worker_id.clone(),
            hostname: "baton-bench".into(),
            queues: vec![QUEUE.into()],
            slots: self.slots,
            version: "baton-bench".into(),
            ..Default::default()
        };
        send(&outbound, worker_message::Message::Register(register));
        let mut worker_client = client::worker_client(channel);
        let response = tokio::time::timeout(
            CONNECT_TIMEOUT,
            worker_client.connect(UnboundedReceiverStream::new(receiver)),
        )
        .await
        .context("no answer to Connect")?
        .context("the controller refused the stream")?;
        let mut inbound = response.into_inner();
        let mut permit = permit;
        let mut registered_at = None;
        let mut heartbeat: Option<Interval> = None;
        let mut held: VecDeque<Held> = VecDeque::new();
        let deadline = Instant::now() + MAX_LIFETIME;
        loop {
            let release = held.front().map(|attempt| attempt.release);
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(deadline) => return Ok(()),
                () = sleep_until_opt(release) => {
                    if let Some(attempt) = held.pop_front() {
                        Counters::sub(&counters.held, 1);
                        send_result(&outbound, counters, &attempt.attempt_id, attempt.started_at, api::AttemptOutcome::Succeeded, "");
                    }
                }
                _ = tick(&mut heartbeat) => {
                    Counters::add(&counters.heartbeats, 1);
                    let holding = u32::try_from(held.len()).unwrap_or(u32::MAX);
                    send(&outbound, worker_message::Message::Heartbeat(api::Heartbeat {
                        free_slots: self.slots.saturating_sub(holding),
                        running_attempt_ids: held.iter().map(|attempt| attempt.attempt_id.clone()).collect(),
                        draining: false,
                    }));
                }
                message = inbound.message() => {
                    let message = match message {
                        Ok(Some(api::ControllerMessage { message: Some(message) })) => message,
                        Ok(Some(_)) => continue,
                        Ok(None) => bail!("the controller ended the stream"),
                        Err(status) => bail!("the stream failed: {status}"),
                    };
                    match message {
                        controller_message::Message::Registered(registered) => {
                            let interval = registered
                                .heartbeat_interval
                                .as_ref()
                                .map(duration_from_proto)
                                .filter(|interval| !interval.is_zero())
                                .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
                            let micros = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
                            counters.heartbeat_interval_us.store(micros, Ordering::Relaxed);
                            // As `baton worker`: the first tick fires at once.
                            let mut ticks = tokio::time::interval(interval);
                            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                            heartbeat = Some(ticks);
                            registered_at = Some(Instant::now());
                            Counters::add(&counters.registered, 1);
                            // The next worker of the fleet may connect.
                            permit.take();
                        }
                        controller_message::Message::Assign(assign) => {
                            let now = Instant::now();
                            Counters::add(&counters.assigns, 1);
                            if let Some(sender) = joined.take() {
                                let _ = sender.send(JoinTimeline {
                                    connecting,
                                    stream_opened,
                                    registered: registered_at.unwrap_or(now),
                                    first_assign: now,
                                });
                            }
                            self.on_assign(&outbound, &mut held, assign, now);
                        }
                        controller_message::Message::Cancel(cancel) => {
                            Counters::add(&counters.cancels, 1);
                            if let Some(position) = held.iter().position(|attempt| attempt.attempt_id == cancel.attempt_id)
                                && let Some(attempt) = held.remove(position)
                            {
                                Counters::sub(&counters.held, 1);
                                send_result(&outbound, counters, &attempt.attempt_id, attempt.started_at, api::AttemptOutcome::Cancelled, "cancelled by the controller");
                            }
                        }
                        controller_message::Message::Ack(_) => Counters::add(&counters.acks, 1),
                        controller_message::Message::Drain(_) => bail!("asked to drain"),
                    }
                }
            }
        }
    }

    fn on_assign(
        &self,
        outbound: &mpsc::UnboundedSender<api::WorkerMessage>,
        held: &mut VecDeque<Held>,
        assign: api::Assign,
        now: Instant,
    ) {
        let counters = &self.shared.counters;
        let started_at = now_micros();
        let hold = Duration::from_millis(self.shared.hold_ms.load(Ordering::Relaxed));
        let noop = matches!(assign.kind, Some(api::assign::Kind::Noop(_)));
        // Like `baton worker`, an instant noop is answered with its result
        // alone (the result carries the start).
        if !(noop && hold.is_zero()) {
            send(
                outbound,
                worker_message::Message::TaskStarted(api::TaskStarted {
                    attempt_id: assign.attempt_id.clone(),
                    started_at: Some(micros_to_timestamp(started_at)),
                    pid: 0,
                }),
            );
        }
        if !noop {
            let error = "a simulated worker runs only noop tasks";
            send_result(
                outbound,
                counters,
                &assign.attempt_id,
                started_at,
                api::AttemptOutcome::Failed,
                error,
            );
            return;
        }
        if hold.is_zero() {
            send_result(
                outbound,
                counters,
                &assign.attempt_id,
                started_at,
                api::AttemptOutcome::Succeeded,
                "",
            );
            return;
        }
        // Every attempt of a worker is held equally long, so they are
        // released in the order they came.
        Counters::add(&counters.held, 1);
        held.push_back(Held {
            release: now + hold,
            attempt_id: assign.attempt_id,
            started_at,
        });
    }
}

fn send(outbound: &mpsc::UnboundedSender<api::WorkerMessage>, message: worker_message::Message) {
    // A closed channel means the stream is gone; the inbound side says so.
    let _ = outbound.send(api::WorkerMessage {
        message: Some(message),
    });
}

fn send_result(
    outbound: &mpsc::UnboundedSender<api::WorkerMessage>,
    counters: &Counters,
    attempt_id: &str,
    started_at: Micros,
    outcome: api::AttemptOutcome,
    error: &str,
) {
    Counters::add(&counters.results, 1);
    send(
        outbound,
        worker_message::Message::TaskResult(api::TaskResult {
            attempt_id: attempt_id.to_string(),
            outcome: outcome as i32,
            exit_code: None,
            error: error.to_string(),
            output_json: String::new(),
            started_at: Some(micros_to_timestamp(started_at)),
            ended_at: Some(micros_to_timestamp(now_micros())),
            log_bytes: 0,
        }),
    );
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
