//! Reliability suite, faults: a registry killed (SIGKILL) under steady discovery load, and a watch
//! that follows 1,000 changes across a registry restart, for etcd, Consul and Nacos (rnacos).
//!
//! Every test asserts on what the clients saw and prints its figures on `[reliability] ` lines.
//! Each holds [`harness::heavy`] for its whole run: they load the machine and measure times.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chi_discovery::balance::{Balancer, Strategy};
use chi_discovery::discovery::CacheConfig;
use chi_discovery::registry::consul::{Consul, ConsulConfig};
use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use chi_discovery::registry::nacos::Nacos;
use chi_discovery::{DiscoveryClient, Instance, Registry, RetryPolicy, ServiceManager};

use crate::harness::consul::ConsulAgent;
use crate::harness::etcd::Etcd as EtcdServer;
use crate::harness::nacos::NacosServer;
use crate::harness::{self, eventually, scaled};

/// One real registry server of any backend, killable and restartable.
enum Server {
    Etcd(EtcdServer),
    Consul(ConsulAgent),
    Nacos(NacosServer),
}

impl Server {
    async fn start(backend: &str) -> Server {
        match backend {
            "etcd" => Server::Etcd(EtcdServer::single().await),
            "consul" => Server::Consul(ConsulAgent::start().await),
            "nacos" => Server::Nacos(tokio::task::block_in_place(NacosServer::start)),
            other => panic!("unknown backend {other}"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Server::Etcd(_) => "etcd",
            Server::Consul(_) => "consul",
            Server::Nacos(_) => "nacos",
        }
    }

    /// A new client of this server with short timings (its own connection).
    async fn registry(&self) -> Arc<dyn Registry> {
        match self {
            Server::Etcd(s) => Arc::new(
                Etcd::connect(EtcdConfig {
                    endpoints: s.endpoints(),
                    lease_ttl: Duration::from_secs(3),
                    connect_timeout: Duration::from_secs(1),
                    request_timeout: Duration::from_secs(1),
                    ..EtcdConfig::default()
                })
                .await
                .expect("connect to etcd"),
            ),
            Server::Consul(s) => Arc::new(
                Consul::new(ConsulConfig {
                    address: s.addr(),
                    check_ttl: Duration::from_secs(3),
                    request_timeout: Duration::from_millis(500),
                    ..ConsulConfig::default()
                })
                .expect("consul config"),
            ),
            Server::Nacos(s) => Arc::new(Nacos::connect(s.config()).await.expect("connect")),
        }
    }

    /// SIGKILL.
    fn kill(&mut self) {
        match self {
            Server::Etcd(s) => s.members[0].kill(),
            Server::Consul(s) => s.kill(),
            Server::Nacos(s) => s.kill(),
        }
    }

    /// Starts it again (same ports; etcd and rnacos on the same data directory) and waits until
    /// it serves.
    async fn restart(&mut self) {
        match self {
            Server::Etcd(s) => {
                tokio::task::block_in_place(|| s.members[0].restart());
                s.wait_for_leader(Duration::from_secs(15)).await;
            }
            Server::Consul(s) => s.restart().await,
            Server::Nacos(s) => tokio::task::block_in_place(|| s.restart()),
        }
    }
}

/// Short retries, so that a dead registry is noticed and a live one used again quickly.
fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        initial_interval: Duration::from_millis(100),
        max_interval: Duration::from_millis(500),
        multiplier: 2.0,
    }
}

fn manager(registry: Arc<dyn Registry>) -> ServiceManager {
    ServiceManager::new(registry)
        .with_interval(Duration::from_millis(200))
        .with_retry(quick_retry())
}

fn client(registry: Arc<dyn Registry>) -> DiscoveryClient {
    DiscoveryClient::builder()
        .cache(CacheConfig {
            refresh_interval: Duration::from_millis(100),
            ttl: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        .retry(quick_retry())
        .request_timeout(Duration::from_millis(500))
        .build(registry)
}

/// Instances sorted by id, for whole-list comparisons.
fn sorted(list: &[Instance]) -> Vec<Instance> {
    let mut v = list.to_vec();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// A number with thousands separators: 1234567 -> "1,234,567".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------------
// 1. Registry SIGKILL for 10 s under steady discovery load.
// ---------------------------------------------------------------------------------------------

/// What the load tasks saw.
#[derive(Default)]
struct Load {
    picks: AtomicU64,
    empty: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    /// Milliseconds after the kill when a stale snapshot was first served (0: not yet).
    stale_after_ms: AtomicU64,
}

/// Registers `N` instances through a `ServiceManager`, runs discover + pick in a loop on several
/// tasks, kills the registry for 10 s (120 s in soak mode) and restarts it.
///
/// Asserts: no empty list served, no failed pick (nor discover error) from before the kill until
/// the end; the outage was real (direct calls failed) and the served snapshot was marked stale
/// during it; after the restart every registration is on the server again (Consul and rnacos lose
/// them in a restart, so the manager / nacos-sdk put them back; etcd keeps them on its data dir)
/// and the client's cache equals the server's list again, fresh.
async fn kill_under_load(backend: &str) {
    const N: u16 = 5;
    const TASKS: usize = 4;
    const PICKS_PER_MS: usize = 20;
    let _g = harness::heavy().await;
    let test_start = Instant::now();
    let mut server = Server::start(backend).await;
    let svc = format!("faults-kill-{backend}");
    let writer = server.registry().await;
    let manager = manager(writer.clone());
    for i in 0..N {
        let inst = Instance::new(&svc, "127.0.0.1", 7000 + i).with_id(format!("k{i}"));
        manager.register_instance(inst).await.expect("register");
    }
    let reader = server.registry().await;
    let client = client(reader.clone());
    let first = eventually(Duration::from_secs(10), || async {
        client
            .refresh(&svc)
            .await
            .is_ok_and(|s| s.len() == N as usize)
    })
    .await;
    assert!(first.is_some(), "never saw the {N} instances");

    // The load: discover + round-robin pick, PICKS_PER_MS per task and millisecond.
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let balancer = Arc::new(Balancer::new(Strategy::RoundRobin));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (client, load, stop, killed_at, balancer, svc) = (
                client.clone(),
                load.clone(),
                stop.clone(),
                killed_at.clone(),
                balancer.clone(),
                svc.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..PICKS_PER_MS {
                        load.picks.fetch_add(1, Ordering::Relaxed);
                        let snap = match client.discover(&svc).await {
                            Ok(s) => s,
                            Err(_) => {
                                load.failed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        };
                        if snap.is_empty() {
                            load.empty.fetch_add(1, Ordering::Relaxed);
                        }
                        if balancer.pick(&snap, None).is_none() {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        if snap.is_stale() {
                            load.stale.fetch_add(1, Ordering::Relaxed);
                            let at = *killed_at.lock().expect("lock");
                            if let Some(at) = at
                                && load.stale_after_ms.load(Ordering::Relaxed) == 0
                            {
                                let ms = (at.elapsed().as_millis() as u64).max(1);
                                let _ = load.stale_after_ms.compare_exchange(
                                    0,
                                    ms,
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                );
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    // The background refresher runs (it is what notices the outage).
    let refreshing = eventually(Duration::from_secs(5), || async {
        client.cache_stats().refreshes >= 5
    })
    .await;
    assert!(
        refreshing.is_some(),
        "the background refresher does not run: {:?}",
        client.cache_stats()
    );
    assert_eq!(
        load.stale.load(Ordering::Relaxed),
        0,
        "stale before the kill"
    );

    let outage = scaled(Duration::from_secs(10), Duration::from_secs(120));
    *killed_at.lock().expect("lock") = Some(Instant::now());
    let kill = Instant::now();
    server.kill();
    // The outage is real: the server does not answer.
    let down = eventually(Duration::from_secs(5), || async {
        reader.instances(&svc).await.is_err()
    })
    .await;
    assert!(down.is_some(), "{backend} still answers after SIGKILL");
    tokio::time::sleep(outage.saturating_sub(kill.elapsed())).await;
    let stale_after = load.stale_after_ms.load(Ordering::Relaxed);
    assert!(
        stale_after > 0,
        "no stale snapshot served during the {outage:?} outage: cached {:?}, stats {:?}",
        client.cached(&svc),
        client.cache_stats()
    );
    let picks_in_outage = load.picks.load(Ordering::Relaxed);

    server.restart().await;
    let restarted = Instant::now();
    // Every registration back on the server.
    let want: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    let back = eventually(Duration::from_secs(30), || async {
        reader.instances(&svc).await.is_ok_and(|l| {
            let mut ids: Vec<String> = l.iter().map(|i| i.id.clone()).collect();
            ids.sort();
            ids == want
        })
    })
    .await;
    assert!(
        back.is_some(),
        "registrations not back on {backend}: {:?}; manager {:?}",
        reader.instances(&svc).await,
        manager.status()
    );
    // The cache equals the registry again, and is fresh.
    let equal = eventually(Duration::from_secs(15), || async {
        let Ok(server_list) = reader.instances(&svc).await else {
            return false;
        };
        client
            .cached(&svc)
            .is_some_and(|s| !s.is_stale() && sorted(&s) == sorted(&server_list))
    })
    .await;
    assert!(
        equal.is_some(),
        "cache {:?} != registry {:?}",
        client.cached(&svc),
        reader.instances(&svc).await
    );
    let converged = restarted.elapsed();
    // Keep the load on for a moment after convergence: no empty list on the way back either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    let status = manager.status();
    let reregistrations: u64 = status.iter().map(|s| s.backends[0].reregistrations).sum();
    manager.shutdown().await;

    let picks = load.picks.load(Ordering::Relaxed);
    let empty = load.empty.load(Ordering::Relaxed);
    let failed = load.failed.load(Ordering::Relaxed);
    println!(
        "[reliability] kill {} {} s: {} picks ({} before the restart), {} empty, {} failed, \
         stale seen after {} ms, registrations back after {} ms ({} re-registrations by the \
         manager), cache == registry after {} ms (times from the restarted server being ready); test took {:.1} s",
        server.name(),
        outage.as_secs(),
        thousands(picks),
        thousands(picks_in_outage),
        empty,
        failed,
        stale_after,
        back.map(ms).unwrap_or_default(),
        reregistrations,
        ms(converged),
        test_start.elapsed().as_secs_f64()
    );
    assert_eq!(empty, 0, "empty instance lists served");
    assert_eq!(failed, 0, "failed picks or discovers");
    assert!(picks > 10_000, "the load barely ran: {picks} picks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_under_load_serves_stale_and_recovers() {
    kill_under_load("etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_killed_under_load_serves_stale_and_recovers() {
    kill_under_load("consul").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_killed_under_load_serves_stale_and_recovers() {
    kill_under_load("nacos").await;
}
