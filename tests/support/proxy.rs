//! A TCP proxy that a spec puts between walcast and one server, to bring the faults that
//! production networks bring: latency, a stall (the connection stays open and nothing
//! moves), a reset of every connection, one direction cut while the other flows; and then a
//! heal. Bytes are never reordered, altered or dropped: a fault only delays, holds or closes,
//! as TCP over a real network does.
//!
//! ```ignore
//! let proxy = FaultProxy::start("127.0.0.1:54329").await;
//! // point walcast at proxy.addr() …
//! proxy.set(Fault::Stall);
//! proxy.heal();
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the bytes and connections passing through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Everything flows.
    None,
    /// Each chunk waits this long before it is forwarded, in both directions.
    Latency(Duration),
    /// Connections stay open, and nothing is forwarded either way; new connections are
    /// accepted and never answered. What arrives meanwhile is held and forwarded on heal.
    Stall,
    /// Nothing reaches the server; the other way flows. As on a real path that loses every
    /// packet one way, TCP delivers what was sent once the path heals: bytes are held, never
    /// dropped (a gap in a stream is no fault a network can bring).
    CutToServer,
    /// Nothing reaches the client; the other way flows (held as for [`Fault::CutToServer`]).
    CutToClient,
}

/// A running proxy; dropping it closes its listener and every connection through it.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Bumped by [`FaultProxy::reset`]: every connection opened before it closes with RST.
    generation: watch::Sender<u64>,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> FaultProxy {
        let target: SocketAddr = tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .expect("the proxy's target resolves");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (fault, _) = watch::channel(Fault::None);
        let (generation, _) = watch::channel(0u64);
        let connections = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            fault.subscribe(),
            generation.subscribe(),
            connections.clone(),
        ));
        FaultProxy {
            addr,
            fault,
            generation,
            connections,
            task,
        }
    }

    /// `127.0.0.1:port`, for the client's configuration.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Brings `fault` from now on.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Everything flows again; what a stall held is forwarded.
    pub fn heal(&self) {
        self.set(Fault::None);
    }

    /// Closes every open connection with a TCP reset, as a load balancer or a NAT that lost
    /// its state does. New connections are accepted as usual.
    pub fn reset(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.reset();
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    fault: watch::Receiver<Fault>,
    generation: watch::Receiver<u64>,
    connections: Arc<AtomicU64>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::Relaxed);
        let (fault, generation) = (fault.clone(), generation.clone());
        tasks.spawn(async move {
            // A stalled proxy accepts and never answers: it connects upstream only on heal.
            let mut waiting = fault.clone();
            if waiting.wait_for(|f| *f != Fault::Stall).await.is_err() {
                return;
            }
            let Ok(server) = TcpStream::connect(target).await else {
                let _ = client.set_zero_linger();
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let born = *generation.borrow();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let to_server = pump(
                client_read,
                server_write,
                Direction::ToServer,
                fault.clone(),
            );
            let to_client = pump(server_read, client_write, Direction::ToClient, fault);
            let mut reset = generation;
            tokio::select! {
                // One side closed: the whole connection ends with it.
                (a, b) = async { tokio::join!(to_server, to_client) } => {
                    let _ = (a, b);
                }
                _ = reset.wait_for(|g| *g != born) => {}
            }
            // The halves dropped here close both sockets; for a reset, linger 0 makes it RST.
        });
        while tasks.try_join_next().is_some() {}
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

/// Whether `fault` holds the bytes going `direction`.
fn blocks(fault: Fault, direction: Direction) -> bool {
    match fault {
        Fault::Stall => true,
        Fault::CutToServer => direction == Direction::ToServer,
        Fault::CutToClient => direction == Direction::ToClient,
        Fault::None | Fault::Latency(_) => false,
    }
}

/// Forwards `from` to `to` under the proxy's current fault, until either side closes.
/// On a reset the caller drops this future: the sockets close, with RST (linger 0).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    mut fault: watch::Receiver<Fault>,
) {
    let _ = to.as_ref().set_zero_linger();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A stall stops reading too, so the sender's window fills as on a real stalled path.
        if fault.wait_for(|f| !blocks(*f, direction)).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let now = *fault.borrow();
        if let Fault::Latency(d) = now {
            tokio::time::sleep(d).await;
        }
        // Read just before the fault began: hold it until heal.
        if fault.wait_for(|f| !blocks(*f, direction)).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
