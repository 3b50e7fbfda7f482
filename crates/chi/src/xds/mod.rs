//! `chi xds`: an xDS control plane that serves chi's view of any registry to gRPC's own xDS
//! clients (`xds:///NAME` targets) and to Envoy.
//!
//! The server speaks the Aggregated Discovery Service (ADS), state-of-the-world variant, as the
//! xDS protocol describes it (envoyproxy/envoy `api/xds_protocol.rst`):
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
//!   without names (Envoy's wildcard) means every service;
//! - within one push the types go out CDS, EDS, then LDS and RDS, so a client never holds a
//!   listener whose cluster it does not know.
//!
//! Resources are shaped as gRPC proposal A27 ("xDS-Based Global Load Balancing") expects them;
//! see [`resources`]. Delta (incremental) ADS is refused with `UNIMPLEMENTED`.

mod resources;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chi_discovery::DiscoveryClient;
use chi_discovery::instance::validate_name;
use chi_discovery::routing::Geo;
use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::Stream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tokio_stream::{StreamExt, StreamMap};
use tonic::{Request, Response, Status, Streaming};

use crate::agent::Shutdown;
use crate::cli::XdsArgs;
use crate::failure::Failure;
use crate::source::Source;

use resources::{ClientPlace, Kind, Shape};
use state::{Encoded, Hub, ServiceView, TypeState};

/// Most names one request may carry; more is refused as a malformed request.
const MAX_NAMES: usize = 10_000;
/// Responses queued per stream before the stream task waits for the client.
const STREAM_BUFFER: usize = 16;

/// `chi xds`: serves ADS until interrupted.
pub(crate) async fn run(args: XdsArgs) -> anyhow::Result<ExitCode> {
    let mut shutdown = Shutdown::install()?;
    let source = Source::resolve(&args.source)?;
    source.require_shared("xds")?;
    let registry = source.connect().await?;
    let client = DiscoveryClient::builder()
        .retry(source.config.retry)
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
    };
    let server = XdsServer::new(Hub::new(client, registry), shape.clone(), args.max_streams);
    let closing = server.closing.clone();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            Failure::failed(format!("cannot listen on {}: {e}", args.listen))
                .hint("pick another --listen address (port 0 picks a free one)")
        })?;
    let bound: SocketAddr = listener.local_addr()?;
    println!("xds on grpc://{bound}");
    tracing::info!(%bound, strategy = shape.strategy.as_str(), rds = shape.rds, geo = shape.geo.is_enabled(), max_streams = args.max_streams, "serving ADS");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(server.into_service())
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.wait().await;
            // ADS streams never end by themselves: end them, so the graceful shutdown completes.
            closing.close();
        })
        .await
        .map_err(|e| Failure::failed(format!("the xDS server stopped: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// The ADS service: shared services plus a bound on concurrent streams.
#[derive(Debug, Clone)]
pub(crate) struct XdsServer {
    hub: Arc<Hub>,
    shape: Shape,
    streams: Arc<Semaphore>,
    max_streams: u32,
    versions: Arc<AtomicU64>,
    closing: Closing,
    encoded: Arc<Encoded>,
}

/// Tells every stream that the server is going away.
#[derive(Debug, Clone)]
pub(crate) struct Closing(Arc<watch::Sender<bool>>);

impl Closing {
    /// Ends every stream with `UNAVAILABLE`; clients reconnect (to this server once restarted,
    /// or to another one) and keep their resources meanwhile.
    pub(crate) fn close(&self) {
        self.0.send_replace(true);
    }
}

impl XdsServer {
    pub(crate) fn new(hub: Arc<Hub>, shape: Shape, max_streams: u32) -> XdsServer {
        let shape_uses_place = shape.geo.is_enabled();
        XdsServer {
            hub,
            shape,
            streams: Arc::new(Semaphore::new(max_streams as usize)),
            max_streams,
            versions: Arc::new(AtomicU64::new(first_version())),
            closing: Closing(Arc::new(watch::Sender::new(false))),
            encoded: Arc::new(Encoded::new(shape_uses_place)),
        }
    }

    pub(crate) fn into_service(self) -> AggregatedDiscoveryServiceServer<XdsServer> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

/// Where the version counter starts: the Unix time in milliseconds, so the versions of a
/// restarted server never repeat one a reconnecting client still holds from the previous run.
fn first_version() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2))
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this chi xds serves at most {} ADS streams (--max-streams); try another server or later",
                self.max_streams
            ))
        })?;
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = AdsStream::new(
            self.hub.clone(),
            self.shape.clone(),
            self.versions.clone(),
            self.encoded.clone(),
            tx,
        );
        let requests = request.into_inner();
        let closing = self.closing.0.subscribe();
        tokio::spawn(async move {
            tracing::debug!(?peer, "ADS stream opened");
            stream.run(requests, closing).await;
            tracing::debug!(?peer, "ADS stream closed");
            drop(permit);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Err(Status::unimplemented(
            "chi xds serves state-of-the-world ADS only (StreamAggregatedResources); incremental xDS is not served yet",
        ))
    }
}

/// Why a stream ends early.
#[derive(Debug)]
enum StreamEnd {
    /// The client is gone (its request stream ended, or it dropped the responses).
    Gone,
    /// A request the server refuses; the stream ends with this status.
    Refused(Status),
    /// The server shuts down.
    Closing,
}

/// One ADS stream: what the client asked for, what it was sent, and the services it follows.
struct AdsStream {
    hub: Arc<Hub>,
    shape: Shape,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    types: BTreeMap<Kind, TypeState>,
    views: HashMap<String, ServiceView>,
    changes: StreamMap<String, WatchStream<ServiceView>>,
    catalog: Option<watch::Receiver<Arc<BTreeSet<String>>>>,
    nonces: u64,
    /// The server's version counter: every response takes the next value, so a version is never
    /// reused on any stream.
    versions: Arc<AtomicU64>,
    /// The client's node id (sent on the first request of a stream), for the logs.
    node: String,
    /// The client's locality (from the same node), for the priorities of its localities.
    place: ClientPlace,
    /// Resources already encoded for other streams.
    encoded: Arc<Encoded>,
}

impl AdsStream {
    fn new(
        hub: Arc<Hub>,
        shape: Shape,
        versions: Arc<AtomicU64>,
        encoded: Arc<Encoded>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> AdsStream {
        AdsStream {
            hub,
            shape,
            tx,
            types: Kind::PUSH_ORDER
                .into_iter()
                .map(|k| (k, TypeState::default()))
                .collect(),
            views: HashMap::new(),
            changes: StreamMap::new(),
            catalog: None,
            nonces: 0,
            versions,
            node: String::new(),
            place: ClientPlace::default(),
            encoded,
        }
    }

    async fn run(
        mut self,
        mut requests: Streaming<DiscoveryRequest>,
        mut closing: watch::Receiver<bool>,
    ) {
        let end = loop {
            let catalog_changed = async {
                match &mut self.catalog {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                () = async { drop(closing.wait_for(|c| *c).await) } => Err(StreamEnd::Closing),
                request = requests.next() => match request {
                    Some(Ok(request)) => self.on_request(request).await,
                    Some(Err(status)) => {
                        tracing::debug!("ADS stream error from the client: {status}");
                        Err(StreamEnd::Gone)
                    }
                    None => Err(StreamEnd::Gone),
                },
                Some((name, view)) = self.changes.next() => {
                    self.views.insert(name, view);
                    self.push().await
                }
                true = catalog_changed => {
                    self.follow_wanted();
                    self.push().await
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        match end {
            StreamEnd::Gone => {}
            StreamEnd::Refused(status) => {
                tracing::warn!("refused an ADS request: {}", status.message());
                let _ = self.tx.send(Err(status)).await;
            }
            StreamEnd::Closing => {
                let status = Status::unavailable("chi xds is shutting down");
                let _ = self.tx.send(Err(status)).await;
            }
        }
    }

    async fn on_request(&mut self, request: DiscoveryRequest) -> Result<(), StreamEnd> {
        let Some(kind) = Kind::from_type_url(&request.type_url) else {
            tracing::debug!(type_url = %request.type_url, "ignoring a request for a type chi xds does not serve");
            return Ok(());
        };
        if request.resource_names.len() > MAX_NAMES {
            return Err(StreamEnd::Refused(Status::invalid_argument(format!(
                "{} names in one {} request; at most {MAX_NAMES}",
                request.resource_names.len(),
                kind.short()
            ))));
        }
        if let Some(node) = &request.node {
            node.id.clone_into(&mut self.node);
            if let Some(l) = &node.locality {
                self.place = ClientPlace {
                    region: Some(l.region.clone()).filter(|r| !r.is_empty()),
                    zone: Some(l.zone.clone()).filter(|z| !z.is_empty()),
                };
            }
        }
        let node = self.node.as_str();
        let ts = self.types.entry(kind).or_default();
        // Before the first response of this type on this stream, any nonce is one a reconnecting
        // client kept from an earlier stream: the request is an initial one, not a stale one.
        let answered = !ts.nonce.is_empty();
        let echoes = answered && request.response_nonce == ts.nonce;
        if answered && !request.response_nonce.is_empty() && !echoes {
            tracing::debug!(
                kind = kind.short(),
                nonce = %request.response_nonce,
                current = %ts.nonce,
                "stale nonce: request ignored"
            );
            return Ok(());
        }
        if let Some(error) = &request.error_detail {
            tracing::warn!(
                node,
                kind = kind.short(),
                rejected = ts.version,
                accepted = ts.accepted.as_deref().unwrap_or("none"),
                code = error.code,
                "NACK: {}",
                error.message
            );
        } else if echoes {
            tracing::debug!(node, kind = kind.short(), version = %request.version_info, "ACK");
            ts.accepted = Some(request.version_info.clone());
        }
        let first = !ts.subscribed;
        ts.subscribed = true;
        let mut names = BTreeSet::new();
        let mut star = false;
        for name in request.resource_names {
            if name == "*" {
                star = true;
            } else if validate_name("service name", &name).is_ok() {
                names.insert(name);
            } else {
                tracing::debug!(
                    kind = kind.short(),
                    ?name,
                    "ignoring a name that is no service name"
                );
            }
        }
        let wildcard =
            kind.is_full_state() && (star || (names.is_empty() && (first || ts.wildcard)));
        if !first && wildcard == ts.wildcard && names == ts.names {
            // An ACK or NACK of the same subscription: nothing new to send (changes are pushed
            // when they happen). The common case, answered without touching the services.
            return Ok(());
        }
        ts.wildcard = wildcard;
        ts.names = names;
        self.follow_wanted();
        self.push().await
    }

    /// The services some type of this stream wants: named ones, plus the catalogue for wildcards.
    fn wanted(&self) -> BTreeSet<String> {
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        let catalog = self.catalog.as_ref().map(|c| c.borrow().clone());
        for ts in self.types.values() {
            wanted.extend(ts.names.iter().map(|n| self.shape.split(n).0.to_owned()));
            if ts.wildcard
                && let Some(all) = &catalog
            {
                wanted.extend(all.iter().cloned());
            }
        }
        wanted
    }

    /// Follows exactly the services [`AdsStream::wanted`] names.
    fn follow_wanted(&mut self) {
        if self.catalog.is_none() && self.types.values().any(|t| t.wildcard) {
            self.catalog = Some(self.hub.catalog());
        }
        let wanted = self.wanted();
        let stale: Vec<String> = self
            .views
            .keys()
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect();
        for name in stale {
            self.views.remove(&name);
            self.changes.remove(&name);
        }
        for name in wanted {
            if self.views.contains_key(&name) {
                continue;
            }
            let rx = self.hub.subscribe(&name);
            self.views.insert(name.clone(), rx.borrow().clone());
            self.changes.insert(name, WatchStream::from_changes(rx));
        }
    }

    /// Sends, type by type in push order, every response whose content changed.
    async fn push(&mut self) -> Result<(), StreamEnd> {
        let catalog = self.catalog.as_ref().map(|c| c.borrow().clone());
        for kind in Kind::PUSH_ORDER {
            let Some(ts) = self.types.get(&kind) else {
                continue;
            };
            if !ts.subscribed {
                continue;
            }
            let mut names: BTreeSet<String> = ts.names.clone();
            if ts.wildcard
                && let Some(all) = &catalog
            {
                for service in all.iter() {
                    if let Some(view) = self.views.get(service) {
                        names.extend(self.shape.all_names(kind, service, view));
                    }
                }
            }
            let content: BTreeMap<String, u64> = names
                .into_iter()
                .filter_map(|name| {
                    let view = self.views.get(self.shape.split(&name).0)?;
                    let revision = self.shape.revision(kind, &name, view)?;
                    Some((name, revision))
                })
                .collect();
            // Listeners and clusters go out whole; endpoints and routes only where they changed
            // (or were newly asked for): the client keeps the others.
            let send: Vec<String> = match &ts.sent {
                Some(sent) if *sent == content => continue,
                Some(sent) if !kind.is_full_state() => content
                    .iter()
                    .filter(|(name, revision)| sent.get(*name) != Some(*revision))
                    .map(|(name, _)| name.clone())
                    .collect(),
                // Nothing sent yet: answer a wildcard at once (possibly empty, so Envoy can
                // finish starting); named resources when one of them exists.
                None if content.is_empty() && !ts.wildcard => continue,
                _ => content.keys().cloned().collect(),
            };
            if send.is_empty() && !kind.is_full_state() {
                // Only names the client dropped: nothing to tell it.
                if let Some(ts) = self.types.get_mut(&kind) {
                    ts.sent = Some(content);
                }
                continue;
            }
            let resources = send
                .iter()
                .filter_map(|name| {
                    let service = self.shape.split(name).0;
                    let view = self.views.get(service)?;
                    let list = view.instances.as_ref()?;
                    let revision = content.get(name).copied().unwrap_or(0);
                    Some(self.encoded.get(kind, name, revision, &self.place, || {
                        self.shape.build(kind, name, list, &self.place)
                    }))
                })
                .collect();
            self.nonces += 1;
            let nonce = self.nonces.to_string();
            let Some(ts) = self.types.get_mut(&kind) else {
                continue;
            };
            ts.version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
            ts.nonce = nonce.clone();
            let version = ts.version.to_string();
            tracing::debug!(kind = kind.short(), %version, names = ?send, "push");
            ts.sent = Some(content);
            let response = DiscoveryResponse {
                version_info: version,
                resources,
                type_url: kind.type_url().to_owned(),
                nonce,
                control_plane: Some(ControlPlane {
                    identifier: format!("chi {}", env!("CARGO_PKG_VERSION")),
                }),
                ..Default::default()
            };
            self.tx
                .send(Ok(response))
                .await
                .map_err(|_| StreamEnd::Gone)?;
        }
        Ok(())
    }
}
