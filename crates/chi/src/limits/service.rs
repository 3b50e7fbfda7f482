//! The per-request side of a [`Door`]: the bound on requests in flight, the body timeout, and
//! the answers when a body stalled or was badly framed.
//!
//! [`Bounded`] wraps any hyper service: it refuses a request over `--max-requests` with `503`
//! before the service sees it, hands the service its body as [`Timed`], and, when that body timed
//! out or broke, answers `408` or `400` in place of whatever the service made of the error. A
//! request counts, on its connection and on the door, until its response body ends
//! ([`Tracked`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};

use super::activity::{Activity, InFlight};
use super::body::{Status, Timed};
use super::refuse::unavailable;
use super::{Door, Reason};

/// A hyper service held to a door's request bounds.
pub(crate) struct Bounded<S> {
    inner: Arc<S>,
    door: Door,
    activity: Arc<Activity>,
}

impl<S> Bounded<S> {
    pub(super) fn new(inner: S, door: Door, activity: Arc<Activity>) -> Bounded<S> {
        Bounded {
            inner: Arc::new(inner),
            door,
            activity,
        }
    }
}

/// One of the door's requests in flight; given back with its response body.
pub(crate) struct Slot(Door);

impl Drop for Slot {
    fn drop(&mut self) {
        (self.0).0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until it ends.
pub(crate) struct Tracked<B> {
    inner: B,
    _guards: Option<(InFlight, Slot)>,
}

/// What a door answers: the service's body, or its own short text.
type Answer<B> = Response<Tracked<Either<B, Full<Bytes>>>>;

fn text(status: StatusCode, message: String, version: Version) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(message + "\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if version < Version::HTTP_2 {
        // The rest of a broken body cannot be told from the next request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Bounded<S>
where
    S: hyper::service::Service<Request<Timed>, Response = Response<B>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    type Response = Answer<B>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer<B>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let door = self.door.clone();
        let inner = &door.0;
        if inner.requests.fetch_add(1, Ordering::AcqRel) >= inner.limits.max_requests {
            inner.requests.fetch_sub(1, Ordering::AcqRel);
            door.count(Reason::Requests);
            let message = format!(
                "chi {}: at most {} requests in flight (--max-requests); retry later",
                inner.server, inner.limits.max_requests
            );
            let resp = unavailable(&message).map(|b| Tracked {
                inner: Either::Right(b),
                _guards: None,
            });
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let guards = (self.activity.start(), Slot(door.clone()));
        let version = req.version();
        let timeout = inner.limits.body_timeout;
        let req = req.map(|b| Timed::new(b, timeout));
        let state = req.body().state().cloned();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let replaced = match state.as_ref().map(|s| s.status()) {
                Some(Status::TimedOut) => {
                    door.count(Reason::BodyTimeout);
                    Some(text(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "chi {}: no data of the request body for {} (--body-timeout)",
                            door.0.server,
                            crate::output::human(timeout)
                        ),
                        version,
                    ))
                }
                Some(Status::Malformed) => {
                    door.count(Reason::MalformedBody);
                    Some(text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "chi {}: malformed request body (its framing is broken)",
                            door.0.server
                        ),
                        version,
                    ))
                }
                _ => None,
            };
            let resp = match replaced {
                Some(r) => r.map(Either::Right),
                None => resp.map(Either::Left),
            };
            Ok(resp.map(|b| Tracked {
                inner: b,
                _guards: Some(guards),
            }))
        })
    }
}

impl<B> Body for Tracked<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
