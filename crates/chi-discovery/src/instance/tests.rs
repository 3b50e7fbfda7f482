use super::*;
use proptest::prelude::*;

#[test]
fn default_id_is_name_address_port() {
    let i = Instance::new("user-service", "10.0.0.1", 8080);
    assert_eq!(i.id, "user-service-10.0.0.1-8080");
    let cfg = ServiceConfig::new("user-service", "10.0.0.1", 8080);
    assert_eq!(cfg.instance().id, i.id);
    let cfg = ServiceConfig {
        id: Some("custom".into()),
        ..cfg
    };
    assert_eq!(cfg.instance().id, "custom");
}

#[test]
fn names_cannot_escape_a_prefix() {
    for bad in ["", " ", "a/b", "..", "a..b", "x\\y", "a\nb", "."] {
        assert!(
            validate_name("service name", bad).is_err(),
            "{bad:?} accepted"
        );
    }
    for good in [
        "user-service",
        "user.service",
        "用户服务",
        "a b",
        "svc_1:grpc",
    ] {
        validate_name("service name", good).expect(good);
    }
    let long = "x".repeat(257);
    let err = validate_name("service name", &long)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 256 bytes, got 257"), "{err}");
}

#[test]
fn weight_meta_overrides_field() {
    let i = Instance::new("s", "h", 1).with_weight(3);
    assert_eq!(i.effective_weight(), 3);
    assert_eq!(i.clone().with_meta("weight", "7").effective_weight(), 7);
    assert_eq!(i.with_meta("weight", "seven").effective_weight(), 3);
}

#[test]
fn ipv6_authority_is_bracketed() {
    assert_eq!(Instance::new("s", "::1", 80).authority(), "[::1]:80");
    assert_eq!(
        Instance::new("s", "127.0.0.1", 80).authority(),
        "127.0.0.1:80"
    );
}

#[test]
fn filter_matches_tags_meta_and_health() {
    let i = Instance::new("s", "h", 1)
        .with_tag("v1")
        .with_tag("api")
        .with_meta("region", "us-east-1")
        .with_health(HealthStatus::Healthy);
    assert!(Filter::new().matches(&i));
    assert!(Filter::new().tag("v1").tag("api").matches(&i));
    assert!(!Filter::new().tag("v1").tag("production").matches(&i));
    assert!(Filter::new().meta("region", "us-east-1").matches(&i));
    assert!(!Filter::new().meta("region", "us-west-2").matches(&i));
    assert!(!Filter::new().meta("zone", "a").matches(&i));
    assert!(Filter::new().healthy_only().matches(&i));
    let sick = i.clone().with_health(HealthStatus::Unhealthy);
    assert!(!Filter::new().healthy_only().matches(&sick));
    assert!(Filter::new().matches(&sick));
    let unknown = i.with_health(HealthStatus::Unknown);
    assert!(Filter::new().healthy_only().matches(&unknown));
}

#[test]
fn instance_json_round_trip_and_defaults() {
    let i = Instance::new("s", "h", 1).with_tag("t").with_meta("k", "v");
    let json = serde_json::to_string(&i).expect("serialize");
    assert_eq!(serde_json::from_str::<Instance>(&json).expect("parse"), i);
    let minimal: Instance =
        serde_json::from_str(r#"{"id":"a","name":"s","address":"h","port":1}"#).expect("parse");
    assert_eq!(minimal.weight, 1);
    assert_eq!(minimal.health, HealthStatus::Unknown);
}

fn arb_instance() -> impl Strategy<Value = Instance> {
    (
        proptest::collection::vec(prop_oneof!["a", "b", "c", "d"], 0..4),
        proptest::collection::btree_map(prop_oneof!["k1", "k2"], prop_oneof!["x", "y"], 0..3),
        prop_oneof![
            Just(HealthStatus::Healthy),
            Just(HealthStatus::Unhealthy),
            Just(HealthStatus::Unknown)
        ],
    )
        .prop_map(|(tags, meta, health)| Instance {
            tags,
            meta,
            health,
            ..Instance::new("s", "h", 1)
        })
}

fn arb_filter() -> impl Strategy<Value = Filter> {
    (
        proptest::collection::vec(prop_oneof!["a", "b", "c", "d"], 0..3),
        proptest::collection::btree_map(prop_oneof!["k1", "k2"], prop_oneof!["x", "y"], 0..2),
        any::<bool>(),
    )
        .prop_map(|(tags, meta, healthy_only)| Filter {
            tags,
            meta,
            healthy_only,
        })
}

proptest! {
    /// The filter is exactly the conjunction of its three rules, and `apply` keeps order.
    #[test]
    fn filter_is_conjunction(instances in proptest::collection::vec(arb_instance(), 0..20), f in arb_filter()) {
        let kept = f.apply(&instances);
        let expected: Vec<Instance> = instances.iter().filter(|i| {
            f.tags.iter().all(|t| i.tags.contains(t))
                && f.meta.iter().all(|(k, v)| i.meta.get(k) == Some(v))
                && (!f.healthy_only || i.health != HealthStatus::Unhealthy)
        }).cloned().collect();
        prop_assert_eq!(&kept, &expected);
        // Adding a requirement never widens the result.
        let narrower = f.clone().tag("a");
        prop_assert!(narrower.apply(&instances).len() <= kept.len());
    }
}
