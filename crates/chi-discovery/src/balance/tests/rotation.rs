//! The rotations and the load-aware strategies: exact sequences, shares with instances down,
//! least connections and P2C under load.

use super::*;

#[test]
fn round_robin_exact_sequence() {
    let list = set(3);
    let rr = RoundRobin::new(&list);
    let seq = ids(
        &list,
        (0..7).map(|_| rr.select(&list, &Request::new()).expect("3")),
    );
    assert_eq!(seq, ["i0", "i1", "i2", "i0", "i1", "i2", "i0"]);
    // An unhealthy instance passes its turn to the next one, and the rotation moves past that
    // one too: the two left share evenly.
    let mut list = list;
    list[1].health = HealthStatus::Unhealthy;
    let rr = RoundRobin::new(&list);
    let seq = ids(
        &list,
        (0..6).map(|_| rr.select(&list, &Request::new()).expect("2")),
    );
    assert_eq!(seq, ["i0", "i2", "i0", "i2", "i0", "i2"]);
}

/// Round robin and smooth weighted round robin with some instances down: the others keep their
/// shares among themselves (even, or by weight), whoever sits next to a down one.
#[test]
fn rotations_keep_shares_even_with_instances_down() {
    let mut list = set(6);
    for i in [1, 2, 4] {
        list[i].health = HealthStatus::Unhealthy;
    }
    let rr = RoundRobin::new(&list);
    let mut seen = [0u32; 6];
    for _ in 0..3000 {
        seen[rr.select(&list, &Request::new()).expect("3 up")] += 1;
    }
    assert_eq!(seen, [1000, 0, 0, 1000, 0, 1000]);

    let mut list = weighted(&[5, 1, 1]);
    list[1].health = HealthStatus::Unhealthy;
    let wrr = WeightedRoundRobin::new(&list);
    let mut seen = [0u32; 3];
    for _ in 0..600 {
        seen[wrr.select(&list, &Request::new()).expect("2 up")] += 1;
    }
    assert_eq!(seen, [500, 0, 100]);
}

#[test]
fn weighted_round_robin_is_nginx_smooth_sequence() {
    let list = vec![
        inst("a").with_weight(5),
        inst("b").with_weight(1),
        inst("c").with_weight(1),
    ];
    let wrr = WeightedRoundRobin::new(&list);
    assert!(wrr.is_exact());
    assert_eq!(wrr.period(), 7);
    let seq = ids(
        &list,
        (0..14).map(|_| wrr.select(&list, &Request::new()).expect("3")),
    );
    assert_eq!(
        seq,
        [
            "a", "a", "b", "a", "c", "a", "a", "a", "a", "b", "a", "c", "a", "a"
        ]
    );
    // The `weight` meta key wins over the field; weights are gcd-reduced.
    let list = vec![
        inst("a").with_weight(1).with_meta("weight", "4"),
        inst("b").with_weight(2),
    ];
    let wrr = WeightedRoundRobin::new(&list);
    assert_eq!(wrr.period(), 3);
    let seq = ids(
        &list,
        (0..3).map(|_| wrr.select(&list, &Request::new()).expect("2")),
    );
    assert_eq!(seq, ["a", "b", "a"]);
}

#[test]
fn weighted_round_robin_large_sets_use_a_bounded_schedule() {
    let ws: Vec<u32> = (0..3000).map(|i| 1 + (i % 97) * 13).collect();
    let list = weighted(&ws);
    let wrr = WeightedRoundRobin::new(&list);
    assert!(!wrr.is_exact());
    assert!(wrr.period() <= 1 << 21, "{}", wrr.period());
    let n = wrr.period() * 2;
    let c = counts(
        list.len(),
        (0..n).map(|_| wrr.select(&list, &Request::new()).expect("n")),
    );
    let total: f64 = ws.iter().map(|&w| f64::from(w)).sum();
    for (i, &w) in ws.iter().enumerate() {
        let want = n as f64 * f64::from(w) / total;
        assert!(
            (c[i] as f64 - want).abs() <= 2.0 + want * 0.02,
            "{i}: {} vs {want}",
            c[i]
        );
    }
}

#[test]
fn random_is_deterministic_with_a_seed_and_uniform() {
    let list = set(4);
    let a = Random::with_rng(&list, Arc::new(SeededRandom::new(42)));
    let b = Random::with_rng(&list, Arc::new(SeededRandom::new(42)));
    let sa: Vec<_> = (0..50).map(|_| a.select(&list, &Request::new())).collect();
    let sb: Vec<_> = (0..50).map(|_| b.select(&list, &Request::new())).collect();
    assert_eq!(sa, sb);
    let c = counts(
        4,
        (0..40_000).map(|_| a.select(&list, &Request::new()).expect("4")),
    );
    for x in c {
        assert!((9_400..10_600).contains(&x), "{x}");
    }
}

#[test]
fn least_connections_counts_with_guards() {
    let list = set(3);
    let lc = LeastConnections::new(&list);
    let (first, g1) = lc.pick(&list, &Request::new()).expect("3");
    let (second, g2) = lc.pick(&list, &Request::new()).expect("3");
    let (third, g3) = lc.pick(&list, &Request::new()).expect("3");
    let mut all = vec![first, second, third];
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2], "one request on each before any gets two");
    let loads = lc.loads().expect("load-aware");
    assert!((0..3).all(|i| loads.get(i).expect("cell").in_flight() == 1));
    drop(g2);
    assert_eq!(loads.get(second).expect("cell").in_flight(), 0);
    let (again, _g) = lc.pick(&list, &Request::new()).expect("3");
    assert_eq!(again, second);
    drop((g1, g3));
}

#[test]
fn least_connections_ties_are_spread() {
    let list = set(4);
    let lc = LeastConnections::build(
        &list,
        None,
        Arc::new(SeededRandom::new(5)),
        PeakEwmaConfig::default(),
    );
    // Nothing in flight: every instance ties; the picks must not all go to the first.
    let c = counts(
        4,
        (0..4000).map(|_| lc.select(&list, &Request::new()).expect("4")),
    );
    assert!(c.iter().all(|&x| x > 700), "{c:?}");
}

#[test]
fn least_connections_is_weighted() {
    let list = weighted(&[3, 1]);
    let lc = LeastConnections::new(&list);
    let guards: Vec<_> = (0..400)
        .map(|_| lc.pick(&list, &Request::new()).expect("2"))
        .collect();
    let on_first = guards.iter().filter(|(i, _)| *i == 0).count();
    assert!((295..=305).contains(&on_first), "{on_first}");
}

#[test]
fn p2c_avoids_the_loaded_instance() {
    let list = set(3);
    let p2c = P2c::build(
        &list,
        P2cCost::LeastRequest,
        None,
        Arc::new(SeededRandom::new(11)),
        PeakEwmaConfig::default(),
    );
    let loads = p2c.loads().expect("load-aware");
    let held: Vec<InFlight> = (0..50)
        .map(|_| loads.get(0).expect("cell").start())
        .collect();
    let c = counts(
        3,
        (0..3000).map(|_| p2c.select(&list, &Request::new()).expect("3")),
    );
    // Instance 0 would only win against itself, and P2C draws two distinct instances.
    assert_eq!(c[0], 0, "{c:?}");
    assert!(c[1] > 1300 && c[2] > 1300, "{c:?}");
    drop(held);
    assert_eq!(loads.get(0).expect("cell").in_flight(), 0);
}

#[test]
fn peak_ewma_steers_away_from_slow_instances_and_forgives() {
    let list = set(2);
    let config = PeakEwmaConfig {
        default_rtt: Duration::from_millis(30),
        decay: Duration::from_millis(2),
    };
    let p2c = P2c::build(
        &list,
        P2cCost::PeakEwma,
        None,
        Arc::new(SeededRandom::new(13)),
        config,
    );
    let loads = p2c.loads().expect("load-aware");
    // A peak is taken at once.
    loads
        .get(0)
        .expect("cell")
        .observe(Duration::from_secs(5), &config);
    loads
        .get(1)
        .expect("cell")
        .observe(Duration::from_millis(1), &config);
    let c = counts(
        2,
        (0..1000).map(|_| p2c.select(&list, &Request::new()).expect("2")),
    );
    assert!(c[1] > 990, "{c:?}");
    // Without samples the estimate decays toward zero: the slow instance gets traffic again.
    std::thread::sleep(Duration::from_millis(120));
    assert!(loads.get(0).expect("cell").latency_estimate(&config) < Duration::from_micros(1));
    let b = Balancer::with_config(BalancerConfig {
        peak_ewma: config,
        ..BalancerConfig::new(Strategy::PeakEwma)
    })
    .expect("valid");
    let p = b.pick_list(&list, 1, &Request::new()).expect("2");
    assert_eq!(p.in_flight().expect("guard").load().in_flight(), 1);
    p.observe(Duration::from_millis(2));
}
