use super::*;
use crate::HealthStatus;
use crate::routing::Route;

const EXAMPLE: &str = include_str!("../../../../examples/chi-config.yaml");

fn no_env(_: &str) -> Option<String> {
    None
}

/// The example file as written (Consul enabled), pointed at the embedded registry instead: the
/// stack reads every block of it.
#[tokio::test]
async fn the_example_file_builds_the_whole_stack() {
    let config = Config::from_yaml_with_env(EXAMPLE, no_env).expect("the example loads as written");
    let memory = Arc::new(crate::registry::Memory::new());
    let chi = Chi::over(config, memory.clone()).expect("stack");
    assert_eq!(chi.routers().strategy().as_str(), "weighted_round_robin");
    assert!(chi.routers().health_check_enabled());
    assert_eq!(chi.config().cache.max_size, 1000);

    let report = chi.register().await.expect("register");
    assert!(report.is_complete());
    let status = chi.manager().status();
    assert_eq!(status.len(), 1);
    assert!(
        status[0].probed_here,
        "the embedded registry runs no checks: chi probes"
    );

    let snapshot = chi
        .discovery()
        .discover("user-service")
        .await
        .expect("discover");
    assert_eq!(snapshot.instances().len(), 1);
    assert_eq!(snapshot.instances()[0].version, "v1.0.0");

    let router = chi.routers().router();
    let route = Route {
        version: Some("v1.0.0"),
        ..Route::default()
    };
    let routed = router.pick(&snapshot, &route).expect("a pick");
    assert_eq!(routed.instance().name, "user-service");

    chi.shutdown().await;
    assert!(
        memory
            .instances("user-service")
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn register_without_a_registration_names_the_block() {
    let chi = Chi::new(Config::default()).await.expect("stack");
    let err = chi.register().await.unwrap_err().to_string();
    assert!(err.starts_with("service_discovery.registration:"), "{err}");
}

/// `health_check_enabled: false` reaches the stack's routers: a critical instance is picked.
#[tokio::test]
async fn health_check_enabled_false_reaches_the_routers() {
    let yaml = "service_discovery:\n  load_balancer:\n    strategy: round_robin\n    health_check_enabled: false\n";
    let config = Config::from_yaml_with_env(yaml, no_env).expect("loads");
    let memory = Arc::new(crate::registry::Memory::new());
    memory
        .register(&crate::Instance::new("svc", "127.0.0.1", 1).with_health(HealthStatus::Unhealthy))
        .await
        .expect("register");
    memory
        .register(&crate::Instance::new("svc", "127.0.0.1", 2).with_health(HealthStatus::Healthy))
        .await
        .expect("register");
    let chi = Chi::over(config, memory).expect("stack");
    let snapshot = chi.discovery().discover("svc").await.expect("discover");
    let router = chi.routers().router();
    let ports: std::collections::BTreeSet<u16> = (0..10)
        .filter_map(|_| router.pick(&snapshot, &Route::default()))
        .map(|r| r.instance().port)
        .collect();
    assert_eq!(ports, [1, 2].into(), "the unhealthy instance is picked too");
}

/// `load_balancer.subset_size: 2`, three clients of `web` over six `api` instances: each client
/// picks among two, and together they cover all six (one client each).
#[tokio::test]
async fn subsetting_deals_each_client_its_share() {
    let memory = Arc::new(crate::registry::Memory::new());
    for port in 1..=6 {
        memory
            .register(
                &crate::Instance::new("api", "127.0.0.1", port).with_health(HealthStatus::Healthy),
            )
            .await
            .expect("register");
    }
    let mut stacks = Vec::new();
    for port in 1..=3 {
        let yaml = format!(
            "service_discovery:\n  registration:\n    name: web\n    address: 127.0.0.1\n    port: {port}\n  load_balancer:\n    strategy: round_robin\n    subset_size: 2\n"
        );
        let config = Config::from_yaml_with_env(&yaml, no_env).expect("loads");
        let chi = Chi::over(config, memory.clone()).expect("stack");
        chi.register().await.expect("register");
        stacks.push(chi);
    }
    let start = std::time::Instant::now();
    loop {
        let mut union = std::collections::BTreeSet::new();
        let mut sizes = Vec::new();
        for chi in &stacks {
            let snapshot = chi.discovery().discover("api").await.expect("discover");
            let router = chi.routers().router();
            let picked: std::collections::BTreeSet<u16> = (0..20)
                .filter_map(|_| router.pick(&snapshot, &Route::default()))
                .map(|r| r.instance().port)
                .collect();
            sizes.push(picked.len());
            union.extend(picked);
        }
        if sizes == [2, 2, 2] && union.len() == 6 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "subsets {sizes:?} covering {union:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn subset_size_needs_a_registration() {
    let err = Config::from_yaml_with_env(
        "service_discovery:\n  load_balancer:\n    subset_size: 20\n",
        no_env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("service_discovery.load_balancer.subset_size: needs"),
        "{err}"
    );
}

/// The stack's one HTTP helper feeds its circuit breaker's refusals to [`Chi::metrics`]: one
/// call holds the only instance's only slot (a listener that never answers), the next is refused
/// at once and shows in the scrape.
#[cfg(all(feature = "metrics", feature = "http"))]
#[tokio::test]
async fn circuit_breaker_refusals_reach_the_metrics() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let memory = Arc::new(crate::registry::Memory::new());
    memory
        .register(&crate::Instance::new("slow", "127.0.0.1", port))
        .await
        .expect("register");
    let mut config = Config::default();
    config.load_balancer.max_requests_per_instance = Some(1);
    let chi = Chi::over(config, memory).expect("stack");
    let mut registry = prometheus_client::registry::Registry::default();
    let _metrics = chi.metrics(&mut registry);

    let http = chi.http();
    let held =
        tokio::spawn(async move { http.get("http://slow/", &::http::HeaderMap::new()).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let refused = chi
        .http()
        .get("http://slow/", &::http::HeaderMap::new())
        .await;
    assert!(
        matches!(
            refused,
            Err(crate::integration::HttpError::Discovery(
                crate::Error::Overloaded { .. }
            ))
        ),
        "{refused:?}"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("chi_circuit_breaker_overflows_total{service=\"slow\"} 1"),
        "{text}"
    );
    held.abort();
}
