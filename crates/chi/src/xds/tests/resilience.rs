//! chi's failure handling in what `chi xds` sends, decoded as a client decodes it: outlier
//! detection and the circuit breaker on the Cluster, the retry policy on the routes, and the typed
//! settings of ring hash and least request.

use std::time::Duration;

use chi_discovery::Instance;
use chi_discovery::balance::{RingHash, Strategy};
use chi_discovery::health::OutlierConfig;
use chi_discovery::retry::RetryPolicy as ChiRetry;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{LbConfig, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::{RetryPolicy, RouteConfiguration};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use prost::Message;

use crate::xds::resources::{ClientPlace, Kind, Shape};

fn fleet() -> Vec<Instance> {
    vec![Instance::new("order-service", "127.0.0.1", 7001).with_id("a")]
}

/// Resource `kind` of `shape`, as a client decodes it.
fn sent<M: Message + Default>(shape: &Shape, kind: Kind) -> M {
    let any = shape.build(kind, "order-service", &fleet(), &ClientPlace::default());
    M::decode(any.value.as_slice()).expect("the resource decodes")
}

fn secs(seconds: i64, nanos: i32) -> Option<ProtoDuration> {
    Some(ProtoDuration { seconds, nanos })
}

#[test]
fn outlier_detection_carries_every_setting_of_chis_detector() {
    let shape = Shape {
        outlier: OutlierConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_millis(1500),
            max_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 40,
        },
        ..Shape::default()
    };
    let od = sent::<Cluster>(&shape, Kind::Cluster)
        .outlier_detection
        .expect("outlier_detection");
    let v = |w: Option<envoy_types::pb::google::protobuf::UInt32Value>| w.map(|w| w.value);
    // Envoy's consecutive rule, as chi's detector counts.
    assert_eq!(v(od.consecutive_5xx), Some(3));
    assert_eq!(v(od.enforcing_consecutive_5xx), Some(100));
    // The same rule per interval, the one gRPC's clients implement (A50).
    assert_eq!(v(od.failure_percentage_threshold), Some(90));
    assert_eq!(v(od.enforcing_failure_percentage), Some(100));
    assert_eq!(v(od.failure_percentage_minimum_hosts), Some(1));
    assert_eq!(v(od.failure_percentage_request_volume), Some(3));
    // No success-rate statistics in chi: off, not the clients' default of on.
    assert_eq!(v(od.enforcing_success_rate), Some(0));
    assert_eq!(od.interval, secs(1, 0));
    assert_eq!(od.base_ejection_time, secs(1, 500_000_000));
    assert_eq!(od.max_ejection_time, secs(60, 0));
    assert_eq!(v(od.max_ejection_percent), Some(40));
    // The rest stays at Envoy's defaults (gateway and local-origin rules, off in gRPC).
    assert_eq!(od.consecutive_gateway_failure, None);
    assert!(!od.split_external_local_origin_errors);
}

#[test]
fn the_default_detector_goes_as_chi_proxy_uses_it() {
    let od = sent::<Cluster>(&Shape::default(), Kind::Cluster)
        .outlier_detection
        .expect("outlier_detection");
    let defaults = OutlierConfig::default();
    assert_eq!(
        od.consecutive_5xx.map(|w| w.value),
        Some(defaults.consecutive_failures)
    );
    assert_eq!(od.base_ejection_time, secs(30, 0));
    assert_eq!(od.max_ejection_time, secs(300, 0));
    assert_eq!(od.max_ejection_percent.map(|w| w.value), Some(10));
}

#[test]
fn circuit_breaker_max_requests_goes_as_the_default_threshold() {
    assert_eq!(
        sent::<Cluster>(&Shape::default(), Kind::Cluster).circuit_breakers,
        None,
        "no circuit_breaker.max_requests, no breaker"
    );
    let shape = Shape {
        max_requests: Some(7),
        ..Shape::default()
    };
    let breakers = sent::<Cluster>(&shape, Kind::Cluster)
        .circuit_breakers
        .expect("circuit_breakers");
    assert_eq!(breakers.thresholds.len(), 1, "{breakers:?}");
    let t = &breakers.thresholds[0];
    assert_eq!(t.priority, RoutingPriority::Default as i32);
    assert_eq!(t.max_requests.map(|w| w.value), Some(7));
    assert_eq!(
        (t.max_connections, t.max_pending_requests, t.max_retries),
        (None, None, None)
    );
    assert!(breakers.per_host_thresholds.is_empty());
}

/// The retry policy of each route `shape` sends over RDS.
fn retry_policies(shape: &Shape) -> Vec<Option<RetryPolicy>> {
    let routes: RouteConfiguration = sent(shape, Kind::Route);
    routes.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| match &r.action {
            Some(Action::Route(a)) => a.retry_policy.clone(),
            other => panic!("a route action: {other:?}"),
        })
        .collect()
}

#[test]
fn discovery_retry_goes_as_the_routes_retry_policy() {
    let shape = Shape {
        retry: ChiRetry {
            max_attempts: 4,
            initial_interval: Duration::from_millis(250),
            max_interval: Duration::from_secs(2),
            multiplier: 3.0,
        },
        ..Shape::default()
    };
    let policies = retry_policies(&shape);
    assert_eq!(policies.len(), 1);
    let p = policies[0].clone().expect("a retry policy");
    assert_eq!(p.retry_on, "unavailable");
    assert_eq!(p.num_retries.map(|w| w.value), Some(3));
    let back_off = p.retry_back_off.expect("retry_back_off");
    assert_eq!(back_off.base_interval, secs(0, 250_000_000));
    assert_eq!(back_off.max_interval, secs(2, 0));
    assert!(p.retriable_status_codes.is_empty() && p.per_try_timeout.is_none());
}

#[test]
fn one_attempt_sends_no_retry_policy() {
    let shape = Shape {
        retry: ChiRetry::none(),
        ..Shape::default()
    };
    assert_eq!(retry_policies(&shape), [None]);
}

#[test]
fn hashing_strategies_send_chis_ring_bounds_with_xx_hash() {
    for strategy in [
        Strategy::RingHash,
        Strategy::ConsistentHash,
        Strategy::Maglev,
    ] {
        let cluster: Cluster = sent(
            &Shape {
                strategy,
                ..Shape::default()
            },
            Kind::Cluster,
        );
        assert_eq!(cluster.lb_policy, LbPolicy::RingHash as i32);
        let Some(LbConfig::RingHashLbConfig(ring)) = cluster.lb_config else {
            panic!(
                "{strategy:?}: a ring_hash_lb_config: {:?}",
                cluster.lb_config
            );
        };
        assert_eq!(ring.minimum_ring_size.map(|w| w.value), Some(1024));
        assert_eq!(ring.maximum_ring_size.map(|w| w.value), Some(1 << 20));
        assert_eq!(
            (RingHash::MIN_SIZE, RingHash::MAX_SIZE),
            (1024, 1 << 20),
            "chi's own ring"
        );
        assert_eq!(ring.hash_function, HashFunction::XxHash as i32);
    }
}

#[test]
fn load_aware_strategies_send_their_choice_count() {
    for (strategy, choices) in [
        (Strategy::P2c, 2),
        (Strategy::PeakEwma, 2),
        (Strategy::LeastConnections, 10),
    ] {
        let cluster: Cluster = sent(
            &Shape {
                strategy,
                ..Shape::default()
            },
            Kind::Cluster,
        );
        assert_eq!(cluster.lb_policy, LbPolicy::LeastRequest as i32);
        let Some(LbConfig::LeastRequestLbConfig(lr)) = cluster.lb_config else {
            panic!(
                "{strategy:?}: a least_request_lb_config: {:?}",
                cluster.lb_config
            );
        };
        assert_eq!(
            lr.choice_count.map(|w| w.value),
            Some(choices),
            "{strategy:?}"
        );
        assert_eq!(lr.active_request_bias, None);
        assert_eq!(lr.slow_start_config, None);
    }
}

#[test]
fn other_strategies_send_no_typed_lb_config() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::OrcaWeightedRoundRobin,
    ] {
        let cluster: Cluster = sent(
            &Shape {
                strategy,
                ..Shape::default()
            },
            Kind::Cluster,
        );
        assert_eq!(cluster.lb_config, None, "{strategy:?}");
    }
}
