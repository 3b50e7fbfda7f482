//! Tests of the balancing module, one file per topic: the rotations (exact sequences and
//! shares), the hashing strategies (stability, disruption, tables), invariants over random sets
//! (proptest); the `Balancer` itself and concurrency are here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::error::Error;
use crate::instance::{HealthStatus, Instance};
use crate::snapshot::Snapshot;

mod cache;
mod fair;
mod hashing;
mod least_loaded;
mod pools;
mod properties;
mod rotation;

fn inst(id: &str) -> Instance {
    Instance::new("svc", "10.0.0.1", 80).with_id(id)
}

fn set(n: usize) -> Vec<Instance> {
    (0..n).map(|i| inst(&format!("i{i}"))).collect()
}

fn weighted(ws: &[u32]) -> Vec<Instance> {
    ws.iter()
        .enumerate()
        .map(|(i, &w)| inst(&format!("i{i}")).with_weight(w))
        .collect()
}

fn ids(list: &[Instance], picks: impl IntoIterator<Item = usize>) -> Vec<String> {
    picks.into_iter().map(|i| list[i].id.clone()).collect()
}

fn counts(n: usize, picks: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut c = vec![0; n];
    for p in picks {
        c[p] += 1;
    }
    c
}

fn balancer(strategy: Strategy, seed: u64) -> Balancer {
    let mut config = BalancerConfig::new(strategy);
    config.rng = Arc::new(SeededRandom::new(seed));
    Balancer::with_config(config).expect("valid")
}

#[test]
fn strategy_names_round_trip() {
    for s in Strategy::ALL {
        assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
        assert_eq!(s.to_string(), s.as_str());
    }
    assert_eq!(
        " Round-Robin ".parse::<Strategy>(),
        Ok(Strategy::RoundRobin)
    );
    let err = "fastest".parse::<Strategy>().unwrap_err();
    for s in Strategy::ALL {
        assert!(err.contains(s.as_str()), "{err}");
    }
    assert!(err.contains("fastest"));
}

#[test]
fn consistent_hash_config_validates() {
    let ok = ConsistentHashConfig::default();
    assert_eq!(
        (ok.partition_count, ok.replication_factor, ok.load),
        (271, 20, 1.25)
    );
    ok.validate().expect("spec values");
    let bad = |c: ConsistentHashConfig, field: &str| {
        let e = c.validate().unwrap_err();
        assert!(e.starts_with(field), "{e}");
    };
    bad(ConsistentHashConfig { load: 1.0, ..ok }, "load");
    bad(ConsistentHashConfig { load: 0.9, ..ok }, "load");
    bad(
        ConsistentHashConfig {
            load: f64::NAN,
            ..ok
        },
        "load",
    );
    bad(
        ConsistentHashConfig {
            partition_count: 0,
            ..ok
        },
        "partition_count",
    );
    bad(
        ConsistentHashConfig {
            replication_factor: 0,
            ..ok
        },
        "replication_factor",
    );
    let mut cfg = BalancerConfig::new(Strategy::ConsistentHash);
    cfg.consistent_hash.load = 0.5;
    let e = Balancer::with_config(cfg).unwrap_err();
    assert_eq!(e, "consistent_hash.load: must be > 1.0, got 0.5");
}

#[test]
fn empty_zero_weight_and_all_unhealthy_sets_give_none() {
    let zero = weighted(&[0, 0, 0]);
    let sick: Vec<Instance> = set(3)
        .into_iter()
        .map(|i| i.with_health(HealthStatus::Unhealthy))
        .collect();
    for s in Strategy::ALL {
        let b = balancer(s, 1);
        assert!(b.pick_in(&[], 1, &Request::with_key(b"k")).is_none(), "{s}");
        assert!(
            b.pick_in(&zero, 2, &Request::with_key(b"k")).is_none(),
            "{s}"
        );
        assert!(
            b.pick_in(&sick, 3, &Request::with_key(b"k")).is_none(),
            "{s}"
        );
        assert!(b.pick_in(&sick, 3, &Request::new()).is_none(), "{s}");
        // Health checking off: the unhealthy ones are picked.
        assert!(b.pick_in(&sick, 3, &Request::any()).is_some(), "{s}");
        let empty = Snapshot::new(Vec::new(), 9);
        match b.pick_or_err("user-service", &empty, None) {
            Err(Error::NoInstance { service }) => assert_eq!(service, "user-service"),
            other => panic!("{s}: {other:?}"),
        }
    }
}

#[test]
fn weight_zero_is_never_picked() {
    let list = weighted(&[1, 0, 3, 0]);
    for s in Strategy::ALL {
        let b = balancer(s, 7);
        for k in 0..500u32 {
            let p = b
                .pick_in(&list, 1, &Request::with_key(&k.to_le_bytes()))
                .expect("picked");
            assert!(p.index() == 0 || p.index() == 2, "{s} picked {}", p.index());
        }
    }
}

#[test]
fn unhealthy_instances_are_skipped_without_rebuild() {
    let mut list = set(5);
    for s in Strategy::ALL {
        let b = balancer(s, 3);
        list[2].health = HealthStatus::Healthy;
        let _ = b.pick_in(&list, 1, &Request::new());
        // Same revision, so the table is not rebuilt: a predicate excludes instance 2.
        let not_two = |i: &Instance| i.id != "i2";
        let mut seen = vec![0; 5];
        for k in 0..2000u32 {
            let key = k.to_le_bytes();
            let p = b
                .pick_in(&list, 1, &Request::with_key(&key).filter(&not_two))
                .expect("picked");
            seen[p.index()] += 1;
        }
        assert_eq!(seen[2], 0, "{s}: {seen:?}");
        assert!(
            seen.iter().filter(|&&c| c > 0).count() >= 3,
            "{s}: {seen:?}"
        );
        assert_eq!(b.revision(), Some(1));
    }
}

#[test]
fn balancer_rebuilds_only_when_the_revision_moves_and_keeps_counts() {
    let b = Balancer::new(Strategy::LeastConnections);
    let list = set(2);
    let snap = Snapshot::new(list.clone(), 10);
    let held = b.pick(&snap, None).expect("2");
    let held_id = held.instance().id.clone();
    assert_eq!(b.revision(), Some(10));
    // A new list with the same instances plus one: the held request still counts.
    let mut bigger = list.clone();
    bigger.push(inst("i2"));
    let snap2 = Snapshot::new(bigger, 11);
    let picks: Vec<_> = (0..2).map(|_| b.pick(&snap2, None).expect("3")).collect();
    assert_eq!(b.revision(), Some(11));
    assert!(
        picks.iter().all(|p| p.instance().id != held_id),
        "the loaded one waits"
    );
    // An older snapshot is answered without swapping back.
    let old = b.pick(&snap, None).expect("2");
    assert_eq!(b.revision(), Some(11));
    drop((held, picks, old));
}

#[test]
fn balancer_hash_strategies_are_sticky_by_key() {
    let snap = Snapshot::new(set(20), 1);
    for s in [
        Strategy::ConsistentHash,
        Strategy::RingHash,
        Strategy::Maglev,
    ] {
        let b = Balancer::new(s);
        for k in 0..100u32 {
            let key = k.to_le_bytes();
            let a = b.pick(&snap, Some(&key)).expect("20").index();
            let c = b.pick(&snap, Some(&key)).expect("20").index();
            assert_eq!(a, c, "{s}");
        }
    }
}

#[test]
fn concurrent_picks_while_the_set_is_swapped() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    for s in Strategy::ALL {
        let balancer = Arc::new(Balancer::new(s));
        let current = Arc::new(arc_swap::ArcSwap::from_pointee(Snapshot::new(set(8), 1)));
        let stop = Arc::new(AtomicBool::new(false));
        let picks = Arc::new(AtomicU64::new(0));
        let pickers: Vec<_> = (0..4)
            .map(|t| {
                let (b, cur, stop, picks) = (
                    balancer.clone(),
                    current.clone(),
                    stop.clone(),
                    picks.clone(),
                );
                std::thread::spawn(move || {
                    let mut k = t as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let snap = cur.load_full();
                        k += 1;
                        let key = k.to_le_bytes();
                        if let Some(p) = b.pick(&snap, Some(&key)) {
                            assert!(snap.iter().any(|i| i.id == p.instance().id));
                            assert!(p.instance().effective_weight() > 0);
                            picks.fetch_add(1, Ordering::Relaxed);
                        } else {
                            assert!(snap.iter().all(|i| i.effective_weight() == 0));
                        }
                    }
                })
            })
            .collect();
        // Swap at least 200 times, and until the pickers made picks (threads may start late on a
        // loaded machine), within a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut rev = 2u64;
        while rev < 200
            || (picks.load(Ordering::Relaxed) < 1000 && std::time::Instant::now() < deadline)
        {
            let n = (rev % 13) as usize;
            let list: Vec<Instance> = (0..n)
                .map(|i| inst(&format!("i{}", (i as u64 + rev) % 17)).with_weight((i % 3) as u32))
                .collect();
            current.store(Arc::new(Snapshot::new(list, rev)));
            std::thread::yield_now();
            rev += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for p in pickers {
            p.join().expect("no panic in a picker");
        }
        assert!(picks.load(Ordering::Relaxed) > 0, "{s}");
        // Load-aware strategies: every guard dropped, so no count leaked.
        let snap = current.load_full();
        let _ = balancer.pick(&snap, None);
    }
}
