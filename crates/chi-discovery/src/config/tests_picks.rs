//! `load_balancer.hash_key_header` (the header of the hash key) and `metrics.per_instance_labels`.

use super::*;

#[test]
fn the_hash_key_header_defaults_to_x_hash_key_and_is_checked_at_its_field() {
    let c = load(SPEC).expect("loads");
    assert_eq!(c.load_balancer.hash_key_header, "x-hash-key");
    let c = load(&spec_with(
        "    health_check_enabled: true\n",
        "    health_check_enabled: true\n    hash_key_header: X-User-Id\n",
    ))
    .expect("loads");
    assert_eq!(
        c.load_balancer.hash_key_header, "x-user-id",
        "stored lowercase"
    );
    for bad in ["\"X User\"", "\"\"", "\"x-key:\"", "\"é\""] {
        assert_err(
            &spec_with(
                "    health_check_enabled: true\n",
                &format!("    health_check_enabled: true\n    hash_key_header: {bad}\n"),
            ),
            "service_discovery.load_balancer.hash_key_header",
            &["must be an HTTP header name", "got"],
        );
    }
}

#[test]
fn per_instance_labels_default_on_and_can_be_turned_off() {
    assert!(load(SPEC).expect("loads").metrics.per_instance_labels);
    let c = load(&format!(
        "{SPEC}\n  metrics:\n    per_instance_labels: false\n"
    ))
    .expect("loads");
    assert!(!c.metrics.per_instance_labels);
    assert_err(
        &format!("{SPEC}\n  metrics:\n    per_instance_label: false\n"),
        "service_discovery.metrics.per_instance_label",
        &["unknown field", "expected `per_instance_labels`"],
    );
}
