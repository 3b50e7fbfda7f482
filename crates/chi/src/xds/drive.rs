//! One ADS stream's loop, whichever variant: it waits for the client's next request, the next
//! change of what the stream follows, or the server's closing, and hands each to the
//! [`Session`]; when the stream ends it releases what it held (its slot of `--max-streams`, its
//! count on its connection, its entry in the console's book).
//!
//! The loop runs inside the stream's response ([`Driving`]), polled by the task that HTTP/2
//! already has for the stream, not in a task of its own: a push or an ACK wakes one task
//! instead of two that hand the response over through a channel, and a stream holds no task of
//! its own (1-1.5 KiB less per stream in the fan-out bench, the same CPU). A stream whose client
//! does not read waits, as it would with a full queue of responses; the client's reset drops the
//! response, and with it the loop, which releases what it held as it is dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

use super::clients::{ClientLog, Clients};
use super::closing::Closed;
use super::follow::Woken;
use super::{STREAM_BUFFER, Sent, Session, StreamEnd};
use crate::limits::{InFlight, Reason, Refusals};

/// One stream's parts, as [`Driven::run`] drives them (boxed: the loop's future holds a
/// pointer, not a second copy of them beside its borrowing future).
pub(super) struct Driven<S: Session> {
    session: S,
    requests: Streaming<S::Request>,
    closing: Closed,
    tx: Outbox<S::Response>,
    refusals: Refusals,
}

/// What a stream releases when it ends: its entry in the console's book, its slot of
/// `--max-streams`, its count on its connection.
pub(super) type Bookkeeping = (
    Arc<Clients>,
    Arc<ClientLog>,
    tokio::sync::OwnedSemaphorePermit,
    Option<InFlight>,
);

impl<S: Session> Driven<S> {
    pub(super) fn new(
        session: S,
        requests: Streaming<S::Request>,
        closing: Closed,
        tx: Outbox<S::Response>,
        refusals: Refusals,
    ) -> Box<Driven<S>> {
        Box::new(Driven {
            session,
            requests,
            closing,
            tx,
            refusals,
        })
    }

    /// Drives the stream, then releases what it held (also when the loop is dropped before
    /// its end: the client reset the stream).
    pub(super) async fn run(
        mut self: Box<Self>,
        peer: Option<SocketAddr>,
        bookkeeping: Bookkeeping,
    ) {
        tracing::debug!(?peer, variant = S::VARIANT, "ADS stream opened");
        let _release = Release {
            peer,
            variant: S::VARIANT,
            bookkeeping,
        };
        self.drive().await;
    }

    /// Runs the session until the client leaves, a request is refused or the server closes;
    /// the last two end the stream with a status.
    ///
    /// An idle stream costs this future's size (boxed in its response), so it is kept small: it
    /// borrows the parts (moved in, it would hold them twice), and the work a request or a
    /// change makes (`resubscribe`, `push`) runs as a boxed future, an allocation only while it
    /// runs (held inline, the largest of them made 5.8 KiB of a 6 KiB task; 1.4 KiB now).
    async fn drive(&mut self) {
        let Driven {
            session,
            requests,
            closing,
            tx,
            refusals,
        } = self;
        let mut closed = Pin::new(closing);
        let end = loop {
            let step = tokio::select! {
                biased;
                () = &mut closed => Err(StreamEnd::Closing),
                request = requests.next() => match request {
                    Some(Ok(request)) => match session.on_request(request) {
                        Ok(Some(kind)) => {
                            let work = Box::pin(session.resubscribe(kind));
                            work.await
                        }
                        taken => taken.map(drop),
                    },
                    Some(Err(status)) => {
                        tracing::debug!(variant = S::VARIANT, "ADS stream error from the client: {status}");
                        Err(client_error(status))
                    }
                    None => Err(StreamEnd::Gone),
                },
                woken = session.following().changed() => match woken {
                    Woken::Catalog => {
                        session.refollow();
                        let work = Box::pin(session.push(None));
                    work.await
                    }
                    Woken::Views(changed) => {
                    let work = Box::pin(session.push(Some(&changed)));
                    work.await
                }
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        match end {
            StreamEnd::Gone => {}
            StreamEnd::Refused(status) => {
                tracing::warn!(
                    variant = S::VARIANT,
                    "refused an ADS request: {}",
                    status.message()
                );
                let reason = match status.code() {
                    tonic::Code::ResourceExhausted => Reason::UnknownNames,
                    _ => Reason::BadRequest,
                };
                refusals.count("xds", reason);
                tx.send(Err(Box::new(status))).await;
            }
            StreamEnd::Closing => {
                let status = Status::unavailable("chi xds is shutting down");
                tx.send(Err(Box::new(status))).await;
            }
        }
    }
}

/// What a stream holds until its loop ends or is dropped.
struct Release {
    peer: Option<SocketAddr>,
    variant: &'static str,
    bookkeeping: Bookkeeping,
}

impl Drop for Release {
    fn drop(&mut self) {
        let (clients, log, _, _) = &self.bookkeeping;
        clients.close(log);
        tracing::debug!(peer = ?self.peer, variant = self.variant, "ADS stream closed");
    }
}

/// A stream's responses, with its loop inside: each poll first runs the loop as far as it
/// goes (it queues responses in the [`Outbox`]), then hands over the next queued one.
///
/// HTTP/2 polls the body for its own reasons too (after each frame it sent, when the client's
/// window opens): the loop is polled only when something it waits for woke it, told by the
/// outbox, which is the loop's waker too (one allocation for the queue and the wake-ups: both
/// are touched at every push).
pub(crate) struct Driving<T> {
    run: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    outbox: Outbox<T>,
}

impl<T: Send + 'static> Driving<T> {
    /// The responses `run` queues in `outbox`.
    pub(super) fn new(
        run: Pin<Box<dyn Future<Output = ()> + Send>>,
        outbox: Outbox<T>,
    ) -> Driving<T> {
        Driving {
            run: Some(run),
            outbox,
        }
    }
}

impl<T: Send + 'static> Stream for Driving<T> {
    type Item = Sent<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Sent<T>>> {
        let this = &mut *self;
        let shared = &this.outbox.0;
        shared.task.register(cx.waker());
        if let Some(run) = &mut this.run
            && shared.woken.swap(false, Ordering::AcqRel)
        {
            let waker = Waker::from(shared.clone());
            if run
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                this.run = None;
            }
        }
        match this.outbox.take() {
            Some(response) => Poll::Ready(Some(response)),
            // Ended, and everything it queued handed over.
            None if this.run.is_none() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

/// Where a stream's loop queues its responses for [`Driving`], which takes them in the poll
/// that ran the loop: nothing to wake between the two. At most `STREAM_BUFFER` wait; beyond
/// that the loop waits for room (a client that does not read).
pub(crate) struct Outbox<T>(Arc<Shared<T>>);

/// The queue, and whether the loop was woken since its last poll with the task to wake then.
struct Shared<T> {
    queue: Mutex<Queue<T>>,
    woken: AtomicBool,
    task: AtomicWaker,
}

impl<T: Send + 'static> Wake for Shared<T> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

struct Queue<T> {
    responses: VecDeque<Sent<T>>,
    /// The loop, waiting for room.
    room: Option<Waker>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox(self.0.clone())
    }
}

impl<T> Outbox<T> {
    pub(super) fn new() -> Outbox<T> {
        Outbox(Arc::new(Shared {
            queue: Mutex::new(Queue {
                responses: VecDeque::new(),
                room: None,
            }),
            // The loop is polled once to start.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }))
    }

    fn queue(&self) -> MutexGuard<'_, Queue<T>> {
        crate::sync::lock(&self.0.queue)
    }

    /// Queues `response`, once there is room.
    pub(crate) async fn send(&self, response: Sent<T>) {
        let mut response = Some(response);
        std::future::poll_fn(|cx| {
            let mut queue = self.queue();
            if queue.responses.len() >= STREAM_BUFFER {
                queue.room = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(response) = response.take() {
                queue.responses.push_back(response);
            }
            Poll::Ready(())
        })
        .await;
    }

    fn take(&self) -> Option<Sent<T>> {
        let mut queue = self.queue();
        let response = queue.responses.pop_front();
        let room = response.is_some().then(|| queue.room.take()).flatten();
        drop(queue);
        if let Some(waker) = room {
            waker.wake();
        }
        response
    }
}

/// How a stream ends on an error reading its requests: a request that does not decode (or
/// that tonic refused) ends it with `INVALID_ARGUMENT`, not a silent `OK`; a client that reset
/// or cancelled the stream is simply gone.
fn client_error(status: Status) -> StreamEnd {
    match status.code() {
        tonic::Code::Internal
        | tonic::Code::InvalidArgument
        | tonic::Code::OutOfRange
        | tonic::Code::ResourceExhausted => StreamEnd::Refused(Status::invalid_argument(format!(
            "cannot read the request: {}",
            status.message()
        ))),
        _ => StreamEnd::Gone,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// The loop queues up to `STREAM_BUFFER` responses and waits for room beyond that; they
    /// come out in order, and the stream ends once its loop ended and the queue is empty.
    #[tokio::test]
    async fn responses_come_in_order_within_the_bound_then_the_end() {
        let outbox: Outbox<usize> = Outbox::new();
        let (tx, queued) = (outbox.clone(), Arc::new(AtomicUsize::new(0)));
        let counted = queued.clone();
        let run = Box::pin(async move {
            for i in 0..STREAM_BUFFER * 3 {
                tx.send(Ok(i)).await;
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut driving = Driving::new(run, outbox);
        assert!(matches!(driving.next().await, Some(Ok(0))));
        assert_eq!(queued.load(Ordering::SeqCst), STREAM_BUFFER, "bounded");
        let mut rest = Vec::new();
        while let Some(response) = driving.next().await {
            rest.push(response.expect("a response"));
        }
        assert_eq!(rest, (1..STREAM_BUFFER * 3).collect::<Vec<_>>());
    }
}
