//! The precomputed pools: the library's own predicates are recognised, and the picks made from
//! the pools are the picks the general path makes with the same predicate.

use super::*;
use crate::balance::usable::Predicate;

#[test]
fn the_library_predicates_are_recognised_and_others_are_not() {
    assert_eq!(Request::new().predicate(), Predicate::Healthy);
    assert_eq!(Request::with_key(b"k").predicate(), Predicate::Healthy);
    assert_eq!(Request::any().predicate(), Predicate::All);
    assert_eq!(Request::any().key(b"k").predicate(), Predicate::All);
    let own = |i: &Instance| i.health.is_usable();
    assert_eq!(Request::new().filter(&own).predicate(), Predicate::Custom);
    let never = |_: &Instance| false;
    assert_eq!(Request::any().filter(&never).predicate(), Predicate::Custom);
}

/// Round robin, random, P2C and least connections over a set with instances down: the
/// health-checking request never picks them, "any" does, and a hand-made predicate saying the
/// same as the default (the general path) picks the same set.
#[test]
fn pool_picks_match_the_general_path() {
    let mut list = weighted(&[1, 2, 0, 3, 1, 1, 2, 1]);
    for i in [1, 4, 6] {
        list[i].health = HealthStatus::Unhealthy;
    }
    let by_health = |i: &Instance| i.health.is_usable();
    for s in [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::P2c,
        Strategy::LeastConnections,
    ] {
        let b = balancer(s, 5);
        let picked = |request: &Request<'_>| {
            let mut seen = vec![0u32; list.len()];
            for _ in 0..4000 {
                seen[b.pick_list(&list, 1, request).expect("some").index()] += 1;
            }
            seen.iter().map(|&c| c > 0).collect::<Vec<_>>()
        };
        let want = [true, false, false, true, false, true, false, true];
        assert_eq!(picked(&Request::new()), want, "{s}");
        assert_eq!(picked(&Request::new().filter(&by_health)), want, "{s}");
        let every = [true, true, false, true, true, true, true, true];
        assert_eq!(picked(&Request::any()), every, "{s}");
        let snap = Snapshot::new(list.clone(), 1);
        let mut config = BalancerConfig::new(s);
        config.health_check_enabled = false;
        let off = Balancer::with_config(config).expect("valid");
        let mut seen = vec![false; list.len()];
        for _ in 0..4000 {
            seen[off.pick(&snap, None).expect("some").index()] = true;
        }
        assert_eq!(
            seen, every,
            "{s}: health checking off picks the unhealthy too"
        );
    }
}

/// Random over a set with instances down is uniform over the others (the redraws of the general
/// path made the instance after a run of down ones a little likelier).
#[test]
fn random_is_uniform_over_the_healthy() {
    let mut list = set(6);
    for i in [1, 2] {
        list[i].health = HealthStatus::Unhealthy;
    }
    let r = Random::with_rng(&list, Arc::new(SeededRandom::new(9)));
    let c = counts(
        6,
        (0..40_000).map(|_| r.select(&list, &Request::new()).expect("4 up")),
    );
    assert_eq!((c[1], c[2]), (0, 0));
    for i in [0, 3, 4, 5] {
        assert!((9_000..11_000).contains(&c[i]), "{c:?}");
    }
}

/// A selector handed a shorter list than its own (a misuse the trait allows) answers in range or
/// not at all.
#[test]
fn a_shorter_list_gets_an_index_in_range_or_none() {
    let list = set(8);
    for s in Strategy::ALL {
        let selector = BalancerConfig::new(s).build(&list, None);
        for _ in 0..200 {
            if let Some(i) = selector.select(&list[..3], &Request::new()) {
                assert!(i < 3, "{s}: {i}");
            }
            if let Some(i) = selector.select(&[], &Request::any()) {
                panic!("{s}: {i} from an empty list");
            }
        }
    }
}
