//! `observability`: what metrics and trace export cost, as fan-out
//! throughput with both on against both off, in the same invocation.
//!
//! Four `baton dev --slots N` processes run side by side, each with the
//! fan-out DAG (`start` → `width` noops → `end`), restarted together on
//! fresh data directories every [`ROUNDS_PER_GENERATION`] rounds, each
//! generation after one unmeasured run on each:
//! - **off**: no `--metrics-listen`, no OTLP endpoint (the default);
//! - **metrics**: `--metrics-listen`, scraped every [`SCRAPE_EVERY`] for
//!   the whole scenario, as Prometheus would (its example configuration
//!   says 15 s);
//! - **traces**: `OTEL_EXPORTER_OTLP_ENDPOINT` set to an OTLP/gRPC receiver
//!   this benchmark runs, which counts the spans it is sent;
//! - **on**: both.
//!
//! Each round runs the DAG once on each, in an order that rotates from
//! round to round, so that a drift of the machine touches all alike; the
//! other processes are idle meanwhile, and after each run the benchmark
//! waits until the process is idle again and until no spans arrived for
//! [`SPANS_QUIET`] (every setup waits so, traced or not, so that each run
//! follows as long a pause and each CPU figure spans as much idle time).
//! Tasks/s = (width + 2) / (`ended_at` − `started_at`) of the run record,
//! as in `fanout`. The overhead is 1 − median / median off; the figure
//! judged is `on`'s. The CPU time each process took is reported too, with
//! its overhead over `off`, twice: in the run (from the trigger until the
//! benchmark saw it succeed: what competes with the run) and per run (until
//! it is idle again and its spans are exported: the whole cost), summed
//! over the process's threads in nanoseconds (`ThreadTimes`). CPU time
//! varies less from run to run than throughput on a shared 2-core machine.
//!
//! With `identical` every process runs as `off` under its setup's name (an
//! A/A test): its "overheads" are the spread between identical processes,
//! the floor against which the target is judged.
//!
//! The scraper and the receiver run in this process, on the same cores as
//! the processes measured. The receiver keeps what it is sent as bytes and
//! decodes it (to count the spans) only once the run is over; what is left
//! of their cost (a scrape every few seconds, receiving the export
//! requests) is counted against the setups that have them, so the
//! overheads are upper bounds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use baton_common::ids::{AttemptId, RunId};
use baton_common::pb::api::AttemptOutcome;
use baton_common::time::now_micros;
use baton_common::traces::{
    AttemptIdentity, AttemptSpanFields, CONTROLLER_SCOPE, EncodedSpans, ExecutionSpanFields,
    QueueLimits, SpanQueue, SpanSink, WORKER_SCOPE, sampled_parent,
};
use baton_controller::traces::attempt_trace_context;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::procs::{Proc, ThreadTimes, free_port, settle, start_dev_with};
use crate::reference::compare;
use crate::report::{Figure, Goal, Report, number};
use crate::runs::{fanout_spec, register, run_seconds, trigger, wait_success};
use crate::stats;

pub const SCENARIO: &str = "observability";
const DAG_ID: &str = "bench-observability";
const POLL: Duration = Duration::from_millis(5);
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the `on` process's `/metrics` is scraped.
const SCRAPE_EVERY: Duration = Duration::from_secs(5);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// The exporter's batch delay, so the last spans of a run leave soon after
/// it (full batches of 512 leave at once anyway).
const BATCH_DELAY_MS: &str = "1000";
/// Rounds between restarts of the four processes, each on a fresh data
/// directory. A process keeps for as long as it runs whatever it started
/// with (which threads share which of malloc's two arenas, where its
/// memory lies, its store's layout): four identical processes side by side
/// ran up to 5 % apart in CPU and further in tasks/s, for many rounds in a
/// row. Restarting them resamples that, so that more rounds do average it
/// out rather than fold one draw into every setup's median.
const ROUNDS_PER_GENERATION: usize = 10;
/// Spans have stopped arriving once none came for this long.
const SPANS_QUIET: Duration = Duration::from_millis(2500);
const SPANS_LIMIT: Duration = Duration::from_secs(120);
/// At most this much slower with metrics and traces on.
pub const TARGET_OVERHEAD_PERCENT: f64 = 5.0;

/// Passes over a run's tasks when timing the span work of a traced run in
/// this process ([`span_work_per_task`]); the median is reported.
const SPAN_WORK_PASSES: usize = 9;
/// Attempts whose spans the controller queues at once in that timing, as
/// it does for the attempts a batch stored.
const SPAN_WORK_BATCH: usize = 256;

/// An `ExportTraceServiceRequest` whose `resource_spans` (field 1) are
/// kept as bytes, not decoded: the receiver shares the cores of the
/// processes measured, so it leaves the spans' decoding until the run is
/// over ([`SpanCounter::count`]).
#[derive(Clone, PartialEq, prost::Message)]
struct UndecodedExport {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    resource_spans: Vec<bytes::Bytes>,
}

/// What the receiver was sent, not yet decoded.
#[derive(Debug, Default)]
struct SpanCounter {
    received: Mutex<Vec<bytes::Bytes>>,
    /// Requests so far, for [`spans_settled`] to see that they stopped.
    requests: AtomicU64,
}

impl SpanCounter {
    /// Decodes what arrived since the last call and counts its spans.
    fn count(&self) -> anyhow::Result<u64> {
        let received =
            std::mem::take(&mut *self.received.lock().unwrap_or_else(PoisonError::into_inner));
        let mut spans = 0;
        for resource in received {
            let resource = ResourceSpans::decode(resource).context("undecodable ResourceSpans")?;
            spans += resource
                .scope_spans
                .iter()
                .map(|scope| scope.spans.len() as u64)
                .sum::<u64>();
        }
        Ok(spans)
    }
}

/// The one method of the OTLP/gRPC `TraceService`.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The OTLP/gRPC `TraceService`'s `Export`, served at [`EXPORT_PATH`].
#[derive(Debug, Clone)]
struct Receiver(Arc<SpanCounter>);

impl tonic::server::UnaryService<UndecodedExport> for Receiver {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<Response<Self::Response>, Status>>;

    fn call(&mut self, request: Request<UndecodedExport>) -> Self::Future {
        let export = request.into_inner();
        self.0
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(export.resource_spans);
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(Response::new(ExportTraceServiceResponse::default())))
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for Receiver
where
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            let codec =
                tonic_prost::ProstCodec::<ExportTraceServiceResponse, UndecodedExport>::default();
            Ok(tonic::server::Grpc::new(codec)
                .unary(service, request)
                .await)
        })
    }
}

/// Serves the receiver on a free loopback port until `stop`; returns its
/// endpoint.
async fn start_receiver(
    counter: Arc<SpanCounter>,
    stop: CancellationToken,
) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the OTLP receiver")?;
    let address = listener.local_addr()?;
    // Tonic's routes answer any other method as unimplemented.
    let mut routes = tonic::service::Routes::default();
    let router = routes.axum_router_mut();
    *router = std::mem::take(router).route_service(EXPORT_PATH, Receiver(counter));
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            eprintln!("the OTLP receiver stopped: {error}");
        }
    });
    Ok(format!("http://{address}"))
}

/// What the scraper saw.
#[derive(Debug, Default)]
struct Scrapes {
    done: AtomicU64,
    failed: AtomicU64,
    last_bytes: AtomicU64,
    /// Seconds from each successful scrape's request to its last byte:
    /// what Prometheus calls `scrape_duration_seconds`.
    seconds: Mutex<Vec<f64>>,
}

/// Scrapes `url` every [`SCRAPE_EVERY`] until `stop`.
fn start_scraper(
    client: reqwest::Client,
    url: String,
    scrapes: Arc<Scrapes>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SCRAPE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let started = Instant::now();
            let body = async {
                client
                    .get(&url)
                    .timeout(SCRAPE_TIMEOUT)
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await
            };
            match body.await {
                Ok(bytes) => {
                    scrapes
                        .seconds
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(started.elapsed().as_secs_f64());
                    scrapes.done.fetch_add(1, Ordering::Relaxed);
                    scrapes
                        .last_bytes
                        .store(bytes.len() as u64, Ordering::Relaxed);
                }
                Err(error) => {
                    scrapes.failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("  scraping {url} failed: {error}");
                }
            }
        }
    })
}

/// Waits until nothing arrived for [`SPANS_QUIET`]; returns the spans
/// received since the last call.
async fn spans_settled(counter: &SpanCounter) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut last = counter.requests.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while started.elapsed() < SPANS_LIMIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = counter.requests.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= SPANS_QUIET {
            return counter.count();
        }
    }
    anyhow::bail!("spans were still arriving {SPANS_LIMIT:?} later")
}

/// One setup's process of the current generation, with its scraper.
struct Running {
    dev: Proc,
    client: baton_common::client::BatonClient,
    /// The process's data directory, removed once it stopped.
    data_dir: PathBuf,
    scraper: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Running {
    /// Runs the DAG once and waits until the process is idle; returns its
    /// tasks/s and the process's CPU time when the run was seen to succeed.
    async fn run_once(&mut self, tasks: usize) -> anyhow::Result<(f64, ThreadTimes)> {
        let run_id = trigger(&mut self.client, DAG_ID).await?;
        let finished = wait_success(
            &mut self.client,
            &mut self.dev,
            &run_id,
            POLL,
            RUN_TIMEOUT,
            || {},
        )
        .await?;
        let cpu_at_success = ThreadTimes::read(self.dev.pid())?;
        settle(self.dev.pid()).await?;
        Ok((tasks as f64 / run_seconds(&finished.run)?, cpu_at_success))
    }

    /// Stops the scraper and the process, and removes its data directory
    /// (its log stays, for `--keep-temp`).
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some((stop, scraper)) = self.scraper.take() {
            stop.cancel();
            let _ = scraper.await;
        }
        self.dev.stop().await;
        std::fs::remove_dir_all(&self.data_dir)
            .with_context(|| format!("cannot remove {}", self.data_dir.display()))
    }
}

struct Side {
    setup: Setup,
    running: Option<Running>,
    rates: Vec<f64>,
    spans: Vec<f64>,
    /// CPU time of the process per run, from the trigger until it is idle
    /// again and no spans arrived for [`SPANS_QUIET`] (with traces: its
    /// spans are all exported).
    cpu: Vec<f64>,
    /// CPU time of the process from the trigger until the benchmark saw
    /// the run succeed: what competes with the run itself.
    run_cpu: Vec<f64>,
}

/// What one of the processes has on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Setup {
    name: &'static str,
    metrics: bool,
    traces: bool,
    /// The figures' keys in the JSON file: tasks/s, CPU per run, and (all
    /// but `off`) their overheads.
    rate_key: &'static str,
    cpu_key: &'static str,
    run_cpu_key: &'static str,
    overhead_key: &'static str,
    cpu_overhead_key: &'static str,
    run_cpu_overhead_key: &'static str,
    /// How the overhead figures name it.
    overhead_name: &'static str,
}

impl Setup {
    /// What the process has on, for the figures' labels.
    fn describe(self) -> String {
        let scraped = format!("/metrics scraped every {} s", SCRAPE_EVERY.as_secs());
        match (self.metrics, self.traces) {
            // Another name runs as off only in an identical invocation.
            (false, false) if self.name != "off" => {
                format!("metrics and traces off, as `{}`", self.name)
            }
            (false, false) => "metrics and traces off".to_string(),
            (true, false) => scraped,
            (false, true) => "traces exported".to_string(),
            (true, true) => format!("{scraped} + traces exported"),
        }
    }
}

/// Both off and both on are the figure; each alone says which costs what.
const SETUPS: [Setup; 4] = [
    Setup {
        name: "off",
        metrics: false,
        traces: false,
        rate_key: "off_tasks_per_s",
        cpu_key: "off_cpu_s",
        run_cpu_key: "off_run_cpu_s",
        overhead_key: "",
        cpu_overhead_key: "",
        run_cpu_overhead_key: "",
        overhead_name: "",
    },
    Setup {
        name: "metrics",
        metrics: true,
        traces: false,
        rate_key: "metrics_tasks_per_s",
        cpu_key: "metrics_cpu_s",
        run_cpu_key: "metrics_run_cpu_s",
        overhead_key: "metrics_overhead_percent",
        cpu_overhead_key: "metrics_cpu_overhead_percent",
        run_cpu_overhead_key: "metrics_run_cpu_overhead_percent",
        overhead_name: "metrics alone",
    },
    Setup {
        name: "traces",
        metrics: false,
        traces: true,
        rate_key: "traces_tasks_per_s",
        cpu_key: "traces_cpu_s",
        run_cpu_key: "traces_run_cpu_s",
        overhead_key: "traces_overhead_percent",
        cpu_overhead_key: "traces_cpu_overhead_percent",
        run_cpu_overhead_key: "traces_run_cpu_overhead_percent",
        overhead_name: "traces alone",
    },
    Setup {
        name: "on",
        metrics: true,
        traces: true,
        rate_key: "on_tasks_per_s",
        cpu_key: "on_cpu_s",
        run_cpu_key: "on_run_cpu_s",
        overhead_key: "overhead_percent",
        cpu_overhead_key: "cpu_overhead_percent",
        run_cpu_overhead_key: "run_cpu_overhead_percent",
        overhead_name: "both",
    },
];

/// What starting a setup's process takes, the same for each generation.
struct Launch<'a> {
    binary: &'a Path,
    work: &'a Path,
    slots: u32,
    spec: &'a str,
    endpoint: &'a str,
    queue_size: Option<&'a str>,
    http: &'a reqwest::Client,
    scrapes: &'a Arc<Scrapes>,
}

impl Launch<'_> {
    /// Starts `setup`'s process of `generation` on a fresh data directory,
    /// with the DAG registered and, with metrics, a scraper.
    async fn start(&self, setup: Setup, generation: usize) -> anyhow::Result<Running> {
        let mut args = Vec::new();
        let mut envs = Vec::new();
        let metrics_address = if setup.metrics {
            let address = format!("127.0.0.1:{}", free_port()?);
            args = vec!["--metrics-listen".to_string(), address.clone()];
            Some(address)
        } else {
            None
        };
        if setup.traces {
            envs = vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint),
                ("OTEL_BSP_SCHEDULE_DELAY", BATCH_DELAY_MS),
            ];
            if let Some(queue_size) = self.queue_size {
                envs.push(("OTEL_BSP_MAX_QUEUE_SIZE", queue_size));
            }
        }
        let name = format!("observability-{}-{generation}", setup.name);
        let (dev, mut client) =
            start_dev_with(self.binary, self.work, &name, self.slots, &args, &envs).await?;
        register(&mut client, self.spec.to_string()).await?;
        let scraper = metrics_address.map(|address| {
            let stop = CancellationToken::new();
            let scraper = start_scraper(
                self.http.clone(),
                format!("http://{address}/metrics"),
                Arc::clone(self.scrapes),
                stop.clone(),
            );
            (stop, scraper)
        });
        Ok(Running {
            dev,
            client,
            data_dir: self.work.join(format!("{name}-data")),
            scraper,
        })
    }
}

pub async fn run(
    binary: &Path,
    work: &Path,
    repeat: usize,
    slots: u32,
    width: usize,
    identical: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let tasks = width + 2;
    println!(
        "== observability: fanout of {} noops with metrics (scraped every {} s) and trace export, each on and off, baton dev --slots {slots}, {repeat} runs each, in rotating order, the processes restarted every {ROUNDS_PER_GENERATION} rounds ==",
        number(width as f64),
        SCRAPE_EVERY.as_secs()
    );
    if identical {
        println!(
            "  identical: every process has metrics and traces off; the setups' names only tell the processes apart"
        );
    }
    let stop = CancellationToken::new();
    let counter = Arc::new(SpanCounter::default());
    let endpoint = start_receiver(Arc::clone(&counter), stop.clone()).await?;
    let scrapes = Arc::new(Scrapes::default());
    // Plain HTTP only: a missing CA bundle does not matter.
    let http = baton_common::http::build_client("baton-bench")
        .map_err(anyhow::Error::msg)?
        .client;
    let spec = fanout_spec(DAG_ID, width);
    // The exporter's queue: Baton's default unless this process's
    // environment says otherwise (to see what a smaller queue drops).
    let queue_size = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE").ok();
    let launch = Launch {
        binary,
        work,
        slots,
        spec: &spec,
        endpoint: &endpoint,
        queue_size: queue_size.as_deref(),
        http: &http,
        scrapes: &scrapes,
    };
    let mut sides: Vec<Side> = SETUPS
        .iter()
        // Identical: each keeps its name and figures' keys, and runs as off.
        .map(|&setup| {
            if identical {
                Setup {
                    metrics: false,
                    traces: false,
                    ..setup
                }
            } else {
                setup
            }
        })
        .map(|setup| Side {
            setup,
            running: None,
            rates: Vec::new(),
            spans: Vec::new(),
            cpu: Vec::new(),
            run_cpu: Vec::new(),
        })
        .collect();
    let outcome: anyhow::Result<()> = async {
        for round in 0..repeat {
            if round % ROUNDS_PER_GENERATION == 0 {
                let generation = round / ROUNDS_PER_GENERATION;
                for side in &mut sides {
                    if let Some(running) = side.running.take() {
                        running.stop().await?;
                    }
                    side.running = Some(launch.start(side.setup, generation).await?);
                }
                // Spans of the start-up (registration) and of the warm-up
                // runs are not a measured run's.
                for side in &mut sides {
                    let running = side.running.as_mut().expect("started above");
                    running.run_once(tasks).await?;
                }
                spans_settled(&counter).await?;
            }
            let mut line = format!("  round #{}:", round + 1);
            for offset in 0..sides.len() {
                let side = &mut sides[(round + offset) % SETUPS.len()];
                let running = side.running.as_mut().expect("each generation starts all");
                let pid = running.dev.pid();
                let cpu_before = ThreadTimes::read(pid)?;
                let (rate, cpu_at_success) = running.run_once(tasks).await?;
                let run_cpu = cpu_at_success.since(&cpu_before);
                side.rates.push(rate);
                side.run_cpu.push(run_cpu.as_secs_f64());
                line.push_str(&format!(" {} {} tasks/s", side.setup.name, number(rate)));
                // Every setup waits alike, so that each CPU figure spans
                // as much idle time and each run follows as long a pause.
                let spans = spans_settled(&counter).await?;
                if side.setup.traces {
                    side.spans.push(spans as f64);
                    line.push_str(&format!(" ({} spans)", number(spans as f64)));
                }
                let cpu = ThreadTimes::read(pid)?.since(&cpu_before);
                side.cpu.push(cpu.as_secs_f64());
                line.push_str(&format!(
                    " {} CPU-s, {} in the run;",
                    number(cpu.as_secs_f64()),
                    number(run_cpu.as_secs_f64())
                ));
            }
            println!("{line}");
        }
        Ok(())
    }
    .await;
    stop.cancel();
    for side in &mut sides {
        if let Some(running) = side.running.take() {
            running.stop().await?;
        }
    }
    outcome?;
    let scraped = scrapes.done.load(Ordering::Relaxed);
    let failed = scrapes.failed.load(Ordering::Relaxed);
    println!(
        "  {scraped} scrapes ({failed} failed), the last {} KiB; {} export requests",
        number(scrapes.last_bytes.load(Ordering::Relaxed) as f64 / 1024.0),
        counter.requests.load(Ordering::Relaxed)
    );
    anyhow::ensure!(failed == 0, "{failed} scrapes of /metrics failed");
    let metrics_on = sides.iter().any(|side| side.setup.metrics);
    anyhow::ensure!(!metrics_on || scraped > 0, "/metrics was never scraped");
    let scrape_seconds = std::mem::take(
        &mut *scrapes
            .seconds
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    if !scrape_seconds.is_empty() {
        report.figures.push(Figure::new(
            SCENARIO,
            "scrape_s",
            "one scrape of /metrics, request to last byte",
            "s",
            scrape_seconds,
        ));
    }

    let off = stats::median(&sides[0].rates);
    let off_cpu = stats::median(&sides[0].cpu);
    let off_run_cpu = stats::median(&sides[0].run_cpu);
    for side in &sides {
        let setup = side.setup;
        let rate = stats::median(&side.rates);
        report.figures.push(Figure::new(
            SCENARIO,
            setup.rate_key,
            format!("fanout, {}", setup.describe()),
            "tasks/s",
            side.rates.clone(),
        ));
        report.comparisons.extend(compare(
            report,
            &format!("observability {} {} tasks/s", setup.name, number(rate)),
            rate,
            true,
        ));
        let cpu_figures = [
            (
                "per run",
                setup.cpu_key,
                setup.cpu_overhead_key,
                &side.cpu,
                off_cpu,
            ),
            (
                "in the run",
                setup.run_cpu_key,
                setup.run_cpu_overhead_key,
                &side.run_cpu,
                off_run_cpu,
            ),
        ];
        for (when, key, overhead_key, samples, off_median) in cpu_figures {
            report.figures.push(Figure::new(
                SCENARIO,
                key,
                format!("CPU of the process {when}, {}", setup.name),
                "s",
                samples.clone(),
            ));
            if !overhead_key.is_empty() {
                report.figures.push(Figure::new(
                    SCENARIO,
                    overhead_key,
                    format!(
                        "{}: CPU {when}, median / median off − 1",
                        setup.overhead_name
                    ),
                    "%",
                    vec![(stats::median(samples) / off_median - 1.0) * 100.0],
                ));
            }
        }
        if setup.overhead_key.is_empty() {
            continue;
        }
        let overhead = (1.0 - rate / off) * 100.0;
        let mut figure = Figure::new(
            SCENARIO,
            setup.overhead_key,
            format!("{}: 1 − median / median off", setup.overhead_name),
            "%",
            vec![overhead],
        );
        if setup.metrics && setup.traces {
            figure = figure.goal(Goal::AtMost(TARGET_OVERHEAD_PERCENT));
        }
        report.figures.push(figure);
    }
    // What the spans cost where they are made, beside what a task costs
    // with traces off: the direct cost of traces in the run, free of the
    // machine's drift between runs.
    let span_work = span_work_per_task(width)?;
    let span_work_ns = stats::median(&span_work);
    let off_ns_per_task = off_run_cpu * 1e9 / tasks as f64;
    let span_work_percent = span_work_ns / off_ns_per_task * 100.0;
    println!(
        "  span work of a traced run, timed here: {} ns per task (median of {SPAN_WORK_PASSES} passes over {} tasks) = {span_work_percent:.1} % of off's {} ns of CPU per task in the run",
        number(span_work_ns),
        number(width as f64),
        number(off_ns_per_task)
    );
    report.figures.push(Figure::new(
        SCENARIO,
        "span_work_ns_per_task",
        "span work per task of a traced run, timed in the benchmark",
        "ns",
        span_work,
    ));
    report.figures.push(Figure::new(
        SCENARIO,
        "span_work_percent_of_off",
        "span work per task / off's CPU per task in the run",
        "%",
        vec![span_work_percent],
    ));
    let spans: Vec<f64> = sides
        .iter()
        .filter(|side| side.setup.traces)
        .flat_map(|side| side.spans.iter().copied())
        .collect();
    if !spans.is_empty() {
        report.figures.push(Figure::new(
            SCENARIO,
            "spans_per_run",
            "spans the receiver got per run",
            "spans",
            spans,
        ));
    }
    Ok(())
}

/// The work a traced run adds per task where its spans are made, timed in
/// this process on a queue like the processes' (Baton's default limits):
/// the controller's trace context for the `Assign`, the worker's reading of
/// it and the record of its `execute` span, and the record of the
/// controller's `attempt` span, each queued as `baton` does (the
/// scheduler's records wait for their batch). Building, writing and
/// sending the spans are left out: the exporter does that after the run.
/// Nanoseconds per task, one sample per pass over `width` tasks.
fn span_work_per_task(width: usize) -> anyhow::Result<Vec<f64>> {
    let queue = SpanQueue::new(QueueLimits::DEFAULT);
    let controller = SpanSink::new(
        Arc::clone(&queue),
        Box::new(opentelemetry_sdk::trace::Sampler::AlwaysOn),
        CONTROLLER_SCOPE,
    );
    let worker = controller.with_scope(WORKER_SCOPE);
    let run_id = RunId::generate();
    let task_ids: Vec<String> = (0..width).map(|index| format!("noop-{index}")).collect();
    // Attempt ids are made whether traces are on or not.
    let attempt_ids: Vec<AttemptId> = (0..width).map(|_| AttemptId::generate()).collect();
    let mut pending = EncodedSpans::default();
    let mut samples = Vec::with_capacity(SPAN_WORK_PASSES);
    for _ in 0..SPAN_WORK_PASSES {
        let started = Instant::now();
        for (index, (task_id, attempt_id)) in task_ids.iter().zip(&attempt_ids).enumerate() {
            let leased_at = now_micros();
            let trace_context = attempt_trace_context(run_id, *attempt_id, true);
            let (trace_id, parent_span_id) =
                sampled_parent(&trace_context).context("the trace context names no parent")?;
            let execution_start = std::time::SystemTime::now();
            worker.export_execution(&ExecutionSpanFields {
                trace_id,
                parent_span_id,
                start: execution_start,
                end: std::time::SystemTime::now(),
                worker_id: "bench-worker",
                outcome: AttemptOutcome::Succeeded,
                exit_code: None,
                error: Some(""),
            });
            let fields = AttemptSpanFields {
                identity: AttemptIdentity {
                    dag_id: DAG_ID,
                    run_id,
                    task_id,
                    attempt: 1,
                    attempt_id: *attempt_id,
                    worker_id: Some("bench-worker"),
                },
                leased_at,
                recorded_at: now_micros(),
                outcome: AttemptOutcome::Succeeded,
                exit_code: None,
                error: None,
            };
            controller.encode_attempt(&fields, &mut pending);
            if (index + 1) % SPAN_WORK_BATCH == 0 {
                controller.export_encoded(&mut pending);
            }
        }
        controller.export_encoded(&mut pending);
        samples.push(started.elapsed().as_nanos() as f64 / width as f64);
        // The exporter's part, untimed: the chunks go back for reuse.
        let mut taken = 0;
        while let Some(chunk) = queue.take(true) {
            taken += chunk.spans();
            queue.recycle(chunk);
        }
        anyhow::ensure!(
            taken == 2 * width && queue.dropped() == 0,
            "{taken} spans queued of {}, {} dropped",
            2 * width,
            queue.dropped()
        );
    }
    Ok(samples)
}
