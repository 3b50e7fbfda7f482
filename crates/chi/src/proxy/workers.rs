//! The accept loop and the workers.
//!
//! nginx's shape: every worker thread runs its own (single-threaded) event loop and its own
//! upstream connections, so a request never changes thread (no work stealing, no cross-thread
//! wake-ups). The accept loop deals connections to the workers in turn: workers racing to accept
//! on one socket left one of two with most of them (about 130 vs 50 CPU ticks under wrk -c50).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::Proxy;
use crate::agent::Shutdown;
use crate::failure::Failure;
use crate::limits::{Door, Ticket};

/// A connection for a worker: the socket, the peer address, and its place under the door's
/// connection bound (the queues hold at most that many).
type Accepted = (std::net::TcpStream, SocketAddr, Ticket);

/// Starts `proxy.workers` worker threads serving through `door`; returns the queue of each.
pub(super) fn start(
    proxy: &Arc<Proxy>,
    door: &Door,
) -> anyhow::Result<Vec<UnboundedSender<Accepted>>> {
    let mut queues = Vec::with_capacity(proxy.workers);
    for n in 0..proxy.workers {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = unbounded_channel();
        let proxy = proxy.clone();
        let door = door.clone();
        std::thread::Builder::new()
            .name(format!("chi-proxy-{n}"))
            .spawn(move || runtime.block_on(serve(proxy, door, n, rx)))?;
        queues.push(tx);
    }
    Ok(queues)
}

/// Accepts connections, lets `door` admit or refuse each, and deals them to the workers in
/// turn, until SIGINT or SIGTERM.
pub(super) async fn deal(
    listener: TcpListener,
    door: &Door,
    queues: Vec<UnboundedSender<Accepted>>,
    mut shutdown: Shutdown,
) -> anyhow::Result<ExitCode> {
    let mut next = 0;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.wait() => return Ok(ExitCode::SUCCESS),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Some((stream, ticket)) = door.admit(stream) else {
            continue;
        };
        // The worker registers the socket with its own event loop.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "cannot hand the connection to a worker: {e}");
                continue;
            }
        };
        let Some(queue) = queues.get(next) else {
            return Err(Failure::failed("chi proxy has no worker").into());
        };
        if queue.send((stream, peer, ticket)).is_err() {
            return Err(Failure::failed(format!("proxy worker {next} stopped")).into());
        }
        next = (next + 1) % queues.len();
    }
}

/// One worker: serves the connections dealt to it on its own (single-threaded) runtime.
async fn serve(
    proxy: Arc<Proxy>,
    door: Door,
    worker: usize,
    mut accepted: UnboundedReceiver<Accepted>,
) {
    while let Some((stream, peer, ticket)) = accepted.recv().await {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "worker cannot use the connection: {e}");
                continue;
            }
        };
        let proxy = proxy.clone();
        // X-Forwarded-For of this connection, made once for all its requests.
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string()).ok();
        let door = door.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                let peer_ip = peer_ip.clone();
                async move {
                    Ok::<_, Infallible>(proxy.handle(worker, req, peer, peer_ip.as_ref()).await)
                }
            });
            door.serve(stream, ticket, service).await;
        });
    }
}
