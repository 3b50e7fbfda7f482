//! The ZooKeeper adapter against a real ZooKeeper 3.8 on loopback, with kazoo (Python) as the
//! foreign client that writes and reads Curator / Spring Cloud Zookeeper and Dubbo nodes: round
//! trip, both layouts both ways, one-shot watches, session expiry, server restart, credentials,
//! hostile names. Every test starts its own server (own data directory, free port).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::zookeeper::{Layout, Zookeeper, ZookeeperConfig};
use chi_discovery::registry::{Change, Liveness, Registry, WatchStream};
use chi_discovery::{DiscoveryClient, Error, Filter, HealthStatus, Instance};
use futures_util::StreamExt;
use serde_json::json;

use chi_test_support::zookeeper::{Kazoo, ZkServer};

pub(crate) fn config(addr: &str, layout: Layout) -> ZookeeperConfig {
    ZookeeperConfig {
        layout,
        session_timeout: Duration::from_secs(4),
        request_timeout: Duration::from_secs(2),
        ..ZookeeperConfig::new([addr])
    }
}

pub(crate) async fn connect(config: ZookeeperConfig) -> Zookeeper {
    Zookeeper::connect(config)
        .await
        .expect("connect to zookeeper")
}

pub(crate) fn inst(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(service, "127.0.0.1", port).with_id(id)
}

/// The next item of a watch, within `timeout`.
pub(crate) async fn next(w: &mut WatchStream, timeout: Duration) -> chi_discovery::Result<Change> {
    tokio::time::timeout(timeout, w.next())
        .await
        .expect("watch item in time")
        .expect("watch still open")
}

/// The next change that is not an error item.
pub(crate) async fn next_change(w: &mut WatchStream, timeout: Duration) -> Change {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(w, left).await {
            Ok(c) => return c,
            Err(_) => continue,
        }
    }
}

pub(crate) fn ids(list: &[Instance]) -> BTreeSet<String> {
    list.iter().map(|i| i.id.clone()).collect()
}

const T: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_register_discover_filter_watch() {
    let server = ZkServer::start().await;
    let reg = connect(config(&server.addr(), Layout::Curator)).await;
    let svc = "rt-orders";
    let a = inst(svc, "a", 8001)
        .with_tag("v1")
        .with_meta("region", "eu");
    let b = inst(svc, "b", 8002).with_tag("v2").with_version("2.0");
    reg.register(&a).await.expect("register a");
    reg.register(&b).await.expect("register b");
    // A service whose name starts like ours must not leak into it.
    reg.register(&inst("rt-orders2", "x", 9000))
        .await
        .expect("register other");

    assert_eq!(
        reg.instances(svc).await.expect("instances"),
        vec![a.clone(), b.clone()]
    );
    let services = reg.services().await.expect("services");
    assert_eq!(services, ["rt-orders", "rt-orders2"]);
    let client = DiscoveryClient::new(Arc::new(reg.clone()));
    let v1 = client
        .discover_with_filter(svc, &Filter::new().tag("v1"))
        .await
        .expect("filter");
    assert_eq!(v1, vec![a.clone()]);

    let mut w = reg.watch(svc).await.expect("watch");
    assert_eq!(
        next(&mut w, T).await.expect("reset"),
        Change::Reset(vec![a.clone(), b.clone()])
    );
    let c = inst(svc, "c", 8003);
    reg.register(&c).await.expect("register c");
    assert_eq!(next(&mut w, T).await.expect("add"), Change::Add(c.clone()));
    // The same registration again is no event; a changed one is an Update.
    reg.register(&c).await.expect("register c again");
    let b3 = b.clone().with_weight(3);
    reg.register(&b3).await.expect("update b");
    assert_eq!(
        next(&mut w, T).await.expect("update"),
        Change::Update(b3.clone())
    );
    // A keep-alive that reports another health writes it for everyone.
    assert_eq!(
        reg.keep_alive(&b3, HealthStatus::Unhealthy)
            .await
            .expect("keep alive"),
        Liveness::Alive
    );
    let b3_sick = b3.clone().with_health(HealthStatus::Unhealthy);
    assert_eq!(
        next(&mut w, T).await.expect("health"),
        Change::Update(b3_sick.clone())
    );
    let healthy = Filter::new()
        .healthy_only()
        .apply(&reg.instances(svc).await.expect("instances"));
    assert!(!ids(&healthy).contains("b"), "{healthy:?}");
    reg.deregister(svc, "a").await.expect("deregister a");
    assert_eq!(
        next(&mut w, T).await.expect("remove"),
        Change::Remove(a.clone())
    );
    reg.deregister(svc, "missing")
        .await
        .expect("unknown id is fine");

    // Names cannot escape the root, and names ZooKeeper refuses are refused here, named.
    for (service, id, field) in [
        ("../escape", "x", "service name"),
        (svc, "a/b", "instance id"),
        ("rocket-🚀", "x", "service name"),
    ] {
        let err = reg
            .register(&inst(service, id, 1))
            .await
            .expect_err(service);
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    assert!(reg.instances("a/b").await.is_err());
    assert!(reg.watch("..").await.is_err());

    // A keep-alive of an instance whose node is gone answers Lost.
    let mut kazoo = Kazoo::connect(&server.addr(), Duration::from_secs(10));
    kazoo.call(json!({"op": "delete", "path": "/services/rt-orders/c"}));
    assert_eq!(
        next(&mut w, T).await.expect("remove c"),
        Change::Remove(c.clone())
    );
    assert_eq!(
        reg.keep_alive(&c, HealthStatus::Healthy)
            .await
            .expect("keep alive"),
        Liveness::Lost
    );
    // Dropping the registry closes its session: its nodes go at once.
    drop((w, client, reg));
    let gone = chi_test_support::eventually(T, || {
        let found = kazoo.call(json!({"op": "children", "path": "/services/rt-orders"}));
        async move { found.as_array().is_some_and(|a| a.is_empty()) }
    })
    .await;
    assert!(gone.is_some(), "the closed session's nodes stayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_layout_both_ways_with_a_foreign_client() {
    let server = ZkServer::start().await;
    let reg = connect(config(&server.addr(), Layout::Curator)).await;
    let watcher = connect(config(&server.addr(), Layout::Curator)).await;
    let mut kazoo = Kazoo::connect(&server.addr(), Duration::from_secs(10));
    let svc = "billing";
    let mut w = watcher.watch(svc).await.expect("watch");
    assert_eq!(next(&mut w, T).await.expect("reset"), Change::Reset(vec![]));

    // Spring Cloud Zookeeper's instance, written by kazoo: chi sees it, with its status.
    kazoo.curator_register(
        "/services",
        svc,
        "spring-1",
        7001,
        json!({"instance_status": "UP", "version": "1.4", "zone": "b"}),
    );
    let spring = match next(&mut w, T).await.expect("add") {
        Change::Add(i) => i,
        other => panic!("expected the Spring instance, got {other:?}"),
    };
    assert_eq!((spring.id.as_str(), spring.port), ("spring-1", 7001));
    assert_eq!(
        (spring.version.as_str(), spring.health),
        ("1.4", HealthStatus::Healthy)
    );
    assert_eq!(spring.meta("zone"), Some("b"));

    // chi's instance, read by kazoo as Curator reads it.
    let mine = inst(svc, "chi-1", 7002)
        .with_version("v2")
        .with_tag("api")
        .with_meta("zone", "a")
        .with_health(HealthStatus::Healthy);
    reg.register(&mine).await.expect("register");
    assert_eq!(
        next(&mut w, T).await.expect("add chi"),
        Change::Add(mine.clone())
    );
    let seen = kazoo.curator_list("/services", svc);
    let theirs = seen
        .iter()
        .find(|i| i["id"] == "chi-1")
        .expect("kazoo lists chi's instance");
    assert_eq!(theirs["name"], svc);
    assert_eq!(theirs["address"], "127.0.0.1");
    assert_eq!(theirs["port"], 7002);
    assert_eq!(
        theirs["class"],
        "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance"
    );
    assert_eq!(theirs["metadata"]["instance_status"], "UP");
    assert_eq!(theirs["metadata"]["chi.version"], "v2");
    assert_eq!(theirs["metadata"]["zone"], "a");
    assert!(theirs["uriSpec"].is_object());

    // Spring takes an instance out of service: an Update; it leaves: a Remove.
    let path = format!("/services/{svc}/spring-1");
    let mut data: serde_json::Value = serde_json::from_str(
        kazoo.call(json!({"op": "get", "path": path}))["data"]
            .as_str()
            .unwrap_or_default(),
    )
    .expect("json");
    data["payload"]["metadata"]["instance_status"] = json!("OUT_OF_SERVICE");
    kazoo.call(json!({"op": "set", "path": path, "data": data.to_string()}));
    match next(&mut w, T).await.expect("update") {
        Change::Update(i) => assert_eq!(
            (i.id.as_str(), i.health),
            ("spring-1", HealthStatus::Unhealthy)
        ),
        other => panic!("expected an Update, got {other:?}"),
    }
    kazoo.close();
    match next(&mut w, T).await.expect("remove") {
        Change::Remove(i) => assert_eq!(i.id, "spring-1"),
        other => panic!("expected a Remove, got {other:?}"),
    }
    assert_eq!(watcher.instances(svc).await.expect("instances"), vec![mine]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dubbo_layout_both_ways_with_a_foreign_client() {
    let server = ZkServer::start().await;
    let reg = connect(config(&server.addr(), Layout::Dubbo)).await;
    let mut kazoo = Kazoo::connect(&server.addr(), Duration::from_secs(10));
    let iface = "org.apache.dubbo.demo.DemoService";
    let mut w = reg.watch(iface).await.expect("watch");
    assert_eq!(next(&mut w, T).await.expect("reset"), Change::Reset(vec![]));

    let url = format!(
        "dubbo://127.0.0.1:20880/{iface}?anyhost=true&application=demo-provider&dubbo=2.0.2&interface={iface}&methods=sayHello,sayHelloAsync&pid=77&side=provider&timestamp=1700000000000&version=1.0.0&weight=60"
    );
    kazoo.dubbo_register("/dubbo", iface, &url);
    let theirs = match next(&mut w, T).await.expect("add") {
        Change::Add(i) => i,
        other => panic!("expected the Dubbo provider, got {other:?}"),
    };
    assert_eq!((theirs.address.as_str(), theirs.port), ("127.0.0.1", 20880));
    assert_eq!((theirs.version.as_str(), theirs.weight), ("1.0.0", 60));
    assert_eq!(theirs.meta("application"), Some("demo-provider"));

    let mine = inst(iface, "chi-provider", 20881)
        .with_version("2.0.0")
        .with_weight(40);
    reg.register(&mine).await.expect("register");
    assert_eq!(
        next(&mut w, T).await.expect("add chi"),
        Change::Add(mine.clone())
    );
    let urls = kazoo.dubbo_list("/dubbo", iface);
    let chi_url = urls
        .iter()
        .find(|u| u.contains(":20881/"))
        .expect("kazoo lists chi's provider");
    assert!(
        chi_url.starts_with(&format!("dubbo://127.0.0.1:20881/{iface}?")),
        "{chi_url}"
    );
    for param in [
        "version=2.0.0",
        "weight=40",
        "side=provider",
        &format!("interface={iface}"),
    ] {
        assert!(chi_url.contains(param), "{param} missing in {chi_url}");
    }
    assert_eq!(
        reg.instances(iface).await.expect("instances"),
        vec![mine.clone(), theirs.clone()]
    );
    assert_eq!(reg.services().await.expect("services"), [iface]);

    // Unhealthy: withdrawn (Dubbo consumers would call it otherwise); healthy: back.
    assert_eq!(
        reg.keep_alive(&mine, HealthStatus::Unhealthy)
            .await
            .expect("keep alive"),
        Liveness::Alive
    );
    assert_eq!(
        next(&mut w, T).await.expect("withdrawn"),
        Change::Remove(mine.clone())
    );
    assert_eq!(kazoo.dubbo_list("/dubbo", iface).len(), 1);
    assert_eq!(
        reg.keep_alive(&mine, HealthStatus::Unhealthy)
            .await
            .expect("keep alive"),
        Liveness::Alive
    );
    assert_eq!(
        reg.keep_alive(&mine, HealthStatus::Healthy)
            .await
            .expect("keep alive"),
        Liveness::Alive
    );
    assert_eq!(
        next(&mut w, T).await.expect("back"),
        Change::Add(mine.clone())
    );
    // A new weight is a new provider URL: the new node comes before the old one goes, so
    // watchers see one Update.
    let heavier = mine.clone().with_weight(80);
    reg.register(&heavier).await.expect("re-register");
    assert_eq!(
        next(&mut w, T).await.expect("update"),
        Change::Update(heavier.clone())
    );
    assert_eq!(kazoo.dubbo_list("/dubbo", iface).len(), 2);
    reg.deregister(iface, "chi-provider")
        .await
        .expect("deregister");
    assert_eq!(
        next(&mut w, T).await.expect("remove"),
        Change::Remove(heavier)
    );
    assert_eq!(kazoo.dubbo_list("/dubbo", iface).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_registry_writes_to_zookeeper_and_the_others() {
    let server = ZkServer::start().await;
    // As the config file gives them: ZooKeeper and the embedded registry, both enabled.
    let yaml = format!(
        "service_discovery:\n  registries:\n    memory:\n      enabled: true\n    zookeeper:\n      \
         enabled: true\n      servers: [\"{}\"]\n",
        server.addr()
    );
    let config =
        chi_discovery::config::Config::from_yaml_with_env(&yaml, |_| None).expect("config");
    assert_eq!(config.registries.enabled(), ["zookeeper", "memory"]);
    let registry = config.registries.connect().await.expect("connect");
    let members = registry.members().expect("a multi-registry");
    assert_eq!(
        members.iter().map(|m| m.backend()).collect::<Vec<_>>(),
        ["zookeeper", "memory"]
    );
    let manager = chi_discovery::ServiceManager::new(registry.clone());
    let a = inst("multi-orders", "a", 8601);
    manager
        .register_instance(a.clone())
        .await
        .expect("register in both");
    for m in members {
        assert_eq!(
            m.instances("multi-orders").await.expect("instances"),
            vec![a.clone()],
            "{}",
            m.backend()
        );
    }
    let mut kazoo = Kazoo::connect(&server.addr(), Duration::from_secs(10));
    assert_eq!(kazoo.curator_list("/services", "multi-orders").len(), 1);
    assert_eq!(
        registry.instances("multi-orders").await.expect("merged"),
        vec![a]
    );
    manager.shutdown().await;
    assert!(kazoo.curator_list("/services", "multi-orders").is_empty());
}
