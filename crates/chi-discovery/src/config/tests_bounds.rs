//! Bounds: durations at most 1 day at every field (the memory registry's TTL of
//! `9223372036854775808s` passed and then overflowed the clock), tags and metadata within
//! [`crate::limits`] at the registration's fields.

use super::*;

#[test]
fn absurd_durations_are_refused_at_their_field() {
    let huge = "\"9223372036854775808s\"";
    for (from, to, field) in [
        (
            "ttl: \"30s\"",
            format!("ttl: {huge}"),
            "service_discovery.discovery.cache.ttl",
        ),
        (
            "interval: \"10s\"",
            format!("interval: {huge}"),
            "service_discovery.registration.health_check.interval",
        ),
        (
            "deregister_critical_service_after: \"30s\"",
            format!("deregister_critical_service_after: {huge}"),
            "service_discovery.registration.health_check.deregister_critical_service_after",
        ),
        (
            "max_interval: \"10s\"",
            "max_interval: \"25h\"".to_owned(),
            "service_discovery.discovery.retry.max_interval",
        ),
    ] {
        let (f, m) = err_of(&spec_with(from, &to));
        assert_eq!(f, field, "{m}");
        assert!(m.starts_with("must be at most 1 day (24h), got \""), "{m}");
    }
    // The memory registry's TTL, the one that panicked `chi agent`.
    let (f, m) = err_of(&format!(
        "service_discovery:\n  registries:\n    memory:\n      enabled: true\n      ttl: {huge}\n"
    ));
    assert_eq!(f, "service_discovery.registries.memory.ttl");
    assert_eq!(
        m,
        "must be at most 1 day (24h), got \"9223372036854775808s\""
    );
    let zookeeper = spec_with(
        "      enabled: false\n      servers:\n        - \"127.0.0.1:2181\"",
        "      enabled: true\n      servers:\n        - \"127.0.0.1:2181\"",
    )
    .replace(
        "session_timeout: \"10s\"",
        &format!("session_timeout: {huge}"),
    );
    let (f, m) = err_of(&zookeeper);
    assert_eq!(f, "service_discovery.registries.zookeeper.session_timeout");
    assert!(m.starts_with("must be at most 1 day (24h), got \""), "{m}");
    // One day itself is fine.
    let c = load(&spec_with("ttl: \"30s\"", "ttl: \"24h\"")).expect("1 day");
    assert_eq!(c.cache.ttl, MAX_DURATION);
}

#[test]
fn tags_and_meta_are_bounded_at_the_registration() {
    let many: String = (0..65).map(|n| format!("      - \"t{n}\"\n")).collect();
    assert_err(
        &spec_with("      - \"api\"\n", &many),
        "service_discovery.registration.tags",
        &["at most 64 tags, got 67"],
    );
    assert_err(
        &spec_with(
            "      - \"api\"\n",
            &format!("      - \"{}\"\n", "a".repeat(257)),
        ),
        "service_discovery.registration.tags[0]",
        &["must be at most 256 bytes, got 257"],
    );
    assert_err(
        &spec_with(
            "env: \"production\"",
            &format!("env: \"{}\"", "p".repeat(1025)),
        ),
        "service_discovery.registration.meta[\"env\"]",
        &["must be at most 1024 bytes, got 1025"],
    );
    let pairs: String = (0..63).map(|n| format!("      k{n}: v\n")).collect();
    assert_err(
        &spec_with("      env: \"production\"\n", &pairs),
        "service_discovery.registration.meta",
        &["at most 64 pairs, got 65"],
    );
}
