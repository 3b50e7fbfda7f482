//! `orca_weighted_round_robin`: A58's weight, blackout, expiry and mean-weight rules on tokio's
//! paused clock, the shares a table gives, and invariants over random reports (proptest).

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::{ProptestConfig, prop, prop_assert, proptest};

use super::selector::quantize;
use super::*;
use crate::balance::{Balancer, BalancerConfig, Request, SeededRandom, Select, Strategy};
use crate::instance::{HealthStatus, Instance};

fn list(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|i| Instance::new("svc", "10.0.0.1", 8000 + i as u16).with_id(format!("i{i}")))
        .collect()
}

fn load(qps: f64, utilization: f64) -> ReportedLoad {
    ReportedLoad {
        qps,
        cpu_utilization: utilization,
        ..ReportedLoad::default()
    }
}

/// Rules with no blackout and a 100 ms update period, so tables follow reports at once.
fn quick() -> OrcaConfig {
    OrcaConfig {
        blackout_period: Duration::ZERO,
        weight_update_period: Duration::from_millis(100),
        ..OrcaConfig::default()
    }
}

fn shares(selector: &dyn Select, instances: &[Instance], picks: usize) -> Vec<usize> {
    let mut counts = vec![0; instances.len()];
    for _ in 0..picks {
        let i = selector
            .select(instances, &Request::new())
            .expect("a usable instance");
        counts[i] += 1;
    }
    counts
}

#[test]
fn the_weight_is_a58s_formula() {
    assert_eq!(load(100.0, 0.5).weight(1.0), 200.0);
    // Application utilization wins when above 0; CPU otherwise.
    let app = ReportedLoad {
        application_utilization: 0.25,
        ..load(100.0, 0.5)
    };
    assert_eq!(app.weight(1.0), 400.0);
    // Errors add eps / qps * penalty to the utilization: 10 errors of 100 at penalty 2 add 0.2.
    let errors = ReportedLoad {
        eps: 10.0,
        ..load(100.0, 0.3)
    };
    assert!((errors.weight(2.0) - 200.0).abs() < 1e-9);
    assert_eq!(errors.weight(0.0), 100.0 / 0.3);
    // Nothing to weigh by: no qps, no utilization, or not numbers.
    for bad in [
        load(0.0, 0.5),
        load(100.0, 0.0),
        load(f64::NAN, 0.5),
        load(100.0, f64::INFINITY),
        load(-5.0, 0.5),
    ] {
        assert_eq!(bad.weight(1.0), 0.0, "{bad:?}");
    }
}

#[test]
fn instances_without_a_weight_get_the_mean_and_fewer_than_two_weigh_alike() {
    assert_eq!(&*quantize(&[400.0, 200.0, 0.0]), &[100, 50, 75]);
    assert_eq!(&*quantize(&[400.0, 0.0, 0.0]), &[1, 1, 1]);
    assert_eq!(&*quantize(&[0.0, 0.0]), &[1, 1]);
    assert_eq!(&*quantize(&[]), &[] as &[u64]);
    // Scaled to 1/100 of the largest, never below 1.
    assert_eq!(&*quantize(&[1e9, 1.0]), &[100, 1]);
}

#[test]
fn the_config_is_checked_at_each_field() {
    assert!(OrcaConfig::default().validate().is_ok());
    let bad = OrcaConfig {
        error_utilization_penalty: -1.0,
        ..OrcaConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .starts_with("error_utilization_penalty: must be a number >= 0")
    );
    let bad = OrcaConfig {
        weight_expiration_period: Duration::ZERO,
        ..OrcaConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .starts_with("weight_expiration_period")
    );
    // Shorter update periods run at 100 ms, as A58 says.
    let fast = OrcaConfig {
        weight_update_period: Duration::from_millis(5),
        ..OrcaConfig::default()
    };
    assert_eq!(fast.update_period(), MIN_UPDATE_PERIOD);
}

#[tokio::test(start_paused = true)]
async fn a_weight_counts_after_the_blackout_and_stops_when_reports_stop() {
    let reports = LoadReports::new(OrcaConfig::default());
    assert_eq!(reports.weight("a"), None);
    reports.record("a", &load(100.0, 0.5));
    // Blacked out for 10 s, while it keeps reporting.
    tokio::time::advance(Duration::from_secs(9)).await;
    reports.record("a", &load(100.0, 0.5));
    assert_eq!(reports.weight("a"), None);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(reports.weight("a"), Some(200.0));
    // The last report counts until it is 3 minutes old.
    reports.record("a", &load(100.0, 0.25));
    tokio::time::advance(Duration::from_secs(179)).await;
    assert_eq!(reports.weight("a"), Some(400.0));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(reports.weight("a"), None);
    // Reports again: a new blackout.
    reports.record("a", &load(100.0, 0.5));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(reports.weight("a"), None);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(reports.weight("a"), Some(200.0));
}

#[tokio::test(start_paused = true)]
async fn a_report_after_an_unread_expiry_still_starts_a_new_blackout() {
    let reports = LoadReports::new(OrcaConfig::default());
    reports.record("a", &load(100.0, 0.5));
    // Nobody reads the weight while it expires; the next report must not inherit the old start.
    tokio::time::advance(Duration::from_secs(200)).await;
    reports.record("a", &load(100.0, 0.5));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(reports.weight("a"), None);
}

/// A balancer of the strategy over `reports`.
fn balancer_over(reports: &Arc<LoadReports>, seed: u64) -> Balancer {
    Balancer::with_config(BalancerConfig {
        load_reports: Some(reports.clone()),
        rng: Arc::new(SeededRandom::new(seed)),
        ..BalancerConfig::new(Strategy::OrcaWeightedRoundRobin)
    })
    .expect("valid")
}

/// Picks of `balancer` from `instances` (revision 1), counted per instance.
fn picks(balancer: &Balancer, instances: &[Instance], n: usize) -> Vec<usize> {
    let mut counts = vec![0; instances.len()];
    for _ in 0..n {
        let p = balancer
            .pick_in(instances, 1, &Request::new())
            .expect("a usable instance");
        counts[p.index()] += 1;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn reports_of_0_2_0_4_0_8_at_equal_qps_give_4_2_1() {
    let instances = list(3);
    let reports = Arc::new(LoadReports::new(quick()));
    let balancer = balancer_over(&reports, 7);
    // No report yet: round robin.
    assert_eq!(picks(&balancer, &instances, 300), vec![100, 100, 100]);
    for (id, u) in [("i0", 0.2), ("i1", 0.4), ("i2", 0.8)] {
        reports.record(id, &load(100.0, u));
    }
    // The next table is handed to the balancer at the first check after the update period.
    tokio::time::advance(Duration::from_millis(100)).await;
    let _ = picks(&balancer, &instances, 16);
    assert_eq!(picks(&balancer, &instances, 700), vec![400, 200, 100]);
    // Unchanged weights: the table stays (the rotation goes on where it was).
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(picks(&balancer, &instances, 700), vec![400, 200, 100]);
}

#[tokio::test(start_paused = true)]
async fn the_table_waits_for_the_update_period() {
    let instances = list(2);
    let reports = Arc::new(LoadReports::new(OrcaConfig {
        weight_update_period: Duration::from_secs(1),
        ..quick()
    }));
    let balancer = balancer_over(&reports, 1);
    let _ = picks(&balancer, &instances, 1);
    reports.record("i0", &load(100.0, 0.1));
    reports.record("i1", &load(100.0, 0.9));
    tokio::time::advance(Duration::from_millis(900)).await;
    assert_eq!(
        picks(&balancer, &instances, 64),
        vec![32, 32],
        "not before the period is over"
    );
    tokio::time::advance(Duration::from_millis(100)).await;
    let _ = picks(&balancer, &instances, 16);
    // 100 : 11.
    let counts = picks(&balancer, &instances, 1110);
    assert!(counts[0].abs_diff(1000) <= 1, "{counts:?}");
}

/// From 1,000 instances the successor is built on the blocking pool: picks go on meanwhile, and
/// the new table arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tables_are_built_off_the_picking_thread() {
    let instances = list(1_000);
    let reports = Arc::new(LoadReports::new(quick()));
    let balancer = balancer_over(&reports, 5);
    let _ = picks(&balancer, &instances, 1);
    // The first half at 0.2, the second at 0.8: 4 / 5 of the picks to the first half, over a
    // period of the table (100 : 25 is 4 : 1, 2,500 slots; shorter windows of an EDF table of
    // many equal instances are lumpy).
    for (i, instance) in instances.iter().enumerate() {
        let u = if i < 500 { 0.2 } else { 0.8 };
        reports.record(&instance.id, &load(100.0, u));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let counts = picks(&balancer, &instances, 2_500);
        let first: usize = counts[..500].iter().sum();
        if first == 2_000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "first half got {first} of 2,500"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_selector_alone_keeps_the_weights_it_was_built_with() {
    let instances = list(2);
    let reports = Arc::new(LoadReports::new(OrcaConfig {
        weight_update_period: Duration::from_millis(100),
        ..quick()
    }));
    reports.record("i0", &load(100.0, 0.1));
    reports.record("i1", &load(100.0, 0.9));
    let selector =
        OrcaWeightedRoundRobin::build(&instances, reports.clone(), &SeededRandom::new(1));
    assert_eq!(selector.weights(), &[100, 11]);
    reports.record("i1", &load(100.0, 0.1));
    tokio::time::advance(Duration::from_millis(150)).await;
    let _ = shares(&selector, &instances, 64);
    assert_eq!(
        selector.weights(),
        &[100, 11],
        "no balancer to hand a successor to"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unusable_instance_passes_its_turns_to_the_others() {
    let mut instances = list(3);
    let reports = Arc::new(LoadReports::new(quick()));
    for (id, u) in [("i0", 0.2), ("i1", 0.4), ("i2", 0.8)] {
        reports.record(id, &load(100.0, u));
    }
    instances[0].health = HealthStatus::Unhealthy;
    let selector = OrcaWeightedRoundRobin::build(&instances, reports, &SeededRandom::new(3));
    let counts = shares(&selector, &instances, 300);
    assert_eq!(counts[0], 0);
    assert_eq!(counts[1], 200, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn weights_follow_an_instance_across_membership_changes() {
    let mut config = BalancerConfig::new(Strategy::OrcaWeightedRoundRobin);
    config.orca = quick();
    let balancer = Balancer::with_config(config).expect("valid");
    let reports = balancer.load_reports().expect("a store").clone();
    let two = list(2);
    let _ = balancer.pick_in(&two, 1, &Request::new());
    reports.record("i0", &load(300.0, 0.5));
    reports.record("i1", &load(100.0, 0.5));
    // A third instance joins (a new revision): the two keep their weights, the third the mean.
    let three = list(3);
    let mut counts = [0usize; 3];
    for _ in 0..800 {
        let p = balancer
            .pick_in(&three, 2, &Request::new())
            .expect("picked");
        counts[p.index()] += 1;
    }
    // 600 : 200 : the mean, 400 (100 : 33 : 67 in the table), within a pick of a smooth
    // sequence entered at a random place.
    let expected = [400.0, 132.0, 268.0];
    for (got, want) in counts.iter().zip(expected) {
        assert!((*got as f64 - want).abs() <= 1.0, "{counts:?}");
    }
    assert_eq!(reports.len(), 3);
    assert!(Balancer::new(Strategy::RoundRobin).load_reports().is_none());
}

#[tokio::test(start_paused = true)]
async fn slots_of_instances_that_left_go_once_their_reports_expire() {
    let reports = Arc::new(LoadReports::new(quick()));
    let rng = SeededRandom::new(1);
    let old = OrcaWeightedRoundRobin::build(&list(3), reports.clone(), &rng);
    reports.record("i2", &load(100.0, 0.5));
    drop(old);
    // i2 left but reported lately: kept (it may come back within the expiry).
    let _two = OrcaWeightedRoundRobin::build(&list(2), reports.clone(), &rng);
    assert_eq!(reports.len(), 3);
    tokio::time::advance(Duration::from_secs(181)).await;
    let _again = OrcaWeightedRoundRobin::build(&list(2), reports.clone(), &rng);
    assert_eq!(reports.len(), 2);
}

#[test]
fn out_of_band_stores_want_no_per_request_reports() {
    let oob = LoadReports::new(OrcaConfig {
        out_of_band: true,
        ..OrcaConfig::default()
    });
    assert!(!oob.per_request());
    assert!(LoadReports::new(OrcaConfig::default()).per_request());
    let reporter = Arc::new(oob).reporter("a");
    assert_eq!(reporter.instance_id(), "a");
    assert!(!reporter.per_request());
}

/// An opener that counts its open streams and hands each one report at once.
#[derive(Default)]
struct Opener {
    opened: std::sync::Mutex<Vec<String>>,
    live: Arc<std::sync::atomic::AtomicUsize>,
}

struct Live(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl OutOfBand for Opener {
    fn open(&self, instance: &Instance, reporter: LoadReporter) -> Option<OobHandle> {
        self.opened.lock().expect("lock").push(instance.id.clone());
        reporter.record(&load(100.0, 0.5));
        self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(Box::new(Live(self.live.clone())))
    }
}

#[tokio::test(start_paused = true)]
async fn out_of_band_streams_follow_the_instances_tables_hold() {
    let opener = Arc::new(Opener::default());
    let reports = Arc::new(
        LoadReports::new(OrcaConfig {
            out_of_band: true,
            ..quick()
        })
        .out_of_band(opener.clone()),
    );
    let rng = SeededRandom::new(1);
    let three = OrcaWeightedRoundRobin::build(&list(3), reports.clone(), &rng);
    assert_eq!(reports.streams(), 3);
    assert_eq!(
        reports.weight("i1"),
        Some(200.0),
        "a stream's report counts"
    );
    // The same instances again: no new stream.
    let again = OrcaWeightedRoundRobin::build(&list(3), reports.clone(), &rng);
    assert_eq!(opener.opened.lock().expect("lock").len(), 3);
    drop((three, again));
    // i2 leaves: its stream closes once no table holds it.
    let _two = OrcaWeightedRoundRobin::build(&list(2), reports.clone(), &rng);
    assert_eq!(reports.streams(), 2);
    assert_eq!(opener.live.load(std::sync::atomic::Ordering::SeqCst), 2);
    // i0 moves: a stream to its new address.
    let mut moved = list(2);
    moved[0].port = 9999;
    let _moved = OrcaWeightedRoundRobin::build(&moved, reports.clone(), &rng);
    assert_eq!(opener.opened.lock().expect("lock").len(), 4);
    assert_eq!(opener.live.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The store owns its streams: dropping it closes them (no cycle through the reporters).
    drop((_two, _moved));
    drop(reports);
    assert_eq!(opener.live.load(std::sync::atomic::Ordering::SeqCst), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn quantized_weights_stay_in_range(ws in prop::collection::vec(prop::num::f64::ANY, 0..300)) {
        let q = quantize(&ws);
        prop_assert!(q.len() == ws.len());
        prop_assert!(q.iter().all(|w| (1..=100).contains(w)));
    }

    #[test]
    fn any_reports_give_in_range_picks(
        reported in prop::collection::vec((prop::num::f64::ANY, prop::num::f64::ANY, prop::num::f64::ANY), 1..60),
        picks in 1usize..200,
    ) {
        let instances = list(reported.len());
        let reports = Arc::new(LoadReports::new(OrcaConfig { weight_update_period: Duration::from_millis(1), ..quick() }));
        for (i, (qps, eps, u)) in reported.iter().enumerate() {
            reports.record(&format!("i{i}"), &ReportedLoad { qps: *qps, eps: *eps, cpu_utilization: *u, application_utilization: 0.0 });
        }
        let selector = OrcaWeightedRoundRobin::build(&instances, reports, &SeededRandom::new(9));
        for _ in 0..picks {
            let i = selector.select(&instances, &Request::new());
            prop_assert!(i.is_some_and(|i| i < instances.len()));
        }
    }
}
