use std::sync::atomic::{AtomicUsize, Ordering};

use indexmap::IndexMap;
use proptest::prelude::*;

use super::RoutingConfig;
use super::*;
use crate::balance::{Balancer, BalancerConfig, Strategy as Algo};
use crate::instance::HealthStatus::{self, Healthy, Unhealthy, Unknown};
use crate::snapshot::Snapshot;

fn inst(
    id: &str,
    version: &str,
    tags: &[&str],
    place: (&str, &str),
    health: HealthStatus,
) -> Instance {
    let mut i = Instance::new("svc", "10.0.0.1", 80)
        .with_id(id)
        .with_version(version)
        .with_health(health);
    for t in tags {
        i = i.with_tag(*t);
    }
    if !place.0.is_empty() {
        i = i.with_meta(REGION_META, place.0);
    }
    if !place.1.is_empty() {
        i = i.with_meta(ZONE_META, place.1);
    }
    i
}

fn config() -> RoutingConfig {
    let mut regions = IndexMap::new();
    regions.insert(
        "us-east-1".to_owned(),
        vec![
            "us-east-1a".into(),
            "us-east-1b".into(),
            "us-east-1c".into(),
        ],
    );
    regions.insert("us-west-2".to_owned(), vec!["us-west-2a".into()]);
    regions.insert("ap-south-1".to_owned(), vec!["ap-south-1a".into()]);
    RoutingConfig {
        enable_version_routing: true,
        enable_geo_routing: true,
        default_version: "v1".into(),
        regions,
    }
}

/// a, b: v1 in us-east-1 (zones a, b); c: v2 by tag in us-east-1a; d: v1 in us-west-2 (zone
/// only: the region comes from the topology); e: v1 in ap-south-1, unhealthy; f: v3, unknown
/// health, no place; g: v2 in eu-central-1 (not in the topology).
fn fleet() -> Vec<Instance> {
    vec![
        inst("a", "v1", &[], ("us-east-1", "us-east-1a"), Healthy),
        inst("b", "v1", &["api"], ("us-east-1", "us-east-1b"), Healthy),
        inst("c", "", &["v2"], ("us-east-1", "us-east-1a"), Healthy),
        inst("d", "v1", &[], ("", "us-west-2a"), Healthy),
        inst("e", "v1", &[], ("ap-south-1", ""), Unhealthy),
        inst("f", "v3", &[], ("", ""), Unknown),
        inst("g", "v2", &[], ("eu-central-1", ""), Healthy),
    ]
}

fn ids(list: &[&Instance]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|i| i.id.clone()).collect();
    v.sort();
    v
}

fn ids_of(list: &[Instance]) -> Vec<String> {
    ids(&list.iter().collect::<Vec<_>>())
}

#[test]
fn route_reads_headers() {
    let mut h = http::HeaderMap::new();
    h.insert("X-Service-Version", "v2".parse().expect("header"));
    h.insert("x-client-region", " us-west-2 ".parse().expect("header"));
    h.insert("x-client-zone", "".parse().expect("header"));
    let r = Route::from_headers(&h);
    assert_eq!(r.version, Some("v2"));
    assert_eq!(r.region, Some("us-west-2"));
    assert_eq!(r.zone, None, "empty header counts as absent");
    let req = http::Request::builder()
        .header("x-service-version", "v9")
        .body(())
        .expect("request");
    assert_eq!(Route::from_headers(&req).version, Some("v9"));
    let pairs: &[(&str, &str)] = &[("X-Client-Zone", "us-east-1b")];
    assert_eq!(Route::from_headers(pairs).zone, Some("us-east-1b"));
}

#[test]
fn version_rules_table() {
    let fleet = fleet();
    let v = Version::from_config(&config());
    // (requested, expected ids, step)
    let cases: &[(Option<&str>, &[&str], VersionStep)] = &[
        (Some("v1"), &["a", "b", "d"], VersionStep::Requested),
        (Some("v2"), &["c", "g"], VersionStep::Requested), // by tag (c) and by field (g)
        (Some("api"), &["b"], VersionStep::Requested),     // any tag names a version
        (Some("v3"), &["f"], VersionStep::Requested),      // unknown health is usable
        (None, &["a", "b", "d"], VersionStep::Default),
        (Some("v9"), &["a", "b", "d"], VersionStep::ToDefault),
    ];
    for (requested, expected, step) in cases {
        let route = Route {
            version: *requested,
            ..Route::new()
        };
        let (got, s) = v.subset(&fleet, &route);
        assert_eq!(ids(&got), *expected, "{requested:?}");
        assert_eq!(s, *step, "{requested:?}");
    }
    // The default has no usable instance: any version.
    let v9 = Version::new("v9");
    let (got, s) = v9.subset(&fleet, &Route::new().version("v8"));
    assert_eq!(ids(&got), ["a", "b", "c", "d", "f", "g"]);
    assert_eq!(s, VersionStep::ToAnyVersion);
    // Off: everything usable.
    let (got, s) = Version::disabled().subset(&fleet, &Route::new().version("v2"));
    assert_eq!(got.len(), 6);
    assert_eq!(s, VersionStep::Disabled);
}

#[test]
fn canary_split_follows_weights_and_sticks_per_key() {
    let fleet = fleet();
    let v = Version::new("v1").with_split([("v1", 90), ("v2", 10), ("v0", 0)]);
    assert_eq!(v.split().count(), 2, "zero weights dropped");
    let mut v2 = 0;
    let n = 20_000;
    for _ in 0..n {
        let (got, s) = v.subset(&fleet, &Route::new());
        assert_eq!(s, VersionStep::Canary);
        if got.iter().any(|i| i.id == "g") {
            v2 += 1;
        }
    }
    let share = f64::from(v2) / f64::from(n);
    assert!((0.08..0.12).contains(&share), "v2 share {share}");
    // Sticky: one key always lands on the same side.
    for user in 0..50u32 {
        let key = user.to_be_bytes();
        let first = v.subset(&fleet, &Route::new().key(&key)).0;
        for _ in 0..5 {
            assert_eq!(
                ids(&v.subset(&fleet, &Route::new().key(&key)).0),
                ids(&first)
            );
        }
    }
    // A canary version with no usable instance falls back to the default.
    let gone = Version::new("v1").with_split([("v7", 1)]);
    let (got, s) = gone.subset(&fleet, &Route::new());
    assert_eq!(ids(&got), ["a", "b", "d"]);
    assert_eq!(s, VersionStep::ToDefault);
    // A named version bypasses the split.
    assert_eq!(
        v.subset(&fleet, &Route::new().version("v3")).1,
        VersionStep::Requested
    );
}

#[test]
fn geo_rules_table() {
    let fleet = fleet();
    let usable: Vec<&Instance> = fleet.iter().filter(|i| i.health.is_usable()).collect();
    let geo = Geo::from_config(&config());
    // (region, zone, expected ids, step)
    type Case<'a> = (Option<&'a str>, Option<&'a str>, &'a [&'a str], GeoStep);
    let cases: &[Case<'_>] = &[
        (
            None,
            None,
            &["a", "b", "c", "d", "f", "g"],
            GeoStep::Unlocated,
        ),
        (None, Some("us-east-1a"), &["a", "c"], GeoStep::SameZone),
        (
            Some("us-east-1"),
            Some("us-east-1b"),
            &["b"],
            GeoStep::SameZone,
        ),
        (
            Some("us-east-1"),
            None,
            &["a", "b", "c"],
            GeoStep::SameRegion,
        ),
        // A zone with nothing: its region (known from the topology).
        (
            None,
            Some("us-east-1c"),
            &["a", "b", "c"],
            GeoStep::ZoneToRegion,
        ),
        // Region from the zone on the instance side (d has only a zone).
        (Some("us-west-2"), None, &["d"], GeoStep::SameRegion),
        // ap-south-1's only instance is unhealthy: neighbours in file order, us-east-1 first.
        (
            Some("ap-south-1"),
            None,
            &["a", "b", "c"],
            GeoStep::ToNeighbour,
        ),
        (
            None,
            Some("ap-south-1a"),
            &["a", "b", "c"],
            GeoStep::ToNeighbour,
        ),
        // A region outside the topology that has instances.
        (Some("eu-central-1"), None, &["g"], GeoStep::SameRegion),
        // One outside the topology without instances: every configured region in order.
        (Some("mars-1"), None, &["a", "b", "c"], GeoStep::ToNeighbour),
    ];
    for (region, zone, expected, step) in cases {
        let route = Route {
            region: *region,
            zone: *zone,
            ..Route::new()
        };
        let (got, s) = geo.subset(&usable, &route);
        assert_eq!(ids(&got), *expected, "{region:?} {zone:?}");
        assert_eq!(s, *step, "{region:?} {zone:?}");
    }
    // Configured neighbour order wins over file order.
    let geo2 =
        Geo::from_config(&config()).with_neighbours("ap-south-1", ["us-west-2", "us-east-1"]);
    let (got, s) = geo2.subset(&usable, &Route::new().region("ap-south-1"));
    assert_eq!((ids(&got), s), (vec!["d".to_owned()], GeoStep::ToNeighbour));
    // No neighbour has anything: any region, last.
    let only_far: Vec<&Instance> = usable
        .iter()
        .copied()
        .filter(|i| i.id == "f" || i.id == "g")
        .collect();
    let (got, s) = geo.subset(&only_far, &Route::new().region("us-east-1"));
    assert_eq!(
        (ids(&got), s),
        (vec!["f".to_owned(), "g".to_owned()], GeoStep::ToAnyRegion)
    );
    // Off.
    let (got, s) = Geo::disabled().subset(&usable, &Route::new().region("us-east-1"));
    assert_eq!((got.len(), s), (6, GeoStep::Disabled));
}

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
        // The precomputed subset equals the per-call computation of the two stages.
        let (v, _) = router.version_rules().subset(snap.instances(), &route);
        let (g, _) = router.geo_rules().subset(&v, &route);
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

fn arb_instance() -> impl Strategy<Value = Instance> {
    (
        0u8..4,
        proptest::collection::vec(prop_oneof!["v1", "v2", "api"], 0..2),
        prop_oneof![
            Just(("", "")),
            Just(("us-east-1", "us-east-1a")),
            Just(("us-east-1", "")),
            Just(("", "us-east-1b")),
            Just(("", "us-west-2a")),
            Just(("eu-central-1", "")),
        ],
        prop_oneof![Just(Healthy), Just(Unhealthy), Just(Unknown)],
    )
        .prop_map(|(v, tags, place, health)| {
            let version = ["", "v1", "v2", "v3"][usize::from(v)];
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            inst("x", version, &tags, place, health)
        })
}

fn arb_route() -> impl Strategy<Value = (Option<String>, Option<String>, Option<String>)> {
    (
        proptest::option::of(prop_oneof!["v1", "v2", "v3", "v9", "api"]),
        proptest::option::of(prop_oneof!["us-east-1", "us-west-2", "ap-south-1", "mars"]),
        proptest::option::of(prop_oneof![
            "us-east-1a",
            "us-east-1c",
            "us-west-2a",
            "nowhere"
        ]),
    )
}

proptest! {
    /// With any usable instance, the smart router's set is non-empty, all usable, and its pick
    /// (by any of chi's balancers) is in it; with none usable but some instances, it still
    /// routes (panic).
    #[test]
    fn smart_never_returns_an_empty_set(
        list in proptest::collection::vec(arb_instance(), 0..12),
        (version, region, zone) in arb_route(),
        version_on in any::<bool>(),
        geo_on in any::<bool>(),
        split in any::<bool>(),
        strategy in proptest::sample::select(Algo::ALL.to_vec()),
    ) {
        let list: Vec<Instance> = list
            .into_iter()
            .enumerate()
            .map(|(n, i)| i.with_id(format!("i{n}")))
            .collect();
        let mut cfg = config();
        cfg.enable_version_routing = version_on;
        cfg.enable_geo_routing = geo_on;
        let mut version_rules = Version::from_config(&cfg);
        if split {
            version_rules = version_rules.with_split([("v2", 1), ("v3", 1)]);
        }
let router = Smart::new(version_rules, Geo::from_config(&cfg), move || Balancer::new(strategy));
        let snap = Snapshot::new(list.clone(), 1);
        let route = Route { version: version.as_deref(), region: region.as_deref(), zone: zone.as_deref(), key: None };
        let any_usable = list.iter().any(|i| i.health.is_usable());
        match router.route(&snap, &route) {
            None => prop_assert!(list.is_empty()),
            Some(sub) => {
                prop_assert!(!sub.instances().is_empty());
                prop_assert_eq!(sub.decision().panic, !any_usable);
                if any_usable {
                    prop_assert!(sub.instances().iter().all(|i| i.health.is_usable()));
                }
                let picked = router.pick(&snap, &route).expect("a pick from a non-empty set");
                // (A keyless canary split rolls again, so check the pick against its own subset.)
                prop_assert!(picked.subset().instances().iter().any(|i| i.id == picked.instance().id));
                prop_assert_eq!(picked.decision().panic, !any_usable);
            }
        }
    }
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
    // Everything rejected: still a pick from the subset.
    let p = router
        .pick_usable(&snap, &route, &|_: &Instance| false)
        .expect("pick");
    assert!(["a", "b"].contains(&p.instance().id.as_str()));
}

#[test]
fn the_spec_config_file_drives_the_router() {
    let text = include_str!("../../../../examples/chi-config.yaml");
    let config = crate::config::Config::from_yaml(text).expect("the spec's config parses");
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
        assert_eq!(next.subset().revision(), 2);
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
