//! `chi xds`'s doors, with tonic's gRPC client: bad streams end with an error status, streams and
//! connections over the limits are refused with `RESOURCE_EXHAUSTED`, a silent connection is
//! closed, and a stream naming more unknown services than allowed is refused.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use futures_util::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{Server, agent, closed_within};
use crate::support::chi;

const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const ADS: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// `chi xds` over the agent at `registry`, with its admin port.
pub(crate) fn xds(registry: &str, envs: &[(&str, &str)], extra: &[&str]) -> Server {
    let mut cmd = chi();
    cmd.args(["xds", "--registry", registry, "--listen", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0"])
        .args(extra);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut proc = crate::support::Proc::spawn(cmd);
    let admin = proc.wait_line("the admin address", |l| {
        l.starts_with("xds admin on http://")
    });
    let line = proc.wait_line("the xds address", |l| l.starts_with("xds on grpc://"));
    Server {
        proc,
        addr: line.trim_start_matches("xds on grpc://").trim().to_owned(),
        admin: admin
            .trim_start_matches("xds admin on http://")
            .trim()
            .to_owned(),
        _config: crate::support::yaml(""),
    }
}

pub(crate) async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to chi xds")
}

/// An EDS request for `names`.
pub(crate) fn eds(names: Vec<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: EDS.to_owned(),
        resource_names: names,
        ..Default::default()
    }
}

/// Opens a state-of-the-world stream on `channel` that sends `first` and stays open.
pub(crate) async fn stream(
    channel: Channel,
    first: DiscoveryRequest,
) -> Result<tonic::Streaming<DiscoveryResponse>, Status> {
    let requests = futures_util::stream::iter(vec![first]).chain(futures_util::stream::pending());
    AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(requests)
        .await
        .map(tonic::Response::into_inner)
}

/// The status a stream ends with (within 10 s): `Code::Ok` when it ends without one.
async fn end_of(mut s: tonic::Streaming<DiscoveryResponse>) -> Status {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return Status::ok("ended"),
            Ok(Err(status)) => return status,
            Err(_) => panic!("the stream is still open"),
        }
    }
}

/// Bytes as they are: lets a test send a request that does not decode.
#[derive(Debug, Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// A request that is no protobuf, and one with 10,001 names: each ends its stream with
/// `INVALID_ARGUMENT` (the first used to end with `OK`, as if all was well), counted.
#[tokio::test]
async fn bad_streams_end_with_an_error_status() {
    let agent = agent(&[], &[]);
    let xds = xds(&agent.url(), &[], &[]);
    let mut grpc = tonic::client::Grpc::new(channel(&xds.addr).await);
    grpc.ready().await.expect("ready");
    let garbage =
        futures_util::stream::iter(vec![vec![0xffu8; 12]]).chain(futures_util::stream::pending());
    let path = hyper::http::uri::PathAndQuery::from_static(ADS);
    let status = match grpc
        .streaming(tonic::Request::new(garbage), path, Raw)
        .await
    {
        Ok(resp) => {
            let mut s = resp.into_inner();
            match tokio::time::timeout(Duration::from_secs(10), s.message())
                .await
                .expect("the stream ends")
            {
                Ok(None) => Status::ok("ended"),
                Ok(Some(_)) => panic!("an answer to garbage"),
                Err(status) => status,
            }
        }
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("cannot read the request"),
        "{status:?}"
    );

    let names: Vec<String> = (0..10_001).map(|n| format!("svc-{n}")).collect();
    let status = match stream(channel(&xds.addr).await, eds(names)).await {
        Ok(s) => end_of(s).await,
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(xds.metric("chi_refused_total", "reason=\"bad_request\"") >= 2.0);
}

/// Over `--max-streams`, a stream is refused with `RESOURCE_EXHAUSTED`; over
/// `--max-connections`, a connection is answered `RESOURCE_EXHAUSTED` and closed; the streams
/// already open are still served.
#[tokio::test]
async fn streams_and_connections_over_the_limits_are_resource_exhausted() {
    let agent = agent(&[], &[]);
    let xds = xds(
        &agent.url(),
        &[("CHI_MAX_CONNECTIONS", "2")],
        &["--max-streams", "3"],
    );
    let first = channel(&xds.addr).await;
    let mut open = Vec::new();
    for n in 0..3 {
        open.push(
            stream(first.clone(), eds(vec![format!("svc-{n}")]))
                .await
                .expect("under the limit"),
        );
    }
    let status = match stream(first.clone(), eds(vec!["svc-x".into()])).await {
        Ok(s) => end_of(s).await,
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-streams"), "{status:?}");

    let _second = channel(&xds.addr).await;
    let third = Channel::from_shared(format!("http://{}", xds.addr))
        .expect("uri")
        .connect()
        .await;
    let status = match third {
        Err(e) => panic!("the third connection is refused with a status, not {e}"),
        Ok(third) => match stream(third, eds(vec!["svc-y".into()])).await {
            Ok(s) => end_of(s).await,
            Err(status) => status,
        },
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-connections"), "{status:?}");
    // The first connection's streams are still open.
    let s = stream(first, eds(vec!["svc-z".into()])).await;
    assert!(
        matches!(&s, Err(st) if st.code() == Code::ResourceExhausted),
        "still at --max-streams"
    );
    drop(open);
    assert!(xds.metric("chi_refused_total", "reason=\"streams\"") >= 2.0);
    assert!(xds.metric("chi_refused_total", "reason=\"connections\"") >= 1.0);
}

/// A connection that never opens a stream is closed at the header timeout; one whose streams
/// all ended, at the idle timeout.
#[tokio::test]
async fn silent_and_idle_xds_connections_are_closed() {
    let agent = agent(&[], &[]);
    let xds = xds(
        &agent.url(),
        &[("CHI_HEADER_TIMEOUT", "1s"), ("CHI_IDLE_TIMEOUT", "1s")],
        &[],
    );
    let mut silent = std::net::TcpStream::connect(&xds.addr).expect("connect");
    let closed = tokio::task::spawn_blocking(move || {
        closed_within(&mut silent, Duration::from_secs(6)).map(|c| c.0)
    })
    .await
    .expect("thread");
    assert!(closed.is_some(), "a silent connection stays open");
    assert!(xds.metric("chi_refused_total", "reason=\"header_timeout\"") >= 1.0);
}

/// Open file descriptors of `pid` (`/proc/PID/fd`).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// One request naming 1,000 services nobody registered made `chi xds` open 1,000 watch
/// connections to its agent (fds 13 -> 1,015). Past `--max-unknown-names` (default 100) the
/// stream ends with `RESOURCE_EXHAUSTED`, counted, and no watch opens; a stream naming a few
/// unknown services and a known one is served.
#[tokio::test]
async fn a_stream_naming_too_many_unknown_services_is_refused() {
    let agent = agent(&[], &[]);
    assert_eq!(
        super::register(&agent.admin, "known", "known-1", 8001, "").0,
        204
    );
    let xds = xds(&agent.url(), &[], &[]);
    let before = fds(xds.pid());
    let names: Vec<String> = (0..1000).map(|n| format!("made-up-{n}")).collect();
    let status = match stream(channel(&xds.addr).await, eds(names)).await {
        Ok(s) => end_of(s).await,
        Err(status) => status,
    };
    let after = fds(xds.pid());
    println!("[bounds] chi xds: 1000 unknown names refused ({status:?}); fds {before} -> {after}");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("at most 100 (--max-unknown-names)"),
        "{status:?}"
    );
    assert!(after <= before + 5, "fds {before} -> {after}");
    assert!(xds.metric("chi_refused_total", "reason=\"unknown_names\"") >= 1.0);

    let mut few: Vec<String> = (0..5).map(|n| format!("made-up-{n}")).collect();
    few.push("known".into());
    let mut s = stream(channel(&xds.addr).await, eds(few))
        .await
        .expect("within the bound");
    let first = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an answer")
        .expect("not refused")
        .expect("a response");
    assert_eq!(first.resources.len(), 1, "the known service");
}
