//! The xDS port: HTTP/2 connections served by hyper, with state-of-the-world ADS streams
//! answered before any router.
//!
//! tonic's own server would wrap each response body in four boxed layers (its body, axum's, its
//! body again, its error recovery), each a pointer to follow and a call per frame for every
//! stream at every push; here hyper polls an ADS stream's [`SotwBody`] itself. Every other method
//! (incremental ADS, CSDS, and tonic's `unimplemented` for unknown ones) goes through tonic's
//! routes as before. The settings are tonic's: HTTP/2 only, keep-alive pings at `keepalive`,
//! no bound on streams per connection (`--max-streams` bounds them all), connect info in each
//! request's extensions; shutting down sends every connection a GOAWAY and waits for them.
//!
//! What a connection writes is gathered over a turn of its task ([`Gathered`]): h2 would write
//! each response with a system call of its own, one stream after the other.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use futures_util::{Stream, StreamExt, future};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::transport::server::Connected;

use super::gather::{Gathered, Turns};
use super::wire::{AdsService, SotwBody, is_sotw};

/// What the port answers: state-of-the-world ADS itself, the rest through tonic's routes.
#[derive(Clone)]
pub(crate) struct Port {
    ads: AdsService,
    routes: Routes,
}

impl Port {
    /// `ads` and every other gRPC service of `routes` (which should hold `ads` too, for the
    /// incremental variant).
    pub(crate) fn new(ads: AdsService, routes: Routes) -> Port {
        Port {
            ads,
            routes: routes.prepare(),
        }
    }

    /// A state-of-the-world ADS stream, or the status that refuses it.
    fn sotw(&self, request: http::Request<Incoming>) -> http::Response<Either<SotwBody, Body>> {
        match self.ads.sotw(request) {
            Ok(response) => response.map(Either::Left),
            Err(status) => status.into_http::<Body>().map(Either::Right),
        }
    }

    /// Any other method, through tonic's routes.
    async fn route(
        self,
        request: http::Request<Incoming>,
    ) -> http::Response<Either<SotwBody, Body>> {
        let mut routes = self.routes;
        // axum's router is always ready; asked anyway, as the trait wants.
        if let Err(never) =
            std::future::poll_fn(|cx| Service::<http::Request<Body>>::poll_ready(&mut routes, cx))
                .await
        {
            match never {}
        }
        match routes.call(request.map(Body::new)).await {
            Ok(response) => response.map(Either::Right),
            Err(never) => match never {},
        }
    }
}

/// Serves `port` on every connection of `incoming` until `stop` completes, then shuts each
/// connection down gracefully and returns once they all closed.
pub(crate) async fn serve<I, IO>(
    port: Port,
    incoming: I,
    keepalive: Option<Duration>,
    stop: impl Future<Output = ()>,
) where
    I: Stream<Item = io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new()).max_concurrent_streams(None);
    if let Some(every) = keepalive {
        // A ping unanswered for as long as the interval drops the connection.
        http2.keep_alive_interval(every).keep_alive_timeout(every);
    }
    let (closing, closed) = watch::channel(());
    let mut incoming = std::pin::pin!(incoming);
    let mut stop = std::pin::pin!(stop);
    loop {
        let io = tokio::select! {
            () = &mut stop => break,
            io = incoming.next() => match io {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!("xDS port: accept failed: {e}");
                    continue;
                }
                None => break,
            },
        };
        tokio::spawn(connection(io, port.clone(), http2.clone(), closed.clone()));
    }
    drop(closed);
    let _ = closing.send(());
    closing.closed().await;
}

/// Serves one connection until it ends; a change of `closing` shuts it down gracefully.
async fn connection<IO>(
    io: IO,
    port: Port,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    mut closing: watch::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let info = io.connect_info();
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(info.clone());
        if is_sotw(request.uri().path()) {
            let response = Ok::<_, Infallible>(port.sotw(request));
            return future::Either::Left(future::ready(response));
        }
        // Boxed: held inline, the router's future would size every stream's task.
        let port = port.clone();
        future::Either::Right(Box::pin(async move { Ok(port.route(request).await) }))
    });
    let turns = Turns::default();
    let io = Gathered::new(io, turns.clone());
    let mut conn = std::pin::pin!(http2.serve_connection(TokioIo::new(io), service));
    let mut shutting = false;
    turns
        .count(async move {
            loop {
                tokio::select! {
                    served = conn.as_mut() => {
                        if let Err(e) = served {
                            tracing::debug!("xDS connection ended: {e}");
                        }
                        return;
                    }
                    _ = closing.changed(), if !shutting => {
                        shutting = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        })
        .await
}
