//! A request body on its way to the instance: small ones are read whole, so a retry can send them
//! again; larger ones stream to the instance as they arrive, once.
//!
//! Up to [`REPLAY`] bytes are read before the first attempt (most bodies are smaller: they are
//! then kept whole, as before). A body that goes on streams: those first bytes, then the rest as
//! the client sends it, with the body timeout between reads, so a proxy holds at most
//! [`REPLAY`] bytes per request, not the whole upload (it used to keep up to 16 MiB, and three
//! stalled 15 MiB uploads grew its memory by 84 MiB). A streamed body can go to one instance
//! only: it is retried only when no connection could be made (nothing was sent). Envoy buffers
//! for retries the same way (`per_request_buffer_limit_bytes`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::limits::{BodyError, BodyState, Timed};

/// Bytes of a request body kept to send it again on a retry; a longer body is streamed.
pub(super) const REPLAY: usize = 64 << 10;

/// The request body as the attempts see it.
pub(super) enum RequestBody {
    /// Read whole (or none): every attempt sends it.
    Whole(Bytes),
    /// Longer than [`REPLAY`]: the bytes read so far and the rest, for the one attempt that
    /// takes them.
    Streamed {
        once: Mutex<Option<(Bytes, Timed)>>,
        state: Arc<BodyState>,
    },
}

impl RequestBody {
    /// Reads `body` up to [`REPLAY`] bytes: the whole of it, or its start and the rest.
    pub(super) async fn read(mut body: Timed) -> Result<RequestBody, BodyError> {
        if body.is_end_stream() {
            return Ok(RequestBody::Whole(Bytes::new()));
        }
        let mut first: Option<Bytes> = None;
        let mut more = BytesMut::new();
        loop {
            let Some(frame) = body.frame().await else {
                break;
            };
            // Trailers are not forwarded (as before).
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            match &first {
                None if more.is_empty() => first = Some(data),
                _ => {
                    if let Some(f) = first.take() {
                        more.extend_from_slice(&f);
                    }
                    more.extend_from_slice(&data);
                }
            }
            let read = first.as_ref().map_or(more.len(), Bytes::len);
            if read > REPLAY && !body.is_end_stream() {
                let start = first.take().unwrap_or_else(|| more.split().freeze());
                let Some(state) = body.state().cloned() else {
                    break;
                };
                return Ok(RequestBody::Streamed {
                    once: Mutex::new(Some((start, body))),
                    state,
                });
            }
        }
        Ok(RequestBody::Whole(first.unwrap_or_else(|| more.freeze())))
    }

    /// A body for one attempt: the whole body again, or the stream for the first attempt that
    /// asks (`None` after).
    pub(super) fn take(&self) -> Option<UpBody> {
        match self {
            RequestBody::Whole(b) => Some(UpBody::Whole(Some(b.clone()))),
            RequestBody::Streamed { once, .. } => once
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .map(|(start, rest)| UpBody::Streamed {
                    start: Some(start),
                    rest,
                }),
        }
    }

    /// True when every attempt can send the body.
    pub(super) fn replayable(&self) -> bool {
        matches!(self, RequestBody::Whole(_))
    }

    /// True when a streamed body went with an attempt already.
    pub(super) fn take_is_spent(&self) -> bool {
        match self {
            RequestBody::Whole(_) => false,
            RequestBody::Streamed { once, .. } => once
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_none(),
        }
    }

    /// How a streamed body is doing (its end starts the wait for the answer).
    pub(super) fn streaming(&self) -> Option<&BodyState> {
        match self {
            RequestBody::Whole(_) => None,
            RequestBody::Streamed { state, .. } => Some(state),
        }
    }
}

/// The body of an attempt.
pub(crate) enum UpBody {
    Whole(Option<Bytes>),
    Streamed { start: Option<Bytes>, rest: Timed },
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpBody::Whole(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            UpBody::Streamed { start, rest } => match start.take() {
                Some(s) => Poll::Ready(Some(Ok(Frame::data(s)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Whole(b) => b.as_ref().is_none_or(Bytes::is_empty),
            UpBody::Streamed { start, rest } => start.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Streamed { start, rest } => {
                let first = start.as_ref().map_or(0, |b| b.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + first);
                if let Some(u) = r.upper() {
                    h.set_upper(u + first);
                }
                h
            }
        }
    }
}
