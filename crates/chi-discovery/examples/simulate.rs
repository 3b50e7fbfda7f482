//! A deterministic simulation of chi's production balancing options: the figures in the README
//! come from here.
//!
//! Run: `cargo run -p chi-discovery --release --example simulate -- --seed 1`
//!
//! - **Zone-aware balancing**: 3 zones of one region with 2, 5 and 8 instances, clients spread
//!   evenly, round robin in each zone. Cross-zone traffic against what the capacity shortfall
//!   requires, and the hottest instance against the mean.
//! - **Deterministic subsetting**: 1,000 clients x 1,000 instances, `k = 20`: clients per
//!   instance against the mean, and the subsets that move when one instance (60 of them, each
//!   in turn) or one client leaves.
//!
//! - **Slow start**: a joining instance's share of a weighted round robin against Envoy's curve,
//!   second by second (on a paused clock).
//!
//! The seed names the clients and instances and drives the zone-aware draws: the same seed
//! prints the same table.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chi_discovery::balance::{Balancer, SeededRandom, Strategy};
use chi_discovery::config::Config;
use chi_discovery::registry::{Memory, Registry};
use chi_discovery::routing::{
    Route, RoutingConfig, SlowStartConfig, Smart, Subsetting, ZoneAwareConfig,
};
use chi_discovery::{DiscoveryClient, HealthStatus, Instance};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let seed: u64 = match args.iter().position(|a| a == "--seed") {
        Some(i) => args.get(i + 1).ok_or("--seed needs a number")?.parse()?,
        None => 1,
    };
    println!("seed {seed}\n");
    zone_aware(seed).await?;
    subsetting(seed);
    slow_start().await;
    Ok(())
}

/// Four warm instances and one that joins, weighted round robin, a 10 s linear ramp from 10 %:
/// the joiner's share against the curve's `f / (4 + f)`, on a paused clock.
async fn slow_start() {
    println!("## Slow start: 4 warm instances, 1 joins; weighted round robin, 10 s linear ramp\n");
    println!("| t | weight factor | expected share | simulated share | off by |");
    println!("| --- | --- | --- | --- | --- |");
    tokio::time::pause();
    let config = SlowStartConfig::new(std::time::Duration::from_secs(10));
    let router = Smart::from_config(&RoutingConfig::default(), || {
        Balancer::new(Strategy::WeightedRoundRobin)
    })
    .slow_start(config);
    let fleet = |n: u16| -> Vec<Instance> {
        (1..=n)
            .map(|p| Instance::new("svc", "10.0.0.1", p).with_health(HealthStatus::Healthy))
            .collect()
    };
    let registry = Arc::new(Memory::new());
    for i in fleet(4) {
        let _ = registry.register(&i).await;
    }
    let client = DiscoveryClient::new(registry.clone());
    if let Ok(warm) = client.discover("svc").await {
        let _ = router.pick(&warm, &Route::default());
    }
    for i in fleet(5) {
        let _ = registry.register(&i).await;
    }
    client.forget("svc");
    let Ok(joined) = client.discover("svc").await else {
        return;
    };
    let mut worst: f64 = 0.0;
    for second in 0..=11u64 {
        let t = std::time::Duration::from_secs(second);
        let f = config.factor(t);
        let want = f / (4.0 + f);
        let picks = 10_000;
        let hits = (0..picks)
            .filter_map(|_| router.pick(&joined, &Route::default()))
            .filter(|r| r.instance().port == 5)
            .count();
        let got = hits as f64 / picks as f64;
        let off = (got - want) / want;
        worst = worst.max(off.abs());
        println!(
            "| {second} s | {f:.2} | {:.2} % | {:.2} % | {:+.1} % |",
            100.0 * want,
            100.0 * got,
            100.0 * off
        );
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
    }
    println!("\nworst: {:.1} % off the curve\n", 100.0 * worst);
}

/// Requests from each zone of `sizes` (clients spread evenly), with and without zone-aware.
async fn zone_aware(seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    println!("## Zone-aware balancing: one region, clients spread evenly over its zones\n");
    println!("| instances per zone | zone-aware | cross-zone | shortfall | hottest / mean |");
    println!("| --- | --- | --- | --- | --- |");
    for sizes in [[2usize, 5, 8], [5, 5, 5], [1, 2, 12]] {
        let registry = Arc::new(Memory::new());
        let zones = ["z-a", "z-b", "z-c"];
        for (zone, n) in zones.iter().zip(sizes) {
            for i in 0..n {
                registry
                    .register(
                        &Instance::new("svc", format!("10.{seed}.{zone}"), 8000 + i as u16)
                            .with_id(format!("{zone}-{i}"))
                            .with_meta("region", "r")
                            .with_meta("zone", *zone)
                            .with_health(HealthStatus::Healthy),
                    )
                    .await?;
            }
        }
        let snapshot = DiscoveryClient::new(registry).discover("svc").await?;
        let total: usize = sizes.iter().sum();
        // What must cross: the share of each zone's clients beyond its capacity share.
        let shortfall: f64 = sizes
            .iter()
            .map(|&n| (1.0 / 3.0 - n as f64 / total as f64).max(0.0))
            .sum();
        for on in [false, true] {
            let mut routing = RoutingConfig {
                enable_geo_routing: true,
                ..RoutingConfig::default()
            };
            routing
                .regions
                .insert("r".into(), zones.iter().map(|z| z.to_string()).collect());
            let mut router = Smart::from_config(&routing, || Balancer::new(Strategy::RoundRobin))
                .zone_rng(Arc::new(SeededRandom::new(seed)));
            if on {
                router = router.zone_aware(ZoneAwareConfig::enabled());
            }
            let per_zone = 30_000;
            let mut load: HashMap<String, usize> = HashMap::new();
            let mut cross = 0usize;
            for zone in zones {
                let route = Route {
                    zone: Some(zone),
                    ..Route::default()
                };
                for _ in 0..per_zone {
                    let Some(routed) = router.pick(&snapshot, &route) else {
                        continue;
                    };
                    if routed.instance().meta("zone") != Some(zone) {
                        cross += 1;
                    }
                    *load.entry(routed.instance().id.clone()).or_default() += 1;
                }
            }
            let requests = (3 * per_zone) as f64;
            let mean = requests / total as f64;
            let hottest = load.values().copied().max().unwrap_or(0) as f64;
            println!(
                "| {} | {} | {:.1} % | {:.1} % | {:.2}x |",
                sizes.map(|n| n.to_string()).join(" / "),
                if on { "on" } else { "off" },
                100.0 * cross as f64 / requests,
                100.0 * shortfall,
                hottest / mean,
            );
        }
    }
    // The same through the config file, as chi select and chi proxy read it.
    let config = Config::from_yaml(
        "service_discovery:\n  load_balancer:\n    zone_aware:\n      enabled: true\n",
    )?;
    assert!(config.load_balancer.zone_aware.enabled);
    println!();
    Ok(())
}

fn subsetting(seed: u64) {
    println!("## Deterministic subsetting: 1,000 clients x 1,000 instances, k = 20\n");
    let clients: Vec<String> = (0..1000).map(|i| format!("client-{seed}-{i}")).collect();
    let instances: Vec<String> = (0..1000).map(|i| format!("10.{seed}.0.{i}")).collect();
    let k = 20;
    let s = Subsetting::new(k, &clients);
    let before = s.all(&instances);
    let mut count = vec![0usize; instances.len()];
    for (_, subset) in &before {
        for &i in subset {
            count[i] += 1;
        }
    }
    let mean = (clients.len() * k) as f64 / instances.len() as f64;
    let (min, max) = (
        count.iter().copied().min().unwrap_or(0),
        count.iter().copied().max().unwrap_or(0),
    );
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| clients per instance (mean {mean:.0}) | {min} .. {max} ({:+.0} % .. {:+.0} %) |",
        100.0 * (min as f64 / mean - 1.0),
        100.0 * (max as f64 / mean - 1.0)
    );

    let names = |list: &[String], subset: &[usize]| -> BTreeSet<String> {
        subset.iter().map(|&i| list[i].clone()).collect()
    };
    // Sixty different instances leaving, one at a time: the spread, not one lucky draw.
    let mut moves: Vec<(usize, usize)> = (0..60)
        .map(|r| {
            let mut fewer = instances.clone();
            fewer.remove((seed as usize * 7919 + r * 104_729) % instances.len());
            let after = s.all(&fewer);
            let (mut moved, mut entries) = (0, 0);
            for ((_, a), (_, b)) in before.iter().zip(&after) {
                let (x, y) = (names(&instances, a), names(&fewer, b));
                if x != y {
                    moved += 1;
                }
                entries += x.difference(&y).count();
            }
            (moved, entries)
        })
        .collect();
    moves.sort_unstable();
    let pct = |m: usize| 100.0 * m as f64 / clients.len() as f64;
    let mean = moves.iter().map(|m| m.0).sum::<usize>() as f64 / moves.len() as f64;
    let (median, worst) = (moves[moves.len() / 2].0, moves[moves.len() - 1].0);
    let under = moves
        .iter()
        .filter(|m| m.0 * 100 < 3 * clients.len())
        .count();
    println!(
        "| one instance leaves (60 in turn): subsets changed | mean {mean:.1} of {} ({:.1} %), median {median}, worst {worst} ({:.1} %); under 3 % in {under} of 60 |",
        clients.len(),
        100.0 * mean / clients.len() as f64,
        pct(worst),
    );
    let entries = moves.iter().map(|m| m.1).sum::<usize>() as f64 / moves.len() as f64;
    println!(
        "| one instance leaves: subset entries changed | mean {entries:.1} of {} ({:.2} %) |",
        clients.len() * k,
        100.0 * entries / (clients.len() * k) as f64
    );

    let mut others = clients.clone();
    let gone = others.remove((seed as usize * 104_729) % clients.len());
    let after: HashMap<String, Vec<usize>> = Subsetting::new(k, &others)
        .all(&instances)
        .into_iter()
        .collect();
    let moved = before
        .iter()
        .filter(|(id, _)| *id != gone)
        .filter(|(id, a)| {
            after
                .get(id)
                .is_none_or(|b| names(&instances, a) != names(&instances, b))
        })
        .count();
    println!(
        "| one client leaves: other subsets changed | {moved} of {} ({:.1} %) |\n",
        others.len(),
        100.0 * moved as f64 / others.len() as f64
    );
}
