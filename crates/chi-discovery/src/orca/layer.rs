//! tower layers for per-request reports (features `orca` and `tower`), over any
//! `http::Request` / `http::Response` service: axum routers, tonic servers and channels, hyper.
//!
//! - [`ReportLayer`] (servers): counts every request in [`ServerMetrics`]' rates, puts a
//!   [`CallMetrics`] in its extensions, and attaches the report: a gRPC response (content type
//!   `application/grpc...`) carries it in its trailers as `endpoint-load-metrics-bin`, where gRPC
//!   clients read it, built when the call ends; any other response in its headers as
//!   `endpoint-load-metrics` (Envoy's `TEXT` form, else `BIN`). A gRPC call counts as an error
//!   when its `grpc-status` is not 0, an HTTP one when its status is 5xx. A report the handler
//!   set itself is left as it is.
//! - [`FeedLayer`] (clients): reads each response's report (headers first, then the trailers
//!   that end its body, where gRPC puts it) into a [`LoadReporter`], i.e. into
//!   `orca_weighted_round_robin`'s weights for that instance: one given for the wrapped service
//!   (one instance), or, with [`FeedLayer::from_request`], the one each request carries as an
//!   extension (what [`Chi::balance`](crate::Chi::balance) puts there for the instance it
//!   picked). Nothing is read when the reporter's sink takes out-of-band reports only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::header::{BIN_HEADER, HEADER, bin_value, header_value};
use super::{CallMetrics, ServerMetrics, feed};
use crate::balance::LoadReporter;

static BIN: http::HeaderName = http::HeaderName::from_static(BIN_HEADER);
static TEXT: http::HeaderName = http::HeaderName::from_static(HEADER);
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// True when `headers` hold a `grpc-status` other than 0 (`OK`).
fn grpc_failed(headers: &HeaderMap) -> bool {
    headers
        .get(&GRPC_STATUS)
        .is_some_and(|v| v.as_bytes() != b"0")
}

/// Attaches this process's load report to every response; see the module docs.
#[derive(Debug, Clone)]
pub struct ReportLayer {
    metrics: Arc<ServerMetrics>,
}

impl ReportLayer {
    /// Reports of `metrics`.
    pub fn new(metrics: Arc<ServerMetrics>) -> Self {
        ReportLayer { metrics }
    }
}

impl<S> Layer<S> for ReportLayer {
    type Service = ReportService<S>;

    fn layer(&self, inner: S) -> ReportService<S> {
        ReportService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`ReportLayer`].
#[derive(Debug, Clone)]
pub struct ReportService<S> {
    inner: S,
    metrics: Arc<ServerMetrics>,
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for ReportService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    ResB: Body,
{
    type Response = http::Response<ReportBody<ResB>>;
    type Error = S::Error;
    type Future = ReportFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let call = CallMetrics::default();
        req.extensions_mut().insert(call.clone());
        let grpc = is_grpc(req.headers());
        ReportFuture {
            inner: self.inner.call(req),
            attach: Some(Attach {
                metrics: self.metrics.clone(),
                call,
            }),
            grpc,
        }
    }
}

/// What a response's report is made from.
#[derive(Debug)]
struct Attach {
    metrics: Arc<ServerMetrics>,
    call: CallMetrics,
}

impl Attach {
    /// Counts the request, and puts the report in `headers` under `name` unless it is there.
    fn finish(self, headers: &mut HeaderMap, failed: bool, name: &http::HeaderName) {
        self.metrics.request_finished(failed);
        if !headers.contains_key(&BIN) && !headers.contains_key(&TEXT) {
            let report = self.call.report(&self.metrics);
            let value = if *name == BIN {
                bin_value(&report)
            } else {
                header_value(&report)
            };
            headers.insert(name.clone(), value);
        }
    }
}

pin_project! {
    /// The future of [`ReportService`].
    pub struct ReportFuture<F> {
        #[pin]
        inner: F,
        attach: Option<Attach>,
        grpc: bool,
    }
}

impl<F, B, E> Future for ReportFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = Result<http::Response<ReportBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(attach) = this.attach.take() else {
            return Poll::Ready(result.map(|r| r.map(ReportBody::plain)));
        };
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                attach.metrics.request_finished(true);
                return Poll::Ready(Err(e));
            }
        };
        let body_later = if !*this.grpc {
            let failed = response.status().is_server_error();
            attach.finish(response.headers_mut(), failed, &TEXT);
            None
        } else if response.headers().contains_key(&GRPC_STATUS) {
            // Trailers-only: the status, and so the report, is in the headers.
            let failed = grpc_failed(response.headers());
            attach.finish(response.headers_mut(), failed, &BIN);
            None
        } else {
            Some(attach)
        };
        Poll::Ready(Ok(response.map(|inner| ReportBody {
            inner,
            attach: body_later,
        })))
    }
}

pin_project! {
    /// A response body of [`ReportService`]: a gRPC one gets the report in its trailers.
    pub struct ReportBody<B> {
        #[pin]
        inner: B,
        attach: Option<Attach>,
    }
}

impl<B> ReportBody<B> {
    fn plain(inner: B) -> Self {
        ReportBody {
            inner,
            attach: None,
        }
    }
}

impl<B: Body> Body for ReportBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match frame {
            Some(Ok(frame)) if frame.is_trailers() => {
                match (this.attach.take(), frame.into_trailers()) {
                    (Some(attach), Ok(mut trailers)) => {
                        let failed = grpc_failed(&trailers);
                        attach.finish(&mut trailers, failed, &BIN);
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    (_, Ok(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    (_, Err(frame)) => Poll::Ready(Some(Ok(frame))),
                }
            }
            None => {
                // Ended without trailers: counted, nowhere to put a report.
                if let Some(attach) = this.attach.take() {
                    attach.metrics.request_finished(false);
                }
                Poll::Ready(None)
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads every response's load report into a [`LoadReporter`]; see the module docs.
#[derive(Debug, Clone)]
pub struct FeedLayer {
    reporter: Option<LoadReporter>,
}

impl FeedLayer {
    /// Reports of the instance `reporter` stands for.
    pub fn new(reporter: LoadReporter) -> Self {
        FeedLayer {
            reporter: Some(reporter),
        }
    }

    /// Reports into the [`LoadReporter`] each request carries as an extension (requests
    /// without one are not read): for a service that [`Chi::balance`](crate::Chi::balance)
    /// calls, e.g. `chi.balance("svc", |i| Ok(FeedLayer::from_request().layer(channel(i))))`.
    pub fn from_request() -> Self {
        FeedLayer { reporter: None }
    }
}

impl<S> Layer<S> for FeedLayer {
    type Service = FeedService<S>;

    fn layer(&self, inner: S) -> FeedService<S> {
        FeedService {
            inner,
            reporter: self.reporter.clone(),
        }
    }
}

/// The service of [`FeedLayer`].
#[derive(Debug, Clone)]
pub struct FeedService<S> {
    inner: S,
    reporter: Option<LoadReporter>,
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for FeedService<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    ResB: Body,
{
    type Response = http::Response<FeedBody<ResB>>;
    type Error = S::Error;
    type Future = FeedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let reporter = self
            .reporter
            .as_ref()
            .or_else(|| req.extensions().get::<LoadReporter>())
            .filter(|r| r.per_request())
            .cloned();
        FeedFuture {
            inner: self.inner.call(req),
            reporter,
        }
    }
}

pin_project! {
    /// The future of [`FeedService`].
    pub struct FeedFuture<F> {
        #[pin]
        inner: F,
        reporter: Option<LoadReporter>,
    }
}

impl<F, B, E> Future for FeedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Body,
{
    type Output = Result<http::Response<FeedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        // A report in the headers (HTTP, or a trailers-only gRPC answer) is the report.
        let reporter = this
            .reporter
            .take()
            .filter(|r| !feed(response.headers(), r));
        Poll::Ready(Ok(response.map(|inner| FeedBody { inner, reporter })))
    }
}

pin_project! {
    /// A response body of [`FeedService`]: reads the report in the trailers that end it.
    pub struct FeedBody<B> {
        #[pin]
        inner: B,
        reporter: Option<LoadReporter>,
    }
}

impl<B: Body> Body for FeedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(trailers) = f.trailers_ref()
            && let Some(reporter) = this.reporter.take()
        {
            feed(trailers, &reporter);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
