//! A real etcd for tests, and a TCP proxy that can lose a response.
//!
//! [`Etcd::start`] runs the `etcd` binary (from the distribution's
//! `etcd-server` package) on free loopback ports with a temporary data
//! directory and its log in that directory; it is killed by its own PID on
//! drop. `BATON_TEST_KEEP_DIR=1` keeps the directory for a look afterwards.
//! Whether a missing etcd fails or skips the test is decided in one place:
//! [`etcd_binary`]. `BATON_ETCD_BIN` picks another etcd binary (another
//! version) than the one on `PATH` or at `/usr/bin/etcd`.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How long etcd may take to answer after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The etcd binary, or `None` (after saying so) when it is missing and the
/// test may be skipped. Under `CI=true` a missing etcd fails the test.
pub fn etcd_binary(test: &str) -> Option<PathBuf> {
    // Another etcd version can be tried with BATON_ETCD_BIN=/path/to/etcd.
    if let Some(chosen) = std::env::var_os("BATON_ETCD_BIN") {
        let chosen = PathBuf::from(chosen);
        assert!(
            chosen.is_file(),
            "BATON_ETCD_BIN={} is not a file",
            chosen.display()
        );
        return Some(chosen);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    let found = on_path.or_else(|| {
        let packaged = PathBuf::from("/usr/bin/etcd");
        packaged.is_file().then_some(packaged)
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|value| value == "true") {
            panic!(
                "{test}: etcd-server is required when CI=true (no `etcd` on PATH or at /usr/bin/etcd); install the distribution's etcd-server package"
            );
        }
        eprintln!("{test}: skipped, etcd not found (install etcd-server; with CI=true this fails)");
    }
    found
}

/// One etcd member on loopback ports.
pub struct Etcd {
    binary: PathBuf,
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    log: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd and waits until it answers; `None` when the test is
    /// skipped because etcd is missing.
    pub async fn start(test: &str) -> Option<Etcd> {
        let binary = etcd_binary(test)?;
        let dir = tempfile::Builder::new()
            .prefix("baton-etcd-")
            .tempdir()
            .expect("temp dir");
        let data_dir = dir.path().join("data");
        let log = dir.path().join("etcd.log");
        // Free ports can be taken between probing and etcd binding them:
        // try a few pairs.
        for _ in 0..3 {
            let mut etcd = Etcd {
                binary: binary.clone(),
                dir: None,
                data_dir: data_dir.clone(),
                log: log.clone(),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            };
            etcd.spawn();
            if etcd.wait_ready().await {
                eprintln!(
                    "{test}: etcd (pid {}) at {}, log {}",
                    etcd.pid(),
                    etcd.endpoint(),
                    log.display()
                );
                etcd.dir = Some(dir);
                return Some(etcd);
            }
            etcd.kill();
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        panic!("{test}: etcd did not start; its log:\n{}", tail(&log));
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn client_address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kills etcd (SIGKILL, by its PID) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data directory and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(
            self.wait_ready().await,
            "etcd did not come back; its log:\n{}",
            tail(&self.log)
        );
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log file");
        let child = Command::new(&self.binary)
            .arg("--name=default")
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", self.binary.display()));
        self.child = Some(child);
    }

    /// Whether etcd answers a read before the deadline (false when it
    /// exits first).
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            if answers(&self.endpoint()).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.dir.take()
            && std::env::var("BATON_TEST_KEEP_DIR").is_ok_and(|value| value == "1")
        {
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

async fn answers(endpoint: &str) -> bool {
    let probe = async {
        let options =
            etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
        let mut client = etcd_client::Client::connect([endpoint], Some(options)).await?;
        client.get("/", None).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(_))
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A TCP proxy in front of etcd that, when told to, loses the next gRPC
/// response: it forwards the request, and when etcd's answer starts (an
/// HTTP/2 HEADERS or DATA frame on a stream) it closes both connections
/// instead of delivering it. So the request was handled but the client
/// never learns its outcome.
pub struct CuttingProxy {
    address: std::net::SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (armed, cuts) = (Arc::clone(&armed), Arc::clone(&cuts));
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, Arc::clone(&armed), Arc::clone(&cuts)));
                }
            }
        });
        CuttingProxy {
            address,
            armed,
            cuts,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The next response is lost and its connection cut.
    pub fn cut_next_response(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many responses were lost so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    // Server to client, frame by frame (the server side of HTTP/2 starts
    // with a frame, no preface).
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    'relay: loop {
        let read = match server_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        pending.extend_from_slice(&buffer[..read]);
        while pending.len() >= 9 {
            let length = (usize::from(pending[0]) << 16)
                | (usize::from(pending[1]) << 8)
                | usize::from(pending[2]);
            if pending.len() < 9 + length {
                break;
            }
            let kind = pending[3];
            let stream =
                u32::from_be_bytes([pending[5], pending[6], pending[7], pending[8]]) & 0x7fff_ffff;
            let answer = stream != 0 && (kind == 0 || kind == 1);
            if answer && armed.swap(false, Ordering::SeqCst) {
                cuts.fetch_add(1, Ordering::SeqCst);
                break 'relay;
            }
            if client_write
                .write_all(&pending[..9 + length])
                .await
                .is_err()
            {
                break 'relay;
            }
            pending.drain(..9 + length);
        }
    }
    upstream.abort();
}
