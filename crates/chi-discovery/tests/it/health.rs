//! Active health checks against real servers on loopback: an axum HTTP server switched between
//! 200, 503, slow and stopped; a TCP listener; a tonic-health gRPC server switched between
//! SERVING and NOT_SERVING. Timing bounds are asserted from the checker's transition events and
//! printed (`cargo test ... -- --nocapture` shows them).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use chi_discovery::health::{
    CheckError, GrpcProbe, HealthChecker, HttpProbe, Probe, TcpProbe, Thresholds, Transition,
};
use chi_discovery::registry::Memory;
use chi_discovery::{
    DiscoveryClient, Filter, HealthCheck, HealthStatus, Instance, Registry, ServiceConfig,
};
use chi_test_support::grpc::HealthServer;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic_health::ServingStatus;

/// Slack for scheduling, added to the documented bounds. These tests probe real servers, so time
/// cannot be paused; on a loaded 2-core machine a task waits for a core well beyond 150 ms, so the
/// slack is wide. The bounds still catch a check that never runs or waits a timeout per interval,
/// and the lower bounds (not before `fall` checks) are exact.
const SLACK: Duration = Duration::from_secs(1);

const OK: u8 = 0;
const FAIL: u8 = 1;
const SLOW: u8 = 2;

#[derive(Clone)]
struct HttpState {
    mode: Arc<AtomicU8>,
    host: Arc<Mutex<Option<String>>>,
}

/// An axum server on 127.0.0.1 whose `/health` answers 200, 503 or slowly; it can be stopped
/// (the listener closes, as when the process dies) and started again on the same port.
pub(crate) struct HttpServer {
    pub(crate) port: u16,
    state: HttpState,
    task: Option<JoinHandle<()>>,
}

async fn health(State(s): State<HttpState>, headers: HeaderMap) -> StatusCode {
    *s.host.lock().expect("lock") = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    match s.mode.load(Ordering::SeqCst) {
        OK => StatusCode::OK,
        FAIL => StatusCode::SERVICE_UNAVAILABLE,
        _ => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK
        }
    }
}

impl HttpServer {
    pub(crate) async fn start() -> Self {
        let mut s = HttpServer {
            port: 0,
            state: HttpState {
                mode: Arc::new(AtomicU8::new(OK)),
                host: Arc::new(Mutex::new(None)),
            },
            task: None,
        };
        s.listen().await;
        s
    }

    pub(crate) async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind");
        self.port = listener.local_addr().expect("addr").port();
        let app = Router::new()
            .route("/health", get(health))
            .with_state(self.state.clone());
        self.task = Some(tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        }));
    }

    pub(crate) fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    fn set(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
    }

    fn instance(&self, name: &str) -> Instance {
        ServiceConfig::new(name, "127.0.0.1", self.port).instance()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A checker over a fresh Memory registry holding `instances`.
async fn checker_over(
    instances: &[Instance],
    thresholds: Thresholds,
) -> (Memory, DiscoveryClient, HealthChecker) {
    let reg = Memory::new();
    for i in instances {
        reg.register(i).await.expect("register");
    }
    let client = DiscoveryClient::new(Arc::new(reg.clone()));
    let checker = HealthChecker::builder()
        .thresholds(thresholds)
        .build(client.clone());
    (reg, client, checker)
}

/// The next transition of `id` to `to`, or a panic after `within`.
async fn transition(
    rx: &mut broadcast::Receiver<Transition>,
    id: &str,
    to: HealthStatus,
    within: Duration,
) -> Transition {
    tokio::time::timeout(within, async {
        loop {
            let t = rx.recv().await.expect("checker alive");
            if t.id == id && t.to == to {
                return t;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} did not become {to} within {within:?}"))
}

async fn healthy_ids(client: &DiscoveryClient, service: &str) -> Vec<String> {
    client
        .discover_with_filter(service, &Filter::new().healthy_only())
        .await
        .expect("discover")
        .into_iter()
        .map(|i| i.id)
        .collect()
}

#[tokio::test]
async fn http_probe_answers_by_status_host_timeout_and_target() {
    let server = HttpServer::start().await;
    let inst = server.instance("web");
    let probe = HttpProbe::new("/health")
        .expect("check")
        .timeout(Duration::from_millis(300))
        .host("web.internal");
    probe.check(&inst).await.expect("200 is healthy");
    assert_eq!(
        server.state.host.lock().expect("lock").as_deref(),
        Some("web.internal"),
        "the configured Host header is sent"
    );

    server.set(FAIL);
    let err = probe.check(&inst).await.unwrap_err();
    assert!(
        matches!(err, CheckError::HttpStatus { status: 503, .. }),
        "{err}"
    );
    let lenient = HttpProbe::new("/health")
        .expect("check")
        .expect_status(200..=503);
    lenient.check(&inst).await.expect("503 expected");

    server.set(SLOW);
    let start = Instant::now();
    let err = probe.check(&inst).await.unwrap_err();
    let took = start.elapsed();
    println!("http probe timeout 300 ms: gave up after {took:?}");
    assert!(matches!(err, CheckError::Timeout { .. }), "{err}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(300) + SLACK);

    // An absolute URL on another port is refused without the opt-in, and probed with it.
    server.set(OK);
    let elsewhere = Instance::new("web", "127.0.0.1", 1);
    let url = format!("http://127.0.0.1:{}/health", server.port);
    let err = HttpProbe::new(url.clone())
        .expect("check")
        .check(&elsewhere)
        .await
        .unwrap_err();
    assert!(matches!(err, CheckError::Target { .. }), "{err}");
    HttpProbe::new(url)
        .expect("check")
        .allow_other_hosts(true)
        .check(&elsewhere)
        .await
        .expect("opted in");

    let mut server = server;
    server.stop();
    let err = probe.check(&inst).await.unwrap_err();
    assert!(matches!(err, CheckError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn http_check_transitions_within_interval_times_thresholds() {
    let mut server = HttpServer::start().await;
    let inst = server.instance("web");
    let t = Thresholds::new(2, 3);
    let (_reg, _client, checker) = checker_over(std::slice::from_ref(&inst), t).await;
    let mut rx = checker.subscribe();
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(300);
    let check = HealthCheck::http("/health")
        .every(interval)
        .timeout(timeout);
    checker.watch("web", check).await.expect("watch");
    transition(
        &mut rx,
        &inst.id,
        HealthStatus::Healthy,
        Duration::from_secs(2),
    )
    .await;

    let fall_bound = interval * t.fall + timeout;
    let rise_bound = interval * t.rise + timeout;

    // 503: unhealthy after `fall` failures.
    let start = Instant::now();
    server.set(FAIL);
    let down = transition(
        &mut rx,
        &inst.id,
        HealthStatus::Unhealthy,
        fall_bound + SLACK,
    )
    .await;
    let took = down.at - start;
    println!("http 200->503: unhealthy after {took:?} (bound {fall_bound:?})");
    assert!(took <= fall_bound + SLACK);
    assert!(
        took >= interval * (t.fall - 1) * 9 / 10,
        "not before fall checks: {took:?}"
    );
    assert!(matches!(
        down.reason,
        Some(CheckError::HttpStatus { status: 503, .. })
    ));

    let start = Instant::now();
    server.set(OK);
    let up = transition(&mut rx, &inst.id, HealthStatus::Healthy, rise_bound + SLACK).await;
    let took = up.at - start;
    println!("http 503->200: healthy after {took:?} (bound {rise_bound:?})");
    assert!(took <= rise_bound + SLACK);

    // Stopped: connection refused.
    let start = Instant::now();
    server.stop();
    let down = transition(
        &mut rx,
        &inst.id,
        HealthStatus::Unhealthy,
        fall_bound + SLACK,
    )
    .await;
    let took = down.at - start;
    println!("http stopped: unhealthy after {took:?} (bound {fall_bound:?})");
    assert!(took <= fall_bound + SLACK);
    assert!(matches!(down.reason, Some(CheckError::Connect { .. })));

    // Slow: every probe times out.
    server.listen().await;
    transition(&mut rx, &inst.id, HealthStatus::Healthy, rise_bound + SLACK).await;
    let start = Instant::now();
    server.set(SLOW);
    let down = transition(&mut rx, &inst.id, HealthStatus::Unhealthy, fall_bound * 2).await;
    let took = down.at - start;
    // Timeouts stretch the period to max(interval, timeout) per check.
    let slow_bound = interval.max(timeout) * t.fall + timeout;
    println!(
        "http slow (> timeout): unhealthy after {took:?} (bound max(interval, timeout) x fall + timeout = {slow_bound:?})"
    );
    assert!(matches!(down.reason, Some(CheckError::Timeout { .. })));
    assert!(took <= slow_bound + SLACK, "{took:?} > {slow_bound:?}");
}

#[tokio::test]
async fn tcp_check_sees_the_listener_come_and_go() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let inst = ServiceConfig::new("tcp", "127.0.0.1", port).instance();
    let probe = TcpProbe::own().timeout(Duration::from_millis(300));
    probe.check(&inst).await.expect("listening");
    let t = Thresholds::new(2, 3);
    let (_reg, _client, checker) = checker_over(std::slice::from_ref(&inst), t).await;
    let mut rx = checker.subscribe();
    let interval = Duration::from_millis(200);
    let timeout = Duration::from_millis(300);
    checker
        .watch("tcp", HealthCheck::tcp().every(interval).timeout(timeout))
        .await
        .expect("watch");
    transition(
        &mut rx,
        &inst.id,
        HealthStatus::Healthy,
        Duration::from_secs(2),
    )
    .await;

    let start = Instant::now();
    drop(listener);
    let bound = interval * t.fall + timeout;
    let down = transition(&mut rx, &inst.id, HealthStatus::Unhealthy, bound + SLACK).await;
    println!(
        "tcp listener closed: unhealthy after {:?} (bound {bound:?})",
        down.at - start
    );
    assert!(matches!(down.reason, Some(CheckError::Connect { .. })));

    let start = Instant::now();
    let _listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind");
    let bound = interval * t.rise + timeout;
    let up = transition(&mut rx, &inst.id, HealthStatus::Healthy, bound + SLACK).await;
    println!(
        "tcp listener back: healthy after {:?} (bound {bound:?})",
        up.at - start
    );
}

#[tokio::test]
async fn grpc_check_follows_serving_status() {
    let service = "chi.test.Echo";
    let server = HealthServer::start(&[(service, ServingStatus::Serving)]).await;
    let inst = ServiceConfig::new("echo", "127.0.0.1", server.port).instance();
    let timeout = Duration::from_millis(500);
    GrpcProbe::new(service)
        .timeout(timeout)
        .check(&inst)
        .await
        .expect("SERVING");
    GrpcProbe::new("")
        .timeout(timeout)
        .check(&inst)
        .await
        .expect("the server as a whole");
    let err = GrpcProbe::new("no.Such")
        .timeout(timeout)
        .check(&inst)
        .await
        .unwrap_err();
    assert!(matches!(err, CheckError::NotServing { .. }), "{err}");

    let t = Thresholds::new(2, 3);
    let (_reg, _client, checker) = checker_over(std::slice::from_ref(&inst), t).await;
    let mut rx = checker.subscribe();
    let interval = Duration::from_millis(200);
    checker
        .watch(
            "echo",
            HealthCheck::grpc(service).every(interval).timeout(timeout),
        )
        .await
        .expect("watch");
    transition(
        &mut rx,
        &inst.id,
        HealthStatus::Healthy,
        Duration::from_secs(3),
    )
    .await;

    let start = Instant::now();
    server.set(service, ServingStatus::NotServing).await;
    let bound = interval * t.fall + timeout;
    let down = transition(&mut rx, &inst.id, HealthStatus::Unhealthy, bound + SLACK).await;
    println!(
        "grpc SERVING->NOT_SERVING: unhealthy after {:?} (bound {bound:?})",
        down.at - start
    );
    assert_eq!(
        down.reason,
        Some(CheckError::NotServing {
            status: "NOT_SERVING".into()
        })
    );

    let start = Instant::now();
    server.set(service, ServingStatus::Serving).await;
    let bound = interval * t.rise + timeout;
    let up = transition(&mut rx, &inst.id, HealthStatus::Healthy, bound + SLACK).await;
    println!(
        "grpc NOT_SERVING->SERVING: healthy after {:?} (bound {bound:?})",
        up.at - start
    );

    drop(server);
    let err = GrpcProbe::new(service)
        .timeout(timeout)
        .check(&inst)
        .await
        .unwrap_err();
    assert!(matches!(err, CheckError::Connect { .. }), "{err}");
}

/// The end-to-end case: Memory registry + DiscoveryClient + HealthChecker, default
/// jitter. A dead instance leaves `healthy_only` discovery within interval x fall + timeout and
/// returns after `rise` successes; the other instance is never touched.
#[tokio::test]
async fn dead_instance_leaves_healthy_only_discovery_and_comes_back() {
    let mut dying = HttpServer::start().await;
    let steady = HttpServer::start().await;
    let (a, b) = (dying.instance("api"), steady.instance("api"));
    let t = Thresholds::default();
    let (_reg, client, checker) = checker_over(&[a.clone(), b.clone()], t).await;
    let mut rx = checker.subscribe();
    let interval = Duration::from_millis(250);
    let timeout = Duration::from_millis(300);
    checker
        .watch(
            "api",
            HealthCheck::http("/health")
                .every(interval)
                .timeout(timeout),
        )
        .await
        .expect("watch");
    transition(
        &mut rx,
        &a.id,
        HealthStatus::Healthy,
        Duration::from_secs(2),
    )
    .await;
    let mut both = healthy_ids(&client, "api").await;
    both.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(both, expected);

    let fall_bound = interval * t.fall + timeout;
    let start = Instant::now();
    dying.stop();
    let down = transition(&mut rx, &a.id, HealthStatus::Unhealthy, fall_bound + SLACK).await;
    let took = down.at - start;
    assert_eq!(healthy_ids(&client, "api").await, vec![b.id.clone()]);
    println!(
        "instance died: gone from healthy_only discovery after {took:?} (bound interval {interval:?} x fall {} + timeout {timeout:?} = {fall_bound:?})",
        t.fall
    );
    assert!(took <= fall_bound + SLACK);
    // Still listed without the filter: the registry holds it, chi's checker marks it.
    let all = client.discover("api").await.expect("discover");
    assert_eq!(all.len(), 2);

    let rise_bound = interval * t.rise + timeout;
    let start = Instant::now();
    dying.listen().await;
    let up = transition(&mut rx, &a.id, HealthStatus::Healthy, rise_bound + SLACK).await;
    let took = up.at - start;
    assert_eq!(healthy_ids(&client, "api").await.len(), 2);
    println!(
        "instance restarted: back in healthy_only discovery after {took:?} (bound interval {interval:?} x rise {} + timeout {timeout:?} = {rise_bound:?})",
        t.rise
    );
    assert!(took <= rise_bound + SLACK);
    let h = checker.health("api", &a.id).expect("checked");
    assert!(h.successes >= t.rise, "{h:?}");
    let hb = checker.health("api", &b.id).expect("checked");
    assert_eq!(hb.status, HealthStatus::Healthy);
    assert!(hb.failures == 0, "{hb:?}");
}
