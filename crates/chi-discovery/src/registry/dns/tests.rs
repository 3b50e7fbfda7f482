use std::time::Duration;

use super::*;
use crate::error::Error;
use crate::instance::Instance;

#[test]
fn refresh_follows_the_ttl_within_the_bounds() {
    let mut c = DnsConfig::srv("_{service}._tcp.svc.test");
    c.min_refresh = Duration::from_secs(2);
    c.max_refresh = Duration::from_secs(60);
    assert_eq!(
        refresh_after(&c, Some(0)),
        Duration::from_secs(2),
        "Consul's TTL 0"
    );
    assert_eq!(refresh_after(&c, Some(5)), Duration::from_secs(5));
    assert_eq!(refresh_after(&c, Some(86_400)), Duration::from_secs(60));
    assert_eq!(
        refresh_after(&c, None),
        Duration::from_secs(2),
        "no TTL at all"
    );
    c.max_refresh = c.min_refresh;
    assert_eq!(refresh_after(&c, Some(30)), Duration::from_secs(2));
}

#[tokio::test]
async fn writes_are_refused_as_read_only() {
    let dns = Dns::new(DnsConfig::srv("_{service}._tcp.svc.test").with_server("127.0.0.1:1"))
        .expect("config");
    assert!(dns.read_only());
    let i = Instance::new("web", "127.0.0.1", 80);
    for err in [
        dns.register(&i).await.unwrap_err(),
        dns.register_with_checks(&i, &[]).await.unwrap_err(),
        dns.deregister("web", &i.id).await.unwrap_err(),
        dns.keep_alive(&i, HealthStatus::Healthy).await.unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            text.contains("`dns`") && text.contains("read-only"),
            "{text}"
        );
        assert!(!err.is_transient(), "{text}");
    }
    assert!(dns.services().await.expect("services").is_empty());
}

#[tokio::test]
async fn names_that_are_not_one_dns_label_fail_before_any_query() {
    // Port 1 on loopback: a query would fail with another error.
    let dns = Dns::new(DnsConfig::srv("_{service}._tcp.svc.test").with_server("127.0.0.1:1"))
        .expect("config");
    for bad in [
        "a.b",
        "with space",
        "ünï-名前",
        "",
        "a/b",
        "..",
        &"x".repeat(64),
    ] {
        let err = dns.instances(bad).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Invalid {
                    what: "service name",
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
        let err = dns.watch(bad).await.err().expect("watch refused");
        assert!(matches!(err, Error::Invalid { .. }), "{bad:?}: {err}");
    }
}

#[test]
fn the_system_resolver_needs_a_readable_configuration_with_a_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = |text: &str| {
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, text).expect("write");
        let mut c = DnsConfig::srv("_{service}._tcp");
        c.resolv_conf = Some(path);
        c
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    Dns::new(conf(
        "nameserver 127.0.0.1\nsearch svc.test\noptions ndots:2\n",
    ))
    .expect("system");
    let err = Dns::new(conf("search svc.test\n")).unwrap_err().to_string();
    assert!(
        err.starts_with("service_discovery.registries.dns.resolv_conf:")
            && err.contains("no nameserver"),
        "{err}"
    );
    let mut missing = DnsConfig::srv("_{service}._tcp");
    missing.resolv_conf = Some(dir.path().join("nope"));
    let err = Dns::new(missing).unwrap_err().to_string();
    assert!(err.contains("cannot be read"), "{err}");
}
