//! The DNS adapter against real DNS servers on loopback (`chi_test_support::dns`): dnsmasq for
//! fixed records, bind9 with `nsupdate` for records changed live, and Consul's DNS interface.
//! Round trip (SRV and A, weights, priority failover, NXDOMAIN / NODATA, an answer too large for
//! UDP), hostile names, the multi-registry, Consul, metrics; the watch and outage families are in
//! `dns_watch`.

use std::time::Duration;

use chi_discovery::registry::dns::{Dns, DnsConfig, META_PRIORITY, META_TARGET, META_WEIGHT};
use chi_discovery::{Error, Instance, Registry};
use chi_test_support::dns::{Dnsmasq, Record};

pub(crate) fn dns_with(server: &str, srv: &str, f: impl FnOnce(&mut DnsConfig)) -> Dns {
    let mut c = DnsConfig::srv(srv).with_server(server);
    c.timeout = Duration::from_millis(500);
    f(&mut c);
    Dns::new(c).expect("dns config")
}

pub(crate) fn srv_of(server: &str) -> Dns {
    dns_with(server, "_{service}._tcp.svc.test", |_| {})
}

/// `(address, port, weight)` of each instance, in id order.
pub(crate) fn shape(list: &[Instance]) -> Vec<(String, u16, u32)> {
    let mut v: Vec<(String, u16, u32)> = list
        .iter()
        .map(|i| (i.address.clone(), i.port, i.weight))
        .collect();
    v.sort();
    v
}

fn s(addr: &str, port: u16, weight: u32) -> (String, u16, u32) {
    (addr.to_owned(), port, weight)
}

/// Level 0: `a` (weight 10) and `b` (weight 0, two addresses); level 1: `c`, the backup.
pub(crate) fn fleet() -> Vec<Record> {
    vec![
        Record::srv("_web._tcp.svc.test", "a.svc.test", 8081, 0, 10),
        Record::srv("_web._tcp.svc.test", "b.svc.test", 8082, 0, 0),
        Record::srv("_web._tcp.svc.test", "c.svc.test", 8083, 1, 5),
        Record::addr("a.svc.test", "127.0.0.11"),
        Record::addr("b.svc.test", "127.0.0.12"),
        Record::addr("b.svc.test", "::1"),
        Record::addr("c.svc.test", "127.0.0.13"),
    ]
}

#[tokio::test]
async fn srv_round_trip_with_weights_and_priority_failover() {
    let mut server = Dnsmasq::start(&fleet());
    let dns = srv_of(&server.addr());

    let list = dns.instances("web").await.expect("instances");
    assert_eq!(
        shape(&list),
        vec![
            s("127.0.0.11", 8081, 10),
            s("127.0.0.12", 8082, 1),
            s("::1", 8082, 1)
        ],
        "level 0 only; weight 0 counts as 1"
    );
    let a = list.iter().find(|i| i.port == 8081).expect("a");
    assert_eq!(a.id, "web-127.0.0.11-8081");
    assert_eq!(a.name, "web");
    assert_eq!(a.meta(META_TARGET), Some("a.svc.test"));
    assert_eq!(a.meta(META_PRIORITY), Some("0"));
    let b = list
        .iter()
        .find(|i| i.address == "::1")
        .expect("b over IPv6");
    assert_eq!(b.meta(META_WEIGHT), Some("0"));
    assert_eq!(b.authority(), "[::1]:8082");
    assert_eq!(dns.services().await.expect("services"), ["web"]);

    // NXDOMAIN: no instances, not an error.
    assert!(dns.instances("nobody").await.expect("nxdomain").is_empty());
    assert_eq!(dns.services().await.expect("services"), ["web"]);

    // Level 0's targets stop resolving: the backup level serves.
    let mut no_level_0: Vec<Record> = fleet();
    no_level_0.retain(|r| !matches!(r, Record::Addr { name, .. } if name != "c.svc.test"));
    server.restart_with(&no_level_0);
    let list = dns
        .instances("web")
        .await
        .unwrap_or_else(|e| panic!("failover: {e}; dnsmasq's log:\n{}", server.proc.log()));
    assert_eq!(shape(&list), vec![s("127.0.0.13", 8083, 5)]);
    assert_eq!(list[0].meta(META_PRIORITY), Some("1"));

    // Level 0 back: it serves again, the backup leaves.
    server.restart_with(&fleet());
    assert_eq!(dns.instances("web").await.expect("back").len(), 3);

    // Target "." (the service is decidedly not available) and only that: no instances.
    server.restart_with(&[Record::srv("_web._tcp.svc.test", ".", 80, 0, 1)]);
    assert!(dns.instances("web").await.expect("dot target").is_empty());
    assert!(dns.services().await.expect("services").is_empty());
}

#[tokio::test]
async fn a_records_at_a_fixed_port() {
    let server = Dnsmasq::start(&[
        Record::addr("web.svc.test", "127.0.0.21"),
        Record::addr("web.svc.test", "127.0.0.22"),
        Record::addr("web.svc.test", "::1"),
        Record::srv("srvonly.svc.test", "web.svc.test", 80, 0, 1),
    ]);
    let dns = Dns::new(DnsConfig::a("{service}.svc.test", 8080).with_server(server.addr()))
        .expect("config");
    let list = dns.instances("web").await.expect("instances");
    assert_eq!(
        shape(&list),
        vec![
            s("127.0.0.21", 8080, 1),
            s("127.0.0.22", 8080, 1),
            s("::1", 8080, 1)
        ]
    );
    assert!(list.iter().all(|i| i.meta.is_empty() && i.tags.is_empty()));
    // NODATA (the name has other records) and NXDOMAIN: no instances.
    assert!(dns.instances("srvonly").await.expect("nodata").is_empty());
    assert!(dns.instances("nobody").await.expect("nxdomain").is_empty());
}

/// No server: the system resolver, configured by a `resolv.conf` (here a file of the test's,
/// `/etc/resolv.conf` by default) that names a dnsmasq on 127.0.53.1:53 and the search list
/// `svc.test`: the relative template `_{service}._tcp` is found under it. Port 53 needs root, as
/// CI runs.
#[tokio::test]
async fn the_system_resolver_and_its_search_list() {
    let ip = std::net::Ipv4Addr::new(127, 0, 53, 1);
    let _server = Dnsmasq::start_at(ip, 53, &fleet());
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("resolv.conf");
    std::fs::write(
        &conf,
        format!("nameserver {ip}\nsearch svc.test\noptions ndots:1\n"),
    )
    .expect("resolv.conf");
    let url = format!(
        "dns://?srv=_{{service}}._tcp&timeout=500ms&resolv_conf={}",
        conf.display()
    );
    let registries =
        chi_discovery::config::Registries::from_url(&url, &|_| None).expect("system resolver url");
    let config = registries.dns.expect("dns");
    assert_eq!(config.server, None);
    let dns = Dns::new(config).expect("dns");
    assert_eq!(dns.instances("web").await.expect("instances").len(), 3);
    assert!(dns.instances("nobody").await.expect("nxdomain").is_empty());
}

/// 100 SRV records and their addresses do not fit a UDP answer (1,232 bytes): the answer comes
/// back truncated and the resolver asks again over TCP.
#[tokio::test]
async fn an_answer_too_large_for_udp_comes_over_tcp() {
    let mut records = Vec::new();
    for n in 0..100u16 {
        let target = format!("t{n}.svc.test");
        records.push(Record::srv("_big._tcp.svc.test", &target, 9000 + n, 0, 1));
        records.push(Record::addr(&target, &format!("127.0.1.{}", n + 1)));
    }
    let server = Dnsmasq::start(&records);
    let list = srv_of(&server.addr())
        .instances("big")
        .await
        .expect("instances");
    assert_eq!(list.len(), 100);
    assert!(list.iter().any(|i| i.authority() == "127.0.1.100:9099"));
}

#[tokio::test]
async fn hostile_names_give_clear_errors_and_odd_valid_ones_round_trip() {
    let server = Dnsmasq::start(&[
        Record::srv("_Web-1_x._tcp.svc.test", "a.svc.test", 80, 0, 1),
        Record::addr("a.svc.test", "127.0.0.11"),
    ]);
    let dns = srv_of(&server.addr());
    let hostile = [
        "a/b",
        "..",
        "../../etc",
        "with space",
        "ünï-名前-🚀",
        "",
        "dotted.name",
        "?#%",
        "nul\0byte",
        &"x".repeat(64),
        &"x".repeat(10 * 1024),
    ];
    for name in hostile {
        let err = dns.instances(name).await.expect_err(name);
        assert!(
            matches!(
                err,
                Error::Invalid {
                    what: "service name",
                    ..
                }
            ),
            "{name:?}: {err}"
        );
        let text = err.to_string();
        assert!(text.contains("service name"), "{name:?}: {text}");
        assert!(dns.watch(name).await.is_err(), "{name:?}");
    }
    // Letters, digits, `-` and `_` in any case: DNS compares names without case.
    let list = dns.instances("Web-1_x").await.expect("odd but valid");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "Web-1_x");
    assert_eq!(dns.instances("web-1_X").await.expect("case").len(), 1);
}

/// From the config file: DNS beside the embedded registry. The service registers in the embedded
/// one only; discovery merges both; the manager never counts DNS as a failed backend.
#[tokio::test]
async fn in_a_multi_registry_dns_serves_discovery_only() {
    let server = Dnsmasq::start(&fleet());
    let yaml = format!(
        "service_discovery:\n  registration:\n    name: web\n    address: 127.0.0.99\n    port: 9000\n  registries:\n    memory:\n      enabled: true\n    dns:\n      enabled: true\n      server: \"{}\"\n      srv: \"_{{service}}._tcp.svc.test\"\n",
        server.addr()
    );
    let config = chi_discovery::config::Config::from_yaml_with_env(&yaml, |_| None).expect("yaml");
    assert_eq!(config.registries.enabled(), vec!["memory", "dns"]);
    let registry = config.registries.connect().await.expect("connect");
    assert!(!registry.read_only());
    let manager = chi_discovery::ServiceManager::new(registry.clone());
    let report = manager
        .register(config.registration.clone().expect("registration"))
        .await
        .expect("register");
    assert!(report.is_complete(), "{report:?}");
    let backends: Vec<&str> = report.results.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(backends, ["memory"]);
    manager.tick().await;
    let status = manager.status();
    assert!(
        status[0]
            .backends
            .iter()
            .all(|b| b.registered && b.failures == 0)
    );

    let list = registry.instances("web").await.expect("merged");
    assert_eq!(
        shape(&list),
        vec![
            s("127.0.0.11", 8081, 10),
            s("127.0.0.12", 8082, 1),
            s("127.0.0.99", 9000, 1),
            s("::1", 8082, 1)
        ]
    );
    manager.shutdown().await;
    assert_eq!(registry.instances("web").await.expect("after").len(), 3);

    // DNS alone cannot take the registration: refused when the file is loaded.
    let alone = yaml.replace("    memory:\n      enabled: true\n", "");
    let err = chi_discovery::config::Config::from_yaml_with_env(&alone, |_| None)
        .expect_err("dns alone")
        .to_string();
    assert!(
        err.starts_with("service_discovery.registration: DNS is read-only"),
        "{err}"
    );
}

/// Consul's DNS interface answers SRV for what chi registered in Consul (weights from
/// `Weights.Passing`), and drops an instance whose check turns critical.
#[cfg(feature = "consul")]
#[tokio::test]
async fn consul_dns_serves_what_consul_holds() {
    use chi_discovery::HealthStatus;
    use chi_discovery::registry::consul::{Consul, ConsulConfig};
    let agent = chi_test_support::consul::ConsulAgent::start_with_dns().await;
    let consul = Consul::new(ConsulConfig {
        address: agent.addr(),
        check_ttl: Duration::from_secs(1),
        ..ConsulConfig::default()
    })
    .expect("consul");
    let a = Instance::new("pay", "127.0.0.31", 7001).with_weight(5);
    let b = Instance::new("pay", "127.0.0.32", 7002).with_weight(1);
    for i in [&a, &b] {
        consul.register(i).await.expect("register");
        consul
            .keep_alive(i, HealthStatus::Healthy)
            .await
            .expect("pass");
    }
    let port = agent.dns_port.expect("dns port");
    let dns = dns_with(
        &format!("127.0.0.1:{port}"),
        "_{service}._tcp.service.consul",
        |_| {},
    );
    let found = chi_test_support::eventually(Duration::from_secs(10), || async {
        dns.instances("pay").await.is_ok_and(|l| l.len() == 2)
    })
    .await;
    assert!(found.is_some(), "{:?}", dns.instances("pay").await);
    let list = dns.instances("pay").await.expect("instances");
    assert_eq!(
        shape(&list),
        vec![s("127.0.0.31", 7001, 5), s("127.0.0.32", 7002, 1)]
    );
    // Consul's default TTL is 0: a watch re-resolves at min_refresh.
    consul
        .keep_alive(&b, HealthStatus::Unhealthy)
        .await
        .expect("fail");
    let gone = chi_test_support::eventually(Duration::from_secs(10), || async {
        dns.instances("pay").await.is_ok_and(|l| l.len() == 1)
    })
    .await;
    assert!(
        gone.is_some(),
        "a critical instance leaves Consul's DNS answers"
    );
    assert!(dns.instances("nobody").await.expect("nxdomain").is_empty());
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn the_same_metrics_as_any_registry() {
    use chi_discovery::DiscoveryClient;
    use chi_discovery::metrics::{Metrics, MetricsConfig};
    use futures_util::StreamExt;
    let mut server = Dnsmasq::start(&fleet());
    let dns = std::sync::Arc::new(srv_of(&server.addr()));
    let client = DiscoveryClient::builder()
        .retry(chi_discovery::RetryPolicy::none())
        .build(dns.clone());
    let mut prom = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut prom, MetricsConfig::default());
    metrics.instrument_client(&mut prom, &client);

    assert_eq!(client.discover("web").await.expect("discover").len(), 3);
    let mut watch = dns.watch("web").await.expect("watch");
    let first = watch.next().await.expect("reset");
    metrics.record_watch("web", &first);
    server.kill();
    let stale = client.refresh("web").await.expect("the last list, stale");
    assert!(stale.is_stale() && stale.len() == 3);
    let item = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an error item")
        .expect("item");
    assert!(item.is_err(), "{item:?}");
    metrics.record_watch("web", &item);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &prom).expect("encode");
    let value = |name: &str, labels: &[&str]| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|p| l.contains(p)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} {labels:?} in\n{text}"))
    };
    assert_eq!(
        value(
            "service_discovery_requests_total",
            &["service=\"web\"", "status=\"success\""]
        ),
        1.0
    );
    assert_eq!(value("chi_discovery_cache_refresh_errors_total", &[]), 1.0);
    assert_eq!(
        value(
            "chi_discovery_instances",
            &["service=\"web\"", "health=\"unknown\""]
        ),
        3.0
    );
    assert_eq!(value("chi_watch_events_total", &["kind=\"reset\""]), 1.0);
    assert_eq!(value("chi_watch_errors_total", &["service=\"web\""]), 1.0);
}
