//! The answer to a connection over the limit: one short refusal in the client's protocol, then
//! the connection closes.
//!
//! HTTP clients get `503 Service Unavailable` with `Retry-After: 1` (RFC 9110 §15.6.4), gRPC
//! clients a Trailers-Only response with status `RESOURCE_EXHAUSTED` (gRPC over HTTP/2 spec), so
//! a client sees why and when to come back instead of a reset. Answering reads the request head
//! first: closing a socket with unread data resets it, and the client would lose the answer.
//! Refusals are themselves bounded: at most [`REFUSING`] at once, each for at most
//! [`REFUSAL_TIME`]; past that a connection is closed at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// Refusals answered at once; more connections over the limit are closed without one.
pub(crate) const REFUSING: usize = 64;
/// Longest a refused connection is kept to read its request and answer.
pub(crate) const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// How a door refuses a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// HTTP/1.1 `503` with `Retry-After`.
    Http,
    /// gRPC `RESOURCE_EXHAUSTED` over HTTP/2.
    Grpc,
}

impl Refusal {
    /// Answers `stream` with `message` and closes it, within [`REFUSAL_TIME`].
    pub(crate) async fn answer(self, stream: TcpStream, message: Arc<str>) {
        let io = TokioIo::new(stream);
        let served = async {
            match self {
                Refusal::Http => {
                    let svc =
                        hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                            let message = message.clone();
                            async move { Ok::<_, Infallible>(unavailable(&message)) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(REFUSAL_TIME)
                        .keep_alive(false)
                        .serve_connection(io, svc)
                        .await;
                }
                Refusal::Grpc => {
                    let svc =
                        hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                            let message = message.clone();
                            async move { Ok::<_, Infallible>(exhausted(&message)) }
                        });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .max_concurrent_streams(4)
                        .serve_connection(io, svc)
                        .await;
                }
            }
        };
        let _ = tokio::time::timeout(REFUSAL_TIME, served).await;
    }
}

/// `503` with `Retry-After: 1` and `message`.
pub(crate) fn unavailable(message: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A gRPC Trailers-Only answer: `RESOURCE_EXHAUSTED` with `message` (printable ASCII, as
/// `grpc-message` is sent without percent-encoding when it needs none).
fn exhausted(message: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("8"));
    let printable: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .filter(|c| *c != '%')
        .collect();
    if let Ok(v) = HeaderValue::from_str(&printable) {
        h.insert("grpc-message", v);
    }
    resp
}
