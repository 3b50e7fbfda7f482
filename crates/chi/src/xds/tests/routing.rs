//! What the resources say (wildcards, RDS over ADS, strategies, zone priorities, version routes)
//! and how streams share the registry watches; driven over state-of-the-world streams.

use std::collections::HashMap;
use std::sync::Arc;

use chi_discovery::balance::Strategy;
use chi_discovery::routing::Geo;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use prost::Message;

use super::*;
use crate::xds::resources::{Kind, Shape, priorities};

#[tokio::test]
async fn wildcard_cds_lists_every_service_and_rds_can_go_over_ads() {
    let memory = memory_with([inst("a", 7001, "z1"), other()]).await;
    let shape = Shape {
        strategy: Strategy::RingHash,
        rds: true,
        geo: Arc::new(Geo::disabled()),
        versions: None,
        ..Shape::default()
    };
    let f = serve(memory, shape, 8).await;
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Cluster, &[]).await;
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
            ads.ack(&r).await;
            break;
        }
        ads.ack(&r).await;
    }
    assert_eq!(names, vec![SERVICE.to_owned(), "other".to_owned()]);

    ads.subscribe(Kind::Listener, &[SERVICE]).await;
    let lds = ads.recv().await;
    let listener: Vec<Listener> = decode(&lds);
    let api = listener[0]
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .expect("api_listener");
    let hcm = HttpConnectionManager::decode(api.value.as_slice()).expect("hcm");
    assert!(matches!(hcm.route_specifier, Some(RouteSpecifier::Rds(_))));
    ads.subscribe(Kind::Route, &[SERVICE]).await;
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
    use crate::xds::resources::lb_policy;
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

both_variants!(each_client_gets_its_own_zone_first_when_geo_routing_is_on);

async fn each_client_gets_its_own_zone_first_when_geo_routing_is_on<V: Variant>() {
    let memory = memory_with([inst("a", 7001, "eu-west-1a"), inst("b", 7002, "eu-west-1b")]).await;
    let shape = Shape {
        strategy: Strategy::RoundRobin,
        rds: false,
        geo: Arc::new(topology()),
        versions: None,
        ..Shape::default()
    };
    let f = serve(memory, shape, 8).await;
    let mut by_zone = Vec::new();
    for zone in ["eu-west-1a", "eu-west-1b"] {
        let mut ads = f.open::<V>().await;
        ads.set_node(Node {
            id: format!("client-in-{zone}"),
            locality: Some(Locality {
                region: "eu-west-1".to_owned(),
                zone: zone.to_owned(),
                sub_zone: String::new(),
            }),
            ..Default::default()
        });
        ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
        let cla: Vec<ClusterLoadAssignment> = decode(&ads.take().await);
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
    let memory = memory_with([
        inst("a", 7001, "z1").with_version("v1"),
        inst("b", 7002, "z1").with_version("v2"),
    ])
    .await;
    let shape = Shape {
        strategy: Strategy::RoundRobin,
        rds: false,
        geo: Arc::new(Geo::disabled()),
        versions: Some(Arc::from("v1")),
        ..Shape::default()
    };
    let f = serve(memory.clone(), shape, 8).await;
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Listener, &[SERVICE]).await;
    let lds = ads.recv().await;
    let v = |s: &str| Some(s.to_owned());
    let c = |s: &str| format!("{SERVICE}{s}");
    assert_eq!(
        route_rules(&inline_routes(&lds)),
        vec![(v("v1"), c("@v1")), (v("v2"), c("@v2")), (None, c("@v1"))]
    );
    ads.ack(&lds).await;

    let names = [
        SERVICE,
        "order-service@v1",
        "order-service@v2",
        "order-service@v9",
    ];
    ads.subscribe(Kind::Cluster, &names).await;
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
    ads.ack(&cds).await;
    ads.subscribe(Kind::Endpoints, &["order-service@v2"]).await;
    let eds = ads.recv().await;
    assert_eq!(ports(&eds), vec![7002]);
    ads.ack(&eds).await;
    ads.quiet().await;

    // A new version: new routes (LDS); v2's endpoints are unchanged, so no EDS; the client
    // learns the new cluster's name from the routes and asks for it.
    register(&memory, inst("c", 7003, "z1").with_version("v3")).await;
    let lds = ads.recv().await;
    assert_eq!(lds.type_url, Kind::Listener.type_url());
    assert_eq!(route_rules(&inline_routes(&lds)).len(), 4);
    ads.ack(&lds).await;
    ads.quiet().await;
    let names = [
        SERVICE,
        "order-service@v1",
        "order-service@v2",
        "order-service@v3",
    ];
    ads.request(Kind::Cluster, &names, &cds.version_info, &cds.nonce)
        .await;
    let cds = ads.recv().await;
    assert_eq!(decode::<Cluster>(&cds).len(), 4);
}

#[tokio::test]
async fn wildcard_cds_lists_per_version_clusters_with_version_routing() {
    let memory = memory_with([
        inst("a", 7001, "z1").with_version("v1"),
        inst("b", 7002, "z1").with_version("v2"),
    ])
    .await;
    let shape = Shape {
        strategy: Strategy::RoundRobin,
        rds: false,
        geo: Arc::new(Geo::disabled()),
        versions: Some(Arc::from("")),
        ..Shape::default()
    };
    let f = serve(memory, shape, 8).await;
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Cluster, &[]).await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let r = ads.recv().await;
        names = decode::<Cluster>(&r).into_iter().map(|c| c.name).collect();
        ads.ack(&r).await;
        if !names.is_empty() {
            break;
        }
    }
    assert_eq!(names, vec![SERVICE, "order-service@v1", "order-service@v2"]);
}

#[tokio::test]
async fn streams_share_one_registry_watch_per_service() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut one = f.open::<Sotw>().await;
    let mut two = f.open::<Sotw>().await;
    one.subscribe(Kind::Endpoints, &[SERVICE]).await;
    two.subscribe(Kind::Endpoints, &[SERVICE]).await;
    let (r1, r2) = (one.recv().await, two.recv().await);
    assert_eq!(f.watches(), 1);
    one.ack(&r1).await;
    two.ack(&r2).await;
    register(&memory, inst("b", 7002, "z1")).await;
    assert_eq!(ports(&one.recv().await), vec![7001, 7002]);
    assert_eq!(ports(&two.recv().await), vec![7001, 7002]);
    drop(one);
    settle().await;
    assert_eq!(f.watches(), 1, "the other stream still follows the service");
    drop(two);
    settle().await;
    assert_eq!(f.watches(), 0, "the watch ends with its last stream");
}

#[tokio::test]
async fn a_service_followed_again_is_served_as_it_is_now() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
    assert_eq!(ports(&ads.recv().await), vec![7001]);
    drop(ads);
    settle().await;
    assert_eq!(f.watches(), 0);
    // Changed while nobody followed it; the encoding cached for the first watch is not reused.
    register(&memory, inst("b", 7002, "z1")).await;
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
    assert_eq!(ports(&ads.recv().await), vec![7001, 7002]);
}

/// A change patches only the changed service's resources: its per-version clusters come and go
/// in the whole CDS answer, and its per-version endpoints are sent alone, the other service's not.
#[tokio::test]
async fn a_change_patches_the_per_version_names_of_its_service_only() {
    let memory = memory_with([inst("a", 7001, "z1").with_version("v1"), other()]).await;
    let shape = Shape {
        strategy: Strategy::RoundRobin,
        rds: false,
        geo: Arc::new(Geo::disabled()),
        versions: Some(Arc::from("")),
        ..Shape::default()
    };
    let f = serve(memory.clone(), shape, 8).await;
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Cluster, &[]).await;
    let clusters = |r: &DiscoveryResponse| -> Vec<String> {
        decode::<Cluster>(r).into_iter().map(|c| c.name).collect()
    };
    let mut names = Vec::new();
    for _ in 0..4 {
        let r = ads.recv().await;
        names = clusters(&r);
        ads.ack(&r).await;
        if names.len() == 3 {
            break;
        }
    }
    assert_eq!(names, vec![SERVICE, "order-service@v1", "other"]);
    let eds_names = [SERVICE, "order-service@v1", "order-service@v2", "other"];
    ads.subscribe(Kind::Endpoints, &eds_names).await;
    let eds = ads.recv().await;
    assert_eq!(
        decode::<ClusterLoadAssignment>(&eds).len(),
        3,
        "v2 has no instance yet"
    );
    ads.ack(&eds).await;

    register(&memory, inst("b", 7002, "z1").with_version("v2")).await;
    let cds = ads.recv().await;
    assert_eq!(
        clusters(&cds),
        vec![SERVICE, "order-service@v1", "order-service@v2", "other"]
    );
    ads.ack(&cds).await;
    let eds = ads.recv().await;
    let mut sent: Vec<String> = decode::<ClusterLoadAssignment>(&eds)
        .into_iter()
        .map(|c| c.cluster_name)
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        vec![SERVICE, "order-service@v2"],
        "v1 and other unchanged"
    );
    ads.ack(&eds).await;

    memory.deregister(SERVICE, "a").await.expect("deregister");
    let cds = ads.recv().await;
    assert_eq!(clusters(&cds), vec![SERVICE, "order-service@v2", "other"]);
    ads.ack(&cds).await;
    let eds = ads.recv().await;
    let sent: Vec<String> = decode::<ClusterLoadAssignment>(&eds)
        .into_iter()
        .map(|c| c.cluster_name)
        .collect();
    assert_eq!(sent, vec![SERVICE], "a vanished assignment is not sent");
    ads.ack(&eds).await;
    ads.quiet().await;
}
