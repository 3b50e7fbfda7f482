//! Request bodies read with a deadline between reads, and what became of them.
//!
//! [`Timed`] wraps hyper's incoming body: a body that yields nothing for the body timeout ends
//! with an error (nginx's `client_body_timeout` has the same meaning: between two reads, not for
//! the whole body, so a large upload at a steady pace is fine and a stalled one is not). Its
//! [`BodyState`] tells the door how the body ended, so a stalled upload is answered 408 and a
//! badly framed one 400, whatever the handler made of the error, and lets the proxy start its
//! response timer when the body is done. A request without a body costs nothing here.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// A request body with a deadline between reads.
#[derive(Debug)]
pub(crate) struct Timed {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The deadline runs (set at the first wait after a frame).
    armed: bool,
    state: Option<Arc<BodyState>>,
}

/// How a request body ended; shared by the body, the door and the handler.
#[derive(Debug, Default)]
pub(crate) struct BodyState {
    status: AtomicU8,
    ended: Notify,
}

/// [`BodyState::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Still coming.
    Reading,
    /// Read to the end.
    Done,
    /// Nothing came for the body timeout.
    TimedOut,
    /// The client's framing was wrong (a malformed chunk) or the stream broke.
    Malformed,
}

impl BodyState {
    pub(crate) fn status(&self) -> Status {
        match self.status.load(Ordering::Acquire) {
            0 => Status::Reading,
            1 => Status::Done,
            2 => Status::TimedOut,
            _ => Status::Malformed,
        }
    }

    fn end(&self, status: Status) {
        let n = match status {
            Status::Reading => return,
            Status::Done => 1,
            Status::TimedOut => 2,
            Status::Malformed => 3,
        };
        if self
            .status
            .compare_exchange(0, n, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.ended.notify_waiters();
        }
    }

    /// Resolves once the body has ended, one way or another.
    pub(crate) async fn ended(&self) {
        loop {
            let notified = self.ended.notified();
            if self.status() != Status::Reading {
                return;
            }
            notified.await;
        }
    }
}

/// Why a [`Timed`] body failed.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Nothing came for this long.
    TimedOut(Duration),
    /// hyper could not read it.
    Malformed(hyper::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TimedOut(d) => write!(
                f,
                "no data of the request body for {} (--body-timeout)",
                crate::output::human(*d)
            ),
            BodyError::Malformed(e) => write!(f, "malformed request body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::TimedOut(_) => None,
            BodyError::Malformed(e) => Some(e),
        }
    }
}

impl Timed {
    /// `body`, with `timeout` between reads.
    pub(crate) fn new(body: Incoming, timeout: Duration) -> Timed {
        let state = (!body.is_end_stream()).then(Arc::default);
        Timed {
            inner: body,
            timeout,
            sleep: None,
            armed: false,
            state,
        }
    }

    /// How the body ends; `None` for a request without a body.
    pub(crate) fn state(&self) -> Option<&Arc<BodyState>> {
        self.state.as_ref()
    }

    fn end(&self, status: Status) {
        if let Some(s) = &self.state {
            s.end(status);
        }
    }
}

impl Body for Timed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.armed = false;
                if this.inner.is_end_stream() {
                    this.end(Status::Done);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.end(Status::Done);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(Status::Malformed);
                Poll::Ready(Some(Err(BodyError::Malformed(e))))
            }
            Poll::Pending => {
                if !this.armed {
                    let deadline = Instant::now() + this.timeout;
                    match &mut this.sleep {
                        Some(s) => s.as_mut().reset(deadline),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.armed = true;
                }
                let Some(sleep) = &mut this.sleep else {
                    return Poll::Pending;
                };
                if sleep.as_mut().poll(cx).is_ready() {
                    this.end(Status::TimedOut);
                    return Poll::Ready(Some(Err(BodyError::TimedOut(this.timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
