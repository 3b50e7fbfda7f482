//! HTTP/1.1 connections to upstream instances, kept alive per instance and per worker.
//!
//! hyper-util's pooled client hashes the URI's scheme and authority and takes a shared lock on
//! every checkout and return (about a third of the proxy's instructions per request). Here each
//! instance ([`Idle`], one per proxy target) has one idle list per worker, so a worker takes and
//! returns connections by index, with a lock no other thread touches, and never hashes.

use crate::output::human;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::sync;

/// A connection to one instance, ready to send a request.
type Sender = SendRequest<Full<Bytes>>;

/// Idle connections kept per instance and worker; more are closed when they come back.
const MAX_IDLE: usize = 512;

/// The idle connections of one instance, one list per worker.
pub(crate) struct Idle {
    slots: Vec<Mutex<Vec<Sender>>>,
}

impl Idle {
    pub(crate) fn new(workers: usize) -> Idle {
        Idle {
            slots: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        }
    }

    fn slot(&self, worker: usize) -> &Mutex<Vec<Sender>> {
        &self.slots[worker % self.slots.len()]
    }

    fn take(&self, worker: usize) -> Option<Sender> {
        sync::lock(self.slot(worker)).pop()
    }

    fn put(&self, worker: usize, sender: Sender) {
        let mut idle = sync::lock(self.slot(worker));
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }
}

/// Why an attempt got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made (nothing was sent).
    Connect(String),
    /// The connection failed while sending or waiting for the response head.
    Http(hyper::Error),
}

impl SendError {
    /// True when the request surely did not reach the instance, so any method may be retried.
    pub(crate) fn nothing_sent(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Http(e) => e.is_canceled(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::Http(e) => f.write_str(&chi_discovery::error::display_chain(e)),
        }
    }
}

/// A connection lent to one request; it goes back to its idle list when the response body is
/// read to the end (see [`Lease::release`]), else it is closed.
pub(crate) struct Lease {
    sender: Sender,
    idle: Arc<Idle>,
    worker: usize,
}

impl Lease {
    /// Returns the connection for the next request of this worker.
    pub(crate) fn release(self) {
        self.idle.put(self.worker, self.sender);
    }
}

/// Sends `req` to `host:port` on an idle connection of `worker`, or on a new one.
pub(crate) async fn send(
    idle: Arc<Idle>,
    worker: usize,
    (host, port): (&str, u16),
    connect_timeout: Duration,
    req: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, Lease), SendError> {
    let mut sender = None;
    while let Some(mut s) = idle.take(worker) {
        if s.is_closed() {
            continue;
        }
        // A connection whose last response just ended may still be settling; it is ready (or
        // closed) as soon as its task has run.
        if s.ready().await.is_ok() {
            sender = Some(s);
            break;
        }
    }
    let mut sender = match sender {
        Some(s) => s,
        None => connect(host, port, connect_timeout).await?,
    };
    let resp = sender.send_request(req).await.map_err(SendError::Http)?;
    Ok((
        resp,
        Lease {
            sender,
            idle,
            worker,
        },
    ))
}

async fn connect(host: &str, port: u16, timeout: Duration) -> Result<Sender, SendError> {
    // An IPv6 literal comes bracketed in authorities; the socket wants it bare.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream =
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Connect(format!("{host}:{port}: {e}"))),
            Err(_) => {
                return Err(SendError::Connect(format!(
                    "{host}:{port}: no connection within {}",
                    human(timeout)
                )));
            }
        };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(chi_discovery::error::display_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}
