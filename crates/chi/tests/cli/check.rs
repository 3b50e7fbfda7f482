//! `chi check` exit codes against real servers on loopback.

use std::process::Output;

use chi_test_support::grpc::HealthServer;
use tokio::process::Command;
use tonic_health::ServingStatus;

async fn check(url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chi"))
        .args(["check", url, "--timeout", "2s"])
        .output()
        .await
        .expect("run chi check")
}

fn line(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn axum_server() -> u16 {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/sick",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    port
}

/// A gRPC health server where `up.Service` is serving and `down.Service` is not; it serves until
/// the test ends.
async fn grpc_server() -> HealthServer {
    HealthServer::start(&[
        ("up.Service", ServingStatus::Serving),
        ("down.Service", ServingStatus::NotServing),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exit_codes_http() {
    let port = axum_server().await;
    let ok = check(&format!("http://127.0.0.1:{port}/health")).await;
    assert_eq!(ok.status.code(), Some(0), "{}", line(&ok));
    assert!(line(&ok).starts_with("healthy: "));
    let sick = check(&format!("http://127.0.0.1:{port}/sick")).await;
    assert_eq!(sick.status.code(), Some(1), "{}", line(&sick));
    assert!(line(&sick).contains("503"), "{}", line(&sick));
    let closed = crate::support::closed_port();
    let refused = check(&format!("http://127.0.0.1:{closed}/health")).await;
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        line(&refused).lines().count(),
        1,
        "one line: {}",
        line(&refused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exit_codes_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let ok = check(&format!("tcp://127.0.0.1:{port}")).await;
    assert_eq!(ok.status.code(), Some(0), "{}", line(&ok));
    drop(listener);
    let down = check(&format!("tcp://127.0.0.1:{port}")).await;
    assert_eq!(down.status.code(), Some(1), "{}", line(&down));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exit_codes_grpc() {
    let server = grpc_server().await;
    let port = server.port;
    let ok = check(&format!("grpc://127.0.0.1:{port}/up.Service")).await;
    assert_eq!(ok.status.code(), Some(0), "{}", line(&ok));
    let whole = check(&format!("grpc://127.0.0.1:{port}")).await;
    assert_eq!(whole.status.code(), Some(0), "{}", line(&whole));
    let down = check(&format!("grpc://127.0.0.1:{port}/down.Service")).await;
    assert_eq!(down.status.code(), Some(1), "{}", line(&down));
    assert!(line(&down).contains("NOT_SERVING"), "{}", line(&down));
    let unknown = check(&format!("grpc://127.0.0.1:{port}/nobody.Service")).await;
    assert_eq!(unknown.status.code(), Some(1), "{}", line(&unknown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_bad_input_exits_2() {
    for url in [
        "ftp://127.0.0.1:21",
        "not a url",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:80/path",
        "http://",
    ] {
        let out = check(url).await;
        assert_eq!(out.status.code(), Some(2), "{url}: {}", line(&out));
        assert!(line(&out).contains("hint:"), "{url}: {}", line(&out));
    }
}
