//! Propagation latency: the time from `register` on one client to the `Add` event on another
//! client's watch, p50/p99 over N registrations, beside the floor of the same backend measured in
//! the same run with its raw client (an etcd put -> watch event, a Consul register -> blocking
//! query answer, a nacos-sdk register -> subscribe push, a zookeeper-client ephemeral create ->
//! persistent watch event).
//!
//! Run with real registries on loopback (the script starts them):
//!
//! ```text
//! scripts/bench-propagation            # all backends, 1,000 registrations each
//! ```
//!
//! or by hand: `cargo run --release --all-features --example propagation -- --etcd 127.0.0.1:2379 -n 1000`.

#[cfg(feature = "consul")]
mod consul;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "nacos")]
mod nacos;
#[cfg(feature = "zookeeper")]
mod zookeeper;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::Registry;
use chi_discovery::{Change, Instance};
use futures_util::StreamExt;

/// Sorted samples -> (p50, p99).
fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

/// chi's path: `writer.register` -> `Add` on `reader`'s watch, `n` times, one at a time.
#[cfg_attr(
    not(any(
        feature = "etcd",
        feature = "consul",
        feature = "nacos",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]
async fn measure_chi(
    writer: Arc<dyn Registry>,
    reader: Arc<dyn Registry>,
    service: &str,
    n: usize,
) -> Result<Vec<Duration>, chi_discovery::Error> {
    let mut watch = reader.watch(service).await?;
    // The first item is the initial Reset.
    let _ = watch.next().await;
    let mut samples = Vec::with_capacity(n);
    for k in 0..n {
        let inst = Instance::new(service, "127.0.0.1", 10_000 + (k % 50_000) as u16)
            .with_id(format!("{service}-{k}"));
        let start = Instant::now();
        writer.register(&inst).await?;
        loop {
            match watch.next().await {
                Some(Ok(Change::Add(i))) if i.id == inst.id => break,
                Some(Ok(Change::Reset(all))) if all.iter().any(|i| i.id == inst.id) => break,
                Some(_) => continue,
                None => {
                    return Err(chi_discovery::Error::WatchClosed {
                        service: service.into(),
                        message: "watch ended during the benchmark".into(),
                    });
                }
            }
        }
        samples.push(start.elapsed());
    }
    for k in 0..n {
        let _ = writer.deregister(service, &format!("{service}-{k}")).await;
    }
    Ok(samples)
}

#[cfg_attr(
    not(any(
        feature = "etcd",
        feature = "consul",
        feature = "nacos",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]
fn report(backend: &str, floor: Vec<Duration>, chi: Vec<Duration>) {
    let (f50, f99) = percentiles(floor);
    let (c50, c99) = percentiles(chi);
    let goal = |f: Duration| f.mul_f64(1.2) + Duration::from_millis(1);
    println!(
        "| {backend:<7} | {:>9.3} | {:>9.3} | {:>9.3} | {:>9.3} | {:>5.2}x | {} |",
        f50.as_secs_f64() * 1e3,
        f99.as_secs_f64() * 1e3,
        c50.as_secs_f64() * 1e3,
        c99.as_secs_f64() * 1e3,
        c50.as_secs_f64() / f50.as_secs_f64().max(1e-9),
        if c50 <= goal(f50) && c99 <= goal(f99) {
            "yes"
        } else {
            "no"
        },
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = arg("-n").and_then(|v| v.parse().ok()).unwrap_or(1000);
    println!("propagation: register -> watch event, {n} registrations per backend (ms)\n");
    println!(
        "| backend | floor p50 | floor p99 |   chi p50 |   chi p99 | ratio  | within 1.2x+1ms |"
    );
    println!(
        "|---------|-----------|-----------|-----------|-----------|--------|-----------------|"
    );
    #[cfg_attr(
        not(any(
            feature = "etcd",
            feature = "consul",
            feature = "nacos",
            feature = "zookeeper"
        )),
        allow(unused_mut)
    )]
    let mut ran = false;
    #[cfg(feature = "etcd")]
    if let Some(addr) = arg("--etcd") {
        ran = true;
        let floor = etcd::floor(&addr, n).await;
        let (w, r) = etcd::registries(&addr).await;
        let chi = measure_chi(w, r, "bench-etcd", n).await;
        report("etcd", floor, chi.unwrap_or_else(|e| panic!("etcd: {e}")));
    }
    #[cfg(feature = "consul")]
    if let Some(addr) = arg("--consul") {
        ran = true;
        let floor = consul::floor(&addr, n).await;
        let (w, r) = consul::registries(&addr).await;
        let chi = measure_chi(w, r, "bench-consul", n).await;
        report(
            "consul",
            floor,
            chi.unwrap_or_else(|e| panic!("consul: {e}")),
        );
    }
    #[cfg(feature = "nacos")]
    if let Some(addr) = arg("--nacos") {
        ran = true;
        let floor = nacos::floor(&addr, n).await;
        let (w, r) = nacos::registries(&addr).await;
        let chi = measure_chi(w, r, "bench-nacos", n).await;
        report("nacos", floor, chi.unwrap_or_else(|e| panic!("nacos: {e}")));
    }
    #[cfg(feature = "zookeeper")]
    if let Some(addr) = arg("--zookeeper") {
        use chi_discovery::registry::zookeeper::WatchMode;
        ran = true;
        let floor = zookeeper::floor(&addr, n).await;
        for (label, mode, service) in [
            ("zookeeper", WatchMode::Persistent, "bench-zk"),
            ("zookeeper one-shot", WatchMode::Oneshot, "bench-zk-oneshot"),
        ] {
            let (w, r) = zookeeper::registries(&addr, mode).await;
            let chi = measure_chi(w, r, service, n).await;
            report(
                label,
                floor.clone(),
                chi.unwrap_or_else(|e| panic!("{label}: {e}")),
            );
        }
    }
    if !ran {
        eprintln!(
            "give at least one of --etcd ADDR, --consul ADDR, --nacos ADDR, --zookeeper ADDR (and build with --all-features)"
        );
        std::process::exit(2);
    }
}
