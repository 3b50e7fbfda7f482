//! The specification's scenario and config file, run rather than only compiled.
//!
//! - The `user_order` example's scenario (its `scenario.rs`, included here as is):
//!   `user-service` v1 and v2 in two regions and an `order-service` calling it by name through
//!   `Chi::http`, on the embedded registry, Consul, etcd, Nacos and ZooKeeper (real servers on
//!   loopback).
//!   Each routed request must be answered by exactly the instances its headers select: the
//!   version asked for, the client's region, the default version when none is asked, the
//!   nearest listed region for a region with no instance, the default version for a version
//!   nobody runs.
//! - `Chi::from_file` on `examples/chi-config.yaml` as written (Consul enabled; only the agent's
//!   address is this test's own Consul): the instance registered with its HTTP check, as
//!   Consul's API shows it (its `0.0.0.0`, which Consul refuses, advertised as this host's
//!   address), and a peer called by name through `chi.http()`.

#[path = "../../examples/user_order/scenario.rs"]
mod scenario;

use std::time::Instant;

use scenario::Answer;

/// Who must answer each request of [`scenario::REQUESTS`], and the rules that decide.
fn expected() -> Vec<Answer> {
    let answer = |version, region, answered_by: &[&str], rules: &str| Answer {
        version,
        region,
        answered_by: answered_by.iter().map(|s| (*s).to_owned()).collect(),
        rules: rules.to_owned(),
    };
    vec![
        // No version: the default (v1), in the client's region.
        answer(
            None,
            Some("us-east-1"),
            &["v1 us-east-1a"],
            "version default, geo same_region",
        ),
        // The version asked for, in the client's region, whichever region that is.
        answer(
            Some("v2"),
            Some("us-east-1"),
            &["v2 us-east-1b"],
            "version requested, geo same_region",
        ),
        answer(
            Some("v2"),
            Some("us-west-2"),
            &["v2 us-west-2a"],
            "version requested, geo same_region",
        ),
        // A region with no instance: the first region the topology lists.
        answer(
            Some("v1"),
            Some("eu-central-1"),
            &["v1 us-east-1a"],
            "version requested, geo to_neighbour",
        ),
        // A version nobody runs: the default version, any region (the client says none).
        answer(
            Some("v3"),
            None,
            &["v1 us-east-1a", "v1 us-west-2a"],
            "version to_default, geo unlocated",
        ),
    ]
}

async fn scenario_on(url: &str) {
    let start = Instant::now();
    let answers = scenario::run(url)
        .await
        .unwrap_or_else(|e| panic!("the scenario on {url} failed: {e}"));
    for a in &answers {
        eprintln!(
            "{url}: version={:?} region={:?} answered by {:?} ({})",
            a.version, a.region, a.answered_by, a.rules
        );
    }
    eprintln!("{url}: the scenario took {:?}", start.elapsed());
    assert_eq!(answers, expected(), "on {url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_on_the_embedded_registry() {
    scenario_on("memory").await;
}

#[cfg(feature = "consul")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_on_consul() {
    let _heavy = chi_test_support::heavy().await;
    let agent = chi_test_support::consul::ConsulAgent::start().await;
    scenario_on(&format!("consul://{}", agent.addr())).await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_on_etcd() {
    let _heavy = chi_test_support::heavy().await;
    let server = chi_test_support::etcd::Etcd::single().await;
    scenario_on(&format!("etcd://{}", server.endpoint())).await;
}

#[cfg(feature = "nacos")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_on_nacos() {
    let _heavy = chi_test_support::heavy().await;
    let server = chi_test_support::nacos::NacosServer::start();
    scenario_on(&format!("nacos://{}", server.addr())).await;
}

#[cfg(feature = "zookeeper")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_on_zookeeper() {
    let _heavy = chi_test_support::heavy().await;
    let server = chi_test_support::zookeeper::ZkServer::start().await;
    scenario_on(&format!("zookeeper://{}", server.addr())).await;
}

#[cfg(feature = "consul")]
mod from_file {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::routing::get;
    use chi_discovery::registry::consul::{Consul, ConsulConfig};
    use chi_discovery::{Chi, HealthCheck, Registry, ServiceConfig, ServiceManager};
    use chi_test_support::consul::ConsulAgent;
    use chi_test_support::eventually;

    const EXAMPLE: &str = include_str!("../../../../examples/chi-config.yaml");
    const WRITTEN_ADDRESS: &str = "address: \"127.0.0.1:8500\"";

    /// A real HTTP server for `order-service` on a free port: `/orders/{id}` and `/health`.
    async fn order_service() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = Router::new()
            .route(
                "/orders/{id}",
                get(
                    |axum::extract::Path(id): axum::extract::Path<String>| async move {
                        format!("order {id}")
                    },
                ),
            )
            .route("/health", get(|| async { "ok" }));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (port, task)
    }

    async fn agent_json(agent: &ConsulAgent, path: &str) -> serde_json::Value {
        reqwest::get(format!("{}{path}", agent.url()))
            .await
            .expect("Consul answers")
            .json()
            .await
            .expect("JSON")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_config_file_against_a_real_consul() {
        let agent = ConsulAgent::start().await;
        // The file as written; only the agent's address is this test's own.
        assert_eq!(EXAMPLE.matches(WRITTEN_ADDRESS).count(), 1);
        let text = EXAMPLE.replace(WRITTEN_ADDRESS, &format!("address: \"{}\"", agent.addr()));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chi-config.yaml");
        std::fs::write(&path, text).expect("write");
        let chi = Chi::from_file(&path)
            .await
            .expect("the stack from the file");
        assert_eq!(chi.config().registries.enabled(), ["consul"]);

        // A peer, registered in the same Consul with a check Consul runs.
        let (port, _peer) = order_service().await;
        let consul: Arc<dyn Registry> = Arc::new(
            Consul::new(ConsulConfig {
                address: agent.addr(),
                ..ConsulConfig::default()
            })
            .expect("consul"),
        );
        let peers = ServiceManager::new(consul);
        let mut peer = ServiceConfig::new("order-service", "127.0.0.1", port);
        peer.version = "v1".to_owned();
        peer.tags = vec!["v1".to_owned()];
        peer.health_check = Some(
            HealthCheck::http("/health")
                .every(Duration::from_secs(1))
                .timeout(Duration::from_millis(500)),
        );
        peers.register(peer).await.expect("register the peer");

        // The file's registration, with its HTTP check, as Consul's API shows it.
        let report = chi.register().await.expect("register");
        assert!(report.is_complete(), "{report:?}");
        let services = agent_json(&agent, "/v1/agent/services").await;
        let (id, service) = services
            .as_object()
            .expect("a map of services")
            .iter()
            .find(|(_, s)| s["Service"] == "user-service")
            .unwrap_or_else(|| panic!("user-service is registered: {services}"));
        // `0.0.0.0` (which Consul refuses) is advertised as this host's address.
        let host = chi_discovery::host_address(false).to_string();
        assert_eq!(service["Address"], host.as_str(), "{service}");
        assert_eq!(service["Port"], 8080, "{service}");
        let tags: Vec<&str> = service["Tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        for tag in ["api", "user", "v1"] {
            assert!(tags.contains(&tag), "tag {tag}: {service}");
        }
        assert_eq!(service["Meta"]["region"], "us-east-1", "{service}");
        assert_eq!(service["Meta"]["datacenter"], "dc1", "{service}");
        // Consul 1.8 shows no check definition; the check's output names what its agent probes
        // (it runs the first probe within the interval, 10 s).
        let url = format!("http://{host}:8080/health");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let seen = loop {
            let checks = agent_json(&agent, "/v1/agent/checks").await;
            let check = checks.as_object().and_then(|c| {
                c.values()
                    .find(|c| c["ServiceID"] == id.as_str() && c["Type"] == "http")
                    .cloned()
            });
            let probed = check
                .as_ref()
                .is_some_and(|c| c["Output"].as_str().is_some_and(|o| o.contains(&url)));
            if probed || std::time::Instant::now() > deadline {
                break check.unwrap_or(checks);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let probed = seen["Output"].as_str().is_some_and(|o| o.contains(&url));
        eprintln!("user-service's check in Consul: {seen}");
        assert!(probed, "Consul's agent probes {url}: {seen}");
        assert_eq!(seen["Name"], "HTTP /health", "{seen}");

        // The peer, called by name.
        let http = chi.http();
        let discovery = chi.discovery();
        let answered = eventually(Duration::from_secs(15), || {
            let http = http.clone();
            async move {
                match http
                    .get("http://order-service/orders/7", &Default::default())
                    .await
                {
                    Ok(r) => r.text().await.is_ok_and(|t| t == "order 7"),
                    Err(_) => {
                        discovery.forget("order-service");
                        false
                    }
                }
            }
        })
        .await;
        assert!(
            answered.is_some(),
            "order-service answers through chi.http()"
        );

        chi.shutdown().await;
        let services = agent_json(&agent, "/v1/agent/services").await;
        assert!(
            !services.to_string().contains("user-service"),
            "deregistered on shutdown: {services}"
        );
        peers.shutdown().await;
    }
}
