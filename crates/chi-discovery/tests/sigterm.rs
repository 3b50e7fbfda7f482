//! `integration::axum::Server::serve` and a real SIGTERM: the instance is deregistered before its
//! listener closes, and a peer that follows the watch sees no failed request.
//!
//! Its own test binary: the SIGTERM goes to this whole process, whose handler the server installs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use chi_discovery::config::Config;
use chi_discovery::registry::{Memory, Registry};
use chi_discovery::{Chi, DiscoveryClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_then_drains_with_no_failed_request() {
    let port = chi_test_support::free_port();
    let yaml = format!(
        "service_discovery:\n  registration:\n    name: web\n    address: 127.0.0.1\n    port: {port}\n    health_check:\n      http: /health\n      interval: 100ms\n      timeout: 50ms\n"
    );
    let config = Config::from_yaml_with_env(&yaml, |_| None).expect("config");
    let memory = Arc::new(Memory::new());
    let chi = Arc::new(Chi::over(config, memory.clone()).expect("stack"));
    let server = {
        let chi = chi.clone();
        tokio::spawn(async move {
            let app = Router::new().route("/hello", get(|| async { "hello" }));
            chi.server()?
                .grace(Duration::from_millis(400))
                .serve(app)
                .await
        })
    };

    let client = DiscoveryClient::new(memory.clone());
    let mut watcher = client.watch("web").await.expect("watch");
    tokio::spawn(async move { while watcher.next().await.is_some() {} });
    let start = Instant::now();
    while client
        .cached("web")
        .is_none_or(|s| s.instances().is_empty())
    {
        assert!(start.elapsed() < Duration::from_secs(5), "never registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let (ok, failed, running) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(true)),
    );
    let peer = {
        let (ok, failed, running) = (ok.clone(), failed.clone(), running.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while running.load(Ordering::Relaxed) {
                let target = client
                    .cached("web")
                    .and_then(|s| s.instances().first().map(|i| i.authority()));
                if let Some(authority) = target {
                    match http.get(format!("http://{authority}/hello")).send().await {
                        Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let signalled = Instant::now();
    while !memory.instances("web").await.expect("list").is_empty() {
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "not deregistered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deregistered = signalled.elapsed();
    let draining = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .expect("still serving after deregistering");
    assert_eq!(draining.status(), 503, "health says it is going");
    server.await.expect("join").expect("served");
    let closed = signalled.elapsed();
    running.store(false, Ordering::Relaxed);
    peer.await.expect("peer");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the listener is closed"
    );
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "SIGTERM -> deregistered {deregistered:?}, listener closed {closed:?}; {ok} calls, {failed} failed"
    );
    assert!(deregistered < closed);
    assert!(ok > 20, "the peer called it: {ok}");
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
}
