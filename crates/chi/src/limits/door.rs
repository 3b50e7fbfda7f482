//! [`Door`]: one port's bounds, and the connections and requests it lets in.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use http_body::Body;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::activity::Activity;
use super::body::Timed;
use super::refuse::{REFUSING, Refusal};
use super::service::Bounded;
use super::{Limits, Reason, Refusals};

/// The most an HTTP/1.1 connection buffers from its client, so also the largest request head.
/// A streamed body's chunks are cut from this buffer and share it while they wait to be sent on,
/// so a larger one is held many times over per connection (hyper's default, about 400 KiB, held
/// 6 MiB per stalled upload through the proxy).
pub(crate) const READ_BUFFER: usize = 64 << 10;

/// One port's bounds: cheap to clone, shared by its accept loop and every connection.
#[derive(Debug, Clone)]
pub(crate) struct Door(pub(super) Arc<Inner>);

#[derive(Debug)]
pub(super) struct Inner {
    /// The `server` label: `agent`, `proxy`, `xds`, `proxy_admin`...
    pub(super) server: &'static str,
    pub(super) limits: Limits,
    connections: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    refusal: Refusal,
    /// Requests in flight on every connection of the port.
    pub(super) requests: AtomicUsize,
    pub(super) refusals: Refusals,
    open: Gauge,
    /// The answer to a connection over the limit.
    over: Arc<str>,
}

/// An admitted connection's place: given back when the connection ends.
#[derive(Debug)]
pub(crate) struct Ticket {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Door {
    /// The door of `server`, refusing as `refusal`, counting into `refusals`.
    pub(crate) fn new(
        server: &'static str,
        limits: Limits,
        refusal: Refusal,
        refusals: &Refusals,
    ) -> Door {
        let over = format!(
            "chi {server}: at most {} connections at once (--max-connections); retry later",
            limits.max_connections
        );
        Door(Arc::new(Inner {
            server,
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            refusing: Arc::new(Semaphore::new(REFUSING)),
            refusal,
            requests: AtomicUsize::new(0),
            refusals: refusals.clone(),
            open: refusals.open(server),
            over: Arc::from(over),
        }))
    }

    /// A door with the agent's default bounds, counting nowhere.
    #[cfg(test)]
    pub(crate) fn for_tests(server: &'static str) -> Door {
        let limits = Limits {
            header_timeout: std::time::Duration::from_secs(30),
            body_timeout: std::time::Duration::from_secs(30),
            idle_timeout: std::time::Duration::from_secs(60),
            max_connections: 1024,
            max_requests: 1024,
        };
        Door::new(server, limits, Refusal::Http, &Refusals::default())
    }

    /// The `server` label.
    pub(crate) fn server(&self) -> &'static str {
        self.0.server
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// Counts a refusal of this door.
    pub(crate) fn count(&self, reason: Reason) {
        self.0.refusals.count(self.0.server, reason);
    }

    /// Lets `stream` in, or refuses it (an answer in the background, then closed).
    pub(crate) fn admit(&self, stream: TcpStream) -> Option<(TcpStream, Ticket)> {
        let Ok(permit) = self.0.connections.clone().try_acquire_owned() else {
            self.count(Reason::Connections);
            match self.0.refusing.clone().try_acquire_owned() {
                Ok(refusing) => {
                    let (refusal, over) = (self.0.refusal, self.0.over.clone());
                    tokio::spawn(async move {
                        refusal.answer(stream, over).await;
                        drop(refusing);
                    });
                }
                // Too many refusals at once: closed without an answer.
                Err(_) => drop(stream),
            }
            return None;
        };
        self.0.open.inc();
        Some((
            stream,
            Ticket {
                _permit: permit,
                open: self.0.open.clone(),
            },
        ))
    }

    /// Serves one admitted HTTP/1.1 or HTTP/2 connection (plain TCP, or TLS over it) with
    /// `service` under this door's bounds, until it ends or the header or idle timeout closes it.
    pub(crate) async fn serve<IO, S, B>(&self, stream: IO, ticket: Ticket, service: S)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Timed>, Response = Response<B>, Error = Infallible>
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let activity = Activity::new();
        let service = Bounded::new(service, self.clone(), activity.clone());
        let limits = self.0.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(READ_BUFFER);
        builder.http2().timer(TokioTimer::new());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served
                    && e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout)
                {
                    self.count(Reason::HeaderTimeout);
                }
            }
            reason = activity.idle(limits.header_timeout, limits.idle_timeout) => {
                // Nothing in flight: dropping the connection closes it.
                self.count(reason);
            }
        }
        drop(ticket);
    }

    /// Binds nothing: serves `listener` with `router` under this door, in the background.
    pub(crate) fn serve_router(&self, listener: TcpListener, router: axum::Router) {
        let door = self.clone();
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(server = door.0.server, "accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Some((stream, ticket)) = door.admit(stream) else {
                    continue;
                };
                let door = door.clone();
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                tokio::spawn(async move { door.serve(stream, ticket, service).await });
            }
        });
    }

    /// The admitted connections of `listener`, for `chi xds`: each can be closed by its idle
    /// watchdog ([`super::Watched`]), and its activity travels with its requests.
    pub(crate) fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl futures_util::Stream<Item = std::io::Result<super::Watched>> + Send + 'static {
        let door = self.clone();
        futures_util::stream::unfold(listener, move |listener| {
            let door = door.clone();
            async move {
                loop {
                    let (stream, peer): (TcpStream, SocketAddr) = match listener.accept().await {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(server = door.0.server, "accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    if let Some((stream, ticket)) = door.admit(stream) {
                        let watched = super::Watched::new(stream, peer, ticket, &door);
                        return Some((Ok(watched), listener));
                    }
                }
            }
        })
    }
}
