//! Tests of routing, one file per topic: the version and geo stages (rules tables, canary
//! splits), `Smart` chaining them with a balancer, invariants over random fleets (proptest).

use std::sync::atomic::{AtomicUsize, Ordering};

use indexmap::IndexMap;
use proptest::prelude::*;

use super::RoutingConfig;
use super::*;
use crate::balance::{Balancer, BalancerConfig, Strategy as Algo};
use crate::instance::HealthStatus::{self, Healthy, Unhealthy, Unknown};
use crate::snapshot::Snapshot;

mod properties;
mod smart;
mod stages;

fn inst(
    id: &str,
    version: &str,
    tags: &[&str],
    place: (&str, &str),
    health: HealthStatus,
) -> Instance {
    let mut i = Instance::new("svc", "10.0.0.1", 80)
        .with_id(id)
        .with_version(version)
        .with_health(health);
    for t in tags {
        i = i.with_tag(*t);
    }
    if !place.0.is_empty() {
        i = i.with_meta(REGION_META, place.0);
    }
    if !place.1.is_empty() {
        i = i.with_meta(ZONE_META, place.1);
    }
    i
}

fn config() -> RoutingConfig {
    let mut regions = IndexMap::new();
    regions.insert(
        "us-east-1".to_owned(),
        vec![
            "us-east-1a".into(),
            "us-east-1b".into(),
            "us-east-1c".into(),
        ],
    );
    regions.insert("us-west-2".to_owned(), vec!["us-west-2a".into()]);
    regions.insert("ap-south-1".to_owned(), vec!["ap-south-1a".into()]);
    RoutingConfig {
        enable_version_routing: true,
        enable_geo_routing: true,
        default_version: "v1".into(),
        regions,
        ..RoutingConfig::default()
    }
}

/// a, b: v1 in us-east-1 (zones a, b); c: v2 by tag in us-east-1a; d: v1 in us-west-2 (zone
/// only: the region comes from the topology); e: v1 in ap-south-1, unhealthy; f: v3, unknown
/// health, no place; g: v2 in eu-central-1 (not in the topology).
fn fleet() -> Vec<Instance> {
    vec![
        inst("a", "v1", &[], ("us-east-1", "us-east-1a"), Healthy),
        inst("b", "v1", &["api"], ("us-east-1", "us-east-1b"), Healthy),
        inst("c", "", &["v2"], ("us-east-1", "us-east-1a"), Healthy),
        inst("d", "v1", &[], ("", "us-west-2a"), Healthy),
        inst("e", "v1", &[], ("ap-south-1", ""), Unhealthy),
        inst("f", "v3", &[], ("", ""), Unknown),
        inst("g", "v2", &[], ("eu-central-1", ""), Healthy),
    ]
}

fn ids(list: &[&Instance]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|i| i.id.clone()).collect();
    v.sort();
    v
}

fn ids_of(list: &[Instance]) -> Vec<String> {
    ids(&list.iter().collect::<Vec<_>>())
}

#[test]
fn route_reads_headers() {
    let mut h = http::HeaderMap::new();
    h.insert("X-Service-Version", "v2".parse().expect("header"));
    h.insert("x-client-region", " us-west-2 ".parse().expect("header"));
    h.insert("x-client-zone", "".parse().expect("header"));
    let r = Route::from_headers(&h);
    assert_eq!(r.version, Some("v2"));
    assert_eq!(r.region, Some("us-west-2"));
    assert_eq!(r.zone, None, "empty header counts as absent");
    let req = http::Request::builder()
        .header("x-service-version", "v9")
        .body(())
        .expect("request");
    assert_eq!(Route::from_headers(&req).version, Some("v9"));
    let pairs: &[(&str, &str)] = &[("X-Client-Zone", "us-east-1b")];
    assert_eq!(Route::from_headers(pairs).zone, Some("us-east-1b"));
}

#[test]
fn route_reads_the_hash_key_from_its_header() {
    let mut h = http::HeaderMap::new();
    h.insert("X-Hash-Key", "user-42".parse().expect("header"));
    h.insert("x-user", "u-7".parse().expect("header"));
    assert_eq!(Route::from_headers(&h).key, Some(&b"user-42"[..]));
    assert_eq!(
        Route::from_headers_keyed(&h, "x-user").key,
        Some(&b"u-7"[..])
    );
    assert_eq!(Route::from_headers_keyed(&h, "x-session").key, None);
    h.insert("x-hash-key", " ".parse().expect("header"));
    assert_eq!(Route::from_headers(&h).key, None, "empty counts as absent");
}
