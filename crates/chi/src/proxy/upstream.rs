//! HTTP/1.1 connections to upstream instances, kept alive per instance and per worker.
//!
//! hyper-util's pooled client hashes the URI's scheme and authority and takes a shared lock on
//! every checkout and return (about a third of the proxy's instructions per request). Here each
//! instance ([`Idle`], one per proxy target) has one idle list per worker, so a worker takes and
//! returns connections by index, with a lock no other thread touches, and never hashes.

use crate::output::human;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::body::UpBody;
use crate::sync;

/// A connection to one instance, ready to send a request.
pub(super) type Sender = SendRequest<UpBody>;

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
    /// The request's body streamed to an earlier attempt: it cannot be sent again.
    Spent,
}

impl SendError {
    /// True when the request surely did not reach the instance, so any method may be retried.
    pub(crate) fn nothing_sent(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Http(e) => e.is_canceled(),
            SendError::Spent => true,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::Http(e) => f.write_str(&chi_discovery::error::display_chain(e)),
            SendError::Spent => f.write_str("the request body went to an earlier attempt"),
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

/// An idle connection of `worker` to `host:port`, or a new one. Nothing is sent yet, so a
/// request whose body can go only once keeps it when this fails.
pub(crate) async fn connection(
    idle: &Idle,
    worker: usize,
    (host, port): (&str, u16),
    connect_timeout: Duration,
) -> Result<Sender, SendError> {
    while let Some(mut s) = idle.take(worker) {
        if s.is_closed() {
            continue;
        }
        // A connection whose last response just ended may still be settling; it is ready (or
        // closed) as soon as its task has run.
        if s.ready().await.is_ok() {
            return Ok(s);
        }
    }
    connect(host, port, connect_timeout).await
}

/// Sends `req` on `sender`, a connection of `worker` to an instance whose idle list is `idle`.
pub(crate) async fn send(
    mut sender: Sender,
    idle: Arc<Idle>,
    worker: usize,
    req: Request<UpBody>,
) -> Result<(Response<Incoming>, Lease), SendError> {
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
    // Response bodies stream back in chunks cut from this connection's read buffer: bounded
    // as the client side's (see `limits::READ_BUFFER`).
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(crate::limits::READ_BUFFER)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(chi_discovery::error::display_chain(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}
