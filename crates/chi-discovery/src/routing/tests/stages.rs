//! The stages on their own: `Version` (the version rules, canary splits) and `Geo` (zone,
//! region, neighbours, anywhere).

use super::*;

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
        let (got, s) = v.narrow(&fleet, &route);
        assert_eq!(ids(&got), *expected, "{requested:?}");
        assert_eq!(s, *step, "{requested:?}");
    }
    // The default has no usable instance: any version.
    let v9 = Version::new("v9");
    let (got, s) = v9.narrow(&fleet, &Route::new().version("v8"));
    assert_eq!(ids(&got), ["a", "b", "c", "d", "f", "g"]);
    assert_eq!(s, VersionStep::ToAnyVersion);
    // Off: everything usable.
    let (got, s) = Version::disabled().narrow(&fleet, &Route::new().version("v2"));
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
        let (got, s) = v.narrow(&fleet, &Route::new());
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
        let first = v.narrow(&fleet, &Route::new().key(&key)).0;
        for _ in 0..5 {
            assert_eq!(
                ids(&v.narrow(&fleet, &Route::new().key(&key)).0),
                ids(&first)
            );
        }
    }
    // A canary version with no usable instance falls back to the default.
    let gone = Version::new("v1").with_split([("v7", 1)]);
    let (got, s) = gone.narrow(&fleet, &Route::new());
    assert_eq!(ids(&got), ["a", "b", "d"]);
    assert_eq!(s, VersionStep::ToDefault);
    // A named version bypasses the split.
    assert_eq!(
        v.narrow(&fleet, &Route::new().version("v3")).1,
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
        let (got, s) = geo.narrow(&usable, &route);
        assert_eq!(ids(&got), *expected, "{region:?} {zone:?}");
        assert_eq!(s, *step, "{region:?} {zone:?}");
    }
    // Configured neighbour order wins over file order.
    let geo2 =
        Geo::from_config(&config()).with_neighbours("ap-south-1", ["us-west-2", "us-east-1"]);
    let (got, s) = geo2.narrow(&usable, &Route::new().region("ap-south-1"));
    assert_eq!((ids(&got), s), (vec!["d".to_owned()], GeoStep::ToNeighbour));
    // No neighbour has anything: any region, last.
    let only_far: Vec<&Instance> = usable
        .iter()
        .copied()
        .filter(|i| i.id == "f" || i.id == "g")
        .collect();
    let (got, s) = geo.narrow(&only_far, &Route::new().region("us-east-1"));
    assert_eq!(
        (ids(&got), s),
        (vec!["f".to_owned(), "g".to_owned()], GeoStep::ToAnyRegion)
    );
    // Off.
    let (got, s) = Geo::disabled().narrow(&usable, &Route::new().region("us-east-1"));
    assert_eq!((got.len(), s), (6, GeoStep::Disabled));
}
