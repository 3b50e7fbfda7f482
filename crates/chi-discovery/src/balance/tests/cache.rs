//! The per-thread table cache of `Balancer`: a swapped table is seen by every thread, balancers
//! sharing a slot stay correct, and a predicate that picks from a balancer (re-entrance) works.

use super::*;

/// More balancers than a thread has slots, each over its own list, picked in turns: every pick
/// comes from the balancer's own list.
#[test]
fn balancers_sharing_slots_pick_from_their_own_lists() {
    let n = 3 * crate::balance::table_cache::SLOTS;
    let lists: Vec<Vec<Instance>> = (0..n)
        .map(|b| (0..3).map(|i| inst(&format!("b{b}-i{i}"))).collect())
        .collect();
    let balancers: Vec<Balancer> = (0..n)
        .map(|_| Balancer::new(Strategy::RoundRobin))
        .collect();
    for round in 0..4 {
        for (b, (balancer, list)) in balancers.iter().zip(&lists).enumerate() {
            let p = balancer.pick_list(list, 1, &Request::new()).expect("3");
            assert_eq!(p.instance().id, format!("b{b}-i{}", round % 3));
        }
    }
}

/// A new revision swaps the table; a thread that cached the old one sees the new one on its next
/// pick, and an older list is still answered from it (a throwaway table).
#[test]
fn a_swapped_table_is_seen_by_other_threads() {
    let balancer = Arc::new(Balancer::new(Strategy::RoundRobin));
    let one = set(2);
    let two: Vec<Instance> = (0..3).map(|i| inst(&format!("new{i}"))).collect();
    assert!(balancer.pick_list(&one, 1, &Request::new()).is_some());
    let other = {
        let b = balancer.clone();
        let one = one.clone();
        std::thread::spawn(move || {
            // Cache revision 1 on this thread.
            b.pick_list(&one, 1, &Request::new()).map(|p| p.index())
        })
    };
    assert!(other.join().expect("no panic").is_some());
    assert!(balancer.pick_list(&two, 2, &Request::new()).is_some());
    let b = balancer.clone();
    let seen = std::thread::spawn(move || {
        let ids: Vec<String> = (0..3)
            .map(|_| {
                b.pick_list(&two, 2, &Request::new())
                    .expect("3")
                    .instance()
                    .id
                    .clone()
            })
            .collect();
        let old = b
            .pick_list(&one, 1, &Request::new())
            .map(|p| p.instance().id.clone());
        (ids, old, b.revision())
    })
    .join()
    .expect("no panic");
    assert_eq!(seen.0, ["new1", "new2", "new0"]);
    assert!(seen.1.is_some_and(|id| id.starts_with('i')));
    assert_eq!(seen.2, Some(2));
}

/// A predicate that itself picks from a balancer, the same one included, on the same thread.
#[test]
fn a_predicate_may_pick_from_a_balancer() {
    let list = set(4);
    let outer = Balancer::new(Strategy::Random);
    let inner = Balancer::new(Strategy::RoundRobin);
    let _ = outer.pick_list(&list, 1, &Request::new());
    let nested = |i: &Instance| {
        let a = inner.pick_list(&list, 1, &Request::new()).is_some();
        let b = outer.pick_list(&list, 1, &Request::any()).is_some();
        a && b && i.id != "i0"
    };
    for _ in 0..100 {
        let p = outer
            .pick_list(&list, 1, &Request::new().filter(&nested))
            .expect("3 accepted");
        assert_ne!(p.instance().id, "i0");
    }
}
