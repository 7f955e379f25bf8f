//! [`TcpProxy`]: a loopback TCP proxy a test runs itself to put a process
//! behind a network partition and heal it, without killing anything.

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections to `127.0.0.1:<upstream>`. During a partition no
/// byte crosses in either direction but every connection stays open, as
/// when packets are dropped: both ends only notice through their own
/// timeouts (heartbeats, keepalives). New connections are accepted and held
/// silent too. Healing closes the held connections (as a stale connection is
/// reset after a real partition) and forwards new ones again. Dropping the
/// proxy closes everything.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    // True while partitioned.
    partitioned: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy on a free loopback port in front of `upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (partitioned, _) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(listener, upstream_port, partitioned.clone()));
        Self {
            port,
            partitioned,
            accept_task,
        }
    }

    /// The proxy's own address, to give to the process to cut off.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops forwarding: connections stay open, silent.
    pub fn partition(&self) {
        self.partitioned.send_replace(true);
    }

    /// Closes the connections held during the partition and forwards new
    /// ones.
    pub fn heal(&self) {
        self.partitioned.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Forwarding tasks end when the sender is gone.
        self.partitioned.send_replace(true);
    }
}

async fn accept_loop(listener: TcpListener, upstream_port: u16, partitioned: watch::Sender<bool>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let state = partitioned.subscribe();
        tokio::spawn(forward(client, upstream_port, state));
    }
}

/// Forwards one connection until a partition, then holds it silent until
/// the partition heals (or the proxy is dropped) and closes it.
async fn forward(
    mut client: TcpStream,
    upstream_port: u16,
    mut partitioned: watch::Receiver<bool>,
) {
    if !*partitioned.borrow_and_update()
        && let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await
    {
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        tokio::select! {
            _ = copy_bidirectional(&mut client, &mut upstream) => return,
            _ = partitioned.wait_for(|cut| *cut) => {}
        }
        // Held open and silent: both sockets live until the heal.
        let _ = partitioned.wait_for(|cut| !*cut).await;
        drop(upstream);
        return;
    }
    let _ = partitioned.wait_for(|cut| !*cut).await;
}
