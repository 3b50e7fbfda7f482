//! Incremental ADS: subscriptions as deltas, per-resource versions, removals, reconnects.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chi_discovery::Registry;
use chi_discovery::registry::Memory;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures_util::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::sotw::Ads;
use super::{
    Fixture, QUIET, SERVICE, cla_ports, flaky_with, inst, memory_with, other, register,
    round_robin, serve, topology,
};
use crate::xds::resources::{Kind, Shape};

/// One delta ADS stream, driven by hand.
pub(super) struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    pub(super) async fn open(f: &Fixture) -> Delta {
        Self::try_open(f).await.expect("the delta stream opens")
    }

    async fn try_open(f: &Fixture) -> Result<Delta, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", f.addr))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Delta { tx, rx })
    }

    /// Subscribes to and unsubscribes from names of `kind` (no nonce: a spontaneous request).
    pub(super) async fn subscribe(&self, kind: Kind, add: &[&str], drop: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: kind.type_url().to_owned(),
            resource_names_subscribe: add.iter().map(|n| (*n).to_owned()).collect(),
            resource_names_unsubscribe: drop.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn send(&self, mut request: DeltaDiscoveryRequest) {
        request.node.get_or_insert_with(|| Node {
            id: "delta-node".to_owned(),
            ..Default::default()
        });
        self.tx
            .send(request)
            .await
            .expect("the stream takes requests");
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.next()).await {
            Ok(Some(Ok(r))) => r,
            other => panic!("expected a delta response, got {other:?}"),
        }
    }

    /// Receives and ACKs a response.
    pub(super) async fn take(&mut self) -> DeltaDiscoveryResponse {
        let r = self.recv().await;
        self.ack(&r).await;
        r
    }

    async fn recv_status(&mut self) -> tonic::Status {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.next()).await {
            Ok(Some(Err(s))) => s,
            other => panic!("expected an error status, got {other:?}"),
        }
    }

    pub(super) async fn quiet(&mut self) {
        if let Ok(item) = tokio::time::timeout(QUIET, self.rx.next()).await {
            panic!("expected no response, got {item:?}");
        }
    }
}

pub(super) fn kind(r: &DeltaDiscoveryResponse) -> Kind {
    Kind::from_type_url(&r.type_url).expect("a known type")
}

/// name -> version of the resources of `r`.
fn versions(r: &DeltaDiscoveryResponse) -> BTreeMap<String, String> {
    r.resources
        .iter()
        .map(|res| (res.name.clone(), res.version.clone()))
        .collect()
}

fn decode<M: Message + Default>(r: &DeltaDiscoveryResponse) -> Vec<M> {
    r.resources
        .iter()
        .filter_map(|res| res.resource.as_ref())
        .map(|any| M::decode(any.value.as_slice()).expect("decodes"))
        .collect()
}

pub(super) fn ports(r: &DeltaDiscoveryResponse) -> Vec<u32> {
    cla_ports(&decode::<ClusterLoadAssignment>(r))
}

fn versioned() -> Shape {
    Shape {
        versions: Some(Arc::from("v1")),
        ..round_robin()
    }
}

#[tokio::test]
async fn subscribe_sends_each_resource_once_and_then_only_what_changed() {
    let memory = memory_with([inst("a", 7001, "z1"), other()]).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut delta = Delta::open(&f).await;

    delta.subscribe(Kind::Endpoints, &[SERVICE], &[]).await;
    let first = delta.take().await;
    assert_eq!(kind(&first), Kind::Endpoints);
    assert_eq!(ports(&first), vec![7001]);
    let v1 = versions(&first)[SERVICE].clone();
    assert_eq!(v1.len(), 16, "a content hash: {v1}");
    assert!(first.removed_resources.is_empty());
    delta.quiet().await;

    register(&memory, inst("b", 7002, "z1")).await;
    let second = delta.take().await;
    assert_eq!(ports(&second), vec![7001, 7002]);
    assert_ne!(versions(&second)[SERVICE], v1);
    assert_ne!(second.nonce, first.nonce);

    // A second name: only it is sent.
    delta.subscribe(Kind::Endpoints, &["other"], &[]).await;
    let other = delta.take().await;
    assert_eq!(versions(&other).keys().collect::<Vec<_>>(), vec!["other"]);
    assert_eq!(ports(&other), vec![7100]);

    // Unsubscribed: no removal, and its changes are not sent any more.
    delta.subscribe(Kind::Endpoints, &[], &[SERVICE]).await;
    delta.quiet().await;
    register(&memory, inst("c", 7003, "z1")).await;
    delta.quiet().await;

    // Subscribing again sends it again, current.
    delta.subscribe(Kind::Endpoints, &[SERVICE], &[]).await;
    assert_eq!(ports(&delta.take().await), vec![7001, 7002, 7003]);
    // So does subscribing to a name the client has (it may have forgotten it).
    delta.subscribe(Kind::Endpoints, &["other"], &[]).await;
    assert_eq!(ports(&delta.take().await), vec![7100]);
    delta.quiet().await;
}

#[tokio::test]
async fn a_wildcard_gets_every_service_and_the_ones_that_come_later() {
    let memory = memory_with([inst("a", 7001, "z1"), other()]).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    // A first CDS request without names (legacy wildcard), and an explicit `*`.
    for star in [&[][..], &["*"][..]] {
        let mut delta = Delta::open(&f).await;
        delta.subscribe(Kind::Cluster, star, &[]).await;
        let mut names: Vec<String> = Vec::new();
        while names.len() < 2 {
            let r = delta.take().await;
            assert_eq!(kind(&r), Kind::Cluster);
            assert!(r.removed_resources.is_empty(), "{r:?}");
            names.extend(decode::<Cluster>(&r).into_iter().map(|c| c.name));
        }
        names.sort();
        assert_eq!(
            names,
            vec![SERVICE.to_owned(), "other".to_owned()],
            "{star:?}"
        );
        delta.quiet().await;
    }
}

#[tokio::test]
async fn a_reconnect_with_initial_versions_resends_only_what_is_stale_even_after_a_restart() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut before = Delta::open(&f).await;
    before.subscribe(Kind::Cluster, &[SERVICE], &[]).await;
    let cds = before.take().await;
    before.subscribe(Kind::Endpoints, &[SERVICE], &[]).await;
    let eds = before.take().await;
    drop(before);
    // A new server over the same registry (a restart): the same content has the same version.
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut after = Delta::open(&f).await;
    for (kind, held) in [(Kind::Cluster, &cds), (Kind::Endpoints, &eds)] {
        after
            .send(DeltaDiscoveryRequest {
                type_url: kind.type_url().to_owned(),
                resource_names_subscribe: vec![SERVICE.to_owned()],
                initial_resource_versions: versions(held).into_iter().collect(),
                ..Default::default()
            })
            .await;
    }
    after.quiet().await;
    // What changed while the client was away is sent.
    drop(after);
    register(&memory, inst("b", 7002, "z1")).await;
    let mut again = Delta::open(&f).await;
    for (kind, held) in [(Kind::Cluster, &cds), (Kind::Endpoints, &eds)] {
        again
            .send(DeltaDiscoveryRequest {
                type_url: kind.type_url().to_owned(),
                resource_names_subscribe: vec![SERVICE.to_owned()],
                initial_resource_versions: versions(held).into_iter().collect(),
                ..Default::default()
            })
            .await;
    }
    let r = again.take().await;
    assert_eq!(kind(&r), Kind::Endpoints, "the cluster is current: {r:?}");
    assert_eq!(ports(&r), vec![7001, 7002]);
    again.quiet().await;
}

#[tokio::test]
async fn a_resource_that_goes_away_is_in_removed_resources_after_the_routes_moved() {
    let memory = memory_with([
        inst("a", 7001, "z1").with_version("v1"),
        inst("b", 7002, "z1").with_version("v2"),
    ])
    .await;
    let f = serve(memory.clone(), versioned(), 8).await;
    let mut delta = Delta::open(&f).await;
    let clusters = [SERVICE, "order-service@v1", "order-service@v2"];
    delta.subscribe(Kind::Cluster, &clusters, &[]).await;
    let mut held = BTreeMap::new();
    while held.len() < 3 {
        held.extend(versions(&delta.take().await));
    }
    delta.subscribe(Kind::Listener, &[SERVICE], &[]).await;
    assert_eq!(kind(&delta.take().await), Kind::Listener);
    delta.quiet().await;

    // The last v2 instance leaves: first the listener whose routes no longer name v2, then the
    // v2 cluster's removal; the other clusters did not change.
    memory.deregister(SERVICE, "b").await.expect("deregister");
    let lds = delta.take().await;
    assert_eq!(kind(&lds), Kind::Listener, "{lds:?}");
    assert!(lds.removed_resources.is_empty());
    let cds = delta.take().await;
    assert_eq!(kind(&cds), Kind::Cluster, "{cds:?}");
    assert!(cds.resources.is_empty(), "{cds:?}");
    assert_eq!(cds.removed_resources, vec!["order-service@v2".to_owned()]);
    delta.quiet().await;

    // It comes back: sent again.
    register(&memory, inst("b", 7002, "z1").with_version("v2")).await;
    let cds = delta.take().await;
    assert_eq!(kind(&cds), Kind::Cluster);
    assert_eq!(
        versions(&cds).keys().collect::<Vec<_>>(),
        vec!["order-service@v2"]
    );
    assert_eq!(kind(&delta.take().await), Kind::Listener);
    delta.quiet().await;
}

#[tokio::test]
async fn a_nack_keeps_the_state_and_only_a_later_change_is_sent() {
    let memory = memory_with([inst("a", 7001, "z1"), other()]).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut delta = Delta::open(&f).await;
    delta.subscribe(Kind::Endpoints, &[SERVICE], &[]).await;
    delta.take().await;
    register(&memory, inst("b", 7002, "z1")).await;
    let rejected = delta.recv().await;
    delta
        .send(DeltaDiscoveryRequest {
            type_url: Kind::Endpoints.type_url().to_owned(),
            response_nonce: rejected.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "endpoint rejected for the test".to_owned(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await;
    delta.quiet().await;

    // The stream keeps its subscriptions: a new name is served, the rejected one not resent.
    delta.subscribe(Kind::Endpoints, &["other"], &[]).await;
    let other = delta.take().await;
    assert_eq!(versions(&other).keys().collect::<Vec<_>>(), vec!["other"]);
    delta.quiet().await;
    register(&memory, inst("c", 7003, "z1")).await;
    let next = delta.take().await;
    assert_eq!(ports(&next), vec![7001, 7002, 7003]);
    assert_ne!(versions(&next), versions(&rejected));
}

#[tokio::test]
async fn an_unknown_name_is_said_not_to_exist_then_sent_when_it_appears_cds_first() {
    let memory = Arc::new(Memory::new());
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut delta = Delta::open(&f).await;
    for kind in [Kind::Listener, Kind::Cluster, Kind::Endpoints] {
        delta.subscribe(kind, &[SERVICE], &[]).await;
    }
    // Each type is told once that the name does not exist (as the registry answers).
    let mut told: HashMap<Kind, usize> = HashMap::new();
    while told.len() < 3 {
        let r = delta.take().await;
        assert!(r.resources.is_empty(), "{r:?}");
        assert_eq!(r.removed_resources, vec![SERVICE.to_owned()]);
        *told.entry(kind(&r)).or_default() += 1;
    }
    assert!(told.values().all(|n| *n == 1), "{told:?}");
    delta.quiet().await;

    register(&memory, inst("a", 7001, "z1")).await;
    let order = [delta.take().await, delta.take().await, delta.take().await];
    let kinds: Vec<Kind> = order.iter().map(kind).collect();
    assert_eq!(kinds, vec![Kind::Cluster, Kind::Endpoints, Kind::Listener]);
    assert_eq!(ports(&order[1]), vec![7001]);
    delta.quiet().await;
}

#[tokio::test]
async fn a_registry_outage_removes_nothing() {
    let flaky = flaky_with([inst("a", 7001, "z1")]).await;
    let f = serve(flaky.clone(), round_robin(), 8).await;
    let mut delta = Delta::open(&f).await;
    delta.subscribe(Kind::Cluster, &["*"], &[]).await;
    delta.subscribe(Kind::Endpoints, &[SERVICE], &[]).await;
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        kinds.push(kind(&delta.take().await));
    }
    flaky.set_down(true);
    delta.quiet().await;
    delta.quiet().await;
    flaky.deregister(SERVICE, "a").await.expect("deregister");
    flaky
        .register(&inst("b", 7002, "z1"))
        .await
        .expect("register");
    flaky.set_down(false);
    let r = delta.take().await;
    assert_eq!(ports(&r), vec![7002]);
    assert!(r.removed_resources.is_empty());
}

#[tokio::test]
async fn each_client_gets_its_own_zone_first() {
    let memory = memory_with([inst("a", 7001, "eu-west-1a"), inst("b", 7002, "eu-west-1b")]).await;
    let shape = Shape {
        geo: Arc::new(topology()),
        ..round_robin()
    };
    let f = serve(memory, shape, 8).await;
    let mut delta = Delta::open(&f).await;
    delta
        .send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: "client-in-b".to_owned(),
                locality: Some(Locality {
                    region: "eu-west-1".to_owned(),
                    zone: "eu-west-1b".to_owned(),
                    sub_zone: String::new(),
                }),
                ..Default::default()
            }),
            type_url: Kind::Endpoints.type_url().to_owned(),
            resource_names_subscribe: vec![SERVICE.to_owned()],
            ..Default::default()
        })
        .await;
    let cla: Vec<ClusterLoadAssignment> = decode(&delta.take().await);
    let prio: Vec<(String, u32)> = cla[0]
        .endpoints
        .iter()
        .map(|l| (l.locality.clone().unwrap_or_default().zone, l.priority))
        .collect();
    assert_eq!(
        prio,
        vec![("eu-west-1a".to_owned(), 1), ("eu-west-1b".to_owned(), 0)]
    );
}

#[tokio::test]
async fn hostile_requests_are_refused_with_an_error_and_the_server_lives_on() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve(memory, round_robin(), 8).await;

    // A type chi does not serve, and names that are no service names: ignored.
    let mut delta = Delta::open(&f).await;
    delta
        .send(DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
                .to_owned(),
            resource_names_subscribe: vec!["cert".to_owned()],
            ..Default::default()
        })
        .await;
    delta
        .subscribe(
            Kind::Endpoints,
            &["", "../etc", "a/b", "x\u{0}y"],
            &["\u{7f}"],
        )
        .await;
    delta.quiet().await;
    delta.subscribe(Kind::Endpoints, &[SERVICE], &[]).await;
    assert_eq!(ports(&delta.take().await), vec![7001]);

    // Garbage type URLs end the stream with INVALID_ARGUMENT.
    for garbage in [
        "",
        "not a type",
        "type.googleapis.com/",
        "type.googleapis.com/a\u{0}b",
    ] {
        let mut delta = Delta::open(&f).await;
        delta
            .send(DeltaDiscoveryRequest {
                type_url: garbage.to_owned(),
                ..Default::default()
            })
            .await;
        let status = delta.recv_status().await;
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{garbage:?}: {status:?}"
        );
    }
    let long = format!("type.googleapis.com/{}", "a".repeat(100_000));
    let mut delta = Delta::open(&f).await;
    delta
        .send(DeltaDiscoveryRequest {
            type_url: long,
            ..Default::default()
        })
        .await;
    assert_eq!(
        delta.recv_status().await.code(),
        tonic::Code::InvalidArgument
    );

    // Too many names in one request, or piled up over several.
    let many = |from: usize, n: usize| (from..from + n).map(|i| format!("s{i}")).collect();
    let mut delta = Delta::open(&f).await;
    delta
        .send(DeltaDiscoveryRequest {
            type_url: Kind::Cluster.type_url().to_owned(),
            resource_names_subscribe: many(0, 10_001),
            ..Default::default()
        })
        .await;
    assert_eq!(
        delta.recv_status().await.code(),
        tonic::Code::InvalidArgument
    );
    let mut delta = Delta::open(&f).await;
    delta
        .send(DeltaDiscoveryRequest {
            type_url: Kind::Endpoints.type_url().to_owned(),
            initial_resource_versions: many(0, 10_001)
                .into_iter()
                .map(|n: String| (n, "1".to_owned()))
                .collect(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        delta.recv_status().await.code(),
        tonic::Code::InvalidArgument
    );
    let mut delta = Delta::open(&f).await;
    for part in 0..3 {
        delta
            .send(DeltaDiscoveryRequest {
                type_url: Kind::Endpoints.type_url().to_owned(),
                resource_names_subscribe: many(part * 4_000, 4_000),
                ..Default::default()
            })
            .await;
    }
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), delta.rx.next()).await {
            Ok(Some(Ok(_))) => {} // "does not exist" answers for the first 8,000
            Ok(Some(Err(status))) => break status,
            other => panic!("expected an error status, got {other:?}"),
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("12000"), "{status:?}");

    // The server still answers.
    let mut delta = Delta::open(&f).await;
    delta.subscribe(Kind::Cluster, &[SERVICE], &[]).await;
    assert_eq!(delta.take().await.resources.len(), 1);
}

#[tokio::test]
async fn delta_and_state_of_the_world_streams_share_the_bound() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve(memory, round_robin(), 1).await;
    let mut sotw = Ads::open(&f).await;
    sotw.send(Kind::Cluster, &[SERVICE], "", "").await;
    sotw.recv().await;
    let status = match Delta::try_open(&f).await {
        Err(status) => status,
        Ok(mut delta) => delta.recv_status().await,
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    drop(sotw);
    let mut delta = None;
    for _ in 0..50 {
        if let Ok(d) = Delta::try_open(&f).await {
            d.subscribe(Kind::Cluster, &[SERVICE], &[]).await;
            delta = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut delta = delta.expect("the slot frees when the SotW stream closes");
    assert_eq!(kind(&delta.take().await), Kind::Cluster);
    // And the other way round.
    let status = match Ads::try_open(&f).await {
        Err(status) => status,
        Ok(mut sotw) => sotw.recv_status().await,
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}
