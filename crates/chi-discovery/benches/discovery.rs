//! Discovery cache benchmarks: the cost of a cache hit beside an `Arc` clone measured in the same
//! run (the floor: a hit hands out one `Arc` of an immutable snapshot).
//!
//! `cargo bench -p chi-discovery --bench discovery`

use std::hint::black_box;
use std::sync::Arc;

use chi_discovery::registry::{Memory, Registry};
use chi_discovery::{DiscoveryClient, Filter, Instance};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;

fn fleet(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|k| {
            Instance::new(
                "user-service",
                format!("10.0.{}.{}", k / 250, k % 250),
                8080,
            )
            .with_tag(if k % 2 == 0 { "v1" } else { "v2" })
            .with_meta("region", if k % 3 == 0 { "us-east-1" } else { "us-west-2" })
        })
        .collect()
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("cache_hit");
    for n in [10usize, 10_000] {
        let list = fleet(n);
        let baseline: Arc<[Instance]> = list.clone().into();
        group.bench_with_input(BenchmarkId::new("baseline_arc_clone", n), &n, |b, _| {
            b.iter(|| black_box(Arc::clone(black_box(&baseline))))
        }); // The same Arc clone handed out through a future and `now_or_never`, as `discover` is:
        // the floor of an awaited hit.
        group.bench_with_input(
            BenchmarkId::new("baseline_arc_clone_awaited", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let fut = black_box(std::future::ready(Ok::<_, chi_discovery::Error>(
                        Arc::clone(black_box(&baseline)),
                    )));
                    black_box(fut.now_or_never())
                })
            },
        );

        let reg = Memory::new();
        let client = rt.block_on(async {
            for i in &list {
                reg.register(i).await.expect("register");
            }
            // A few other services so the map is not trivially small.
            for s in 0..50 {
                reg.register(&Instance::new(format!("svc-{s}"), "10.1.0.1", 80))
                    .await
                    .expect("register");
            }
            let client = DiscoveryClient::new(Arc::new(reg.clone()));
            client.discover("user-service").await.expect("warm");
            for s in 0..50 {
                client.discover(&format!("svc-{s}")).await.expect("warm");
            }
            client
        });
        group.bench_with_input(BenchmarkId::new("cached", n), &n, |b, _| {
            b.iter(|| black_box(client.cached(black_box("user-service"))))
        });
        group.bench_with_input(BenchmarkId::new("discover", n), &n, |b, _| {
            b.iter(|| {
                black_box(
                    client
                        .discover(black_box("user-service"))
                        .now_or_never()
                        .expect("a hit never waits"),
                )
            })
        });
        if n == 10 {
            let filter = Filter::new().tag("v1").meta("region", "us-east-1");
            group.bench_with_input(BenchmarkId::new("discover_with_filter", n), &n, |b, _| {
                b.iter(|| {
                    black_box(
                        client
                            .discover_with_filter(black_box("user-service"), &filter)
                            .now_or_never()
                            .expect("a hit never waits"),
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, cache_hit);
criterion_main!(benches);
