//! The config's `load_balancer` block in what `chi xds` sends, built from the resources alone (no
//! stream is needed):
//!
//! - `health_check_enabled`: with checks on, an unhealthy instance goes as UNHEALTHY (clients
//!   skip it); with checks off, as UNKNOWN (clients use it), as chi's own balancers then pick it;
//! - `hash_key_header`: the header ring-hash routes hash, the one `chi proxy` reads the key from;
//! - `orca`: the settings of `client_side_weighted_round_robin`, the policy
//!   `orca_weighted_round_robin` goes as (inside `wrr_locality`).

use std::sync::Arc;
use std::time::Duration;

use chi_discovery::balance::{OrcaConfig, Strategy};
use chi_discovery::{HealthStatus, Instance};
use envoy_types::pb::envoy::config::core::v3::HealthStatus as XdsHealth;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, LoadBalancingPolicy};
use envoy_types::pb::envoy::extensions::load_balancing_policies::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin;
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use envoy_types::pb::envoy::extensions::load_balancing_policies::wrr_locality::v3::WrrLocality;
use envoy_types::pb::google::protobuf::{Any, Duration as ProtoDuration};
use prost::{Message, Name};

use crate::xds::resources::{ClientPlace, Kind, Shape};

fn shape(health_check_enabled: bool) -> Shape {
    Shape {
        health_check_enabled,
        ..Shape::default()
    }
}

fn fleet() -> Vec<Instance> {
    [
        ("up", 7001, HealthStatus::Healthy),
        ("down", 7002, HealthStatus::Unhealthy),
        ("unchecked", 7003, HealthStatus::Unknown),
    ]
    .into_iter()
    .map(|(id, port, health)| {
        Instance::new("order-service", "127.0.0.1", port)
            .with_id(id)
            .with_health(health)
    })
    .collect()
}

/// The EDS resource `shape` builds for the fleet, as a client decodes it: each endpoint's port and
/// health (by port), and the locality's weight.
fn sent(shape: &Shape) -> (Vec<(u32, XdsHealth)>, u32) {
    let any = shape.build(
        Kind::Endpoints,
        "order-service",
        &fleet(),
        &ClientPlace::default(),
    );
    let cla = ClusterLoadAssignment::decode(any.value.as_slice()).expect("an EDS resource");
    assert_eq!(cla.endpoints.len(), 1, "one locality: {cla:?}");
    let locality = &cla.endpoints[0];
    let mut endpoints: Vec<(u32, XdsHealth)> = locality
        .lb_endpoints
        .iter()
        .map(|e| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("an endpoint: {e:?}");
            };
            let port = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(AddressKind::SocketAddress(sa)) => match sa.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => p,
                    _ => panic!("a port: {sa:?}"),
                },
                other => panic!("a socket address: {other:?}"),
            };
            let health = XdsHealth::try_from(e.health_status).expect("a health status");
            (port, health)
        })
        .collect();
    endpoints.sort_unstable_by_key(|e| e.0);
    let weight = locality
        .load_balancing_weight
        .map(|w| w.value)
        .expect("a locality weight");
    (endpoints, weight)
}

#[test]
fn with_health_checks_on_an_unhealthy_instance_is_sent_unhealthy() {
    let (endpoints, weight) = sent(&shape(true));
    assert_eq!(
        endpoints,
        [
            (7001, XdsHealth::Healthy),
            (7002, XdsHealth::Unhealthy),
            (7003, XdsHealth::Unknown),
        ]
    );
    assert_eq!(weight, 2, "the unhealthy instance weighs nothing");
}

#[test]
fn with_health_checks_off_every_instance_is_sent_usable() {
    let (endpoints, weight) = sent(&shape(false));
    assert_eq!(
        endpoints,
        [
            (7001, XdsHealth::Healthy),
            (7002, XdsHealth::Unknown),
            (7003, XdsHealth::Unknown),
        ],
        "UNKNOWN is used by gRPC and Envoy; UNHEALTHY would not be"
    );
    assert_eq!(weight, 3, "every instance weighs in the locality");
}

/// The header each route of `shape`'s route configuration hashes.
fn hashed_headers(shape: &Shape) -> Vec<String> {
    let routes = shape.route_config("order-service", &fleet());
    routes.virtual_hosts[0]
        .routes
        .iter()
        .flat_map(|r| match &r.action {
            Some(Action::Route(a)) => a.hash_policy.clone(),
            other => panic!("a route action: {other:?}"),
        })
        .map(|p| match p.policy_specifier {
            Some(PolicySpecifier::Header(h)) => h.header_name,
            other => panic!("a header hash policy: {other:?}"),
        })
        .collect()
}

#[test]
fn ring_hash_routes_hash_the_configured_header() {
    let hashing = Shape {
        strategy: Strategy::ConsistentHash,
        ..Shape::default()
    };
    assert_eq!(hashed_headers(&hashing), ["x-hash-key"]);
    let configured = Shape {
        hash_key_header: Arc::from("x-user"),
        ..hashing
    };
    assert_eq!(hashed_headers(&configured), ["x-user"]);
    assert!(
        hashed_headers(&Shape::default()).is_empty(),
        "round robin hashes nothing"
    );
}

/// The Cluster `shape` sends, as a client decodes it.
fn cluster(shape: &Shape) -> Cluster {
    let any = shape.build(
        Kind::Cluster,
        "order-service",
        &fleet(),
        &ClientPlace::default(),
    );
    Cluster::decode(any.value.as_slice()).expect("a CDS resource")
}

/// The name and packed config of each policy of a list.
fn policies(list: &LoadBalancingPolicy) -> Vec<(&str, &Any)> {
    list.policies
        .iter()
        .map(|p| {
            let ext = p
                .typed_extension_config
                .as_ref()
                .expect("a typed extension");
            (
                ext.name.as_str(),
                ext.typed_config.as_ref().expect("a typed config"),
            )
        })
        .collect()
}

#[test]
fn orca_weighted_round_robin_goes_as_client_side_wrr_with_the_orca_settings() {
    let orca = OrcaConfig {
        blackout_period: Duration::from_secs(2),
        weight_expiration_period: Duration::from_secs(30),
        weight_update_period: Duration::from_millis(20),
        error_utilization_penalty: 0.5,
        out_of_band: true,
        oob_reporting_period: Duration::from_millis(1500),
    };
    let sent = cluster(&Shape {
        strategy: Strategy::OrcaWeightedRoundRobin,
        orca,
        ..Shape::default()
    });
    assert_eq!(
        sent.lb_policy,
        LbPolicy::RoundRobin as i32,
        "round robin for a client that reads only lb_policy"
    );
    let top = sent.load_balancing_policy.expect("a load_balancing_policy");
    let top = policies(&top);
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!(top[0].0, "envoy.load_balancing_policies.wrr_locality");
    assert_eq!(top[0].1.type_url, WrrLocality::type_url());
    let wrr_locality = WrrLocality::decode(top[0].1.value.as_slice()).expect("WrrLocality");
    let inner = wrr_locality
        .endpoint_picking_policy
        .expect("an endpoint-picking policy");
    let inner = policies(&inner);
    let names: Vec<&str> = inner.iter().map(|p| p.0).collect();
    assert_eq!(
        names,
        [
            "envoy.load_balancing_policies.client_side_weighted_round_robin",
            "envoy.load_balancing_policies.round_robin"
        ]
    );
    assert_eq!(
        inner[0].1.type_url,
        ClientSideWeightedRoundRobin::type_url()
    );
    assert_eq!(inner[1].1.type_url, RoundRobin::type_url());
    let wrr = ClientSideWeightedRoundRobin::decode(inner[0].1.value.as_slice()).expect("CSWRR");
    let secs = |d: Option<ProtoDuration>| {
        let d = d.expect("a duration");
        d.seconds as f64 + f64::from(d.nanos) / 1e9
    };
    assert_eq!(wrr.enable_oob_load_report.map(|b| b.value), Some(true));
    assert_eq!(secs(wrr.oob_reporting_period), 1.5);
    assert_eq!(secs(wrr.blackout_period), 2.0);
    assert_eq!(secs(wrr.weight_expiration_period), 30.0);
    assert_eq!(
        secs(wrr.weight_update_period),
        0.1,
        "the update period in force (at least 100 ms, as A58 raises it)"
    );
    assert_eq!(wrr.error_utilization_penalty.map(|f| f.value), Some(0.5));

    for strategy in [
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::RingHash,
    ] {
        let sent = cluster(&Shape {
            strategy,
            orca,
            ..Shape::default()
        });
        assert_eq!(
            sent.load_balancing_policy, None,
            "{strategy:?}: lb_policy says it all"
        );
    }
}
