//! A registration's health check, run where each real registry expects it: Consul's agent runs
//! the HTTP check itself and reaps a crashed registrant after `deregister_critical_service_after`;
//! etcd and Nacos run none, so the manager probes in-process and gates the registration on the
//! verdict (rise / fall thresholds).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chi_discovery::registry::consul::{Consul, ConsulConfig};
use chi_discovery::registry::etcd::{Etcd, EtcdConfig};
use chi_discovery::registry::nacos::Nacos;
use chi_discovery::{HealthCheck, HealthStatus, Registry, ServiceConfig, ServiceManager};
use chi_test_support::consul::ConsulAgent;
use chi_test_support::eventually;
use chi_test_support::nacos::NacosServer;

use crate::health::HttpServer;

/// Scheduling slack on a loaded 2-core machine, added to the documented bounds.
const SLACK: Duration = Duration::from_secs(1);

fn checked(name: &str, port: u16, check: HealthCheck) -> ServiceConfig {
    ServiceConfig {
        health_check: Some(check),
        ..ServiceConfig::new(name, "127.0.0.1", port)
    }
}

/// True when `id` is listed and usable (Unknown or Healthy).
async fn usable(registry: &dyn Registry, service: &str, id: &str) -> Option<HealthStatus> {
    match registry.instances(service).await {
        Ok(list) => list.iter().find(|i| i.id == id).map(|i| i.health),
        Err(_) => None,
    }
}

/// The etcd / Nacos story: the manager probes, an endpoint that dies leaves healthy discovery
/// within interval x fall (+ timeout), and one that comes back returns within interval x rise.
async fn gated_by_the_local_probe(registry: Arc<dyn Registry>, service: &str) {
    let mut server = HttpServer::start().await;
    let interval = Duration::from_millis(300);
    let (rise, fall) = (2, 3);
    let check = HealthCheck::http("/health")
        .every(interval)
        .timeout(Duration::from_millis(200))
        .thresholds(rise, fall);
    let manager = ServiceManager::new(registry.clone());
    let config = checked(service, server.port, check);
    let id = config.instance_id();
    manager.register(config).await.expect("register");
    assert!(
        manager.status()[0].probed_here,
        "etcd and Nacos run no checks"
    );
    let healthy =
        || async { usable(&*registry, service, &id).await == Some(HealthStatus::Healthy) };
    eventually(Duration::from_secs(10), healthy)
        .await
        .expect("healthy after the first probe");

    server.stop();
    let gone = eventually(Duration::from_secs(10), || async {
        !usable(&*registry, service, &id)
            .await
            .is_some_and(HealthStatus::is_usable)
    })
    .await;
    let Some(gone) = gone else {
        panic!(
            "did not leave healthy discovery: {:?}, manager: {:?}",
            registry.instances(service).await,
            manager.status()
        )
    };
    let bound = interval * fall + Duration::from_millis(200) + SLACK;
    println!("{service}: endpoint died -> out of healthy discovery in {gone:?} (bound {bound:?})");
    assert!(gone <= bound, "took {gone:?}, bound {bound:?}");

    server.listen().await;
    let back = eventually(Duration::from_secs(10), healthy)
        .await
        .expect("back in healthy discovery");
    let bound = interval * rise + SLACK;
    println!("{service}: endpoint back -> healthy in {back:?} (bound {bound:?})");
    assert!(back <= bound, "took {back:?}, bound {bound:?}");

    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registration_follows_the_local_probe() {
    let server = chi_test_support::etcd::Etcd::single().await;
    let etcd = Etcd::connect(EtcdConfig {
        endpoints: server.endpoints(),
        lease_ttl: Duration::from_secs(5),
        ..EtcdConfig::default()
    })
    .await
    .expect("connect to etcd");
    gated_by_the_local_probe(Arc::new(etcd), "checked-etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_registration_follows_the_local_probe() {
    let server = NacosServer::start();
    let nacos = Nacos::connect(server.config())
        .await
        .expect("connect to rnacos");
    gated_by_the_local_probe(Arc::new(nacos), "checked-nacos").await;
}

/// Consul runs the HTTP check itself. The registrant crashes (its keep-alives stop without a
/// deregistration, its endpoint dies): Consul reaps the service on its own, after
/// `deregister_critical_service_after` (raised to Consul's minimum of 1 minute; its reaper runs
/// every 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_reaps_a_crashed_registrant_after_deregister_critical_service_after() {
    let agent = ConsulAgent::start().await;
    let consul = Consul::new(ConsulConfig {
        address: agent.addr(),
        ..ConsulConfig::default()
    })
    .expect("consul");
    let registry: Arc<dyn Registry> = Arc::new(consul);
    let mut server = HttpServer::start().await;
    let check = HealthCheck::http("/health")
        .every(Duration::from_secs(1))
        .timeout(Duration::from_millis(500))
        .deregister_after(Duration::from_secs(30));
    let manager = ServiceManager::new(registry.clone());
    let config = checked("reaped", server.port, check);
    let id = config.instance_id();
    manager.register(config).await.expect("register");
    assert!(!manager.status()[0].probed_here, "Consul's agent runs it");

    let checks_url = format!("{}/v1/health/checks/reaped", agent.url());
    let http_check_status = || async {
        let body: serde_json::Value = reqwest::get(&checks_url)
            .await
            .expect("consul answers")
            .json()
            .await
            .expect("json");
        body.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["Name"].as_str().is_some_and(|n| n.starts_with("HTTP ")))
            .and_then(|c| c["Status"].as_str().map(str::to_owned))
    };
    eventually(Duration::from_secs(10), || async {
        http_check_status().await.as_deref() == Some("passing")
    })
    .await
    .expect("Consul's agent ran the HTTP check and it passes");

    // The crash: no deregistration, the keep-alives stop, the endpoint dies.
    drop(manager);
    server.stop();
    eventually(Duration::from_secs(10), || async {
        http_check_status().await.as_deref() == Some("critical")
    })
    .await
    .expect("the HTTP check turns critical");
    let critical_at = Instant::now();

    let services_url = format!("{}/v1/agent/services", agent.url());
    let listed = || async {
        let body: serde_json::Value = reqwest::get(&services_url)
            .await
            .expect("consul answers")
            .json()
            .await
            .expect("json");
        body.get(&id).is_some()
    };
    let reaped = eventually(Duration::from_secs(120), || async { !listed().await })
        .await
        .expect("Consul reaped the crashed registrant");
    let after = critical_at.elapsed();
    println!("consul: critical -> reaped in {after:?} ({reaped:?} of polling)");
    assert!(
        after >= Duration::from_secs(55),
        "reaped after {after:?}: before Consul's 1-minute minimum?"
    );
    assert!(after <= Duration::from_secs(100), "reaped after {after:?}");
}
