//! Out-of-band reports (features `orca` and `grpc`): `xds.service.orca.v3.OpenRcaService`.
//!
//! A client opens `StreamCoreMetrics` with the interval it wants; the server answers with a
//! report at once and then one per interval until the client goes away (gRFC A51). It suits
//! what per-request reports serve badly: long streams, and servers that get few requests.
//!
//! - [`OpenRcaServer`]: the service for a tonic server, streaming [`ServerMetrics`] reports
//!   (`Server::builder().add_service(OpenRcaServer::new(metrics))`). An interval under the
//!   server's minimum (default 1 s) is raised to it; none asked is 30 s, as gRPC's own
//!   servers answer.
//! - [`stream_core_metrics`]: the client call over any tonic transport; [`follow`] keeps one
//!   instance's stream open (reconnecting with backoff) and hands its reports to a
//!   [`LoadReporter`]; [`Streams`] opens one per instance for a service's
//!   [`LoadReports`](crate::balance::LoadReports) (what `load_balancer.orca.out_of_band` turns
//!   on in every router chi builds).
//!
//! The client and server are written out here rather than generated: one server-streaming
//! method over tonic's public `Grpc` helpers is what `tonic-build` would emit, without a build
//! script or `protoc`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tonic::codegen::{Body, Bytes, StdError, http};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use super::{OrcaLoadReport, OrcaLoadReportRequest, STREAM_CORE_METRICS, ServerMetrics, check};
use crate::balance::{LoadReporter, OobHandle, OutOfBand, ReportedLoad};
use crate::instance::Instance;
use crate::retry::Backoff;
use crate::util::AbortOnDrop;

/// The interval a request that names none gets.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// The shortest interval the server grants by default.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// `OpenRcaService` for a tonic server; see the module docs.
#[derive(Debug, Clone)]
pub struct OpenRcaServer {
    metrics: Arc<ServerMetrics>,
    min_interval: Duration,
}

impl OpenRcaServer {
    /// Streams the reports of `metrics`.
    pub fn new(metrics: Arc<ServerMetrics>) -> Self {
        OpenRcaServer {
            metrics,
            min_interval: MIN_INTERVAL,
        }
    }

    /// The shortest interval granted (shorter requests are raised to it).
    pub fn min_interval(mut self, min: Duration) -> Self {
        self.min_interval = min;
        self
    }

    /// The interval a request gets.
    fn interval(&self, request: &OrcaLoadReportRequest) -> Duration {
        let asked = request.report_interval.and_then(|d| {
            let secs = u64::try_from(d.seconds).ok()?;
            let nanos = u32::try_from(d.nanos).ok()?;
            Duration::new(secs, 0).checked_add(Duration::from_nanos(u64::from(nanos)))
        });
        match asked {
            Some(d) if !d.is_zero() => d.max(self.min_interval),
            _ => DEFAULT_INTERVAL.max(self.min_interval),
        }
    }
}

impl tonic::server::NamedService for OpenRcaServer {
    const NAME: &'static str = super::SERVICE;
}

type Reports = Pin<Box<dyn Stream<Item = Result<OrcaLoadReport, Status>> + Send>>;

/// The one method.
struct StreamCoreMetrics(OpenRcaServer);

impl tonic::server::ServerStreamingService<OrcaLoadReportRequest> for StreamCoreMetrics {
    type Response = OrcaLoadReport;
    type ResponseStream = Reports;
    type Future = std::future::Ready<Result<Response<Reports>, Status>>;

    fn call(&mut self, request: Request<OrcaLoadReportRequest>) -> Self::Future {
        let interval = self.0.interval(request.get_ref());
        let metrics = self.0.metrics.clone();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reports = futures_util::stream::unfold((ticks, metrics), |(mut ticks, m)| async move {
            ticks.tick().await;
            Some((Ok(m.report()), (ticks, m)))
        });
        std::future::ready(Ok(Response::new(Box::pin(reports))))
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for OpenRcaServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != STREAM_CORE_METRICS {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = StreamCoreMetrics(self.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.server_streaming(method, req).await)
        })
    }
}

/// Opens `StreamCoreMetrics` over `transport` (a tonic `Channel`, or any gRPC transport),
/// asking for a report every `interval`.
pub async fn stream_core_metrics<T>(
    transport: T,
    interval: Duration,
) -> Result<tonic::Streaming<OrcaLoadReport>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(transport);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("OpenRcaService not ready: {}", e.into())))?;
    let request = OrcaLoadReportRequest {
        report_interval: Some(prost_types::Duration {
            seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
            nanos: interval.subsec_nanos() as i32,
        }),
        request_cost_names: Vec::new(),
    };
    let path = http::uri::PathAndQuery::from_static(STREAM_CORE_METRICS);
    let response = grpc
        .server_streaming(Request::new(request), path, ProstCodec::default())
        .await?;
    Ok(response.into_inner())
}

/// Keeps `endpoint`'s report stream open, handing every report to `reporter`, until the
/// returned future is dropped: a stream that fails or ends is opened again after a backoff
/// (100 ms doubling to 10 s, reset by a report). A report that fails [`check`] is skipped.
pub async fn follow(
    endpoint: tonic::transport::Endpoint,
    interval: Duration,
    reporter: LoadReporter,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let channel = endpoint.connect_lazy();
        match stream_core_metrics(channel, interval).await {
            Ok(mut reports) => loop {
                match reports.next().await {
                    Some(Ok(report)) => {
                        backoff.reset();
                        match check(&report) {
                            Ok(()) => reporter.record(&ReportedLoad::from(&report)),
                            Err(e) => {
                                tracing::debug!(instance = reporter.instance_id(), error = %e, "out-of-band report ignored")
                            }
                        }
                    }
                    Some(Err(status)) => {
                        tracing::debug!(instance = reporter.instance_id(), %status, "out-of-band reports broke off");
                        break;
                    }
                    None => break,
                }
            },
            Err(status) => {
                tracing::debug!(instance = reporter.instance_id(), %status, "cannot open out-of-band reports");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Out-of-band streams over gRPC to each instance's own address (`http://address:port`, the
/// port its service answers on), asking a report every `interval`: the [`OutOfBand`] opener
/// of `load_balancer.orca.out_of_band`. Each stream is a task on the current tokio runtime
/// ([`follow`]), aborted when its handle drops.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    interval: Duration,
}

impl Streams {
    /// Streams asking a report every `interval` (`oob_reporting_period`).
    pub fn new(interval: Duration) -> Self {
        Streams { interval }
    }
}

impl OutOfBand for Streams {
    fn open(&self, instance: &Instance, reporter: LoadReporter) -> Option<OobHandle> {
        tokio::runtime::Handle::try_current().ok()?;
        let url = format!("http://{}", instance.authority());
        let endpoint = match tonic::transport::Endpoint::from_shared(url) {
            Ok(e) => e.connect_timeout(Duration::from_secs(2)),
            Err(e) => {
                tracing::warn!(instance = %instance.id, error = %e, "no out-of-band reports: the address is no URI");
                return None;
            }
        };
        Some(Box::new(AbortOnDrop::spawn(follow(
            endpoint,
            self.interval,
            reporter,
        ))))
    }
}
