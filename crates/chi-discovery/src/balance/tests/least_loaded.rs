//! Least connections over its tournament tree: the tree's answer is a true minimum after every
//! change, ties spread when every instance is busy, the counts of requests that outlive a rebuild
//! reach the new tree, and concurrent guards leave the tree exact once they are done.

use super::*;
use crate::balance::min_tree::{ABSENT, LoadTree, cost};

/// The least cost among `list`'s healthy instances of non-zero weight, by an exact scan.
fn min_cost(lc: &LeastConnections, list: &[Instance]) -> Option<u64> {
    let loads = lc.loads()?;
    list.iter()
        .enumerate()
        .filter(|(_, i)| i.effective_weight() > 0 && i.health.is_usable())
        .filter_map(|(k, i)| Some(cost(loads.get(k)?.in_flight(), i.effective_weight())))
        .min()
}

fn cost_of_pick(lc: &LeastConnections, list: &[Instance], idx: usize) -> u64 {
    let load = lc
        .loads()
        .and_then(|l| l.get(idx))
        .map_or(0, |l| l.in_flight());
    cost(load, list[idx].effective_weight())
}

#[test]
fn the_tree_finds_the_minimum_and_ignores_absent_leaves() {
    let tree = LoadTree::new(&[5, 3, ABSENT, 3, 9], vec![1; 5]);
    assert!(tree.is_consistent());
    let mut seen = [0; 5];
    for r in 0..64u64 {
        seen[tree
            .lightest(r.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .expect("some")] += 1;
    }
    assert_eq!((seen[0], seen[2], seen[4]), (0, 0, 0));
    assert!(seen[1] > 0 && seen[3] > 0, "ties spread: {seen:?}");
    assert_eq!(LoadTree::new(&[ABSENT], vec![1]).lightest(0), None);
    assert_eq!(LoadTree::new(&[7], vec![1]).lightest(0), Some(0));
    assert_eq!(LoadTree::new(&[], vec![]).lightest(0), None);
}

/// Random acquires and releases on a weighted set with instances down: after each, the pick's
/// cost is the exact minimum and the tree is consistent.
#[test]
fn least_connections_picks_a_true_minimum_after_every_change() {
    let mut list = weighted(&[1, 2, 3, 1, 0, 5, 1, 2, 1, 1, 4, 1, 1]);
    list[3].health = HealthStatus::Unhealthy;
    list[8].health = HealthStatus::Unhealthy;
    let lc = LeastConnections::build(
        &list,
        None,
        Arc::new(SeededRandom::new(11)),
        PeakEwmaConfig::default(),
    );
    let rng = SeededRandom::new(3);
    let mut held: Vec<(usize, Option<InFlight>)> = Vec::new();
    for step in 0..3000 {
        if held.is_empty() || !rng.next_u64().is_multiple_of(3) {
            let (idx, guard) = lc.pick(&list, &Request::new()).expect("healthy ones");
            assert!(list[idx].health.is_usable() && list[idx].effective_weight() > 0);
            held.push((idx, guard));
        } else {
            let k = (rng.next_u64() % held.len() as u64) as usize;
            held.swap_remove(k);
        }
        let idx = lc.select(&list, &Request::new()).expect("some");
        assert_eq!(
            Some(cost_of_pick(&lc, &list, idx)),
            min_cost(&lc, &list),
            "step {step}"
        );
    }
    drop(held);
    let idx = lc.select(&list, &Request::new()).expect("some");
    assert_eq!(cost_of_pick(&lc, &list, idx), 0);
}

/// Health checking off (picks accept every instance) with some known unhealthy: the tree counts
/// every candidate, so the picks answer from it (the exact minimum over all of them) and not from
/// a scan.
#[test]
fn with_health_checking_off_the_tree_counts_every_candidate() {
    let mut list = weighted(&[1, 2, 3, 1, 0, 5, 1, 2, 1, 1, 4, 1, 1]);
    list[3].health = HealthStatus::Unhealthy;
    list[8].health = HealthStatus::Unhealthy;
    let lc = LeastConnections::over_all(
        &list,
        None,
        Arc::new(SeededRandom::new(5)),
        PeakEwmaConfig::default(),
    );
    let tree = lc.tree_for_tests().expect("a tree");
    let loads = lc.loads().expect("load-aware");
    // Everything busy but the unhealthy instance 3: only the tree over all finds it.
    let held: Vec<_> = (0..list.len())
        .filter(|&i| i != 3)
        .filter_map(|i| loads.get(i).map(|l| l.start()))
        .collect();
    assert!(tree.is_consistent());
    for _ in 0..100 {
        assert_eq!(lc.select(&list, &Request::any()), Some(3));
    }
    // The tree's positions are every candidate's (instance 3 at position 3; over the healthy
    // ones only, position 3 would be instance 5, busy).
    assert_eq!(tree.leaf(3), 0, "instance 3 is counted");
    assert_eq!(tree.lightest(0), Some(3));
    let b = Balancer::with_config(BalancerConfig {
        health_check_enabled: false,
        ..BalancerConfig::new(Strategy::LeastConnections)
    })
    .expect("valid");
    let snapshot = Snapshot::new(list.clone(), 1);
    let picks: Vec<_> = (0..list.len() - 1)
        .filter_map(|_| b.pick(&snapshot, None))
        .collect();
    // One each, on every candidate of non-zero weight, the unhealthy ones included.
    let mut seen: Vec<usize> = picks.iter().map(|p| p.index()).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12]);
    drop((held, picks));
}

/// Every instance busy, evenly: the picks spread over them instead of going to one.
#[test]
fn least_connections_spreads_ties_when_all_are_busy() {
    let list = set(64);
    let lc = LeastConnections::build(
        &list,
        None,
        Arc::new(SeededRandom::new(8)),
        PeakEwmaConfig::default(),
    );
    let loads = lc.loads().expect("load-aware");
    let held: Vec<_> = (0..64)
        .filter_map(|i| loads.get(i).map(|l| (l.start(), l.start())))
        .collect();
    let c = counts(
        64,
        (0..64_000).map(|_| lc.select(&list, &Request::new()).expect("64")),
    );
    assert!(c.iter().all(|&x| x > 500), "{c:?}");
    drop(held);
}

/// Requests taken under one table and finished after a rebuild refresh the new table's tree: the
/// instance they were on is idle again for the new table.
#[test]
fn counts_that_outlive_a_rebuild_reach_the_new_tree() {
    let b = Balancer::new(Strategy::LeastConnections);
    let list = set(3);
    let held: Vec<_> = (0..6)
        .map(|_| b.pick_list(&list, 1, &Request::new()).expect("3"))
        .collect();
    let mut bigger = list.clone();
    bigger.push(inst("i3"));
    // The new instance is idle; then two picks land on it, and the others have two each.
    let on_new: Vec<_> = (0..2)
        .map(|_| b.pick_list(&bigger, 2, &Request::new()).expect("4"))
        .collect();
    assert!(on_new.iter().all(|p| p.instance().id == "i3"));
    // An outdated list is answered without taking the cells' tree.
    let old = b.pick_list(&list, 1, &Request::new()).expect("3");
    drop(old);
    // The requests taken under the first table end: i0..i2 are idle in the new one.
    drop(held);
    let next: Vec<_> = (0..3)
        .map(|_| b.pick_list(&bigger, 2, &Request::new()).expect("4"))
        .collect();
    let mut ids: Vec<&str> = next.iter().map(|p| p.instance().id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["i0", "i1", "i2"]);
    drop((next, on_new));
}

/// Threads taking and dropping guards at random: once they are done, the tree is exact (every
/// leaf the cost of its count, every inner node the minimum of its children).
#[test]
fn concurrent_guards_leave_the_tree_exact() {
    let list = weighted(&[1, 2, 1, 3, 1, 1, 2, 1, 1, 1, 5, 1, 1, 1, 2, 1, 1]);
    let lc = Arc::new(LeastConnections::new(&list));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (lc, list) = (lc.clone(), list.clone());
            std::thread::spawn(move || {
                let rng = SeededRandom::new(t);
                let mut held = Vec::new();
                for _ in 0..20_000 {
                    if held.len() < 8 && rng.next_u64().is_multiple_of(2) {
                        held.push(lc.pick(&list, &Request::new()).expect("some"));
                    } else if !held.is_empty() {
                        let k = (rng.next_u64() % held.len() as u64) as usize;
                        held.swap_remove(k);
                    }
                }
                // Keep a few in flight so the final state is not all zeros.
                held.truncate(3);
                held
            })
        })
        .collect();
    let held: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("no panic"))
        .collect();
    let tree = lc.tree_for_tests().expect("a tree");
    assert!(tree.is_consistent());
    let loads = lc.loads().expect("load-aware");
    for (k, i) in list.iter().enumerate() {
        let count = loads.get(k).map_or(0, |l| l.in_flight());
        assert_eq!(tree.leaf(k), cost(count, i.effective_weight()), "leaf {k}");
    }
    drop(held);
    assert!(tree.is_consistent());
    assert!((0..list.len()).all(|k| tree.leaf(k) == 0));
}

/// Threads holding requests while the list changes under them (rebuilds hand the cells to a new
/// tree): once every request has ended, a new pick finds every instance idle, through the tree.
#[test]
fn counts_stay_exact_across_concurrent_rebuilds() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let balancer = Arc::new(Balancer::new(Strategy::LeastConnections));
    let revision = Arc::new(AtomicU64::new(1));
    let lists: Arc<Vec<Vec<Instance>>> = Arc::new(
        (0..8)
            .map(|r| (0..(6 + r % 5)).map(|i| inst(&format!("i{i}"))).collect())
            .collect(),
    );
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (b, rev, lists) = (balancer.clone(), revision.clone(), lists.clone());
            std::thread::spawn(move || {
                let rng = SeededRandom::new(t);
                let mut held = Vec::new();
                for k in 0..20_000u64 {
                    if t == 0 && k % 500 == 0 {
                        rev.fetch_add(1, Ordering::SeqCst);
                    }
                    let r = rev.load(Ordering::SeqCst);
                    let list = &lists[(r % 8) as usize];
                    if held.len() < 6 && rng.next_u64().is_multiple_of(2) {
                        if let Some(mut p) = b.pick_list(list, r, &Request::new()) {
                            held.push(p.take_in_flight());
                        }
                    } else if !held.is_empty() {
                        let k = (rng.next_u64() % held.len() as u64) as usize;
                        held.swap_remove(k);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no panic");
    }
    let r = revision.load(Ordering::SeqCst) + 1;
    let list = &lists[(r % 8) as usize];
    // Hold one request per instance: if a count had leaked or the tree lagged, some instance
    // would get two before another got one.
    let picks: Vec<_> = (0..list.len())
        .map(|_| balancer.pick_list(list, r, &Request::new()).expect("some"))
        .collect();
    let mut seen: Vec<usize> = picks.iter().map(|p| p.index()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..list.len()).collect::<Vec<_>>());
}
