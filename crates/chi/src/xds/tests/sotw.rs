//! State-of-the-world ADS: the protocol's rules, one stream driven by hand.

use std::sync::Arc;
use std::time::Duration;

use chi_discovery::registry::Memory;
use chi_discovery::{HealthStatus, Instance, Registry};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::*;
use crate::xds::resources::Kind;

/// One ADS stream, driven by hand.
pub(super) struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Ads {
    pub(super) async fn open(f: &Fixture) -> Ads {
        Self::try_open(f).await.expect("the ADS stream opens")
    }

    pub(super) async fn try_open(f: &Fixture) -> Result<Ads, tonic::Status> {
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

    pub(super) async fn send(&self, kind: Kind, names: &[&str], version: &str, nonce: &str) {
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

    pub(super) async fn send_raw(&self, request: DiscoveryRequest) {
        self.tx
            .send(request)
            .await
            .expect("the stream takes requests");
    }

    /// ACKs `r`.
    pub(super) async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        let kind = Kind::from_type_url(&r.type_url).expect("known type");
        self.send(kind, names, &r.version_info, &r.nonce).await;
    }

    pub(super) async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.next()).await {
            Ok(Some(Ok(r))) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    pub(super) async fn recv_status(&mut self) -> tonic::Status {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.next()).await {
            Ok(Some(Err(s))) => s,
            other => panic!("expected an error status, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives for a while.
    pub(super) async fn quiet(&mut self) {
        if let Ok(item) = tokio::time::timeout(QUIET, self.rx.next()).await {
            panic!("expected no response, got {item:?}");
        }
    }
}

pub(super) fn decode<M: Message + Default>(r: &DiscoveryResponse) -> Vec<M> {
    r.resources
        .iter()
        .map(|any| M::decode(any.value.as_slice()).expect("decodes"))
        .collect()
}

pub(super) fn ports(r: &DiscoveryResponse) -> Vec<u32> {
    cla_ports(&decode::<ClusterLoadAssignment>(r))
}
#[tokio::test]
async fn initial_responses_carry_what_grpc_needs() {
    let memory = memory_with([
        inst("a", 7001, "eu-west-1a"),
        inst("b", 7002, "eu-west-1b").with_weight(3),
        inst("c", 7003, "eu-west-1b").with_health(HealthStatus::Unhealthy),
    ])
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
    let memory = memory_with([inst("a", 7001, "z1")]).await;
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
    let memory = memory_with([inst("a", 7001, "z1")]).await;
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
    let memory = memory_with([inst("a", 7001, "z1"), other()]).await;
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
    let memory = memory_with([inst("a", 7001, "z1"), other()]).await;
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
    let memory = memory_with([inst("a", 7001, "z1")]).await;
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
    let flaky = flaky_with([inst("a", 7001, "z1"), inst("b", 7002, "z1")]).await;
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
    let memory = memory_with([inst("a", 7001, "z1")]).await;
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
    let memory = memory_with([inst("a", 7001, "z1")]).await;
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
async fn shutting_down_ends_every_stream_with_unavailable() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve(memory, round_robin(), 8).await;
    let mut ads = Ads::open(&f).await;
    ads.send(Kind::Cluster, &[SERVICE], "", "").await;
    ads.recv().await;
    f.closing.close();
    let status = ads.recv_status().await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn thousands_of_names_on_one_stream() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
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
