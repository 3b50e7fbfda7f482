//! `routing.client_regions` (address blocks to regions) and `routing.trusted_proxies`: optional,
//! read as written, every mistake named at its block.

use super::*;

/// The example file with `extra` added to its `routing` block (after the `regions` topology).
fn with_routing(extra: &str) -> String {
    spec_with(
        "        - \"us-west-2b\"",
        &format!("        - \"us-west-2b\"\n{extra}"),
    )
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("an address")
}

#[test]
fn absent_by_default_and_read_as_written() {
    let c = load(SPEC).expect("the example file loads as written");
    assert!(c.routing.client_regions.is_empty());
    assert!(c.routing.trusted_proxies.is_empty());
    let c = load(&with_routing(
        "    client_regions:\n      \"10.1.0.0/16\": us-east-1\n      \"10.2.0.0/16\": us-west-2\n      \"10.2.7.0/24\": us-east-1\n      \"2001:db8:2::/48\": us-west-2\n      \"192.0.2.7\": us-west-2\n    trusted_proxies: [\"10.9.0.0/16\", \"fd00::1\"]",
    ))
    .expect("loads");
    let t = &c.routing.client_regions;
    assert_eq!(t.region_of(ip("10.1.200.3")), Some("us-east-1"));
    assert_eq!(t.region_of(ip("10.2.0.9")), Some("us-west-2"));
    assert_eq!(
        t.region_of(ip("10.2.7.9")),
        Some("us-east-1"),
        "the longest block"
    );
    assert_eq!(t.region_of(ip("2001:db8:2::1")), Some("us-west-2"));
    assert_eq!(
        t.region_of(ip("192.0.2.7")),
        Some("us-west-2"),
        "one address"
    );
    assert_eq!(t.region_of(ip("192.0.2.8")), None);
    let p = &c.routing.trusted_proxies;
    assert!(p.trusts(ip("10.9.3.3")) && p.trusts(ip("fd00::1")));
    assert!(!p.trusts(ip("10.1.0.1")) && !p.trusts(ip("fd00::2")));
}

#[test]
fn a_bad_block_is_named() {
    for bad in ["10.1.0.0/33", "10.1.0/16", "us-east-1", ""] {
        assert_err(
            &with_routing(&format!("    client_regions:\n      \"{bad}\": us-east-1")),
            &format!("service_discovery.routing.client_regions[{bad:?}]"),
            &[
                "expected an address block such as \"10.1.0.0/16\"",
                &format!("got {bad:?}"),
            ],
        );
    }
    assert_err(
        &with_routing("    client_regions:\n      \"10.1.2.3/16\": us-east-1"),
        "service_discovery.routing.client_regions[\"10.1.2.3/16\"]",
        &["the block's first address", "the block is 10.1.0.0/16"],
    );
    assert_err(
        &with_routing(
            "    client_regions:\n      \"10.1.0.0/16\": us-east-1\n      \" 10.1.0.0/16\": us-west-2",
        ),
        "service_discovery.routing.client_regions[\" 10.1.0.0/16\"]",
        &["10.1.0.0/16 is listed twice"],
    );
    assert_err(
        &with_routing("    trusted_proxies: [\"10.9.0.0/16\", \"proxy.internal\"]"),
        "service_discovery.routing.trusted_proxies[1]",
        &["expected an address block", "got \"proxy.internal\""],
    );
}

#[test]
fn an_unknown_region_is_named() {
    assert_err(
        &with_routing("    client_regions:\n      \"10.1.0.0/16\": eu-west-9"),
        "service_discovery.routing.client_regions[\"10.1.0.0/16\"]",
        &[
            "must be a region of routing.regions (us-east-1, us-west-2)",
            "got \"eu-west-9\"",
        ],
    );
    assert_err(
        &with_routing("    client_regions:\n      \"10.1.0.0/16\": \"\""),
        "service_discovery.routing.client_regions[\"10.1.0.0/16\"]",
        &["must name a region"],
    );
    // Without a topology, any region the instances may carry.
    let c = load(
        "service_discovery:\n  routing:\n    enable_geo_routing: true\n    client_regions:\n      \"10.1.0.0/16\": eu-west-9\n",
    )
    .expect("loads");
    assert_eq!(
        c.routing.client_regions.region_of(ip("10.1.0.1")),
        Some("eu-west-9")
    );
}
