//! chi in one run, on the embedded registry: three real HTTP instances of `user-service` on
//! loopback (two regions, two versions), registered with health checks, discovered, filtered,
//! watched, balanced with every strategy; then one instance dies and leaves.
//!
//! `cargo run --release --example quickstart`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use chi_discovery::balance::{Balancer, Strategy};
use chi_discovery::health::HealthChecker;
use chi_discovery::registry::Memory;
use chi_discovery::{
    Change, DiscoveryClient, Filter, HealthCheck, HealthStatus, ServiceConfig, ServiceManager,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const SERVICE: &str = "user-service";

/// One real HTTP server: `/` names the instance, `/health` answers 200. Stops on `stop`.
async fn serve(name: &'static str) -> std::io::Result<(u16, oneshot::Sender<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = Router::new()
        .route("/", get(move || async move { name }))
        .route("/health", get(|| async { "ok" }));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok((port, stop))
}

fn row(i: &chi_discovery::Instance) -> String {
    format!(
        "  {:<34} {:<7} {:<10} {:<11} w={} {}",
        i.id,
        i.version,
        i.meta("region").unwrap_or("-"),
        i.meta("zone").unwrap_or("-"),
        i.weight,
        i.health
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    println!("chi quickstart: the embedded registry, three real HTTP instances on loopback\n");

    // 1. Three instances: two regions, two versions, different weights.
    let fleet = [
        ("east-a", "v1", "us-east-1", "us-east-1a", 3),
        ("east-b", "v2", "us-east-1", "us-east-1b", 1),
        ("west-a", "v1", "us-west-2", "us-west-2a", 1),
    ];
    let registry = Arc::new(Memory::with_ttl(Duration::from_secs(3)));
    let manager = Arc::new(ServiceManager::new(registry.clone()));
    let check = HealthCheck::http("/health")
        .every(Duration::from_millis(200))
        .timeout(Duration::from_millis(150));
    let mut stops = BTreeMap::new();
    let mut names: BTreeMap<String, &str> = BTreeMap::new();
    for (name, version, region, zone, weight) in fleet {
        let (port, stop) = serve(name).await?;
        let mut cfg = ServiceConfig::new(SERVICE, "127.0.0.1", port);
        cfg.version = version.into();
        cfg.tags = vec![version.into(), "api".into()];
        cfg.meta.insert("region".into(), region.into());
        cfg.meta.insert("zone".into(), zone.into());
        cfg.weight = weight;
        cfg.health_check = Some(check.clone());
        let report = manager.register(cfg).await?;
        names.insert(report.id.clone(), name);
        stops.insert(name, (report.id, stop));
    }
    println!(
        "registered {} instances (keep-alive every {})",
        stops.len(),
        human(registry_interval(&registry))
    );

    // 2. Discovery with a cache, and active health checks laid over it.
    let client = DiscoveryClient::new(registry.clone());
    let checker = HealthChecker::new(client.clone());
    checker.watch(SERVICE, check.clone()).await?;
    let mut watcher = client.watch(SERVICE).await?;
    let all_healthy = wait_for(Duration::from_secs(5), || async {
        let s = client.discover(SERVICE).await;
        s.is_ok_and(|s| s.iter().all(|i| i.health == HealthStatus::Healthy))
    })
    .await;
    let snapshot = client.discover(SERVICE).await?;
    println!(
        "\ndiscover(\"{SERVICE}\") -> {} instances (health checked in {}):",
        snapshot.len(),
        all_healthy.map_or_else(|| "more than 5 s".to_owned(), human)
    );
    for i in snapshot.iter() {
        println!("{}", row(i));
    }
    let east_v1 = client
        .discover_with_filter(
            SERVICE,
            &Filter::new()
                .tag("v1")
                .meta("region", "us-east-1")
                .healthy_only(),
        )
        .await?;
    println!(
        "\nfilter tag=v1, region=us-east-1, healthy only -> {:?}",
        ids(&east_v1)
    );

    // 3. Every balancer over the same snapshot.
    println!("\n600 picks per strategy (weights east-a=3, east-b=1, west-a=1):");
    for strategy in Strategy::ALL {
        let balancer = Balancer::new(strategy);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for k in 0..600 {
            let key = format!("user-{}", k % 60);
            let pick = balancer
                .pick(&snapshot, Some(key.as_bytes()))
                .ok_or("no instance picked")?;
            *counts
                .entry(names[&pick.instance().id].to_owned())
                .or_default() += 1;
        }
        let dist: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  {:<22} {}", strategy.as_str(), dist.join("  "));
    }

    // 4. The watch so far: a Reset, then the health updates.
    let mut seen = Vec::new();
    while let Ok(Some(Ok(change))) =
        tokio::time::timeout(Duration::from_millis(50), watcher.next()).await
    {
        seen.push(describe(&change));
    }
    println!("\nwatch events so far: {}", seen.join(", "));

    // 5. Kill west-a's server: health checks take it out, then it is deregistered.
    let (west_id, west_stop) = stops.remove("west-a").ok_or("west-a")?;
    let _ = west_stop.send(());
    let killed = Instant::now();
    let gone = wait_for(Duration::from_secs(5), || async {
        client
            .discover_with_filter(SERVICE, &Filter::new().healthy_only())
            .await
            .is_ok_and(|l| l.iter().all(|i| i.id != west_id))
    })
    .await;
    println!(
        "\nwest-a stopped: out of healthy_only discovery after {} (3 failed checks x 200 ms)",
        human(gone.unwrap_or(killed.elapsed()))
    );
    let rr = Balancer::new(Strategy::RoundRobin);
    let snapshot = client.discover(SERVICE).await?;
    let picks: Vec<&str> = (0..6)
        .filter_map(|_| rr.pick(&snapshot, None).map(|p| names[&p.instance().id]))
        .collect();
    println!("round robin now skips it: {}", picks.join(" "));

    manager.deregister(SERVICE, &west_id).await?;
    let deregistered = Instant::now();
    let mut removed = None;
    while deregistered.elapsed() < Duration::from_secs(2) {
        match tokio::time::timeout(Duration::from_millis(100), watcher.next()).await {
            Ok(Some(Ok(Change::Remove(i)))) if i.id == west_id => {
                removed = Some(deregistered.elapsed());
                break;
            }
            _ => continue,
        }
    }
    println!(
        "deregistered: the watch saw Remove({west_id}) ({})",
        if removed.is_some() { "yes" } else { "no" }
    );
    let left = client.refresh(SERVICE).await?;
    println!("discover now -> {:?}", ids(&left));

    // 6. Graceful shutdown deregisters everything.
    drop(checker);
    manager.shutdown().await;
    let after = client.refresh(SERVICE).await?;
    let stats = client.cache_stats();
    println!(
        "\nshutdown: {} instances left; cache hits={} misses={} stale serves={}",
        after.len(),
        stats.hits,
        stats.misses,
        stats.stale_serves
    );
    for (_, (_, stop)) in stops {
        let _ = stop.send(());
    }
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    if after.is_empty() && removed.is_some() && gone.is_some() && all_healthy.is_some() {
        Ok(())
    } else {
        Err("the run did not go as described above".into())
    }
}

fn registry_interval(r: &Memory) -> Duration {
    use chi_discovery::Registry;
    r.keep_alive_interval()
}

/// `d` as people read it: `20.9 ms`, `1.5 s` (where `{:?}` prints `20.888951ms`).
fn human(d: Duration) -> String {
    let (v, unit) = match d.as_secs_f64() {
        s if s >= 1.0 => (s, "s"),
        s if s >= 1e-3 => (s * 1e3, "ms"),
        s => (s * 1e6, "µs"),
    };
    let digits = if v >= 100.0 || v.fract() == 0.0 { 0 } else { 1 };
    format!("{v:.digits$} {unit}")
}

fn ids(list: &[chi_discovery::Instance]) -> Vec<&str> {
    list.iter().map(|i| i.id.as_str()).collect()
}

fn describe(change: &Change) -> String {
    match change {
        Change::Reset(all) => format!("Reset({})", all.len()),
        Change::Add(i) => format!("Add({})", i.id),
        Change::Remove(i) => format!("Remove({})", i.id),
        Change::Update(i) => format!("Update({} {})", i.port, i.health),
    }
}

async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
