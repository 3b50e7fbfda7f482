//! ORCA load reports over real servers on loopback: tonic servers that attach reports to their
//! answers and stream them out of band, axum servers that attach them to HTTP answers, and the
//! clients that read them into `orca_weighted_round_robin` (tower's layer, `Chi::http`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::{Extension, Router, routing::get};
use chi_discovery::balance::{LoadReports, LoadSink, OrcaConfig, Strategy};
use chi_discovery::config::Config;
use chi_discovery::orca::header::{HEADER, parse};
use chi_discovery::orca::{
    CallMetrics, FeedLayer, OpenRcaServer, OrcaLoadReport, ReportLayer, ServerMetrics, oob,
};
use chi_discovery::registry::{Memory, Registry};
use chi_discovery::{Chi, HealthStatus, Instance};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

/// Weights count at once, tables follow within 100 ms.
fn quick() -> OrcaConfig {
    OrcaConfig {
        blackout_period: Duration::ZERO,
        weight_update_period: Duration::from_millis(100),
        ..OrcaConfig::default()
    }
}

/// A metrics recorder reporting `utilization` at 100 queries per second.
fn reporting(utilization: f64) -> Arc<ServerMetrics> {
    let m = Arc::new(ServerMetrics::new());
    m.set_application_utilization(utilization);
    m.set_cpu_utilization(utilization);
    m.set_qps(100.0);
    m
}

/// A tonic server on loopback: the health service (serving ""), `OpenRcaService`, and the
/// report layer, all over `metrics`. Returns its address.
async fn grpc_backend(metrics: Arc<ServerMetrics>) -> String {
    grpc_backend_counted(metrics).await.0
}

/// [`grpc_backend`], with a count of the requests it served.
async fn grpc_backend_counted(metrics: Arc<ServerMetrics>) -> (String, Arc<AtomicUsize>) {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let oob = OpenRcaServer::new(metrics.clone()).min_interval(Duration::from_millis(50));
    tokio::spawn(async move {
        let _keep = reporter;
        let _ = Server::builder()
            .trace_fn(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::Span::none()
            })
            .layer(ReportLayer::new(metrics))
            .add_service(health)
            .add_service(oob)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await;
    });
    (format!("http://{addr}"), served)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn grpc_answers_carry_reports_that_feed_the_balancer() {
    let url = grpc_backend(reporting(0.5)).await;
    let reports = Arc::new(LoadReports::new(quick()));
    let channel = Endpoint::from_shared(url).expect("url").connect_lazy();
    let svc = ServiceBuilder::new()
        .layer(FeedLayer::new(reports.reporter("a")))
        .service(channel.clone());
    let mut client = HealthClient::new(svc);
    // A served call: the report rides in the trailers.
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("serving");
    assert_eq!(reports.weight("a"), Some(200.0), "100 qps at 0.5");
    // An unknown service: a trailers-only error answer, the report in its headers.
    let other = Arc::new(LoadReports::new(quick()));
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .layer(FeedLayer::new(other.reporter("a")))
            .service(channel),
    );
    let status = client
        .check(HealthCheckRequest {
            service: "nobody".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(other.weight("a"), Some(200.0));
}

#[tokio::test]
async fn out_of_band_reports_stream_at_the_interval_asked() {
    let metrics = reporting(0.25);
    metrics.set_named_metric("queue", 3.0);
    let url = grpc_backend(metrics.clone()).await;
    let channel = Endpoint::from_shared(url.clone())
        .expect("url")
        .connect_lazy();
    let started = tokio::time::Instant::now();
    let mut stream = oob::stream_core_metrics(channel, Duration::from_millis(100))
        .await
        .expect("StreamCoreMetrics");
    let first = stream.next().await.expect("a report").expect("ok");
    assert_eq!(first.application_utilization, 0.25);
    assert_eq!(first.named_metrics["queue"], 3.0);
    metrics.set_application_utilization(0.75);
    let mut later = OrcaLoadReport::default();
    for _ in 0..3 {
        later = stream.next().await.expect("a report").expect("ok");
    }
    assert_eq!(later.application_utilization, 0.75);
    // The first at once, then one per 100 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    // `follow` keeps a stream open into a balancer's reports.
    let reports = Arc::new(LoadReports::new(OrcaConfig {
        out_of_band: true,
        ..quick()
    }));
    let endpoint = Endpoint::from_shared(url).expect("url");
    let task = tokio::spawn(oob::follow(
        endpoint,
        Duration::from_millis(50),
        reports.reporter("b"),
    ));
    eventually("an out-of-band weight", || {
        reports.weight("b") == Some(100.0 / 0.75)
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn out_of_band_follow_comes_back_after_the_server_does() {
    // Nobody listens yet: `follow` retries until a server answers on the address.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let reports = Arc::new(LoadReports::new(quick()));
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("url");
    let task = tokio::spawn(oob::follow(
        endpoint,
        Duration::from_millis(50),
        reports.reporter("c"),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reports.weight("c"), None);
    let listener = TcpListener::bind(addr).await.expect("rebind");
    let oob = OpenRcaServer::new(reporting(0.5)).min_interval(Duration::from_millis(50));
    tokio::spawn(
        Server::builder()
            .add_service(oob)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    eventually("a weight once the server is up", || {
        reports.weight("c") == Some(200.0)
    })
    .await;
    task.abort();
}

/// An axum backend with the report layer; `/work` records a named metric of its own.
async fn http_backend(name: &'static str, metrics: Arc<ServerMetrics>) -> u16 {
    let app = Router::new()
        .route(
            "/work",
            get(move |Extension(call): Extension<CallMetrics>| async move {
                call.named_metric("cost", 2.0);
                name
            }),
        )
        .route(
            "/fail",
            get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "no") }),
        )
        .layer(ReportLayer::new(metrics));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

#[tokio::test]
async fn axum_answers_carry_envoys_text_header() {
    let metrics = reporting(0.4);
    let port = http_backend("a", metrics.clone()).await;
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/work"))
        .await
        .expect("answer");
    let value = resp.headers().get(HEADER).expect("a report").clone();
    assert!(value.as_bytes().starts_with(b"TEXT "), "{value:?}");
    let report = parse(value.as_bytes()).expect("parses");
    assert_eq!(report.application_utilization, 0.4);
    assert_eq!(report.rps_fractional, 100.0);
    assert_eq!(
        report.named_metrics["cost"], 2.0,
        "the handler's own metric"
    );
    // A failed answer carries one too (the layer's counting is tested in `orca::tests`).
    let failed = reqwest::get(format!("http://127.0.0.1:{port}/fail"))
        .await
        .expect("answer");
    assert_eq!(failed.status(), 500);
    assert!(failed.headers().contains_key(HEADER));
}

/// `Chi::http` with `orca_weighted_round_robin`, over three axum backends reporting
/// utilization 0.2 / 0.4 / 0.8 at equal qps: the calls split about 4 : 2 : 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chi_http_weighs_backends_by_their_reports() {
    let memory = Arc::new(Memory::new());
    for (name, u) in [("a", 0.2), ("b", 0.4), ("c", 0.8)] {
        let port = http_backend(name, reporting(u)).await;
        memory
            .register(
                &Instance::new("work", "127.0.0.1", port)
                    .with_id(name)
                    .with_health(HealthStatus::Healthy),
            )
            .await
            .expect("register");
    }
    let config = Config::from_yaml(
        "service_discovery:
  load_balancer:
    strategy: orca_weighted_round_robin
    orca:
      blackout_period: 0s
      weight_update_period: 100ms
",
    )
    .expect("config");
    let chi = Chi::over(config, memory).expect("stack");
    let http = chi.http();
    let headers = http::HeaderMap::new();
    // Round robin until the reports are in and a table is built from them.
    for _ in 0..30 {
        http.get("http://work/work", &headers).await.expect("call");
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..30 {
        http.get("http://work/work", &headers).await.expect("call");
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..700 {
        let body = http
            .get("http://work/work", &headers)
            .await
            .expect("call")
            .text()
            .await
            .expect("body");
        *counts.entry(body).or_default() += 1;
    }
    println!("Chi::http, orca_weighted_round_robin, utilization 0.2 / 0.4 / 0.8: {counts:?}");
    let share = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert!((380..=420).contains(&share("a")), "{counts:?}");
    assert!((180..=220).contains(&share("b")), "{counts:?}");
    assert!((80..=120).contains(&share("c")), "{counts:?}");
}

/// `load_balancer.orca.out_of_band`: every router chi builds streams the reports of the
/// instances it picks from (`OpenRcaService` on each instance's own port) and weighs by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_follow_their_instances_out_of_band() {
    let memory = Arc::new(Memory::new());
    for (name, u) in [("a", 0.2), ("b", 0.4), ("c", 0.8)] {
        let url = grpc_backend(reporting(u)).await;
        let port: u16 = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        memory
            .register(&Instance::new("work", "127.0.0.1", port).with_id(name))
            .await
            .expect("register");
    }
    let config = Config::from_yaml(
        "service_discovery:
  load_balancer:
    strategy: orca_weighted_round_robin
    orca:
      blackout_period: 0s
      weight_update_period: 100ms
      out_of_band: true
      oob_reporting_period: 100ms
",
    )
    .expect("config");
    let routers = chi_discovery::routing::Routers::from_config(&config).expect("routers");
    let router = routers.router();
    let client = chi_discovery::DiscoveryClient::new(memory);
    let snapshot = client.discover("work").await.expect("discover");
    let route = chi_discovery::routing::Route::new();
    let reports = router
        .pick(&snapshot, &route)
        .and_then(|r| r.load_reports().cloned())
        .expect("a store of reports");
    assert!(!reports.per_request());
    eventually("three streams, three weights", || {
        reports.streams() == 3
            && ["a", "b", "c"]
                .iter()
                .all(|id| reports.weight(id).is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..64 {
        let _ = router.pick(&snapshot, &route);
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..700 {
        let routed = router.pick(&snapshot, &route).expect("a pick");
        *counts.entry(routed.instance().id.clone()).or_default() += 1;
    }
    let share = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert!((390..=410).contains(&share("a")), "{counts:?}");
    assert!((190..=210).contains(&share("b")), "{counts:?}");
    assert!((90..=110).contains(&share("c")), "{counts:?}");
}

/// `Chi::balance` over tonic channels wrapped in `FeedLayer::from_request`: every call goes to
/// the instance chi picks, and its trailer's report weighs that instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chi_balance_weighs_tonic_backends_by_their_trailers() {
    let memory = Arc::new(Memory::new());
    let mut served = Vec::new();
    for (name, u) in [("a", 0.2), ("b", 0.4), ("c", 0.8)] {
        let (url, count) = grpc_backend_counted(reporting(u)).await;
        let port: u16 = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        memory
            .register(&Instance::new("work", "127.0.0.1", port).with_id(name))
            .await
            .expect("register");
        served.push(count);
    }
    let config = Config::from_yaml(
        "service_discovery:
  load_balancer:
    strategy: orca_weighted_round_robin
    orca:
      blackout_period: 0s
      weight_update_period: 100ms
",
    )
    .expect("config");
    let chi = Chi::over(config, memory).expect("stack");
    let balance = chi
        .balance("work", |i: &Instance| {
            Endpoint::from_shared(format!("http://{}", i.authority()))
                .map(|e| tower::Layer::layer(&FeedLayer::from_request(), e.connect_lazy()))
        })
        .expect("balance");
    let mut client = HealthClient::new(balance);
    let check = || HealthCheckRequest {
        service: String::new(),
    };
    for _ in 0..30 {
        client.check(check()).await.expect("served");
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..64 {
        client.check(check()).await.expect("served");
    }
    let before: Vec<usize> = served.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    for _ in 0..700 {
        client.check(check()).await.expect("served");
    }
    let split: Vec<usize> = served
        .iter()
        .zip(&before)
        .map(|(c, b)| c.load(Ordering::Relaxed) - b)
        .collect();
    println!(
        "Chi::balance over tonic, orca_weighted_round_robin, utilization 0.2 / 0.4 / 0.8: {split:?}"
    );
    assert!((390..=410).contains(&split[0]), "{split:?}");
    assert!((190..=210).contains(&split[1]), "{split:?}");
    assert!((90..=110).contains(&split[2]), "{split:?}");
}

#[test]
fn an_out_of_band_store_skips_per_request_reports() {
    let reports = Arc::new(LoadReports::new(OrcaConfig {
        out_of_band: true,
        ..quick()
    }));
    let mut headers = http::HeaderMap::new();
    headers.insert(
        HEADER,
        http::HeaderValue::from_static("TEXT rps_fractional=10,cpu_utilization=0.5"),
    );
    assert!(!chi_discovery::orca::feed(&headers, &reports.reporter("a")));
    assert!(!reports.per_request());
    let _ = Strategy::OrcaWeightedRoundRobin;
}
