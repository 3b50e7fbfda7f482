//! A registration's health check, run where each real registry expects it: Consul's agent runs
//! the HTTP check itself and reaps a crashed registrant after `deregister_critical_service_after`;
//! etcd and Nacos run none, so the manager probes in-process and gates the registration on the
//! verdict (rise / fall thresholds).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use chi_discovery::Chi;
use chi_discovery::config::Config;

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

/// An HTTP endpoint whose `/health` fails the next `fail_next` probes (or every probe while
/// `failing`), counting what it answered.
#[derive(Clone, Default)]
struct Flaky {
    fail_next: Arc<AtomicU32>,
    failing: Arc<AtomicBool>,
    /// Probes answered, and how many of them failed.
    served: Arc<AtomicU32>,
    failed: Arc<AtomicU32>,
}

impl Flaky {
    async fn start(&self) -> u16 {
        async fn health(State(f): State<Flaky>) -> StatusCode {
            f.served.fetch_add(1, Ordering::SeqCst);
            let fail = f.failing.load(Ordering::SeqCst)
                || f.fail_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if fail {
                f.failed.fetch_add(1, Ordering::SeqCst);
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new()
            .route("/health", axum::routing::get(health))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        port
    }

    fn served(&self) -> u32 {
        self.served.load(Ordering::SeqCst)
    }
}

/// The status of the HTTP check the agent runs for `service`, as the agent has it now (the
/// catalog, which discovery reads, follows when the agent syncs it).
async fn consul_check_status(agent: &ConsulAgent, service: &str) -> Option<String> {
    let url = format!("{}/v1/agent/checks", agent.url());
    let body: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
    body.as_object()?
        .values()
        .find(|c| {
            c["ServiceName"] == service
                && c["Name"].as_str().is_some_and(|n| n.starts_with("HTTP "))
        })
        .and_then(|c| c["Status"].as_str().map(str::to_owned))
}

/// Follows the check while the endpoint answers `more` probes after `from`: every status seen.
async fn statuses_over(
    agent: &ConsulAgent,
    service: &str,
    flaky: &Flaky,
    from: u32,
    more: u32,
) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Polls a little after the last probe counted too, so its result is in.
    let mut after_last = None;
    loop {
        if let Some(s) = consul_check_status(agent, service).await
            && seen.last() != Some(&s)
        {
            seen.push(s);
        }
        match after_last {
            Some(at) if Instant::now() >= at => return seen,
            None if flaky.served() >= from + more => {
                after_last = Some(Instant::now() + Duration::from_millis(300));
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "only {} probes", flaky.served());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// The config's `rise` / `fall` reach the check Consul's agent runs (`SuccessBeforePassing`,
/// `FailuresBeforeCritical`): with `fall: 3`, one or two failed probes leave the instance
/// passing and the third makes it critical; with `rise: 2`, it passes again on the second
/// success. Through `Chi` from a YAML config, against a real Consul. (Consul applies a check's
/// first result at once: its counters start at the thresholds. It also raises an interval
/// under 1 s to 1 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_runs_the_check_with_the_configs_rise_and_fall() {
    let agent = ConsulAgent::start().await;
    let flaky = Flaky::default();
    let port = flaky.start().await;
    let service = "thresholds";
    let yaml = format!(
        r#"service_discovery:
  registration:
    name: "{service}"
    address: "127.0.0.1"
    port: {port}
    health_check:
      http: "/health"
      interval: "1s"
      timeout: "500ms"
      rise: 2
      fall: 3
  registries:
    consul:
      enabled: true
      address: "{}"
"#,
        agent.addr()
    );
    let chi = Chi::new(Config::from_yaml(&yaml).expect("config"))
        .await
        .expect("chi");
    chi.register()
        .await
        .expect("register")
        .require_complete()
        .expect("in consul");
    assert!(
        !chi.manager().status()[0].probed_here,
        "Consul's agent runs it"
    );
    let passing = eventually(Duration::from_secs(10), || async {
        consul_check_status(&agent, service).await.as_deref() == Some("passing")
    })
    .await;
    assert!(passing.is_some(), "the check never passed");

    // One failed probe, then two more probes: passing throughout. Then two failed in a row.
    for failures in [1, 2] {
        let from = flaky.served();
        flaky.fail_next.store(failures, Ordering::SeqCst);
        let seen = statuses_over(&agent, service, &flaky, from, failures + 2).await;
        assert_eq!(
            seen,
            ["passing"],
            "{failures} failed probe(s) with fall 3 turned the check"
        );
        assert_eq!(flaky.fail_next.load(Ordering::SeqCst), 0, "the probes ran");
    }

    // Failing from now on: critical on the third failure, not before.
    let failed_before = flaky.failed.load(Ordering::SeqCst);
    flaky.failing.store(true, Ordering::SeqCst);
    let critical = eventually(Duration::from_secs(10), || async {
        consul_check_status(&agent, service).await.as_deref() == Some("critical")
    })
    .await;
    assert!(critical.is_some(), "never critical");
    let failures = flaky.failed.load(Ordering::SeqCst) - failed_before;
    assert_eq!(
        failures, 3,
        "critical after {failures} failed probes with fall 3"
    );
    println!("consul: critical after {failures} failed probes in a row (fall 3), {critical:?}");
    // Discovery sees it once the agent has synced the catalog.
    let unhealthy = eventually(Duration::from_secs(15), || async {
        chi.registry()
            .instances(service)
            .await
            .is_ok_and(|l| l.len() == 1 && l[0].health == chi_discovery::HealthStatus::Unhealthy)
    })
    .await;
    assert!(unhealthy.is_some(), "discovery never saw it critical");

    // Rise 2: one success is not enough, the second is.
    let from = flaky.served();
    flaky.failing.store(false, Ordering::SeqCst);
    let seen = statuses_over(&agent, service, &flaky, from, 1).await;
    assert_eq!(
        seen,
        ["critical"],
        "one success with rise 2 turned the check"
    );
    let seen = statuses_over(&agent, service, &flaky, from + 1, 1).await;
    assert_eq!(seen.last().map(String::as_str), Some("passing"), "{seen:?}");
    chi.shutdown().await;
}
