//! The steps behind `Smart` (deal, ramp, plan): each runs only when its own inputs changed.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::routing::slow_start::SlowStartConfig;

fn instances(n: u16) -> Vec<Instance> {
    (1..=n)
        .map(|p| Instance::new("svc", "10.0.0.1", p).with_health(Healthy))
        .collect()
}

fn ids(list: &[Instance]) -> Vec<&str> {
    list.iter().map(|i| i.id.as_str()).collect()
}

fn subsetting_router(source: &Arc<SubsetSource>) -> Smart {
    Smart::from_config(&RoutingConfig::default(), || {
        Balancer::new(Algo::RoundRobin)
    })
    .subset(source.clone())
}

/// (deals made, plans built)
fn runs(router: &Smart) -> (u64, u64) {
    let steps = router.steps();
    (steps.deal.runs, steps.planner.built)
}

#[test]
fn a_new_revision_without_subsetting_deals_and_plans_once() {
    let router = Smart::from_config(&RoutingConfig::default(), || {
        Balancer::new(Algo::RoundRobin)
    });
    let first = Snapshot::new(instances(3), 1);
    for _ in 0..10 {
        assert!(router.pick(&first, &Route::new()).is_some());
    }
    assert_eq!(runs(&router), (1, 1));
    let second = Snapshot::new(instances(4), 2);
    for _ in 0..10 {
        assert!(router.pick(&second, &Route::new()).is_some());
    }
    assert_eq!(runs(&router), (2, 2));
}

#[test]
fn a_snapshot_that_deals_the_same_instances_plans_nothing() {
    let source = Arc::new(SubsetSource::new("me", 2));
    source.set_clients(&["a", "b", "c", "d"]);
    let router = subsetting_router(&source);
    let list = instances(10);
    let first = Snapshot::new(list.clone(), 1);
    let mine = router.route(&first, &Route::new()).expect("route");
    let dealt: Vec<String> = mine.instances().iter().map(|i| i.id.clone()).collect();
    assert_eq!(dealt.len(), 2);
    drop(mine);
    assert_eq!(runs(&router), (1, 1));

    // An instance outside this client's subset changes: a new revision, the same deal.
    let mut changed = list.clone();
    let other = changed
        .iter_mut()
        .find(|i| !dealt.contains(&i.id))
        .expect("an instance outside the subset");
    other.weight = 7;
    let second = Snapshot::new(changed, 2);
    let leaf = router.route(&second, &Route::new()).expect("route");
    assert_eq!(ids(leaf.instances()), dealt, "the same subset");
    assert_eq!(leaf.revision(), 2, "the view moved on to the new revision");
    drop(leaf);
    assert_eq!(runs(&router), (2, 1), "dealt again, planned nothing");

    // An instance inside it changes: a new plan.
    let mut inside = list.clone();
    let mine = inside
        .iter_mut()
        .find(|i| dealt.contains(&i.id))
        .expect("an instance of the subset");
    mine.weight = 3;
    let third = Snapshot::new(inside, 3);
    assert!(router.pick(&third, &Route::new()).is_some());
    assert_eq!(runs(&router), (3, 2));
}

#[test]
fn a_client_list_that_deals_the_same_instances_plans_nothing() {
    let clients = ["a", "b", "c", "d", "e", "f"];
    let source = Arc::new(SubsetSource::new("me", 2));
    source.set_clients(&clients);
    let router = subsetting_router(&source);
    let list = instances(12);
    let snapshot = Snapshot::new(list.clone(), 1);
    assert!(router.pick(&snapshot, &Route::new()).is_some());
    assert_eq!(runs(&router), (1, 1));

    // One client more that leaves this client's subset as it was (found by dealing aside).
    let ids: Vec<&str> = ids(&list);
    let with = |extra: &str| {
        let mut all: Vec<&str> = clients.to_vec();
        all.extend([extra, "me"]);
        let mut mine = Subsetting::new(2, &all).subset_of("me", &ids);
        mine.sort_unstable();
        mine
    };
    let mut now: Vec<&str> = clients.to_vec();
    now.push("me");
    let mut before = Subsetting::new(2, &now).subset_of("me", &ids);
    before.sort_unstable();
    let same = (0..100)
        .map(|n| format!("client-{n}"))
        .find(|c| with(c) == before)
        .expect("a client that changes nothing for this one");
    let changes = (0..100)
        .map(|n| format!("client-{n}"))
        .find(|c| with(c) != before)
        .expect("a client that changes this one's subset");

    let mut grown: Vec<&str> = clients.to_vec();
    grown.push(&same);
    source.set_clients(&grown);
    assert!(router.pick(&snapshot, &Route::new()).is_some());
    assert_eq!(runs(&router), (2, 1), "dealt again, planned nothing");

    let mut other: Vec<&str> = clients.to_vec();
    other.push(&changes);
    source.set_clients(&other);
    assert!(router.pick(&snapshot, &Route::new()).is_some());
    assert_eq!(runs(&router), (3, 2), "a new deal, a new plan");
}

/// Slow start re-plans at the ramp steps that change a weight: the weights change with time,
/// the deal does not.
#[tokio::test(start_paused = true)]
async fn ramp_steps_plan_again_without_dealing_again() {
    let config = SlowStartConfig::new(Duration::from_secs(10));
    let source = Arc::new(SubsetSource::new("me", 20));
    source.set_clients(&["a", "b"]);
    let router = Smart::from_config(&RoutingConfig::default(), || {
        Balancer::new(Algo::WeightedRoundRobin)
    })
    .subset(source)
    .slow_start(config);
    let warm = Snapshot::new(instances(4), 1);
    assert!(router.pick(&warm, &Route::new()).is_some());
    let joined = Snapshot::new(instances(5), 2);
    assert!(router.pick(&joined, &Route::new()).is_some());
    let (deals, mut plans) = runs(&router);
    assert_eq!((deals, plans), (2, 2));
    let step = Duration::from_millis(500);
    let mut replanned = 0;
    for n in 1..=25u32 {
        tokio::time::advance(step).await;
        for _ in 0..3 {
            assert!(router.pick(&joined, &Route::new()).is_some());
        }
        let (d, p) = runs(&router);
        assert_eq!(d, deals, "no deal at ramp step {n}");
        // A plan exactly when the joining instance's factor moved (it starts flat at 10 %).
        let moved = config.factor(step * n) != config.factor(step * (n - 1));
        assert_eq!(p, plans + u64::from(moved), "plans at ramp step {n}");
        replanned += u32::from(moved);
        plans = p;
    }
    assert_eq!(replanned, 18, "from 1.5 s to the end of the 10 s window");
}
