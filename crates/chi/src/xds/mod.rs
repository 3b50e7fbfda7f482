//! `chi xds`: an xDS control plane that serves chi's view of any registry to gRPC's own xDS
//! clients (`xds:///NAME` targets) and to Envoy.
//!
//! The server speaks the Aggregated Discovery Service (ADS) in both variants the xDS protocol
//! describes (envoyproxy/envoy `api/xds_protocol.rst`): state-of-the-world
//! (`StreamAggregatedResources`, [`sotw`], which gRPC's clients use) and incremental
//! (`DeltaAggregatedResources`, [`delta`], which Envoy uses with `api_type: DELTA_GRPC`). The
//! state-of-the-world rules:
//!
//! - one gRPC stream carries Listener, RouteConfiguration, Cluster and ClusterLoadAssignment
//!   requests; each type has its own version and nonce per stream;
//! - a request that echoes the nonce of the last response of its type is an ACK, or a NACK when it
//!   carries `error_detail`: the NACK is logged with its detail, the client keeps its last accepted
//!   version, and the rejected content is not sent again (only a later change is);
//! - a request echoing an older nonce is stale and gets no answer;
//! - every name a stream asked for is remembered, and pushed when the service appears;
//! - a response goes out only when what the stream would receive changed; LDS and CDS responses
//!   hold every resource of the type the stream has (full state), a first LDS or CDS request
//!   without names (Envoy's wildcard) means every service, answered once the registry has listed
//!   its services (an empty answer before that would delete every cluster a reconnecting client
//!   holds);
//! - within one push the types go out CDS, EDS, then LDS and RDS, so a client never holds a
//!   listener whose cluster it does not know.
//!
//! Both variants build their resources with [`resources`] (shaped as gRPC proposal A27,
//! "xDS-Based Global Load Balancing", expects them), share the encoded bytes and the registry
//! watches ([`state`], [`follow`]), keep the same update order, zone priorities, version routes,
//! stale-on-error rule and restart grace (the library's `registry::outage::Grace`), and count
//! against one bound on streams. The same port serves the Client Status Discovery Service
//! ([`csds`], gRFC A40): what each connected client was sent and whether it ACKed it. The port
//! itself is [`serve`]: hyper's HTTP/2 connections, state-of-the-world streams answered before
//! tonic's routes.

mod by_kind;
pub(crate) mod clients;
mod closing;
mod csds;
mod delta;
mod drive;
mod follow;
mod gather;
mod memo;
mod policy;
mod request;
mod resilience;
mod resources;
mod serve;
mod sotw;
mod state;
#[cfg(test)]
mod tests;
mod view;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chi_discovery::health::OutlierConfig;
use chi_discovery::routing::Geo;
use chi_discovery::{DiscoveryClient, OutagePolicy};
use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::Stream;
use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::admin;
use crate::agent::Shutdown;
use crate::cli::XdsArgs;
use crate::failure::Failure;
use crate::limits::{ConnInfo, Door, InFlight, Limits, Reason, Refusal, Refusals};
use crate::source::Source;

use clients::{ClientLog, Clients};
pub(crate) use closing::Closing;
use delta::DeltaSession;
use drive::{Driven, Driving, Outbox};
use follow::Following;
use resources::{ClientPlace, Kind, Shape};
use state::{Encoded, Followed, Hub};
use wire::AdsService;

/// Most names one request may carry; more is refused as a malformed request.
const MAX_NAMES: usize = 10_000;
/// Connections `chi xds` serves at once by default (`--max-connections`).
const MAX_CONNECTIONS: usize = 1024;
/// Responses queued per stream before the stream's loop waits for the client.
const STREAM_BUFFER: usize = 16;

/// `chi xds`: serves ADS until interrupted.
pub(crate) async fn run(args: XdsArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install()?;
    // The certificate first: a file that does not load is an error before anything starts.
    let tls = args
        .tls()
        .map(|tls| crate::tls::acceptor(&tls, &crate::tls::XDS))
        .transpose()
        .map_err(|e| Failure::bad_input(format!("{e:#}")))?;
    let source = Source::resolve(&args.source)?;
    source.require_shared("xds")?;
    let registry = source.connect().await?;
    let client = DiscoveryClient::builder()
        .retry(source.config.retry)
        .outage(OutagePolicy::with_restart_grace(args.restart_grace))
        .build(registry.clone());
    let shape = Shape {
        strategy: source.config.load_balancer.strategy,
        rds: args.rds,
        geo: Arc::new(Geo::from_config(&source.config.routing)),
        versions: source
            .config
            .routing
            .enable_version_routing
            .then(|| Arc::from(source.config.routing.default_version.as_str())),
        health_check_enabled: source.config.load_balancer.health_check_enabled,
        hash_key_header: Arc::from(source.config.load_balancer.hash_key_header.as_str()),
        orca: source.config.load_balancer.orca,
        // The config file has no outlier section: the library's defaults, as `chi proxy` uses.
        outlier: OutlierConfig::default(),
        max_requests: source.config.load_balancer.max_requests_per_instance,
        retry: source.config.retry,
    };
    let refusals = Refusals::default();
    let limits = Limits::from_args(
        &args.conn,
        None,
        (MAX_CONNECTIONS, args.max_streams as usize),
    );
    let door = Door::new("xds", limits, Refusal::Grpc, &refusals);
    let server = XdsServer::new(Hub::new(client), shape.clone(), args.max_streams)
        .unknown_names(args.max_unknown_names)
        .counting(refusals.clone());
    let closing = server.closing.clone();
    if let Some(admin) = args.admin {
        let door = Door::new("xds_admin", limits.admin(), Refusal::Http, &refusals);
        let feed = crate::console::XdsFeed {
            clients: server.clients(),
            strategy: shape.strategy,
        };
        let metrics = exposition(&refusals);
        let bound = crate::console::serve_xds(admin, registry.clone(), feed, metrics, door).await?;
        println!("xds admin on http://{bound}");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            Failure::failed(format!("cannot listen on {}: {e}", args.listen))
                .hint("pick another --listen address (port 0 picks a free one)")
        })?;
    let bound: SocketAddr = listener.local_addr()?;
    let scheme = if tls.is_some() { "grpcs" } else { "grpc" };
    println!("xds on {scheme}://{bound}");
    tracing::info!(%bound, tls = tls.is_some(), mtls = args.tls_client_ca.is_some(), strategy = shape.strategy.as_str(), rds = shape.rds, geo = shape.geo.is_enabled(), max_streams = args.max_streams, restart_grace = ?args.restart_grace, "serving ADS");
    let keepalive = Some(args.keepalive).filter(|k| !k.is_zero());
    let csds = csds::Csds::new(server.clients());
    let ads = server.into_service();
    let port = serve::Port::new(
        ads.clone(),
        tonic::service::Routes::new(ads).add_service(csds.into_service()),
    );
    let stop = async move {
        shutdown.wait().await;
        // ADS streams never end by themselves: end them, so the graceful shutdown completes.
        closing.close();
    };
    let incoming = door.incoming(listener);
    match tls {
        // The handshake after the door admits the connection, so its bounds hold over TLS too.
        Some(acceptor) => {
            let incoming = crate::tls::incoming(incoming, acceptor);
            serve::serve(port, incoming, keepalive, stop).await;
        }
        None => serve::serve(port, incoming, keepalive, stop).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// `/metrics` of `chi xds --admin`: the refusals of its ports.
fn exposition(refusals: &Refusals) -> admin::MetricsFn {
    let mut registry = prometheus_client::registry::Registry::default();
    refusals.register(&mut registry);
    Arc::new(move || {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    })
}

/// The ADS service: shared services plus a bound on concurrent streams.
#[derive(Debug, Clone)]
pub(crate) struct XdsServer {
    hub: Arc<Hub>,
    shape: Shape,
    streams: Arc<Semaphore>,
    max_streams: u32,
    /// Most names one stream may follow that the registry does not know.
    max_unknown: usize,
    versions: Arc<AtomicU64>,
    closing: Closing,
    encoded: Arc<Encoded>,
    /// Streams refused and ended by a bound (`chi_refused_total{server="xds"}`).
    refusals: Refusals,
    /// What each open stream was sent and answered (read by the console).
    clients: Arc<Clients>,
}

impl XdsServer {
    pub(crate) fn new(hub: Arc<Hub>, shape: Shape, max_streams: u32) -> XdsServer {
        let shape_uses_place = shape.geo.is_enabled();
        XdsServer {
            hub,
            shape,
            streams: Arc::new(Semaphore::new(max_streams as usize)),
            max_streams,
            max_unknown: MAX_NAMES,
            versions: Arc::new(AtomicU64::new(first_version())),
            closing: Closing::default(),
            encoded: Arc::new(Encoded::new(shape_uses_place)),
            refusals: Refusals::default(),
            clients: Arc::new(Clients::default()),
        }
    }

    /// Lets each stream follow at most `n` names the registry does not know (by default, as
    /// many as one request may carry).
    pub(crate) fn unknown_names(mut self, n: u32) -> XdsServer {
        self.max_unknown = n as usize;
        self
    }

    /// Counts refused and ended streams into `refusals`.
    pub(crate) fn counting(mut self, refusals: Refusals) -> XdsServer {
        self.refusals = refusals;
        self
    }

    /// Every open stream's client and what it was sent and answered (read-only).
    pub(crate) fn clients(&self) -> Arc<Clients> {
        self.clients.clone()
    }

    /// The gRPC service: state-of-the-world streams written from shared bytes ([`wire`]), the
    /// incremental ones through tonic's generated server.
    pub(crate) fn into_service(self) -> AdsService {
        AdsService::new(self)
    }
}

/// Where the version counter starts: the Unix time in milliseconds, so the versions of a
/// restarted server never repeat one a reconnecting client still holds from the previous run.
fn first_version() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2))
}

type ResponseStream = Responses<DiscoveryResponse>;
type DeltaStream = Responses<DeltaDiscoveryResponse>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    /// Never called: [`AdsService`] answers this method before the generated server sees it.
    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        Err(Status::internal(
            "state-of-the-world streams are served by chi's own ADS service",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        let caller = Caller::new(
            request.extensions().get::<ConnInfo>(),
            request.remote_addr(),
        );
        let responses = self.open(caller, request.into_inner(), |tx, log| {
            DeltaSession::new(self.parts(log), tx)
        })?;
        let responses = responses.map(|r| r.map_err(|status| *status));
        Ok(Response::new(Box::pin(responses)))
    }
}

impl XdsServer {
    /// What a new stream shares with the server.
    fn parts(&self, log: Arc<ClientLog>) -> Parts {
        Parts {
            log,
            following: Following::new(self.hub.clone(), self.max_unknown),
            shape: self.shape.clone(),
            versions: self.versions.clone(),
            encoded: self.encoded.clone(),
            node: String::new(),
            place: ClientPlace::default(),
            nonces: 0,
            stamped: 0,
        }
    }

    /// Starts a stream of either variant: takes one of the `--max-streams` slots (or refuses
    /// with `RESOURCE_EXHAUSTED`) and runs the session until the client leaves or the server
    /// closes.
    fn open<S: Session>(
        &self,
        caller: Caller,
        requests: Streaming<S::Request>,
        session: impl FnOnce(Outbox<S::Response>, Arc<ClientLog>) -> S,
    ) -> Result<Driving<S::Response>, Status> {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            self.refusals.count("xds", Reason::Streams);
            Status::resource_exhausted(format!(
                "this chi xds serves at most {} ADS streams (--max-streams); try another server or later",
                self.max_streams
            ))
        })?;
        let Caller { peer, in_flight } = caller;
        let outbox = Outbox::new();
        let log = self.clients.open(S::VARIANT, peer);
        let session = session(outbox.clone(), log.clone());
        let clients = self.clients.clone();
        let closing = self.closing.closed();
        let refusals = self.refusals.clone();
        let stream = Driven::new(session, requests, closing, outbox.clone(), refusals);
        let bookkeeping = (clients, log, permit, in_flight);
        Ok(Driving::new(
            Box::pin(stream.run(peer, bookkeeping)),
            outbox,
        ))
    }
}

/// Who opened a stream: the client's address, and its connection's requests in flight, which
/// the stream counts in while it is open, so the connection's idle timeout leaves it alone.
pub(crate) struct Caller {
    peer: Option<SocketAddr>,
    in_flight: Option<InFlight>,
}

impl Caller {
    /// From the connection the door admitted (`conn`), else the address tonic saw.
    pub(crate) fn new(conn: Option<&ConnInfo>, fallback: Option<SocketAddr>) -> Caller {
        Caller {
            peer: conn.map(|c| c.peer).or(fallback),
            in_flight: conn.map(|c| c.activity.start()),
        }
    }
}

/// What a stream of either variant takes from the server, and what it knows of its client.
pub(crate) struct Parts {
    /// Where the stream notes what it sent and how the client answered.
    log: Arc<ClientLog>,
    following: Following,
    shape: Shape,
    /// The server's version counter: every response packed takes the next value (a
    /// state-of-the-world response shared by several streams takes one), so a version is never
    /// reused on a stream.
    versions: Arc<AtomicU64>,
    /// Resources already encoded for other streams.
    encoded: Arc<Encoded>,
    /// The client's node id (sent on the first request of a stream), for the logs.
    node: String,
    /// The client's locality (from the same node), for the priorities of its localities.
    place: ClientPlace,
    /// Responses sent on this stream: the source of their nonces (incremental xDS).
    nonces: u64,
    /// The highest stamp (version and nonce) sent on this stream, or held by its client when
    /// it came back (state-of-the-world xDS): the next response's is higher.
    stamped: u64,
}

impl Parts {
    /// Takes the node of a request, when it carries one; true when the client's place changed
    /// (the endpoints built for the old one no longer hold).
    fn heard(&mut self, node: Option<&Node>) -> bool {
        let Some(node) = node else {
            return false;
        };
        if node.id == self.node && same_node_place(node, &self.place) {
            // Clients may send their node with every request: the same one costs no copy.
            return false;
        }
        let (id, place) = node_of(node);
        self.log.heard(&id, place.as_ref());
        self.node = id;
        match place.filter(|p| *p != self.place) {
            Some(place) => {
                self.place = place;
                true
            }
            None => false,
        }
    }

    /// The nonce and version of the next response of this stream.
    fn stamp(&mut self) -> (String, u64) {
        self.nonces += 1;
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        (self.nonces.to_string(), version)
    }
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a stream's loop hands to the response body: a response, or the status that ends the
/// stream (boxed: a queue's buffer is sized by its largest item, and a `Status` is large).
pub(crate) type Sent<T> = Result<T, Box<Status>>;

/// Why a stream ends early.
#[derive(Debug)]
pub(crate) enum StreamEnd {
    /// The client is gone (its request stream ended, or it dropped the responses).
    Gone,
    /// A request the server refuses; the stream ends with this status.
    Refused(Status),
    /// The server shuts down.
    Closing,
}

/// One ADS stream of either variant, as [`drive`] runs it.
pub(crate) trait Session: Send + 'static {
    /// `DiscoveryRequest` or `DeltaDiscoveryRequest`.
    type Request: Send + 'static;
    /// `DiscoveryResponse` or `DeltaDiscoveryResponse`.
    type Response: Send + 'static;
    /// For the logs.
    const VARIANT: &'static str;

    /// The services the stream follows.
    fn following(&mut self) -> &mut Following;
    /// Applies a request: `Some(kind)` when it changed what the stream asks for of `kind`,
    /// which [`Session::resubscribe`] then follows and answers. Most requests are ACKs, taken
    /// here without a future of their own (boxing the request's future cost a copy of it, a
    /// few KiB, at every ACK).
    fn on_request(&mut self, request: Self::Request) -> Result<Option<Kind>, StreamEnd>;
    /// Follows the services the subscriptions name now (a request of `kind` changed them) and
    /// sends what there is to send.
    fn resubscribe(&mut self, kind: Kind) -> impl Future<Output = Result<(), StreamEnd>> + Send;
    /// Follows the services the stream's subscriptions name now (after the catalogue changed).
    fn refollow(&mut self);
    /// Sends what changed since the last push, in the order that drops no traffic. With
    /// `changed`, only those services' views changed since the last push (and nothing else did:
    /// no request, no new catalogue), so only their resources need a look.
    fn push(
        &mut self,
        changed: Option<&[Arc<Followed>]>,
    ) -> impl Future<Output = Result<(), StreamEnd>> + Send;
}

/// The client's node id and, when its bootstrap names one, its locality.
fn node_of(node: &Node) -> (String, Option<ClientPlace>) {
    let place = node.locality.as_ref().map(|l| ClientPlace {
        region: Some(l.region.clone()).filter(|r| !r.is_empty()),
        zone: Some(l.zone.clone()).filter(|z| !z.is_empty()),
    });
    (node.id.clone(), place)
}

/// Whether `node` names no locality or the one [`node_of`] would read as `place` (an empty
/// region or zone is none), without copying it.
fn same_node_place(node: &Node, place: &ClientPlace) -> bool {
    node.locality.as_ref().is_none_or(|l| {
        place.region.as_deref().unwrap_or("") == l.region
            && place.zone.as_deref().unwrap_or("") == l.zone
    })
}

/// The control plane's identity, in every response.
pub(crate) fn control_plane() -> ControlPlane {
    ControlPlane {
        identifier: concat!("chi ", env!("CARGO_PKG_VERSION")).to_owned(),
    }
}
