//! Unit tests of the ZooKeeper adapter's config and node conversions (the adapter against a real
//! server is in `tests/it/zookeeper.rs`).

use std::collections::BTreeMap;

use super::convert::{self, curator, dubbo};
use super::*;
use crate::config::Config;
use crate::instance::{HealthStatus, Instance};
use crate::registry::Registries;

fn inst() -> Instance {
    Instance::new("orders", "10.0.0.7", 8080)
        .with_version("v2")
        .with_tag("api")
        .with_tag("a,b")
        .with_meta("region", "eu")
        .with_meta("odd key", "x=1&y=ü %")
        .with_weight(3)
}

#[test]
fn curator_round_trip_every_health() {
    for health in [
        HealthStatus::Healthy,
        HealthStatus::Unhealthy,
        HealthStatus::Unknown,
    ] {
        let i = inst().with_health(health);
        let data = curator::encode(&i, 1_764_900_000_000).expect("encode");
        let back = curator::decode("orders", &i.id, &data).expect("decode");
        assert_eq!(back, i);
    }
    let plain = Instance::new("orders", "10.0.0.7", 8080);
    let data = curator::encode(&plain, 1).expect("encode");
    assert_eq!(
        curator::decode("orders", &plain.id, &data).expect("decode"),
        plain
    );
}

#[test]
fn curator_json_is_what_curator_and_spring_read() {
    let i = inst().with_health(HealthStatus::Healthy);
    let v: serde_json::Value =
        serde_json::from_slice(&curator::encode(&i, 42).expect("encode")).expect("json");
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(|k| k.as_str())
        .collect();
    for k in [
        "name",
        "id",
        "address",
        "port",
        "sslPort",
        "payload",
        "registrationTimeUTC",
        "serviceType",
        "uriSpec",
    ] {
        assert!(keys.contains(&k), "{k} missing from {v}");
    }
    assert_eq!(v["serviceType"], "DYNAMIC");
    assert_eq!(v["registrationTimeUTC"], 42);
    assert!(v["sslPort"].is_null());
    assert_eq!(v["payload"]["@class"], curator::PAYLOAD_CLASS);
    assert_eq!(v["payload"]["name"], "orders");
    let meta = &v["payload"]["metadata"];
    assert_eq!(meta["instance_status"], "UP");
    assert_eq!(meta["chi.version"], "v2");
    assert_eq!(meta["chi.weight"], "3");
    assert_eq!(meta["chi.tags"], r#"["api","a,b"]"#);
    assert_eq!(meta["region"], "eu");
    assert_eq!(v["uriSpec"]["parts"][0]["value"], "scheme");
}

#[test]
fn curator_reads_what_spring_cloud_zookeeper_writes() {
    let json = r#"{"name":"billing","id":"6a7b-uuid","address":"10.1.2.3","port":9000,
        "sslPort":null,"payload":{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
        "id":"application-1","name":"billing","metadata":{"instance_status":"OUT_OF_SERVICE",
        "version":"1.4","zone":"b","n":5}},"registrationTimeUTC":1700000000000,
        "serviceType":"DYNAMIC","uriSpec":{"parts":[]},"enabled":true}"#;
    let i = curator::decode("billing", "6a7b-uuid", json.as_bytes()).expect("decode");
    assert_eq!(i.address, "10.1.2.3");
    assert_eq!(i.port, 9000);
    assert_eq!(i.version, "1.4");
    assert_eq!(i.health, HealthStatus::Unhealthy);
    assert_eq!(i.weight, 1);
    assert_eq!(i.meta("zone"), Some("b"));
    assert_eq!(i.meta("n"), Some("5"));
    assert!(i.meta(curator::META_STATUS).is_none());
    // Plain Curator: no payload, only an SSL port.
    let bare = r#"{"name":"b","id":"x","address":"h","sslPort":8443,"payload":null,
        "registrationTimeUTC":1,"serviceType":"STATIC"}"#;
    let i = curator::decode("b", "x", bare.as_bytes()).expect("decode");
    assert_eq!((i.port, i.health), (8443, HealthStatus::Unknown));
    // Mismatched node, disabled, no port, not JSON: refused, naming the node.
    for (service, child, data) in [
        ("billing", "other-id", json),
        ("other", "6a7b-uuid", json),
        (
            "b",
            "x",
            r#"{"name":"b","id":"x","address":"h","port":1,"enabled":false}"#,
        ),
        ("b", "x", r#"{"name":"b","id":"x","address":"h"}"#),
        ("b", "x", "not json"),
    ] {
        let err = curator::decode(service, child, data.as_bytes()).expect_err(data);
        assert!(err.to_string().contains(child), "{err}");
    }
}

#[test]
fn curator_refuses_reserved_metadata_keys() {
    for key in ["chi.version", "instance_status"] {
        let err = curator::encode(&inst().with_meta(key, "x"), 1).expect_err(key);
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn dubbo_round_trip() {
    for i in [
        inst(),
        Instance::new("org.example.Demo", "::1", 20880),
        inst().with_meta("protocol", "tri"),
    ] {
        let node = dubbo::encode(&i, 7).expect("encode");
        assert!(!node.contains('/'), "{node}");
        let back = dubbo::decode(&i.name, &node).expect("decode");
        assert_eq!(back, i);
    }
}

#[test]
fn dubbo_reads_what_dubbo_writes() {
    // A provider node as Dubbo 2.7 writes it (URLEncoder.encode of the full URL).
    let url = "dubbo://192.168.1.5:20880/org.apache.dubbo.demo.DemoService?anyhost=true&application=demo-provider&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&interface=org.apache.dubbo.demo.DemoService&methods=sayHello,sayHelloAsync&pid=4242&release=2.7.23&side=provider&timestamp=1700000000000&version=1.0.0&weight=60";
    let node: String = url::form_urlencoded::byte_serialize(url.as_bytes()).collect();
    let i = dubbo::decode("org.apache.dubbo.demo.DemoService", &node).expect("decode");
    assert_eq!(i.address, "192.168.1.5");
    assert_eq!(i.port, 20880);
    assert_eq!(i.version, "1.0.0");
    assert_eq!(i.weight, 60);
    assert_eq!(
        i.id,
        "org.apache.dubbo.demo.DemoService-192.168.1.5-20880:1.0.0"
    );
    assert_eq!(i.meta("methods"), Some("sayHello,sayHelloAsync"));
    assert_eq!(i.meta("application"), Some("demo-provider"));
    for gone in [
        "interface",
        "side",
        "timestamp",
        "pid",
        "anyhost",
        "version",
        "weight",
    ] {
        assert!(i.meta(gone).is_none(), "{gone} kept");
    }
    // No weight: Dubbo's 100. A group joins the id.
    let node: String =
        url::form_urlencoded::byte_serialize(b"dubbo://h:1/S?interface=S&group=g").collect();
    let i = dubbo::decode("S", &node).expect("decode");
    assert_eq!((i.weight, i.id.as_str()), (100, "S-h-1@g"));
    // Another interface, a consumer, a disabled provider, no port: skipped, naming the node.
    for url in [
        "dubbo://h:1/T?interface=T",
        "consumer://h:1/S?category=consumers",
        "dubbo://h:1/S?enabled=false",
        "dubbo://h/S",
    ] {
        let node: String = url::form_urlencoded::byte_serialize(url.as_bytes()).collect();
        assert!(dubbo::decode("S", &node).is_err(), "{url}");
    }
}

#[test]
fn node_names_zookeeper_refuses_are_invalid_names() {
    for bad in ["ünï-名前-🚀", "a\u{E000}", "x\u{FFF5}"] {
        let err = convert::validate_node_name("service name", bad).expect_err(bad);
        assert!(err.to_string().contains("service name"), "{err}");
    }
    convert::validate_node_name("service name", "ünï-名前 ok?#%").expect("valid");
}

#[test]
fn config_defaults_and_checks() {
    let c = ZookeeperConfig::default();
    let s = c.validated().expect("valid");
    assert_eq!((s.root.as_str(), s.layout), ("/services", Layout::Curator));
    let dubbo = ZookeeperConfig {
        layout: Layout::Dubbo,
        ..ZookeeperConfig::default()
    };
    assert_eq!(dubbo.validated().expect("valid").root, "/dubbo");
    for (config, field) in [
        (ZookeeperConfig::new(Vec::<String>::new()), "servers"),
        (ZookeeperConfig::new(["nohost"]), "servers[0]"),
        (
            ZookeeperConfig {
                root: Some("/".into()),
                ..ZookeeperConfig::default()
            },
            "root",
        ),
        (
            ZookeeperConfig {
                root: Some("/a/../b".into()),
                ..ZookeeperConfig::default()
            },
            "root",
        ),
        (
            ZookeeperConfig {
                root: Some("/zookeeper/x".into()),
                ..ZookeeperConfig::default()
            },
            "root",
        ),
        (
            ZookeeperConfig {
                password: Some(crate::Secret::new("hunter2")),
                ..ZookeeperConfig::default()
            },
            "username",
        ),
    ] {
        let err = config.validate().expect_err(field).to_string();
        assert!(
            err.starts_with(&format!("{FIELD}.{field}:")),
            "{field}: {err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn config_file_block_and_env_credentials() {
    let yaml = r#"
service_discovery:
  registries:
    zookeeper:
      enabled: true
      servers: ["127.0.0.1:2181", "10.0.0.2:2181"]
      root: /apps
      layout: dubbo
      session_timeout: 4s
      username: chi
      password: file-secret
      watch: oneshot
"#;
    let env: BTreeMap<&str, &str> = [(ENV_PASSWORD, "env-secret")].into();
    let c = Config::from_yaml_with_env(yaml, |k| env.get(k).map(|v| v.to_string())).expect("valid");
    let z = c.registries.zookeeper.expect("zookeeper enabled");
    assert_eq!(z.servers.len(), 2);
    assert_eq!(
        (z.root(), z.layout, z.watch),
        ("/apps", Layout::Dubbo, WatchMode::Oneshot)
    );
    assert_eq!(z.session_timeout, std::time::Duration::from_secs(4));
    assert_eq!(z.username.as_deref(), Some("chi"));
    assert_eq!(z.password.as_ref().map(|p| p.expose()), Some("env-secret"));
    assert!(
        c.registries.memory.is_none(),
        "zookeeper alone: no embedded registry"
    );
    assert!(!format!("{z:?}").contains("secret"), "{z:?}");

    for (bad, field, says) in [
        ("layout: eureka", "layout", "\"curator\" or \"dubbo\""),
        ("watch: sometimes", "watch", "oneshot"),
        ("session_timeout: 4x", "session_timeout", "invalid duration"),
        ("root: /", "root", "below `/`"),
        ("servers: []", "servers", "at least one"),
        ("servers: [\"h\"]", "servers[0]", "host:port"),
    ] {
        let yaml = format!(
            "service_discovery:\n  registries:\n    zookeeper:\n      enabled: true\n      \
             servers: [\"127.0.0.1:2181\"]\n      {bad}\n"
        )
        .replace("servers: [\"127.0.0.1:2181\"]\n      servers", "servers");
        let err = Config::from_yaml_with_env(&yaml, |_| None)
            .expect_err(bad)
            .to_string();
        assert!(
            err.starts_with(&format!("{FIELD}.{field}:")),
            "{bad}: {err}"
        );
        assert!(err.contains(says), "{bad}: {err}");
    }
    let disabled = "service_discovery:\n  registries:\n    zookeeper:\n      enabled: false\n";
    let c = Config::from_yaml_with_env(disabled, |_| None).expect("valid");
    assert!(c.registries.zookeeper.is_none() && c.registries.memory.is_some());
}

#[test]
fn registry_urls() {
    let env = |k: &str| (k == ENV_USERNAME).then(|| "svc".to_owned());
    let r = Registries::from_url(
        "zookeeper://127.0.0.1:2181,10.0.0.2:2182/apps/x?layout=dubbo&watch=oneshot",
        &env,
    )
    .expect("valid");
    let z = r.zookeeper.clone().expect("zookeeper");
    assert_eq!(z.servers, ["127.0.0.1:2181", "10.0.0.2:2182"]);
    assert_eq!(
        (z.root(), z.layout, z.watch),
        ("/apps/x", Layout::Dubbo, WatchMode::Oneshot)
    );
    assert_eq!(z.username.as_deref(), Some("svc"));
    assert_eq!(r.enabled(), ["zookeeper"]);
    let plain = Registries::from_url("zookeeper://h:2181", &|_| None).expect("valid");
    let z = plain.zookeeper.clone().expect("zookeeper");
    assert_eq!((z.root(), z.layout), ("/services", Layout::Curator));
    assert_eq!(
        plain.identity(),
        "zookeeper(servers=h:2181,root=/services,layout=curator)"
    );
    let dubbo = Registries::from_url("zookeeper://h:2181?layout=dubbo", &|_| None).expect("valid");
    assert_eq!(dubbo.zookeeper.expect("zookeeper").root(), "/dubbo");
    for (bad, says) in [
        ("zookeeper://h", "host:port"),
        ("zookeeper://h:1?layout=x", "layout"),
        (
            "zookeeper://h:1?flavour=x",
            "unknown zookeeper:// parameter",
        ),
        ("zookeeper://u:p@h:1", "credentials"),
        ("zookeeper://h:1/a/../b", "`..`"),
    ] {
        let err = Registries::from_url(bad, &|_| None)
            .expect_err(bad)
            .to_string();
        assert!(err.starts_with("--registry"), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn the_fuzz_seeds_are_instances() {
    // The first byte picks the layout, as in the `zookeeper_node` fuzz target.
    let curator = include_bytes!("../../../fuzz/corpus/zookeeper_node/curator");
    let i = convert::decode(Layout::Curator, "svc", "svc-1", &curator[1..]).expect("curator seed");
    assert_eq!(
        (i.version.as_str(), i.weight, i.health),
        ("v2", 3, HealthStatus::Healthy)
    );
    let dubbo = include_bytes!("../../../fuzz/corpus/zookeeper_node/dubbo");
    let name = std::str::from_utf8(&dubbo[1..]).expect("utf-8");
    let i = convert::decode(Layout::Dubbo, "svc", name, &[]).expect("dubbo seed");
    assert_eq!(
        (i.version.as_str(), i.weight, i.tags.as_slice()),
        ("1.0.0", 60, &["a".to_owned()][..])
    );
}
