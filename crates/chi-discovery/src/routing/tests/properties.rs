//! Invariants over random fleets and routes (proptest).

use super::*;

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
                // (A keyless canary split rolls again, so check the pick against its own leaf.)
                prop_assert!(picked.leaf().instances().iter().any(|i| i.id == picked.instance().id));
                prop_assert_eq!(picked.decision().panic, !any_usable);
            }
        }
    }
}
