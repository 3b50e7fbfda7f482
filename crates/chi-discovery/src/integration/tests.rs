use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tower::discover::Change as TowerChange;
use tower::{Service, ServiceExt};

use super::*;
use crate::DiscoveryClient;
use crate::instance::{HealthStatus, Instance};
use crate::registry::{Memory, Registry};

fn inst(port: u16) -> Instance {
    Instance::new("echo", "127.0.0.1", port).with_health(HealthStatus::Healthy)
}

fn key<S>(c: &TowerChange<String, S>) -> String {
    match c {
        TowerChange::Insert(k, _) => format!("+{k}"),
        TowerChange::Remove(k) => format!("-{k}"),
    }
}

async fn next_keys<St>(d: &mut St, n: usize) -> Vec<String>
where
    St: futures_util::Stream<Item = Result<TowerChange<String, u16>, Infallible>> + Unpin,
{
    let mut out = Vec::new();
    for _ in 0..n {
        let c = tokio::time::timeout(Duration::from_secs(5), d.next())
            .await
            .expect("a change in time")
            .expect("stream open")
            .expect("infallible");
        out.push(key(&c));
    }
    out
}

#[tokio::test]
async fn watch_events_become_inserts_and_removes() {
    let memory = Arc::new(Memory::new());
    memory.register(&inst(1)).await.expect("register");
    memory.register(&inst(2)).await.expect("register");
    let client = DiscoveryClient::new(memory.clone());
    let watcher = client.watch("echo").await.expect("watch");
    let mut d = Discover::new(watcher, |i: &Instance| Ok::<_, Infallible>(i.port));
    assert_eq!(
        next_keys(&mut d, 2).await,
        ["+echo-127.0.0.1-1", "+echo-127.0.0.1-2"]
    );
    // Unhealthy: removed; healthy again: inserted again.
    memory
        .register(&inst(2).with_health(HealthStatus::Unhealthy))
        .await
        .expect("update");
    assert_eq!(next_keys(&mut d, 1).await, ["-echo-127.0.0.1-2"]);
    memory.register(&inst(2)).await.expect("update");
    assert_eq!(next_keys(&mut d, 1).await, ["+echo-127.0.0.1-2"]);
    // A weight change is no change for tower; a removal is.
    memory
        .register(&inst(1).with_weight(5))
        .await
        .expect("update");
    memory
        .deregister("echo", "echo-127.0.0.1-1")
        .await
        .expect("deregister");
    assert_eq!(next_keys(&mut d, 1).await, ["-echo-127.0.0.1-1"]);
    // Moved to another address under the same id: replaced.
    memory
        .register(&inst(3).with_id("echo-127.0.0.1-2"))
        .await
        .expect("move");
    assert_eq!(
        next_keys(&mut d, 2).await,
        ["-echo-127.0.0.1-2", "+echo-127.0.0.1-2"]
    );
    assert_eq!(d.ids().collect::<Vec<_>>(), ["echo-127.0.0.1-2"]);
}

/// `health_check_enabled: false`: unhealthy instances are handed out too, and a health change
/// is no change for tower.
#[tokio::test]
async fn skip_unhealthy_false_hands_out_unhealthy_instances() {
    let memory = Arc::new(Memory::new());
    memory
        .register(&inst(1).with_health(HealthStatus::Unhealthy))
        .await
        .expect("register");
    memory.register(&inst(2)).await.expect("register");
    let client = DiscoveryClient::new(memory.clone());
    let watcher = client.watch("echo").await.expect("watch");
    let mut d =
        Discover::new(watcher, |i: &Instance| Ok::<_, Infallible>(i.port)).skip_unhealthy(false);
    assert_eq!(
        next_keys(&mut d, 2).await,
        ["+echo-127.0.0.1-1", "+echo-127.0.0.1-2"]
    );
    memory
        .register(&inst(2).with_health(HealthStatus::Unhealthy))
        .await
        .expect("update");
    memory
        .deregister("echo", "echo-127.0.0.1-1")
        .await
        .expect("deregister");
    assert_eq!(next_keys(&mut d, 1).await, ["-echo-127.0.0.1-1"]);
}

#[tokio::test]
async fn feeds_tower_p2c_balance() {
    let memory = Arc::new(Memory::new());
    for port in [1, 2, 3] {
        memory.register(&inst(port)).await.expect("register");
    }
    let client = DiscoveryClient::new(memory.clone());
    let watcher = client.watch("echo").await.expect("watch");
    // Each "service" answers with its instance's port.
    let discover = Discover::new(watcher, |i: &Instance| {
        let port = i.port;
        let svc = tower::service_fn(move |_: ()| async move { Ok::<u16, Infallible>(port) });
        Ok::<_, Infallible>(tower::load::Constant::new(svc, 0u32))
    });
    let mut balance = tower::balance::p2c::Balance::new(discover);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let port = balance
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .expect("call");
        seen.insert(port);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
    // An instance leaves: the balancer stops calling it once the watch says so.
    memory
        .deregister("echo", "echo-127.0.0.1-2")
        .await
        .expect("deregister");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let port = balance
                .ready()
                .await
                .expect("ready")
                .call(())
                .await
                .expect("call");
            seen.insert(port);
        }
        if !seen.contains(&2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance 2 still called"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves `status` with the body `name` on a free loopback port.
async fn serve(name: &'static str, status: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let code = ::axum::http::StatusCode::from_u16(status).expect("status");
    let app = ::axum::Router::new().route(
        "/who",
        ::axum::routing::get(move || async move { (code, name) }),
    );
    tokio::spawn(async move {
        let _ = ::axum::serve(listener, app).await;
    });
    port
}

#[tokio::test]
async fn http_router_calls_by_name_and_ejects_failing_instances() {
    use crate::health::OutlierConfig;
    use crate::routing::{Geo, Smart, Version};

    let memory = Arc::new(Memory::new());
    let good = serve("good", 200).await;
    let bad = serve("bad", 503).await;
    let canary = serve("canary", 200).await;
    for (port, version) in [(good, "v1"), (bad, "v1"), (canary, "v2")] {
        memory
            .register(&inst(port).with_version(version).with_id(format!("i{port}")))
            .await
            .expect("register");
    }
    let client = DiscoveryClient::new(memory);
    let outliers = OutlierConfig {
        consecutive_failures: 2,
        max_ejection_percent: 50,
        ..OutlierConfig::default()
    };
    let router = HttpRouter::new(client, reqwest::Client::new(), outliers, || {
        Smart::new(Version::new("v1"), Geo::disabled(), || {
            let next = std::sync::atomic::AtomicUsize::new(0);
            move |l: &[Instance], _: Option<&[u8]>| {
                Some(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % l.len())
            }
        })
    });
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let r = router
            .get("http://echo/who", &::http::HeaderMap::new())
            .await
            .expect("call");
        bodies.push(r.text().await.expect("body"));
    }
    let bad_calls = bodies.iter().filter(|b| *b == "bad").count();
    assert_eq!(
        bad_calls, 2,
        "ejected after two failures in a row: {bodies:?}"
    );
    assert!(bodies.iter().all(|b| b != "canary"), "v1 by default");
    assert!(
        router
            .outliers("echo")
            .expect("detector")
            .is_ejected(&format!("i{bad}"))
    );
    // The version header routes to the canary.
    let mut h = ::http::HeaderMap::new();
    h.insert("x-service-version", "v2".parse().expect("header"));
    let r = router.get("http://echo/who", &h).await.expect("call");
    assert_eq!(r.text().await.expect("body"), "canary");
    // Not a service URL; an unknown service.
    assert!(matches!(
        router.get("not a url", &::http::HeaderMap::new()).await,
        Err(HttpError::Url(_))
    ));
    let resolved = router
        .resolve("http://echo/who?x=1", &crate::routing::Route::new())
        .await
        .expect("resolve");
    assert_eq!(resolved.url.path(), "/who");
    assert_eq!(resolved.url.query(), Some("x=1"));
    assert_eq!(resolved.url.host_str(), Some("127.0.0.1"));
}

/// A server that answers after `delay`.
async fn slow(delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = ::axum::Router::new().route(
        "/",
        ::axum::routing::get(move || async move {
            tokio::time::sleep(delay).await;
            "ok"
        }),
    );
    tokio::spawn(async move {
        let _ = ::axum::serve(listener, app).await;
    });
    port
}

/// `circuit_breaker(1)` over two slow instances: two calls at once go to one instance each, a
/// third fails at once with `Overloaded` (counted), and once they finish calls go through again.
#[tokio::test]
async fn the_circuit_breaker_spreads_then_fails_fast() {
    let memory = Arc::new(Memory::new());
    for port in [
        slow(Duration::from_millis(400)).await,
        slow(Duration::from_millis(400)).await,
    ] {
        memory
            .register(&Instance::new("slow", "127.0.0.1", port))
            .await
            .expect("register");
    }
    let router = HttpRouter::new(
        DiscoveryClient::new(memory),
        reqwest::Client::new(),
        crate::health::OutlierConfig::default(),
        || {
            crate::routing::Smart::from_config(&crate::config::RoutingConfig::default(), || {
                crate::balance::Balancer::new(crate::balance::Strategy::RoundRobin)
            })
        },
    )
    .circuit_breaker(1);
    let router = Arc::new(router);
    let headers = ::http::HeaderMap::new();
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (router, headers) = (router.clone(), headers.clone());
            tokio::spawn(async move { router.get("http://slow/", &headers).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    match router.get("http://slow/", &headers).await {
        Err(HttpError::Discovery(crate::Error::Overloaded {
            max_requests: 1, ..
        })) => {}
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "failed fast"
    );
    assert_eq!(router.overflows("slow"), 1);
    let mut ports = std::collections::BTreeSet::new();
    for call in calls {
        let response = call.await.expect("join").expect("call");
        ports.insert(response.url().port());
    }
    assert_eq!(ports.len(), 2, "one call per instance");
    router
        .get("http://slow/", &headers)
        .await
        .expect("room again");
}
