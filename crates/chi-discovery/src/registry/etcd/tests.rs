//! Unit tests of the etcd adapter: config checks, the key layout, stored values.

use std::time::Duration;

use super::client::scrub;
use super::*;

#[test]
fn config_defaults_and_prefix_normalisation() {
    let s = EtcdConfig::default().validated().expect("default is valid");
    assert_eq!(s.prefix, "/chi/services");
    assert_eq!(s.ttl_secs, 10);
    let s = EtcdConfig {
        prefix: "app/reg/".into(),
        lease_ttl: Duration::from_millis(2500),
        ..EtcdConfig::default()
    }
    .validated()
    .expect("valid");
    assert_eq!(s.prefix, "/app/reg");
    assert_eq!(s.ttl_secs, 3, "TTL rounds up to whole seconds");
}

#[test]
fn config_rejects_bad_values() {
    for (cfg, field) in [
        (
            EtcdConfig {
                prefix: "/".into(),
                ..EtcdConfig::default()
            },
            "prefix",
        ),
        (
            EtcdConfig {
                prefix: "/a/../b".into(),
                ..EtcdConfig::default()
            },
            "prefix",
        ),
        (
            EtcdConfig {
                endpoints: vec![],
                ..EtcdConfig::default()
            },
            "endpoints",
        ),
        (
            EtcdConfig {
                lease_ttl: Duration::from_millis(500),
                ..EtcdConfig::default()
            },
            "lease_ttl",
        ),
        (
            EtcdConfig {
                password: Some("pw".into()),
                ..EtcdConfig::default()
            },
            "username",
        ),
    ] {
        let err = cfg.validated().expect_err("must be rejected");
        assert!(
            err.to_string()
                .starts_with(&format!("service_discovery.registries.etcd.{field}")),
            "{err}"
        );
    }
}

#[test]
fn debug_never_shows_the_password() {
    let cfg = EtcdConfig {
        username: Some("root".into()),
        password: Some("hunter2".into()),
        ..EtcdConfig::default()
    };
    assert!(!format!("{cfg:?}").contains("hunter2"));
    let s = cfg.validated().expect("valid");
    assert_eq!(
        scrub(&s, "bad password hunter2 given"),
        "bad password *** given"
    );
}

#[test]
fn ids_are_taken_only_from_direct_children() {
    assert_eq!(Inner::id_in("/p/s/", b"/p/s/a"), Some("a"));
    assert_eq!(Inner::id_in("/p/s/", b"/p/s/a/b"), None);
    assert_eq!(Inner::id_in("/p/s/", b"/p/s/"), None);
    assert_eq!(Inner::id_in("/p/s/", b"/p/s2/a"), None);
    assert_eq!(
        Inner::id_in("/p/s/", &[0x2f, 0x70, 0x2f, 0x73, 0x2f, 0xff]),
        None
    );
}

#[test]
fn stored_values_decode_only_into_valid_instances_of_their_key() {
    let good = br#"{"id":"svc-1","name":"svc","address":"10.0.0.1","port":8080}"#;
    let i = decode_value("svc", "svc-1", good).expect("a valid value");
    assert_eq!((i.name.as_str(), i.port), ("svc", 8080));
    for (value, says) in [
        (&b"{"[..], "not an instance"),
        (
            br#"{"id":"svc-2","name":"svc","address":"a","port":1}"#,
            "does not match its key",
        ),
        (
            br#"{"id":"svc-1","name":"svc","address":" ","port":1}"#,
            "address",
        ),
        (
            br#"{"id":"svc-1","name":"svc","address":"a","port":0}"#,
            "port",
        ),
    ] {
        let e = decode_value("svc", "svc-1", value).expect_err("rejected");
        assert!(e.to_string().contains(says), "{e}");
    }
}
