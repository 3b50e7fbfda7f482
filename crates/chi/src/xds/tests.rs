//! Protocol tests: a tonic ADS client against the server in this process, over loopback, with
//! the embedded `Memory` registry (wrapped in [`Flaky`] where an outage is needed).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chi_discovery::balance::Strategy;
use chi_discovery::routing::Geo;
use chi_discovery::registry::{Memory, WatchStream};
use chi_discovery::{DiscoveryClient, Error, HealthStatus, Instance, Liveness, Registry, RetryPolicy};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::StreamExt;
use futures_util::stream;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::resources::{ClientPlace, Kind, Shape, priorities};
use super::state::Hub;
use super::{Closing, XdsServer};

const SERVICE: &str = "order-service";
const QUIET: Duration = Duration::from_millis(400);

fn inst(id: &str, port: u16, zone: &str) -> Instance {
    Instance::new(SERVICE, "127.0.0.1", port)
        .with_id(id)
        .with_meta("region", "eu-west-1")
        .with_meta("zone", zone)
}

/// Registers `instance` in the embedded registry behind a test server.
async fn register(memory: &Memory, instance: Instance) {
    memory.register(&instance).await.expect("register");
}

/// Memory with a switch: "down" ends every open watch with an error and fails new ones.
struct Flaky {
    inner: Memory,
    down: AtomicBool,
    outage: broadcast::Sender<()>,
}

impl Flaky {
    fn new() -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: Memory::new(),
            down: AtomicBool::new(false),
            outage: broadcast::channel(4).0,
        })
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            let _ = self.outage.send(());
        }
    }

    fn check(&self) -> chi_discovery::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::registry("flaky", "registry down"));
        }
        Ok(())
    }
}

#[async_trait]
impl Registry for Flaky {
    fn backend(&self) -> &str {
        "flaky"
    }
    async fn register(&self, instance: &Instance) -> chi_discovery::Result<()> {
        self.inner.register(instance).await
    }
    async fn deregister(&self, service: &str, id: &str) -> chi_discovery::Result<()> {
        self.inner.deregister(service, id).await
    }
    async fn keep_alive(&self, i: &Instance, h: HealthStatus) -> chi_discovery::Result<Liveness> {
        self.inner.keep_alive(i, h).await
    }
    async fn instances(&self, service: &str) -> chi_discovery::Result<Vec<Instance>> {
        self.check()?;
        self.inner.instances(service).await
    }
    async fn services(&self) -> chi_discovery::Result<Vec<String>> {
        self.check()?;
        self.inner.services().await
    }
    async fn watch(&self, service: &str) -> chi_discovery::Result<WatchStream> {
        self.check()?;
        let changes = self.inner.watch(service).await?;
        let outage = self.outage.subscribe();
        // Forward the changes until an outage, then one error and the end of the stream.
        let s = stream::unfold(
            (changes, outage, false),
            |(mut changes, mut outage, done)| async move {
                if done {
                    return None;
                }
                tokio::select! {
                    item = changes.next() => item.map(|i| (i, (changes, outage, false))),
                    _ = outage.recv() => {
                        let e = Error::registry("flaky", "connection lost");
                        Some((Err(e), (changes, outage, true)))
                    }
                }
            },
        );
        Ok(s.boxed())
    }
}

/// A server on loopback over `registry`.
struct Fixture {
    addr: std::net::SocketAddr,
    hub: Arc<Hub>,
    closing: Closing,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(registry: Arc<dyn Registry>, shape: Shape, max_streams: u32) -> Fixture {
    let retry = RetryPolicy {
        initial_interval: Duration::from_millis(50),
        max_interval: Duration::from_millis(200),
        ..RetryPolicy::default()
    };
    let client = DiscoveryClient::builder()
        .retry(retry)
        .build(registry.clone());
    let hub = Hub::new(client, registry);
    let server = XdsServer::new(hub.clone(), shape, max_streams);
    let closing = server.closing.clone();
    let service = server.into_service();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Fixture {
        addr,
        hub,
        closing,
        server,
    }
}

fn round_robin() -> Shape {
    Shape {
        strategy: Strategy::RoundRobin,
        rds: false,
        geo: Arc::new(Geo::disabled()),
        versions: None,
    }
}

fn topology() -> Geo {
    Geo::new([
        ("eu-west-1", vec!["eu-west-1a", "eu-west-1b"]),
        ("us-east-1", vec!["us-east-1a"]),
        ("ap-south-1", vec!["ap-south-1a"]),
    ])
}

fn at(region: Option<&str>, zone: Option<&str>) -> ClientPlace {
    ClientPlace {
        region: region.map(str::to_owned),
        zone: zone.map(str::to_owned),
    }
}

/// One ADS stream, driven by hand.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Ads {
    async fn open(f: &Fixture) -> Ads {
        Self::try_open(f).await.expect("the ADS stream opens")
    }

    async fn try_open(f: &Fixture) -> Result<Ads, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", f.addr))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Ads { tx, rx })
    }

    async fn send(&self, kind: Kind, names: &[&str], version: &str, nonce: &str) {
        self.send_raw(DiscoveryRequest {
            version_info: version.to_owned(),
            node: Some(Node {
                id: "test-node".to_owned(),
                ..Default::default()
            }),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            type_url: kind.type_url().to_owned(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        })
        .await;
    }

    async fn send_raw(&self, request: DiscoveryRequest) {
        self.tx
            .send(request)
            .await
            .expect("the stream takes requests");
    }

    /// ACKs `r`.
    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        let kind = Kind::from_type_url(&r.type_url).expect("known type");
        self.send(kind, names, &r.version_info, &r.nonce).await;
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.next()).await {
            Ok(Some(Ok(r))) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    async fn recv_status(&mut self) -> tonic::Status {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.next()).await {
            Ok(Some(Err(s))) => s,
            other => panic!("expected an error status, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives for a while.
    async fn quiet(&mut self) {
        if let Ok(item) = tokio::time::timeout(QUIET, self.rx.next()).await {
            panic!("expected no response, got {item:?}");
        }
    }
}

fn decode<M: Message + Default>(r: &DiscoveryResponse) -> Vec<M> {
    r.resources
        .iter()
        .map(|any| M::decode(any.value.as_slice()).expect("decodes"))
        .collect()
}

fn ports(r: &DiscoveryResponse) -> Vec<u32> {
    let mut ports: Vec<u32> = decode::<ClusterLoadAssignment>(r)
        .iter()
        .flat_map(|cla| cla.endpoints.iter())
        .flat_map(|l| l.lb_endpoints.iter())
        .filter_map(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => match ep.address.as_ref()?.address.as_ref()? {
                AddressKind::SocketAddress(sa) => match sa.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => Some(p),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect();
    ports.sort_unstable();
    ports
}

#[tokio::test]
async fn initial_responses_carry_what_grpc_needs() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "eu-west-1a")).await;
    register(&memory, inst("b", 7002, "eu-west-1b").with_weight(3)).await;
    register(
        &memory,
        inst("c", 7003, "eu-west-1b").with_health(HealthStatus::Unhealthy),
    )
    .await;
    let f = serve(memory, round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;

    ads.send(Kind::Listener, &[SERVICE], "", "").await;
    let lds = ads.recv().await;
    assert_eq!(lds.type_url, Kind::Listener.type_url());
    assert!(lds.version_info.parse::<u64>().is_ok(), "{lds:?}");
    let listeners: Vec<Listener> = decode(&lds);
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0].name, SERVICE);
    let api = listeners[0]
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .expect("api_listener");
    let hcm =
        HttpConnectionManager::decode(api.value.as_slice()).expect("an HttpConnectionManager");
    let last = hcm.http_filters.last().expect("a filter");
    match &last.config_type {
        Some(ConfigType::TypedConfig(any)) => assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        ),
        other => panic!("the last filter is not the Router: {other:?}"),
    }
    let Some(RouteSpecifier::RouteConfig(routes)) = &hcm.route_specifier else {
        panic!("routes are inline by default");
    };
    let vhost = &routes.virtual_hosts[0];
    assert!(vhost.domains.iter().any(|d| d == SERVICE));
    match vhost.routes[0].action.as_ref() {
        Some(Action::Route(a)) => assert_eq!(
            a.cluster_specifier,
            Some(ClusterSpecifier::Cluster(SERVICE.to_owned()))
        ),
        other => panic!("no route to the cluster: {other:?}"),
    }
    ads.ack(&lds, &[SERVICE]).await;

    ads.send(Kind::Cluster, &[SERVICE], "", "").await;
    let cds = ads.recv().await;
    let clusters: Vec<Cluster> = decode(&cds);
    assert_eq!(clusters[0].name, SERVICE);
    assert_eq!(
        clusters[0].cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
    );
    assert_eq!(clusters[0].lb_policy, LbPolicy::RoundRobin as i32);
    let eds_config = clusters[0]
        .eds_cluster_config
        .as_ref()
        .and_then(|c| c.eds_config.as_ref())
        .expect("eds_config");
    assert!(matches!(
        eds_config.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    ads.ack(&cds, &[SERVICE]).await;

    ads.send(Kind::Endpoints, &[SERVICE], "", "").await;
    let eds = ads.recv().await;
    let cla: Vec<ClusterLoadAssignment> = decode(&eds);
    assert_eq!(cla[0].cluster_name, SERVICE);
    let zones: Vec<(&str, u32, u32, usize)> = cla[0]
        .endpoints
        .iter()
        .map(|l| {
            let loc = l.locality.as_ref().expect("locality");
            (
                loc.zone.as_str(),
                l.load_balancing_weight.map_or(0, |w| w.value),
                l.priority,
                l.lb_endpoints.len(),
            )
        })
        .collect();
    // One locality per zone; the weight is the sum of the usable endpoints' weights.
    assert_eq!(
        zones,
        vec![("eu-west-1a", 1, 0, 1), ("eu-west-1b", 3, 0, 2)]
    );
    let b = &cla[0].endpoints[1].lb_endpoints;
    assert_eq!(b[0].load_balancing_weight.map(|w| w.value), Some(3));
    assert_eq!(b[0].health_status, 0, "b: UNKNOWN");
    assert_eq!(b[1].health_status, 2, "c: UNHEALTHY");
    assert_eq!(ports(&eds), vec![7001, 7002, 7003]);
}

#[tokio::test]
async fn an_ack_gets_no_resend_and_a_change_gets_a_new_version() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Endpoints, &[SERVICE], "", "").await;
    let first = ads.recv().await;
    ads.ack(&first, &[SERVICE]).await;
    ads.quiet().await;

    register(&memory, inst("b", 7002, "z1")).await;
    let second = ads.recv().await;
    assert_eq!(ports(&second), vec![7001, 7002]);
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    ads.ack(&second, &[SERVICE]).await;
    ads.quiet().await;

    // Removal pushes the new state.
    memory.deregister(SERVICE, "a").await.expect("deregister");
    let third = ads.recv().await;
    assert_eq!(ports(&third), vec![7002]);
}

#[tokio::test]
async fn a_nack_is_not_answered_with_the_same_content() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Cluster, &[SERVICE], "", "").await;
    let v1 = ads.recv().await;
    ads.ack(&v1, &[SERVICE]).await;
    ads.send(Kind::Endpoints, &[SERVICE], "", "").await;
    let e1 = ads.recv().await;
    ads.ack(&e1, &[SERVICE]).await;
    register(&memory, inst("b", 7002, "z1")).await;
    let e2 = ads.recv().await;

    // NACK: the client keeps e1's version and says why.
    ads.send_raw(DiscoveryRequest {
        version_info: e1.version_info.clone(),
        resource_names: vec![SERVICE.to_owned()],
        type_url: Kind::Endpoints.type_url().to_owned(),
        response_nonce: e2.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "endpoint rejected for the test".to_owned(),
            details: Vec::new(),
        }),
        ..Default::default()
    })
    .await;
    ads.quiet().await;

    // The next change is sent, as a newer version.
    register(&memory, inst("c", 7003, "z1")).await;
    let e3 = ads.recv().await;
    assert_eq!(ports(&e3), vec![7001, 7002, 7003]);
    let (v2, v3): (u64, u64) = (
        e2.version_info.parse().expect("n"),
        e3.version_info.parse().expect("n"),
    );
    assert!(v3 > v2);
}

#[tokio::test]
async fn a_stale_nonce_is_ignored() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    register(
        &memory,
        Instance::new("other", "127.0.0.1", 7100).with_id("o"),
    )
    .await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Endpoints, &[SERVICE], "", "").await;
    let e1 = ads.recv().await;
    ads.ack(&e1, &[SERVICE]).await;
    register(&memory, inst("b", 7002, "z1")).await;
    let e2 = ads.recv().await;

    // A request echoing e1's nonce crossed e2 on the wire: stale, no answer, names unchanged.
    ads.send(
        Kind::Endpoints,
        &[SERVICE, "other"],
        &e1.version_info,
        &e1.nonce,
    )
    .await;
    ads.quiet().await;

    // The same request with the current nonce is answered.
    ads.send(
        Kind::Endpoints,
        &[SERVICE, "other"],
        &e2.version_info,
        &e2.nonce,
    )
    .await;
    let e3 = ads.recv().await;
    // Endpoints go out where they changed or were newly asked for: only `other` here.
    assert_eq!(ports(&e3), vec![7100]);
}

#[tokio::test]
async fn eds_sends_only_the_changed_assignments_and_cds_stays_whole() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    register(
        &memory,
        Instance::new("other", "127.0.0.1", 7100).with_id("o"),
    )
    .await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;
    let names = [SERVICE, "other"];
    ads.send(Kind::Cluster, &names, "", "").await;
    // The two services become known one after the other: CDS (full state) grows to both.
    loop {
        let cds = ads.recv().await;
        ads.ack(&cds, &names).await;
        if cds.resources.len() == 2 {
            break;
        }
    }
    ads.send(Kind::Endpoints, &names, "", "").await;
    let eds = ads.recv().await;
    assert_eq!(eds.resources.len(), 2, "both known by now: one response");
    ads.ack(&eds, &names).await;

    register(&memory, inst("b", 7002, "z1")).await;
    let eds = ads.recv().await;
    assert_eq!(
        eds.type_url,
        Kind::Endpoints.type_url(),
        "clusters did not change"
    );
    let cla: Vec<ClusterLoadAssignment> = decode(&eds);
    assert_eq!(cla.len(), 1);
    assert_eq!(cla[0].cluster_name, SERVICE);
    assert_eq!(ports(&eds), vec![7001, 7002]);
    ads.ack(&eds, &names).await;
    ads.quiet().await;
}

#[tokio::test]
async fn a_reconnecting_client_gets_fresh_versions_even_with_its_old_nonce() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut before = Ads::open(&f).await;
    before.send(Kind::Endpoints, &[SERVICE], "", "").await;
    let old = before.recv().await;
    before.ack(&old, &[SERVICE]).await;
    drop(before);
    // A new stream whose first request carries what the client held: it is answered.
    let mut after = Ads::open(&f).await;
    after
        .send(Kind::Endpoints, &[SERVICE], &old.version_info, &old.nonce)
        .await;
    let new = after.recv().await;
    assert_eq!(ports(&new), vec![7001]);
    assert_ne!(new.version_info, old.version_info, "versions never repeat");
    after.ack(&new, &[SERVICE]).await;
    after.quiet().await;
}

#[tokio::test]
async fn a_name_unknown_at_first_is_pushed_when_it_appears_cds_eds_first() {
    let memory = Arc::new(Memory::new());
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Listener, &[SERVICE], "", "").await;
    ads.send(Kind::Cluster, &[SERVICE], "", "").await;
    ads.send(Kind::Endpoints, &[SERVICE], "", "").await;
    ads.quiet().await;

    register(&memory, inst("a", 7001, "z1")).await;
    let order = [ads.recv().await, ads.recv().await, ads.recv().await];
    let kinds: Vec<Kind> = order
        .iter()
        .filter_map(|r| Kind::from_type_url(&r.type_url))
        .collect();
    assert_eq!(kinds, vec![Kind::Cluster, Kind::Endpoints, Kind::Listener]);
    assert_eq!(ports(&order[1]), vec![7001]);
    for r in &order {
        ads.ack(r, &[SERVICE]).await;
    }
    ads.quiet().await;
}

#[tokio::test]
async fn a_registry_outage_keeps_the_endpoints() {
    let flaky = Flaky::new();
    flaky
        .register(&inst("a", 7001, "z1"))
        .await
        .expect("register");
    flaky
        .register(&inst("b", 7002, "z1"))
        .await
        .expect("register");
    let f = serve(flaky.clone(), round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Endpoints, &[SERVICE], "", "").await;
    let e1 = ads.recv().await;
    assert_eq!(ports(&e1), vec![7001, 7002]);
    ads.ack(&e1, &[SERVICE]).await;

    flaky.set_down(true);
    // Watch errors and failed reconnects: nothing is pushed, above all not an empty list.
    ads.quiet().await;
    ads.quiet().await;

    // Back, with a change made meanwhile: the resync pushes the new list.
    flaky.deregister(SERVICE, "a").await.expect("deregister");
    flaky.set_down(false);
    let e2 = ads.recv().await;
    assert_eq!(ports(&e2), vec![7002]);
}

#[tokio::test]
async fn streams_past_the_bound_are_refused() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    let f = serve(memory, round_robin(), 1).await;
    let mut first = Ads::open(&f).await;
    first.send(Kind::Cluster, &[SERVICE], "", "").await;
    first.recv().await;
    let status = match Ads::try_open(&f).await {
        Err(status) => status,
        Ok(mut second) => second.recv_status().await,
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("at most 1"), "{status:?}");
    drop(first);
    // Once the first stream is gone its slot is free again.
    let mut third = None;
    for _ in 0..50 {
        if let Ok(ads) = Ads::try_open(&f).await {
            ads.send(Kind::Cluster, &[SERVICE], "", "").await;
            third = Some(ads);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = third.expect("a slot frees when a stream closes");
    let r = third.recv().await;
    assert_eq!(r.type_url, Kind::Cluster.type_url());
}

#[tokio::test]
async fn malformed_requests_are_ignored_or_refused() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    let f = serve(memory, round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;
    // An unknown type and garbage names: ignored.
    ads.send_raw(DiscoveryRequest {
        type_url: "type.googleapis.com/not.a.Type".to_owned(),
        resource_names: vec![SERVICE.to_owned()],
        ..Default::default()
    })
    .await;
    ads.send(Kind::Endpoints, &["", "../etc", "a/b", "x\u{0}y"], "", "")
        .await;
    ads.quiet().await;
    // The stream still works.
    ads.send(Kind::Endpoints, &[SERVICE, "../etc"], "", "")
        .await;
    let r = ads.recv().await;
    assert_eq!(ports(&r), vec![7001]);
    // Too many names: the stream ends with INVALID_ARGUMENT.
    let many: Vec<String> = (0..10_001).map(|i| format!("s{i}")).collect();
    ads.send_raw(DiscoveryRequest {
        type_url: Kind::Cluster.type_url().to_owned(),
        resource_names: many,
        ..Default::default()
    })
    .await;
    let status = ads.recv_status().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The server lives on.
    let mut again = Ads::open(&f).await;
    again.send(Kind::Cluster, &[SERVICE], "", "").await;
    assert_eq!(again.recv().await.resources.len(), 1);
}

#[tokio::test]
async fn streams_share_one_registry_watch_per_service() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut one = Ads::open(&f).await;
    let mut two = Ads::open(&f).await;
    one.send(Kind::Endpoints, &[SERVICE], "", "").await;
    two.send(Kind::Endpoints, &[SERVICE], "", "").await;
    let (r1, r2) = (one.recv().await, two.recv().await);
    assert_eq!(f.hub.followed(), 1);
    one.ack(&r1, &[SERVICE]).await;
    two.ack(&r2, &[SERVICE]).await;
    register(&memory, inst("b", 7002, "z1")).await;
    assert_eq!(ports(&one.recv().await), vec![7001, 7002]);
    assert_eq!(ports(&two.recv().await), vec![7001, 7002]);
    drop((one, two));
    let mut followed = usize::MAX;
    for _ in 0..100 {
        followed = f.hub.followed();
        if followed == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(followed, 0, "the watch ends with its last stream");
}

#[tokio::test]
async fn wildcard_cds_lists_every_service_and_rds_can_go_over_ads() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    register(
        &memory,
        Instance::new("other", "127.0.0.1", 7100).with_id("o"),
    )
    .await;
    let shape = Shape {
        strategy: Strategy::RingHash,
        rds: true,
        geo: Arc::new(Geo::disabled()),
        versions: None,
    };
    let f = serve(memory, shape, 8).await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Cluster, &[], "", "").await;
    let mut names: Vec<String> = Vec::new();
    for _ in 0..3 {
        let r = ads.recv().await;
        names = decode::<Cluster>(&r).into_iter().map(|c| c.name).collect();
        if names.len() == 2 {
            assert!(
                decode::<Cluster>(&r)
                    .iter()
                    .all(|c| c.lb_policy == LbPolicy::RingHash as i32)
            );
            ads.ack(&r, &[]).await;
            break;
        }
        ads.ack(&r, &[]).await;
    }
    assert_eq!(names, vec![SERVICE.to_owned(), "other".to_owned()]);

    ads.send(Kind::Listener, &[SERVICE], "", "").await;
    let lds = ads.recv().await;
    let listener: Vec<Listener> = decode(&lds);
    let api = listener[0]
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .expect("api_listener");
    let hcm = HttpConnectionManager::decode(api.value.as_slice()).expect("hcm");
    assert!(matches!(hcm.route_specifier, Some(RouteSpecifier::Rds(_))));
    ads.send(Kind::Route, &[SERVICE], "", "").await;
    let rds = ads.recv().await;
    let routes: Vec<RouteConfiguration> = decode(&rds);
    assert_eq!(routes[0].name, SERVICE);
    match routes[0].virtual_hosts[0].routes[0].action.as_ref() {
        Some(Action::Route(a)) => assert_eq!(a.hash_policy.len(), 1, "ring hash hashes X-Hash-Key"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn strategies_map_to_policies_grpc_accepts() {
    use super::resources::lb_policy;
    let map: HashMap<&str, LbPolicy> = Strategy::ALL
        .iter()
        .map(|s| (s.as_str(), lb_policy(*s)))
        .collect();
    assert_eq!(map["round_robin"], LbPolicy::RoundRobin);
    assert_eq!(map["weighted_round_robin"], LbPolicy::RoundRobin);
    assert_eq!(map["random"], LbPolicy::RoundRobin);
    assert_eq!(map["ring_hash"], LbPolicy::RingHash);
    assert_eq!(map["maglev"], LbPolicy::RingHash);
    assert_eq!(map["least_connections"], LbPolicy::LeastRequest);
    assert_eq!(map["p2c"], LbPolicy::LeastRequest);
}

#[tokio::test]
async fn shutting_down_ends_every_stream_with_unavailable() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    let f = serve(memory, round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Cluster, &[SERVICE], "", "").await;
    ads.recv().await;
    f.closing.close();
    let status = ads.recv_status().await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[test]
fn priorities_follow_the_client_zone_region_and_neighbours_without_gaps() {
    let geo = topology();
    let places = [
        ("eu-west-1", "eu-west-1a"),
        ("eu-west-1", "eu-west-1b"),
        ("us-east-1", "us-east-1a"),
        ("", ""),
    ];
    let zone_a = at(Some("eu-west-1"), Some("eu-west-1a"));
    assert_eq!(priorities(&geo, &zone_a, &places), vec![0, 1, 2, 3]);
    // A zone alone names its region through the topology.
    let zone_only = at(None, Some("eu-west-1b"));
    assert_eq!(priorities(&geo, &zone_only, &places), vec![1, 0, 2, 3]);
    // A region alone: its zones together first; no gap where the zone class would be.
    let us = at(Some("us-east-1"), None);
    assert_eq!(priorities(&geo, &us, &places), vec![1, 1, 0, 2]);
    // Geo routing off, or a client that says nowhere: one priority.
    assert_eq!(priorities(&geo, &at(None, None), &places), vec![0; 4]);
    assert_eq!(priorities(&Geo::disabled(), &zone_a, &places), vec![0; 4]);
}

#[tokio::test]
async fn each_client_gets_its_own_zone_first_when_geo_routing_is_on() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "eu-west-1a")).await;
    register(&memory, inst("b", 7002, "eu-west-1b")).await;
    let shape = Shape {
        strategy: Strategy::RoundRobin,
        rds: false,
        geo: Arc::new(topology()),
        versions: None,
    };
    let f = serve(memory, shape, 8).await;
    let mut by_zone = Vec::new();
    for zone in ["eu-west-1a", "eu-west-1b"] {
        let mut ads = Ads::open(&f).await;
        ads.send_raw(DiscoveryRequest {
            node: Some(Node {
                id: format!("client-in-{zone}"),
                locality: Some(envoy_types::pb::envoy::config::core::v3::Locality {
                    region: "eu-west-1".to_owned(),
                    zone: zone.to_owned(),
                    sub_zone: String::new(),
                }),
                ..Default::default()
            }),
            resource_names: vec![SERVICE.to_owned()],
            type_url: Kind::Endpoints.type_url().to_owned(),
            ..Default::default()
        })
        .await;
        let cla: Vec<ClusterLoadAssignment> = decode(&ads.recv().await);
        let prio: Vec<(String, u32)> = cla[0]
            .endpoints
            .iter()
            .map(|l| (l.locality.clone().unwrap_or_default().zone, l.priority))
            .collect();
        by_zone.push(prio);
    }
    assert_eq!(
        by_zone,
        vec![
            vec![("eu-west-1a".to_owned(), 0), ("eu-west-1b".to_owned(), 1)],
            vec![("eu-west-1a".to_owned(), 1), ("eu-west-1b".to_owned(), 0)],
        ]
    );
}

/// The (header value, cluster) of each route of the first virtual host; `None` for no header.
fn route_rules(routes: &RouteConfiguration) -> Vec<(Option<String>, String)> {
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    routes.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| {
            let header = r.r#match.as_ref().and_then(|m| m.headers.first()).map(|h| {
                assert_eq!(h.name, "x-service-version");
                match &h.header_match_specifier {
                    Some(HeaderMatchSpecifier::StringMatch(m)) => match &m.match_pattern {
                        Some(MatchPattern::Exact(v)) => v.clone(),
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{other:?}"),
                }
            });
            let cluster = match r.action.as_ref() {
                Some(Action::Route(a)) => match &a.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => c.clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            };
            (header, cluster)
        })
        .collect()
}

fn inline_routes(r: &DiscoveryResponse) -> RouteConfiguration {
    let listener: Vec<Listener> = decode(r);
    let api = listener[0]
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .expect("api_listener");
    let hcm = HttpConnectionManager::decode(api.value.as_slice()).expect("hcm");
    match hcm.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => rc,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn version_routing_routes_the_header_to_per_version_clusters() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1").with_version("v1")).await;
    register(&memory, inst("b", 7002, "z1").with_version("v2")).await;
    let shape = Shape {
        strategy: Strategy::RoundRobin,
        rds: false,
        geo: Arc::new(Geo::disabled()),
        versions: Some(Arc::from("v1")),
    };
    let f = serve(memory.clone(), shape, 8).await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Listener, &[SERVICE], "", "").await;
    let lds = ads.recv().await;
    let v = |s: &str| Some(s.to_owned());
    let c = |s: &str| format!("{SERVICE}{s}");
    assert_eq!(
        route_rules(&inline_routes(&lds)),
        vec![(v("v1"), c("@v1")), (v("v2"), c("@v2")), (None, c("@v1"))]
    );
    ads.ack(&lds, &[SERVICE]).await;

    let names = [
        SERVICE,
        "order-service@v1",
        "order-service@v2",
        "order-service@v9",
    ];
    ads.send(Kind::Cluster, &names, "", "").await;
    let cds = ads.recv().await;
    let clusters: Vec<String> = decode::<Cluster>(&cds)
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        clusters,
        vec![c(""), c("@v1"), c("@v2")],
        "no cluster for a version nobody has"
    );
    ads.ack(&cds, &names).await;
    ads.send(Kind::Endpoints, &["order-service@v2"], "", "")
        .await;
    let eds = ads.recv().await;
    assert_eq!(ports(&eds), vec![7002]);
    ads.ack(&eds, &["order-service@v2"]).await;
    ads.quiet().await;

    // A new version: new routes (LDS); v2's endpoints are unchanged, so no EDS; the client
    // learns the new cluster's name from the routes and asks for it.
    register(&memory, inst("c", 7003, "z1").with_version("v3")).await;
    let lds = ads.recv().await;
    assert_eq!(lds.type_url, Kind::Listener.type_url());
    assert_eq!(route_rules(&inline_routes(&lds)).len(), 4);
    ads.ack(&lds, &[SERVICE]).await;
    ads.quiet().await;
    let names = [
        SERVICE,
        "order-service@v1",
        "order-service@v2",
        "order-service@v3",
    ];
    ads.send(Kind::Cluster, &names, &cds.version_info, &cds.nonce)
        .await;
    let cds = ads.recv().await;
    assert_eq!(decode::<Cluster>(&cds).len(), 4);
}

#[tokio::test]
async fn wildcard_cds_lists_per_version_clusters_with_version_routing() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1").with_version("v1")).await;
    register(&memory, inst("b", 7002, "z1").with_version("v2")).await;
    let shape = Shape {
        strategy: Strategy::RoundRobin,
        rds: false,
        geo: Arc::new(Geo::disabled()),
        versions: Some(Arc::from("")),
    };
    let f = serve(memory, shape, 8).await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Cluster, &[], "", "").await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let r = ads.recv().await;
        names = decode::<Cluster>(&r).into_iter().map(|c| c.name).collect();
        ads.ack(&r, &[]).await;
        if !names.is_empty() {
            break;
        }
    }
    assert_eq!(names, vec![SERVICE, "order-service@v1", "order-service@v2"]);
}

#[tokio::test]
async fn thousands_of_names_on_one_stream() {
    let memory = Arc::new(Memory::new());
    register(&memory, inst("a", 7001, "z1")).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;
    let mut names: Vec<String> = (0..3000).map(|i| format!("svc-{i}")).collect();
    names.push(SERVICE.to_owned());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    ads.send(Kind::Endpoints, &refs, "", "").await;
    let first = ads.recv().await;
    assert_eq!(ports(&first), vec![7001], "only the one that exists");
    ads.ack(&first, &refs).await;
    assert_eq!(f.hub.followed(), 3001);
    // One of the thousands appears: it alone is pushed.
    register(
        &memory,
        Instance::new("svc-2999", "127.0.0.1", 7999).with_id("late"),
    )
    .await;
    let late = ads.recv().await;
    assert_eq!(ports(&late), vec![7999]);
    ads.ack(&late, &refs).await;
    ads.quiet().await;
    // Dropping the names lets go of their watches.
    ads.send(Kind::Endpoints, &[SERVICE], &late.version_info, &late.nonce)
        .await;
    let mut followed = usize::MAX;
    for _ in 0..100 {
        followed = f.hub.followed();
        if followed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(followed, 1);
}
