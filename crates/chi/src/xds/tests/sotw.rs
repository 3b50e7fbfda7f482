//! State-of-the-world ADS: the protocol's rules, one stream driven by hand.

use std::sync::Arc;

use chi_discovery::registry::Memory;
use chi_discovery::{HealthStatus, Instance, Registry};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message;

use super::*;
use crate::xds::resources::Kind;

#[tokio::test]
async fn initial_responses_carry_what_grpc_needs() {
    let memory = memory_with([
        inst("a", 7001, "eu-west-1a"),
        inst("b", 7002, "eu-west-1b").with_weight(3),
        inst("c", 7003, "eu-west-1b").with_health(HealthStatus::Unhealthy),
    ])
    .await;
    let f = serve(memory, round_robin(), 8).await;
    let mut ads = f.open::<Sotw>().await;

    ads.subscribe(Kind::Listener, &[SERVICE]).await;
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
    ads.ack(&lds).await;

    ads.subscribe(Kind::Cluster, &[SERVICE]).await;
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
    ads.ack(&cds).await;

    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
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
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
    let first = ads.recv().await;
    ads.ack(&first).await;
    ads.quiet().await;

    register(&memory, inst("b", 7002, "z1")).await;
    let second = ads.recv().await;
    assert_eq!(ports(&second), vec![7001, 7002]);
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    ads.ack(&second).await;
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
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Cluster, &[SERVICE]).await;
    let v1 = ads.recv().await;
    ads.ack(&v1).await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
    let e1 = ads.recv().await;
    ads.ack(&e1).await;
    register(&memory, inst("b", 7002, "z1")).await;
    let e2 = ads.recv().await;

    // NACK: the client keeps e1's version and says why.
    ads.nack(&e2, "endpoint rejected for the test").await;
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
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
    let e1 = ads.recv().await;
    ads.ack(&e1).await;
    register(&memory, inst("b", 7002, "z1")).await;
    let e2 = ads.recv().await;

    // A request echoing e1's nonce crossed e2 on the wire: stale, no answer, names unchanged.
    ads.request(
        Kind::Endpoints,
        &[SERVICE, "other"],
        &e1.version_info,
        &e1.nonce,
    )
    .await;
    ads.quiet().await;

    // The same request with the current nonce is answered.
    ads.request(
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
    let mut ads = f.open::<Sotw>().await;
    let names = [SERVICE, "other"];
    ads.subscribe(Kind::Cluster, &names).await;
    // The two services become known one after the other: CDS (full state) grows to both.
    loop {
        let cds = ads.recv().await;
        ads.ack(&cds).await;
        if cds.resources.len() == 2 {
            break;
        }
    }
    ads.subscribe(Kind::Endpoints, &names).await;
    let eds = ads.recv().await;
    assert_eq!(eds.resources.len(), 2, "both known by now: one response");
    ads.ack(&eds).await;

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
    ads.ack(&eds).await;
    ads.quiet().await;
}

#[tokio::test]
async fn a_reconnecting_client_gets_fresh_versions_even_with_its_old_nonce() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut before = f.open::<Sotw>().await;
    before.subscribe(Kind::Endpoints, &[SERVICE]).await;
    let old = before.recv().await;
    before.ack(&old).await;
    drop(before);
    // A new stream whose first request carries what the client held: it is answered.
    let mut after = f.open::<Sotw>().await;
    after
        .request(Kind::Endpoints, &[SERVICE], &old.version_info, &old.nonce)
        .await;
    let new = after.recv().await;
    assert_eq!(ports(&new), vec![7001]);
    assert_ne!(new.version_info, old.version_info, "versions never repeat");
    after.ack(&new).await;
    after.quiet().await;
}

#[tokio::test]
async fn a_name_unknown_at_first_is_pushed_when_it_appears_cds_eds_first() {
    let memory = Arc::new(Memory::new());
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Listener, &[SERVICE]).await;
    ads.subscribe(Kind::Cluster, &[SERVICE]).await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
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
        ads.ack(r).await;
    }
    ads.quiet().await;
}

#[tokio::test]
async fn a_registry_outage_keeps_the_endpoints() {
    let flaky = flaky_with([inst("a", 7001, "z1"), inst("b", 7002, "z1")]).await;
    let f = serve(flaky.clone(), round_robin(), 8).await;
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
    let e1 = ads.recv().await;
    assert_eq!(ports(&e1), vec![7001, 7002]);
    ads.ack(&e1).await;

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
    let mut first = f.open::<Sotw>().await;
    first.subscribe(Kind::Cluster, &[SERVICE]).await;
    first.recv().await;
    let status = match f.try_open::<Sotw>().await {
        Err(status) => status,
        Ok(mut second) => second.recv_status().await,
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("at most 1"), "{status:?}");
    drop(first);
    // Once the first stream is gone its slot is free again.
    settle().await;
    let mut third = f
        .try_open::<Sotw>()
        .await
        .expect("a slot frees when a stream closes");
    third.subscribe(Kind::Cluster, &[SERVICE]).await;
    let r = third.recv().await;
    assert_eq!(r.type_url, Kind::Cluster.type_url());
}

#[tokio::test]
async fn malformed_requests_are_ignored_or_refused() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve(memory, round_robin(), 8).await;
    let mut ads = f.open::<Sotw>().await;
    // An unknown type and garbage names: ignored.
    ads.send(DiscoveryRequest {
        type_url: "type.googleapis.com/not.a.Type".to_owned(),
        resource_names: vec![SERVICE.to_owned()],
        ..Default::default()
    })
    .await;
    ads.subscribe(Kind::Endpoints, &["", "../etc", "a/b", "x\u{0}y"])
        .await;
    ads.quiet().await;
    // The stream still works.
    ads.subscribe(Kind::Endpoints, &[SERVICE, "../etc"]).await;
    let r = ads.recv().await;
    assert_eq!(ports(&r), vec![7001]);
    // Too many names: the stream ends with INVALID_ARGUMENT.
    let many: Vec<String> = (0..10_001).map(|i| format!("s{i}")).collect();
    ads.send(DiscoveryRequest {
        type_url: Kind::Cluster.type_url().to_owned(),
        resource_names: many,
        ..Default::default()
    })
    .await;
    let status = ads.recv_status().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The server lives on.
    let mut again = f.open::<Sotw>().await;
    again.subscribe(Kind::Cluster, &[SERVICE]).await;
    assert_eq!(again.recv().await.resources.len(), 1);
}

#[tokio::test]
async fn shutting_down_ends_every_stream_with_unavailable() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve(memory, round_robin(), 8).await;
    let mut ads = f.open::<Sotw>().await;
    ads.subscribe(Kind::Cluster, &[SERVICE]).await;
    ads.recv().await;
    f.close();
    let status = ads.recv_status().await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn thousands_of_names_on_one_stream() {
    let memory = memory_with([inst("a", 7001, "z1")]).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut ads = f.open::<Sotw>().await;
    let mut names: Vec<String> = (0..3000).map(|i| format!("svc-{i}")).collect();
    names.push(SERVICE.to_owned());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    ads.subscribe(Kind::Endpoints, &refs).await;
    let first = ads.recv().await;
    assert_eq!(ports(&first), vec![7001], "only the one that exists");
    ads.ack(&first).await;
    settle().await;
    assert_eq!(f.watches(), 3001, "one registry watch per name");
    // One of the thousands appears: it alone is pushed.
    register(
        &memory,
        Instance::new("svc-2999", "127.0.0.1", 7999).with_id("late"),
    )
    .await;
    let late = ads.recv().await;
    assert_eq!(ports(&late), vec![7999]);
    ads.ack(&late).await;
    ads.quiet().await;
    // Dropping the names lets go of their watches.
    ads.unsubscribe(Kind::Endpoints, &refs[..3000]).await;
    settle().await;
    assert_eq!(f.watches(), 1);
}

/// The cluster names an EDS response carries, sorted.
fn cla_names(r: &impl Reply) -> Vec<String> {
    let mut names: Vec<String> = decode::<ClusterLoadAssignment>(r)
        .into_iter()
        .map(|c| c.cluster_name)
        .collect();
    names.sort();
    names
}

/// Streams asking for the same names share one answer to a change (one version and nonce, the
/// patch worked out once); a stream asking for other names gets its own, right answer; on each
/// stream the versions only go up.
#[tokio::test]
async fn streams_in_the_same_state_share_the_answer_to_a_change_others_get_their_own() {
    let memory = memory_with([inst("a", 7001, "z1"), other()]).await;
    let f = serve(memory.clone(), round_robin(), 8).await;
    let mut same = [f.open::<Sotw>().await, f.open::<Sotw>().await];
    let mut both = f.open::<Sotw>().await;
    let mut last = Vec::new();
    for ads in &mut same {
        ads.subscribe(Kind::Endpoints, &[SERVICE]).await;
        let r = ads.recv().await;
        ads.ack(&r).await;
        last.push(r.version_info.parse::<u64>().expect("a number"));
    }
    both.subscribe(Kind::Endpoints, &[SERVICE, "other"]).await;
    // A service no stream followed before comes once its registry watch answered.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let r = both.recv().await;
        seen.extend(cla_names(&r));
        both.ack(&r).await;
    }

    for (round, port) in [(0, 7002), (1, 7003)] {
        register(&memory, inst(&format!("n{port}"), port, "z1")).await;
        let answers = [same[0].recv().await, same[1].recv().await];
        let mut want = vec![7001];
        want.extend((7002..=port).map(u32::from));
        for (i, r) in answers.iter().enumerate() {
            assert_eq!(ports(r), want, "round {round}, stream {i}");
            let version = r.version_info.parse::<u64>().expect("a number");
            assert!(
                version > last[i],
                "round {round}: {version} after {}",
                last[i]
            );
            last[i] = version;
        }
        assert_eq!(
            (&answers[0].version_info, &answers[0].nonce),
            (&answers[1].version_info, &answers[1].nonce),
            "round {round}: one answer for both"
        );
        let r = both.recv().await;
        assert_eq!(cla_names(&r), vec!["order-service"], "round {round}");
        assert_eq!(ports(&r), want, "round {round}");
        for ads in same.iter_mut().chain([&mut both]) {
            ads.quiet().await;
        }
        for (ads, r) in same.iter_mut().zip(&answers) {
            ads.ack(r).await;
        }
        both.ack(&r).await;
    }
    // A change of the service only one of them asks for reaches that one only.
    register(
        &memory,
        Instance::new("other", "127.0.0.1", 7101).with_id("o2"),
    )
    .await;
    let r = both.recv().await;
    assert_eq!(cla_names(&r), vec!["other"]);
    assert_eq!(ports(&r), vec![7100, 7101]);
    for ads in same.iter_mut().chain([&mut both]) {
        ads.quiet().await;
    }
}
