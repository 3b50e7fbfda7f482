//! Unit tests of the Consul adapter: config checks, the mapping, the blocking-query rules.

use std::time::Duration;

use super::api::HealthQuery;
use super::config::base_url;
use super::convert::{
    aggregate_health, check_target_is_own, health_query, registration, to_instance, to_instances,
};
use super::watch::{BlockingIndex, IndexMove};
use super::wire::ServiceEntry;
use super::*;
use crate::instance::CheckTarget;
use crate::secret::Secret;

fn config() -> ConsulConfig {
    ConsulConfig {
        check_ttl: Duration::from_secs(9),
        ..ConsulConfig::default()
    }
}

#[test]
fn base_urls() {
    assert_eq!(
        base_url("127.0.0.1:8500", false).expect("url").as_str(),
        "http://127.0.0.1:8500/"
    );
    assert_eq!(
        base_url("consul.local:8501", true).expect("url").as_str(),
        "https://consul.local:8501/"
    );
    assert_eq!(
        base_url("https://h/consul", false).expect("url").as_str(),
        "https://h/consul"
    );
    for bad in ["", "ftp://h", "http://u:p@h:1", "http://h:1/?token=x"] {
        let err = base_url(bad, false).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{FIELD}.address")), "{bad}: {err}");
        assert!(!err.contains("token=x") || bad.is_empty(), "{err}");
    }
}

#[test]
fn config_debug_hides_the_token() {
    let cfg = ConsulConfig {
        token: Secret::new("s3cr3t"),
        ..config()
    };
    let consul = Consul::new(cfg).expect("consul");
    let dbg = format!("{consul:?}");
    assert!(!dbg.contains("s3cr3t"), "{dbg}");
    assert!(dbg.contains("***"), "{dbg}");
}

#[test]
fn rejects_bad_config() {
    let err = Consul::new(ConsulConfig {
        check_ttl: Duration::from_millis(1),
        ..config()
    })
    .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("{FIELD}.check_ttl")),
        "{err}"
    );
    let err = Consul::new(ConsulConfig {
        wait: Duration::from_secs(3600),
        ..config()
    })
    .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("{FIELD}.wait")),
        "{err}"
    );
}

#[test]
fn registration_carries_checks_version_and_weight() {
    let inst = Instance::new("api", "10.0.0.1", 8080)
        .with_id("api-1")
        .with_version("v2")
        .with_tag("blue")
        .with_meta("region", "eu")
        .with_weight(0);
    let checks = vec![
        HealthCheck::http("/health").every(Duration::from_millis(1500)),
        HealthCheck::tcp().thresholds(2, 3),
        HealthCheck::grpc("pkg.Svc").thresholds(1, 5),
        HealthCheck::ttl(Duration::from_secs(1)).deregister_after(Duration::from_secs(60)),
    ];
    let reg = registration(&inst, &checks, &config());
    assert_eq!(reg.meta.get(META_VERSION).map(String::as_str), Some("v2"));
    assert_eq!(reg.meta.get(META_WEIGHT).map(String::as_str), Some("0"));
    assert_eq!(reg.weights.passing, 1);
    let json = serde_json::to_value(&reg).expect("json");
    let checks = json["Checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 4, "{json}");
    assert_eq!(checks[0]["HTTP"], "http://10.0.0.1:8080/health");
    assert_eq!(checks[0]["Interval"], "1500ms");
    assert_eq!(checks[1]["TCP"], "10.0.0.1:8080");
    assert_eq!(checks[2]["GRPC"], "10.0.0.1:8080/pkg.Svc");
    assert_eq!(checks[3]["CheckID"], "chi:api-1:ttl");
    assert_eq!(checks[3]["TTL"], "9s");
    assert_eq!(checks[3]["Status"], "passing");
    assert_eq!(checks[3]["DeregisterCriticalServiceAfter"], "60s");
    assert!(checks[0].get("TTL").is_none());
    // rise / fall: Consul's own thresholds; none given, none sent (Consul's default).
    assert_eq!(checks[1]["SuccessBeforePassing"], 2);
    assert_eq!(checks[1]["FailuresBeforeCritical"], 3);
    assert_eq!(checks[2]["SuccessBeforePassing"], 1);
    assert_eq!(checks[2]["FailuresBeforeCritical"], 5);
    for c in [&checks[0], &checks[3]] {
        assert!(c.get("SuccessBeforePassing").is_none(), "{c}");
        assert!(c.get("FailuresBeforeCritical").is_none(), "{c}");
    }
}

#[test]
fn entries_map_back_onto_instances() {
    let inst = Instance::new("api", "10.0.0.1", 8080)
        .with_id("api-1")
        .with_version("v2")
        .with_tag("blue")
        .with_meta("region", "eu")
        .with_weight(0);
    let reg = registration(&inst, &[], &config());
    let json = serde_json::json!([{
        "Node": {"Address": "10.9.9.9"},
        "Service": {"ID": reg.id, "Service": reg.name, "Tags": reg.tags, "Address": reg.address,
                    "Meta": reg.meta, "Port": reg.port, "Weights": {"Passing": 1, "Warning": 1}},
        "Checks": [{"Status": "passing"}, {"Status": "warning"}]
    }]);
    let entries: Vec<ServiceEntry> = serde_json::from_value(json).expect("parse");
    let back = to_instances(entries);
    assert_eq!(back, vec![inst.with_health(HealthStatus::Healthy)]);
}

#[test]
fn health_answers_decode_into_valid_instances_only() {
    let body = br#"[
        {"Node":{"Address":"10.9.9.9"},"Service":{"ID":"ok","Service":"api","Port":80}},
        {"Service":{"ID":"../escape","Service":"api","Address":"10.0.0.1","Port":80}},
        {"Service":{"ID":"no-port","Service":"api","Address":"10.0.0.1","Port":0}},
        {"Service":{"ID":"no-address","Service":"api","Port":80}}
    ]"#;
    let list = decode_health(body).expect("a health answer");
    let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["ok"]);
    assert_eq!(list[0].address, "10.9.9.9");
    let e = decode_health(b"{}").expect_err("not a list");
    assert!(e.to_string().contains("not a health answer"), "{e}");
}

#[test]
fn agent_checks_are_limited_to_the_instances_own_address() {
    let inst = Instance::new("api", "10.0.0.1", 8080);
    for ok in [
        CheckTarget::Http("/health".into()),
        CheckTarget::Http("//169.254.169.254/x".into()),
        CheckTarget::Http("http://10.0.0.1:8080/ready".into()),
        CheckTarget::Tcp(String::new()),
        CheckTarget::Tcp("10.0.0.1:8080".into()),
        CheckTarget::Grpc("svc".into()),
    ] {
        assert!(check_target_is_own(&inst, &ok).is_ok(), "{ok:?}");
    }
    for bad in [
        CheckTarget::Http("http://169.254.169.254/latest/meta-data/".into()),
        CheckTarget::Http("http://10.0.0.1:9999/admin".into()),
        CheckTarget::Http("http://10.0.0.1@evil.example:8080/".into()),
        CheckTarget::Tcp("10.0.0.2:8080".into()),
        CheckTarget::Tcp("10.0.0.1:22".into()),
    ] {
        let e = check_target_is_own(&inst, &bad).expect_err("another host");
        assert!(e.to_string().contains("allow_other_check_hosts"), "{e}");
    }
}

#[test]
fn health_aggregation() {
    let entry = |statuses: &[&str]| -> ServiceEntry {
        serde_json::from_value(serde_json::json!({
            "Service": {"ID": "a", "Service": "s", "Port": 1},
            "Checks": statuses.iter().map(|s| serde_json::json!({"Status": s})).collect::<Vec<_>>()
        }))
        .expect("parse")
    };
    assert_eq!(
        aggregate_health(&entry(&["passing", "critical"])),
        HealthStatus::Unhealthy
    );
    assert_eq!(
        aggregate_health(&entry(&["passing", "warning"])),
        HealthStatus::Healthy
    );
    assert_eq!(aggregate_health(&entry(&[])), HealthStatus::Unknown);
    // An empty service address falls back to the node's.
    let i = to_instance(entry(&[]));
    assert_eq!(i.address, "");
}

#[test]
fn filters_become_query_parameters() {
    let f = Filter::new()
        .tag("v1")
        .meta("region", "eu \"west\"")
        .meta("odd-key", "x")
        .healthy_only();
    let q = health_query(&f);
    assert!(q.passing);
    assert_eq!(q.tags, vec!["v1"]);
    assert_eq!(
        q.filter.as_deref(),
        Some(r#"Service.Meta.region == "eu \"west\"""#)
    );
    assert_eq!(health_query(&Filter::new()), HealthQuery::default());
}

#[test]
fn blocking_index_follows_consuls_rules() {
    let i = BlockingIndex(10);
    assert_eq!(i.after_answer(12), (BlockingIndex(12), IndexMove::Forward));
    assert_eq!(i.after_answer(10), (BlockingIndex(10), IndexMove::Same));
    assert_eq!(i.after_answer(3), (BlockingIndex(0), IndexMove::Reset));
    assert_eq!(i.after_answer(0), (BlockingIndex(1), IndexMove::Same));
    assert_eq!(
        BlockingIndex(0).after_answer(0),
        (BlockingIndex(1), IndexMove::Same)
    );
}
