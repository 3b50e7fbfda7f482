//! The answers: an upstream's response on its way back to the client, and the proxy's own short
//! text answers (400, 502, 503).
//!
//! An upstream body is streamed, not buffered; it holds the pick (the balancer's in-flight count
//! of load-aware strategies) and the upstream connection until it is read to the end, when the
//! connection goes back to its worker's idle list.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody as BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::headers::{UPSTREAM_HEADER, strip_hop_by_hop};
use super::service::Target;
use super::upstream::Lease;
use crate::pick::Picked;
use chi_discovery::routing::Slot;

/// The body of every answer of the proxy.
pub(super) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A short text answer of the proxy itself.
pub(super) fn plain(status: StatusCode, text: impl Into<String>) -> Response<ProxyBody> {
    let mut text = text.into();
    text.push('\n');
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The client's response from the upstream's: hop-by-hop headers go, `X-Chi-Upstream` names the
/// instance, and the body keeps the pick and the connection until it is read.
pub(super) fn upstream_response(
    resp: Response<Incoming>,
    picked: Picked,
    slot: Option<Slot>,
    target: &Target,
    lease: Lease,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    super::orca::headers(&picked, &parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    if let Some(v) = &target.upstream {
        parts.headers.insert(UPSTREAM_HEADER, v.clone());
    }
    let lease = if body.is_end_stream() {
        // Nothing more to read: the connection can serve the next request now.
        lease.release();
        None
    } else {
        Some(lease)
    };
    let body = Guarded {
        inner: body,
        _picked: picked,
        _slot: slot,
        lease,
    };
    Response::from_parts(parts, BoxBody::new(body))
}

/// A response body that holds the pick (the balancer's in-flight guard) until the body is done.
struct Guarded {
    inner: Incoming,
    _picked: Picked,
    /// The circuit breaker's slot of the instance, freed with the body.
    _slot: Option<Slot>,
    /// The upstream connection, returned to its idle list once the body is read to the end
    /// (dropped, so closed, if the client goes away first).
    lease: Option<Lease>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        let done = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                self.lease = None;
                false
            }
            Poll::Pending => false,
        };
        if done && let Some(lease) = self.lease.take() {
            lease.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
