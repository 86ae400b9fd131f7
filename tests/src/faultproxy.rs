//! A TCP proxy that faults on command, for the network-fault tests: put it between the
//! devices and a gateway, or between a gateway and PostgreSQL. `Fault::Cut` drops every
//! connection through it and refuses new ones until the fault is lifted; `Fault::Delay`
//! holds every chunk of bytes for a while in each direction.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes read at once from either side.
const CHUNK_BYTES: usize = 16 * 1024;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passes it on.
    None,
    /// Drops every connection and refuses new ones.
    Cut,
    /// Holds each chunk this many ms.
    DelayMs(u64),
}

/// A running proxy to one target.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    /// Bumped at each cut: connections opened before it end.
    generation: tokio::sync::watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

impl FaultProxy {
    /// A proxy on a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(Fault::None));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (f, g) = (Arc::clone(&fault), generation.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let now = *f.lock().unwrap();
                if now == Fault::Cut {
                    drop(client);
                    continue;
                }
                let (f, cut) = (Arc::clone(&f), g.subscribe());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        pipe(client, server, f, cut).await;
                    }
                });
            }
        });
        Self {
            addr,
            fault,
            generation,
            accept,
        }
    }

    /// Sets the fault; a cut also ends every open connection at once.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
        if fault == Fault::Cut {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    fault: Arc<Mutex<Fault>>,
    mut cut: tokio::sync::watch::Receiver<u64>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = copy(cr, sw, Arc::clone(&fault));
    let down = copy(sr, cw, fault);
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.changed() => {}
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Arc<Mutex<Fault>>,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = *fault.lock().unwrap();
        match now {
            Fault::Cut => return,
            Fault::DelayMs(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Fault::None => {}
        }
        if to
            .write_all(buf.get(..n).unwrap_or_default())
            .await
            .is_err()
        {
            return;
        }
    }
}
