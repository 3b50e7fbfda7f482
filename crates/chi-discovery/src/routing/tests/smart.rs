//! `Smart`: version -> geo -> balancer, its fallbacks and panic mode, rebuilding per revision,
//! and the config file driving it.

use super::*;

fn round_robin() -> impl Fn(&[Instance], Option<&[u8]>) -> Option<usize> + Send + Sync + 'static {
    let next = AtomicUsize::new(0);
    move |list: &[Instance], _key: Option<&[u8]>| {
        (!list.is_empty()).then(|| next.fetch_add(1, Ordering::Relaxed) % list.len())
    }
}

type Rr = Box<dyn Fn(&[Instance], Option<&[u8]>) -> Option<usize> + Send + Sync>;

fn smart(config: &RoutingConfig) -> Smart<Rr> {
    Smart::from_config(config, || Box::new(round_robin()) as Rr)
}

#[test]
fn smart_rules_table() {
    let snap = Snapshot::new(fleet(), 1);
    let router = smart(&config());
    // (version, region, zone, expected ids, version step, geo step)
    type Case<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        &'a [&'a str],
        VersionStep,
        GeoStep,
    );
    let cases: &[Case<'_>] = &[
        (
            None,
            None,
            None,
            &["a", "b", "d"],
            VersionStep::Default,
            GeoStep::Unlocated,
        ),
        (
            Some("v1"),
            None,
            Some("us-east-1a"),
            &["a"],
            VersionStep::Requested,
            GeoStep::SameZone,
        ),
        (
            Some("v2"),
            None,
            Some("us-east-1a"),
            &["c"],
            VersionStep::Requested,
            GeoStep::SameZone,
        ),
        (
            Some("v2"),
            None,
            Some("us-east-1b"),
            &["c"],
            VersionStep::Requested,
            GeoStep::ZoneToRegion,
        ),
        (
            Some("v1"),
            Some("us-west-2"),
            None,
            &["d"],
            VersionStep::Requested,
            GeoStep::SameRegion,
        ),
        (
            Some("v2"),
            Some("us-west-2"),
            None,
            &["c"],
            VersionStep::Requested,
            GeoStep::ToNeighbour,
        ),
        (
            Some("v3"),
            Some("us-east-1"),
            None,
            &["f"],
            VersionStep::Requested,
            GeoStep::ToAnyRegion,
        ),
        (
            Some("v9"),
            Some("ap-south-1"),
            None,
            &["a", "b"],
            VersionStep::ToDefault,
            GeoStep::ToNeighbour,
        ),
    ];
    for (version, region, zone, expected, vs, gs) in cases {
        let route = Route {
            version: *version,
            region: *region,
            zone: *zone,
            key: None,
        };
        let sub = router.route(&snap, &route).expect("non-empty");
        assert_eq!(ids_of(sub.instances()), *expected, "{route:?}");
        assert_eq!(sub.decision().version, *vs, "{route:?}");
        assert_eq!(sub.decision().geo, *gs, "{route:?}");
        assert!(!sub.decision().panic);
        // The precomputed leaf equals the per-call computation of the two stages.
        let (v, _) = router.version_rules().narrow(snap.instances(), &route);
        let (g, _) = router.geo_rules().narrow(&v, &route);
        assert_eq!(ids(&g), *expected, "{route:?}");
        let picked = router.pick(&snap, &route).expect("pick");
        assert!(expected.contains(&picked.instance().id.as_str()));
        assert_eq!(picked.strategy(), "custom");
    }
}

#[test]
fn smart_panics_over_all_when_none_is_usable() {
    let all_down: Vec<Instance> = fleet()
        .into_iter()
        .map(|i| i.with_health(Unhealthy))
        .collect();
    let snap = Snapshot::new(all_down, 7);
    let router = smart(&config());
    let sub = router
        .route(&snap, &Route::new().version("v2").region("us-west-2"))
        .expect("panic routes anyway");
    assert!(sub.decision().panic);
    assert!(sub.decision().fell_back());
    assert_eq!(sub.decision().version, VersionStep::Requested);
    assert_eq!(sub.decision().geo, GeoStep::ToNeighbour);
    assert_eq!(
        ids_of(sub.instances()),
        ["c"],
        "version and geo still apply in panic"
    );
    assert!(
        router
            .route(&Snapshot::new(vec![], 8), &Route::new())
            .is_none()
    );
}

#[test]
fn with_health_checks_off_routing_keeps_unhealthy_instances() {
    // Half the fleet unhealthy: skipped by default, routed over like the rest when health checks
    // are off (`load_balancer.health_check_enabled: false`), and no panic either way.
    let half: Vec<Instance> = fleet()
        .into_iter()
        .enumerate()
        .map(|(n, i)| {
            if n % 2 == 0 {
                i.with_health(Unhealthy)
            } else {
                i
            }
        })
        .collect();
    let snap = Snapshot::new(half.clone(), 3);
    let on = smart(&RoutingConfig::default());
    let off = smart(&RoutingConfig::default()).skip_unhealthy(false);
    assert!(on.skips_unhealthy() && !off.skips_unhealthy());
    let healthy = ids_of(
        &half
            .iter()
            .filter(|i| i.health.is_usable())
            .cloned()
            .collect::<Vec<_>>(),
    );
    let routed_on = on.route(&snap, &Route::new()).expect("routed");
    assert!(!routed_on.decision().panic);
    assert_eq!(ids_of(routed_on.instances()), healthy);
    let routed_off = off.route(&snap, &Route::new()).expect("routed");
    assert!(!routed_off.decision().panic);
    assert_eq!(routed_off.instances().len(), half.len());
    let mut picked = std::collections::BTreeSet::new();
    for _ in 0..half.len() * 2 {
        picked.insert(
            off.pick(&snap, &Route::new())
                .expect("pick")
                .instance()
                .id
                .clone(),
        );
    }
    assert_eq!(
        picked.len(),
        half.len(),
        "every instance, unhealthy ones too"
    );
}

#[test]
fn smart_rebuilds_only_when_the_revision_moves_and_keeps_balancers() {
    let builds = std::sync::Arc::new(AtomicUsize::new(0));
    let b = builds.clone();
    let router = Smart::new(Version::new("v1"), Geo::disabled(), move || {
        b.fetch_add(1, Ordering::Relaxed);
        Box::new(round_robin()) as Rr
    });
    let snap = Snapshot::new(fleet(), 1);
    let first = router.route(&snap, &Route::new()).expect("route");
    let made = builds.load(Ordering::Relaxed);
    assert!(made > 0);
    for _ in 0..100 {
        let again = router.route(&snap, &Route::new()).expect("route");
        assert_eq!(again.revision(), first.revision());
    }
    // Round robin over a, b, d in turn: one balancer, no rebuild between picks.
    let seq: Vec<String> = (0..6)
        .map(|_| {
            router
                .pick(&snap, &Route::new())
                .expect("pick")
                .instance()
                .id
                .clone()
        })
        .collect();
    assert_eq!(seq[0..3], seq[3..6]);
    assert_eq!(
        builds.load(Ordering::Relaxed),
        made,
        "no new balancers on the same revision"
    );
    // A new revision with the same versions reuses every leaf balancer.
    let mut changed = fleet();
    changed.pop();
    let snap2 = Snapshot::new(changed, 2);
    let sub = router
        .route(&snap2, &Route::new().version("v2"))
        .expect("route");
    assert_eq!(ids_of(sub.instances()), ["c"]);
    assert_eq!(
        builds.load(Ordering::Relaxed),
        made,
        "leaf balancers carried over"
    );
    // An older snapshot still routes, without replacing the newer plan.
    assert_eq!(
        router
            .route(&snap, &Route::new().version("v2"))
            .expect("route")
            .revision(),
        1
    );
    assert_eq!(
        router
            .route(&snap2, &Route::new())
            .expect("route")
            .revision(),
        2
    );
}

#[test]
fn pick_usable_skips_rejected_instances_but_never_fails_for_it() {
    let snap = Snapshot::new(fleet(), 1);
    let router = smart(&config());
    let route = Route::new().version("v1").region("us-east-1");
    for _ in 0..20 {
        let p = router
            .pick_usable(&snap, &route, &|i: &Instance| i.id != "a")
            .expect("pick");
        assert_eq!(p.instance().id, "b");
    }
    // Everything rejected: still a pick from the leaf.
    let p = router
        .pick_usable(&snap, &route, &|_: &Instance| false)
        .expect("pick");
    assert!(["a", "b"].contains(&p.instance().id.as_str()));
}

#[test]
fn the_spec_config_file_drives_the_router() {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/chi-config.yaml"
    ));
    let config = crate::config::Config::from_yaml(text).expect("the example config parses");
    let router = smart(&config.routing);
    assert_eq!(router.version_rules().default_version(), "v1");
    assert_eq!(router.geo_rules().neighbours("us-west-2"), ["us-east-1"]);
    assert_eq!(
        router.geo_rules().region_of_zone("us-east-1c"),
        Some("us-east-1")
    );
    let snap = Snapshot::new(fleet(), 1);
    let sub = router
        .route(&snap, &Route::new().zone("us-west-2b"))
        .expect("route");
    assert_eq!(ids_of(sub.instances()), ["d"]);
    assert_eq!(sub.decision().geo, GeoStep::ZoneToRegion);
}

#[test]
fn real_balancers_pick_within_the_leaf() {
    let snap = Snapshot::new(fleet(), 1);
    let router = Smart::with_balancer(&config(), BalancerConfig::new(Algo::RoundRobin))
        .expect("valid settings");
    let route = Route::new().version("v1").region("us-east-1");
    let seq: Vec<String> = (0..4)
        .map(|_| {
            router
                .pick(&snap, &route)
                .expect("pick")
                .instance()
                .id
                .clone()
        })
        .collect();
    assert_eq!(seq[0..2], seq[2..4], "round robin over the leaf a, b");
    let mut two = seq[0..2].to_vec();
    two.sort();
    assert_eq!(two, ["a", "b"]);
    let p = router.pick(&snap, &route).expect("pick");
    assert_eq!(p.strategy(), "round_robin");

    // Least connections: the guard counts in flight, and a held pick steers the next one.
    let lc = Smart::with_balancer(&config(), BalancerConfig::new(Algo::LeastConnections))
        .expect("valid settings");
    let first = lc.pick(&snap, &route).expect("pick");
    assert!(
        first.guard().is_some(),
        "load-aware strategies hold an in-flight guard"
    );
    let second = lc.pick(&snap, &route).expect("pick");
    assert_ne!(first.instance().id, second.instance().id);
    drop(second);
    // A new revision carries the in-flight counts over by instance id.
    let mut changed = fleet();
    changed.pop();
    let snap2 = Snapshot::new(changed, 2);
    for _ in 0..5 {
        let next = lc.pick(&snap2, &route).expect("pick");
        assert_eq!(next.leaf().revision(), 2);
        assert_ne!(
            next.instance().id,
            first.instance().id,
            "the held pick still counts"
        );
    }

    // Peak EWMA: a slow answer steers the next picks away.
    let ewma = Smart::with_balancer(&config(), BalancerConfig::new(Algo::PeakEwma))
        .expect("valid settings");
    let slow = ewma.pick(&snap, &route).expect("pick");
    let slow_id = slow.instance().id.clone();
    slow.observe(std::time::Duration::from_secs(2));
    for _ in 0..10 {
        let p = ewma.pick(&snap, &route).expect("pick");
        assert_ne!(p.instance().id, slow_id);
        p.observe(std::time::Duration::from_millis(1));
    }

    // Consistent hash: one key, one instance.
    let ch = Smart::with_balancer(&config(), BalancerConfig::new(Algo::ConsistentHash))
        .expect("valid settings");
    let keyed = route.key(b"user-42");
    let id = ch.pick(&snap, &keyed).expect("pick").instance().id.clone();
    for _ in 0..20 {
        assert_eq!(ch.pick(&snap, &keyed).expect("pick").instance().id, id);
    }
}
