//! Load-balancing benchmarks: every strategy at 10 / 100 / 1,000 / 10,000 instances, on one thread
//! and on two threads picking from the same balancer, beside two baselines measured in the same
//! run (an `AtomicUsize::fetch_add` and hashing a 16-byte key), so that the figures read as ratios
//! that hold on a noisy machine (docs/DESIGN.md §11). Plus the rebuild of a consistent-hash table.
//!
//! `select/*` measures the algorithm alone (a selector's `pick`, guard included); `pick/*` the whole
//! [`Balancer`] path, which adds reading the current table and a revision check. `select_busy/*`
//! and `pick_busy/*` hold requests on every instance first: least connections must then find the
//! least loaded among busy instances, the case its idle figures hide. `pick_reported/*` is
//! `orca_weighted_round_robin` with every instance reporting its load (`pick/` of it has no
//! reports: a table of equal weights), `rebuild/orca_weighted_round_robin/*` the build of its
//! table from the reports.
//!
//! Run: `cargo bench -p chi-discovery --bench balance -- --warm-up-time 0.5 --measurement-time 1 --noplot`.
//! The weighted picks beside the atomic:
//! `cargo bench -p chi-discovery --bench balance -- --noplot 'baseline/atomic.*/1t|pick/weighted.*/1t|orca_weighted_round_robin'`.
//! The issue-20 goals alone, baselines first:
//! `cargo bench -p chi-discovery --bench balance -- --noplot 'baseline/.*/1t|pick/(round_robin|random|p2c)/1t/(10|100|1000)$|busy/least_connections/1t/10000'`.
//!
//! Two-thread figures are the wall time per pick *per thread* while both threads pick: equal to
//! the one-thread figure when nothing is shared, larger when they contend on a cache line.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chi_discovery::Instance;
use chi_discovery::balance::{
    Balancer, BalancerConfig, ConsistentHash, ConsistentHashConfig, LoadReports, LoadSink,
    OrcaConfig, OrcaWeightedRoundRobin, ReportedLoad, Request, RingHash, Strategy, ThreadRandom,
    default_hash,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn instances(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            Instance::new(
                "bench",
                format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                8080,
            )
            .with_weight(1 + (i % 5) as u32)
        })
        .collect()
}

/// Runs `op` `iters` times on each of `threads` threads at once; returns the wall time of the
/// slowest (per-thread time per op is that divided by `iters`).
fn on_threads<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(u64) + Sync,
{
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (op, barrier) = (&op, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let base = (t as u64) << 40;
                    for i in 0..iters {
                        op(base + i);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .max()
            .unwrap_or_default()
    })
}

/// A 16-byte key derived from the iteration number.
#[inline]
fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k[8..].copy_from_slice(&(i ^ 0x5bd1_e995).to_le_bytes());
    k
}

fn baselines(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    for threads in [1usize, 2] {
        let counter = AtomicUsize::new(0);
        g.bench_function(
            BenchmarkId::new("atomic_fetch_add", format!("{threads}t")),
            |b| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, |_| {
                        black_box(counter.fetch_add(1, Ordering::Relaxed));
                    })
                })
            },
        );
        g.bench_function(
            BenchmarkId::new("hash_16b_key", format!("{threads}t")),
            |b| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, |i| {
                        black_box(default_hash(black_box(&key(i))));
                    })
                })
            },
        );
    }
    g.finish();
}

fn strategies(c: &mut Criterion) {
    for strategy in Strategy::ALL {
        // The algorithm alone: the selector's `pick` (with the in-flight guard of load-aware
        // strategies), as a caller holding the table would call it.
        let mut g = c.benchmark_group(format!("select/{}", strategy.as_str()));
        for n in SIZES {
            let list = instances(n);
            let selector = BalancerConfig::new(strategy).build(&list, None);
            for threads in [1usize, 2] {
                g.bench_function(BenchmarkId::new(format!("{threads}t"), n), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |i| {
                            let k = key(i);
                            let pick = selector.pick(&list, &Request::with_key(&k));
                            black_box(pick.map(|p| p.0));
                        })
                    })
                });
            }
        }
        g.finish();
        // The whole hot path: `Balancer::pick_in` (ArcSwap load, revision check, select, guard).
        let mut g = c.benchmark_group(format!("pick/{}", strategy.as_str()));
        for n in SIZES {
            let list = instances(n);
            let balancer = Balancer::new(strategy);
            // Build the table outside the measurement.
            let _ = balancer.pick_in(&list, 1, &Request::new());
            for threads in [1usize, 2] {
                g.bench_function(BenchmarkId::new(format!("{threads}t"), n), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |i| {
                            let k = key(i);
                            let pick = balancer.pick_in(&list, 1, &Request::with_key(&k));
                            black_box(pick.as_ref().map(|p| p.index()));
                        })
                    })
                });
            }
        }
        g.finish();
    }
}

/// Load-aware strategies with every instance busy (one request held on each, two on every
/// third): least connections must then scan the whole set, the worst case the idle bench hides.
fn busy(c: &mut Criterion) {
    for strategy in [
        Strategy::LeastConnections,
        Strategy::P2c,
        Strategy::PeakEwma,
    ] {
        let mut g = c.benchmark_group(format!("select_busy/{}", strategy.as_str()));
        for n in SIZES {
            let list = instances(n);
            let selector = BalancerConfig::new(strategy).build(&list, None);
            let held: Vec<_> = selector
                .loads()
                .map(|loads| {
                    (0..n)
                        .flat_map(|i| std::iter::repeat_n(i, 1 + usize::from(i % 3 == 0)))
                        .filter_map(|i| loads.get(i).map(|l| l.start()))
                        .collect()
                })
                .unwrap_or_default();
            g.bench_function(BenchmarkId::new("1t", n), |b| {
                b.iter_custom(|iters| {
                    on_threads(1, iters, |i| {
                        let k = key(i);
                        let pick = selector.pick(&list, &Request::with_key(&k));
                        black_box(pick.map(|p| p.0));
                    })
                })
            });
            drop(held);
        }
        g.finish();
    }
}

/// The whole pick path with every instance busy: requests held through the balancer itself (three
/// per instance on average, so that with weights 1 to 5 every instance has at least one).
fn busy_pick(c: &mut Criterion) {
    for strategy in [Strategy::LeastConnections, Strategy::P2c] {
        let mut g = c.benchmark_group(format!("pick_busy/{}", strategy.as_str()));
        for n in SIZES {
            let list = instances(n);
            let balancer = Balancer::new(strategy);
            let held: Vec<_> = (0..3 * n)
                .filter_map(|_| balancer.pick_in(&list, 1, &Request::new()))
                .collect();
            g.bench_function(BenchmarkId::new("1t", n), |b| {
                b.iter_custom(|iters| {
                    on_threads(1, iters, |i| {
                        let k = key(i);
                        let pick = balancer.pick_in(&list, 1, &Request::with_key(&k));
                        black_box(pick.as_ref().map(|p| p.index()));
                    })
                })
            });
            drop(held);
        }
        g.finish();
    }
}

/// Least connections with health checking off and one instance in a hundred known unhealthy,
/// every instance busy: picks accept the unhealthy ones too, and the tree counts them.
fn busy_health_off(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick_busy_health_off/least_connections");
    let n = 10_000;
    let mut list = instances(n);
    for i in list.iter_mut().step_by(100) {
        i.health = chi_discovery::HealthStatus::Unhealthy;
    }
    let balancer = Balancer::with_config(BalancerConfig {
        health_check_enabled: false,
        ..BalancerConfig::new(Strategy::LeastConnections)
    })
    .expect("valid");
    let any = Request::any();
    let held: Vec<_> = (0..3 * n)
        .filter_map(|_| balancer.pick_in(&list, 1, &any))
        .collect();
    g.bench_function(BenchmarkId::new("1t", n), |b| {
        b.iter_custom(|iters| {
            on_threads(1, iters, |_| {
                let pick = balancer.pick_in(&list, 1, &Request::any());
                black_box(pick.as_ref().map(|p| p.index()));
            })
        })
    });
    drop(held);
    g.finish();
}

fn rebuild(c: &mut Criterion) {
    let mut g = c.benchmark_group("rebuild");
    let list = instances(1_000);
    let config = ConsistentHashConfig::default();
    g.bench_function("consistent_hash/1000", |b| {
        b.iter(|| {
            ConsistentHash::build(
                black_box(&list),
                &config,
                default_hash,
                Arc::new(ThreadRandom),
            )
        })
    });
    g.bench_function("ring_hash/1000", |b| {
        b.iter(|| RingHash::build(black_box(&list), default_hash, Arc::new(ThreadRandom)))
    });
    g.finish();
}

/// `orca_weighted_round_robin` with every instance reporting (utilization 0.1 to 0.9 at 100
/// qps, no blackout): the pick over a table of unequal weights, the table refreshed every second
/// by the picks as in service (its cost is in the figures, spread over the picks), and the
/// build of a table from the reports.
fn orca(c: &mut Criterion) {
    let config = OrcaConfig {
        blackout_period: Duration::ZERO,
        ..OrcaConfig::default()
    };
    let reporting = |list: &[Instance]| {
        let reports = Arc::new(LoadReports::new(config));
        for (i, instance) in list.iter().enumerate() {
            let load = ReportedLoad {
                qps: 100.0,
                cpu_utilization: 0.1 + 0.1 * (i % 9) as f64,
                ..ReportedLoad::default()
            };
            reports.record(&instance.id, &load);
        }
        reports
    };
    let mut g = c.benchmark_group("pick_reported/orca_weighted_round_robin");
    for n in SIZES {
        let list = instances(n);
        let balancer = Balancer::with_config(BalancerConfig {
            load_reports: Some(reporting(&list)),
            ..BalancerConfig::new(Strategy::OrcaWeightedRoundRobin)
        })
        .expect("valid");
        let _ = balancer.pick_in(&list, 1, &Request::new());
        for threads in [1usize, 2] {
            g.bench_function(BenchmarkId::new(format!("{threads}t"), n), |b| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, |i| {
                        let k = key(i);
                        let pick = balancer.pick_in(&list, 1, &Request::with_key(&k));
                        black_box(pick.as_ref().map(|p| p.index()));
                    })
                })
            });
        }
    }
    g.finish();
    let mut g = c.benchmark_group("rebuild/orca_weighted_round_robin");
    for n in SIZES {
        let list = instances(n);
        let reports = reporting(&list);
        let rng = ThreadRandom;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| OrcaWeightedRoundRobin::build(black_box(&list), reports.clone(), &rng))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    baselines,
    strategies,
    busy,
    busy_pick,
    busy_health_off,
    rebuild,
    orca
);
criterion_main!(benches);
