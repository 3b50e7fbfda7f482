//! Smart-router pick (version -> geo -> balancer) at 1,000 instances beside the bare balancer pick
//! over the whole list, measured in the same run: the goal is within 3x of the bare pick.
//!
//! Also: an `AtomicUsize::fetch_add` floor, the routing alone (no pick), a fallback route (unknown
//! version, region outside the topology: two fallbacks), and routing read from an
//! `http::HeaderMap`.
//!
//! `cargo bench -p chi-discovery --bench routing`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chi_discovery::balance::{Balancer, BalancerConfig, Strategy};
use chi_discovery::config::RoutingConfig;
use chi_discovery::registry::{Memory, Registry};
use chi_discovery::routing::{Route, Smart};
use chi_discovery::{DiscoveryClient, HealthStatus, Instance, Snapshot};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use indexmap::IndexMap;

const ZONES: [(&str, &str); 6] = [
    ("us-east-1", "us-east-1a"),
    ("us-east-1", "us-east-1b"),
    ("us-east-1", "us-east-1c"),
    ("us-west-2", "us-west-2a"),
    ("us-west-2", "us-west-2b"),
    ("eu-west-1", "eu-west-1a"),
];

/// 90 % v1, 10 % v2, spread over six zones in three regions, all healthy.
fn fleet(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|k| {
            let (region, zone) = ZONES[k % ZONES.len()];
            let version = if k % 10 == 0 { "v2" } else { "v1" };
            Instance::new(
                "user-service",
                format!("10.{}.{}.1", k / 250, k % 250),
                8080,
            )
            .with_version(version)
            .with_tag(version)
            .with_meta("region", region)
            .with_meta("zone", zone)
            .with_health(HealthStatus::Healthy)
        })
        .collect()
}

fn config() -> RoutingConfig {
    let mut regions = IndexMap::new();
    for (region, zone) in ZONES {
        regions
            .entry(region.to_owned())
            .or_insert_with(Vec::new)
            .push(zone.to_owned());
    }
    RoutingConfig {
        enable_version_routing: true,
        enable_geo_routing: true,
        default_version: "v1".into(),
        regions,
        ..RoutingConfig::default()
    }
}

fn snapshot(n: usize) -> Snapshot {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let reg = Memory::new();
        for i in fleet(n) {
            reg.register(&i).await.expect("register");
        }
        let client = DiscoveryClient::new(Arc::new(reg));
        client.discover("user-service").await.expect("discover")
    })
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let n = 1_000;
    let snap = snapshot(n);
    let counter = AtomicUsize::new(0);
    group.bench_with_input(BenchmarkId::new("baseline_fetch_add", n), &n, |b, _| {
        b.iter(|| black_box(counter.fetch_add(1, Ordering::Relaxed)))
    });
    for strategy in [
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::P2c,
    ] {
        let name = strategy.as_str();
        let bare = Balancer::new(strategy);
        group.bench_with_input(BenchmarkId::new(format!("bare/{name}"), n), &n, |b, _| {
            b.iter(|| {
                let p = bare.pick(black_box(&snap), None).expect("pick");
                black_box(p.index())
            })
        });
        let smart =
            Smart::with_balancer(&config(), BalancerConfig::new(strategy)).expect("valid settings");
        let route = Route::new().version("v1").zone("us-east-1a");
        group.bench_with_input(BenchmarkId::new(format!("smart/{name}"), n), &n, |b, _| {
            b.iter(|| {
                let p = smart
                    .pick(black_box(&snap), black_box(&route))
                    .expect("pick");
                black_box(p.instance().port)
            })
        });
        if strategy == Strategy::RoundRobin {
            group.bench_with_input(
                BenchmarkId::new(format!("route_only/{name}"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let s = smart
                            .route(black_box(&snap), black_box(&route))
                            .expect("route");
                        black_box(s.decision())
                    })
                },
            );
            let fallback = Route::new().version("v9").region("ap-south-1");
            group.bench_with_input(
                BenchmarkId::new(format!("smart_fallback/{name}"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let p = smart
                            .pick(black_box(&snap), black_box(&fallback))
                            .expect("pick");
                        black_box(p.instance().port)
                    })
                },
            );
            let mut headers = http::HeaderMap::new();
            headers.insert("x-service-version", http::HeaderValue::from_static("v2"));
            headers.insert(
                "x-client-zone",
                http::HeaderValue::from_static("us-west-2b"),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("smart_from_headers/{name}"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        let route = Route::from_headers(black_box(&headers));
                        let p = smart.pick(black_box(&snap), &route).expect("pick");
                        black_box(p.instance().port)
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
