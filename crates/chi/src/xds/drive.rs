//! One ADS stream's loop, whichever variant: it waits for the client's next request, the next
//! change of what the stream follows, or the server's closing, and hands each to the
//! [`Session`]; when the stream ends it releases what it held (its slot of `--max-streams`, its
//! count on its connection, its entry in the console's book).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use super::clients::{ClientLog, Clients};
use super::follow::Woken;
use super::{Outbox, Session, StreamEnd};
use crate::limits::{InFlight, Reason, Refusals};

/// One stream's parts, as [`Driven::run`] drives them (boxed: the task holds a pointer, not a
/// second copy of them beside its borrowing future).
pub(super) struct Driven<S: Session> {
    session: S,
    requests: Streaming<S::Request>,
    closing: watch::Receiver<bool>,
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
        closing: watch::Receiver<bool>,
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

    /// Drives the stream, then releases what it held.
    pub(super) async fn run(
        mut self: Box<Self>,
        peer: Option<SocketAddr>,
        bookkeeping: Bookkeeping,
    ) {
        tracing::debug!(?peer, variant = S::VARIANT, "ADS stream opened");
        let (clients, log, permit, in_flight) = bookkeeping;
        self.drive().await;
        clients.close(&log);
        tracing::debug!(?peer, variant = S::VARIANT, "ADS stream closed");
        drop((permit, in_flight));
    }

    /// Runs the session until the client leaves, a request is refused or the server closes;
    /// the last two end the stream with a status.
    ///
    /// An idle stream costs its task's size, so this future is kept small: it borrows the
    /// parts (moved in, the task would hold them twice), and the work a request or a change
    /// makes (`on_request`, `push`) runs as a boxed future, an allocation only while it runs
    /// (held inline, the largest of them made 5.8 KiB of a 6 KiB task; 1.4 KiB now).
    async fn drive(&mut self) {
        let Driven {
            session,
            requests,
            closing,
            tx,
            refusals,
        } = self;
        let end = loop {
            let step = tokio::select! {
                () = async { drop(closing.wait_for(|c| *c).await) } => Err(StreamEnd::Closing),
                request = requests.next() => match request {
                    Some(Ok(request)) => {
                    let work = Box::pin(session.on_request(request));
                    work.await
                }
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
                let _ = tx.send(Err(Box::new(status))).await;
            }
            StreamEnd::Closing => {
                let status = Status::unavailable("chi xds is shutting down");
                let _ = tx.send(Err(Box::new(status))).await;
            }
        }
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
