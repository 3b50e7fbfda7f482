//! Fair ties: on an idle fleet of equal instances every strategy that does not hash spreads its
//! picks evenly, through the whole `Balancer` path; and the load-aware ones break equal costs
//! uniformly in every way they compare (the tree, the scan, P2C's pair, peak EWMA's cold cells).

use super::*;

const PICKS: usize = 30_000;

/// `PICKS` picks of `strategy` over `list` (revision `revision`), each request finished before the
/// next: the count per instance.
fn idle_counts(
    b: &Balancer,
    list: &[Instance],
    revision: u64,
    request: &Request<'_>,
) -> Vec<usize> {
    counts(
        list.len(),
        (0..PICKS).map(|_| b.pick_in(list, revision, request).expect("some").index()),
    )
}

/// Every count within 5 % of an even share (about 6 standard deviations of a uniform draw).
fn assert_even(c: &[usize], what: &str) {
    let even = c.iter().sum::<usize>() as f64 / c.len() as f64;
    for &x in c {
        assert!(
            (x as f64 - even).abs() <= even * 0.05,
            "{what}: {c:?}, expected about {even:.0} each"
        );
    }
}

fn idle_fleet_is_even(strategy: Strategy) {
    assert!(!strategy.uses_key());
    let list = set(3);
    let b = balancer(strategy, 21);
    assert_even(
        &idle_counts(&b, &list, 1, &Request::new()),
        strategy.as_str(),
    );
    // A request with its own predicate takes each selector's general path.
    let any = |_: &Instance| true;
    let c = idle_counts(&b, &list, 1, &Request::new().filter(&any));
    assert_even(&c, &format!("{strategy}, own predicate"));
}

#[test]
fn round_robin_spreads_an_idle_fleet_evenly() {
    idle_fleet_is_even(Strategy::RoundRobin);
}

#[test]
fn random_spreads_an_idle_fleet_evenly() {
    idle_fleet_is_even(Strategy::Random);
}

#[test]
fn weighted_round_robin_spreads_an_idle_fleet_evenly() {
    idle_fleet_is_even(Strategy::WeightedRoundRobin);
}

#[test]
fn weighted_random_spreads_an_idle_fleet_evenly() {
    idle_fleet_is_even(Strategy::WeightedRandom);
}

#[test]
fn least_connections_spreads_an_idle_fleet_evenly() {
    idle_fleet_is_even(Strategy::LeastConnections);
}

#[test]
fn p2c_spreads_an_idle_fleet_evenly() {
    idle_fleet_is_even(Strategy::P2c);
}

/// The quickstart's case: no latency sample yet. Costs decayed from the instants the cells were
/// made gave the first-made instance two thirds and the last none.
#[test]
fn peak_ewma_spreads_a_cold_idle_fleet_evenly() {
    idle_fleet_is_even(Strategy::PeakEwma);
}

/// An instance that joins a cold fleet later is as cold as the others, not costlier: it gets its
/// share at once (with estimates decayed from creation it never won a comparison).
#[test]
fn peak_ewma_gives_a_cold_joiner_its_share() {
    let b = balancer(Strategy::PeakEwma, 4);
    let three = set(3);
    assert_even(&idle_counts(&b, &three, 1, &Request::new()), "before");
    std::thread::sleep(Duration::from_millis(5));
    let four = set(4);
    assert_even(&idle_counts(&b, &four, 2, &Request::new()), "after a join");
}

/// A cold cell holds the default estimate, undecayed, and its first sample replaces it; a sampled
/// cell compares with a cold one by their estimates as of now.
#[test]
fn peak_ewma_cold_cells_hold_the_default_until_sampled() {
    let config = PeakEwmaConfig {
        default_rtt: Duration::from_millis(30),
        decay: Duration::from_secs(1),
    };
    let list = set(2);
    let p2c = P2c::build(
        &list,
        P2cCost::PeakEwma,
        None,
        Arc::new(SeededRandom::new(6)),
        config,
    );
    let loads = p2c.loads().expect("load-aware");
    let cold = loads.get(1).expect("cell");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(cold.latency_estimate(&config), config.default_rtt);
    // Below the default, and yet not averaged with it.
    let warm = loads.get(0).expect("cell");
    warm.observe(Duration::from_millis(10), &config);
    let e = warm.latency_estimate(&config);
    assert!(e <= Duration::from_millis(10), "{e:?}");
    // 10 ms (decaying) against the cold 30 ms: the sampled instance wins every pair.
    let c = counts(
        2,
        (0..1000).map(|_| p2c.select(&list, &Request::new()).expect("2")),
    );
    assert_eq!(c, [1000, 0]);
    // A peak above the default: now the cold one wins.
    warm.observe(Duration::from_secs(1), &config);
    assert_eq!(p2c.select(&list, &Request::new()), Some(1));
}

/// Every instance busy with the same count, the set's size no power of two: the tree's walk ends
/// on each as often (a coin per level gave the one beside the padding half of the picks).
#[test]
fn least_connections_spreads_an_evenly_busy_fleet_evenly() {
    for n in [3, 5, 6, 7] {
        let list = set(n);
        let lc = LeastConnections::build(
            &list,
            None,
            Arc::new(SeededRandom::new(n as u64)),
            PeakEwmaConfig::default(),
        );
        let loads = lc.loads().expect("load-aware");
        let held: Vec<_> = (0..n)
            .filter_map(|i| loads.get(i).map(|l| l.start()))
            .collect();
        let c = counts(
            n,
            (0..PICKS).map(|_| lc.select(&list, &Request::new()).expect("some")),
        );
        assert_even(&c, &format!("{n} busy"));
        drop(held);
    }
}

/// The exact scan (a request's own predicate) breaks ties uniformly even when heavier instances
/// sit between them (scanning from a random start gave the tie after a heavier one the share of
/// both).
#[test]
fn least_connections_scan_breaks_separated_ties_evenly() {
    let list = set(3);
    let lc = LeastConnections::build(
        &list,
        None,
        Arc::new(SeededRandom::new(17)),
        PeakEwmaConfig::default(),
    );
    let loads = lc.loads().expect("load-aware");
    let held: Vec<_> = [0, 1, 1, 1, 1, 2]
        .iter()
        .filter_map(|&i| loads.get(i).map(|l| l.start()))
        .collect();
    let any = |_: &Instance| true;
    let request = Request::new().filter(&any);
    let c = counts(
        3,
        (0..PICKS).map(|_| lc.select(&list, &request).expect("some")),
    );
    assert_eq!(c[1], 0, "{c:?}");
    assert_even(&[c[0], c[2]], "ties on 0 and 2");
    drop(held);
}
