//! Admitted connections for `chi xds`'s port, which drives its connections in a serving loop
//! of its own: the door's watchdog does not hold the connection future, so it makes the socket's
//! reads and writes fail instead, and hyper closes the connection.
//!
//! The connection's [`Activity`] reaches the service as its connect info (tonic's `Connected`,
//! put in each request's extensions), so each ADS stream counts as a request in flight for as
//! long as it is open: a connection with no stream is idle.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::activity::Activity;
use super::{Door, Ticket};

/// An admitted connection that its idle watchdog can close.
#[derive(Debug)]
pub(crate) struct Watched {
    io: TcpStream,
    info: ConnInfo,
    _ticket: Ticket,
    /// Dropped with the connection: ends its watchdog.
    _closed: oneshot::Sender<()>,
}

/// What a request learns of its connection (tonic's connect info).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The connection's requests in flight.
    pub(crate) activity: Arc<Activity>,
}

impl Watched {
    /// `io`, watched by a task that kills it at `door`'s header or idle timeout.
    pub(super) fn new(io: TcpStream, peer: SocketAddr, ticket: Ticket, door: &Door) -> Watched {
        let activity = Activity::new();
        let (closed, gone) = oneshot::channel::<()>();
        let watched = activity.clone();
        let door = door.clone();
        tokio::spawn(async move {
            let limits = *door.limits();
            tokio::select! {
                reason = watched.idle(limits.header_timeout, limits.idle_timeout) => {
                    door.count(reason);
                    watched.kill();
                }
                // The connection ended (its sender dropped).
                _ = gone => {}
            }
        });
        Watched {
            io,
            info: ConnInfo { peer, activity },
            _ticket: ticket,
            _closed: closed,
        }
    }

    fn killed() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "closed by the idle or header timeout",
        )
    }
}

impl tonic::transport::server::Connected for Watched {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.info.activity.is_killed() {
            return Poll::Ready(Err(Self::killed()));
        }
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if polled.is_pending() {
            this.info.activity.reader.register(cx.waker());
            if this.info.activity.is_killed() {
                return Poll::Ready(Err(Self::killed()));
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.info.activity.is_killed() {
            return Poll::Ready(Err(Self::killed()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.info.activity.is_killed() {
            return Poll::Ready(Err(Self::killed()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
